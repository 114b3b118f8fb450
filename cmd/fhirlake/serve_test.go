package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/api/idtoken"
	"google.golang.org/api/option"

	"github.com/fhirlake/fhirlake/trigger"
)

// jwks answers every request (the validator fetches Google's certificate URL) with the public keys given.
type jwks struct{ body []byte }

func (j jwks) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(j.body))}, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signToken makes a JWT with claims, signed RS256 by key under kid ("" alg: unsigned).
func signToken(t *testing.T, key *rsa.PrivateKey, kid, alg string, claims map[string]any) string {
	t.Helper()
	hdr, _ := json.Marshal(map[string]string{"alg": alg, "kid": kid, "typ": "JWT"})
	body, _ := json.Marshal(claims)
	content := b64(hdr) + "." + b64(body)
	if alg != "RS256" {
		return content + "."
	}
	sum := sha256.Sum256([]byte(content))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return content + "." + b64(sig)
}

func TestServeTokens(t *testing.T) {
	ctx := context.Background()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kid": "k1", "kty": "RSA", "alg": "RS256", "use": "sig",
		"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
	}}})
	v, err := idtoken.NewValidator(ctx, option.WithHTTPClient(&http.Client{Transport: jwks{certs}}))
	if err != nil {
		t.Fatal(err)
	}
	const aud = "https://fhirlake.example/push"
	const sa = "pusher@p.iam.gserviceaccount.com"
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	r := &runner{log: log, policy: trigger.Policy{}, outputs: &outputs{}, now: time.Now, lease: time.Minute}
	srv := httptest.NewServer(&pushHandler{r: r, v: v, audience: aud, serviceAccount: sa, log: log})
	defer srv.Close()

	now := time.Now()
	claims := func(change func(map[string]any)) map[string]any {
		c := map[string]any{"iss": "https://accounts.google.com", "aud": aud, "email": sa, "email_verified": true,
			"sub": "1", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if change != nil {
			change(c)
		}
		return c
	}
	body := `{"message":{"data":"` + base64.StdEncoding.EncodeToString([]byte("not a message")) + `","messageId":"7"},"subscription":"s"}`
	tests := []struct {
		name  string
		token string // "" sends no Authorization header
		want  int
	}{
		{name: "valid (poison body acked)", token: signToken(t, key, "k1", "RS256", claims(nil)), want: http.StatusNoContent},
		{name: "no token", want: http.StatusUnauthorized},
		{name: "garbage", token: "not.a.jwt", want: http.StatusUnauthorized},
		{name: "unsigned", token: signToken(t, key, "k1", "none", claims(nil)), want: http.StatusUnauthorized},
		{name: "signed by another key", token: signToken(t, other, "k1", "RS256", claims(nil)), want: http.StatusUnauthorized},
		{name: "unknown key id", token: signToken(t, key, "k2", "RS256", claims(nil)), want: http.StatusUnauthorized},
		{name: "expired", token: signToken(t, key, "k1", "RS256", claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })), want: http.StatusUnauthorized},
		{name: "wrong audience", token: signToken(t, key, "k1", "RS256", claims(func(c map[string]any) { c["aud"] = "https://other" })), want: http.StatusUnauthorized},
		{name: "wrong issuer", token: signToken(t, key, "k1", "RS256", claims(func(c map[string]any) { c["iss"] = "https://evil.example" })), want: http.StatusForbidden},
		{name: "wrong email", token: signToken(t, key, "k1", "RS256", claims(func(c map[string]any) { c["email"] = "someone@p.iam.gserviceaccount.com" })), want: http.StatusForbidden},
		{name: "unverified email", token: signToken(t, key, "k1", "RS256", claims(func(c map[string]any) { c["email_verified"] = false })), want: http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.want {
				t.Errorf("status %d, want %d", res.StatusCode, tc.want)
			}
		})
	}
	if strings.Contains(logs.String(), "not a message") {
		t.Error("the log holds the message payload")
	}
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/api/idtoken"

	"github.com/fhirlake/fhirlake/trigger"
)

// serveConfig is `fhirlake serve`'s configuration.
type serveConfig struct {
	runConfig
	Addr           string
	Audience       string // the push subscription's OIDC audience
	ServiceAccount string // the push subscription's service account email
}

// tokenValidator is the part of *idtoken.Validator serve uses (a seam for tests with a local key).
type tokenValidator interface {
	Validate(ctx context.Context, token, audience string) (*idtoken.Payload, error)
}

// serveCmd is `fhirlake serve --addr :8080`: a Pub/Sub push endpoint. Each push is one run, answered 204 (ack) or
// 503 (nack); a push whose run outlasts the subscription's ack deadline (at most 10 minutes) is redelivered, so use
// the worker or the job for long exports.
func serveCmd(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addRunFlags(fs, &c.runConfig)
	addr := ":8080"
	if p := getenv("PORT"); p != "" { // Cloud Run's
		addr = ":" + p
	}
	fs.StringVar(&c.Addr, "addr", addr, "address to listen on")
	fs.StringVar(&c.Audience, "audience", "", "OIDC audience the push subscription puts in its tokens")
	fs.StringVar(&c.ServiceAccount, "push-service-account", "", "service account email the push subscription signs as")
	err := parseFlags(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = c.runConfig.validate()
	}
	if err == nil && (c.Audience == "" || c.ServiceAccount == "") {
		err = errors.New("--audience and --push-service-account are required")
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake serve: %v\n", err)
		return 2
	}
	log := newLogger(c.Log, stderr)
	r, err := newRunner(ctx, c.runConfig, log)
	if err != nil {
		log.Error("set up", "err", err)
		return 1
	}
	defer r.outputs.Close()
	v, err := idtoken.NewValidator(ctx)
	if err != nil {
		log.Error("set up token validator", "err", err)
		return 1
	}
	if c.DeadLetterTopic != "" {
		ps, err := newPubSub(ctx, c.Project)
		if err != nil {
			log.Error("set up", "err", err)
			return 1
		}
		defer ps.Close()
		pub := ps.Publisher(c.DeadLetterTopic)
		defer pub.Stop()
		r.deadLetter = topicDeadLetter{pub}
	}
	h := &pushHandler{r: r, v: v, audience: c.Audience, serviceAccount: c.ServiceAccount, log: log}
	if err := serve(ctx, c.Addr, h, log); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	return 0
}

// serve answers on addr until ctx ends; then in-flight runs are cancelled (their pushes answered 503, a nack) and
// the server shuts down.
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("POST /", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	srv := &http.Server{Addr: addr, Handler: mux, BaseContext: func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving Pub/Sub pushes", "addr", addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 8*time.Second)
	defer cancel()
	log.Info("shutting down: in-flight runs cancelled, left resumable and nacked")
	return srv.Shutdown(sctx)
}

// pushHandler is one Pub/Sub push endpoint.
type pushHandler struct {
	r              *runner
	v              tokenValidator
	audience       string
	serviceAccount string
	log            *slog.Logger
}

const maxPushBody = 10 << 20 // a Pub/Sub message is at most 10 MB

func (p *pushHandler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if code, reason := p.authorize(req); code != 0 {
		p.log.Warn("push refused", "status", code, "reason", reason)
		http.Error(w, http.StatusText(code), code)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxPushBody+1))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	d := delivery{Source: "push"}
	push, err := trigger.ParsePush(body)
	if err == nil {
		d = delivery{Data: push.Message.Data, Attributes: push.Message.Attributes, ID: push.Message.MessageID, Source: "push"}
	} else {
		d.Data = body
	}
	var o outcome
	if err != nil {
		o = p.r.poison(req.Context(), d, err)
	} else {
		o = p.r.handle(req.Context(), d)
	}
	if o.Verdict == ack {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Error(w, "not finished: retry", http.StatusServiceUnavailable)
}

// authorize checks the push's OIDC token: signed by Google, for our audience, issued to the push service account.
// It returns 401 for a missing or invalid token, 403 for a valid token of someone else, 0 when authorized.
func (p *pushHandler) authorize(req *http.Request) (int, string) {
	tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return http.StatusUnauthorized, "no bearer token"
	}
	payload, err := p.v.Validate(req.Context(), tok, p.audience)
	if err != nil {
		return http.StatusUnauthorized, "invalid token: " + err.Error()
	}
	if payload.Issuer != "https://accounts.google.com" && payload.Issuer != "accounts.google.com" {
		return http.StatusForbidden, fmt.Sprintf("issuer %q is not Google", payload.Issuer)
	}
	email, _ := payload.Claims["email"].(string)
	verified, _ := payload.Claims["email_verified"].(bool)
	if email != p.serviceAccount || !verified {
		return http.StatusForbidden, fmt.Sprintf("token of %q (verified %t), not of the push service account", email, verified)
	}
	return 0, ""
}

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// A crashGate is a reverse proxy in front of a fake (fake-gcs-server or the fake Healthcare API) through which the
// worker subprocess reaches it. It forwards every request unchanged, and lets the crash test catch the worker at one
// request: the n-th request a trap matches is held, before or after the fake has served it, until the worker dies.
type crashGate struct {
	ts     *httptest.Server
	target *url.URL
	client *http.Client
	// classify describes a request for traps: what it does and to which object.
	classify func(r *http.Request, body []byte) gateRequest
	closing  chan struct{}

	mu    sync.Mutex
	trap  *crashTrap
	count map[string]int // requests seen, by gateRequest.Op
}

// gateRequest is what a trap sees of a request.
type gateRequest struct {
	Op     string // Cloud Storage: upload, read, delete, list, attrs; Healthcare API: start, poll; other
	Object string // Cloud Storage: bucket/key
	Body   []byte // the request body (uploads: the object's metadata and content)
}

// trapMode says what happens to the request a trap catches.
type trapMode string

const (
	holdBefore trapMode = "before" // held before the fake sees it: it never happened
	holdAfter  trapMode = "after"  // served by the fake, its answer held: it happened, the worker never learns it
	passThen   trapMode = "pass"   // served and answered as usual: the test kills after a delay
)

// A crashTrap catches the n-th request that match accepts.
type crashTrap struct {
	match func(gateRequest) bool
	n     int
	mode  trapMode
	hit   chan struct{} // closed when the caught request is held (or, for passThen, answered)
	seen  int
}

func newCrashGate(t *testing.T, target string, classify func(*http.Request, []byte) gateRequest) *crashGate {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	g := &crashGate{
		target: u, classify: classify, closing: make(chan struct{}), count: map[string]int{},
		client: &http.Client{Transport: &http.Transport{DisableCompression: true}},
	}
	g.ts = httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(func() {
		close(g.closing) // held requests give up
		g.ts.CloseClientConnections()
		g.ts.Close()
	})
	return g
}

// URL is the gate's address, http://127.0.0.1:port.
func (g *crashGate) URL() string { return g.ts.URL }

// Host is the gate's host:port.
func (g *crashGate) Host() string { return strings.TrimPrefix(g.ts.URL, "http://") }

// arm sets the trap (replacing any) and returns the channel closed when it catches its request.
func (g *crashGate) arm(n int, mode trapMode, match func(gateRequest) bool) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.trap = &crashTrap{match: match, n: n, mode: mode, hit: make(chan struct{})}
	return g.trap.hit
}

// disarm removes the trap.
func (g *crashGate) disarm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.trap = nil
}

// seen is the number of requests of op served or held so far.
func (g *crashGate) seen(op string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.count[op]
}

func (g *crashGate) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read request body", http.StatusBadGateway)
		return
	}
	req := g.classify(r, body)
	req.Body = body

	g.mu.Lock()
	g.count[req.Op]++
	var caught *crashTrap
	if tr := g.trap; tr != nil && tr.seen < tr.n && tr.match(req) {
		if tr.seen++; tr.seen == tr.n {
			caught = tr
		}
	}
	g.mu.Unlock()

	if caught != nil && caught.mode == holdBefore {
		close(caught.hit)
		g.hold(r)
		return
	}
	res, err := g.forward(r, body)
	if err != nil {
		http.Error(w, "forward: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer res.Body.Close()
	resBody, err := io.ReadAll(res.Body)
	if err != nil {
		http.Error(w, "read response body", http.StatusBadGateway)
		return
	}
	if caught != nil && caught.mode == holdAfter {
		close(caught.hit)
		g.hold(r)
		return
	}
	for k, vs := range res.Header {
		w.Header()[k] = vs
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(res.StatusCode)
	w.Write(resBody)
	if caught != nil {
		close(caught.hit)
	}
}

// hold blocks until the client goes away (the worker was killed or gave up) or the gate closes.
func (g *crashGate) hold(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-g.closing:
	}
}

func (g *crashGate) forward(r *http.Request, body []byte) (*http.Response, error) {
	u := *g.target
	u.Path = r.URL.Path
	u.RawPath = r.URL.RawPath
	u.RawQuery = r.URL.RawQuery
	out, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	out.Header.Del("Accept-Encoding")
	return g.client.Do(out)
}

// classifyGCS describes a request of the Cloud Storage JSON and XML APIs, as the Go storage client sends them to
// STORAGE_EMULATOR_HOST.
func classifyGCS(r *http.Request, body []byte) gateRequest {
	path := r.URL.EscapedPath()
	unescape := func(s string) string {
		if v, err := url.PathUnescape(s); err == nil {
			return v
		}
		return s
	}
	switch {
	case strings.HasPrefix(path, "/upload/storage/v1/b/"):
		bucket, _, _ := strings.Cut(strings.TrimPrefix(path, "/upload/storage/v1/b/"), "/")
		return gateRequest{Op: "upload", Object: unescape(bucket) + "/" + uploadName(r, body)}
	case strings.HasPrefix(path, "/storage/v1/b/"):
		rest := strings.TrimPrefix(path, "/storage/v1/b/")
		bucket, rest, _ := strings.Cut(rest, "/")
		key, ok := strings.CutPrefix(rest, "o/")
		switch {
		case !ok:
			return gateRequest{Op: "list", Object: unescape(bucket) + "/" + r.URL.Query().Get("prefix")}
		case r.Method == http.MethodDelete:
			return gateRequest{Op: "delete", Object: unescape(bucket) + "/" + unescape(key)}
		case r.URL.Query().Get("alt") == "media":
			return gateRequest{Op: "read", Object: unescape(bucket) + "/" + unescape(key)}
		}
		return gateRequest{Op: "attrs", Object: unescape(bucket) + "/" + unescape(key)}
	case strings.HasPrefix(path, "/download/storage/v1/b/"):
		bucket, key, _ := strings.Cut(strings.TrimPrefix(path, "/download/storage/v1/b/"), "/o/")
		return gateRequest{Op: "read", Object: unescape(bucket) + "/" + unescape(key)}
	case r.Method == http.MethodGet || r.Method == http.MethodHead: // XML API: /bucket/key
		return gateRequest{Op: "read", Object: unescape(strings.TrimPrefix(path, "/"))}
	}
	return gateRequest{Op: "other"}
}

// uploadName is the object name of an upload: the name parameter of a media upload, or the metadata of a multipart
// or resumable one.
func uploadName(r *http.Request, body []byte) string {
	if n := r.URL.Query().Get("name"); n != "" {
		return n
	}
	meta := body
	if mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && strings.HasPrefix(mt, "multipart/") {
		p, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).NextPart()
		if err != nil {
			return ""
		}
		if meta, err = io.ReadAll(p); err != nil {
			return ""
		}
	}
	var m struct{ Name string }
	if json.Unmarshal(meta, &m) != nil {
		return ""
	}
	return m.Name
}

// classifyHealthcare describes a request of the Healthcare API: an export start or a status poll.
func classifyHealthcare(r *http.Request, _ []byte) gateRequest {
	path := r.URL.Path
	switch {
	case strings.HasSuffix(path, ":export") || strings.HasSuffix(path, "/$export"):
		return gateRequest{Op: "start"}
	case strings.Contains(path, "/operations/") && r.Method == http.MethodGet:
		return gateRequest{Op: "poll"}
	}
	return gateRequest{Op: "other"}
}

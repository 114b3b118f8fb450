package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// faultProxy stands between the real storage client and fake-gcs-server and breaks chosen requests the ways Cloud
// Storage and the network break: an error status, a connection reset before any answer, a body cut short by a reset
// or by an orderly close, and an answer (or the rest of a body) that never comes. Rules pick requests by operation,
// bucket, object and the nth match, so a plan is deterministic; seeded plans are built by faultPlan.
type faultProxy struct {
	next http.Handler
	quit chan struct{} // closed by Close: stalled answers give up

	mu    sync.Mutex
	rules []*faultRule
	log   []proxied
}

// faultRule breaks the nth request (1-based; 0: every one) that matches op, bucket and object.
type faultRule struct {
	Op     string // "read" (media download), "write" (upload), "list", "stat", "delete", "" any
	Bucket string // "" any
	Object string // a substring of the object name, "" any
	Nth    int
	Kind   string // see faultKinds

	seen int
}

// faultKinds are the faults a rule can inject.
var faultKinds = []string{"429", "503", "reset", "reset-mid-body", "truncate", "stall", "stall-mid-body"}

// proxied is one request the proxy saw.
type proxied struct {
	Op, Bucket, Object, Range, Fault string
}

func newFaultProxy(t *testing.T, next http.Handler) (*faultProxy, string) {
	t.Helper()
	p := &faultProxy{next: next, quit: make(chan struct{})}
	ts := httptest.NewServer(p)
	t.Cleanup(func() {
		close(p.quit)
		ts.Close()
	})
	return p, ts.URL
}

// set replaces the rules.
func (p *faultProxy) set(rules ...faultRule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
	for _, r := range rules {
		p.rules = append(p.rules, &r)
	}
}

// requests is what the proxy saw, in order.
func (p *faultProxy) requests() []proxied {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]proxied(nil), p.log...)
}

// classify names a JSON API request: its operation, bucket and object.
func classify(r *http.Request) (op, bucket, object string) {
	path := r.URL.Path
	upload := strings.HasPrefix(path, "/upload/")
	rest := path[strings.Index(path, "/b/")+3:]
	bucket, rest, _ = strings.Cut(rest, "/")
	object, _ = strings.CutPrefix(rest, "o/")
	if upload {
		object = r.URL.Query().Get("name")
	}
	switch {
	case upload:
		op = "write"
	case r.Method == http.MethodGet && r.URL.Query().Get("alt") == "media":
		op = "read"
	case r.Method == http.MethodGet && rest == "o":
		op = "list"
	case r.Method == http.MethodGet:
		op = "stat"
	case r.Method == http.MethodDelete:
		op = "delete"
	default:
		op = strings.ToLower(r.Method)
	}
	return op, bucket, object
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, bucket, object := classify(r)
	fault := ""
	p.mu.Lock()
	for _, rule := range p.rules {
		if (rule.Op == "" || rule.Op == op) && (rule.Bucket == "" || rule.Bucket == bucket) &&
			strings.Contains(object, rule.Object) {
			rule.seen++
			if rule.Nth == 0 || rule.Nth == rule.seen {
				fault = rule.Kind
				break
			}
		}
	}
	p.log = append(p.log, proxied{Op: op, Bucket: bucket, Object: object, Range: r.Header.Get("Range"), Fault: fault})
	p.mu.Unlock()

	switch fault {
	case "":
		p.next.ServeHTTP(w, r)
	case "429", "503":
		code, _ := strconv.Atoi(fault)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"code":%d,"message":"injected by the fault proxy"}}`, code)
	case "reset":
		reset(w, true)
	case "stall":
		p.stall(r)
	default: // the faults of the body: forward, then send part of the answer
		rec := httptest.NewRecorder()
		p.next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		switch fault {
		case "reset-mid-body":
			reset(w, true)
		case "truncate":
			reset(w, false)
		case "stall-mid-body":
			p.stall(r)
		}
	}
}

// stall answers nothing more until the client gives up or the proxy closes.
func (p *faultProxy) stall(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-p.quit:
	}
}

// reset drops the connection: with a TCP reset when hard, else with an orderly close.
func reset(w http.ResponseWriter, hard bool) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok && hard {
		tc.SetLinger(0)
	}
	conn.Close()
}

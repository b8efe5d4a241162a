package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// recorder is a proxy.Metrics that remembers every call.
type recorder struct {
	mu      sync.Mutex
	calls   []string
	closed  []proxy.SessionInfo
	revoked []string
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf(format, args...))
}

func (r *recorder) ConnAccepted(listener, protocol string) {
	r.add("accepted %s %s", listener, protocol)
}
func (r *recorder) ConnClosed(s proxy.SessionInfo, err error) {
	r.mu.Lock()
	r.closed = append(r.closed, s)
	r.mu.Unlock()
	r.add("closed %s started=%v err=%v", s.Resource, !s.Started.IsZero(), err != nil)
}
func (r *recorder) SignIn(protocol string, m auth.Method, result string) {
	r.add("sign-in %s %s %s", protocol, m, result)
}
func (r *recorder) DeviceCodeWait(result string, d time.Duration) { r.add("wait %s", result) }
func (r *recorder) Failure(protocol, kind string)                 { r.add("failure %s %s", protocol, kind) }
func (r *recorder) SessionRevoked(reason string) {
	r.mu.Lock()
	r.revoked = append(r.revoked, reason)
	r.mu.Unlock()
}

func (r *recorder) has(call string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.calls {
		if c == call {
			return true
		}
	}
	return false
}

func (r *recorder) waitFor(t *testing.T, call string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !r.has(call) {
		if time.Now().After(deadline) {
			r.mu.Lock()
			t.Fatalf("no %q among %q", call, r.calls)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type opsServer struct {
	srv  *proxy.Server
	addr string
	rec  *recorder
	cfg  *config.Config
}

func startOpsServer(t *testing.T, backendAddr string) *opsServer {
	t.Helper()
	cfg := &config.Config{
		Resources: []config.Resource{{Name: "echo", Protocol: "line", Address: backendAddr}},
		Listeners: []config.Listener{{Name: "line", Protocol: "line", TLS: config.ListenerTLSDisabled}},
	}
	rec := &recorder{}
	srv, err := proxy.New(cfg, proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln, cfg.Listeners[0]) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &opsServer{srv: srv, addr: ln.Addr().String(), rec: rec, cfg: cfg}
}

func (s *opsServer) dial(t *testing.T, line string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	return c, bufio.NewReader(c)
}

func echoBackend(t *testing.T) string {
	return backend(t, func(c net.Conn) { io.Copy(c, c) })
}

// Every decision, refusal and session end reaches the metrics, with
// bytes counted once, at the end.
func TestMetricsSeeEveryOutcome(t *testing.T) {
	s := startOpsServer(t, echoBackend(t))

	c, r := s.dial(t, "echo ok")
	expectLine(t, r, "OK")
	msg := "\x04ping"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, r)
	s.rec.waitFor(t, "closed echo started=true err=false")

	for _, pw := range []string{"not-allowed", "bad-key", "pending"} {
		_, r := s.dial(t, "echo "+pw)
		expectLine(t, r, "ERR")
	}
	s.rec.waitFor(t, "closed echo started=false err=true")
	for _, call := range []string{
		"accepted line line",
		"sign-in line session_key ok",
		"sign-in line device_code not_allowed",
		"failure line not_allowed",
		"sign-in line device_code bad_credentials",
		"failure line bad_credentials",
		"sign-in line device_code pending",
	} {
		s.rec.waitFor(t, call)
	}
	if s.rec.has("failure line pending") {
		t.Error("a pending sign-in counted as a failure")
	}
	s.rec.mu.Lock()
	var relayed *proxy.SessionInfo
	for i, ci := range s.rec.closed {
		if !ci.Started.IsZero() {
			relayed = &s.rec.closed[i]
		}
	}
	s.rec.mu.Unlock()
	// The protocol wrote "OK" itself, before the splice: only the echoed
	// message was relayed, once each way.
	if relayed == nil || relayed.BytesToBackend != int64(len(msg)) || relayed.BytesToClient != int64(len(msg)) {
		t.Errorf("relayed session %+v, want %d bytes each way", relayed, len(msg))
	}
}

func TestEndCountsARevokedSession(t *testing.T) {
	s := startOpsServer(t, echoBackend(t))
	_, r := s.dial(t, "echo ok")
	expectLine(t, r, "OK")
	var id string
	for _, si := range s.srv.Sessions() {
		id = si.ID
	}
	if found, err := s.srv.End(context.Background(), id); !found || err != nil {
		t.Fatalf("End(%q): found %v, %v", id, found, err)
	}
	expectLine(t, r, "BYE "+proxy.ErrTerminated.Error())
	if found, _ := s.srv.End(context.Background(), "no-such-session"); found {
		t.Error("End of an unknown session reported success")
	}
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	if fmt.Sprint(s.rec.revoked) != "[operator]" {
		t.Errorf("revoked %v, want [operator]", s.rec.revoked)
	}
}

func TestRecentIdentities(t *testing.T) {
	s := startOpsServer(t, echoBackend(t))
	for range 2 {
		c, r := s.dial(t, "echo ok")
		expectLine(t, r, "OK")
		c.Close()
	}
	_, r := s.dial(t, "echo not-allowed")
	expectLine(t, r, "ERR")
	ids := s.srv.RecentIdentities()
	if len(ids) != 1 {
		t.Fatalf("recent identities %+v, want the one let in", ids)
	}
	got := ids[0]
	if got.Identity.UPN != "tester@example.test" || got.Connections != 2 || got.Resource != "echo" || got.LoginName != "tester" || got.LastSeen.Before(got.FirstSeen) {
		t.Errorf("recent identity %+v", got)
	}
}

// A reload changes the resources new connections find; a connection
// already relaying goes on.
func TestReloadAppliesToNewConnections(t *testing.T) {
	echo := echoBackend(t)
	s := startOpsServer(t, echo)

	open, openR := s.dial(t, "echo ok")
	expectLine(t, openR, "OK")

	_, r := s.dial(t, "echo2 ok")
	expectLine(t, r, `ERR no resource "echo2"`)

	next := *s.cfg
	next.Resources = []config.Resource{{Name: "echo2", Protocol: "line", Address: echo}}
	if err := s.srv.Reload(&next); err != nil {
		t.Fatal(err)
	}
	if got := s.srv.Config().Resources; len(got) != 1 || got[0].Name != "echo2" {
		t.Errorf("Config() after Reload has %v", got)
	}
	_, r = s.dial(t, "echo2 ok")
	expectLine(t, r, "OK")
	_, r = s.dial(t, "echo ok")
	expectLine(t, r, `ERR no resource "echo"`)

	// The session opened before the reload still relays.
	if _, err := io.WriteString(open, "\x02hi"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(openR, buf); err != nil || string(buf) != "\x02hi" {
		t.Errorf("the open session after the reload: %q %v", buf, err)
	}
	if s.srv.Draining() {
		t.Error("Draining before Shutdown")
	}
	s.srv.Close()
	if !s.srv.Draining() {
		t.Error("not Draining after Close")
	}
	var names []string
	for _, si := range s.srv.Sessions() {
		names = append(names, si.Resource)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "" {
		t.Errorf("sessions after Close: %v", names)
	}
}

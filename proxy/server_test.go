package proxy_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/proxy"
)

// lineProtocol is a minimal protocol for testing the proxy on its own:
// the client sends "<resource> <password>\n", the decision is asked for,
// the resource's address is dialled and the two are spliced. Whatever
// the client sent after the line is relayed first. Its messages, for
// ending a session cleanly, are a length byte and that many bytes.
type lineProtocol struct{}

func (lineProtocol) Name() string { return "line" }

func (lineProtocol) Serve(ctx context.Context, c *proxy.Conn) error {
	br := bufio.NewReader(c.Net())
	fail := func(err error) error {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		c.FinalWrite()
		fmt.Fprintf(c.Net(), "ERR %v\n", err)
		return err
	}
	if err := c.Step(); err != nil {
		return fail(err)
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return fail(err)
	}
	name, password, _ := strings.Cut(strings.TrimSpace(line), " ")
	res, ok := c.Resource(name)
	if !ok {
		return fail(fmt.Errorf("no resource %q", name))
	}
	if _, err := c.Decide(ctx, auth.Request{Protocol: "line", Resource: name, LoginName: "tester", Password: password}); err != nil {
		return fail(err)
	}
	backend, err := net.Dial("tcp", res.Address)
	if err != nil {
		return fail(err)
	}
	defer backend.Close()
	if _, err := io.WriteString(c.Net(), "OK\n"); err != nil {
		return err
	}
	pending, _ := br.Peek(br.Buffered())
	return c.Splice(&proxy.Relay{
		Client:        c.Net(),
		Backend:       backend,
		ClientPending: append([]byte(nil), pending...),
		ToClient:      &byteFramer{},
		ToBackend:     &byteFramer{},
		Goodbye: func(w io.Writer, cause error) error {
			_, err := fmt.Fprintf(w, "BYE %v\n", cause)
			return err
		},
	})
}

// byteFramer frames messages of a length byte and that many bytes.
type byteFramer struct{ left int }

func (f *byteFramer) Relayed(p []byte) {
	for len(p) > 0 {
		if f.left == 0 {
			f.left = int(p[0]) + 1
		}
		k := min(f.left, len(p))
		f.left -= k
		p = p[k:]
	}
}

func (f *byteFramer) Pending() int { return f.left }

// allowAll decides yes, unless the password names a refusal.
type allowAll struct{}

func (allowAll) Decide(_ context.Context, req auth.Request) (*auth.Decision, error) {
	switch req.Password {
	case "not-allowed":
		return nil, &auth.Refusal{Reason: auth.ReasonNotAllowed, Message: "not in the group"}
	case "bad-key":
		return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "bad key"}
	case "pending":
		return nil, &auth.SignInPending{Prompt: auth.DeviceCodePrompt{VerificationURL: "https://login.example.test/device", UserCode: "SECRET-CODE", ExpiresAt: time.Now().Add(time.Minute)}}
	}
	return &auth.Decision{
		Identity: auth.Identity{Kind: auth.KindUser, ObjectID: "oid-1", UPN: "tester@example.test"},
		Method:   auth.MethodSessionKey,
		Matched:  []auth.Group{{ID: "g1", DisplayName: "testers"}},
		Resource: req.Resource,
		Backend:  auth.BackendCredentials{User: "backend_user"},
	}, nil
}

type testServer struct {
	t      *testing.T
	srv    *proxy.Server
	addr   string
	logs   *observer.ObservedLogs
	served chan error
}

func startServer(t *testing.T, backendAddr string, limits config.Proxy) *testServer {
	t.Helper()
	cfg := &config.Config{
		Resources: []config.Resource{{Name: "echo", Protocol: "line", Address: backendAddr}},
		Listeners: []config.Listener{{Name: "line", Protocol: "line", TLS: config.ListenerTLSDisabled}},
		Proxy:     limits,
	}
	core, logs := observer.New(zapcore.DebugLevel)
	srv, err := proxy.New(cfg, proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, srv: srv, addr: ln.Addr().String(), logs: logs, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve(context.Background(), ln, cfg.Listeners[0]) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-ts.served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func (ts *testServer) event(name string) []map[string]any {
	var out []map[string]any
	for _, e := range ts.logs.FilterField(logging.Event(name)).All() {
		out = append(out, e.ContextMap())
	}
	return out
}

func (ts *testServer) waitEvent(name string) map[string]any {
	ts.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if evs := ts.event(name); len(evs) > 0 {
			return evs[len(evs)-1]
		}
		time.Sleep(5 * time.Millisecond)
	}
	ts.t.Fatalf("no %s event", name)
	return nil
}

// dial connects and sends the login line plus extra, in one write.
func (ts *testServer) dial(password, extra string) (*net.TCPConn, *bufio.Reader) {
	ts.t.Helper()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "echo "+password+"\n"+extra); err != nil {
		ts.t.Fatal(err)
	}
	return c.(*net.TCPConn), bufio.NewReader(c)
}

func expectLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read %q: %v (got %q)", want, err, got)
	}
	if got = strings.TrimSpace(got); !strings.HasPrefix(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// backend runs handle for each connection on a loopback listener.
func backend(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// The client sends everything and shuts its write side; the backend sees
// end of stream and only then answers, which must still reach the
// client. Bytes the handshake read ahead go first.
func TestSpliceHalfClose(t *testing.T) {
	addr := backend(t, func(c net.Conn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
	})
	ts := startServer(t, addr, config.Proxy{})
	payload := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	c, r := ts.dial("ok", "read-ahead:")
	expectLine(t, r, "OK")
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("read-ahead:" + payload))
	expectLine(t, r, fmt.Sprintf("%d %x", len("read-ahead:")+len(payload), sum))
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: %v, want end of stream", err)
	}

	ended := ts.waitEvent("session.ended")
	if ended["reason"] != "client_closed" {
		t.Errorf("reason = %v, want client_closed", ended["reason"])
	}
	if got, want := ended["bytes_to_backend"], int64(len("read-ahead:")+len(payload)); got != want {
		t.Errorf("bytes_to_backend = %v, want %d", got, want)
	}
	if got, want := ended["bytes_to_client"], int64(len(fmt.Sprintf("%d %x\n", len("read-ahead:")+len(payload), sum))); got != want {
		t.Errorf("bytes_to_client = %v, want %d", got, want)
	}
}

// A backend that breaks the connection ends the session at once; the
// client is not left hanging, and is told which resource was lost when
// the stream to it is between two messages, or else just closed (a
// message cut short cannot be followed by another).
func TestSpliceBackendResetClosesClient(t *testing.T) {
	tests := []struct {
		name    string
		sends   []byte // what the backend sends before it resets
		wantBye bool
	}{
		{name: "between messages", sends: []byte{2, 'h', 'i'}, wantBye: true},
		{name: "in the middle of a message", sends: []byte{5, 'h', 'e'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := backend(t, func(c net.Conn) {
				io.ReadFull(c, make([]byte, 5))
				c.Write(tt.sends)
				c.(*net.TCPConn).SetLinger(0)
			})
			ts := startServer(t, addr, config.Proxy{})
			c, r := ts.dial("ok", "")
			expectLine(t, r, "OK")
			io.WriteString(c, "hello")
			got := make([]byte, len(tt.sends))
			if _, err := io.ReadFull(r, got); err != nil || string(got) != string(tt.sends) {
				t.Fatalf("relayed %q, %v; want %q", got, err, tt.sends)
			}
			if tt.wantBye {
				expectLine(t, r, `BYE the connection to resource "echo" was lost (session `)
			}
			if b, err := r.ReadByte(); err == nil {
				t.Fatalf("read %q after the backend went away", b)
			}
			ended := ts.waitEvent("session.ended")
			if ended["reason"] != "error" || !strings.Contains(fmt.Sprint(ended["error"]), "backend -> client") {
				t.Errorf("session.ended = %v, want reason error from the backend", ended)
			}
			if len(ts.srv.Sessions()) != 0 {
				t.Errorf("sessions left open: %+v", ts.srv.Sessions())
			}
		})
	}
}

// End stops a session between two messages: the message in flight to the
// client is finished first, then the goodbye.
func TestEndFinishesTheMessageInFlight(t *testing.T) {
	release := make(chan struct{})
	addr := backend(t, func(c net.Conn) {
		c.Write([]byte{5, 'h', 'e'})
		<-release
		c.Write([]byte("llo"))
		io.Copy(io.Discard, c)
	})
	ts := startServer(t, addr, config.Proxy{})
	_, r := ts.dial("ok", "")
	expectLine(t, r, "OK")
	head := make([]byte, 3)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}

	var id string
	for _, s := range ts.srv.Sessions() {
		if !s.Started.IsZero() {
			id = s.ID
		}
	}
	if id == "" {
		t.Fatalf("no started session in %+v", ts.srv.Sessions())
	}
	// The relay counts a chunk once its write returns, which may be just
	// after the client has read it.
	deadline := time.Now().Add(5 * time.Second)
	for ts.srv.Sessions()[0].BytesToClient != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s := ts.srv.Sessions()[0]; s.BackendUser != "backend_user" || s.Identity.UPN != "tester@example.test" || s.BytesToClient != 3 {
		t.Errorf("session info = %+v", s)
	}
	// The backend finishes its message while End waits.
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	if found, err := ts.srv.End(context.Background(), id); !found || err != nil {
		t.Fatalf("End: found %v, %v", found, err)
	}
	// End returns once the connection has closed.
	if open := ts.srv.Sessions(); len(open) != 0 {
		t.Errorf("sessions open after End returned: %+v", open)
	}
	if found, _ := ts.srv.End(context.Background(), "no-such-session"); found {
		t.Error("End found a session that does not exist")
	}

	rest := make([]byte, 3)
	if _, err := io.ReadFull(r, rest); err != nil || string(rest) != "llo" {
		t.Fatalf("rest of the message: %q, %v", rest, err)
	}
	expectLine(t, r, "BYE "+proxy.ErrTerminated.Error())
	if ended := ts.waitEvent("session.ended"); ended["reason"] != "terminated" {
		t.Errorf("reason = %v, want terminated", ended["reason"])
	}
}

// Shutdown waits the drain time for a connection still in its handshake,
// then ends it with ErrShuttingDown; nothing new is accepted meanwhile.
func TestShutdownDrainsThenEnds(t *testing.T) {
	const drain = 200 * time.Millisecond
	ts := startServer(t, "127.0.0.1:1", config.Proxy{DrainTimeout: drain, HandshakeTimeout: 10 * time.Second})
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts.waitEvent("conn.accepted")

	start := time.Now()
	if err := ts.srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took < drain {
		t.Errorf("Shutdown returned after %v, before the drain time", took)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	expectLine(t, bufio.NewReader(c), "ERR "+proxy.ErrShuttingDown.Error())
	if _, err := net.Dial("tcp", ts.addr); err == nil {
		t.Error("a connection was accepted after Shutdown")
	}
}

// A client that says nothing is let go after the handshake timeout.
func TestHandshakeTimeout(t *testing.T) {
	ts := startServer(t, "127.0.0.1:1", config.Proxy{HandshakeTimeout: 150 * time.Millisecond})
	// The server's clock starts when it accepts, which can be before Dial
	// returns: time from before the dial, so that the bound holds.
	start := time.Now()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	expectLine(t, bufio.NewReader(c), "ERR")
	if took := time.Since(start); took < 150*time.Millisecond || took > 3*time.Second {
		t.Errorf("timed out after %v, want about 150ms", took)
	}
}

func TestDecisionsAreAudited(t *testing.T) {
	ts := startServer(t, "127.0.0.1:1", config.Proxy{})
	tests := []struct {
		password string
		event    string
		reason   string
	}{
		{password: "not-allowed", event: "authz.denied", reason: "not_allowed"},
		{password: "bad-key", event: "auth.failed", reason: "bad_credentials"},
		{password: "pending", event: "auth.device_code.issued"},
	}
	for _, tt := range tests {
		t.Run(tt.password, func(t *testing.T) {
			_, r := ts.dial(tt.password, "")
			expectLine(t, r, "ERR")
			ev := ts.waitEvent(tt.event)
			if tt.reason != "" && ev["reason"] != tt.reason {
				t.Errorf("%s reason = %v, want %s", tt.event, ev["reason"], tt.reason)
			}
			if ev["user"] != "tester" || ev["resource"] != "echo" || ev["session_id"] == nil || ev["client_addr"] == nil {
				t.Errorf("%s lacks who and where: %v", tt.event, ev)
			}
		})
	}
	for _, e := range ts.logs.All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), "SECRET-CODE") {
			t.Errorf("log entry %q holds the user code", e.Message)
		}
	}
}

func TestNewChecksConfiguration(t *testing.T) {
	tests := []struct {
		name    string
		cfg     config.Config
		deps    proxy.Deps
		wantErr string
	}{
		{
			name:    "no authorizer",
			deps:    proxy.Deps{Protocols: []proxy.Protocol{lineProtocol{}}},
			wantErr: "no authorizer",
		},
		{
			name:    "unknown protocol",
			cfg:     config.Config{Listeners: []config.Listener{{Name: "my", Protocol: "mysql", TLS: config.ListenerTLSDisabled}}},
			deps:    proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}},
			wantErr: `protocol "mysql" is not available`,
		},
		{
			name:    "tls without a certificate",
			cfg:     config.Config{Listeners: []config.Listener{{Name: "l", Protocol: "line", TLS: config.ListenerTLSRequired}}},
			deps:    proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}},
			wantErr: "no certificate",
		},
		{
			name:    "certificate file missing",
			cfg:     config.Config{TLS: config.TLS{CertFile: "/nonexistent/cert.pem", KeyFile: "/nonexistent/key.pem"}},
			deps:    proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}},
			wantErr: "/nonexistent/cert.pem",
		},
		{
			name: "tls with a certificate",
			cfg:  config.Config{Listeners: []config.Listener{{Name: "l", Protocol: "line", TLS: config.ListenerTLSRequired}}},
			deps: proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}, TLS: &tls.Config{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxy.New(&tt.cfg, tt.deps)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestListenAndServe(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	deps := proxy.Deps{Authorizer: allowAll{}, Protocols: []proxy.Protocol{lineProtocol{}}}
	listener := func(addr string) config.Listener {
		return config.Listener{Name: "line", Protocol: "line", Address: addr, TLS: config.ListenerTLSDisabled}
	}

	t.Run("address in use", func(t *testing.T) {
		cfg := &config.Config{Listeners: []config.Listener{listener("127.0.0.1:0"), listener(taken.Addr().String())}}
		srv, err := proxy.New(cfg, deps)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.ListenAndServe(context.Background()); err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("ListenAndServe: %v, want address already in use", err)
		}
	})

	t.Run("until ctx ends", func(t *testing.T) {
		cfg := &config.Config{Listeners: []config.Listener{listener("127.0.0.1:0")}}
		srv, err := proxy.New(cfg, deps)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.ListenAndServe(ctx) }()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ListenAndServe: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ListenAndServe did not return after its context ended")
		}
	})
}

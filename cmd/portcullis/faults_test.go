package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

// Fault injection with real components: portcullis serve against the
// Entra ID simulator (whose endpoints can be made to fail), a real
// PostgreSQL backend, and a real state store. Whatever fails, portcullis
// must refuse with a message naming the dependency, carry on once it is
// back without a restart, lose nothing it stored, and leave every other
// session alone. The threat model in docs/security.md points here.

// More analysts in the operations tests' tenant, so each fault meets an
// identity whose groups are not cached yet.
const (
	faultBob   = "bob@ops.example"
	faultDave  = "dave@ops.example"
	faultFrank = "frank@ops.example"
	faultGina  = "gina@ops.example"
	faultHal   = "hal@ops.example"
)

func faultDirectory() *entrasim.Directory {
	d := opsDirectory()
	for i, upn := range []string{faultBob, faultDave, faultFrank, faultGina, faultHal} {
		d.Users = append(d.Users, entrasim.User{ID: fmt.Sprintf("11111111-0000-4000-8000-0000000001%02d", i), UPN: upn, DisplayName: strings.SplitN(upn, "@", 2)[0]})
		d.Groups[0].Members.Users = append(d.Groups[0].Members.Users, upn)
	}
	return d
}

var faultConfig = template.Must(template.New("faults").Parse(`providers:
  - name: ops
    tenant_id: {{.Tenant}}
    client_id: {{.App}}
    authority_host: {{.Sim}}
    graph_endpoint: {{.Sim}}
    graph_auth: application
    client_secret_file: {{.Dir}}/graph-secret
    ca_file: {{.Dir}}/sim-ca.pem
resources:
  - name: demo
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
  - name: gone
    protocol: postgres
    address: {{.Gone}}
    database: postgres
    connect_timeout: 2s
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
  - name: flaky
    protocol: postgres
    address: {{.Flaky}}
    database: postgres
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
  - name: hung
    protocol: postgres
    address: {{.Hung}}
    database: postgres
    connect_timeout: 1s
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
{{- if .TOTP}}
  - name: secure
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    require_totp: true
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
{{- end}}
listeners:
  - name: postgres
    protocol: postgres
    address: 127.0.0.1:0
tls:
  cert_file: {{.Dir}}/listener.crt
  key_file: {{.Dir}}/listener.key
store:
{{.Store}}
mfa:
  max_failures: 3
sessions:
  address_grace: 0s
admin:
  groups: [Admins]
  address: 127.0.0.1:0
`))

// faultEnv is what every fault test runs portcullis against.
type faultEnv struct {
	t     *testing.T
	sim   *entrasim.Server
	pg    *testpg.Server // the backend
	dir   string
	gone  string      // a loopback address nobody listens on
	hung  string      // a listener that accepts and never says a word
	flaky *resetRelay // the backend, through a relay that can reset
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	pg := testpg.Start(t, testpg.Options{Roles: []testpg.Role{opsRole}})
	sim, err := entrasim.New(faultDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	e := &faultEnv{t: t, sim: sim, pg: pg, dir: t.TempDir()}
	if err := sim.WriteCAFile(filepath.Join(e.dir, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{
		"graph-secret":     opsSecret,
		"backend.password": opsRole.Password,
		"store.key":        base64.StdEncoding.EncodeToString(key),
	} {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writeSelfSignedCert(e.dir); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.gone = ln.Addr().String()
	ln.Close()
	e.hung = hungListener(t)
	e.flaky = newResetRelay(t, pg.Addr())
	return e
}

// resetRelay passes TCP connections on to a backend until reset breaks
// them as a crashed host, a firewall or a load balancer does: portcullis
// gets a TCP reset, not a goodbye. The backend itself is real.
type resetRelay struct {
	addr string
	mu   sync.Mutex
	open []net.Conn // portcullis's side of each relayed connection
}

func newResetRelay(t *testing.T, backend string) *resetRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &resetRelay{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", backend)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.open = append(r.open, in)
			r.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.reset()
		wg.Wait()
	})
	return r
}

// reset breaks every relayed connection with a TCP reset towards
// portcullis (the backend sees an ordinary end of stream) and returns
// how many there were.
func (r *resetRelay) reset() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.open)
	for _, c := range r.open {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	r.open = nil
	return n
}

// hungListener accepts connections and never answers them (a backend
// stuck during login); they are closed when t ends.
func hungListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// Store sections of the configuration.
const faultMemoryStore = "  driver: memory"

func faultSQLiteStore(path, dir string) string {
	return fmt.Sprintf("  driver: sqlite\n  path: %s\n  key_file: %s/store.key", path, dir)
}

// writeConfig writes a configuration with the given store section (and
// the TOTP resource "secure" when totp is set) and returns its path.
func (e *faultEnv) writeConfig(name, store string, totp bool) string {
	e.t.Helper()
	path := filepath.Join(e.dir, name)
	f, err := os.Create(path)
	if err != nil {
		e.t.Fatal(err)
	}
	err = faultConfig.Execute(f, map[string]any{
		"Tenant": opsTenant, "App": opsApp, "Sim": e.sim.URL(), "Dir": e.dir,
		"Backend": e.pg.Addr(), "Role": opsRole.Name, "Gone": e.gone, "Hung": e.hung, "Flaky": e.flaky.addr,
		"Store": store, "TOTP": totp,
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return path
}

// serve runs `portcullis serve --config cfgPath` in this process until
// the test ends, and waits for its listener.
func (e *faultEnv) serve(cfgPath string) *opsServe {
	t := e.t
	t.Helper()
	s := &opsServe{t: t, sim: e.sim, pg: e.pg, dir: e.dir, cfgPath: cfgPath, stdout: &syncBuffer{}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		var stderr syncBuffer
		s.done <- dispatch(ctx, []string{"serve", "--config", cfgPath}, nil, s.stdout, &stderr)
	}()
	t.Cleanup(func() {
		if !s.stopped {
			cancel()
			s.err = <-s.done
		}
		if t.Failed() {
			t.Logf("portcullis log:\n%s", s.stdout.String())
		}
	})
	s.admin = "http://" + s.waitEvent("admin.listening", nil)["address"].(string)
	s.ready()
	return s
}

// faultSignIn signs upn in to database with a device code, as psql does
// (notice mode): the code in the notice is approved in the simulator. It
// returns the connection (nil on error), every notice, and the error.
func faultSignIn(ctx context.Context, s *opsServe, addr, upn, database string) (*pgconn.PgConn, []string, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=require connect_timeout=30", host, port, upn, database))
	if err != nil {
		return nil, nil, err
	}
	cfg.Password = "sign me in"
	var mu sync.Mutex
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Message)
		mu.Unlock()
		if m := userCodeInNotice.FindStringSubmatch(n.Message); m != nil {
			go s.sim.Approve(m[1], upn) //nolint:errcheck // a refused approval shows as a failed sign-in
		}
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	mu.Lock()
	defer mu.Unlock()
	return c, notices, err
}

var sessionKeyInNotice = regexp.MustCompile(`session key as your password: (\S+)`)

// keyOf is the session key among notices.
func keyOf(t *testing.T, notices []string) string {
	t.Helper()
	for _, n := range notices {
		if m := sessionKeyInNotice.FindStringSubmatch(n); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no session key among the %d notices", len(notices))
	return ""
}

// wantRefusal checks that err is a FATAL with code whose message contains
// every one of want.
func wantRefusal(t *testing.T, err error, code string, want ...string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("got %v, want FATAL %s", err, code)
	}
	for _, w := range want {
		if !strings.Contains(pgErr.Message, w) {
			t.Fatalf("message %q does not say %q", pgErr.Message, w)
		}
	}
}

// eventually retries try until it returns nil or within has passed, and
// returns its last error.
func eventually(within time.Duration, try func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Entra ID, Microsoft Graph and the backend fail one after another while
// alice keeps a session open; each failure is refused with a message
// naming what failed, and portcullis recovers without a restart once it
// is back.
func TestDependencyFaults(t *testing.T) {
	e := newFaultEnv(t)
	s := e.serve(e.writeConfig("portcullis.yaml", faultMemoryStore, false))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	held, notices, err := faultSignIn(ctx, s, s.pgAddr, opsAlice, "demo")
	if err != nil {
		t.Fatalf("alice's sign-in: %v", err)
	}
	defer held.Close(context.Background())
	aliceKey := keyOf(t, notices)
	heldPID := query(ctx, t, held, "select pg_backend_pid()")[0][0]
	// undisturbed checks that alice's session still runs queries on the
	// same backend.
	undisturbed := func(t *testing.T) {
		t.Helper()
		if got := query(ctx, t, held, "select pg_backend_pid()")[0][0]; got != heldPID {
			t.Fatalf("alice's session now runs on backend %s, was %s", got, heldPID)
		}
	}
	// signsIn checks that upn can sign in afresh and run a query.
	signsIn := func(t *testing.T, upn string) {
		t.Helper()
		c, _, err := faultSignIn(ctx, s, s.pgAddr, upn, "demo")
		if err != nil {
			t.Fatalf("%s after the fault: %v", upn, err)
		}
		defer c.Close(ctx)
		query(ctx, t, c, "select 1")
	}

	t.Run("token endpoint down", func(t *testing.T) {
		s.sim.SetFault(entrasim.EndpointToken, entrasim.Fault{Down: true})
		defer s.sim.SetFault(entrasim.EndpointToken, entrasim.Fault{})
		_, _, err := faultSignIn(ctx, s, s.pgAddr, faultFrank, "demo")
		wantRefusal(t, err, "08004", faultFrank, "Microsoft Entra ID could not be reached")
		undisturbed(t)
		s.sim.SetFault(entrasim.EndpointToken, entrasim.Fault{})
		signsIn(t, faultFrank)
	})

	t.Run("token endpoint slow", func(t *testing.T) {
		const latency = 1500 * time.Millisecond
		s.sim.SetFault(entrasim.EndpointToken, entrasim.Fault{Latency: latency, Times: 2})
		defer s.sim.SetFault(entrasim.EndpointToken, entrasim.Fault{})
		start := time.Now()
		signsIn(t, faultGina)
		if took := time.Since(start); took < latency {
			t.Fatalf("the sign-in took %s, less than the token endpoint's delay %s", took, latency)
		}
		undisturbed(t)
	})

	t.Run("JWKS unreachable during a key rotation", func(t *testing.T) {
		old := s.token(opsAlice)
		// Entra starts signing with a new key, which portcullis has not
		// seen, and its keys endpoint is down.
		s.sim.SetFault(entrasim.EndpointKeys, entrasim.Fault{Down: true})
		defer s.sim.SetFault(entrasim.EndpointKeys, entrasim.Fault{})
		if err := s.sim.RotateKeys(true); err != nil {
			t.Fatal(err)
		}
		fresh := s.token(opsAlice)
		for i := range 2 {
			_, err := s.connect(ctx, opsAlice, fresh, "demo")
			wantRefusal(t, err, "08004", "signing keys of Microsoft Entra ID could not be fetched", opsAlice)
			if i == 0 && s.sim.Requests(entrasim.EndpointKeys) == 0 {
				t.Fatal("the keys endpoint was never asked")
			}
		}
		// A token signed with a key portcullis already holds needs no
		// fetch.
		c, err := s.connect(ctx, opsAlice, old, "demo")
		if err != nil {
			t.Fatalf("a token signed with the known key during the outage: %v", err)
		}
		c.Close(ctx)
		undisturbed(t)

		s.sim.SetFault(entrasim.EndpointKeys, entrasim.Fault{})
		if err := eventually(15*time.Second, func() error {
			c, err := s.connect(ctx, opsAlice, fresh, "demo")
			if err == nil {
				c.Close(ctx)
			}
			return err
		}); err != nil {
			t.Fatalf("the new key's token after the keys endpoint came back: %v", err)
		}
	})

	// The "Graph answers 429 for 60 s", in two parts so that the
	// test does not wait a minute. Graph's throttling guidance is to wait
	// for Retry-After; portcullis does, within a wait budget (20 s) that
	// bounds how long a person is kept waiting at a connection.
	t.Run("Graph throttling for a minute", func(t *testing.T) {
		// Retry-After asks for the full minute: more than the budget, so
		// portcullis refuses at once, saying Graph is the trouble.
		s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: time.Minute})
		defer s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		start := time.Now()
		_, err := s.connect(ctx, faultBob, s.token(faultBob), "demo")
		wantRefusal(t, err, "08004", "Microsoft Graph could not be reached", faultBob)
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the refusal took %s", took)
		}
		failed := s.waitEvent("auth.failed", func(m map[string]any) bool { return m["user"] == faultBob })
		if cause := fmt.Sprint(failed["error"]); !strings.Contains(cause, "throttled, HTTP 429") || failed["reason"] != "unavailable" {
			t.Errorf("the log says %v (%s), want the throttling and reason unavailable", failed["reason"], cause)
		}
		undisturbed(t)
		s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		c, err := s.connect(ctx, faultBob, s.token(faultBob), "demo")
		if err != nil {
			t.Fatalf("bob after the throttling ended: %v", err)
		}
		c.Close(ctx)
	})

	t.Run("Graph throttling that ends on its own", func(t *testing.T) {
		// The minute shortened to a spell of 3 s with Retry-After 2 s,
		// within the budget: portcullis waits as Graph asks, and hal
		// gets in once the spell is over. Retrying on its own backoff
		// instead (0.2 s, 0.4 s, 0.8 s, ...) would meet 429 at least four
		// times; waiting 2 s each time meets it at most twice.
		const spell, retryAfter = 3 * time.Second, 2 * time.Second
		throttled := func() float64 {
			_, text := s.get("/metrics")
			return max(0, sampleValue(text, `portcullis_graph_throttled_total{provider="ops"}`))
		}
		before := throttled()
		start := time.Now()
		s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: retryAfter, For: spell})
		defer s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		c, err := s.connect(ctx, faultHal, s.token(faultHal), "demo")
		if err != nil {
			t.Fatalf("hal during a throttling spell shorter than the wait budget: %v", err)
		}
		c.Close(ctx)
		if took := time.Since(start); took < retryAfter {
			t.Errorf("hal got in after %s, sooner than Graph's Retry-After of %s", took, retryAfter)
		}
		if n := throttled() - before; n < 1 || n > 2 {
			t.Errorf("Graph answered 429 %v times during hal's sign-in, want 1 or 2 (Retry-After honoured)", n)
		}
		undisturbed(t)
	})

	t.Run("Graph 5xx", func(t *testing.T) {
		s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusInternalServerError})
		defer s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		_, err := s.connect(ctx, faultDave, s.token(faultDave), "demo")
		wantRefusal(t, err, "08004", "Microsoft Graph could not be reached", faultDave)
		undisturbed(t)
		s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		c, err := s.connect(ctx, faultDave, s.token(faultDave), "demo")
		if err != nil {
			t.Fatalf("dave after Graph recovered: %v", err)
		}
		c.Close(ctx)
	})

	t.Run("backend refuses", func(t *testing.T) {
		_, err := s.connect(ctx, opsAlice, aliceKey, "gone")
		wantRefusal(t, err, "08006", `resource "gone" cannot be reached`)
		if strings.Contains(err.Error(), e.gone) {
			t.Errorf("the refusal gives the backend's address away: %v", err)
		}
		undisturbed(t)
	})

	t.Run("backend hangs during login", func(t *testing.T) {
		start := time.Now()
		_, err := s.connect(ctx, opsAlice, aliceKey, "hung")
		wantRefusal(t, err, "08006", `resource "hung" cannot be reached`)
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the refusal took %s with connect_timeout 1s", took)
		}
		undisturbed(t)
	})

	// sessionEnded waits for session.ended of the session c had.
	sessionEnded := func(c *pgconn.PgConn) map[string]any {
		addr := c.Conn().LocalAddr().String()
		return s.waitEvent("session.ended", func(m map[string]any) bool { return m["client_addr"] == addr })
	}

	t.Run("backend ends the session", func(t *testing.T) {
		// The backend says goodbye (an administrator, a restart): the
		// client hears the backend's own words.
		victim, err := s.connect(ctx, opsAlice, aliceKey, "demo")
		if err != nil {
			t.Fatal(err)
		}
		defer victim.Close(ctx)
		pid := query(ctx, t, victim, "select pg_backend_pid()")[0][0]
		if err := s.pg.Exec(ctx, "select pg_terminate_backend("+pid+")"); err != nil {
			t.Fatal(err)
		}
		// An idle client, as an analyst's between two queries, reads what
		// arrives without sending anything.
		wantRefusal(t, victim.WaitForNotification(ctx), "57P01", "terminating connection")
		sessionEnded(victim)
		undisturbed(t)
		c, err := s.connect(ctx, opsAlice, aliceKey, "demo")
		if err != nil {
			t.Fatalf("a new session after the backend ended one: %v", err)
		}
		c.Close(ctx)
	})

	t.Run("backend connection reset mid-session", func(t *testing.T) {
		// The connection to the backend breaks with no goodbye at all:
		// portcullis tells the client which resource it lost, never
		// where it is, and logs why.
		victim, err := s.connect(ctx, opsAlice, aliceKey, "flaky")
		if err != nil {
			t.Fatal(err)
		}
		defer victim.Close(ctx)
		query(ctx, t, victim, "select 1")
		if n := e.flaky.reset(); n == 0 {
			t.Fatal("no connection through the relay to reset")
		}
		err = victim.WaitForNotification(ctx)
		wantRefusal(t, err, "08006", `the connection to resource "flaky" was lost`)
		if strings.Contains(err.Error(), e.pg.Addr()) || strings.Contains(err.Error(), e.flaky.addr) {
			t.Errorf("the message gives the backend's address away: %v", err)
		}
		ended := sessionEnded(victim)
		if ended["reason"] != "error" || !strings.Contains(fmt.Sprint(ended["error"]), "backend -> client") {
			t.Errorf("session.ended says %v (%v), want reason error from the backend", ended["reason"], ended["error"])
		}
		undisturbed(t)
		c, err := s.connect(ctx, opsAlice, aliceKey, "flaky")
		if err != nil {
			t.Fatalf("a new session after the reset: %v", err)
		}
		query(ctx, t, c, "select 1")
		c.Close(ctx)
	})
}

package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// Sign in through notices with pgconn, then come back with the session
// key: no new device code, the same backend role, through pgconn and
// through pgx's extended protocol.
func TestPgxSignInThenSessionKey(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, a, err := h.connectSigningIn(ctx, alice, "analytics", alice)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	asked := sim.Requests(entrasim.EndpointDeviceCode)
	c.Close(ctx)
	key := a.sessionKey()
	if key == "" {
		t.Fatalf("no session key in the notices %q", a.all())
	}
	issued := len(h.events("auth.device_code.issued"))
	if issued != 1 {
		t.Fatalf("%d device codes issued for one sign-in", issued)
	}

	again := &noticeApprover{h: h}
	cfg := h.config(alice, key, "analytics")
	cfg.OnNotice = again.onNotice
	c, err = pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect with the session key: %v", err)
	}
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("with the session key, current_user = %q, want %q", got, roleAnalyst.Name)
	}
	c.Close(ctx)
	if n := len(h.events("auth.device_code.issued")); n != issued {
		t.Errorf("the session key led to a new device code")
	}
	if n := sim.Requests(entrasim.EndpointDeviceCode); n != asked {
		t.Errorf("the session key led to %d new device-code requests to Entra ID", n-asked)
	}
	if notices := again.all(); len(notices) != 0 {
		t.Errorf("notices on a session-key connection: %q", notices)
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == "session_key" })

	pcfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s@%s/analytics?sslmode=verify-full&sslrootcert=%s", url.QueryEscape(alice), h.addr(), h.caFile))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.Password = key
	conn, err := pgx.ConnectConfig(ctx, pcfg)
	if err != nil {
		t.Fatalf("pgx with the session key: %v", err)
	}
	defer conn.Close(ctx)
	var user string
	var n int
	if err := conn.QueryRow(ctx, "select current_user, $1::int + 1", 41).Scan(&user, &n); err != nil {
		t.Fatalf("pgx query: %v", err)
	}
	if user != roleAnalyst.Name || n != 42 {
		t.Errorf("pgx got (%q, %d), want (%q, 42)", user, n, roleAnalyst.Name)
	}
}

// Policy picks the backend role and portcullis logs in with each
// authentication method and TLS mode.
func TestBackendLogin(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	aliceKey := h.signIn(alice)
	bobKey := h.signIn(bob)

	tests := []struct {
		name     string
		user     string
		key      string
		resource string
		wantRole string
		wantSSL  string
	}{
		{name: "scram over verify-full", user: alice, key: aliceKey, resource: "analytics", wantRole: roleAnalyst.Name, wantSSL: "t"},
		{name: "second mapping", user: bob, key: bobKey, resource: "analytics", wantRole: roleFinance.Name, wantSSL: "t"},
		{name: "md5 without tls", user: alice, key: aliceKey, resource: "analytics_md5", wantRole: roleMD5.Name, wantSSL: "f"},
		{name: "cleartext over tls require", user: alice, key: aliceKey, resource: "analytics_clear", wantRole: roleClear.Name, wantSSL: "t"},
		{name: "default resource", user: alice, key: aliceKey, resource: "", wantRole: roleAnalyst.Name, wantSSL: "t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pgconn.ConnectConfig(ctx, h.config(tt.user, tt.key, tt.resource))
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close(ctx)
			res, err := c.Exec(ctx, "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			row := res[0].Rows[0]
			if got := string(row[0]); got != tt.wantRole {
				t.Errorf("current_user = %q, want %q", got, tt.wantRole)
			}
			if got := string(row[1]); got != "analytics" {
				t.Errorf("current_database = %q, want analytics", got)
			}
			if got := string(row[2]); got != tt.wantSSL {
				t.Errorf("backend ssl = %q, want %q", got, tt.wantSSL)
			}
			if got := c.ParameterStatus("server_version"); !strings.HasPrefix(got, h.pg.Version) {
				t.Errorf("server_version = %q, want the backend's %s.x", got, h.pg.Version)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	aliceKey := h.signIn(alice)
	daveKey := h.signIn(dave)
	wrongKey := flipLast(aliceKey)

	tests := []struct {
		name      string
		user      string
		password  string // empty: sign in through the device-code flow
		approveAs string
		database  string
		before    func(t *testing.T) // puts the directory in the state the case needs
		wantCodes []string
		wantIn    []string // substrings of the message
		wantOut   []string // must not appear in the message
		wantHint  string   // a substring of the hint
	}{
		{name: "wrong session key", user: alice, password: wrongKey, database: "analytics", wantCodes: []string{"28P01"}},
		{name: "alice's key as bob", user: bob, password: aliceKey, database: "analytics", wantCodes: []string{"28P01"}},
		{name: "not in an allowed group", user: mallory, approveAs: mallory, database: "analytics", wantCodes: []string{"28000"},
			wantIn: []string{mallory, "not in any group allowed"}},
		{name: "signed in as someone else", user: alice, approveAs: bob, database: "analytics", wantCodes: []string{"28000"},
			wantIn: []string{"signed in as " + bob + ", but connected as " + alice}},
		{name: "graph down", user: carol, approveAs: carol, database: "analytics", before: graphDown, wantCodes: []string{"08004"},
			wantIn: []string{"Microsoft Graph could not be reached"}},
		{name: "disabled account", user: dave, password: daveKey, database: "analytics", before: func(t *testing.T) { setEnabled(t, dave, false) },
			wantCodes: []string{"28000"}, wantIn: []string{"disabled"}},
		{name: "unknown database", user: alice, password: aliceKey, database: "nosuchdb", wantCodes: []string{"3D000"}, wantIn: []string{"nosuchdb"},
			wantHint: "name of a portcullis resource"},
		{name: "backend down", user: alice, password: aliceKey, database: "gone", wantCodes: []string{"08006"},
			wantIn: []string{`"gone"`}, wantOut: []string{h.cfg.Resources[4].Address, "127.0.0.1", "refused"}},
		{name: "backend certificate not trusted", user: alice, password: aliceKey, database: "wrong_ca", wantCodes: []string{"08006"},
			wantIn: []string{`"wrong_ca"`}, wantOut: []string{h.pg.Addr()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var (
				c   *pgconn.PgConn
				err error
			)
			if tt.password == "" {
				c, _, err = h.connectSigningIn(ctx, tt.user, tt.database, tt.approveAs)
			} else {
				c, err = pgconn.ConnectConfig(ctx, h.config(tt.user, tt.password, tt.database))
			}
			if err == nil {
				c.Close(ctx)
				t.Fatal("connected; want a refusal")
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("got %v, want a FATAL error from portcullis", err)
			}
			if pgErr.Severity != "FATAL" || !contains(tt.wantCodes, pgErr.Code) {
				t.Errorf("got %s %s %q, want FATAL %v", pgErr.Severity, pgErr.Code, pgErr.Message, tt.wantCodes)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(pgErr.Message, s) {
					t.Errorf("message %q does not contain %q", pgErr.Message, s)
				}
			}
			if !strings.Contains(pgErr.Hint, tt.wantHint) {
				t.Errorf("hint %q does not contain %q", pgErr.Hint, tt.wantHint)
			}
			for _, s := range tt.wantOut {
				if strings.Contains(pgErr.Message+pgErr.Hint, s) {
					t.Errorf("message %q (hint %q) gives away %q", pgErr.Message, pgErr.Hint, s)
				}
			}
		})
	}
}

// A sign-in whose backend login then fails still shows its new session
// key, before the error: once the backend is back, the key gets the
// person in without signing in again.
func TestSessionKeyShownWhenTheBackendFails(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, a, err := h.connectSigningIn(ctx, alice, "gone", alice)
	if err == nil {
		c.Close(ctx)
		t.Fatal("connected to a backend that is down")
	}
	if got := pgCode(err); got != "08006" {
		t.Errorf("SQLSTATE %q (%v), want 08006", got, err)
	}
	key := a.sessionKey()
	if key == "" {
		t.Fatalf("no session key shown before the error; notices %q", a.all())
	}
	issued := len(h.events("auth.device_code.issued"))
	again, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatalf("with the key shown: %v", err)
	}
	defer again.Close(ctx)
	if got := currentUser(ctx, t, again); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	if n := len(h.events("auth.device_code.issued")); n != issued {
		t.Error("the key shown led to a new device code")
	}
}

// A client that gives up while waiting for the sign-in ends the wait.
func TestHangupDuringSignInEndsTheWait(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shown := make(chan struct{})
	var once sync.Once
	cfg := h.config(alice, "sign me in", "analytics")
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if codeRE.MatchString(n.Message) {
			once.Do(func() { close(shown) })
		}
	}
	done := make(chan error, 1)
	go func() {
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err == nil {
			c.Close(context.Background())
		}
		done <- err
	}()
	select {
	case <-shown:
	case <-time.After(10 * time.Second):
		t.Fatal("no device-code notice")
	}
	cancel() // pgconn closes the socket
	if err := <-done; err == nil {
		t.Fatal("connected without a sign-in")
	}
	h.waitEvent("auth.failed", func(m map[string]any) bool { return m["reason"] == "canceled" })
	h.waitEvent("conn.closed", nil)
}

// pgx cancels by context: a CancelRequest over TLS to portcullis, which
// forwards it to the backend with the backend's own key.
func TestCancelFromPgx(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cfg := h.config(alice, key, "analytics")
	cancelsByRequest(cfg)
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer qcancel()
	start := time.Now()
	_, err = c.Exec(qctx, "select pg_sleep(30)").ReadAll()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("cancelled query returned after %v", took)
	}
	if code := pgCode(err); code != "57014" {
		t.Fatalf("got %v, want query_canceled (57014) from the backend", err)
	}
	// The session is still in step after the cancel.
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("after cancel, current_user = %q", got)
	}
	h.waitEvent("cancel.forwarded", nil)
}

// TestOwnNotificationIsRecognised: the process id a client is given is
// its backend's, so a client that listens and notifies on one connection
// knows the notification for its own (libpq's and pgx's
// notification.PID == PID()), and pg_backend_pid() agrees.
func TestOwnNotificationIsRecognised(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cfg := h.config(alice, key, "analytics")
	got := make(chan *pgconn.Notification, 1)
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { got <- n }
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	res, err := c.Exec(ctx, "listen jobs; notify jobs, 'done'; select pg_backend_pid()").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if pid := string(res[2].Rows[0][0]); pid != strconv.FormatUint(uint64(c.PID()), 10) {
		t.Errorf("pg_backend_pid() is %s, the client was given %d", pid, c.PID())
	}
	select {
	case n := <-got:
		if n.PID != c.PID() || n.Payload != "done" {
			t.Errorf("notification from pid %d with %q; this connection's pid is %d", n.PID, n.Payload, c.PID())
		}
	case <-ctx.Done():
		t.Fatal("no notification arrived")
	}
}

// 100 MB out with COPY TO STDOUT and back in with COPY FROM STDIN, the
// two streaming at once through two sessions, then out again.
func TestCopyRoundTrip(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	src, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	dst, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(ctx)
	if _, err := dst.Exec(ctx, "create temp table copied (line text)").ReadAll(); err != nil {
		t.Fatal(err)
	}

	// 200,000 rows of 512 characters and a newline: 102.6 MB.
	const rows, want = 200000, 200000 * 513
	out := sha256.New()
	pr, pw := io.Pipe()
	copyOut := make(chan error, 1)
	go func() {
		_, err := src.CopyTo(ctx, io.MultiWriter(pw, out), "copy (select repeat(md5(i::text), 16) from generate_series(1, 200000) i) to stdout")
		pw.CloseWithError(err)
		copyOut <- err
	}()
	tag, err := dst.CopyFrom(ctx, pr, "copy copied from stdin")
	if err != nil {
		t.Fatalf("copy from stdin: %v", err)
	}
	if err := <-copyOut; err != nil {
		t.Fatalf("copy to stdout: %v", err)
	}
	if tag.RowsAffected() != rows {
		t.Fatalf("copied %d rows, want %d", tag.RowsAffected(), rows)
	}

	back := sha256.New()
	counter := &countingWriter{w: back}
	if _, err := dst.CopyTo(ctx, counter, "copy copied to stdout"); err != nil {
		t.Fatalf("copy back out: %v", err)
	}
	if counter.n != want {
		t.Errorf("copied back %d bytes, want %d", counter.n, want)
	}
	if a, b := fmt.Sprintf("%x", out.Sum(nil)), fmt.Sprintf("%x", back.Sum(nil)); a != b {
		t.Errorf("checksums differ: out %s, back %s", a, b)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Connections come and go without leaving goroutines or descriptors
// behind, in portcullis or its backend connections.
func TestNoGrowthAfterManyConnections(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	cfg := h.config(alice, key, "analytics_md5")

	once := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		_, err = c.Exec(ctx, "select 1").ReadAll()
		c.Close(ctx)
		return err
	}
	// Warm up whatever is created once (TLS state, pools).
	for range 3 {
		if err := once(); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, h)
	// The identity core's keep-alive connections to the simulator (both
	// ends are in this process) come and go with the load; they are not
	// per-session state, so they are closed before each count.
	h.http.CloseIdleConnections()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	const total, workers = 200, 4
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range total / workers {
				if err := once(); err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	waitIdle(t, h)
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.http.CloseIdleConnections()
		g, f := runtime.NumGoroutine(), openFDs(t)
		// A little slack for runtime and network poller goroutines that
		// come and go; a leak per connection would be hundreds.
		if g <= goroutines+3 && f <= fds+3 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after %d connections: %d goroutines (was %d), %d fds (was %d)\n%s", total, g, goroutines, f, fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(h.events("session.ended")); n < total {
		t.Errorf("%d session.ended events for %d sessions", n, total)
	}
}

// waitIdle waits until portcullis has no connection open.
func waitIdle(t *testing.T, h *harness) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.srv.Sessions()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open", len(h.srv.Sessions()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}

// Shutdown lets a session run for the drain time, then ends it with
// 57P01 and cancels what its backend was running.
func TestDrainEndsSessionsWithAdminShutdown(t *testing.T) {
	const drain = 500 * time.Millisecond
	h := newHarness(t, harnessOptions{drain: drain})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	queried := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(20)").ReadAll()
		queried <- err
	}()
	waitRunning(t, h, "select pg_sleep(20)")

	start := time.Now()
	shut := make(chan error, 1)
	go func() { shut <- h.srv.Shutdown(ctx) }()

	err = <-queried
	took := time.Since(start)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Fatalf("got %v, want FATAL 57P01", err)
	}
	if took < drain {
		t.Errorf("session ended after %v, before the drain time %v", took, drain)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics")); err == nil {
		t.Error("a new connection was accepted after Shutdown")
	}
	h.waitEvent("session.ended", func(m map[string]any) bool { return m["reason"] == "shutdown" })

	// The backend stopped the query rather than sleep on.
	su, err := h.pg.Superuser(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	for {
		res, err := su.Exec(ctx, "select count(*) from pg_stat_activity where query like 'select pg_sleep(20)%' and state = 'active'").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if string(res[0].Rows[0][0]) == "0" {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the backend still runs the session's query after the session ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The audit trail names who did what, and never holds a secret.
func TestAuditEventsCarryNoSecrets(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	c, a, err := h.connectSigningIn(ctx, alice, "analytics", alice)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	key := a.sessionKey()
	var userCode string
	for _, n := range a.all() {
		if m := codeRE.FindStringSubmatch(n); m != nil {
			userCode = m[1]
		}
	}
	if key == "" || userCode == "" {
		t.Fatalf("no key or code in %q", a.all())
	}
	if c, err := pgconn.ConnectConfig(ctx, h.config(alice, key+"x", "analytics")); err == nil {
		c.Close(ctx)
		t.Fatal("a wrong key was accepted")
	}
	// Error mode: the code travels in a FATAL message, and only there.
	errCfg := h.config(bob, "sign me in", "analytics")
	errCfg.RuntimeParams["application_name"] = "PostgreSQL JDBC Driver"
	_, err = pgconn.ConnectConfig(ctx, errCfg)
	m := codeRE.FindStringSubmatch(fmt.Sprint(err))
	if pgCode(err) != "28000" || m == nil {
		t.Fatalf("error-mode connection: %v, want 28000 with a code", err)
	}
	errorModeCode := m[1]
	waitIdle(t, h)

	started := h.waitEvent("session.started", nil)
	for field, want := range map[string]any{"user": alice, "resource": "analytics", "backend_user": roleAnalyst.Name, "method": "device_code", "oid": oids[alice]} {
		if started[field] != want {
			t.Errorf("session.started %s = %v, want %v", field, started[field], want)
		}
	}
	for _, field := range []string{"session_id", "client_addr"} {
		if started[field] == "" || started[field] == nil {
			t.Errorf("session.started has no %s", field)
		}
	}
	succeeded := h.waitEvent("auth.succeeded", nil)
	if groups, _ := succeeded["groups"].([]any); len(groups) != 1 || groups[0] != "Analysts" {
		t.Errorf("auth.succeeded groups = %v, want [Analysts]", succeeded["groups"])
	}
	ended := h.waitEvent("session.ended", nil)
	for _, field := range []string{"duration", "bytes_to_backend", "bytes_to_client", "reason"} {
		if _, ok := ended[field]; !ok {
			t.Errorf("session.ended has no %s", field)
		}
	}
	h.waitEvent("auth.failed", func(m map[string]any) bool { return m["reason"] == "bad_credentials" })
	h.waitEvent("auth.device_code.issued", func(m map[string]any) bool { return m["expires_at"] != nil })

	secrets := []string{key, userCode, errorModeCode, "sign me in", roleAnalyst.Password, graphSecret}
	for _, e := range h.logs.All() {
		line := fmt.Sprintf("%s %v", e.Message, e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log entry %q holds a secret", e.Message)
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// flipLast changes the last character of a key, keeping its form (lower
// case base32), so that the key is looked up and not found rather than
// turned away for its shape.
func flipLast(key string) string {
	last := key[len(key)-1]
	if last == 'a' {
		return key[:len(key)-1] + "b"
	}
	return key[:len(key)-1] + "a"
}

// psql -l, DBeaver and pgAdmin ask for the database postgres when the
// person names none; with no resource of that name, that is the
// listener's default resource, as an empty database or the user's own
// name is.
func TestMaintenanceDatabaseMeansTheDefault(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, database := range []string{"", alice, "postgres"} {
		c, err := pgconn.ConnectConfig(ctx, h.config(alice, key, database))
		if err != nil {
			t.Fatalf("database %q: %v", database, err)
		}
		res, err := c.Exec(ctx, "select current_database(), current_user").ReadAll()
		c.Close(ctx)
		if err != nil {
			t.Fatalf("database %q: %v", database, err)
		}
		if got := string(res[0].Rows[0][0]) + " " + string(res[0].Rows[0][1]); got != "analytics "+roleAnalyst.Name {
			t.Errorf("database %q: connected to %s, want the default resource's analytics as %s", database, got, roleAnalyst.Name)
		}
	}
	// psql -l itself.
	run := h.psql(ctx, alice, "", map[string]string{"PGPASSWORD": key}, "")
	run.cmd.Args = append(run.cmd.Args[:len(run.cmd.Args)-4], "-l")
	if err := run.cmd.Run(); err != nil {
		t.Fatalf("psql -l: %v\n%s", err, run.stderr.String())
	}
	if !strings.Contains(run.stdout.String(), "analytics|") {
		t.Errorf("psql -l listed %q, want the default resource's server's databases", run.stdout.String())
	}
}

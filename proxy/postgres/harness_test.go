package postgres

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
)

// Backend roles, one per authentication method portcullis must log in
// with. analyst_ro is reachable only over TLS, so a session that works as
// analyst_ro proves the backend connection was encrypted.
var (
	roleAnalyst = testpg.Role{Name: "analyst_ro", Password: "analyst-backend-pw", RequireTLS: true}
	roleFinance = testpg.Role{Name: "finance_rw", Password: "finance-backend-pw"}
	roleMD5     = testpg.Role{Name: "md5_ro", Password: "md5-backend-pw", Auth: testpg.AuthMD5}
	roleClear   = testpg.Role{Name: "clear_ro", Password: "clear-backend-pw", Auth: testpg.AuthPassword}
)

var pg = testpg.NewShared(testpg.Options{
	TLS:   true,
	Roles: []testpg.Role{roleAnalyst, roleFinance, roleMD5, roleClear},
	Setup: []string{"CREATE DATABASE analytics"},
})

func TestMain(m *testing.M) {
	var err error
	sim, err = entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the Entra ID simulator:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	if err := sim.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop the Entra ID simulator:", err)
	}
	os.Exit(code)
}

// harness is portcullis in front of the shared PostgreSQL, with a
// client-facing certificate from its own CA and its own identity core on
// the shared simulator.
type harness struct {
	t      *testing.T
	pg     *testpg.Server
	cfg    *config.Config
	authz  *auth.Authorizer
	totp   *mfa.TOTP    // with harnessOptions.totp: the identity core's
	http   *http.Client // the identity core's, to Entra ID and Graph
	srv    *proxy.Server
	host   string
	port   int
	caFile string
	ca     *testpg.CA
	logs   *observer.ObservedLogs
}

type harnessOptions struct {
	listenerTLS string // "" means required
	prompt      string // resource prompt setting; "" means auto
	drain       time.Duration
	handshake   time.Duration
	// totp adds the resource "vault" (as analytics, with require_totp)
	// and keeps state in a real SQLite store in a temporary directory.
	totp bool
	// reminder is how often a pending sign-in is repeated (0: the
	// default).
	reminder time.Duration
	// kernelRelay turns on proxy.kernel_relay.
	kernelRelay bool
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	srv := pg.Server(t)
	h := &harness{t: t, pg: srv, host: "127.0.0.1"}

	ca, err := testpg.NewCA("portcullis test CA")
	if err != nil {
		t.Fatal(err)
	}
	h.ca = ca
	h.caFile = filepath.Join(t.TempDir(), "portcullis-ca.crt")
	if err := os.WriteFile(h.caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}

	// Policy by group display name, resolved to object ids through Graph
	// when the identity core starts.
	mapping := func(group string, r testpg.Role) config.CredentialMapping {
		return config.CredentialMapping{Groups: []string{group}, User: r.Name, Password: config.NewSecret(r.Password)}
	}
	analysts := []string{"Analysts"}
	closedPort := closedAddress(t)
	noGrace := time.Duration(0)
	h.cfg = &config.Config{
		Providers: []config.Provider{providerConfig()},
		Resources: []config.Resource{
			{
				Name: "analytics", Protocol: "postgres", Address: srv.Addr(), Database: "analytics", Prompt: opts.prompt,
				TLS:         config.BackendTLS{Mode: config.BackendTLSVerifyFull, CAFile: srv.CAFile},
				AllowGroups: []string{"Analysts", "Finance"},
				Credentials: []config.CredentialMapping{mapping("Analysts", roleAnalyst), mapping("Finance", roleFinance)},
			},
			{
				Name: "analytics_md5", Protocol: "postgres", Address: srv.Addr(), Database: "analytics", Prompt: opts.prompt,
				TLS:         config.BackendTLS{Mode: config.BackendTLSDisable},
				AllowGroups: analysts,
				Credentials: []config.CredentialMapping{mapping("Analysts", roleMD5)},
			},
			{
				Name: "analytics_clear", Protocol: "postgres", Address: srv.Addr(), Database: "analytics", Prompt: opts.prompt,
				TLS:         config.BackendTLS{Mode: config.BackendTLSRequire},
				AllowGroups: analysts,
				Credentials: []config.CredentialMapping{mapping("Analysts", roleClear)},
			},
			{
				Name: "wrong_ca", Protocol: "postgres", Address: srv.Addr(), Database: "analytics", Prompt: opts.prompt,
				TLS:         config.BackendTLS{Mode: config.BackendTLSVerifyFull, CAFile: h.caFile},
				AllowGroups: analysts,
				Credentials: []config.CredentialMapping{mapping("Analysts", roleAnalyst)},
			},
			{
				Name: "gone", Protocol: "postgres", Address: closedPort, Database: "analytics", Prompt: opts.prompt,
				TLS:            config.BackendTLS{Mode: config.BackendTLSDisable},
				ConnectTimeout: 2 * time.Second,
				AllowGroups:    analysts,
				Credentials:    []config.CredentialMapping{mapping("Analysts", roleAnalyst)},
			},
		},
		Listeners: []config.Listener{{Name: "pg", Protocol: "postgres", TLS: opts.listenerTLS, DefaultResource: "analytics"}},
		Proxy:     config.Proxy{HandshakeTimeout: opts.handshake, DrainTimeout: opts.drain, KernelRelay: opts.kernelRelay},
		// Every test connects from 127.0.0.1: address grace would let one
		// sign-in stand in for the next, so it is off and reuse is by
		// session key only.
		Sessions: config.Sessions{TTL: 12 * time.Hour, AddressGrace: &noGrace},
	}
	var deps auth.Deps
	if opts.totp {
		vault := h.cfg.Resources[0]
		vault.Name, vault.RequireTOTP = "vault", true
		h.cfg.Resources = append(h.cfg.Resources, vault)
		st := sqliteStore(t)
		h.totp = mfa.New(st, mfa.Options{})
		deps = auth.Deps{Sessions: st, TOTP: h.totp}
	}
	if h.cfg.Listeners[0].TLS == "" {
		h.cfg.Listeners[0].TLS = config.ListenerTLSRequired
	}
	for i := range h.cfg.Resources {
		if h.cfg.Resources[i].ConnectTimeout == 0 {
			h.cfg.Resources[i].ConnectTimeout = 10 * time.Second
		}
	}
	if h.cfg.Proxy.HandshakeTimeout == 0 {
		h.cfg.Proxy.HandshakeTimeout = 10 * time.Second
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	h.http = sim.HTTPClient()
	t.Cleanup(h.http.CloseIdleConnections)
	// Closed after the proxy: cleanups run last registered first.
	h.authz = newAuthorizerWith(t, h.cfg, h.http, zap.New(core), deps)
	h.srv, err = proxy.New(h.cfg, proxy.Deps{
		Authorizer: h.authz,
		Protocols:  []proxy.Protocol{&Protocol{reminder: opts.reminder}},
		Logger:     zap.New(core),
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.port = ln.Addr().(*net.TCPAddr).Port
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, h.cfg.Listeners[0]) }()
	t.Cleanup(func() {
		h.srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			h.dumpLogs()
		}
	})
	return h
}

func (h *harness) addr() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

func (h *harness) dumpLogs() {
	for _, e := range h.logs.All() {
		h.t.Logf("log: %s %v", e.Message, e.ContextMap())
	}
}

// cancelsByRequest makes pgx cancel a query whose context ends with a
// CancelRequest, as libpq's clients do, rather than by closing the
// connection.
func cancelsByRequest(cfg *pgconn.Config) {
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 10 * time.Second}
	}
}

// config returns a pgconn configuration for connecting to portcullis as
// user with password, verifying its certificate.
func (h *harness) config(user, password, database string) *pgconn.Config {
	h.t.Helper()
	sslmode := "verify-full"
	if h.cfg.Listeners[0].TLS == config.ListenerTLSDisabled {
		sslmode = "disable"
	}
	dsn := fmt.Sprintf("host=%s port=%d user=%s sslmode=%s sslrootcert=%s connect_timeout=20", h.host, h.port, user, sslmode, h.caFile)
	if database != "" {
		dsn += " dbname=" + database
	}
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg.Password = password
	return cfg
}

var (
	codeRE       = regexp.MustCompile(`enter the code ([^\s,]+)`)
	sessionKeyRE = regexp.MustCompile(`session key as your password: (\S+)`)
)

// noticeApprover approves, as upn, the device code a client is shown in a
// notice, and remembers the session key shown after the sign-in.
type noticeApprover struct {
	h   *harness
	upn string

	mu      sync.Mutex
	notices []string
	key     string
}

func (a *noticeApprover) onNotice(_ *pgconn.PgConn, n *pgconn.Notice) {
	a.mu.Lock()
	a.notices = append(a.notices, n.Message)
	if m := sessionKeyRE.FindStringSubmatch(n.Message); m != nil {
		a.key = m[1]
	}
	a.mu.Unlock()
	if m := codeRE.FindStringSubmatch(n.Message); m != nil && a.upn != "" {
		// The notice callback runs inside the connect; approving the code
		// the client was shown is what the person does in a browser
		// while the client waits.
		go func() {
			if err := sim.Approve(m[1], a.upn); err != nil {
				a.h.t.Error(err)
			}
		}()
	}
}

func (a *noticeApprover) sessionKey() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.key
}

func (a *noticeApprover) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.notices...)
}

// connectSigningIn connects as user in notice mode and approves the
// device code as upn.
func (h *harness) connectSigningIn(ctx context.Context, user, database, upn string) (*pgconn.PgConn, *noticeApprover, error) {
	a := &noticeApprover{h: h, upn: upn}
	cfg := h.config(user, "sign me in", database)
	cfg.OnNotice = a.onNotice
	c, err := pgconn.ConnectConfig(ctx, cfg)
	return c, a, err
}

// signIn signs user in through the device-code flow and returns the
// session key portcullis showed.
func (h *harness) signIn(user string) string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, a, err := h.connectSigningIn(ctx, user, "analytics", user)
	if err != nil {
		h.t.Fatalf("sign in %s: %v", user, err)
	}
	c.Close(ctx)
	key := a.sessionKey()
	if key == "" {
		h.t.Fatalf("sign in %s: no session key in the notices %q", user, a.all())
	}
	return key
}

// currentUser runs select current_user on c.
func currentUser(ctx context.Context, t testing.TB, c *pgconn.PgConn) string {
	t.Helper()
	res, err := c.Exec(ctx, "select current_user").ReadAll()
	if err != nil {
		t.Fatalf("select current_user: %v", err)
	}
	return string(res[0].Rows[0][0])
}

// pgCode is the SQLSTATE of err, or "" if it carries none.
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// events returns the logged entries named event.
func (h *harness) events(event string) []observer.LoggedEntry {
	return h.logs.FilterField(zap.String("event", event)).All()
}

// waitEvent polls the log until an entry named event satisfies ok.
func (h *harness) waitEvent(event string, ok func(map[string]any) bool) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range h.events(event) {
			if m := e.ContextMap(); ok == nil || ok(m) {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("no %s event within 10s", event)
	return nil
}

// waitSignedIn waits until the identity core has finished a background
// (error-mode) sign-in for login.
func (h *harness) waitSignedIn(login string) {
	h.t.Helper()
	h.waitEvent("auth.device_code.completed", func(m map[string]any) bool {
		_, failed := m["reason"]
		return m["user"] == login && !failed
	})
}

// psql runs psql against portcullis with env on top of a clean PG*
// environment.
type psqlRun struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (h *harness) psql(ctx context.Context, user, database string, env map[string]string, sql string) *psqlRun {
	h.t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "true" {
			h.t.Fatal("psql not found; CI=true requires it")
		}
		h.t.Skip("\n\n*** SKIPPING: psql not found on $PATH ***\n")
	}
	cmd := exec.CommandContext(ctx, path, "-X", "-A", "-t", "-q", "-h", h.host, "-p", strconv.Itoa(h.port), "-U", user, "-d", database, "-c", sql)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	base := map[string]string{"PGSSLMODE": "verify-full", "PGSSLROOTCERT": h.caFile, "PGCONNECT_TIMEOUT": "20"}
	for k, v := range env {
		base[k] = v
	}
	for k, v := range base {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	r := &psqlRun{cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stdout = &r.stdout
	cmd.Stderr = r.stderr
	return r
}

// start starts psql and calls onLine with every line it writes to
// stderr, as it writes it; wait returns its exit.
func (r *psqlRun) start(t testing.TB, onLine func(string)) {
	t.Helper()
	pr, pw := io.Pipe()
	r.cmd.Stderr = io.MultiWriter(r.stderr, pw)
	r.done = make(chan struct{})
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start psql: %v", err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		s := bufio.NewScanner(pr)
		for s.Scan() {
			onLine(s.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		r.err = r.cmd.Wait()
		pw.Close()
		<-scanned
		close(r.done)
	}()
}

func (r *psqlRun) wait() error {
	<-r.done
	return r.err
}

// closedAddress is a loopback address nothing listens on.
func closedAddress(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

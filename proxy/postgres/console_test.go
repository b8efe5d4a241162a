package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/metrics"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/proxy"
	"github.com/portcullisdb/portcullis/proxy/console"
)

// consoleHarness is portcullis with the admin console on: Finance (bob)
// are the admins, Analysts (alice, carol, dave) are not.
type consoleHarness struct {
	*harness
	metrics *metrics.Registry
}

func newConsoleHarness(t *testing.T) *consoleHarness {
	t.Helper()
	srv := pg.Server(t)
	h := &harness{t: t, pg: srv, host: "127.0.0.1"}
	ca, err := testpg.NewCA("portcullis console test CA")
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
	noGrace := time.Duration(0)
	h.cfg = &config.Config{
		Providers: []config.Provider{providerConfig()},
		Resources: []config.Resource{{
			Name: "analytics", Protocol: "postgres", Address: srv.Addr(), Database: "analytics",
			TLS:            config.BackendTLS{Mode: config.BackendTLSVerifyFull, CAFile: srv.CAFile},
			AllowGroups:    []string{"Analysts", "Finance"},
			ConnectTimeout: 10 * time.Second,
			Credentials: []config.CredentialMapping{
				{Groups: []string{"Analysts"}, User: roleAnalyst.Name, Password: config.NewSecret(roleAnalyst.Password)},
				{Groups: []string{"Finance"}, User: roleFinance.Name, Password: config.NewSecret(roleFinance.Password)},
			},
		}},
		Listeners: []config.Listener{{Name: "pg", Protocol: "postgres", TLS: config.ListenerTLSRequired}},
		Proxy:     config.Proxy{HandshakeTimeout: 10 * time.Second},
		Sessions:  config.Sessions{TTL: 12 * time.Hour, AddressGrace: &noGrace},
		Admin:     config.Admin{Groups: []string{"Finance"}},
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	h.http = sim.HTTPClient()
	t.Cleanup(h.http.CloseIdleConnections)
	h.authz = newAuthorizer(t, h.cfg, h.http, zap.New(core))

	reg := metrics.New("test")
	proto := New()
	h.srv, err = proxy.New(h.cfg, proxy.Deps{
		Authorizer: h.authz,
		Protocols:  []proxy.Protocol{proto},
		Logger:     zap.New(core),
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Metrics:    reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	reg.WatchSessions(h.srv.Sessions)
	cons, err := console.New(console.Deps{
		Server: h.srv,
		Graph: func(p string) (console.GraphSearcher, error) {
			gc, err := h.authz.GraphClient(p)
			if err != nil {
				return nil, err
			}
			return gc, nil
		},
		Stats: func() []console.Stat {
			samples, _ := reg.Snapshot()
			out := make([]console.Stat, len(samples))
			for i, s := range samples {
				out[i] = console.Stat{Name: s.Name, Labels: s.Labels, Value: s.Value}
			}
			return out
		},
		Logger: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	proto.Console = cons

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
	return &consoleHarness{harness: h, metrics: reg}
}

// console runs sql through psql on the console as user with password
// (a session key) and returns psql's unaligned, tuples-only output
// lines.
func (h *consoleHarness) console(user, password, sql string) []string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := h.psql(ctx, user, config.ConsoleResource, map[string]string{"PGPASSWORD": password}, sql)
	if err := run.cmd.Run(); err != nil {
		h.t.Fatalf("psql %q: %v\nstderr:\n%s", sql, err, run.stderr)
	}
	out := strings.TrimSpace(run.stdout.String())
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// rowWith returns the first line that contains every one of parts, split
// into its fields.
func rowWith(lines []string, parts ...string) []string {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return strings.Split(l, "|")
		}
	}
	return nil
}

// psql as an admin: SHOW SESSIONS lists a session another client has
// open, KILL ends it and that client is told so, SHOW RESOURCES and
// SHOW USERS describe what is there, azure_search reads the directory.
func TestConsoleWithPsql(t *testing.T) {
	h := newConsoleHarness(t)
	bobKey := h.signIn(bob)
	aliceKey := h.signIn(alice)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim, err := pgconn.ConnectConfig(ctx, h.config(alice, aliceKey, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	if got := currentUser(ctx, t, victim); got != roleAnalyst.Name {
		t.Fatalf("alice's session runs as %q", got)
	}

	sessions := h.console(bob, bobKey, "SHOW SESSIONS")
	row := rowWith(sessions, alice, "analytics")
	if row == nil {
		t.Fatalf("SHOW SESSIONS does not list alice's session:\n%s", strings.Join(sessions, "\n"))
	}
	// id|user|identity|resource|backend_user|method|protocol|client_addr|state|started|bytes_to_backend|bytes_to_client
	if len(row) != 12 || row[4] != roleAnalyst.Name || row[8] != "active" || !strings.HasPrefix(row[7], "127.0.0.1:") || row[10] == "0" || row[11] == "0" {
		t.Errorf("alice's session row = %q", row)
	}
	if self := rowWith(sessions, bob, config.ConsoleResource); self == nil || self[8] != "console" {
		t.Errorf("the console's own session is not listed as such:\n%s", strings.Join(sessions, "\n"))
	}

	resources := h.console(bob, bobKey, "show resources;")
	if r := rowWith(resources, "analytics"); r == nil || r[1] != "postgres" || r[10] != "1" ||
		!strings.Contains(r[6], "Analysts → "+roleAnalyst.Name) {
		t.Errorf("SHOW RESOURCES:\n%s", strings.Join(resources, "\n"))
	}

	users := h.console(bob, bobKey, "SHOW USERS")
	if r := rowWith(users, alice); r == nil || !strings.Contains(r[10], "Analysts") || r[3] != oids[alice] {
		t.Errorf("SHOW USERS:\n%s", strings.Join(users, "\n"))
	}

	id := row[0]
	if out := h.console(bob, bobKey, "KILL "+id); len(out) != 0 {
		t.Errorf("KILL printed %q", out)
	}
	_, err = victim.Exec(ctx, "select 1").ReadAll()
	if code := pgCode(err); code != codeAdminShutdown {
		t.Errorf("alice's session after KILL: %v (SQLSTATE %q), want %s", err, code, codeAdminShutdown)
	} else if !strings.Contains(err.Error(), "an operator ended this session") {
		t.Errorf("alice was told %v", err)
	}
	h.waitEvent("session.ended", func(m map[string]any) bool { return m["session_id"] == id && m["reason"] == "terminated" })
	if rowWith(h.console(bob, bobKey, "SHOW SESSIONS"), alice, "analytics") != nil {
		t.Error("alice's session is still listed after KILL")
	}

	count := h.console(bob, bobKey, "CALL azure_search('contoso', '/v1.0/users/$count')")
	if len(count) != 1 || count[0] != "5" {
		t.Errorf("user count = %q, want 5", count)
	}
	found := h.console(bob, bobKey, "CALL azure_search('contoso', '/v1.0/users?$select=id,userPrincipalName')")
	if len(found) != 5 {
		t.Errorf("azure_search found %d users, want 5:\n%s", len(found), strings.Join(found, "\n"))
	}
	if r := rowWith(found, alice); r == nil || r[0] != oids[alice] {
		t.Errorf("alice's row = %q", r)
	}

	stats := h.console(bob, bobKey, "SHOW STATS")
	if r := rowWith(stats, "portcullis_sessions_revoked_total", `reason="operator"`); r == nil || r[2] != "1" {
		t.Errorf("SHOW STATS has no revoked session:\n%s", strings.Join(stats, "\n"))
	}
	h.waitEvent("console.command", func(m map[string]any) bool {
		return m["command"] == "kill" && m["target"] == id && m["user"] == bob
	})
}

// consoleConn connects to the console with pgx's pgconn.
func (h *consoleHarness) consoleConn(ctx context.Context, user, key string) (*pgconn.PgConn, error) {
	return pgconn.ConnectConfig(ctx, h.config(user, key, config.ConsoleResource))
}

func TestConsoleRefusesNonAdmins(t *testing.T) {
	h := newConsoleHarness(t)
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.consoleConn(ctx, alice, key)
	if err == nil {
		c.Close(ctx)
		t.Fatal("alice (not an admin) got into the console")
	}
	if code := pgCode(err); code != codeInvalidAuthorization {
		t.Errorf("alice to the console: %v (SQLSTATE %q), want %s", err, code, codeInvalidAuthorization)
	}
	h.waitEvent("authz.denied", func(m map[string]any) bool { return m["user"] == alice && m["resource"] == config.ConsoleResource })
}

func TestConsoleSimpleQueryProtocolOnly(t *testing.T) {
	h := newConsoleHarness(t)
	key := h.signIn(bob)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := h.consoleConn(ctx, bob, key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	_, err = c.ExecParams(ctx, "SHOW HELP", nil, nil, nil, nil).Close()
	if code := pgCode(err); code != codeFeatureNotSupported || !strings.Contains(err.Error(), "simple query protocol only") {
		t.Errorf("extended protocol: %v (SQLSTATE %q)", err, code)
	}
	_, err = c.Prepare(ctx, "q", "SHOW SESSIONS", nil)
	if code := pgCode(err); code != codeFeatureNotSupported {
		t.Errorf("prepare: %v (SQLSTATE %q)", err, code)
	}

	// The session is still usable, and errors leave it so.
	tests := []struct {
		name, sql string
		code      string
		tag       string
		rows      int
	}{
		{name: "help", sql: "SHOW HELP", tag: "SHOW", rows: 9},
		{name: "unknown", sql: "SELECT 1", code: "42601"},
		{name: "no such session", sql: "KILL 0000000000000000", code: "42704"},
		{name: "two at once", sql: "SHOW RESOURCES; SHOW HELP;", tag: "SHOW", rows: 9},
		{name: "set from a driver", sql: "SET extra_float_digits = 3", tag: "SET"},
		{name: "graph outside the endpoint", sql: "CALL azure_search('contoso', 'https://example.org/v1.0/users')", code: "22023"},
		{name: "reload without a file", sql: "RELOAD", code: "0A000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Exec(ctx, tt.sql).ReadAll()
			if tt.code != "" {
				if code := pgCode(err); code != tt.code {
					t.Fatalf("%s: %v (SQLSTATE %q), want %s", tt.sql, err, code, tt.code)
				}
				if tt.code == "42601" && !strings.Contains(err.(*pgconn.PgError).Hint, "SHOW HELP") {
					t.Errorf("hint %q", err.(*pgconn.PgError).Hint)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			last := res[len(res)-1]
			if last.CommandTag.String() != tt.tag || len(last.Rows) != tt.rows {
				t.Errorf("%s: tag %q with %d rows, want %q with %d", tt.sql, last.CommandTag, len(last.Rows), tt.tag, tt.rows)
			}
			for _, f := range last.FieldDescriptions {
				if f.DataTypeOID != textOID {
					t.Errorf("column %s has type %d, want text", f.Name, f.DataTypeOID)
				}
			}
		})
	}
}

// Without admin groups (or without a console at all) the database does
// not exist, before any sign-in is started.
func TestConsoleDisabled(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, h.config(bob, "sign me in", config.ConsoleResource))
	if err == nil {
		c.Close(ctx)
		t.Fatal("connected to a console that is not configured")
	}
	if code := pgCode(err); code != codeInvalidCatalog {
		t.Errorf("%v (SQLSTATE %q), want %s", err, code, codeInvalidCatalog)
	}
	if len(sim.PendingDeviceCodes()) != 0 {
		t.Error("a device code was issued for a console that is off")
	}
}

// A signed-in admin who sends messages whose length fields lie gets a
// protocol error or ERROR, never a crashed process: the console decodes
// no message body it does not use.
func TestConsoleLyingMessages(t *testing.T) {
	h := newConsoleHarness(t)
	key := h.signIn(bob)
	tests := []struct {
		name string
		msg  []byte
	}{
		{name: "bind with counts past the end", msg: []byte{'B', 0, 0, 0, 10, 0, 0, 0xff, 0xff, 0xff, 0xff}},
		{name: "function call with counts past the end", msg: []byte{'F', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff}},
		{name: "query without its terminator", msg: []byte{'Q', 0, 0, 0, 8, 'S', 'H', 'O', 'W'}},
		{name: "empty query body", msg: []byte{'Q', 0, 0, 0, 4}},
		{name: "copy fail without a message", msg: []byte{'f', 0, 0, 0, 4}},
		{name: "length below four", msg: []byte{'Q', 0, 0, 0, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := h.consoleConn(ctx, bob, key)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			raw := c.Conn()
			if _, err := raw.Write(tt.msg); err != nil {
				t.Fatal(err)
			}
			raw.SetReadDeadline(time.Now().Add(10 * time.Second))
			reply := make([]byte, 1)
			n, err := raw.Read(reply)
			switch {
			case err != nil && !errors.Is(err, io.EOF):
				t.Fatalf("no answer: %v", err)
			case n == 1 && reply[0] != 'E':
				t.Fatalf("answer of type %q, want an ErrorResponse or a close", reply[0])
			}
			// portcullis is still up: a fresh console session works.
			ok, err := h.consoleConn(ctx, bob, key)
			if err != nil {
				t.Fatalf("after %s: %v", tt.name, err)
			}
			defer ok.Close(ctx)
			if _, err := ok.Exec(ctx, "SHOW HELP").ReadAll(); err != nil {
				t.Fatalf("SHOW HELP after %s: %v", tt.name, err)
			}
		})
	}
}

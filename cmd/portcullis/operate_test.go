package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy/console"
)

// The tenant of the operations tests: alice is an analyst, erin an
// admin, carol in no group.
const (
	opsTenant = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a9f"
	opsApp    = "e1d2c3b4-a5f6-4789-9abc-def012345678"
	opsAlice  = "alice@ops.example"
	opsErin   = "erin@ops.example"
	opsCarol  = "carol@ops.example"
	opsSecret = "ops-graph-secret-8c1f"
)

var opsRole = testpg.Role{Name: "ops_demo", Password: "ops-demo-backend-pw"}

func opsDirectory() *entrasim.Directory {
	return &entrasim.Directory{
		Tenant:       entrasim.Tenant{ID: opsTenant, Domain: "ops.example", DisplayName: "operations tests"},
		Applications: []entrasim.Application{{AppID: opsApp, DisplayName: "portcullis", PublicClient: true}},
		Users: []entrasim.User{
			{ID: "11111111-0000-4000-8000-000000000001", UPN: opsAlice, DisplayName: "Alice"},
			{ID: "11111111-0000-4000-8000-000000000002", UPN: opsErin, DisplayName: "Erin"},
			{ID: "11111111-0000-4000-8000-000000000003", UPN: opsCarol, DisplayName: "Carol"},
		},
		Groups: []entrasim.Group{
			{ID: "22222222-0000-4000-8000-000000000001", DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{opsAlice}}},
			{ID: "22222222-0000-4000-8000-000000000002", DisplayName: "Admins", Members: entrasim.GroupMembers{Users: []string{opsErin}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{{ID: "33333333-0000-4000-8000-000000000001", AppID: opsApp, DisplayName: "portcullis", Secrets: []string{opsSecret}}},
	}
}

var opsConfig = template.Must(template.New("ops").Parse(`providers:
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
{{- if .Extra}}
  - name: extra
    protocol: postgres
    address: {{.Backend}}
    database: postgres
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
  driver: memory
sessions:
  address_grace: 0s
admin:
  groups: [Admins]
  address: 127.0.0.1:0
proxy:
  drain_timeout: {{.Drain}}
`))

// opsServe is `portcullis serve` running in this process against a
// simulated tenant and a real PostgreSQL.
type opsServe struct {
	t       *testing.T
	sim     *entrasim.Server
	pg      *testpg.Server
	dir     string
	cfgPath string
	drain   time.Duration
	stdout  *syncBuffer
	cancel  context.CancelFunc
	done    chan error
	stopped bool  // done has been received from
	err     error // what serve returned, once stopped
	pgAddr  string
	admin   string // http://host:port
	// secrets, if set, collects the test's secrets; checkSecretsAtEnd
	// looks for them in the log and in what clients were shown.
	secrets *secretLedger
}

func startOps(t *testing.T, drain time.Duration, before func(*entrasim.Server)) *opsServe {
	t.Helper()
	pg := testpg.Start(t, testpg.Options{Roles: []testpg.Role{opsRole}})
	secrets := opsLedger()
	sim, err := entrasim.New(opsDirectory(), entrasim.Options{Middleware: secrets.watch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	dir := t.TempDir()
	if err := sim.WriteCAFile(filepath.Join(dir, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"graph-secret": opsSecret, "backend.password": opsRole.Password} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writeSelfSignedCert(dir); err != nil {
		t.Fatal(err)
	}
	s := &opsServe{t: t, sim: sim, pg: pg, dir: dir, cfgPath: filepath.Join(dir, "portcullis.yaml"), drain: drain, stdout: &syncBuffer{}, done: make(chan error, 1), secrets: secrets}
	s.checkSecretsAtEnd()
	s.writeConfig(false)
	if before != nil {
		before(sim)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		var stderr syncBuffer
		s.done <- dispatch(ctx, []string{"serve", "--config", s.cfgPath}, nil, s.stdout, &stderr)
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
	return s
}

// ready waits for the listener to be serving and notes its address.
func (s *opsServe) ready() {
	s.t.Helper()
	s.pgAddr = s.waitEvent("listener.started", nil)["address"].(string)
	s.waitEvent("server.started", nil)
}

func (s *opsServe) writeConfig(extra bool) {
	s.t.Helper()
	f, err := os.Create(s.cfgPath + ".new")
	if err != nil {
		s.t.Fatal(err)
	}
	err = opsConfig.Execute(f, map[string]any{
		"Tenant": opsTenant, "App": opsApp, "Sim": s.sim.URL(), "Dir": s.dir,
		"Backend": s.pg.Addr(), "Role": opsRole.Name, "Extra": extra, "Drain": s.drain.String(),
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.t.Fatal(err)
	}
	// Replaced at once, as a ConfigMap update is: a reload never reads
	// half a file.
	if err := os.Rename(s.cfgPath+".new", s.cfgPath); err != nil {
		s.t.Fatal(err)
	}
}

// events returns the logged events named event, each as its JSON fields.
func (s *opsServe) events(event string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.stdout.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// waitEvent polls the log for the first event named event that ok
// accepts (nil accepts any), failing if serve stops first.
func (s *opsServe) waitEvent(event string, ok func(map[string]any) bool) map[string]any {
	s.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		for _, m := range s.events(event) {
			if ok == nil || ok(m) {
				return m
			}
		}
		if s.stopped {
			s.t.Fatalf("serve ended (%v) before logging %s", s.err, event)
		}
		select {
		case s.err = <-s.done:
			s.stopped = true // one more look at the log, then fail
		case <-deadline:
			s.t.Fatalf("no %s event within 30s", event)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *opsServe) get(path string) (int, string) {
	s.t.Helper()
	resp, err := http.Get(s.admin + path)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitStatus polls path until it answers status.
func (s *opsServe) waitStatus(path string, status int) string {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := s.get(path)
		if code == status {
			return body
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s answers %d, not %d, after 30s:\n%s", path, code, status, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *opsServe) token(upn string) string {
	s.t.Helper()
	tok, err := s.sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: opsApp, ClientID: opsApp})
	if err != nil {
		s.t.Fatal(err)
	}
	if s.secrets != nil {
		s.secrets.add("access token", tok)
	}
	return tok
}

func (s *opsServe) connect(ctx context.Context, user, password, database string) (*pgconn.PgConn, error) {
	host, port, _ := strings.Cut(s.pgAddr, ":")
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=require connect_timeout=20", host, port, user, database))
	if err != nil {
		s.t.Fatal(err)
	}
	cfg.Password = password
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil && s.secrets != nil {
		s.secrets.clientSaw(fmt.Sprintf("the error connecting as %s to %s", user, database), err.Error())
	}
	return c, err
}

func (s *opsServe) hup() {
	s.t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		s.t.Fatal(err)
	}
}

func query(ctx context.Context, t *testing.T, c *pgconn.PgConn, sql string) [][]string {
	t.Helper()
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var rows [][]string
	for _, r := range res[len(res)-1].Rows {
		cells := make([]string, len(r))
		for i, v := range r {
			cells[i] = string(v)
		}
		rows = append(rows, cells)
	}
	return rows
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

var userCodeInNotice = regexp.MustCompile(`enter the code ([^\s,]+)`)

// One serve process through a day of operations: health, sign-ins,
// the console, reload by SIGHUP (good and bad files) and by RELOAD,
// metrics, then SIGTERM's drain.
func TestServeOperations(t *testing.T) {
	const drain = 2 * time.Second
	s := startOps(t, drain, nil)
	if code, body := s.get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	s.ready()
	body := s.waitStatus("/readyz", http.StatusOK)
	for _, check := range []string{"ok config", "ok identity", "ok listeners", "ok store"} {
		if !strings.Contains(body, check) {
			t.Errorf("/readyz does not say %q:\n%s", check, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// alice signs in with a device code and keeps a session open.
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=demo sslmode=require", strings.Split(s.pgAddr, ":")[1], opsAlice))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "sign me in"
	var key string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if m := userCodeInNotice.FindStringSubmatch(n.Message); m != nil {
			go func() {
				if err := s.sim.Approve(m[1], opsAlice); err != nil {
					t.Error(err)
				}
			}()
		}
		if _, k, ok := strings.Cut(n.Message, "session key as your password: "); ok {
			key = k
			s.secrets.add("session key", k)
		}
		s.secrets.clientSaw("a notice to alice signing in", n.Message, key)
	}
	held, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("alice's sign-in: %v", err)
	}
	defer held.Close(context.Background())
	if got := query(ctx, t, held, "select current_user"); got[0][0] != opsRole.Name {
		t.Fatalf("alice runs as %q", got[0][0])
	}
	if key == "" {
		t.Fatal("no session key shown")
	}

	// carol is in no allowed group.
	if c, err := s.connect(ctx, opsCarol, s.token(opsCarol), "demo"); err == nil {
		c.Close(ctx)
		t.Fatal("carol got in")
	} else if pgCode(err) != "28000" {
		t.Errorf("carol: %v", err)
	}

	// erin runs the console; she ends a second session of alice's.
	console, err := s.connect(ctx, opsErin, s.token(opsErin), "portcullis")
	if err != nil {
		t.Fatalf("erin to the console: %v", err)
	}
	defer console.Close(context.Background())
	victim, err := s.connect(ctx, opsAlice, key, "demo")
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	query(ctx, t, victim, "select 1")
	victimPort := strconv.Itoa(victim.Conn().LocalAddr().(*net.TCPAddr).Port)
	var victimID string
	for _, r := range query(ctx, t, console, "SHOW SESSIONS") {
		if strings.HasSuffix(r[7], ":"+victimPort) {
			victimID = r[0]
		}
	}
	if victimID == "" {
		t.Fatal("SHOW SESSIONS does not list alice's second session")
	}
	query(ctx, t, console, "KILL "+victimID)
	if _, err := victim.Exec(ctx, "select 1").ReadAll(); pgCode(err) != "57P01" {
		t.Errorf("the killed session: %v", err)
	}

	// Graph throttles once; azure_search waits and answers.
	s.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, Times: 1})
	if got := query(ctx, t, console, "CALL azure_search('ops', '/v1.0/users/$count')"); got[0][0] != "3" {
		t.Errorf("user count %q", got)
	}

	// SIGHUP with a new resource: reachable at once, alice's session
	// carries on.
	if _, err := s.connect(ctx, opsAlice, key, "extra"); pgCode(err) != "3D000" {
		t.Fatalf("extra before the reload: %v", err)
	}
	s.writeConfig(true)
	s.hup()
	s.waitEvent("config.reloaded", func(m map[string]any) bool { return fmt.Sprint(m["resources_added"]) == "[extra]" })
	extra, err := s.connect(ctx, opsAlice, key, "extra")
	if err != nil {
		t.Fatalf("extra after the reload: %v", err)
	}
	query(ctx, t, extra, "select 1")
	extra.Close(ctx)
	query(ctx, t, held, "select 1")

	// A broken file is refused, says why, and the running configuration
	// keeps serving.
	if err := os.WriteFile(s.cfgPath, []byte("resources: [\n  - name: oops\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.hup()
	failed := s.waitEvent("config.reload_failed", nil)
	if problems := fmt.Sprint(failed["problems"]); !strings.Contains(problems, "invalid YAML") {
		t.Errorf("reload_failed problems = %s", problems)
	}
	if extra, err := s.connect(ctx, opsAlice, key, "extra"); err != nil {
		t.Errorf("extra after the refused reload: %v", err)
	} else {
		extra.Close(ctx)
	}
	query(ctx, t, held, "select 1")
	if _, err := console.Exec(ctx, "RELOAD").ReadAll(); pgCode(err) != "F0000" {
		t.Errorf("RELOAD of a broken file: %v", err)
	}
	s.writeConfig(false)
	query(ctx, t, console, "RELOAD")
	if _, err := s.connect(ctx, opsAlice, key, "extra"); pgCode(err) != "3D000" {
		t.Errorf("extra after RELOAD removed it: %v", err)
	}

	// Every family has moved.
	_, metricsText := s.get("/metrics")
	for _, family := range []string{
		`portcullis_connections_accepted_total{listener="postgres",protocol="postgres"}`,
		`portcullis_connections_active{protocol="postgres",resource="demo",state="active"}`,
		`portcullis_sessions_total{protocol="postgres",resource="demo"}`,
		`portcullis_bytes_relayed_total{direction="to_backend",protocol="postgres",resource="demo"}`,
		`portcullis_bytes_relayed_total{direction="to_client",protocol="postgres",resource="demo"}`,
		`portcullis_sign_ins_total{method="device_code",protocol="postgres",result="ok"}`,
		`portcullis_sign_ins_total{method="access_token",protocol="postgres",result="not_allowed"}`,
		`portcullis_device_code_wait_seconds_count{result="ok"}`,
		`portcullis_connection_failures_total{kind="not_allowed",protocol="postgres"}`,
		`portcullis_sessions_revoked_total{reason="operator"}`,
		`portcullis_graph_requests_total{code="200",provider="ops"}`,
		`portcullis_graph_request_duration_seconds_count{provider="ops"}`,
		`portcullis_graph_throttled_total{provider="ops"}`,
		`portcullis_entra_requests_total{code="200",provider="ops"}`,
		`portcullis_store_operation_duration_seconds_count{op="get_sign_in"}`,
		`portcullis_config_reloads_total{result="ok"}`,
		`portcullis_config_reloads_total{result="failed"}`,
		`portcullis_build_info{version="` + version + `"}`,
	} {
		if v := sampleValue(metricsText, family); v <= 0 {
			t.Errorf("/metrics: %s = %v, want > 0", family, v)
		}
	}

	// SIGTERM: no new connections, not ready, and the open session ends
	// with 57P01 once the drain time is over.
	queried := make(chan error, 1)
	go func() {
		_, err := held.Exec(ctx, "select pg_sleep(20)").ReadAll()
		queried <- err
	}()
	waitActive(ctx, t, s.pg, "select pg_sleep(20)")
	start := time.Now()
	s.cancel()
	s.waitEvent("server.draining", nil)
	if body := s.waitStatus("/readyz", http.StatusServiceUnavailable); !strings.Contains(body, "failed listeners: draining") {
		t.Errorf("/readyz while draining:\n%s", body)
	}
	if c, err := s.connect(ctx, opsAlice, key, "demo"); err == nil {
		c.Close(ctx)
		t.Error("a new connection was accepted while draining")
	}
	err = <-queried
	if took := time.Since(start); took < drain-100*time.Millisecond {
		t.Errorf("the session ended %v after SIGTERM, before the drain time %v", took, drain)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Errorf("the open session ended with %v, want FATAL 57P01", err)
	}
	select {
	case s.err = <-s.done:
		s.stopped = true
		if s.err != nil {
			t.Errorf("serve returned %v after the drain", s.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after the drain")
	}
}

// Until the identity core has fetched its providers' discovery documents
// /readyz says not ready; a provider that never answers keeps portcullis
// from starting at all (and the process exits, for its supervisor to
// restart).
func TestReadinessWaitsForDiscovery(t *testing.T) {
	t.Run("slow", func(t *testing.T) {
		s := startOps(t, time.Second, func(sim *entrasim.Server) {
			sim.SetFault(entrasim.EndpointDiscovery, entrasim.Fault{Latency: 2 * time.Second, Times: 1})
		})
		code, body := s.get("/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "failed identity") {
			t.Errorf("/readyz during start-up = %d:\n%s", code, body)
		}
		s.ready()
		s.waitStatus("/readyz", http.StatusOK)
	})
	t.Run("down", func(t *testing.T) {
		s := startOps(t, time.Second, func(sim *entrasim.Server) {
			sim.SetFault(entrasim.EndpointDiscovery, entrasim.Fault{Status: http.StatusServiceUnavailable})
		})
		if !s.stopped {
			select {
			case s.err = <-s.done:
				s.stopped = true
			case <-time.After(60 * time.Second):
				t.Fatal("serve kept running with discovery down")
			}
		}
		if s.err == nil || !strings.Contains(s.err.Error(), "identity core") || !strings.Contains(s.err.Error(), "discovery") {
			t.Errorf("serve with discovery down returned %v", s.err)
		}
	})
}

// sampleValue finds a sample line in the exposition text; -1 if absent.
func sampleValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// waitActive polls the backend until a query starting with prefix runs.
func waitActive(ctx context.Context, t *testing.T, pg *testpg.Server, prefix string) {
	t.Helper()
	su, err := pg.Superuser(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	for {
		res, err := su.Exec(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '"+prefix+"%'").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if string(res[0].Rows[0][0]) != "0" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%q never ran", prefix)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// When serve runs on the state store, the operator's instruments find it
// behind the identity core's dependencies: its health for /readyz, its
// TOTP reset for the console, its shared pending sign-ins kept visible
// through the timing wrapper.
func TestAuthDepsFindTheStateStore(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, config.Store{Driver: config.StoreMemory})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	totp := mfa.New(st, mfa.Options{})
	o := newOperations(&config.Config{}, zap.NewNop(), nil)
	d := o.authDeps(auth.Deps{Sessions: st, TOTP: totp})

	if o.storePing == nil || o.storePing(ctx) != nil {
		t.Error("the store's ping is not a readiness check")
	}
	if o.totp != console.TOTPResetter(totp) {
		t.Error("the console's TOTP RESET does not reach the TOTP checker")
	}
	if pending, ok := any(st).(auth.PendingSignInStore); ok && d.PendingSignIns != pending {
		t.Error("the store's pending sign-ins are hidden by the timing wrapper")
	}
	if d.Sessions == auth.SessionStore(st) {
		t.Error("the sign-in store is not timed")
	}
	var h auth.KeyHash
	if err := d.Sessions.PutSignIn(ctx, h, auth.SignInRecord{LoginName: "x", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	samples, err := o.reg.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	timed := false
	for _, s := range samples {
		timed = timed || (s.Name == "portcullis_store_operation_duration_seconds_count" && s.Labels == `op="put_sign_in"` && s.Value == 1)
	}
	if !timed {
		t.Errorf("no store latency sample: %v", samples)
	}

	// Without a store: a memory sign-in store, nothing to ping, no TOTP.
	o = newOperations(&config.Config{}, zap.NewNop(), nil)
	d = o.authDeps(auth.Deps{})
	if d.Sessions == nil || o.storePing != nil || o.totp != nil {
		t.Errorf("without a store: sessions %v, ping set %v, totp %v", d.Sessions, o.storePing != nil, o.totp)
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "90d", want: 90 * 24 * time.Hour},
		{in: "1d", want: 24 * time.Hour},
		{in: "12h", want: 12 * time.Hour},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "0d", wantErr: true},
		{in: "-3d", wantErr: true},
		{in: "-1h", wantErr: true},
		{in: "ninety days", wantErr: true},
		{in: "90", wantErr: true},
		{in: "d", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseTTL(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseTTL(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseTTL(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// The program of the access key tests: a service principal among the
// operations tests' analysts.
const (
	keysBotApp = "f0e1d2c3-b4a5-4968-8776-655443322110"
	keysBotOID = "33333333-0000-4000-8000-000000000099"
)

var keysConfig = template.Must(template.New("keys").Parse(`providers:
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
listeners:
  - name: postgres
    protocol: postgres
    address: 127.0.0.1:0
tls:
  cert_file: {{.Dir}}/listener.crt
  key_file: {{.Dir}}/listener.key
store:
  driver: sqlite
  path: {{.Dir}}/state.db
sessions:
  address_grace: 0s
authz:
  recheck: 1s
admin:
  address: 127.0.0.1:0
`))

// keysServe runs serve against a tenant with the program in Analysts and
// a SQLite store that the keys commands share with it.
func keysServe(t *testing.T) *opsServe {
	t.Helper()
	pg := testpg.Start(t, testpg.Options{Roles: []testpg.Role{opsRole}})
	dir := opsDirectory()
	dir.ServicePrincipals = append(dir.ServicePrincipals, entrasim.ServicePrincipal{ID: keysBotOID, AppID: keysBotApp, DisplayName: "nightly-etl", Secrets: []string{"unused-" + opsSecret}})
	dir.Groups[0].Members.ServicePrincipals = []string{"nightly-etl"}
	secrets := opsLedger()
	secrets.add("client secret", "unused-"+opsSecret)
	sim, err := entrasim.New(dir, entrasim.Options{Middleware: secrets.watch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tmp := t.TempDir()
	if err := sim.WriteCAFile(filepath.Join(tmp, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"graph-secret": opsSecret, "backend.password": opsRole.Password} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writeSelfSignedCert(tmp); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(tmp, "portcullis.yaml")
	f, err := os.Create(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	err = keysConfig.Execute(f, map[string]any{"Tenant": opsTenant, "App": opsApp, "Sim": sim.URL(), "Dir": tmp, "Backend": pg.Addr(), "Role": opsRole.Name})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s := &opsServe{t: t, sim: sim, pg: pg, dir: tmp, cfgPath: cfgPath, stdout: &syncBuffer{}, done: make(chan error, 1), secrets: secrets}
	s.checkSecretsAtEnd()
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

// keys runs a keys command against s's configuration, as an admin would
// in another process.
func keysCommand(t *testing.T, s *opsServe, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(append(append([]string{"keys"}, args...), "--config", s.cfgPath), nil, &out, &errOut)
	return code, out.String(), errOut.String()
}

var (
	createdKey = regexp.MustCompile(`(?m)^(` + regexp.QuoteMeta("pak_") + `[a-z2-7]{52})$`)
	createdID  = regexp.MustCompile(`access key ([a-z2-7]{12}) for`)
)

func createKeyFor(t *testing.T, s *opsServe, forID string) (key, id string) {
	t.Helper()
	code, out, errOut := keysCommand(t, s, "create", "--for", forID, "--resource", "demo", "--ttl", "30d")
	if code != exitOK {
		t.Fatalf("keys create: exit %d\n%s%s", code, out, errOut)
	}
	k, i := createdKey.FindStringSubmatch(out), createdID.FindStringSubmatch(out)
	if k == nil || i == nil {
		t.Fatalf("keys create printed no key and id:\n%s", out)
	}
	s.secrets.add("access key", k[1])
	return k[1], i[1]
}

func TestAccessKeysEndToEnd(t *testing.T) {
	s := keysServe(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	botKey, botID := createKeyFor(t, s, strings.ToUpper(keysBotApp))
	aliceKey, aliceID := createKeyFor(t, s, opsAlice)

	// The list shows both, never a key.
	code, out, _ := keysCommand(t, s, "list")
	if code != exitOK {
		t.Fatalf("keys list: exit %d", code)
	}
	s.secrets.clientSaw("keys list", out)
	for _, want := range []string{"ID", "LAST USED", botID, keysBotApp, aliceID, opsAlice, "demo", "never", "active"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys list lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, botKey) || strings.Contains(out, aliceKey) || strings.Contains(out, botKey[4:20]) {
		t.Errorf("keys list shows a key:\n%s", out)
	}

	// A program connects with its key: no secret, no sign-in.
	bot, err := s.connect(ctx, keysBotApp, botKey, "demo")
	if err != nil {
		t.Fatalf("connect with the program's key: %v", err)
	}
	defer bot.Close(ctx)
	if got := query(ctx, t, bot, "select current_user")[0][0]; got != opsRole.Name {
		t.Errorf("current_user = %q", got)
	}
	alice, err := s.connect(ctx, opsAlice, aliceKey, "demo")
	if err != nil {
		t.Fatalf("connect with alice's key: %v", err)
	}
	defer alice.Close(ctx)
	s.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == "access_key" && m["user"] == keysBotApp })
	// Someone else presenting alice's key is refused.
	if _, err := s.connect(ctx, opsCarol, aliceKey, "demo"); pgCode(err) != "28P01" {
		t.Errorf("carol with alice's key: %v, want 28P01", err)
	}
	_, out, _ = keysCommand(t, s, "list")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, botID) && strings.Contains(line, "never") {
			t.Errorf("the program's key has not been used, says the list: %q", line)
		}
	}

	// Revoked while the program's session runs: the session ends with
	// an error, alice's goes on.
	code, out, errOut := keysCommand(t, s, "revoke", botID)
	if code != exitOK || !strings.Contains(out, "revoked") {
		t.Fatalf("keys revoke: exit %d\n%s%s", code, out, errOut)
	}
	var ended *pgconn.PgError
	deadline := time.Now().Add(20 * time.Second)
	for ended == nil && time.Now().Before(deadline) {
		if _, err := bot.Exec(ctx, "select 1").ReadAll(); err != nil {
			if !errors.As(err, &ended) {
				t.Fatalf("the session ended without an error message: %v", err)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ended == nil {
		t.Fatal("the program's session outlived its revoked key by 20s (authz.recheck is 1s)")
	}
	if ended.Code != "28000" || !strings.Contains(ended.Message, "access revoked: the access key "+botID) {
		t.Errorf("the session ended with %s %q", ended.Code, ended.Message)
	}
	ev := s.waitEvent("session.revoked", nil)
	if ev["reason"] != "key_revoked" || ev["user"] != keysBotApp {
		t.Errorf("session.revoked = %v", ev)
	}
	if got := query(ctx, t, alice, "select 1")[0][0]; got != "1" {
		t.Errorf("alice's session: %q", got)
	}
	if _, err := s.connect(ctx, keysBotApp, botKey, "demo"); pgCode(err) != "28P01" {
		t.Errorf("connect with the revoked key: %v, want 28P01", err)
	}
	_, out, _ = keysCommand(t, s, "list")
	if !strings.Contains(out, "revoked") {
		t.Errorf("keys list does not show the revocation:\n%s", out)
	}
	if strings.Contains(s.stdout.String(), botKey) || strings.Contains(s.stdout.String(), aliceKey) {
		t.Errorf("a key reached the log")
	}
}

func TestKeysCommandUsage(t *testing.T) {
	f := newTOTPFixture(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{name: "no subcommand", args: []string{"keys"}, wantCode: exitUsage, want: "create|list|revoke"},
		{name: "unknown subcommand", args: []string{"keys", "rotate"}, wantCode: exitUsage, want: `unknown keys command "rotate"`},
		{name: "create without --for", args: []string{"keys", "create", "--resource", "vault"}, wantCode: exitUsage, want: "needs --for ID and --resource R"},
		{name: "create with a bad ttl", args: []string{"keys", "create", "--for", "a@b.example", "--resource", "vault", "--ttl", "soon"}, wantCode: exitUsage, want: "--ttl"},
		{name: "create for a display name", args: []string{"keys", "create", "--for", "nightly-etl", "--resource", "vault"}, wantCode: exitUsage, want: "neither a user principal name"},
		{name: "create for an unknown resource", args: []string{"keys", "create", "--for", "a@b.example", "--resource", "nope"}, wantCode: exitUsage, want: `no resource called "nope"`},
		{name: "revoke without an id", args: []string{"keys", "revoke"}, wantCode: exitUsage, want: "exactly one KEYID"},
		{name: "revoke a malformed id", args: []string{"keys", "revoke", "pak_abc"}, wantCode: exitUsage, want: "is not an access key id"},
		{name: "revoke an unknown id", args: []string{"keys", "revoke", "aaaaaaaaaaaa"}, wantCode: exitFailure, want: "no access key aaaaaaaaaaaa"},
		{name: "list with an argument", args: []string{"keys", "list", "extra"}, wantCode: exitUsage, want: "takes no arguments"},
		{name: "list empty", args: []string{"keys", "list"}, wantCode: exitOK, want: "no access keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := f.run(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(out+errOut, tt.want) {
				t.Errorf("exit %d, output %q; want exit %d and %q", code, out+errOut, tt.wantCode, tt.want)
			}
		})
	}
}

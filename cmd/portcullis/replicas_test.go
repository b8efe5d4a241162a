package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

// replicaConfig is one of two replicas behind a load balancer: the same
// tenant, resources and PostgreSQL store; each its own listener.
var replicaConfig = template.Must(template.New("replica").Parse(`providers:
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
    prompt: notice
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
  - name: secure
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    allow_groups: [Analysts]
    require_totp: true
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
  driver: postgres
  dsn_file: {{.Dir}}/store.dsn
  key_file: {{.Dir}}/store.key
sessions:
  address_grace: 0s
admin:
  address: 127.0.0.1:0
`))

// startReplicas runs two serve processes' worth of portcullis in this
// process, sharing one simulated tenant, one backend and one PostgreSQL
// store, and nothing else: each has its own auth state, caches and
// listener, as two pods have.
func startReplicas(t *testing.T) (a, b *opsServe) {
	t.Helper()
	storeRole := testpg.Role{Name: "portcullis_state", Password: "replica-store-pw"}
	pg := testpg.Start(t, testpg.Options{Roles: []testpg.Role{opsRole, storeRole}, Setup: []string{"CREATE DATABASE portcullis_state OWNER portcullis_state"}})
	sim, err := entrasim.New(opsDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	dir := t.TempDir()
	if err := sim.WriteCAFile(filepath.Join(dir, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	sealKey := make([]byte, 32)
	for i := range sealKey {
		sealKey[i] = byte(i*7 + 3)
	}
	files := map[string]string{
		"graph-secret":     opsSecret,
		"backend.password": opsRole.Password,
		"store.dsn":        fmt.Sprintf("postgres://%s:%s@%s/portcullis_state?sslmode=disable", storeRole.Name, storeRole.Password, pg.Addr()),
		"store.key":        base64.StdEncoding.EncodeToString(sealKey),
	}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writeSelfSignedCert(dir); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "portcullis.yaml")
	f, err := os.Create(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	err = replicaConfig.Execute(f, map[string]any{"Tenant": opsTenant, "App": opsApp, "Sim": sim.URL(), "Dir": dir, "Backend": pg.Addr(), "Role": opsRole.Name})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	start := func(name string) *opsServe {
		s := &opsServe{t: t, sim: sim, pg: pg, dir: dir, cfgPath: cfgPath, stdout: &syncBuffer{}, done: make(chan error, 1)}
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
				t.Logf("replica %s log:\n%s", name, s.stdout.String())
			}
		})
		s.ready()
		return s
	}
	return start("a"), start("b")
}

// TestReplicasShareTheStore: two replicas on one PostgreSQL store behave
// as one. A session key issued by one is accepted by the other; a TOTP
// secret enrolled through one is known to the other; and a code accepted
// by one is refused by the other, so a code seen over someone's shoulder
// cannot be replayed through the next pod.
func TestReplicasShareTheStore(t *testing.T) {
	a, b := startReplicas(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// alice signs in through replica a with a device code.
	key := signInThrough(ctx, t, a, opsAlice)

	// Replica b has never seen alice: the key alone lets her in.
	c, err := b.connect(ctx, opsAlice, key, "demo")
	if err != nil {
		t.Fatalf("replica b refused the session key replica a issued: %v", err)
	}
	if got := query(ctx, t, c, "select current_user")[0][0]; got != opsRole.Name {
		t.Errorf("through replica b alice runs as %q, want %q", got, opsRole.Name)
	}
	c.Close(ctx)
	b.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == "session_key" })

	// The TOTP resource: replica a shows the enrolment and refuses the
	// connection until a code comes.
	notices, err := connectNoticed(ctx, t, a, opsAlice, key, "secure")
	if err == nil {
		t.Fatal("replica a let alice into the TOTP resource without a code")
	}
	secret := enrolmentSecret(t, notices)

	// The first good code, through a, activates the secret.
	code, step := currentCode(t, secret)
	c, err = a.connect(ctx, opsAlice, key+":"+code, "secure")
	if err != nil {
		t.Fatalf("replica a refused the first code: %v", err)
	}
	c.Close(ctx)

	// The same code through b: replayed, refused.
	if c, err := b.connect(ctx, opsAlice, key+":"+code, "secure"); err == nil {
		c.Close(ctx)
		t.Fatal("replica b accepted a code replica a had already accepted")
	} else if pgCode(err) != "28P01" || !strings.Contains(err.Error(), "already used") {
		t.Errorf("replayed code through b: %v, want SQLSTATE 28P01 saying the code was already used", err)
	}
	b.waitEvent("mfa.totp.failed", func(m map[string]any) bool { return m["kind"] == "reused_code" })

	// The next step's code through b: b knows the secret a enrolled.
	next := waitForNextStep(ctx, t, secret, step)
	c, err = b.connect(ctx, opsAlice, key+":"+next, "secure")
	if err != nil {
		t.Fatalf("replica b refused a fresh code for the secret enrolled through a: %v", err)
	}
	c.Close(ctx)
}

// signInThrough signs user in through s with the device-code flow,
// approving the code the notice shows, and returns the session key.
func signInThrough(ctx context.Context, t *testing.T, s *opsServe, user string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=demo sslmode=require", strings.Split(s.pgAddr, ":")[1], user))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "sign me in"
	keys := make(chan string, 1)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if m := userCodeInNotice.FindStringSubmatch(n.Message); m != nil {
			go func() {
				if err := s.sim.Approve(m[1], user); err != nil {
					t.Error(err)
				}
			}()
		}
		if _, k, ok := strings.Cut(n.Message, "session key as your password: "); ok {
			keys <- k
		}
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("%s's sign-in: %v", user, err)
	}
	c.Close(ctx)
	select {
	case k := <-keys:
		return k
	default:
		t.Fatalf("%s signed in but was shown no session key", user)
		return ""
	}
}

// connectNoticed tries a connection through s, gathering the notices
// it is shown, and closes it again if it succeeds.
func connectNoticed(ctx context.Context, t *testing.T, s *opsServe, user, password, database string) (string, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=%s sslmode=require", strings.Split(s.pgAddr, ":")[1], user, database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	var notices strings.Builder
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices.WriteString(n.Message + "\n") }
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		c.Close(ctx)
	}
	return notices.String(), err
}

// enrolmentSecret reads the secret from the otpauth URI in msg, as an
// authenticator app reads it from the QR code.
func enrolmentSecret(t *testing.T, msg string) string {
	t.Helper()
	i := strings.Index(msg, "otpauth://")
	if i < 0 {
		t.Fatalf("no otpauth URI in the refusal: %s", msg)
	}
	raw := msg[i:]
	if j := strings.IndexAny(raw, " \n\t)\""); j >= 0 {
		raw = raw[:j]
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("otpauth URI %q: %v", raw, err)
	}
	secret := u.Query().Get("secret")
	if secret == "" {
		t.Fatalf("otpauth URI %q has no secret", raw)
	}
	return secret
}

const totpPeriod = 30

// currentCode is the code for now, and its step.
func currentCode(t *testing.T, secret string) (string, int64) {
	t.Helper()
	now := time.Now()
	code, err := totp.GenerateCodeCustom(secret, now, totp.ValidateOpts{Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return code, now.Unix() / totpPeriod
}

// waitForNextStep waits, on the clock, for the TOTP step after step and
// returns its code.
func waitForNextStep(ctx context.Context, t *testing.T, secret string, step int64) string {
	t.Helper()
	for {
		if code, s := currentCode(t, secret); s > step {
			return code
		}
		select {
		case <-ctx.Done():
			t.Fatal("the next TOTP step did not come before the test's deadline")
		case <-time.After(time.Until(time.Unix((step+1)*totpPeriod, 0))):
		}
	}
}

package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
)

// The test tenant. Secrets are random per run so that the log-hygiene test
// cannot pass by accident.
const (
	testTenant    = "7d1e2b3c-4a5f-4e6d-8c9b-0a1b2c3d4e5f"
	otherTenant   = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	portcullisApp = "0f6c1a2b-3c4d-4e5f-8a9b-1c2d3e4f5a6b"
	etlBotApp     = "6e5d4c3b-2a19-4807-b6a5-948372615041"
	etlBotOID     = "b0000001-0000-4000-8000-000000000001"
	analystsID    = "a0000002-0000-4000-8000-000000000002"
	seniorID      = "a0000003-0000-4000-8000-000000000003"
	financeID     = "a0000004-0000-4000-8000-000000000004"
	aliceUPN      = "alice@contoso.example"
	bobUPN        = "bob@contoso.example"
	carolUPN      = "carol@contoso.example"
)

var (
	graphSecret  = "graph-" + randomHex(16)
	etlSecret    = "etl-" + randomHex(16)
	backendPass  = "backend-" + randomHex(16)
	seniorPass   = "senior-" + randomHex(16)
	financePass  = "finance-" + randomHex(16)
	aliceAddr    = netip.MustParseAddr("192.0.2.10")
	otherAddr    = netip.MustParseAddr("198.51.100.7")
	testDeadline = 20 * time.Second
)

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// testDirectory builds the simulated tenant: groups nest
// Data Readers ⊃ Analysts ⊃ Senior Analysts; bob and etl-bot are in
// Finance; carol is in nothing.
func testDirectory() *entrasim.Directory {
	return &entrasim.Directory{
		Tenant: entrasim.Tenant{ID: testTenant, Domain: "contoso.example", DisplayName: "Contoso (test)"},
		Applications: []entrasim.Application{
			{AppID: portcullisApp, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis-test"}, PublicClient: true},
		},
		Users: []entrasim.User{
			{ID: "11111111-aaaa-4aaa-8aaa-111111111111", UPN: aliceUPN, DisplayName: "Alice Analyst"},
			{ID: "22222222-bbbb-4bbb-8bbb-222222222222", UPN: bobUPN, DisplayName: "Bob Finance"},
			{ID: "33333333-cccc-4ccc-8ccc-333333333333", UPN: carolUPN, DisplayName: "Carol Contractor"},
		},
		Groups: []entrasim.Group{
			{ID: "a0000001-0000-4000-8000-000000000001", DisplayName: "Data Readers", Members: entrasim.GroupMembers{Groups: []string{"Analysts"}}},
			{ID: analystsID, DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{aliceUPN}, Groups: []string{"Senior Analysts"}}},
			{ID: seniorID, DisplayName: "Senior Analysts", Members: entrasim.GroupMembers{Users: []string{bobUPN}}},
			{ID: financeID, DisplayName: "Finance", Members: entrasim.GroupMembers{Users: []string{bobUPN}, ServicePrincipals: []string{"etl-bot"}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: etlBotOID, AppID: etlBotApp, DisplayName: "etl-bot", Secrets: []string{etlSecret}},
			{ID: "b0000002-0000-4000-8000-000000000002", AppID: portcullisApp, DisplayName: "portcullis", Secrets: []string{graphSecret}},
		},
	}
}

// logBuffer collects everything written by the Authorizer's logger and
// the simulator's request log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) Sync() error { return nil }

func (l *logBuffer) logf(format string, args ...any) {
	fmt.Fprintf(l, format+"\n", args...)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, l, zapcore.DebugLevel))
}

type env struct {
	sim  *entrasim.Server
	cfg  *config.Config
	a    *Authorizer
	logs *logBuffer
	now  func() time.Time
}

type envOption func(*envSetup)

type envSetup struct {
	simOpts entrasim.Options
	cfg     func(*config.Config)
	deps    func(*Deps)
}

func withConfig(f func(*config.Config)) envOption {
	return func(s *envSetup) { s.cfg = f }
}

func withDeps(f func(*Deps)) envOption {
	return func(s *envSetup) { s.deps = f }
}

func withSim(o entrasim.Options) envOption {
	return func(s *envSetup) { s.simOpts = o }
}

func durationPtr(d time.Duration) *time.Duration { return &d }

// newEnv starts a simulator and a started Authorizer configured against
// it.
func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	var setup envSetup
	for _, o := range opts {
		o(&setup)
	}
	logs := &logBuffer{}
	simOpts := setup.simOpts
	simOpts.Logf = logs.logf
	sim, err := entrasim.New(testDirectory(), simOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })

	cfg := simConfig(sim)
	if setup.cfg != nil {
		setup.cfg(cfg)
	}
	deps := Deps{
		Logger:      logs.logger(),
		HTTPClients: httpClients(sim),
	}
	if setup.deps != nil {
		setup.deps(&deps)
	}
	a, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &env{sim: sim, cfg: cfg, a: a, logs: logs}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	t.Cleanup(cancel)
	return ctx
}

// approveNext waits for the next device code the simulator issues and
// approves it as upn.
func (e *env) approveNext(t *testing.T, ctx context.Context, upn string) entrasim.PendingDeviceCode {
	t.Helper()
	pc, err := e.sim.WaitForDeviceCode(ctx)
	if err != nil {
		t.Error(err)
		return pc
	}
	if err := e.sim.Approve(pc.UserCode, upn); err != nil {
		t.Error(err)
	}
	return pc
}

// noticeRequest is a notice-mode request whose prompts are recorded.
func noticeRequest(login, resource string, addr netip.Addr, prompts chan<- DeviceCodePrompt) Request {
	return Request{
		Protocol: "postgres", Resource: resource, LoginName: login, Password: "anything",
		ClientAddr: addr, Mode: PromptNotice,
		Prompt: func(p DeviceCodePrompt) error {
			if prompts != nil {
				prompts <- p
			}
			return nil
		},
	}
}

// wantRefusal checks that err is a *Refusal with the given reason.
func wantRefusal(t *testing.T, err error, reason RefusalReason) *Refusal {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("error = %v (%T), want a *Refusal with reason %s", err, err, reason)
	}
	if r.Reason != reason {
		t.Fatalf("refusal reason = %s (%v), want %s", r.Reason, r, reason)
	}
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// simConfig is the test configuration against sim: one provider in
// application Graph mode and three resources. (TOTP resources are tested
// in totp_test.go, against a real state store.)
func simConfig(sim *entrasim.Server) *config.Config {
	return &config.Config{
		Providers: []config.Provider{{
			Name:          "contoso",
			TenantID:      sim.TenantID(),
			ClientID:      portcullisApp,
			AuthorityHost: sim.URL(),
			GraphEndpoint: sim.GraphEndpoint(),
			GraphAuth:     "application",
			ClientSecret:  config.NewSecret(graphSecret),
			Audiences:     []string{portcullisApp, "api://portcullis-test"},
		}},
		Resources: []config.Resource{
			{
				Name: "sales", Protocol: "postgres", AllowGroups: []string{"Analysts"},
				Credentials: []config.CredentialMapping{
					{Groups: []string{"Senior Analysts"}, User: "sales_senior", Password: config.NewSecret(seniorPass)},
					{Groups: []string{"Analysts"}, User: "sales_reader", Password: config.NewSecret(backendPass)},
				},
			},
			{
				Name: "finance", Protocol: "postgres", AllowGroups: []string{financeID},
				Credentials: []config.CredentialMapping{{Groups: []string{financeID}, User: "fin", Password: config.NewSecret(financePass)}},
			},
			{Name: "azure", Protocol: "postgres", AllowGroups: []string{"Analysts"},
				Credentials: []config.CredentialMapping{{Groups: []string{"Analysts"}, Entra: true}}},
		},
		Sessions: config.Sessions{TTL: 12 * time.Hour, AddressGrace: durationPtr(0)},
	}
}

func httpClients(sim *entrasim.Server) map[string]*http.Client {
	return map[string]*http.Client{"contoso": sim.HTTPClient()}
}

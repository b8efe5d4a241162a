package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
)

// The simulated tenant these tests sign in against: the real identity
// core (auth.Authorizer, MSAL Go underneath) talks HTTPS to auth/entrasim.
const (
	tenantID      = "5e3c1a2b-7d4f-4e8a-9b6c-0d1e2f3a4b5c"
	portcullisApp = "c7a1e0d2-4b3f-4a5e-8d6c-9f0e1a2b3c4d"
	providerName  = "contoso"

	alice   = "alice@contoso.example"
	bob     = "bob@contoso.example"
	carol   = "carol@contoso.example"
	dave    = "dave@contoso.example"
	mallory = "mallory@contoso.example"
)

// Object ids of the people in the directory.
var oids = map[string]string{
	alice:   "11111111-aaaa-4aaa-8aaa-111111111111",
	bob:     "22222222-bbbb-4bbb-8bbb-222222222222",
	carol:   "33333333-cccc-4ccc-8ccc-333333333333",
	dave:    "44444444-dddd-4ddd-8ddd-444444444444",
	mallory: "55555555-eeee-4eee-8eee-555555555555",
}

// graphSecret is portcullis's client secret for app-only Graph reads,
// random per run so that the log-hygiene test cannot pass by accident.
var graphSecret = func() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "graph-" + hex.EncodeToString(b)
}()

// sim is the one simulator of the package, started by TestMain. Tests
// run one at a time, so a test may set a fault or change the directory
// as long as it puts things back.
var sim *entrasim.Server

// testDirectory: alice, carol and dave are Analysts, bob is in Finance,
// mallory only in Visitors, which no resource allows.
func testDirectory() *entrasim.Directory {
	users := []entrasim.User{
		{ID: oids[alice], UPN: alice, DisplayName: "Alice Analyst"},
		{ID: oids[bob], UPN: bob, DisplayName: "Bob Finance"},
		{ID: oids[carol], UPN: carol, DisplayName: "Carol Analyst"},
		{ID: oids[dave], UPN: dave, DisplayName: "Dave Analyst"},
		{ID: oids[mallory], UPN: mallory, DisplayName: "Mallory Visitor"},
	}
	return &entrasim.Directory{
		Tenant: entrasim.Tenant{ID: tenantID, Domain: "contoso.example", DisplayName: "Contoso (proxy/postgres tests)"},
		Applications: []entrasim.Application{
			{AppID: portcullisApp, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis-pgtest"}, PublicClient: true},
		},
		Users: users,
		Groups: []entrasim.Group{
			{ID: "a0000001-0000-4000-8000-000000000001", DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{alice, carol, dave}}},
			{ID: "a0000002-0000-4000-8000-000000000002", DisplayName: "Finance", Members: entrasim.GroupMembers{Users: []string{bob}}},
			{ID: "a0000003-0000-4000-8000-000000000003", DisplayName: "Visitors", Members: entrasim.GroupMembers{Users: []string{mallory}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: "b0000001-0000-4000-8000-000000000001", AppID: portcullisApp, DisplayName: "portcullis", Secrets: []string{graphSecret}},
		},
	}
}

// providerConfig is the Entra provider portcullis uses: the simulator,
// with application Graph access.
func providerConfig() config.Provider {
	return config.Provider{
		Name:          providerName,
		TenantID:      sim.TenantID(),
		ClientID:      portcullisApp,
		AuthorityHost: sim.URL(),
		GraphEndpoint: sim.GraphEndpoint(),
		GraphAuth:     config.GraphAuthApplication,
		ClientSecret:  config.NewSecret(graphSecret),
		Audiences:     []string{portcullisApp},
	}
}

// newAuthorizer builds and starts the identity core for cfg against the
// simulator, closed when the test ends. Its Graph client retries once and caches nothing, so that
// "Graph down" is decided in milliseconds and every decision reads the
// directory as it is now.
func newAuthorizer(t *testing.T, cfg *config.Config, hc *http.Client, log *zap.Logger) *auth.Authorizer {
	t.Helper()
	return newAuthorizerWith(t, cfg, hc, log, auth.Deps{})
}

// newAuthorizerWith is newAuthorizer with deps of the test's own (a state
// store, TOTP); the logger, HTTP clients and group sources are filled in.
func newAuthorizerWith(t *testing.T, cfg *config.Config, hc *http.Client, log *zap.Logger, deps auth.Deps) *auth.Authorizer {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(graphSecret)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
		Authority: sim.Authority(), ClientID: portcullisApp, Credential: cred,
		Endpoint: sim.GraphEndpoint(), HTTPClient: hc, DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := graph.New(graph.Options{Endpoint: sim.GraphEndpoint(), HTTPClient: hc, Tokens: tokens, MaxRetries: 1, CacheTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	deps.Logger = log
	deps.HTTPClients = map[string]*http.Client{providerName: hc}
	deps.Groups = map[string]auth.GroupSource{providerName: &auth.GraphGroups{Client: gc, AppOnly: true}}
	a, err := auth.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("start the identity core: %v", err)
	}
	return a
}

// setEnabled enables or disables upn's account until the test ends.
func setEnabled(t *testing.T, upn string, enabled bool) {
	t.Helper()
	set := func(on bool) {
		sim.Directory(func(d *entrasim.Directory) { d.UserByName(upn).Enabled = &on })
	}
	set(enabled)
	t.Cleanup(func() { set(true) })
}

// graphDown makes Microsoft Graph answer 503 until the test ends.
func graphDown(t *testing.T) {
	t.Helper()
	sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusServiceUnavailable})
	t.Cleanup(func() { sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{}) })
}

package auth

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
)

// quickGraph is the real Graph client against the simulator with a small
// retry budget, so that "Graph down" is decided in milliseconds.
func quickGraph(t *testing.T, sim *entrasim.Server) *GraphGroups {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(graphSecret)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
		Authority: sim.Authority(), ClientID: portcullisApp, Credential: cred,
		Endpoint: sim.GraphEndpoint(), HTTPClient: sim.HTTPClient(), DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := graph.New(graph.Options{Endpoint: sim.GraphEndpoint(), HTTPClient: sim.HTTPClient(), Tokens: tokens, MaxRetries: 1, CacheTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	return &GraphGroups{Client: c, AppOnly: true}
}

func TestGraphDownFailsClosed(t *testing.T) {
	e := newEnv(t)
	sim := e.sim
	// Rebuild the Authorizer with a Graph client that gives up quickly.
	a, err := New(e.cfg, Deps{HTTPClients: httpClients(sim), Groups: map[string]GroupSource{"contoso": quickGraph(t, sim)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if err := a.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	token, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: portcullisApp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Decide(testContext(t), tokenRequest(aliceUPN, "sales", token)); err != nil {
		t.Fatalf("with Graph up: %v", err)
	}

	sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: 503})
	d, err := a.Decide(testContext(t), tokenRequest(aliceUPN, "sales", token))
	if d != nil {
		t.Fatalf("allowed with Graph down: %+v", d)
	}
	r := wantRefusal(t, err, ReasonUnavailable)
	if !strings.Contains(r.Message, "Microsoft Graph could not be reached") || !strings.Contains(r.Message, aliceUPN) {
		t.Errorf("message = %q, want it to say Graph could not be reached for alice", r.Message)
	}
	var ue *graph.UnavailableError
	if !errors.As(err, &ue) {
		t.Errorf("refusal does not carry the *graph.UnavailableError: %v", err)
	}

	// With Graph down a new Authorizer cannot resolve its group names.
	b, err := New(e.cfg, Deps{HTTPClients: httpClients(sim), Groups: map[string]GroupSource{"contoso": quickGraph(t, sim)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Start(testContext(t)); err == nil {
		t.Errorf("Start succeeded with Graph down")
	}
}

func TestStartRefusesUnknownOrAmbiguousGroups(t *testing.T) {
	tests := []struct {
		name  string
		group string
		want  string
	}{
		{name: "unknown name", group: "Analysts Typo", want: "Analysts Typo"},
		{name: "ambiguous name", group: "Twins", want: "Twins"},
		{name: "unknown id", group: "deadbeef-0000-4000-8000-000000000000", want: "deadbeef-0000-4000-8000-000000000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testDirectory()
			dir.Groups = append(dir.Groups,
				entrasim.Group{ID: "c0000001-0000-4000-8000-000000000001", DisplayName: "Twins"},
				entrasim.Group{ID: "c0000002-0000-4000-8000-000000000002", DisplayName: "Twins"})
			sim, err := entrasim.New(dir, entrasim.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sim.Close() })
			cfg := simConfig(sim)
			cfg.Resources = []config.Resource{{Name: "r", AllowGroups: []string{"Analysts", tt.group}}}
			a, err := New(cfg, Deps{HTTPClients: httpClients(sim)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = a.Close() })
			err = a.Start(testContext(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

func TestServicePrincipalByDisplayName(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	d, err := e.a.Decide(ctx, Request{Resource: "finance", LoginName: "spn:etl-bot", Password: etlSecret, ClientAddr: otherAddr, Mode: PromptError})
	if err != nil {
		t.Fatal(err)
	}
	if d.Identity.AppID != etlBotApp || d.Identity.ObjectID != etlBotOID || d.Identity.Name() != "etl-bot" {
		t.Errorf("identity = %+v", d.Identity)
	}
	_, err = e.a.Decide(ctx, Request{Resource: "finance", LoginName: "spn:no-such-bot", Password: etlSecret, ClientAddr: otherAddr, Mode: PromptError})
	wantRefusal(t, err, ReasonBadCredentials)
	_, err = e.a.Decide(ctx, Request{Resource: "finance", LoginName: "spn:etl-bot", Password: "wrong", ClientAddr: otherAddr, Mode: PromptError})
	wantRefusal(t, err, ReasonBadCredentials)
}

func TestDisabledAccountEndsReuse(t *testing.T) {
	e := newEnv(t)
	d := e.signIn(t, aliceUPN, "sales", aliceAddr)
	if _, err := e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr)); err != nil {
		t.Fatalf("key before disabling: %v", err)
	}
	e.sim.Directory(func(dir *entrasim.Directory) {
		off := false
		dir.UserByName(aliceUPN).Enabled = &off
	})
	_, err := e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr))
	wantRefusal(t, err, ReasonDisabled)
}

// TestAccountStateRemembered: a pool reconnecting with a session key
// costs Graph one account lookup per group_cache_ttl, not one per
// connection; a recheck of an open session still reads the account
// afresh, so disabling someone ends their sessions at the next recheck.
func TestAccountStateRemembered(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.Providers[0].GroupCacheTTL = time.Hour }))
	d := e.signIn(t, aliceUPN, "sales", aliceAddr)
	first, err := e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr))
	if err != nil {
		t.Fatalf("key: %v", err)
	}
	before := e.sim.Requests(entrasim.EndpointGraph)
	const pool = 20
	for range pool {
		if _, err := e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr)); err != nil {
			t.Fatalf("key: %v", err)
		}
	}
	if got := e.sim.Requests(entrasim.EndpointGraph) - before; got != 0 {
		t.Errorf("%d reconnections within the TTL cost %d Graph requests, want 0", pool, got)
	}

	e.sim.Directory(func(dir *entrasim.Directory) {
		off := false
		dir.UserByName(aliceUPN).Enabled = &off
	})
	err = e.a.Recheck(testContext(t), first)
	wantRefusal(t, err, ReasonDisabled)
	// The recheck's fresh answer is what new connections see too.
	_, err = e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr))
	wantRefusal(t, err, ReasonDisabled)
}

func TestDelegatedGraphMode(t *testing.T) {
	tests := []struct {
		name   string
		secret bool // an app credential too, used only to resolve names
	}{
		{name: "with an app credential for start-up", secret: true},
		{name: "user tokens only, groups by id", secret: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withConfig(func(c *config.Config) {
				c.Providers[0].GraphAuth = config.GraphAuthDelegated
				if !tt.secret {
					c.Providers[0].ClientSecret = config.Secret{}
					c.Resources = []config.Resource{{
						Name: "sales", AllowGroups: []string{analystsID},
						Credentials: []config.CredentialMapping{
							{Groups: []string{seniorID}, User: "sales_senior"},
							{Groups: []string{analystsID}, User: "sales_reader"},
						},
					}}
				}
			}))
			d := e.signIn(t, bobUPN, "sales", aliceAddr)
			if d.Backend.User != "sales_senior" {
				t.Fatalf("backend user = %q, want sales_senior from /me/transitiveMemberOf", d.Backend.User)
			}
			// The key is reused with the user's own Graph token, refreshed
			// from the account MSAL keeps in memory.
			r, err := e.a.Decide(testContext(t), noPromptRequest(t, bobUPN, d.SessionKey, otherAddr))
			if err != nil {
				t.Fatalf("session key in delegated mode: %v", err)
			}
			if r.Method != MethodSessionKey || r.Backend.User != "sales_senior" {
				t.Errorf("decision = %+v", r)
			}
		})
	}
}

func TestDelegatedModeNeedsIDsWithoutAppCredential(t *testing.T) {
	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	cfg := simConfig(sim)
	cfg.Providers[0].GraphAuth = config.GraphAuthDelegated
	cfg.Providers[0].ClientSecret = config.Secret{}
	a, err := New(cfg, Deps{HTTPClients: httpClients(sim)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	err = a.Start(testContext(t))
	if err == nil || !strings.Contains(err.Error(), `"Analysts"`) {
		t.Fatalf("Start = %v, want an error naming the group name it cannot resolve", err)
	}
}

func TestCAFileTrust(t *testing.T) {
	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	cfg := simConfig(sim)

	// Without the simulator's CA, the system roots do not trust it.
	a, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if err := a.Start(testContext(t)); err == nil {
		t.Fatal("Start trusted the simulator without its CA")
	}

	cfg.Providers[0].CAFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := sim.WriteCAFile(cfg.Providers[0].CAFile); err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Start(testContext(t)); err != nil {
		t.Fatalf("Start with ca_file: %v", err)
	}
	token, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: portcullisApp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decide(context.Background(), tokenRequest(aliceUPN, "sales", token)); err != nil {
		t.Fatalf("Decide with ca_file: %v", err)
	}
}

// TestAccountLookupsShared: callers asking for one account's state at
// once cost one Graph lookup between them, including a caller that
// arrives just as the lookup ends: it takes the remembered answer rather
// than asking again. Many rounds, since that moment is brief.
func TestAccountLookupsShared(t *testing.T) {
	e := newEnv(t)
	g := quickGraph(t, e.sim)
	g.AccountTTL = time.Hour
	ctx := testContext(t)
	who := GroupSubject{Kind: KindUser, ObjectID: aliceUPN}
	const rounds, callers = 200, 20
	before := e.sim.Requests(entrasim.EndpointGraph)
	for range rounds {
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				enabled, err := g.AccountEnabled(ctx, Identity{Kind: who.Kind, ObjectID: who.ObjectID})
				if err != nil || !enabled {
					t.Errorf("AccountEnabled = %v, %v; want true", enabled, err)
				}
			})
		}
		wg.Wait()
		g.ForgetGroups(who)
	}
	if got := e.sim.Requests(entrasim.EndpointGraph) - before; got != rounds {
		t.Errorf("%d rounds of %d concurrent callers cost %d Graph lookups, want %d", rounds, callers, got, rounds)
	}
}

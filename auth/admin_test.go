package auth

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
)

// token issues an access token for upn that the test Authorizer accepts.
func (e *env) token(t *testing.T, upn string) string {
	t.Helper()
	tok, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: portcullisApp, ClientID: portcullisApp})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func adminRequest(login, token string) Request {
	r := tokenRequest(login, config.ConsoleResource, token)
	r.Admin = true
	return r
}

func TestAdminConsoleDecision(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.Admin.Groups = []string{"Finance"} }))
	ctx := testContext(t)

	d, err := e.a.Decide(ctx, adminRequest(bobUPN, e.token(t, bobUPN)))
	if err != nil {
		t.Fatalf("bob (Finance) to the console: %v", err)
	}
	if d.Resource != config.ConsoleResource || d.Backend != (BackendCredentials{}) {
		t.Errorf("decision for the console: resource %q, backend %+v; want the console and no backend login", d.Resource, d.Backend)
	}
	if names := groupNamesOf(d.Matched); names != "Finance" {
		t.Errorf("matched %s, want Finance", names)
	}

	_, err = e.a.Decide(ctx, adminRequest(aliceUPN, e.token(t, aliceUPN)))
	r := wantRefusal(t, err, ReasonNotAllowed)
	if !strings.Contains(r.Message, `"portcullis"`) {
		t.Errorf("message %q does not name the console", r.Message)
	}

	// The same identity rules as anywhere: bob's token presented as alice.
	_, err = e.a.Decide(ctx, adminRequest(aliceUPN, e.token(t, bobUPN)))
	wantRefusal(t, err, ReasonIdentityMismatch)

	// Without Admin, "portcullis" is no resource at all.
	_, err = e.a.Decide(ctx, tokenRequest(bobUPN, config.ConsoleResource, e.token(t, bobUPN)))
	wantRefusal(t, err, ReasonUnknownResource)
}

func TestAdminConsoleOffWithoutGroups(t *testing.T) {
	e := newEnv(t)
	_, err := e.a.Decide(testContext(t), adminRequest(bobUPN, e.token(t, bobUPN)))
	wantRefusal(t, err, ReasonUnknownResource)
}

func TestAdminGroupsMustResolve(t *testing.T) {
	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	cfg := simConfig(sim)
	cfg.Admin.Groups = []string{"No Such Group"}
	a, err := New(cfg, Deps{HTTPClients: httpClients(sim)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Ready(); err == nil {
		t.Error("Ready before Start")
	}
	err = a.Start(testContext(t))
	if err == nil || !strings.Contains(err.Error(), "admin.groups") || !strings.Contains(err.Error(), "No Such Group") {
		t.Errorf("Start = %v, want an error naming admin.groups and the group", err)
	}
	if err := a.Ready(); err == nil {
		t.Error("Ready after a failed Start")
	}
}

func TestReady(t *testing.T) {
	e := newEnv(t)
	if err := e.a.Ready(); err != nil {
		t.Errorf("Ready after Start: %v", err)
	}
}

func TestReload(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	bobToken := e.token(t, bobUPN)

	_, err := e.a.Decide(ctx, tokenRequest(bobUPN, "reports", bobToken))
	wantRefusal(t, err, ReasonUnknownResource)

	next := *e.cfg
	next.Resources = append(append([]config.Resource(nil), e.cfg.Resources...), config.Resource{
		Name: "reports", Protocol: "postgres", AllowGroups: []string{"Finance"},
		Credentials: []config.CredentialMapping{{Groups: []string{"Finance"}, User: "reporter", Password: config.NewSecret(financePass)}},
	})
	next.Admin.Groups = []string{"Senior Analysts"}
	if err := e.a.Reload(ctx, &next); err != nil {
		t.Fatal(err)
	}
	d, err := e.a.Decide(ctx, tokenRequest(bobUPN, "reports", bobToken))
	if err != nil {
		t.Fatalf("the added resource: %v", err)
	}
	if d.Backend.User != "reporter" {
		t.Errorf("backend user %q, want reporter", d.Backend.User)
	}
	if _, err := e.a.Decide(ctx, adminRequest(bobUPN, bobToken)); err != nil {
		t.Errorf("bob (Senior Analysts) to the console after the reload: %v", err)
	}

	tests := []struct {
		name   string
		change func(c *config.Config)
		want   string
	}{
		{name: "unknown group", change: func(c *config.Config) {
			c.Resources[0].AllowGroups = []string{"Nobody Here"}
		}, want: "Nobody Here"},
		{name: "changed provider", change: func(c *config.Config) {
			c.Providers = []config.Provider{c.Providers[0]}
			c.Providers[0].Audiences = []string{"api://elsewhere"}
		}, want: "providers changed contoso"},
		{name: "added provider", change: func(c *config.Config) {
			p := c.Providers[0]
			p.Name = "fabrikam"
			c.Providers = append([]config.Provider{c.Providers[0]}, p)
		}, want: "providers added fabrikam"},
		{name: "TOTP without a verifier", change: func(c *config.Config) {
			c.Resources = append([]config.Resource(nil), c.Resources...)
			c.Resources[0].RequireTOTP = true
		}, want: "requires TOTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := next
			bad.Resources = append([]config.Resource(nil), next.Resources...)
			tt.change(&bad)
			err := e.a.Reload(ctx, &bad)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Reload = %v, want an error containing %q", err, tt.want)
			}
			// The running policy stays.
			if _, err := e.a.Decide(ctx, tokenRequest(bobUPN, "reports", bobToken)); err != nil {
				t.Errorf("after the refused reload: %v", err)
			}
		})
	}
	var re *ReloadError
	bad := next
	bad.Providers = nil
	if err := e.a.Reload(ctx, &bad); !errors.As(err, &re) {
		t.Errorf("Reload without providers = %v, want a *ReloadError", err)
	}
}

func TestGraphClient(t *testing.T) {
	e := newEnv(t)
	gc, err := e.a.GraphClient("contoso")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := gc.Get(testContext(t), "/v1.0/users/"+aliceUPN, nil)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(resp.Body), aliceUPN) {
		t.Errorf("GET alice through the client: %v %v", resp, err)
	}
	if _, err := e.a.GraphClient("fabrikam"); err == nil || !strings.Contains(err.Error(), "contoso") {
		t.Errorf("unknown provider: %v, want an error listing the providers", err)
	}
}

func TestGraphClientNeedsAppOnlyAccess(t *testing.T) {
	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	cfg := simConfig(sim)
	cfg.Providers[0].ClientSecret = config.Secret{}
	cfg.Providers[0].GraphAuth = config.GraphAuthDelegated
	cfg.Resources = cfg.Resources[:1]
	cfg.Resources[0].AllowGroups = []string{analystsID}
	cfg.Resources[0].Credentials = []config.CredentialMapping{{Groups: []string{analystsID}, User: "u"}}
	a, err := New(cfg, Deps{HTTPClients: httpClients(sim)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GraphClient("contoso"); err == nil || !strings.Contains(err.Error(), "app-only") {
		t.Errorf("GraphClient in delegated mode = %v, want a refusal", err)
	}
}

func TestMethodFor(t *testing.T) {
	key, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	akey, _, _, err := NewAccessKey("contoso", etlBotApp, "finance", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, login, password string
		want                  Method
	}{
		{name: "anything", login: aliceUPN, password: "hello", want: MethodDeviceCode},
		{name: "a TOTP code", login: aliceUPN, password: "123456", want: MethodDeviceCode},
		{name: "session key", login: aliceUPN, password: key, want: MethodSessionKey},
		{name: "token", login: aliceUPN, password: "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln", want: MethodAccessToken},
		{name: "service principal secret", login: etlBotApp, password: "s3cr.et.x", want: MethodServicePrincipal},
		{name: "service principal token", login: etlBotApp, password: "eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.c2ln", want: MethodAccessToken},
		{name: "access key", login: aliceUPN, password: akey, want: MethodAccessKey},
		{name: "service principal's access key", login: etlBotApp, password: akey, want: MethodAccessKey},
		{name: "service principal secret that starts like a key", login: etlBotApp, password: AccessKeyPrefix + "not-a-key", want: MethodServicePrincipal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MethodFor(Request{LoginName: tt.login, Password: tt.password}); got != tt.want {
				t.Errorf("MethodFor = %s, want %s", got, tt.want)
			}
		})
	}
}

func groupNamesOf(gs []Group) string {
	names := make([]string, len(gs))
	for i, g := range gs {
		names[i] = g.DisplayName
	}
	return strings.Join(names, ",")
}

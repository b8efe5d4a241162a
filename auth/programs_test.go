package auth

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
)

// spRequest is a service principal's connection with its secret.
func spRequest(login, secret, resource string) Request {
	return Request{Protocol: "postgres", Resource: resource, LoginName: login, Password: secret, ClientAddr: otherAddr, Mode: PromptError}
}

func TestServicePrincipalPoolCostsOneGrant(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	before := e.sim.Requests(entrasim.EndpointToken)
	graphBefore := e.sim.Requests(entrasim.EndpointGraph)

	const pool = 50
	var wg sync.WaitGroup
	errs := make(chan error, pool)
	for i := 0; i < pool; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := e.a.Decide(ctx, spRequest(etlBotApp, etlSecret, "finance"))
			if err == nil && (d.Identity.ObjectID != etlBotOID || d.Backend.User != "fin") {
				t.Errorf("decision = %+v", d)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a connection of the pool was refused: %v", err)
		}
	}
	if got := e.sim.Requests(entrasim.EndpointToken) - before; got != 1 {
		t.Errorf("%d connections cost %d token requests, want 1", pool, got)
	}
	// The groups are read once too (the app-only Graph token itself is one
	// more token request only the first time, before the counter).
	if got := e.sim.Requests(entrasim.EndpointGraph) - graphBefore; got != 1 {
		t.Errorf("%d connections cost %d Graph requests, want 1", pool, got)
	}

	// Fifty wrong secrets at once are one guess: one token request, all
	// refused.
	before = e.sim.Requests(entrasim.EndpointToken)
	var refused sync.WaitGroup
	for i := 0; i < pool; i++ {
		refused.Add(1)
		go func() {
			defer refused.Done()
			_, err := e.a.Decide(ctx, spRequest(etlBotApp, "wrong-"+etlSecret, "finance"))
			if r, ok := err.(*Refusal); !ok || r.Reason != ReasonBadCredentials {
				t.Errorf("wrong secret: %v, want a bad-credentials refusal", err)
			}
		}()
	}
	refused.Wait()
	if got := e.sim.Requests(entrasim.EndpointToken) - before; got < 1 || got > pool {
		t.Errorf("wrong secrets cost %d token requests", got)
	}
}

func TestServicePrincipalCacheTTLFromConfig(t *testing.T) {
	clk := &clock{}
	e := newEnv(t, withClock(clk), withConfig(func(c *config.Config) { c.ServicePrincipals.CacheTTL = time.Minute }))
	ctx := testContext(t)
	grants := func() int { return e.sim.Requests(entrasim.EndpointToken) }

	before := grants()
	if _, err := e.a.Decide(ctx, spRequest(etlBotApp, etlSecret, "finance")); err != nil {
		t.Fatal(err)
	}
	clk.Advance(50 * time.Second)
	if _, err := e.a.Decide(ctx, spRequest(etlBotApp, etlSecret, "finance")); err != nil {
		t.Fatal(err)
	}
	if got := grants() - before; got != 1 {
		t.Fatalf("within service_principals.cache_ttl: %d grants, want 1", got)
	}
	clk.Advance(15 * time.Second)
	if _, err := e.a.Decide(ctx, spRequest(etlBotApp, etlSecret, "finance")); err != nil {
		t.Fatal(err)
	}
	if got := grants() - before; got != 2 {
		t.Fatalf("after service_principals.cache_ttl (1m): %d grants, want 2", got)
	}
}

func TestAccessTokenForms(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) {
		c.Providers[0].Audiences = append(c.Providers[0].Audiences, OSSRDBMSAudience)
	}))
	plain := newEnv(t) // the proxy's own audiences only
	const azureCLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
	tests := []struct {
		name     string
		env      *env
		spec     entrasim.TokenSpec
		login    string
		resource string
		want     RefusalReason
		wantKind Kind
	}{
		{name: "v1 user token", env: e, login: aliceUPN, resource: "sales", wantKind: KindUser,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: "api://portcullis-test", ClientID: azureCLI, Version: 1}},
		{name: "v2 user token", env: e, login: aliceUPN, resource: "sales", wantKind: KindUser,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: azureCLI, Version: 2}},
		{name: "v1 application token", env: e, login: etlBotApp, resource: "finance", wantKind: KindServicePrincipal,
			spec: entrasim.TokenSpec{Subject: "etl-bot", Audience: "api://portcullis-test", ClientID: etlBotApp, Version: 1}},
		{name: "v2 application token", env: e, login: etlBotApp, resource: "finance", wantKind: KindServicePrincipal,
			spec: entrasim.TokenSpec{Subject: "etl-bot", Audience: portcullisApp, ClientID: etlBotApp, Version: 2}},
		{name: "Azure Database audience when configured", env: e, login: aliceUPN, resource: "sales", wantKind: KindUser,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: OSSRDBMSAudience, ClientID: azureCLI, Version: 1}},
		{name: "Azure Database audience, application token", env: e, login: etlBotApp, resource: "finance", wantKind: KindServicePrincipal,
			spec: entrasim.TokenSpec{Subject: "etl-bot", Audience: OSSRDBMSAudience, ClientID: etlBotApp, Version: 1}},
		{name: "Azure Database audience when not configured", env: plain, login: aliceUPN, resource: "sales", want: ReasonBadCredentials,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: OSSRDBMSAudience, ClientID: azureCLI, Version: 1}},
		{name: "user token, another user's login name", env: e, login: bobUPN, resource: "sales", want: ReasonIdentityMismatch,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: azureCLI}},
		{name: "v1 user token, another user's login name", env: e, login: bobUPN, resource: "sales", want: ReasonIdentityMismatch,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: "api://portcullis-test", ClientID: azureCLI, Version: 1}},
		{name: "application token, a user's login name", env: e, login: bobUPN, resource: "finance", want: ReasonIdentityMismatch,
			spec: entrasim.TokenSpec{Subject: "etl-bot", Audience: portcullisApp, ClientID: etlBotApp}},
		{name: "application token, another app id", env: e, login: portcullisApp, resource: "finance", want: ReasonIdentityMismatch,
			spec: entrasim.TokenSpec{Subject: "etl-bot", Audience: portcullisApp, ClientID: etlBotApp, Version: 1}},
		{name: "user token, the client's app id as login name", env: e, login: azureCLI, resource: "sales", want: ReasonIdentityMismatch,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: azureCLI}},
		{name: "token of another tenant", env: e, login: aliceUPN, resource: "sales", want: ReasonBadCredentials,
			spec: entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: azureCLI, TenantID: otherTenant}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.env.sim.IssueAccessToken(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			d, err := tt.env.a.Decide(testContext(t), tokenRequest(tt.login, tt.resource, tok))
			if tt.want != "" {
				if d != nil {
					t.Fatalf("accepted as %s, want refusal %s", d.Identity.Name(), tt.want)
				}
				wantRefusal(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Method != MethodAccessToken || d.Identity.Kind != tt.wantKind || !d.Identity.matchesLogin(tt.login) {
				t.Errorf("decision = %+v by %s, want a %s named %s", d.Identity, d.Method, tt.wantKind, tt.login)
			}
		})
	}
}

// matchesLogin is the identity's login name, for the table above.
func (i Identity) matchesLogin(login string) bool {
	if i.Kind == KindServicePrincipal {
		return strings.EqualFold(i.AppID, login)
	}
	return strings.EqualFold(i.UPN, login)
}

// verifySimToken checks token's signature against the simulator's JWKS
// (fetched over HTTPS, as Azure Database would) and returns its claims.
func verifySimToken(t *testing.T, sim *entrasim.Server, token string) jwt.MapClaims {
	t.Helper()
	resp, err := sim.HTTPClient().Get(sim.Authority() + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc jwksDoc
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, k := range doc.Keys {
		n, _ := base64.RawURLEncoding.DecodeString(k.N)
		e, _ := base64.RawURLEncoding.DecodeString(k.E)
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	claims := jwt.MapClaims{}
	_, err = jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired()).ParseWithClaims(token, claims, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		return keys[kid], nil
	})
	if err != nil {
		t.Fatalf("the backend token does not verify against the simulator's keys: %v", err)
	}
	return claims
}

// wantRDBMSToken checks that creds log in to Azure Database as name with
// a genuine token for Azure Database in the name of oid.
func wantRDBMSToken(t *testing.T, sim *entrasim.Server, creds BackendCredentials, name, oid string) {
	t.Helper()
	if creds.User != name || creds.Password != "" || creds.AccessToken == "" {
		t.Fatalf("backend login = user %q, password set %v, token set %v; want %q with a token", creds.User, creds.Password != "", creds.AccessToken != "", name)
	}
	claims := verifySimToken(t, sim, creds.AccessToken)
	if aud, _ := claims["aud"].(string); aud != OSSRDBMSAudience {
		t.Errorf("backend token audience = %q, want %s", aud, OSSRDBMSAudience)
	}
	if got, _ := claims["oid"].(string); got != oid {
		t.Errorf("backend token is for oid %q, want %q", got, oid)
	}
}

func TestEntraPassThrough(t *testing.T) {
	const aliceOID = "11111111-aaaa-4aaa-8aaa-111111111111"
	e := newEnv(t, withConfig(func(c *config.Config) {
		c.Providers[0].Audiences = append(c.Providers[0].Audiences, OSSRDBMSAudience)
		c.Resources = append(c.Resources, config.Resource{Name: "azure_fin", Protocol: "postgres", AllowGroups: []string{"Finance"},
			Credentials: []config.CredentialMapping{{Groups: []string{"Finance"}, Entra: true}}})
	}))
	ctx := testContext(t)

	t.Run("from a device-code sign-in, silently", func(t *testing.T) {
		d := e.signIn(t, aliceUPN, "azure", aliceAddr)
		wantRDBMSToken(t, e.sim, d.Backend, aliceUPN, aliceOID)
		if upn, _ := verifySimToken(t, e.sim, d.Backend.AccessToken)["upn"].(string); upn != aliceUPN {
			t.Errorf("backend token upn = %q", upn)
		}
		// The session key reuses the sign-in: a fresh token from the
		// refresh token, no prompt.
		req := noPromptRequest(t, aliceUPN, d.SessionKey, aliceAddr)
		req.Resource = "azure"
		again, err := e.a.Decide(ctx, req)
		if err != nil {
			t.Fatalf("session key to the entra resource: %v", err)
		}
		wantRDBMSToken(t, e.sim, again.Backend, aliceUPN, aliceOID)

		// Bob signs in to another resource; then Entra revokes his
		// refresh token (a sign-out everywhere). His session key no
		// longer gets a token for Azure Database: he is told to sign in
		// again, not let in. (MSAL would serve a token it already held
		// until it expires, as Azure Database would accept it.)
		bob := e.signIn(t, bobUPN, "sales", aliceAddr)
		e.sim.RevokeRefreshTokens(bobUPN)
		req = noPromptRequest(t, bobUPN, bob.SessionKey, aliceAddr)
		req.Resource = "azure"
		_, err = e.a.Decide(ctx, req)
		r := wantRefusal(t, err, ReasonBadCredentials)
		if !strings.Contains(r.Message, "sign in again") {
			t.Errorf("message = %q", r.Message)
		}
	})

	t.Run("the token the client presented", func(t *testing.T) {
		tok, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: OSSRDBMSAudience, ClientID: portcullisApp, Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		d, err := e.a.Decide(ctx, tokenRequest(aliceUPN, "azure", tok))
		if err != nil {
			t.Fatal(err)
		}
		if d.Backend.AccessToken != tok || d.Backend.User != aliceUPN {
			t.Errorf("backend login = %q with another token, want the presented one as %s", d.Backend.User, aliceUPN)
		}
		// A token for portcullis itself cannot be passed on.
		_, err = e.a.Decide(ctx, tokenRequest(aliceUPN, "azure", e.token(t, aliceUPN)))
		wantRefusal(t, err, ReasonNotAllowed)
	})

	t.Run("a service principal's own token, one grant for a pool", func(t *testing.T) {
		before := e.sim.Requests(entrasim.EndpointToken)
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := e.a.Decide(ctx, spRequest(etlBotApp, etlSecret, "azure_fin"))
				if err != nil {
					t.Errorf("Decide: %v", err)
					return
				}
				wantRDBMSToken(t, e.sim, d.Backend, "etl-bot", etlBotOID)
			}()
		}
		wg.Wait()
		// One grant proves the secret, one gets the Azure Database token.
		if got := e.sim.Requests(entrasim.EndpointToken) - before; got != 2 {
			t.Errorf("20 connections cost %d token requests, want 2", got)
		}
	})

	t.Run("an access key cannot log in as its identity", func(t *testing.T) {
		key := e.accessKey(t, etlBotApp, "azure_fin", time.Hour)
		_, err := e.a.Decide(ctx, spRequest(etlBotApp, key, "azure_fin"))
		r := wantRefusal(t, err, ReasonNotAllowed)
		if !strings.Contains(r.Message, "access key") {
			t.Errorf("message = %q", r.Message)
		}
	})
}

// accessKey stores a new access key in the env's store and returns it.
func (e *env) accessKey(t *testing.T, forID, resource string, ttl time.Duration) string {
	t.Helper()
	key, rec, h, err := NewAccessKey("contoso", forID, resource, ttl, e.a.now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.a.keys.PutAccessKey(testContext(t), h, rec); err != nil {
		t.Fatal(err)
	}
	return key
}

// keyID is the id of the access key key in the env's store.
func (e *env) keyID(t *testing.T, key string) string {
	t.Helper()
	rec, ok, err := e.a.keys.AccessKeyByHash(testContext(t), hashKey(key))
	if err != nil || !ok {
		t.Fatalf("key not in the store: %v", err)
	}
	return rec.ID
}

func TestAccessKeys(t *testing.T) {
	clk := &clock{}
	e := newEnv(t, withClock(clk))
	ctx := testContext(t)
	botKey := e.accessKey(t, etlBotApp, "finance", 90*24*time.Hour)
	aliceKey := e.accessKey(t, aliceUPN, "sales", time.Hour)
	shortKey := e.accessKey(t, aliceUPN, "sales", time.Minute)
	revokedKey := e.accessKey(t, etlBotApp, "finance", time.Hour)
	if ok, err := e.a.keys.RevokeAccessKey(ctx, e.keyID(t, revokedKey), clk.Now()); !ok || err != nil {
		t.Fatalf("revoke: %v, %v", ok, err)
	}
	clk.Advance(2 * time.Minute)
	forged, _, _, err := NewAccessKey("contoso", etlBotApp, "finance", time.Hour, clk.Now())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		login    string
		password string
		resource string
		want     RefusalReason
		wantUser string
	}{
		{name: "program's key", login: etlBotApp, password: botKey, resource: "finance", wantUser: "fin"},
		{name: "program's key, app id in upper case", login: strings.ToUpper(etlBotApp), password: botKey, resource: "finance", wantUser: "fin"},
		{name: "person's key", login: aliceUPN, password: aliceKey, resource: "sales", wantUser: "sales_reader"},
		{name: "person's key, UPN in another case", login: strings.ToUpper(aliceUPN), password: aliceKey, resource: "sales", wantUser: "sales_reader"},
		{name: "key for another resource", login: etlBotApp, password: botKey, resource: "sales", want: ReasonBadCredentials},
		{name: "key of another identity", login: bobUPN, password: aliceKey, resource: "sales", want: ReasonBadCredentials},
		{name: "program's key presented as a person", login: aliceUPN, password: botKey, resource: "finance", want: ReasonBadCredentials},
		{name: "revoked key", login: etlBotApp, password: revokedKey, resource: "finance", want: ReasonBadCredentials},
		{name: "expired key", login: aliceUPN, password: shortKey, resource: "sales", want: ReasonBadCredentials},
		{name: "key never made", login: etlBotApp, password: forged, resource: "finance", want: ReasonBadCredentials},
		{name: "malformed key", login: aliceUPN, password: AccessKeyPrefix + "abc", resource: "sales", want: ReasonBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tokens := e.sim.Requests(entrasim.EndpointToken)
			req := noPromptRequest(t, tt.login, tt.password, otherAddr)
			req.Resource = tt.resource
			d, err := e.a.Decide(ctx, req)
			if got := e.sim.Requests(entrasim.EndpointToken); got != tokens {
				t.Errorf("an access key cost %d token requests, want none", got-tokens)
			}
			if tt.want != "" {
				r := wantRefusal(t, err, tt.want)
				if strings.Contains(r.Error(), tt.password) {
					t.Errorf("the refusal repeats the key")
				}
				return
			}
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Method != MethodAccessKey || d.AccessKeyID != e.keyID(t, tt.password) || d.Backend.User != tt.wantUser || !d.Identity.matchesLogin(tt.login) || d.Identity.ObjectID == "" {
				t.Errorf("decision = %+v (identity %+v), want %s by access key", d, d.Identity, tt.wantUser)
			}
		})
	}

	rec, _, err := e.a.keys.AccessKeyByID(ctx, e.keyID(t, botKey))
	if err != nil || rec.LastUsedAt.IsZero() {
		t.Errorf("last use of the program's key = %v (%v), want it recorded", rec.LastUsedAt, err)
	}

	// The identity's groups are checked at every connection (through the
	// group cache, so once group_cache_ttl has passed).
	e.setMembers(t, "Analysts", func(m *entrasim.GroupMembers) { m.Users = nil })
	e.forgetGroups()
	req := noPromptRequest(t, aliceUPN, aliceKey, otherAddr)
	_, err = e.a.Decide(ctx, req)
	wantRefusal(t, err, ReasonNotAllowed)

	// A disabled program is refused, its key notwithstanding.
	setSPEnabled(t, e.sim, "etl-bot", false)
	req = noPromptRequest(t, etlBotApp, botKey, otherAddr)
	req.Resource = "finance"
	_, err = e.a.Decide(ctx, req)
	wantRefusal(t, err, ReasonDisabled)
}

// forgetGroups empties the group cache, as the passing of
// group_cache_ttl would.
func (e *env) forgetGroups() {
	for _, p := range e.a.providers {
		f, ok := p.groups.(GroupCacheForgetter)
		if !ok {
			continue
		}
		e.sim.Directory(func(d *entrasim.Directory) {
			for _, u := range d.Users {
				f.ForgetGroups(GroupSubject{Kind: KindUser, ObjectID: u.ID})
			}
			for _, sp := range d.ServicePrincipals {
				f.ForgetGroups(GroupSubject{Kind: KindServicePrincipal, ObjectID: sp.ID})
			}
		})
	}
}

// setMembers changes a group's members until the test ends, when the
// group cache is emptied too.
func (e *env) setMembers(t *testing.T, group string, change func(*entrasim.GroupMembers)) {
	t.Helper()
	setMembers(t, e.sim, group, change)
	t.Cleanup(e.forgetGroups)
}

// setMembers changes a group's members until the test ends.
func setMembers(t *testing.T, sim *entrasim.Server, group string, change func(*entrasim.GroupMembers)) {
	t.Helper()
	var saved entrasim.GroupMembers
	sim.Directory(func(d *entrasim.Directory) {
		g := d.GroupByName(group)
		saved = g.Members
		saved.Users = append([]string(nil), g.Members.Users...)
		saved.ServicePrincipals = append([]string(nil), g.Members.ServicePrincipals...)
		saved.Groups = append([]string(nil), g.Members.Groups...)
		change(&g.Members)
	})
	t.Cleanup(func() { sim.Directory(func(d *entrasim.Directory) { d.GroupByName(group).Members = saved }) })
}

// setSPEnabled enables or disables a service principal until the test
// ends.
func setSPEnabled(t *testing.T, sim *entrasim.Server, name string, on bool) {
	t.Helper()
	set := func(v bool) {
		sim.Directory(func(d *entrasim.Directory) { d.ServicePrincipalByName(name).Enabled = &v })
	}
	set(on)
	t.Cleanup(func() { set(true) })
}

func TestRecheck(t *testing.T) {
	clk := &clock{}
	e := newEnv(t, withClock(clk))
	ctx := testContext(t)
	decide := func(t *testing.T, login, resource, password string) *Decision {
		t.Helper()
		req := noPromptRequest(t, login, password, otherAddr)
		req.Resource = resource
		d, err := e.a.Decide(ctx, req)
		if err != nil {
			t.Fatalf("Decide: %v", err)
		}
		return d
	}

	t.Run("still allowed", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		if err := e.a.Recheck(ctx, d); err != nil {
			t.Fatalf("Recheck: %v", err)
		}
	})

	t.Run("removed from the group, the cache notwithstanding", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		graphBefore := e.sim.Requests(entrasim.EndpointGraph)
		e.setMembers(t, "Analysts", func(m *entrasim.GroupMembers) { m.Users = nil })
		r := wantRefusal(t, e.a.Recheck(ctx, d), ReasonNotAllowed)
		if !strings.Contains(r.Message, aliceUPN) {
			t.Errorf("message = %q", r.Message)
		}
		if e.sim.Requests(entrasim.EndpointGraph) == graphBefore {
			t.Errorf("the recheck was answered from the group cache")
		}
	})

	t.Run("groups now map to another login", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		e.setMembers(t, "Senior Analysts", func(m *entrasim.GroupMembers) { m.Users = append(m.Users, aliceUPN) })
		r := wantRefusal(t, e.a.Recheck(ctx, d), ReasonNotAllowed)
		if !strings.Contains(r.Message, "another database login") {
			t.Errorf("message = %q", r.Message)
		}
	})

	t.Run("account disabled", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		on := false
		e.sim.Directory(func(dir *entrasim.Directory) { dir.UserByName(aliceUPN).Enabled = &on })
		t.Cleanup(func() {
			e.sim.Directory(func(dir *entrasim.Directory) { dir.UserByName(aliceUPN).Enabled = nil })
			e.forgetGroups()
		})
		wantRefusal(t, e.a.Recheck(ctx, d), ReasonDisabled)
	})

	t.Run("service principal left the group", func(t *testing.T) {
		d := decide(t, etlBotApp, "finance", etlSecret)
		if err := e.a.Recheck(ctx, d); err != nil {
			t.Fatalf("Recheck: %v", err)
		}
		e.setMembers(t, "Finance", func(m *entrasim.GroupMembers) { m.ServicePrincipals = nil })
		wantRefusal(t, e.a.Recheck(ctx, d), ReasonNotAllowed)
	})

	t.Run("access key revoked", func(t *testing.T) {
		key := e.accessKey(t, etlBotApp, "finance", time.Hour)
		d := decide(t, etlBotApp, "finance", key)
		if err := e.a.Recheck(ctx, d); err != nil {
			t.Fatalf("Recheck: %v", err)
		}
		if _, err := e.a.keys.RevokeAccessKey(ctx, d.AccessKeyID, clk.Now()); err != nil {
			t.Fatal(err)
		}
		r := wantRefusal(t, e.a.Recheck(ctx, d), ReasonKeyRevoked)
		if !strings.Contains(r.Message, d.AccessKeyID) || strings.Contains(r.Error(), key) {
			t.Errorf("message = %q: want the key's id, never the key", r.Message)
		}
	})

	t.Run("access key expired", func(t *testing.T) {
		key := e.accessKey(t, etlBotApp, "finance", time.Hour)
		d := decide(t, etlBotApp, "finance", key)
		clk.Advance(time.Hour)
		wantRefusal(t, e.a.Recheck(ctx, d), ReasonKeyRevoked)
	})

	t.Run("Graph unreachable", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		e.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusServiceUnavailable})
		t.Cleanup(func() { e.sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{}) })
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		wantRefusal(t, e.a.Recheck(rctx, d), ReasonUnavailable)
	})

	t.Run("resource removed by a reload", func(t *testing.T) {
		d := decide(t, aliceUPN, "sales", e.token(t, aliceUPN))
		cfg := simConfig(e.sim)
		cfg.Resources = cfg.Resources[1:]
		if err := e.a.Reload(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.a.Reload(context.Background(), simConfig(e.sim)) })
		wantRefusal(t, e.a.Recheck(ctx, d), ReasonUnknownResource)
	})
}

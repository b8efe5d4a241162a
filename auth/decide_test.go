package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
)

// clock is real time plus an offset a test can advance.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

func withClock(c *clock) envOption {
	return withDeps(func(d *Deps) { d.Now = c.Now })
}

// signIn completes a notice-mode device-code sign-in of login from addr
// (approved as login) and returns the decision.
func (e *env) signIn(t *testing.T, login, resource string, addr netip.Addr) *Decision {
	t.Helper()
	ctx := testContext(t)
	res := decideAsync(ctx, e.a, noticeRequest(login, resource, addr, nil))
	e.approveNext(t, ctx, login)
	r := receive(t, res, "the decision")
	if r.err != nil {
		t.Fatalf("sign-in of %s: %v", login, r.err)
	}
	return r.d
}

// noPromptRequest fails the test if a device-code prompt is shown.
func noPromptRequest(t *testing.T, login, password string, addr netip.Addr) Request {
	return Request{
		Protocol: "postgres", Resource: "sales", LoginName: login, Password: password, ClientAddr: addr, Mode: PromptNotice,
		Prompt: func(p DeviceCodePrompt) error {
			t.Errorf("unexpected device-code prompt for %s", login)
			return errors.New("no prompt expected")
		},
	}
}

func TestSessionKey(t *testing.T) {
	clk := &clock{}
	e := newEnv(t, withClock(clk))
	alice := e.signIn(t, aliceUPN, "sales", aliceAddr)
	bob := e.signIn(t, bobUPN, "sales", aliceAddr)
	codes := e.sim.Requests(entrasim.EndpointDeviceCode)
	wrongKey, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		login    string
		password string
		addr     netip.Addr
		want     RefusalReason
		wantUser string
	}{
		{name: "reuse", login: aliceUPN, password: alice.SessionKey, addr: aliceAddr, wantUser: aliceUPN},
		{name: "reuse from another address", login: aliceUPN, password: alice.SessionKey, addr: otherAddr, wantUser: aliceUPN},
		{name: "login in another case", login: "ALICE@CONTOSO.EXAMPLE", password: alice.SessionKey, addr: aliceAddr, wantUser: aliceUPN},
		{name: "with a TOTP code on a resource without TOTP", login: aliceUPN, password: alice.SessionKey + ":123456", addr: aliceAddr, wantUser: aliceUPN},
		{name: "bob's own key", login: bobUPN, password: bob.SessionKey, addr: otherAddr, wantUser: bobUPN},
		{name: "wrong key", login: aliceUPN, password: wrongKey, addr: aliceAddr, want: ReasonBadCredentials},
		{name: "malformed key", login: aliceUPN, password: SessionKeyPrefix + "short", addr: aliceAddr, want: ReasonBadCredentials},
		{name: "alice's key presented as bob", login: bobUPN, password: alice.SessionKey, addr: aliceAddr, want: ReasonBadCredentials},
		{name: "bob's key presented as alice", login: aliceUPN, password: bob.SessionKey, addr: aliceAddr, want: ReasonBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.a.Decide(testContext(t), noPromptRequest(t, tt.login, tt.password, tt.addr))
			if tt.want != "" {
				r := wantRefusal(t, err, tt.want)
				if strings.Contains(r.Error(), SessionKeyPrefix) {
					t.Errorf("refusal %q quotes a key", r.Error())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Method != MethodSessionKey || d.Identity.UPN != tt.wantUser || d.SessionKey != "" {
				t.Errorf("decision = %s by %s (new key %v), want %s by session key and no new key", d.Identity.Name(), d.Method, d.SessionKey != "", tt.wantUser)
			}
		})
	}
	if got := e.sim.Requests(entrasim.EndpointDeviceCode); got != codes {
		t.Errorf("%d device codes requested while using session keys", got-codes)
	}

	// Past sessions.ttl the key is refused and forgotten.
	clk.Advance(12*time.Hour + time.Second)
	_, err = e.a.Decide(testContext(t), noPromptRequest(t, aliceUPN, alice.SessionKey, aliceAddr))
	wantRefusal(t, err, ReasonBadCredentials)
	if _, ok, _ := e.a.store.GetSignIn(context.Background(), sessionKeyVerifier(alice.SessionKey)); ok {
		t.Errorf("an expired key is still stored")
	}
}

func TestSessionKeyStoredHashed(t *testing.T) {
	store := NewMemorySessionStore()
	e := newEnv(t, withDeps(func(d *Deps) { d.Sessions = store }))
	d := e.signIn(t, aliceUPN, "sales", aliceAddr)
	rec, ok, err := store.GetSignIn(context.Background(), sessionKeyVerifier(d.SessionKey))
	if err != nil || !ok {
		t.Fatalf("no record under the key's verifier: %v", err)
	}
	if rec.Identity.UPN != aliceUPN || rec.ClientAddr != aliceAddr || rec.ScrambleUser != aliceUPN {
		t.Errorf("record = %+v", rec)
	}
	// Neither the key nor its SHA-256, which answers a MySQL scramble,
	// is anywhere in the store.
	h1 := sha256.Sum256([]byte(d.SessionKey))
	store.mu.Lock()
	defer store.mu.Unlock()
	for h, r := range store.recs {
		text := fmt.Sprintf("%s %x %+v", h, h, r)
		if strings.Contains(text, d.SessionKey) || strings.Contains(text, hex.EncodeToString(h1[:])) || h == KeyHash(h1) {
			t.Errorf("the store holds the key or its SHA-256")
		}
	}
}

func TestAddressGrace(t *testing.T) {
	tests := []struct {
		name  string
		grace *time.Duration
		// then is the reconnect after the sign-in of alice from aliceAddr.
		login   string
		addr    netip.Addr
		advance time.Duration
		want    Method // "" means a new device-code sign-in is needed
	}{
		{name: "same user, same address", grace: durationPtr(10 * time.Minute), login: aliceUPN, addr: aliceAddr, want: MethodAddressGrace},
		{name: "default grace", grace: nil, login: aliceUPN, addr: aliceAddr, want: MethodAddressGrace},
		{name: "login in another case", grace: durationPtr(10 * time.Minute), login: "Alice@contoso.example", addr: aliceAddr, want: MethodAddressGrace},
		{name: "another address", grace: durationPtr(10 * time.Minute), login: aliceUPN, addr: otherAddr},
		{name: "another user, same address", grace: durationPtr(10 * time.Minute), login: bobUPN, addr: aliceAddr},
		{name: "after the grace", grace: durationPtr(10 * time.Minute), login: aliceUPN, addr: aliceAddr, advance: 10*time.Minute + time.Second},
		{name: "grace off", grace: durationPtr(0), login: aliceUPN, addr: aliceAddr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{}
			e := newEnv(t, withClock(clk), withConfig(func(c *config.Config) { c.Sessions.AddressGrace = tt.grace }))
			e.signIn(t, aliceUPN, "sales", aliceAddr)
			clk.Advance(tt.advance)
			codes := e.sim.Requests(entrasim.EndpointDeviceCode)
			req := Request{Resource: "sales", LoginName: tt.login, Password: "anything", ClientAddr: tt.addr, Mode: PromptError}
			d, err := e.a.Decide(testContext(t), req)
			if tt.want == "" {
				var p *SignInPending
				if !errors.As(err, &p) {
					t.Fatalf("Decide = %v, %v; want a new device-code sign-in", d, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Method != tt.want || d.Identity.UPN != aliceUPN || d.SessionKey != "" {
				t.Errorf("decision = %s by %s, want alice by %s and no new key", d.Identity.Name(), d.Method, tt.want)
			}
			if got := e.sim.Requests(entrasim.EndpointDeviceCode); got != codes {
				t.Errorf("address grace requested a device code")
			}
		})
	}
}

func TestServicePrincipal(t *testing.T) {
	clk := &clock{}
	e := newEnv(t, withClock(clk))
	ctx := testContext(t)
	req := func(login, secret, resource string) Request {
		return Request{Resource: resource, LoginName: login, Password: secret, ClientAddr: otherAddr, Mode: PromptError}
	}

	tokens := e.sim.Requests(entrasim.EndpointToken)
	d, err := e.a.Decide(ctx, req(etlBotApp, etlSecret, "finance"))
	if err != nil {
		t.Fatalf("good secret: %v", err)
	}
	if d.Method != MethodServicePrincipal || d.Identity.Kind != KindServicePrincipal || d.Identity.ObjectID != etlBotOID ||
		d.Identity.AppID != etlBotApp || d.Identity.TenantID != testTenant || d.Backend.User != "fin" || d.SessionKey != "" {
		t.Errorf("decision = %+v", d)
	}
	if got := e.sim.Requests(entrasim.EndpointToken); got != tokens+1 {
		t.Fatalf("%d token requests for the first sign-in, want 1", got-tokens)
	}

	// Cached: the same secret again costs no token request.
	if _, err := e.a.Decide(ctx, req(strings.ToUpper(etlBotApp), etlSecret, "finance")); err != nil {
		t.Fatalf("cached secret: %v", err)
	}
	if got := e.sim.Requests(entrasim.EndpointToken); got != tokens+1 {
		t.Errorf("%d token requests after a cached sign-in, want none", got-tokens-1)
	}

	// A wrong secret is checked with Entra (only positive answers are
	// cached) and refused, however recently the right one was accepted.
	_, err = e.a.Decide(ctx, req(etlBotApp, "not-the-secret", "finance"))
	wantRefusal(t, err, ReasonBadCredentials)
	if got := e.sim.Requests(entrasim.EndpointToken); got != tokens+2 {
		t.Errorf("wrong secret made %d token requests, want 1", got-tokens-1)
	}
	_, err = e.a.Decide(ctx, req(etlBotApp, "not-the-secret", "finance"))
	wantRefusal(t, err, ReasonBadCredentials)

	// A secret with two dots is still a secret, not a token.
	before := e.sim.Requests(entrasim.EndpointToken)
	_, err = e.a.Decide(ctx, req(etlBotApp, "abc.def.ghi", "finance"))
	wantRefusal(t, err, ReasonBadCredentials)
	if got := e.sim.Requests(entrasim.EndpointToken); got != before+1 {
		t.Errorf("a dotted secret made %d token requests, want 1", got-before)
	}

	// Right secret, resource its groups do not open.
	_, err = e.a.Decide(ctx, req(etlBotApp, etlSecret, "sales"))
	r := wantRefusal(t, err, ReasonNotAllowed)
	if !strings.Contains(r.Message, "sales") {
		t.Errorf("message %q does not name the resource", r.Message)
	}

	// An app id the tenant does not know.
	_, err = e.a.Decide(ctx, req("12345678-1234-4234-8234-123456789012", etlSecret, "finance"))
	wantRefusal(t, err, ReasonBadCredentials)

	// After the cache TTL the secret is checked again.
	clk.Advance(DefaultServicePrincipalCacheTTL + time.Second)
	before = e.sim.Requests(entrasim.EndpointToken)
	if _, err := e.a.Decide(ctx, req(etlBotApp, etlSecret, "finance")); err != nil {
		t.Fatal(err)
	}
	if got := e.sim.Requests(entrasim.EndpointToken); got != before+1 {
		t.Errorf("%d token requests after the cache expired, want 1", got-before)
	}
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	token := func(upn string) string {
		tok, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: portcullisApp, ClientID: portcullisApp})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name     string
		login    string
		resource string
		protocol string
		want     RefusalReason
		message  string
		wantUser string
	}{
		{name: "member through nesting", login: bobUPN, resource: "sales", wantUser: "sales_senior"},
		{name: "direct member", login: aliceUPN, resource: "sales", wantUser: "sales_reader"},
		{name: "allow group given by object id", login: bobUPN, resource: "finance", wantUser: "fin"},
		{name: "not in an allowed group", login: carolUPN, resource: "sales", want: ReasonNotAllowed, message: `carol@contoso.example is not in any group allowed to use "sales"`},
		{name: "allowed elsewhere only", login: aliceUPN, resource: "finance", want: ReasonNotAllowed, message: "finance"},
		{name: "unknown resource", login: aliceUPN, resource: "nope", want: ReasonUnknownResource, message: `"nope"`},
		{name: "resource of another protocol", login: aliceUPN, resource: "sales", protocol: "mysql", want: ReasonUnknownResource, message: `"sales"`},
		{name: "entra pass-through with a token for portcullis", login: aliceUPN, resource: "azure", want: ReasonNotAllowed, message: "needs an access token for " + OSSRDBMSAudience},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tokenRequest(tt.login, tt.resource, token(tt.login))
			if tt.protocol != "" {
				req.Protocol = tt.protocol
			}
			d, err := e.a.Decide(testContext(t), req)
			if tt.want != "" {
				r := wantRefusal(t, err, tt.want)
				if !strings.Contains(r.Message, tt.message) {
					t.Errorf("message = %q, want it to contain %q", r.Message, tt.message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Backend.User != tt.wantUser || d.Resource != tt.resource {
				t.Errorf("backend user = %q for %q, want %q", d.Backend.User, d.Resource, tt.wantUser)
			}
		})
	}
}

func TestTOTPNeedsAVerifier(t *testing.T) {
	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	cfg := simConfig(sim)
	cfg.Resources[0].RequireTOTP = true
	_, err = New(cfg, Deps{HTTPClients: httpClients(sim)})
	if err == nil || !strings.Contains(err.Error(), `resource "sales" requires TOTP`) {
		t.Errorf("New without a TOTP verifier = %v, want a refusal to start", err)
	}
}

func TestStartResolvesGroupNames(t *testing.T) {
	e := newEnv(t)
	r := e.a.policy.Load().resources["sales"]
	if !r.allow[analystsID] || len(r.allow) != 1 {
		t.Errorf("sales allow = %v, want Analysts' id", r.allow)
	}
	if !r.mappings[0].groups[seniorID] {
		t.Errorf("first mapping groups = %v, want Senior Analysts' id", r.mappings[0].groups)
	}
}

func TestAliases(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) {
		c.Sessions.Aliases = map[string]string{"Alice": aliceUPN, "bobby": bobUPN}
	}))
	aliceToken, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: portcullisApp})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		login string
		want  RefusalReason
	}{
		{name: "alias", login: "alice"},
		{name: "alias in another case", login: "ALICE"},
		{name: "full UPN still works", login: aliceUPN},
		{name: "someone else's alias", login: "bobby", want: ReasonIdentityMismatch},
		{name: "no alias", login: "carol", want: ReasonIdentityMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.a.Decide(testContext(t), tokenRequest(tt.login, "sales", aliceToken))
			if tt.want != "" {
				r := wantRefusal(t, err, tt.want)
				if !strings.Contains(r.Message, "signed in as "+aliceUPN+", but connected as "+tt.login) {
					t.Errorf("message = %q", r.Message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Identity.UPN != aliceUPN {
				t.Errorf("identity = %s", d.Identity.Name())
			}
		})
	}
}

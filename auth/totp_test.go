package auth_test

// TOTP through the Authorizer, against the real Entra simulator (driven
// by MSAL) and the real state store: SQLite in a temporary directory, and
// a PostgreSQL server this test starts for two replicas sharing it.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
)

const (
	tenant     = "5c3e1a2b-7d4f-4e6a-9b8c-2d1e0f9a8b7c"
	appID      = "2a4c6e8f-1b3d-4f5a-8c7e-9d0b1a2c3d4e"
	graphAppSP = "c0000001-0000-4000-8000-000000000001"
	aliceUPN   = "alice@fabrikam.example"
	carolUPN   = "carol@fabrikam.example"
	botAppID   = "3b5d7f9a-2c4e-4a6b-9d8f-0e1c2b3a4d5e"
)

var (
	graphSecret = "graph-" + randomHex()
	botSecret   = "bot-" + randomHex()
	aliceAddr   = netip.MustParseAddr("192.0.2.44")
	elsewhere   = netip.MustParseAddr("198.51.100.9")
)

var pgRole = testpg.Role{Name: "portcullis", Password: "pw-" + randomHex()}

var pg = testpg.NewShared(testpg.Options{Roles: []testpg.Role{pgRole}})

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	os.Exit(code)
}

func randomHex() string {
	k, err := store.NewKey()
	if err != nil {
		panic(err)
	}
	return strings.NewReplacer("+", "", "/", "", "=", "").Replace(k)[:20]
}

func directory() *entrasim.Directory {
	return &entrasim.Directory{
		Tenant:       entrasim.Tenant{ID: tenant, Domain: "fabrikam.example", DisplayName: "Fabrikam (test)"},
		Applications: []entrasim.Application{{AppID: appID, DisplayName: "portcullis", PublicClient: true}},
		Users: []entrasim.User{
			{ID: "11111111-1111-4111-8111-111111111111", UPN: aliceUPN, DisplayName: "Alice"},
			{ID: "33333333-3333-4333-8333-333333333333", UPN: carolUPN, DisplayName: "Carol"},
		},
		Groups: []entrasim.Group{
			{ID: "a1000000-0000-4000-8000-000000000001", DisplayName: "Vault Users", Members: entrasim.GroupMembers{Users: []string{aliceUPN}, ServicePrincipals: []string{"bot"}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: graphAppSP, AppID: appID, DisplayName: "portcullis", Secrets: []string{graphSecret}},
			{ID: "c0000002-0000-4000-8000-000000000002", AppID: botAppID, DisplayName: "bot", Secrets: []string{botSecret}},
		},
	}
}

func newSim(t *testing.T) *entrasim.Server {
	t.Helper()
	sim, err := entrasim.New(directory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

func totpConfig(sim *entrasim.Server, grace time.Duration) *config.Config {
	cfg := &config.Config{
		Providers: []config.Provider{{
			Name: "fabrikam", TenantID: sim.TenantID(), ClientID: appID,
			AuthorityHost: sim.URL(), GraphEndpoint: sim.GraphEndpoint(), GraphAuth: "application",
			ClientSecret: config.NewSecret(graphSecret),
		}},
		Resources: []config.Resource{
			{Name: "vault", Protocol: "postgres", AllowGroups: []string{"Vault Users"}, RequireTOTP: true,
				Credentials: []config.CredentialMapping{{Groups: []string{"Vault Users"}, User: "vault_reader", Password: config.NewSecret("pw")}}},
			{Name: "open", Protocol: "postgres", AllowGroups: []string{"Vault Users"},
				Credentials: []config.CredentialMapping{{Groups: []string{"Vault Users"}, User: "open_reader", Password: config.NewSecret("pw")}}},
		},
		Sessions: config.Sessions{TTL: 12 * time.Hour, AddressGrace: &grace},
	}
	return cfg
}

// replica is one portcullis process's identity core.
type replica struct {
	a    *auth.Authorizer
	totp *mfa.TOTP
	st   store.Store
}

func newReplica(t *testing.T, sim *entrasim.Server, st store.Store, grace time.Duration) *replica {
	t.Helper()
	m := mfa.New(st, mfa.Options{})
	a, err := auth.New(totpConfig(sim, grace), auth.Deps{
		HTTPClients: map[string]*http.Client{"fabrikam": sim.HTTPClient()},
		Sessions:    st,
		TOTP:        m,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if err := a.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	return &replica{a: a, totp: m, st: st}
}

func storeKeys(t *testing.T) store.Keys {
	t.Helper()
	k, err := store.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := store.ParseKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return store.Keys{Current: b}
}

func sqliteStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenSQLite(testContext(t), filepath.Join(t.TempDir(), "portcullis.db"), storeKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var pgDatabases atomic.Int64

// postgresStores opens n stores (replicas) on one fresh database.
func postgresStores(t *testing.T, n int) []store.Store {
	t.Helper()
	srv := pg.Server(t)
	name := fmt.Sprintf("auth_%d", pgDatabases.Add(1))
	if err := srv.Exec(testContext(t), fmt.Sprintf("CREATE DATABASE %s OWNER %s", name, pgRole.Name)); err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pgRole.Name, pgRole.Password, srv.Addr(), name)
	keys := storeKeys(t)
	var out []store.Store
	for i := 0; i < n; i++ {
		st, err := store.OpenPostgres(testContext(t), dsn, keys)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		out = append(out, st)
	}
	return out
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// request is a notice-mode request that fails the test if a device-code
// prompt appears.
func request(t *testing.T, login, resource, password string, addr netip.Addr, at time.Time) auth.Request {
	return auth.Request{
		Protocol: "postgres", Resource: resource, LoginName: login, Password: password,
		ClientAddr: addr, ReceivedAt: at, Mode: auth.PromptNotice,
		Prompt: func(auth.DeviceCodePrompt) error {
			t.Errorf("unexpected device-code prompt for %s", login)
			return errors.New("no prompt expected")
		},
	}
}

// signIn runs a notice-mode device-code sign-in of login (approved in
// the simulator) with password, and returns what Decide returned.
func signIn(t *testing.T, r *replica, sim *entrasim.Server, login, resource, password string) (*auth.Decision, error) {
	t.Helper()
	ctx := testContext(t)
	type result struct {
		d   *auth.Decision
		err error
	}
	done := make(chan result, 1)
	req := auth.Request{
		Protocol: "postgres", Resource: resource, LoginName: login, Password: password,
		ClientAddr: aliceAddr, ReceivedAt: time.Now(), Mode: auth.PromptNotice,
		Prompt: func(auth.DeviceCodePrompt) error { return nil },
	}
	go func() {
		d, err := r.a.Decide(ctx, req)
		done <- result{d, err}
	}()
	pc, err := sim.WaitForDeviceCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Approve(pc.UserCode, login); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		return res.d, res.err
	case <-ctx.Done():
		t.Fatal("timed out waiting for the decision")
	}
	return nil, nil
}

// enrolled signs alice in afresh on r and returns the TOTPRequired with
// her enrolment.
func enrolled(t *testing.T, r *replica, sim *entrasim.Server) *auth.TOTPRequired {
	t.Helper()
	_, err := signIn(t, r, sim, aliceUPN, "vault", "anything")
	var need *auth.TOTPRequired
	if !errors.As(err, &need) || need.Enrollment == nil {
		t.Fatalf("first sign-in to vault = %v, want *TOTPRequired with an enrolment", err)
	}
	return need
}

func codeAt(t *testing.T, uri string, at time.Time) string {
	t.Helper()
	secret, err := mfa.SecretFromURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mfa.CodeAt(secret, at)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wrongCode is valid at no step near at.
func wrongCode(t *testing.T, uri string, at time.Time) string {
	t.Helper()
	near := map[string]bool{}
	for d := -3; d <= 3; d++ {
		near[codeAt(t, uri, at.Add(time.Duration(d)*mfa.Period))] = true
	}
	for i := 0; ; i++ {
		c := fmt.Sprintf("%06d", (314159+i*7919)%1000000)
		if !near[c] {
			return c
		}
	}
}

func wantRefusal(t *testing.T, err error, reason auth.RefusalReason) *auth.Refusal {
	t.Helper()
	var r *auth.Refusal
	if !errors.As(err, &r) || r.Reason != reason {
		t.Fatalf("error = %v (%T), want a refusal for %s", err, err, reason)
	}
	return r
}

func wantTOTPFailure(t *testing.T, r *auth.Refusal, kind auth.TOTPFailureKind) *auth.TOTPFailure {
	t.Helper()
	var f *auth.TOTPFailure
	if !errors.As(r, &f) || f.Kind != kind {
		t.Fatalf("refusal %v carries %v, want a TOTPFailure of kind %s", r, r.Err, kind)
	}
	return f
}

func TestTOTPEnrolThenUse(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 0)
	ctx := testContext(t)

	// The first sign-in to a TOTP resource: enrolment, and a session key
	// to come back with.
	need := enrolled(t, r, sim)
	e := need.Enrollment
	if !strings.HasPrefix(e.URI, "otpauth://totp/portcullis:"+aliceUPN+"?") || len(e.QR) < 20 || e.Key == "" {
		t.Errorf("enrolment: URI %.40q…, %d QR lines, key set %v", e.URI, len(e.QR), e.Key != "")
	}
	if need.SessionKey == "" || !need.SessionKeyExpires.After(time.Now()) || need.Identity.UPN != aliceUPN || need.Resource != "vault" {
		t.Errorf("TOTPRequired = identity %s, resource %q, session key set %v", need.Identity.UPN, need.Resource, need.SessionKey != "")
	}
	if !strings.Contains(need.Message, "scan the QR code") || !strings.Contains(need.Message, "<session key>:<code>") {
		t.Errorf("message = %q", need.Message)
	}
	secret, _ := mfa.SecretFromURI(e.URI)
	for _, text := range []string{need.Error(), need.Message, fmt.Sprint(e), fmt.Sprintf("%#v", e)} {
		if strings.Contains(text, secret) || strings.Contains(text, need.SessionKey) {
			t.Errorf("%q shows a secret", text)
		}
	}

	// The session key alone: still pending enrolment, shown again.
	_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", need.SessionKey, elsewhere, time.Now()))
	var again *auth.TOTPRequired
	if !errors.As(err, &again) || again.Enrollment == nil || again.Enrollment.URI != e.URI || again.SessionKey != "" {
		t.Fatalf("key alone while pending = %v, want the same enrolment and no new key", err)
	}

	// The key and a good code: in, and the secret is active.
	now := time.Now()
	good := need.SessionKey + ":" + codeAt(t, e.URI, now)
	d, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", good, elsewhere, now))
	if err != nil {
		t.Fatalf("key and code: %v", err)
	}
	if d.Method != auth.MethodSessionKey || !d.TOTPVerified || d.Backend.User != "vault_reader" || d.SessionKey != "" {
		t.Errorf("decision = %s by %s, totp %v, backend %s", d.Identity.Name(), d.Method, d.TOTPVerified, d.Backend.User)
	}

	// The same code again: refused, whatever the clock says now.
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", good, elsewhere, now))
	ref := wantRefusal(t, err, auth.ReasonBadCredentials)
	wantTOTPFailure(t, ref, auth.TOTPReusedCode)
	if strings.Contains(ref.Error(), good[len(good)-6:]) {
		t.Errorf("refusal %q quotes the code", ref.Error())
	}

	// The key alone once active: asked for a code, no enrolment.
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", need.SessionKey, elsewhere, time.Now()))
	if !errors.As(err, &again) || again.Enrollment != nil || !strings.Contains(again.Message, "<session key>:<code>") {
		t.Fatalf("key alone once active = %v, want a TOTPRequired without enrolment", err)
	}

	// A resource without TOTP ignores the code.
	if d, err := r.a.Decide(ctx, request(t, aliceUPN, "open", need.SessionKey+":000000", elsewhere, time.Now())); err != nil || d.TOTPVerified {
		t.Errorf("open resource = %v, %v", d, err)
	}
}

func TestTOTPLockoutAndReset(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 0)
	ctx := testContext(t)
	need := enrolled(t, r, sim)
	key, uri := need.SessionKey, need.Enrollment.URI
	now := time.Now()
	if _, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", key+":"+codeAt(t, uri, now), aliceAddr, now)); err != nil {
		t.Fatalf("first code: %v", err)
	}

	bad := key + ":" + wrongCode(t, uri, now)
	for i := 1; i <= 5; i++ {
		_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", bad, aliceAddr, now))
		f := wantTOTPFailure(t, wantRefusal(t, err, auth.ReasonBadCredentials), auth.TOTPWrongCode)
		if f.Failures != i || f.MaxFailures != 5 || f.LockedNow != (i == 5) {
			t.Errorf("wrong code %d: %+v", i, f)
		}
	}
	// Locked: a good code is refused, with a message that says until when
	// and what to do.
	later := now.Add(mfa.Period)
	_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", key+":"+codeAt(t, uri, later), aliceAddr, later))
	ref := wantRefusal(t, err, auth.ReasonTOTPLocked)
	f := wantTOTPFailure(t, ref, auth.TOTPLocked)
	if !strings.Contains(ref.Message, "too many wrong TOTP codes") || !strings.Contains(ref.Message, "try again after "+f.LockedUntil.UTC().Format("15:04")) ||
		!strings.Contains(ref.Message, "portcullis totp reset "+aliceUPN) {
		t.Errorf("locked message = %q", ref.Message)
	}

	// An operator's reset: the next connection enrols afresh.
	if _, err := r.totp.Reset(ctx, mfa.NewUser("fabrikam", aliceUPN)); err != nil {
		t.Fatal(err)
	}
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", key, aliceAddr, time.Now()))
	var fresh *auth.TOTPRequired
	if !errors.As(err, &fresh) || fresh.Enrollment == nil || fresh.Enrollment.URI == uri {
		t.Fatalf("after reset = %v, want a new enrolment", err)
	}
	now = time.Now()
	// A lost or stolen phone still shows codes of the old secret: after
	// the reset they open nothing.
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", key+":"+codeAt(t, uri, now), aliceAddr, now))
	wantTOTPFailure(t, wantRefusal(t, err, auth.ReasonBadCredentials), auth.TOTPWrongCode)
	if _, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", key+":"+codeAt(t, fresh.Enrollment.URI, now), aliceAddr, now)); err != nil {
		t.Errorf("code of the new secret: %v", err)
	}
}

// TestTOTPArrivalTime: the code is judged by when it arrived, so a code
// typed as the password survives a slow device-code sign-in.
func TestTOTPArrivalTime(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 0)
	ctx := testContext(t)
	need := enrolled(t, r, sim)
	arrived := time.Now().Add(-4 * time.Minute)
	c := codeAt(t, need.Enrollment.URI, arrived)
	if _, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", need.SessionKey+":"+c, elsewhere, arrived)); err != nil {
		t.Errorf("a code that arrived 4 minutes ago, checked now: %v", err)
	}
	old := time.Now().Add(-3 * time.Minute)
	_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", need.SessionKey+":"+codeAt(t, need.Enrollment.URI, old), elsewhere, time.Time{}))
	wantTOTPFailure(t, wantRefusal(t, err, auth.ReasonBadCredentials), auth.TOTPWrongCode)

	// A code typed as the password of a device-code sign-in: checked once
	// the sign-in completes, and the person is in at once.
	d, err := signIn(t, r, sim, aliceUPN, "vault", codeAt(t, need.Enrollment.URI, time.Now()))
	if err != nil || d.Method != auth.MethodDeviceCode || !d.TOTPVerified || d.SessionKey == "" {
		t.Fatalf("device-code sign-in with a code = %+v, %v", d, err)
	}
}

// TestTOTPAfterIdentityOnly: nothing about TOTP happens for a caller who
// has not proven who they are, or who may not use the resource.
func TestTOTPAfterIdentityOnly(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	st := sqliteStore(t)
	r := newReplica(t, sim, st, 0)
	ctx := testContext(t)
	alice, carol := mfa.NewUser("fabrikam", aliceUPN), mfa.NewUser("fabrikam", carolUPN)

	forged := "pcx_" + strings.Repeat("a", 52) + ":123456"
	for i := 0; i < 6; i++ {
		_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", forged, elsewhere, time.Now()))
		if ref := wantRefusal(t, err, auth.ReasonBadCredentials); errors.As(ref, new(*auth.TOTPFailure)) {
			t.Fatalf("a bad session key was refused over its TOTP code: %v", ref)
		}
	}
	if st, err := r.totp.Status(ctx, alice); err != nil || st.Enrolled || st.Failures.Count != 0 {
		t.Errorf("alice's TOTP state after bad keys = %+v, %v; want untouched", st, err)
	}

	// Carol proves who she is but is in no allowed group.
	tok, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: carolUPN, Audience: appID, ClientID: appID})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.a.Decide(ctx, request(t, carolUPN, "vault", tok+":123456", elsewhere, time.Now()))
	wantRefusal(t, err, auth.ReasonNotAllowed)
	if st, err := r.totp.Status(ctx, carol); err != nil || st.Enrolled || st.Failures.Count != 0 {
		t.Errorf("carol's TOTP state = %+v, %v; want untouched", st, err)
	}

	// A service principal is refused before Entra is asked.
	before := sim.Requests(entrasim.EndpointToken)
	_, err = r.a.Decide(ctx, request(t, botAppID, "vault", botSecret, elsewhere, time.Now()))
	if ref := wantRefusal(t, err, auth.ReasonNotAllowed); !strings.Contains(ref.Message, "service principal") {
		t.Errorf("message = %q", ref.Message)
	}
	if got := sim.Requests(entrasim.EndpointToken); got != before {
		t.Errorf("%d token requests for a service principal on a TOTP resource", got-before)
	}
}

func TestTOTPWithAccessToken(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 0)
	ctx := testContext(t)
	tok, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: appID, ClientID: appID})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", tok, elsewhere, time.Now()))
	var need *auth.TOTPRequired
	if !errors.As(err, &need) || need.Enrollment == nil || need.SessionKey != "" || !strings.Contains(need.Message, "<token>:<code>") {
		t.Fatalf("token alone = %v, want an enrolment telling how to add the code", err)
	}
	now := time.Now()
	d, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", tok+":"+codeAt(t, need.Enrollment.URI, now), elsewhere, now))
	if err != nil || d.Method != auth.MethodAccessToken || !d.TOTPVerified {
		t.Fatalf("token and code = %+v, %v", d, err)
	}
}

// TestTOTPErrorModeWithGrace: a tool that shows only errors signs in in
// the background, is shown the enrolment on its reconnect, and comes back
// from the same address with just the code.
//
// TestTOTPEnrolThenUse covers a fresh sign-in that hands out a session
// key with the enrolment.
func TestTOTPErrorModeWithGrace(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 10*time.Minute)
	ctx := testContext(t)
	req := auth.Request{Protocol: "postgres", Resource: "vault", LoginName: aliceUPN, Password: "anything", ClientAddr: aliceAddr, Mode: auth.PromptError}

	_, err := r.a.Decide(ctx, req)
	var pending *auth.SignInPending
	if !errors.As(err, &pending) {
		t.Fatalf("first connection = %v, want *SignInPending", err)
	}
	if err := sim.Approve(pending.Prompt.UserCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	// Reconnect until the background sign-in has finished.
	var need *auth.TOTPRequired
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err = r.a.Decide(ctx, req)
		if !errors.As(err, &pending) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background sign-in did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The background sign-in left an address-grace record, which serves
	// the reconnect.
	if !errors.As(err, &need) || need.Enrollment == nil {
		t.Fatalf("reconnect = %v, want the enrolment", err)
	}
	if !strings.HasSuffix(need.Message, "then connect again with the 6-digit code from your authenticator app as the password") {
		t.Errorf("message = %q", need.Message)
	}
	now := time.Now()
	withCode := req
	withCode.Password, withCode.ReceivedAt = codeAt(t, need.Enrollment.URI, now), now
	d, err := r.a.Decide(ctx, withCode)
	if err != nil || d.Method != auth.MethodAddressGrace || !d.TOTPVerified {
		t.Fatalf("code alone from the same address = %+v, %v", d, err)
	}
}

// TestTOTPNoticeModeWithGrace: after a fresh sign-in the person may come
// back from the same address with just the code, or with the key from
// anywhere.
func TestTOTPNoticeModeWithGrace(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 10*time.Minute)
	ctx := testContext(t)
	need := enrolled(t, r, sim)
	if need.SessionKey == "" || !strings.Contains(need.Message, "as the password (from another address, or after 10 minutes, your session key, a colon and the code") {
		t.Errorf("message = %q (key set %v)", need.Message, need.SessionKey != "")
	}
	now := time.Now()
	d, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", codeAt(t, need.Enrollment.URI, now), aliceAddr, now))
	if err != nil || d.Method != auth.MethodAddressGrace || !d.TOTPVerified {
		t.Fatalf("code alone from the same address = %+v, %v", d, err)
	}
	// Lockout messages name the window in words.
	bad := wrongCode(t, need.Enrollment.URI, now)
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", bad, aliceAddr, now))
	if ref := wantRefusal(t, err, auth.ReasonBadCredentials); !strings.Contains(ref.Message, "after 4 more wrong codes, TOTP sign-in is locked for 15 minutes") {
		t.Errorf("message = %q", ref.Message)
	}
}

// TestTOTPTwoReplicas: two Authorizers on one PostgreSQL store behave as
// one: a session key issued by one works on the other, and a code used on
// one is refused on the other.
func TestTOTPTwoReplicas(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	stores := postgresStores(t, 2)
	one, two := newReplica(t, sim, stores[0], 0), newReplica(t, sim, stores[1], 0)
	ctx := testContext(t)

	need := enrolled(t, one, sim)
	now := time.Now()
	password := need.SessionKey + ":" + codeAt(t, need.Enrollment.URI, now)
	d, err := two.a.Decide(ctx, request(t, aliceUPN, "vault", password, elsewhere, now))
	if err != nil || d.Method != auth.MethodSessionKey || !d.TOTPVerified {
		t.Fatalf("replica two with replica one's key and a code = %+v, %v", d, err)
	}
	_, err = one.a.Decide(ctx, request(t, aliceUPN, "vault", password, elsewhere, now))
	wantTOTPFailure(t, wantRefusal(t, err, auth.ReasonBadCredentials), auth.TOTPReusedCode)

	// Wrong codes count across replicas.
	bad := need.SessionKey + ":" + wrongCode(t, need.Enrollment.URI, now)
	for i := 1; i <= 5; i++ {
		r := []*replica{one, two}[i%2]
		_, err := r.a.Decide(ctx, request(t, aliceUPN, "vault", bad, elsewhere, now))
		if f := wantTOTPFailure(t, wantRefusal(t, err, auth.ReasonBadCredentials), auth.TOTPWrongCode); f.Failures != i {
			t.Errorf("wrong code %d counted as %d", i, f.Failures)
		}
	}
	_, err = one.a.Decide(ctx, request(t, aliceUPN, "vault", need.SessionKey, elsewhere, time.Now()))
	wantRefusal(t, err, auth.ReasonTOTPLocked)
}

// TestTOTPStoreDown: a store that cannot be reached is a refusal that says
// so, never an allow.
func TestTOTPStoreDown(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	st := sqliteStore(t)
	r := newReplica(t, sim, st, 0)
	ctx := testContext(t)
	tok, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: appID, ClientID: appID})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, err = r.a.Decide(ctx, request(t, aliceUPN, "vault", tok+":123456", elsewhere, time.Now()))
	if ref := wantRefusal(t, err, auth.ReasonUnavailable); !strings.Contains(ref.Message, "the state store could not be reached") {
		t.Errorf("message = %q", ref.Message)
	}
}

// TestErrorModeAcrossReplicas: a tool that shows only errors reconnects
// to finish its sign-in, and behind a load balancer the reconnect may
// reach another replica. It is shown the same code, and collects the
// outcome once, wherever it lands.
func TestErrorModeAcrossReplicas(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	stores := postgresStores(t, 2)
	one, two := newReplica(t, sim, stores[0], 0), newReplica(t, sim, stores[1], 0)
	ctx := testContext(t)
	req := auth.Request{Protocol: "postgres", Resource: "open", LoginName: aliceUPN, Password: "anything", ClientAddr: aliceAddr, Mode: auth.PromptError}
	pendingCode := func(r *replica) string {
		t.Helper()
		_, err := r.a.Decide(ctx, req)
		var p *auth.SignInPending
		if !errors.As(err, &p) {
			t.Fatalf("Decide = %v, want *SignInPending", err)
		}
		return p.Prompt.UserCode
	}
	// collect reconnects to r until the sign-in is no longer pending.
	collect := func(r *replica) (*auth.Decision, error) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			d, err := r.a.Decide(ctx, req)
			if !errors.As(err, new(*auth.SignInPending)) {
				return d, err
			}
			if time.Now().After(deadline) {
				t.Fatal("the sign-in stayed pending")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	code := pendingCode(one)
	if got := pendingCode(two); got != code {
		t.Fatalf("replica two shows code %s, replica one %s", got, code)
	}
	if n := sim.Requests(entrasim.EndpointDeviceCode); n != 1 {
		t.Errorf("%d device codes requested, want 1", n)
	}
	if err := sim.Approve(code, aliceUPN); err != nil {
		t.Fatal(err)
	}
	d, err := collect(two)
	if err != nil || d.Identity.UPN != aliceUPN || d.Method != auth.MethodDeviceCode || d.SessionKey == "" {
		t.Fatalf("collected on replica two = %+v, %v", d, err)
	}
	// The outcome served one reconnect; replica one starts afresh.
	if got := pendingCode(one); got == code {
		t.Error("replica one served the sign-in replica two collected")
	}
	if n := sim.Requests(entrasim.EndpointDeviceCode); n != 2 {
		t.Errorf("%d device codes requested, want 2", n)
	}

	// Collected where it started, it is not collected again elsewhere.
	code = pendingCode(one)
	if err := sim.Approve(code, aliceUPN); err != nil {
		t.Fatal(err)
	}
	if d, err := collect(one); err != nil || d.SessionKey == "" {
		t.Fatalf("collected on replica one = %+v, %v", d, err)
	}
	if got := pendingCode(two); got == code {
		t.Error("replica two served a sign-in replica one had collected")
	}
}

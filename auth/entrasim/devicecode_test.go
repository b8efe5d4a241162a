package entrasim_test

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// approveNext approves the next device code the simulator issues as upn,
// the way a person at the device-login page would, and reports what it
// saw on errc.
func approveNext(ctx context.Context, sim *entrasim.Server, upn string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		p, err := sim.WaitForDeviceCode(ctx)
		if err == nil {
			err = sim.Approve(p.UserCode, upn)
		}
		errc <- err
	}()
	return errc
}

func TestDeviceCodeSignIn(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	graph := sim.URL()
	tests := []struct {
		name    string
		scopes  []string
		wantIss string
		wantAud string
		wantScp string
	}{
		{name: "own API", scopes: []string{apiScope}, wantIss: sim.Issuer(2, tenantID), wantAud: appID, wantScp: "access"},
		{name: "own API by app id", scopes: []string{appID + "/.default"}, wantIss: sim.Issuer(2, tenantID), wantAud: appID, wantScp: "user_impersonation"},
		{name: "Graph through the simulator's URL", scopes: []string{graph + "/.default"}, wantIss: sim.Issuer(1, tenantID), wantAud: graph, wantScp: "User.Read openid profile"},
		{name: "bare Graph scope", scopes: []string{"User.Read"}, wantIss: sim.Issuer(1, tenantID), wantAud: graph, wantScp: "User.Read openid profile"},
		{name: "Azure Database for PostgreSQL/MySQL", scopes: []string{"https://ossrdbms-aad.database.windows.net/.default"}, wantIss: sim.Issuer(1, tenantID), wantAud: "https://ossrdbms-aad.database.windows.net", wantScp: "user_impersonation"},
		{name: "Graph by its URL", scopes: []string{"https://graph.microsoft.com/User.Read"}, wantIss: sim.Issuer(1, tenantID), wantAud: "https://graph.microsoft.com", wantScp: "User.Read openid profile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			client := publicClient(t, sim, appID)
			approved := approveNext(ctx, sim, aliceUPN)
			dc, err := client.AcquireTokenByDeviceCode(ctx, tt.scopes)
			if err != nil {
				t.Fatalf("device code: %v", err)
			}
			if !regexp.MustCompile(`^[A-Z0-9]{9}$`).MatchString(dc.Result.UserCode) {
				t.Errorf("user code %q is not 9 upper-case letters or digits", dc.Result.UserCode)
			}
			if want := sim.URL() + "/devicelogin"; dc.Result.VerificationURL != want {
				t.Errorf("verification URL = %q, want %q", dc.Result.VerificationURL, want)
			}
			wantMsg := "To sign in, use a web browser to open the page " + sim.URL() + "/devicelogin and enter the code " + dc.Result.UserCode + " to authenticate."
			if dc.Result.Message != wantMsg {
				t.Errorf("message = %q, want %q", dc.Result.Message, wantMsg)
			}
			if left := time.Until(dc.Result.ExpiresOn); left < 14*time.Minute || left > 16*time.Minute {
				t.Errorf("code expires in %s, want about 15m", left)
			}
			res, err := dc.AuthenticationResult(ctx)
			if err != nil {
				t.Fatalf("sign-in: %v", err)
			}
			if err := <-approved; err != nil {
				t.Fatalf("approve: %v", err)
			}
			if res.Account.PreferredUsername != aliceUPN {
				t.Errorf("account username = %q, want %q", res.Account.PreferredUsername, aliceUPN)
			}
			if want := aliceID + "." + tenantID; res.Account.HomeAccountID != want {
				t.Errorf("home account id = %q, want %q (from client_info)", res.Account.HomeAccountID, want)
			}
			if res.Account.LocalAccountID != aliceID || res.IDToken.Oid != aliceID || res.IDToken.TenantID != tenantID {
				t.Errorf("local account %q, id_token oid %q tid %q; want %s in %s", res.Account.LocalAccountID, res.IDToken.Oid, res.IDToken.TenantID, aliceID, tenantID)
			}
			idc := verifyToken(t, sim, res.IDToken.RawToken, sim.Issuer(2, tenantID), appID)
			if idc["preferred_username"] != aliceUPN || idc["name"] != "Alice Analyst" {
				t.Errorf("id_token claims = %v", idc)
			}

			c := verifyToken(t, sim, res.AccessToken, tt.wantIss, tt.wantAud)
			if c["oid"] != aliceID || c["tid"] != tenantID || c["upn"] != aliceUPN {
				t.Errorf("access token oid/tid/upn = %v/%v/%v", c["oid"], c["tid"], c["upn"])
			}
			if c["scp"] != tt.wantScp {
				t.Errorf("scp = %v, want %q", c["scp"], tt.wantScp)
			}
			groups, _ := c["groups"].([]any)
			if !slices.Contains(groups, any(readersID)) || !slices.Contains(groups, any(analystsID)) {
				t.Errorf("groups = %v, want Readers and Analysts (nested)", groups)
			}
			if !slices.Equal(res.GrantedScopes[:len(tt.scopes)], tt.scopes) {
				t.Errorf("granted scopes = %v, want %v first", res.GrantedScopes, tt.scopes)
			}
		})
	}
}

func TestDeviceCodeDeclined(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	client := publicClient(t, sim, appID)
	go func() {
		if p, err := sim.WaitForDeviceCode(ctx); err == nil {
			_ = sim.Decline(p.UserCode)
		}
	}()
	dc, err := client.AcquireTokenByDeviceCode(ctx, []string{apiScope})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dc.AuthenticationResult(ctx)
	if err == nil || !strings.Contains(err.Error(), "authorization_declined") {
		t.Fatalf("sign-in after decline: err = %v, want authorization_declined", err)
	}
	if err := sim.Approve(dc.Result.UserCode, aliceUPN); !errors.Is(err, entrasim.ErrUserCodeUsed) {
		t.Errorf("approve after decline: %v, want ErrUserCodeUsed", err)
	}
}

func TestDeviceCodeExpired(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	const life = 2 * time.Minute
	sim := startSim(t, entrasim.Options{DeviceCodeLifetime: life, Now: clock.Now})
	ctx := testContext(t)
	client := publicClient(t, sim, appID)
	dc, err := client.AcquireTokenByDeviceCode(ctx, []string{apiScope})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(dc.Result.ExpiresOn); left > life || left < life-10*time.Second {
		t.Errorf("MSAL was told the code lives %s, want %s", left, life)
	}
	p, err := sim.WaitForDeviceCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The simulator's clock passes the lifetime; MSAL's own deadline is
	// still minutes away, so only the server can end the wait.
	clock.Advance(life + time.Second)
	_, err = dc.AuthenticationResult(ctx)
	if err == nil || !strings.Contains(err.Error(), "expired_token") {
		t.Fatalf("sign-in after expiry: err = %v, want expired_token", err)
	}
	if err := sim.Approve(p.UserCode, aliceUPN); !errors.Is(err, entrasim.ErrUserCodeExpired) {
		t.Errorf("approve after expiry: %v, want ErrUserCodeExpired", err)
	}
	if pending := sim.PendingDeviceCodes(); len(pending) != 0 {
		t.Errorf("expired code still pending: %v", pending)
	}
}

func TestDeviceCodeSlowDown(t *testing.T) {
	t.Parallel()
	logs := &logSink{}
	sim := startSim(t, entrasim.Options{Logf: logs.Logf})
	ctx := testContext(t)
	client := publicClient(t, sim, appID)
	const slowDowns = 2
	sim.ForceSlowDown(slowDowns)
	dc, err := client.AcquireTokenByDeviceCode(ctx, []string{apiScope})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := dc.AuthenticationResult(ctx)
		done <- err
	}()
	// Approve only after MSAL has been told to slow down twice, so the
	// success proves it kept polling through slow_down.
	waitFor(t, "two slow_down answers", 10*time.Second, func() bool {
		return logs.count("/oauth2/v2.0/token 400", "error=slow_down") >= slowDowns
	})
	if err := sim.Approve(dc.Result.UserCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("sign-in after slow_down: %v", err)
	}
	if n := logs.count("error=slow_down"); n != slowDowns {
		t.Errorf("slow_down answered %d times, want %d", n, slowDowns)
	}
}

func TestDeviceCodeCancelStopsPolling(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx, cancel := context.WithCancel(testContext(t))
	client := publicClient(t, sim, appID)
	dc, err := client.AcquireTokenByDeviceCode(ctx, []string{apiScope})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := dc.AuthenticationResult(ctx)
		done <- err
	}()
	waitFor(t, "MSAL to poll twice", 10*time.Second, func() bool { return sim.Requests(entrasim.EndpointToken) >= 2 })
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled sign-in: err = %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("sign-in did not return within 2s of cancellation")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("cancellation took %s", took)
	}
	// MSAL's next poll was due within 450ms of the second; a window more
	// than twice that long without a request shows polling stopped.
	polls := sim.Requests(entrasim.EndpointToken)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if n := sim.Requests(entrasim.EndpointToken); n != polls {
			t.Fatalf("token endpoint polled again after cancellation (%d, then %d)", polls, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pending := sim.PendingDeviceCodes(); len(pending) != 1 {
		t.Errorf("pending codes = %v, want the abandoned one", pending)
	}
}

func TestDeviceCodeDisabledUser(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})

	t.Run("cannot approve", func(t *testing.T) {
		_, userCode := rawDeviceCode(t, sim, apiScope+" openid offline_access")
		if err := sim.Approve(userCode, daveUPN); !errors.Is(err, entrasim.ErrUserDisabled) {
			t.Fatalf("approve as disabled user: %v, want ErrUserDisabled", err)
		}
		if err := sim.Approve(userCode, "nobody@fabrikam.example"); !errors.Is(err, entrasim.ErrUnknownUser) {
			t.Fatalf("approve as unknown user: %v, want ErrUnknownUser", err)
		}
		if err := sim.Approve("ZZZZZZZZZ", aliceUPN); !errors.Is(err, entrasim.ErrUnknownUserCode) {
			t.Fatalf("approve unknown code: %v, want ErrUnknownUserCode", err)
		}
	})

	t.Run("disabled after approval", func(t *testing.T) {
		deviceCode, userCode := rawDeviceCode(t, sim, apiScope+" openid offline_access")
		if err := sim.Approve(strings.ToLower(userCode), bobUPN); err != nil {
			t.Fatalf("approve (lower-case code): %v", err)
		}
		sim.Directory(func(d *entrasim.Directory) {
			no := false
			d.UserByName(bobUPN).Enabled = &no
		})
		status, body := pollDeviceCode(t, sim, deviceCode)
		wantOAuthError(t, status, body, http.StatusBadRequest, "invalid_grant", 50057)
	})
}

func TestDeviceCodeProtocolErrors(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	devicecode := "/" + tenantID + "/oauth2/v2.0/devicecode"
	tests := []struct {
		name       string
		form       map[string]string
		wantStatus int
		wantErr    string
		wantCode   int
	}{
		{name: "no client_id", form: map[string]string{"scope": apiScope}, wantStatus: 400, wantErr: "invalid_request", wantCode: 900144},
		{name: "unknown client", form: map[string]string{"client_id": "00000000-1111-4222-8333-444444444444", "scope": apiScope}, wantStatus: 400, wantErr: "unauthorized_client", wantCode: 700016},
		{name: "confidential app cannot use device code", form: map[string]string{"client_id": confAppID, "scope": apiScope}, wantStatus: 401, wantErr: "invalid_client", wantCode: 7000218},
		{name: "no scope", form: map[string]string{"client_id": appID}, wantStatus: 400, wantErr: "invalid_request", wantCode: 900144},
		{name: "two resources", form: map[string]string{"client_id": appID, "scope": apiScope + " api://reporting/read"}, wantStatus: 400, wantErr: "invalid_scope", wantCode: 28000},
		{name: "unknown resource", form: map[string]string{"client_id": appID, "scope": "api://nothing/read"}, wantStatus: 400, wantErr: "invalid_resource", wantCode: 500011},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form := map[string][]string{}
			for k, v := range tt.form {
				form[k] = []string{v}
			}
			status, body := postForm(t, sim, devicecode, form, nil)
			wantOAuthError(t, status, body, tt.wantStatus, tt.wantErr, tt.wantCode)
		})
	}

	t.Run("polling", func(t *testing.T) {
		deviceCode, _ := rawDeviceCode(t, sim, apiScope)
		status, body := pollDeviceCode(t, sim, deviceCode)
		wantOAuthError(t, status, body, 400, "authorization_pending", 70016)
		status, body = pollDeviceCode(t, sim, deviceCode+"x")
		wantOAuthError(t, status, body, 400, "bad_verification_code", 70018)
	})
}

func TestDemoDirectorySignIn(t *testing.T) {
	t.Parallel()
	dir, err := entrasim.LoadDirectory("../../testdata/directory/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(dir.Applications) == 0 || len(dir.Users) == 0 {
		t.Fatal("demo directory has no applications or users")
	}
	app, user := dir.Applications[0], dir.Users[0]
	sim := startSimWith(t, dir, entrasim.Options{})
	ctx := testContext(t)
	approved := approveNext(ctx, sim, user.UPN)
	dc, err := publicClient(t, sim, app.AppID).AcquireTokenByDeviceCode(ctx, []string{app.IdentifierURIs[0] + "/.default"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		t.Fatalf("sign-in to the demo tenant: %v", err)
	}
	if err := <-approved; err != nil {
		t.Fatal(err)
	}
	c := verifyToken(t, sim, res.AccessToken, sim.Issuer(2, dir.Tenant.ID), app.AppID)
	if c["upn"] != user.UPN {
		t.Errorf("upn = %v, want %s", c["upn"], user.UPN)
	}
}

func TestAuthorityForms(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	tests := []struct {
		name      string
		authority string
	}{
		{name: "tenant id", authority: sim.Authority()},
		{name: "tenant domain", authority: sim.URL() + "/" + tenantDomain},
		{name: "organizations", authority: sim.URL() + "/organizations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			approved := approveNext(ctx, sim, aliceUPN)
			dc, err := publicClientAt(t, sim, tt.authority, appID).AcquireTokenByDeviceCode(ctx, []string{apiScope})
			if err != nil {
				t.Fatalf("device code through %s: %v", tt.authority, err)
			}
			res, err := dc.AuthenticationResult(ctx)
			if err != nil {
				t.Fatalf("sign-in through %s: %v", tt.authority, err)
			}
			if err := <-approved; err != nil {
				t.Fatal(err)
			}
			// Whatever the authority said, tokens name the tenant itself.
			c := verifyToken(t, sim, res.AccessToken, sim.Issuer(2, tenantID), appID)
			if c["tid"] != tenantID {
				t.Errorf("tid = %v", c["tid"])
			}
		})
	}
}

func TestEnforcedPollInterval(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	sim := startSim(t, entrasim.Options{EnforcePollInterval: true, PollInterval: 5 * time.Second, Now: clock.Now})
	deviceCode, _ := rawDeviceCode(t, sim, apiScope)
	status, body := pollDeviceCode(t, sim, deviceCode)
	wantOAuthError(t, status, body, 400, "authorization_pending", 70016)
	clock.Advance(time.Second)
	status, body = pollDeviceCode(t, sim, deviceCode)
	wantOAuthError(t, status, body, 400, "slow_down", 0)
	clock.Advance(5 * time.Second)
	status, body = pollDeviceCode(t, sim, deviceCode)
	wantOAuthError(t, status, body, 400, "authorization_pending", 70016)
}

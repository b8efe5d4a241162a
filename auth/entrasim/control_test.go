package entrasim_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

func TestApproveEndpoint(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	sim := startSim(t, entrasim.Options{Now: clock.Now})
	_, expired := rawDeviceCode(t, sim, apiScope)
	clock.Advance(16 * time.Minute)
	_, used := rawDeviceCode(t, sim, apiScope)
	if err := sim.Decline(used); err != nil {
		t.Fatal(err)
	}
	_, fresh := rawDeviceCode(t, sim, apiScope)

	tests := []struct {
		name       string
		path       string
		body       map[string]string
		wantStatus int
		wantError  string
	}{
		{name: "unknown code", path: "approve", body: map[string]string{"user_code": "ZZZZZZZZZ", "upn": aliceUPN}, wantStatus: 404, wantError: "unknown_user_code"},
		{name: "expired code", path: "approve", body: map[string]string{"user_code": expired, "upn": aliceUPN}, wantStatus: 410, wantError: "expired_user_code"},
		{name: "code already declined", path: "approve", body: map[string]string{"user_code": used, "upn": aliceUPN}, wantStatus: 409, wantError: "user_code_used"},
		{name: "unknown user", path: "approve", body: map[string]string{"user_code": fresh, "upn": "mallory@fabrikam.example"}, wantStatus: 404, wantError: "unknown_user"},
		{name: "disabled user", path: "approve", body: map[string]string{"user_code": fresh, "upn": daveUPN}, wantStatus: 403, wantError: "user_disabled"},
		{name: "no upn", path: "approve", body: map[string]string{"user_code": fresh}, wantStatus: 400, wantError: "bad_request"},
		{name: "no code", path: "decline", body: map[string]string{}, wantStatus: 400, wantError: "bad_request"},
		{name: "decline unknown code", path: "decline", body: map[string]string{"user_code": "ZZZZZZZZZ"}, wantStatus: 404, wantError: "unknown_user_code"},
		{name: "approve", path: "approve", body: map[string]string{"user_code": strings.ToLower(fresh), "upn": aliceUPN}, wantStatus: 200},
		{name: "approve twice", path: "approve", body: map[string]string{"user_code": fresh, "upn": aliceUPN}, wantStatus: 409, wantError: "user_code_used"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := postJSON(t, sim, "/_sim/devicecode/"+tt.path, tt.body)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d (%v)", status, tt.wantStatus, body)
			}
			if tt.wantError == "" {
				if body["status"] != "approved" || body["user_code"] != fresh {
					t.Errorf("answer = %v", body)
				}
				return
			}
			if body["error"] != tt.wantError {
				t.Errorf("error = %v, want %s", body["error"], tt.wantError)
			}
			if msg, _ := body["message"].(string); msg == "" {
				t.Errorf("no message in %v", body)
			}
		})
	}
}

func TestDeviceLoginPage(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	client := sim.HTTPClient()
	get := func(t *testing.T, path string) (int, string) {
		t.Helper()
		resp, err := client.Get(sim.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(t *testing.T, form url.Values) (int, string) {
		t.Helper()
		resp, err := client.PostForm(sim.URL()+"/devicelogin", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	status, page := get(t, "/devicelogin?code=ABC")
	if status != 200 {
		t.Fatalf("GET /devicelogin: %d", status)
	}
	for _, want := range []string{`<form method="post" action="/devicelogin">`, `value="ABC"`, aliceUPN, daveUPN + "&gt; (disabled)", `value="approve"`, `value="decline"`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	deviceCode, userCode := rawDeviceCode(t, sim, apiScope)
	status, page = post(t, url.Values{"user_code": {"WRONGCODE"}, "upn": {aliceUPN}, "action": {"approve"}})
	if status != http.StatusNotFound || !strings.Contains(page, "That code is not valid") {
		t.Errorf("wrong code: status %d, page without the explanation", status)
	}
	status, page = post(t, url.Values{"user_code": {userCode}, "upn": {daveUPN}, "action": {"approve"}})
	if status != http.StatusForbidden || !strings.Contains(page, "disabled") {
		t.Errorf("disabled user: status %d, page without the explanation", status)
	}
	status, page = post(t, url.Values{"user_code": {userCode}, "upn": {aliceUPN}, "action": {"approve"}})
	if status != 200 || !strings.Contains(page, "You have signed in as "+aliceUPN) {
		t.Fatalf("approve: status %d, page %q", status, page)
	}
	status, body := pollDeviceCode(t, sim, deviceCode)
	if status != 200 {
		t.Fatalf("redeem after approval on the page: %d %v", status, body)
	}
	verifyToken(t, sim, body["access_token"].(string), sim.Issuer(2, tenantID), appID)

	deviceCode, userCode = rawDeviceCode(t, sim, apiScope)
	if status, page = post(t, url.Values{"user_code": {userCode}, "action": {"decline"}}); status != 200 || !strings.Contains(page, "declined") {
		t.Fatalf("decline: status %d", status)
	}
	status, body = pollDeviceCode(t, sim, deviceCode)
	wantOAuthError(t, status, body, 400, "authorization_declined", 0)
}

func TestPendingDeviceCodes(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	_, first := rawDeviceCode(t, sim, apiScope+" openid")
	_, second := rawDeviceCode(t, sim, apiScope)
	pending := sim.PendingDeviceCodes()
	if len(pending) != 2 || pending[0].UserCode != first || pending[1].UserCode != second {
		t.Fatalf("pending = %+v, want %s then %s", pending, first, second)
	}
	if pending[0].ClientID != appID || strings.Join(pending[0].Scopes, " ") != apiScope+" openid" {
		t.Errorf("pending[0] = %+v", pending[0])
	}
	for _, want := range []string{first, second} {
		p, err := sim.WaitForDeviceCode(ctx)
		if err != nil || p.UserCode != want {
			t.Fatalf("WaitForDeviceCode = %v, %v; want %s", p.UserCode, err, want)
		}
	}
	// Nothing new: the wait ends with the context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := sim.WaitForDeviceCode(short); err == nil {
		t.Fatal("WaitForDeviceCode returned a code it had already returned")
	}
	if err := sim.Approve(first, aliceUPN); err != nil {
		t.Fatal(err)
	}
	if pending := sim.PendingDeviceCodes(); len(pending) != 1 || pending[0].UserCode != second {
		t.Errorf("after approving %s, pending = %+v", first, pending)
	}
	var listed struct {
		Pending []struct {
			UserCode string `json:"user_code"`
		} `json:"pending"`
	}
	if status := getJSON(t, sim, "/_sim/devicecode/pending", &listed); status != 200 || len(listed.Pending) != 1 || listed.Pending[0].UserCode != second {
		t.Errorf("GET /_sim/devicecode/pending: %d %+v", status, listed)
	}
}

func TestErrorShape(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	const correlation = "9d1c6a5e-2b7f-4c1d-8e3a-0f9b8c7d6e5a"
	status, body := postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token",
		url.Values{"grant_type": {"password"}, "client_id": {appID}},
		http.Header{"Client-Request-Id": {correlation}})
	wantOAuthError(t, status, body, 400, "unsupported_grant_type", 70003)
	if body["correlation_id"] != correlation {
		t.Errorf("correlation_id = %v, want the client-request-id %s", body["correlation_id"], correlation)
	}
	desc, _ := body["error_description"].(string)
	for _, want := range []string{"\r\nTrace ID: ", "\r\nCorrelation ID: " + correlation, "\r\nTimestamp: "} {
		if !strings.Contains(desc, want) {
			t.Errorf("error_description %q lacks %q", desc, want)
		}
	}
	if ts, _ := body["timestamp"].(string); !strings.HasSuffix(ts, "Z") || len(ts) != len("2006-01-02 15:04:05Z") {
		t.Errorf("timestamp = %q", ts)
	}
	if tr, _ := body["trace_id"].(string); len(tr) != 36 {
		t.Errorf("trace_id = %q, want a UUID", tr)
	}

	status, body = postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token", url.Values{"client_id": {appID}}, nil)
	wantOAuthError(t, status, body, 400, "invalid_request", 900144)
	status, body = postForm(t, sim, "/nowhere.example/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}}, nil)
	wantOAuthError(t, status, body, 400, "invalid_request", 90002)
	var doc map[string]any
	if status := getJSON(t, sim, "/"+tenantID+"/oauth2/v2.0/token", &doc); status != http.StatusMethodNotAllowed {
		t.Errorf("GET on the token endpoint: status %d, want 405", status)
	}
}

func TestV1TokenEndpoint(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	status, body := postForm(t, sim, "/"+tenantID+"/oauth2/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {botAppID}, "client_secret": {botSecret},
		"resource": {"https://graph.microsoft.com"},
	}, nil)
	if status != 200 {
		t.Fatalf("v1 client credentials: %d %v", status, body)
	}
	if body["expires_in"] != "3600" || body["resource"] != "https://graph.microsoft.com" || body["expires_on"] == nil {
		t.Errorf("v1 answer = expires_in %v resource %v expires_on %v", body["expires_in"], body["resource"], body["expires_on"])
	}
	verifyToken(t, sim, body["access_token"].(string), sim.Issuer(1, tenantID), "https://graph.microsoft.com")
}

func TestFaults(t *testing.T) {
	t.Parallel()
	logs := &logSink{}
	sim := startSim(t, entrasim.Options{Logf: logs.Logf})
	ctx := testContext(t)
	acquire := func() error {
		c := confidentialClient(t, sim, botAppID, secretCred(t, botSecret))
		_, err := c.AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
		return err
	}

	sim.SetFault(entrasim.EndpointToken, entrasim.Fault{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Times: 1})
	err := acquire()
	var callErr msalerrors.CallErr
	if !errors.As(err, &callErr) || callErr.Resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("token endpoint 503: err = %v, want MSAL's HTTP 503 error", err)
	}
	if got := callErr.Resp.Header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	if err := acquire(); err != nil {
		t.Fatalf("after the one-shot fault: %v", err)
	}
	if n := logs.count("/oauth2/v2.0/token 503"); n != 1 {
		t.Errorf("logged %d token requests answered 503, want 1", n)
	}

	sim.SetFault(entrasim.EndpointToken, entrasim.Fault{Down: true})
	if err := acquire(); err == nil {
		t.Fatal("token endpoint down: MSAL succeeded")
	}
	sim.SetFault(entrasim.EndpointToken, entrasim.Fault{})

	sim.SetFault(entrasim.EndpointDiscovery, entrasim.Fault{Status: http.StatusInternalServerError})
	if err := acquire(); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("discovery 500: err = %v, want MSAL to fail resolving the authority", err)
	}
	sim.SetFault(entrasim.EndpointDiscovery, entrasim.Fault{})

	sim.SetFault(entrasim.EndpointDeviceCode, entrasim.Fault{Status: http.StatusServiceUnavailable})
	if _, err := publicClient(t, sim, appID).AcquireTokenByDeviceCode(ctx, []string{apiScope}); err == nil {
		t.Fatal("devicecode 503: MSAL succeeded")
	}
}

// A fault set For a while ends on its own: a throttling spell of Graph
// answers 429 until it is over, then Graph answers again.
func TestFaultForAWhile(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	const spell = 500 * time.Millisecond
	get := func() int {
		resp, err := sim.HTTPClient().Get(sim.URL() + "/v1.0/users/" + aliceUPN)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	start := time.Now()
	sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: time.Second, For: spell})
	if got := get(); got != http.StatusTooManyRequests && time.Since(start) < spell {
		t.Fatalf("within the spell Graph answered %d, want 429", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for get() == http.StatusTooManyRequests {
		if time.Now().After(deadline) {
			t.Fatal("the spell of 429s did not end")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(start); took < spell {
		t.Fatalf("the spell ended after %s, before its %s", took, spell)
	}
}

// TestLogsHoldNoSecrets runs every grant with logging on and checks that no
// secret the flows handled reaches a log line.
func TestLogsHoldNoSecrets(t *testing.T) {
	t.Parallel()
	logs := &logSink{}
	sim := startSim(t, entrasim.Options{Logf: logs.Logf})
	deviceCode, userCode := rawDeviceCode(t, sim, apiScope+" openid offline_access")
	if err := sim.Approve(userCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	_, body := pollDeviceCode(t, sim, deviceCode)
	rt, _ := body["refresh_token"].(string)
	_, refreshed := postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {appID}, "scope": {apiScope}}, nil)
	_, app := postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {botAppID}, "client_secret": {botSecret},
		"scope": {"api://portcullis/.default"}}, nil)
	postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {botAppID}, "client_secret": {"wrong-" + botSecret},
		"scope": {"api://portcullis/.default"}}, nil)

	secrets := map[string]string{"device_code": deviceCode, "user_code": userCode, "client secret": botSecret, "refresh token": rt}
	for name, m := range map[string]map[string]any{"sign-in": body, "refresh": refreshed, "app": app} {
		for _, f := range []string{"access_token", "id_token", "refresh_token"} {
			if s, _ := m[f].(string); s != "" {
				secrets[name+" "+f] = s
			}
		}
	}
	if len(secrets) < 8 {
		t.Fatalf("flows produced too few secrets to check (%d)", len(secrets))
	}
	lines := logs.Lines()
	if len(lines) < 5 {
		t.Fatalf("only %d log lines", len(lines))
	}
	for _, line := range lines {
		for name, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("a log line contains the %s", name)
			}
		}
	}
}

package entrasim_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// The test tenant. It is built here rather than read from the demo file so
// that changes to the demo do not move these tests.
const (
	tenantID     = "0c9f5e7a-1b2c-4d3e-8f40-5a6b7c8d9e0f"
	tenantDomain = "fabrikam.example"
	appID        = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" // public client that exposes api://portcullis
	confAppID    = "5f4e3d2c-1b0a-4987-8654-3210fedcba98" // confidential app registration (not public)
	botAppID     = "3c2b1a09-8f7e-4d6c-b5a4-93827160f5e4"
	botID        = "b1000000-0000-4000-8000-000000000001"
	botSecret    = "bot-secret-value-for-tests"
	aliceID      = "a1000000-0000-4000-8000-000000000001"
	aliceUPN     = "alice@fabrikam.example"
	bobUPN       = "bob@fabrikam.example"
	daveUPN      = "dave@fabrikam.example"
	readersID    = "c1000000-0000-4000-8000-000000000001"
	analystsID   = "c1000000-0000-4000-8000-000000000002"
	apiScope     = "api://portcullis/access"
)

func testDirectory() *entrasim.Directory {
	no := false
	return &entrasim.Directory{
		Tenant: entrasim.Tenant{ID: tenantID, Domain: tenantDomain, DisplayName: "Fabrikam (test)"},
		Applications: []entrasim.Application{
			{AppID: appID, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis"}, PublicClient: true},
			{AppID: confAppID, DisplayName: "reporting", IdentifierURIs: []string{"api://reporting"}},
		},
		Users: []entrasim.User{
			{ID: aliceID, UPN: aliceUPN, DisplayName: "Alice Analyst", Mail: aliceUPN},
			{ID: "a1000000-0000-4000-8000-000000000002", UPN: bobUPN, DisplayName: "Bob"},
			{ID: "a1000000-0000-4000-8000-000000000004", UPN: daveUPN, DisplayName: "Dave Departed", Enabled: &no},
		},
		Groups: []entrasim.Group{
			{ID: readersID, DisplayName: "Readers", Members: entrasim.GroupMembers{Groups: []string{"Analysts"}}},
			{ID: analystsID, DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{aliceUPN}, ServicePrincipals: []string{"bot"}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: botID, AppID: botAppID, DisplayName: "bot", Secrets: []string{"an-older-secret", botSecret}},
		},
	}
}

// testClock is a clock the test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Now()} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logSink collects the simulator's log lines.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) Logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logSink) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// count reports how many lines contain every one of parts.
func (l *logSink) count(parts ...string) int {
	n := 0
	for _, line := range l.Lines() {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

func startSim(t *testing.T, opts entrasim.Options) *entrasim.Server {
	t.Helper()
	return startSimWith(t, testDirectory(), opts)
}

func startSimWith(t *testing.T, dir *entrasim.Directory, opts entrasim.Options) *entrasim.Server {
	t.Helper()
	sim, err := entrasim.New(dir, opts)
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	return sim
}

func publicClient(t *testing.T, sim *entrasim.Server, clientID string) public.Client {
	t.Helper()
	return publicClientAt(t, sim, sim.Authority(), clientID)
}

func publicClientAt(t *testing.T, sim *entrasim.Server, authority, clientID string) public.Client {
	t.Helper()
	c, err := public.New(clientID,
		public.WithAuthority(authority),
		public.WithHTTPClient(sim.HTTPClient()),
		public.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatalf("msal public client: %v", err)
	}
	return c
}

func confidentialClient(t *testing.T, sim *entrasim.Server, clientID string, cred confidential.Credential) confidential.Client {
	t.Helper()
	c, err := confidential.New(sim.Authority(), clientID, cred,
		confidential.WithHTTPClient(sim.HTTPClient()),
		confidential.WithInstanceDiscovery(false))
	if err != nil {
		t.Fatalf("msal confidential client: %v", err)
	}
	return c
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// verifyToken checks raw's RS256 signature against the simulator's JWKS
// (fetched over HTTPS like a resource server would), its issuer and
// audience, and returns its claims.
func verifyToken(t *testing.T, sim *entrasim.Server, raw, wantIss, wantAud string) jwt.MapClaims {
	t.Helper()
	keys := fetchJWKS(t, sim, "/"+sim.TenantID()+"/discovery/v2.0/keys")
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		k, ok := keys[kid]
		if !ok {
			return nil, fmt.Errorf("kid %q is not in JWKS", kid)
		}
		return k, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(wantIss), jwt.WithAudience(wantAud), jwt.WithExpirationRequired())
	if err != nil {
		t.Fatalf("token does not verify (iss %s, aud %s): %v", wantIss, wantAud, err)
	}
	return claims
}

func fetchJWKS(t *testing.T, sim *entrasim.Server, path string) map[string]*rsa.PublicKey {
	t.Helper()
	var doc struct {
		Keys []struct {
			Kty, Use, Kid, N, E string
		} `json:"keys"`
	}
	if status := getJSON(t, sim, path, &doc); status != http.StatusOK {
		t.Fatalf("GET %s: status %d", path, status)
	}
	out := map[string]*rsa.PublicKey{}
	for _, k := range doc.Keys {
		if k.Kty != "RSA" || k.Use != "sig" {
			t.Fatalf("JWKS key %s: kty %q use %q", k.Kid, k.Kty, k.Use)
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil {
			t.Fatalf("JWKS key %s: bad n or e", k.Kid)
		}
		out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	return out
}

func getJSON(t *testing.T, sim *entrasim.Server, path string, v any) int {
	t.Helper()
	resp, err := sim.HTTPClient().Get(sim.URL() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: status %d, body is not JSON: %v", path, resp.StatusCode, err)
		}
	}
	return resp.StatusCode
}

// postForm sends a form to the simulator as an OAuth client would and
// decodes the JSON answer.
func postForm(t *testing.T, sim *entrasim.Server, path string, form url.Values, header http.Header) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, sim.URL()+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	return doJSON(t, sim, req)
}

func postJSON(t *testing.T, sim *entrasim.Server, path string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, sim.URL()+path, strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return doJSON(t, sim, req)
}

func doJSON(t *testing.T, sim *entrasim.Server, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := sim.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("%s %s: status %d, body is not JSON: %v", req.Method, req.URL.Path, resp.StatusCode, err)
	}
	return resp.StatusCode, m
}

// rawDeviceCode starts a device-code flow over plain HTTP and returns the
// device_code and user_code.
func rawDeviceCode(t *testing.T, sim *entrasim.Server, scope string) (deviceCode, userCode string) {
	t.Helper()
	status, body := postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/devicecode",
		url.Values{"client_id": {appID}, "scope": {scope}}, nil)
	if status != http.StatusOK {
		t.Fatalf("devicecode: status %d: %v", status, body["error_description"])
	}
	return body["device_code"].(string), body["user_code"].(string)
}

func pollDeviceCode(t *testing.T, sim *entrasim.Server, deviceCode string) (int, map[string]any) {
	t.Helper()
	return postForm(t, sim, "/"+tenantID+"/oauth2/v2.0/token", url.Values{
		"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
		"client_id":   {appID},
		"device_code": {deviceCode},
		"client_info": {"1"},
	}, nil)
}

// wantOAuthError checks an error answer's status, error and AADSTS code.
func wantOAuthError(t *testing.T, status int, body map[string]any, wantStatus int, wantErr string, wantCode int) {
	t.Helper()
	if status != wantStatus || body["error"] != wantErr {
		t.Fatalf("got status %d error %v (%v), want %d %s", status, body["error"], body["error_description"], wantStatus, wantErr)
	}
	if wantCode == 0 {
		return
	}
	codes, _ := body["error_codes"].([]any)
	if len(codes) != 1 || codes[0] != float64(wantCode) {
		t.Errorf("error_codes = %v, want [%d]", body["error_codes"], wantCode)
	}
	if desc, _ := body["error_description"].(string); !strings.HasPrefix(desc, fmt.Sprintf("AADSTS%d: ", wantCode)) {
		t.Errorf("error_description = %q, want prefix AADSTS%d", desc, wantCode)
	}
}

// newCertificate makes a self-signed RSA certificate such as an operator
// would upload to an app registration.
func newCertificate(t *testing.T, notAfter time.Time) (*x509.Certificate, *rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "bot client credential"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// tokenHeader returns a JWT's header without verifying anything.
func tokenHeader(t *testing.T, raw string) map[string]any {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(raw, jwt.MapClaims{})
	if err != nil {
		t.Fatalf("parse token: %v", err)
	}
	return tok.Header
}

func secretCred(t *testing.T, secret string) confidential.Credential {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

package entrasim_test

import (
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

func TestDiscoveryDocuments(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	u := sim.URL()
	tests := []struct {
		name         string
		path         string
		wantStatus   int
		wantIssuer   string
		wantToken    string
		wantJWKS     string
		wantDevice   string
		wantErrorTag string
	}{
		{
			name: "v2 by tenant id", path: "/" + tenantID + "/v2.0/.well-known/openid-configuration",
			wantStatus: 200, wantIssuer: u + "/" + tenantID + "/v2.0",
			wantToken: u + "/" + tenantID + "/oauth2/v2.0/token", wantJWKS: u + "/" + tenantID + "/discovery/v2.0/keys",
			wantDevice: u + "/" + tenantID + "/oauth2/v2.0/devicecode",
		},
		{
			name: "v2 by domain resolves to the tenant id", path: "/" + tenantDomain + "/v2.0/.well-known/openid-configuration",
			wantStatus: 200, wantIssuer: u + "/" + tenantID + "/v2.0",
			wantToken: u + "/" + tenantID + "/oauth2/v2.0/token", wantJWKS: u + "/" + tenantID + "/discovery/v2.0/keys",
			wantDevice: u + "/" + tenantID + "/oauth2/v2.0/devicecode",
		},
		{
			name: "v2 organizations keeps the placeholder issuer", path: "/organizations/v2.0/.well-known/openid-configuration",
			wantStatus: 200, wantIssuer: u + "/{tenantid}/v2.0",
			wantToken: u + "/organizations/oauth2/v2.0/token", wantJWKS: u + "/organizations/discovery/v2.0/keys",
			wantDevice: u + "/organizations/oauth2/v2.0/devicecode",
		},
		{
			name: "v2 common", path: "/common/v2.0/.well-known/openid-configuration",
			wantStatus: 200, wantIssuer: u + "/{tenantid}/v2.0",
			wantToken: u + "/common/oauth2/v2.0/token", wantJWKS: u + "/common/discovery/v2.0/keys",
			wantDevice: u + "/common/oauth2/v2.0/devicecode",
		},
		{
			name: "v1 by tenant id", path: "/" + tenantID + "/.well-known/openid-configuration",
			wantStatus: 200, wantIssuer: sim.Issuer(1, tenantID),
			wantToken: u + "/" + tenantID + "/oauth2/token", wantJWKS: u + "/" + tenantID + "/discovery/keys",
			wantDevice: u + "/" + tenantID + "/oauth2/devicecode",
		},
		{
			name: "unknown tenant", path: "/11111111-2222-4333-8444-555555555555/v2.0/.well-known/openid-configuration",
			wantStatus: 400, wantErrorTag: "invalid_tenant",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc map[string]any
			status := getJSON(t, sim, tt.path, &doc)
			if status != tt.wantStatus {
				t.Fatalf("status = %d, want %d (%v)", status, tt.wantStatus, doc)
			}
			if tt.wantErrorTag != "" {
				wantOAuthError(t, status, doc, tt.wantStatus, tt.wantErrorTag, 90002)
				return
			}
			for field, want := range map[string]string{
				"issuer": tt.wantIssuer, "token_endpoint": tt.wantToken,
				"jwks_uri": tt.wantJWKS, "device_authorization_endpoint": tt.wantDevice,
			} {
				if doc[field] != want {
					t.Errorf("%s = %v, want %s", field, doc[field], want)
				}
			}
			if doc["authorization_endpoint"] == nil {
				t.Error("authorization_endpoint missing (MSAL requires it)")
			}
		})
	}
}

func TestJWKSServesTheSigningKey(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	for _, path := range []string{
		"/" + tenantID + "/discovery/v2.0/keys",
		"/" + tenantID + "/discovery/keys",
		"/" + tenantDomain + "/discovery/v2.0/keys",
		"/common/discovery/v2.0/keys",
	} {
		t.Run(path, func(t *testing.T) {
			keys := fetchJWKS(t, sim, path)
			k, ok := keys[sim.SigningKeyID()]
			if !ok {
				t.Fatalf("JWKS at %s lacks the current kid %s", path, sim.SigningKeyID())
			}
			if k.N.Cmp(sim.PublicKey().N) != 0 {
				t.Errorf("JWKS modulus differs from the signing key's")
			}
		})
	}
	if status := getJSON(t, sim, "/nope.example/discovery/v2.0/keys", nil); status != http.StatusBadRequest {
		t.Errorf("JWKS of an unknown tenant: status %d, want 400", status)
	}
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	oldKid := sim.SigningKeyID()
	acquire := func() string {
		t.Helper()
		// A new client each time: MSAL would otherwise answer from its cache.
		c := confidentialClient(t, sim, botAppID, secretCred(t, botSecret))
		res, err := c.AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
		if err != nil {
			t.Fatalf("client credentials: %v", err)
		}
		return res.AccessToken
	}
	kidOf := func(raw string) string {
		t.Helper()
		verifyToken(t, sim, raw, sim.Issuer(2, tenantID), appID)
		kid, _ := tokenHeader(t, raw)["kid"].(string)
		return kid
	}
	if got := kidOf(acquire()); got != oldKid {
		t.Fatalf("token kid = %s, want the current key %s", got, oldKid)
	}

	if err := sim.RotateKeys(true); err != nil {
		t.Fatal(err)
	}
	newKid := sim.SigningKeyID()
	if newKid == oldKid {
		t.Fatal("rotation kept the same kid")
	}
	keys := fetchJWKS(t, sim, "/"+tenantID+"/discovery/v2.0/keys")
	if _, ok := keys[oldKid]; !ok {
		t.Errorf("graceful rotation dropped the old key from JWKS")
	}
	if _, ok := keys[newKid]; !ok {
		t.Errorf("JWKS lacks the new key after rotation")
	}
	if got := kidOf(acquire()); got != newKid {
		t.Errorf("token after rotation has kid %s, want %s", got, newKid)
	}

	if err := sim.RotateKeys(false); err != nil {
		t.Fatal(err)
	}
	keys = fetchJWKS(t, sim, "/"+tenantID+"/discovery/v2.0/keys")
	if len(keys) != 1 {
		t.Errorf("abrupt rotation left %d keys in JWKS, want 1", len(keys))
	}
	if _, ok := keys[sim.SigningKeyID()]; !ok {
		t.Errorf("JWKS lacks the newest key")
	}
}

func TestJWKSCertificates(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	var doc struct {
		Keys []struct {
			Kid, X5t, Issuer string
			X5c              []string
		} `json:"keys"`
	}
	if status := getJSON(t, sim, "/"+tenantID+"/discovery/v2.0/keys", &doc); status != 200 || len(doc.Keys) != 1 {
		t.Fatalf("JWKS: status %d, %d keys", status, len(doc.Keys))
	}
	k := doc.Keys[0]
	if len(k.X5c) != 1 {
		t.Fatalf("x5c has %d certificates, want 1", len(k.X5c))
	}
	der, err := base64.StdEncoding.DecodeString(k.X5c[0])
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || pub.N.Cmp(sim.PublicKey().N) != 0 {
		t.Error("x5c certificate does not hold the signing key")
	}
	sum := sha1.Sum(der)
	if k.X5t != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Errorf("x5t = %s, not the certificate's SHA-1 thumbprint", k.X5t)
	}
	if k.Issuer != sim.URL()+"/{tenantid}/v2.0" {
		t.Errorf("issuer = %s", k.Issuer)
	}
}

package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// tokenRequest is a request presenting token as the password.
func tokenRequest(login, resource, token string) Request {
	return Request{Protocol: "postgres", Resource: resource, LoginName: login, Password: token, ClientAddr: aliceAddr, Mode: PromptError}
}

// segments splits a JWT and decodes its header and claims.
func segments(t *testing.T, token string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims
}

func TestAccessTokenValidation(t *testing.T) {
	e := newEnv(t)
	issue := func(spec entrasim.TokenSpec) func(t *testing.T) string {
		return func(t *testing.T) string {
			t.Helper()
			tok, err := e.sim.IssueAccessToken(spec)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}
	}
	good := entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: "04b07795-8ddb-461a-bbee-02f9e1bf7b46"}

	tests := []struct {
		name  string
		login string
		token func(t *testing.T) string
		want  RefusalReason // "" means accepted
	}{
		{name: "good v2 token", login: aliceUPN, token: issue(good)},
		{name: "login name differs only in case", login: "Alice@Contoso.Example", token: issue(good)},
		{
			name: "v1 issuer", login: aliceUPN,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: "api://portcullis-test", ClientID: good.ClientID, Version: 1}),
		},
		{
			name: "bad signature", login: aliceUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				// Same claims and kid, signed with a key Entra never had.
				header, claims := segments(t, issue(good)(t))
				key, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					t.Fatal(err)
				}
				tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
				tok.Header["kid"] = header["kid"]
				s, err := tok.SignedString(key)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
		},
		{
			name: "tampered claims", login: bobUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				parts := strings.Split(issue(good)(t), ".")
				_, claims := segments(t, strings.Join(parts, "."))
				claims["upn"], claims["preferred_username"] = bobUPN, bobUPN
				b, _ := json.Marshal(claims)
				parts[1] = base64.RawURLEncoding.EncodeToString(b)
				return strings.Join(parts, ".")
			},
		},
		{
			name: "wrong audience", login: aliceUPN, want: ReasonBadCredentials,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: "api://someone-else", ClientID: good.ClientID}),
		},
		{
			name: "wrong tenant", login: aliceUPN, want: ReasonBadCredentials,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: good.ClientID, TenantID: otherTenant}),
		},
		{
			name: "expired", login: aliceUPN, want: ReasonBadCredentials,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: good.ClientID,
				IssuedAt: time.Now().Add(-2 * time.Hour), Lifetime: time.Hour}),
		},
		{
			name: "expired within the skew is accepted", login: aliceUPN,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: good.ClientID,
				IssuedAt: time.Now().Add(-time.Hour - 20*time.Second), Lifetime: time.Hour}),
		},
		{
			name: "not yet valid", login: aliceUPN, want: ReasonBadCredentials,
			token: issue(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: good.ClientID,
				IssuedAt: time.Now().Add(10 * time.Minute)}),
		},
		{
			name: "alg none", login: aliceUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				header, claims := segments(t, issue(good)(t))
				header["alg"] = "none"
				return encodeSegment(t, header) + "." + encodeSegment(t, claims) + "." + base64.RawURLEncoding.EncodeToString([]byte("signature"))
			},
		},
		{
			name: "alg none with empty signature", login: aliceUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				header, claims := segments(t, issue(good)(t))
				header["alg"] = "none"
				return encodeSegment(t, header) + "." + encodeSegment(t, claims) + "."
			},
		},
		{
			name: "HS256 signed with the public key", login: aliceUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				header, claims := segments(t, issue(good)(t))
				der, err := x509.MarshalPKIXPublicKey(e.sim.PublicKey())
				if err != nil {
					t.Fatal(err)
				}
				pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
				tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims))
				tok.Header["kid"] = header["kid"]
				s, err := tok.SignedString(pemKey)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
		},
		{
			name: "someone else's token", login: aliceUPN, want: ReasonIdentityMismatch,
			token: issue(entrasim.TokenSpec{Subject: bobUPN, Audience: portcullisApp, ClientID: good.ClientID}),
		},
		{
			name: "oversized token", login: aliceUPN, want: ReasonBadCredentials,
			token: func(t *testing.T) string {
				return "eyJ" + strings.Repeat("a", maxTokenBytes) + ".b.c"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := tt.token(t)
			d, err := e.a.Decide(testContext(t), tokenRequest(tt.login, "sales", token))
			if tt.want != "" {
				if d != nil {
					t.Fatalf("accepted as %s, want refusal %s", d.Identity.Name(), tt.want)
				}
				r := wantRefusal(t, err, tt.want)
				if strings.Contains(r.Error(), token) {
					t.Errorf("refusal repeats the token")
				}
				return
			}
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if d.Method != MethodAccessToken || !strings.EqualFold(d.Identity.UPN, aliceUPN) || d.Identity.TenantID != testTenant {
				t.Errorf("decision = %+v, want alice by access token", d)
			}
			if d.Backend.User != "sales_reader" {
				t.Errorf("backend user = %q, want sales_reader", d.Backend.User)
			}
			if d.SessionKey != "" {
				t.Errorf("a token sign-in was given a session key")
			}
		})
	}
}

func encodeSegment(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestAccessTokenKeyRotation(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	spec := entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: portcullisApp}
	before, err := e.sim.IssueAccessToken(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", before)); err != nil {
		t.Fatalf("token before rotation: %v", err)
	}
	fetches := e.sim.Requests(entrasim.EndpointKeys)

	// An abrupt rotation: the old key leaves JWKS and new tokens carry an
	// unknown kid, which makes portcullis fetch the keys again.
	if err := e.sim.RotateKeys(false); err != nil {
		t.Fatal(err)
	}
	after, err := e.sim.IssueAccessToken(spec)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", after)); err != nil {
		t.Fatalf("token after rotation: %v", err)
	} else if d.Identity.UPN != aliceUPN {
		t.Fatalf("identity = %s", d.Identity.Name())
	}
	if got := e.sim.Requests(entrasim.EndpointKeys); got != fetches+1 {
		t.Fatalf("JWKS fetched %d times for the rotation, want 1", got-fetches)
	}

	// The refetch replaced the key set: the withdrawn key is no longer
	// trusted.
	_, err = e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", before))
	wantRefusal(t, err, ReasonBadCredentials)

	// Made-up kids right after a fetch are refused without fetching again.
	for i := 0; i < 5; i++ {
		_, claims := segments(t, after)
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
		tok.Header["kid"] = "garbage-" + randomHex(4)
		key, _ := rsa.GenerateKey(rand.Reader, 2048)
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", s))
		wantRefusal(t, err, ReasonBadCredentials)
	}
	if got := e.sim.Requests(entrasim.EndpointKeys); got != fetches+1 {
		t.Fatalf("JWKS fetched %d times in all, want 1 (unknown kids right after a fetch must not cause more)", got-fetches)
	}
}

func TestAccessTokenServicePrincipal(t *testing.T) {
	e := newEnv(t)
	tok, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: "etl-bot", Audience: portcullisApp, ClientID: etlBotApp})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		login string
		want  RefusalReason
	}{
		{name: "app id", login: etlBotApp},
		{name: "app id upper case", login: strings.ToUpper(etlBotApp)},
		{name: "another app id", login: portcullisApp, want: ReasonIdentityMismatch},
		{name: "a user name", login: aliceUPN, want: ReasonIdentityMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.a.Decide(testContext(t), tokenRequest(tt.login, "finance", tok))
			if tt.want != "" {
				wantRefusal(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Identity.Kind != KindServicePrincipal || d.Identity.ObjectID != etlBotOID || d.Backend.User != "fin" {
				t.Errorf("decision = %+v", d)
			}
		})
	}
}

package entrasim_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

func TestClientCredentialsWithSecret(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	tests := []struct {
		name    string
		scope   string
		wantIss string
		wantAud string
	}{
		{name: "own API", scope: "api://portcullis/.default", wantIss: sim.Issuer(2, tenantID), wantAud: appID},
		{name: "Graph", scope: sim.URL() + "/.default", wantIss: sim.Issuer(1, tenantID), wantAud: sim.URL()},
		{name: "Graph by app id", scope: "00000003-0000-0000-c000-000000000000/.default", wantIss: sim.Issuer(1, tenantID), wantAud: "00000003-0000-0000-c000-000000000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := confidentialClient(t, sim, botAppID, secretCred(t, botSecret))
			res, err := c.AcquireTokenByCredential(ctx, []string{tt.scope})
			if err != nil {
				t.Fatalf("client credentials: %v", err)
			}
			claims := verifyToken(t, sim, res.AccessToken, tt.wantIss, tt.wantAud)
			if claims["oid"] != botID || claims["sub"] != botID || claims["idtyp"] != "app" {
				t.Errorf("oid/sub/idtyp = %v/%v/%v, want the service principal", claims["oid"], claims["sub"], claims["idtyp"])
			}
			if claims["scp"] != nil || claims["upn"] != nil {
				t.Errorf("app token carries user claims: scp %v upn %v", claims["scp"], claims["upn"])
			}
			client := claims["azp"]
			if claims["ver"] == "1.0" {
				client = claims["appid"]
			}
			if client != botAppID {
				t.Errorf("client claim = %v, want %s", client, botAppID)
			}
			if groups, _ := claims["groups"].([]any); len(groups) != 2 {
				t.Errorf("groups = %v, want Analysts and Readers", claims["groups"])
			}
			if res.IDToken.RawToken != "" {
				t.Errorf("app token came with an id_token")
			}
			if left := time.Until(res.ExpiresOn); left < 59*time.Minute || left > 61*time.Minute {
				t.Errorf("expires in %s, want 1h", left)
			}
		})
	}
}

func TestClientCredentialsRefused(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	tests := []struct {
		name       string
		clientID   string
		secret     string
		scope      string
		wantStatus int
		wantErr    string
	}{
		{name: "wrong secret", clientID: botAppID, secret: "not-the-secret", scope: "api://portcullis/.default", wantStatus: 401, wantErr: "AADSTS7000215"},
		{name: "unknown client", clientID: "00000000-1111-4222-8333-444444444444", secret: botSecret, scope: "api://portcullis/.default", wantStatus: 400, wantErr: "AADSTS700016"},
		{name: "scope without /.default", clientID: botAppID, secret: botSecret, scope: "api://portcullis/access", wantStatus: 400, wantErr: "AADSTS1002012"},
		{name: "unknown resource", clientID: botAppID, secret: botSecret, scope: "api://elsewhere/.default", wantStatus: 400, wantErr: "AADSTS500011"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := confidentialClient(t, sim, tt.clientID, secretCred(t, tt.secret))
			_, err := c.AcquireTokenByCredential(ctx, []string{tt.scope})
			if err == nil {
				t.Fatal("client credentials succeeded, want refusal")
			}
			var callErr msalerrors.CallErr
			if !errors.As(err, &callErr) || callErr.Resp.StatusCode != tt.wantStatus {
				t.Fatalf("err = %v, want an HTTP %d from the token endpoint", err, tt.wantStatus)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to carry %s", err, tt.wantErr)
			}
			if tt.wantStatus == 401 && !strings.Contains(err.Error(), `"error":"invalid_client"`) {
				t.Errorf("err = %v, want invalid_client", err)
			}
			if strings.Contains(err.Error(), botSecret) {
				t.Error("the error repeats the secret")
			}
		})
	}

	t.Run("disabled service principal", func(t *testing.T) {
		sim.Directory(func(d *entrasim.Directory) {
			no := false
			d.ServicePrincipalByName(botAppID).Enabled = &no
		})
		defer sim.Directory(func(d *entrasim.Directory) { d.ServicePrincipalByName(botAppID).Enabled = nil })
		c := confidentialClient(t, sim, botAppID, secretCred(t, botSecret))
		if _, err := c.AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"}); err == nil || !strings.Contains(err.Error(), "AADSTS7000112") {
			t.Fatalf("err = %v, want AADSTS7000112", err)
		}
	})
}

func TestClientCredentialsWithCertificate(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	ctx := testContext(t)
	cert, key, certPEM := newCertificate(t, time.Now().Add(24*time.Hour))
	other, otherKey, _ := newCertificate(t, time.Now().Add(24*time.Hour))
	sim.Directory(func(d *entrasim.Directory) {
		sp := d.ServicePrincipalByName(botAppID)
		sp.Certificates = append(sp.Certificates, certPEM)
	})

	t.Run("registered certificate", func(t *testing.T) {
		cred, err := confidential.NewCredFromCert([]*x509.Certificate{cert}, key)
		if err != nil {
			t.Fatal(err)
		}
		res, err := confidentialClient(t, sim, botAppID, cred).AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
		if err != nil {
			t.Fatalf("client credentials with a certificate: %v", err)
		}
		if c := verifyToken(t, sim, res.AccessToken, sim.Issuer(2, tenantID), appID); c["oid"] != botID {
			t.Errorf("oid = %v, want %s", c["oid"], botID)
		}
	})

	t.Run("unregistered certificate", func(t *testing.T) {
		cred, err := confidential.NewCredFromCert([]*x509.Certificate{other}, otherKey)
		if err != nil {
			t.Fatal(err)
		}
		_, err = confidentialClient(t, sim, botAppID, cred).AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
		if err == nil || !strings.Contains(err.Error(), "invalid_client") || !strings.Contains(err.Error(), "AADSTS700027") {
			t.Fatalf("err = %v, want invalid_client AADSTS700027", err)
		}
	})

	// Assertions MSAL would never build, made by hand and handed to MSAL
	// through an assertion callback, each wrong in one way.
	tokenEndpoint := sim.URL() + "/" + tenantID + "/oauth2/v2.0/token"
	good := func() jwt.MapClaims {
		now := time.Now()
		return jwt.MapClaims{"aud": tokenEndpoint, "iss": botAppID, "sub": botAppID, "jti": "j-" + now.String(),
			"nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
	}
	s256 := func(c *x509.Certificate) string {
		sum := sha256.Sum256(c.Raw)
		return base64.RawURLEncoding.EncodeToString(sum[:])
	}
	tests := []struct {
		name     string
		method   jwt.SigningMethod
		claims   func() jwt.MapClaims
		header   map[string]any
		key      crypto.Signer
		wantCode string // empty: accepted
	}{
		{name: "hand-made, RS256, base64url thumbprint", method: jwt.SigningMethodRS256, claims: good, header: map[string]any{"x5t#S256": s256(cert)}, key: key},
		{name: "aud is the v1 token endpoint by domain", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			c["aud"] = sim.URL() + "/" + tenantDomain + "/oauth2/token"
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key},
		{name: "wrong audience", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			c["aud"] = "https://elsewhere.example/token"
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key, wantCode: "AADSTS50013"},
		{name: "expired", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			c["exp"] = time.Now().Add(-time.Hour).Unix()
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key, wantCode: "AADSTS700024"},
		{name: "no exp", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			delete(c, "exp")
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key, wantCode: "AADSTS700024"},
		{name: "no jti", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			delete(c, "jti")
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key, wantCode: "AADSTS50013"},
		{name: "issuer is another app", method: jwt.SigningMethodPS256, claims: func() jwt.MapClaims {
			c := good()
			c["iss"], c["sub"] = appID, appID
			return c
		}, header: map[string]any{"x5t#S256": s256(cert)}, key: key, wantCode: "AADSTS700021"},
		{name: "registered thumbprint, signed by another key", method: jwt.SigningMethodPS256, claims: good,
			header: map[string]any{"x5t#S256": s256(cert)}, key: otherKey, wantCode: "AADSTS700027"},
		{name: "no thumbprint", method: jwt.SigningMethodPS256, claims: good, header: map[string]any{}, key: key, wantCode: "AADSTS700027"},
		{name: "HS256", method: jwt.SigningMethodHS256, claims: good, header: map[string]any{"x5t#S256": s256(cert)}, wantCode: "AADSTS700027"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred := confidential.NewCredFromAssertionCallback(func(context.Context, confidential.AssertionRequestOptions) (string, error) {
				tok := jwt.NewWithClaims(tt.method, tt.claims())
				for k, v := range tt.header {
					tok.Header[k] = v
				}
				if tt.key == nil {
					return tok.SignedString([]byte("a shared secret the simulator never saw"))
				}
				return tok.SignedString(tt.key.(*rsa.PrivateKey))
			})
			res, err := confidentialClient(t, sim, botAppID, cred).AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
			switch {
			case tt.wantCode == "" && err != nil:
				t.Fatalf("assertion refused: %v", err)
			case tt.wantCode == "":
				verifyToken(t, sim, res.AccessToken, sim.Issuer(2, tenantID), appID)
			case err == nil:
				t.Fatalf("assertion accepted, want %s", tt.wantCode)
			case !strings.Contains(err.Error(), tt.wantCode) || !strings.Contains(err.Error(), "invalid_client"):
				t.Fatalf("err = %v, want invalid_client %s", err, tt.wantCode)
			}
		})
	}
}

func TestRefreshTokenRedemption(t *testing.T) {
	t.Parallel()
	logs := &logSink{}
	// Access tokens shorter than MSAL's five-minute margin are never served
	// from its cache, so AcquireTokenSilent must redeem the refresh token.
	sim := startSim(t, entrasim.Options{AccessTokenLifetime: 2 * time.Minute, Logf: logs.Logf})
	ctx := testContext(t)
	client := publicClient(t, sim, appID)
	approved := approveNext(ctx, sim, aliceUPN)
	dc, err := client.AcquireTokenByDeviceCode(ctx, []string{apiScope})
	if err != nil {
		t.Fatal(err)
	}
	first, err := dc.AuthenticationResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-approved; err != nil {
		t.Fatal(err)
	}
	if n := logs.count("grant=refresh_token"); n != 0 {
		t.Fatalf("refresh_token grants before silent acquisition: %d", n)
	}

	second, err := client.AcquireTokenSilent(ctx, []string{apiScope}, public.WithSilentAccount(first.Account))
	if err != nil {
		t.Fatalf("silent acquisition: %v", err)
	}
	waitFor(t, "the refresh_token grant in the log", 5*time.Second, func() bool {
		return logs.count("/oauth2/v2.0/token 200", "grant=refresh_token", "user="+aliceUPN) == 1
	})
	if second.AccessToken == first.AccessToken {
		t.Error("silent acquisition returned the first access token")
	}
	c := verifyToken(t, sim, second.AccessToken, sim.Issuer(2, tenantID), appID)
	if c["oid"] != aliceID {
		t.Errorf("refreshed token oid = %v", c["oid"])
	}

	// The refresh token rotated; MSAL holds the new one, which works until
	// the user's tokens are revoked.
	if _, err := client.AcquireTokenSilent(ctx, []string{apiScope}, public.WithSilentAccount(first.Account)); err != nil {
		t.Fatalf("second silent acquisition (rotated token): %v", err)
	}
	sim.RevokeRefreshTokens(aliceUPN)
	_, err = client.AcquireTokenSilent(ctx, []string{apiScope}, public.WithSilentAccount(first.Account))
	if err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("silent acquisition after revocation: err = %v, want invalid_grant", err)
	}
}

func TestRefreshTokenRules(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{})
	token := "/" + tenantID + "/oauth2/v2.0/token"
	signIn := func(t *testing.T, upn string) string {
		t.Helper()
		deviceCode, userCode := rawDeviceCode(t, sim, apiScope+" openid profile offline_access")
		if err := sim.Approve(userCode, upn); err != nil {
			t.Fatal(err)
		}
		status, body := pollDeviceCode(t, sim, deviceCode)
		if status != 200 {
			t.Fatalf("redeem device code: %d %v", status, body)
		}
		for _, f := range []string{"access_token", "id_token", "refresh_token", "client_info"} {
			if s, _ := body[f].(string); s == "" {
				t.Fatalf("token response lacks %s", f)
			}
		}
		if body["token_type"] != "Bearer" || body["expires_in"] != float64(3600) || body["ext_expires_in"] != float64(3600) {
			t.Errorf("token_type/expires_in/ext_expires_in = %v/%v/%v", body["token_type"], body["expires_in"], body["ext_expires_in"])
		}
		rt := body["refresh_token"].(string)
		// A redeemed device code is spent.
		status, body = pollDeviceCode(t, sim, deviceCode)
		wantOAuthError(t, status, body, 400, "bad_verification_code", 70018)
		return rt
	}
	refresh := func(rt, clientID, scope string) (int, map[string]any) {
		return postForm(t, sim, token, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt},
			"client_id": {clientID}, "scope": {scope}}, nil)
	}

	t.Run("rotation", func(t *testing.T) {
		rt := signIn(t, aliceUPN)
		status, body := refresh(rt, appID, sim.URL()+"/.default openid offline_access")
		if status != 200 {
			t.Fatalf("refresh: %d %v", status, body)
		}
		// Refresh tokens are multi-resource: this one bought a Graph token.
		verifyToken(t, sim, body["access_token"].(string), sim.Issuer(1, tenantID), sim.URL())
		next, _ := body["refresh_token"].(string)
		if next == "" || next == rt {
			t.Fatalf("refresh token did not rotate")
		}
		status, body = refresh(rt, appID, apiScope)
		wantOAuthError(t, status, body, 400, "invalid_grant", 50173)
		if status, body = refresh(next, appID, apiScope); status != 200 {
			t.Fatalf("refresh with the rotated token: %d %v", status, body)
		}
	})
	t.Run("unknown token", func(t *testing.T) {
		status, body := refresh("0.Anot-a-real-token", appID, apiScope)
		wantOAuthError(t, status, body, 400, "invalid_grant", 9002313)
	})
	t.Run("another client", func(t *testing.T) {
		rt := signIn(t, aliceUPN)
		status, body := refresh(rt, confAppID, apiScope)
		wantOAuthError(t, status, body, 400, "invalid_grant", 70000)
	})
	t.Run("revoked", func(t *testing.T) {
		rt := signIn(t, bobUPN)
		sim.RevokeRefreshTokens(bobUPN)
		status, body := refresh(rt, appID, apiScope)
		wantOAuthError(t, status, body, 400, "invalid_grant", 50173)
	})
	t.Run("user disabled", func(t *testing.T) {
		rt := signIn(t, aliceUPN)
		sim.Directory(func(d *entrasim.Directory) {
			no := false
			d.UserByName(aliceUPN).Enabled = &no
		})
		defer sim.Directory(func(d *entrasim.Directory) { d.UserByName(aliceUPN).Enabled = nil })
		status, body := refresh(rt, appID, apiScope)
		wantOAuthError(t, status, body, 400, "invalid_grant", 50057)
	})
}

func TestAccessTokenVersion1(t *testing.T) {
	t.Parallel()
	sim := startSim(t, entrasim.Options{AccessTokenVersion: 1})
	ctx := testContext(t)
	res, err := confidentialClient(t, sim, botAppID, secretCred(t, botSecret)).AcquireTokenByCredential(ctx, []string{"api://portcullis/.default"})
	if err != nil {
		t.Fatal(err)
	}
	// v1: the issuer is the v1 form and aud is the identifier URI asked for.
	c := verifyToken(t, sim, res.AccessToken, sim.Issuer(1, tenantID), "api://portcullis")
	if c["ver"] != "1.0" || c["appid"] != botAppID {
		t.Errorf("ver/appid = %v/%v", c["ver"], c["appid"])
	}
	if _, err := entrasim.New(testDirectory(), entrasim.Options{AccessTokenVersion: 3}); err == nil {
		t.Error("AccessTokenVersion 3 accepted")
	}
}

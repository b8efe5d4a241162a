package auth

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token validation limits.
const (
	// clockSkew is how far exp and nbf may be off: clocks drift, and Entra
	// back-dates nbf by a few minutes anyway.
	clockSkew = time.Minute
	// jwksRefetchInterval is the least time between JWKS fetches caused by
	// an unknown kid, so that tokens with made-up kids cannot make
	// portcullis hammer the keys endpoint.
	jwksRefetchInterval = 30 * time.Second
	// jwksRetryAfterFailure replaces jwksRefetchInterval after a fetch
	// that failed: the kid is likely genuine (Entra rotated its keys
	// while unreachable), and every token signed with it waits on the
	// next fetch.
	jwksRetryAfterFailure = 5 * time.Second
	// jwksMaxAge is when cached keys are refreshed even without an unknown
	// kid, so a key Entra withdrew stops being trusted.
	jwksMaxAge = 24 * time.Hour
	// maxDocumentBytes bounds discovery and JWKS responses.
	maxDocumentBytes = 1 << 20
)

// tenantPlaceholder is how Entra's discovery documents write the tenant in
// an issuer that varies by tenant.
const tenantPlaceholder = "{tenantid}"

// tokenKeys holds what validating a provider's access tokens needs: the
// issuer forms from the v1 and v2 discovery documents and the signing keys
// from JWKS, refetched on an unknown kid.
type tokenKeys struct {
	p *provider

	fetchMu sync.Mutex // serialises JWKS fetches
	mu      sync.Mutex // guards the fields below
	// issuers are issuer templates with {tenantid} in place of the tenant.
	issuers     []string
	jwksURI     string
	keys        map[string]*rsa.PublicKey
	fetchedAt   time.Time // last successful JWKS fetch
	lastRefetch time.Time // last fetch caused by an unknown kid
	refetchErr  error     // why that fetch failed; nil if it did not
}

func newTokenKeys(p *provider) *tokenKeys { return &tokenKeys{p: p} }

// discoveryDoc is the part of an OpenID configuration document we use.
type discoveryDoc struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// load fetches both discovery documents and the keys.
func (k *tokenKeys) load(ctx context.Context, now time.Time) error {
	base := k.p.authority
	v2, err := k.discovery(ctx, base+"/v2.0/.well-known/openid-configuration")
	if err != nil {
		return err
	}
	v1, err := k.discovery(ctx, base+"/.well-known/openid-configuration")
	if err != nil {
		return err
	}
	if v2.JWKSURI == "" {
		return fmt.Errorf("discovery document of provider %q has no jwks_uri", k.p.name)
	}
	var issuers []string
	for _, d := range []discoveryDoc{v1, v2} {
		if d.Issuer == "" {
			return fmt.Errorf("discovery document of provider %q has no issuer", k.p.name)
		}
		issuers = append(issuers, issuerTemplate(d.Issuer, k.p.cfg.TenantID))
	}
	keys, err := k.fetchJWKS(ctx, v2.JWKSURI)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.issuers = issuers
	k.jwksURI = v2.JWKSURI
	k.keys = keys
	k.fetchedAt = now
	return nil
}

// issuerTemplate replaces the tenant id in an issuer by the placeholder,
// so the issuer of any allowed tenant can be formed from it.
func issuerTemplate(issuer, tenantID string) string {
	if strings.Contains(issuer, tenantPlaceholder) || tenantID == "" {
		return issuer
	}
	if i := strings.Index(strings.ToLower(issuer), strings.ToLower(tenantID)); i >= 0 {
		return issuer[:i] + tenantPlaceholder + issuer[i+len(tenantID):]
	}
	return issuer
}

// issuerAllowed reports whether iss is the v1 or v2 issuer of tenant tid.
func (k *tokenKeys) issuerAllowed(iss, tid string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, tmpl := range k.issuers {
		if strings.EqualFold(iss, strings.ReplaceAll(tmpl, tenantPlaceholder, tid)) {
			return true
		}
	}
	return false
}

func (k *tokenKeys) discovery(ctx context.Context, u string) (discoveryDoc, error) {
	var d discoveryDoc
	if err := k.getJSON(ctx, u, &d); err != nil {
		return d, fmt.Errorf("discovery for provider %q: %w", k.p.name, err)
	}
	return d, nil
}

func (k *tokenKeys) getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := k.p.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: GET %s: %w", ErrUnavailable, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDocumentBytes))
		return fmt.Errorf("%w: GET %s: status %d", ErrUnavailable, u, resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDocumentBytes)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", u, err)
	}
	return nil
}

// jwksDoc is a JSON Web Key Set.
type jwksDoc struct {
	Keys []struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		Kid string `json:"kid"`
		N   string `json:"n"`
		E   string `json:"e"`
	} `json:"keys"`
}

func (k *tokenKeys) fetchJWKS(ctx context.Context, u string) (map[string]*rsa.PublicKey, error) {
	var doc jwksDoc
	if err := k.getJSON(ctx, u, &doc); err != nil {
		return nil, fmt.Errorf("signing keys for provider %q: %w", k.p.name, err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, j := range doc.Keys {
		if j.Kty != "RSA" || (j.Use != "" && j.Use != "sig") || j.Kid == "" {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(j.N)
		e, err2 := base64.RawURLEncoding.DecodeString(j.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
			continue
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < 2048 {
			continue
		}
		keys[j.Kid] = pub
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("signing keys for provider %q: %s holds no usable RSA key", k.p.name, u)
	}
	return keys, nil
}

// errUnknownKey says a token's kid is not among the published keys.
var errUnknownKey = errors.New("token signed with an unknown key")

// key returns the public key for kid, fetching JWKS again when kid is
// unknown (at most once per jwksRefetchInterval, or jwksRetryAfterFailure
// after a fetch that failed) or the keys are old.
func (k *tokenKeys) key(ctx context.Context, kid string, now time.Time) (*rsa.PublicKey, error) {
	k.mu.Lock()
	uri := k.jwksURI
	pub, known := k.keys[kid]
	stale := now.Sub(k.fetchedAt) > jwksMaxAge
	k.mu.Unlock()
	if uri == "" {
		return nil, fmt.Errorf("%w: signing keys of provider %q were never loaded", ErrUnavailable, k.p.name)
	}
	if known && !stale {
		return pub, nil
	}

	// One fetch at a time: validations waiting for the same new kid find
	// it in the keys the first one fetched.
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.Lock()
	pub, known = k.keys[kid]
	stale = now.Sub(k.fetchedAt) > jwksMaxAge
	wait := jwksRefetchInterval
	if k.refetchErr != nil {
		wait = jwksRetryAfterFailure
	}
	limited := !k.lastRefetch.IsZero() && now.Sub(k.lastRefetch) < wait
	lastErr := k.refetchErr
	if !known && !limited {
		k.lastRefetch = now
	}
	k.mu.Unlock()
	switch {
	case known && !stale:
		return pub, nil
	case !known && limited && lastErr != nil:
		// The keys could not be fetched a moment ago: calling the token
		// bad would blame the client for Entra being unreachable.
		return nil, lastErr
	case !known && limited:
		return nil, errUnknownKey
	}
	keys, err := k.fetchJWKS(ctx, uri)
	if !known || err == nil {
		k.mu.Lock()
		k.refetchErr = err
		k.mu.Unlock()
	}
	if err != nil {
		if known {
			// Stale but still published when last seen: keep trusting the
			// key until Entra answers again.
			return pub, nil
		}
		return nil, err
	}
	k.mu.Lock()
	k.keys = keys
	k.fetchedAt = now
	k.mu.Unlock()
	if pub, ok := keys[kid]; ok {
		return pub, nil
	}
	return nil, errUnknownKey
}

// validateToken checks an access token presented as a password and
// returns the identity it proves. It does not compare the identity with
// the login name.
func (a *Authorizer) validateToken(ctx context.Context, p *provider, raw, login string) (Identity, error) {
	id, _, err := a.checkToken(ctx, p, raw, login)
	return id, err
}

// checkToken is validateToken that also returns the token's audiences,
// which say whether it can be passed on to Azure Database.
func (a *Authorizer) checkToken(ctx context.Context, p *provider, raw, login string) (Identity, []string, error) {
	bad := func(msg string, err error) error {
		return &Refusal{Reason: ReasonBadCredentials, Message: fmt.Sprintf("the access token presented for %s %s", login, msg), Err: err}
	}
	if !looksLikeJWT(raw) {
		return Identity{}, nil, bad("is not a well-formed token", errors.New("not three base64url parts within the size limit"))
	}
	now := a.now()
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg()}),
		jwt.WithLeeway(clockSkew),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(a.now),
		// One spelling per token: the loose decoder ignores the padding
		// bits of the last character, so a token could otherwise be
		// altered without touching its signature.
		jwt.WithStrictDecoding(),
	)
	var keyErr error
	claims := jwt.MapClaims{}
	_, err := parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			keyErr = errors.New("token has no kid")
			return nil, keyErr
		}
		pub, err := p.tokens.key(ctx, kid, now)
		keyErr = err
		return pub, err
	})
	switch {
	case err == nil:
	case keyErr != nil && IsUnavailable(keyErr):
		return Identity{}, nil, &Refusal{
			Reason:  ReasonUnavailable,
			Message: fmt.Sprintf("the signing keys of Microsoft Entra ID could not be fetched to check the token of %s; try again later", login),
			Err:     keyErr,
		}
	case errors.Is(err, jwt.ErrTokenExpired):
		return Identity{}, nil, bad("has expired", err)
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return Identity{}, nil, bad("is not valid yet", err)
	case errors.Is(err, errUnknownKey):
		return Identity{}, nil, bad("is not signed by a key of Microsoft Entra ID", err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return Identity{}, nil, bad("has an invalid signature", err)
	default:
		return Identity{}, nil, bad("is not valid", err)
	}

	tid, _ := claims["tid"].(string)
	if !p.tenantAllowed(tid) {
		return Identity{}, nil, bad("comes from a tenant that is not allowed", fmt.Errorf("tenant %q not in allowed_tenants of provider %q", tid, p.name))
	}
	iss, _ := claims["iss"].(string)
	if !p.tokens.issuerAllowed(iss, tid) {
		return Identity{}, nil, bad("has an unexpected issuer", fmt.Errorf("issuer %q is not the v1 or v2 issuer of tenant %s", iss, tid))
	}
	auds, err := claims.GetAudience()
	if err != nil {
		return Identity{}, nil, bad("has no valid audience", err)
	}
	audOK := false
	for _, aud := range auds {
		if p.audiences[aud] {
			audOK = true
			break
		}
	}
	if !audOK {
		return Identity{}, nil, bad("was issued for another application", fmt.Errorf("audience %q is not among the accepted audiences of provider %q", auds, p.name))
	}
	oid, _ := claims["oid"].(string)
	if oid == "" {
		return Identity{}, nil, bad("names no object id", errors.New("no oid claim"))
	}
	id := Identity{Provider: p.name, TenantID: tid, ObjectID: oid}
	appID := stringClaim(claims, "azp", "appid")
	if upn := stringClaim(claims, "upn", "preferred_username"); upn != "" {
		id.Kind = KindUser
		id.UPN = upn
		id.AppID = appID
		id.DisplayName, _ = claims["name"].(string)
		return id, auds, nil
	}
	if appID == "" {
		return Identity{}, nil, bad("names neither a user nor an application", errors.New("no upn, preferred_username, azp or appid claim"))
	}
	id.Kind = KindServicePrincipal
	id.AppID = appID
	id.DisplayName, _ = claims["app_displayname"].(string)
	return id, auds, nil
}

// stringClaim returns the first non-empty string among the named claims.
func stringClaim(c jwt.MapClaims, names ...string) string {
	for _, n := range names {
		if s, ok := c[n].(string); ok && s != "" {
			return s
		}
	}
	return ""
}

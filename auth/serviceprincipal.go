package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
)

// ServicePrincipalLoginPrefix starts a login name that names a service
// principal by display name ("spn:reporting-bot"); a bare GUID login name
// is an application (client) id.
const ServicePrincipalLoginPrefix = "spn:"

// DefaultServicePrincipalCacheTTL is how long a service principal's
// accepted secret is remembered, so that a program opening many
// connections does not cost a token request each.
const DefaultServicePrincipalCacheTTL = 5 * time.Minute

// ServicePrincipal is a service principal as the directory knows it.
type ServicePrincipal struct {
	ObjectID    string
	AppID       string
	DisplayName string
}

// ServicePrincipalFinder is what a GroupSource may also offer: finding a
// service principal by display name, for "spn:<display name>" logins.
// Without it only app-id logins work for service principals.
type ServicePrincipalFinder interface {
	ServicePrincipalByName(ctx context.Context, displayName string) (ServicePrincipal, error)
}

// servicePrincipalLogin reports whether login names a service principal:
// a GUID (its app id) or "spn:<display name>".
func servicePrincipalLogin(login string) (appID, displayName string, ok bool) {
	if isObjectID(login) {
		return strings.ToLower(login), "", true
	}
	if name, ok := strings.CutPrefix(login, ServicePrincipalLoginPrefix); ok && name != "" {
		return "", name, true
	}
	return "", "", false
}

// spCache remembers accepted service-principal secrets by an HMAC of
// (provider, app id, secret) under a random per-process key: the secret
// itself is never held, and the cache is useless outside this process.
// Concurrent checks of one secret share a single grant (a pool of
// connections opening at once costs one token request); a failed check is
// shared only with the callers waiting on it at that moment and is never
// remembered.
type spCache struct {
	salt [32]byte
	ttl  time.Duration

	mu      sync.Mutex
	entries map[spKey]spEntry
	checks  sharedCalls[spKey, spEntry]
}

// spKey is an HMAC of the secret and what it is for: the principal's
// identity (purpose "id") or its token for Azure Database ("rdbms").
type spKey struct {
	mac     [sha256.Size]byte
	purpose string
}

type spEntry struct {
	identity Identity
	token    string // the Azure Database token, for purpose "rdbms"
	expires  time.Time
}

func newSPCache(ttl time.Duration) (*spCache, error) {
	c := &spCache{ttl: ttl, entries: map[spKey]spEntry{}}
	if _, err := rand.Read(c.salt[:]); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *spCache) key(provider, appID, secret, purpose string) spKey {
	m := hmac.New(sha256.New, c.salt[:])
	for _, s := range []string{provider, strings.ToLower(appID), secret} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		m.Write(n[:])
		m.Write([]byte(s))
	}
	k := spKey{purpose: purpose}
	copy(k.mac[:], m.Sum(nil))
	return k
}

// do returns the remembered entry for k, or runs check once for every
// concurrent caller and remembers a success until the entry's expiry (at
// most the TTL from now).
func (c *spCache) do(ctx context.Context, k spKey, now func() time.Time, check func() (spEntry, error)) (spEntry, error) {
	cached := func() (spEntry, bool) {
		e, ok := c.entries[k]
		if ok && !now().Before(e.expires) {
			delete(c.entries, k)
			ok = false
		}
		return e, ok
	}
	keep := func(e spEntry) spEntry {
		t := now()
		if limit := t.Add(c.ttl); e.expires.IsZero() || e.expires.After(limit) {
			e.expires = limit
		}
		c.sweepLocked(t)
		c.entries[k] = e
		return e
	}
	return c.checks.do(ctx, &c.mu, k, cached, check, keep)
}

func (c *spCache) sweepLocked(now time.Time) {
	for old, v := range c.entries {
		if !now.Before(v.expires) {
			delete(c.entries, old)
		}
	}
}

// servicePrincipalSignIn proves a service principal's identity by a
// client-credentials grant with the presented secret.
func (a *Authorizer) servicePrincipalSignIn(ctx context.Context, p *provider, login, secret string) (Identity, error) {
	appID, name, _ := servicePrincipalLogin(login)
	if secret == "" {
		return Identity{}, &Refusal{Reason: ReasonBadCredentials, Message: fmt.Sprintf("no secret was presented for service principal %s", login)}
	}
	if appID == "" {
		finder, ok := p.groups.(ServicePrincipalFinder)
		if !ok {
			return Identity{}, &Refusal{
				Reason:  ReasonBadCredentials,
				Message: fmt.Sprintf("service principal %q cannot be found by name here; connect with its application id", name),
				Err:     errors.New("the group source cannot look service principals up by name"),
			}
		}
		sp, err := finder.ServicePrincipalByName(ctx, name)
		if err != nil {
			if IsUnavailable(err) {
				return Identity{}, &Refusal{
					Reason:  ReasonUnavailable,
					Message: fmt.Sprintf("Microsoft Graph could not be reached to look up service principal %q; try again later", name),
					Err:     err,
				}
			}
			return Identity{}, &Refusal{Reason: ReasonBadCredentials, Message: fmt.Sprintf("service principal %q was not found", name), Err: err}
		}
		appID = strings.ToLower(sp.AppID)
	}

	e, err := a.spCache.do(ctx, a.spCache.key(p.name, appID, secret, "id"), a.now, func() (spEntry, error) {
		if err := a.checkSecretLockout(ctx, p, appID, login); err != nil {
			return spEntry{}, err
		}
		res, err := a.clientCredentials(ctx, p, appID, secret, p.graphEndpoint+"/.default")
		if err != nil {
			return spEntry{}, a.secretRefused(ctx, p, appID, login, err)
		}
		id, err := servicePrincipalFromToken(p, res.AccessToken, appID)
		if err != nil {
			return spEntry{}, &Refusal{Reason: ReasonUnavailable, Message: fmt.Sprintf("Microsoft Entra ID did not say which service principal %s is", login), Err: err}
		}
		if name != "" && id.DisplayName == "" {
			id.DisplayName = name
		}
		if !p.tenantAllowed(id.TenantID) {
			return spEntry{}, &Refusal{
				Reason:  ReasonNotAllowed,
				Message: fmt.Sprintf("service principal %s belongs to a tenant that is not allowed", login),
				Err:     fmt.Errorf("tenant %q not in allowed_tenants of provider %q", id.TenantID, p.name),
			}
		}
		return spEntry{identity: id}, nil
	})
	return e.identity, err
}

// clientCredentials runs a client-credentials grant for scope with the
// presented secret.
func (a *Authorizer) clientCredentials(ctx context.Context, p *provider, appID, secret, scope string) (confidential.AuthResult, error) {
	cred, err := confidential.NewCredFromSecret(secret)
	if err != nil {
		return confidential.AuthResult{}, &Refusal{Reason: ReasonBadCredentials, Message: fmt.Sprintf("the secret presented for service principal %s is not usable", appID), Err: errors.New("empty secret")}
	}
	// A fresh client per attempt: MSAL's token cache must not answer for a
	// secret it has not checked with Entra (the positive cache above does
	// that, keyed by the secret).
	cca, err := confidential.New(p.authority, appID, cred,
		confidential.WithHTTPClient(p.http),
		confidential.WithInstanceDiscovery(p.instanceDiscovery),
	)
	if err != nil {
		return confidential.AuthResult{}, &Refusal{Reason: ReasonUnavailable, Message: fmt.Sprintf("service principal %s could not be checked", appID), Err: fmt.Errorf("confidential client: %w", err)}
	}
	return cca.AcquireTokenByCredential(ctx, []string{scope})
}

// servicePrincipalFromToken reads the principal's object id, tenant and
// app id from the access token the grant returned. The token came straight
// from the authority over verified TLS in answer to the secret, so its
// claims are read without checking the signature (Graph tokens are not
// meant to be verified by anyone but Graph).
func servicePrincipalFromToken(p *provider, token, appID string) (Identity, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Identity{}, errors.New("the access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Identity{}, fmt.Errorf("access token payload: %w", err)
	}
	var c struct {
		OID         string `json:"oid"`
		TID         string `json:"tid"`
		AppID       string `json:"appid"`
		AZP         string `json:"azp"`
		DisplayName string `json:"app_displayname"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return Identity{}, fmt.Errorf("access token claims: %w", err)
	}
	got := firstNonEmpty(c.AppID, c.AZP)
	if c.OID == "" || !strings.EqualFold(got, appID) {
		return Identity{}, fmt.Errorf("access token names app %q (oid %q), want %q", got, c.OID, appID)
	}
	return Identity{
		Kind:        KindServicePrincipal,
		Provider:    p.name,
		TenantID:    c.TID,
		ObjectID:    c.OID,
		AppID:       strings.ToLower(appID),
		DisplayName: c.DisplayName,
	}, nil
}

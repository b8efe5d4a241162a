package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// AccessKeyPrefix starts every access key. It differs from the session
// key's prefix, so the two are told apart before any lookup, and a secret
// scanner can tell a program's long-lived key from a person's session.
const AccessKeyPrefix = "pak_"

// accessKeyTouchEvery is how stale an access key's last use may be
// before a connection records it again.
const accessKeyTouchEvery = time.Minute

// accessKeyIDLength is the length of an access key's public id (60 bits,
// enough to name keys, not to guess them: the id opens nothing).
const accessKeyIDLength = 12

// accessKeyShape accepts exactly what NewAccessKey produces.
var accessKeyShape = regexp.MustCompile(`^` + AccessKeyPrefix + `[a-z2-7]{52}$`)

// wellFormedAccessKey reports whether key could have been made by
// NewAccessKey; malformed keys are refused without a store lookup.
func wellFormedAccessKey(key string) bool { return accessKeyShape.MatchString(key) }

// accessKeyIDShape is the shape of an access key's id.
var accessKeyIDShape = regexp.MustCompile(`^[a-z2-7]{12}$`)

// ValidAccessKeyID reports whether id has the shape of an access key id,
// for commands that take one.
func ValidAccessKeyID(id string) bool { return accessKeyIDShape.MatchString(id) }

// AccessKey is an access key as the store keeps it: everything but the
// key, which is held only as its SHA-256.
//
// An access key is made by an admin for a program that cannot answer a
// device-code prompt and has no client secret of its own (or should not
// use it here): it proves the identity it is bound to, a user's UPN or a
// service principal's application id, for one resource. The identity's
// groups are read again at every connection, and while sessions run, so a
// key is never more than the identity is allowed.
type AccessKey struct {
	// ID names the key in `portcullis keys list` and `keys revoke`.
	ID       string
	Provider string
	// For is the identity the key is bound to: a UPN or an application
	// id, in lower case. Kind says which.
	For  string
	Kind Kind
	// Resource is the one resource the key opens.
	Resource   string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	LastUsedAt time.Time // zero until first used
	RevokedAt  time.Time // zero unless revoked
}

// Revoked reports whether an admin revoked the key.
func (k AccessKey) Revoked() bool { return !k.RevokedAt.IsZero() }

// Usable reports whether the key may be used at now: not revoked, not
// expired.
func (k AccessKey) Usable(now time.Time) bool { return !k.Revoked() && now.Before(k.ExpiresAt) }

// AccessKeyStore keeps access keys under the SHA-256 of the key. The
// state store (internal/store) implements it; Deps.AccessKeys, or
// Deps.Sessions when it implements it, is used.
type AccessKeyStore interface {
	// PutAccessKey stores a new key under h. An id already in use is an
	// error.
	PutAccessKey(ctx context.Context, h KeyHash, k AccessKey) error
	// AccessKeyByHash finds the key whose SHA-256 is h; ok is false when
	// there is none. Revoked and expired keys are returned too.
	AccessKeyByHash(ctx context.Context, h KeyHash) (k AccessKey, ok bool, err error)
	// AccessKeyByID finds a key by its id.
	AccessKeyByID(ctx context.Context, id string) (k AccessKey, ok bool, err error)
	// ListAccessKeys returns every key, revoked and expired ones included,
	// oldest first.
	ListAccessKeys(ctx context.Context) ([]AccessKey, error)
	// RevokeAccessKey marks the key revoked at at; it reports whether a
	// key with that id exists (revoking twice keeps the first time).
	RevokeAccessKey(ctx context.Context, id string, at time.Time) (bool, error)
	// TouchAccessKey records that the key was used at at.
	TouchAccessKey(ctx context.Context, id string, at time.Time) error
}

// NewAccessKey makes an access key for forID (a UPN or an application
// id) of provider, opening resource until now+ttl. It returns the key,
// to be shown once and never stored, and the record and hash to store.
func NewAccessKey(provider, forID, resource string, ttl time.Duration, now time.Time) (string, AccessKey, KeyHash, error) {
	forID = strings.ToLower(strings.TrimSpace(forID))
	switch {
	case provider == "":
		return "", AccessKey{}, KeyHash{}, errors.New("access key: no provider")
	case resource == "":
		return "", AccessKey{}, KeyHash{}, errors.New("access key: no resource")
	case ttl <= 0:
		return "", AccessKey{}, KeyHash{}, fmt.Errorf("access key: the lifetime must be positive, got %s", ttl)
	}
	kind, err := accessKeyKind(forID)
	if err != nil {
		return "", AccessKey{}, KeyHash{}, err
	}
	secret := make([]byte, sessionKeyBytes)
	idBytes := make([]byte, 8)
	if _, err := rand.Read(secret); err != nil {
		return "", AccessKey{}, KeyHash{}, fmt.Errorf("access key: %w", err)
	}
	if _, err := rand.Read(idBytes); err != nil {
		return "", AccessKey{}, KeyHash{}, fmt.Errorf("access key: %w", err)
	}
	key := AccessKeyPrefix + sessionKeyEncoding.EncodeToString(secret)
	rec := AccessKey{
		ID:        sessionKeyEncoding.EncodeToString(idBytes)[:accessKeyIDLength],
		Provider:  provider,
		For:       forID,
		Kind:      kind,
		Resource:  resource,
		CreatedAt: now,
		ExpiresAt: now.Add(ttl),
	}
	return key, rec, hashKey(key), nil
}

// accessKeyKind tells from the identity a key is for whether it is a
// service principal (an application id, a GUID) or a person (a UPN).
func accessKeyKind(forID string) (Kind, error) {
	switch {
	case isObjectID(forID):
		return KindServicePrincipal, nil
	case strings.Contains(forID, "@") && !strings.ContainsAny(forID, " \t\r\n:"):
		return KindUser, nil
	}
	return "", fmt.Errorf("access key: %q is neither a user principal name (name@domain) nor an application id (a GUID)", forID)
}

// IdentityResolver is what a GroupSource may also offer: finding the
// identity an access key is bound to, by UPN or application id, with
// whether its account is enabled. GraphGroups implements it with its
// app-only token; without it access keys are refused.
type IdentityResolver interface {
	ResolveIdentity(ctx context.Context, kind Kind, name string) (id Identity, enabled bool, err error)
}

// accessKeySignIn proves the identity an access key is bound to: the key
// must exist, be neither revoked nor expired, be for this provider and
// resource and for the login name given; the identity is then looked up
// in the directory (a deleted or disabled one is refused).
func (a *Authorizer) accessKeySignIn(ctx context.Context, p *provider, res *resource, login, key string) (Identity, string, error) {
	bad := &Refusal{
		Reason:  ReasonBadCredentials,
		Message: fmt.Sprintf("the access key presented for %s is not valid for %q (it may have been revoked or have expired)", login, res.cfg.Name),
	}
	if a.keys == nil {
		return Identity{}, "", &Refusal{
			Reason:  ReasonUnavailable,
			Message: "access keys cannot be checked: this portcullis has no state store for them",
			Err:     errors.New("auth: no access key store"),
		}
	}
	if mistypedCode(key, wellFormedAccessKey) {
		return Identity{}, "", mistypedCodeRefusal("access key", login)
	}
	if !wellFormedAccessKey(key) {
		bad.Err = errors.New("malformed access key")
		return Identity{}, "", bad
	}
	rec, ok, err := a.keys.AccessKeyByHash(ctx, hashKey(key))
	switch {
	case err != nil:
		return Identity{}, "", storeRefusal(login, err)
	case !ok:
		bad.Err = errors.New("no such access key")
		return Identity{}, "", bad
	case rec.Revoked():
		bad.Err = fmt.Errorf("access key %s was revoked", rec.ID)
		return Identity{}, "", bad
	case !a.now().Before(rec.ExpiresAt):
		bad.Err = fmt.Errorf("access key %s expired", rec.ID)
		return Identity{}, "", bad
	case rec.Provider != p.name || rec.Resource != res.cfg.Name:
		// A key for another resource: refused like a wrong key, without
		// saying what it is for.
		bad.Err = fmt.Errorf("access key %s is for another resource", rec.ID)
		return Identity{}, "", bad
	case !a.keyLoginMatches(login, rec):
		bad.Err = fmt.Errorf("access key %s is bound to another identity", rec.ID)
		return Identity{}, "", bad
	}
	id, err := a.keyIdentity(ctx, p, rec)
	if err != nil {
		return Identity{}, "", err
	}
	// Last use is for the operator's list, to the minute: a pool of
	// connections does not write it once each, and failing to record it
	// refuses nobody.
	if now := a.now(); now.Sub(rec.LastUsedAt) >= accessKeyTouchEvery {
		if err := a.keys.TouchAccessKey(ctx, rec.ID, now); err != nil {
			a.log.Warn("could not record the use of an access key", logging.Event("auth.access_key.touch_failed"),
				zap.String("key_id", rec.ID), zap.Error(err))
		}
	}
	return id, rec.ID, nil
}

// keyLoginMatches: the login name is the key's identity (ignoring case),
// or an alias of it.
func (a *Authorizer) keyLoginMatches(login string, k AccessKey) bool {
	l := strings.ToLower(login)
	if l == k.For {
		return true
	}
	if k.Kind == KindServicePrincipal {
		return false
	}
	alias, ok := a.aliases[l]
	return ok && alias == k.For
}

// keyIdentity looks the identity of a key up in the directory, refusing
// one that is gone or disabled.
func (a *Authorizer) keyIdentity(ctx context.Context, p *provider, k AccessKey) (Identity, error) {
	r, ok := p.groups.(IdentityResolver)
	if !ok {
		return Identity{}, &Refusal{
			Reason:  ReasonUnavailable,
			Message: fmt.Sprintf("access keys need app-only Microsoft Graph access, which provider %q does not have", p.name),
			Err:     errors.New("the group source cannot resolve identities"),
		}
	}
	who := Identity{Kind: k.Kind, Provider: p.name, UPN: k.For}
	if k.Kind == KindServicePrincipal {
		who = Identity{Kind: k.Kind, Provider: p.name, AppID: k.For}
	}
	id, enabled, err := r.ResolveIdentity(ctx, k.Kind, k.For)
	if err != nil {
		return Identity{}, directoryRefusal(who, "look up", err)
	}
	if !enabled {
		return Identity{}, &Refusal{Reason: ReasonDisabled, Message: fmt.Sprintf("the account of %s is disabled", id.Name())}
	}
	id.Provider = p.name
	if id.TenantID == "" {
		id.TenantID = p.cfg.TenantID
	}
	return id, nil
}

// ResolveIdentity implements IdentityResolver with the app-only token.
func (g *GraphGroups) ResolveIdentity(ctx context.Context, kind Kind, name string) (Identity, bool, error) {
	if !g.AppOnly {
		return Identity{}, false, fmt.Errorf("look up %s: no client secret or certificate is configured for app-only Graph reads", name)
	}
	if kind == KindServicePrincipal {
		sp, err := g.Client.ServicePrincipalByAppID(ctx, name)
		if err != nil {
			return Identity{}, false, classifyGraphError(err)
		}
		return Identity{Kind: KindServicePrincipal, ObjectID: sp.ID, AppID: strings.ToLower(sp.AppID), DisplayName: sp.DisplayName}, sp.AccountEnabled, nil
	}
	u, err := g.Client.User(ctx, name)
	if err != nil {
		return Identity{}, false, classifyGraphError(err)
	}
	return Identity{Kind: KindUser, ObjectID: u.ID, UPN: u.UPN, DisplayName: u.DisplayName}, u.AccountEnabled, nil
}

// memoryAccessKeys is the AccessKeyStore part of MemorySessionStore.
type memoryAccessKeys struct {
	mu     sync.Mutex
	byHash map[KeyHash]string
	keys   map[string]AccessKey
}

func (m *memoryAccessKeys) init() {
	if m.keys == nil {
		m.byHash = map[KeyHash]string{}
		m.keys = map[string]AccessKey{}
	}
}

// PutAccessKey implements AccessKeyStore.
func (m *MemorySessionStore) PutAccessKey(_ context.Context, h KeyHash, k AccessKey) error {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	if _, dup := m.ak.keys[k.ID]; dup {
		return fmt.Errorf("access key id %s is already in use", k.ID)
	}
	m.ak.keys[k.ID] = k
	m.ak.byHash[h] = k.ID
	return nil
}

// AccessKeyByHash implements AccessKeyStore.
func (m *MemorySessionStore) AccessKeyByHash(_ context.Context, h KeyHash) (AccessKey, bool, error) {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	id, ok := m.ak.byHash[h]
	if !ok {
		return AccessKey{}, false, nil
	}
	k, ok := m.ak.keys[id]
	return k, ok, nil
}

// AccessKeyByID implements AccessKeyStore.
func (m *MemorySessionStore) AccessKeyByID(_ context.Context, id string) (AccessKey, bool, error) {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	k, ok := m.ak.keys[id]
	return k, ok, nil
}

// ListAccessKeys implements AccessKeyStore.
func (m *MemorySessionStore) ListAccessKeys(context.Context) ([]AccessKey, error) {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	out := make([]AccessKey, 0, len(m.ak.keys))
	for _, k := range m.ak.keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// RevokeAccessKey implements AccessKeyStore.
func (m *MemorySessionStore) RevokeAccessKey(_ context.Context, id string, at time.Time) (bool, error) {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	k, ok := m.ak.keys[id]
	if !ok {
		return false, nil
	}
	if k.RevokedAt.IsZero() {
		k.RevokedAt = at
		m.ak.keys[id] = k
	}
	return true, nil
}

// TouchAccessKey implements AccessKeyStore.
func (m *MemorySessionStore) TouchAccessKey(_ context.Context, id string, at time.Time) error {
	m.ak.mu.Lock()
	defer m.ak.mu.Unlock()
	m.ak.init()
	if k, ok := m.ak.keys[id]; ok {
		k.LastUsedAt = at
		m.ak.keys[id] = k
	}
	return nil
}

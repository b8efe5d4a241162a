package auth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// SignInRecord is a completed sign-in that may be reused: by presenting
// its session key, or (address grace) by the same user from the same
// client address for a short while. It holds no secret.
type SignInRecord struct {
	Identity Identity
	// LoginName is the name the person connected as when they signed in.
	LoginName  string
	ClientAddr netip.Addr
	SignedInAt time.Time
	ExpiresAt  time.Time
	// HomeAccountID names the MSAL account whose refresh token (kept only
	// in this process's memory) gets the user's own Graph token again in
	// delegated Graph mode.
	HomeAccountID string
	// ScrambleUser is set only on a session key stored under its
	// verifier (SHA-256 of SHA-256 of the key), which a MySQL scramble
	// can be checked against: the lower-case UPN of its identity, under
	// which SessionKeysOf lists it. Address-grace records have none, nor
	// do session keys stored by an older portcullis under the SHA-256 of
	// the key (the very value a scramble proves), so no scramble ever
	// reaches them.
	ScrambleUser string
}

// StoredSessionKey is a session key's record with the verifier it is
// stored under.
type StoredSessionKey struct {
	Verifier KeyHash
	Record   SignInRecord
}

// SessionStore keeps sign-in records under a hash of their key (see
// KeyHash). The in-memory MemorySessionStore serves a single process; a
// durable store shared by replicas implements the same methods.
type SessionStore interface {
	// PutSignIn stores rec under h, replacing any record there.
	PutSignIn(ctx context.Context, h KeyHash, rec SignInRecord) error
	// GetSignIn returns the record under h; ok is false when there is
	// none. Expired records may still be returned: callers check
	// ExpiresAt against their clock.
	GetSignIn(ctx context.Context, h KeyHash) (rec SignInRecord, ok bool, err error)
	// DeleteSignIn removes the record under h, if any.
	DeleteSignIn(ctx context.Context, h KeyHash) error
	// DeleteExpiredSignIns removes every record that expired before now
	// and reports how many.
	DeleteExpiredSignIns(ctx context.Context, now time.Time) (int, error)
	// SessionKeysOf lists the records whose ScrambleUser is user (exactly:
	// callers pass it in lower case) and that expire after now, with the
	// hash each is stored under. Records without a ScrambleUser are never
	// listed.
	SessionKeysOf(ctx context.Context, user string, now time.Time) ([]StoredSessionKey, error)
}

// MemorySessionStore is a SessionStore (and an AccessKeyStore) in
// process memory; sign-ins and keys do not survive a restart.
type MemorySessionStore struct {
	mu   sync.Mutex
	recs map[KeyHash]SignInRecord
	ak   memoryAccessKeys
}

// NewMemorySessionStore returns an empty store.
func NewMemorySessionStore() *MemorySessionStore {
	return &MemorySessionStore{recs: map[KeyHash]SignInRecord{}}
}

// PutSignIn implements SessionStore.
func (m *MemorySessionStore) PutSignIn(_ context.Context, h KeyHash, rec SignInRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[h] = rec
	return nil
}

// GetSignIn implements SessionStore.
func (m *MemorySessionStore) GetSignIn(_ context.Context, h KeyHash) (SignInRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[h]
	return rec, ok, nil
}

// DeleteSignIn implements SessionStore.
func (m *MemorySessionStore) DeleteSignIn(_ context.Context, h KeyHash) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, h)
	return nil
}

// DeleteExpiredSignIns implements SessionStore.
func (m *MemorySessionStore) DeleteExpiredSignIns(_ context.Context, now time.Time) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for h, rec := range m.recs {
		if !now.Before(rec.ExpiresAt) {
			delete(m.recs, h)
			n++
		}
	}
	return n, nil
}

// SessionKeysOf implements SessionStore.
func (m *MemorySessionStore) SessionKeysOf(_ context.Context, user string, now time.Time) ([]StoredSessionKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []StoredSessionKey
	for h, rec := range m.recs {
		if user != "" && rec.ScrambleUser == user && now.Before(rec.ExpiresAt) {
			out = append(out, StoredSessionKey{Verifier: h, Record: rec})
		}
	}
	return out, nil
}

// Len reports how many records the store holds (for tests and metrics).
func (m *MemorySessionStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs)
}

// graceHash is the store key of the address-grace record for one login
// from one address. Its input cannot collide with a session key's: keys
// start with SessionKeyPrefix, this with "address-grace".
func graceHash(provider, login string, addr netip.Addr) KeyHash {
	return sha256.Sum256([]byte(fmt.Sprintf("address-grace\x00%s\x00%s\x00%s", provider, strings.ToLower(login), addr.Unmap())))
}

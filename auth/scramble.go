package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
)

// SHA2Scramble is what a MySQL client sends with caching_sha2_password's
// fast authentication in place of its password:
//
//	Response = SHA256(key) XOR SHA256(SHA256(SHA256(key)) || Nonce)
//
// Nonce is the server's 20-byte challenge from its greeting. A server
// that keeps the verifier V = SHA256(SHA256(key)) recovers SHA256(key)
// as Response XOR SHA256(V || Nonce) and accepts when the SHA-256 of that
// is V. A scramble seen on the wire is no use for another connection (the
// nonce differs), and cannot be turned back into a 256-bit key.
type SHA2Scramble struct {
	Nonce    []byte
	Response []byte
}

// proves reports whether s proves the key whose verifier is v, comparing
// in constant time.
func (s SHA2Scramble) proves(v KeyHash) bool {
	if len(s.Response) != sha256.Size {
		return false
	}
	mask := sha256.New()
	mask.Write(v[:])
	mask.Write(s.Nonce)
	var h1 [sha256.Size]byte
	subtle.XORBytes(h1[:], s.Response, mask.Sum(nil))
	got := sha256.Sum256(h1[:])
	return subtle.ConstantTimeCompare(got[:], v[:]) == 1
}

// minNonce is the shortest challenge a scramble is checked against:
// MySQL's and portcullis's are 20 bytes.
const minNonce = 20

// scrambleSignIn accepts a session key of login proven by a scramble:
// it tries every live key listed for the login's UPN, and only those,
// which are stored under their verifier. Keys stored by an older
// portcullis under the SHA-256 of the key are never listed, so a copy of
// an old store cannot answer a scramble either. The rest is
// sessionKeySignIn's.
func (a *Authorizer) scrambleSignIn(ctx context.Context, p *provider, login string, s SHA2Scramble) (id Identity, graphToken, homeAccount string, err error) {
	bad := &Refusal{
		Reason:  ReasonBadCredentials,
		Message: fmt.Sprintf("no valid session key of %s matches what the client sent (a key may have expired)", login),
	}
	if len(s.Response) != sha256.Size || len(s.Nonce) < minNonce {
		bad.Err = errors.New("malformed scramble")
		return Identity{}, "", "", bad
	}
	now := a.now()
	var (
		found   StoredSessionKey
		matched bool
	)
	for _, user := range a.keyOwners(login) {
		keys, err := a.store.SessionKeysOf(ctx, user, now)
		if err != nil {
			return Identity{}, "", "", storeRefusal(login, err)
		}
		// Every candidate is checked, whatever matched before it.
		for _, k := range keys {
			if s.proves(k.Verifier) && k.Record.ScrambleUser != "" && !matched {
				found, matched = k, true
			}
		}
	}
	if !matched {
		bad.Err = errors.New("no session key matches the scramble")
		return Identity{}, "", "", bad
	}
	return a.reuseSessionKey(ctx, p, login, found.Verifier, found.Record, bad)
}

// keyOwners are the lower-case UPNs whose session keys login may use:
// the login itself, and the UPN it is an alias of.
func (a *Authorizer) keyOwners(login string) []string {
	l := strings.ToLower(login)
	if upn, ok := a.aliases[l]; ok && upn != l {
		return []string{l, upn}
	}
	return []string{l}
}

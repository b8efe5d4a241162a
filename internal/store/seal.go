package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/portcullisdb/portcullis/mfa"
)

// KeySize is the size of a sealing key: AES-256.
const KeySize = 32

// Keys seal TOTP secrets with AES-256-GCM.
type Keys struct {
	// Current seals every secret written, and every secret RotateKey
	// re-seals. Without it the store keeps no TOTP secrets (ErrNoKey).
	Current []byte
	// Previous keys still open secrets sealed before a rotation, so
	// replicas keep working while RotateKey runs.
	Previous [][]byte
}

// ErrNoKey means a TOTP secret was to be sealed or opened and no key is
// configured (store.key_env or store.key_file).
var ErrNoKey = errors.New("no store key is configured (store.key_env or store.key_file)")

// UnknownKeyError is a secret sealed under a key that is not configured:
// after a rotation, the old key must stay configured as the previous key
// until `portcullis store rotate-key` has run.
type UnknownKeyError struct {
	KeyID string
}

func (e *UnknownKeyError) Error() string {
	return fmt.Sprintf("a TOTP secret is sealed under key id %s, which is neither store.key nor store.previous_key", e.KeyID)
}

// ParseKey decodes a key as the configuration holds it: 32 bytes in
// standard base64. Its errors never quote the key.
func ParseKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != KeySize {
		return nil, errors.New("a store key must be 32 random bytes in base64 (openssl rand -base64 32)")
	}
	return b, nil
}

// NewKey returns a fresh random key in the form ParseKey reads.
func NewKey() (string, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// KeyID names a key in the rows it sealed: an HMAC of a fixed label under
// the key, so the name tells nothing about the key and two keys never
// share one by accident.
func KeyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("portcullis store key id v1"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// sealer seals with the current key and opens with any configured one.
type sealer struct {
	current string // key id; "" when there is no current key
	aeads   map[string]cipher.AEAD
}

func newSealer(k Keys) (*sealer, error) {
	s := &sealer{aeads: map[string]cipher.AEAD{}}
	add := func(key []byte, what string) (string, error) {
		if len(key) != KeySize {
			return "", fmt.Errorf("store: the %s key is %d bytes, want %d", what, len(key), KeySize)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return "", fmt.Errorf("store: %s key: %w", what, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return "", fmt.Errorf("store: %s key: %w", what, err)
		}
		id := KeyID(key)
		s.aeads[id] = aead
		return id, nil
	}
	if k.Current != nil {
		id, err := add(k.Current, "current")
		if err != nil {
			return nil, err
		}
		s.current = id
	} else if len(k.Previous) > 0 {
		return nil, errors.New("store: a previous key is configured without a current one")
	}
	for _, p := range k.Previous {
		if _, err := add(p, "previous"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// secretAAD binds a sealed secret to its owner, so that a row copied onto
// another user's does not open.
func secretAAD(u mfa.User) []byte {
	return []byte("portcullis totp secret v1\x00" + u.Provider + "\x00" + u.Name)
}

// seal encrypts plain for u under the current key; the result is the
// nonce followed by the ciphertext.
func (s *sealer) seal(u mfa.User, plain []byte) (keyID string, sealed []byte, err error) {
	if s.current == "" {
		return "", nil, ErrNoKey
	}
	aead := s.aeads[s.current]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, fmt.Errorf("store: nonce: %w", err)
	}
	return s.current, aead.Seal(nonce, nonce, plain, secretAAD(u)), nil
}

// open decrypts what seal produced under the key named keyID.
func (s *sealer) open(u mfa.User, keyID string, sealed []byte) ([]byte, error) {
	if s.current == "" {
		return nil, ErrNoKey
	}
	aead, ok := s.aeads[keyID]
	if !ok {
		return nil, &UnknownKeyError{KeyID: keyID}
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("store: the sealed TOTP secret of %s is truncated", u)
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], secretAAD(u))
	if err != nil {
		return nil, fmt.Errorf("store: the sealed TOTP secret of %s does not open under key id %s (tampered, or moved from another user)", u, keyID)
	}
	return plain, nil
}

// sealedRow is a stored secret as RotateKey reads it.
type sealedRow struct {
	user   mfa.User
	keyID  string
	sealed []byte
}

// reseal opens r with whichever key sealed it and seals it again under
// the current key.
func (s *sealer) reseal(r sealedRow) (keyID string, sealed []byte, err error) {
	plain, err := s.open(r.user, r.keyID, r.sealed)
	if err != nil {
		return "", nil, fmt.Errorf("store: rotate key: %w", err)
	}
	return s.seal(r.user, plain)
}

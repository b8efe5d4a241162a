package entrasim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"sync"

	"github.com/golang-jwt/jwt/v5"
)

// signingKey is one RSA key the simulator signs tokens with.
type signingKey struct {
	kid string
	key *rsa.PrivateKey
}

// keySet holds the current signing key and the keys still published in
// JWKS. Rotation publishes a new key and signs with it from then on, as
// Entra does; retired keys stay in JWKS until dropped.
type keySet struct {
	mu      sync.Mutex
	current *signingKey
	keys    []*signingKey // published, newest first
}

func newKeySet() (*keySet, error) {
	k, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	return &keySet{current: k, keys: []*signingKey{k}}, nil
}

func newSigningKey() (*signingKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(key.PublicKey.N.Bytes())
	return &signingKey{kid: hex.EncodeToString(sum[:8]), key: key}, nil
}

// RotateKeys makes a new signing key current. When keepOld is false the
// previous keys disappear from JWKS at once (an abrupt rotation); otherwise
// they stay published.
func (s *Server) RotateKeys(keepOld bool) error {
	k, err := newSigningKey()
	if err != nil {
		return err
	}
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	s.keys.current = k
	if keepOld {
		s.keys.keys = append([]*signingKey{k}, s.keys.keys...)
	} else {
		s.keys.keys = []*signingKey{k}
	}
	return nil
}

// SigningKeyID is the kid of the key tokens are signed with now.
func (s *Server) SigningKeyID() string {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	return s.keys.current.kid
}

// PublicKey returns the current signing key's public half (tests use it to
// forge tokens such as HS256-signed-with-the-public-key).
func (s *Server) PublicKey() *rsa.PublicKey {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	return &s.keys.current.key.PublicKey
}

// sign returns claims as an RS256 JWT with the current kid.
func (s *Server) sign(claims jwt.MapClaims) (string, error) {
	s.keys.mu.Lock()
	k := s.keys.current
	s.keys.mu.Unlock()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	t.Header["kid"] = k.kid
	return t.SignedString(k.key)
}

// jwk is one entry of a JWKS document.
type jwk struct {
	Kty    string   `json:"kty"`
	Use    string   `json:"use"`
	Kid    string   `json:"kid"`
	X5t    string   `json:"x5t,omitempty"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	Issuer string   `json:"issuer,omitempty"`
	X5c    []string `json:"x5c,omitempty"`
}

func (s *Server) jwks() map[string][]jwk {
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	out := make([]jwk, 0, len(s.keys.keys))
	for _, k := range s.keys.keys {
		out = append(out, jwk{
			Kty: "RSA",
			Use: "sig",
			Kid: k.kid,
			N:   base64.RawURLEncoding.EncodeToString(k.key.PublicKey.N.Bytes()),
			E:   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.key.PublicKey.E)).Bytes()),
		})
	}
	return map[string][]jwk{"keys": out}
}

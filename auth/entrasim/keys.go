package entrasim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // see jwks
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// signingKey is one RSA key the simulator signs tokens with, with the
// self-signed certificate Entra publishes alongside each key (x5c).
type signingKey struct {
	kid  string
	key  *rsa.PrivateKey
	cert []byte // DER
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
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(sum[:8]),
		Subject:      pkix.Name{CommonName: "entrasim token signing"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &signingKey{kid: hex.EncodeToString(sum[:8]), key: key, cert: der}, nil
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
		thumb := sha1.Sum(k.cert) //nolint:gosec // x5t is defined as a SHA-1 thumbprint
		out = append(out, jwk{
			Kty:    "RSA",
			Use:    "sig",
			Kid:    k.kid,
			X5t:    base64.RawURLEncoding.EncodeToString(thumb[:]),
			N:      base64.RawURLEncoding.EncodeToString(k.key.PublicKey.N.Bytes()),
			E:      base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.key.PublicKey.E)).Bytes()),
			Issuer: s.url + "/{tenantid}/v2.0",
			X5c:    []string{base64.StdEncoding.EncodeToString(k.cert)},
		})
	}
	return map[string][]jwk{"keys": out}
}

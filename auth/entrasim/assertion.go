package entrasim

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint (RFC 7515 §4.1.7)
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// assertionLeeway is the clock skew allowed on a client assertion's
// exp/nbf, as Entra allows some minutes.
const assertionLeeway = 5 * time.Minute

var errKeyNotFound = errors.New("the key was not found")

// verifyClientAssertion checks a private_key_jwt client assertion (RFC
// 7523) as Entra does: the header's x5t#S256 (or x5t) thumbprint picks one
// of the principal's certificates, whose key must have signed it (RS256 or
// PS256); aud is this tenant's token endpoint; iss and sub are the client
// id; exp is in the future; jti is present.
func (s *Server) verifyClientAssertion(assertion string, sp ServicePrincipal, t tenantRef) *oauthErr {
	certs, err := parseCertificates(sp.Certificates)
	if err != nil {
		return serverError(fmt.Errorf("certificates of %s: %w", sp.DisplayName, err))
	}
	var signer *x509.Certificate
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodPS256.Alg()}),
		jwt.WithTimeFunc(s.now),
		jwt.WithLeeway(assertionLeeway),
		jwt.WithExpirationRequired(),
	)
	claims := jwt.MapClaims{}
	_, err = parser.ParseWithClaims(assertion, claims, func(tok *jwt.Token) (any, error) {
		c, err := certByThumbprint(tok.Header, certs)
		if err != nil {
			return nil, err
		}
		signer = c
		return c.PublicKey, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenMalformed):
		return invalidClient(50027, "Invalid JWT token. The client assertion is malformed.")
	case errors.Is(err, errKeyNotFound):
		return invalidClient(700027, "Client assertion contains an invalid signature. [Reason - The key was not found.]")
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return invalidClient(700024, "Client assertion is not within its valid time range.")
	default:
		return invalidClient(700027, "Client assertion contains an invalid signature.")
	}
	now := s.now()
	if now.Before(signer.NotBefore) || now.After(signer.NotAfter) {
		return invalidClient(700027, "Client assertion contains an invalid signature. [Reason - The certificate is not within its validity period.]")
	}
	iss, _ := claims.GetIssuer()
	sub, _ := claims.GetSubject()
	if !strings.EqualFold(iss, sp.AppID) || !strings.EqualFold(sub, sp.AppID) {
		return invalidClient(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
	}
	aud, _ := claims.GetAudience()
	if !s.isTokenEndpoint(aud, t) {
		return invalidClient(50013, "Assertion audience claim does not match the required value: the token endpoint of the tenant.")
	}
	if jti, _ := claims["jti"].(string); jti == "" {
		return invalidClient(50013, "Assertion is invalid: the jti claim is required.")
	}
	return nil
}

func invalidClient(aadsts int, msg string) *oauthErr {
	return &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", aadsts: aadsts, msg: msg}
}

// isTokenEndpoint reports whether one of auds is this tenant's token
// endpoint (v2 or v1), named by tenant id, domain, or the path the client
// used.
func (s *Server) isTokenEndpoint(auds []string, t tenantRef) bool {
	s.mu.Lock()
	domain := s.dir.Tenant.Domain
	s.mu.Unlock()
	for _, aud := range auds {
		for _, seg := range []string{t.ID, t.Segment, domain} {
			if seg == "" {
				continue
			}
			for _, p := range []string{"/oauth2/v2.0/token", "/oauth2/token"} {
				if strings.EqualFold(aud, s.url+"/"+seg+p) {
					return true
				}
			}
		}
	}
	return false
}

// certByThumbprint picks the certificate a JWT header names by x5t#S256
// (SHA-256) or x5t (SHA-1). Both are base64url by RFC 7515; MSAL sends
// standard base64, so either is read.
func certByThumbprint(header map[string]any, certs []*x509.Certificate) (*x509.Certificate, error) {
	if v, ok := header["x5t#S256"].(string); ok {
		want := decodeThumbprint(v)
		for _, c := range certs {
			sum := sha256.Sum256(c.Raw)
			if want != nil && bytes.Equal(sum[:], want) {
				return c, nil
			}
		}
		return nil, errKeyNotFound
	}
	if v, ok := header["x5t"].(string); ok {
		want := decodeThumbprint(v)
		for _, c := range certs {
			sum := sha1.Sum(c.Raw) //nolint:gosec // see import
			if want != nil && bytes.Equal(sum[:], want) {
				return c, nil
			}
		}
	}
	return nil, errKeyNotFound
}

func decodeThumbprint(v string) []byte {
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(v); err == nil {
			return b
		}
	}
	return nil
}

// parseCertificates reads every CERTIFICATE block of every PEM entry.
func parseCertificates(pems []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i, p := range pems {
		rest := []byte(p)
		found := false
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate %d: %w", i, err)
			}
			out = append(out, c)
			found = true
		}
		if !found {
			return nil, fmt.Errorf("certificate %d: no PEM CERTIFICATE block", i)
		}
	}
	return out, nil
}

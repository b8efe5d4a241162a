package config

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	tenantID = "3f2a7c1e-5b8d-4e6f-9a0b-1c2d3e4f5a6b"
	clientID = "8c1d0f5e-2a3b-4c5d-8e9f-0a1b2c3d4e5f"
	// readerPassword is what minimalEnv supplies; tests assert it never
	// leaks.
	readerPassword = "Rd-7f3a9c-secret-value"
)

// minimal is the smallest valid configuration.
const minimal = `providers:
  - name: contoso
    tenant_id: ` + tenantID + `
    client_id: ` + clientID + `
resources:
  - name: reporting
    protocol: postgres
    address: 127.0.0.1:5432
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: reader
        password_env: READER_PASSWORD
`

var minimalEnv = []string{"READER_PASSWORD=" + readerPassword}

// testStoreKey is a well-formed store key (32 bytes in base64).
const testStoreKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// otherStoreKey is another well-formed store key.
const otherStoreKey = "HxwdHhscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA="

// mustParse parses a configuration that must be valid.
func mustParse(t *testing.T, yamlText string, env, overrides []string) *Config {
	t.Helper()
	cfg, err := Parse([]byte(yamlText), "test.yaml", env, overrides)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

// problemsOf parses a configuration that must be invalid and returns its
// problems.
func problemsOf(t *testing.T, yamlText string, env, overrides []string) []Problem {
	t.Helper()
	cfg, err := Parse([]byte(yamlText), "test.yaml", env, overrides)
	if err == nil {
		t.Fatalf("Parse succeeded, want problems; got %+v", cfg)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse error is %T (%v), want *ValidationError", err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatalf("ValidationError without problems")
	}
	return ve.Problems
}

// findProblem returns the first problem whose String contains want.
func findProblem(ps []Problem, want string) (Problem, bool) {
	for _, p := range ps {
		if strings.Contains(p.String(), want) {
			return p, true
		}
	}
	return Problem{}, false
}

// markedLine returns the 1-based line of text that carries "#<", which
// test cases put on the line a problem must point at.
func markedLine(t *testing.T, text string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "#<") {
			return i + 1
		}
	}
	t.Fatalf("no #< marker in test case")
	return 0
}

// writeFile writes data to name in dir and returns the path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testCert is a certificate with its key, made for one test.
type testCert struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte // PKCS#8
}

// newCert makes a self-signed certificate for key (RSA 2048 when nil)
// valid from notBefore to notAfter.
func newCert(t *testing.T, cn string, key crypto.Signer, notBefore, notAfter time.Time) testCert {
	t.Helper()
	if key == nil {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	k8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{
		cert:    c,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k8}),
	}
}

func validCert(t *testing.T, cn string) testCert {
	return newCert(t, cn, nil, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

func ecKey(t *testing.T) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

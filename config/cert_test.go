package config

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

const pfxPassword = "Pfx-pass-7731"

func TestLoadClientCertificate(t *testing.T) {
	dir := t.TempDir()
	leaf := validCert(t, "portcullis-client")
	other := validCert(t, "intermediate")
	rk := leaf.key.(*rsa.PrivateKey)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	modern, err := pkcs12.Modern.Encode(rk, leaf.cert, []*x509.Certificate{other.cert}, pfxPassword)
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := pkcs12.LegacyRC2.Encode(rk, leaf.cert, nil, pfxPassword)
	if err != nil {
		t.Fatal(err)
	}
	ec := newCert(t, "ec", ecKey(t), time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	expired := newCert(t, "expired", nil, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))

	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	tests := []struct {
		name     string
		data     []byte
		password string
		wantErr  string // empty: must load
		wantLen  int
	}{
		{"PEM with PKCS#8 key", cat(leaf.certPEM, leaf.keyPEM), "", "", 1},
		{"key first, intermediate before leaf", cat(leaf.keyPEM, other.certPEM, leaf.certPEM), "", "", 2},
		{"PKCS#1 key", cat(leaf.certPEM, pkcs1), "", "", 1},
		{"PFX, AES", modern, pfxPassword, "", 2},
		{"PFX, legacy RC2", legacy, pfxPassword, "", 1},
		{"PFX, wrong password", modern, "nope", "the PFX password is wrong", 0},
		{"not a certificate", []byte("hello"), "", "not a PEM or PFX certificate", 0},
		{"no key", leaf.certPEM, "", "no private key found", 0},
		{"no certificate", leaf.keyPEM, "", "no certificate found", 0},
		{"EC key", cat(ec.certPEM, ec.keyPEM), "", "must use RSA keys", 0},
		{"key of another certificate", cat(other.certPEM, leaf.keyPEM), "", "the private key matches none of the certificates", 0},
		{"two keys", cat(leaf.certPEM, leaf.keyPEM, pkcs1), "", "more than one private key", 0},
		{"expired", cat(expired.certPEM, expired.keyPEM), "", "expired on", 0},
		{"legacy encrypted PEM", cat(leaf.certPEM, []byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END RSA PRIVATE KEY-----\n")), "", "legacy encrypted PEM keys are not supported", 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, fmt.Sprintf("cert%d", i), tt.data)
			cc, err := LoadClientCertificate(path, tt.password)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("err %q does not name the file", err)
				}
				if tt.password != "" && strings.Contains(err.Error(), tt.password) {
					t.Error("the error shows the password")
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadClientCertificate: %v", err)
			}
			if len(cc.Chain) != tt.wantLen || !cc.Chain[0].Equal(leaf.cert) || !cc.Key.Equal(rk) {
				t.Errorf("got a chain of %d led by %q, want %d led by the leaf with its key", len(cc.Chain), cc.Chain[0].Subject, tt.wantLen)
			}
			s := fmt.Sprintf("%v %+v %#v", cc, *cc, cc)
			if strings.Contains(s, rk.D.String()) || !strings.Contains(s, "portcullis-client") {
				t.Errorf("rendering %q: want the subject and no key", s)
			}
		})
	}
	if _, err := LoadClientCertificate(filepath.Join(dir, "absent.pem"), ""); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file: err = %v", err)
	}
}

// opensslOrSkip returns the openssl binary, skipping the test without it
// (but failing under CI, where it must be installed).
func opensslOrSkip(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is not installed; CI must provide it")
		}
		t.Skip("SKIPPING: openssl is not installed; encrypted keys and openssl-made PFX files are not tested")
	}
	return p
}

func runOpenSSL(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestOpenSSLFormats reads what openssl writes by default: encrypted
// PKCS#8 keys and PKCS#12 files, in several ciphers.
func TestOpenSSLFormats(t *testing.T) {
	bin := opensslOrSkip(t)
	dir := t.TempDir()
	leaf := validCert(t, "portcullis-client")
	certPath := writeFile(t, dir, "cert.pem", leaf.certPEM)
	keyPath := writeFile(t, dir, "key.pem", leaf.keyPEM)
	pass := "pass:" + pfxPassword

	tests := []struct {
		name string
		args []string // writes OUT
		pem  bool     // OUT is a key to append to the certificate
	}{
		{"pkcs8 aes-256-cbc", []string{"pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", keyPath, "-passout", pass, "-out", "OUT"}, true},
		{"pkcs8 aes-128-cbc sha1", []string{"pkcs8", "-topk8", "-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1", "-in", keyPath, "-passout", pass, "-out", "OUT"}, true},
		{"pkcs8 des3 sha512", []string{"pkcs8", "-topk8", "-v2", "des3", "-v2prf", "hmacWithSHA512", "-in", keyPath, "-passout", pass, "-out", "OUT"}, true},
		{"pkcs12 default", []string{"pkcs12", "-export", "-in", certPath, "-inkey", keyPath, "-passout", pass, "-out", "OUT"}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(dir, fmt.Sprintf("out%d", i))
			args := slices.Clone(tt.args)
			args[slices.Index(args, "OUT")] = out
			runOpenSSL(t, bin, args...)
			path := out
			if tt.pem {
				enc, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(enc), "ENCRYPTED PRIVATE KEY") {
					t.Fatalf("openssl did not write an encrypted key:\n%s", enc)
				}
				path = writeFile(t, dir, fmt.Sprintf("bundle%d.pem", i), slices.Concat(leaf.certPEM, enc))
			}
			cc, err := LoadClientCertificate(path, pfxPassword)
			if err != nil {
				t.Fatalf("LoadClientCertificate: %v", err)
			}
			if !cc.Key.Equal(leaf.key) {
				t.Error("decrypted key differs from the original")
			}
			_, err = LoadClientCertificate(path, "wrong-"+pfxPassword)
			if err == nil || !strings.Contains(err.Error(), "wrong") || strings.Contains(err.Error(), pfxPassword) {
				t.Errorf("wrong password: err = %v, want a wrong-password error without the password", err)
			}
			if tt.pem {
				_, err = LoadClientCertificate(path, "")
				if err == nil || !strings.Contains(err.Error(), "set client_certificate_password_env") {
					t.Errorf("no password: err = %v", err)
				}
			}
		})
	}
}

func TestProviderCertificateFromConfig(t *testing.T) {
	dir := t.TempDir()
	leaf := validCert(t, "portcullis-client")
	rk := leaf.key.(*rsa.PrivateKey)
	pfx, err := pkcs12.Modern.Encode(rk, leaf.cert, nil, pfxPassword)
	if err != nil {
		t.Fatal(err)
	}
	pfxPath := writeFile(t, dir, "client.pfx", pfx)
	text := strings.Replace(minimal, "    client_id:", "    client_certificate_file: client.pfx\n    client_certificate_password_env: PFX_PASSWORD\n    client_id:", 1)
	cfgPath := writeFile(t, dir, "portcullis.yaml", []byte(text))

	cfg, err := Load(cfgPath, append(slices.Clone(minimalEnv), "PFX_PASSWORD="+pfxPassword), nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	p := cfg.Providers[0]
	if p.ClientCertificateFile != pfxPath || p.ClientCertificate == nil || !p.ClientCertificate.Key.Equal(rk) {
		t.Fatalf("certificate not loaded from %s: %+v", pfxPath, p)
	}
	if p.GraphAuth != GraphAuthApplication {
		t.Errorf("graph_auth = %q, want application with a certificate", p.GraphAuth)
	}
	assertNotPrinted(t, cfg, rk.D.String())
	assertNotPrinted(t, cfg, pfxPassword)

	tests := []struct {
		name string
		env  []string
		line int
		want string
	}{
		{"wrong password", []string{"PFX_PASSWORD=guess"}, 4, "providers[0].client_certificate_file: certificate " + pfxPath + ": the PFX password is wrong"},
		{"password variable unset", nil, 5, "providers[0].client_certificate_password_env: environment variable PFX_PASSWORD is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Check(cfgPath, append(slices.Clone(minimalEnv), tt.env...), nil)
			if err != nil {
				t.Fatal(err)
			}
			p, ok := findProblem(ps, tt.want)
			if !ok {
				t.Fatalf("no problem contains %q; got:\n%s", tt.want, Report(ps))
			}
			if p.Line != tt.line {
				t.Errorf("line %d, want %d", p.Line, tt.line)
			}
			if strings.Contains(Report(ps), pfxPassword) {
				t.Error("a problem shows the password")
			}
		})
	}
}

func TestTLSAndCAFiles(t *testing.T) {
	dir := t.TempDir()
	serving := validCert(t, "localhost")
	other := validCert(t, "other")
	cert := writeFile(t, dir, "tls.crt", serving.certPEM)
	key := writeFile(t, dir, "tls.key", serving.keyPEM)
	otherKey := writeFile(t, dir, "other.key", other.keyPEM)
	notPEM := writeFile(t, dir, "ca.txt", []byte("not a certificate\n"))

	cfg := mustParse(t, minimal+"tls:\n  cert_file: "+cert+"\n  key_file: "+key+"\n", minimalEnv, []string{"resources.0.tls.ca_file=" + cert, "providers.0.ca_file=" + cert})
	if cfg.Resources[0].TLS.Mode != BackendTLSVerifyFull {
		t.Errorf("a CA file on loopback: tls.mode = %q, want verify-full", cfg.Resources[0].TLS.Mode)
	}

	text := minimal + "tls:\n  cert_file: " + cert + " #<\n  key_file: " + otherKey + "\n"
	ps := problemsOf(t, text, minimalEnv, nil)
	if p, ok := findProblem(ps, "tls.cert_file: cannot use "+cert+" with "+otherKey); !ok || p.Line != markedLine(t, text) {
		t.Errorf("mismatched key pair: got %+v; all:\n%s", p, Report(ps))
	}
	ps = problemsOf(t, minimal, minimalEnv, []string{"providers.0.ca_file=" + notPEM})
	if _, ok := findProblem(ps, "providers[0].ca_file: file "+notPEM+" holds no PEM certificate"); !ok {
		t.Errorf("got:\n%s", Report(ps))
	}
}

package entrasim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Options tune the simulator. Zero values pick the documented defaults.
type Options struct {
	// Addr is where to listen; default "127.0.0.1:0".
	Addr string
	// DeviceCodeLifetime is how long a user code stays valid; default 15m
	// (Entra's is 15 minutes).
	DeviceCodeLifetime time.Duration
	// PollInterval is the interval advertised in the device-code response;
	// default 1s.
	PollInterval time.Duration
	// EnforcePollInterval answers slow_down to a device-code poll that
	// comes sooner than PollInterval after the previous one (RFC 8628).
	// Off by default: MSAL ignores the advertised interval and polls on its
	// own backoff, and Entra does not hold it to the interval either.
	// Server.ForceSlowDown injects slow_down deterministically.
	EnforcePollInterval bool
	// AccessTokenVersion is the access-token version the tenant's own
	// applications accept (Entra's accessTokenAcceptedVersion): 2 (the
	// default) gives aud = the application's app id; 1 gives v1 tokens whose
	// aud is the identifier URI or app id the client asked for. Graph and
	// other first-party resources always get v1 tokens.
	AccessTokenVersion int
	// AccessTokenLifetime is the lifetime of issued access tokens; default 1h.
	AccessTokenLifetime time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logf, if set, receives one line per request (never secrets).
	Logf func(format string, args ...any)
	// Middleware, if set, wraps the whole handler, outermost, so that a
	// test can watch every request and answer: a secret-hygiene test
	// collects the codes and tokens issued, to look for them in logs.
	Middleware func(http.Handler) http.Handler
}

// Server is a running simulator of Entra ID (login) and Microsoft Graph,
// both served over HTTPS from one address with a CA of its own.
type Server struct {
	opts Options

	mu  sync.Mutex
	dir *Directory

	caPEM   []byte
	caPool  *x509.CertPool
	tlsCert tls.Certificate

	keys   *keySet
	faults *faults

	ln  net.Listener
	srv *http.Server
	url string

	oauth *oauthState
}

// New starts a simulator for dir. Close it when done.
func New(dir *Directory, opts Options) (*Server, error) {
	if err := dir.Validate(); err != nil {
		return nil, fmt.Errorf("entrasim: %w", err)
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.DeviceCodeLifetime == 0 {
		opts.DeviceCodeLifetime = 15 * time.Minute
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	if opts.AccessTokenLifetime == 0 {
		opts.AccessTokenLifetime = time.Hour
	}
	if opts.AccessTokenVersion == 0 {
		opts.AccessTokenVersion = 2
	}
	if opts.AccessTokenVersion != 1 && opts.AccessTokenVersion != 2 {
		return nil, fmt.Errorf("entrasim: AccessTokenVersion %d: want 1 or 2", opts.AccessTokenVersion)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, dir: dir, faults: newFaults()}
	var err error
	if s.keys, err = newKeySet(); err != nil {
		return nil, fmt.Errorf("entrasim: signing key: %w", err)
	}
	if err := s.makeCertificates(); err != nil {
		return nil, fmt.Errorf("entrasim: certificates: %w", err)
	}
	s.ln, err = net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("entrasim: listen %s: %w", opts.Addr, err)
	}
	s.url = "https://" + s.ln.Addr().String()
	s.oauth = newOAuthState()

	mux := http.NewServeMux()
	s.routeOAuth(mux)
	s.routeGraph(mux)
	handler := s.logRequests(s.faults.wrap(mux))
	if opts.Middleware != nil {
		handler = opts.Middleware(handler)
	}
	s.srv = &http.Server{
		Handler:           handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{s.tlsCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		// Handshake failures from clients that do not trust the CA are
		// expected in tests; they go to Logf, not the process's stderr.
		ErrorLog: log.New(logfWriter{s}, "", 0),
	}
	go func() { _ = s.srv.ServeTLS(s.ln, "", "") }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return s.srv.Close()
	}
	return err
}

// URL is the base URL, e.g. https://127.0.0.1:44321. It plays the part of
// both https://login.microsoftonline.com and https://graph.microsoft.com.
func (s *Server) URL() string { return s.url }

// TenantID is the directory's tenant id.
func (s *Server) TenantID() string { return s.dir.Tenant.ID }

// Authority is the MSAL authority URL for the tenant: URL()/tenant-id.
func (s *Server) Authority() string { return s.url + "/" + s.dir.Tenant.ID }

// GraphEndpoint is the Graph root to configure (clients append /v1.0).
func (s *Server) GraphEndpoint() string { return s.url }

// CACertPEM is the PEM of the CA that signed the server's certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// WriteCAFile writes the CA certificate PEM to path.
func (s *Server) WriteCAFile(path string) error {
	return os.WriteFile(path, s.caPEM, 0o644)
}

// CertPool holds the simulator's CA.
func (s *Server) CertPool() *x509.CertPool { return s.caPool }

// HTTPClient returns a client that trusts the simulator's CA and nothing else.
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: s.caPool, MinVersion: tls.VersionTLS12},
			MaxIdleConnsPerHost: 64,
		},
	}
}

// Directory gives access to the live directory under the simulator's lock;
// fn may change it (add a group member, disable a user) and the change is
// visible to the next request.
func (s *Server) Directory(fn func(d *Directory)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s.dir)
}

// logfWriter adapts Options.Logf to the io.Writer that log.Logger needs.
type logfWriter struct{ s *Server }

func (w logfWriter) Write(p []byte) (int, error) {
	w.s.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *Server) now() time.Time { return s.opts.Now() }

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

func (s *Server) makeCertificates() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "entrasim CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "entrasim"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.caPool = x509.NewCertPool()
	s.caPool.AddCert(caCert)
	s.tlsCert = tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}
	return nil
}

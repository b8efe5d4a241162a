package compat

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/internal/testmysql"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
	"github.com/portcullisdb/portcullis/proxy/mysql"
	"github.com/portcullisdb/portcullis/proxy/postgres"
)

// The simulated tenant.
const (
	tenantID      = "8d2f4c1a-3b5e-4f6a-9c7d-1e2f3a4b5c6d"
	portcullisApp = "f3b2a1c0-9d8e-4f7a-8b6c-5d4e3f2a1b0c"
	providerName  = "contoso"
	userDomain    = "compat.example"
	groupAnalysts = "Analysts"
)

// The resources, two per protocol, in prompt: auto: on PostgreSQL notice
// mode, or error mode for clients portcullis knows hide notices while they
// connect; on MySQL retry mode, or the dialog for the mariadb command
// line. Of each pair the second requires TOTP. All reach a database named
// backendDB.
const (
	resourcePostgres     = "compat"
	resourcePostgresTOTP = "compat_totp"
	resourceMySQL        = "compat_my"
	resourceMySQLTOTP    = "compat_my_totp"
	backendDB            = "compat"
)

// signInPassword is what a person types when they have no session key:
// anything at all starts the device-code flow.
const signInPassword = "sign me in"

// Patterns in what portcullis tells a person (proxy/postgres wording).
var (
	codeRE       = regexp.MustCompile(`enter the code ([^\s,]+)`)
	sessionKeyRE = regexp.MustCompile(`session key as your password: (\S+)`)
)

// suite is what every client runs against: PostgreSQL with TLS behind
// portcullis, whose identity core signs people in against the Entra ID
// simulator.
type suite struct {
	sim  *entrasim.Server
	pg   *testpg.Server
	role testpg.Role // the backend role policy maps every client's user to
	// my is MariaDB, nil when it is not installed (myErr says why).
	my     *testmysql.Server
	myErr  error
	myUser testmysql.User

	host        string
	pgPort      int        // portcullis's PostgreSQL listener
	myPort      int        // portcullis's MySQL listener
	caFile      string     // the CA that issued portcullis's certificate
	wrongCAFile string     // a CA that did not
	clientCA    *testpg.CA // issues client certificates to clients that insist on one
	logs        *observer.ObservedLogs
	// totp checks the codes of the resources that require TOTP, on the
	// state store; the suite enrols people through it.
	totp *mfa.TOTP
}

// clients sign in as one user each, so that no sign-in stands in for
// another's; login is the user's UPN.
func login(slug string) string { return slug + "@" + userDomain }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// startSuite starts everything, stopped when t ends. slugs name the
// clients that will sign in.
func startSuite(t *testing.T, slugs []string) *suite {
	t.Helper()
	s := &suite{host: "127.0.0.1"}
	// Reachable only over TLS, so every session proves that portcullis's
	// backend connection was encrypted.
	s.role = testpg.Role{Name: "compat_rw", Password: "backend-" + randomHex(12), RequireTLS: true}
	s.pg = testpg.Start(t, testpg.Options{
		TLS:   true,
		Roles: []testpg.Role{s.role},
		Setup: []string{"CREATE DATABASE " + backendDB},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	su, err := s.pg.Superuser(ctx, backendDB)
	if err != nil {
		t.Fatal(err)
	}
	setup := `
		CREATE TABLE compat_rollback (client text NOT NULL, marker text NOT NULL);
		CREATE TABLE compat_pgbench (marker text NOT NULL, n int NOT NULL);
		GRANT SELECT, INSERT ON compat_rollback, compat_pgbench TO ` + s.role.Name
	if _, err := su.Exec(ctx, setup).ReadAll(); err != nil {
		t.Fatalf("set up the %s database: %v", backendDB, err)
	}
	su.Close(ctx)

	// MariaDB, if installed: without it the MySQL rows are skipped (and
	// fail under CI=true), the PostgreSQL rows still run.
	s.myUser = testmysql.User{Name: "compat_my", Password: "backend-" + randomHex(12), RequireTLS: true}
	s.my, s.myErr = testmysql.Launch(testmysql.Options{
		TLS:       true,
		Databases: []string{backendDB},
		Users:     []testmysql.User{s.myUser},
		Setup: []string{
			"CREATE TABLE " + backendDB + ".compat_rollback (client VARCHAR(128) NOT NULL, marker VARCHAR(64) NOT NULL) ENGINE=InnoDB",
			"CREATE TABLE " + backendDB + ".compat_bench (marker VARCHAR(64) NOT NULL, n INT NOT NULL) ENGINE=InnoDB",
		},
	})
	if s.myErr == nil {
		t.Cleanup(func() { s.my.Stop() })
	} else if !errors.Is(s.myErr, testmysql.ErrUnavailable) {
		t.Fatalf("start MariaDB: %v", s.myErr)
	}

	graphSecret := "graph-" + randomHex(16)
	var users []entrasim.User
	var members []string
	for i, slug := range slugs {
		upn := login(slug)
		users = append(users, entrasim.User{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i+1, i+1), UPN: upn, DisplayName: slug + " user"})
		members = append(members, upn)
	}
	s.sim, err = entrasim.New(&entrasim.Directory{
		Tenant:       entrasim.Tenant{ID: tenantID, Domain: userDomain, DisplayName: "Contoso (compatibility suite)"},
		Applications: []entrasim.Application{{AppID: portcullisApp, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis-compat"}, PublicClient: true}},
		Users:        users,
		Groups:       []entrasim.Group{{ID: "c0000001-0000-4000-8000-000000000001", DisplayName: groupAnalysts, Members: entrasim.GroupMembers{Users: members}}},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: "d0000001-0000-4000-8000-000000000001", AppID: portcullisApp, DisplayName: "portcullis", Secrets: []string{graphSecret}},
		},
	}, entrasim.Options{})
	if err != nil {
		t.Fatalf("start the Entra ID simulator: %v", err)
	}
	t.Cleanup(func() { s.sim.Close() })

	// portcullis's own certificate, from a CA the clients are told to
	// trust, and another CA they must not accept it from.
	dir := t.TempDir()
	ca, err := testpg.NewCA("portcullis compat CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testpg.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	s.clientCA = other
	s.caFile = filepath.Join(dir, "portcullis-ca.crt")
	s.wrongCAFile = filepath.Join(dir, "other-ca.crt")
	if err := os.WriteFile(s.caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.wrongCAFile, other.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}

	resource := func(name, protocol, addr, caFile, user, password string, requireTOTP bool) config.Resource {
		return config.Resource{
			Name: name, Protocol: protocol, Address: addr, Database: backendDB, Prompt: config.PromptAuto,
			TLS:         config.BackendTLS{Mode: config.BackendTLSVerifyFull, CAFile: caFile},
			AllowGroups: []string{groupAnalysts},
			Credentials: []config.CredentialMapping{{Groups: []string{groupAnalysts}, User: user, Password: config.NewSecret(password)}},
			RequireTOTP: requireTOTP,
		}
	}
	resources := []config.Resource{
		resource(resourcePostgres, config.ProtocolPostgres, s.pg.Addr(), s.pg.CAFile, s.role.Name, s.role.Password, false),
		resource(resourcePostgresTOTP, config.ProtocolPostgres, s.pg.Addr(), s.pg.CAFile, s.role.Name, s.role.Password, true),
	}
	listeners := []config.Listener{{Name: "pg", Protocol: config.ProtocolPostgres, TLS: config.ListenerTLSRequired, DefaultResource: resourcePostgres}}
	if s.my != nil {
		resources = append(resources,
			resource(resourceMySQL, config.ProtocolMySQL, s.my.Addr(), s.my.CAFile, s.myUser.Name, s.myUser.Password, false),
			resource(resourceMySQLTOTP, config.ProtocolMySQL, s.my.Addr(), s.my.CAFile, s.myUser.Name, s.myUser.Password, true))
		listeners = append(listeners, config.Listener{Name: "mysql", Protocol: config.ProtocolMySQL, TLS: config.ListenerTLSRequired, DefaultResource: resourceMySQL})
	}
	storeKey, err := store.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	noGrace := time.Duration(0)
	cfg := &config.Config{
		Providers: []config.Provider{{
			Name: providerName, TenantID: s.sim.TenantID(), ClientID: portcullisApp,
			AuthorityHost: s.sim.URL(), GraphEndpoint: s.sim.GraphEndpoint(),
			GraphAuth: config.GraphAuthApplication, ClientSecret: config.NewSecret(graphSecret),
			Audiences: []string{portcullisApp},
		}},
		Resources: resources,
		Listeners: listeners,
		// Every client connects from 127.0.0.1: address grace would let one
		// connection's sign-in stand in for the next, so it is off, and a
		// sign-in is reused only by its session key.
		Sessions: config.Sessions{TTL: time.Hour, AddressGrace: &noGrace},
		// TOTP secrets need a durable store, sealed with a key.
		Store: config.Store{Driver: config.StoreSQLite, Path: filepath.Join(dir, "portcullis.db"), Key: config.NewSecret(storeKey)},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the suite's configuration: %v", err)
	}

	core, logs := observer.New(zapcore.InfoLevel)
	s.logs = logs
	log := zap.New(core)
	hc := s.sim.HTTPClient()
	t.Cleanup(hc.CloseIdleConnections)
	// The state store, opened as serve opens it, backs the TOTP checker
	// only: sign-ins stay in the identity core's own memory.
	st, err := store.Open(ctx, cfg.Store)
	if err != nil {
		t.Fatalf("open the state store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	s.totp = mfa.New(st, mfa.Options{MaxFailures: cfg.MFA.MaxFailures, FailureWindow: cfg.MFA.FailureWindow})
	authz, err := auth.New(cfg, auth.Deps{Logger: log, HTTPClients: map[string]*http.Client{providerName: hc}, TOTP: s.totp})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the proxy: cleanups run last registered first.
	t.Cleanup(func() { authz.Close() })
	if err := authz.Start(ctx); err != nil {
		t.Fatalf("start the identity core: %v", err)
	}
	srv, err := proxy.New(cfg, proxy.Deps{
		Authorizer: authz,
		Protocols:  []proxy.Protocol{postgres.New(), mysql.New()},
		Logger:     log,
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if i == 0 {
			s.pgPort = port
		} else {
			s.myPort = port
		}
		go func() { served <- srv.Serve(context.Background(), ln, l) }()
	}
	t.Cleanup(func() {
		srv.Close()
		for range cfg.Listeners {
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
		if (t.Failed() || testing.Verbose()) && os.Getenv("COMPAT_DUMP_LOGS") != "" {
			for _, e := range logs.All() {
				t.Logf("log: %s %v", e.Message, e.ContextMap())
			}
		}
	})
	return s
}

// approve signs upn in with the code a client showed, as the person
// would in a browser.
func (s *suite) approve(code, upn string) error {
	if err := s.sim.Approve(code, upn); err != nil {
		return fmt.Errorf("approve the code %s showed: %w", upn, err)
	}
	return nil
}

// codesIssued counts the device codes portcullis has issued to user.
func (s *suite) codesIssued(user string) int {
	return s.logs.FilterField(zap.String("event", "auth.device_code.issued")).FilterField(zap.String("user", user)).Len()
}

// waitSignedIn waits until portcullis has finished a background
// (error-mode) sign-in for user: a reconnect before that would be told
// the same code again.
func (s *suite) waitSignedIn(ctx context.Context, user string) error {
	return poll(ctx, "the background sign-in of "+user, func() (bool, error) {
		for _, e := range s.logs.FilterField(zap.String("event", "auth.device_code.completed")).FilterField(zap.String("user", user)).All() {
			if r, failed := e.ContextMap()["reason"]; failed {
				return false, fmt.Errorf("the background sign-in of %s failed: %v", user, r)
			}
			return true, nil
		}
		return false, nil
	})
}

// poll calls done until it reports true or fails, or ctx ends.
func poll(ctx context.Context, what string, done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitRunning waits until a statement containing marker runs on b.
func waitRunning(ctx context.Context, b backend, marker string) error {
	return poll(ctx, "the statement to start", func() (bool, error) {
		n, err := b.running(ctx, marker)
		return n > 0, err
	})
}

// waitStopped waits until no statement containing marker runs on b any
// more.
func waitStopped(ctx context.Context, b backend, marker string) error {
	return poll(ctx, "the statement to stop on the server", func() (bool, error) {
		n, err := b.running(ctx, marker)
		return n == 0, err
	})
}

// dbError is a failure as a client reported it: the server's code
// (SQLSTATE for PostgreSQL, the error number for MySQL) and message, or
// no code for a failure on the client's side (TLS, the network).
type dbError struct {
	code    string
	message string
}

func (e *dbError) Error() string {
	if e.code == "" {
		return e.message
	}
	return e.code + ": " + e.message
}

// errCode is the server's code a client reported for err, or "".
func errCode(err error) string {
	var e *dbError
	if errors.As(err, &e) {
		return e.code
	}
	return ""
}

// mustHave fails (or, outside CI, skips) t when a client program is
// missing.
func mustHave(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("\n\n*** SKIPPING the %s client: %v ***\n*** install it with: bash .ci/compat-deps ***\n", what, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "*** CI=true: every client of the compatibility suite must run in CI ***")
	}
	t.Skip(msg)
}

// firstLine is the first line of s, for short reasons.
// lineMatching is the first line of s that re matches, or s's first line.
func lineMatching(s string, re *regexp.Regexp) string {
	for line := range strings.Lines(s) {
		if re.MatchString(line) {
			return strings.TrimSpace(line)
		}
	}
	return firstLine(s)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

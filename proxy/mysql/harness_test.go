package mysql

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	driver "github.com/go-sql-driver/mysql"
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
)

// Backend users, one per authentication plugin portcullis must log in
// with. app_native may only connect over TLS, so a session that works as
// app_native proves the backend connection was encrypted.
var (
	userNative  = testmysql.User{Name: "app_native", Password: "native-" + randomHex(8), RequireTLS: true}
	userEd25519 = testmysql.User{Name: "app_ed", Password: "ed-" + randomHex(8), Auth: testmysql.AuthEd25519}
)

var mariadb = testmysql.NewShared(testmysql.Options{
	TLS:       true,
	Databases: []string{"app"},
	Users:     []testmysql.User{userNative, userEd25519},
	Setup: []string{
		"CREATE TABLE app.accounts (id INT PRIMARY KEY, owner VARCHAR(64)) ENGINE=InnoDB",
		"INSERT INTO app.accounts VALUES (1, 'alice'), (2, 'bob')",
	},
})

func TestMain(m *testing.M) {
	code := m.Run()
	if err := mariadb.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop MariaDB:", err)
	}
	os.Exit(code)
}

// The simulated tenant: alice and bob are analysts, carol is in no group.
const (
	tenantID    = "7d1e2b3c-4a5f-4e6d-8c9b-0a1b2c3d4e5f"
	appID       = "0f6c1a2b-3c4d-4e5f-8a9b-1c2d3e4f5a6b"
	analystsID  = "a0000002-0000-4000-8000-000000000002"
	aliceUPN    = "alice@contoso.example"
	bobUPN      = "bob@contoso.example"
	carolUPN    = "carol@contoso.example"
	testTimeout = 30 * time.Second
)

var graphSecret = "graph-" + randomHex(16)

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func testDirectory() *entrasim.Directory {
	return &entrasim.Directory{
		Tenant: entrasim.Tenant{ID: tenantID, Domain: "contoso.example", DisplayName: "Contoso (test)"},
		Applications: []entrasim.Application{
			{AppID: appID, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis-test"}, PublicClient: true},
		},
		Users: []entrasim.User{
			{ID: "11111111-aaaa-4aaa-8aaa-111111111111", UPN: aliceUPN, DisplayName: "Alice Analyst"},
			{ID: "22222222-bbbb-4bbb-8bbb-222222222222", UPN: bobUPN, DisplayName: "Bob Analyst"},
			{ID: "33333333-cccc-4ccc-8ccc-333333333333", UPN: carolUPN, DisplayName: "Carol Contractor"},
		},
		Groups: []entrasim.Group{
			{ID: analystsID, DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{aliceUPN, bobUPN}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: "b0000002-0000-4000-8000-000000000002", AppID: appID, DisplayName: "portcullis", Secrets: []string{graphSecret}},
		},
	}
}

// harness is portcullis, with the real auth.Authorizer against the
// Entra ID simulator, in front of the shared MariaDB.
type harness struct {
	t      *testing.T
	db     *testmysql.Server
	sim    *entrasim.Server
	cfg    *config.Config
	srv    *proxy.Server
	addr   string
	caFile string
	tlsCfg *tls.Config // what clients use to verify portcullis
	logs   *observer.ObservedLogs
	http   *http.Client // the identity core's, to Entra ID and Graph
	totp   *mfa.TOTP    // with harnessOptions.totp: the identity core's
	store  store.Store  // with harnessOptions.totp: the identity core's
}

type harnessOptions struct {
	prompt    string        // the resources' prompt setting
	grace     time.Duration // sessions.address_grace
	cleartext bool          // AskCleartext
	drain     time.Duration
	handshake time.Duration // proxy.handshake_timeout; 10 s when zero
	// totp adds the resource "app_totp" (as app, with require_totp) and
	// keeps state in a real SQLite store in a temporary directory.
	totp bool
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	db := mariadb.Server(t)
	h := &harness{t: t, db: db}

	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	h.sim = sim

	ca, err := testpg.NewCA("portcullis test CA")
	if err != nil {
		t.Fatal(err)
	}
	h.caFile = filepath.Join(t.TempDir(), "portcullis-ca.crt")
	if err := os.WriteFile(h.caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	h.tlsCfg = &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}

	mapping := func(u testmysql.User) []config.CredentialMapping {
		return []config.CredentialMapping{{Groups: []string{"Analysts"}, User: u.Name, Password: config.NewSecret(u.Password)}}
	}
	resource := func(name string, u testmysql.User, tlsMode string) config.Resource {
		r := config.Resource{
			Name: name, Protocol: config.ProtocolMySQL, Address: db.Addr(), Database: "app", Prompt: opts.prompt,
			AllowGroups: []string{"Analysts"}, Credentials: mapping(u), ConnectTimeout: 10 * time.Second,
			TLS: config.BackendTLS{Mode: tlsMode},
		}
		if tlsMode == config.BackendTLSVerifyFull {
			r.TLS.CAFile = db.CAFile
		}
		return r
	}
	gone := resource("gone", userNative, config.BackendTLSDisable)
	gone.Address = closedAddress(t)
	wrongCA := resource("wrong_ca", userNative, config.BackendTLSVerifyFull)
	wrongCA.TLS.CAFile = h.caFile
	grace := opts.grace
	h.cfg = &config.Config{
		Providers: []config.Provider{{
			Name: "contoso", TenantID: tenantID, ClientID: appID,
			AuthorityHost: sim.URL(), GraphEndpoint: sim.GraphEndpoint(), GraphAuth: "application",
			ClientSecret: config.NewSecret(graphSecret), Audiences: []string{appID},
		}},
		Resources: []config.Resource{
			resource("app", userNative, config.BackendTLSVerifyFull),
			resource("app_ed", userEd25519, config.BackendTLSDisable),
			gone,
			wrongCA,
		},
		Listeners: []config.Listener{{Name: "mysql", Protocol: config.ProtocolMySQL, TLS: config.ListenerTLSRequired, DefaultResource: "app"}},
		Sessions:  config.Sessions{TTL: time.Hour, AddressGrace: &grace},
		Proxy:     config.Proxy{HandshakeTimeout: 10 * time.Second, DrainTimeout: opts.drain},
	}

	if opts.handshake > 0 {
		h.cfg.Proxy.HandshakeTimeout = opts.handshake
	}
	h.http = sim.HTTPClient()
	deps := auth.Deps{HTTPClients: map[string]*http.Client{"contoso": h.http}}
	if opts.totp {
		vault := resource("app_totp", userNative, config.BackendTLSVerifyFull)
		vault.RequireTOTP = true
		h.cfg.Resources = append(h.cfg.Resources, vault)
		st := sqliteStore(t)
		h.totp, h.store = mfa.New(st, mfa.Options{}), st
		deps.Sessions, deps.TOTP = st, h.totp
	}
	az, err := auth.New(h.cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := az.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { az.Close() })

	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	var popts []Option
	if opts.cleartext {
		popts = append(popts, AskCleartext())
	}
	h.srv, err = proxy.New(h.cfg, proxy.Deps{
		Authorizer: az,
		Protocols:  []proxy.Protocol{New(popts...)},
		Logger:     zap.New(core),
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, h.cfg.Listeners[0]) }()
	t.Cleanup(func() {
		h.srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			for _, e := range h.logs.All() {
				t.Logf("log: %s %v", e.Message, e.ContextMap())
			}
		}
	})
	return h
}

func (h *harness) port() int {
	_, p, _ := net.SplitHostPort(h.addr)
	n, _ := strconv.Atoi(p)
	return n
}

var registerTLS sync.Map

// dsn is a go-sql-driver DSN for portcullis, verifying its certificate.
func (h *harness) dsn(user, password, database, params string) string {
	name := "portcullis-" + h.caFile
	if _, loaded := registerTLS.LoadOrStore(name, true); !loaded {
		if err := driver.RegisterTLSConfig(name, h.tlsCfg); err != nil {
			h.t.Fatal(err)
		}
	}
	cfg := driver.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = user, password, "tcp", h.addr, database
	cfg.TLSConfig = name
	cfg.Timeout = 20 * time.Second
	dsn := cfg.FormatDSN()
	if params != "" {
		if bytes.ContainsRune([]byte(dsn), '?') {
			dsn += "&" + params
		} else {
			dsn += "?" + params
		}
	}
	return dsn
}

// open opens one go-sql-driver connection (a pool of one).
func (h *harness) open(user, password, database, params string) *sql.DB {
	h.t.Helper()
	db, err := sql.Open("mysql", h.dsn(user, password, database, params))
	if err != nil {
		h.t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	h.t.Cleanup(func() { db.Close() })
	return db
}

// approveNext approves, as upn, the next device code the simulator
// issues.
func (h *harness) approveNext(ctx context.Context, upn string) string {
	h.t.Helper()
	pc, err := h.sim.WaitForDeviceCode(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.sim.Approve(pc.UserCode, upn); err != nil {
		h.t.Fatal(err)
	}
	return pc.UserCode
}

// events returns the logged entries named event.
func (h *harness) events(event string) []observer.LoggedEntry {
	return h.logs.FilterField(zap.String("event", event)).All()
}

// waitEvent polls the log until an entry named event satisfies ok.
func (h *harness) waitEvent(event string, ok func(map[string]any) bool) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range h.events(event) {
			if m := e.ContextMap(); ok == nil || ok(m) {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("no %s event within 10s", event)
	return nil
}

// noSecretsLogged fails the test if any of secrets appears in a log
// entry.
func (h *harness) noSecretsLogged(secrets ...string) {
	h.t.Helper()
	for _, e := range h.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				h.t.Errorf("a secret reached the log in %q", e.Message)
			}
		}
	}
}

// myErr is err as a MySQL error, or nil.
func myErr(err error) *driver.MySQLError {
	var e *driver.MySQLError
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// closedAddress is a loopback address nothing listens on.
func closedAddress(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

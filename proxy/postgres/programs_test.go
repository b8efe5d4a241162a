package postgres

// Programs as users, through the whole PostgreSQL front door: service
// principals and Entra tokens as passwords, the Azure Database
// pass-through, and continuous authorization. The identity core is the
// real one, with the real state store (SQLite), against the simulator;
// the backend is the real PostgreSQL, except where Azure Database is
// needed (see progProbe).

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
)

// The program of these tests: a service principal in Finance.
const (
	progAppID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
	progOID   = "b0000009-0000-4000-8000-000000000009"
	progName  = "reporting-bot"
)

// progSecret is the program's client secret, random per run.
var progSecret = "bot-" + graphSecret[len("graph-"):]

// progHarness is portcullis with a state store, continuous authorization
// every recheck, a resource reaching the real PostgreSQL and one
// reaching the Azure Database probe.
type progHarness struct {
	*harness
	store store.Store
	totp  *mfa.TOTP
	probe *progProbe
}

// addProgram puts the service principal in the directory, in Finance,
// until the test ends.
func addProgram(t *testing.T) {
	t.Helper()
	sim.Directory(func(d *entrasim.Directory) {
		d.ServicePrincipals = append(d.ServicePrincipals, entrasim.ServicePrincipal{ID: progOID, AppID: progAppID, DisplayName: progName, Secrets: []string{progSecret}})
		g := d.GroupByName("Finance")
		g.Members.ServicePrincipals = append(g.Members.ServicePrincipals, progName)
	})
	t.Cleanup(func() {
		sim.Directory(func(d *entrasim.Directory) {
			d.ServicePrincipals = d.ServicePrincipals[:len(d.ServicePrincipals)-1]
			g := d.GroupByName("Finance")
			g.Members.ServicePrincipals = nil
		})
	})
}

// withoutMember removes upn (or a service principal) from group until
// the test ends.
func withoutMember(t *testing.T, group, member string) {
	t.Helper()
	drop := func(list []string) []string {
		var out []string
		for _, m := range list {
			if !strings.EqualFold(m, member) {
				out = append(out, m)
			}
		}
		return out
	}
	var saved entrasim.GroupMembers
	sim.Directory(func(d *entrasim.Directory) {
		g := d.GroupByName(group)
		saved = entrasim.GroupMembers{
			Users:             append([]string(nil), g.Members.Users...),
			ServicePrincipals: append([]string(nil), g.Members.ServicePrincipals...),
			Groups:            append([]string(nil), g.Members.Groups...),
		}
		g.Members.Users, g.Members.ServicePrincipals = drop(g.Members.Users), drop(g.Members.ServicePrincipals)
	})
	t.Cleanup(func() { sim.Directory(func(d *entrasim.Directory) { d.GroupByName(group).Members = saved }) })
}

func newProgHarness(t *testing.T, recheck time.Duration, recheckFailures int) *progHarness {
	t.Helper()
	addProgram(t)
	srv := pg.Server(t)
	h := &harness{t: t, pg: srv, host: "127.0.0.1"}
	ca, err := testpg.NewCA("portcullis test CA")
	if err != nil {
		t.Fatal(err)
	}
	h.ca = ca
	h.caFile = filepath.Join(t.TempDir(), "portcullis-ca.crt")
	if err := os.WriteFile(h.caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	probe := startProbe(t)
	provider := providerConfig()
	provider.Audiences = append(provider.Audiences, auth.OSSRDBMSAudience)
	noGrace := time.Duration(0)
	h.cfg = &config.Config{
		Providers: []config.Provider{provider},
		Resources: []config.Resource{
			{
				Name: "analytics", Protocol: "postgres", Address: srv.Addr(), Database: "analytics",
				TLS:         config.BackendTLS{Mode: config.BackendTLSVerifyFull, CAFile: srv.CAFile},
				AllowGroups: []string{"Analysts", "Finance"},
				Credentials: []config.CredentialMapping{
					{Groups: []string{"Analysts"}, User: roleAnalyst.Name, Password: config.NewSecret(roleAnalyst.Password)},
					{Groups: []string{"Finance"}, User: roleFinance.Name, Password: config.NewSecret(roleFinance.Password)},
				},
				ConnectTimeout: 10 * time.Second,
			},
			{
				Name: "azure", Protocol: "postgres", Address: probe.addr(), Database: "azdb",
				TLS:            config.BackendTLS{Mode: config.BackendTLSDisable},
				AllowGroups:    []string{"Analysts", "Finance"},
				Credentials:    []config.CredentialMapping{{Groups: []string{"Analysts", "Finance"}, Entra: true}},
				ConnectTimeout: 10 * time.Second,
			},
		},
		Listeners: []config.Listener{{Name: "pg", Protocol: "postgres", TLS: config.ListenerTLSRequired, DefaultResource: "analytics"}},
		Proxy:     config.Proxy{HandshakeTimeout: 10 * time.Second},
		Sessions:  config.Sessions{TTL: 12 * time.Hour, AddressGrace: &noGrace},
		MFA:       config.MFA{MaxFailures: 3, FailureWindow: 15 * time.Minute},
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	h.http = sim.HTTPClient()
	t.Cleanup(h.http.CloseIdleConnections)

	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "state.db"), store.Keys{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	totp := mfa.New(st, mfa.Options{MaxFailures: h.cfg.MFA.MaxFailures, FailureWindow: h.cfg.MFA.FailureWindow})
	h.authz = progAuthorizer(t, h.cfg, h.http, zap.New(core), st, totp)
	h.srv, err = proxy.New(h.cfg, proxy.Deps{
		Authorizer: h.authz,
		Protocols:  []proxy.Protocol{New()},
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
	h.port = ln.Addr().(*net.TCPAddr).Port
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, h.cfg.Listeners[0]) }()
	rctx, stopRecheck := context.WithCancel(context.Background())
	rechecked := make(chan struct{})
	go func() {
		defer close(rechecked)
		h.srv.RecheckSessions(rctx, h.authz, proxy.RecheckOptions{Every: recheck, MaxFailures: recheckFailures})
	}()
	t.Cleanup(func() {
		stopRecheck()
		<-rechecked
		h.srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			h.dumpLogs()
		}
	})
	return &progHarness{harness: h, store: st, totp: totp, probe: probe}
}

// progAuthorizer is the identity core on the state store: session keys,
// the lockout and access keys live there. Its Graph client caches
// nothing, so every decision and recheck reads the directory as it is.
func progAuthorizer(t *testing.T, cfg *config.Config, hc *http.Client, log *zap.Logger, st store.Store, totp *mfa.TOTP) *auth.Authorizer {
	t.Helper()
	cred, err := confidential.NewCredFromSecret(graphSecret)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
		Authority: sim.Authority(), ClientID: portcullisApp, Credential: cred,
		Endpoint: sim.GraphEndpoint(), HTTPClient: hc, DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := graph.New(graph.Options{Endpoint: sim.GraphEndpoint(), HTTPClient: hc, Tokens: tokens, MaxRetries: 1, CacheTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(cfg, auth.Deps{
		Logger:      log,
		HTTPClients: map[string]*http.Client{providerName: hc},
		Groups:      map[string]auth.GroupSource{providerName: &auth.GraphGroups{Client: gc, AppOnly: true}},
		Sessions:    st,
		TOTP:        totp,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("start the identity core: %v", err)
	}
	return a
}

// progProbe stands in for Azure Database, which cannot run here: a
// PostgreSQL-protocol listener that asks for a cleartext password, as
// Azure Database does, records the user and password portcullis logs in
// with, and then acts as an idle server. PostgreSQL itself cannot check
// an Entra token, so this wire-level probe is what shows that the token
// reaches the backend; the test checks the token against the simulator's
// keys, as Azure Database would.
type progProbe struct {
	ln net.Listener

	mu     sync.Mutex
	logins []progLogin
}

type progLogin struct{ user, database, password string }

func startProbe(t *testing.T) *progProbe {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &progProbe{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				p.serve(c)
			}()
		}
	}()
	return p
}

func (p *progProbe) addr() string { return p.ln.Addr().String() }

func (p *progProbe) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	be := pgproto3.NewBackend(c, c)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	startup, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if be.Flush() != nil {
		return
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return
	}
	m, err := be.Receive()
	if err != nil {
		return
	}
	pw, ok := m.(*pgproto3.PasswordMessage)
	if !ok {
		return
	}
	p.mu.Lock()
	p.logins = append(p.logins, progLogin{user: startup.Parameters["user"], database: startup.Parameters["database"], password: pw.Password})
	p.mu.Unlock()
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "16.0 (Azure Database probe)"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	c.SetDeadline(time.Time{})
	for {
		m, err := be.Receive()
		if err != nil {
			return
		}
		switch m.(type) {
		case *pgproto3.Terminate:
			return
		case *pgproto3.Query:
			be.Send(&pgproto3.EmptyQueryResponse{})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		}
	}
}

func (p *progProbe) last(t *testing.T) progLogin {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.logins) == 0 {
		t.Fatal("portcullis never logged in to the Azure Database probe")
	}
	return p.logins[len(p.logins)-1]
}

// simClaims verifies token against the simulator's published keys and
// returns its claims.
func simClaims(t *testing.T, token string) jwt.MapClaims {
	t.Helper()
	resp, err := sim.HTTPClient().Get(sim.Authority() + "/discovery/v2.0/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Keys []struct{ Kid, N, E string } `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	_, err = jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired()).ParseWithClaims(token, claims, func(tok *jwt.Token) (any, error) {
		for _, k := range doc.Keys {
			if k.Kid == tok.Header["kid"] {
				n, _ := base64.RawURLEncoding.DecodeString(k.N)
				e, _ := base64.RawURLEncoding.DecodeString(k.E)
				return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
			}
		}
		return nil, errors.New("unknown kid")
	})
	if err != nil {
		t.Fatalf("the token the backend received does not verify against the simulator's keys: %v", err)
	}
	return claims
}

// userToken is an Entra access token for upn, for audience.
func userToken(t *testing.T, upn, audience string, version int) string {
	t.Helper()
	tok, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: audience, ClientID: "04b07795-8ddb-461a-bbee-02f9e1bf7b46", Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestServicePrincipalLogin(t *testing.T) {
	h := newProgHarness(t, time.Hour, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("pgx", func(t *testing.T) {
		c, err := pgconn.ConnectConfig(ctx, h.config(progAppID, progSecret, "analytics"))
		if err != nil {
			t.Fatalf("connect as the service principal: %v", err)
		}
		defer c.Close(ctx)
		if got := currentUser(ctx, t, c); got != roleFinance.Name {
			t.Errorf("current_user = %q, want %q (Finance's mapping)", got, roleFinance.Name)
		}
	})

	t.Run("psql by display name", func(t *testing.T) {
		run := h.psql(ctx, "spn:"+progName, "analytics", map[string]string{"PGPASSWORD": progSecret}, "select current_user")
		if err := run.cmd.Run(); err != nil {
			t.Fatalf("psql: %v\n%s", err, run.stderr)
		}
		if got := strings.TrimSpace(run.stdout.String()); got != roleFinance.Name {
			t.Errorf("psql printed %q, want %q", got, roleFinance.Name)
		}
	})

	t.Run("a pool of 50 costs one grant", func(t *testing.T) {
		// A secret not yet proven in this process.
		sim.Directory(func(d *entrasim.Directory) {
			sp := d.ServicePrincipalByName(progName)
			sp.Secrets = append(sp.Secrets, progSecret+"-pool")
		})
		before := sim.Requests(entrasim.EndpointToken)
		const pool = 50
		conns := make(chan *pgconn.PgConn, pool)
		errs := make(chan error, pool)
		var wg sync.WaitGroup
		for i := 0; i < pool; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := pgconn.ConnectConfig(ctx, h.config(progAppID, progSecret+"-pool", "analytics"))
				if err != nil {
					errs <- err
					return
				}
				conns <- c
			}()
		}
		wg.Wait()
		close(conns)
		close(errs)
		for c := range conns {
			c.Close(ctx)
		}
		for err := range errs {
			t.Errorf("a connection of the pool failed: %v", err)
		}
		if got := sim.Requests(entrasim.EndpointToken) - before; got != 1 {
			t.Errorf("%d connections cost %d token requests, want 1", pool, got)
		}
	})
}

func TestServicePrincipalWrongSecretsLockOut(t *testing.T) {
	h := newProgHarness(t, time.Hour, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func(secret string) error {
		c, err := pgconn.ConnectConfig(ctx, h.config(progAppID, secret, "analytics"))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	for i := 0; i < h.cfg.MFA.MaxFailures; i++ {
		err := connect("wrong-" + progSecret)
		if code := pgCode(err); code != codeInvalidPassword {
			t.Fatalf("wrong secret %d: %v, want 28P01", i+1, err)
		}
		if strings.Contains(err.Error(), progSecret) {
			t.Fatalf("the error repeats the secret")
		}
	}
	// Locked: even the right secret is refused, before Entra is asked.
	before := sim.Requests(entrasim.EndpointToken)
	err := connect(progSecret)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != codeInvalidAuthorization || !strings.Contains(pgErr.Message, "too many wrong secrets") {
		t.Fatalf("right secret while locked: %v, want 28000 saying it is locked", err)
	}
	if got := sim.Requests(entrasim.EndpointToken); got != before {
		t.Errorf("a locked principal cost %d token requests", got-before)
	}
	// The same counter as TOTP: the operator sees it, and resets it.
	st, err := h.totp.Status(ctx, mfa.NewUser(providerName, progAppID))
	if err != nil || !st.Failures.Locked(time.Now()) {
		t.Fatalf("TOTP status of the app id = %+v, %v; want locked", st.Failures, err)
	}
	if _, err := h.totp.Reset(ctx, mfa.NewUser(providerName, progAppID)); err != nil {
		t.Fatal(err)
	}
	if err := connect(progSecret); err != nil {
		t.Errorf("after a reset: %v", err)
	}
}

func TestEntraTokensAsPasswords(t *testing.T) {
	h := newProgHarness(t, time.Hour, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	appToken, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: progName, Audience: portcullisApp, ClientID: progAppID, Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		user     string
		password string
		want     string // current_user, or
		wantCode string // a refusal
	}{
		{name: "user token v2", user: alice, password: userToken(t, alice, portcullisApp, 2), want: roleAnalyst.Name},
		{name: "user token v1 for Azure Database", user: alice, password: userToken(t, alice, auth.OSSRDBMSAudience, 1), want: roleAnalyst.Name},
		{name: "application token", user: progAppID, password: appToken, want: roleFinance.Name},
		{name: "token for another audience", user: alice, password: userToken(t, alice, "api://someone-else", 2), wantCode: codeInvalidPassword},
		{name: "another user's token", user: carol, password: userToken(t, alice, portcullisApp, 2), wantCode: codeInvalidAuthorization},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := h.psql(ctx, tt.user, "analytics", map[string]string{"PGPASSWORD": tt.password}, "select current_user")
			err := run.cmd.Run()
			if tt.wantCode != "" {
				if err == nil || !strings.Contains(run.stderr.String(), "FATAL") {
					t.Fatalf("psql was let in (%v), want a FATAL refusal; stderr %q", err, run.stderr)
				}
				// psql does not print SQLSTATEs; pgx shows the code.
				_, perr := pgconn.ConnectConfig(ctx, h.config(tt.user, tt.password, "analytics"))
				if code := pgCode(perr); code != tt.wantCode {
					t.Errorf("pgx: %v, want SQLSTATE %s", perr, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, run.stderr)
			}
			if got := strings.TrimSpace(run.stdout.String()); got != tt.want {
				t.Errorf("current_user = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEntraPassThroughReachesTheBackend(t *testing.T) {
	h := newProgHarness(t, time.Hour, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("from a device-code sign-in", func(t *testing.T) {
		c, _, err := h.connectSigningIn(ctx, alice, "azure", alice)
		if err != nil {
			t.Fatalf("sign in to the entra resource: %v", err)
		}
		defer c.Close(ctx)
		login := h.probe.last(t)
		if login.user != alice || login.database != "azdb" {
			t.Errorf("backend login as %q to %q, want %q to azdb", login.user, login.database, alice)
		}
		claims := simClaims(t, login.password)
		if claims["aud"] != auth.OSSRDBMSAudience || claims["oid"] != oids[alice] || claims["upn"] != alice {
			t.Errorf("backend token claims: aud %v, oid %v, upn %v; want Azure Database, alice", claims["aud"], claims["oid"], claims["upn"])
		}
	})

	t.Run("the token the client presented", func(t *testing.T) {
		tok := userToken(t, alice, auth.OSSRDBMSAudience, 1)
		c, err := pgconn.ConnectConfig(ctx, h.config(alice, tok, "azure"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if login := h.probe.last(t); login.password != tok || login.user != alice {
			t.Errorf("backend login as %q with another password, want %q with the presented token", login.user, alice)
		}
	})

	t.Run("a service principal's own token", func(t *testing.T) {
		c, err := pgconn.ConnectConfig(ctx, h.config(progAppID, progSecret, "azure"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		login := h.probe.last(t)
		claims := simClaims(t, login.password)
		if login.user != progName || claims["aud"] != auth.OSSRDBMSAudience || claims["oid"] != progOID {
			t.Errorf("backend login as %q, token aud %v oid %v; want %s with its own token", login.user, claims["aud"], claims["oid"], progName)
		}
	})

	t.Run("a token for portcullis cannot be passed on", func(t *testing.T) {
		_, err := pgconn.ConnectConfig(ctx, h.config(alice, userToken(t, alice, portcullisApp, 2), "azure"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != codeInvalidAuthorization || !strings.Contains(pgErr.Message, auth.OSSRDBMSAudience) {
			t.Errorf("got %v, want 28000 naming the audience needed", err)
		}
	})
}

// waitRevoked runs a query on c until the session ends, and returns the
// error that ended it.
func waitRevoked(t *testing.T, ctx context.Context, c *pgconn.PgConn) *pgconn.PgError {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		_, err := c.Exec(ctx, "select 1").ReadAll()
		if err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("the session ended without an error message: %v", err)
			}
			return pgErr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the session was not ended within 20s")
	return nil
}

func TestRevokedWhenRemovedFromTheGroup(t *testing.T) {
	h := newProgHarness(t, 200*time.Millisecond, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// An open psql session running a long query...
	run := h.psql(ctx, alice, "analytics", map[string]string{"PGPASSWORD": userToken(t, alice, portcullisApp, 2)}, "select pg_sleep(60)")
	run.start(t, func(string) {})
	waitRunning(t, h.harness, "select pg_sleep(60)")
	// ...and a pgx one of carol's, who stays.
	carolConn, err := pgconn.ConnectConfig(ctx, h.config(carol, userToken(t, carol, portcullisApp, 2), "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer carolConn.Close(ctx)

	withoutMember(t, "Analysts", alice)
	err = run.wait()
	if err == nil {
		t.Fatalf("psql ended cleanly; stdout %q", run.stdout.String())
	}
	if !strings.Contains(run.stderr.String(), "access revoked: "+alice+" is not in any group allowed to use") {
		t.Errorf("psql stderr = %q, want the revocation", run.stderr.String())
	}
	ev := h.waitEvent("session.revoked", func(m map[string]any) bool { return m["user"] == alice })
	if ev["reason"] != "not_allowed" {
		t.Errorf("session.revoked reason = %v", ev["reason"])
	}
	h.waitEvent("session.ended", func(m map[string]any) bool { return m["user"] == alice && m["reason"] == "revoked" })

	// Carol's session, checked in the same round, lives on.
	if _, err := carolConn.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Errorf("carol's session: %v", err)
	}
	if got := len(h.events("session.revoked")); got != 1 {
		t.Errorf("%d sessions revoked, want alice's only", got)
	}
}

func TestRevokedWhenDisabled(t *testing.T) {
	h := newProgHarness(t, 200*time.Millisecond, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, h.config(dave, userToken(t, dave, portcullisApp, 2), "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	setEnabled(t, dave, false)
	pgErr := waitRevoked(t, ctx, c)
	if pgErr.Code != codeInvalidAuthorization || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, "access revoked: the account of "+dave+" is disabled") {
		t.Errorf("got %s %s %q, want FATAL 28000 access revoked", pgErr.Severity, pgErr.Code, pgErr.Message)
	}
	h.waitEvent("session.revoked", func(m map[string]any) bool { return m["user"] == dave && m["reason"] == "disabled" })
}

func TestRevokedServicePrincipal(t *testing.T) {
	h := newProgHarness(t, 200*time.Millisecond, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var conns []*pgconn.PgConn
	for i := 0; i < 3; i++ {
		c, err := pgconn.ConnectConfig(ctx, h.config(progAppID, progSecret, "analytics"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		conns = append(conns, c)
	}
	withoutMember(t, "Finance", progName)
	for _, c := range conns {
		if pgErr := waitRevoked(t, ctx, c); pgErr.Code != codeInvalidAuthorization || !strings.Contains(pgErr.Message, "access revoked") {
			t.Errorf("got %s %q", pgErr.Code, pgErr.Message)
		}
	}
	if n := len(h.events("session.revoked")); n != 3 {
		t.Errorf("%d session.revoked events, want 3", n)
	}
}

// A Graph outage does not end sessions at once: only after
// authz.recheck_failures rechecks in a row without an answer.
func TestRecheckToleratesABriefOutage(t *testing.T) {
	h := newProgHarness(t, 200*time.Millisecond, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, h.config(alice, userToken(t, alice, portcullisApp, 2), "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	graphDown(t)
	pgErr := waitRevoked(t, ctx, c)
	if pgErr.Code != codeInvalidAuthorization || !strings.Contains(pgErr.Message, "access revoked") {
		t.Errorf("got %s %q", pgErr.Code, pgErr.Message)
	}
	failed := h.events("session.recheck_failed")
	if len(failed) != 2 {
		t.Errorf("%d session.recheck_failed events before the end, want 2 (authz.recheck_failures 3)", len(failed))
	}
	ev := h.waitEvent("session.revoked", nil)
	if ev["reason"] != "unavailable" {
		t.Errorf("session.revoked reason = %v, want unavailable", ev["reason"])
	}
}

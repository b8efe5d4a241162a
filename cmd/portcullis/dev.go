package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver for the demo setup
	"github.com/jackc/pgx/v5"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/internal/store"
)

// Demo roles created in the local PostgreSQL and MySQL; policy maps groups
// to them.
const (
	devAnalystRole = "portcullis_demo_analyst"
	devFinanceRole = "portcullis_demo_finance"
	// devMySQLResource is the MySQL resource; devMySQLDatabase the
	// database made for it.
	devMySQLResource = "demo_mysql"
	devMySQLDatabase = "portcullis_demo"
)

func cmdDev(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr)
	dirFile := fs.String("directory", filepath.Join("testdata", "directory", "demo.yaml"), "the simulated tenant: users, groups, applications")
	simAddr := fs.String("sim-addr", "127.0.0.1:18443", "address of the simulated Entra ID and Graph")
	pgListen := fs.String("postgres-listen", "127.0.0.1:15432", "address of the PostgreSQL listener")
	pgBackend := fs.String("postgres-backend", "127.0.0.1:5432", "the local PostgreSQL behind the proxy")
	pgAdmin := fs.String("postgres-admin-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "connection used once to create the demo roles")
	myListen := fs.String("mysql-listen", "127.0.0.1:13306", "address of the MySQL listener")
	myBackend := fs.String("mysql-backend", "127.0.0.1:3306", "the local MariaDB or MySQL behind the proxy (empty: no MySQL listener)")
	myAdmin := fs.String("mysql-admin-dsn", "root@tcp(127.0.0.1:3306)/", "connection used once to create the demo users and database")
	stateDir := fs.String("state-dir", "", "where dev keeps its config, CA and secrets (default: the user cache directory)")
	logFormat := fs.String("log-format", "console", "json or console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	stateDirGiven := *stateDir != ""
	if !stateDirGiven {
		var err error
		if *stateDir, err = devStateDir(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*stateDir, 0o700); err != nil {
		return fmt.Errorf("create dev state directory: %w", err)
	}

	dir, err := entrasim.LoadDirectory(*dirFile)
	if err != nil {
		return fmt.Errorf("%w (run dev from the repository root, or pass --directory)", err)
	}
	app, graphSecret, err := devApplication(dir)
	if err != nil {
		return err
	}
	sim, err := entrasim.New(dir, entrasim.Options{Addr: *simAddr})
	if err != nil {
		return err
	}
	defer sim.Close()

	caFile := filepath.Join(*stateDir, "entrasim-ca.pem")
	if err := sim.WriteCAFile(caFile); err != nil {
		return fmt.Errorf("write simulator CA: %w", err)
	}
	state, _ := json.Marshal(devState{SimURL: sim.URL(), CAFile: caFile})
	if err := os.WriteFile(filepath.Join(*stateDir, "state.json"), state, 0o600); err != nil {
		return fmt.Errorf("write dev state: %w", err)
	}
	certFile, keyFile, err := writeSelfSignedCert(*stateDir)
	if err != nil {
		return fmt.Errorf("make the listener's certificate: %w", err)
	}

	storeKeyFile, keyMade, err := devStoreKey(*stateDir)
	if err != nil {
		return err
	}

	passwords := map[string]string{}
	for _, role := range []string{devAnalystRole, devFinanceRole} {
		passwords[role] = randomPassword()
	}
	rolesErr := createDevRoles(ctx, *pgAdmin, passwords)
	var usersErr error
	if *myBackend != "" {
		usersErr = createDevMySQLUsers(ctx, *myAdmin, passwords)
	}

	secrets := map[string]string{"graph-secret": graphSecret}
	for role, pw := range passwords {
		secrets[role+".password"] = pw
	}
	for name, value := range secrets {
		if err := os.WriteFile(filepath.Join(*stateDir, name), []byte(value+"\n"), 0o600); err != nil {
			return fmt.Errorf("write dev secret %s: %w", name, err)
		}
	}
	cfgFile := filepath.Join(*stateDir, "portcullis.yaml")
	err = writeDevConfig(cfgFile, devConfigValues{
		TenantID: dir.Tenant.ID, ClientID: app, SimURL: sim.URL(), CAFile: caFile, StateDir: *stateDir,
		CertFile: certFile, KeyFile: keyFile, Listen: *pgListen, Backend: *pgBackend,
		AnalystRole: devAnalystRole, FinanceRole: devFinanceRole,
		MySQLListen: *myListen, MySQLBackend: *myBackend, MySQLDatabase: devMySQLDatabase,
		StoreKeyFile: storeKeyFile,
	})
	if err != nil {
		return err
	}
	cfg, err := config.Load(cfgFile, nil, nil)
	if err != nil {
		return &configError{fmt.Errorf("the generated dev config: %w", err)}
	}
	log, err := logging.New(stdout, logging.Format(*logFormat), "info")
	if err != nil {
		return &usageError{err.Error()}
	}

	approveFlags := ""
	if stateDirGiven {
		approveFlags = " --state-dir " + *stateDir
	}
	printed := func(addrs []net.Addr) {
		// The listeners' real addresses: --*-listen may ask for port 0.
		listen := addrs[0].String()
		host, port, _ := net.SplitHostPort(listen)
		fmt.Fprintf(stderr, `
portcullis dev is running.

  Simulated Entra ID and Graph  %s   (tenant %s)
  PostgreSQL listener           %s → %s
  Config                        %s

Try it (any password: it starts a device-code sign-in):

  psql "host=%s port=%s dbname=demo user=alice@contoso.example sslmode=require"
`, sim.URL(), dir.Tenant.ID, listen, *pgBackend, cfgFile, host, port)
		if *myBackend != "" {
			myListen := addrs[1].String()
			myHost, myPort, _ := net.SplitHostPort(myListen)
			fmt.Fprintf(stderr, `
  MySQL listener                %s → %s

  mariadb --ssl -h %s -P %s -u alice@contoso.example --password=x %s
`, myListen, *myBackend, myHost, myPort, devMySQLResource)
		}
		fmt.Fprintf(stderr, `
The client shows a URL and a code. Open the URL (the browser will warn
about the simulator's private CA; %s is it), or approve from another
terminal:

  go run ./cmd/portcullis dev approve CODE --as alice@contoso.example%s

alice (Analysts) gets %s; bob (Finance) gets %s; carol is in no
allowed group and is refused. After signing in you are shown a session
key: use it as the password to reconnect without signing in again.

A second factor: as bob, connect with dbname=demo_totp. psql shows a QR
code for an authenticator app; then reconnect with <session key>:<code>
as the password.
`, caFile, approveFlags, devAnalystRole, devFinanceRole)
		if keyMade {
			fmt.Fprintf(stderr, "\nGenerated a key for sealing TOTP secrets in the state store: %s\n", storeKeyFile)
		}
		if rolesErr != nil {
			fmt.Fprintf(stderr, "\nwarning: could not create the demo roles in PostgreSQL at %s (%v);\nsign-ins will work but the backend login will fail until roles %s and %s exist.\n",
				*pgBackend, rolesErr, devAnalystRole, devFinanceRole)
		}
		if usersErr != nil {
			fmt.Fprintf(stderr, "\nwarning: could not create the demo users in MySQL at %s (%v);\nsign-ins will work but the backend login will fail until users %s and %s exist.\n",
				*myBackend, usersErr, devAnalystRole, devFinanceRole)
		}
		fmt.Fprintln(stderr)
	}
	hup, stop := notifyReload()
	defer stop()
	return runProxy(ctx, cfg, log, nil, printed, &configSource{path: cfgFile, hup: hup})
}

// devApplication finds portcullis's own app registration in the directory
// and the secret of its service principal, used for app-only Graph reads.
func devApplication(dir *entrasim.Directory) (appID, secret string, err error) {
	for _, a := range dir.Applications {
		if !a.PublicClient {
			continue
		}
		sp := dir.ServicePrincipalByName(a.AppID)
		if sp == nil || len(sp.Secrets) == 0 {
			return "", "", fmt.Errorf("directory: application %s has no service principal with a secret for Graph reads", a.DisplayName)
		}
		return a.AppID, sp.Secrets[0], nil
	}
	return "", "", fmt.Errorf("directory: no public-client application to sign in to")
}

// createDevRoles makes the demo's backend roles (or resets their
// passwords) so that any local authentication method accepts them.
func createDevRoles(ctx context.Context, adminURL string, passwords map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect as admin: %w", err)
	}
	defer conn.Close(context.Background())
	for role, pw := range passwords {
		ident := pgx.Identifier{role}.Sanitize()
		var exists bool
		if err := conn.QueryRow(ctx, "select exists(select 1 from pg_roles where rolname = $1)", role).Scan(&exists); err != nil {
			return fmt.Errorf("look up role %s: %w", role, err)
		}
		verb := "alter"
		if !exists {
			verb = "create"
		}
		// Passwords cannot be bound parameters in DDL; this one is ours,
		// base64url, and quoted by the literal escaper below.
		if _, err := conn.Exec(ctx, fmt.Sprintf("%s role %s login password %s", verb, ident, quoteLiteral(pw))); err != nil {
			return fmt.Errorf("%s role %s: %w", verb, role, err)
		}
	}
	return nil
}

// devStoreKey returns the file holding the key that seals TOTP secrets in
// the dev state store, making one on the first run (a new key each run
// would make every enrolled secret unreadable).
func devStoreKey(dir string) (path string, made bool, err error) {
	path = filepath.Join(dir, "store.key")
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	key, err := store.NewKey()
	if err != nil {
		return "", false, fmt.Errorf("generate a store key: %w", err)
	}
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("write the store key: %w", err)
	}
	return path, true, nil
}

// createDevMySQLUsers makes the demo database and users in the local
// MariaDB or MySQL (or resets their passwords).
func createDevMySQLUsers(ctx context.Context, dsn string, passwords map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return fmt.Errorf("connect as admin: %w", err)
	}
	defer db.Close()
	stmts := []string{"create database if not exists " + devMySQLDatabase}
	for role, pw := range passwords {
		// 'localhost' too: a connection over 127.0.0.1 may match an
		// anonymous ''@localhost account before '%'.
		for _, host := range []string{"%", "localhost"} {
			account := quoteLiteral(role) + "@" + quoteLiteral(host)
			stmts = append(stmts,
				"create user if not exists "+account,
				"alter user "+account+" identified by "+quoteLiteral(pw),
				"grant all on "+devMySQLDatabase+".* to "+account)
		}
	}
	for _, stmt := range stmts {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(stmt, " identified", 2)[0], err)
		}
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func randomPassword() string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// writeSelfSignedCert makes the certificate the dev listener presents.
func writeSelfSignedCert(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "portcullis dev"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "listener.crt"), filepath.Join(dir, "listener.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

type devConfigValues struct {
	TenantID, ClientID, SimURL, CAFile, StateDir string
	CertFile, KeyFile, Listen, Backend           string
	AnalystRole, FinanceRole                     string
	MySQLListen, MySQLBackend, MySQLDatabase     string
	StoreKeyFile                                 string
}

// devConfigTemplate is a real configuration file: what dev runs is what
// serve would run with the same file.
var devConfigTemplate = template.Must(template.New("dev").Parse(`# Written by 'portcullis dev'. A real configuration: dev runs what
#   portcullis serve --config {{.StateDir}}/portcullis.yaml
# would, against the simulator dev starts. To run serve beside dev, give
# it listeners of its own:
#   --set listeners.0.address=127.0.0.1:0 --set listeners.1.address=127.0.0.1:0
providers:
  - name: demo
    tenant_id: {{.TenantID}}
    client_id: {{.ClientID}}
    authority_host: {{.SimURL}}
    graph_endpoint: {{.SimURL}}
    graph_auth: application
    client_secret_file: {{.StateDir}}/graph-secret
    ca_file: {{.CAFile}}

resources:
  - name: demo
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    allow_groups: [Analysts, Finance]
    credentials:
      - groups: [Finance]
        user: {{.FinanceRole}}
        password_file: {{.StateDir}}/{{.FinanceRole}}.password
      - groups: [Analysts]
        user: {{.AnalystRole}}
        password_file: {{.StateDir}}/{{.AnalystRole}}.password

  # The same database behind a second factor: a TOTP code at every
  # connection, enrolled in psql on first use.
  - name: demo_totp
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    require_totp: true
    allow_groups: [Finance]
    credentials:
      - groups: [Finance]
        user: {{.FinanceRole}}
        password_file: {{.StateDir}}/{{.FinanceRole}}.password

{{- if .MySQLBackend}}
  - name: demo_mysql
    protocol: mysql
    address: {{.MySQLBackend}}
    database: {{.MySQLDatabase}}
    allow_groups: [Analysts, Finance]
    credentials:
      - groups: [Finance]
        user: {{.FinanceRole}}
        password_file: {{.StateDir}}/{{.FinanceRole}}.password
      - groups: [Analysts]
        user: {{.AnalystRole}}
        password_file: {{.StateDir}}/{{.AnalystRole}}.password
{{- end}}

listeners:
  - name: postgres
    protocol: postgres
    address: {{.Listen}}
    tls: required
    default_resource: demo
{{- if .MySQLBackend}}
  - name: mysql
    protocol: mysql
    address: {{.MySQLListen}}
    tls: required
    default_resource: demo_mysql
{{- end}}

store:
  driver: sqlite
  path: {{.StateDir}}/portcullis.db
  key_file: {{.StoreKeyFile}}

tls:
  cert_file: {{.CertFile}}
  key_file: {{.KeyFile}}

admin:
  groups: [Portcullis Admins]
`))

func writeDevConfig(path string, v devConfigValues) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write dev config: %w", err)
	}
	if err := devConfigTemplate.Execute(f, v); err != nil {
		f.Close()
		return fmt.Errorf("write dev config: %w", err)
	}
	return f.Close()
}

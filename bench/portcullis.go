package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/proxy"
)

// The simulated tenant the benchmark signs in to.
const (
	benchTenantID = "7b3c9a1e-0d4f-4c2b-9e8a-5f6d7c8b9a01"
	benchDomain   = "bench.example"
	benchAppID    = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
	benchGroup    = "Bench Users"
	// analyst is the person whose cached sign-in the load generators use.
	analyst = "analyst@" + benchDomain
)

// signInUser is the i-th of the people the pending sign-ins test signs in.
func signInUser(i int) string { return fmt.Sprintf("signin-%04d@%s", i, benchDomain) }

// benchDirectory is a tenant with the analyst and n more people, all in
// one group that policy allows, and portcullis's app registration with a
// secret for app-only Graph reads.
func benchDirectory(n int, graphSecret string) *entrasim.Directory {
	d := &entrasim.Directory{
		Tenant:       entrasim.Tenant{ID: benchTenantID, Domain: benchDomain, DisplayName: "portcullis benchmark (simulated)"},
		Applications: []entrasim.Application{{AppID: benchAppID, DisplayName: "portcullis", IdentifierURIs: []string{"api://portcullis"}, PublicClient: true}},
		ServicePrincipals: []entrasim.ServicePrincipal{{
			ID: "b0000000-0000-4000-8000-00000000b001", AppID: benchAppID, DisplayName: "portcullis", Secrets: []string{graphSecret},
		}},
	}
	members := []string{analyst}
	d.Users = append(d.Users, entrasim.User{ID: "a0000000-0000-4000-8000-000000000000", UPN: analyst, DisplayName: "Bench Analyst"})
	for i := 1; i <= n; i++ {
		upn := signInUser(i)
		d.Users = append(d.Users, entrasim.User{ID: fmt.Sprintf("a0000000-0000-4000-8000-%012d", i), UPN: upn, DisplayName: fmt.Sprintf("Sign-in %d", i)})
		members = append(members, upn)
	}
	d.Groups = []entrasim.Group{{ID: "c0000000-0000-4000-8000-00000000c001", DisplayName: benchGroup, Members: entrasim.GroupMembers{Users: members}}}
	return d
}

func randomSecret() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// portcullisSetup is what the configuration file is made from.
type portcullisSetup struct {
	SimURL, CAFile, SecretFile string
	CertFile, KeyFile          string
	PGBackend                  string // PostgreSQL
	IdleBackend                string // PgBouncer in front of it, for many idle sessions; "" for none
	MyBackend                  string // MariaDB; "" for none
	MySQL                      bool   // open MySQL listeners
	PGPlain, PGTLS             string // listener addresses
	MyPlain, MyTLS             string // MySQL without TLS (session keys by scramble) and with
	PasswordFile               string // the bench role's password
	StorePath                  string // the SQLite state file (the default store)
}

var portcullisConfig = template.Must(template.New("portcullis").Parse(`# Written by the portcullis benchmark harness.
providers:
  - name: bench
    tenant_id: ` + benchTenantID + `
    client_id: ` + benchAppID + `
    authority_host: {{.SimURL}}
    graph_endpoint: {{.SimURL}}
    graph_auth: application
    client_secret_file: {{.SecretFile}}
    ca_file: {{.CAFile}}

resources:
  - name: bench
    protocol: postgres
    address: {{.PGBackend}}
    database: bench
    prompt: notice
    allow_groups: [` + benchGroup + `]
    tls: {mode: disable}
    credentials:
      - groups: [` + benchGroup + `]
        user: bench
        password_file: {{.PasswordFile}}
{{- if .IdleBackend}}
  - name: idle
    protocol: postgres
    address: {{.IdleBackend}}
    database: bench
    prompt: notice
    allow_groups: [` + benchGroup + `]
    tls: {mode: disable}
    credentials:
      - groups: [` + benchGroup + `]
        user: bench
        password_file: {{.PasswordFile}}
{{- end}}
{{- if .MySQL}}
  - name: sbtest
    protocol: mysql
    address: {{.MyBackend}}
    database: sbtest
    allow_groups: [` + benchGroup + `]
    tls: {mode: disable}
    credentials:
      - groups: [` + benchGroup + `]
        user: bench
        password_file: {{.PasswordFile}}
{{- end}}

listeners:
  - name: pg-plain
    protocol: postgres
    address: {{.PGPlain}}
    tls: disabled
    default_resource: bench
  - name: pg-tls
    protocol: postgres
    address: {{.PGTLS}}
    tls: required
    default_resource: bench
{{- if .MySQL}}
  - name: my-plain
    protocol: mysql
    address: {{.MyPlain}}
    tls: disabled
    default_resource: sbtest
  - name: my-tls
    protocol: mysql
    address: {{.MyTLS}}
    tls: required
    default_resource: sbtest
{{- end}}

tls:
  cert_file: {{.CertFile}}
  key_file: {{.KeyFile}}

store:
  driver: sqlite
  path: {{.StorePath}}
`))

func writePortcullisConfig(path string, s portcullisSetup) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write portcullis config: %w", err)
	}
	if err := portcullisConfig.Execute(f, s); err != nil {
		f.Close()
		return fmt.Errorf("write portcullis config: %w", err)
	}
	return f.Close()
}

// runningPortcullis is portcullis serving the benchmark configuration,
// either a child process or inside the harness.
type runningPortcullis interface {
	// pid is the process to measure, 0 when it is the harness itself.
	pid() int
	stop() error
}

// errNoMySQLFrontDoor: the portcullis being measured has no MySQL
// protocol, so its MySQL cells stay empty.
var errNoMySQLFrontDoor = errors.New("this portcullis build has no MySQL front door")

// portcullisBinary runs `portcullis serve` as a child process.
type portcullisBinary struct{ *child }

func startPortcullisBinary(ctx context.Context, bin string, env []string, cfgPath, logPath string, listeners []string) (*portcullisBinary, error) {
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	for _, kv := range generatorEnv() {
		// Only the configuration file configures it.
		if !strings.HasPrefix(kv, "PORTCULLIS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	c, err := startChild("portcullis", cmd, logPath)
	if err != nil {
		return nil, err
	}
	for _, addr := range listeners {
		if err := c.waitTCP(ctx, addr); err != nil {
			c.stop()
			if strings.Contains(c.logTail(), `protocol "mysql" is not available`) {
				return nil, errNoMySQLFrontDoor
			}
			return nil, err
		}
	}
	return &portcullisBinary{c}, nil
}

// portcullisInProcess serves the configuration from inside the harness,
// wired as `portcullis serve` wires it. The smoke test uses it so that
// it needs no build; RSS cannot be measured this way.
type portcullisInProcess struct {
	authz  *auth.Authorizer
	srv    *proxy.Server
	served chan error
	n      int
	log    *os.File
}

func startPortcullisInProcess(ctx context.Context, cfgPath, logPath string) (*portcullisInProcess, error) {
	cfg, err := config.Load(cfgPath, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("portcullis config: %w", err)
	}
	protocols := frontDoors()
	if !hasProtocol(protocols, config.ProtocolMySQL) {
		for _, l := range cfg.Listeners {
			if l.Protocol == config.ProtocolMySQL {
				return nil, errNoMySQLFrontDoor
			}
		}
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	log, err := logging.New(logFile, logging.JSON, cfg.Log.Level)
	if err != nil {
		logFile.Close()
		return nil, err
	}
	p := &portcullisInProcess{log: logFile}
	if p.authz, err = auth.New(cfg, auth.Deps{Logger: log}); err != nil {
		logFile.Close()
		return nil, err
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = p.authz.Start(startCtx)
	cancel()
	if err == nil {
		p.srv, err = proxy.New(cfg, proxy.Deps{Authorizer: p.authz, Protocols: protocols, Logger: log})
	}
	if err != nil {
		p.authz.Close()
		logFile.Close()
		return nil, fmt.Errorf("start portcullis: %w", err)
	}
	p.served = make(chan error, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			p.stop()
			return nil, fmt.Errorf("portcullis listener %s: %w", l.Name, err)
		}
		p.n++
		go func() { p.served <- p.srv.Serve(context.Background(), ln, l) }()
	}
	return p, nil
}

func hasProtocol(ps []proxy.Protocol, name string) bool {
	for _, p := range ps {
		if p.Name() == name {
			return true
		}
	}
	return false
}

func (p *portcullisInProcess) pid() int { return 0 }

func (p *portcullisInProcess) stop() error {
	p.srv.Close()
	var err error
	for range p.n {
		if e := <-p.served; e != nil && err == nil {
			err = e
		}
	}
	p.authz.Close()
	p.log.Close()
	return err
}

var (
	userCodeRE   = regexp.MustCompile(`enter the code ([^\s,]+)`)
	sessionKeyRE = regexp.MustCompile(`session key as your password: (\S+)`)
)

// signIn connects to portcullis at addr as login with a password that
// starts a device-code sign-in, approves the code portcullis shows through
// the simulator, as a person would in a browser, and returns the session
// key portcullis shows afterwards. from, if valid, is the client address
// to connect from (pending sign-ins are capped per address). codes, if
// not nil, receives the user code before it is approved, and approval
// waits until release is closed.
func signIn(ctx context.Context, sim *entrasim.Server, addr, login, database string, from net.IP, codes chan<- string, release <-chan struct{}) (string, error) {
	host, port := splitAddr(addr)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=300", host, port, login, database))
	if err != nil {
		return "", err
	}
	cfg.Password = "sign me in"
	cfg.RuntimeParams = map[string]string{"application_name": "portcullis-bench"}
	if from != nil {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from}, Timeout: 30 * time.Second}
		cfg.DialFunc = d.DialContext
	}
	var (
		mu         sync.Mutex
		key        string
		approveErr error
		approving  = make(chan struct{}) // closed when a code was seen
		approved   = make(chan struct{}) // closed when its approval ended
		once       sync.Once
	)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if m := sessionKeyRE.FindStringSubmatch(n.Message); m != nil {
			mu.Lock()
			key = m[1]
			mu.Unlock()
		}
		m := userCodeRE.FindStringSubmatch(n.Message)
		if m == nil {
			return
		}
		once.Do(func() {
			close(approving)
			// The callback runs inside the connect: approve from
			// elsewhere, as the person would while the client waits.
			go func() {
				defer close(approved)
				if codes != nil {
					codes <- m[1]
					select {
					case <-release:
					case <-ctx.Done():
						return
					}
				}
				if err := sim.Approve(m[1], login); err != nil {
					mu.Lock()
					approveErr = err
					mu.Unlock()
				}
			}()
		})
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("sign in %s: %w", login, err)
	}
	conn.Close(context.Background())
	select {
	case <-approving:
		<-approved
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	if approveErr != nil {
		return "", fmt.Errorf("approve the sign-in of %s: %w", login, approveErr)
	}
	if key == "" {
		return "", fmt.Errorf("sign in %s: portcullis showed no session key", login)
	}
	return key, nil
}

// buildPortcullis builds cmd/portcullis from the module the harness is
// in, into dir.
func buildPortcullis(ctx context.Context, goTool, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the harness from inside the portcullis module, or pass -portcullis BINARY")
	}
	bin := filepath.Join(dir, "portcullis")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/portcullis")
	cmd.Dir = filepath.Dir(mod)
	if err := runQuiet(cmd); err != nil {
		return "", fmt.Errorf("build portcullis: %w", err)
	}
	return bin, nil
}

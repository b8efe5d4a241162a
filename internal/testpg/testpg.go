// Package testpg starts private PostgreSQL servers for tests: a fresh
// cluster in a temporary directory, on a free loopback port, with the
// roles, authentication methods and TLS a test asks for.
//
// The server binaries are found in $PORTCULLIS_TEST_PGBIN, then under
// /usr/lib/postgresql/<version>/bin (newest first), then on $PATH. When
// none is found, tests skip with a loud message, except under CI=true,
// where they fail: a CI run must never pass by skipping its integration
// tests.
//
// initdb and postgres refuse to run as root, so when the tests run as root
// the server runs as the "postgres" user, in a directory handed to it.
//
// A package that needs a server in many tests shares one:
//
//	var pg = testpg.NewShared(testpg.Options{TLS: true, Roles: roles})
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pg.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		srv := pg.Server(t) // started on first use; skips when unavailable
//		...
//	}
package testpg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable means the PostgreSQL server binaries could not be found
// (or cannot be run here); Require turns it into a skip or, under CI, a
// failure.
var ErrUnavailable = errors.New("PostgreSQL server binaries unavailable")

// Auth methods for Role.Auth, as pg_hba.conf spells them.
const (
	AuthSCRAM    = "scram-sha-256"
	AuthMD5      = "md5"
	AuthPassword = "password"
)

// Role is a login role the server is started with.
type Role struct {
	Name     string
	Password string
	// Auth is how the role must authenticate over TCP: AuthSCRAM (the
	// default), AuthMD5 or AuthPassword (cleartext).
	Auth string
	// RequireTLS refuses the role on unencrypted TCP connections, so a
	// test can prove that a client encrypted its connection.
	RequireTLS bool
}

// Options describe the server a test wants.
type Options struct {
	// TLS turns on ssl with a server certificate for 127.0.0.1 and
	// localhost, issued by a fresh CA (Server.CA, Server.CAFile).
	TLS bool
	// Roles are created with LOGIN and their passwords.
	Roles []Role
	// Setup statements run as the superuser after the roles exist, one at
	// a time (so CREATE DATABASE works).
	Setup []string
	// MaxConnections is the server's max_connections; default 100. A
	// load test that holds hundreds of sessions open needs more.
	MaxConnections int
}

// Server is a running PostgreSQL server.
type Server struct {
	// Host and Port are the TCP address (Host is always 127.0.0.1).
	Host string
	Port int
	// Dir is the temporary directory holding the cluster, the socket and
	// the certificates; it is removed by Stop.
	Dir string
	// SocketDir holds the unix socket the superuser connects through.
	SocketDir string
	// CA issued the server certificate and CAFile holds its PEM; both are
	// empty without Options.TLS.
	CA     *CA
	CAFile string
	// Version is the server's major version, e.g. "15".
	Version string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	logPath string
	cgroup  string // the CPU control group ConfineCPU made, if any

	stopOnce sync.Once
	stopErr  error
}

// Start starts a server for one test and stops it when the test ends. It
// skips the test (or fails it under CI=true) when PostgreSQL is not
// installed.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Launch(opts)
	Require(t, err)
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return s
}

// Require ends t when err, from Launch, is not nil: a skip with a loud
// message when PostgreSQL is unavailable (a failure under CI=true), a
// failure for any other error.
func Require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) {
		msg := fmt.Sprintf("\n\n*** SKIPPING: real-PostgreSQL test cannot run: %v ***\n*** install postgresql (initdb, postgres) or set PORTCULLIS_TEST_PGBIN ***\n", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "*** CI=true: integration tests must run in CI ***")
		}
		t.Skip(msg)
	}
	t.Fatalf("start PostgreSQL: %v", err)
}

// Shared is one server for a whole test package, started on first use.
type Shared struct {
	opts Options
	once sync.Once
	srv  *Server
	err  error
}

// NewShared prepares a shared server; nothing starts until Server is
// called.
func NewShared(opts Options) *Shared { return &Shared{opts: opts} }

// Server returns the shared server, starting it the first time; like
// Start, it skips (or fails under CI) when PostgreSQL is unavailable.
func (s *Shared) Server(t testing.TB) *Server {
	t.Helper()
	s.once.Do(func() { s.srv, s.err = Launch(s.opts) })
	Require(t, s.err)
	return s.srv
}

// Close stops the server if it was started. Call it from TestMain after
// m.Run.
func (s *Shared) Close() error {
	s.once.Do(func() { s.err = errors.New("closed before use") })
	if s.srv == nil {
		return nil
	}
	return s.srv.Stop()
}

// Launch starts a server; the caller must Stop it. Errors wrap
// ErrUnavailable when PostgreSQL is not installed.
func Launch(opts Options) (*Server, error) {
	bin, version, err := findBinaries()
	if err != nil {
		return nil, err
	}
	runAs, err := serverCredential()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "testpg-")
	if err != nil {
		return nil, fmt.Errorf("make cluster directory: %w", err)
	}
	s := &Server{Host: "127.0.0.1", Dir: dir, SocketDir: filepath.Join(dir, "sock"), Version: version, logPath: filepath.Join(dir, "postgres.log")}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()

	if err := os.Mkdir(s.SocketDir, 0o700); err != nil {
		return nil, fmt.Errorf("make socket directory: %w", err)
	}
	if err := handOver(runAs, dir, s.SocketDir); err != nil {
		return nil, err
	}

	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: runAs}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}

	if err := s.writeConfig(runAs, data, opts); err != nil {
		return nil, err
	}

	// A port found free may be taken before postgres binds it; try a few.
	for attempt := 0; ; attempt++ {
		s.Port, err = freePort()
		if err != nil {
			return nil, err
		}
		err = s.run(bin, data, runAs)
		if err == nil {
			break
		}
		if attempt == 2 || !strings.Contains(s.logTail(), "could not bind") {
			return nil, err
		}
	}
	ok = true

	if err := s.setup(opts); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Superuser connects as the postgres superuser over the unix socket, for
// setting up and inspecting the server from a test.
func (s *Server) Superuser(ctx context.Context, database string) (*pgconn.PgConn, error) {
	if database == "" {
		database = "postgres"
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", s.SocketDir, s.Port, database))
	if err != nil {
		return nil, fmt.Errorf("superuser config: %w", err)
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect as superuser to %s: %w", database, err)
	}
	return c, nil
}

// Exec runs sql (one or more statements) as the superuser in the postgres
// database.
func (s *Server) Exec(ctx context.Context, sql string) error {
	c, err := s.Superuser(ctx, "")
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("exec %q: %w", firstLine(sql), err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown, then kill) and removes its
// directory. It is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			s.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-s.exited:
			case <-time.After(15 * time.Second):
				s.cmd.Process.Kill()
				<-s.exited
				s.stopErr = errors.New("postgres did not stop within 15s and was killed")
			}
		}
		if err := os.RemoveAll(s.Dir); err != nil && s.stopErr == nil {
			s.stopErr = fmt.Errorf("remove %s: %w", s.Dir, err)
		}
		if s.cgroup != "" {
			// Empty now that the server's processes have ended.
			if err := os.Remove(s.cgroup); err != nil && s.stopErr == nil {
				s.stopErr = fmt.Errorf("remove the CPU control group %s: %w", s.cgroup, err)
			}
		}
	})
	return s.stopErr
}

func (s *Server) writeConfig(runAs *syscall.Credential, data string, opts Options) error {
	var hba strings.Builder
	hba.WriteString("local all all trust\n")
	for _, r := range opts.Roles {
		if r.RequireTLS {
			fmt.Fprintf(&hba, "hostnossl all %s 127.0.0.1/32 reject\n", r.Name)
		}
		if r.Auth != "" && r.Auth != AuthSCRAM {
			fmt.Fprintf(&hba, "host all %s 127.0.0.1/32 %s\n", r.Name, r.Auth)
		}
	}
	hba.WriteString("host all all 127.0.0.1/32 scram-sha-256\n")
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba.String()), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}

	maxConnections := opts.MaxConnections
	if maxConnections <= 0 {
		maxConnections = 100
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("unix_socket_directories = '%s'", s.SocketDir),
		// Durability is pointless for a throwaway cluster; speed is not.
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"shared_buffers = 16MB",
		fmt.Sprintf("max_connections = %d", maxConnections),
		"password_encryption = 'scram-sha-256'",
		"log_min_messages = warning",
		"log_connections = off",
	}
	if opts.TLS {
		ca, err := NewCA("testpg CA")
		if err != nil {
			return err
		}
		certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
		if err != nil {
			return err
		}
		s.CA = ca
		s.CAFile = filepath.Join(s.Dir, "ca.crt")
		files := []struct {
			path string
			data []byte
		}{
			{s.CAFile, ca.CertPEM},
			{filepath.Join(data, "server.crt"), certPEM},
			{filepath.Join(data, "server.key"), keyPEM},
		}
		for _, f := range files {
			if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
				return fmt.Errorf("write %s: %w", f.path, err)
			}
		}
		if err := handOver(runAs, files[1].path, files[2].path); err != nil {
			return err
		}
		conf = append(conf, "ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'")
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = f.WriteString("\n" + strings.Join(conf, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return handOver(runAs, filepath.Join(data, "pg_hba.conf"))
}

// run starts postgres and waits until it accepts a connection.
func (s *Server) run(bin, data string, runAs *syscall.Credential) error {
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return fmt.Errorf("create server log: %w", err)
	}
	defer logFile.Close()

	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(s.Port))
	cmd.Dir = s.Dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If the test binary dies (a panic, a -timeout kill), take the server
	// with it rather than leave it running on a port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: runAs, Pdeathsig: syscall.SIGQUIT}
	s.cmd = cmd
	s.exited = make(chan struct{})

	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits, not
		// the process: hold this thread until the server is gone.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			runtime.UnlockOSThread()
			started <- err
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := s.Superuser(ctx, "")
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("postgres exited during start-up (%v); log:\n%s", s.waitErr, s.logTail())
		case <-ctx.Done():
			s.cmd.Process.Kill()
			<-s.exited
			return fmt.Errorf("postgres not ready within 30s: %w; log:\n%s", err, s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) setup(opts Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range opts.Roles {
		enc := "scram-sha-256"
		if r.Auth == AuthMD5 {
			enc = "md5"
		}
		sql := fmt.Sprintf("SET password_encryption = '%s'; CREATE ROLE %s LOGIN PASSWORD %s", enc, quoteIdent(r.Name), quoteLiteral(r.Password))
		if err := s.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create role %s: %w", r.Name, err)
		}
	}
	for _, sql := range opts.Setup {
		if err := s.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// findBinaries locates initdb and postgres.
func findBinaries() (dir, version string, err error) {
	var candidates []string
	if d := os.Getenv("PORTCULLIS_TEST_PGBIN"); d != "" {
		candidates = append(candidates, d)
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(versions, func(i, j int) bool { return versionOf(versions[i]) > versionOf(versions[j]) })
	candidates = append(candidates, versions...)
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, d := range candidates {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			out, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output()
			if err != nil {
				continue
			}
			return d, majorVersion(string(out)), nil
		}
	}
	return "", "", fmt.Errorf("%w: no initdb and postgres in $PORTCULLIS_TEST_PGBIN, /usr/lib/postgresql/*/bin or $PATH", ErrUnavailable)
}

// serverCredential is who the server runs as: nil (ourselves) unless we
// are root, then the postgres user.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("%w: running as root and there is no postgres user to run the server as: %v", ErrUnavailable, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("postgres user has a non-numeric uid %q or gid %q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// handOver gives paths to the server's user when it is not us.
func handOver(runAs *syscall.Credential, paths ...string) error {
	if runAs == nil {
		return nil
	}
	for _, p := range paths {
		if err := os.Chown(p, int(runAs.Uid), int(runAs.Gid)); err != nil {
			return fmt.Errorf("hand %s to the postgres user: %w", p, err)
		}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// majorVersion takes "postgres (PostgreSQL) 15.20 (Debian ...)" to "15".
func majorVersion(out string) string {
	fields := strings.Fields(out)
	if len(fields) < 3 {
		return ""
	}
	v, _, _ := strings.Cut(fields[2], ".")
	return v
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func firstLine(s string) string {
	if i := bytes.IndexByte([]byte(s), '\n'); i >= 0 {
		return s[:i] + "..."
	}
	return s
}

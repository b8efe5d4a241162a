// Package testmysql starts private MariaDB servers for tests: a fresh data
// directory in a temporary directory, on a free loopback port, with TLS
// and the users and authentication plugins a test asks for.
//
// The binaries (mariadb-install-db and mariadbd) are found in
// $PORTCULLIS_TEST_MYSQLBIN, then on $PATH and in /usr/sbin. When they are
// missing, tests skip with a loud message, except under CI=true, where
// they fail: a CI run must never pass by skipping its integration tests.
//
// mariadbd refuses to run as root unless told to, so as root it is started
// with --user=root. Grant tables are real (no skip-grant-tables): users log
// in with the plugins they were created with. The superuser, root@localhost
// without a password, is reachable only through the unix socket in the
// server's own temporary directory.
//
// A package that needs a server in many tests shares one:
//
//	var db = testmysql.NewShared(testmysql.Options{TLS: true, Users: users})
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		db.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		srv := db.Server(t) // started on first use; skips when unavailable
//		...
//	}
package testmysql

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/portcullisdb/portcullis/internal/testpg"
)

// ErrUnavailable means the MariaDB server binaries could not be found;
// Require turns it into a skip or, under CI, a failure.
var ErrUnavailable = errors.New("MariaDB server binaries unavailable")

// Authentication plugins for User.Auth, as MariaDB spells them.
const (
	AuthNative  = "mysql_native_password"
	AuthEd25519 = "ed25519"
)

// User is a login the server is started with. It may connect from any
// host and has every privilege on the Options.Databases.
type User struct {
	Name     string
	Password string
	// Auth is AuthNative (the default) or AuthEd25519.
	Auth string
	// RequireTLS refuses the user on unencrypted connections (REQUIRE
	// SSL), so a test can prove that a client encrypted its connection.
	RequireTLS bool
}

// Options describe the server a test wants.
type Options struct {
	// TLS turns on TLS with a server certificate for 127.0.0.1 and
	// localhost, issued by a fresh CA (Server.CA, Server.CAFile).
	TLS bool
	// Databases are created before the users, who get all privileges on
	// them.
	Databases []string
	// Users are created with their plugins and passwords.
	Users []User
	// Setup statements run as root after the users exist.
	Setup []string
}

// Server is a running MariaDB server.
type Server struct {
	// Host and Port are the TCP address (Host is always 127.0.0.1).
	Host string
	Port int
	// Dir is the temporary directory holding the data directory, the
	// socket, the log and the certificates; Stop removes it.
	Dir string
	// Socket is the unix socket root connects through.
	Socket string
	// CA issued the server certificate and CAFile holds its PEM; both are
	// empty without Options.TLS.
	CA     *testpg.CA
	CAFile string
	// Version is what the server reports, e.g. "10.11.19-MariaDB-0+deb12u1".
	Version string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	logPath string

	stopOnce sync.Once
	stopErr  error
}

// Start starts a server for one test and stops it when the test ends. It
// skips the test (or fails it under CI=true) when MariaDB is not
// installed.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Launch(opts)
	Require(t, err)
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop MariaDB: %v", err)
		}
	})
	return s
}

// Require ends t when err, from Launch, is not nil: a skip with a loud
// message when MariaDB is unavailable (a failure under CI=true), a failure
// for any other error.
func Require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) {
		msg := fmt.Sprintf("\n\n*** SKIPPING: real-MariaDB test cannot run: %v ***\n*** install mariadb-server (mariadb-install-db, mariadbd) or set PORTCULLIS_TEST_MYSQLBIN ***\n", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "*** CI=true: integration tests must run in CI ***")
		}
		t.Skip(msg)
	}
	t.Fatalf("start MariaDB: %v", err)
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
// Start, it skips (or fails under CI) when MariaDB is unavailable.
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
// ErrUnavailable when MariaDB is not installed.
func Launch(opts Options) (*Server, error) {
	installDB, mariadbd, err := findBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "testmysql-")
	if err != nil {
		return nil, fmt.Errorf("make server directory: %w", err)
	}
	s := &Server{
		Host:    "127.0.0.1",
		Dir:     dir,
		Socket:  filepath.Join(dir, "mysqld.sock"),
		logPath: filepath.Join(dir, "mariadbd.log"),
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()

	data := filepath.Join(dir, "data")
	// A temporary directory of its own: servers sharing /tmp collide on
	// the names of their internal temporary tables during bootstrap.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("make the server's tmpdir: %w", err)
	}
	install := exec.Command(installDB, append([]string{
		"--no-defaults",
		"--datadir=" + data,
		"--tmpdir=" + tmp,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--skip-name-resolve",
	}, runAsArgs()...)...)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mariadb-install-db: %w\n%s", err, out)
	}
	var tlsArgs []string
	if opts.TLS {
		if tlsArgs, err = s.writeCertificates(); err != nil {
			return nil, err
		}
	}

	// A port found free may be taken before mariadbd binds it; try a few.
	for attempt := 0; ; attempt++ {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
		err = s.run(mariadbd, data, tlsArgs)
		if err == nil {
			break
		}
		if attempt == 2 || !strings.Contains(s.logTail(), "Address already in use") {
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

// Root connects as root over the unix socket, for setting up and
// inspecting the server from a test.
func (s *Server) Root(ctx context.Context) (*client.Conn, error) {
	d := net.Dialer{}
	c, err := client.ConnectWithDialer(ctx, "unix", s.Socket, "root", "", "", d.DialContext, func(c *client.Conn) error {
		// MariaDB does not know go-mysql's default collation (255).
		return c.SetCollation("utf8mb4_general_ci")
	})
	if err != nil {
		return nil, fmt.Errorf("connect as root: %w", err)
	}
	return c, nil
}

// Exec runs each statement as root.
func (s *Server) Exec(ctx context.Context, statements ...string) error {
	c, err := s.Root(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	for _, sql := range statements {
		if _, err := c.Execute(sql); err != nil {
			return fmt.Errorf("exec %q: %w", firstLine(sql), err)
		}
	}
	return nil
}

// Stop shuts the server down (SIGTERM, then kill) and removes its
// directory. It is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.exited:
			case <-time.After(20 * time.Second):
				s.cmd.Process.Kill()
				<-s.exited
				s.stopErr = errors.New("mariadbd did not stop within 20s and was killed")
			}
		}
		if err := os.RemoveAll(s.Dir); err != nil && s.stopErr == nil {
			s.stopErr = fmt.Errorf("remove %s: %w", s.Dir, err)
		}
	})
	return s.stopErr
}

func (s *Server) writeCertificates() ([]string, error) {
	ca, err := testpg.NewCA("testmysql CA")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	s.CA = ca
	s.CAFile = filepath.Join(s.Dir, "ca.crt")
	certFile := filepath.Join(s.Dir, "server.crt")
	keyFile := filepath.Join(s.Dir, "server.key")
	for path, data := range map[string][]byte{s.CAFile: ca.CertPEM, certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	}
	return []string{"--ssl-ca=" + s.CAFile, "--ssl-cert=" + certFile, "--ssl-key=" + keyFile}, nil
}

// run starts mariadbd and waits until root can connect.
func (s *Server) run(mariadbd, data string, tlsArgs []string) error {
	args := []string{
		"--no-defaults",
		"--datadir=" + data,
		"--tmpdir=" + filepath.Join(s.Dir, "tmp"),
		"--socket=" + s.Socket,
		"--port=" + strconv.Itoa(s.Port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + filepath.Join(s.Dir, "mariadbd.pid"),
		"--log-error=" + s.logPath,
		"--skip-name-resolve",
		"--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_general_ci",
		// Durability and footprint do not matter for a throwaway server;
		// start-up time does.
		"--innodb-buffer-pool-size=32M",
		"--innodb-log-file-size=16M",
		"--innodb-flush-log-at-trx-commit=0",
		"--loose-innodb-use-native-aio=0",
		"--skip-log-bin",
		"--performance-schema=OFF",
		"--max-connections=200",
		"--max-allowed-packet=64M",
		"--plugin-load-add=auth_ed25519",
	}
	args = append(args, runAsArgs()...)
	args = append(args, tlsArgs...)
	cmd := exec.Command(mariadbd, args...)
	cmd.Dir = s.Dir
	// If the test binary dies (a panic, a -timeout kill), take the server
	// with it rather than leave it running on a port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
		return fmt.Errorf("start mariadbd: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		c, err := s.Root(ctx)
		if err == nil {
			s.Version = c.GetServerVersion()
			c.Close()
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("mariadbd exited during start-up (%v); log:\n%s", s.waitErr, s.logTail())
		case <-ctx.Done():
			s.cmd.Process.Kill()
			<-s.exited
			return fmt.Errorf("mariadbd not ready within 60s: %w; log:\n%s", err, s.logTail())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (s *Server) setup(opts Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sql []string
	for _, db := range opts.Databases {
		sql = append(sql, "CREATE DATABASE "+QuoteIdent(db))
	}
	for _, u := range opts.Users {
		plugin := u.Auth
		if plugin == "" {
			plugin = AuthNative
		}
		create := fmt.Sprintf("CREATE USER %s@'%%' IDENTIFIED VIA %s USING PASSWORD(%s)", QuoteLiteral(u.Name), plugin, QuoteLiteral(u.Password))
		if u.RequireTLS {
			create += " REQUIRE SSL"
		}
		sql = append(sql, create)
		for _, db := range opts.Databases {
			sql = append(sql, fmt.Sprintf("GRANT ALL ON %s.* TO %s@'%%'", QuoteIdent(db), QuoteLiteral(u.Name)))
		}
	}
	sql = append(sql, opts.Setup...)
	return s.Exec(ctx, sql...)
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

// runAsArgs lets mariadb-install-db and mariadbd run as root, which they
// otherwise refuse.
func runAsArgs() []string {
	if os.Geteuid() == 0 {
		return []string{"--user=root"}
	}
	return nil
}

// findBinaries locates mariadb-install-db and mariadbd.
func findBinaries() (installDB, mariadbd string, err error) {
	var dirs []string
	if d := os.Getenv("PORTCULLIS_TEST_MYSQLBIN"); d != "" {
		dirs = append(dirs, d)
	}
	dirs = append(dirs, filepath.SplitList(os.Getenv("PATH"))...)
	dirs = append(dirs, "/usr/sbin", "/usr/bin", "/usr/local/mysql/bin")
	find := func(names ...string) string {
		for _, d := range dirs {
			for _, n := range names {
				if p := filepath.Join(d, n); isExecutable(p) {
					return p
				}
			}
		}
		return ""
	}
	installDB = find("mariadb-install-db", "mysql_install_db")
	mariadbd = find("mariadbd", "mysqld")
	if installDB == "" || mariadbd == "" {
		return "", "", fmt.Errorf("%w: no mariadb-install-db and mariadbd in $PORTCULLIS_TEST_MYSQLBIN, $PATH or /usr/sbin", ErrUnavailable)
	}
	return installDB, mariadbd, nil
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

// QuoteIdent quotes a MariaDB identifier.
func QuoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// QuoteLiteral quotes a MariaDB string literal.
func QuoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + "..."
	}
	return s
}

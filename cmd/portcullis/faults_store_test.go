package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/mfa"
)

// The state store fails: the PostgreSQL store is killed and comes back,
// the SQLite file is locked by another process, and portcullis itself
// is killed with SIGKILL and restarted on the same file.

var storeRole = testpg.Role{Name: "portcullis_store", Password: "store-" + strconv.FormatInt(time.Now().UnixNano(), 36)}

// The PostgreSQL store is killed (postmaster and every backend, as a
// crash or the OOM killer would) while alice has a session open: new
// sign-ins that need the store are refused saying so, /readyz fails on
// the store, alice's open session carries on, and once the server is
// back on the same data directory, her session key works again without
// a restart of portcullis.
func TestPostgresStoreKilled(t *testing.T) {
	e := newFaultEnv(t)
	// testpg turns durability off for speed (synchronous_commit off: a
	// commit may still sit in the server's memory when it is killed); the
	// store's role gets PostgreSQL's default back, as a real server has.
	st := testpg.Start(t, testpg.Options{Roles: []testpg.Role{storeRole}, Setup: []string{
		"CREATE DATABASE portcullis_state OWNER " + storeRole.Name,
		"ALTER ROLE " + storeRole.Name + " SET synchronous_commit = on",
	}})
	dsn := fmt.Sprintf("postgres://%s:%s@%s/portcullis_state?sslmode=disable", storeRole.Name, storeRole.Password, st.Addr())
	if err := os.WriteFile(filepath.Join(e.dir, "store.dsn"), []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := fmt.Sprintf("  driver: postgres\n  dsn_file: %s/store.dsn\n  key_file: %s/store.key", e.dir, e.dir)
	s := e.serve(e.writeConfig("portcullis.yaml", store, false))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	held, notices, err := faultSignIn(ctx, s, s.pgAddr, opsAlice, "demo")
	if err != nil {
		t.Fatalf("alice's sign-in: %v", err)
	}
	defer held.Close(context.Background())
	key := keyOf(t, notices)
	s.waitStatus("/readyz", http.StatusOK)

	restart := killPostgres(t, st)
	_, err = s.connect(ctx, opsAlice, key, "demo")
	wantRefusal(t, err, "08004", "store could not be reached", opsAlice)
	if body := s.waitStatus("/readyz", http.StatusServiceUnavailable); !strings.Contains(body, "store") {
		t.Errorf("/readyz with the store down does not name it:\n%s", body)
	}
	query(ctx, t, held, "select 1")

	restart()
	if err := eventually(20*time.Second, func() error {
		c, err := s.connect(ctx, opsAlice, key, "demo")
		if err == nil {
			c.Close(ctx)
		}
		return err
	}); err != nil {
		t.Fatalf("alice's session key after the store came back: %v", err)
	}
	s.waitStatus("/readyz", http.StatusOK)
	query(ctx, t, held, "select 1")
}

// killPostgres kills s's postmaster and all its processes with SIGKILL,
// keeping the data directory, and returns a function that starts the
// server again on the same directory and port (testpg has no restart).
// The restarted server is stopped before testpg removes the directory.
func killPostgres(t *testing.T, s *testpg.Server) (restart func()) {
	t.Helper()
	data := filepath.Join(s.Dir, "data")
	pidFile, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pidFile), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	victims := append([]int{pid}, testpg.ChildrenOf(pid)...)
	for _, p := range victims {
		syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range victims {
		for processExists(p) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d outlived SIGKILL", p)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	return func() {
		t.Helper()
		var cred *syscall.Credential
		if os.Geteuid() == 0 {
			fi, err := os.Stat(data)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			cred = &syscall.Credential{Uid: st.Uid, Gid: st.Gid}
		}
		logFile, err := os.Create(filepath.Join(t.TempDir(), "postgres.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, "-D", data, "-p", strconv.Itoa(s.Port))
		cmd.Dir = s.Dir
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		started, exited := make(chan error, 1), make(chan struct{})
		go func() {
			// Pdeathsig follows the thread that forked the server.
			runtime.LockOSThread()
			if err := cmd.Start(); err != nil {
				started <- err
				return
			}
			started <- nil
			cmd.Wait()
			close(exited)
		}()
		if err := <-started; err != nil {
			t.Fatalf("restart postgres: %v", err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			logFile.Close()
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for {
			c, err := s.Superuser(ctx, "")
			if err == nil {
				c.Close(ctx)
				return
			}
			select {
			case <-exited:
				log, _ := os.ReadFile(logFile.Name())
				t.Fatalf("the restarted postgres exited: %s", log)
			case <-ctx.Done():
				t.Fatalf("the restarted postgres does not answer: %v", err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// processExists reports whether pid is alive (a zombie counts as gone).
func processExists(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	fields := strings.Fields(rest)
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// portcullis as a program of its own, so it can be killed with SIGKILL.
type process struct {
	*opsServe
	cmd *exec.Cmd
}

// buildPortcullis builds the portcullis binary into a temporary
// directory.
func buildPortcullis(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "portcullis")
	args := []string{"build", "-o", bin}
	// Built as this test binary was (with -race or not), so the packages
	// compiled for it are reused and only the link is new.
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	cmd := exec.Command(goTool, append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startProcess runs `bin serve --config cfgPath` and waits until its
// listener is up.
func (e *faultEnv) startProcess(bin, cfgPath string) *process {
	e.t.Helper()
	s := &opsServe{t: e.t, sim: e.sim, pg: e.pg, dir: e.dir, cfgPath: cfgPath, stdout: &syncBuffer{}, done: make(chan error, 1)}
	return runServe(s, bin, &syncBuffer{})
}

// runServe runs `bin serve --config s.cfgPath` as a process of its own,
// its log in s.stdout and its stderr in stderr, and waits until its
// listener is up. It is stopped with SIGTERM when the test ends.
func runServe(s *opsServe, bin string, stderr *syncBuffer) *process {
	t := s.t
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", s.cfgPath)
	cmd.Stdout, cmd.Stderr = s.stdout, stderr
	// If the test binary dies, so does portcullis.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatalf("start portcullis: %v", err)
	}
	p := &process{opsServe: s, cmd: cmd}
	t.Cleanup(func() {
		if !s.stopped {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case s.err = <-s.done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				s.err = <-s.done
			}
			s.stopped = true
		}
		if t.Failed() {
			t.Logf("portcullis (pid %d) log:\n%s\nstderr:\n%s", cmd.Process.Pid, s.stdout.String(), stderr.String())
		}
	})
	s.admin = "http://" + s.waitEvent("admin.listening", nil)["address"].(string)
	s.ready()
	return p
}

// kill9 kills portcullis with SIGKILL and waits for it to be gone.
func (p *process) kill9() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	select {
	case p.err = <-p.done:
		p.stopped = true
	case <-time.After(10 * time.Second):
		p.t.Fatal("portcullis outlived SIGKILL")
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		p.t.Fatalf("portcullis ended with %v, not by SIGKILL", p.cmd.ProcessState)
	}
}

var otpauthURI = regexp.MustCompile(`otpauth://totp/[^\s)]+`)

// connectSeeing connects like opsServe.connect and also returns the
// notices and the error text, where an enrolment is shown.
func connectSeeing(ctx context.Context, addr, user, password, database string) (*pgconn.PgConn, string, error) {
	host, port, _ := net.SplitHostPort(addr)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=require connect_timeout=30", host, port, user, database))
	if err != nil {
		return nil, "", err
	}
	cfg.Password = password
	var mu sync.Mutex
	var seen strings.Builder
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		defer mu.Unlock()
		seen.WriteString(n.Message + "\n")
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		seen.WriteString(err.Error())
	}
	return c, seen.String(), err
}

// totpSecret finds the enrolment among what the client was shown.
func totpSecret(t *testing.T, shown string) string {
	t.Helper()
	uri := otpauthURI.FindString(shown)
	if uri == "" {
		// What was shown may hold a session key: not for a failure message.
		t.Fatalf("no otpauth URI in the %d bytes the client was shown", len(shown))
	}
	secret, err := mfa.SecretFromURI(uri)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func codeAt(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := mfa.CodeAt(secret, at)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// portcullis on its SQLite store: the file locked by another process
// refuses what must be written, saying the store could not be reached,
// and recovers when the lock goes; then portcullis is killed with SIGKILL
// while sessions are open and started again on the same file: session
// keys, the TOTP step a code used (the code stays used) and a lockout
// are all still there.
func TestKilledAndRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the portcullis binary")
	}
	e := newFaultEnv(t)
	bin := buildPortcullis(t)
	dbPath := filepath.Join(e.dir, "portcullis.db")
	cfg := e.writeConfig("portcullis.yaml", faultSQLiteStore(dbPath, e.dir), true)
	p := e.startProcess(bin, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// alice signs in and keeps a session open; later she enrols in TOTP
	// and uses a code on "secure", and keeps that session open too.
	held, notices, err := faultSignIn(ctx, p.opsServe, p.pgAddr, opsAlice, "demo")
	if err != nil {
		t.Fatalf("alice's sign-in: %v", err)
	}
	defer held.Close(context.Background())
	aliceKey := keyOf(t, notices)

	// bob gets three codes wrong and is locked out.
	bobToken := p.token(faultBob)
	_, shown, err := connectSeeing(ctx, p.pgAddr, faultBob, bobToken, "secure")
	wantRefusal(t, err, "28000", "requires a TOTP code")
	bobSecret := totpSecret(t, shown)
	wrong := func() string {
		n, _ := strconv.Atoi(codeAt(t, bobSecret, time.Now()))
		return fmt.Sprintf("%06d", (n+500000)%1000000)
	}
	for i := range 3 {
		_, err = p.connect(ctx, faultBob, bobToken+":"+wrong(), "secure")
		wantRefusal(t, err, "28P01", "TOTP code for "+faultBob+" is wrong")
		if i == 2 && !strings.Contains(err.Error(), "locked until") {
			t.Fatalf("the third wrong code did not lock: %v", err)
		}
	}
	_, err = p.connect(ctx, faultBob, bobToken+":"+codeAt(t, bobSecret, time.Now()), "secure")
	wantRefusal(t, err, "28000", "too many wrong TOTP codes for "+faultBob)

	t.Run("SQLite locked by another process", func(t *testing.T) {
		unlock := lockSQLite(t, dbPath)
		defer unlock()
		start := time.Now()
		_, _, err := faultSignIn(ctx, p.opsServe, p.pgAddr, faultDave, "demo")
		wantRefusal(t, err, "08004", "store could not be reached", faultDave)
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("the refusal took %s", took)
		}
		query(ctx, t, held, "select 1")
		unlock()
		c, notices, err := faultSignIn(ctx, p.opsServe, p.pgAddr, faultDave, "demo")
		if err != nil {
			t.Fatalf("dave after the lock went: %v", err)
		}
		c.Close(ctx)
		keyOf(t, notices)
	})

	// Last before the kill, so that the restart comes while alice's code
	// is still within the window where it would be accepted if its use
	// had been forgotten.
	_, shown, err = connectSeeing(ctx, p.pgAddr, opsAlice, aliceKey, "secure")
	wantRefusal(t, err, "28000", "requires a TOTP code")
	aliceSecret := totpSecret(t, shown)
	usedAt := time.Now()
	used := codeAt(t, aliceSecret, usedAt)
	secure, err := p.connect(ctx, opsAlice, aliceKey+":"+used, "secure")
	if err != nil {
		t.Fatalf("alice with a good TOTP code: %v", err)
	}
	defer secure.Close(context.Background())
	query(ctx, t, secure, "select 1")
	_, err = p.connect(ctx, opsAlice, aliceKey+":"+used, "secure")
	wantRefusal(t, err, "28P01", "already used")

	// SIGKILL with alice's two sessions open: they end; the state stays.
	p.kill9()
	if _, err := held.Exec(ctx, "select 1").ReadAll(); err == nil {
		t.Fatal("a session outlived the process that relayed it")
	}
	p = e.startProcess(bin, cfg)

	_, err = p.connect(ctx, opsAlice, aliceKey+":"+used, "secure")
	if mfa.Step(time.Now()) > mfa.Step(usedAt)+1 {
		t.Fatalf("the restart took until %s: alice's code of %s is no longer in the window that shows it was used", time.Now().Format(time.TimeOnly), usedAt.Format(time.TimeOnly))
	}
	wantRefusal(t, err, "28P01", "already used")
	c, err := p.connect(ctx, opsAlice, aliceKey, "demo")
	if err != nil {
		t.Fatalf("alice's session key after the restart: %v", err)
	}
	query(ctx, t, c, "select 1")
	c.Close(ctx)
	_, err = p.connect(ctx, faultBob, bobToken+":"+codeAt(t, bobSecret, time.Now()), "secure")
	wantRefusal(t, err, "28000", "too many wrong TOTP codes for "+faultBob)
	if n := len(p.events("server.started")); n != 1 {
		t.Fatalf("%d server.started events in the new process", n)
	}
}

// lockSQLite takes the write lock of the SQLite file at path from this
// process (portcullis runs in another) with BEGIN EXCLUSIVE, and returns
// the function that lets it go (safe to call twice).
func lockSQLite(t *testing.T, path string) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatalf("lock %s: %v", path, err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil && !errors.Is(err, sql.ErrConnDone) {
				t.Errorf("unlock %s: %v", path, err)
			}
			conn.Close()
			db.Close()
		})
	}
}

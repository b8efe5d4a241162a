package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/internal/testmysql"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

var (
	psqlCommandRE = regexp.MustCompile(`psql "([^"]+)"`)
	userCodeRE    = regexp.MustCompile(`enter the code ([^\s,]+)`)
	sessionKeyRE  = regexp.MustCompile(`session key as your password: (\S+)`)
	mariadbRE     = regexp.MustCompile(`mariadb --ssl -h (\S+) -P (\d+) `)
)

// `portcullis dev` end to end, as its printed instructions tell a person
// to use it: psql with the printed command, the code from psql's notice
// approved with `dev approve`, the mapped role, then the session key.
func TestDevEndToEnd(t *testing.T) {
	psql := lookPsql(t)
	pg := testpg.Start(t, testpg.Options{})       // the "local PostgreSQL"
	my := testmysql.Start(t, testmysql.Options{}) // the "local MariaDB"
	stateDir := t.TempDir()
	adminURL := fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", pg.SocketDir, pg.Port)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- dispatch(ctx, []string{"dev",
			"--directory", "../../testdata/directory/demo.yaml",
			"--sim-addr", "127.0.0.1:0",
			"--postgres-listen", "127.0.0.1:0",
			"--postgres-backend", pg.Addr(),
			"--postgres-admin-url", adminURL,
			"--mysql-listen", "127.0.0.1:0",
			"--mysql-backend", my.Addr(),
			"--mysql-admin-dsn", "root@unix(" + my.Socket + ")/",
			"--state-dir", stateDir,
			"--log-format", "json",
		}, nil, &stdout, &stderr)
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	// Wait for the instructions.
	var conninfo string
	deadline := time.After(30 * time.Second)
	for {
		if m := psqlCommandRE.FindStringSubmatch(stderr.String()); m != nil {
			conninfo = m[1]
			break
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("dev ended before it was ready: %v\nstderr:\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("dev printed no psql command within 30s\nstderr:\n%s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	instructions := stderr.String()
	if strings.Contains(instructions, "port=0") {
		t.Fatalf("the printed command names port 0, not the listener's port:\n%s", instructions)
	}
	if strings.Contains(instructions, "warning:") {
		t.Fatalf("dev could not prepare the local PostgreSQL:\n%s", instructions)
	}
	if !strings.Contains(instructions, "--state-dir "+stateDir) {
		t.Errorf("the printed approve command does not name the state directory %s:\n%s", stateDir, instructions)
	}

	// Every secret dev made, and those of this sign-in as they appear,
	// must stay out of its log and out of what psql and mariadb show
	// (but for the person's own key and code). The simulator runs inside
	// dev, so its tokens are not seen here; TestLoad watches those.
	secrets := newSecretLedger()
	for _, name := range []string{"graph-secret", devAnalystRole + ".password", devFinanceRole + ".password", "store.key"} {
		b, err := os.ReadFile(filepath.Join(stateDir, name))
		if err != nil {
			t.Fatal(err)
		}
		secrets.add(name, strings.TrimSpace(string(b)))
	}
	typed := "anything-" + randomPassword()
	secrets.add("typed password", typed)

	// Sign in: any password starts the device-code flow; the person
	// reads the code from psql and approves it from another terminal.
	first := runPsql(t, psql, conninfo, typed, func(line string) {
		m := userCodeRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		secrets.addShownToOwner("user code", m[1])
		var out, errOut bytes.Buffer
		if code := run([]string{"dev", "approve", m[1], "--as", "alice@contoso.example", "--state-dir", stateDir}, nil, &out, &errOut); code != exitOK {
			t.Errorf("dev approve exited %d: %s", code, errOut.String())
			return
		}
		if !strings.Contains(out.String(), "approved") {
			t.Errorf("dev approve printed %q", out.String())
		}
	})
	if first.err != nil {
		t.Fatalf("psql: %v\nstderr:\n%s", first.err, first.stderr)
	}
	if got := strings.TrimSpace(first.stdout); got != devAnalystRole {
		t.Errorf("current_user = %q, want %q\nstderr:\n%s", got, devAnalystRole, first.stderr)
	}
	if !userCodeRE.MatchString(first.stderr) {
		t.Errorf("psql showed no device code:\n%s", first.stderr)
	}
	m := sessionKeyRE.FindStringSubmatch(first.stderr)
	if m == nil {
		t.Fatalf("psql showed no session key:\n%s", first.stderr)
	}
	key := m[1]
	secrets.add("session key", key)
	secrets.clientSaw("psql's output signing in", first.stdout+first.stderr, key)

	// A code the simulator never issued is refused in words.
	var approveOut, approveErr bytes.Buffer
	if code := run([]string{"dev", "approve", "ABCDEFGHJ", "--as", "alice@contoso.example", "--state-dir", stateDir}, nil, &approveOut, &approveErr); code == exitOK ||
		!strings.Contains(approveErr.String(), "the simulator refused: ") || strings.Contains(approveErr.String(), `{"error"`) {
		t.Errorf("dev approve of an unknown code exited %d: %s", code, approveErr.String())
	}

	// Reconnect with the session key: no sign-in this time.
	second := runPsql(t, psql, conninfo, key, func(line string) {
		if userCodeRE.MatchString(line) {
			t.Errorf("a new device code with the session key: %s", line)
		}
	})
	if second.err != nil {
		t.Fatalf("psql with the session key: %v\nstderr:\n%s", second.err, second.stderr)
	}
	if got := strings.TrimSpace(second.stdout); got != devAnalystRole {
		t.Errorf("with the session key, current_user = %q, want %q", got, devAnalystRole)
	}
	secrets.clientSaw("psql's output with the session key", second.stdout+second.stderr)

	// The same sign-in reaches the MySQL resource, through the printed
	// mariadb command, with the session key as the password.
	mm := mariadbRE.FindStringSubmatch(instructions)
	if mm == nil {
		t.Fatalf("dev printed no mariadb command:\n%s", instructions)
	}
	mariadb, err := exec.LookPath("mariadb")
	if err != nil {
		t.Fatalf("mariadb client: %v", err)
	}
	cmd := exec.Command(mariadb, "--ssl", "-h", mm[1], "-P", mm[2], "-u", "alice@contoso.example", "--password="+key,
		"-N", "-B", "-e", "select current_user()", devMySQLResource)
	out, err := cmd.CombinedOutput()
	secrets.clientSaw("mariadb's output", string(out))
	if err != nil {
		t.Fatalf("mariadb through dev: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, devAnalystRole+"@") {
		t.Errorf("MySQL current_user() = %q, want %s@…", got, devAnalystRole)
	}

	// Asking psql for the MySQL resource says where it is served.
	wrong := runPsql(t, psql, conninfo+" dbname="+devMySQLResource, key, func(string) {})
	if wrong.err == nil || !strings.Contains(wrong.stderr, "is a MySQL resource: connect to it through portcullis's MySQL listener") {
		t.Errorf("psql to the MySQL resource: %v\n%s", wrong.err, wrong.stderr)
	}

	// And the mariadb command line, for the PostgreSQL resource.
	wrongDB := exec.Command(mariadb, "--ssl", "-h", mm[1], "-P", mm[2], "-u", "alice@contoso.example", "--password="+key,
		"-N", "-B", "-e", "select 1", "demo")
	if out, err := wrongDB.CombinedOutput(); err == nil || !strings.Contains(string(out), "ERROR 1049") || !strings.Contains(string(out), "is a PostgreSQL resource") {
		t.Errorf("mariadb to the PostgreSQL resource: %v\n%s", err, out)
	}

	// SIGHUP re-reads dev's configuration file, as it does serve's
	// (operating.md), rather than ending dev.
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloadBy := time.After(30 * time.Second)
	for !strings.Contains(stdout.String(), `"event":"config.reloaded"`) {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("dev ended on SIGHUP: %v", err)
		case <-reloadBy:
			t.Fatalf("dev did not reload within 30s of SIGHUP:\n%s", stdout.String())
		case <-time.After(20 * time.Millisecond):
		}
	}

	cancel()
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("dev returned %v after its context was cancelled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop within 30s of its context being cancelled")
	}

	logs := stdout.String()
	if !strings.Contains(logs, `"event":"session.started"`) || !strings.Contains(logs, devAnalystRole) {
		t.Errorf("the log has no session.started as %s:\n%s", devAnalystRole, logs)
	}
	secrets.check(t, map[string]string{"dev's log": logs, "dev's instructions": stderr.String()})
}

func lookPsql(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("psql not found; CI=true requires it")
		}
		t.Skip("\n\n*** SKIPPING: psql not found on $PATH ***\n")
	}
	return path
}

type psqlResult struct {
	stdout, stderr string
	err            error
}

// runPsql runs `select current_user` through psql with conninfo and
// password, in a clean PG* environment, calling onLine with each line psql
// writes to stderr as it writes it.
func runPsql(t *testing.T, path, conninfo, password string, onLine func(string)) psqlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-X", "-A", "-t", "-q", "-c", "select current_user", conninfo)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=20")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(&stderr, pw)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start psql: %v", err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		s := bufio.NewScanner(pr)
		for s.Scan() {
			onLine(s.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-scanned
	return psqlResult{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// syncBuffer is a bytes.Buffer that dev writes to while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

package mysql

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// mariadbCLI is the mariadb command line, or a skip (a failure under
// CI=true) when it is not installed.
func mariadbCLI(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"mariadb", "mysql"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the mariadb command line is not installed; CI=true requires it")
	}
	t.Skip("\n\n*** SKIPPING: the mariadb command line is not installed (apt-get install mariadb-client) ***\n")
	return ""
}

// cli runs the mariadb command line against portcullis over verified TLS.
func (h *harness) cli(ctx context.Context, user, password, sql string) *exec.Cmd {
	h.t.Helper()
	return h.cliTo(ctx, user, password, "app", sql)
}

// cliTo is cli with the resource to connect to.
func (h *harness) cliTo(ctx context.Context, user, password, resource, sql string) *exec.Cmd {
	h.t.Helper()
	cmd := exec.CommandContext(ctx, mariadbCLI(h.t), "--no-defaults",
		"-h", "127.0.0.1", "-P", strconv.Itoa(h.port()), "-u", user, "--password="+password,
		"--ssl", "--ssl-ca="+h.caFile, "--ssl-verify-server-cert", "--connect-timeout=20",
		"-D", resource, "-N", "-B", "-e", sql)
	cmd.Env = []string{"HOME=" + h.t.TempDir(), "PATH=" + os.Getenv("PATH")}
	return cmd
}

// cliSigningIn runs the command line on resource with a password that
// starts a sign-in, as alice: it approves the code and presses Enter
// after signing in and again after the session key, as a person would.
// It returns the code the simulator issued and how the command ended.
func (h *harness) cliSigningIn(ctx context.Context, resource, sql string, stdout, stderr *bytes.Buffer) (code string, err error) {
	h.t.Helper()
	cmd := h.cliTo(ctx, aliceUPN, "anything", resource, sql)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	code = h.approveNext(ctx, aliceUPN)
	if _, err := stdin.Write([]byte("\n\n")); err != nil {
		h.t.Fatal(err)
	}
	return code, cmd.Wait()
}

// cliSignedIn is a harness where alice has signed in once through the
// command line's dialog, and the address grace lets her in again without
// a prompt, with the context for the test's commands.
func cliSignedIn(t *testing.T) (*harness, context.Context) {
	t.Helper()
	h := newHarness(t, harnessOptions{grace: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	t.Cleanup(cancel)
	var stdout, stderr bytes.Buffer
	if _, err := h.cliSigningIn(ctx, "app", "SELECT 1", &stdout, &stderr); err != nil {
		t.Fatalf("mariadb, signing in: %v: %s", err, stderr.String())
	}
	return h, ctx
}

var cliCode = regexp.MustCompile(`enter the code (\S+),`)

// Retry mode in the mariadb command line: the ERR carries the URL and
// code; after the approval a reconnect completes.
func TestCLIRetryMode(t *testing.T) {
	h := newHarness(t, harnessOptions{prompt: config.PromptError})
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	var stderr bytes.Buffer
	cmd := h.cli(ctx, aliceUPN, "anything", "SELECT CURRENT_USER()")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		t.Fatal("the first connection succeeded without a sign-in")
	}
	msg := stderr.String()
	if !strings.Contains(msg, "ERROR 1045 (28000)") || !strings.Contains(msg, "/devicelogin") {
		t.Fatalf("stderr %q, want ERROR 1045 (28000) with the verification URL", msg)
	}
	m := cliCode.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("no code in %q", msg)
	}
	if got := h.approveNext(ctx, aliceUPN); got != m[1] {
		t.Fatalf("the client was shown %s, the simulator issued %s", m[1], got)
	}

	for {
		var stdout, stderr bytes.Buffer
		cmd := h.cli(ctx, aliceUPN, "anything", "SELECT CURRENT_USER()")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err == nil {
			if got := strings.TrimSpace(stdout.String()); got != userNative.Name+"@%" {
				t.Fatalf("CURRENT_USER() = %q, want %s@%%", got, userNative.Name)
			}
			break
		}
		if !strings.Contains(stderr.String(), "Sign-in required") || ctx.Err() != nil {
			t.Fatalf("reconnect: %v: %s", err, stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodDeviceCode) })
}

var cliKey = regexp.MustCompile(`session key as your password:\s+(\S+)`)

// Dialog mode in the mariadb command line: the prompt is shown in the
// same connection, the person presses Enter, sees the session key,
// presses Enter again, and the query runs; then the key signs in
// without a prompt.
func TestCLIDialogAndSessionKey(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	var stdout, stderr bytes.Buffer
	code, err := h.cliSigningIn(ctx, "app", "SELECT CURRENT_USER()", &stdout, &stderr)
	if err != nil {
		t.Fatalf("mariadb: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "enter the code "+code) {
		t.Errorf("the prompt does not show the code %s: %q", code, out)
	}
	m := cliKey.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no session key shown: %q", out)
	}
	key := m[1]
	t.Logf("mariadb showed:\n%s", strings.ReplaceAll(out, key, "<session key>"))
	if !strings.HasSuffix(strings.TrimSpace(out), userNative.Name+"@%") {
		t.Errorf("output %q does not end with the query's result", out)
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodDeviceCode) })
	issued := len(h.events("auth.device_code.issued"))

	stdout.Reset()
	stderr.Reset()
	again := h.cli(ctx, aliceUPN, key, "SELECT CURRENT_USER()")
	again.Stdout, again.Stderr = &stdout, &stderr
	if err := again.Run(); err != nil {
		t.Fatalf("with the session key: %v: %s", err, stderr.String())
	}
	if got := strings.TrimSpace(stdout.String()); got != userNative.Name+"@%" {
		t.Errorf("with the session key, CURRENT_USER() = %q", got)
	}
	if n := len(h.events("auth.device_code.issued")); n != issued {
		t.Error("the session key led to a new device code")
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })

	// A client starting on mysql_native_password (as MariaDB's library
	// does when its caching_sha2_password plugin is not loaded yet) is
	// switched to caching_sha2_password and sends the key by its full
	// authentication, over TLS: no mysql_clear_password plugin to load.
	stdout.Reset()
	stderr.Reset()
	native := h.cli(ctx, aliceUPN, key, "SELECT CURRENT_USER()")
	native.Args = append(native.Args, "--default-auth=mysql_native_password")
	native.Stdout, native.Stderr = &stdout, &stderr
	if err := native.Run(); err != nil {
		t.Fatalf("starting on mysql_native_password, with the session key: %v: %s", err, stderr.String())
	}
	if got := strings.TrimSpace(stdout.String()); got != userNative.Name+"@%" {
		t.Errorf("starting on mysql_native_password, CURRENT_USER() = %q", got)
	}
	h.noSecretsLogged(key, code, userNative.Password)
}

// TestCLIQuitIsAClientClose: the mariadb command line ends a session with
// COM_QUIT and closes its TLS connection without reading what follows,
// so its socket often resets once portcullis passes on the backend's
// close. Every such session ends as the client's close, with no error
// (no relay_error counted for an ordinary exit).
func TestCLIQuitIsAClientClose(t *testing.T) {
	h, ctx := cliSignedIn(t)
	const runs = 12
	for range runs {
		if out, err := h.cli(ctx, aliceUPN, "anything", "SELECT 1").CombinedOutput(); err != nil {
			t.Fatalf("mariadb: %v: %s", err, out)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(h.events("session.ended")) < runs+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ended := h.events("session.ended")
	if len(ended) != runs+1 {
		t.Fatalf("%d sessions ended, want %d", len(ended), runs+1)
	}
	for _, e := range ended {
		m := e.ContextMap()
		if m["reason"] != "client_closed" || m["error"] != nil {
			t.Errorf("session %v ended with reason %v, error %v; want client_closed and none", m["session_id"], m["reason"], m["error"])
		}
	}
}

// A dialog sign-in whose backend login then fails shows the new session
// key before the ERR: once the backend is back, the key gets the person in
// without signing in again.
func TestCLISessionKeyShownWhenTheBackendFails(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	var stdout, stderr bytes.Buffer
	if _, err := h.cliSigningIn(ctx, "gone", "SELECT 1", &stdout, &stderr); err == nil {
		t.Fatal("connected to a backend that is down")
	}
	if !strings.Contains(stderr.String(), "ERROR 1429") {
		t.Errorf("stderr %q, want ERROR 1429", stderr.String())
	}
	m := cliKey.FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no session key shown before the error: %q", stdout.String())
	}
	issued := len(h.events("auth.device_code.issued"))
	stdout.Reset()
	stderr.Reset()
	again := h.cli(ctx, aliceUPN, m[1], "SELECT CURRENT_USER()")
	again.Stdout, again.Stderr = &stdout, &stderr
	if err := again.Run(); err != nil {
		t.Fatalf("with the key shown: %v: %s", err, stderr.String())
	}
	if got := strings.TrimSpace(stdout.String()); got != userNative.Name+"@%" {
		t.Errorf("CURRENT_USER() = %q", got)
	}
	if n := len(h.events("auth.device_code.issued")); n != issued {
		t.Error("the key shown led to a new device code")
	}
}

// The mariadb command line reconnects (`connect`, `\r`, or after losing
// the server) asking for the database it last switched to with USE. That
// name is no resource: it is a database on the listener's default
// resource, and the session after the reconnect is there, as the mapped
// user.
func TestCLIReconnectsAfterUse(t *testing.T) {
	h, ctx := cliSignedIn(t)
	before := len(h.events("session.started"))
	out, err := h.cli(ctx, aliceUPN, "anything", "USE information_schema; connect; SELECT DATABASE(), CURRENT_USER()").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb: %v: %s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "information_schema\t"+userNative.Name+"@%"; got != want {
		t.Errorf("after the reconnect: %q, want %q", got, want)
	}
	if n := len(h.events("session.started")) - before; n != 2 {
		t.Errorf("%d sessions started, want 2 (the first connection and the reconnect)", n)
	}
}

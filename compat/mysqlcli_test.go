package compat

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The dialog's questions end without a newline: a code or key is only
// known whole once what follows it has arrived.
var (
	dialogCodeRE = regexp.MustCompile(`enter the code ([^\s,]+)[\s,]`)
	dialogKeyRE  = regexp.MustCompile(`session key as your password:\s+(\S+)\s`)
)

func mariadbCLIClient() compatClient {
	return cliClient{name: "mariadb", slug: "mariadb", mysql: true, version: mariadbVersion, measure: measureMariaDBCLI}.compat()
}

// mariadbVersion is the Distrib in "mariadb  Ver 15.1 Distrib 10.11.6-MariaDB, ...".
func mariadbVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	if m := regexp.MustCompile(`Distrib ([^,\s]+)`).FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return strings.TrimSpace(string(out))
}

// mariadbArgs connect the mariadb command line to portcullis over TLS,
// verifying its certificate against caFile (--ssl-verify-server-cert:
// chain and host name).
func (c *cliCtx) mariadbArgs(password, caFile string, more ...string) []string {
	return c.mariadbArgsFor(c.dl.resource, password, caFile, more...)
}

// mariadbArgsFor connects to resource.
func (c *cliCtx) mariadbArgsFor(resource, password, caFile string, more ...string) []string {
	return append([]string{"--no-defaults",
		"-h", c.s.host, "-P", strconv.Itoa(c.dl.port), "-u", c.user, "--password=" + password,
		"--ssl", "--ssl-ca=" + caFile, "--ssl-verify-server-cert", "--connect-timeout=30",
		"-D", resource, "-N", "-B"}, more...)
}

func (c *cliCtx) mariadbEnv() []string {
	return procEnv("HOME=" + c.dir)
}

// dialogSignIn runs the mariadb command line with a password that starts
// a sign-in, reading its stdout as a person reads the screen: it approves
// the code the dialog shows, presses Enter, reads the session key, and
// presses Enter again.
func (c *cliCtx) dialogSignIn(ctx context.Context, sql string) (outcome, string) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// On a terminal the question shows at once: stdout is line-buffered
	// and flushed before the client reads the answer. Through a pipe it
	// is block-buffered, so stdbuf makes it unbuffered, as a person at a
	// terminal would see it.
	stdbuf, err := exec.LookPath("stdbuf")
	if err != nil {
		return failed("stdbuf (coreutils) is needed to read the dialog through a pipe: %v", err), ""
	}
	cmd := exec.CommandContext(ctx, stdbuf, append([]string{"-o0", c.bin}, c.mariadbArgs(signInPassword, c.s.caFile, "-e", sql)...)...)
	cmd.Env = c.mariadbEnv()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return failed("%v", err), ""
	}
	stderr := &lockedText{}
	cmd.Stderr = stderr
	screen := &dialogScreen{s: c.s, user: c.user, enter: stdin}
	cmd.Stdout = screen
	if err := cmd.Run(); err != nil {
		return failed("%v: %s", err, firstLine(redact(stderr.String()))), ""
	}
	out, code, key, aerr := screen.result()
	switch {
	case aerr != nil:
		return failed("%v", aerr), ""
	case code == "":
		return failed("the dialog showed no device code"), ""
	case key == "":
		return failed("the dialog showed no session key"), ""
	}
	// The answers typed are not echoed: the query's output follows the
	// last question on its line.
	if i := strings.LastIndex(out, "Press Enter to continue:"); i >= 0 {
		out = out[i+len("Press Enter to continue:"):]
	}
	if got := strings.TrimSpace(out); got != c.dl.wantUser {
		return failed("the query printed %q, want %q", got, c.dl.wantUser), key
	}
	return pass("The prompt is a MariaDB dialog question on the terminal; after signing in the person presses Enter, is shown the session key, and presses Enter again."), key
}

// dialogScreen is the terminal of a mariadb command line in a dialog.
type dialogScreen struct {
	s     *suite
	user  string
	enter io.Writer

	mu   sync.Mutex
	text strings.Builder
	code string
	key  string
	err  error
}

func (d *dialogScreen) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.text.Write(p)
	all := d.text.String()
	if m := dialogCodeRE.FindStringSubmatch(all); m != nil && d.code == "" {
		d.code = m[1]
		// The person signs in in a browser, then presses Enter.
		if err := d.s.approve(m[1], d.user); err != nil {
			d.err = err
		}
		io.WriteString(d.enter, "\n")
	}
	if m := dialogKeyRE.FindStringSubmatch(all); m != nil && d.key == "" {
		d.key = m[1]
		io.WriteString(d.enter, "\n")
	}
	return len(p), nil
}

func (d *dialogScreen) result() (out, code, key string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.text.String(), d.code, d.key, d.err
}

func measureMariaDBCLI(t *testing.T, ctx context.Context, c *cliCtx) map[string]outcome {
	dl := c.dl
	res := map[string]outcome{}
	run := func(stdin string, more ...string) (*cliRun, error) {
		before := c.s.codesIssued(c.user)
		r, err := runCLI(ctx, c.bin, c.mariadbEnv(), stdin, nil, c.mariadbArgs(c.key, c.s.caFile, more...)...)
		if err == nil && c.s.codesIssued(c.user) != before {
			err = fmt.Errorf("the session key did not stand in for a sign-in: a new device code was issued")
		}
		return r, err
	}
	check := func(r *cliRun, err error, want string) outcome {
		if err != nil {
			return failed("%v", err)
		}
		if r.err != nil {
			return failed("%v: %s", r.err, firstLine(redact(r.stderr.String())))
		}
		if got := strings.TrimSpace(r.out()); got != want {
			return failed("printed %q, want %q", got, want)
		}
		return pass("")
	}

	res[featSignIn.key], c.key = c.dialogSignIn(ctx, dl.currentUser)
	c.keyFromElsewhere(t, ctx)

	r, err := run("", "-e", dl.currentUser)
	res[featSessionKey.key] = check(r, err, dl.wantUser)

	res[featTOTP.key] = c.totp(ctx,
		func(password string) (*cliRun, error) {
			return runCLI(ctx, c.bin, c.mariadbEnv(), "", nil, c.mariadbArgsFor(dl.totpResource, password, c.s.caFile, "-e", dl.currentUser)...)
		},
		func(r *cliRun, err error) outcome { return check(r, err, dl.wantUser) },
		"ERROR "+dl.wrongCodeCode+" (28000): "+wrongCodeText(c.user))

	res[featRows.key] = func() outcome {
		r, err := run("", "-e", dl.rowsSQL)
		if err != nil || r.err != nil {
			return check(r, err, "")
		}
		return checkRows(r.out(), "\t")
	}()

	prep := []string{"PREPARE compat_double FROM '" + dl.preparedSQL + "'"}
	for _, a := range preparedArgs {
		prep = append(prep, fmt.Sprintf("SET @a = %d", a), "EXECUTE compat_double USING @a")
	}
	prep = append(prep, "select ("+dl.preparedSeen+") > 0")
	r, err = run("", "-e", strings.Join(prep, "; "))
	res[featPrepared.key] = check(r, err, strings.Join(append(preparedWant(), "1"), "\n"))
	if res[featPrepared.key].status == statusPass {
		res[featPrepared.key] = pass("SQL PREPARE and EXECUTE: the command line has no protocol-level prepared statements.")
	}

	res[featRollback.key] = func() outcome {
		marker := "rb_" + randomHex(6)
		insert, count := rollbackSQL(c.user, marker)
		r, err := run("", "-e", strings.Join([]string{"BEGIN", insert, count, "ROLLBACK", count}, "; "))
		if o := check(r, err, "1\n0"); o.status != statusPass {
			return o
		}
		if n, err := dl.backend.rowsWithMarker(ctx, marker); err != nil || n != "0" {
			return failed("the server has %s row(s) after the rollback (%v)", n, err)
		}
		return pass("")
	}()

	res[featCancel.key] = func() outcome {
		marker := cancelMarker("mariadb")
		// A script on stdin with --force goes on after the cancelled
		// statement, so the second statement shows the connection still
		// works. (-e stops at the first error, --force or not.)
		r, err := startCLI(ctx, c.bin, c.mariadbEnv(), dl.sleepSQL(marker)+";\n"+aliveSQL+";\n", nil, c.mariadbArgs(c.key, c.s.caFile, "--force")...)
		if err != nil {
			return failed("%v", err)
		}
		if err := waitRunning(ctx, dl.backend, marker); err != nil {
			r.cmd.Process.Kill()
			r.wait()
			return failed("%v", err)
		}
		// Ctrl-C: the command line connects again (with the same
		// password, the session key) and sends KILL QUERY with the
		// connection id portcullis gave it.
		start := time.Now()
		if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
			return failed("%v", err)
		}
		r.wait()
		took := time.Since(start)
		stderr := r.stderr.String()
		if !strings.Contains(stderr, "ERROR "+dl.cancelCode) {
			return failed("the statement was not interrupted by the server (%v after %v): %s / %s", r.err, took.Round(time.Millisecond), firstLine(redact(stderr)), firstLine(r.out()))
		}
		if took > cancelBound {
			return failed("the command line took %v to finish after the cancel", took.Round(time.Millisecond))
		}
		if !strings.Contains(r.out(), "still here") {
			return failed("the connection did not go on after the cancel: %q", r.out())
		}
		wctx, wcancel := context.WithTimeout(ctx, cancelBound)
		defer wcancel()
		if err := waitStopped(wctx, dl.backend, marker); err != nil {
			return failed("%v", err)
		}
		return pass("SIGINT, as Ctrl-C sends: the command line connects again and sends KILL QUERY with the connection id portcullis gave it, which portcullis carries out on the right backend session.")
	}()

	res[featError.key] = func() outcome {
		r, err := run(dl.syntaxSQL+";\n"+aliveSQL+";\n", "--force")
		if err != nil {
			return failed("%v", err)
		}
		stderr := r.stderr.String()
		if want := "ERROR " + dl.syntaxCode + " (42000) at line 1: " + dl.syntaxText; !strings.Contains(stderr, want) {
			return failed("stderr has no %q: %s", want, firstLine(redact(stderr)))
		}
		if got := strings.TrimSpace(r.out()); got != "still here" {
			return failed("the session did not go on after the error: printed %q; stderr %q", got, redact(stderr))
		}
		return pass("")
	}()

	res[featTLS.key] = func() outcome {
		r, err := runCLI(ctx, c.bin, c.mariadbEnv(), "", nil, c.mariadbArgs(c.key, c.s.wrongCAFile, "-e", dl.currentUser)...)
		if err != nil {
			return failed("%v", err)
		}
		return tlsRefused(r)
	}()
	return res
}

// accessDeniedRE is a refusal by the server as the mariadb command line
// ("ERROR 1045 (28000)") and sysbench ("error 1045:") print it; the bare
// number would also match a port such as 41045 in sysbench's output.
var accessDeniedRE = regexp.MustCompile(`(?i)\berror 1045\b`)

// tlsRefused judges a run told to trust another CA: it must fail, and
// over the certificate rather than a refusal by the server.
func tlsRefused(r *cliRun) outcome {
	stderr := r.stderr.String() + r.out()
	switch {
	case r.err == nil:
		return failed("connected although the client was told to trust another CA")
	case !tlsFailureRE.MatchString(stderr):
		return failed("the connection failed, but not over the certificate: %s", firstLine(redact(stderr)))
	case accessDeniedRE.MatchString(stderr):
		return failed("refused by the server, not by the client's certificate check: %s", lineMatching(redact(stderr), accessDeniedRE))
	}
	return pass("")
}

func sysbenchClient() compatClient {
	return cliClient{name: "sysbench", slug: "sysbench", mysql: true, version: sysbenchVersion, measure: measureSysbench}.compat()
}

func sysbenchVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "sysbench ")
}

// sysbench 1.0 takes its TLS files from fixed names in the working
// directory: cacert.pem, client-cert.pem, client-key.pem.
func (c *cliCtx) sysbenchDir(t *testing.T, caFile string) string {
	dir, err := os.MkdirTemp(c.dir, "sysbench")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	// portcullis asks for no client certificate; sysbench insists on
	// loading one.
	certPEM, keyPEM, err := c.s.clientCA.Issue("sysbench")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"cacert.pem": ca, "client-cert.pem": certPEM, "client-key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// sysbenchLua is one event's worth of Lua: body runs with con connected.
func sysbenchLua(body string) string {
	return `function thread_init()
  drv = sysbench.sql.driver()
  con = drv:connect()
end

function thread_done()
  con:disconnect()
end

function event()
` + body + `
end
`
}

func measureSysbench(t *testing.T, ctx context.Context, c *cliCtx) map[string]outcome {
	dl := c.dl
	res := map[string]outcome{
		featCancel.key: notApplicable("sysbench has no way to cancel a statement: SIGINT ends it without KILL QUERY, and the statement runs on " +
			"at the server, the same when sysbench connects to MariaDB directly."),
	}
	goodDir := c.sysbenchDir(t, c.s.caFile)
	n := 0
	// sysbenchOn runs lua with sysbench connected to resource.
	sysbenchOn := func(resource, password, dir, lua string) (*cliRun, error) {
		n++
		script := filepath.Join(dir, fmt.Sprintf("compat%d.lua", n))
		if err := os.WriteFile(script, []byte(sysbenchLua(lua)), 0o644); err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, c.bin, "--db-driver=mysql",
			"--mysql-host="+c.s.host, "--mysql-port="+strconv.Itoa(dl.port), "--mysql-user="+c.user, "--mysql-password="+password,
			"--mysql-db="+resource, "--mysql-ssl=on", "--mysql-ignore-errors=none",
			"--threads=1", "--events=1", "--time=0", script, "run")
		cmd.Dir = dir
		cmd.Env = procEnv()
		r := &cliRun{cmd: cmd, stdout: &lockedText{}, stderr: &lockedText{}, done: make(chan struct{})}
		cmd.Stdout, cmd.Stderr = r.stdout, r.stderr
		r.err = cmd.Run()
		close(r.done)
		return r, nil
	}
	sysbench := func(password, dir, lua string) (*cliRun, error) { return sysbenchOn(dl.resource, password, dir, lua) }
	// printed is what the script printed with prefix, one value a line.
	printed := func(r *cliRun, prefix string) []string {
		var out []string
		for _, line := range strings.Split(r.out(), "\n") {
			if v, ok := strings.CutPrefix(line, prefix); ok {
				out = append(out, v)
			}
		}
		return out
	}
	ran := func(r *cliRun, err error) outcome {
		if err != nil {
			return failed("%v", err)
		}
		if r.err != nil {
			return failed("%v: %s", r.err, firstLine(redact(r.out()+r.stderr.String())))
		}
		return pass("")
	}
	whoami := fmt.Sprintf(`  local rs = con:query("%s")
  print("user:" .. rs:fetch_row()[1])`, dl.currentUser)
	isMapped := func(r *cliRun, err error) outcome {
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		if got := printed(r, "user:"); len(got) != 1 || got[0] != dl.wantUser {
			return failed("%s = %q, want %q", dl.currentUser, got, dl.wantUser)
		}
		return pass("")
	}

	// Sign-in, retry mode: sysbench stops with the error that carries the
	// code; after the approval a second run gets in.
	res[featSignIn.key] = func() outcome {
		r, err := sysbench(signInPassword, goodDir, whoami)
		if err != nil {
			return failed("%v", err)
		}
		out := r.out() + r.stderr.String()
		m := codeRE.FindStringSubmatch(out)
		if r.err == nil || m == nil || !strings.Contains(out, "error "+dl.signInCode) {
			return failed("the first run's error does not carry the code: %s", firstLine(redact(out)))
		}
		if err := c.s.approve(m[1], c.user); err != nil {
			return failed("%v", err)
		}
		if err := c.s.waitSignedIn(ctx, c.user); err != nil {
			return failed("%v", err)
		}
		if o := isMapped(sysbench(signInPassword, goodDir, whoami)); o.status != statusPass {
			return o
		}
		return pass("Retry mode: the first run stops with error 1045 carrying the URL and code; the run after signing in gets in.")
	}()
	c.keyFromElsewhere(t, ctx)
	before := c.s.codesIssued(c.user)
	res[featSessionKey.key] = isMapped(sysbench(c.key, goodDir, whoami))
	if c.s.codesIssued(c.user) != before {
		res[featSessionKey.key] = failed("the session key did not stand in for a sign-in: a new device code was issued")
	} else if res[featSessionKey.key].status == statusPass {
		res[featSessionKey.key] = pass("sysbench never shows the session key (in retry mode portcullis puts it in the OK packet's info, which sysbench does not print); a key from a sign-in with another client works.")
	}

	res[featTOTP.key] = c.totp(ctx,
		func(password string) (*cliRun, error) { return sysbenchOn(dl.totpResource, password, goodDir, whoami) },
		isMapped,
		"error "+dl.wrongCodeCode+": "+wrongCodeText(c.user))

	res[featRows.key] = func() outcome {
		r, err := sysbench(c.key, goodDir, fmt.Sprintf(`  local rs = con:query("%s")
  for i = 1, rs.nrows do
    local row = rs:fetch_row()
    print("row:" .. row[1] .. "|" .. row[2])
  end`, dl.rowsSQL))
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		return checkRows(strings.Join(printed(r, "row:"), "\n"), "|")
	}()

	res[featPrepared.key] = func() outcome {
		marker := "pb_" + randomHex(6)
		var calls strings.Builder
		for _, a := range preparedArgs {
			fmt.Fprintf(&calls, "  n:set(%d)\n  stmt:execute()\n", a)
		}
		r, err := sysbench(c.key, goodDir, fmt.Sprintf(`  local stmt = con:prepare("insert into compat_bench (marker, n) select '%s', ? * 2")
  local n = stmt:bind_create(sysbench.sql.type.INT)
  stmt:bind_param(n)
%s  stmt:close()`, marker, calls.String()))
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		got, err := dl.backend.oneValue(ctx, fmt.Sprintf("select group_concat(n order by n separator ',') from %s.compat_bench where marker = '%s'", backendDB, marker))
		if want := strings.Join(preparedWant(), ","); err != nil || got != want {
			return failed("the server has n = %s, want %s (%v)", got, want, err)
		}
		return pass("con:prepare, a COM_STMT_PREPARE on the server, checked by what it inserted (sysbench does not fetch a prepared statement's rows).")
	}()

	res[featRollback.key] = func() outcome {
		marker := "rb_" + randomHex(6)
		insert, count := rollbackSQL(c.user, marker)
		r, err := sysbench(c.key, goodDir, fmt.Sprintf(`  con:query("BEGIN")
  con:query("%s")
  print("inside:" .. con:query("%s"):fetch_row()[1])
  con:query("ROLLBACK")
  print("after:" .. con:query("%s"):fetch_row()[1])`, insert, count, count))
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		if in, after := printed(r, "inside:"), printed(r, "after:"); len(in) != 1 || len(after) != 1 || in[0] != "1" || after[0] != "0" {
			return failed("inside the transaction %q, after the rollback %q; want 1 and 0", in, after)
		}
		if n, err := dl.backend.rowsWithMarker(ctx, marker); err != nil || n != "0" {
			return failed("the server has %s row(s) after the rollback (%v)", n, err)
		}
		return pass("")
	}()

	res[featError.key] = func() outcome {
		r, err := sysbench(c.key, goodDir, fmt.Sprintf(`  con:query("%s")`, dl.syntaxSQL))
		if err != nil {
			return failed("%v", err)
		}
		out := r.out() + r.stderr.String()
		if r.err == nil {
			return failed("sysbench succeeded with a syntax error in its script")
		}
		if want := "error " + dl.syntaxCode + " (" + dl.syntaxText; !strings.Contains(out, want) {
			return failed("the output has no %q: %s", want, firstLine(redact(out)))
		}
		return pass("sysbench stops at the first error, as it does against MariaDB directly (--mysql-ignore-errors=none).")
	}()

	res[featTLS.key] = func() outcome {
		r, err := sysbench(c.key, c.sysbenchDir(t, c.s.wrongCAFile), whoami)
		if err != nil {
			return failed("%v", err)
		}
		o := tlsRefused(r)
		if o.status == statusPass {
			o.note = "sysbench 1.0 only names a CA (cacert.pem in its working directory), so libmariadb checks the certificate chain; sysbench has no setting for the host-name check."
		}
		return o
	}()
	return res
}

package compat

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// cliRun is one run of psql or pgbench against portcullis.
type cliRun struct {
	cmd    *exec.Cmd
	stdout *lockedText
	stderr *lockedText
	done   chan struct{}
	err    error
}

// lockedText keeps everything written to it.
type lockedText struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedText) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// cliEnv is the libpq environment of a command-line client: portcullis,
// the user, verify-full against the right CA, and password; set
// overrides any of it.
func (s *suite) cliEnv(user, password string, set ...string) []string {
	env := procEnv(
		"PGHOST="+s.host, "PGPORT="+strconv.Itoa(s.pgPort), "PGUSER="+user, "PGDATABASE="+resourcePostgres,
		"PGSSLMODE=verify-full", "PGSSLROOTCERT="+s.caFile, "PGCONNECT_TIMEOUT=30", "PGPASSWORD="+password,
	)
	return append(env, set...)
}

// startCLI starts bin; onLine sees each line it writes to stderr (where
// libpq prints notices), as it writes it.
func startCLI(ctx context.Context, bin string, env []string, stdin string, onLine func(string), args ...string) (*cliRun, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	r := &cliRun{cmd: cmd, stdout: &lockedText{}, stderr: &lockedText{}, done: make(chan struct{})}
	cmd.Stdout = r.stdout
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(r.stderr, pw)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if onLine != nil {
				onLine(sc.Text())
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		r.err = cmd.Wait()
		pw.Close()
		<-scanned
		close(r.done)
	}()
	return r, nil
}

func (r *cliRun) wait() error {
	<-r.done
	return r.err
}

// out is what the run printed on stdout, once it has ended.
func (r *cliRun) out() string { return r.stdout.String() }

// runCLI runs bin to the end.
func runCLI(ctx context.Context, bin string, env []string, stdin string, onLine func(string), args ...string) (*cliRun, error) {
	r, err := startCLI(ctx, bin, env, stdin, onLine, args...)
	if err != nil {
		return nil, err
	}
	r.wait()
	return r, nil
}

// cliVersion is the version number in "prog (PostgreSQL) 15.2 (...)".
func cliVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return strings.TrimSpace(string(out))
}

// cliClient is a command-line client: one run per step.
type cliClient struct {
	name  string
	slug  string
	mysql bool
	// version is what the program says it is.
	version func(bin string) string
	// measure returns the outcome of every feature.
	measure func(t *testing.T, ctx context.Context, c *cliCtx) map[string]outcome
}

// cliCtx is what a command-line client's measurements share.
type cliCtx struct {
	s    *suite
	dl   *dialect
	bin  string
	user string
	key  string // the session key the client showed
	dir  string // for script files
}

func (c cliClient) run(t *testing.T, s *suite, res *results) {
	dl := postgresDialect(s)
	if c.mysql {
		mustHave(t, "MariaDB server for the "+c.name, s.myErr)
		dl = mysqlDialect(s)
	}
	bin, err := exec.LookPath(c.name)
	mustHave(t, c.name, err)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cc := &cliCtx{s: s, dl: dl, bin: bin, user: login(c.slug), dir: t.TempDir()}
	version := cliVersion(bin)
	if c.version != nil {
		version = c.version(bin)
	}
	for key, o := range c.measure(t, ctx, cc) {
		if o.status != statusPass {
			t.Logf("%s / %s: %s: %s", c.name, key, o.status, o.note)
		}
		res.set(dl.section, c.name, version, key, o)
	}
}

func (c cliClient) compat() compatClient {
	return compatClient{name: c.name, slug: c.slug, run: c.run}
}

// signIn runs the client with a password that starts a sign-in,
// approving every code it shows, and keeps the session key it shows.
// args run a check that the session has the mapped role.
func (c *cliCtx) signIn(ctx context.Context, args ...string) (outcome, int) {
	n := &notices{s: c.s, user: c.user}
	r, err := runCLI(ctx, c.bin, c.s.cliEnv(c.user, signInPassword), "", n.add, args...)
	if err != nil {
		return failed("%v", err), 0
	}
	_, key, aerr := n.result()
	if aerr != nil {
		return failed("%v", aerr), 0
	}
	if r.err != nil {
		return failed("%v: %s", r.err, firstLine(redact(r.stderr.String()))), 0
	}
	if n.codes() == 0 {
		return failed("no device code appeared on stderr"), 0
	}
	if key == "" {
		return failed("no session key appeared on stderr"), 0
	}
	c.key = key
	return pass(""), n.codes()
}

// withKey runs the client with the session key, and checks it issued no
// device code.
func (c *cliCtx) withKey(ctx context.Context, stdin string, args ...string) (*cliRun, error) {
	before := c.s.codesIssued(c.user)
	r, err := runCLI(ctx, c.bin, c.s.cliEnv(c.user, c.key), stdin, nil, args...)
	if err != nil {
		return nil, err
	}
	if after := c.s.codesIssued(c.user); after != before {
		return r, fmt.Errorf("the session key did not stand in for a sign-in: %d new device codes", after-before)
	}
	return r, nil
}

// tls connects trusting another CA: the client must refuse portcullis's
// certificate itself.
func (c *cliCtx) tls(ctx context.Context, args ...string) outcome {
	r, err := runCLI(ctx, c.bin, c.s.cliEnv(c.user, c.key, "PGSSLROOTCERT="+c.s.wrongCAFile), "", nil, args...)
	if err != nil {
		return failed("%v", err)
	}
	stderr := r.stderr.String()
	switch {
	case r.err == nil:
		return failed("connected although the client was told to trust another CA")
	case strings.Contains(stderr, "FATAL"):
		return failed("refused by the server, not by the client's certificate check: %s", firstLine(redact(stderr)))
	case !strings.Contains(stderr, "certificate verify failed"):
		return failed("the connection failed, but not over the certificate: %s", firstLine(redact(stderr)))
	}
	return pass("")
}

// keyFromElsewhere gets a session key by a sign-in with pgx when the
// client did not show one, so that the other features can be measured.
func (c *cliCtx) keyFromElsewhere(t *testing.T, ctx context.Context) {
	if c.key != "" {
		return
	}
	key, err := c.s.signInWithPgx(ctx, c.user)
	if err != nil {
		t.Fatalf("no session to measure the other features with: %v", err)
	}
	c.key = key
}

// libpqRefusal explains how libpq's command-line clients show a wrong
// TOTP code.
const libpqRefusal = "libpq shows a refused connection's FATAL message (that the TOTP code is wrong) without its SQLSTATE (28P01)."

// totp measures TOTP for a command-line client. run runs it against the
// resource that requires TOTP with a password, got judges a run with a
// good code, and refusal is what the client must show for a wrong one.
func (c *cliCtx) totp(ctx context.Context, run func(password string) (*cliRun, error), got func(*cliRun, error) outcome, refusal string) outcome {
	app, err := c.s.enrolTOTP(ctx, c.user)
	if err != nil {
		return failed("%v", err)
	}
	code, err := app.code()
	if err != nil {
		return failed("%v", err)
	}
	if o := got(run(withCode(c.key, code))); o.status != statusPass {
		return o
	}
	wrong, err := app.wrongCode()
	if err != nil {
		return failed("%v", err)
	}
	before := c.s.totpRefusals(c.user, auth.TOTPWrongCode)
	r, err := run(withCode(c.key, wrong))
	if err != nil {
		return failed("%v", err)
	}
	shown := r.stderr.String() + r.out()
	if o := c.s.wrongCodeRefused(c.user, before, r.err == nil, shown); o.status != statusPass {
		return o
	}
	if !strings.Contains(shown, refusal) {
		return failed("the client does not show %q: %s", refusal, firstLine(redact(shown)))
	}
	return pass("")
}

// checkRows checks rows printed one per line, columns separated by sep.
func checkRows(out, sep string) outcome {
	sum := newRowSum()
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		sum.add(strings.Split(line, sep)...)
	}
	if sum.n != rowCount || sum.sum() != rowsWant() {
		return failed("%d rows with checksum %s, want %d with %s", sum.n, sum.sum(), rowCount, rowsWant())
	}
	return pass("")
}

func psqlClient() compatClient {
	return cliClient{name: "psql", slug: "psql", measure: measurePsql}.compat()
}

func measurePsql(t *testing.T, ctx context.Context, c *cliCtx) map[string]outcome {
	psql := []string{"-X", "-A", "-t", "-q", "-v", "VERBOSITY=verbose"}
	args := func(more ...string) []string { return append(append([]string{}, psql...), more...) }
	res := map[string]outcome{}
	dl := c.dl

	o, _ := c.signIn(ctx, args("-c", dl.currentUser)...)
	res[featSignIn.key] = o
	c.keyFromElsewhere(t, ctx)

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

	r, err := c.withKey(ctx, "", args("-c", dl.currentUser)...)
	res[featSessionKey.key] = check(r, err, dl.wantUser)

	res[featTOTP.key] = c.totp(ctx,
		func(password string) (*cliRun, error) {
			return runCLI(ctx, c.bin, c.s.cliEnv(c.user, password, "PGDATABASE="+dl.totpResource), "", nil, args("-c", dl.currentUser)...)
		},
		func(r *cliRun, err error) outcome { return check(r, err, dl.wantUser) },
		"FATAL:  "+wrongCodeText(c.user))
	if res[featTOTP.key].status == statusPass {
		res[featTOTP.key] = pass(libpqRefusal)
	}

	res[featRows.key] = func() outcome {
		r, err := c.withKey(ctx, "", args("-c", dl.rowsSQL)...)
		if err != nil || r.err != nil {
			return check(r, err, "")
		}
		return checkRows(r.out(), "|")
	}()

	prep := args("-c", "PREPARE compat_double AS "+dl.preparedSQL)
	for _, a := range preparedArgs {
		prep = append(prep, "-c", fmt.Sprintf("EXECUTE compat_double(%d)", a))
	}
	prep = append(prep, "-c", "select count(*) > 0 from pg_prepared_statements")
	r, err = c.withKey(ctx, "", prep...)
	res[featPrepared.key] = check(r, err, strings.Join(append(preparedWant(), "t"), "\n"))
	if o := res[featPrepared.key]; o.status == statusPass {
		res[featPrepared.key] = pass("SQL PREPARE and EXECUTE: psql 15 has no command for protocol-level prepared statements (\\bind came in 16).")
	}

	res[featRollback.key] = func() outcome {
		marker := "rb_" + randomHex(6)
		insert, count := rollbackSQL(c.user, marker)
		r, err := c.withKey(ctx, "", args("-c", "BEGIN", "-c", insert, "-c", count, "-c", "ROLLBACK", "-c", count)...)
		if o := check(r, err, "1\n0"); o.status != statusPass {
			return o
		}
		if n, err := dl.backend.rowsWithMarker(ctx, marker); err != nil || n != "0" {
			return failed("the server has %s row(s) after the rollback (%v)", n, err)
		}
		return pass("")
	}()

	res[featCancel.key] = func() outcome {
		marker := cancelMarker("psql")
		r, err := startCLI(ctx, c.bin, c.s.cliEnv(c.user, c.key), "", nil, args("-c", dl.sleepSQL(marker))...)
		if err != nil {
			return failed("%v", err)
		}
		if err := waitRunning(ctx, dl.backend, marker); err != nil {
			r.cmd.Process.Kill()
			r.wait()
			return failed("%v", err)
		}
		// What Ctrl-C does: psql sends a CancelRequest.
		start := time.Now()
		if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
			return failed("%v", err)
		}
		r.wait()
		took := time.Since(start)
		stderr := r.stderr.String()
		if !strings.Contains(stderr, dl.cancelCode+": canceling statement due to user request") {
			return failed("the statement was not cancelled by the server: %s", firstLine(redact(stderr)))
		}
		if took > cancelBound {
			return failed("psql took %v to return after the cancel", took.Round(time.Millisecond))
		}
		wctx, wcancel := context.WithTimeout(ctx, cancelBound)
		defer wcancel()
		if err := waitStopped(wctx, dl.backend, marker); err != nil {
			return failed("%v", err)
		}
		return pass("SIGINT, as Ctrl-C sends. psql -c exits after the cancelled statement, so the connection is not used again.")
	}()

	res[featError.key] = func() outcome {
		r, err := c.withKey(ctx, dl.syntaxSQL+";\n"+aliveSQL+";\n", args("-f", "-")...)
		if err != nil {
			return failed("%v", err)
		}
		stderr := r.stderr.String()
		if want := "ERROR:  " + dl.syntaxCode + ": " + dl.syntaxText; !strings.Contains(stderr, want) {
			return failed("stderr has no %q: %s", want, firstLine(redact(stderr)))
		}
		if got := strings.TrimSpace(r.out()); got != "still here" {
			return failed("the session did not go on after the error: printed %q", got)
		}
		return pass("")
	}()

	res[featTLS.key] = c.tls(ctx, args("-c", dl.currentUser)...)
	return res
}

func pgbenchClient() compatClient {
	return cliClient{name: "pgbench", slug: "pgbench", measure: measurePgbench}.compat()
}

func measurePgbench(t *testing.T, ctx context.Context, c *cliCtx) map[string]outcome {
	res := map[string]outcome{
		featRows.key: notApplicable("pgbench discards the rows its statements return, so it cannot count or checksum them."),
		featCancel.key: notApplicable("pgbench has no way to cancel a statement: SIGINT ends it without a CancelRequest and the statement runs on " +
			"at the server, the same when pgbench connects to PostgreSQL directly."),
	}
	script := func(name, body string) string {
		path := filepath.Join(c.dir, name+".sql")
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// A statement that fails (division by zero) unless the session runs
	// as the mapped role: pgbench then reports the client aborted.
	whoami := script("whoami", fmt.Sprintf("select 1 / (current_user = '%s')::int;\n", c.s.role.Name))
	bench := func(file string, more ...string) []string {
		return append([]string{"-n", "-c", "1", "-t", "1", "-f", file}, more...)
	}
	ran := func(r *cliRun, err error) outcome {
		if err != nil {
			return failed("%v", err)
		}
		if r.err != nil {
			return failed("%v: %s", r.err, firstLine(redact(r.stderr.String())))
		}
		return pass("")
	}

	o, codes := c.signIn(ctx, bench(whoami)...)
	if o.status == statusPass && codes > 1 {
		o.note = fmt.Sprintf("pgbench opens a connection of its own and then one per client, each with the password: here (sessions.address_grace off) %d prompts, one per connection; with the default address grace, one sign-in serves them all, and the session key avoids prompts altogether.", codes)
	}
	res[featSignIn.key] = o
	c.keyFromElsewhere(t, ctx)

	r, err := c.withKey(ctx, "", bench(whoami)...)
	res[featSessionKey.key] = ran(r, err)

	res[featTOTP.key] = func() outcome {
		app, err := c.s.enrolTOTP(ctx, c.user)
		if err != nil {
			return failed("%v", err)
		}
		code, err := app.code()
		if err != nil {
			return failed("%v", err)
		}
		// Each connection pgbench opens presents the same code, and a code
		// is good once: whether the first got in and the second was
		// refused for reusing it is read from portcullis's audit log.
		admitted, reused := c.s.admitted(c.user, c.dl.totpResource), c.s.totpRefusals(c.user, auth.TOTPReusedCode)
		r, err := runCLI(ctx, c.bin, c.s.cliEnv(c.user, withCode(c.key, code), "PGDATABASE="+c.dl.totpResource), "", nil, bench(whoami)...)
		if o := ran(r, err); o.status == statusPass || err != nil {
			return o
		}
		admitted, reused = c.s.admitted(c.user, c.dl.totpResource)-admitted, c.s.totpRefusals(c.user, auth.TOTPReusedCode)-reused
		stderr := r.stderr.String()
		if admitted != 1 || reused != 1 || !strings.Contains(stderr, "FATAL:  "+reusedCodeText(c.user)) {
			return failed("%d connection(s) got in and %d were refused a reused code: %s", admitted, reused, firstLine(redact(stderr)))
		}
		return notApplicable("pgbench opens a connection of its own and then one per client, all with the one password it was given, and a TOTP code is good " +
			"only once (replay protection): measured with -c 1, the first connection gets in with `<session key>:<code>` and the second is refused " +
			"(\"the TOTP code ... was already used\"). Neither address grace nor a session key helps: a resource that requires TOTP asks every " +
			"connection for a code of its own. Benchmark a resource that does not require TOTP.")
	}()

	res[featPrepared.key] = func() outcome {
		marker := "pb_" + randomHex(6)
		runs := len(preparedArgs)
		file := script("prepared", fmt.Sprintf(
			"insert into compat_pgbench (marker, n) values ('%s', :n * 2);\nselect 1 / (select count(*) from pg_prepared_statements)::int;\n", marker))
		r, err := c.withKey(ctx, "", "-n", "-c", "1", "-t", strconv.Itoa(runs), "-M", "prepared", "-D", "n=21", "-f", file)
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		n, err := c.dl.backend.oneValue(ctx, fmt.Sprintf("select count(*) from compat_pgbench where marker = '%s' and n = 42", marker))
		if err != nil || n != strconv.Itoa(runs) {
			return failed("the server has %s right row(s), want %d (%v)", n, runs, err)
		}
		return pass("-M prepared.")
	}()

	res[featRollback.key] = func() outcome {
		marker := "rb_" + randomHex(6)
		insert, count := rollbackSQL(c.user, marker)
		// The division fails unless the row is there inside the
		// transaction.
		file := script("rollback", fmt.Sprintf("BEGIN;\n%s;\nselect 1 / (%s)::int;\nROLLBACK;\n", insert, count))
		r, err := c.withKey(ctx, "", bench(file)...)
		if o := ran(r, err); o.status != statusPass {
			return o
		}
		if n, err := c.dl.backend.rowsWithMarker(ctx, marker); err != nil || n != "0" {
			return failed("the server has %s row(s) after the rollback (%v)", n, err)
		}
		return pass("")
	}()

	res[featError.key] = func() outcome {
		file := script("syntax", c.dl.syntaxSQL+";\n")
		r, err := c.withKey(ctx, "", bench(file)...)
		if err != nil {
			return failed("%v", err)
		}
		if r.err == nil {
			return failed("pgbench succeeded with a syntax error in its script")
		}
		if stderr := r.stderr.String(); !strings.Contains(stderr, "ERROR:  "+c.dl.syntaxText) {
			return failed("stderr has no %q: %s", c.dl.syntaxText, firstLine(redact(stderr)))
		}
		return pass("pgbench prints the server's message; it prints no SQLSTATE.")
	}()

	res[featTLS.key] = c.tls(ctx, bench(whoami)...)
	return res
}

package compat

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// driver is a client library driven one step at a time over one
// connection: the Go drivers in this process, the others through their
// programs under clients/.
type driver interface {
	// connect opens a new connection, closing the one before. Whatever
	// the client surfaces as a notice while connecting (or, for libpq
	// underneath, prints on stderr) goes to p.onNotice as it arrives.
	connect(ctx context.Context, p connectParams) error
	// query runs sql and checksums its answer (see rowSum).
	query(ctx context.Context, sql string) (rowSet, error)
	// prepared prepares sql with the client's own mechanism, runs it once
	// for each of args, and then runs check (a one-value query) on the
	// same connection.
	prepared(ctx context.Context, sql string, args []int, check string) (results []string, checked string, err error)
	// rollback begins a transaction the client's own way, runs insert,
	// runs count (a one-value query), rolls back the client's own way and
	// runs count again.
	rollback(ctx context.Context, insert, count string) (inside, after string, err error)
	// cancel runs sql, calls running once the client has sent it, then
	// cancels it with the client's own mechanism. It returns how long
	// the statement took to end after the cancel, and the error it ended
	// with.
	cancel(ctx context.Context, sql string, running func(context.Context) error) (time.Duration, error)
	close()
}

type connectParams struct {
	port     int
	resource string
	user     string
	password string
	caFile   string
	onNotice func(string)
}

// rowSet is a query's answer as a client saw it.
type rowSet struct {
	count int
	sum   string
	first []string // the first row's columns, as text
}

// driverClient describes a driver-shaped client and runs every feature
// through it.
type driverClient struct {
	name  string
	slug  string // its user: login(slug)
	mysql bool   // a MySQL client, else a PostgreSQL one
	// errorMode: the client cannot show a prompt while it connects, so it
	// signs in with the prompt in an error and a reconnect.
	errorMode bool
	// start starts the client; an error means it is not installed.
	start func(t *testing.T, s *suite, dl *dialect) (d driver, version string, err error)
	// notes explain a result, by feature key; for a feature the client
	// cannot do at all, na says why.
	notes map[string]string
	na    map[string]string
	// uncodedRefusal, when set, says why the client reports a refused
	// connection with the server's message but without its code.
	uncodedRefusal string
}

// run measures every feature of c into res.
func (c driverClient) run(t *testing.T, s *suite, res *results) {
	dl := postgresDialect(s)
	if c.mysql {
		mustHave(t, "MariaDB server for the "+c.name, s.myErr)
		dl = mysqlDialect(s)
	}
	d, version, err := c.start(t, s, dl)
	mustHave(t, c.name, err)
	defer d.close()
	set := func(f feature, o outcome) {
		if o.status != statusPass {
			t.Logf("%s / %s: %s: %s", c.name, f.title, o.status, o.note)
		}
		res.set(dl.section, c.name, version, f.key, o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	r := &driverRun{c: c, s: s, d: d, dl: dl, user: login(c.slug)}

	o, key := r.signIn(ctx)
	set(featSignIn, c.note(featSignIn, o))
	r.key = key
	if r.key == "" {
		// Let the other features be measured anyway.
		key, err := s.signInWithPgx(ctx, r.user)
		if err != nil {
			t.Fatalf("%s: no session to measure the other features with: %v", c.name, err)
		}
		r.key, r.keyFromElsewhere = key, true
	}
	set(featSessionKey, c.note(featSessionKey, r.sessionKey(ctx)))
	for _, f := range []struct {
		feature
		measure func(context.Context) outcome
	}{
		{featTOTP, r.totp}, {featRows, r.rows}, {featPrepared, r.prepared}, {featRollback, r.rollback},
		{featCancel, r.cancel}, {featError, r.backendError}, {featTLS, r.tls},
	} {
		if why, ok := c.na[f.key]; ok {
			res.set(dl.section, c.name, version, f.key, notApplicable(why))
			continue
		}
		fctx, fcancel := context.WithTimeout(ctx, 60*time.Second)
		set(f.feature, c.note(f.feature, f.measure(fctx)))
		fcancel()
	}
}

// note adds c's note for f to a pass.
func (c driverClient) note(f feature, o outcome) outcome {
	if n := c.notes[f.key]; n != "" && o.status == statusPass && o.note == "" {
		o.note = n
	}
	return o
}

// tlsFailureRE is what clients say when a certificate does not verify.
var tlsFailureRE = regexp.MustCompile(`(?i)certific|x509|ssl|tls|pkix|self[- ]signed|verif`)

// redact keeps device codes and session keys out of failure messages.
func redact(s string) string {
	s = codeRE.ReplaceAllString(s, "enter the code [code]")
	return sessionKeyRE.ReplaceAllString(s, "session key as your password: [key]")
}

type driverRun struct {
	c    driverClient
	s    *suite
	d    driver
	dl   *dialect
	user string

	key              string
	keyFromElsewhere bool
}

// notices collects what a client showed while connecting, approving
// every device code in it as user.
type notices struct {
	s        *suite
	user     string
	mu       sync.Mutex
	approved map[string]bool
	code     string // the first
	key      string
	errs     []error
	wg       sync.WaitGroup
}

func (n *notices) add(msg string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if m := sessionKeyRE.FindStringSubmatch(msg); m != nil {
		n.key = m[1]
	}
	if m := codeRE.FindStringSubmatch(msg); m != nil && !n.approved[m[1]] {
		if n.approved == nil {
			n.approved = map[string]bool{}
		}
		n.approved[m[1]] = true
		if n.code == "" {
			n.code = m[1]
		}
		// The client is blocked in its connect while it waits: the person
		// signs in in a browser meanwhile.
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.s.approve(m[1], n.user); err != nil {
				n.mu.Lock()
				n.errs = append(n.errs, err)
				n.mu.Unlock()
			}
		}()
	}
}

// codes counts the device codes the client showed.
func (n *notices) codes() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.approved)
}

func (n *notices) result() (code, key string, err error) {
	n.wg.Wait()
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.code, n.key, errors.Join(n.errs...)
}

func (r *driverRun) params(password string, n *notices) connectParams {
	p := connectParams{port: r.dl.port, resource: r.dl.resource, user: r.user, password: password, caFile: r.s.caFile, onNotice: func(string) {}}
	if n != nil {
		p.onNotice = n.add
	}
	return p
}

// signIn signs the client's user in and returns the session key the
// client showed, if it showed one.
func (r *driverRun) signIn(ctx context.Context) (outcome, string) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	n := &notices{s: r.s, user: r.user}
	err := r.d.connect(ctx, r.params(signInPassword, n))
	code, key, aerr := n.result()
	if aerr != nil {
		return failed("%v", aerr), ""
	}
	if r.c.errorMode {
		if err == nil {
			return failed("the first connection got in without a sign-in"), ""
		}
		m := codeRE.FindStringSubmatch(err.Error())
		if m == nil || errCode(err) != r.dl.signInCode {
			return failed("the first connection's error does not carry the code (code %q): %s", errCode(err), redact(err.Error())), ""
		}
		if err := r.s.approve(m[1], r.user); err != nil {
			return failed("%v", err), ""
		}
		if err := r.s.waitSignedIn(ctx, r.user); err != nil {
			return failed("%v", err), ""
		}
		n = &notices{s: r.s, user: r.user}
		err = r.d.connect(ctx, r.params(signInPassword, n))
		if _, key, _ = n.result(); err != nil {
			return failed("the reconnect after signing in: %s", redact(err.Error())), ""
		}
	} else {
		if err != nil {
			return failed("connect: %s", redact(err.Error())), ""
		}
		if code == "" {
			return failed("the client showed no device code"), ""
		}
	}
	if o := r.isMappedRole(ctx); o.status != statusPass {
		return o, key
	}
	return pass(""), key
}

func (r *driverRun) isMappedRole(ctx context.Context) outcome {
	got, err := r.d.query(ctx, r.dl.currentUser)
	if err != nil {
		return failed("%s: %s", r.dl.currentUser, redact(err.Error()))
	}
	if len(got.first) != 1 || got.first[0] != r.dl.wantUser {
		return failed("%s = %q, want %q", r.dl.currentUser, got.first, r.dl.wantUser)
	}
	return pass("")
}

func (r *driverRun) sessionKey(ctx context.Context) outcome {
	before := r.s.codesIssued(r.user)
	if err := r.d.connect(ctx, r.params(r.key, nil)); err != nil {
		return failed("connect with the session key: %s", redact(err.Error()))
	}
	if o := r.isMappedRole(ctx); o.status != statusPass {
		return o
	}
	if after := r.s.codesIssued(r.user); after != before {
		return failed("the session key did not stand in for a sign-in: %d new device codes", after-before)
	}
	if r.keyFromElsewhere {
		if r.c.mysql {
			return pass("The client never shows the session key (in retry mode portcullis puts it in the OK packet's info, which the driver keeps to itself); a key from a sign-in with another client works.")
		}
		return pass("The client never shows the session key (it drops notices sent while it connects); a key from a sign-in with another client works.")
	}
	return pass("")
}

// open connects with the session key for one feature.
func (r *driverRun) open(ctx context.Context) error {
	if err := r.d.connect(ctx, r.params(r.key, nil)); err != nil {
		return fmt.Errorf("connect with the session key: %s", redact(err.Error()))
	}
	return nil
}

// totp enrols the client's user, connects to the resource that requires
// TOTP with the session key and a code from the person's app, and then
// with a wrong code, which must be refused.
func (r *driverRun) totp(ctx context.Context) outcome {
	app, err := r.s.enrolTOTP(ctx, r.user)
	if err != nil {
		return failed("%v", err)
	}
	code, err := app.code()
	if err != nil {
		return failed("%v", err)
	}
	p := r.params(withCode(r.key, code), nil)
	p.resource = r.dl.totpResource
	if err := r.d.connect(ctx, p); err != nil {
		return failed("connect with `<session key>:<code>`: %s", redact(err.Error()))
	}
	if o := r.isMappedRole(ctx); o.status != statusPass {
		return o
	}

	wrong, err := app.wrongCode()
	if err != nil {
		return failed("%v", err)
	}
	p.password = withCode(r.key, wrong)
	before := r.s.totpRefusals(r.user, auth.TOTPWrongCode)
	err = r.d.connect(ctx, p)
	shown := ""
	if err != nil {
		shown = err.Error()
	}
	if o := r.s.wrongCodeRefused(r.user, before, err == nil, shown); o.status != statusPass {
		return o
	}
	if !strings.Contains(shown, wrongCodeText(r.user)) {
		return failed("the wrong code's refusal does not say why: %s", redact(shown))
	}
	switch got := errCode(err); {
	case got == r.dl.wrongCodeCode:
		return pass("")
	case got == "" && r.c.uncodedRefusal != "":
		return pass(r.c.uncodedRefusal)
	default:
		return failed("the wrong code was refused with %q, want %s: %s", got, r.dl.wrongCodeCode, redact(shown))
	}
}

func (r *driverRun) rows(ctx context.Context) outcome {
	if err := r.open(ctx); err != nil {
		return failed("%v", err)
	}
	got, err := r.d.query(ctx, r.dl.rowsSQL)
	if err != nil {
		return failed("the query: %s", redact(err.Error()))
	}
	if got.count != rowCount || got.sum != rowsWant() {
		return failed("%d rows with checksum %s, want %d with %s", got.count, got.sum, rowCount, rowsWant())
	}
	return pass("")
}

func (r *driverRun) prepared(ctx context.Context) outcome {
	if err := r.open(ctx); err != nil {
		return failed("%v", err)
	}
	got, seen, err := r.d.prepared(ctx, r.dl.preparedSQL, preparedArgs, r.dl.preparedSeen)
	if err != nil {
		return failed("%s", redact(err.Error()))
	}
	if want := preparedWant(); !slices.Equal(got, want) {
		return failed("results %q, want %q", got, want)
	}
	if seen == "0" || seen == "" {
		return failed("the server saw no prepared statement in the session (%s = %q)", r.dl.preparedSeen, seen)
	}
	return pass("")
}

func (r *driverRun) rollback(ctx context.Context) outcome {
	if err := r.open(ctx); err != nil {
		return failed("%v", err)
	}
	marker := "rb_" + randomHex(6)
	insert, count := rollbackSQL(r.c.slug, marker)
	inside, after, err := r.d.rollback(ctx, insert, count)
	if err != nil {
		return failed("%s", redact(err.Error()))
	}
	if inside != "1" || after != "0" {
		return failed("inside the transaction %s row(s), after the rollback %s; want 1 and 0", inside, after)
	}
	if n, err := r.dl.backend.rowsWithMarker(ctx, marker); err != nil || n != "0" {
		return failed("the server has %s row(s) after the rollback (%v)", n, err)
	}
	return pass("")
}

// cancelMarker names a client's sleeping statement so that the server's
// list of running statements finds it and nobody else's: clients run in
// parallel, and one slug may begin with another ("mariadb",
// "mariadb-java"), so the marker ends in a random suffix.
func cancelMarker(slug string) string {
	return "compat_cancel_" + strings.ReplaceAll(slug, "-", "_") + "_" + randomHex(4)
}

// cancelBound is how soon a cancelled statement must end.
const cancelBound = 5 * time.Second

func (r *driverRun) cancel(ctx context.Context) outcome {
	if err := r.open(ctx); err != nil {
		return failed("%v", err)
	}
	marker := cancelMarker(r.c.slug)
	took, err := r.d.cancel(ctx, r.dl.sleepSQL(marker), func(ctx context.Context) error { return waitRunning(ctx, r.dl.backend, marker) })
	if err == nil {
		return failed("the statement was not cancelled: it finished")
	}
	if errCode(err) != r.dl.cancelCode {
		return failed("the statement ended with %q, want %s: %s", errCode(err), r.dl.cancelCode, redact(err.Error()))
	}
	if took > cancelBound {
		return failed("the statement took %v to end after the cancel", took.Round(time.Millisecond))
	}
	wctx, wcancel := context.WithTimeout(ctx, cancelBound)
	defer wcancel()
	if err := waitStopped(wctx, r.dl.backend, marker); err != nil {
		return failed("%v", err)
	}
	if o := r.alive(ctx); o.status != statusPass {
		return o
	}
	return pass("")
}

// alive checks the connection still works.
func (r *driverRun) alive(ctx context.Context) outcome {
	got, err := r.d.query(ctx, aliveSQL)
	if err != nil || len(got.first) != 1 || got.first[0] != "still here" {
		return failed("the connection does not work afterwards: %v %q", err, got.first)
	}
	return pass("")
}

func (r *driverRun) backendError(ctx context.Context) outcome {
	if err := r.open(ctx); err != nil {
		return failed("%v", err)
	}
	_, err := r.d.query(ctx, r.dl.syntaxSQL)
	if err == nil {
		return failed("%q ran without an error", r.dl.syntaxSQL)
	}
	if errCode(err) != r.dl.syntaxCode || !strings.Contains(err.Error(), r.dl.syntaxText) {
		return failed("got %q, want %s and %q", redact(err.Error()), r.dl.syntaxCode, r.dl.syntaxText)
	}
	return r.alive(ctx)
}

func (r *driverRun) tls(ctx context.Context) outcome {
	p := r.params(r.key, nil)
	p.caFile = r.s.wrongCAFile
	err := r.d.connect(ctx, p)
	if err == nil {
		return failed("connected although the client was told to trust another CA")
	}
	if code := errCode(err); code != "" {
		return failed("refused by the server (SQLSTATE %s), not by the client's certificate check: %s", code, redact(err.Error()))
	}
	if !tlsFailureRE.MatchString(err.Error()) {
		return failed("the connection failed, but not over the certificate: %s", redact(err.Error()))
	}
	if err := r.open(ctx); err != nil {
		return failed("with the right CA: %v", err)
	}
	return r.isMappedRole(ctx)
}

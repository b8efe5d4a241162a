package postgres

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/mfa"
)

// TOTP through the PostgreSQL listener, end to end: psql and pgconn
// against portcullis, the real identity core on the Entra ID simulator,
// a real SQLite state store and real PostgreSQL behind.

var (
	otpauthRE   = regexp.MustCompile(`otpauth://\S+`)
	manualKeyRE = regexp.MustCompile(`enter the key ([A-Z2-7 ]+) by hand`)
	// In error mode the session key is in the FATAL's message.
	fatalKeyRE = regexp.MustCompile(`Your session key \(until [^)]*\): (\S+)`)
)

// sqliteStore is a real state store in a file of the test's own.
func sqliteStore(t *testing.T) store.Store {
	t.Helper()
	k, err := store.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := store.ParseKey(k)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "portcullis.db"), store.Keys{Current: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// enrolment is what a person reads off an enrolment notice.
type enrolment struct {
	uri, secret string
}

// readEnrolment finds the otpauth URI in text and checks that the key
// for typing in is the same secret.
func readEnrolment(t *testing.T, text string) enrolment {
	t.Helper()
	uri := otpauthRE.FindString(text)
	if uri == "" {
		t.Fatalf("no otpauth URI in:\n%s", text)
	}
	secret, err := mfa.SecretFromURI(uri)
	if err != nil {
		t.Fatalf("the URI shown: %v", err)
	}
	m := manualKeyRE.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no key to type in shown in:\n%s", text)
	}
	if typed := strings.ReplaceAll(m[1], " ", ""); typed != secret {
		t.Errorf("the key to type in differs from the URI's secret")
	}
	return enrolment{uri: uri, secret: secret}
}

// codeNow is what the authenticator app shows now.
func codeNow(t *testing.T, secret string) string {
	t.Helper()
	code, err := mfa.CodeAt(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// wrongCode is a code that none of the steps portcullis accepts now
// (one of skew either way, and a margin) has.
func wrongCode(t *testing.T, secret string, n int) string {
	t.Helper()
	valid := map[string]bool{}
	for d := -2; d <= 2; d++ {
		c, err := mfa.CodeAt(secret, time.Now().Add(time.Duration(d)*mfa.Period))
		if err != nil {
			t.Fatal(err)
		}
		valid[c] = true
	}
	base, _ := strconv.Atoi(codeNow(t, secret))
	for i := 1; ; i++ {
		c := fmt.Sprintf("%06d", (base+n*7919+i)%1000000)
		if !valid[c] {
			return c
		}
	}
}

// psqlVault runs psql against the vault resource with password and
// returns what it printed and how it ended.
func (h *harness) psqlVault(ctx context.Context, user, password string, onLine func(string)) (stdout, stderr string, err error) {
	h.t.Helper()
	run := h.psql(ctx, user, "vault", map[string]string{"PGPASSWORD": password}, "select current_user")
	if onLine == nil {
		onLine = func(string) {}
	}
	run.start(h.t, onLine)
	err = run.wait()
	return run.stdout.String(), run.stderr.String(), err
}

// The acceptance path of a person using psql: the sign-in ends with the
// enrolment (a QR code in a notice, the URI and key), the code from the
// app gets them in, the same code again does not, five wrong codes lock
// them out, and a reset lets them enrol afresh.
func TestTOTPEnrolmentWithPsql(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// 1. Sign in: device code, then the enrolment, then FATAL.
	_, stderr, err := h.psqlVault(ctx, bob, "sign me in", func(line string) {
		if m := codeRE.FindStringSubmatch(line); m != nil {
			if err := sim.Approve(m[1], bob); err != nil {
				t.Error(err)
			}
		}
	})
	if err == nil {
		t.Fatalf("psql got into a TOTP resource without a code:\n%s", stderr)
	}
	m := sessionKeyRE.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("no session key shown:\n%s", stderr)
	}
	key := m[1]
	first := readEnrolment(t, stderr)
	// The QR code is one notice whose first line is text: psql prefixes
	// only that line, so the code's lines are printed exactly as drawn.
	qr, err := mfa.TerminalQR(first.uri)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "authenticator app (Microsoft Authenticator, Google Authenticator or any TOTP app) to set up TOTP for portcullis:\n"+strings.Join(qr, "\n")+"\n") {
		t.Errorf("psql did not print the QR code of the URI it showed, line for line:\n%s", stderr)
	}
	if !strings.Contains(stderr, "FATAL:") || !strings.Contains(stderr, "connect again with your session key, a colon and the 6-digit code") {
		t.Errorf("the connection did not end with a FATAL saying how to come back:\n%s", stderr)
	}

	// 2. The code from the app gets bob in, as the role Finance maps to.
	code := codeNow(t, first.secret)
	stdout, stderr, err := h.psqlVault(ctx, bob, key+":"+code, nil)
	if err != nil {
		t.Fatalf("psql with <session key>:<code>: %v\n%s", err, stderr)
	}
	if got := strings.TrimSpace(stdout); got != roleFinance.Name {
		t.Errorf("current_user = %q, want %q", got, roleFinance.Name)
	}

	// 3. The same code again is refused.
	_, stderr, err = h.psqlVault(ctx, bob, key+":"+code, nil)
	if err == nil || !strings.Contains(stderr, "already used") {
		t.Errorf("the same code twice: err %v, stderr:\n%s", err, stderr)
	}
	_, err = pgconn.ConnectConfig(ctx, h.config(bob, key+":"+code, "vault"))
	if got := pgCode(err); got != codeInvalidPassword {
		t.Errorf("a reused code: SQLSTATE %q (%v), want %s", got, err, codeInvalidPassword)
	}

	// The session key alone, now that bob has an authenticator, is told
	// to come back with a code.
	_, err = pgconn.ConnectConfig(ctx, h.config(bob, key, "vault"))
	if got := pgCode(err); got != codeInvalidAuthorization || !strings.Contains(pgMessage(err), "requires a TOTP code: connect again with your session key, a colon and") {
		t.Errorf("no code: SQLSTATE %q (%v), want %s saying what to connect with", got, err, codeInvalidAuthorization)
	}
	h.waitEvent("mfa.totp.code_required", func(m map[string]any) bool { return m["user"] == bob })

	// 4. Five wrong codes lock bob out; then even a good code is refused,
	// with a message saying so.
	for i := 1; i <= 5; i++ {
		_, err := pgconn.ConnectConfig(ctx, h.config(bob, key+":"+wrongCode(t, first.secret, i), "vault"))
		if got := pgCode(err); got != codeInvalidPassword {
			t.Fatalf("wrong code %d: SQLSTATE %q (%v), want %s", i, got, err, codeInvalidPassword)
		}
		msg := pgMessage(err)
		if i < 5 && !strings.Contains(msg, fmt.Sprintf("after %d more wrong", 5-i)) {
			t.Errorf("wrong code %d: %q does not count down", i, msg)
		}
		if i == 5 && !strings.Contains(msg, "locked until") {
			t.Errorf("the fifth wrong code: %q does not say it locked", msg)
		}
	}
	_, err = pgconn.ConnectConfig(ctx, h.config(bob, key+":"+codeNow(t, first.secret), "vault"))
	if got := pgCode(err); got != codeInvalidAuthorization {
		t.Errorf("locked out: SQLSTATE %q (%v), want %s", got, err, codeInvalidAuthorization)
	}
	if msg := pgMessage(err); !strings.Contains(msg, "too many wrong TOTP codes") || !strings.Contains(msg, "portcullis totp reset") {
		t.Errorf("locked out: %q does not say why or what to do", msg)
	}
	if n := len(h.events("mfa.totp.failed")); n != 2+4+1 {
		// The reused code twice, four wrong codes (the fifth locked), and
		// the refusal while locked.
		t.Errorf("%d mfa.totp.failed events, want 7", n)
	}
	if n := len(h.events("mfa.totp.locked")); n != 1 {
		t.Errorf("%d mfa.totp.locked events, want 1 (the locking code)", n)
	}

	// 5. An admin resets bob: the session key alone now shows a new
	// enrolment (no new sign-in), and its code gets him in.
	if had, err := h.totp.Reset(ctx, mfa.NewUser(providerName, bob)); err != nil || !had {
		t.Fatalf("reset: had %v, err %v", had, err)
	}
	_, stderr, err = h.psqlVault(ctx, bob, key, nil)
	if err == nil {
		t.Fatalf("psql got in with a session key and no code:\n%s", stderr)
	}
	if codeRE.MatchString(stderr) {
		t.Errorf("the session key led to a new device-code sign-in:\n%s", stderr)
	}
	second := readEnrolment(t, stderr)
	if second.secret == first.secret {
		t.Error("the reset kept the old secret")
	}
	stdout, stderr, err = h.psqlVault(ctx, bob, key+":"+codeNow(t, second.secret), nil)
	if err != nil {
		t.Fatalf("psql after the reset: %v\n%s", err, stderr)
	}
	if got := strings.TrimSpace(stdout); got != roleFinance.Name {
		t.Errorf("after the reset, current_user = %q, want %q", got, roleFinance.Name)
	}

	if n := len(h.events("mfa.totp.enrollment_required")); n != 2 {
		t.Errorf("%d mfa.totp.enrollment_required events, want 2", n)
	}
	h.noSecretsLogged(key, first.secret, second.secret, first.uri, second.uri)
}

// A client that shows only errors gets everything in one FATAL 28000:
// what to do, the URI, the key and the session key.
func TestTOTPErrorMode(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jdbc := func(password string) *pgconn.Config {
		cfg := h.config(alice, password, "vault")
		cfg.RuntimeParams["application_name"] = "DBeaver 23.2.0 - Main <vault>"
		return cfg
	}

	_, err := pgconn.ConnectConfig(ctx, jdbc("sign me in"))
	m := codeRE.FindStringSubmatch(pgMessage(err))
	if m == nil {
		t.Fatalf("first connection: %v, want the device code", err)
	}
	if err := sim.Approve(m[1], alice); err != nil {
		t.Fatal(err)
	}
	h.waitSignedIn(alice)

	_, err = pgconn.ConnectConfig(ctx, jdbc("sign me in"))
	if got := pgCode(err); got != codeInvalidAuthorization {
		t.Fatalf("after the sign-in: SQLSTATE %q (%v), want %s", got, err, codeInvalidAuthorization)
	}
	msg := pgMessage(err)
	enrol := readEnrolment(t, msg)
	km := fatalKeyRE.FindStringSubmatch(msg)
	if km == nil {
		t.Fatalf("no session key in the FATAL: %q", msg)
	}
	key := km[1]
	if !strings.Contains(msg, "connect again with your session key, a colon and the 6-digit code") {
		t.Errorf("the FATAL does not say how to come back: %q", msg)
	}

	c, err := pgconn.ConnectConfig(ctx, jdbc(key+":"+codeNow(t, enrol.secret)))
	if err != nil {
		t.Fatalf("<session key>:<code>: %v", err)
	}
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	c.Close(ctx)
	h.noSecretsLogged(key, enrol.secret, enrol.uri)
}

// A person an operator enrolled (`portcullis totp enroll`) types the
// code as the password at once: it is checked, at the time it arrived,
// when the device-code sign-in completes, and the same connection gets
// in.
func TestTOTPCodeAsThePassword(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := h.totp.Enroll(ctx, mfa.NewUser(providerName, dave))
	if err != nil {
		t.Fatal(err)
	}
	secret, err := mfa.SecretFromURI(e.URI)
	if err != nil {
		t.Fatal(err)
	}

	a := &noticeApprover{h: h, upn: dave}
	cfg := h.config(dave, codeNow(t, secret), "vault")
	cfg.OnNotice = a.onNotice
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("the code as the password: %v (notices %q)", err, a.all())
	}
	defer c.Close(ctx)
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	if a.sessionKey() == "" {
		t.Error("no session key shown after the sign-in")
	}
	st, err := h.totp.Status(ctx, mfa.NewUser(providerName, dave))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Active {
		t.Error("the first good code did not activate the enrolment")
	}
}

// pgMessage is the message of a PostgreSQL error, or "".
func pgMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	return ""
}

// noSecretsLogged fails the test if any of secrets is in the log.
func (h *harness) noSecretsLogged(secrets ...string) {
	h.t.Helper()
	for _, e := range h.logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				h.t.Errorf("a secret reached the log in %q", e.Message)
			}
		}
	}
}

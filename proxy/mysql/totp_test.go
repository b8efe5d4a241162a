package mysql

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/mfa"
)

// TOTP through the MySQL listener: go-sql-driver in retry mode and the
// mariadb command line in dialog mode, against the real identity core on
// the Entra ID simulator, a real SQLite state store and real MariaDB.

var (
	otpauthRE    = regexp.MustCompile(`otpauth://[^\s)]+`)
	errKeyRE     = regexp.MustCompile(`Your session key \(until [^)]*\): (\S+)`)
	dialogKeyRE  = regexp.MustCompile(`for connecting again as <session key>:<code>:\s+(\S+)`)
	manualKeyRE  = regexp.MustCompile(`enter the key ([A-Z2-7 ]+) by hand`)
	totpResource = "app_totp"
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

// secretIn reads the secret off the otpauth URI in text, checking the
// key for typing in is the same.
func secretIn(t *testing.T, text string) (uri, secret string) {
	t.Helper()
	uri = otpauthRE.FindString(text)
	if uri == "" {
		t.Fatalf("no otpauth URI in %q", text)
	}
	secret, err := mfa.SecretFromURI(uri)
	if err != nil {
		t.Fatalf("the URI shown: %v", err)
	}
	m := manualKeyRE.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no key to type in shown in %q", text)
	}
	if strings.ReplaceAll(m[1], " ", "") != secret {
		t.Error("the key to type in differs from the URI's secret")
	}
	return uri, secret
}

func codeNow(t *testing.T, secret string) string {
	t.Helper()
	code, err := mfa.CodeAt(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// wrongCode is a code none of the steps near now has.
func wrongCode(t *testing.T, secret string) string {
	t.Helper()
	valid := map[string]bool{}
	for d := -2; d <= 2; d++ {
		c, err := mfa.CodeAt(secret, time.Now().Add(time.Duration(d)*mfa.Period))
		if err != nil {
			t.Fatal(err)
		}
		valid[c] = true
	}
	n, _ := strconv.Atoi(codeNow(t, secret))
	for i := 1; ; i++ {
		if c := fmt.Sprintf("%06d", (n+i*104729)%1000000); !valid[c] {
			return c
		}
	}
}

// go-sql-driver in retry mode: the sign-in ends in an ERR 1045 carrying
// the enrolment and the session key, whole, within what clients keep;
// the code gets in, a wrong one is 1045, a reused one too.
func TestTOTPRetryModeGoSQLDriver(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ping := func(password string) error {
		return h.open(aliceUPN, password, totpResource, "").PingContext(ctx)
	}

	err := ping("anything")
	m := cliCode.FindStringSubmatch(fmt.Sprint(err))
	if m == nil {
		t.Fatalf("first connection: %v, want the device code", err)
	}
	if got := h.approveNext(ctx, aliceUPN); got != m[1] {
		t.Fatalf("the client was shown %s, the simulator issued %s", m[1], got)
	}

	// Reconnect until the background sign-in has completed.
	for err = ping("anything"); strings.Contains(fmt.Sprint(err), "Sign-in required") && ctx.Err() == nil; err = ping("anything") {
		time.Sleep(100 * time.Millisecond)
	}
	e := myErr(err)
	if e == nil || e.Number != gomysql.ER_ACCESS_DENIED_ERROR || string(e.SQLState[:]) != stateAccessDenied {
		t.Fatalf("after the sign-in: %v, want ERROR 1045 (28000)", err)
	}
	if len(e.Message) > maxErrMessage {
		t.Errorf("the message is %d bytes: MySQL clients keep %d", len(e.Message), maxErrMessage)
	}
	uri, secret := secretIn(t, e.Message)
	km := errKeyRE.FindStringSubmatch(e.Message)
	if km == nil {
		t.Fatalf("no session key in %q", e.Message)
	}
	key := km[1]
	if !strings.Contains(e.Message, "connect again with") {
		t.Errorf("the message does not say how to come back: %q", e.Message)
	}

	code := codeNow(t, secret)
	db := h.open(aliceUPN, key+":"+code, totpResource, "")
	var user string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
		t.Fatalf("<session key>:<code>: %v", err)
	}
	if user != userNative.Name+"@%" {
		t.Errorf("CURRENT_USER() = %q, want %s@%%", user, userNative.Name)
	}

	for _, tt := range []struct {
		name, code, want string
	}{
		{name: "the same code again", code: code, want: "already used"},
		{name: "a wrong code", code: wrongCode(t, secret), want: "is wrong"},
	} {
		err := ping(key + ":" + tt.code)
		e := myErr(err)
		if e == nil || e.Number != gomysql.ER_ACCESS_DENIED_ERROR || !strings.Contains(e.Message, tt.want) {
			t.Errorf("%s: %v, want ERROR 1045 saying %q", tt.name, err, tt.want)
		}
	}
	h.waitEvent("mfa.totp.failed", func(m map[string]any) bool { return m["kind"] == string(auth.TOTPWrongCode) })
	h.noSecretsLogged(key, secret, uri)
}

// The mariadb command line in dialog mode asks for the code in the same
// connection: the device-code prompt, then the enrolment (QR code, URI,
// key) and the session key with the question, then the query runs.
func TestTOTPDialogWithCLI(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The command line writes its prompts to a pipe, which it does not
	// flush before reading the answer: the test learns the secret the
	// way an operator would hand it over (`portcullis totp enroll`), and
	// the dialog shows that same pending enrolment.
	enrolled, err := h.totp.Enroll(ctx, mfa.NewUser("contoso", aliceUPN))
	if err != nil {
		t.Fatal(err)
	}
	secret, err := mfa.SecretFromURI(enrolled.URI)
	if err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	cmd := h.cliTo(ctx, aliceUPN, "anything", totpResource, "SELECT CURRENT_USER()")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.approveNext(ctx, aliceUPN)
	// Enter after signing in, then the code.
	if _, err := fmt.Fprintf(stdin, "\n%s\n", codeNow(t, secret)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mariadb: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !strings.HasSuffix(strings.TrimSpace(out), userNative.Name+"@%") {
		t.Errorf("output %q does not end with the query's result", out)
	}
	if uri, _ := secretIn(t, out); uri != enrolled.URI {
		t.Errorf("the dialog showed another enrolment than the pending one")
	}
	qr, err := mfa.TerminalQR(enrolled.URI)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "to set up TOTP for portcullis:\n"+strings.Join(qr, "\n")+"\n") {
		t.Errorf("the dialog did not show the QR code line for line:\n%s", out)
	}
	if !strings.Contains(out, "Enter the 6-digit code from your authenticator app: ") {
		t.Errorf("the dialog did not ask for the code:\n%s", out)
	}
	m := dialogKeyRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the dialog showed no session key:\n%s", out)
	}
	key := m[1]
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })

	// The session key, with no code, opens the dialog at once; a wrong
	// code there is refused with 1045.
	stdout.Reset()
	stderr.Reset()
	again := h.cliTo(ctx, aliceUPN, key, totpResource, "SELECT CURRENT_USER()")
	again.Stdout, again.Stderr = &stdout, &stderr
	again.Stdin = strings.NewReader(wrongCode(t, secret) + "\n")
	if err := again.Run(); err == nil {
		t.Fatalf("a wrong code got in: %s", stdout.String())
	}
	if !strings.Contains(stdout.String(), `"app_totp" requires a TOTP code.`) {
		t.Errorf("the dialog did not ask for the code:\n%s", stdout.String())
	}
	if msg := stderr.String(); !strings.Contains(msg, "ERROR 1045 (28000)") || !strings.Contains(msg, "is wrong") {
		t.Errorf("a wrong code: stderr %q, want ERROR 1045 (28000) saying it is wrong", msg)
	}
	h.noSecretsLogged(key, secret, enrolled.URI)
}

// What a client that cannot show a dialog is told fits in what MySQL
// clients keep of an error message, with the URI, the key and the
// session key whole.
func TestTOTPRefusalFits(t *testing.T) {
	key := "pcx_" + strings.Repeat("a", 52)
	uri := "otpauth://totp/portcullis:" + strings.Repeat("x", 40) + "@contoso.example?algorithm=SHA1&digits=6&issuer=portcullis&period=30&secret=ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	enrol := &auth.TOTPEnrollment{URI: uri, Key: "ABCD EFGH IJKL MNOP QRST UVWX YZ23 4567"}
	long := strings.Repeat("a long explanation ", 20)
	tests := []struct {
		name     string
		need     *auth.TOTPRequired
		password string
		want     []string
	}{
		{
			name:     "fresh sign-in, enrolment",
			need:     &auth.TOTPRequired{Resource: "app_totp", Message: long, Enrollment: enrol, SessionKey: key},
			password: "anything",
			want:     []string{uri, enrol.Key, key, "<session key>:<code>"},
		},
		{
			name:     "session key, enrolment",
			need:     &auth.TOTPRequired{Resource: "app_totp", Message: long, Enrollment: enrol},
			password: key,
			want:     []string{uri, enrol.Key, "<key>:<code>"},
		},
		{
			name:     "address grace, enrolment",
			need:     &auth.TOTPRequired{Resource: "app_totp", Message: long, Enrollment: enrol},
			password: "anything",
			want:     []string{uri, enrol.Key, "the 6-digit code as the password"},
		},
		{
			name: "short message kept whole",
			need: &auth.TOTPRequired{Resource: "app_totp", Message: "connect again with the code", SessionKey: key},
			want: []string{key, "connect again with the code"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := refusalFor(context.Background(), "s1", &totpAnswer{need: tt.need, reconnect: reconnectWith(tt.need, tt.password)})
			if r.code != gomysql.ER_ACCESS_DENIED_ERROR || r.state != stateAccessDenied {
				t.Errorf("ERROR %d (%s), want 1045 (28000)", r.code, r.state)
			}
			if len(r.message) > maxErrMessage {
				t.Errorf("%d bytes, more than the %d clients keep: %q", len(r.message), maxErrMessage, r.message)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.message, w) {
					t.Errorf("%q lacks %q", r.message, w)
				}
			}
			if r.err != nil {
				t.Error("the refusal wraps an error, whose message the log could print beside the secrets")
			}
		})
	}
}

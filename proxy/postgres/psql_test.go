package postgres

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// psql in notice mode: the notices with URL and code appear on stderr
// while psql waits; once the person approves, the query runs as the
// backend role policy maps alice to.
func TestPsqlSignInWithNotices(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	run := h.psql(ctx, alice, "analytics", map[string]string{"PGPASSWORD": "sign me in"}, "select current_user")
	var sawURL bool
	run.start(t, func(line string) {
		if strings.Contains(line, sim.URL()+"/devicelogin") {
			sawURL = true
		}
		// What the person does: read the code psql printed and enter
		// it at the URL.
		if m := codeRE.FindStringSubmatch(line); m != nil {
			if err := sim.Approve(m[1], alice); err != nil {
				t.Error(err)
			}
		}
	})
	if err := run.wait(); err != nil {
		t.Fatalf("psql: %v\nstderr:\n%s", err, run.stderr)
	}
	if got := strings.TrimSpace(run.stdout.String()); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	stderr := run.stderr.String()
	if !sawURL {
		t.Errorf("stderr has no verification URL:\n%s", stderr)
	}
	if !strings.Contains(stderr, "NOTICE:") || !strings.Contains(stderr, "The code expires at") {
		t.Errorf("stderr has no expiry notice:\n%s", stderr)
	}
	if !sessionKeyRE.MatchString(stderr) {
		t.Errorf("stderr shows no session key after the sign-in:\n%s", stderr)
	}
}

// While the sign-in is pending, psql is reminded where to sign in and how
// long the code has left; the reminders stop once it is signed in.
func TestPsqlRemindedWhileWaiting(t *testing.T) {
	h := newHarness(t, harnessOptions{reminder: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	run := h.psql(ctx, alice, "analytics", map[string]string{"PGPASSWORD": "sign me in"}, "select current_user")
	var code string
	reminders := 0
	run.start(t, func(line string) {
		if m := codeRE.FindStringSubmatch(line); m != nil && code == "" {
			code = m[1]
		}
		if strings.Contains(line, "Still waiting for you to sign in") {
			reminders++
			if !strings.Contains(line, code) || !strings.Contains(line, sim.URL()+"/devicelogin") || !strings.Contains(line, "expires at") {
				t.Errorf("the reminder %q does not repeat the URL, the code %s and the expiry", line, code)
			}
			// The person comes back after the second reminder.
			if reminders == 2 {
				if err := sim.Approve(code, alice); err != nil {
					t.Error(err)
				}
			}
		}
	})
	if err := run.wait(); err != nil {
		t.Fatalf("psql: %v\nstderr:\n%s", err, run.stderr)
	}
	if got := strings.TrimSpace(run.stdout.String()); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	if reminders < 2 {
		t.Errorf("psql showed %d reminders, want at least 2:\n%s", reminders, run.stderr)
	}
	// Nothing after the session key: the reminders stopped with the
	// decision.
	stderr := run.stderr.String()
	if i := strings.Index(stderr, "session key as your password"); i < 0 || strings.Contains(stderr[i:], "Still waiting") {
		t.Errorf("a reminder after the sign-in, or no session key:\n%s", stderr)
	}
}

// A JDBC-style client gets the prompt as a FATAL error, and its
// reconnect after the sign-in gets in.
func TestPsqlErrorModeThenReconnect(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	env := map[string]string{"PGPASSWORD": "sign me in", "PGAPPNAME": "DBeaver 23.2.0 - Main <analytics>"}

	first := h.psql(ctx, alice, "analytics", env, "select current_user")
	err := first.cmd.Run()
	stderr := first.stderr.String()
	if err == nil {
		t.Fatalf("first connection succeeded before any sign-in; stdout %q", first.stdout.String())
	}
	m := codeRE.FindStringSubmatch(stderr)
	if m == nil || !strings.Contains(stderr, "FATAL:  sign-in required") || !strings.Contains(stderr, sim.URL()+"/devicelogin") {
		t.Fatalf("first connection's error does not carry the URL and code:\n%s", stderr)
	}
	if err := sim.Approve(m[1], alice); err != nil {
		t.Fatal(err)
	}
	// portcullis polls Entra ID in the background; a reconnect before it
	// has seen the approval would be told the same code again.
	h.waitSignedIn(alice)

	second := h.psql(ctx, alice, "analytics", env, "select current_user")
	if err := second.cmd.Run(); err != nil {
		t.Fatalf("reconnect after sign-in: %v\nstderr:\n%s", err, second.stderr)
	}
	if got := strings.TrimSpace(second.stdout.String()); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
}

func TestPsqlWithoutTLSIsToldToUseSSLMode(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := h.psql(ctx, alice, "analytics", map[string]string{"PGPASSWORD": "x", "PGSSLMODE": "disable"}, "select 1")
	if err := run.cmd.Run(); err == nil {
		t.Fatal("a plaintext connection was accepted by a listener that requires TLS")
	}
	if stderr := run.stderr.String(); !strings.Contains(stderr, "sslmode=require") {
		t.Errorf("stderr does not say to use sslmode=require:\n%s", stderr)
	}
}

// psql cancels with a plaintext CancelRequest on a new connection; it
// must reach the right backend.
func TestPsqlCancel(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	run := h.psql(ctx, alice, "analytics", map[string]string{"PGPASSWORD": key}, "select pg_sleep(30)")
	run.start(t, func(string) {})
	waitRunning(t, h, "select pg_sleep(30)")

	start := time.Now()
	if err := run.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	run.wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("psql took %v to return after cancelling", took)
	}
	if stderr := run.stderr.String(); !strings.Contains(stderr, "canceling statement due to user request") {
		t.Errorf("psql's query was not cancelled by the server:\n%s", stderr)
	}
	h.waitEvent("cancel.forwarded", nil)
}

// waitRunning polls the backend until a query starting with prefix is
// running.
func waitRunning(t *testing.T, h *harness, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	su, err := h.pg.Superuser(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	for {
		res, err := su.Exec(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '"+prefix+"%'").ReadAll()
		if err != nil {
			t.Fatalf("waiting for %q to run: %v", prefix, err)
		}
		if string(res[0].Rows[0][0]) != "0" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%q never started running", prefix)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

package mysql

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// token is an Entra access token for upn that the harness accepts.
func (h *harness) token(t *testing.T, upn, audience string) string {
	t.Helper()
	tok, err := h.sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: audience, ClientID: appID})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A session portcullis revokes (continuous authorization) is told so in
// MySQL's words, between two packets, even with a query running.
func TestRevokedSessionIsTold(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	db := h.open(aliceUPN, h.token(t, aliceUPN, appID), "app", "")
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(ctx, "SELECT SLEEP(20)")
		done <- err
	}()
	started := h.waitEvent("session.started", nil)
	waitProcess(ctx, t, "SELECT SLEEP(20)")
	const why = aliceUPN + ` is not in any group allowed to use "app"`
	if !h.srv.Revoke(started["session_id"].(string), "not_allowed", why) {
		t.Fatal("Revoke did not find the session")
	}
	err := <-done
	e := myErr(err)
	if e == nil || e.Number != gomysql.ER_ACCESS_DENIED_ERROR || string(e.SQLState[:]) != stateAccessDenied || e.Message != "access revoked: "+why {
		t.Fatalf("query of a revoked session: %v, want ERR 1045 (28000) access revoked", err)
	}
	h.waitEvent("session.revoked", func(m map[string]any) bool { return m["reason"] == "not_allowed" })
	h.waitEvent("session.ended", func(m map[string]any) bool { return m["reason"] == "revoked" })
	waitGone(ctx, t, "SELECT SLEEP(20)")
}

// waitGone waits until no backend thread runs a query starting prefix.
func waitGone(ctx context.Context, t *testing.T, prefix string) {
	t.Helper()
	root, err := mariadb.Server(t).Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for ctx.Err() == nil {
		r, err := root.Execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ?", prefix+"%")
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := r.GetInt(0, 0); n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the backend still runs %q after the session was revoked", prefix)
}

// The mariadb command line with an Entra access token as the password,
// over TLS, as tools set up for Azure Database for MySQL do.
func TestCLIWithAccessToken(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	tests := []struct {
		name    string
		user    string
		token   string
		want    string // CURRENT_USER(), or
		wantErr string // the refusal
	}{
		{name: "own token", user: aliceUPN, token: h.token(t, aliceUPN, appID), want: userNative.Name + "@%"},
		{name: "token for another audience", user: aliceUPN, token: h.token(t, aliceUPN, "api://someone-else"), wantErr: "ERROR 1045 (28000)"},
		{name: "another user's token", user: bobUPN, token: h.token(t, aliceUPN, appID), wantErr: "signed in as " + aliceUPN},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := h.cli(ctx, tt.user, tt.token, "SELECT CURRENT_USER()")
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(stderr.String(), tt.wantErr) {
					t.Fatalf("mariadb: %v, stderr %q; want %q", err, stderr.String(), tt.wantErr)
				}
				if strings.Contains(stderr.String(), tt.token) {
					t.Errorf("the refusal repeats the token")
				}
				return
			}
			if err != nil {
				t.Fatalf("mariadb: %v: %s", err, stderr.String())
			}
			if got := strings.TrimSpace(stdout.String()); got != tt.want {
				t.Errorf("CURRENT_USER() = %q, want %q", got, tt.want)
			}
		})
	}
}

package proxy_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// Secrets a TOTP outcome carries for the person's screen; none may reach
// the log.
const (
	auditURI        = "otpauth://totp/portcullis:tester?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=portcullis"
	auditKey        = "JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP"
	auditSessionKey = "pcx_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst"
)

// totpOutcomes answers with the TOTP outcome the password names.
type totpOutcomes struct{}

func (totpOutcomes) Decide(_ context.Context, req auth.Request) (*auth.Decision, error) {
	id := auth.Identity{Kind: auth.KindUser, ObjectID: "oid-1", UPN: "tester@example.test"}
	until := time.Now().Add(15 * time.Minute)
	switch req.Password {
	case "enrol":
		return nil, &auth.TOTPRequired{
			Identity: id, Resource: req.Resource, Message: "set up TOTP, then reconnect",
			Enrollment: &auth.TOTPEnrollment{URI: auditURI, Key: auditKey, QR: []string{"█▀▀█", "█▄▄█"}},
			SessionKey: auditSessionKey, SessionKeyExpires: until,
		}
	case "no-code":
		return nil, &auth.TOTPRequired{Identity: id, Resource: req.Resource, Message: "reconnect with a code"}
	case "wrong":
		return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "wrong code",
			Err: &auth.TOTPFailure{Kind: auth.TOTPWrongCode, Failures: 2, MaxFailures: 5}}
	case "reused":
		return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "already used",
			Err: &auth.TOTPFailure{Kind: auth.TOTPReusedCode}}
	case "locks":
		return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "wrong code, now locked",
			Err: &auth.TOTPFailure{Kind: auth.TOTPWrongCode, Failures: 5, MaxFailures: 5, LockedUntil: until, LockedNow: true}}
	case "locked":
		return nil, &auth.Refusal{Reason: auth.ReasonTOTPLocked, Message: "locked",
			Err: &auth.TOTPFailure{Kind: auth.TOTPLocked, Failures: 5, LockedUntil: until}}
	}
	return nil, fmt.Errorf("unexpected password")
}

// Every TOTP outcome is audited under its own event, with who and why,
// and without the enrolment or the session key it carries.
func TestTOTPOutcomesAreAudited(t *testing.T) {
	cfg := &config.Config{
		Resources: []config.Resource{{Name: "echo", Protocol: "line", Address: "127.0.0.1:1"}},
		Listeners: []config.Listener{{Name: "line", Protocol: "line", TLS: config.ListenerTLSDisabled}},
	}
	core, logs := observer.New(zapcore.DebugLevel)
	srv, err := proxy.New(cfg, proxy.Deps{Authorizer: totpOutcomes{}, Protocols: []proxy.Protocol{lineProtocol{}}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln, cfg.Listeners[0]) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	ts := &testServer{t: t, srv: srv, addr: ln.Addr().String(), logs: logs}

	tests := []struct {
		password string
		event    string
		want     map[string]any
	}{
		{password: "enrol", event: "mfa.totp.enrollment_required", want: map[string]any{"oid": "oid-1", "new_session_key": true}},
		{password: "no-code", event: "mfa.totp.code_required", want: map[string]any{"oid": "oid-1", "new_session_key": false}},
		{password: "wrong", event: "mfa.totp.failed", want: map[string]any{"reason": "bad_credentials", "kind": "wrong_code", "failures": int64(2), "max_failures": int64(5)}},
		{password: "reused", event: "mfa.totp.failed", want: map[string]any{"reason": "bad_credentials", "kind": "reused_code"}},
		{password: "locks", event: "mfa.totp.locked", want: map[string]any{"reason": "bad_credentials", "kind": "wrong_code", "failures": int64(5)}},
		{password: "locked", event: "mfa.totp.failed", want: map[string]any{"reason": "totp_locked", "kind": "locked"}},
	}
	for _, tt := range tests {
		t.Run(tt.password, func(t *testing.T) {
			before := len(ts.event(tt.event))
			_, r := ts.dial(tt.password, "")
			expectLine(t, r, "ERR")
			var ev map[string]any
			deadline := time.Now().Add(5 * time.Second)
			for ev == nil && time.Now().Before(deadline) {
				if evs := ts.event(tt.event); len(evs) > before {
					ev = evs[len(evs)-1]
				} else {
					time.Sleep(5 * time.Millisecond)
				}
			}
			if ev == nil {
				t.Fatalf("no new %s event", tt.event)
			}
			for k, want := range tt.want {
				if ev[k] != want {
					t.Errorf("%s: %s = %#v, want %#v", tt.event, k, ev[k], want)
				}
			}
			if ev["user"] != "tester" || ev["resource"] != "echo" || ev["session_id"] == nil {
				t.Errorf("%s lacks who and where: %v", tt.event, ev)
			}
		})
	}
	if n := len(ts.event("auth.failed")); n != 0 {
		t.Errorf("%d TOTP outcomes were also logged as auth.failed", n)
	}
	// conn.closed logs the error Serve returned: that too must be clean.
	deadline := time.Now().Add(5 * time.Second)
	for len(ts.event("conn.closed")) < len(tests) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(ts.event("conn.closed")); n != len(tests) {
		t.Errorf("%d conn.closed events, want %d", n, len(tests))
	}
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, secret := range []string{"JBSWY3DPEHPK3PXP", "JBSW Y3DP", auditSessionKey, "otpauth://"} {
			if strings.Contains(line, secret) {
				t.Errorf("log entry %q holds a secret (%.12s…)", e.Message, secret)
			}
		}
	}
}

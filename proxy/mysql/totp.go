package mysql

import (
	"context"
	"fmt"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// maxErrMessage is the longest error message libmysqlclient and MariaDB
// Connector/C keep (MYSQL_ERRMSG_SIZE, less the NUL): they cut the rest.
const maxErrMessage = 511

// totpPromptWait bounds the wait for a TOTP code typed into a dialog: a
// person may first have to set up their authenticator app.
const totpPromptWait = 5 * time.Minute

// canAskTOTP reports whether the TOTP code can be asked for on this
// connection: a dialog is open (the device-code prompt), or can be
// opened for an interactive MariaDB command line.
func (fe *frontend) canAskTOTP(res config.Resource) bool {
	fe.mu.Lock()
	open := fe.dialog != nil
	fe.mu.Unlock()
	return open || fe.promptMode(res.Prompt) == auth.PromptNotice
}

// askForTOTP asks, in a dialog question, for the TOTP code the resource
// needs (showing the enrolment first to a person who has no
// authenticator yet, and the session key of a fresh sign-in), then
// decides again with the code, as if the person had connected again
// with it. A wrong code ends the connection like any refusal.
func (fe *frontend) askForTOTP(ctx context.Context, res config.Resource, password string, need *auth.TOTPRequired) (*auth.Decision, error) {
	if err := fe.c.Step(); err != nil {
		return nil, err
	}
	question := dialogQuestion(totpQuestion(need), false)
	fe.mu.Lock()
	if fe.dialog == nil {
		// The dialog opens here; ready sees it is open.
		fe.switched = true
		question = authSwitch(pluginDialog, question)
		fe.dialog = &dialogState{}
	}
	fe.mu.Unlock()
	if err := fe.pc.writePacket(question); err != nil {
		return nil, err
	}
	if err := fe.c.Await(); err != nil {
		return nil, err
	}
	t := time.AfterFunc(totpPromptWait, func() { fe.pc.conn.SetReadDeadline(time.Unix(1, 0)) })
	answer, err := fe.pc.readPacket()
	t.Stop()
	at := time.Now()
	if err != nil {
		return nil, err
	}
	if err := fe.c.Step(); err != nil {
		return nil, err
	}
	code := strings.TrimSpace(string(trimNUL(answer)))
	if !isCode(code) {
		return nil, &refusal{
			code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied,
			message: fmt.Sprintf("That is not a 6-digit code. Connect again with %s.", reconnectWith(need, password)),
			reason:  "totp_not_a_code",
		}
	}

	// The password that brings the person back with the code: the new
	// session key, else what they proved themselves with (or nothing, in
	// the address grace).
	withCode := code
	if need.SessionKey != "" {
		withCode = need.SessionKey + ":" + code
	} else if p := auth.ParsePassword(password); p.Kind != auth.CredentialNone {
		withCode = p.Credential + ":" + code
	}
	req := auth.Request{
		Protocol:    config.ProtocolMySQL,
		Resource:    res.Name,
		LoginName:   fe.hs.user,
		Password:    withCode,
		ClientAddr:  fe.c.ClientAddr().Addr(),
		Application: fe.application(),
		ReceivedAt:  at,
		// Notice mode without a Prompt: this decision never starts
		// another sign-in.
		Mode: auth.PromptNotice,
	}
	dctx, cancel := context.WithTimeoutCause(ctx, fe.c.Limits().HandshakeTimeout, errDecisionTimeout)
	defer cancel()
	dec, err := fe.c.Decide(dctx, req)
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		return nil, fmt.Errorf("decision for %s: %w", req.LoginName, context.Cause(dctx))
	}
	return dec, err
}

// totpQuestion is the dialog question: the enrolment (the QR code under
// a line of text, the URI and the key), the session key, and the
// question itself.
func totpQuestion(need *auth.TOTPRequired) string {
	var b strings.Builder
	if e := need.Enrollment; e != nil {
		b.WriteString("Scan this QR code with an authenticator app (Microsoft Authenticator, Google Authenticator or any TOTP app) to set up TOTP for portcullis:\n")
		for _, line := range e.QR {
			b.WriteString(line)
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "If you cannot scan the code, add this URI to the app: %s\n(or enter the key %s by hand: time-based, 6 digits, 30 seconds, SHA-1).\n", e.URI, e.Key)
	} else {
		fmt.Fprintf(&b, "%q requires a TOTP code.\n", need.Resource)
	}
	if need.SessionKey != "" {
		fmt.Fprintf(&b, "Signed in as %s. Your session key (until %s), for connecting again as <session key>:<code>:\n  %s\n",
			need.Identity.Name(), need.SessionKeyExpires.UTC().Format("2006-01-02 15:04 UTC"), need.SessionKey)
	}
	b.WriteString("Enter the 6-digit code from your authenticator app: ")
	return b.String()
}

// totpAnswer is a *auth.TOTPRequired for a client that cannot be asked
// in a dialog, with what to reconnect with in few words. Its Error is the
// TOTPRequired's, which holds no secret: the log gets that, the client
// totpRefusal.
type totpAnswer struct {
	need      *auth.TOTPRequired
	reconnect string
}

func (a *totpAnswer) Error() string { return a.need.Error() }
func (a *totpAnswer) Unwrap() error { return a.need }

// totpRefusal is the ERR 1045 (28000) for a person who must come back
// with a TOTP code: the URI and key first, then what to do, then the
// session key; if that is longer than clients keep, what to do is said in
// fewer words. It is for the client only: it holds secrets, so it wraps
// no error and is never logged.
func totpRefusal(need *auth.TOTPRequired, reconnect string) *refusal {
	var head, tail string
	if e := need.Enrollment; e != nil {
		head = fmt.Sprintf("Set up TOTP: add %s to your authenticator app (or enter the key %s by hand). ", e.URI, e.Key)
	}
	if need.SessionKey != "" {
		tail = fmt.Sprintf(" Your session key (until %s): %s", need.SessionKeyExpires.UTC().Format("2006-01-02 15:04 UTC"), need.SessionKey)
	}
	msg := head + need.Message + tail
	if len(msg) > maxErrMessage {
		if reconnect == "" {
			reconnect = reconnectWith(need, "")
		}
		msg = head + fmt.Sprintf("%q requires a TOTP code: connect again with %s.", need.Resource, reconnect) + tail
	}
	return &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: msg}
}

// reconnectWith says, briefly, what password brings the person back with
// a code, judged by the password that brought them this time.
func reconnectWith(need *auth.TOTPRequired, password string) string {
	switch {
	case need.SessionKey != "":
		return "<session key>:<code> as the password"
	case password != "" && auth.ParsePassword(password).Kind == auth.CredentialNone:
		// The address grace let them in without a key.
		return "the 6-digit code as the password"
	}
	return "your session key or token, a colon and the 6-digit code as the password (<key>:<code>)"
}

// isCode reports whether s is six ASCII digits.
func isCode(s string) bool {
	if len(s) != 6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

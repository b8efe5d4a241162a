package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// askForTOTP tells a person whose identity is proven what the resource's
// second factor needs, and ends the connection: the code can only come in
// a password, so they connect again with it. In notice mode the session
// key and the enrolment are notices after AuthenticationOk (libpq shows
// notices only after it), the QR code drawn in the terminal, and the
// FATAL says what to do; in error mode everything is in the FATAL. It
// returns need, whose Error holds no secret, for the log.
func (fe *frontend) askForTOTP(ctx context.Context, need *auth.TOTPRequired) error {
	if ctx.Err() != nil || fe.mode != auth.PromptNotice {
		return fe.fail(ctx, need)
	}
	if err := fe.c.Step(); err != nil {
		return fe.fail(ctx, err)
	}
	var buf []byte
	if need.SessionKey != "" || need.Enrollment != nil {
		buf = fe.appendAuthOK(buf)
	}
	if need.SessionKey != "" {
		buf = appendNotice(buf, sessionKeyNotice(need.Identity, need.SessionKey, need.SessionKeyExpires))
	}
	if e := need.Enrollment; e != nil {
		// psql prefixes only the first line of a notice with "NOTICE:  ",
		// so the code's lines below it stay aligned.
		buf = appendNotice(buf, "Scan this QR code with an authenticator app (Microsoft Authenticator, Google Authenticator or any TOTP app) to set up TOTP for portcullis:\n"+
			strings.Join(e.QR, "\n"))
		buf = appendNotice(buf, fmt.Sprintf("If you cannot scan the code, add this URI to the app: %s (or enter the key %s by hand: time-based, 6 digits, 30 seconds, SHA-1).", e.URI, e.Key))
	}
	buf = appendMessage(buf, (&fatal{code: codeInvalidAuthorization, message: need.Message}).response())
	if err := fe.write(buf); err != nil {
		return fmt.Errorf("tell %s that %q needs a TOTP code: %w", need.Identity.Name(), need.Resource, err)
	}
	return need
}

// totpFatal is the whole answer to a client that shows only errors: what
// to do, the enrolment, and the session key to come back with, in one
// FATAL. It is shown to the person, and never logged: its Error would
// hold the secrets, so callers log need instead.
func totpFatal(need *auth.TOTPRequired) *fatal {
	var b strings.Builder
	b.WriteString(need.Message)
	if e := need.Enrollment; e != nil {
		fmt.Fprintf(&b, "\nAdd this URI to your authenticator app: %s\n(or enter the key %s by hand)", e.URI, e.Key)
	}
	if need.SessionKey != "" {
		fmt.Fprintf(&b, "\nYour session key (until %s): %s", need.SessionKeyExpires.UTC().Format("2006-01-02 15:04 UTC"), need.SessionKey)
	}
	f := &fatal{code: codeInvalidAuthorization, message: b.String()}
	switch {
	case need.Enrollment != nil:
		f.hint = "The URI and the key are your TOTP secret, and the session key is as good as a password: share none of them."
	case need.SessionKey != "":
		f.hint = "The session key is as good as a password: share it with nobody."
	}
	return f
}

// sessionKeyNotice shows a new session key to the person it was issued
// to.
func sessionKeyNotice(id auth.Identity, key string, expires time.Time) string {
	return fmt.Sprintf("Signed in as %s. Until %s you can connect without signing in again by giving this session key as your password: %s",
		id.Name(), expires.UTC().Format("2006-01-02 15:04 UTC"), key)
}

package mysql

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/proxy"
)

// SQLSTATEs portcullis answers with.
const (
	stateAccessDenied = "28000" // bad credentials, sign-in pending or refused
	stateSyntaxAccess = "42000" // access to a database denied, unknown database
	stateCommLink     = "08S01" // communication link failure, protocol errors
	stateGeneral      = "HY000"
	stateKilled       = "70100"
)

// Error codes MariaDB knows that go-mysql does not name.
const (
	erConnectionKilled = 1927
)

// refusal is an error the client is told about in an ERR packet. message
// is for the person at the client and never holds a secret; err is the
// cause, for the log.
type refusal struct {
	code    uint16
	state   string
	message string
	// reason, when set, marks a refusal made by this package (not by the
	// decision) and is logged as conn.refused's reason.
	reason string
	err    error
}

func (r *refusal) Error() string {
	if r.err != nil {
		return fmt.Sprintf("ERROR %d (%s): %s: %v", r.code, r.state, r.message, r.err)
	}
	return fmt.Sprintf("ERROR %d (%s): %s", r.code, r.state, r.message)
}

func (r *refusal) Unwrap() error { return r.err }

func (r *refusal) packet() []byte { return errPacket(r.code, r.state, r.message) }

// clientIOError is a failed read or write on the client connection: after
// one, there is usually nobody left to tell anything.
type clientIOError struct{ err error }

func (e *clientIOError) Error() string { return "client: " + e.err.Error() }
func (e *clientIOError) Unwrap() error { return e.err }

// Why the wait for a decision ended early.
var (
	errClientGone      = errors.New("client disconnected")
	errDecisionTimeout = errors.New("no decision in time")
)

// backendError is a failure to reach or log in to the backend of a
// resource. Its Error names the address, for the log; the client only
// ever sees the resource name.
type backendError struct {
	resource string
	user     string
	database string // asked for by the client in place of the resource's
	err      error
}

func (e *backendError) Error() string {
	return fmt.Sprintf("backend of resource %q as %q: %v", e.resource, e.user, e.err)
}

func (e *backendError) Unwrap() error { return e.err }

// refusalFor decides what to tell the client about err, or nil when
// there is nobody to tell.
func refusalFor(ctx context.Context, sessionID string, err error) *refusal {
	var (
		r       *refusal
		io      *clientIOError
		pending *auth.SignInPending
		answer  *totpAnswer
		need    *auth.TOTPRequired
		denied  *auth.Refusal
		backend *backendError
	)
	switch {
	case errors.As(err, &r):
		return r
	case ctx.Err() != nil:
		return ended(context.Cause(ctx))
	case errors.As(err, &io):
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return &refusal{code: gomysql.ER_NET_READ_INTERRUPTED, state: stateCommLink, message: "portcullis timed out waiting for the client", err: err}
		}
		return nil
	case errors.Is(err, errClientGone):
		return nil
	case errors.As(err, &pending):
		return signInRequired(pending.Prompt)
	case errors.As(err, &answer):
		return totpRefusal(answer.need, answer.reconnect)
	case errors.As(err, &need):
		return totpRefusal(need, "")
	case errors.As(err, &denied):
		return refused(denied)
	case errors.Is(err, errDecisionTimeout):
		return &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: "the sign-in was not completed in time; connect again to get a new code"}
	case errors.As(err, &backend):
		return backendRefusal(backend, sessionID)
	}
	return &refusal{
		code:    gomysql.ER_UNKNOWN_ERROR,
		state:   stateGeneral,
		message: fmt.Sprintf("portcullis could not complete this connection (session %s); if it keeps failing, give an operator the session id", sessionID),
	}
}

// ended is what a client hears when portcullis ends its connection.
func ended(cause error) *refusal {
	var revoked *proxy.RevokedError
	if errors.As(cause, &revoked) {
		return &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: revoked.Error(), err: cause}
	}
	if errors.Is(cause, proxy.ErrTerminated) {
		return &refusal{code: erConnectionKilled, state: stateKilled, message: "connection was killed: an operator ended this session", err: cause}
	}
	if errors.Is(cause, proxy.ErrKilled) {
		return &refusal{code: erConnectionKilled, state: stateKilled, message: "Connection was killed", err: cause}
	}
	var lost *proxy.BackendLostError
	if errors.As(cause, &lost) {
		return &refusal{code: gomysql.ER_NET_READ_ERROR, state: stateCommLink, message: lost.Error() + "; connect again", err: cause}
	}
	return &refusal{code: gomysql.ER_SERVER_SHUTDOWN, state: stateCommLink, message: "portcullis is shutting down; connect again in a moment", err: cause}
}

func signInRequired(p auth.DeviceCodePrompt) *refusal {
	return &refusal{
		code:  gomysql.ER_ACCESS_DENIED_ERROR,
		state: stateAccessDenied,
		message: fmt.Sprintf("Sign-in required: open %s and enter the code %s, then connect again (the code expires at %s).",
			p.VerificationURL, p.UserCode, clock(p.ExpiresAt)),
	}
}

func refused(r *auth.Refusal) *refusal {
	f := &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: r.Message, err: r}
	var fallback string
	switch r.Reason {
	case auth.ReasonBadCredentials:
		fallback = "the session key or token is not valid"
	case auth.ReasonUnknownResource:
		f.code, f.state, fallback = gomysql.ER_BAD_DB_ERROR, stateSyntaxAccess, "no such resource"
	case auth.ReasonNotAllowed:
		f.code, f.state, fallback = gomysql.ER_DBACCESS_DENIED_ERROR, stateSyntaxAccess, "you are not in a group allowed to use this resource"
	case auth.ReasonUnavailable:
		f.code, f.state, fallback = gomysql.ER_UNKNOWN_ERROR, stateGeneral, "portcullis cannot check who you are right now: a service it depends on is unreachable; try again later"
	case auth.ReasonIdentityMismatch:
		fallback = "the signed-in identity is not the user named in the connection"
	case auth.ReasonDeclined:
		fallback = "the sign-in was declined or the code expired"
	case auth.ReasonDisabled:
		fallback = "the account is disabled"
	case auth.ReasonTOTPLocked:
		fallback = "too many wrong TOTP codes: TOTP sign-in is locked for a while"
	default:
		fallback = "access refused"
	}
	if f.message == "" {
		f.message = fallback
	}
	return f
}

// backendRefusal explains a backend failure by resource name only: the
// address behind it is none of the client's business.
func backendRefusal(e *backendError, sessionID string) *refusal {
	var my *gomysql.MyError
	if errors.As(e.err, &my) {
		if my.Code == gomysql.ER_ACCESS_DENIED_ERROR || my.State == stateAccessDenied {
			// The backend refused the mapped login: an operator's
			// problem, and not the user's password.
			return &refusal{
				code:    gomysql.ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
				state:   stateGeneral,
				message: fmt.Sprintf("resource %q refused portcullis's login as %q (session %s); ask an operator to check its credential mapping", e.resource, e.user, sessionID),
				err:     e,
			}
		}
		msg := fmt.Sprintf("resource %q: %s", e.resource, my.Message)
		if e.database != "" && (my.Code == gomysql.ER_BAD_DB_ERROR || my.Code == gomysql.ER_DBACCESS_DENIED_ERROR) {
			msg += fmt.Sprintf(" (portcullis has no resource named '%s', so it asked for a database of that name on the default resource)", e.database)
		}
		return &refusal{code: my.Code, state: my.State, message: msg, err: e}
	}
	var r *refusal
	if errors.As(e.err, &r) {
		rr := *r
		rr.message = fmt.Sprintf("resource %q: %s", e.resource, r.message)
		rr.err = e
		return &rr
	}
	return &refusal{
		code:    gomysql.ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
		state:   stateGeneral,
		message: fmt.Sprintf("resource %q cannot be reached right now (session %s); try again later, and if it persists give an operator the session id", e.resource, sessionID),
		err:     e,
	}
}

// clock formats a time for a person: UTC, to the minute.
func clock(t time.Time) string {
	return t.UTC().Format("15:04 UTC")
}

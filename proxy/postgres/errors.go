package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	pgproto3 "github.com/jackc/pgproto3/v2"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/proxy"
)

// SQLSTATEs portcullis answers with.
const (
	codeInvalidAuthorization = "28000" // invalid_authorization_specification
	codeInvalidPassword      = "28P01" // invalid_password
	codeInvalidCatalog       = "3D000" // invalid_catalog_name: unknown resource
	codeRejected             = "08004" // sqlserver_rejected_establishment_of_sqlconnection
	codeConnectionFailure    = "08006" // connection_failure
	codeProtocolViolation    = "08P01" // protocol_violation
	codeFeatureNotSupported  = "0A000" // feature_not_supported
	codeAdminShutdown        = "57P01" // admin_shutdown
)

// fatal is an error the client is told about in a FATAL ErrorResponse.
// message and hint are for the person at the client and never hold a
// secret; err is the cause, for the log.
type fatal struct {
	code    string
	message string
	hint    string
	// reason, when set, marks a refusal made by this package (not by the
	// decision) and is logged as conn.refused's reason.
	reason string
	err    error
}

func (f *fatal) Error() string {
	if f.err != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", f.message, f.code, f.err)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", f.message, f.code)
}

func (f *fatal) Unwrap() error { return f.err }

func (f *fatal) response() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                f.code,
		Message:             f.message,
		Hint:                f.hint,
	}
}

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
	err      error
}

func (e *backendError) Error() string {
	return fmt.Sprintf("backend of resource %q as %q: %v", e.resource, e.user, e.err)
}

func (e *backendError) Unwrap() error { return e.err }

// fatalFor decides what to tell the client about err, or nil when there
// is nobody to tell.
func fatalFor(ctx context.Context, sessionID string, err error) *fatal {
	var (
		f       *fatal
		io      *clientIOError
		pending *auth.SignInPending
		need    *auth.TOTPRequired
		refusal *auth.Refusal
		backend *backendError
	)
	switch {
	case errors.As(err, &f):
		return f
	case ctx.Err() != nil:
		return ended(context.Cause(ctx))
	case errors.As(err, &io):
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return &fatal{code: codeProtocolViolation, message: "portcullis timed out waiting for the client", err: err}
		}
		return nil
	case errors.Is(err, errClientGone):
		return nil
	case errors.As(err, &pending):
		return signInRequired(pending.Prompt)
	case errors.As(err, &need):
		return totpFatal(need)
	case errors.As(err, &refusal):
		return refused(refusal)
	case errors.Is(err, errDecisionTimeout):
		return &fatal{code: codeInvalidAuthorization, message: "the sign-in was not completed in time", hint: "Connect again to get a new code."}
	case errors.As(err, &backend):
		return backendFatal(backend, sessionID)
	}
	return &fatal{
		code:    codeRejected,
		message: fmt.Sprintf("portcullis could not complete this connection (session %s)", sessionID),
		hint:    "Try again; if it keeps failing, give an operator the session id.",
	}
}

// ended is what a client hears when portcullis ends its connection.
func ended(cause error) *fatal {
	var revoked *proxy.RevokedError
	if errors.As(cause, &revoked) {
		return &fatal{code: codeInvalidAuthorization, message: "terminating connection: " + revoked.Error(), err: cause}
	}
	if errors.Is(cause, proxy.ErrTerminated) {
		return &fatal{code: codeAdminShutdown, message: "terminating connection: an operator ended this session", err: cause}
	}
	var lost *proxy.BackendLostError
	if errors.As(cause, &lost) {
		return &fatal{code: codeConnectionFailure, message: "terminating connection: " + lost.Error(), hint: "Connect again; if it keeps happening, give an operator the session id.", err: cause}
	}
	return &fatal{code: codeAdminShutdown, message: "terminating connection because portcullis is shutting down", hint: "Connect again in a moment.", err: cause}
}

func signInRequired(p auth.DeviceCodePrompt) *fatal {
	return &fatal{
		code: codeInvalidAuthorization,
		message: fmt.Sprintf("sign-in required: open %s and enter the code %s, then connect again (the code expires at %s)",
			p.VerificationURL, p.UserCode, clock(p.ExpiresAt)),
		hint: "portcullis finishes the sign-in in the background while you sign in; your next connection picks it up.",
	}
}

func refused(r *auth.Refusal) *fatal {
	f := &fatal{message: r.Message, err: r}
	var fallback string
	switch r.Reason {
	case auth.ReasonBadCredentials:
		f.code, fallback = codeInvalidPassword, "the session key or token is not valid"
	case auth.ReasonUnknownResource:
		f.code, fallback = codeInvalidCatalog, "no such resource"
	case auth.ReasonUnavailable:
		f.code, fallback = codeRejected, "portcullis cannot check who you are right now: a service it depends on is unreachable"
		f.hint = "Try again later."
	case auth.ReasonNotAllowed:
		f.code, fallback = codeInvalidAuthorization, "you are not in a group allowed to use this resource"
	case auth.ReasonIdentityMismatch:
		f.code, fallback = codeInvalidAuthorization, "the signed-in identity is not the user named in the connection"
	case auth.ReasonDeclined:
		f.code, fallback = codeInvalidAuthorization, "the sign-in was declined or the code expired"
	case auth.ReasonDisabled:
		f.code, fallback = codeInvalidAuthorization, "the account is disabled"
	case auth.ReasonTOTPLocked:
		f.code, fallback = codeInvalidAuthorization, "too many wrong TOTP codes: TOTP sign-in is locked for a while"
	default:
		f.code, fallback = codeInvalidAuthorization, "access refused"
	}
	if f.message == "" {
		f.message = fallback
	}
	return f
}

// backendFatal explains a backend failure by resource name only: the
// address behind it is none of the client's business.
func backendFatal(e *backendError, sessionID string) *fatal {
	var pgErr *pgconn.PgError
	if errors.As(e.err, &pgErr) {
		if strings.HasPrefix(pgErr.Code, "28") {
			// The backend refused the mapped login: an operator's
			// problem, and not the user's password.
			return &fatal{
				code:    codeRejected,
				message: fmt.Sprintf("resource %q refused portcullis's login as %q (session %s)", e.resource, e.user, sessionID),
				hint:    "Ask an operator to check the credential mapping of this resource.",
				err:     e,
			}
		}
		return &fatal{code: pgErr.Code, message: fmt.Sprintf("resource %q: %s", e.resource, pgErr.Message), hint: pgErr.Hint, err: e}
	}
	return &fatal{
		code:    codeConnectionFailure,
		message: fmt.Sprintf("resource %q cannot be reached right now (session %s)", e.resource, sessionID),
		hint:    "Try again later; if it persists, give an operator the session id.",
		err:     e,
	}
}

// clock formats a time for a person: UTC, to the minute.
func clock(t time.Time) string {
	return t.UTC().Format("15:04 UTC")
}

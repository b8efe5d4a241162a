package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/portcullisdb/portcullis/mfa"
)

// TOTPVerifier checks a person's TOTP code for resources that set
// require_totp; *mfa.TOTP implements it. Check returns nil for a good
// code, or one of the mfa package's typed errors (*mfa.LockedError,
// *mfa.EnrollmentRequired, mfa.ErrCodeRequired, *mfa.WrongCodeError,
// mfa.ErrCodeReused); any other error means its store failed.
type TOTPVerifier interface {
	Check(ctx context.Context, u mfa.User, code string, at time.Time) error
}

// TOTPRequired is the answer for a person whose identity is proven but
// who has not given a TOTP code the resource needs: either they gave none,
// or they have no authenticator set up yet (Enrollment). The protocol
// layer shows Message (and the enrolment, and the session key), ends the
// connection, and the person connects again with the code.
type TOTPRequired struct {
	Identity Identity
	Resource string
	// Message tells the person what to do next. It holds no secret.
	Message string
	// Enrollment, when set, is the person's new TOTP secret, to be shown
	// to them only, and never logged.
	Enrollment *TOTPEnrollment
	// SessionKey is set when this connection signed the person in afresh:
	// they reconnect with "<session key>:<code>". Show it like
	// Decision.SessionKey, never log it.
	SessionKey        string
	SessionKeyExpires time.Time
}

func (e *TOTPRequired) Error() string {
	if e.Enrollment != nil {
		return fmt.Sprintf("%s must set up TOTP to use %q", e.Identity.Name(), e.Resource)
	}
	return fmt.Sprintf("%s must give a TOTP code to use %q", e.Identity.Name(), e.Resource)
}

// TOTPEnrollment is what a person needs to add their TOTP secret to an
// authenticator app. Every field carries the secret.
type TOTPEnrollment struct {
	// URI is the otpauth://totp/ URI (the QR code's content), for apps
	// that take it pasted, and for MySQL clients and error-mode
	// PostgreSQL clients, which can show no QR code.
	URI string
	// Key is the secret in base32, in groups of four, to type in by hand.
	Key string
	// QR is the URI as a QR code in lines of Unicode half blocks (see
	// mfa.TerminalQR), for a PostgreSQL notice.
	QR []string
}

// String keeps the secret out of anything that prints an enrolment by
// accident.
func (e *TOTPEnrollment) String() string { return "TOTP enrolment (secret redacted)" }

// GoString redacts the secret in %#v.
func (e *TOTPEnrollment) GoString() string { return e.String() }

// TOTPFailureKind says why a TOTP code was refused.
type TOTPFailureKind string

// Kinds of TOTP failure.
const (
	TOTPWrongCode  TOTPFailureKind = "wrong_code"
	TOTPReusedCode TOTPFailureKind = "reused_code"
	TOTPLocked     TOTPFailureKind = "locked"
)

// TOTPFailure is the cause (Refusal.Err) of a refusal over a TOTP code,
// for the audit log: "mfa.totp.failed", and "mfa.totp.locked" when
// LockedNow.
type TOTPFailure struct {
	Kind TOTPFailureKind
	// Failures counts wrong codes in the current window, of MaxFailures.
	Failures    int
	MaxFailures int
	// LockedUntil is when a lockout ends (zero: not locked).
	LockedUntil time.Time
	// LockedNow: this wrong code locked the user out.
	LockedNow bool
}

func (f *TOTPFailure) Error() string {
	switch {
	case f.Kind == TOTPLocked:
		return fmt.Sprintf("totp: locked until %s", f.LockedUntil.UTC().Format(time.RFC3339))
	case f.LockedNow:
		return fmt.Sprintf("totp: %s (%d of %d): locked until %s", f.Kind, f.Failures, f.MaxFailures, f.LockedUntil.UTC().Format(time.RFC3339))
	case f.Kind == TOTPWrongCode:
		return fmt.Sprintf("totp: %s (%d of %d)", f.Kind, f.Failures, f.MaxFailures)
	}
	return "totp: " + string(f.Kind)
}

// totpCheck is what checkTOTP needs to know about the connection.
type totpCheck struct {
	res    *resource
	id     Identity
	method Method
	fresh  bool // the connection signed in afresh and gets a session key
	code   string
	at     time.Time
	// sameAddress: address grace would let the person back in with just
	// the code.
	sameAddress bool
}

// checkTOTP asks the verifier about the code of a proven, authorized
// identity. It returns nil for a good code, a *TOTPRequired when the
// person must come back with one, or a *Refusal.
func (a *Authorizer) checkTOTP(ctx context.Context, c totpCheck) error {
	who := c.id.Name()
	if c.id.Kind != KindUser || c.id.UPN == "" {
		return &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%q requires a TOTP code, which %s, not being a person, cannot give", c.res.cfg.Name, who),
		}
	}
	if a.totp == nil {
		// New refuses this; a configuration reloaded since might not.
		return &Refusal{
			Reason:  ReasonUnavailable,
			Message: fmt.Sprintf("%q requires a TOTP code, and this portcullis has no state store to check it", c.res.cfg.Name),
			Err:     errors.New("auth: no TOTP verifier"),
		}
	}
	err := a.totp.Check(ctx, mfa.NewUser(c.id.Provider, c.id.UPN), c.code, c.at)
	var (
		enrol  *mfa.EnrollmentRequired
		wrong  *mfa.WrongCodeError
		locked *mfa.LockedError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &locked):
		return &Refusal{
			Reason: ReasonTOTPLocked,
			Message: fmt.Sprintf("too many wrong TOTP codes for %s; try again after %s or ask an admin to reset it (portcullis totp reset %s)",
				who, clockTime(locked.Until), who),
			Err: &TOTPFailure{Kind: TOTPLocked, Failures: locked.Failures, LockedUntil: locked.Until},
		}
	case errors.As(err, &wrong):
		f := &TOTPFailure{Kind: TOTPWrongCode, Failures: wrong.Failures, MaxFailures: wrong.MaxFailures, LockedUntil: wrong.LockedUntil, LockedNow: !wrong.LockedUntil.IsZero()}
		msg := fmt.Sprintf("the TOTP code for %s is wrong", who)
		if f.LockedNow {
			msg += fmt.Sprintf(", and that was %d wrong codes: TOTP sign-in is locked until %s (an admin can reset it sooner)", wrong.Failures, clockTime(wrong.LockedUntil))
		} else if left := wrong.MaxFailures - wrong.Failures; left > 0 {
			msg += fmt.Sprintf("; after %d more wrong %s, TOTP sign-in is locked for %s", left, plural(left, "code", "codes"), spell(a.totpWindow()))
		}
		return &Refusal{Reason: ReasonBadCredentials, Message: msg, Err: f}
	case errors.Is(err, mfa.ErrCodeReused):
		return &Refusal{
			Reason:  ReasonBadCredentials,
			Message: fmt.Sprintf("the TOTP code for %s was already used; wait for the next code and connect again", who),
			Err:     &TOTPFailure{Kind: TOTPReusedCode},
		}
	case errors.As(err, &enrol):
		qr, qerr := mfa.TerminalQR(enrol.Enrollment.URI)
		if qerr != nil {
			return &Refusal{Reason: ReasonUnavailable, Message: fmt.Sprintf("the TOTP enrolment of %s could not be drawn", who), Err: qerr}
		}
		return &TOTPRequired{
			Identity:   c.id,
			Resource:   c.res.cfg.Name,
			Enrollment: &TOTPEnrollment{URI: enrol.Enrollment.URI, Key: enrol.Enrollment.Key, QR: qr},
			Message: fmt.Sprintf("%q requires a TOTP code, and %s has no authenticator set up for portcullis yet: scan the QR code (or enter the key) in an authenticator app, then connect again with %s",
				c.res.cfg.Name, who, a.reconnectWith(c)),
		}
	case errors.Is(err, mfa.ErrCodeRequired):
		return &TOTPRequired{
			Identity: c.id,
			Resource: c.res.cfg.Name,
			Message:  fmt.Sprintf("%q requires a TOTP code: connect again with %s", c.res.cfg.Name, a.reconnectWith(c)),
		}
	}
	// The store failed: never an allow.
	return &Refusal{
		Reason:  ReasonUnavailable,
		Message: fmt.Sprintf("the state store could not be reached to check the TOTP code of %s; try again later", who),
		Err:     err,
	}
}

// reconnectWith says what password brings the person back with a code.
func (a *Authorizer) reconnectWith(c totpCheck) string {
	const code = "the 6-digit code from your authenticator app"
	switch {
	case c.method == MethodAccessToken:
		return "your access token, a colon and " + code + " as the password (<token>:<code>)"
	case c.method == MethodAddressGrace:
		return code + " as the password"
	case c.fresh && c.sameAddress && a.grace > 0:
		return fmt.Sprintf("%s as the password (from another address, or after %s, your session key, a colon and the code: <session key>:<code>)", code, spell(a.grace))
	}
	return "your session key, a colon and " + code + " as the password (<session key>:<code>)"
}

func (a *Authorizer) totpWindow() time.Duration {
	if w, ok := a.totp.(interface{ FailureWindow() time.Duration }); ok {
		return w.FailureWindow()
	}
	return mfa.DefaultFailureWindow
}

// clockTime is a time of day for a message: lockouts last minutes.
func clockTime(t time.Time) string { return t.UTC().Format("15:04 UTC") }

// spell writes a duration for people: "15 minutes", "1 hour".
func spell(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		n := int(d / time.Hour)
		return fmt.Sprintf("%d %s", n, plural(n, "hour", "hours"))
	case d >= time.Minute && d%time.Minute == 0:
		n := int(d / time.Minute)
		return fmt.Sprintf("%d %s", n, plural(n, "minute", "minutes"))
	}
	return d.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

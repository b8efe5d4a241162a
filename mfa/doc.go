// Package mfa is portcullis's second factor: time-based one-time codes
// (TOTP, RFC 6238) for resources that set require_totp. It enrols people,
// checks their codes with replay protection and lockout, and draws the
// enrolment QR code for a terminal and as a PNG. It knows nothing about
// connections: the auth package asks it about a user, a code and the time
// the code arrived.
//
// # Codes
//
// Codes are what Microsoft Authenticator, Google Authenticator and every
// other authenticator app expect: 6 digits, a 30-second step, HMAC-SHA1,
// with a 20-byte secret read from crypto/rand (never from the otp
// library's own generator). A code is checked against the time it arrived
// (not the time the check runs, which may be minutes later after a
// device-code sign-in), allowing one step of clock skew either way.
//
// # Replay
//
// Each user's last accepted step is kept in the store, and a code is
// accepted only if its step is later than that one. The store moves the
// step forward with a single compare-and-set, so of two connections (or
// two portcullis replicas sharing a PostgreSQL store) presenting the same
// code at once exactly one wins. A code that was already used is refused
// with ErrCodeReused and does not count as a failure.
//
// # Lockout
//
// Wrong codes are counted per user in a window that starts with the first
// of them. The MaxFailures-th wrong code within FailureWindow locks the
// user's TOTP sign-ins for FailureWindow from that moment; while locked,
// codes are not even looked at (LockedError). A good code clears the
// count; an operator clears a lock with `portcullis totp reset USER`.
// The count is kept by the store with one atomic upsert, so replicas share
// it and concurrent wrong codes are all counted.
//
// # Enrolment
//
// A user with no secret who reaches a TOTP resource (after proving who
// they are) is given a pending secret, stored sealed and not yet usable,
// and an otpauth:// URI (issuer "portcullis", account the UPN) to scan.
// The secret becomes active with its first good code. Until then every
// attempt shows the same pending secret, so several connections opened at
// once, or an operator's `portcullis totp enroll USER --png FILE`, all
// agree on one.
//
// The URI and the QR code carry the secret: they are meant for the
// person's screen only and must never be logged. Enrollment's String
// method redacts them.
package mfa

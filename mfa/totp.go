package mfa

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxFailures   = 5
	DefaultFailureWindow = 15 * time.Minute
)

// User is whose TOTP secret it is: a person of one identity provider,
// named by their UPN in lower case. (Keying by UPN lets an operator name
// the user in `portcullis totp` commands before they ever sign in.)
type User struct {
	Provider string
	Name     string
}

// NewUser returns the User for a UPN of a provider.
func NewUser(provider, upn string) User {
	return User{Provider: provider, Name: strings.ToLower(strings.TrimSpace(upn))}
}

func (u User) String() string { return u.Name }

// Secret is a user's TOTP secret as the store keeps it, opened.
type Secret struct {
	User User
	// Key is the shared secret itself.
	Key []byte
	// EnrollmentID is new at every enrolment, so that a step accepted for
	// one secret is never written over a secret enrolled since.
	EnrollmentID string
	// Active is false while the enrolment awaits its first good code.
	Active bool
	// LastStep is the last accepted step (0: none yet).
	LastStep  int64
	CreatedAt time.Time
	// ActivatedAt and LastUsedAt are zero until the first good code.
	ActivatedAt time.Time
	LastUsedAt  time.Time
}

// Failures is a user's count of wrong codes.
type Failures struct {
	// Count is the number of wrong codes since WindowStart.
	Count       int
	WindowStart time.Time
	// LockedUntil is when a lockout ends; zero when there is none.
	LockedUntil time.Time
}

// Locked reports whether the user is locked out at now.
func (f Failures) Locked(now time.Time) bool { return now.Before(f.LockedUntil) }

// Store keeps TOTP secrets, last accepted steps and failure counts. The
// state store (internal/store) implements it for SQLite and PostgreSQL;
// the writes that guard security are atomic there.
type Store interface {
	// TOTPSecret returns the user's secret; ok is false when there is
	// none.
	TOTPSecret(ctx context.Context, u User) (s Secret, ok bool, err error)
	// CreateTOTPSecret stores s (pending, LastStep 0) unless the user
	// already has a secret, and returns the secret the store holds
	// afterwards: s, or the one that was there first.
	CreateTOTPSecret(ctx context.Context, s Secret) (Secret, error)
	// AcceptTOTPStep records step as the user's last accepted one and
	// activates the secret, only if the secret is still enrolmentID and
	// its last step is before step: a compare-and-set. It reports whether
	// it did.
	AcceptTOTPStep(ctx context.Context, u User, enrollmentID string, step int64, at time.Time) (bool, error)
	// DeleteTOTPSecret removes the user's secret; it reports whether
	// there was one.
	DeleteTOTPSecret(ctx context.Context, u User) (bool, error)
	// TOTPFailures returns the user's failure count (zero when none).
	TOTPFailures(ctx context.Context, u User) (Failures, error)
	// RecordTOTPFailure counts one wrong code at now, atomically: a new
	// window starts when the last one began at or before now-window or a
	// lockout has ended; the max-th failure in a window locks the user
	// until now+window. It returns the count afterwards.
	RecordTOTPFailure(ctx context.Context, u User, now time.Time, max int, window time.Duration) (Failures, error)
	// ClearTOTPFailures forgets the user's wrong codes and any lockout.
	ClearTOTPFailures(ctx context.Context, u User) error
}

// Options tune a TOTP. Zero values pick the defaults.
type Options struct {
	// MaxFailures wrong codes within FailureWindow lock a user out for
	// FailureWindow. Default DefaultMaxFailures.
	MaxFailures int
	// FailureWindow defaults to DefaultFailureWindow.
	FailureWindow time.Duration
	// Issuer names portcullis in authenticator apps. Default "portcullis".
	Issuer string
	// Now is the clock for lockouts and enrolment times (codes are
	// checked against the time passed to Check). Default time.Now.
	Now func() time.Time
}

// TOTP checks codes and enrols users. It is safe for concurrent use.
type TOTP struct {
	store       Store
	maxFailures int
	window      time.Duration
	issuer      string
	now         func() time.Time
}

// New returns a TOTP keeping its state in store.
func New(store Store, opts Options) *TOTP {
	t := &TOTP{store: store, maxFailures: opts.MaxFailures, window: opts.FailureWindow, issuer: opts.Issuer, now: opts.Now}
	if t.maxFailures <= 0 {
		t.maxFailures = DefaultMaxFailures
	}
	if t.window <= 0 {
		t.window = DefaultFailureWindow
	}
	if t.issuer == "" {
		t.issuer = "portcullis"
	}
	if t.now == nil {
		t.now = time.Now
	}
	return t
}

// MaxFailures is the number of wrong codes that locks a user out.
func (t *TOTP) MaxFailures() int { return t.maxFailures }

// FailureWindow is how long wrong codes are counted, and how long a
// lockout lasts.
func (t *TOTP) FailureWindow() time.Duration { return t.window }

// Errors of Check that callers branch on, besides the typed ones.
var (
	// ErrCodeRequired: the user has an active secret and gave no code.
	ErrCodeRequired = errors.New("a TOTP code is required")
	// ErrCodeReused: the code's step was already accepted (replay, or the
	// same code given twice). It does not count as a failure.
	ErrCodeReused = errors.New("the TOTP code was already used")
	// ErrAlreadyEnrolled: Enroll was asked for a user whose secret is
	// active; reset it first.
	ErrAlreadyEnrolled = errors.New("the user already has an active TOTP secret")
)

// EnrollmentRequired is Check's answer for a user without an active
// secret: show them the enrolment, then they come back with a code.
type EnrollmentRequired struct {
	Enrollment Enrollment
}

func (e *EnrollmentRequired) Error() string {
	return fmt.Sprintf("TOTP enrolment required for %s", e.Enrollment.User)
}

// WrongCodeError is a code that matched none of the allowed steps. It
// counted as a failure; LockedUntil is set when it was the one that locked
// the user out.
type WrongCodeError struct {
	User        User
	Failures    int
	MaxFailures int
	LockedUntil time.Time
}

func (e *WrongCodeError) Error() string {
	if !e.LockedUntil.IsZero() {
		return fmt.Sprintf("wrong TOTP code for %s (%d of %d): locked until %s", e.User, e.Failures, e.MaxFailures, e.LockedUntil.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("wrong TOTP code for %s (%d of %d)", e.User, e.Failures, e.MaxFailures)
}

// LockedError: too many wrong codes; no code is checked until Until.
type LockedError struct {
	User     User
	Until    time.Time
	Failures int
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("TOTP sign-in of %s is locked until %s after %d wrong codes", e.User, e.Until.UTC().Format(time.RFC3339), e.Failures)
}

// Check verifies code for u as of at, the time the code arrived. It
// returns nil when the code is good (and records its step, so it is never
// good again), or an error: *LockedError, *EnrollmentRequired,
// ErrCodeRequired, *WrongCodeError, ErrCodeReused, or any other error when
// the store failed (the caller must then refuse).
//
// A user with no secret gets a pending one and *EnrollmentRequired,
// whatever code they gave. An empty code asks for nothing to be checked.
func (t *TOTP) Check(ctx context.Context, u User, code string, at time.Time) error {
	now := t.now()
	f, err := t.store.TOTPFailures(ctx, u)
	if err != nil {
		return fmt.Errorf("mfa: read the failure count of %s: %w", u, err)
	}
	if f.Locked(now) {
		return &LockedError{User: u, Until: f.LockedUntil, Failures: f.Count}
	}
	sec, ok, err := t.store.TOTPSecret(ctx, u)
	if err != nil {
		return fmt.Errorf("mfa: read the TOTP secret of %s: %w", u, err)
	}
	if !ok {
		if sec, err = t.createPending(ctx, u, now); err != nil {
			return err
		}
		if !sec.Active {
			return t.enrollmentRequired(sec)
		}
		// Enrolled and activated elsewhere a moment ago: check the code.
	}
	if code == "" {
		if !sec.Active {
			return t.enrollmentRequired(sec)
		}
		return ErrCodeRequired
	}
	step, reused, ok := matchStep(sec.Key, code, at, sec.LastStep)
	switch {
	case reused:
		return ErrCodeReused
	case !ok:
		f, err := t.store.RecordTOTPFailure(ctx, u, now, t.maxFailures, t.window)
		if err != nil {
			return fmt.Errorf("mfa: count a wrong code of %s: %w", u, err)
		}
		return &WrongCodeError{User: u, Failures: f.Count, MaxFailures: t.maxFailures, LockedUntil: f.LockedUntil}
	}
	won, err := t.store.AcceptTOTPStep(ctx, u, sec.EnrollmentID, step, now)
	if err != nil {
		return fmt.Errorf("mfa: record the accepted code of %s: %w", u, err)
	}
	if !won {
		// Another connection accepted this step (or a later one) first,
		// or the secret was reset meanwhile.
		return ErrCodeReused
	}
	if f.Count > 0 {
		if err := t.store.ClearTOTPFailures(ctx, u); err != nil {
			return fmt.Errorf("mfa: clear the failure count of %s: %w", u, err)
		}
	}
	return nil
}

func (t *TOTP) enrollmentRequired(sec Secret) error {
	e, err := t.enrollment(sec)
	if err != nil {
		return err
	}
	return &EnrollmentRequired{Enrollment: e}
}

// createPending gives u a pending secret unless one appeared meanwhile,
// and returns what the store holds.
func (t *TOTP) createPending(ctx context.Context, u User, now time.Time) (Secret, error) {
	key, err := newKey()
	if err != nil {
		return Secret{}, fmt.Errorf("mfa: make a TOTP secret for %s: %w", u, err)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return Secret{}, fmt.Errorf("mfa: make an enrolment id for %s: %w", u, err)
	}
	sec, err := t.store.CreateTOTPSecret(ctx, Secret{User: u, Key: key, EnrollmentID: hex.EncodeToString(id), CreatedAt: now})
	if err != nil {
		return Secret{}, fmt.Errorf("mfa: store a TOTP secret for %s: %w", u, err)
	}
	return sec, nil
}

// Status is what an operator sees of a user's TOTP state. It holds no
// secret.
type Status struct {
	User User
	// Enrolled: the user has a secret, active or pending.
	Enrolled    bool
	Active      bool
	CreatedAt   time.Time
	ActivatedAt time.Time
	LastUsedAt  time.Time
	Failures    Failures
}

// Status reports u's TOTP state.
func (t *TOTP) Status(ctx context.Context, u User) (Status, error) {
	st := Status{User: u}
	sec, ok, err := t.store.TOTPSecret(ctx, u)
	if err != nil {
		return st, fmt.Errorf("mfa: read the TOTP secret of %s: %w", u, err)
	}
	if ok {
		st.Enrolled, st.Active = true, sec.Active
		st.CreatedAt, st.ActivatedAt, st.LastUsedAt = sec.CreatedAt, sec.ActivatedAt, sec.LastUsedAt
	}
	if st.Failures, err = t.store.TOTPFailures(ctx, u); err != nil {
		return st, fmt.Errorf("mfa: read the failure count of %s: %w", u, err)
	}
	return st, nil
}

// Reset forgets u's secret, failures and lockout: their next sign-in to a
// TOTP resource enrols them again. It reports whether there was a secret.
func (t *TOTP) Reset(ctx context.Context, u User) (bool, error) {
	had, err := t.store.DeleteTOTPSecret(ctx, u)
	if err != nil {
		return false, fmt.Errorf("mfa: delete the TOTP secret of %s: %w", u, err)
	}
	if err := t.store.ClearTOTPFailures(ctx, u); err != nil {
		return had, fmt.Errorf("mfa: clear the failure count of %s: %w", u, err)
	}
	return had, nil
}

// Enroll returns u's pending enrolment, creating it if there is none, so
// an operator can hand it over out of band. It returns ErrAlreadyEnrolled
// when u's secret is active.
func (t *TOTP) Enroll(ctx context.Context, u User) (Enrollment, error) {
	sec, ok, err := t.store.TOTPSecret(ctx, u)
	if err != nil {
		return Enrollment{}, fmt.Errorf("mfa: read the TOTP secret of %s: %w", u, err)
	}
	if !ok {
		if sec, err = t.createPending(ctx, u, t.now()); err != nil {
			return Enrollment{}, err
		}
	}
	if sec.Active {
		return Enrollment{}, fmt.Errorf("mfa: %s: %w", u, ErrAlreadyEnrolled)
	}
	return t.enrollment(sec)
}

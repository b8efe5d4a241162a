package mfa

import (
	"context"
	"fmt"
)

// The lockout is shared with credentials other than TOTP codes: a service
// principal's wrong client secrets count toward it too, under a User
// named by the principal's application id, so that guessing a program's
// secret is throttled like guessing a person's code. Operators see and
// clear it with the same `portcullis totp status|reset`.

// Locked returns a *LockedError when u is locked out now, nil when not,
// or another error when the store failed (the caller must then refuse).
func (t *TOTP) Locked(ctx context.Context, u User) error {
	f, err := t.store.TOTPFailures(ctx, u)
	if err != nil {
		return fmt.Errorf("mfa: read the failure count of %s: %w", u, err)
	}
	if f.Locked(t.now()) {
		return &LockedError{User: u, Until: f.LockedUntil, Failures: f.Count}
	}
	return nil
}

// RecordFailure counts one wrong credential of u (a wrong client secret,
// say) toward the lockout, exactly as a wrong code counts, and returns
// what the wrong code would have: a *WrongCodeError whose LockedUntil is
// set when this failure locked u out. Any other error means the store
// failed.
func (t *TOTP) RecordFailure(ctx context.Context, u User) error {
	f, err := t.store.RecordTOTPFailure(ctx, u, t.now(), t.maxFailures, t.window)
	if err != nil {
		return fmt.Errorf("mfa: count a failure of %s: %w", u, err)
	}
	return &WrongCodeError{User: u, Failures: f.Count, MaxFailures: t.maxFailures, LockedUntil: f.LockedUntil}
}

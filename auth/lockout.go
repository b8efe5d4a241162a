package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/portcullisdb/portcullis/mfa"
)

// Lockout counts wrong service-principal secrets toward the same lockout
// as wrong TOTP codes (mfa.max_failures within mfa.failure_window), keyed
// by the principal's application id. *mfa.TOTP implements it; Deps.TOTP
// is used when it does and Deps.Lockout is not given.
type Lockout interface {
	// Locked returns a *mfa.LockedError when u is locked out, nil when
	// not, or another error when the store failed.
	Locked(ctx context.Context, u mfa.User) error
	// RecordFailure counts one wrong credential of u and returns a
	// *mfa.WrongCodeError describing the count, or another error when the
	// store failed.
	RecordFailure(ctx context.Context, u mfa.User) error
}

// secretLockoutUser is whose failure count a service principal's wrong
// secrets go to: the application id, which no UPN can be.
func secretLockoutUser(p *provider, appID string) mfa.User { return mfa.NewUser(p.name, appID) }

// checkSecretLockout refuses, before Entra is asked, a secret presented
// for a service principal that too many wrong secrets locked out. A
// secret already proven (and remembered) is not refused: whoever guesses
// wrongly cannot lock a running program out of its pool.
func (a *Authorizer) checkSecretLockout(ctx context.Context, p *provider, appID, login string) error {
	if a.lockout == nil {
		return nil
	}
	err := a.lockout.Locked(ctx, secretLockoutUser(p, appID))
	var locked *mfa.LockedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &locked):
		return &Refusal{
			Reason: ReasonLocked,
			Message: fmt.Sprintf("too many wrong secrets for service principal %s; try again after %s or ask an admin to reset it (portcullis totp reset %s)",
				login, clockTime(locked.Until), appID),
			Err: fmt.Errorf("locked until %s after %d wrong secrets", locked.Until.UTC().Format("2006-01-02T15:04:05Z"), locked.Failures),
		}
	}
	return storeRefusal(login, err)
}

// secretRefused turns a failed client-credentials grant into a refusal,
// counting a wrong secret toward the principal's lockout. Only Entra's
// invalid_client answer (a known application, a wrong secret) counts:
// an unknown application id has no lockout to fill, and an Entra that
// cannot be reached says nothing about the secret.
func (a *Authorizer) secretRefused(ctx context.Context, p *provider, appID, login string, err error) error {
	var r *Refusal
	if errors.As(err, &r) {
		return r
	}
	refusal := entraRefusal(err, ReasonBadCredentials, fmt.Sprintf("the secret for service principal %s was not accepted", login))
	code, status := oauthErrorCode(err)
	if a.lockout == nil || status != 401 || code != "invalid_client" {
		return refusal
	}
	rerr := a.lockout.RecordFailure(ctx, secretLockoutUser(p, appID))
	var wrong *mfa.WrongCodeError
	if !errors.As(rerr, &wrong) {
		// The secret is wrong either way; the store's failure is for the
		// log.
		r := refusal.(*Refusal)
		r.Err = errors.Join(r.Err, fmt.Errorf("count the wrong secret: %w", rerr))
		return r
	}
	r = refusal.(*Refusal)
	if !wrong.LockedUntil.IsZero() {
		r.Message += fmt.Sprintf(", and that was %d wrong secrets: service principal sign-in is locked until %s (an admin can reset it sooner)",
			wrong.Failures, clockTime(wrong.LockedUntil))
	}
	r.Err = fmt.Errorf("wrong secret %d of %d: %w", wrong.Failures, wrong.MaxFailures, r.Err)
	return r
}

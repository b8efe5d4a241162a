package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// PendingSignIn is an error-mode device-code sign-in as replicas share
// it: the prompt while it runs, then its outcome. It holds no secret: the
// device code itself stays in the memory of the replica polling Entra.
type PendingSignIn struct {
	Prompt DeviceCodePrompt
	// Done: the sign-in ended, with Identity (signed in) or with Reason
	// and Message (refused).
	Done     bool
	Identity Identity
	Reason   RefusalReason
	Message  string
	// ExpiresAt is when the record stops meaning anything: the code's
	// expiry while pending, the end of the wait for a reconnect once done.
	ExpiresAt time.Time
}

// PendingSignInStore shares error-mode sign-ins between replicas, so that
// a reconnect reaching another replica than the one polling Entra is
// shown the same code rather than a new one, and collects the outcome.
// Deps.PendingSignIns, or Deps.Sessions when it implements it, is used;
// the state store does, and its DeleteExpiredSignIns removes expired
// pending sign-ins too.
type PendingSignInStore interface {
	// PutPendingSignIn stores p under h, replacing any record there.
	PutPendingSignIn(ctx context.Context, h KeyHash, p PendingSignIn) error
	// GetPendingSignIn returns the record under h; ok is false when there
	// is none. Expired records may still be returned.
	GetPendingSignIn(ctx context.Context, h KeyHash) (p PendingSignIn, ok bool, err error)
	// TakePendingSignIn removes the record under h if it is Done and
	// returns it: of any number of callers, one gets it.
	TakePendingSignIn(ctx context.Context, h KeyHash) (p PendingSignIn, ok bool, err error)
}

// pendingHash is the store key of the shared record of a flow. Its input
// cannot collide with a session key's or an address-grace record's.
func pendingHash(k flowKey) KeyHash {
	return sha256.Sum256([]byte(fmt.Sprintf("pending-sign-in\x00%s\x00%s\x00%s", k.provider, strings.ToLower(k.login), k.addr.Unmap())))
}

// errCollectedElsewhere: a finished flow's shared record was collected by
// a connection to another replica, so this one signs in afresh.
var errCollectedElsewhere = errors.New("the sign-in was collected on another replica")

// sharing reports whether the flows of p are shared. In delegated Graph
// mode the person's Graph token exists only in the replica that signed
// them in, so another replica could not use the outcome.
func (a *Authorizer) sharing(p *provider) bool { return a.pending != nil && !p.delegated }

// sharedFlow serves an error-mode connection for which this replica has
// no flow from the record another replica shares: its prompt while it is
// pending, its outcome once done. handled is false when there is nothing
// to serve (start a flow here).
func (a *Authorizer) sharedFlow(ctx context.Context, p *provider, key flowKey, login string) (res signInResult, handled bool, err error) {
	a.flowMu.Lock()
	_, local := a.flows[key]
	a.flowMu.Unlock()
	if local || !a.sharing(p) {
		return signInResult{}, false, nil
	}
	h := pendingHash(key)
	rec, ok, err := a.pending.GetPendingSignIn(ctx, h)
	if err != nil {
		return signInResult{}, true, storeRefusal(login, err)
	}
	if !ok || !a.now().Before(rec.ExpiresAt) {
		return signInResult{}, false, nil
	}
	if !rec.Done {
		return signInResult{}, true, &SignInPending{Prompt: rec.Prompt}
	}
	rec, ok, err = a.pending.TakePendingSignIn(ctx, h)
	switch {
	case err != nil:
		return signInResult{}, true, storeRefusal(login, err)
	case !ok:
		return signInResult{}, false, nil // collected by someone else
	case rec.Reason != "":
		return signInResult{}, true, &Refusal{Reason: rec.Reason, Message: rec.Message, Err: errors.New("sign-in completed on another replica")}
	}
	return signInResult{identity: rec.Identity}, true, nil
}

// publish shares a detached flow's state, if flows are shared; it
// reports whether the record was written. Failures are logged: the flow
// still serves connections to this replica.
func (a *Authorizer) publish(ctx context.Context, p *provider, f *flow, rec PendingSignIn) bool {
	a.flowMu.Lock()
	detached := f.detached
	a.flowMu.Unlock()
	if !detached || !a.sharing(p) {
		return false
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err := a.pending.PutPendingSignIn(sctx, pendingHash(f.key), rec); err != nil {
		a.log.Warn("could not share a sign-in with other replicas", logging.Event("auth.sessions.store_failed"),
			zap.String("provider", p.name), zap.String("user", f.key.login), zap.Error(err))
		return false
	}
	return true
}

// outcome is the shared form of a finished flow.
func (a *Authorizer) outcome(f *flow, res signInResult, err error) PendingSignIn {
	rec := PendingSignIn{Prompt: f.prompt, Done: true, ExpiresAt: a.now().Add(finishedFlowRetention)}
	var r *Refusal
	switch {
	case err == nil:
		rec.Identity = res.identity
	case errors.As(err, &r):
		rec.Reason, rec.Message = r.Reason, r.Message
	default:
		rec.Reason, rec.Message = ReasonUnavailable, fmt.Sprintf("the sign-in of %s could not be completed", f.key.login)
	}
	return rec
}

// collectShared takes this flow's shared outcome, if it was shared, so
// that no connection to another replica collects it too.
func (a *Authorizer) collectShared(ctx context.Context, f *flow) error {
	if !f.shared {
		return nil
	}
	_, ok, err := a.pending.TakePendingSignIn(ctx, pendingHash(f.key))
	switch {
	case err != nil:
		return storeRefusal(f.key.login, err)
	case !ok:
		return errCollectedElsewhere
	}
	return nil
}

package metrics

import (
	"context"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// SessionStore wraps s so that each of its operations is timed into
// store_operation_duration_seconds and its failures counted.
func (r *Registry) SessionStore(s auth.SessionStore) auth.SessionStore {
	return &timedSessionStore{r: r, next: s}
}

type timedSessionStore struct {
	r    *Registry
	next auth.SessionStore
}

func (t *timedSessionStore) PutSignIn(ctx context.Context, h auth.KeyHash, rec auth.SignInRecord) error {
	start := time.Now()
	err := t.next.PutSignIn(ctx, h, rec)
	t.r.ObserveStore("put_sign_in", time.Since(start), err)
	return err
}

func (t *timedSessionStore) GetSignIn(ctx context.Context, h auth.KeyHash) (auth.SignInRecord, bool, error) {
	start := time.Now()
	rec, ok, err := t.next.GetSignIn(ctx, h)
	t.r.ObserveStore("get_sign_in", time.Since(start), err)
	return rec, ok, err
}

func (t *timedSessionStore) DeleteSignIn(ctx context.Context, h auth.KeyHash) error {
	start := time.Now()
	err := t.next.DeleteSignIn(ctx, h)
	t.r.ObserveStore("delete_sign_in", time.Since(start), err)
	return err
}

func (t *timedSessionStore) DeleteExpiredSignIns(ctx context.Context, now time.Time) (int, error) {
	start := time.Now()
	n, err := t.next.DeleteExpiredSignIns(ctx, now)
	t.r.ObserveStore("delete_expired_sign_ins", time.Since(start), err)
	return n, err
}

func (t *timedSessionStore) SessionKeysOf(ctx context.Context, user string, now time.Time) ([]auth.StoredSessionKey, error) {
	start := time.Now()
	keys, err := t.next.SessionKeysOf(ctx, user, now)
	t.r.ObserveStore("list_session_keys", time.Since(start), err)
	return keys, err
}

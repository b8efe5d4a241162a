package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// CancelKey is what portcullis gives a client to cancel its running
// query with, in place of the backend's own (for PostgreSQL, the process
// id and secret key of BackendKeyData).
type CancelKey struct {
	ProcessID uint32
	Secret    uint32
}

// CancelFunc asks a backend to cancel what a session is running, over a
// connection of its own.
type CancelFunc func(ctx context.Context) error

type cancelEntry struct {
	secret  uint32
	session string
	cancel  CancelFunc
}

// cancelKeys maps the keys portcullis handed out to the backends they
// cancel. It is shared by all listeners: a cancel request arrives on a
// fresh connection, possibly on another listener.
type cancelKeys struct {
	mu        sync.Mutex
	byPID     map[uint32]cancelEntry
	bySession map[string][]uint32
}

func newCancelKeys() *cancelKeys {
	return &cancelKeys{byPID: make(map[uint32]cancelEntry), bySession: make(map[string][]uint32)}
}

// issue registers cancel under a new key. The key's process id is
// backendPID when that is a positive 31-bit number no other open session
// holds, else a random one.
func (k *cancelKeys) issue(session string, cancel CancelFunc, backendPID uint32) (CancelKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, taken := k.byPID[backendPID]; !taken && backendPID != 0 && backendPID <= 0x7fffffff {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return CancelKey{}, fmt.Errorf("cancel key for session %s: %w", session, err)
		}
		return k.add(session, cancel, CancelKey{ProcessID: backendPID, Secret: binary.BigEndian.Uint32(b[:])}), nil
	}
	for range 32 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return CancelKey{}, fmt.Errorf("cancel key for session %s: %w", session, err)
		}
		// A positive 31-bit process id, since clients may hold it in a
		// signed integer; zero is not a process id.
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if pid == 0 {
			continue
		}
		if _, taken := k.byPID[pid]; taken {
			continue
		}
		return k.add(session, cancel, CancelKey{ProcessID: pid, Secret: binary.BigEndian.Uint32(b[4:])}), nil
	}
	return CancelKey{}, fmt.Errorf("cancel key for session %s: no free process id", session)
}

func (k *cancelKeys) add(session string, cancel CancelFunc, key CancelKey) CancelKey {
	k.byPID[key.ProcessID] = cancelEntry{secret: key.Secret, session: session, cancel: cancel}
	k.bySession[session] = append(k.bySession[session], key.ProcessID)
	return key
}

// lookup finds the entry for key; the secret is compared in constant time
// so a caller cannot guess it byte by byte.
func (k *cancelKeys) lookup(key CancelKey) (cancelEntry, bool) {
	k.mu.Lock()
	e, ok := k.byPID[key.ProcessID]
	k.mu.Unlock()
	var want, got [4]byte
	binary.BigEndian.PutUint32(want[:], e.secret)
	binary.BigEndian.PutUint32(got[:], key.Secret)
	if subtle.ConstantTimeCompare(want[:], got[:]) != 1 || !ok {
		return cancelEntry{}, false
	}
	return e, true
}

func (k *cancelKeys) ofSession(session string) []CancelFunc {
	k.mu.Lock()
	defer k.mu.Unlock()
	var fns []CancelFunc
	for _, pid := range k.bySession[session] {
		fns = append(fns, k.byPID[pid].cancel)
	}
	return fns
}

func (k *cancelKeys) releaseSession(session string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, pid := range k.bySession[session] {
		delete(k.byPID, pid)
	}
	delete(k.bySession, session)
}

// IssueCancelKey registers how to cancel this connection's backend and
// returns the key to give the client. The key is valid until the
// connection closes. Its secret is portcullis's own; its process id is
// backendPID (the backend's, or 0 for none) unless another session holds
// that one. A client that compares the process id with what the server
// reports (pg_backend_pid(), the sender of a notification) then finds its
// own.
func (c *Conn) IssueCancelKey(cancel CancelFunc, backendPID uint32) (CancelKey, error) {
	if cancel == nil {
		return CancelKey{}, errors.New("proxy: IssueCancelKey with no cancel function")
	}
	return c.srv.cancels.issue(c.id, cancel, backendPID)
}

// ForwardCancel handles a cancel request that arrived on this connection:
// if key was issued to an open session, that session's backend is asked
// to cancel. An unknown key is dropped silently, as PostgreSQL drops it;
// the result only says whether the key was known.
func (c *Conn) ForwardCancel(ctx context.Context, key CancelKey) bool {
	e, ok := c.srv.cancels.lookup(key)
	if !ok {
		c.srv.metrics.Failure(c.protocol, "cancel_unknown_key")
		c.log.Debug("cancel request for an unknown key dropped", logging.Event("cancel.dropped"))
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, c.srv.limits.HandshakeTimeout)
	defer cancel()
	start := time.Now()
	log := c.log.With(zap.String("target_session_id", e.session))
	if err := e.cancel(ctx); err != nil {
		c.srv.metrics.Failure(c.protocol, "cancel_failed")
		log.Warn("cancel request not delivered", logging.Event("cancel.failed"), zap.Error(err))
		return true
	}
	log.Info("cancel request forwarded", logging.Event("cancel.forwarded"), zap.Duration("duration", time.Since(start)))
	return true
}

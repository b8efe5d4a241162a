package proxy

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
)

// ErrRevoked is the cause of a session portcullis ended because the
// identity behind it may no longer use its resource (continuous
// authorization). The cause itself is a *RevokedError, which matches it
// with errors.Is and carries the reason.
var ErrRevoked = errors.New("access revoked")

// RevokedError is why a session was revoked: Reason is a short word for
// logs and metrics (an auth refusal reason, such as "not_allowed" or
// "key_revoked"), Message a sentence for the person at the client. It
// holds no secret.
type RevokedError struct {
	Reason  string
	Message string
}

func (e *RevokedError) Error() string { return "access revoked: " + e.Message }

// Is makes a *RevokedError match ErrRevoked.
func (e *RevokedError) Is(target error) bool { return target == ErrRevoked }

// Rechecker decides again whether the identity of an open session may
// keep using its resource; *auth.Authorizer implements it. It returns nil
// or an *auth.Refusal; a refusal with auth.ReasonUnavailable means the
// answer could not be had.
type Rechecker interface {
	Recheck(ctx context.Context, d *auth.Decision) error
}

// RecheckOptions tune RecheckSessions. Zero values pick the defaults of
// the authz configuration keys.
type RecheckOptions struct {
	// Every is the period between rechecks (authz.recheck).
	Every time.Duration
	// MaxFailures is how many rechecks in a row may fail to get an answer
	// (the directory unreachable) before a session is ended anyway
	// (authz.recheck_failures).
	MaxFailures int
	// Concurrency bounds the rechecks running at once; default 8.
	Concurrency int
}

// endRevoked is session.ended's reason for a revoked session.
const endRevoked = "revoked"

// recheckTimeout bounds one identity's recheck.
const recheckTimeout = 30 * time.Second

// RecheckSessions re-checks every open session that a decision let in,
// every opts.Every, until ctx ends: a session whose identity left the
// allowed groups, was disabled or deleted, whose access key was revoked,
// or whose resource was removed, is ended between two messages with a
// protocol-native error ("access revoked: ..."), logged as
// session.revoked and counted by Metrics.SessionRevoked.
//
// Sessions of one identity on one resource are checked once per round.
// When the answer cannot be had (Graph or the store unreachable), the
// sessions keep running until opts.MaxFailures rounds in a row have
// failed so: a brief outage of Microsoft Graph does not end every session
// at once, and a long one does not leave them unchecked for ever. (New
// connections fail closed at once.)
func (s *Server) RecheckSessions(ctx context.Context, r Rechecker, opts RecheckOptions) {
	if opts.Every <= 0 {
		opts.Every = config.DefaultRecheck
	}
	if opts.MaxFailures <= 0 {
		opts.MaxFailures = config.DefaultRecheckFailures
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	failures := map[string]int{} // session id → rounds in a row without an answer
	t := time.NewTicker(opts.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.base.Done():
			return
		case <-t.C:
		}
		s.recheckRound(ctx, r, opts, failures)
	}
}

// recheckGroup is the sessions sharing one identity, resource and
// credential: one recheck answers for all of them.
type recheckGroup struct {
	decision *auth.Decision
	conns    []*Conn
}

// recheckKey is what makes two sessions' rechecks the same question.
type recheckKey struct {
	provider, oid, resource, accessKey, backendUser string
	entra                                           bool
}

// recheckRound runs one round over the open sessions.
func (s *Server) recheckRound(ctx context.Context, r Rechecker, opts RecheckOptions, failures map[string]int) {
	groups := map[recheckKey]*recheckGroup{}
	open := map[string]bool{}
	s.mu.Lock()
	for id, c := range s.conns {
		c.mu.Lock()
		d := c.decision
		c.mu.Unlock()
		if d == nil || c.ctx.Err() != nil {
			// Not let in yet, or already ending.
			continue
		}
		open[id] = true
		k := recheckKey{
			provider: d.Identity.Provider, oid: d.Identity.ObjectID, resource: d.Resource,
			accessKey: d.AccessKeyID, backendUser: d.Backend.User, entra: d.Backend.AccessToken != "",
		}
		g := groups[k]
		if g == nil {
			g = &recheckGroup{decision: d}
			groups[k] = g
		}
		g.conns = append(g.conns, c)
	}
	s.mu.Unlock()
	for id := range failures {
		if !open[id] {
			delete(failures, id)
		}
	}

	type outcome struct {
		g   *recheckGroup
		err error
	}
	results := make(chan outcome, len(groups))
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, recheckTimeout)
			defer cancel()
			results <- outcome{g: g, err: r.Recheck(rctx, g.decision)}
		}()
	}
	wg.Wait()
	close(results)
	if ctx.Err() != nil {
		return
	}
	for o := range results {
		var refusal *auth.Refusal
		switch {
		case o.err == nil:
			for _, c := range o.g.conns {
				delete(failures, c.id)
			}
		case errors.As(o.err, &refusal) && refusal.Reason != auth.ReasonUnavailable:
			for _, c := range o.g.conns {
				s.revoke(c, &RevokedError{Reason: string(refusal.Reason), Message: refusal.Message}, refusal.Err)
				delete(failures, c.id)
			}
		default:
			// No answer: the session runs on, for a while.
			for _, c := range o.g.conns {
				failures[c.id]++
				n := failures[c.id]
				log := c.logger()
				if n < opts.MaxFailures {
					log.Warn("session could not be rechecked", logging.Event("session.recheck_failed"),
						zap.Int("failures", n), zap.Int("max_failures", opts.MaxFailures), zap.Error(o.err))
					continue
				}
				msg := "portcullis could not check your access with Microsoft Entra ID for too long"
				if refusal != nil {
					msg = refusal.Message
				}
				s.revoke(c, &RevokedError{Reason: string(auth.ReasonUnavailable), Message: msg}, o.err)
				delete(failures, c.id)
			}
		}
	}
}

// Revoke ends one connection, by session id, because its identity may no
// longer use its resource: the client is told "access revoked:" and the
// message (which must hold no secret), the session.revoked event is
// logged and Metrics.SessionRevoked counts reason. It reports whether the
// connection was found.
func (s *Server) Revoke(id, reason, message string) bool {
	s.mu.Lock()
	c, ok := s.conns[id]
	s.mu.Unlock()
	if ok {
		s.revoke(c, &RevokedError{Reason: reason, Message: message}, nil)
	}
	return ok
}

func (s *Server) revoke(c *Conn, cause *RevokedError, err error) {
	fields := []zap.Field{logging.Event("session.revoked"), zap.String("reason", cause.Reason), zap.String("detail", cause.Message)}
	if err != nil {
		fields = append(fields, zap.NamedError("cause", err))
	}
	c.logger().Info("session revoked", fields...)
	s.metrics.SessionRevoked(cause.Reason)
	c.cancel(cause)
}

package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
)

// Authorizer decides who a connecting client is and whether and how it may
// reach a resource. auth.Authorizer is the real one.
type Authorizer interface {
	Decide(ctx context.Context, req auth.Request) (*auth.Decision, error)
}

// Protocol is one wire protocol's side of portcullis: it holds the whole
// conversation with a client, from the first byte to the end of the
// session, and uses the Conn for everything that is not wire format.
type Protocol interface {
	// Name is the protocol as the configuration spells it ("postgres").
	Name() string
	// Serve runs one connection. It reports failures to the client in the
	// protocol's own format before returning; the returned error is for
	// the log. The Server closes the connection afterwards.
	Serve(ctx context.Context, c *Conn) error
}

// Deps are what a Server needs besides its configuration.
type Deps struct {
	// Authorizer makes every decision. Required.
	Authorizer Authorizer
	// Protocols implement the listeners' protocols; every configured
	// listener's protocol must be among them.
	Protocols []Protocol
	// Logger receives the audit events; nil discards them.
	Logger *zap.Logger
	// TLS is the configuration clients see. When nil, the certificate is
	// loaded from cfg.TLS (CertFile, KeyFile), if set.
	TLS *tls.Config
	// Metrics counts connections, sign-ins and failures; nil counts
	// nothing.
	Metrics Metrics
}

// Why a connection or session was ended by portcullis rather than by
// either end. Protocols find them with context.Cause and errors.Is.
var (
	// ErrShuttingDown: the server is shutting down and the drain time is
	// over.
	ErrShuttingDown = errors.New("portcullis is shutting down")
	// ErrTerminated: an operator ended the session (Server.End).
	ErrTerminated = errors.New("session terminated by an operator")
	// ErrKilled: the client asked for its own connection to end, as
	// MySQL's KILL CONNECTION of its own connection id does (Conn.Kill).
	ErrKilled = errors.New("the client killed its own connection")
	// ErrServerClosed is returned by Serve called after Shutdown or Close.
	ErrServerClosed = errors.New("proxy: server closed")
)

// Server accepts connections on any number of listeners and runs them.
type Server struct {
	cfg       config.Config
	limits    config.Proxy
	authz     Authorizer
	protocols map[string]Protocol
	log       *zap.Logger
	tls       *tls.Config
	cancels   *cancelKeys
	metrics   Metrics
	recent    *recentIdentities
	current   atomic.Pointer[config.Config] // resources for new connections (reload.go)

	// base is the parent of every connection's context; cancelling it,
	// with a cause, ends them all.
	base    context.Context
	endAll  context.CancelCauseFunc
	handler sync.WaitGroup

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[string]*Conn
}

// New checks cfg against deps and returns a Server that is not yet
// listening. It loads the client-facing certificate from cfg.TLS unless
// deps.TLS is given.
func New(cfg *config.Config, deps Deps) (*Server, error) {
	if cfg == nil {
		return nil, errors.New("proxy: no configuration")
	}
	if deps.Authorizer == nil {
		return nil, errors.New("proxy: no authorizer")
	}
	s := &Server{
		cfg:       *cfg,
		limits:    withLimitDefaults(cfg.Proxy),
		authz:     deps.Authorizer,
		protocols: make(map[string]Protocol),
		log:       deps.Logger,
		tls:       deps.TLS,
		cancels:   newCancelKeys(),
		metrics:   orNop(deps.Metrics),
		recent:    newRecentIdentities(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[string]*Conn),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	for _, p := range deps.Protocols {
		s.protocols[p.Name()] = p
	}
	if s.tls == nil && cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: load the client-facing certificate %s: %w", cfg.TLS.CertFile, err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if s.tls != nil {
		s.tls = s.tls.Clone()
		if s.tls.MinVersion < tls.VersionTLS12 {
			s.tls.MinVersion = tls.VersionTLS12
		}
	}
	for _, l := range cfg.Listeners {
		if err := s.checkListener(l); err != nil {
			return nil, err
		}
	}
	warnBusyPollQuota(s.log, s.limits.BusyPoll, s.limits.RelayThreads)
	s.current.Store(&s.cfg)
	s.base, s.endAll = context.WithCancelCause(context.Background())
	return s, nil
}

func (s *Server) checkListener(l config.Listener) error {
	if _, ok := s.protocols[l.Protocol]; !ok {
		return fmt.Errorf("proxy: listener %q: protocol %q is not available in this build", l.Name, l.Protocol)
	}
	if l.TLS != config.ListenerTLSDisabled && s.tls == nil {
		return fmt.Errorf("proxy: listener %q: tls is %q but no certificate is configured (tls.cert_file, tls.key_file)", l.Name, tlsSetting(l))
	}
	return nil
}

func tlsSetting(l config.Listener) string {
	if l.TLS == "" {
		return config.ListenerTLSRequired
	}
	return l.TLS
}

func withLimitDefaults(p config.Proxy) config.Proxy {
	if p.HandshakeTimeout <= 0 {
		p.HandshakeTimeout = config.DefaultHandshakeTimeout
	}
	if p.DrainTimeout <= 0 {
		p.DrainTimeout = config.DefaultDrainTimeout
	}
	if p.MaxStartupBytes <= 0 {
		p.MaxStartupBytes = config.DefaultMaxStartupBytes
	}
	return p
}

// ListenAndServe opens every configured listener and serves them until
// ctx ends or the Server is shut down. If one listener cannot be opened,
// none is served.
func (s *Server) ListenAndServe(ctx context.Context) error {
	if len(s.cfg.Listeners) == 0 {
		return errors.New("proxy: no listeners configured")
	}
	var lns []net.Listener
	for _, l := range s.cfg.Listeners {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			for _, open := range lns {
				open.Close()
			}
			return fmt.Errorf("proxy: listener %q: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	errs := make(chan error, len(lns))
	for i, ln := range lns {
		go func() { errs <- s.Serve(ctx, ln, s.cfg.Listeners[i]) }()
	}
	var first error
	for range lns {
		if err := <-errs; err != nil && first == nil {
			first = err
			// One listener failing takes the others down with it: a
			// half-served configuration is worse than a clear stop.
			s.closeListeners()
		}
	}
	return first
}

// Serve accepts connections on ln, configured as l, until ctx ends or
// Shutdown or Close is called; it then returns nil. Ending ctx stops
// accepting but leaves open sessions running: Shutdown drains them.
func (s *Server) Serve(ctx context.Context, ln net.Listener, l config.Listener) error {
	if err := s.checkListener(l); err != nil {
		ln.Close()
		return err
	}
	if l.Name == "" {
		l.Name = l.Protocol
	}
	proto := s.protocols[l.Protocol]
	if !s.trackListener(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrackListener(ln)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	log := s.log.With(zap.String("listener", l.Name), zap.String("address", ln.Addr().String()))
	log.Info("listening", logging.Event("listener.started"), zap.String("protocol", l.Protocol), zap.String("tls", tlsSetting(l)))
	defer log.Info("stopped listening", logging.Event("listener.stopped"))

	var backoff time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || s.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait, then go on,
			// rather than spin or give up on the listener.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.metrics.Failure(l.Protocol, "accept_failed")
			log.Warn("accept failed", logging.Event("listener.accept_failed"), zap.Error(err), zap.Duration("retry_in", backoff))
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		if !s.startHandler() {
			raw.Close()
			return nil
		}
		go s.serveConn(l, proto, raw)
	}
}

// Shutdown stops accepting, lets open connections run for
// Proxy.DrainTimeout (or until ctx ends, if sooner), then ends the rest
// with ErrShuttingDown and waits for them to close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	done := s.handlersDone()
	s.log.Info("draining", logging.Event("server.draining"), zap.Int("sessions", s.count()), zap.Duration("drain_timeout", s.limits.DrainTimeout))

	timer := time.NewTimer(s.limits.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	s.log.Info("ending remaining sessions", logging.Event("server.drain_timeout"), zap.Int("sessions", s.count()))
	s.endAll(ErrShuttingDown)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proxy: shutdown: %w", ctx.Err())
	}
}

// Close stops accepting and ends every connection at once (with
// ErrShuttingDown), then waits for them to close.
func (s *Server) Close() error {
	s.closeListeners()
	s.endAll(ErrShuttingDown)
	<-s.handlersDone()
	return nil
}

// End ends one connection, by session id, with ErrTerminated, and waits
// until it has closed: once End returns nil, nothing more the client
// sent reaches the backend. It reports whether the connection was found.
// It returns ctx's error if ctx ends first; the connection still ends,
// each step of its goodbye bounded.
func (s *Server) End(ctx context.Context, id string) (bool, error) {
	s.mu.Lock()
	c, ok := s.conns[id]
	s.mu.Unlock()
	if !ok {
		return false, nil
	}
	c.cancel(ErrTerminated)
	s.metrics.SessionRevoked("operator")
	select {
	case <-c.gone:
		return true, nil
	case <-ctx.Done():
		return true, fmt.Errorf("proxy: session %s was told to end and has not closed yet: %w", id, ctx.Err())
	}
}

// Kill ends this connection with ErrKilled, between two messages, as
// End does with ErrTerminated: the protocol's goodbye tells the client.
func (c *Conn) Kill() { c.cancel(ErrKilled) }

// Sessions returns a snapshot of every open connection, oldest first.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(conns))
	for _, c := range conns {
		out = append(out, c.info())
	}
	sortSessions(out)
	return out
}

func (s *Server) trackListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Server) untrackListener(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// startHandler counts a new connection handler unless the server is
// closing, so Shutdown never waits on a handler that starts after it.
func (s *Server) startHandler() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.handler.Add(1)
	return true
}

func (s *Server) handlersDone() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		s.handler.Wait()
		close(done)
	}()
	return done
}

func (s *Server) register(c *Conn) {
	s.mu.Lock()
	s.conns[c.id] = c
	s.mu.Unlock()
}

// unregister forgets a connection. Its cancel keys go first, so that a
// session no longer listed can no longer be cancelled either.
func (s *Server) unregister(c *Conn) {
	s.cancels.releaseSession(c.id)
	s.mu.Lock()
	delete(s.conns, c.id)
	s.mu.Unlock()
}

func (s *Server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// serveConn runs one connection from accept to close. Its frame stays on
// the stack for the whole session, so what it does besides calling the
// protocol is kept out of line (see Conn.Splice).
func (s *Server) serveConn(l config.Listener, proto Protocol, raw net.Conn) {
	defer s.handler.Done()

	c := s.accepted(&l, proto.Name(), raw)
	defer close(c.gone)
	defer raw.Close()
	var err error
	defer s.closed(c, time.Now(), &err)

	// Until the splice, a connection ended by Shutdown or End must not sit
	// in a blocking read: its deadline expires with its context.
	stop := context.AfterFunc(c.ctx, c.dl.expire)
	defer stop()

	err = proto.Serve(c.ctx, c)
}

// accepted makes the Conn for a new connection and lists it.
//
//go:noinline
func (s *Server) accepted(l *config.Listener, proto string, raw net.Conn) *Conn {
	c := s.newConn(*l, proto, raw)
	s.metrics.ConnAccepted(l.Name, proto)
	s.register(c)
	c.log.Info("connection accepted", logging.Event("conn.accepted"))
	return c
}

// closed counts and logs the end of a connection that started at start
// and ended with *err, and lets go of it, in the reverse order of
// accepted.
//
//go:noinline
func (s *Server) closed(c *Conn, start time.Time, err *error) {
	s.metrics.ConnClosed(c.info(), *err)
	fields := []zap.Field{logging.Event("conn.closed"), zap.Duration("duration", time.Since(start))}
	if *err != nil {
		fields = append(fields, zap.Error(*err))
	}
	c.logger().Info("connection closed", fields...)
	s.unregister(c)
	c.cancel(nil)
	c.closeAdopted()
}

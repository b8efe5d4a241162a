package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
)

// Conn is one client connection as its protocol sees it: its identity in
// logs, its limits and configuration, and the way to decisions, cancel
// keys and the splice. The Server creates it; the protocol never builds
// one.
type Conn struct {
	srv    *Server
	ctx    context.Context
	cancel context.CancelCauseFunc
	// gone is closed once the connection has closed both its sockets and
	// let go of everything it held.
	gone       chan struct{}
	id         string
	raw        net.Conn
	listener   config.Listener
	protocol   string
	clientAddr netip.AddrPort
	accepted   time.Time
	log        *zap.Logger
	dl         deadlines

	toBackend atomic.Int64
	toClient  atomic.Int64
	// adopted are connections the relay made over the session's sockets,
	// closed with raw. Only the connection's own goroutine touches them.
	adopted []net.Conn

	mu sync.Mutex
	// kernelBytes, while the kernel relays the session, counts the bytes
	// it has relayed each way so far.
	kernelBytes func() (toBackend, toClient int64)
	login       string
	resource    string
	decision    *auth.Decision
	spliced     time.Time
}

func (s *Server) newConn(l config.Listener, protocol string, raw net.Conn) *Conn {
	ctx, cancel := context.WithCancelCause(s.base)
	c := &Conn{
		srv:        s,
		ctx:        ctx,
		cancel:     cancel,
		gone:       make(chan struct{}),
		id:         newSessionID(),
		raw:        raw,
		listener:   l,
		protocol:   protocol,
		clientAddr: addrPort(raw.RemoteAddr()),
		accepted:   time.Now(),
		dl:         deadlines{conn: raw},
	}
	c.log = s.log.With(
		zap.String("session_id", c.id),
		zap.String("client_addr", c.clientAddr.String()),
		zap.String("listener", l.Name),
	)
	return c
}

// ID is the session id, as logs and the admin console show it.
func (c *Conn) ID() string { return c.id }

// Net is the client's TCP connection. A protocol that starts TLS wraps it
// and reads and writes through the wrapper from then on; deadlines set
// through Step and Await apply to both.
func (c *Conn) Net() net.Conn { return c.raw }

// ClientAddr is the client's address and port.
func (c *Conn) ClientAddr() netip.AddrPort { return c.clientAddr }

// Listener is the configuration of the listener the client came in on.
func (c *Conn) Listener() config.Listener { return c.listener }

// Limits are the connection-handling limits, defaults filled in.
func (c *Conn) Limits() config.Proxy { return c.srv.limits }

// TLS is the configuration to serve clients TLS with; nil when the
// listener has no certificate (tls: disabled).
func (c *Conn) TLS() *tls.Config { return c.srv.tls }

// Resource finds a resource of this connection's protocol by name.
func (c *Conn) Resource(name string) (config.Resource, bool) {
	for _, r := range c.srv.current.Load().Resources {
		if r.Name == name && r.Protocol == c.protocol {
			return r, true
		}
	}
	return config.Resource{}, false
}

// ResourceElsewhere reports the protocol of a resource of that name
// served by another protocol, for an error that sends the client to the
// right listener.
func (c *Conn) ResourceElsewhere(name string) (protocol string, ok bool) {
	for _, r := range c.srv.current.Load().Resources {
		if r.Name == name && r.Protocol != c.protocol {
			return r.Protocol, true
		}
	}
	return "", false
}

// ProtocolName is how an error names a protocol to a person.
func ProtocolName(protocol string) string {
	switch protocol {
	case config.ProtocolPostgres:
		return "PostgreSQL"
	case config.ProtocolMySQL:
		return "MySQL"
	}
	return protocol
}

// Step bounds the next step of the handshake: reads and writes on the
// client connection must finish within Proxy.HandshakeTimeout from now. It
// fails, with the context's cause, once the connection has been ended.
func (c *Conn) Step() error {
	t := time.Now().Add(c.srv.limits.HandshakeTimeout)
	return c.dl.set(c.ctx, t, t)
}

// Await lifts the read deadline while the client waits for something
// bounded otherwise (a device-code sign-in, bounded by the code's
// lifetime); writes stay bounded by Proxy.HandshakeTimeout from now, so
// call it again before each write during the wait.
func (c *Conn) Await() error {
	return c.dl.set(c.ctx, time.Time{}, time.Now().Add(c.srv.limits.HandshakeTimeout))
}

// FinalWrite gives one last write, the error telling the client why it
// is turned away, a short deadline of its own, even after the connection
// has been ended (when Step would refuse).
func (c *Conn) FinalWrite() error {
	return c.raw.SetWriteDeadline(time.Now().Add(farewellGrace))
}

// Refused records that the protocol turned the client away before any
// decision (no TLS, an unknown resource, a malformed startup): reason is a
// short snake_case word for the log.
func (c *Conn) Refused(reason string, err error) {
	c.srv.metrics.Failure(c.protocol, reason)
	fields := []zap.Field{logging.Event("conn.refused"), zap.String("reason", reason)}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	c.logger().Info("connection refused", fields...)
}

// BackendFailed records that the backend of resource could not be
// reached or refused portcullis's login. err may name the internal
// address: it goes to the log, never to the client.
func (c *Conn) BackendFailed(err error) {
	c.srv.metrics.Failure(c.protocol, "backend_failed")
	c.logger().Warn("backend connection failed", logging.Event("backend.failed"), zap.Error(err))
}

// Decide asks the Authorizer for a decision on req and audits the answer.
// It wraps req.Prompt so that issuing a device code is logged (without
// the code). The error is the Authorizer's, unchanged: a *auth.Refusal, a
// *auth.SignInPending, a *auth.TOTPRequired, or a failure. A TOTP
// outcome is audited as mfa.totp.enrollment_required,
// mfa.totp.code_required, mfa.totp.failed or mfa.totp.locked, never with
// the enrolment or the session key it carries.
func (c *Conn) Decide(ctx context.Context, req auth.Request) (*auth.Decision, error) {
	c.mu.Lock()
	c.login, c.resource = req.LoginName, req.Resource
	c.mu.Unlock()
	log := c.logger()

	if prompt := req.Prompt; prompt != nil {
		req.Prompt = func(p auth.DeviceCodePrompt) error {
			log.Info("device code issued", logging.Event("auth.device_code.issued"), zap.String("mode", string(auth.PromptNotice)), zap.Time("expires_at", p.ExpiresAt))
			return prompt(p)
		}
	}

	shown := c.watchDeviceCode(&req)
	dec, err := c.srv.authz.Decide(ctx, req)
	c.countDecision(ctx, req, dec, err, shown)

	var (
		pending *auth.SignInPending
		need    *auth.TOTPRequired
		refusal *auth.Refusal
		failure *auth.TOTPFailure
	)
	switch {
	case err == nil:
		c.mu.Lock()
		c.decision = dec
		c.mu.Unlock()
		log = c.logger()
		log.Info("authenticated", logging.Event("auth.succeeded"), zap.Strings("groups", groupNames(dec.Matched)), zap.Bool("new_session_key", dec.SessionKey != ""))
	case errors.As(err, &pending):
		log.Info("device code issued", logging.Event("auth.device_code.issued"), zap.String("mode", string(auth.PromptError)), zap.Time("expires_at", pending.Prompt.ExpiresAt))
	case errors.As(err, &need):
		// Only the facts: the enrolment, the session key and the
		// message's instructions are for the person's screen.
		event := "mfa.totp.code_required"
		if need.Enrollment != nil {
			event = "mfa.totp.enrollment_required"
		}
		log.Info("TOTP code required", logging.Event(event), zap.String("oid", need.Identity.ObjectID), zap.String("identity", need.Identity.Name()), zap.Bool("new_session_key", need.SessionKey != ""))
	case ctx.Err() != nil:
		// The wait ended on our side (client gone, handshake bound,
		// shutdown): whatever the Authorizer made of that, it was not a
		// verdict on who is connecting.
		log.Info("authentication abandoned", logging.Event("auth.failed"), zap.String("reason", "canceled"), zap.NamedError("cause", context.Cause(ctx)))
	case errors.As(err, &refusal) && errors.As(refusal.Err, &failure):
		// One mfa.totp.locked per lockout, for alerting; the refusals
		// while it lasts are failures of kind "locked".
		event := "mfa.totp.failed"
		if failure.LockedNow {
			event = "mfa.totp.locked"
		}
		fields := []zap.Field{logging.Event(event), zap.String("reason", string(refusal.Reason)), zap.String("kind", string(failure.Kind))}
		if failure.Kind == auth.TOTPWrongCode {
			fields = append(fields, zap.Int("failures", failure.Failures), zap.Int("max_failures", failure.MaxFailures))
		}
		if !failure.LockedUntil.IsZero() {
			fields = append(fields, zap.Time("locked_until", failure.LockedUntil))
		}
		log.Info("TOTP code refused", fields...)
	case errors.As(err, &refusal) && refusal.Reason == auth.ReasonNotAllowed:
		log.Info("not authorized", logging.Event("authz.denied"), zap.String("reason", string(refusal.Reason)), zap.Error(refusal.Err))
	case errors.As(err, &refusal):
		log.Info("authentication failed", logging.Event("auth.failed"), zap.String("reason", string(refusal.Reason)), zap.Error(refusal.Err))
	default:
		log.Warn("authentication failed", logging.Event("auth.failed"), zap.String("reason", "error"), zap.Error(err))
	}
	return dec, err
}

// logger is the connection's logger with what is known so far about who
// it is.
func (c *Conn) logger() *zap.Logger {
	c.mu.Lock()
	defer c.mu.Unlock()
	fields := make([]zap.Field, 0, 5)
	if c.login != "" {
		fields = append(fields, zap.String("user", c.login))
	}
	if c.resource != "" {
		fields = append(fields, zap.String("resource", c.resource))
	}
	if d := c.decision; d != nil {
		fields = append(fields, zap.String("oid", d.Identity.ObjectID), zap.String("identity", d.Identity.Name()), zap.String("method", string(d.Method)))
	}
	return c.log.With(fields...)
}

func (c *Conn) info() SessionInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	info := SessionInfo{
		ID:             c.id,
		Listener:       c.listener.Name,
		Protocol:       c.protocol,
		ClientAddr:     c.clientAddr,
		LoginName:      c.login,
		Resource:       c.resource,
		Accepted:       c.accepted,
		Started:        c.spliced,
		BytesToBackend: c.toBackend.Load(),
		BytesToClient:  c.toClient.Load(),
	}
	if c.kernelBytes != nil {
		up, down := c.kernelBytes()
		info.BytesToBackend += up
		info.BytesToClient += down
	}
	if d := c.decision; d != nil {
		info.Identity = d.Identity
		info.Method = d.Method
		info.BackendUser = d.Backend.User
	}
	return info
}

// SessionInfo is a snapshot of one connection, for the admin console.
type SessionInfo struct {
	ID         string
	Listener   string
	Protocol   string
	ClientAddr netip.AddrPort
	// LoginName and Resource are what the client asked for; empty until
	// its startup has been read.
	LoginName string
	Resource  string
	// Identity, Method and BackendUser are set once a decision allowed
	// the connection.
	Identity    auth.Identity
	Method      auth.Method
	BackendUser string
	// Accepted is when the connection came in; Started is when its
	// session began relaying (zero while it is still in its handshake).
	Accepted time.Time
	Started  time.Time
	// BytesToBackend and BytesToClient count relayed bytes.
	BytesToBackend int64
	BytesToClient  int64
}

func sortSessions(s []SessionInfo) {
	sort.Slice(s, func(i, j int) bool { return s[i].Accepted.Before(s[j].Accepted) })
}

// deadlines sets the client connection's deadlines during the handshake
// so that an ended connection's expired deadline is never pushed back
// into the future by a step that races with the end.
type deadlines struct {
	conn net.Conn

	mu      sync.Mutex
	expired bool
	lifted  bool
}

func (d *deadlines) set(ctx context.Context, read, write time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.expired {
		return context.Cause(ctx)
	}
	if err := d.conn.SetReadDeadline(read); err != nil {
		return err
	}
	return d.conn.SetWriteDeadline(write)
}

// expire makes every blocked or future read and write fail at once.
func (d *deadlines) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lifted {
		return
	}
	d.expired = true
	d.conn.SetDeadline(time.Unix(1, 0))
}

// lift hands the connection to the splice: no handshake deadline from
// now on, and ending the connection is the splice's business. (A
// connection ended just before is seen by the splice through its
// context.)
func (d *deadlines) lift() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lifted = true
	d.conn.SetDeadline(time.Time{})
}

func groupNames(groups []auth.Group) []string {
	names := make([]string, len(groups))
	for i, g := range groups {
		names[i] = g.DisplayName
		if names[i] == "" {
			names[i] = g.ID
		}
	}
	return names
}

func newSessionID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func addrPort(a net.Addr) netip.AddrPort {
	if tcp, ok := a.(*net.TCPAddr); ok {
		ap := tcp.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}

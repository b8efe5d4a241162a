package mysql

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// Protocol is MySQL (and MariaDB) for a proxy.Server.
type Protocol struct {
	cleartext bool
	// versions are the server versions of the resources' backends, as
	// last seen, for the greeting.
	versions sync.Map
	sessions sessions
}

// Option tunes a Protocol.
type Option func(*Protocol)

// AskCleartext makes portcullis ask every client for its password with
// an auth switch to mysql_clear_password rather than through
// caching_sha2_password's full authentication: for clients that have
// cleartext passwords turned on (go-sql-driver's allowCleartextPasswords,
// --enable-cleartext-plugin) but cannot do caching_sha2_password. The
// password travels over TLS either way.
func AskCleartext() Option { return func(p *Protocol) { p.cleartext = true } }

// New returns the MySQL protocol, for proxy.Deps.Protocols.
func New(opts ...Option) *Protocol {
	p := &Protocol{sessions: sessions{byID: make(map[uint32]*liveSession)}}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Name is "mysql", as listeners and resources spell it.
func (*Protocol) Name() string { return config.ProtocolMySQL }

// fallbackVersion is the greeting's server version until a backend of the
// listener's default resource has been seen.
const fallbackVersion = "8.0.0-portcullis"

// greetingVersion is the version the client is greeted with: the real
// one of the default resource's server once known, since clients adapt
// to it (the resource is only known after the greeting).
func (p *Protocol) greetingVersion(c *proxy.Conn) string {
	if v, ok := p.versions.Load(c.Listener().DefaultResource); ok {
		return v.(string)
	}
	return fallbackVersion
}

// greetPlugin is the authentication plugin the greeting proposes.
func (p *Protocol) greetPlugin() string {
	if p.cleartext {
		return pluginNative
	}
	return pluginCachingSHA2
}

// Serve runs one client connection: greeting and TLS, handshake
// response, password, decision, backend login, the OK, then the splice.
func (p *Protocol) Serve(ctx context.Context, c *proxy.Conn) error {
	id, err := p.sessions.reserve()
	if err != nil {
		return fmt.Errorf("session %s: %w", c.ID(), err)
	}
	defer p.sessions.release(id)
	r, err := p.login(ctx, c, id)
	if r == nil {
		return err
	}
	defer r.Backend.Close()
	return c.Splice(r)
}

// login is all of a connection before its splice, kept out of Serve so
// that its frame is gone from the stack while the session lasts (see
// proxy.Conn.Splice). It returns the session to relay, or nil and why
// the connection ended.
//
//go:noinline
func (p *Protocol) login(ctx context.Context, c *proxy.Conn, id uint32) (*proxy.Relay, error) {
	fe := newFrontend(p, c, id)

	// 1. Greeting, TLS and the handshake response.
	if err := fe.greet(p.greetingVersion(c)); err != nil {
		return nil, fe.fail(ctx, err)
	}
	if err := fe.readHandshake(); err != nil {
		return nil, fe.fail(ctx, err)
	}
	res, database, err := fe.resource()
	if err != nil {
		return nil, fe.fail(ctx, err)
	}

	// 2 and 3. Who is it, and may they? Without TLS, only a session key
	// proven by caching_sha2_password's scramble. Over TLS, the password
	// in the clear; the decision may prompt and wait, and may ask for a
	// TOTP code: in a dialog where the client has one, else in an ERR,
	// and the code comes with the next connection.
	var dec *auth.Decision
	if fe.tls {
		dec, err = fe.decideOverTLS(ctx, res)
	} else {
		dec, err = fe.decideByScramble(ctx, res)
	}
	if err != nil {
		return nil, fe.fail(ctx, err)
	}

	// 4. Log in to the backend before telling the client anything more.
	be, err := connectBackend(ctx, res, dec.Backend, backendLogin{caps: fe.caps, collation: fe.hs.collation, attrs: fe.hs.attrs, sessionID: c.ID(), database: database})
	if err != nil {
		c.BackendFailed(err)
		fe.keepSessionKey(dec)
		return nil, fe.fail(ctx, err)
	}
	p.versions.Store(res.Name, be.version)
	// The key itself means nothing to a MySQL client; registering lets
	// portcullis stop a running query when it ends the session.
	if _, err := c.IssueCancelKey(func(ctx context.Context) error { return be.kill(ctx, false) }, 0); err != nil {
		be.conn.Close()
		return nil, fe.fail(ctx, fmt.Errorf("session %s: %w", c.ID(), err))
	}

	// 5. Answer the client.
	if err := fe.ready(dec, be.status); err != nil {
		be.conn.Close()
		return nil, fe.fail(ctx, err)
	}
	p.sessions.activate(id, dec.Identity.ObjectID, be.kill)

	// 6. Relay until either side is done.
	var (
		last     atomic.Uint32
		awaiting atomic.Bool
	)
	// A KILL CONNECTION of the session's own id ends it. The KILL was
	// packet 0 of its exchange, so the goodbye answers it as packet 1.
	kills := p.sessions.killerFor(dec.Identity.ObjectID, id, func() {
		last.Store(0)
		c.Kill()
	})
	return &proxy.Relay{
		Client:        fe.pc.conn,
		Backend:       be.conn,
		ClientPending: fe.pc.pending(),
		ToBackend:     &packetFramer{last: &last, awaiting: &awaiting, client: true},
		ToClient:      &packetFramer{last: &last, awaiting: &awaiting},
		FromClient:    &commandFilter{kills: kills},
		Goodbye:       goodbye(&last, &awaiting),
		Terminate:     terminate,
	}, nil
}

// decideOverTLS takes the password in the clear over TLS and decides on
// it, asking for a TOTP code where the resource needs one.
func (fe *frontend) decideOverTLS(ctx context.Context, res config.Resource) (*auth.Decision, error) {
	password, err := fe.password()
	if err != nil {
		return nil, err
	}
	dec, err := fe.decide(ctx, res, password)
	var need *auth.TOTPRequired
	if errors.As(err, &need) && ctx.Err() == nil {
		if fe.canAskTOTP(res) {
			return fe.askForTOTP(ctx, res, password, need)
		}
		return nil, &totpAnswer{need: need, reconnect: reconnectWith(need, password)}
	}
	return dec, err
}

// sessions are the connection ids portcullis has handed out in
// greetings, and how to kill each one's backend thread.
type sessions struct {
	mu   sync.Mutex
	byID map[uint32]*liveSession
}

type liveSession struct {
	oid  string // the identity, once logged in
	kill func(ctx context.Context, connection bool) error
}

// Connection ids portcullis hands out are in [idBase, 2*idBase): far
// above the thread ids of any real server, so a KILL with one never
// reaches the wrong thread.
const idBase = 1 << 30

func (s *sessions) reserve() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 32 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("connection id: %w", err)
		}
		id := idBase | binary.LittleEndian.Uint32(b[:])&(idBase-1)
		if _, taken := s.byID[id]; !taken {
			s.byID[id] = &liveSession{}
			return id, nil
		}
	}
	return 0, errors.New("connection id: no free id")
}

func (s *sessions) activate(id uint32, oid string, kill func(context.Context, bool) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ls, ok := s.byID[id]; ok {
		ls.oid, ls.kill = oid, kill
	}
}

func (s *sessions) release(id uint32) {
	s.mu.Lock()
	delete(s.byID, id)
	s.mu.Unlock()
}

// killerFor is the killer of a session of identity oid, whose own
// connection id is self; a KILL CONNECTION of self calls end instead.
func (s *sessions) killerFor(oid string, self uint32, end func()) killer {
	return &sessionKiller{s: s, oid: oid, self: self, end: end}
}

// sessionKiller carries out KILLs of portcullis connection ids for one
// identity: MySQL lets a user kill only their own threads, and portcullis
// lets a person kill only their own sessions.
type sessionKiller struct {
	s    *sessions
	oid  string
	self uint32
	end  func()
}

func (k *sessionKiller) kill(ctx context.Context, id uint32, connection bool) (bool, []byte, []byte) {
	if connection && id == k.self {
		// As a server does: the statement's answer is error 1927, and
		// the connection closes. Ending the session says both, between
		// two messages, and logs out of the backend.
		k.end()
		return true, nil, nil
	}
	k.s.mu.Lock()
	ls, ok := k.s.byID[id]
	var oid string
	var kill func(context.Context, bool) error
	if ok {
		oid, kill = ls.oid, ls.kill
	}
	k.s.mu.Unlock()
	switch {
	case !ok:
		return false, nil, nil
	case kill == nil:
		return true, nil, errPacket(gomysql.ER_NO_SUCH_THREAD, stateGeneral, fmt.Sprintf("Unknown thread id: %d", id))
	case oid != k.oid:
		return true, nil, errPacket(gomysql.ER_KILL_DENIED_ERROR, stateGeneral, fmt.Sprintf("You are not owner of thread %d", id))
	}
	if err := kill(ctx, connection); err != nil {
		return true, nil, errPacket(gomysql.ER_UNKNOWN_ERROR, stateGeneral, fmt.Sprintf("portcullis could not kill thread %d: its backend did not carry out the KILL", id))
	}
	// A statement that does nothing, so the backend answers with the
	// session's real status flags.
	return true, append([]byte{gomysql.COM_QUERY}, "DO 0"...), nil
}

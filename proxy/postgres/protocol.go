package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// Protocol is PostgreSQL for a proxy.Server.
type Protocol struct {
	// Console, when set, answers the admin console: the database named
	// config.ConsoleResource (console.go). Set it before the Server
	// serves.
	Console Console
	// reminder is how often a client waiting for a sign-in is reminded
	// of it (0: promptReminder).
	reminder time.Duration
}

// New returns the PostgreSQL protocol, for proxy.Deps.Protocols.
func New() *Protocol { return &Protocol{} }

// Name is "postgres", as listeners and resources spell it.
func (*Protocol) Name() string { return config.ProtocolPostgres }

// Serve runs one client connection: startup, credentials, decision,
// backend login, the answer to the client, then the splice.
func (p *Protocol) Serve(ctx context.Context, c *proxy.Conn) error {
	r, err := p.login(ctx, c)
	if r == nil {
		return err
	}
	defer r.Backend.Close()
	return c.Splice(r)
}

// login is all of a connection before its splice, kept out of Serve so
// that its frame is gone from the stack while the session lasts (see
// proxy.Conn.Splice). It returns the session to relay, or nil and how the
// connection ended: a cancel request, the console, a refusal.
//
//go:noinline
func (p *Protocol) login(ctx context.Context, c *proxy.Conn) (*proxy.Relay, error) {
	fe := newFrontend(c)
	fe.reminder = cmp.Or(p.reminder, promptReminder)

	// 1. Encryption and startup; a cancel request ends here.
	st, err := fe.readStartup()
	if err != nil {
		return nil, fe.fail(ctx, err)
	}
	if st.cancel != nil {
		c.ForwardCancel(ctx, *st.cancel)
		return nil, nil
	}
	if st.params["database"] == config.ConsoleResource {
		return nil, p.serveConsole(ctx, fe, st)
	}
	res, err := fe.resource(st)
	if err != nil {
		return nil, fe.fail(ctx, err)
	}

	// 2. Credentials.
	password, err := fe.password(st)
	if err != nil {
		return nil, fe.fail(ctx, err)
	}

	// 3. Who is it, and may they? This may prompt and wait, and may ask
	// for a TOTP code, which comes with the next connection.
	dec, err := fe.decide(ctx, res, st, password)
	var need *auth.TOTPRequired
	if errors.As(err, &need) {
		return nil, fe.askForTOTP(ctx, need)
	}
	if err != nil {
		return nil, fe.fail(ctx, err)
	}

	// 4. Log in to the backend before telling the client anything more.
	be, err := connectBackend(ctx, res, dec.Backend, st.params)
	if err != nil {
		c.BackendFailed(err)
		fe.keepSessionKey(dec)
		return nil, fe.fail(ctx, err)
	}

	// 5. Answer the client, with a cancel key of our own.
	key, err := c.IssueCancelKey(be.cancel, be.pid)
	if err != nil {
		be.conn.Close()
		return nil, fe.fail(ctx, fmt.Errorf("session %s: %w", c.ID(), err))
	}
	greeting, err := fe.ready(dec, be, key)
	if err != nil {
		be.conn.Close()
		return nil, fe.fail(ctx, err)
	}

	// 6. Relay until either side is done.
	return &proxy.Relay{
		Client:        fe.conn,
		Backend:       be.conn,
		ClientPending: fe.pending(),
		Greeting:      greeting,
		TypedMessages: true,
		ToBackend:     &framer{},
		ToClient:      &framer{},
		Goodbye:       goodbye,
		Terminate:     terminate,
	}, nil
}

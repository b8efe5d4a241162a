package mysql

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// offeredCaps are the capabilities portcullis offers clients: only those
// whose effect on the wire go-mysql's client can ask the backend for in
// turn, so that the session the client agreed to is the session the
// backend runs. Left out: COMPRESS and ZSTD (the splice relays bytes, it
// does not compress), LOCAL_FILES (LOAD DATA LOCAL stays off),
// QUERY_ATTRIBUTES (MariaDB has none, and it changes COM_QUERY),
// OPTIONAL_RESULTSET_METADATA, NO_SCHEMA, ODBC and
// CAN_HANDLE_EXPIRED_PASSWORDS. CLIENT_SSL is added when TLS can be
// offered. CLIENT_LONG_PASSWORD doubles as MariaDB's "this is MySQL" bit,
// so MariaDB clients send no extended capabilities either.
const offeredCaps = gomysql.CLIENT_LONG_PASSWORD | gomysql.CLIENT_FOUND_ROWS | gomysql.CLIENT_LONG_FLAG |
	gomysql.CLIENT_CONNECT_WITH_DB | gomysql.CLIENT_IGNORE_SPACE | gomysql.CLIENT_PROTOCOL_41 |
	gomysql.CLIENT_INTERACTIVE | gomysql.CLIENT_IGNORE_SIGPIPE | gomysql.CLIENT_TRANSACTIONS |
	gomysql.CLIENT_SECURE_CONNECTION | gomysql.CLIENT_MULTI_STATEMENTS | gomysql.CLIENT_MULTI_RESULTS |
	gomysql.CLIENT_PS_MULTI_RESULTS | gomysql.CLIENT_PLUGIN_AUTH | gomysql.CLIENT_CONNECT_ATTRS |
	gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | gomysql.CLIENT_SESSION_TRACK | gomysql.CLIENT_DEPRECATE_EOF

// frontend is portcullis acting as a MySQL server toward one client.
type frontend struct {
	p   *Protocol
	c   *proxy.Conn
	pc  *packetConn
	tls bool

	connID   uint32
	scramble []byte
	offered  uint32
	hs       *handshakeResponse
	caps     uint32 // what the client asked for, limited to what was offered

	// switched is set once an AuthSwitchRequest was sent: clients allow
	// one per login.
	switched bool
	// passwordAt is when the password arrived: a TOTP code in it is
	// judged by that time.
	passwordAt time.Time

	mu     sync.Mutex // the prompt callback writes from the decision's goroutine
	dialog *dialogState
}

// dialogState is an open dialog-plugin exchange: a question was asked
// and its answer comes (or not) on answered.
type dialogState struct {
	answered chan error
	// watched closes when the reader, and the watch for a hang-up after
	// an early answer, have ended; stopping marks that ending as ours.
	watched  chan struct{}
	stopping atomic.Bool
}

func newFrontend(p *Protocol, c *proxy.Conn, connID uint32) *frontend {
	return &frontend{p: p, c: c, pc: newPacketConn(c.Net()), connID: connID}
}

// greet sends the HandshakeV10.
func (fe *frontend) greet(version string) error {
	if err := fe.c.Step(); err != nil {
		return err
	}
	var err error
	if fe.scramble, err = newScramble(); err != nil {
		return err
	}
	fe.offered = offeredCaps
	if fe.tlsConfig() != nil {
		fe.offered |= gomysql.CLIENT_SSL
	}
	g := greeting{version: version, connID: fe.connID, scramble: fe.scramble, caps: fe.offered, plugin: fe.p.greetPlugin()}
	return fe.pc.writePacket(g.encode())
}

func (fe *frontend) tlsConfig() *tls.Config {
	if fe.c.Listener().TLS == config.ListenerTLSDisabled {
		return nil
	}
	return fe.c.TLS()
}

// readHandshake reads the client's answer to the greeting: an SSLRequest
// and TLS first, if it asks, then the HandshakeResponse41.
func (fe *frontend) readHandshake() error {
	if err := fe.c.Step(); err != nil {
		return err
	}
	p, err := fe.pc.readPacket()
	if err != nil {
		return err
	}
	if isSSLRequest(p) {
		if err := fe.startTLS(); err != nil {
			return err
		}
		if err := fe.c.Step(); err != nil {
			return err
		}
		if p, err = fe.pc.readPacket(); err != nil {
			return err
		}
	}
	hs, err := parseHandshakeResponse(p)
	if err != nil {
		return err
	}
	fe.hs = hs
	fe.caps = hs.caps & fe.offered
	// A client on another plugin usually sent nothing at all (MariaDB's
	// library answers a greeting for a plugin it is not using with an
	// empty response), so an empty answer is no sign of an empty password:
	// switch it too. One with an empty password answers the switch with an
	// empty scramble and is refused below.
	if fe.plainAllowed() && hs.plugin != pluginCachingSHA2 && hs.caps&gomysql.CLIENT_PLUGIN_AUTH != 0 {
		if err := fe.switchToSHA2(); err != nil {
			return err
		}
	}
	if !fe.tls && !fe.canScramble() {
		r := fe.tlsRequired(false)
		r.reason = "tls_required"
		return r
	}
	if hs.user == "" {
		return &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: "no user name in the handshake", reason: "bad_handshake"}
	}
	return nil
}

func (fe *frontend) startTLS() error {
	cfg := fe.tlsConfig()
	if cfg == nil || fe.tls {
		return badHandshake("TLS was not offered")
	}
	// The server does not answer an SSLRequest, so clients send their
	// ClientHello right behind it and the read buffer may already hold
	// its start. Those bytes are the TLS handshake's own (which
	// authenticates them), so TLS reads them first.
	early, _ := fe.pc.br.Peek(fe.pc.br.Buffered())
	tc := proxy.TLSServer(fe.pc.conn, early, cfg)
	if err := tc.Handshake(); err != nil {
		return &clientIOError{fmt.Errorf("TLS handshake: %w", err)}
	}
	seq := fe.pc.seq
	fe.pc.use(tc)
	fe.pc.seq = seq
	fe.tls = true
	return nil
}

// resource picks the resource named as the database, or the listener's
// default when none is named. Where the listener has a default, any other
// name is a database on the default resource's server, returned as
// database: the mariadb command line reconnects (`connect`, `\r`, or
// after losing the server) asking for the database it last switched to
// with USE, which the person chose on that server, not among
// portcullis's resources. The server's own grants decide whether they
// may use it, as they did for the USE.
func (fe *frontend) resource() (res config.Resource, database string, err error) {
	name := fe.hs.database
	def := fe.c.Listener().DefaultResource
	if name == "" {
		name = def
	}
	if name != "" {
		if res, ok := fe.c.Resource(name); ok {
			return res, "", nil
		}
	}
	other, elsewhere := fe.c.ResourceElsewhere(name)
	if def != "" && !elsewhere {
		if res, ok := fe.c.Resource(def); ok {
			return res, name, nil
		}
	}
	msg := fmt.Sprintf("Unknown database '%s': portcullis has no resource by that name", name)
	if elsewhere {
		msg = fmt.Sprintf("Unknown database '%s': it is a %s resource; connect to it through portcullis's %[2]s listener", name, proxy.ProtocolName(other))
	}
	if name == "" {
		msg = "No database selected: name the resource to connect to as the database"
	}
	return config.Resource{}, "", &refusal{code: gomysql.ER_BAD_DB_ERROR, state: stateSyntaxAccess, message: msg, reason: "unknown_resource"}
}

// password obtains the password in the clear, over TLS: from
// caching_sha2_password's full authentication (what stock clients do when
// the server asks for it), from mysql_clear_password, or by switching the
// client to one of those when it used anything else.
func (fe *frontend) password() (string, error) {
	pw, err := fe.readPassword()
	fe.passwordAt = time.Now()
	return pw, err
}

func (fe *frontend) readPassword() (string, error) {
	switch fe.hs.plugin {
	case pluginCachingSHA2:
		return fe.fullAuth(fe.hs.auth)
	case pluginClear:
		return string(trimNUL(fe.hs.auth)), nil
	}
	if fe.hs.caps&gomysql.CLIENT_PLUGIN_AUTH == 0 {
		return "", &refusal{code: gomysql.ER_NOT_SUPPORTED_AUTH_MODE, state: stateCommLink, message: "client does not support authentication plugins; upgrade the client", reason: "no_plugin_auth"}
	}
	// A client on another plugin is switched to the greeting's:
	// caching_sha2_password, whose client side it has loaded or tried to
	// load already (MariaDB's library loads plugins on first use, and
	// threads connecting at once race: a loser starts on
	// mysql_native_password, and would lose again loading
	// mysql_clear_password for the switch), or with AskCleartext,
	// mysql_clear_password.
	if !fe.p.cleartext {
		if err := fe.switchToSHA2(); err != nil {
			return "", err
		}
		return fe.fullAuth(fe.hs.auth)
	}
	if err := fe.c.Step(); err != nil {
		return "", err
	}
	fe.switched = true
	if err := fe.pc.writePacket(authSwitch(pluginClear, nil)); err != nil {
		return "", err
	}
	p, err := fe.readAuthPacket()
	if err != nil {
		return "", err
	}
	return string(trimNUL(p)), nil
}

// fullAuth follows a client's caching_sha2_password scramble with a
// request for full authentication, which a client over TLS answers with
// the password in the clear.
func (fe *frontend) fullAuth(scramble []byte) (string, error) {
	if len(scramble) == 0 {
		// An empty password sends an empty scramble and nothing more.
		return "", nil
	}
	if err := fe.c.Step(); err != nil {
		return "", err
	}
	if err := fe.pc.writePacket([]byte{authMoreDataHeader, sha2PerformFullAuth}); err != nil {
		return "", err
	}
	p, err := fe.readAuthPacket()
	if err != nil {
		return "", err
	}
	if len(p) == 1 && p[0] == sha2RequestPublicKey {
		return "", &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: "portcullis accepts passwords only over TLS", reason: "tls_required"}
	}
	return string(trimNUL(p)), nil
}

func (fe *frontend) readAuthPacket() ([]byte, error) {
	if err := fe.c.Step(); err != nil {
		return nil, err
	}
	return fe.pc.readPacket()
}

// canDialog reports whether the client can show a dialog-plugin prompt:
// MariaDB's client library has the plugin, and one auth switch is still
// allowed.
func (fe *frontend) canDialog() bool {
	return !fe.switched && fe.hs.caps&gomysql.CLIENT_PLUGIN_AUTH != 0 && fe.hs.attrs["_client_name"] == "libmariadb"
}

// promptMode picks how a device-code prompt reaches the person: the
// dialog plugin (notice mode) where the client has it and, in auto mode,
// is the interactive mariadb/mysql command line; an ERR and a reconnect
// otherwise.
func (fe *frontend) promptMode(setting string) auth.PromptMode {
	if !fe.canDialog() {
		return auth.PromptError
	}
	switch setting {
	case config.PromptNotice:
		return auth.PromptNotice
	case config.PromptError:
		return auth.PromptError
	}
	switch fe.hs.attrs["program_name"] {
	case "mysql", "mariadb":
		return auth.PromptNotice
	}
	return auth.PromptError
}

func (fe *frontend) application() string {
	if app := fe.hs.attrs["program_name"]; app != "" {
		return app
	}
	return fe.hs.attrs["_client_name"]
}

// decide asks for the decision, rendering a device-code prompt as a
// dialog question where the client can show one.
func (fe *frontend) decide(ctx context.Context, res config.Resource, password string) (*auth.Decision, error) {
	req := auth.Request{
		Protocol:    config.ProtocolMySQL,
		Resource:    res.Name,
		LoginName:   fe.hs.user,
		Password:    password,
		ClientAddr:  fe.c.ClientAddr().Addr(),
		Application: fe.application(),
		ReceivedAt:  fe.passwordAt,
		Mode:        fe.promptMode(res.Prompt),
	}

	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The decision itself is a handshake step; a prompt extends the
	// bound to the code's lifetime.
	timer := time.AfterFunc(fe.c.Limits().HandshakeTimeout, func() { cancel(errDecisionTimeout) })
	defer timer.Stop()

	var expires time.Time
	if req.Mode == auth.PromptNotice {
		req.Prompt = func(p auth.DeviceCodePrompt) error {
			fe.mu.Lock()
			defer fe.mu.Unlock()
			if fe.dialog != nil {
				return fmt.Errorf("a second device-code prompt for %s", req.LoginName)
			}
			expires = p.ExpiresAt
			timer.Reset(time.Until(p.ExpiresAt) + promptGrace)
			if err := fe.c.Await(); err != nil {
				return err
			}
			q := fmt.Sprintf("To sign in, open %s and enter the code %s (it expires at %s).\nThen press Enter here: ",
				p.VerificationURL, p.UserCode, clock(p.ExpiresAt))
			fe.switched = true
			if err := fe.pc.writePacket(authSwitch(pluginDialog, dialogQuestion(q, false))); err != nil {
				return err
			}
			fe.dialog = fe.awaitAnswer(ctx, cancel)
			return nil
		}
	}

	dec, err := fe.c.Decide(dctx, req)
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		// Our own bound or the client hanging up, not the decision's fault.
		err = fmt.Errorf("decision for %s: %w", req.LoginName, context.Cause(dctx))
	}

	fe.mu.Lock()
	d := fe.dialog
	fe.mu.Unlock()
	if d == nil {
		return dec, err
	}
	// The client is waiting for the person to press Enter; nothing can be
	// sent until it has answered, whatever the outcome.
	wait := fe.c.Limits().HandshakeTimeout
	if err == nil {
		wait = max(wait, time.Until(expires)+promptGrace)
	}
	if aerr := fe.waitAnswer(ctx, d, wait); aerr != nil {
		return nil, aerr
	}
	return dec, err
}

// keyPromptWait bounds the wait for Enter after the session key is shown.
const keyPromptWait = 5 * time.Minute

// promptGrace lets a decision finish after its code's stated expiry
// before portcullis gives up on it.
const promptGrace = 30 * time.Second

// awaitAnswer reads the answer to the open dialog question in the
// background; a read that fails while the decision is still being made
// means the client hung up, and ends the wait.
func (fe *frontend) awaitAnswer(ctx context.Context, cancel context.CancelCauseFunc) *dialogState {
	d := &dialogState{answered: make(chan error, 1), watched: make(chan struct{})}
	go func() {
		defer close(d.watched)
		_, err := fe.pc.readPacket()
		if err != nil && !d.stopping.Load() && ctx.Err() == nil {
			cancel(errClientGone)
		}
		d.answered <- err
		if err != nil {
			return
		}
		// Answered before the sign-in is done: the client now waits and
		// sends nothing, so a read that ends means it hung up, and the
		// sign-in would be for nobody. What it reads stays in the buffer.
		_, err = fe.pc.br.Peek(1)
		if err != nil && !d.stopping.Load() && ctx.Err() == nil {
			cancel(errClientGone)
		}
	}()
	return d
}

func (fe *frontend) waitAnswer(ctx context.Context, d *dialogState, wait time.Duration) error {
	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case err = <-d.answered:
	case <-t.C:
		err = &clientIOError{fmt.Errorf("no answer to the sign-in prompt within %s", wait.Round(time.Second))}
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	// Wake the reader, or the watch after it, and wait for it, so that
	// nobody reads the connection behind our back.
	d.stopping.Store(true)
	fe.pc.conn.SetReadDeadline(time.Unix(1, 0))
	<-d.watched
	if err != nil {
		return err
	}
	return fe.c.Step()
}

// ready tells the client it is logged in: in a dialog, a last question
// shows a new session key first; in retry mode the key is in the OK's
// info string (most clients do not show it; address grace covers their
// next connections).
func (fe *frontend) ready(dec *auth.Decision, status uint16) error {
	if err := fe.c.Step(); err != nil {
		return err
	}
	info := ""
	if dec.SessionKey != "" {
		if fe.dialog != nil {
			if err := fe.showSessionKey(dec); err != nil {
				return err
			}
		} else {
			info = strings.TrimSpace(sessionKeyText(dec))
		}
	}
	return fe.pc.writePacket(okPacket(fe.caps, status, info))
}

func sessionKeyText(dec *auth.Decision) string {
	return fmt.Sprintf("Signed in as %s. Until %s you can connect without signing in again by giving this session key as your password:\n  %s\n",
		dec.Identity.Name(), dec.SessionKeyExpires.UTC().Format("2006-01-02 15:04 UTC"), dec.SessionKey)
}

// showSessionKey shows a new session key in a dialog question and waits
// for the person to press Enter.
func (fe *frontend) showSessionKey(dec *auth.Decision) error {
	if err := fe.pc.writePacket(dialogQuestion(sessionKeyText(dec)+"Press Enter to continue: ", true)); err != nil {
		return err
	}
	// A person may take a while to copy the key down.
	if err := fe.c.Await(); err != nil {
		return err
	}
	t := time.AfterFunc(keyPromptWait, func() { fe.pc.conn.SetReadDeadline(time.Unix(1, 0)) })
	_, err := fe.pc.readPacket()
	t.Stop()
	if err != nil {
		return err
	}
	return fe.c.Step()
}

// keepSessionKey shows, in a dialog, the session key a sign-in just
// issued to a client whose login then fails at the backend (refused or
// unreachable), ahead of the error: the person comes back with it once
// the backend is fixed, without signing in again. Errors are left to the
// error's own write.
func (fe *frontend) keepSessionKey(dec *auth.Decision) {
	if dec.SessionKey != "" && fe.dialog != nil && fe.c.Step() == nil {
		fe.showSessionKey(dec)
	}
}

// fail tells the client why it is turned away, if anyone is left to
// tell, and returns err for the log.
func (fe *frontend) fail(ctx context.Context, err error) error {
	r := refusalFor(ctx, fe.c.ID(), err)
	if r == nil {
		return err
	}
	if r.reason != "" {
		fe.c.Refused(r.reason, err)
	}
	if werr := fe.c.FinalWrite(); werr == nil {
		fe.pc.writePacket(r.packet())
	}
	return err
}

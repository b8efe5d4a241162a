package postgres

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pgproto3 "github.com/jackc/pgproto3/v2"
	pgproto3v5 "github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// Startup packet codes (the first word after the length).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSEncRequest = 80877104
	protocol30        = 3 << 16
)

// maxPasswordBytes bounds a PasswordMessage: room for an Entra access
// token with many claims, not for a denial of service.
const maxPasswordBytes = 64 << 10

// frontend is portcullis acting as a PostgreSQL server toward one client.
// Everything the client sends is read through br, and the codec is given
// exactly the bytes it asks for (exactReader), so whatever the client sent
// beyond the last message read stays in br and is relayed to the backend
// when the splice starts.
type frontend struct {
	c *proxy.Conn
	// conn is the client's connection, through proxy.PollSocket (so that
	// a login's messages cost what relayed ones do), then its TLS wrapper.
	conn  net.Conn
	br    *bufio.Reader
	in    *exactReader
	codec *pgproto3.Backend
	tls   bool

	// passwordAt is when the password arrived: a TOTP code in it is
	// judged by that time. mode is how the decision prompts.
	passwordAt time.Time
	mode       auth.PromptMode
	// reminder is how often the prompt is repeated while the sign-in is
	// pending.
	reminder time.Duration

	mu     sync.Mutex // writes may come from a prompt callback
	authOK bool       // AuthenticationOk has been sent
}

func newFrontend(c *proxy.Conn) *frontend {
	fe := &frontend{c: c}
	fe.use(c.Net())
	return fe
}

// startupBufferSize is the read buffer a connection starts its login
// with: room for a startup packet and a password, an access token
// included, as most clients send them. A longer message moves the buffer
// to one that holds it (exactReader), so a connection waiting for a
// sign-in holds a page, not the largest message it may send.
const startupBufferSize = 4 << 10

// use makes conn the connection to talk over, with a fresh read buffer.
func (fe *frontend) use(conn net.Conn) {
	fe.conn = proxy.PollSocket(conn)
	fe.br = bufio.NewReaderSize(fe.conn, startupBufferSize)
	fe.in = &exactReader{fe: fe, limit: fe.c.Limits().MaxStartupBytes}
	fe.codec = pgproto3.NewBackend(fe.in, fe.conn)
}

// exactReader is the codec's pgproto3.ChunkReader: it hands out exactly n
// bytes per call, leaving anything read ahead in fe.br, and refuses
// messages longer than limit before buffering them.
type exactReader struct {
	fe    *frontend
	limit int
}

func (r *exactReader) Next(n int) ([]byte, error) {
	if n < 0 || n > r.limit {
		return nil, &fatal{code: codeProtocolViolation, message: fmt.Sprintf("message too long (%d bytes; the limit is %d)", n, r.limit), reason: "message_too_long"}
	}
	if n > r.fe.br.Size() {
		r.fe.br = grow(r.fe.br, r.fe.conn, n)
	}
	// Peek keeps a partial read in br, as ChunkReader requires; br holds
	// at least n bytes.
	b, err := r.fe.br.Peek(n)
	if err != nil {
		return nil, &clientIOError{err}
	}
	out := make([]byte, n)
	copy(out, b)
	r.fe.br.Discard(n)
	return out, nil
}

// grow moves what br has buffered from src to a reader of size bytes.
// The first fill of the new reader takes all of it: size is larger than
// br, so what br buffered fits.
func grow(br *bufio.Reader, src io.Reader, size int) *bufio.Reader {
	held := make([]byte, br.Buffered())
	br.Read(held) // from the buffer only: it holds that much
	return bufio.NewReaderSize(io.MultiReader(bytes.NewReader(held), src), size)
}

// startup is what a client asked for in its StartupMessage.
type startup struct {
	params map[string]string
	// newerMinor and options call for a NegotiateProtocolVersion: the
	// client asked for a minor version above 0 or for protocol options.
	newerMinor bool
	options    []string
	cancel     *proxy.CancelKey
}

// readStartup negotiates encryption and reads the StartupMessage (or a
// CancelRequest).
func (fe *frontend) readStartup() (*startup, error) {
	// Each request may come once, as PostgreSQL has it: a client that
	// repeats them would otherwise hold the handshake open for ever, one
	// step deadline at a time.
	sslSeen, gssSeen := false, false
	for {
		if err := fe.c.Step(); err != nil {
			return nil, err
		}
		if !fe.tls && !sslSeen {
			direct, err := fe.directTLS()
			if err != nil {
				return nil, err
			}
			if direct {
				sslSeen = true
				continue
			}
		}
		code, body, err := fe.readStartupPacket()
		if err != nil {
			return nil, err
		}
		switch {
		case code == codeSSLRequest:
			if fe.tls {
				return nil, protocolError("SSLRequest on an encrypted connection", "repeated_ssl_request")
			}
			if sslSeen {
				return nil, protocolError("repeated SSLRequest", "repeated_ssl_request")
			}
			sslSeen = true
			if err := fe.startTLS(); err != nil {
				return nil, err
			}
		case code == codeGSSEncRequest:
			if gssSeen || fe.tls {
				return nil, protocolError("unexpected GSSENCRequest", "repeated_gss_request")
			}
			gssSeen = true
			// No GSSAPI encryption here; the client goes on to ask for TLS
			// or to start in the clear.
			if err := fe.write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == codeCancelRequest:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil {
				return nil, protocolError("malformed CancelRequest", "bad_cancel_request")
			}
			return &startup{cancel: &proxy.CancelKey{ProcessID: req.ProcessID, Secret: req.SecretKey}}, nil
		case code>>16 == 3:
			return fe.decodeStartup(code, body)
		default:
			return nil, &fatal{
				code:    codeFeatureNotSupported,
				message: fmt.Sprintf("unsupported frontend protocol %d.%d: portcullis speaks 3.0", code>>16, code&0xffff),
				reason:  "unsupported_protocol",
			}
		}
	}
}

// readStartupPacket reads one length-prefixed startup-phase packet and
// returns its code and whole body (the code included).
func (fe *frontend) readStartupPacket() (uint32, []byte, error) {
	head, err := fe.in.Next(4)
	if err != nil {
		return 0, nil, err
	}
	n := int64(binary.BigEndian.Uint32(head))
	if n < 8 || n > int64(fe.c.Limits().MaxStartupBytes) {
		return 0, nil, &fatal{code: codeProtocolViolation, message: fmt.Sprintf("invalid startup packet length %d", n), reason: "bad_startup"}
	}
	body, err := fe.in.Next(int(n) - 4)
	if err != nil {
		return 0, nil, err
	}
	return binary.BigEndian.Uint32(body), body, nil
}

func (fe *frontend) startTLS() error {
	cfg := fe.c.TLS()
	if cfg == nil || fe.c.Listener().TLS == config.ListenerTLSDisabled {
		return fe.write([]byte{'N'})
	}
	// Bytes that came with the SSLRequest were sent in the clear and
	// would be read as if they came over TLS: refuse them rather than let
	// a man in the middle inject them.
	if fe.br.Buffered() > 0 {
		return protocolError("received unencrypted data after an SSL request", "data_after_ssl_request")
	}
	if err := fe.write([]byte{'S'}); err != nil {
		return err
	}
	if err := fe.c.Step(); err != nil {
		return err
	}
	tc := proxy.TLSServer(fe.conn, nil, cfg)
	if err := tc.Handshake(); err != nil {
		return &clientIOError{fmt.Errorf("TLS handshake: %w", err)}
	}
	fe.use(tc)
	fe.tls = true
	return nil
}

// tlsHandshakeRecord opens a TLS ClientHello. No startup packet starts
// with it: its length would be hundreds of megabytes.
const tlsHandshakeRecord = 0x16

// alpnPostgres is the ALPN protocol a direct TLS connection must ask for,
// as PostgreSQL 17 requires: it keeps a TLS connection meant for another
// service from being taken for a database session.
const alpnPostgres = "postgresql"

// directTLS takes a TLS handshake that opens the connection without an
// SSLRequest (libpq's sslnegotiation=direct, PostgreSQL 17 and later).
// It reports false, having consumed nothing, if the next packet is not
// one. On a listener without TLS the ClientHello is left to be refused as
// a startup packet of impossible length.
func (fe *frontend) directTLS() (bool, error) {
	b, err := fe.br.Peek(1)
	if err != nil {
		return false, &clientIOError{err}
	}
	cfg := fe.c.TLS()
	if b[0] != tlsHandshakeRecord || cfg == nil || fe.c.Listener().TLS == config.ListenerTLSDisabled {
		return false, nil
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{alpnPostgres}
	// The ClientHello, or its start, is in br already.
	early, _ := fe.br.Peek(fe.br.Buffered())
	tc := proxy.TLSServer(fe.conn, early, cfg)
	if err := tc.Handshake(); err != nil {
		return false, &clientIOError{fmt.Errorf("direct TLS handshake: %w", err)}
	}
	fe.use(tc)
	fe.tls = true
	if tc.ConnectionState().NegotiatedProtocol != alpnPostgres {
		return false, protocolError("direct TLS connection without ALPN protocol \"postgresql\"", "direct_tls_without_alpn")
	}
	return true, nil
}

func (fe *frontend) decodeStartup(code uint32, body []byte) (*startup, error) {
	st := &startup{newerMinor: code != protocol30}
	if st.newerMinor {
		// Same layout as 3.0; the codec only accepts 3.0's number.
		body = append([]byte(nil), body...)
		binary.BigEndian.PutUint32(body, protocol30)
	}
	var msg pgproto3.StartupMessage
	if err := msg.Decode(body); err != nil {
		return nil, &fatal{code: codeProtocolViolation, message: "malformed startup packet", reason: "bad_startup", err: err}
	}
	st.params = msg.Parameters
	for k := range st.params {
		if strings.HasPrefix(k, "_pq_.") {
			st.options = append(st.options, k)
			delete(st.params, k)
		}
	}
	sort.Strings(st.options)

	l := fe.c.Listener()
	if !fe.tls && (l.TLS == "" || l.TLS == config.ListenerTLSRequired) {
		return nil, &fatal{
			code:    codeInvalidAuthorization,
			message: "portcullis requires an encrypted connection: connect with sslmode=require (or verify-full)",
			hint:    "Set sslmode=require in the connection string, or PGSSLMODE=require.",
			reason:  "tls_required",
		}
	}
	if st.params["user"] == "" {
		return nil, &fatal{code: codeInvalidAuthorization, message: "no user name in the startup packet", reason: "bad_startup"}
	}
	if r := st.params["replication"]; r != "" && !isFalse(r) {
		return nil, &fatal{code: codeFeatureNotSupported, message: "replication connections are not supported through portcullis", reason: "replication"}
	}
	return st, nil
}

func isFalse(s string) bool {
	switch strings.ToLower(s) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}

// resource picks the resource the client asked for.
func (fe *frontend) resource(st *startup) (config.Resource, error) {
	name := st.params["database"]
	if res, ok := fe.c.Resource(name); ok {
		return res, nil
	}
	// What clients put in database when the person named none: libpq
	// the user name; psql -l, DBeaver and pgAdmin the maintenance
	// database, postgres.
	if def := fe.c.Listener().DefaultResource; def != "" && (name == "" || name == st.params["user"] || name == "postgres") {
		if res, ok := fe.c.Resource(def); ok {
			return res, nil
		}
	}
	f := &fatal{code: codeInvalidCatalog, reason: "unknown_resource",
		message: fmt.Sprintf("database %q does not exist: portcullis has no resource by that name", name),
		hint:    "Give the name of a portcullis resource as the database; your operator can tell you which ones you may use."}
	if other, ok := fe.c.ResourceElsewhere(name); ok {
		f.message, f.hint = fmt.Sprintf("database %q is a %s resource: connect to it through portcullis's %[2]s listener", name, proxy.ProtocolName(other)), ""
	}
	return config.Resource{}, f
}

// password asks for the password in the clear (the connection is
// encrypted unless the listener opted out) and reads it.
func (fe *frontend) password(st *startup) (string, error) {
	if err := fe.c.Step(); err != nil {
		return "", err
	}
	var buf []byte
	var err error
	if st.newerMinor || len(st.options) > 0 {
		buf, err = (&pgproto3v5.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.options}).Encode(buf)
		if err != nil {
			return "", err
		}
	}
	if buf, err = (&pgproto3.AuthenticationCleartextPassword{}).Encode(buf); err != nil {
		return "", err
	}
	if err := fe.write(buf); err != nil {
		return "", err
	}
	if err := fe.codec.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return "", err
	}
	fe.in.limit = maxPasswordBytes
	if err := fe.c.Step(); err != nil {
		return "", err
	}
	// Only a password or a goodbye may come now, and nothing else is
	// decoded: several of the codec's decoders (Query, Bind, FunctionCall,
	// CopyFail) index past the end of a message whose contents lie, and a
	// panic in a handler ends the whole process.
	if err := fe.expectType("a password", 'p', 'X'); err != nil {
		return "", err
	}
	msg, err := fe.codec.Receive()
	if err != nil {
		return "", malformed(err, "a password")
	}
	switch m := msg.(type) {
	case *pgproto3.PasswordMessage:
		fe.passwordAt = time.Now()
		return m.Password, nil
	case *pgproto3.Terminate:
		return "", errClientGone
	default:
		return "", protocolError(fmt.Sprintf("expected a password, got a %T", msg), "unexpected_message")
	}
}

// decide asks for the decision, rendering a device-code prompt the way
// the client can show it.
func (fe *frontend) decide(ctx context.Context, res config.Resource, st *startup, password string) (*auth.Decision, error) {
	app := st.params["application_name"]
	req := auth.Request{
		Protocol:    config.ProtocolPostgres,
		Resource:    res.Name,
		LoginName:   st.params["user"],
		Password:    password,
		ClientAddr:  fe.c.ClientAddr().Addr(),
		Application: app,
		ReceivedAt:  fe.passwordAt,
		Mode:        startupPromptMode(res.Prompt, st.params),
		Admin:       res.Name == config.ConsoleResource,
	}
	fe.mode = req.Mode

	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The decision itself is a handshake step; a prompt extends the
	// bound to the code's lifetime.
	timer := time.AfterFunc(fe.c.Limits().HandshakeTimeout, func() { cancel(errDecisionTimeout) })
	defer timer.Stop()

	var (
		mu                    sync.Mutex
		stopWatch, stopRemind func()
		shown                 atomic.Pointer[auth.DeviceCodePrompt]
	)
	if req.Mode == auth.PromptNotice {
		req.Prompt = func(p auth.DeviceCodePrompt) error {
			mu.Lock()
			defer mu.Unlock()
			timer.Reset(time.Until(p.ExpiresAt) + promptGrace)
			if err := fe.c.Await(); err != nil {
				return err
			}
			if err := fe.showPrompt(p); err != nil {
				return err
			}
			shown.Store(&p)
			if stopWatch == nil {
				stopWatch = fe.watchHangup(ctx, cancel)
				stopRemind = fe.remind(&shown, cancel)
			}
			return nil
		}
	}

	dec, err := fe.c.Decide(dctx, req)

	mu.Lock()
	if stopWatch != nil {
		stopRemind()
		stopWatch()
	}
	mu.Unlock()
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		// Our own bound or the client hanging up, not the decision's fault.
		return nil, fmt.Errorf("decision for %s: %w", req.LoginName, context.Cause(dctx))
	}
	return dec, err
}

// promptGrace lets a decision finish after its code's stated expiry
// before portcullis gives up on it.
const promptGrace = 30 * time.Second

// noticeBlind are application_name fragments of clients that do not show
// notices during a connection (JDBC-based tools, mostly); in prompt: auto
// they get error mode.
var noticeBlind = []string{"jdbc", "dbeaver", "datagrip", "jetbrains", "intellij", "squirrel", "dbvis", "metabase"}

func promptMode(setting, app string) auth.PromptMode {
	switch setting {
	case config.PromptNotice:
		return auth.PromptNotice
	case config.PromptError:
		return auth.PromptError
	}
	lower := strings.ToLower(app)
	for _, f := range noticeBlind {
		if strings.Contains(lower, f) {
			return auth.PromptError
		}
	}
	return auth.PromptNotice
}

// showPrompt tells the person where to sign in. libpq shows notices only
// after AuthenticationOk, so that goes first: the client then waits for
// ReadyForQuery, or a FATAL error if the sign-in fails.
func (fe *frontend) showPrompt(p auth.DeviceCodePrompt) error {
	var buf []byte
	buf = fe.appendAuthOK(buf)
	buf = appendNotice(buf, fmt.Sprintf("To sign in, open %s and enter the code %s", p.VerificationURL, p.UserCode))
	buf = appendNotice(buf, fmt.Sprintf("The code expires at %s (in %s). This connection waits until you have signed in.",
		clock(p.ExpiresAt), time.Until(p.ExpiresAt).Round(time.Minute)))
	return fe.write(buf)
}

// promptReminder is how often a client waiting for a sign-in is reminded
// of it.
const promptReminder = time.Minute

// remind repeats where to sign in, every fe.reminder until stop returns:
// a person who looked away sees the code again and how long is left, and
// a firewall does not drop the connection as idle during a long wait.
// shown is the prompt last shown. It runs on a timer, not a goroutine of
// its own: a sign-in waits minutes, and a burst of them would each park
// a stack for nothing. Once stop has returned, no reminder is written.
func (fe *frontend) remind(shown *atomic.Pointer[auth.DeviceCodePrompt], cancel context.CancelCauseFunc) (stop func()) {
	var (
		mu      sync.Mutex // held while a reminder is written
		stopped bool
		timer   *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	timer = time.AfterFunc(fe.reminder, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if p := shown.Load(); time.Until(p.ExpiresAt) > 0 { // else the decision ends with the code
			if err := fe.write(appendNotice(nil, reminderText(p))); err != nil {
				cancel(errClientGone)
				return
			}
		}
		timer.Reset(fe.reminder)
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer.Stop()
	}
}

// reminderText is a reminder of prompt p, with the time it has left.
func reminderText(p *auth.DeviceCodePrompt) string {
	left := time.Until(p.ExpiresAt)
	in := "less than a minute"
	if left >= time.Minute {
		in = left.Round(time.Minute).String()
	}
	return fmt.Sprintf("Still waiting for you to sign in: open %s and enter the code %s (it expires at %s, in %s).",
		p.VerificationURL, p.UserCode, clock(p.ExpiresAt), in)
}

// watchHangup cancels the wait for a decision if the client goes away:
// while waiting after AuthenticationOk a client sends nothing, so a read
// that ends means it hung up. What it reads (if the client does send
// something) stays in br.
func (fe *frontend) watchHangup(ctx context.Context, cancel context.CancelCauseFunc) (stop func()) {
	var stopping atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := fe.br.Peek(1)
		// A read ended by stop, or by the connection being ended, is not
		// the client hanging up.
		if err != nil && !stopping.Load() && ctx.Err() == nil {
			cancel(errClientGone)
		}
	}()
	return func() {
		stopping.Store(true)
		fe.conn.SetReadDeadline(time.Unix(1, 0))
		<-done
	}
}

// keepSessionKey shows the session key a sign-in just issued to a client
// whose login then fails at the backend (refused or unreachable), ahead
// of the error: the person comes back with it once the backend is
// fixed, without signing in again. Only where notices are shown; write
// errors are left to the error's own write.
func (fe *frontend) keepSessionKey(dec *auth.Decision) {
	if dec.SessionKey == "" || fe.mode != auth.PromptNotice || fe.c.Step() != nil {
		return
	}
	buf := fe.appendAuthOK(nil)
	buf = appendNotice(buf, sessionKeyNotice(dec.Identity, dec.SessionKey, dec.SessionKeyExpires))
	fe.write(buf)
}

// ready is what tells the client it is logged in: everything from
// AuthenticationOk to ReadyForQuery, for the relay to write in one go
// (proxy.Relay.Greeting).
func (fe *frontend) ready(dec *auth.Decision, be *backend, key proxy.CancelKey) ([]byte, error) {
	if err := fe.c.Step(); err != nil {
		return nil, err
	}
	var buf []byte
	buf = fe.appendAuthOK(buf)
	if dec.SessionKey != "" {
		buf = appendNotice(buf, sessionKeyNotice(dec.Identity, dec.SessionKey, dec.SessionKeyExpires))
	}
	for _, n := range be.notices {
		buf = appendMessage(buf, (*pgproto3.NoticeResponse)(&pgproto3.ErrorResponse{
			Severity: n.Severity, SeverityUnlocalized: n.SeverityUnlocalized, Code: n.Code,
			Message: n.Message, Detail: n.Detail, Hint: n.Hint,
		}))
	}
	names := make([]string, 0, len(be.params))
	for name := range be.params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		buf = appendMessage(buf, &pgproto3.ParameterStatus{Name: name, Value: be.params[name]})
	}
	buf = appendMessage(buf, &pgproto3.BackendKeyData{ProcessID: key.ProcessID, SecretKey: key.Secret})
	buf = appendMessage(buf, &pgproto3.ReadyForQuery{TxStatus: be.txStatus})
	return buf, nil
}

// fail tells the client why it is turned away, if anyone is left to
// tell, and returns err for the log.
func (fe *frontend) fail(ctx context.Context, err error) error {
	f := fatalFor(ctx, fe.c.ID(), err)
	if f == nil {
		return err
	}
	if f.reason != "" {
		fe.c.Refused(f.reason, err)
	}
	if werr := fe.c.FinalWrite(); werr == nil {
		fe.write(appendMessage(nil, f.response()))
	}
	return err
}

// goodbye is the splice's Relay.Goodbye: the FATAL that ends a session
// portcullis is closing (57P01), or whose backend connection broke (08006).
func goodbye(w io.Writer, cause error) error {
	_, err := w.Write(appendMessage(nil, ended(cause).response()))
	return err
}

func (fe *frontend) appendAuthOK(buf []byte) []byte {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if fe.authOK {
		return buf
	}
	fe.authOK = true
	return appendMessage(buf, &pgproto3.AuthenticationOk{})
}

func (fe *frontend) write(b []byte) error {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if _, err := fe.conn.Write(b); err != nil {
		return &clientIOError{err}
	}
	return nil
}

// pending returns what the client sent that no message read has consumed
// yet, for the splice to relay first.
func (fe *frontend) pending() []byte {
	n := fe.br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := fe.br.Peek(n)
	return append([]byte(nil), b...)
}

func appendNotice(buf []byte, msg string) []byte {
	return appendMessage(buf, &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: msg})
}

// appendMessage encodes msg after buf. Encoding fails only for a body
// over 1 GiB, which no message portcullis sends can reach; should it
// happen, the message is left out rather than sent truncated.
func appendMessage(buf []byte, msg pgproto3.BackendMessage) []byte {
	out, err := msg.Encode(buf)
	if err != nil {
		return buf
	}
	return out
}

// expectType refuses the next message, before anything decodes it,
// unless its type byte is one of types.
func (fe *frontend) expectType(expected string, types ...byte) error {
	b, err := fe.br.Peek(1)
	if err != nil {
		return &clientIOError{err}
	}
	for _, t := range types {
		if b[0] == t {
			return nil
		}
	}
	return protocolError(fmt.Sprintf("expected %s, got a message of type %q", expected, b[0]), "unexpected_message")
}

// malformed makes the codec's complaint about what the client sent (an
// unknown message type, a negative length, a missing terminator) a
// protocol violation; read failures and portcullis's own refusals pass
// through as they are.
func malformed(err error, expected string) error {
	var (
		io *clientIOError
		f  *fatal
	)
	if errors.As(err, &io) || errors.As(err, &f) {
		return err
	}
	return &fatal{code: codeProtocolViolation, message: "malformed message where " + expected + " was expected", reason: "malformed_message", err: err}
}

func protocolError(msg, reason string) *fatal {
	return &fatal{code: codeProtocolViolation, message: msg, reason: reason}
}

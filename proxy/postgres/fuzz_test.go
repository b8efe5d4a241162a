package postgres

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/hostile"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/proxy"
)

// The fuzz targets drive the real front door (proxy.Server and this
// package's Protocol) over Unix sockets, one connection per input: no
// ports to run out of, and a half-close tells the server the input is
// over. Run them with `go test -fuzz` as docs/fuzzing.md says; without
// -fuzz they run their seed corpora (testdata/fuzz/<name>) as tests.

// fuzzServer is portcullis's PostgreSQL front door with one listener per
// TLS setting. Its authorizer refuses every password and hands back what
// it was given: the real identity core answers most passwords by starting
// a device-code sign-in with Entra, which thousands of inputs a second
// would turn into thousands of pending sign-ins, and what is fuzzed here
// is the parsing in front of it (the catalogue test drives the real core).
type fuzzServer struct {
	srv       *proxy.Server
	socket    map[string]string // TLS setting → socket path
	clientTLS *tls.Config
	passwords chan string
}

// fuzzPasswordAuthorizer is the fuzz targets' stand-in for the identity core.
type fuzzPasswordAuthorizer struct{ passwords chan<- string }

func (a fuzzPasswordAuthorizer) Decide(_ context.Context, req auth.Request) (*auth.Decision, error) {
	select {
	case a.passwords <- req.Password:
	default:
	}
	return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "password refused", Err: errors.New("fuzz authorizer refuses everything")}
}

const (
	fuzzResource = "fuzzdb"
	fuzzUser     = "alice@contoso.example"
	// fuzzWait bounds one input's exchange: the server must answer and
	// close within it, or the input hangs the front door.
	fuzzWait = 10 * time.Second
)

var fuzzSettings = []string{config.ListenerTLSRequired, config.ListenerTLSOptional, config.ListenerTLSDisabled}

func newFuzzServer(f *testing.F) *fuzzServer {
	f.Helper()
	ca, err := testpg.NewCA("portcullis fuzz CA")
	if err != nil {
		f.Fatal(err)
	}
	cert, err := ca.TLSCertificate("localhost")
	if err != nil {
		f.Fatal(err)
	}
	cfg := &config.Config{
		Resources: []config.Resource{{
			Name: fuzzResource, Protocol: config.ProtocolPostgres, Address: "127.0.0.1:1", Database: "postgres",
			TLS: config.BackendTLS{Mode: config.BackendTLSDisable}, ConnectTimeout: time.Second,
		}},
		// A generous handshake bound: every input ends with a half-close,
		// so the server never has to wait for it.
		Proxy: config.Proxy{HandshakeTimeout: fuzzWait},
	}
	passwords := make(chan string, 1)
	srv, err := proxy.New(cfg, proxy.Deps{
		Authorizer: fuzzPasswordAuthorizer{passwords: passwords},
		Protocols:  []proxy.Protocol{New()},
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	if err != nil {
		f.Fatal(err)
	}
	fs := &fuzzServer{
		srv:       srv,
		socket:    map[string]string{},
		clientTLS: &tls.Config{RootCAs: ca.Pool, ServerName: "localhost"},
		passwords: passwords,
	}
	dir := f.TempDir()
	var served sync.WaitGroup
	for _, setting := range fuzzSettings {
		path := filepath.Join(dir, setting+".sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			f.Fatal(err)
		}
		fs.socket[setting] = path
		l := config.Listener{Name: "pg-" + setting, Protocol: config.ProtocolPostgres, TLS: setting, DefaultResource: fuzzResource}
		served.Add(1)
		go func() {
			defer served.Done()
			if err := srv.Serve(context.Background(), ln, l); err != nil {
				f.Errorf("Serve(%s): %v", setting, err)
			}
		}()
	}
	f.Cleanup(func() {
		srv.Close()
		served.Wait()
	})
	return fs
}

// dial connects to the listener with the given TLS setting.
func (fs *fuzzServer) dial(t *testing.T, setting string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", fs.socket[setting])
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(fuzzWait))
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// exchange sends data on c, says it is done, and returns everything the
// server sent until it closed the connection.
func (fs *fuzzServer) exchange(t *testing.T, c *net.UnixConn, data []byte) []byte {
	t.Helper()
	// The server may stop reading (and close) before it has all of
	// data; write alongside the read so that never blocks the test.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		if _, err := c.Write(data); err == nil {
			c.CloseWrite()
		}
	}()
	got := hostile.ReadToClose(t, c, fuzzWait)
	<-wrote
	return got
}

// checkClosed verifies the server forgot the connection once it closed it
// (it unregisters before it closes) and takes what reached the
// authorizer, if anything.
func (fs *fuzzServer) checkClosed(t *testing.T) (password string, decided bool) {
	t.Helper()
	if n := len(fs.srv.Sessions()); n > 0 {
		t.Fatalf("%d connections still registered after the client saw the close", n)
	}
	select {
	case p := <-fs.passwords:
		return p, true
	default:
		return "", false
	}
}

// fuzzMessages parses what a client may read before TLS or a login
// completes: a sequence of backend messages, each FATAL error last.
type fuzzMessages struct {
	errs     []*pgproto3.ErrorResponse
	npv      int
	cleartxt int
}

func parseBackend(t *testing.T, b []byte) fuzzMessages {
	t.Helper()
	var out fuzzMessages
	fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
	for {
		msg, err := fe.Receive()
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("the server sent something that is not a backend message (%v): %q", err, hostile.Excerpt(b))
		}
		if len(out.errs) > 0 {
			t.Fatalf("the server sent %T after a FATAL error", msg)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if m.Severity != "FATAL" || len(m.Code) != 5 || m.Message == "" {
				t.Fatalf("malformed error: %+v", m)
			}
			out.errs = append(out.errs, &pgproto3.ErrorResponse{Severity: m.Severity, Code: m.Code, Message: m.Message})
		case *pgproto3.NegotiateProtocolVersion:
			out.npv++
		case *pgproto3.AuthenticationCleartextPassword:
			out.cleartxt++
		default:
			t.Fatalf("unexpected %T before a login", msg)
		}
	}
}

func (m fuzzMessages) code() string {
	if len(m.errs) == 0 {
		return ""
	}
	return m.errs[0].Code
}

// FuzzStartup sends arbitrary bytes as the first thing on a connection
// that allows plaintext and TLS: whatever they are, the server must
// answer only with single-byte answers to encryption requests and well
// formed messages, end with at most one FATAL error, close within the
// deadline, and forget the connection.
func FuzzStartup(f *testing.F) {
	for _, seed := range fuzzStartupSeeds() {
		f.Add(seed)
	}
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fs.dial(t, config.ListenerTLSOptional)
		got := fs.exchange(t, c, data)
		password, decided := fs.checkClosed(t)

		// Answers to SSLRequest and GSSENCRequest come first, one byte
		// each; after 'S' the rest is TLS.
		for len(got) > 0 && got[0] == 'N' {
			got = got[1:]
		}
		if len(got) > 0 && got[0] == 'S' {
			return
		}
		// A TLS alert: the input opened a direct TLS handshake (a
		// ClientHello's first byte where a packet starts), which failed.
		if len(got) > 0 && got[0] == 0x15 {
			return
		}
		msgs := parseBackend(t, got)
		if msgs.npv > 1 || msgs.cleartxt > 1 {
			t.Fatalf("asked for a password %d times, negotiated %d times", msgs.cleartxt, msgs.npv)
		}
		if decided != (msgs.code() == codeInvalidPassword) {
			t.Fatalf("authorizer asked: %v, yet the answer was %q", decided, msgs.code())
		}
		if decided && msgs.cleartxt != 1 {
			t.Fatalf("a password %q reached the authorizer without a password request", password)
		}
		if code := msgs.code(); code != "" && !fuzzExpectedCodes[code] {
			t.Fatalf("unexpected SQLSTATE %s: %q", code, msgs.errs[0].Message)
		}
	})
}

// fuzzExpectedCodes are the SQLSTATEs the front door may answer hostile
// input with before any backend is involved.
var fuzzExpectedCodes = map[string]bool{
	codeProtocolViolation:    true,
	codeFeatureNotSupported:  true,
	codeInvalidAuthorization: true,
	codeInvalidPassword:      true,
	codeInvalidCatalog:       true,
}

func fuzzStartupSeeds() [][]byte {
	alice := []string{"user", fuzzUser, "database", fuzzResource}
	return [][]byte{
		badStartup(pgproto3.ProtocolVersion30, alice...),
		badStartup(pgproto3.ProtocolVersion32, append(alice, "_pq_.x", "1")...),
		badStartup(2 << 16),
		append(badPacket(be32(codeGSSEncRequest)), badStartup(pgproto3.ProtocolVersion30, alice...)...),
		badCancel(1, 2),
		append(badStartup(pgproto3.ProtocolVersion30, alice...), badMessage('p', cstr("hunter2"))...),
		{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00}, // a direct TLS ClientHello, cut short
	}
}

// FuzzNegotiation runs sequences of encryption requests, startups and
// cancel requests, with a real TLS handshake whenever the server says
// 'S', against a model of what PostgreSQL answers: each request at most
// once, none after TLS, plaintext startup only where the listener allows
// it.
//
// ops[0] picks the listener; each further byte is one step.
func FuzzNegotiation(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 0, 2},       // required: TLS, startup
		{1, 1, 0, 3},    // optional: GSS, TLS, startup 3.2
		{2, 0, 0},       // disabled: SSLRequest twice
		{2, 1, 1},       // GSSENCRequest twice
		{0, 2},          // plaintext startup where TLS is required
		{1, 0, 1},       // GSSENCRequest inside TLS
		{0, 0, 0},       // SSLRequest inside TLS
		{2, 0, 1, 0, 2}, // SSL, GSS, SSL
		{1, 4},          // a cancel request
		{0, 5},          // nothing more
	} {
		f.Add(seed)
	}
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) == 0 || len(ops) > 64 {
			return
		}
		setting := fuzzSettings[int(ops[0])%len(fuzzSettings)]
		raw := fs.dial(t, setting)
		n := &negotiation{t: t, fs: fs, raw: raw, conn: raw, setting: setting}
		for _, op := range ops[1:] {
			if done := n.step(op % 6); done {
				fs.checkClosed(t)
				return
			}
		}
		n.halfClose()
		n.expectSilentClose()
		fs.checkClosed(t)
	})
}

// negotiation is one FuzzNegotiation connection and the model's state.
type negotiation struct {
	t       *testing.T
	fs      *fuzzServer
	raw     *net.UnixConn
	conn    net.Conn
	setting string

	tls, sslSeen, gssSeen bool
	password              int
}

// step performs one op and reports whether the connection is over.
func (n *negotiation) step(op byte) bool {
	t := n.t
	switch op {
	case 0: // SSLRequest
		n.send(badPacket(be32(codeSSLRequest)))
		if n.tls || n.sslSeen {
			n.expectFatal(codeProtocolViolation)
			return true
		}
		n.sslSeen = true
		if n.setting == config.ListenerTLSDisabled {
			n.expectByte('N')
			return false
		}
		n.expectByte('S')
		tc := tls.Client(n.raw, n.fs.clientTLS)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake after S: %v", err)
		}
		n.conn, n.tls = tc, true
	case 1: // GSSENCRequest
		n.send(badPacket(be32(codeGSSEncRequest)))
		if n.tls || n.gssSeen {
			n.expectFatal(codeProtocolViolation)
			return true
		}
		n.gssSeen = true
		n.expectByte('N')
	case 2, 3: // StartupMessage 3.0, or 3.2 with a protocol option
		params := []string{"user", fuzzUser, "database", fuzzResource}
		version := uint32(pgproto3.ProtocolVersion30)
		if op == 3 {
			version = pgproto3.ProtocolVersion32
			params = append(params, "_pq_.fuzz", "on")
		}
		n.send(badStartup(version, params...))
		if !n.tls && n.setting == config.ListenerTLSRequired {
			n.expectFatal(codeInvalidAuthorization)
			return true
		}
		fe := pgproto3.NewFrontend(n.conn, io.Discard)
		if op == 3 {
			msg := n.receive(fe)
			npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
			if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 {
				t.Fatalf("want NegotiateProtocolVersion (0, [_pq_.fuzz]), got %#v", msg)
			}
		}
		if msg := n.receive(fe); !isCleartextRequest(msg) {
			t.Fatalf("want AuthenticationCleartextPassword, got %#v", msg)
		}
		n.password++
		want := fmt.Sprintf("pw-%d", n.password)
		n.send(badMessage('p', cstr(want)))
		msg := n.receive(fe)
		if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != codeInvalidPassword {
			t.Fatalf("want FATAL 28P01, got %#v", msg)
		}
		n.expectSilentClose()
		if got, ok := n.fs.checkClosed(t); !ok || got != want {
			t.Fatalf("the authorizer got %q (asked: %v), want %q", got, ok, want)
		}
		return true
	case 4: // CancelRequest for a key nobody was given
		n.send(badCancel(0x7eadbeef, 0x5eed))
		n.expectSilentClose()
		return true
	case 5: // the client says no more
		n.halfClose()
		n.expectSilentClose()
		return true
	}
	return false
}

func (n *negotiation) send(b []byte) {
	n.t.Helper()
	if _, err := n.conn.Write(b); err != nil {
		n.t.Fatalf("write: %v", err)
	}
}

func (n *negotiation) receive(fe *pgproto3.Frontend) pgproto3.BackendMessage {
	n.t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		n.t.Fatalf("receive: %v", err)
	}
	return msg
}

func (n *negotiation) expectByte(want byte) {
	n.t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(n.conn, b[:]); err != nil {
		n.t.Fatalf("want %q, got %v", want, err)
	}
	if b[0] != want {
		n.t.Fatalf("want %q, got %q", want, b[0])
	}
}

func (n *negotiation) expectFatal(code string) {
	n.t.Helper()
	got, err := io.ReadAll(n.conn)
	if err != nil && !hostile.Closed(err) {
		n.t.Fatalf("want FATAL %s and a close: %v", code, err)
	}
	msgs := parseBackend(n.t, got)
	if len(msgs.errs) != 1 || msgs.code() != code || msgs.npv+msgs.cleartxt > 0 {
		n.t.Fatalf("want only FATAL %s, got %q", code, hostile.Excerpt(got))
	}
}

func (n *negotiation) expectSilentClose() {
	n.t.Helper()
	got, err := io.ReadAll(n.conn)
	if err != nil && !hostile.Closed(err) {
		n.t.Fatalf("want a close: %v", err)
	}
	if len(got) > 0 {
		n.t.Fatalf("want a close without an answer, got %q", hostile.Excerpt(got))
	}
}

func (n *negotiation) halfClose() {
	if tc, ok := n.conn.(*tls.Conn); ok {
		tc.CloseWrite()
		return
	}
	n.raw.CloseWrite()
}

// FuzzCancelRequest sends cancel requests with any length field, any key
// and anything after them. The model: a length outside 8..max_startup_bytes
// is refused at once; a packet the stream ends inside is dropped without
// a word; a whole packet of any size but 16 is malformed; a 16-byte one
// carries a key nobody was given and is dropped without a word.
func FuzzCancelRequest(f *testing.F) {
	f.Add(uint32(16), uint32(1), uint32(2), []byte(nil))
	f.Add(uint32(12), uint32(1), uint32(2), []byte(nil))
	f.Add(uint32(48), uint32(1), uint32(2), make([]byte, 32))
	f.Add(uint32(0xffffffff), uint32(0), uint32(0), []byte("x"))
	f.Add(uint32(7), uint32(0x7fffffff), uint32(0xffffffff), []byte(nil))
	f.Add(uint32(16), uint32(1), uint32(2), badStartup(pgproto3.ProtocolVersion30, "user", fuzzUser))
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, length, pid, secret uint32, tail []byte) {
		data := append(be32(length), be32(codeCancelRequest)...)
		data = append(append(append(data, be32(pid)...), be32(secret)...), tail...)
		c := fs.dial(t, config.ListenerTLSRequired)
		got := fs.exchange(t, c, data)
		if _, decided := fs.checkClosed(t); decided {
			t.Fatal("a cancel request reached the authorizer")
		}
		msgs := parseBackend(t, got)

		var want string // "" means a close without an answer
		switch {
		case length < 8 || length > config.DefaultMaxStartupBytes:
			want = codeProtocolViolation
		case int(length) > len(data):
			want = ""
		case length != 16:
			want = codeProtocolViolation
		}
		if msgs.code() != want || msgs.npv+msgs.cleartxt > 0 || (want == "" && len(got) > 0) {
			t.Fatalf("length %d with %d bytes sent: got %q, want %q", length, len(data), hostile.Excerpt(got), want)
		}
	})
}

// FuzzPasswordMessage logs in up to the password request and then sends
// arbitrary bytes where the PasswordMessage goes. The model, from the
// protocol: any message but a PasswordMessage or a Terminate is FATAL
// 08P01 before it is decoded; a well-formed 'p' message hands exactly its
// text, up to the first NUL, to the authorizer (refused: 28P01); an empty
// Terminate ends the connection quietly; a message the stream ends inside
// is dropped quietly; anything else is FATAL 08P01, and nothing else ever
// reaches the authorizer.
func FuzzPasswordMessage(f *testing.F) {
	for _, seed := range [][]byte{
		badMessage('p', cstr("hunter2")),
		badMessage('p', cstr("pcx_"+strings.Repeat("a", 52)+":123456")),
		badMessage('p', []byte("no terminator")),
		badMessage('p', []byte("two\x00parts\x00")),
		badMessage('X', nil),
		badMessage('X', []byte{1}),
		badMessage('Q', cstr("select 1")),
		{'p', 0, 0, 0, 3},
		{'p', 0, 1, 0, 5},
		{'p', 0x7f, 0xff, 0xff, 0xff},
		{0, 0, 0, 0, 4},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{'p', 0, 0},
	} {
		f.Add(seed)
	}
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fs.dial(t, config.ListenerTLSDisabled)
		if _, err := c.Write(badStartup(pgproto3.ProtocolVersion30, "user", fuzzUser, "database", fuzzResource)); err != nil {
			t.Fatal(err)
		}
		var asked [9]byte // AuthenticationCleartextPassword
		if _, err := io.ReadFull(c, asked[:]); err != nil || asked[0] != 'R' || binary.BigEndian.Uint32(asked[5:]) != 3 {
			t.Fatalf("want AuthenticationCleartextPassword, got %q (%v)", asked, err)
		}
		got := fs.exchange(t, c, data)
		password, decided := fs.checkClosed(t)
		msgs := parseBackend(t, got)

		want, wantPassword := passwordModel(data)
		if msgs.code() != want || msgs.npv+msgs.cleartxt > 0 || (want == "" && len(got) > 0) {
			t.Fatalf("got %q, want %q", hostile.Excerpt(got), want)
		}
		if decided != (want == codeInvalidPassword) || password != wantPassword {
			t.Fatalf("the authorizer got %q (asked: %v), want %q", password, decided, wantPassword)
		}
	})
}

// passwordModel is what the front door must answer to data sent where a
// PasswordMessage goes: the SQLSTATE ("" for a quiet close) and the
// password the authorizer must get.
func passwordModel(data []byte) (code, password string) {
	if len(data) == 0 {
		return "", ""
	}
	typ := data[0]
	if typ != 'p' && typ != 'X' {
		return codeProtocolViolation, ""
	}
	if len(data) < 5 {
		return "", ""
	}
	body := int64(binary.BigEndian.Uint32(data[1:5])) - 4
	switch {
	case body < 0, body > maxPasswordBytes:
		return codeProtocolViolation, ""
	case int64(len(data)-5) < body:
		return "", ""
	}
	msg := data[5 : 5+body]
	if typ == 'X' {
		if len(msg) == 0 {
			return "", ""
		}
		return codeProtocolViolation, ""
	}
	if i := bytes.IndexByte(msg, 0); i >= 0 {
		return codeInvalidPassword, string(msg[:i])
	}
	return codeProtocolViolation, ""
}

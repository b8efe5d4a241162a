package mysql

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

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/hostile"
	"github.com/portcullisdb/portcullis/internal/testpg"
	"github.com/portcullisdb/portcullis/proxy"
)

// The fuzz targets drive the real MySQL front door (proxy.Server with
// this package's Protocol) over Unix sockets, one connection per input,
// as proxy/postgres's do: a real greeting, a real TLS handshake where the
// exchange needs one, then the fuzzed bytes, a half-close, and everything
// the server sends until it closes, checked against a model of the
// protocol. Without -fuzz they run their seeds (testdata/fuzz/<name>).

// fuzzServer is the MySQL front door with one listener per TLS setting.
// Its authorizer refuses every password and hands back what it was given
// (the real identity core would start a device-code sign-in with Entra
// for most inputs); for a client that can show a dialog it first shows a
// made-up sign-in prompt, so the dialog plugin's answer is read. A
// scramble (a client without TLS proving a session key) is handed back
// apart from passwords.
type fuzzServer struct {
	srv       *proxy.Server
	socket    map[string]string // TLS setting → socket path
	clientTLS *tls.Config
	passwords chan string
	scrambles chan []byte
	greetWith string // the plugin the greeting proposes
}

type fuzzAuthorizer struct {
	passwords chan<- string
	scrambles chan<- []byte
}

func (a fuzzAuthorizer) Decide(_ context.Context, req auth.Request) (*auth.Decision, error) {
	if req.Scramble != nil {
		select {
		case a.scrambles <- req.Scramble.Response:
		default:
		}
		return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "no session key matches", Err: errors.New("fuzz authorizer refuses everything")}
	}
	select {
	case a.passwords <- req.Password:
	default:
	}
	if req.Mode == auth.PromptNotice && req.Prompt != nil {
		p := auth.DeviceCodePrompt{VerificationURL: "https://login.example/device", UserCode: fuzzUserCode, ExpiresAt: time.Now().Add(time.Minute)}
		if err := req.Prompt(p); err != nil {
			return nil, err
		}
		return nil, &auth.Refusal{Reason: auth.ReasonDeclined, Message: "the sign-in was declined", Err: errors.New("fuzz authorizer declines every sign-in")}
	}
	return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "password refused", Err: errors.New("fuzz authorizer refuses everything")}
}

const (
	fuzzResource = "fuzzdb"
	// fuzzDialogResource prompts in notice mode: the dialog plugin for
	// MariaDB's client library.
	fuzzDialogResource = "fuzzdialog"
	fuzzUserCode       = "FUZZCODE1"
	fuzzPassword       = "sign me in"
	// fuzzWait bounds one input's exchange: the server must answer and
	// close within it.
	fuzzWait = 10 * time.Second
)

var fuzzSettings = []string{config.ListenerTLSRequired, config.ListenerTLSOptional, config.ListenerTLSDisabled}

func newFuzzServer(f *testing.F, opts ...Option) *fuzzServer {
	f.Helper()
	ca, err := testpg.NewCA("portcullis fuzz CA")
	if err != nil {
		f.Fatal(err)
	}
	cert, err := ca.TLSCertificate("localhost")
	if err != nil {
		f.Fatal(err)
	}
	resource := func(name, prompt string) config.Resource {
		return config.Resource{
			Name: name, Protocol: config.ProtocolMySQL, Address: "127.0.0.1:1", Database: "app", Prompt: prompt,
			TLS: config.BackendTLS{Mode: config.BackendTLSDisable}, ConnectTimeout: time.Second,
		}
	}
	cfg := &config.Config{
		Resources: []config.Resource{resource(fuzzResource, config.PromptError), resource(fuzzDialogResource, config.PromptNotice)},
		// Every input ends with a half-close, so the server never has to
		// wait for this bound.
		Proxy: config.Proxy{HandshakeTimeout: fuzzWait},
	}
	passwords, scrambles := make(chan string, 1), make(chan []byte, 1)
	proto := New(opts...)
	srv, err := proxy.New(cfg, proxy.Deps{
		Authorizer: fuzzAuthorizer{passwords: passwords, scrambles: scrambles},
		Protocols:  []proxy.Protocol{proto},
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
		scrambles: scrambles,
		greetWith: proto.greetPlugin(),
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
		l := config.Listener{Name: "my-" + setting, Protocol: config.ProtocolMySQL, TLS: setting, DefaultResource: fuzzResource}
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

// fuzzConn is one fuzz client connection, raw or over TLS.
type fuzzConn struct {
	t    *testing.T
	fs   *fuzzServer
	raw  *net.UnixConn
	conn net.Conn
}

// dial connects to the listener with the given TLS setting and reads the
// greeting.
func (fs *fuzzServer) dial(t *testing.T, setting string) *fuzzConn {
	t.Helper()
	c, err := net.Dial("unix", fs.socket[setting])
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(fuzzWait))
	t.Cleanup(func() { c.Close() })
	fc := &fuzzConn{t: t, fs: fs, raw: c.(*net.UnixConn), conn: c}
	seq, g := fc.read()
	if seq != 0 || len(g) == 0 || g[0] != gomysql.ClassicProtocolVersion {
		t.Fatalf("want a HandshakeV10 with sequence id 0, got %d %q", seq, hostile.Excerpt(g))
	}
	caps, plugin := greetingCaps(t, g)
	if (caps&gomysql.CLIENT_SSL != 0) != (setting != config.ListenerTLSDisabled) {
		t.Fatalf("listener %s: greeting capabilities %#x", setting, caps)
	}
	if plugin != fs.greetWith {
		t.Fatalf("greeting plugin %q, want %q", plugin, fs.greetWith)
	}
	return fc
}

// greetingCaps reads the capabilities and plugin of a HandshakeV10.
func greetingCaps(t *testing.T, g []byte) (uint32, string) {
	t.Helper()
	r := reader{b: g[1:]}
	r.nulString()      // server version
	r.bytes(4 + 8 + 1) // connection id, scramble part 1, filler
	lo := r.bytes(2)
	r.bytes(1 + 2) // collation, status
	hi := r.bytes(2)
	r.bytes(1 + 10 + 13) // scramble length, reserved, scramble part 2
	plugin := r.nulString()
	if r.err != nil || !r.done() {
		t.Fatalf("malformed greeting %q: %v", g, r.err)
	}
	return uint32(binary.LittleEndian.Uint16(lo)) | uint32(binary.LittleEndian.Uint16(hi))<<16, plugin
}

func (c *fuzzConn) read() (uint8, []byte) {
	c.t.Helper()
	var head [4]byte
	if _, err := io.ReadFull(c.conn, head[:]); err != nil {
		c.t.Fatalf("read a packet: %v", err)
	}
	p := make([]byte, int(head[0])|int(head[1])<<8|int(head[2])<<16)
	if _, err := io.ReadFull(c.conn, p); err != nil {
		c.t.Fatalf("read a packet: %v", err)
	}
	return head[3], p
}

func (c *fuzzConn) write(seq uint8, payload []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(appendPacket(nil, seq, payload)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// fuzzCaps are what the fuzz client says it can do.
const fuzzCaps = gomysql.CLIENT_PROTOCOL_41 | gomysql.CLIENT_SECURE_CONNECTION | gomysql.CLIENT_PLUGIN_AUTH |
	gomysql.CLIENT_CONNECT_WITH_DB | gomysql.CLIENT_LONG_PASSWORD | gomysql.CLIENT_TRANSACTIONS | gomysql.CLIENT_SSL

// startTLS sends the SSLRequest (sequence id 1) and does the TLS handshake.
func (c *fuzzConn) startTLS() {
	c.t.Helper()
	c.write(1, sslRequest(fuzzCaps))
	tc := tls.Client(c.raw, c.fs.clientTLS)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
}

// sslRequest is the 32 bytes of an SSLRequest.
func sslRequest(caps uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, caps|gomysql.CLIENT_SSL)
	b = binary.LittleEndian.AppendUint32(b, 1<<24)
	b = append(b, collationUTF8MB4GeneralCI)
	return append(b, make([]byte, 23)...)
}

// buildHandshakeResponse is a HandshakeResponse41 with caps, one-byte
// length-prefixed auth data, and connection attributes when attrs is not
// empty (in the order given: name, value, name, value, ...).
func buildHandshakeResponse(caps uint32, user string, authData []byte, database, plugin string, attrs ...string) []byte {
	if len(attrs) > 0 {
		caps |= gomysql.CLIENT_CONNECT_ATTRS
	}
	b := binary.LittleEndian.AppendUint32(nil, caps)
	b = binary.LittleEndian.AppendUint32(b, 1<<24)
	b = append(b, collationUTF8MB4GeneralCI)
	b = append(b, make([]byte, 23)...)
	b = append(append(b, user...), 0)
	b = append(b, byte(len(authData)))
	b = append(b, authData...)
	b = append(append(b, database...), 0)
	b = append(append(b, plugin...), 0)
	if len(attrs) > 0 {
		var kv []byte
		for _, s := range attrs {
			kv = gomysql.AppendLengthEncodedInteger(kv, uint64(len(s)))
			kv = append(kv, s...)
		}
		b = gomysql.AppendLengthEncodedInteger(b, uint64(len(kv)))
		b = append(b, kv...)
	}
	return b
}

// exchange sends data, half-closes, and returns everything the server
// sent until it closed the connection.
func (c *fuzzConn) exchange(data []byte) []byte {
	c.t.Helper()
	// The server may close before it has read all of data; write
	// alongside the read so that never blocks the test.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		if _, err := c.conn.Write(data); err == nil {
			if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
	}()
	got := hostile.ReadToClose(c.t, c.conn, fuzzWait)
	<-wrote
	return got
}

// ask writes data without ending the stream and reads everything up to
// the server's close: for a client that has sent a whole message and
// waits for the answer (the end of its stream would say it hung up).
func (c *fuzzConn) ask(data []byte) []byte {
	c.t.Helper()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		c.conn.Write(data)
	}()
	got := hostile.ReadToClose(c.t, c.conn, fuzzWait)
	<-wrote
	return got
}

// checkClosed verifies the server forgot the connection once it closed
// it, and takes what reached the authorizer, if anything.
func (fs *fuzzServer) checkClosed(t *testing.T) (password string, decided bool) {
	t.Helper()
	// The server unregisters a connection before closing it.
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

// takeScramble takes the scramble that reached the authorizer, if any.
func (fs *fuzzServer) takeScramble() (response []byte, decided bool) {
	select {
	case r := <-fs.scrambles:
		return r, true
	default:
		return nil, false
	}
}

// fuzzAnswer is what the server sent after the fuzzed bytes: nothing,
// or one ERR packet and the close.
type fuzzAnswer struct {
	seq   uint8
	code  uint16
	state string
	msg   string
}

// parseAnswer checks that b is nothing or exactly one whole ERR packet.
func parseAnswer(t *testing.T, b []byte) *fuzzAnswer {
	t.Helper()
	if len(b) == 0 {
		return nil
	}
	if len(b) < 4 {
		t.Fatalf("the server sent half a packet header: %q", b)
	}
	n := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if len(b) != 4+n {
		t.Fatalf("want exactly one packet, got %d bytes for a packet of %d: %q", len(b), n, hostile.Excerpt(b))
	}
	code, state, msg := errOf(b[4:])
	if code == 0 || msg == "" {
		t.Fatalf("want an ERR packet, got %q", hostile.Excerpt(b[4:]))
	}
	if strings.Contains(msg, fuzzPassword) {
		t.Fatalf("the error repeats the password: %q", msg)
	}
	return &fuzzAnswer{seq: b[3], code: code, state: state, msg: msg}
}

func (a *fuzzAnswer) String() string {
	if a == nil {
		return "a close without an answer"
	}
	return fmt.Sprintf("ERR %d (%s) seq %d %q", a.code, a.state, a.seq, a.msg)
}

// replyModel is how the front door must take data sent where the packet
// with sequence id seq goes: refused before it is buffered (code), a
// quiet close (code 0, whole false: the stream ended inside it), or a
// whole packet with its payload.
func replyModel(data []byte, seq uint8) (code uint16, payload []byte, whole bool) {
	if len(data) < 4 {
		return 0, nil, false
	}
	n := int(data[0]) | int(data[1])<<8 | int(data[2])<<16
	switch {
	case n > maxHandshakeBytes:
		return gomysql.ER_NET_PACKET_TOO_LARGE, nil, false
	case data[3] != seq:
		return gomysql.ER_NET_PACKETS_OUT_OF_ORDER, nil, false
	case len(data)-4 < n:
		return 0, nil, false
	}
	return 0, data[4 : 4+n], true
}

// checkAnswer compares what the server sent with the model: a framing
// refusal (08S01), a refused login (1045, 28000, numbered after the
// client's packet) or a quiet close.
func checkAnswer(t *testing.T, got *fuzzAnswer, code uint16, seq uint8) {
	t.Helper()
	switch {
	case code == 0 && got == nil:
		return
	case code == 0 || got == nil || got.code != code:
		t.Fatalf("got %s, want ERR %d", got, code)
	}
	want := stateCommLink
	if code == gomysql.ER_ACCESS_DENIED_ERROR {
		want = stateAccessDenied
		if got.seq != seq+1 {
			t.Fatalf("the refusal has sequence id %d after the client's %d", got.seq, seq)
		}
	}
	if got.state != want {
		t.Fatalf("ERR %d with SQLSTATE %s, want %s", got.code, got.state, want)
	}
}

// FuzzAuthSwitchReply answers the switch to mysql_clear_password (which
// every client gets under AskCleartext: the greeting proposes
// mysql_native_password) with arbitrary bytes. The model: a packet over 64 KiB or out of sequence is refused
// (1153, 1156) before it is buffered; a packet the stream ends inside is
// dropped quietly; a whole packet is the password, up to its first NUL,
// and exactly that reaches the authorizer (refused: 1045). Nothing else
// ever reaches it.
func FuzzAuthSwitchReply(f *testing.F) {
	for _, seed := range replySeeds() {
		f.Add(seed)
	}
	fs := newFuzzServer(f, AskCleartext())
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fs.dial(t, config.ListenerTLSRequired)
		c.startTLS()
		c.write(2, buildHandshakeResponse(fuzzCaps, aliceUPN, bytes.Repeat([]byte{7}, 20), fuzzResource, pluginNative))
		seq, req := c.read()
		if want := authSwitch(pluginClear, nil); seq != 3 || !bytes.Equal(req, want) {
			t.Fatalf("want the switch to %s with sequence id 3, got %d %q", pluginClear, seq, req)
		}
		got := parseAnswer(t, c.exchange(data))
		password, decided := fs.checkClosed(t)

		code, payload, whole := replyModel(data, 4)
		if whole {
			code = gomysql.ER_ACCESS_DENIED_ERROR
		}
		checkAnswer(t, got, code, 4)
		if decided != whole || password != string(trimNUL(payload)) {
			t.Fatalf("the authorizer got %q (asked: %v), want %q (asked: %v)", password, decided, trimNUL(payload), whole)
		}
	})
}

// FuzzFullAuthReply answers caching_sha2_password's "perform full
// authentication" with arbitrary bytes, over TLS. The model is
// FuzzAuthSwitchReply's, except that a request for the server's public
// key (the one byte 2) is refused (1045, TLS-only) without a decision:
// portcullis never sends a key to encrypt passwords with.
func FuzzFullAuthReply(f *testing.F) {
	for _, seed := range replySeeds() {
		f.Add(seed)
	}
	f.Add(appendPacket(nil, 4, []byte{sha2RequestPublicKey}))
	f.Add(appendPacket(nil, 4, []byte{sha2RequestPublicKey, 0}))
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fs.dial(t, config.ListenerTLSOptional)
		c.startTLS()
		c.write(2, buildHandshakeResponse(fuzzCaps, aliceUPN, bytes.Repeat([]byte{9}, 32), fuzzResource, pluginCachingSHA2))
		seq, req := c.read()
		if seq != 3 || !bytes.Equal(req, []byte{authMoreDataHeader, sha2PerformFullAuth}) {
			t.Fatalf("want AuthMoreData(perform full authentication) with sequence id 3, got %d %q", seq, req)
		}
		got := parseAnswer(t, c.exchange(data))
		password, decided := fs.checkClosed(t)

		code, payload, whole := replyModel(data, 4)
		keyRequest := whole && bytes.Equal(payload, []byte{sha2RequestPublicKey})
		if whole {
			code = gomysql.ER_ACCESS_DENIED_ERROR
		}
		checkAnswer(t, got, code, 4)
		if keyRequest && !strings.Contains(got.msg, "only over TLS") {
			t.Fatalf("a public-key request was answered %s", got)
		}
		wantDecided := whole && !keyRequest
		if decided != wantDecided || (decided && password != string(trimNUL(payload))) {
			t.Fatalf("the authorizer got %q (asked: %v), want %q (asked: %v)", password, decided, trimNUL(payload), wantDecided)
		}
	})
}

// FuzzDialogReply answers the dialog plugin's sign-in question (which a
// MariaDB command-line client gets on a resource that prompts in notice
// mode) with arbitrary bytes. The password was decided on before the
// question; the answer only says "Enter". The model: framing as in
// FuzzAuthSwitchReply; a whole packet, whatever it holds, lets the
// decision's verdict through (declined: 1045). A client that sent a whole
// packet waits for the answer without ending its stream (one that ends it
// has hung up: TestDialogAnsweredThenHungUp).
func FuzzDialogReply(f *testing.F) {
	for _, seed := range replySeeds() {
		f.Add(seed)
	}
	f.Add(appendPacket(nil, 4, []byte{0}))
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := fs.dial(t, config.ListenerTLSRequired)
		c.startTLS()
		c.write(2, buildHandshakeResponse(fuzzCaps, aliceUPN, append([]byte(fuzzPassword), 0), fuzzDialogResource, pluginClear,
			"_client_name", "libmariadb", "program_name", "mariadb"))
		seq, req := c.read()
		if seq != 3 || !bytes.HasPrefix(req, authSwitch(pluginDialog, nil)) || !bytes.Contains(req, []byte("enter the code "+fuzzUserCode)) {
			t.Fatalf("want the switch to the dialog with the sign-in question, got %d %q", seq, req)
		}
		code, _, whole := replyModel(data, 4)
		var raw []byte
		if whole {
			raw = c.ask(data)
		} else {
			raw = c.exchange(data)
		}
		got := parseAnswer(t, raw)
		password, decided := fs.checkClosed(t)
		if !decided || password != fuzzPassword {
			t.Fatalf("the authorizer got %q (asked: %v), want the handshake's password", password, decided)
		}

		if whole {
			code = gomysql.ER_ACCESS_DENIED_ERROR
		}
		checkAnswer(t, got, code, 4)
		if whole && !strings.Contains(got.msg, "declined") {
			t.Fatalf("the decision's verdict was not passed on: %s", got)
		}
	})
}

// FuzzHandshakeResponse sends arbitrary bytes where the client's answer
// to the greeting goes, on the listener picked by the first argument,
// without TLS. The model: framing as in FuzzAuthSwitchReply (sequence id
// 1); an SSLRequest starts TLS where the listener offers it (whatever
// follows is TLS, and the garbage the fuzzer sends there fails it) and is
// refused (1043) where it does not; any other whole packet is refused
// (1043, 1251, or 1045 because it came in the clear), except that where
// TLS is optional or off a caching_sha2_password response with a 32-byte
// scramble and a user name reaches the authorizer as that scramble
// (refused: 1045), whatever database it names: one that is no resource is
// a database on the listener's default resource. No password ever reaches
// the authorizer without TLS.
func FuzzHandshakeResponse(f *testing.F) {
	f.Add(uint8(0), appendPacket(nil, 1, buildHandshakeResponse(fuzzCaps&^gomysql.CLIENT_SSL, aliceUPN, []byte("x"), fuzzResource, pluginCachingSHA2)))
	f.Add(uint8(1), appendPacket(nil, 1, sslRequest(fuzzCaps)))
	f.Add(uint8(2), appendPacket(nil, 1, sslRequest(fuzzCaps)))
	f.Add(uint8(1), append(appendPacket(nil, 1, sslRequest(fuzzCaps)), 0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0))
	for listener := range uint8(3) {
		f.Add(listener, appendPacket(nil, 1, buildHandshakeResponse(fuzzCaps&^gomysql.CLIENT_SSL, aliceUPN, bytes.Repeat([]byte{5}, 32), fuzzResource, pluginCachingSHA2)))
	}
	f.Add(uint8(1), appendPacket(nil, 1, buildHandshakeResponse(fuzzCaps&^gomysql.CLIENT_SSL, aliceUPN, bytes.Repeat([]byte{5}, 32), "nowhere", pluginCachingSHA2)))
	f.Add(uint8(2), appendPacket(nil, 1, buildHandshakeResponse(fuzzCaps&^gomysql.CLIENT_SSL, "", bytes.Repeat([]byte{5}, 32), fuzzResource, pluginCachingSHA2)))
	f.Add(uint8(0), appendPacket(nil, 1, make([]byte, 40)))
	f.Add(uint8(0), appendPacket(nil, 0, make([]byte, 40)))
	f.Add(uint8(1), []byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add(uint8(2), []byte{0xff, 0xff, 0xff, 0x01})
	fs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, listener uint8, data []byte) {
		setting := fuzzSettings[int(listener)%len(fuzzSettings)]
		c := fs.dial(t, setting)
		raw := c.exchange(data)
		if _, decided := fs.checkClosed(t); decided {
			t.Fatal("a password reached the authorizer without TLS")
		}
		scramble, scrambled := fs.takeScramble()
		var wantScramble []byte
		code, payload, whole := replyModel(data, 1)
		if whole && isSSLRequest(payload) {
			if setting != config.ListenerTLSDisabled {
				// TLS has begun; what comes back (an alert, perhaps) is
				// TLS's, and the connection is closed.
				return
			}
			code = gomysql.ER_HANDSHAKE_ERROR
		} else if whole {
			code = gomysql.ER_ACCESS_DENIED_ERROR
			var r *refusal
			hs, err := parseHandshakeResponse(payload)
			switch {
			case errors.As(err, &r):
				code = r.code
			case err != nil:
				t.Fatalf("the handshake parser failed with %v, not a refusal", err)
			case setting != config.ListenerTLSRequired && hs.plugin != pluginCachingSHA2 && hs.caps&gomysql.CLIENT_PLUGIN_AUTH != 0:
				// Switched to caching_sha2_password: whatever follows in
				// data is the answer. Only the rule above, that no
				// password reaches the authorizer, applies.
				return
			case setting == config.ListenerTLSRequired || hs.plugin != pluginCachingSHA2 || len(hs.auth) != 32 || hs.user == "":
			default:
				wantScramble = hs.auth
			}
		}
		if scrambled != (wantScramble != nil) || !bytes.Equal(scramble, wantScramble) {
			t.Fatalf("the authorizer got the scramble %x (asked: %v), want %x", scramble, scrambled, wantScramble)
		}
		got := parseAnswer(t, raw)
		switch {
		case code == 0 && got == nil:
		case code == 0 || got == nil || got.code != code:
			t.Fatalf("got %s, want ERR %d", got, code)
		}
	})
}

// replySeeds are seeds for the replies after the handshake response
// (sequence id 4).
func replySeeds() [][]byte {
	return [][]byte{
		appendPacket(nil, 4, append([]byte(fuzzPassword), 0)),
		appendPacket(nil, 4, []byte("pcx_"+strings.Repeat("a", 52)+":123456")),
		appendPacket(nil, 4, []byte("no terminator")),
		appendPacket(nil, 4, []byte("two\x00parts\x00")),
		appendPacket(nil, 4, nil),
		appendPacket(nil, 3, []byte("stale sequence id\x00")),
		appendPacket(nil, 5, []byte("skipped a sequence id\x00")),
		append(appendPacket(nil, 4, []byte("a\x00")), appendPacket(nil, 5, []byte("b\x00"))...),
		{0xff, 0xff, 0xff, 4},
		{0x01, 0x00, 0x01, 4},
		{0x00, 0x00, 0x01, 4, 'x'},
		{5, 0, 0, 4, 'a', 'b'},
		{5, 0},
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	}
}

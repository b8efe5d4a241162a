package mysql

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
)

// rawClient speaks the MySQL protocol by hand, so tests can see the
// greeting, the OK's info string, and send what no real client would.
type rawClient struct {
	t      testing.TB
	conn   net.Conn
	br     *bufio.Reader
	seq    uint8
	connID uint32
	caps   uint32
	plugin string
	nonce  []byte // the greeting's 20-byte scramble
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	r := &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	g, err := r.read()
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if g[0] != 10 {
		t.Fatalf("greeting protocol %d, want 10", g[0])
	}
	rd := reader{b: g[1:]}
	rd.nulString()
	r.connID = binary.LittleEndian.Uint32(rd.bytes(4))
	part1 := rd.bytes(9)
	lo := binary.LittleEndian.Uint16(rd.bytes(2))
	rd.bytes(3)
	hi := binary.LittleEndian.Uint16(rd.bytes(2))
	rd.bytes(1 + 10)
	part2 := rd.bytes(13)
	r.caps = uint32(lo) | uint32(hi)<<16
	r.plugin = rd.nulString()
	if rd.err != nil {
		t.Fatalf("greeting: %v", rd.err)
	}
	r.nonce = append(append([]byte(nil), part1[:8]...), part2[:12]...)
	return r
}

func (r *rawClient) read() ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r.br, head[:]); err != nil {
		return nil, err
	}
	n := int(head[0]) | int(head[1])<<8 | int(head[2])<<16
	r.seq = head[3] + 1
	p := make([]byte, n)
	_, err := io.ReadFull(r.br, p)
	return p, err
}

func (r *rawClient) write(payload []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(appendPacket(nil, r.seq, payload)); err != nil {
		r.t.Fatalf("write: %v", err)
	}
	r.seq++
}

const rawCaps = gomysql.CLIENT_PROTOCOL_41 | gomysql.CLIENT_SECURE_CONNECTION | gomysql.CLIENT_PLUGIN_AUTH |
	gomysql.CLIENT_CONNECT_WITH_DB | gomysql.CLIENT_LONG_PASSWORD | gomysql.CLIENT_TRANSACTIONS | gomysql.CLIENT_MULTI_RESULTS

// startTLS sends an SSLRequest and starts TLS.
func (r *rawClient) startTLS(cfg *tls.Config) {
	r.t.Helper()
	req := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL)
	req = append(req, make([]byte, 28)...)
	req[8] = 45
	r.write(req)
	tc := tls.Client(r.conn, cfg)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS: %v", err)
	}
	r.conn = tc
	r.br = bufio.NewReader(tc)
}

// login logs in over TLS as user with password, answering
// caching_sha2_password's full authentication or a switch to
// mysql_clear_password with the password, and returns the final OK or
// ERR.
func (r *rawClient) login(cfg *tls.Config, user, password, database string) []byte {
	r.t.Helper()
	r.startTLS(cfg)
	resp := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL)
	resp = append(resp, make([]byte, 28)...)
	resp[8] = 45
	resp = append(resp, user...)
	resp = append(resp, 0)
	scramble := make([]byte, 32) // a caching_sha2 scramble; portcullis asks for the password anyway
	if password == "" {
		scramble = nil
	}
	resp = append(resp, byte(len(scramble)))
	resp = append(resp, scramble...)
	resp = append(resp, database...)
	resp = append(resp, 0)
	resp = append(resp, pluginCachingSHA2...)
	resp = append(resp, 0)
	r.write(resp)
	for {
		p, err := r.read()
		if err != nil {
			r.t.Fatalf("login: %v", err)
		}
		switch {
		case len(p) == 2 && p[0] == authMoreDataHeader && p[1] == sha2PerformFullAuth,
			len(p) > 0 && p[0] == gomysql.EOF_HEADER:
			r.write(append([]byte(password), 0))
		default:
			return p
		}
	}
}

// okInfo is the info string of an OK packet (no session tracking).
func okInfo(p []byte) string {
	rd := reader{b: p[1:]}
	rd.lenencBytes()
	rd.lenencBytes()
	rd.bytes(4)
	return string(rd.b)
}

// lenenc zero is a single 0 byte, which lenencBytes reads as an empty
// string; the OK's two counters are exactly that here.

// errOf decodes an ERR packet, or returns "" if p is not one.
func errOf(p []byte) (code uint16, state, msg string) {
	if len(p) < 9 || p[0] != gomysql.ERR_HEADER {
		return 0, "", ""
	}
	return binary.LittleEndian.Uint16(p[1:]), string(p[4:9]), string(p[9:])
}

var (
	codeInMessage = regexp.MustCompile(`enter the code (\S+),`)
	keyInInfo     = regexp.MustCompile(`session key as your password:\s+(\S+)`)
)

// signIn signs user in through retry mode as portcullis's raw client
// sees it: an ERR with the code, the approval, then reconnects until the
// sign-in is collected; it returns the session key from the OK's info
// (none when address grace let the reconnect in).
func (h *harness) signIn(user, approveAs string) (string, error) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	p := dialRaw(h.t, h.addr).login(h.tlsCfg, user, "sign me in", "app")
	code, state, msg := errOf(p)
	if code != gomysql.ER_ACCESS_DENIED_ERROR || state != stateAccessDenied || !codeInMessage.MatchString(msg) {
		return "", fmt.Errorf("first connection: want ERR 1045 (28000) with a code, got %d (%s) %q", code, state, msg)
	}
	if got, want := codeInMessage.FindStringSubmatch(msg)[1], h.approveNext(ctx, approveAs); got != want {
		return "", fmt.Errorf("the ERR shows code %s, the simulator issued %s", got, want)
	}
	for ctx.Err() == nil {
		p = dialRaw(h.t, h.addr).login(h.tlsCfg, user, "sign me in", "app")
		if p[0] == gomysql.OK_HEADER {
			m := keyInInfo.FindStringSubmatch(okInfo(p))
			switch {
			case m != nil:
				return m[1], nil
			case *h.cfg.Sessions.AddressGrace > 0:
				// The reconnect may have been let in by address grace,
				// which issues no key.
				return "", nil
			}
			return "", fmt.Errorf("no session key in the OK's info %q", okInfo(p))
		}
		if code, _, msg := errOf(p); code != gomysql.ER_ACCESS_DENIED_ERROR || !strings.Contains(msg, "Sign-in required") {
			return "", fmt.Errorf("reconnect: ERR %d %q", code, msg)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", errors.New("the sign-in was not collected in time")
}

// Retry mode with a hand-made client: the code in an ERR, the reconnect
// completes with a session key in the OK's info, and the key works.
// A client that answers the dialog's question before the sign-in is done
// and then hangs up ends the wait: the sign-in would be for nobody.
// (Answer and close are sent together, so portcullis always reads the
// answer before it sees the end of the stream.)
func TestDialogAnsweredThenHungUp(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := dialRaw(t, h.addr)
	r.startTLS(h.tlsCfg)
	lenenc := func(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }
	resp := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL|gomysql.CLIENT_CONNECT_ATTRS)
	resp = append(resp, make([]byte, 28)...)
	resp[8] = 45
	resp = append(append(resp, aliceUPN...), 0)
	resp = append(resp, 32)
	resp = append(resp, make([]byte, 32)...)
	resp = append(append(resp, "app"...), 0)
	resp = append(append(resp, pluginCachingSHA2...), 0)
	var attrs []byte
	for _, kv := range [][2]string{{"_client_name", "libmariadb"}, {"program_name", "mariadb"}} {
		attrs = lenenc(lenenc(attrs, kv[0]), kv[1])
	}
	resp = append(append(resp, byte(len(attrs))), attrs...)
	r.write(resp)
	for {
		p, err := r.read()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		if len(p) == 2 && p[0] == authMoreDataHeader && p[1] == sha2PerformFullAuth {
			r.write([]byte("sign me in\x00"))
			continue
		}
		if !bytes.HasPrefix(p, append([]byte{gomysql.EOF_HEADER}, pluginDialog+"\x00"...)) {
			t.Fatalf("got % x, want the dialog's question", p)
		}
		break
	}
	// Enter, pressed at once; then the client is gone.
	r.write([]byte{0})
	r.conn.Close()
	h.waitEvent("auth.failed", func(m map[string]any) bool { return m["reason"] == "canceled" })
}

func TestRetryModeRawClient(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	r := dialRaw(t, h.addr)
	if r.connID < idBase {
		t.Errorf("greeting connection id %d, want portcullis's own (>= %d)", r.connID, idBase)
	}
	if r.plugin != pluginCachingSHA2 {
		t.Errorf("greeting plugin %q, want %q", r.plugin, pluginCachingSHA2)
	}
	if r.caps&gomysql.CLIENT_COMPRESS != 0 || r.caps&gomysql.CLIENT_LOCAL_FILES != 0 || r.caps&gomysql.CLIENT_QUERY_ATTRIBUTES != 0 {
		t.Errorf("greeting offers capabilities that cannot be relayed: %#x", r.caps)
	}
	p := r.login(h.tlsCfg, aliceUPN, key, "app")
	if p[0] != gomysql.OK_HEADER {
		code, _, msg := errOf(p)
		t.Fatalf("login with the session key: ERR %d %q", code, msg)
	}
	if info := okInfo(p); info != "" {
		t.Errorf("a session-key login shows info %q, want none", info)
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })

	// COM_CHANGE_USER is refused and the session goes on.
	r.seq = 0
	r.write(append([]byte{gomysql.COM_CHANGE_USER}, "root\x00\x00app\x00"...))
	p, err = r.read()
	if err != nil {
		t.Fatal(err)
	}
	if code, _, msg := errOf(p); code != gomysql.ER_NOT_SUPPORTED_YET || !strings.Contains(msg, "COM_CHANGE_USER") {
		t.Fatalf("COM_CHANGE_USER answered %q, want ERR 1235", p)
	}
	if r.seq != 2 {
		t.Errorf("the refusal had sequence id %d, want 1", r.seq-1)
	}
	r.seq = 0
	r.write(append([]byte{gomysql.COM_QUERY}, "SELECT CURRENT_USER()"...))
	p, err = r.read()
	if err != nil || len(p) != 1 || p[0] != 1 {
		t.Fatalf("query after the refused COM_CHANGE_USER: %q, %v; want a one-column result", p, err)
	}
}

// Malformed handshakes get an ERR or a close, never a panic, and leave
// no goroutine or file descriptor behind.
func TestMalformedHandshakes(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	goroutines, fds := runtime.NumGoroutine(), openFDs()

	header := func(n int, seq byte) []byte { return []byte{byte(n), byte(n >> 8), byte(n >> 16), seq} }
	tests := []struct {
		name     string
		send     func(r *rawClient)
		wantCode uint16 // 0: a close without ERR is fine
	}{
		{name: "truncated header", send: func(r *rawClient) { r.conn.Write([]byte{40, 0}) }},
		{name: "truncated body", send: func(r *rawClient) { r.conn.Write(append(header(100, 1), make([]byte, 30)...)) }},
		{name: "oversized", send: func(r *rawClient) { r.conn.Write(header(1<<20, 1)) }, wantCode: gomysql.ER_NET_PACKET_TOO_LARGE},
		{name: "largest header", send: func(r *rawClient) { r.conn.Write(header(1<<24-1, 1)) }, wantCode: gomysql.ER_NET_PACKET_TOO_LARGE},
		{name: "out of sequence", send: func(r *rawClient) { r.conn.Write(append(header(32, 7), make([]byte, 32)...)) }, wantCode: gomysql.ER_NET_PACKETS_OUT_OF_ORDER},
		{name: "sequence zero again", send: func(r *rawClient) { r.conn.Write(append(header(32, 0), make([]byte, 32)...)) }, wantCode: gomysql.ER_NET_PACKETS_OUT_OF_ORDER},
		{name: "short response", send: func(r *rawClient) { r.conn.Write(append(header(5, 1), 1, 2, 3, 4, 5)) }, wantCode: gomysql.ER_HANDSHAKE_ERROR},
		{name: "no protocol 41", send: func(r *rawClient) { r.conn.Write(append(header(40, 1), make([]byte, 40)...)) }, wantCode: gomysql.ER_NOT_SUPPORTED_AUTH_MODE},
		{name: "no TLS", send: func(r *rawClient) {
			p := binary.LittleEndian.AppendUint32(nil, rawCaps)
			p = append(p, make([]byte, 28)...)
			p = append(p, "alice\x00\x00app\x00"...)
			r.conn.Write(appendPacket(nil, 1, p))
		}, wantCode: gomysql.ER_ACCESS_DENIED_ERROR},
		{name: "auth data past the end", send: func(r *rawClient) {
			r.startTLS(h.tlsCfg)
			p := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL|gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
			p = append(p, make([]byte, 28)...)
			p = append(p, "alice\x00"...)
			p = append(p, 0xfc, 0xff, 0xff)
			r.write(p)
		}, wantCode: gomysql.ER_HANDSHAKE_ERROR},
		{name: "plaintext after SSLRequest", send: func(r *rawClient) {
			req := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL)
			req = append(req, make([]byte, 28)...)
			r.conn.Write(append(appendPacket(nil, 1, req), appendPacket(nil, 2, []byte("hello"))...))
		}},
		{name: "garbage instead of TLS", send: func(r *rawClient) {
			req := binary.LittleEndian.AppendUint32(nil, rawCaps|gomysql.CLIENT_SSL)
			req = append(req, make([]byte, 28)...)
			r.conn.Write(appendPacket(nil, 1, req))
			r.conn.Write([]byte("this is not a TLS client hello, not at all"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, h.addr)
			tt.send(r)
			if c, ok := r.conn.(interface{ CloseWrite() error }); ok {
				c.CloseWrite()
			}
			p, err := r.read()
			for err == nil && p[0] != gomysql.ERR_HEADER {
				p, err = r.read()
			}
			if err == nil {
				code, state, msg := errOf(p)
				if tt.wantCode == 0 || code != tt.wantCode {
					t.Fatalf("ERR %d (%s) %q, want %d", code, state, msg, tt.wantCode)
				}
				if _, err := r.read(); err == nil {
					t.Error("the connection stayed open after the ERR")
				}
				return
			}
			if tt.wantCode != 0 {
				t.Fatalf("closed without an ERR (%v), want ERR %d", err, tt.wantCode)
			}
		})
	}

	// Every handler has returned: counts settle back where they were.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines || openFDs() > fds {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d (were %d), fds %d (were %d)\n%s", runtime.NumGoroutine(), goroutines, openFDs(), fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(h.events("conn.refused")); n == 0 {
		t.Error("no conn.refused event logged")
	}
}

// openFDs counts this process's descriptors other than epoll instances:
// an event loop that sleeps holds a duplicate of its own until it wakes,
// so their number follows the loops' state, not the connections.
func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || target != "anon_inode:[eventpoll]" {
			n++
		}
	}
	return n
}

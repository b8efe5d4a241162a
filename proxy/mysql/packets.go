package mysql

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/proxy"
)

// maxHandshakeBytes bounds every packet a client sends before the splice:
// room for a HandshakeResponse with connection attributes (MySQL caps
// them at 64 KiB) or an Entra access token as a password, not for a
// denial of service.
const maxHandshakeBytes = 64 << 10

// packetConn is portcullis's side of the client connection until the
// splice: it reads and writes whole MySQL packets, checks their sequence
// ids and sizes, and reads through a bufio.Reader whose unread bytes go
// to the backend first when the splice starts.
type packetConn struct {
	// conn is the client's connection, through proxy.PollSocket (so that
	// a login's packets cost what relayed ones do), then its TLS wrapper.
	conn net.Conn
	br   *bufio.Reader
	seq  uint8 // the sequence id of the next packet, either way
}

func newPacketConn(conn net.Conn) *packetConn {
	pc := &packetConn{}
	pc.use(conn)
	return pc
}

// use makes conn the connection to talk over, with a fresh read buffer.
func (pc *packetConn) use(conn net.Conn) {
	pc.conn = proxy.PollSocket(conn)
	pc.br = bufio.NewReaderSize(pc.conn, 4096)
}

// readPacket reads the next packet's payload. A packet longer than
// maxHandshakeBytes is refused before it is buffered; one whose sequence
// id is not the next is refused too.
func (pc *packetConn) readPacket() ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(pc.br, head[:]); err != nil {
		return nil, &clientIOError{err}
	}
	n := int(head[0]) | int(head[1])<<8 | int(head[2])<<16
	if n > maxHandshakeBytes {
		return nil, &refusal{code: gomysql.ER_NET_PACKET_TOO_LARGE, state: stateCommLink,
			message: fmt.Sprintf("packet of %d bytes during the handshake (the limit is %d)", n, maxHandshakeBytes), reason: "packet_too_large"}
	}
	if head[3] != pc.seq {
		return nil, &refusal{code: gomysql.ER_NET_PACKETS_OUT_OF_ORDER, state: stateCommLink,
			message: fmt.Sprintf("got packets out of order (sequence id %d, expected %d)", head[3], pc.seq), reason: "out_of_order"}
	}
	pc.seq++
	payload := make([]byte, n)
	if _, err := io.ReadFull(pc.br, payload); err != nil {
		return nil, &clientIOError{err}
	}
	return payload, nil
}

// writePacket sends payload as the next packet. Nothing portcullis sends
// comes near the 16 MiB a single packet can hold.
func (pc *packetConn) writePacket(payload []byte) error {
	return pc.writePackets(payload)
}

// writePackets sends several packets in one write.
func (pc *packetConn) writePackets(payloads ...[]byte) error {
	var buf []byte
	for _, p := range payloads {
		buf = appendPacket(buf, pc.seq, p)
		pc.seq++
	}
	if _, err := pc.conn.Write(buf); err != nil {
		return &clientIOError{err}
	}
	return nil
}

// pending returns what the client sent that no packet read has consumed
// yet, for the splice to relay first.
func (pc *packetConn) pending() []byte {
	n := pc.br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := pc.br.Peek(n)
	return bytes.Clone(b)
}

func appendPacket(buf []byte, seq uint8, payload []byte) []byte {
	n := len(payload)
	buf = append(buf, byte(n), byte(n>>8), byte(n>>16), seq)
	return append(buf, payload...)
}

// greeting is the HandshakeV10 portcullis opens every connection with.
type greeting struct {
	version  string
	connID   uint32
	scramble []byte // 20 bytes
	caps     uint32
	plugin   string
}

func (g *greeting) encode() []byte {
	b := []byte{gomysql.ClassicProtocolVersion}
	b = append(b, g.version...)
	b = append(b, 0)
	b = binary.LittleEndian.AppendUint32(b, g.connID)
	b = append(b, g.scramble[:8]...)
	b = append(b, 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(g.caps))
	b = append(b, collationUTF8MB4GeneralCI)
	b = binary.LittleEndian.AppendUint16(b, gomysql.SERVER_STATUS_AUTOCOMMIT)
	b = binary.LittleEndian.AppendUint16(b, uint16(g.caps>>16))
	b = append(b, byte(len(g.scramble)+1))
	// Ten reserved bytes; the last four are MariaDB's extended
	// capabilities, none of which portcullis offers.
	b = append(b, make([]byte, 10)...)
	b = append(b, g.scramble[8:]...)
	b = append(b, 0)
	b = append(b, g.plugin...)
	return append(b, 0)
}

// collationUTF8MB4GeneralCI is the collation id MySQL and MariaDB both
// know, announced as the server's.
const collationUTF8MB4GeneralCI = 45

// newScramble makes a 20-byte scramble of printable characters, as
// servers do (no NUL, which ends it on the wire).
func newScramble() ([]byte, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("scramble: %w", err)
	}
	for i := range b {
		b[i] = 0x21 + b[i]%(0x7e-0x21)
	}
	return b, nil
}

// handshakeResponse is what a client says in its HandshakeResponse41.
type handshakeResponse struct {
	caps      uint32
	collation uint8
	user      string
	auth      []byte
	database  string
	plugin    string
	attrs     map[string]string
}

// isSSLRequest reports whether p is an SSLRequest: the first 32 bytes of
// a HandshakeResponse41 with CLIENT_SSL, and nothing else.
func isSSLRequest(p []byte) bool {
	return len(p) == 32 && binary.LittleEndian.Uint32(p)&gomysql.CLIENT_SSL != 0
}

func badHandshake(what string) *refusal {
	return &refusal{code: gomysql.ER_HANDSHAKE_ERROR, state: stateCommLink, message: "bad handshake: " + what, reason: "bad_handshake"}
}

// parseHandshakeResponse decodes a HandshakeResponse41, checking every
// length against what is left.
func parseHandshakeResponse(p []byte) (*handshakeResponse, error) {
	if len(p) < 32 {
		return nil, badHandshake("the handshake response is too short")
	}
	hs := &handshakeResponse{caps: binary.LittleEndian.Uint32(p), collation: p[8]}
	if hs.caps&gomysql.CLIENT_PROTOCOL_41 == 0 {
		return nil, &refusal{code: gomysql.ER_NOT_SUPPORTED_AUTH_MODE, state: stateCommLink,
			message: "client does not support protocol 4.1; upgrade the client", reason: "old_protocol"}
	}
	r := reader{b: p[32:]}
	hs.user = r.nulString()
	switch {
	case hs.caps&gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0:
		hs.auth = r.lenencBytes()
	case hs.caps&gomysql.CLIENT_SECURE_CONNECTION != 0:
		hs.auth = r.bytes(int(r.byte1()))
	default:
		hs.auth = []byte(r.nulString())
	}
	if hs.caps&gomysql.CLIENT_CONNECT_WITH_DB != 0 && !r.done() {
		hs.database = r.nulString()
	}
	if hs.caps&gomysql.CLIENT_PLUGIN_AUTH != 0 && !r.done() {
		hs.plugin = r.nulString()
	}
	if hs.caps&gomysql.CLIENT_CONNECT_ATTRS != 0 && !r.done() {
		attrs := reader{b: r.lenencBytes()}
		hs.attrs = make(map[string]string)
		for !attrs.done() && attrs.err == nil {
			k := attrs.lenencBytes()
			v := attrs.lenencBytes()
			hs.attrs[string(k)] = string(v)
		}
		if attrs.err != nil {
			r.err = attrs.err
		}
	}
	if r.err != nil {
		return nil, badHandshake(r.err.Error())
	}
	return hs, nil
}

// reader decodes the fields of a packet; the first field that does not
// fit sets err and every later read returns nothing.
type reader struct {
	b   []byte
	err error
}

func (r *reader) done() bool { return len(r.b) == 0 }

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s runs past the end of the packet", what)
	}
	r.b = nil
}

func (r *reader) byte1() byte {
	if len(r.b) < 1 {
		r.fail("a length byte")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || n > len(r.b) {
		r.fail("a field")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) nulString() string {
	i := bytes.IndexByte(r.b, 0)
	if i < 0 {
		r.fail("a NUL-terminated string")
		return ""
	}
	v := string(r.b[:i])
	r.b = r.b[i+1:]
	return v
}

func (r *reader) lenencBytes() []byte {
	if len(r.b) == 0 {
		r.fail("a length-encoded string")
		return nil
	}
	// go-mysql's LengthEncodedInt trusts the packet to be long enough;
	// a client's is not trusted.
	var n uint64
	switch first := r.b[0]; {
	case first < 0xfb:
		n, r.b = uint64(first), r.b[1:]
	case first == 0xfc && len(r.b) >= 3:
		n, r.b = uint64(binary.LittleEndian.Uint16(r.b[1:])), r.b[3:]
	case first == 0xfd && len(r.b) >= 4:
		n, r.b = uint64(r.b[1])|uint64(r.b[2])<<8|uint64(r.b[3])<<16, r.b[4:]
	case first == 0xfe && len(r.b) >= 9:
		n, r.b = binary.LittleEndian.Uint64(r.b[1:]), r.b[9:]
	default:
		r.fail("a length-encoded string")
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("a length-encoded string")
		return nil
	}
	return r.bytes(int(n))
}

// okPacket is an OK packet after the login: no rows affected, the
// backend's status flags, and info (shown by few clients).
func okPacket(caps uint32, status uint16, info string) []byte {
	b := []byte{gomysql.OK_HEADER, 0, 0}
	b = binary.LittleEndian.AppendUint16(b, status&^gomysql.SERVER_SESSION_STATE_CHANGED)
	b = binary.LittleEndian.AppendUint16(b, 0)
	if caps&gomysql.CLIENT_SESSION_TRACK != 0 {
		if info == "" {
			return b
		}
		b = gomysql.AppendLengthEncodedInteger(b, uint64(len(info)))
	}
	return append(b, info...)
}

// errPacket is an ERR packet in the 4.1 format.
func errPacket(code uint16, state, message string) []byte {
	b := []byte{gomysql.ERR_HEADER}
	b = binary.LittleEndian.AppendUint16(b, code)
	b = append(b, '#')
	b = append(b, state...)
	return append(b, message...)
}

// authSwitch asks the client to continue with plugin, giving it data.
func authSwitch(plugin string, data []byte) []byte {
	b := []byte{gomysql.EOF_HEADER}
	b = append(b, plugin...)
	b = append(b, 0)
	return append(b, data...)
}

// Authentication plugins portcullis speaks to clients.
const (
	pluginCachingSHA2 = gomysql.AUTH_CACHING_SHA2_PASSWORD
	pluginClear       = gomysql.AUTH_CLEAR_PASSWORD
	pluginNative      = gomysql.AUTH_NATIVE_PASSWORD
	pluginDialog      = "dialog"
)

// caching_sha2_password's AuthMoreData codes.
const (
	sha2RequestPublicKey  = 2
	sha2PerformFullAuth   = gomysql.CACHE_SHA2_FULL_AUTH
	authMoreDataHeader    = gomysql.MORE_DATE_HEADER
	dialogOrdinary        = 2
	dialogLastQuestionBit = 1
)

// dialogQuestion is one question of the dialog plugin: a type byte
// (ordinary, echoing the answer; the low bit marks the last question)
// and the text the client prints as its prompt, NUL-terminated because
// the client prints it as a C string.
func dialogQuestion(text string, last bool) []byte {
	t := byte(dialogOrdinary)
	if last {
		t |= dialogLastQuestionBit
	}
	b := append([]byte{t}, text...)
	return append(b, 0)
}

// trimNUL drops the NUL clients put after a cleartext password or a
// dialog answer.
func trimNUL(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

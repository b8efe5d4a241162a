package postgres

import "encoding/binary"

// framer follows a stream of regular protocol messages (a type byte, then
// a 4-byte length that counts itself, then the body) so that a session can
// be ended between two messages. Every message after the startup phase has
// this shape, in both directions.
type framer struct {
	header  [5]byte
	have    int // header bytes of the next message seen so far
	body    int // body bytes of the current message still to come
	unknown bool
	goodbye bool // a Terminate has been passed on
}

// Relayed skips through p header by header; it never looks at a body.
func (f *framer) Relayed(p []byte) {
	for len(p) > 0 && !f.unknown {
		if f.body > 0 {
			k := min(f.body, len(p))
			f.body -= k
			p = p[k:]
			continue
		}
		k := copy(f.header[f.have:], p)
		f.have += k
		p = p[k:]
		if f.have < len(f.header) {
			return
		}
		f.have = 0
		n := int64(binary.BigEndian.Uint32(f.header[1:])) - 4
		if n < 0 {
			f.unknown = true
			return
		}
		f.goodbye = f.goodbye || (f.header[0] == 'X' && n == 0)
		f.body = int(n)
	}
}

// Pending is the number of bytes that finish the message in flight (its
// header first, if that is incomplete), 0 between messages, -1 if the
// stream broke the framing.
func (f *framer) Pending() int {
	switch {
	case f.unknown:
		return -1
	case f.have > 0:
		return len(f.header) - f.have
	}
	return f.body
}

// SaidGoodbye reports whether the stream carried a Terminate: on the
// client's stream, the client ending its session (proxy.GoodbyeFramer).
func (f *framer) SaidGoodbye() bool { return f.goodbye }

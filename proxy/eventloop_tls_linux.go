package proxy

import (
	"io"
	"net"
)

// A session whose client leg is TLS (a TLSConn) is relayed by the event
// loop too. crypto/tls never waits on the loop: the socket under it is a
// loopSocket, whose reads say "not yet" rather than wait, and whose writes
// keep what the socket will not take, as the loop does for a plain
// socket. crypto/tls keeps its state through an error that is a timeout,
// so a record that has only partly arrived is finished by a later Read.
// The loop reads records while crypto/tls holds more than the socket
// does, and hands their data on as it would a plain read; what it relays
// to the client goes through crypto/tls's Write, and only the sealed
// records wait as pending bytes. A session given back to its goroutine
// keeps its TLSConn: the sealed bytes still to be written go out ahead of
// anything else (recordConn.unsent).

// errNotYet is a loopSocket's read that finds nothing: a timeout, so
// crypto/tls keeps the record it is in the middle of.
var errNotYet net.Error = notYet{}

type notYet struct{}

func (notYet) Error() string   { return "event loop: nothing to read yet" }
func (notYet) Timeout() bool   { return true }
func (notYet) Temporary() bool { return true }

// loopSocket is the socket under a TLS client leg while its session is
// on an event loop. net.Conn is the connection it replaced, closed, for
// the methods crypto/tls calls besides Read and Write (deadlines), which
// then do nothing.
type loopSocket struct {
	net.Conn
	l  *eventLoop
	s  *loopSession
	fd int // -1 once the session has closed it
	// failed: a write failed; what it was to write is kept in the
	// session's pending bytes, for the goroutines to fail on.
	failed bool
}

func (c *loopSocket) Read(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, net.ErrClosed
	}
	n, ready, err := readSome(uintptr(c.fd), p)
	switch {
	case !ready:
		return 0, errNotYet
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write takes all of p: what the socket does not, and anything after a
// failed write, waits in the session's pending bytes for the client.
func (c *loopSocket) Write(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, net.ErrClosed
	}
	s := c.s
	if c.failed || len(s.pend[sideClient]) > 0 {
		s.add(sideClient, p)
		return len(p), nil
	}
	if !c.l.write(s, sideClient, p) {
		c.failed = true
	}
	return len(p), nil
}

// Close leaves the descriptor to the session, which closes it.
func (c *loopSocket) Close() error { return nil }

// maxRecordData is the most data a TLS record carries.
const maxRecordData = 16 << 10

// readTLS reads the client's records into the loop's buffer, as many as
// crypto/tls has in hand and the buffer has room for. ready and err are
// as readSome's (n == 0 and ready: the stream ended). The end of the
// stream, or an error, may also come right behind data: s.after then
// holds it, for once the n bytes are passed on.
func (l *eventLoop) readTLS(s *loopSession) (n int, ready bool, err error) {
	for {
		k, err := s.tls.Read(l.buf[n:])
		n += k
		switch {
		case err == errNotYet || (k == 0 && err == nil):
			return n, n > 0, nil
		case err != nil && n > 0:
			s.after = err
			return n, true, nil
		case err == io.EOF:
			return 0, true, nil
		case err != nil:
			return 0, true, err
		}
		if !s.tls.buffered() || len(l.buf)-n < maxRecordData {
			return n, true, nil
		}
	}
}

// writeTLS seals p for the client; false if writing the records failed.
// The client's framer and count are told of p, the data: the records
// crypto/tls makes of it are pending bytes like any other.
func (l *eventLoop) writeTLS(s *loopSession, p []byte) bool {
	if _, err := s.tls.Write(p); err != nil || s.sock.failed {
		return false
	}
	s.relayed(sideClient, p)
	return true
}

// sealed says side i is the TLS client leg: bytes written to its socket
// are records, already told to its framer as data.
func (s *loopSession) sealed(i int) bool { return i == sideClient && s.tls != nil }

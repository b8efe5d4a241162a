package proxy

import (
	"crypto/tls"
	"net"
	"sync"
	"syscall"
	"unsafe"
)

// TLSServer is tls.Server over conn, for a client leg that the splice
// relays later. early are bytes of the TLS stream that the protocol read
// ahead of the handshake (the start of a ClientHello); they are read
// before conn.
//
// crypto/tls reads its socket in whatever chunks it gets, keeps what it
// read beyond the record it needed, and does not say whether it holds
// anything: the relay would have to sit in a Read of the connection, with
// a buffer, for the whole of an idle session. Handing it one record at a
// time (recordConn) and watching how much each Read takes out (TLSConn)
// lets the relay know when it holds nothing, and wait for the socket
// itself with no buffer, as it does for a plain socket.
func TLSServer(conn net.Conn, early []byte, cfg *tls.Config) *TLSConn {
	rc := &recordConn{Conn: conn, rc: plainSocket(conn)}
	rc.readable = rc.look
	if len(early) > 0 {
		rc.stash = append([]byte(nil), early...)
	}
	return &TLSConn{Conn: tls.Server(rc, cfg), rec: rc, drained: true}
}

// TLSConn is a TLS server connection made by TLSServer.
type TLSConn struct {
	*tls.Conn
	rec *recordConn
	// drained: the last Read took out everything crypto/tls had
	// decrypted (it returned less than it was asked for). A handshake
	// leaves nothing decrypted: a record behind it waits in rec.
	drained bool
}

func (c *TLSConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.drained = n < len(p)
	return n, err
}

// holdsNothing says that crypto/tls holds no byte of the stream: neither
// data it decrypted nor any part of a record.
func (c *TLSConn) holdsNothing() bool { return c.drained && c.rec.between() }

// buffered says that the next Read has bytes to work on without the
// socket: data crypto/tls decrypted, or bytes of a record waiting in
// stash. (A record that has only partly arrived needs the socket.)
func (c *TLSConn) buffered() bool { return !c.drained || len(c.rec.stash) > 0 }

// tlsRecordHeaderLen is a TLS record's header: type, version, length.
const tlsRecordHeaderLen = 5

// recordConn is the socket under a TLS server connection. A Read returns
// bytes of one record at most: what the socket gave beyond the end of the
// record being read waits in stash for the next Read. So crypto/tls,
// which reads a record's header and then its body, never buffers more
// than the record it is reading, and once it has returned a record's data
// it holds nothing.
type recordConn struct {
	net.Conn
	rc    syscall.RawConn // the socket's descriptor; nil if conn is not a bare socket
	stash []byte          // read beyond the end of the current record
	hdr   [tlsRecordHeaderLen]byte
	got   int // header bytes of the current record seen
	left  int // body bytes of the current record still to come
	// waitReadable's state: look, made once as readable (a method value
	// allocates), whether it has looked, and where it peeks.
	readable func(fd uintptr) bool
	looked   bool
	peek     [1]byte
	// unsent are records sealed on an event loop that its socket had no
	// room for: they go out before anything written after them. wmu
	// orders writes: crypto/tls writes under a lock of its own, and the
	// relay flushes outside it.
	wmu    sync.Mutex
	unsent []byte
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// flush writes what is unsent.
func (c *recordConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *recordConn) flushLocked() error {
	if len(c.unsent) == 0 {
		return nil
	}
	if _, err := c.Conn.Write(c.unsent); err != nil {
		return err
	}
	c.unsent = nil
	return nil
}

func (c *recordConn) Read(p []byte) (int, error) {
	if len(c.stash) > 0 {
		n := c.upToRecordEnd(p[:copy(p, c.stash)])
		c.stash = c.stash[n:]
		if len(c.stash) == 0 {
			c.stash = nil
		}
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if k := c.upToRecordEnd(p[:n]); k < n {
		c.stash = append([]byte(nil), p[k:n]...)
		n = k
	}
	return n, err
}

// upToRecordEnd follows the record stream through b and returns how much
// of b belongs to the current record: up to its end if it ends in b,
// else all of b.
func (c *recordConn) upToRecordEnd(b []byte) int {
	i := 0
	if c.got < tlsRecordHeaderLen {
		k := copy(c.hdr[c.got:], b)
		c.got += k
		i += k
		if c.got < tlsRecordHeaderLen {
			return i
		}
		c.left = int(c.hdr[3])<<8 | int(c.hdr[4])
	}
	k := min(c.left, len(b)-i)
	c.left -= k
	i += k
	if c.left == 0 {
		c.got = 0 // the record is complete: the next begins after it
	}
	return i
}

// between says that nothing of a record has been handed to crypto/tls
// that it has not been handed whole, and nothing waits in stash.
func (c *recordConn) between() bool {
	return c.got == 0 && len(c.stash) == 0
}

// waitReadable waits, holding no buffer, until the socket has bytes or
// news of its end; it honours the read deadline, as a Read would. Only
// the first look peeks at the socket: the runtime's poller calls again
// once the socket has become readable, and should that be spurious, the
// Read that follows waits as any Read does.
func (c *recordConn) waitReadable() error {
	c.looked = false
	return c.rc.Read(c.readable)
}

func (c *recordConn) look(fd uintptr) bool {
	if c.looked {
		return true
	}
	c.looked = true
	for {
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), 1, syscall.MSG_PEEK, 0, 0)
		if errno != syscall.EINTR {
			return errno != syscall.EAGAIN
		}
	}
}

// tlsSource reads a TLS client leg served by TLSServer. While crypto/tls
// holds nothing it waits for the socket with no buffer; a Read into the
// relay's buffer, larger than any record's data (16 KiB), then takes out
// the whole of the record that came, and the buffer goes back once that
// is passed on.
type tlsSource struct {
	conn *TLSConn
	buf  *[]byte
}

func (s *tlsSource) next() ([]byte, error) {
	if s.buf == nil {
		if s.conn.holdsNothing() {
			if err := s.conn.rec.waitReadable(); err != nil {
				return nil, err
			}
		}
		s.buf = relayBuffers.Get().(*[]byte)
	}
	n, err := s.conn.Read(*s.buf)
	return (*s.buf)[:n], err
}

// passed gives the buffer back unless crypto/tls still holds decrypted
// data for the next Read.
func (s *tlsSource) passed() {
	if s.conn.drained && s.buf != nil {
		relayBuffers.Put(s.buf)
		s.buf = nil
	}
}

func (s *tlsSource) close() {
	if s.buf != nil {
		relayBuffers.Put(s.buf)
		s.buf = nil
	}
}

package proxy

import (
	"io"
	"net"
	"syscall"
)

// PollSocket returns c itself or, where c is a bare TCP or Unix socket, a
// net.Conn over the same descriptor that reads and writes it as the splice
// does: raw non-blocking system calls, waits through the runtime's poller,
// deadlines honoured. A protocol reads and writes its handshakes through
// it and builds TLS connections on it, so that a login's messages and a
// TLS session's records cost what a plain session's bytes do rather than
// the runtime's bookkeeping of a blocking system call (a wake-up of its
// monitor thread, a futex call and a context switch per message).
//
// The splice reads and writes a poll socket's descriptor itself, as it
// does a bare socket's, so a protocol hands it the poll socket as it is.
func PollSocket(c net.Conn) net.Conn {
	if _, ok := c.(*pollSocket); ok {
		return c
	}
	rc := plainSocket(c)
	if rc == nil {
		return c
	}
	s := &pollSocket{Conn: c, rc: rc, sink: rawSink{rc: rc}}
	s.readFn = s.read
	s.sink.writeFn = s.sink.writeSome
	return s
}

// pollSocket is a bare socket read into the caller's buffer and written
// through a rawSink. It buffers nothing of its own. A read and a write may run at once, as on any
// net.Conn: each has state of its own. Everything else (deadlines,
// addresses, Close) is the socket's own.
type pollSocket struct {
	net.Conn
	rc     syscall.RawConn
	readFn func(fd uintptr) bool // s.read, made once
	p      []byte                // the buffer of the read in progress
	n      int
	err    error
	sink   rawSink
}

func (s *pollSocket) read(fd uintptr) bool {
	var ready bool
	s.n, ready, s.err = readSome(fd, s.p)
	return ready
}

// Read implements io.Reader.
func (s *pollSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.p = p
	err := s.rc.Read(s.readFn)
	s.p = nil
	switch {
	case err != nil:
		return 0, err // deadline, or closed
	case s.err != nil:
		return 0, s.err // the caller says which call failed
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

// Write implements io.Writer.
func (s *pollSocket) Write(p []byte) (int, error) {
	if err := s.sink.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseWrite half-closes the socket, as the splice does when one side is
// done.
func (s *pollSocket) CloseWrite() error {
	if cw, ok := s.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return nil
}

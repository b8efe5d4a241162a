package mysql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// clientStream is the client connection as the splice sees it. Writes
// (the backend's answers) pass through, followed packet by packet. Reads
// (the client's commands) pass through too, except for two commands it
// spots by their first byte at the start of a command (sequence id 0),
// without decoding anything else:
//
//   - COM_CHANGE_USER never reaches the backend: portcullis answers it
//     with an ERR and the session goes on as who it was, since switching
//     identity would bypass the sign-in.
//   - A short COM_QUERY "KILL [QUERY|CONNECTION] <id>" whose id is a
//     connection id portcullis gave out (the one in its greeting, which
//     the mysql command line uses for Ctrl-C) is carried out by portcullis
//     against that session's backend thread, if it belongs to the same
//     person; any other KILL goes to the backend unchanged.
type clientStream struct {
	net.Conn
	// io reads and writes Conn's socket as the splice would its own
	// (proxy.SocketIO); nil means Conn itself.
	io      io.ReadWriter
	kills   killer
	pending []byte // read from the client, not yet handed on
	left    int    // bytes of the packet in flight still to hand on
	drop    int    // bytes of a refused packet still to discard
	rerr    error  // a read error to report once pending is empty

	wmu  sync.Mutex
	down packetFramer // follows what was written to the client
}

// killer carries out a KILL naming a portcullis connection id.
type killer interface {
	// kill reports whether id is portcullis's; if so, reply is the packet
	// to send the backend instead (nil: none), or errReply the ERR to
	// answer the client with.
	kill(ctx context.Context, id uint32, connection bool) (handled bool, replace []byte, errReply []byte)
}

// killCandidateMax bounds the COM_QUERY packets looked at for KILL: the
// statement is short.
const killCandidateMax = 256

var killStatement = regexp.MustCompile(`(?is)^\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(QUERY\s+|CONNECTION\s+)?(\d{1,10})\s*;?\s*$`)

func (s *clientStream) Read(p []byte) (int, error) {
	for {
		if len(p) == 0 {
			return 0, nil
		}
		switch {
		case s.drop > 0:
			if len(s.pending) > 0 {
				k := min(s.drop, len(s.pending))
				s.pending, s.drop = s.pending[k:], s.drop-k
				continue
			}
			if err := s.fill(1); err != nil {
				return 0, err
			}
			continue
		case s.left > 0:
			if len(s.pending) == 0 {
				if s.rerr != nil {
					return 0, s.rerr
				}
				// The body of a packet in flight goes straight through.
				n, err := s.rw().Read(p[:min(len(p), s.left)])
				s.left -= n
				if n > 0 {
					return n, nil
				}
				return 0, err
			}
			k := copy(p[:min(len(p), s.left)], s.pending)
			s.pending, s.left = s.pending[k:], s.left-k
			return k, nil
		}

		// At the start of a packet: its header and first byte decide.
		if err := s.fill(4); err != nil {
			if len(s.pending) > 0 {
				// A partial header before the end: hand it on as it is.
				s.left = len(s.pending)
				continue
			}
			return 0, err
		}
		n := int(s.pending[0]) | int(s.pending[1])<<8 | int(s.pending[2])<<16
		seq := s.pending[3]
		if seq != 0 || n == 0 {
			s.left = 4 + n
			continue
		}
		if err := s.fill(5); err != nil {
			s.left = len(s.pending)
			continue
		}
		switch cmd := s.pending[4]; {
		case cmd == gomysql.COM_CHANGE_USER:
			s.drop = 4 + n
			if err := s.answer(errPacket(gomysql.ER_NOT_SUPPORTED_YET, stateSyntaxAccess,
				"portcullis does not support COM_CHANGE_USER: this connection stays signed in as it is; open a new connection to sign in as someone else")); err != nil {
				return 0, err
			}
			continue
		case cmd == gomysql.COM_QUERY && n <= killCandidateMax && s.kills != nil:
			if err := s.fill(4 + n); err != nil {
				s.left = len(s.pending)
				continue
			}
			if replaced, err := s.interceptKill(n); err != nil {
				return 0, err
			} else if replaced {
				continue
			}
		}
		s.left = 4 + n
	}
}

// interceptKill handles a KILL of a portcullis connection id in the
// COM_QUERY of n bytes at the front of pending.
func (s *clientStream) interceptKill(n int) (bool, error) {
	m := killStatement.FindSubmatch(s.pending[5 : 4+n])
	if m == nil {
		return false, nil
	}
	id, err := strconv.ParseUint(string(m[2]), 10, 32)
	if err != nil {
		return false, nil
	}
	connection := len(m[1]) > 0 && (m[1][0] == 'C' || m[1][0] == 'c')
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	handled, replace, errReply := s.kills.kill(ctx, uint32(id), connection)
	if !handled {
		return false, nil
	}
	rest := s.pending[4+n:]
	if replace != nil {
		// The backend answers the replacement, with its own status.
		s.pending = append(appendPacket(nil, 0, replace), rest...)
		s.left = len(s.pending) - len(rest)
		return true, nil
	}
	s.pending = rest
	return true, s.answer(errReply)
}

// killTimeout bounds carrying out an intercepted KILL.
const killTimeout = 10 * time.Second

// fill reads until pending holds at least n bytes; a read error is kept
// for later when some bytes did arrive.
func (s *clientStream) fill(n int) error {
	for len(s.pending) < n {
		if s.rerr != nil {
			return s.rerr
		}
		buf := make([]byte, max(512, n-len(s.pending)))
		k, err := s.rw().Read(buf)
		s.pending = append(s.pending, buf[:k]...)
		if err != nil {
			s.rerr = err
		}
	}
	return nil
}

// errPendingResponse ends a session whose client sent a command that
// portcullis must answer itself while the backend was still answering an
// earlier one: the two answers cannot be put in order.
var errPendingResponse = errors.New("client -> backend: a command portcullis answers arrived while a response was in flight")

// answer sends the client portcullis's own reply to the command just
// read (sequence id 1), between two of the backend's packets.
func (s *clientStream) answer(payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.down.Pending() != 0 {
		return errPendingResponse
	}
	if _, err := s.rw().Write(appendPacket(nil, 1, payload)); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	return nil
}

func (s *clientStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.rw().Write(p)
	s.down.Relayed(p[:n])
	return n, err
}

// rw is what the client's bytes are read from and written to.
func (s *clientStream) rw() io.ReadWriter {
	if s.io != nil {
		return s.io
	}
	return s.Conn
}

// CloseWrite half-closes the client connection, as the splice does when
// the backend is done.
func (s *clientStream) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// packetFramer follows a stream of MySQL packets (3-byte length, 1-byte
// sequence id, body) so a session can be ended between two of them. It
// never looks at a body. last, when set, records the newest sequence id
// seen, shared by both directions.
type packetFramer struct {
	header [4]byte
	have   int
	body   int
	last   *atomic.Uint32
}

func (f *packetFramer) Relayed(p []byte) {
	for len(p) > 0 {
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
		f.body = int(f.header[0]) | int(f.header[1])<<8 | int(f.header[2])<<16
		if f.last != nil {
			f.last.Store(uint32(f.header[3]))
		}
	}
}

func (f *packetFramer) Pending() int {
	if f.have > 0 {
		return len(f.header) - f.have
	}
	return f.body
}

// goodbye is the splice's Relay.Goodbye: the ERR that ends a session
// portcullis is closing, numbered to follow the last packet of the
// exchange in flight.
func goodbye(last *atomic.Uint32) func(io.Writer, error) error {
	return func(w io.Writer, cause error) error {
		seq := uint8(last.Load() + 1)
		_, err := w.Write(appendPacket(nil, seq, ended(cause).packet()))
		return err
	}
}

// terminate is the splice's Relay.Terminate: COM_QUIT to the backend.
func terminate(w io.Writer) error {
	_, err := w.Write(appendPacket(nil, 0, []byte{gomysql.COM_QUIT}))
	return err
}

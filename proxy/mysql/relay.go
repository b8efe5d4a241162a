package mysql

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/proxy"
)

// commandFilter is the splice's filter of what the client sends (a
// proxy.ClientFilter). Everything passes through unchanged, read into the
// splice's own buffer and handed on whole, except two commands it spots
// by their first byte at the start of a command (sequence id 0), without
// decoding anything else:
//
//   - COM_CHANGE_USER never reaches the backend: portcullis answers it
//     with an ERR and the session goes on as who it was, since switching
//     identity would bypass the sign-in.
//   - A short COM_QUERY "KILL [QUERY|CONNECTION] <id>" whose id is a
//     connection id portcullis gave out (the one in its greeting, which
//     the mysql command line uses for Ctrl-C) is carried out by portcullis
//     against that session's backend thread, if it belongs to the same
//     person; any other KILL goes to the backend unchanged.
//
// Only the start of a packet that a chunk cuts before its header, its
// command byte or (for a candidate KILL) its end is copied, to be looked
// at with the next chunk. Before acting on either command, it offers the
// rest of the chunk to FilterOutput.HandOff, so that on the event loop
// the session's goroutine answers it and carries out the KILL.
type commandFilter struct {
	kills killer
	held  []byte // the cut-off start of a packet, not yet passed on
	left  int    // bytes of the packet in flight still to pass on
	drop  int    // bytes of a refused packet still to discard
	// ended: the client killed its own connection, and nothing it sent
	// after the KILL goes to the backend, as none would run on a server.
	ended bool
}

// killer carries out a KILL naming a portcullis connection id.
type killer interface {
	// kill reports whether id is portcullis's; if so, replace is the
	// packet to send the backend instead, or errReply the ERR to answer
	// the client with, or neither when the session is ending because of
	// it (a KILL CONNECTION of its own id).
	kill(ctx context.Context, id uint32, connection bool) (handled bool, replace []byte, errReply []byte)
}

// killCandidateMax bounds the COM_QUERY packets looked at for KILL: the
// statement is short.
const killCandidateMax = 256

var killStatement = regexp.MustCompile(`(?is)^\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(QUERY\s+|CONNECTION\s+)?(\d{1,10})\s*;?\s*$`)

// Filter passes p on, answering or replacing the commands it watches.
func (f *commandFilter) Filter(p []byte, out proxy.FilterOutput) error {
	if f.ended {
		return nil
	}
	if len(f.held) > 0 {
		p = append(f.held, p...)
		f.held = nil
	}
	from := 0 // the start of the run of bytes passed on as they are
	for i := 0; i < len(p); {
		switch {
		case f.drop > 0:
			if err := pass(out, p[from:i]); err != nil {
				return err
			}
			k := min(f.drop, len(p)-i)
			i, f.drop = i+k, f.drop-k
			from = i
			continue
		case f.left > 0:
			k := min(f.left, len(p)-i)
			i, f.left = i+k, f.left-k
			continue
		}

		// At the start of a packet: its header and first byte decide.
		rest := p[i:]
		if len(rest) < 4 {
			return f.hold(out, p[from:i], rest)
		}
		n := int(rest[0]) | int(rest[1])<<8 | int(rest[2])<<16
		if rest[3] != 0 || n == 0 {
			f.left = 4 + n
			continue
		}
		if len(rest) < 5 {
			return f.hold(out, p[from:i], rest)
		}
		switch cmd := rest[4]; {
		case cmd == gomysql.COM_CHANGE_USER:
			if err := pass(out, p[from:i]); err != nil {
				return err
			}
			if out.HandOff(rest) {
				return nil
			}
			if err := answer(out, "COM_CHANGE_USER", errPacket(gomysql.ER_NOT_SUPPORTED_YET, stateSyntaxAccess,
				"portcullis does not support COM_CHANGE_USER: this connection stays signed in as it is; open a new connection to sign in as someone else")); err != nil {
				return err
			}
			f.drop = 4 + n
			from = i
			continue
		case cmd == gomysql.COM_QUERY && n <= killCandidateMax && f.kills != nil && mayBeKill(rest[5:min(len(rest), 4+n)]):
			if len(rest) < 4+n {
				return f.hold(out, p[from:i], rest)
			}
			id, connection, ok := killTarget(rest[5 : 4+n])
			if !ok {
				f.left = 4 + n
				continue
			}
			if err := pass(out, p[from:i]); err != nil {
				return err
			}
			from = i
			if out.HandOff(rest) {
				return nil
			}
			replaced, err := f.intercept(out, id, connection)
			if err != nil || f.ended {
				return err
			}
			if replaced {
				i += 4 + n
				from = i
				continue
			}
		}
		f.left = 4 + n
	}
	return pass(out, p[from:])
}

// End passes on a packet the client cut off before it closed, as it is.
func (f *commandFilter) End(out proxy.FilterOutput) error {
	held := f.held
	f.held = nil
	return pass(out, held)
}

// hold passes on before and keeps a copy of the cut-off packet start.
func (f *commandFilter) hold(out proxy.FilterOutput, before, start []byte) error {
	f.held = append([]byte(nil), start...)
	return pass(out, before)
}

func pass(out proxy.FilterOutput, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	return out.ToBackend(p)
}

// answer sends the client portcullis's own reply (sequence id 1) to the
// command just read.
func answer(out proxy.FilterOutput, command string, payload []byte) error {
	err := out.ToClient(appendPacket(nil, 1, payload))
	if errors.Is(err, proxy.ErrBackendMidMessage) {
		return fmt.Errorf("client -> backend: %s arrived while the backend was answering an earlier command, so the two answers cannot be put in order: %w", command, err)
	}
	return err
}

// mayBeKill is a first look at the start of a COM_QUERY's statement, so
// that only a statement starting with K goes to the regular expression.
// Nothing but white space so far is undecided: true.
func mayBeKill(sql []byte) bool {
	for _, c := range sql {
		switch c {
		case ' ', '\t', '\r', '\n', '\f', '\v':
			continue
		}
		return c|0x20 == 'k'
	}
	return true
}

// killTarget reads sql, a COM_QUERY's statement, as "KILL [QUERY |
// CONNECTION] <id>": ok if it is one.
func killTarget(sql []byte) (id uint32, connection, ok bool) {
	m := killStatement.FindSubmatch(sql)
	if m == nil {
		return 0, false, false
	}
	n, err := strconv.ParseUint(string(m[2]), 10, 32)
	if err != nil {
		return 0, false, false
	}
	// Without QUERY, KILL ends the connection (CONNECTION is the default).
	return uint32(n), len(m[1]) == 0 || m[1][0] == 'C' || m[1][0] == 'c', true
}

// intercept carries out a KILL of id if id is a portcullis connection id,
// sending the backend the replacement or the client portcullis's answer.
// It reports whether it did; if not, the KILL goes to the backend as it
// is.
func (f *commandFilter) intercept(out proxy.FilterOutput, id uint32, connection bool) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	handled, replace, errReply := f.kills.kill(ctx, id, connection)
	switch {
	case !handled:
		return false, nil
	case replace == nil && errReply == nil:
		// The session itself ends; its goodbye is the answer.
		f.ended = true
		return true, nil
	case replace != nil:
		// The backend answers the replacement, with its own status.
		return true, out.ToBackend(appendPacket(nil, 0, replace))
	}
	return true, answer(out, "KILL", errReply)
}

// killTimeout bounds carrying out an intercepted KILL.
const killTimeout = 10 * time.Second

// packetFramer follows a stream of MySQL packets (3-byte length, 1-byte
// sequence id, body) so a session can be ended between two of them. It
// never looks at a body. last, when set, records the newest sequence id
// seen, shared by both directions.
type packetFramer struct {
	header [4]byte
	have   int
	body   int
	last   *atomic.Uint32
	// awaiting, when set, is shared by both directions: whether the
	// newest packet came from the client, so that a command waits for
	// its answer. client says this framer follows the client's stream.
	awaiting *atomic.Bool
	client   bool
	// command: the next byte is a one-byte command's (a packet of length
	// 1 with sequence id 0); goodbye: that command was a COM_QUIT.
	command, goodbye bool
}

func (f *packetFramer) Relayed(p []byte) {
	for len(p) > 0 {
		if f.body > 0 {
			if f.command {
				f.command = false
				f.goodbye = f.goodbye || p[0] == gomysql.COM_QUIT
			}
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
		f.command = f.body == 1 && f.header[3] == 0
		if f.last != nil {
			f.last.Store(uint32(f.header[3]))
		}
		if f.awaiting != nil {
			f.awaiting.Store(f.client)
		}
	}
}

// SaidGoodbye reports whether the stream carried a COM_QUIT: on the
// client's stream, the client ending its session (proxy.GoodbyeFramer).
func (f *packetFramer) SaidGoodbye() bool { return f.goodbye }

func (f *packetFramer) Pending() int {
	if f.have > 0 {
		return len(f.header) - f.have
	}
	return f.body
}

// goodbye is the splice's Relay.Goodbye: the ERR that ends a session
// portcullis is closing, numbered to follow the last packet of the
// exchange in flight. A session whose backend connection broke while no
// command awaited an answer gets no ERR, only the close: the client would
// take an ERR for the answer to its next command, which would be lost,
// whereas a close is a server gone away, after which the mariadb command
// line connects again and runs that command.
func goodbye(last *atomic.Uint32, awaiting *atomic.Bool) func(io.Writer, error) error {
	return func(w io.Writer, cause error) error {
		if errors.Is(cause, proxy.ErrBackendLost) && !awaiting.Load() {
			return nil
		}
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

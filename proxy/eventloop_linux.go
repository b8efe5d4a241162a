package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// A session whose backend leg is a plain socket, and whose client leg is
// one too or TLS served by TLSServer (eventloop_tls_linux.go), is relayed
// by an event loop while its bytes simply flow: the loop has an epoll instance
// of its own holding every such session's sockets, and a goroutine on a
// thread of its own that waits in epoll_pwait until any of them is ready.
// It collects every ready socket at once and, for each, reads once into
// the loop's buffer and writes what it read to the other side. One
// wake-up serves every session with something to say, and no goroutine
// is woken per message, which is where a relay of goroutines spends its
// time (docs/performance.md).
//
// The end of a stream is passed on in the loop too, as a half-close of
// the other side, so a session that both sides close ends there. Anything
// else leaves the loop: a reset or an error on either socket, and
// portcullis ending the session. The loop then gives the session's
// sockets back, with the bytes it read but could not write yet, and the
// session's goroutine carries on as a relay of two goroutines
// (Conn.relay), which owns every rule about broken backends and goodbyes.
//
// A session with a filter of the client's bytes (MySQL's) has it run on
// the loop too, on every chunk read from the client. The filter hands the
// session to its goroutine, through FilterOutput.HandOff, before it would
// answer the client or wait; the session stays there.

// loopSession is a session on an event loop. Its fields are the loop's
// while the session is attached; done hands them back.
type loopSession struct {
	fd    [2]int
	pend  [2][]byte  // read from the other side, not yet written to this one
	buf   [2]*[]byte // pend's pooled buffer, when it has one
	want  [2]uint32  // the events each socket is registered for
	count [2]*atomic.Int64
	frame [2]Framer // ToClient, ToBackend: told of every byte written
	// filter sees the client's bytes before the backend; out is its
	// output; handedOff are the bytes it asked the goroutine to filter,
	// and filterErr the error it failed with.
	filter    ClientFilter
	out       loopOutput
	handedOff []byte
	filterErr error
	// readErr is a read that failed in the loop: the error is the
	// socket's, and a second read would not see it again.
	readErr  error
	readSide int
	// eof: the side's stream has ended, and the other side has been told
	// (its write half is shut). first is the side that ended first.
	eof      [2]bool
	first    int
	detached bool
	done     chan struct{}
	// tls is the client leg when it is TLS, over sock while on the loop
	// (eventloop_tls_linux.go); after: how its stream went on right
	// behind the data last read (io.EOF, or a read's error); queued: it
	// is on the loop's list to be read again, crypto/tls holding bytes
	// the socket no longer has.
	tls    *TLSConn
	sock   *loopSocket
	after  error
	queued bool
}

type loopEnd struct {
	s    *loopSession
	side int
}

type eventLoop struct {
	epfd int
	wake int // an eventfd: written to ask the loop to look at detaching
	buf  []byte
	// asleep: the loop waits as an ordinary goroutine (sleep).
	asleep atomic.Bool
	// spin is how long poll keeps looking before it waits (busy polling,
	// Proxy.BusyPoll), while cpuToSpare says the machine has one; spins
	// counts its looks. The loop's thread only, but for spins.
	spin       time.Duration
	cpuToSpare func() bool
	spins      atomic.Int64

	mu       sync.Mutex
	ends     map[int32]loopEnd
	detaches []*loopSession

	// again are TLS sessions to read once more before waiting; spare is
	// the list served last, for reuse. The loop's thread only.
	again, spare []*loopSession
}

var (
	loopsOnce sync.Once
	loops     []*eventLoop
	loopsErr  error
	nextLoop  atomic.Uint32
)

// loopCount is how many event loops relay sessions: as configured, else
// half the runtime's processors, at least one. A loop is one goroutine,
// and so uses at most one processor at a time; the other half is left to
// logins and TLS handshakes.
func loopCount(configured int) int {
	if configured > 0 {
		return configured
	}
	return max(1, runtime.GOMAXPROCS(0)/2)
}

// startLoops starts the process's event loops, once: the first server to
// relay a session on one sets their number. Each loop waits on a thread
// of its own, and runs there holding one of the runtime's processors
// (GOMAXPROCS): the runtime is given one more per loop, so that logins and
// TLS handshakes have as many as before.
func startLoops(configured int, busyPoll time.Duration) {
	n := loopCount(configured)
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + n)
	for range n {
		l, err := newEventLoop()
		if err != nil {
			loopsErr = err
			return
		}
		if busyPoll > 0 {
			l.spin, l.cpuToSpare = busyPoll, spareCPU()
		}
		loops = append(loops, l)
		go l.run()
	}
}

func newEventLoop() (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: epoll_create1: %w", err)
	}
	// Non-blocking, so that the runtime's poller can wait for it while
	// the loop sleeps.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("event loop: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, fmt.Errorf("event loop: epoll_ctl: %w", err)
	}
	return &eventLoop{epfd: epfd, wake: wake, buf: make([]byte, relayBufferSize), ends: map[int32]loopEnd{}}, nil
}

// onEventLoop relays r on an event loop while its bytes simply flow.
// When both streams end there, out says which ended first. Otherwise r
// is updated to what the goroutines are to carry on with: new
// connections over the same sockets, and what the loop had read but not
// yet written as the pending bytes. handled is false when r cannot be
// relayed on a loop (joinLoop); r is then untouched.
//
// An idle session waits here, so this frame and its callers' stay on the
// session's stack while it lasts: the work before and after the wait is
// kept out of line, so that the runtime can shrink that stack to a few
// KiB once the login that grew it is over.
func (c *Conn) onEventLoop(r *Relay) (out loopOutcome, handled bool, err error) {
	l, s := c.joinLoop(r)
	if s == nil {
		return out, false, nil
	}
	stop := context.AfterFunc(c.ctx, func() { l.detach(s) })
	<-s.done
	stop()
	return c.leaveLoop(r, s)
}

// joinLoop puts r's sockets on an event loop, or returns a nil session
// when a leg is neither a bare socket nor (the client's) a TLSServer
// connection, or there is no loop.
//
//go:noinline
func (c *Conn) joinLoop(r *Relay) (*eventLoop, *loopSession) {
	threads := c.srv.limits.RelayThreads
	// A TLS client leg joins through the socket under it, unless
	// crypto/tls already holds bytes to read (a client that did not wait
	// for its login's answer): no event would say so.
	client := r.Client
	tc, _ := r.Client.(*TLSConn)
	if tc != nil {
		if tc.buffered() {
			return nil, nil
		}
		client = tc.rec.Conn
	}
	if threads < 0 || plainSocket(client) == nil || plainSocket(r.Backend) == nil {
		return nil, nil
	}
	if r.FromClient != nil && len(r.ClientPending) > 0 {
		// Rare (a client that did not wait for its login's answer), and
		// the filter might want to hand it straight back.
		return nil, nil
	}
	loopsOnce.Do(func() { startLoops(threads, c.srv.limits.BusyPoll) })
	if len(loops) == 0 {
		c.logger().Debug("relaying on goroutines: no event loop", zap.Error(loopsErr))
		return nil, nil
	}
	// The loop works on descriptors of its own: the connections' own go
	// (closing them takes the sockets out of the runtime's poller, which
	// would otherwise wake for every message too).
	cfd, err := dupSocket(client)
	if err != nil {
		return nil, nil
	}
	bfd, err := dupSocket(r.Backend)
	if err != nil {
		unix.Close(cfd)
		return nil, nil
	}
	client.Close()
	r.Backend.Close()

	s := &loopSession{
		fd:    [2]int{cfd, bfd},
		count: [2]*atomic.Int64{&c.toClient, &c.toBackend},
		frame: [2]Framer{r.ToClient, r.ToBackend},
		first: -1,
		done:  make(chan struct{}),
	}
	l := loops[int(nextLoop.Add(1))%len(loops)]
	if tc != nil {
		s.tls = tc
		s.sock = &loopSocket{Conn: tc.rec.Conn, l: l, s: s, fd: cfd}
		tc.rec.Conn = s.sock
	}
	if r.FromClient != nil {
		s.filter = r.FromClient
		s.out = loopOutput{l: l, s: s}
	}
	s.keep(sideBackend, r.ClientPending)
	s.keep(sideClient, r.BackendPending)
	l.attach(s)
	return l, s
}

// leaveLoop is what follows a session's time on its loop: the end of the
// session, or r made ready for the goroutines.
//
//go:noinline
func (c *Conn) leaveLoop(r *Relay, s *loopSession) (out loopOutcome, handled bool, err error) {
	// Either way the client's descriptor is closed below, or handed to a
	// new connection: the TLS socket of the loop must not use it again.
	if s.sock != nil {
		s.sock.fd = -1
	}
	// Both streams ended and everything written: the session is over.
	// (A write that failed after both ends leaves bytes kept, for the
	// goroutines to fail on.)
	if s.eof[sideClient] && s.eof[sideBackend] && len(s.pend[sideClient]) == 0 && len(s.pend[sideBackend]) == 0 && s.filterErr == nil {
		unix.Close(s.fd[sideClient])
		unix.Close(s.fd[sideBackend])
		out.ended, out.reason = true, endBackendClosed
		if s.first == sideClient || saidGoodbye(r.ToBackend) {
			out.reason = endClientClosed
		}
		return out, true, nil
	}
	// (A filter's hand-off leaves the client's stream unfinished: its
	// bytes go to the goroutines.)
	r.ended[sideClient] = s.eof[sideClient] && len(s.pend[sideBackend]) == 0 && s.handedOff == nil
	r.ended[sideBackend] = s.eof[sideBackend] && len(s.pend[sideClient]) == 0
	r.ClientPending, r.BackendPending = s.handBack(sideBackend), s.handBack(sideClient)
	if s.filter != nil {
		// What the loop still owes the backend has been filtered; what
		// the filter handed off has not.
		r.filtered, r.ClientPending = r.ClientPending, s.handedOff
	}
	client, err := socketConn(s.fd[sideClient])
	if err != nil {
		unix.Close(s.fd[sideBackend])
		return out, true, fmt.Errorf("client -> backend: leaving the event loop: %w", err)
	}
	r.Client = client
	if tc := s.tls; tc != nil {
		// The records still to be written go out ahead of whatever
		// crypto/tls writes next.
		tc.rec.Conn, tc.rec.rc, tc.rec.unsent = client, plainSocket(client), r.BackendPending
		r.Client, r.BackendPending = tc, nil
	}
	if r.Backend, err = socketConn(s.fd[sideBackend]); err != nil {
		r.Client.Close()
		return out, true, fmt.Errorf("backend -> client: leaving the event loop: %w", err)
	}
	switch {
	case s.readErr != nil:
		return out, true, &loopReadError{side: s.readSide, err: s.readErr}
	case s.filterErr != nil:
		return out, true, fmt.Errorf("client -> backend: %w", s.filterErr)
	}
	return out, true, nil
}

// loopOutput is a filter's FilterOutput on the event loop: what it lets
// through is written to the backend as the loop writes, and anything else
// is handed to the session's goroutine.
type loopOutput struct {
	l *eventLoop
	s *loopSession
	// failed: a write to the backend failed; the rest is kept for the
	// goroutines to fail on, and the session leaves the loop.
	failed bool
}

func (o *loopOutput) ToBackend(p []byte) error {
	s := o.s
	if o.failed || len(s.pend[sideBackend]) > 0 {
		s.add(sideBackend, p)
		return nil
	}
	o.failed = !o.l.write(s, sideBackend, p)
	return nil
}

// ToClient is never called on the loop: a filter hands off first.
func (o *loopOutput) ToClient([]byte) error {
	return errors.New("the filter answered the client without handing off to the session's goroutine")
}

func (o *loopOutput) HandOff(rest []byte) bool {
	o.s.handedOff = append([]byte(nil), rest...)
	return true
}

// filtered follows a call of the session's filter that returned err: if
// the filter handed off or failed, or a write it passed on failed, the
// session goes back to its goroutine, and filtered reports true.
func (l *eventLoop) filtered(s *loopSession, err error) bool {
	if err != nil {
		s.filterErr = err
	}
	if err != nil || s.out.failed || s.handedOff != nil {
		l.giveBack(s)
		return true
	}
	return false
}

// dupSocket is a new descriptor for c's socket.
func dupSocket(c net.Conn) (int, error) {
	rc := plainSocket(c)
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, dupErr
}

// socketConn makes fd a connection of the runtime's again, as a
// PollSocket; fd itself is closed.
func socketConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return PollSocket(c), nil
}

// add appends p to the bytes still to be written to side i.
func (s *loopSession) add(i int, p []byte) {
	if len(s.pend[i]) == 0 {
		s.keep(i, p)
		return
	}
	s.pend[i] = append(s.pend[i], p...)
}

// keep makes p the bytes still to be written to side i.
func (s *loopSession) keep(i int, p []byte) {
	if len(p) == 0 {
		s.drained(i)
		return
	}
	if len(p) > relayBufferSize {
		s.pend[i] = append([]byte(nil), p...)
		return
	}
	if s.buf[i] == nil {
		s.buf[i] = relayBuffers.Get().(*[]byte)
	}
	s.pend[i] = (*s.buf[i])[:copy(*s.buf[i], p)]
}

func (s *loopSession) drained(i int) {
	s.pend[i] = nil
	if s.buf[i] != nil {
		relayBuffers.Put(s.buf[i])
		s.buf[i] = nil
	}
}

// handBack is a copy of the bytes still to be written to side i, and
// gives back their buffer.
func (s *loopSession) handBack(i int) []byte {
	var p []byte
	if len(s.pend[i]) > 0 {
		p = append([]byte(nil), s.pend[i]...)
	}
	s.drained(i)
	return p
}

func (l *eventLoop) attach(s *loopSession) {
	// Pending bytes are written by the loop, once the socket is writable:
	// registering for that is all it takes.
	s.want = [2]uint32{s.interest(0), s.interest(1)}
	if !l.register(s) {
		l.detach(s) // giveBack removes whatever was registered
	}
}

// register adds both sockets of s to the loop's epoll instance and makes
// s findable by them, under the lock the loop takes to find the sessions
// of its events: the loop cannot touch s until register returns.
// Otherwise it could serve the first socket and give s back before the
// second was registered, and that registration would outlive s (a later
// socket given the same number would then be woken by the old one's
// events).
func (l *eventLoop) register(s *loopSession) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, fd := range s.fd {
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: s.want[i], Fd: int32(fd)}); err != nil {
			return false
		}
	}
	l.ends[int32(s.fd[sideClient])] = loopEnd{s, sideClient}
	l.ends[int32(s.fd[sideBackend])] = loopEnd{s, sideBackend}
	return true
}

// detach asks the loop to give s back, from another goroutine.
func (l *eventLoop) detach(s *loopSession) {
	l.mu.Lock()
	l.detaches = append(l.detaches, s)
	l.mu.Unlock()
	var one = [8]byte{1}
	unix.Write(l.wake, one[:])
}

// interest is what socket i waits for: to be read until its stream ends,
// while the other side has room; to be written while it has bytes
// waiting.
func (s *loopSession) interest(i int) uint32 {
	var w uint32
	if !s.eof[i] && len(s.pend[1-i]) == 0 {
		w |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if len(s.pend[i]) > 0 {
		w |= unix.EPOLLOUT
	}
	return w
}

// giveBack takes s out of the loop and wakes its goroutine. The loop's
// thread only.
func (l *eventLoop) giveBack(s *loopSession) {
	if s.detached {
		return
	}
	s.detached = true
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd[0], nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd[1], nil)
	l.mu.Lock()
	delete(l.ends, int32(s.fd[0]))
	delete(l.ends, int32(s.fd[1]))
	l.mu.Unlock()
	close(s.done)
}

// write writes p to side i and keeps what does not fit; false if the
// write failed (p is then kept whole, for the goroutines to fail on).
func (l *eventLoop) write(s *loopSession, i int, p []byte) bool {
	for len(p) > 0 {
		n, errno := rawIO(syscall.SYS_WRITE, uintptr(s.fd[i]), p)
		switch errno {
		case 0:
			if !s.sealed(i) {
				s.relayed(i, p[:n])
			}
			p = p[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			s.keep(i, p)
			return true
		default:
			s.keep(i, p)
			return false
		}
	}
	s.drained(i)
	return true
}

// relayed tells side i's framer and count of p, written to it.
func (s *loopSession) relayed(i int, p []byte) {
	s.count[i].Add(int64(len(p)))
	if s.frame[i] != nil {
		s.frame[i].Relayed(p)
	}
}

// pass writes p to side i, sealing it if that is the TLS client leg.
func (l *eventLoop) pass(s *loopSession, i int, p []byte) bool {
	if s.sealed(i) {
		return l.writeTLS(s, p)
	}
	return l.write(s, i, p)
}

// halfClose shuts side i's write half, the other side's stream having
// ended and every byte of it written; false if that failed and s was
// given back (the goroutines, reading the end again, fail on it too). A
// TLS client leg is told with a close_notify alert, as the goroutines
// would tell it.
func (l *eventLoop) halfClose(s *loopSession, i int) bool {
	var err error
	if s.sealed(i) {
		if err = s.tls.CloseWrite(); err == nil && s.sock.failed {
			err = errors.New("writing close_notify failed")
		}
	} else {
		err = unix.Shutdown(s.fd[i], unix.SHUT_WR)
	}
	if err != nil {
		s.eof[1-i] = false
		l.giveBack(s)
		return false
	}
	return true
}

// serve handles one socket's events.
func (l *eventLoop) serve(s *loopSession, i int, events uint32) {
	if s.detached {
		return
	}
	// A reset or an error: the goroutines read it. A peer's half-close
	// comes as EPOLLRDHUP with EPOLLIN, and as EPOLLHUP too once this side
	// has been half-closed as well: read on to the end.
	j := 1 - i
	if events&unix.EPOLLERR != 0 || (events&unix.EPOLLHUP != 0 && !s.eof[j]) {
		l.giveBack(s)
		return
	}
	if events&unix.EPOLLOUT != 0 && len(s.pend[i]) > 0 {
		if !l.write(s, i, s.pend[i]) {
			l.giveBack(s)
			return
		}
		if len(s.pend[i]) == 0 && s.eof[j] && !l.halfClose(s, i) {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP) != 0 && !s.eof[i] && len(s.pend[j]) == 0 {
		var n int
		var ready bool
		var err error
		if s.sealed(i) {
			n, ready, err = l.readTLS(s)
		} else {
			n, ready, err = readSome(uintptr(s.fd[i]), l.buf)
		}
		switch {
		case !ready:
		case err != nil:
			s.readErr, s.readSide = err, i
			l.giveBack(s)
			return
		case n == 0:
			if !l.streamEnded(s, i) {
				return
			}
		case i == sideClient && s.filter != nil:
			if l.filtered(s, s.filter.Filter(l.buf[:n], &s.out)) {
				return
			}
		default:
			if !l.pass(s, j, l.buf[:n]) {
				l.giveBack(s)
				return
			}
		}
		if err := s.after; err != nil {
			s.after = nil
			if err != io.EOF {
				s.readErr, s.readSide = err, i
				l.giveBack(s)
				return
			}
			if !l.streamEnded(s, i) {
				return
			}
		}
	}
	if s.eof[0] && s.eof[1] && len(s.pend[0]) == 0 && len(s.pend[1]) == 0 {
		l.giveBack(s)
		return
	}
	for k := range 2 {
		if w := s.interest(k); w != s.want[k] {
			s.want[k] = w
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, s.fd[k], &unix.EpollEvent{Events: w, Fd: int32(s.fd[k])})
		}
	}
	// Bytes crypto/tls holds raise no event: read them before waiting.
	if s.tls != nil && !s.queued && !s.eof[sideClient] && len(s.pend[sideBackend]) == 0 && s.tls.buffered() {
		s.queued = true
		l.again = append(l.again, s)
	}
}

// streamEnded follows the end of side i's stream; false if s was given
// back.
func (l *eventLoop) streamEnded(s *loopSession, i int) bool {
	j := 1 - i
	s.eof[i] = true
	if s.first < 0 {
		s.first = i
	}
	if i == sideClient && s.filter != nil && l.filtered(s, s.filter.End(&s.out)) {
		return false
	}
	// Nothing waited to be written to j when i was read; a filter may
	// have passed on what it held, which goes first.
	return len(s.pend[j]) > 0 || l.halfClose(s, j)
}

// handle gives back the sessions asked to leave, then serves a batch of
// events; ends is scratch space, returned for the next batch.
func (l *eventLoop) handle(events []unix.EpollEvent, ends []loopEnd) []loopEnd {
	// The wake-up is consumed before the requests are taken, so that a
	// request made after the taking wakes the loop again.
	woken := false
	for _, ev := range events {
		if int(ev.Fd) == l.wake {
			var b [8]byte
			unix.Read(l.wake, b[:])
			woken = true
		}
	}
	ends = ends[:0]
	var detaches []*loopSession
	l.mu.Lock()
	for _, ev := range events {
		ends = append(ends, l.ends[ev.Fd])
	}
	if woken {
		detaches, l.detaches = l.detaches, nil
	}
	l.mu.Unlock()
	// Sessions being ended go first: bytes that came with the request
	// (a query sent right after a KILL returned) are not relayed.
	for _, s := range detaches {
		l.giveBack(s)
	}
	for k, ev := range events {
		if e := ends[k]; e.s != nil {
			l.serve(e.s, e.side, ev.Events)
		}
	}
	if len(l.again) > 0 {
		again := l.again
		l.again = l.spare[:0]
		for k, s := range again {
			again[k] = nil
			s.queued = false
			l.serve(s, sideClient, unix.EPOLLIN)
		}
		l.spare = again[:0]
	}
	return ends
}

// run is the loop. Its goroutine keeps a thread of its own and waits in
// epoll_pwait there, with the loop's processor held, as if it were
// running: a wake-up is one system call and no scheduling. Waited for
// through the runtime's poller instead (the loop's epoll descriptor is
// itself pollable), as until 2026-12-07, a wake-up took four system
// calls: the poller's wait, its look before waiting, and the loop's two
// looks at its own descriptor. Entered as a blocking system call, the
// wait would let the runtime's monitor take the processor away, and each
// wake-up would have to win one back (docs/performance.md, "The loop on a
// thread of its own"). A loop that has found nothing to do for
// loopWaitMax sleeps as before, so that an idle loop costs nothing.
func (l *eventLoop) run() {
	runtime.LockOSThread()
	events := make([]unix.EpollEvent, 128)
	ends := make([]loopEnd, 0, len(events))
	// quiet is when the loop's current stretch of finding nothing to do
	// began; zero while it has something to do.
	var quiet time.Time
	for {
		var n int
		if !quiet.IsZero() && time.Since(quiet) >= loopWaitMax {
			n = l.sleep(events)
		} else {
			n = l.poll(events)
		}
		switch {
		case n > 0 || len(l.again) > 0:
			quiet = time.Time{}
		case quiet.IsZero():
			quiet = time.Now()
		}
		ends = l.handle(events[:n], ends)
	}
}

// loopWaitMax bounds one wait of an event loop holding its processor,
// and is how long a loop finds nothing to do before it sleeps.
const loopWaitMax = 20 * time.Millisecond

// poll waits for events holding the loop's processor, for up to
// loopWaitMax, or not at all while TLS sessions are to be read again.
// The runtime still stops the loop when it must (a collection, or to let
// others run after 10 ms): its signal interrupts the wait, and the loop
// yields at its next call. The bound keeps that so even with
// asynchronous preemption turned off. With busy polling on, it first
// looks for a while without waiting (busyPoll).
func (l *eventLoop) poll(events []unix.EpollEvent) int {
	timeout := loopWaitMax.Milliseconds()
	if len(l.again) > 0 {
		timeout = 0
	}
	if timeout > 0 && l.spin > 0 && l.cpuToSpare() {
		if n := l.busyPoll(events); n > 0 {
			return n
		}
	}
	n, _ := epollWait(uintptr(l.epfd), events, timeout)
	return n
}

// busyPoll looks for events without waiting, again and again, for up to
// l.spin. Woken from a wait, a thread pays for the wake-up and its CPU's
// way out of idle, which on a virtual machine can cost more than the
// relay's own work on a message; a loop that is still looking when the
// next message arrives pays neither. It spends the CPU while it looks,
// so it is off by default, and looks only while the machine has a CPU to
// spare: not at the expense of the backends and clients it would wait
// for.
func (l *eventLoop) busyPoll(events []unix.EpollEvent) int {
	start := time.Now()
	for {
		l.spins.Add(1)
		n, _ := epollWait(uintptr(l.epfd), events, 0)
		if n > 0 || time.Since(start) >= l.spin {
			return n
		}
	}
}

// spareCPU returns a function that reports whether fewer tasks are
// runnable on the machine than it has CPUs to run them, counting the
// caller: that the CPU a loop would busy-poll on is wanted by no one
// else. It reads /proc/loadavg at most once a millisecond; if that
// cannot be opened, the answer is always no.
func spareCPU() func() bool {
	fd, err := unix.Open("/proc/loadavg", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return func() bool { return false }
	}
	cpus := runtime.NumCPU()
	var next time.Time
	spare := false
	return func() bool {
		if now := time.Now(); !now.Before(next) {
			next = now.Add(time.Millisecond)
			var b [128]byte
			n, err := unix.Pread(fd, b[:], 0)
			if err != nil || n <= 0 {
				spare = false
			} else {
				r, ok := runnableTasks(b[:n])
				spare = ok && r <= cpus
			}
		}
		return spare
	}
}

// runnableTasks is the count of runnable tasks in the text of
// /proc/loadavg ("0.61 0.55 0.48 3/415 12345": the 3).
func runnableTasks(loadavg []byte) (int, bool) {
	f := strings.Fields(string(loadavg))
	if len(f) < 4 {
		return 0, false
	}
	run, _, ok := strings.Cut(f[3], "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(run)
	return n, err == nil && n >= 0
}

// epollWait is one epoll_pwait on epfd, as a raw system call, waiting
// up to msec milliseconds; interrupted reports a signal that cut the
// wait short (n is then 0).
func epollWait(epfd uintptr, events []unix.EpollEvent, msec int64) (n int, interrupted bool) {
	r, _, errno := syscall.RawSyscall6(unix.SYS_EPOLL_PWAIT, epfd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	switch errno {
	case 0:
		return int(r), false
	case syscall.EINTR:
		return 0, true
	}
	panic(fmt.Sprintf("event loop: epoll_pwait: %v", errno))
}

// sleep waits for events as an ordinary goroutine, parked until the
// runtime's poller finds the loop's epoll descriptor ready, as every
// wait did until 2026-12-07: the loop's processor and thread are free
// meanwhile, and the runtime's monitor has no running goroutine to
// preempt every 10 ms. The descriptor is in the poller only while the
// loop sleeps (through a duplicate, closed on waking), or the poller
// would wake for every message of a busy loop too.
func (l *eventLoop) sleep(events []unix.EpollEvent) int {
	fd, err := unix.FcntlInt(uintptr(l.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return l.poll(events)
	}
	f := os.NewFile(uintptr(fd), "epoll")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return l.poll(events)
	}
	l.asleep.Store(true)
	runtime.UnlockOSThread()
	defer func() {
		runtime.LockOSThread()
		l.asleep.Store(false)
	}()
	var n int
	err = rc.Read(func(fd uintptr) bool {
		interrupted := true
		for interrupted {
			n, interrupted = epollWait(fd, events, 0)
		}
		return n > 0
	})
	if err != nil {
		panic(fmt.Sprintf("event loop: waiting: %v", err))
	}
	return n
}

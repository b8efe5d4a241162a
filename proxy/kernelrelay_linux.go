package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// The kernel relay (Proxy.KernelRelay) carries a spliced PostgreSQL
// session with plain sockets on both legs inside the kernel: both
// sockets go into a SOCKMAP whose verdict program (kernelrelay_prog_linux.go)
// redirects each chunk that arrives on one to the other, so no thread of
// portcullis wakes for the session's messages. portcullis watches only
// for either end closing, and for its own reasons to end the session.
// Then it takes the bytes back: it removes the session's routes, so that
// what arrives next waits in the sockets for it to read; it waits for the
// chunks already redirected to be queued on their way out; and it hands
// the session, with each direction's place in its messages, to the relay
// of goroutines, which ends it as it ends any session.
//
// Where the program cannot be loaded (no privilege, an old kernel), or a
// session does not fit, sessions are relayed in user space as before.

// kernelSessions is how many sessions the kernel relay holds at once;
// the rest are relayed in user space. Its maps take about 2.5 MiB of
// kernel memory.
const kernelSessions = 32768

type kernelRelay struct {
	routes, flows, socks *ebpf.Map
	prog                 *ebpf.Program
	// watch is an epoll instance of the sessions' sockets, for their
	// ends only: data arriving on them does not wake it.
	watch int

	mu      sync.Mutex
	free    []uint32
	next    uint32
	watched map[int32]*kernelSession
}

// kernelLoad is the process's kernel relay, loaded by the first session
// that could use it; kernel is nil where it could not be.
type kernelLoad struct {
	once   sync.Once
	kernel *kernelRelay
}

var (
	theKernel = &kernelLoad{}
	// startKernel loads the kernel relay (tests stand in a refusal).
	startKernel = startKernelRelay
	// leftKernelHook, if set, is told when a session has its bytes
	// back from the kernel (tests).
	leftKernelHook func()
)

// kernelSession is a session in the kernel relay. Slot k holds its
// client socket at index 2k of the maps and its backend socket at 2k+1.
type kernelSession struct {
	slot   uint32
	fd     [2]int
	cookie [2]uint64
	// queued are the bytes user space had queued on each socket when the
	// kernel took over, and the greeting after.
	queued [2]uint64
	woke   chan struct{}
	once   sync.Once
}

func (s *kernelSession) wake() { s.once.Do(func() { close(s.woke) }) }

// kernelFlow is a flow's state as the program left it.
type kernelFlow struct {
	bytes uint64
	left  uint32
	have  uint32
	hdr   uint64
	typ   uint32
	flags uint32
}

func startKernelRelay() (*kernelRelay, error) {
	k := &kernelRelay{watch: -1, watched: map[int32]*kernelSession{}}
	var err error
	if k.routes, err = ebpf.NewMap(&ebpf.MapSpec{Name: "pc_routes", Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 2 * kernelSessions, Flags: unix.BPF_F_NO_PREALLOC}); err != nil {
		return nil, fmt.Errorf("routes map: %w", err)
	}
	if k.flows, err = ebpf.NewMap(&ebpf.MapSpec{Name: "pc_flows", Type: ebpf.Array, KeySize: 4, ValueSize: flowSize, MaxEntries: 2 * kernelSessions}); err != nil {
		k.close()
		return nil, fmt.Errorf("flows map: %w", err)
	}
	if k.socks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "pc_socks", Type: ebpf.SockMap, KeySize: 4, ValueSize: 4, MaxEntries: 2 * kernelSessions}); err != nil {
		k.close()
		return nil, fmt.Errorf("socket map: %w", err)
	}
	k.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "pc_relay",
		Type:         ebpf.SkSKB,
		AttachType:   ebpf.AttachSkSKBVerdict,
		License:      "GPL",
		Instructions: relayProgram(k.routes, k.flows, k.socks),
	})
	if err != nil {
		k.close()
		return nil, fmt.Errorf("load the verdict program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: k.socks.FD(), Program: k.prog, Attach: ebpf.AttachSkSKBVerdict}); err != nil {
		k.close()
		return nil, fmt.Errorf("attach the verdict program: %w", err)
	}
	if k.watch, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		k.close()
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	go k.watchEnds()
	return k, nil
}

func (k *kernelRelay) close() {
	for _, m := range []*ebpf.Map{k.routes, k.flows, k.socks} {
		if m != nil {
			m.Close()
		}
	}
	if k.prog != nil {
		k.prog.Close()
	}
}

// watchEnds wakes the session of each socket that closes or fails. It
// waits as a blocking system call: it is woken once per session at most.
func (k *kernelRelay) watchEnds() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(k.watch, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Only EINTR can happen on an epoll descriptor that stays
			// open; anything else would fail again at once.
			return
		}
		k.mu.Lock()
		for _, ev := range events[:n] {
			if s := k.watched[ev.Fd]; s != nil {
				s.wake()
			}
		}
		k.mu.Unlock()
	}
}

// kernelFor is the kernel relay for r, or nil where r stays in user
// space.
func (c *Conn) kernelFor(r *Relay) *kernelRelay {
	// A TLS client leg is no plain socket.
	if !c.srv.limits.KernelRelay || !r.TypedMessages || r.FromClient != nil ||
		len(r.ClientPending) > 0 || len(r.BackendPending) > 0 ||
		plainSocket(r.Client) == nil || plainSocket(r.Backend) == nil {
		return nil
	}
	l := theKernel
	l.once.Do(func() {
		k, err := startKernel()
		if err != nil {
			c.logger().Warn("kernel relay unavailable; relaying in user space", logging.Event("proxy.kernel_relay_unavailable"), zap.Error(err))
			return
		}
		l.kernel = k
	})
	return l.kernel
}

// inKernel relays r inside the kernel while its bytes simply flow. It
// reports false, r untouched, where r cannot be. Otherwise it returns
// once either end has closed or c's context has ended, with r made ready
// for the goroutines (new connections over the same sockets, each
// Framer told where its stream stands, the greeting written), and
// release, to be called once the session is over.
//
// An idle session waits here, so, as with onEventLoop, the work before
// and after the wait is kept out of line and this frame stays small.
func (c *Conn) inKernel(r *Relay) (release func(), ok bool) {
	k, s := c.enterKernel(r)
	if s == nil {
		return nil, false
	}
	stop := context.AfterFunc(c.ctx, s.wake)
	<-s.woke
	stop()
	return k.leave(c, r, s), true
}

// enterKernel puts r in the kernel relay and greets the client, or
// returns a nil session where r stays in user space.
//
//go:noinline
func (c *Conn) enterKernel(r *Relay) (*kernelRelay, *kernelSession) {
	k := c.kernelFor(r)
	if k == nil {
		return nil, nil
	}
	s, err := k.join(r)
	if err != nil {
		c.logger().Debug("relaying in user space: the kernel relay refused the session", zap.Error(err))
		return nil, nil
	}
	c.logger().Debug("session relayed in the kernel", logging.Event("session.kernel_relay"))
	c.mu.Lock()
	c.kernelBytes = func() (int64, int64) {
		return int64(k.flow(2 * s.slot).bytes), int64(k.flow(2*s.slot + 1).bytes)
	}
	c.mu.Unlock()
	r.Client.Close()
	r.Backend.Close()
	greeting := r.Greeting
	r.Greeting = nil
	if err := writeAll(s.fd[sideClient], greeting); err != nil {
		s.wake()
	}
	s.queued[sideClient] += uint64(len(greeting))
	// A client that spoke before its greeting, or a backend with
	// something to say unasked, left bytes the program never saw:
	// user space reads them.
	if waiting(s.fd[sideClient]) || waiting(s.fd[sideBackend]) {
		s.wake()
	}
	k.watchFor(s)
	return k, s
}

// join puts r's sockets in the kernel relay.
func (k *kernelRelay) join(r *Relay) (*kernelSession, error) {
	slot, ok := k.take()
	if !ok {
		return nil, errors.New("the kernel relay is full")
	}
	s := &kernelSession{slot: slot, fd: [2]int{-1, -1}, woke: make(chan struct{})}
	fail := func(err error) (*kernelSession, error) {
		for i, fd := range s.fd {
			if fd >= 0 {
				k.routes.Delete(s.cookie[i])
				k.socks.Delete(2*slot + uint32(i))
				unix.Close(fd)
			}
		}
		k.give(slot)
		return nil, err
	}
	// The backend's socket joins first: the backend says nothing until
	// asked, so nothing can pass before both routes are in.
	for _, i := range []int{sideBackend, sideClient} {
		conn := r.Client
		if i == sideBackend {
			conn = r.Backend
		}
		fd, err := dupSocket(conn)
		if err != nil {
			return fail(err)
		}
		s.fd[i] = fd
		if s.cookie[i], err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			return fail(fmt.Errorf("SO_COOKIE: %w", err))
		}
		if s.queued[i], _, err = queuedBytes(fd); err != nil {
			return fail(err)
		}
		index := 2*slot + uint32(i)
		if err := k.flows.Put(index, make([]byte, flowSize)); err != nil {
			return fail(fmt.Errorf("reset a flow: %w", err))
		}
		if err := k.socks.Put(index, uint32(fd)); err != nil {
			return fail(fmt.Errorf("add a socket to the socket map: %w", err))
		}
		if err := k.routes.Put(s.cookie[i], index); err != nil {
			return fail(fmt.Errorf("route a socket: %w", err))
		}
	}
	return s, nil
}

func (k *kernelRelay) watchFor(s *kernelSession) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, fd := range s.fd {
		k.watched[int32(fd)] = s
		ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
		if err := unix.EpollCtl(k.watch, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			s.wake() // unwatched: take the session back at once
		}
	}
}

// leave takes s's bytes back from the kernel and readies r for the
// goroutines.
//
//go:noinline
func (k *kernelRelay) leave(c *Conn, r *Relay, s *kernelSession) (release func()) {
	k.mu.Lock()
	for _, fd := range s.fd {
		unix.EpollCtl(k.watch, unix.EPOLL_CTL_DEL, fd, nil)
		delete(k.watched, int32(fd))
	}
	k.mu.Unlock()
	var flow [2]kernelFlow
	for i := range s.fd {
		k.routes.Delete(s.cookie[i])
	}
	for i, fd := range s.fd {
		// The verdict runs under the socket's lock; TCP_INFO takes it,
		// so a verdict that began before the route went is over.
		unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		flow[i] = k.flow(2*s.slot + uint32(i))
	}
	// What was redirected to a socket must be queued on it before user
	// space writes there.
	deadline := time.Now().Add(farewellGrace)
	drained := waitQueued(s.fd[sideClient], s.queued[sideClient]+flow[sideBackend].bytes, deadline) &&
		waitQueued(s.fd[sideBackend], s.queued[sideBackend]+flow[sideClient].bytes, deadline)
	if !drained {
		c.logger().Debug("kernel relay: redirected bytes not all sent before the deadline")
	}
	c.mu.Lock()
	c.kernelBytes = nil
	c.toBackend.Add(int64(flow[sideClient].bytes))
	c.toClient.Add(int64(flow[sideBackend].bytes))
	c.mu.Unlock()
	resumeFramer(r.ToBackend, flow[sideClient])
	resumeFramer(r.ToClient, flow[sideBackend])
	if leftKernelHook != nil {
		leftKernelHook()
	}

	release = func() {
		k.socks.Delete(2 * s.slot)
		k.socks.Delete(2*s.slot + 1)
		k.give(s.slot)
	}
	var err error
	if r.Client, err = socketConn(s.fd[sideClient]); err != nil {
		unix.Close(s.fd[sideBackend])
		r.Client, r.Backend = nil, nil
		return release
	}
	if r.Backend, err = socketConn(s.fd[sideBackend]); err != nil {
		r.Client.Close()
		r.Client, r.Backend = nil, nil
	}
	return release
}

func (k *kernelRelay) flow(index uint32) kernelFlow {
	var v [flowSize]byte
	if err := k.flows.Lookup(index, &v); err != nil {
		return kernelFlow{flags: flowLost}
	}
	le := binary.LittleEndian
	return kernelFlow{
		bytes: le.Uint64(v[flowBytes:]),
		left:  le.Uint32(v[flowLeft:]),
		have:  le.Uint32(v[flowHave:]),
		hdr:   le.Uint64(v[flowHdr:]),
		typ:   le.Uint32(v[flowType:]),
		flags: le.Uint32(v[flowFlags:]),
	}
}

// resumeFramer tells f where the kernel left its stream, as if it had
// seen the stream's last bytes itself.
func resumeFramer(f Framer, st kernelFlow) {
	if f == nil {
		return
	}
	if st.flags&flowGoodbye != 0 {
		f.Relayed([]byte{'X', 0, 0, 0, 4})
	}
	switch {
	case st.flags&flowLost != 0:
		f.Relayed([]byte{0, 0, 0, 0, 0}) // a length under 4: lost here too
	case st.have > 0:
		var hdr [8]byte
		binary.BigEndian.PutUint64(hdr[:], st.hdr)
		f.Relayed(hdr[8-min(st.have, 4):])
	case st.left > 0:
		hdr := []byte{byte(st.typ), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(hdr[1:], st.left+4)
		f.Relayed(hdr)
	}
}

func (k *kernelRelay) take() (uint32, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if n := len(k.free); n > 0 {
		slot := k.free[n-1]
		k.free = k.free[:n-1]
		return slot, true
	}
	if k.next == kernelSessions {
		return 0, false
	}
	k.next++
	return k.next - 1, true
}

func (k *kernelRelay) give(slot uint32) {
	k.mu.Lock()
	k.free = append(k.free, slot)
	k.mu.Unlock()
}

// tcpClose is TCP_CLOSE, a connection's state once it is gone
// (include/net/tcp_states.h).
const tcpClose = 7

// queuedBytes is how many bytes have been queued for sending on fd so
// far, acknowledged or not. Read in this order, it is never more than
// the true count, however the acknowledgements move meanwhile. closed
// says the connection is gone, and with it whatever was still to send.
func queuedBytes(fd int) (n uint64, closed bool, err error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false, fmt.Errorf("TCP_INFO: %w", err)
	}
	outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, false, fmt.Errorf("SIOCOUTQ: %w", err)
	}
	return ti.Bytes_acked + uint64(outq), ti.State == tcpClose, nil
}

// waitQueued waits until want bytes have been queued on fd, the
// connection is gone, or the deadline. The kernel's worker queues
// redirected chunks within microseconds, so the waits start short.
func waitQueued(fd int, want uint64, deadline time.Time) bool {
	pause := 20 * time.Microsecond
	for {
		n, closed, err := queuedBytes(fd)
		if err != nil || closed {
			return false
		}
		if n >= want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// waiting reports whether fd has bytes to read.
func waiting(fd int) bool {
	var b [1]byte
	n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err == nil && n > 0
}

// writeAll writes p to the non-blocking socket fd.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		switch {
		case err == unix.EAGAIN:
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(fds, int(farewellGrace/time.Millisecond)); err != nil && err != unix.EINTR {
				return err
			}
			continue
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		}
		p = p[n:]
	}
	return nil
}

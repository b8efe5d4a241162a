package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// Framer follows one direction of a spliced stream message by message so
// that portcullis can end a session between two messages. It is told
// about every chunk relayed, so it must be cheap: look at headers, never
// decode.
type Framer interface {
	// Relayed accounts for p, the next bytes of the stream, having been
	// passed on.
	Relayed(p []byte)
	// Pending is how many more bytes complete the message in flight: 0
	// between messages, -1 when the stream can no longer be followed.
	Pending() int
}

// A GoodbyeFramer is a ToBackend Framer that also spots the protocol's
// goodbye from the client (PostgreSQL's Terminate, MySQL's COM_QUIT).
type GoodbyeFramer interface {
	Framer
	// SaidGoodbye reports whether the goodbye has been passed on.
	SaidGoodbye() bool
}

// saidGoodbye reports whether the client said goodbye on f's stream. The
// session then ends as the client asked, whatever the sockets do after:
// the backend closing first in answer, or the client resetting its
// connection (closing it with portcullis's half-close unread, as the
// mariadb command line does over TLS), is the client closing, not a
// failure.
func saidGoodbye(f Framer) bool {
	g, ok := f.(GoodbyeFramer)
	return ok && g.SaidGoodbye()
}

// ClientFilter stands between the client and the backend for a protocol
// that must act on some of the client's messages itself (MySQL's
// COM_CHANGE_USER and KILL). The splice hands it every chunk it reads
// from the client; the filter decides what the backend gets. It is on
// every chunk's path, so it should look at headers and pass the chunk on
// whole where nothing in it needs attention.
type ClientFilter interface {
	// Filter passes on p, the next bytes from the client, through out.
	// p is only valid until Filter returns: bytes kept for later must be
	// copied.
	Filter(p []byte, out FilterOutput) error
	// End is told that the client's stream ended cleanly; it passes on
	// whatever it still holds.
	End(out FilterOutput) error
}

// FilterOutput is where a ClientFilter sends what it lets through and
// what it answers itself.
type FilterOutput interface {
	// ToBackend relays p to the backend.
	ToBackend(p []byte) error
	// ToClient writes p, one whole answer of portcullis's own, to the
	// client between two of the backend's messages. It fails with
	// ErrBackendMidMessage if a message of the backend's is half written.
	ToClient(p []byte) error
	// HandOff is asked before the filter answers the client or does
	// anything that may wait (a KILL dials another backend). Where the
	// filter runs on the event loop, which must do neither, it takes rest
	// (the bytes of the chunk not yet passed on; copied) to be filtered
	// again by the session's own goroutine, and reports true: the filter
	// returns at once, holding nothing of rest. Elsewhere it reports
	// false and the filter goes on.
	HandOff(rest []byte) bool
}

// ErrBackendMidMessage is why FilterOutput.ToClient refuses to write: the
// client would get portcullis's answer in the middle of a message of the
// backend's.
var ErrBackendMidMessage = errors.New("the backend is in the middle of a message to the client")

// Relay is a client and a backend, both past their handshakes, ready to
// be spliced. The protocol has already answered the client.
type Relay struct {
	// Client and Backend are the connections to read and write, TLS
	// wrappers where TLS is on.
	Client  net.Conn
	Backend net.Conn
	// ClientPending are bytes the client sent that the protocol's codec
	// read ahead but did not consume; they go to the backend first.
	// BackendPending are the same for the backend's codec.
	ClientPending  []byte
	BackendPending []byte
	// Greeting is the protocol's last answer to the client, written by
	// the relay before anything else reaches the client. A protocol that
	// leaves it to the relay lets the kernel relay take the sockets
	// before the client can speak.
	Greeting []byte
	// TypedMessages says that every message, both ways, has PostgreSQL's
	// shape: a type byte, then a 4-byte big-endian length that counts
	// itself. The kernel relay follows only such streams.
	TypedMessages bool
	// ToBackend and ToClient follow each direction's messages. Without
	// them, a session portcullis ends is simply closed.
	ToBackend Framer
	ToClient  Framer
	// FromClient, if set, sees the client's bytes (ClientPending first)
	// before the backend does, and may answer the client itself.
	FromClient ClientFilter
	// filtered are bytes for the backend that FromClient has already
	// seen (the event loop's, when it hands a session back); they go
	// before ClientPending.
	filtered []byte
	// ended are the streams, by side, whose end the event loop has
	// passed on (a half-close of the other side) before handing the
	// session back.
	ended [2]bool
	// Goodbye writes to the client, between two messages, the protocol's
	// error saying why the session ends (cause is ErrShuttingDown,
	// ErrTerminated, a *RevokedError, or a *BackendLostError when the
	// backend connection broke).
	Goodbye func(w io.Writer, cause error) error
	// Terminate writes the protocol's polite goodbye to the backend,
	// between two messages. May be nil.
	Terminate func(w io.Writer) error
}

// Why a session ended, as session.ended's reason.
const (
	endClientClosed  = "client_closed"
	endBackendClosed = "backend_closed"
	endError         = "error"
	endShutdown      = "shutdown"
	endTerminated    = "terminated"
	endKilled        = "killed"
)

// ErrBackendLost is the cause of a session whose backend connection broke
// while it was relayed (reset, or a read or write that failed). The cause
// itself is a *BackendLostError, which matches it with errors.Is.
var ErrBackendLost = errors.New("the connection to the backend was lost")

// BackendLostError says whose backend connection broke. Its Error is fit
// for the person at the client: it names the resource and the session,
// never the backend's address; Err is what broke, for the log.
type BackendLostError struct {
	Resource string
	Session  string
	Err      error
}

func (e *BackendLostError) Error() string {
	return fmt.Sprintf("the connection to resource %q was lost (session %s)", e.Resource, e.Session)
}

// Is makes a *BackendLostError match ErrBackendLost.
func (e *BackendLostError) Is(target error) bool { return target == ErrBackendLost }

// Unwrap is what broke.
func (e *BackendLostError) Unwrap() error { return e.Err }

// farewellGrace bounds each step of ending a session: finishing the
// message in flight, the goodbye, the backend's cancel.
const farewellGrace = 2 * time.Second

// relayBufferSize is large enough for a TLS record and several of
// PostgreSQL's 8 KiB sends per read.
const relayBufferSize = 64 << 10

var relayBuffers = sync.Pool{New: func() any {
	b := make([]byte, relayBufferSize)
	return &b
}}

// Splice relays between client and backend until both directions have
// ended, either fails, or portcullis ends the session. It logs
// session.started and session.ended; the error is for the log.
func (c *Conn) Splice(r *Relay) error {
	start := c.sessionStarted()
	reason, err := c.relay(r)
	c.sessionEnded(start, reason, err)
	return err
}

// sessionStarted and sessionEnded are kept out of Splice (and out of
// line) because Splice's frame stays on the session's stack for the whole
// session: a small frame lets the runtime shrink an idle session's stack.
//
//go:noinline
func (c *Conn) sessionStarted() time.Time {
	c.dl.lift()
	c.mu.Lock()
	c.spliced = time.Now()
	var backendUser string
	if c.decision != nil {
		backendUser = c.decision.Backend.User
	}
	c.mu.Unlock()
	c.logger().Info("session started", logging.Event("session.started"), zap.String("backend_user", backendUser))
	return time.Now()
}

//go:noinline
func (c *Conn) sessionEnded(start time.Time, reason string, err error) {
	fields := []zap.Field{
		logging.Event("session.ended"),
		zap.String("reason", reason),
		zap.Duration("duration", time.Since(start)),
		zap.Int64("bytes_to_backend", c.toBackend.Load()),
		zap.Int64("bytes_to_client", c.toClient.Load()),
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	c.logger().Info("session ended", fields...)
}

type outcome int

const (
	outEOF     outcome = iota // the source ended cleanly
	outStopped                // portcullis stopped it between reads
	outFailed                 // a read or write failed
)

type relayResult struct {
	dir *direction
	out outcome
	err error
}

// relay carries r on an event loop while it can, then on goroutines. Its
// frame, like Splice's, stays on an idle session's stack.
func (c *Conn) relay(r *Relay) (reason string, err error) {
	if release, ok := c.inKernel(r); ok {
		defer release()
		return c.leftKernel(r)
	}
	if len(r.Greeting) > 0 {
		if _, err := r.Client.Write(r.Greeting); err != nil {
			return endClientClosed, fmt.Errorf("client: writing the login's answer: %w", err)
		}
		r.Greeting = nil
	}
	if out, handled, err := c.onEventLoop(r); handled {
		if out.ended {
			return out.reason, nil
		}
		return c.leftLoop(r, err)
	}
	return c.relayOnGoroutines(r)
}

// leftKernel carries on a session the kernel relay gave back.
//
//go:noinline
func (c *Conn) leftKernel(r *Relay) (string, error) {
	if r.Client == nil {
		return endError, errors.New("leaving the kernel relay: the sockets could not become connections again")
	}
	c.adopt(r.Client, r.Backend)
	return c.relayOnGoroutines(r)
}

// leftLoop carries on a session its event loop gave back.
//
//go:noinline
func (c *Conn) leftLoop(r *Relay, err error) (string, error) {
	// The connections are new ones over the same sockets; they close
	// with the connection, as the ones they replace would have.
	c.adopt(r.Client, r.Backend)
	if err != nil {
		if saidGoodbye(r.ToBackend) {
			return endClientClosed, nil
		}
		return c.leftLoopBroken(*r, err)
	}
	return c.relayOnGoroutines(r)
}

// relayOnGoroutines relays with one goroutine per direction, the
// client's being the session's own.
//
//go:noinline
func (c *Conn) relayOnGoroutines(rp *Relay) (reason string, err error) {
	r := *rp
	var ending atomic.Bool
	endingSet := make(chan struct{})
	stop := context.AfterFunc(c.ctx, func() {
		defer close(endingSet)
		ending.Store(true)
		// Wake both readers; each finishes the write it is in, bounded.
		now := time.Now()
		r.Client.SetReadDeadline(now)
		r.Backend.SetReadDeadline(now)
		r.Client.SetWriteDeadline(now.Add(farewellGrace))
		r.Backend.SetWriteDeadline(now.Add(farewellGrace))
	})
	defer stop()
	// Ended before it got here (an event loop handing back a session
	// being ended): nothing is read until the deadlines are set.
	if c.ctx.Err() != nil {
		<-endingSet
	}

	// Directions are ranked by when they saw their end: a direction that
	// half-closes the other side ranks itself first, so that the answer
	// it provokes cannot overtake it.
	var rank atomic.Int32
	up := newDirection("client -> backend", r.Client, r.Backend, r.ClientPending, r.ToBackend, &c.toBackend, &rank)
	up.filtered = r.filtered
	down := newDirection("backend -> client", r.Backend, r.Client, r.BackendPending, r.ToClient, &c.toClient, &rank)
	if r.FromClient != nil {
		// The filter's answers and the backend's messages share the
		// client's stream: the backend's direction writes under a lock.
		down.mu = new(sync.Mutex)
		up.filter = r.FromClient
		up.out = &filterOutput{up: up, down: down}
	}

	// If the first direction to end failed, one side is broken and nothing
	// more can usefully flow the other way: it wakes the other direction
	// by closing both. A broken backend leaves the client open, only woken
	// from its read, so that it can be told why its session ends.
	finish := func(d *direction, out outcome, err error) relayResult {
		if d.ranked == 1 && out == outFailed {
			r.Backend.Close()
			if d.broken == r.Backend {
				r.Client.SetReadDeadline(time.Now())
			} else {
				r.Client.Close()
			}
		}
		return relayResult{dir: d, out: out, err: err}
	}
	// A stream whose end the event loop passed on is over, and ranks
	// first. Read again, its end would be passed on again, and that fails
	// if the other side has gone meanwhile: the session would seem to
	// have failed on its stream's end, not on what the other side did.
	upOver, downOver := r.ended[sideClient], r.ended[sideBackend]
	if upOver {
		up.end()
	}
	if downOver {
		down.end()
	}
	downDone := make(chan relayResult, 1)
	go func() {
		out, err := outEOF, error(nil)
		if !downOver {
			out, err = down.run(&ending)
		}
		downDone <- finish(down, out, err)
	}()
	// The client's direction runs on the caller's goroutine: an idle
	// session costs one goroutine fewer.
	out, err := outEOF, error(nil)
	if !upOver {
		out, err = up.run(&ending)
	}
	first, second := finish(up, out, err), <-downDone
	if second.dir.ranked == 1 {
		first, second = second, first
	}

	if ending.Load() {
		<-endingSet
		return c.stopped(r, first, second, up, down)
	}
	if saidGoodbye(r.ToBackend) {
		return endClientClosed, nil
	}
	if first.out == outFailed && first.dir.broken == r.Backend {
		c.backendLost(r, first.err)
	}
	return ended(first, second, up)
}

// backendLost tells the client that its backend connection broke, if the
// stream to it is between two messages; otherwise the client is just
// closed. Both directions have ended: nothing else writes to the client.
//
//go:noinline
func (c *Conn) backendLost(r Relay, err error) {
	if r.Goodbye == nil || r.ToClient == nil || r.ToClient.Pending() != 0 {
		return
	}
	c.mu.Lock()
	cause := &BackendLostError{Resource: c.resource, Session: c.id, Err: err}
	c.mu.Unlock()
	r.Client.SetWriteDeadline(time.Now().Add(farewellGrace))
	if err := r.Goodbye(r.Client, cause); err != nil {
		c.logger().Debug("could not tell the client its backend connection broke", zap.Error(err))
	}
}

// stopped ends a session portcullis stopped, once both directions have.
//
//go:noinline
func (c *Conn) stopped(r Relay, first, second relayResult, up, down *direction) (string, error) {
	cause := context.Cause(c.ctx)
	stoppedCleanly := func(d *direction) bool {
		return (first.dir == d && first.out == outStopped) || (second.dir == d && second.out == outStopped)
	}
	c.farewell(r, stoppedCleanly(up), stoppedCleanly(down), cause)
	return endReason(cause), nil
}

// ended says why a session both of whose ends are done ended.
func ended(first, second relayResult, up *direction) (string, error) {
	switch {
	case first.err != nil:
		return endError, first.err
	case second.err != nil && first.dir == up:
		return endClientClosed, second.err
	case second.err != nil:
		return endBackendClosed, second.err
	case first.dir == up:
		return endClientClosed, nil
	default:
		return endBackendClosed, nil
	}
}

func endReason(cause error) string {
	switch {
	case errors.Is(cause, ErrShuttingDown):
		return endShutdown
	case errors.Is(cause, ErrTerminated):
		return endTerminated
	case errors.Is(cause, ErrKilled):
		return endKilled
	case errors.Is(cause, ErrRevoked):
		return endRevoked
	}
	return endError
}

// farewell ends a session portcullis stopped: it asks the backend to
// cancel whatever is running, finishes the message in flight to the
// client, tells the client why, and says goodbye to the backend. Each
// step needs its direction to have stopped cleanly between reads and the
// stream to be followed by a Framer; otherwise the connections are just
// closed by the caller.
func (c *Conn) farewell(r Relay, upStopped, downStopped bool, cause error) {
	log := c.logger()
	ctx, cancel := context.WithTimeout(context.Background(), farewellGrace)
	defer cancel()
	for _, fn := range c.srv.cancels.ofSession(c.id) {
		if err := fn(ctx); err != nil {
			log.Debug("cancel on session end failed", logging.Event("cancel.failed"), zap.Error(err))
		}
	}

	if downStopped && r.ToClient != nil && r.Goodbye != nil {
		deadline := time.Now().Add(farewellGrace)
		r.Backend.SetReadDeadline(deadline)
		r.Client.SetWriteDeadline(deadline)
		err := finishMessage(r.Backend, r.Client, r.ToClient, &c.toClient)
		if err == nil {
			err = r.Goodbye(r.Client, cause)
		}
		if err != nil {
			log.Debug("could not tell the client its session ends", zap.Error(err))
		}
	}
	if upStopped && r.ToBackend != nil && r.ToBackend.Pending() == 0 && r.Terminate != nil {
		r.Backend.SetWriteDeadline(time.Now().Add(farewellGrace))
		if err := r.Terminate(r.Backend); err != nil {
			log.Debug("could not say goodbye to the backend", zap.Error(err))
		}
	}
}

// finishMessage relays exactly the rest of the message in flight from src
// to dst, reading no further.
func finishMessage(src, dst net.Conn, f Framer, count *atomic.Int64) error {
	bufp := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(bufp)
	buf := *bufp
	for {
		n := f.Pending()
		switch {
		case n == 0:
			return nil
		case n < 0:
			return errors.New("stream cannot be framed")
		}
		k, err := src.Read(buf[:min(n, len(buf))])
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return werr
			}
			count.Add(int64(k))
			f.Relayed(buf[:k])
		}
		if err != nil {
			return err
		}
	}
}

// direction is one half of a splice.
type direction struct {
	name    string
	src     net.Conn
	dst     net.Conn
	pending []byte
	framer  Framer
	count   *atomic.Int64
	rank    *atomic.Int32 // shared by both directions
	ranked  int32         // 1 if this direction ended first
	broken  net.Conn      // src or dst, whichever failed
	sink    chunkSink
	// mu, if set, is held while writing to dst, which others write to as
	// well (a filter's answers to the client).
	mu *sync.Mutex
	// filter, if set, decides what of src reaches dst; out is its output.
	filter ClientFilter
	out    *filterOutput
	// filtered go to dst before pending, past the filter, which has seen
	// them.
	filtered []byte
}

func newDirection(name string, src, dst net.Conn, pending []byte, framer Framer, count *atomic.Int64, rank *atomic.Int32) *direction {
	return &direction{name: name, src: src, dst: dst, pending: pending, framer: framer, count: count, rank: rank, sink: newChunkSink(dst)}
}

// end ranks the direction as it sees its end.
func (d *direction) end() { d.ranked = d.rank.Add(1) }

// closeWriter is a connection whose write side can be shut alone (TCP,
// TLS), so the peer sees end of stream while its answer can still flow.
type closeWriter interface{ CloseWrite() error }

func (d *direction) run(ending *atomic.Bool) (outcome, error) {
	// Records an event loop sealed for the client and had no room for go
	// first.
	if tc, ok := d.dst.(*TLSConn); ok {
		if err := tc.rec.flush(); err != nil {
			d.end()
			d.broken = d.dst
			return outFailed, fmt.Errorf("%s: write: %w", d.name, err)
		}
	}
	if len(d.filtered) > 0 {
		if err := d.writeDst(d.filtered); err != nil {
			d.end()
			return outFailed, err
		}
		d.filtered = nil
	}
	if len(d.pending) > 0 {
		if err := d.pass(d.pending); err != nil {
			d.end()
			return outFailed, err
		}
		d.pending = nil
	}
	src := newChunkSource(d.src)
	defer src.close()
	for {
		p, err := src.next()
		if len(p) > 0 {
			werr := d.pass(p)
			src.passed()
			if werr != nil {
				d.end()
				return outFailed, werr
			}
		}
		if err == nil {
			continue
		}
		d.end()
		switch {
		case errors.Is(err, io.EOF):
			if d.filter != nil {
				if err := d.filter.End(d.out); err != nil {
					d.broken = d.out.failedOn()
					return outFailed, err
				}
			}
			if cw, ok := d.dst.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil {
					d.broken = d.dst
					return outFailed, fmt.Errorf("%s: half-close: %w", d.name, err)
				}
			}
			return outEOF, nil
		case ending.Load() && errors.Is(err, os.ErrDeadlineExceeded):
			return outStopped, nil
		default:
			d.broken = d.src
			return outFailed, fmt.Errorf("%s: read: %w", d.name, err)
		}
	}
}

// pass relays p, through the filter if there is one, noting on failure
// which connection broke.
func (d *direction) pass(p []byte) error {
	if d.filter == nil {
		return d.writeDst(p)
	}
	err := d.filter.Filter(p, d.out)
	if err != nil {
		d.broken = d.out.failedOn()
	}
	return err
}

// writeDst writes p to dst, noting dst as broken if that fails.
func (d *direction) writeDst(p []byte) error {
	err := d.write(p)
	if err != nil {
		d.broken = d.dst
	}
	return err
}

func (d *direction) write(p []byte) error {
	if d.mu != nil {
		d.mu.Lock()
		defer d.mu.Unlock()
	}
	if err := d.sink.write(p); err != nil {
		return fmt.Errorf("%s: write: %w", d.name, err)
	}
	d.count.Add(int64(len(p)))
	if d.framer != nil {
		d.framer.Relayed(p)
	}
	return nil
}

// filterOutput is the FilterOutput of the client's direction: up relays
// to the backend, down is the direction whose stream to the client the
// filter's answers join.
type filterOutput struct {
	up, down *direction
	failed   net.Conn // the connection a write failed on
}

func (o *filterOutput) ToBackend(p []byte) error {
	err := o.up.write(p)
	if err != nil {
		o.failed = o.up.dst
	}
	return err
}

func (o *filterOutput) ToClient(p []byte) error {
	d := o.down
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.framer != nil && d.framer.Pending() != 0 {
		return ErrBackendMidMessage
	}
	if err := d.sink.write(p); err != nil {
		o.failed = o.up.src
		return fmt.Errorf("client: answer: %w", err)
	}
	return nil
}

// HandOff is false: the session's own goroutine may wait and answer.
func (o *filterOutput) HandOff([]byte) bool { return false }

// failedOn is the connection to blame for a filter's failure: the one a
// write failed on, else the client, whose bytes the filter refused.
func (o *filterOutput) failedOn() net.Conn {
	if o.failed != nil {
		return o.failed
	}
	return o.up.src
}

// chunkSource reads a direction chunk by chunk into a relay buffer that
// is only lent while a chunk is in flight, where the connection allows
// it, so that an idle session holds no buffer.
type chunkSource interface {
	// next waits for and reads the next chunk. The chunk is valid until
	// passed.
	next() ([]byte, error)
	// passed says the chunk has been passed on: its buffer may go back.
	passed()
	// close gives back any buffer still held.
	close()
}

func newChunkSource(c net.Conn) chunkSource {
	if rc := plainSocket(c); rc != nil {
		s := &rawSource{rc: rc}
		s.readFn = s.read
		return s
	}
	if tc, ok := c.(*TLSConn); ok && tc.rec.rc != nil {
		return &tlsSource{conn: tc}
	}
	return &heldSource{conn: c}
}

// plainSocket is c's descriptor if c is a bare socket or a PollSocket of
// one. Only those are read and written through their descriptors: a
// wrapper (TLS, or anything else embedding a *net.TCPConn) may hold bytes
// of its own.
func plainSocket(c net.Conn) syscall.RawConn {
	switch c := c.(type) {
	case *pollSocket:
		return c.rc
	case *net.TCPConn, *net.UnixConn:
		if rc, err := c.(syscall.Conn).SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// rawIO reads or writes p on a non-blocking descriptor without telling
// the scheduler it is in a system call. Such a call never waits, so the
// scheduler loses nothing, and it saves what entering a system call costs
// a relay that has just woken from idle: waking the runtime's monitor
// thread, a futex call and a context switch on every message.
func rawIO(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), errno
}

// chunkSink writes a direction's chunks.
type chunkSink interface {
	write(p []byte) error
}

func newChunkSink(c net.Conn) chunkSink {
	if rc := plainSocket(c); rc != nil {
		s := &rawSink{rc: rc}
		s.writeFn = s.writeSome
		return s
	}
	return connSink{c}
}

// connSink writes through the connection's own Write.
type connSink struct{ conn net.Conn }

func (s connSink) write(p []byte) error {
	_, err := s.conn.Write(p)
	return err
}

// rawSink writes to a plain socket's descriptor, waiting for room
// through the runtime's poller (and so honouring write deadlines) when
// the socket's buffer is full.
type rawSink struct {
	rc      syscall.RawConn
	writeFn func(fd uintptr) bool // s.writeSome, made once
	p       []byte                // what is left to write
	err     error
}

// writeSome is called by RawConn.Write: true when p is written or the
// write failed, false to wait until the socket is writable.
func (s *rawSink) writeSome(fd uintptr) bool {
	for len(s.p) > 0 {
		n, errno := rawIO(syscall.SYS_WRITE, fd, s.p)
		switch errno {
		case 0:
			s.p = s.p[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.err = errno
			return true
		}
	}
	return true
}

func (s *rawSink) write(p []byte) error {
	s.p, s.err = p, nil
	err := s.rc.Write(s.writeFn)
	s.p = nil
	if err != nil {
		return err // deadline, or closed
	}
	if s.err != nil {
		return s.err // the caller says which call failed
	}
	return nil
}

// heldSource reads through the connection's own Read, which blocks with
// the buffer passed to it: the buffer is held for the whole session.
type heldSource struct {
	conn net.Conn
	buf  *[]byte
}

func (s *heldSource) next() ([]byte, error) {
	if s.buf == nil {
		s.buf = relayBuffers.Get().(*[]byte)
	}
	n, err := s.conn.Read(*s.buf)
	return (*s.buf)[:n], err
}

// passed keeps the buffer: the next Read needs one at once.
func (s *heldSource) passed() {}

func (s *heldSource) close() {
	if s.buf != nil {
		relayBuffers.Put(s.buf)
		s.buf = nil
	}
}

// rawSource waits for the socket to be readable without a buffer, then
// borrows one for as long as there is something to read: the runtime's
// poller calls read again when the descriptor becomes readable, and the
// buffer goes back only when a read finds nothing.
type rawSource struct {
	rc     syscall.RawConn
	readFn func(fd uintptr) bool // s.read, made once: a method value allocates
	buf    *[]byte
	n      int
	err    error
}

// read is called by RawConn.Read: true when it has an outcome, false to
// wait until the socket is readable and be called again.
func (s *rawSource) read(fd uintptr) bool {
	if s.buf == nil {
		s.buf = relayBuffers.Get().(*[]byte)
	}
	var ready bool
	s.n, ready, s.err = readSome(fd, *s.buf)
	if !ready {
		// Nothing to read: wait without holding the buffer.
		relayBuffers.Put(s.buf)
		s.buf = nil
	}
	return ready
}

// readSome reads into p from a non-blocking descriptor, retrying when a
// signal interrupts. ready is false when there is nothing to read yet;
// otherwise n bytes were read (0 at the end of the stream) or err is set.
func readSome(fd uintptr, p []byte) (n int, ready bool, err error) {
	for {
		n, errno := rawIO(syscall.SYS_READ, fd, p)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, false, nil
		case 0:
			return n, true, nil
		}
		return 0, true, errno
	}
}

func (s *rawSource) next() ([]byte, error) {
	if err := s.rc.Read(s.readFn); err != nil {
		return nil, err // deadline, or closed
	}
	switch {
	case s.err != nil:
		return nil, s.err // the caller says which call failed
	case s.n == 0:
		return nil, io.EOF
	}
	return (*s.buf)[:s.n], nil
}

// passed keeps the buffer: the next read is likely to find more (a large
// result), and if it does not, the buffer goes back before the wait.
func (s *rawSource) passed() {}

func (s *rawSource) close() {
	if s.buf != nil {
		relayBuffers.Put(s.buf)
		s.buf = nil
	}
}

// adopt makes conns close when the connection does.
func (c *Conn) adopt(conns ...net.Conn) {
	for _, n := range conns {
		if n != nil {
			c.adopted = append(c.adopted, n)
		}
	}
}

func (c *Conn) closeAdopted() {
	for _, n := range c.adopted {
		n.Close()
	}
}

// leftLoopBroken ends a session whose event loop gave it back broken: a
// read failed on one side, or the sockets could not become connections
// again. As when a direction fails, a broken backend leaves the client
// to be told why its session ends, once the bytes it is owed are written.
func (c *Conn) leftLoopBroken(r Relay, err error) (string, error) {
	var lre *loopReadError
	if !errors.As(err, &lre) || lre.side != sideBackend || r.Client == nil {
		return endError, err
	}
	r.Backend.Close()
	if len(r.BackendPending) > 0 {
		r.Client.SetWriteDeadline(time.Now().Add(farewellGrace))
		down := newDirection("backend -> client", r.Backend, r.Client, nil, r.ToClient, &c.toClient, new(atomic.Int32))
		if down.write(r.BackendPending) != nil {
			return endError, err
		}
	}
	c.backendLost(r, err)
	return endError, err
}

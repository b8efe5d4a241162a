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
	"time"

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
	// ToBackend and ToClient follow each direction's messages. Without
	// them, a session portcullis ends is simply closed.
	ToBackend Framer
	ToClient  Framer
	// Goodbye writes to the client, between two messages, the protocol's
	// error saying why portcullis is ending the session (cause is
	// ErrShuttingDown or ErrTerminated).
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
)

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
func (c *Conn) Splice(r Relay) error {
	c.dl.lift()
	c.mu.Lock()
	c.spliced = time.Now()
	var backendUser string
	if c.decision != nil {
		backendUser = c.decision.Backend.User
	}
	c.mu.Unlock()

	log := c.logger()
	log.Info("session started", logging.Event("session.started"), zap.String("backend_user", backendUser))
	start := time.Now()
	reason, err := c.relay(r)
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
	log.Info("session ended", fields...)
	return err
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

func (c *Conn) relay(r Relay) (reason string, err error) {
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

	up := &direction{name: "client -> backend", src: r.Client, dst: r.Backend, pending: r.ClientPending, framer: r.ToBackend, count: &c.toBackend}
	down := &direction{name: "backend -> client", src: r.Backend, dst: r.Client, pending: r.BackendPending, framer: r.ToClient, count: &c.toClient}
	results := make(chan relayResult, 2)
	for _, d := range []*direction{up, down} {
		go func() {
			out, err := d.run(&ending)
			results <- relayResult{dir: d, out: out, err: err}
		}()
	}

	first := <-results
	if first.out == outFailed {
		// One side is broken; nothing more can usefully flow the other
		// way, so wake the other direction by closing both.
		r.Client.Close()
		r.Backend.Close()
	}
	second := <-results

	if ending.Load() {
		<-endingSet
		cause := context.Cause(c.ctx)
		outs := map[*direction]outcome{first.dir: first.out, second.dir: second.out}
		c.farewell(r, outs[up] == outStopped, outs[down] == outStopped, cause)
		return endReason(cause), nil
	}
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
}

// closeWriter is a connection whose write side can be shut alone (TCP,
// TLS), so the peer sees end of stream while its answer can still flow.
type closeWriter interface{ CloseWrite() error }

func (d *direction) run(ending *atomic.Bool) (outcome, error) {
	if len(d.pending) > 0 {
		if err := d.write(d.pending); err != nil {
			return outFailed, err
		}
	}
	bufp := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(bufp)
	buf := *bufp
	for {
		n, err := d.src.Read(buf)
		if n > 0 {
			if werr := d.write(buf[:n]); werr != nil {
				return outFailed, werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			if cw, ok := d.dst.(closeWriter); ok {
				if err := cw.CloseWrite(); err != nil {
					return outFailed, fmt.Errorf("%s: half-close: %w", d.name, err)
				}
			}
			return outEOF, nil
		case ending.Load() && errors.Is(err, os.ErrDeadlineExceeded):
			return outStopped, nil
		default:
			return outFailed, fmt.Errorf("%s: read: %w", d.name, err)
		}
	}
}

func (d *direction) write(p []byte) error {
	if _, err := d.dst.Write(p); err != nil {
		return fmt.Errorf("%s: write: %w", d.name, err)
	}
	d.count.Add(int64(len(p)))
	if d.framer != nil {
		d.framer.Relayed(p)
	}
	return nil
}

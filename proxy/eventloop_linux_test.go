package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portcullisdb/portcullis/config"
)

// recordingFramer keeps every byte it is told of.
type recordingFramer struct {
	mu  sync.Mutex
	got bytes.Buffer
}

func (f *recordingFramer) Relayed(p []byte) { f.mu.Lock(); f.got.Write(p); f.mu.Unlock() }
func (f *recordingFramer) Pending() int     { return 0 }

func (f *recordingFramer) bytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Clone(f.got.Bytes())
}

// loopSessionsOpen counts the sessions the event loops hold.
func loopSessionsOpen() int {
	loopsOnce.Do(func() { startLoops(0, 0) })
	n := 0
	for _, l := range loops {
		l.mu.Lock()
		n += len(l.ends) / 2
		l.mu.Unlock()
	}
	return n
}

type relayed struct {
	reason string
	err    error
}

// startRelay splices a client and a backend connection as a session's
// relay does; app and db are the far ends, as the client program and the
// database hold them.
func startRelay(t *testing.T, r func(client, backend net.Conn) Relay) (c *Conn, app, db *net.TCPConn, done <-chan relayed) {
	return startRelayWith(t, config.Proxy{}, r)
}

func startRelayWith(t *testing.T, limits config.Proxy, r func(client, backend net.Conn) Relay) (c *Conn, app, db *net.TCPConn, done <-chan relayed) {
	// Small socket buffers, so that a few hundred KiB fill them.
	return startRelayBuffered(t, limits, 16<<10, r)
}

// startRelayBuffered is startRelayWith with socket buffers of the given
// size.
func startRelayBuffered(t *testing.T, limits config.Proxy, size int, r func(client, backend net.Conn) Relay) (c *Conn, app, db *net.TCPConn, done <-chan relayed) {
	t.Helper()
	client, app := tcpPair(t)
	backend, db := tcpPair(t)
	for _, c := range []*net.TCPConn{client, app, backend, db} {
		c.SetReadBuffer(size)
		c.SetWriteBuffer(size)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	t.Cleanup(func() { cancel(nil) })
	c = &Conn{srv: &Server{cancels: &cancelKeys{}, limits: limits}, ctx: ctx, cancel: cancel, log: zap.NewNop()}
	out := make(chan relayed, 1)
	go func() {
		rl := r(PollSocket(client), backend)
		reason, err := c.relay(&rl)
		c.closeAdopted()
		out <- relayed{reason, err}
	}()
	return c, app, db, out
}

// TestEventLoopRelaysBothWaysUnderBackpressure: a plain session goes to
// the event loop, which carries 8 MiB each way at once while neither
// reader keeps up (so both sides' writes fill and wait), in order, with
// every byte counted and shown to the framers; the end of the streams
// then hands the session back to the goroutines, which finish it.
func TestEventLoopRelaysBothWaysUnderBackpressure(t *testing.T) {
	relayBothWays(t, nil)
}

// TestEventLoopFiltersUnderBackpressure: the same with a filter of the
// client's bytes, which the loop runs on every chunk and which keeps the
// last byte of each for the next one (as a filter keeps a cut header):
// the bytes it holds at the end of the stream reach the backend before
// the backend's write side is shut.
func TestEventLoopFiltersUnderBackpressure(t *testing.T) {
	f := &holdingFilter{}
	relayBothWays(t, f)
	if f.chunks.Load() < 2 || f.handOffs.Load() != 0 {
		t.Errorf("the filter saw %d chunks and handed off %d times; want several and none", f.chunks.Load(), f.handOffs.Load())
	}
}

func relayBothWays(t *testing.T, filter *holdingFilter) {
	before := loopSessionsOpen()
	toClient, toBackend := &recordingFramer{}, &recordingFramer{}
	pending := []byte("read ahead by the handshake")
	if filter != nil {
		pending = nil // a filtered session with read-ahead stays on goroutines
	}
	c, app, db, done := startRelay(t, func(client, backend net.Conn) Relay {
		r := Relay{Client: client, Backend: backend, ClientPending: pending, ToClient: toClient, ToBackend: toBackend}
		if filter != nil {
			r.FromClient = filter
		}
		return r
	})

	up, down := make([]byte, 8<<20), make([]byte, 8<<20)
	rand.Read(up)
	rand.Read(down)
	// '!' is the test filter's command.
	up = bytes.ReplaceAll(up, []byte("!"), []byte("?"))

	// Each side writes all of its stream before it starts reading: the
	// relay's writes meet full socket buffers both ways.
	var wg sync.WaitGroup
	var gotByDB, gotByApp []byte
	var readErrs [2]error
	send := func(conn *net.TCPConn, p []byte, wrote chan<- struct{}) {
		if _, err := conn.Write(p); err != nil {
			t.Errorf("write: %v", err)
		}
		close(wrote)
		conn.CloseWrite()
	}
	appWrote, dbWrote := make(chan struct{}), make(chan struct{})
	wg.Go(func() { send(app, up, appWrote) })
	wg.Go(func() { send(db, down, dbWrote) })
	// Both writers are blocked until someone reads, which is what proves
	// the session reached the loop first.
	deadline := time.Now().Add(10 * time.Second)
	for loopSessionsOpen() == before {
		if time.Now().After(deadline) {
			t.Fatal("the plain session never reached an event loop")
		}
		time.Sleep(time.Millisecond)
	}
	wg.Go(func() { gotByDB, readErrs[0] = io.ReadAll(db) })
	wg.Go(func() { gotByApp, readErrs[1] = io.ReadAll(app) })
	wg.Wait()
	for _, err := range readErrs {
		if err != nil {
			t.Fatal(err)
		}
	}

	wantDB := append(bytes.Clone(pending), up...)
	if sha256.Sum256(gotByDB) != sha256.Sum256(wantDB) {
		t.Errorf("the backend got %d bytes, not the %d the client sent (after the read-ahead)", len(gotByDB), len(wantDB))
	}
	if sha256.Sum256(gotByApp) != sha256.Sum256(down) {
		t.Errorf("the client got %d bytes, not the %d the backend sent", len(gotByApp), len(down))
	}
	if got := toBackend.bytes(); !bytes.Equal(got, wantDB) {
		t.Errorf("the client's framer was told of %d bytes, want the %d relayed, in order", len(got), len(wantDB))
	}
	if got := toClient.bytes(); !bytes.Equal(got, down) {
		t.Errorf("the backend's framer was told of %d bytes, want the %d relayed, in order", len(got), len(down))
	}
	if c.toBackend.Load() != int64(len(wantDB)) || c.toClient.Load() != int64(len(down)) {
		t.Errorf("counted %d bytes to the backend and %d to the client, want %d and %d", c.toBackend.Load(), c.toClient.Load(), len(wantDB), len(down))
	}
	r := <-done
	if r.err != nil || (r.reason != endClientClosed && r.reason != endBackendClosed) {
		t.Errorf("the relay ended with %q, %v; want a clean close", r.reason, r.err)
	}
	if n := loopSessionsOpen(); n != before {
		t.Errorf("the loops still hold %d sessions after the session ended, want %d", n, before)
	}
}

// holdingFilter passes the client's bytes on, keeping the last byte of
// each chunk for the next; '!' is a command it answers itself ("ack"),
// after handing off to the session's goroutine where it must.
type holdingFilter struct {
	held     []byte
	chunks   atomic.Int64
	handOffs atomic.Int64
}

func (f *holdingFilter) Filter(p []byte, out FilterOutput) error {
	f.chunks.Add(1)
	p = append(f.held, p...)
	f.held = nil
	if i := bytes.IndexByte(p, '!'); i >= 0 {
		if err := out.ToBackend(p[:i]); err != nil {
			return err
		}
		if out.HandOff(p[i:]) {
			f.handOffs.Add(1)
			return nil
		}
		if err := out.ToClient([]byte("ack")); err != nil {
			return err
		}
		p = p[i+1:]
	}
	if len(p) == 0 {
		return nil
	}
	f.held = []byte{p[len(p)-1]}
	return out.ToBackend(p[:len(p)-1])
}

func (f *holdingFilter) End(out FilterOutput) error {
	held := f.held
	f.held = nil
	if len(held) == 0 {
		return nil
	}
	return out.ToBackend(held)
}

// TestEventLoopFilterHandsOff: a filter that must answer the client hands
// the session from the loop to its goroutine, with what it had not yet
// passed on; the goroutine filters it, answers, and relays the rest of
// the session, the bytes held by the filter included.
func TestEventLoopFilterHandsOff(t *testing.T) {
	before := loopSessionsOpen()
	f := &holdingFilter{}
	_, app, db, done := startRelay(t, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend, FromClient: f}
	})
	// All but the byte the filter holds.
	sendThrough(t, app, db, "select", "selec")
	if n := loopSessionsOpen(); n != before+1 {
		t.Fatalf("the loops hold %d sessions, want %d", n, before+1)
	}

	if _, err := app.Write([]byte("!tail")); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 3)
	if _, err := io.ReadFull(app, ack); err != nil || string(ack) != "ack" {
		t.Fatalf("the client read %q, %v; want the filter's answer", ack, err)
	}
	if f.handOffs.Load() != 1 {
		t.Errorf("%d hand-offs, want 1", f.handOffs.Load())
	}
	if n := loopSessionsOpen(); n != before {
		t.Errorf("the loops hold %d sessions after the hand-off, want %d", n, before)
	}
	app.CloseWrite()
	got, err := io.ReadAll(db)
	if err != nil || string(got) != "ttail" {
		t.Errorf("the backend read %q, %v after the hand-off; want the held byte and the rest", got, err)
	}
	db.CloseWrite()
	if rest, err := io.ReadAll(app); err != nil || len(rest) != 0 {
		t.Errorf("the client read %q, %v at the end", rest, err)
	}
	if r := <-done; r.err != nil || r.reason != endClientClosed {
		t.Errorf("ended with %q, %v; want %q", r.reason, r.err, endClientClosed)
	}
}

// TestEventLoopFilterSeesReadAhead: bytes the handshake read ahead of a
// filtered session go through the filter, never straight to the backend
// (a COM_CHANGE_USER pipelined behind a login must be answered, not
// passed on).
func TestEventLoopFilterSeesReadAhead(t *testing.T) {
	f := &holdingFilter{}
	_, app, db, done := startRelay(t, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend, FromClient: f, ClientPending: []byte("ab!cd")}
	})
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	db.SetReadDeadline(time.Now().Add(10 * time.Second))
	ack := make([]byte, 3)
	if _, err := io.ReadFull(app, ack); err != nil || string(ack) != "ack" {
		t.Fatalf("the client read %q, %v; want the filter's answer", ack, err)
	}
	app.CloseWrite()
	if got, err := io.ReadAll(db); err != nil || string(got) != "abcd" {
		t.Errorf("the backend read %q, %v; want the read-ahead bytes as the filter passed them", got, err)
	}
	db.CloseWrite()
	io.ReadAll(app)
	if r := <-done; r.err != nil {
		t.Errorf("ended with %q, %v", r.reason, r.err)
	}
}

// sendThrough writes sent on the client program's end and reads want from
// the database's.
func sendThrough(t *testing.T, app, db net.Conn, sent, want string) {
	t.Helper()
	if _, err := app.Write([]byte(sent)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(db, buf); err != nil || string(buf) != want {
		t.Fatalf("the backend read %q, %v; want %q", buf, err, want)
	}
}

// TestEventLoopHandsBackEndedSessions: ending a session that sits idle on
// the loop gives its sockets back to the goroutines, which write the
// goodbye to the client and close the backend.
func TestEventLoopHandsBackEndedSessions(t *testing.T) {
	before := loopSessionsOpen()
	c, app, db, done := startRelay(t, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend, ToClient: &recordingFramer{}, ToBackend: &recordingFramer{},
			Goodbye: func(w io.Writer, cause error) error {
				_, err := io.WriteString(w, "goodbye: "+cause.Error())
				return err
			}}
	})
	// One round trip through the loop, then the session idles there.
	sendThrough(t, app, db, "ping", "ping")
	if n := loopSessionsOpen(); n != before+1 {
		t.Fatalf("the loops hold %d sessions, want %d", n, before+1)
	}

	c.cancel(ErrTerminated)
	got, err := io.ReadAll(app)
	if err != nil {
		t.Fatal(err)
	}
	if want := "goodbye: " + ErrTerminated.Error(); string(got) != want {
		t.Errorf("the client read %q, want %q", got, want)
	}
	if _, err := io.ReadAll(db); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Errorf("the backend's end: %v", err)
	}
	if r := <-done; r.reason != endTerminated {
		t.Errorf("ended with %q, %v; want %q", r.reason, r.err, endTerminated)
	}
	if n := loopSessionsOpen(); n != before {
		t.Errorf("the loops still hold %d sessions, want %d", n, before)
	}
}

// TestEventLoopOff: with relay_threads -1, a plain session is relayed by
// goroutines, and relayed all the same.
func TestEventLoopOff(t *testing.T) {
	before := loopSessionsOpen()
	_, app, db, done := startRelayWith(t, config.Proxy{RelayThreads: -1}, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend}
	})
	sendThrough(t, app, db, "ping", "ping")
	if n := loopSessionsOpen(); n != before {
		t.Errorf("the loops hold %d sessions with the event loop off, want %d", n, before)
	}
	app.CloseWrite()
	db.CloseWrite()
	if r := <-done; r.reason != endClientClosed && r.reason != endBackendClosed {
		t.Errorf("ended with %q, %v; want a clean close", r.reason, r.err)
	}
}

// TestLeftLoopBrokenBackend: a backend read that failed inside the loop
// ends the session as a failed backend direction does: the client gets
// the bytes the loop held for it, then the goodbye; the backend is
// closed.
func TestLeftLoopBrokenBackend(t *testing.T) {
	client, app := tcpPair(t)
	backend, db := tcpPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	c := &Conn{srv: &Server{cancels: &cancelKeys{}}, ctx: ctx, cancel: cancel, log: zap.NewNop(), id: "s1", resource: "echo"}
	framer := &recordingFramer{}
	owed := []byte("the end of a result")
	r := Relay{Client: PollSocket(client), Backend: PollSocket(backend), BackendPending: owed, ToClient: framer,
		Goodbye: func(w io.Writer, cause error) error {
			_, err := io.WriteString(w, "|bye: "+cause.Error())
			return err
		}}
	reason, err := c.leftLoopBroken(r, &loopReadError{side: sideBackend, err: syscall.ECONNRESET})
	if reason != endError || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("ended with %q, %v; want %q and the read's error", reason, err, endError)
	}
	client.Close()
	got, _ := io.ReadAll(app)
	want := string(owed) + `|bye: the connection to resource "echo" was lost (session s1)`
	if string(got) != want {
		t.Errorf("the client read %q, want %q", got, want)
	}
	if _, err := db.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the backend's end: %v, want it closed", err)
	}
	if !bytes.Equal(framer.bytes(), owed) || c.toClient.Load() != int64(len(owed)) {
		t.Errorf("framer told of %q and %d bytes counted; want %q", framer.bytes(), c.toClient.Load(), owed)
	}
}

// goodbyeFramer says the client said goodbye once it has been told of
// the word.
type goodbyeFramer struct {
	recordingFramer
	word string
}

func (f *goodbyeFramer) SaidGoodbye() bool {
	return f.word != "" && bytes.Contains(f.bytes(), []byte(f.word))
}

// TestGoodbyeThenReset: a client that says the protocol's goodbye, sees
// the backend close in answer, and then resets its connection (as the
// mariadb command line does over TLS, closing with portcullis's
// half-close unread) has closed its session: not a backend close, not a
// failure. Without the goodbye the same sockets end a session whose
// client failed after the backend closed. On the event loop and off it.
func TestGoodbyeThenReset(t *testing.T) {
	for _, loop := range []bool{true, false} {
		for _, goodbye := range []string{"QUIT", ""} {
			limits := config.Proxy{}
			if !loop {
				limits.RelayThreads = -1
			}
			_, app, db, done := startRelayWith(t, limits, func(client, backend net.Conn) Relay {
				return Relay{Client: client, Backend: backend, ToBackend: &goodbyeFramer{word: goodbye}}
			})
			sendThrough(t, app, db, "QUIT", "QUIT")
			db.Close()
			app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := app.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("loop %v: the client's read after the backend closed: %v, want EOF", loop, err)
			}
			app.SetLinger(0)
			app.Close()
			r := <-done
			switch {
			case goodbye != "" && (r.reason != endClientClosed || r.err != nil):
				t.Errorf("loop %v, after the goodbye: ended with %q, %v; want %q and no error", loop, r.reason, r.err, endClientClosed)
			case goodbye == "" && (r.reason == endClientClosed || !errors.Is(r.err, syscall.ECONNRESET)):
				t.Errorf("loop %v, without a goodbye: ended with %q, %v; want the client's reset", loop, r.reason, r.err)
			}
		}
	}
}

// TestEventLoopWakesFromSleep: a loop that has had nothing to do for
// loopWaitMax gives its processor back and waits parked in the runtime's
// poller; the next message, either way, wakes it and is relayed there.
func TestEventLoopWakesFromSleep(t *testing.T) {
	before := loopSessionsOpen()
	_, app, db, done := startRelay(t, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend}
	})
	deadline := time.Now().Add(20 * time.Second)
	app.SetDeadline(deadline)
	db.SetDeadline(deadline)
	sendThrough(t, app, db, "hello", "hello")
	waitOnLoop(t, before+1)
	// Asleep, a loop holds a duplicate of its epoll descriptor, which it
	// closes on waking: as many epoll instances each time it sleeps.
	asleepFDs := -1
	for range 3 {
		waitAsleep(t)
		if n := epollFDs(t); asleepFDs < 0 {
			asleepFDs = n
		} else if n != asleepFDs {
			t.Errorf("asleep again, the process holds %d epoll instances, against %d the first time", n, asleepFDs)
		}
		sendThrough(t, app, db, "select 1", "select 1")
		waitAsleep(t)
		sendThrough(t, db, app, "one row", "one row")
	}
	if n := loopSessionsOpen(); n != before+1 {
		t.Errorf("the loops hold %d sessions, want %d", n, before+1)
	}
	app.Close()
	db.Close()
	<-done
}

// epollFDs counts the epoll instances this process holds open.
func epollFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "anon_inode:[eventpoll]" {
			n++
		}
	}
	return n
}

// waitAsleep waits for every event loop to be asleep, parked in the
// runtime's poller.
func waitAsleep(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		asleep := true
		for _, l := range loops {
			asleep = asleep && l.asleep.Load()
		}
		if asleep {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the event loops did not go to sleep")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBusyPoll: with busy polling on and a CPU to spare, a loop finds
// its next event by looking for it; without a CPU to spare, or with busy
// polling off, it waits for it without looking first. A look that finds
// nothing ends when the time to look is up.
func TestBusyPoll(t *testing.T) {
	l, err := newEventLoop()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(l.wake)
		unix.Close(l.epfd)
	})
	events := make([]unix.EpollEvent, 8)
	for _, tt := range []struct {
		name  string
		spin  time.Duration
		spare bool
		looks bool
	}{
		{"on, a CPU to spare", time.Second, true, true},
		{"on, no CPU to spare", time.Second, false, false},
		{"off", 0, true, false},
	} {
		l.spin, l.cpuToSpare = tt.spin, func() bool { return tt.spare }
		before := l.spins.Load()
		if _, err := unix.Write(l.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		n := l.poll(events)
		var b [8]byte
		if _, err := unix.Read(l.wake, b[:]); err != nil {
			t.Fatalf("%s: reading the wake-up back: %v", tt.name, err)
		}
		if n != 1 || int(events[0].Fd) != l.wake {
			t.Errorf("%s: poll found %d events, want the one wake-up", tt.name, n)
		}
		if looked := l.spins.Load() - before; (looked > 0) != tt.looks {
			t.Errorf("%s: the loop looked %d times before the event, want looks %v", tt.name, looked, tt.looks)
		}
	}

	l.spin, l.cpuToSpare = 2*time.Millisecond, func() bool { return true }
	before := l.spins.Load()
	if n := l.busyPoll(events); n != 0 {
		t.Errorf("busy polling with nothing to find found %d events", n)
	}
	if looked := l.spins.Load() - before; looked < 2 {
		t.Errorf("busy polling for 2ms looked %d times, want it to look until the time was up", looked)
	}
}

func TestRunnableTasks(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		isOK bool
	}{
		{"0.61 0.55 0.48 3/415 12345\n", 3, true},
		{"12.00 11.50 9.75 17/2048 99\n", 17, true},
		{"0.61 0.55 0.48", 0, false},
		{"0.61 0.55 0.48 3 12345", 0, false},
		{"0.61 0.55 0.48 x/415 12345", 0, false},
		{"0.61 0.55 0.48 -1/415 12345", 0, false},
		{"", 0, false},
	} {
		n, ok := runnableTasks([]byte(tt.in))
		if ok != tt.isOK || (ok && n != tt.n) {
			t.Errorf("runnableTasks(%q) = %d, %v; want %d, %v", tt.in, n, ok, tt.n, tt.isOK)
		}
	}
}

// Package hostile is the protocol-neutral half of portcullis's bad-input
// catalogues: a runner that drives a table of hostile clients at a
// listener and then checks that nothing was left behind and that a
// well-behaved client still gets in, and the raw-socket tools the cases
// share (dialling, dripping bytes, silent connections, waiting for a
// close).
//
// Each protocol package keeps its own table (proxy/postgres has one; the
// MySQL listener's is a second table in proxy/mysql) because only it knows
// what a protocol-native error looks like; the rules every case obeys are
// here:
//
//   - every case ends with a protocol-native error or a close, never a
//     panic (a panic in a connection handler ends the test binary);
//   - after the whole table, the server holds no connection, and the
//     goroutine and file-descriptor counts return to what they were
//     before it, within a deadline;
//   - a good client works before the table and right after it.
package hostile

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Case is one hostile client.
type Case struct {
	Name string
	// Slow marks a case that waits for the handshake deadline; slow cases
	// run alongside the others (not limited by -parallel) so that the
	// catalogue costs about one deadline, not one per case.
	Slow bool
	// Run sends the hostile input and asserts the answer; it closes what
	// it opens (Dial registers a cleanup).
	Run func(t *testing.T)
}

// Target is the server under test, seen from outside.
type Target struct {
	// Open is the number of client connections the server holds.
	Open func() int
	// Settle drops what the process keeps between connections that is no
	// connection's state (idle keep-alive connections of HTTP clients to
	// the identity provider), before goroutines and fds are counted. May
	// be nil.
	Settle func()
	// GoodClient connects as a well-behaved client, does real work and
	// fails t if anything is wrong.
	GoodClient func(t *testing.T)
}

// Deadlines and slack of the runner.
const (
	// settleTimeout bounds the wait for connections, goroutines and fds
	// to go back to their baseline after the table.
	settleTimeout = 15 * time.Second
	// slack absorbs runtime and network-poller goroutines (and their
	// fds) that come and go on their own; a per-connection leak over a
	// catalogue of hundreds of connections is far larger.
	slack = 5
)

// Run runs cases against target: a good client first (which also warms
// up whatever is created once), a baseline count, every case, then the
// leak check and the good client again.
func Run(t *testing.T, target Target, cases []Case) {
	t.Helper()
	names := map[string]bool{}
	for _, c := range cases {
		if names[c.Name] {
			t.Fatalf("two cases are named %q", c.Name)
		}
		names[c.Name] = true
	}

	t.Run("good client before", target.GoodClient)
	if t.Failed() {
		return
	}
	waitOpen(t, target, "before the catalogue")
	settle(target)
	goroutines, fds := runtime.NumGoroutine(), FDs(t)

	t.Run("cases", func(t *testing.T) {
		// Slow cases run in goroutines of their own (t.Run may be called
		// concurrently), the rest one after another meanwhile.
		var wg sync.WaitGroup
		for _, c := range cases {
			if c.Slow {
				wg.Add(1)
				go func() {
					defer wg.Done()
					t.Run(c.Name, c.Run)
				}()
			}
		}
		for _, c := range cases {
			if !c.Slow {
				t.Run(c.Name, c.Run)
			}
		}
		wg.Wait()
	})

	waitOpen(t, target, "after the catalogue")
	deadline := time.Now().Add(settleTimeout)
	for {
		settle(target)
		g, f := runtime.NumGoroutine(), FDs(t)
		if g <= goroutines+slack && f <= fds+slack {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("left behind after the catalogue: %d goroutines (was %d), %d fds (was %d)\n%s",
				g, goroutines, f, fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}

	t.Run("good client after", target.GoodClient)
}

func settle(target Target) {
	if target.Settle != nil {
		target.Settle()
	}
}

func waitOpen(t *testing.T, target Target, when string) {
	t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for target.Open() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the server still holds %d connections", when, target.Open())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FDs counts the process's open file descriptors.
func FDs(t testing.TB) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(entries)
}

// dialTimeout bounds a connect; connTimeout bounds everything a case does
// on one connection, so a server that never answers fails the case
// instead of hanging the suite.
const (
	dialTimeout = 5 * time.Second
	connTimeout = 20 * time.Second
)

// Dial opens a TCP connection to addr, closed when t ends, with an
// overall deadline.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	tc := c.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(connTimeout))
	t.Cleanup(func() { tc.Close() })
	return tc
}

// Closed reports whether err from a read means the peer closed the
// connection (an orderly end or a reset).
func Closed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// ReadToClose reads from c until the peer closes it and returns what it
// sent; it fails t if c is still open after within.
func ReadToClose(t testing.TB, c net.Conn, within time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err == nil {
			continue
		}
		if Closed(err) {
			return got
		}
		t.Fatalf("the server did not close the connection within %s (read: %v; %d bytes so far)", within, err, len(got))
	}
}

// ExpectSilentClose fails t unless the peer closes c within `within`
// without sending anything.
func ExpectSilentClose(t testing.TB, c net.Conn, within time.Duration) {
	t.Helper()
	if got := ReadToClose(t, c, within); len(got) > 0 {
		t.Fatalf("want a close without an answer, got %d bytes: %q", len(got), Excerpt(got))
	}
}

// Drip writes data one byte every interval until it is all written, the
// write fails (the server closed), or stop is closed. It returns how many
// bytes were written.
func Drip(c net.Conn, data []byte, interval time.Duration, stop <-chan struct{}) int {
	for i := range data {
		if i > 0 {
			select {
			case <-time.After(interval):
			case <-stop:
				return i
			}
		}
		if _, err := c.Write(data[i : i+1]); err != nil {
			return i
		}
	}
	return len(data)
}

// Silent opens n connections to addr that never send a byte and returns
// them; they are closed when t ends.
func Silent(t testing.TB, addr string, n int) []*net.TCPConn {
	t.Helper()
	conns := make([]*net.TCPConn, 0, n)
	for range n {
		conns = append(conns, Dial(t, addr))
	}
	return conns
}

// AllClosedBy waits, in parallel, until the server has closed every one
// of conns, and fails t for those still open at deadline. Each
// connection's bytes go to check (which may be nil).
func AllClosedBy(t testing.TB, conns []*net.TCPConn, deadline time.Time, check func(i int, got []byte) error) {
	t.Helper()
	errs := make(chan error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			got, err := io.ReadAll(c)
			switch {
			case err != nil && !Closed(err):
				errs <- fmt.Errorf("connection %d still open at the deadline (%v)", i, err)
			case check != nil:
				if err := check(i, got); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var n int
	var first error
	for err := range errs {
		if first == nil {
			first = err
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d connections: first: %v", n, len(conns), first)
	}
}

// Excerpt shortens b for a failure message.
func Excerpt(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

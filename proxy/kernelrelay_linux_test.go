package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/portcullisdb/portcullis/config"
)

// typedFramer follows PostgreSQL-shaped messages, as the postgres
// package's framer does, for the kernel relay's tests.
type typedFramer struct {
	hdr     []byte
	body    int
	lost    bool
	goodbye bool
}

func (f *typedFramer) Relayed(p []byte) {
	for len(p) > 0 && !f.lost {
		if f.body > 0 {
			k := min(f.body, len(p))
			f.body, p = f.body-k, p[k:]
			continue
		}
		k := min(5-len(f.hdr), len(p))
		f.hdr, p = append(f.hdr, p[:k]...), p[k:]
		if len(f.hdr) < 5 {
			return
		}
		n := int(binary.BigEndian.Uint32(f.hdr[1:])) - 4
		f.lost = n < 0
		f.goodbye = f.goodbye || (f.hdr[0] == 'X' && n == 0)
		f.body, f.hdr = n, f.hdr[:0]
	}
}

func (f *typedFramer) Pending() int {
	switch {
	case f.lost:
		return -1
	case len(f.hdr) > 0:
		return 5 - len(f.hdr)
	}
	return f.body
}

func (f *typedFramer) SaidGoodbye() bool { return f.goodbye }

func typed(t byte, body string) []byte {
	p := []byte{t, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(p[1:], uint32(4+len(body)))
	return append(p, body...)
}

// kernelRelayHere skips where the kernel relay cannot load without
// privilege; as root it must load.
func kernelRelayHere(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the kernel relay needs CAP_BPF and CAP_NET_ADMIN")
	}
}

func startKernelSession(t *testing.T) (c *Conn, app, db *net.TCPConn, done <-chan relayed) {
	t.Helper()
	kernelRelayHere(t)
	var err error
	l := theKernel
	l.once.Do(func() { l.kernel, err = startKernelRelay() })
	if l.kernel == nil {
		t.Fatalf("the kernel relay did not start: %v", err)
	}
	c, app, db, done = startRelayBuffered(t, config.Proxy{KernelRelay: true}, 64<<10, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend, TypedMessages: true,
			Greeting: typed('Z', "I"),
			ToClient: &typedFramer{}, ToBackend: &typedFramer{},
			Goodbye: func(w io.Writer, cause error) error {
				_, err := w.Write(typed('E', cause.Error()))
				return err
			}}
	})
	readExactly(t, app, typed('Z', "I"))
	return c, app, db, done
}

func readExactly(t *testing.T, r io.Reader, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// TestKernelRelayEndsBetweenMessages: a session in the kernel relay
// carries round trips without portcullis reading them; ended while the
// backend is halfway through a message, it finishes that message, then
// the client gets the goodbye, and every byte is counted.
func TestKernelRelayEndsBetweenMessages(t *testing.T) {
	for _, split := range []struct {
		name string
		at   int // bytes of the answer sent before the end
	}{{"in the body", 9}, {"in the header", 3}} {
		t.Run(split.name, func(t *testing.T) {
			c, app, db, done := startKernelSession(t)
			query, answer := typed('Q', "select 1"), append(typed('D', "one row"), typed('C', "SELECT 1")...)
			for range 200 {
				app.Write(query)
				readExactly(t, db, query)
				db.Write(answer)
				readExactly(t, app, answer)
			}
			if n := c.toBackend.Load(); n != 0 {
				t.Fatalf("user space relayed %d bytes; the kernel should have", n)
			}
			// The console's count includes what the kernel relayed.
			if info := c.info(); info.BytesToBackend != int64(200*len(query)) || info.BytesToClient != int64(200*len(answer)) {
				t.Errorf("the session's counts are %d and %d, want %d and %d", info.BytesToBackend, info.BytesToClient, 200*len(query), 200*len(answer))
			}
			last := typed('D', "a row of some length")
			db.Write(last[:split.at])
			readExactly(t, app, last[:split.at])

			left := make(chan struct{})
			leftKernelHook = func() { close(left) }
			t.Cleanup(func() { leftKernelHook = nil })
			c.cancel(ErrTerminated)
			// The rest comes once user space has the session back.
			<-left
			db.Write(last[split.at:])
			readExactly(t, app, last[split.at:])
			readExactly(t, app, typed('E', ErrTerminated.Error()))
			if r := <-done; r.reason != endTerminated {
				t.Errorf("ended with %q, %v; want %q", r.reason, r.err, endTerminated)
			}
			wantUp, wantDown := int64(200*len(query)), int64(200*len(answer)+len(last))
			if up, down := c.toBackend.Load(), c.toClient.Load(); up != wantUp || down != wantDown {
				t.Errorf("counted %d bytes to the backend and %d to the client, want %d and %d", up, down, wantUp, wantDown)
			}
		})
	}
}

// TestKernelRelayClientSaysGoodbye: the client's Terminate, then its
// close, end a session in the kernel relay as the client closing; the
// backend gets the Terminate, then the end of its stream.
func TestKernelRelayClientSaysGoodbye(t *testing.T) {
	_, app, db, done := startKernelSession(t)
	app.Write(typed('X', ""))
	app.Close()
	got, err := io.ReadAll(db)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	if !bytes.Equal(got, typed('X', "")) {
		t.Errorf("the backend read %q, want a Terminate", got)
	}
	db.Close()
	if r := <-done; r.reason != endClientClosed {
		t.Errorf("ended with %q, %v; want %q", r.reason, r.err, endClientClosed)
	}
}

// TestKernelRelayCarriesBulk: 8 MiB each way at once, neither reader
// keeping up with its writer, arrive whole and in order, and the session
// leaves the kernel still between messages.
func TestKernelRelayCarriesBulk(t *testing.T) {
	c, app, db, done := startKernelSession(t)
	row := typed('d', string(bytes.Repeat([]byte("0123456789abcdef"), 64)))
	const rows = 8 << 20 / 1029
	stream := bytes.Repeat(row, rows)
	errs := make(chan error, 2)
	go func() { _, err := app.Write(stream); errs <- err }()
	go func() { _, err := db.Write(stream); errs <- err }()
	readExactly(t, db, stream)
	readExactly(t, app, stream)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.cancel(ErrTerminated)
	readExactly(t, app, typed('E', ErrTerminated.Error()))
	<-done
	if up, down := c.toBackend.Load(), c.toClient.Load(); up != int64(len(stream)) || down != int64(len(stream)) {
		t.Errorf("counted %d and %d bytes, want %d each way", up, down, len(stream))
	}
}

// TestKernelRelayClientResets: a client that resets its connection in
// the middle of a session in the kernel relay has the backend told (its
// stream ends), and the session ends once the backend closes, as a
// database does when its client goes. (Once the socket has left the
// socket map, a read may see the reset as the end of the stream.)
func TestKernelRelayClientResets(t *testing.T) {
	_, app, db, done := startKernelSession(t)
	app.Write(typed('Q', "select 1"))
	readExactly(t, db, typed('Q', "select 1"))
	app.SetLinger(0)
	app.Close()
	if _, err := io.ReadAll(db); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("the backend's end: %v", err)
	}
	db.Close()
	if r := <-done; r.reason != endClientClosed && r.reason != endError {
		t.Errorf("ended with %q, %v; want the client's closing or an error", r.reason, r.err)
	}
}

// TestKernelRelayUnavailable: where the kernel refuses the relay's
// program, portcullis says so once and relays in user space.
func TestKernelRelayUnavailable(t *testing.T) {
	saved, savedStart := theKernel, startKernel
	t.Cleanup(func() { theKernel, startKernel = saved, savedStart })
	theKernel = &kernelLoad{}
	tries := 0
	startKernel = func() (*kernelRelay, error) {
		tries++
		return nil, errors.New("load the verdict program: operation not permitted")
	}
	for range 2 {
		c, app, db, done := startRelayBuffered(t, config.Proxy{KernelRelay: true}, 64<<10, func(client, backend net.Conn) Relay {
			return Relay{Client: client, Backend: backend, TypedMessages: true, Greeting: typed('Z', "I"),
				ToClient: &typedFramer{}, ToBackend: &typedFramer{}}
		})
		readExactly(t, app, typed('Z', "I"))
		sendThrough(t, app, db, string(typed('Q', "select 1")), string(typed('Q', "select 1")))
		app.Close()
		db.Close()
		<-done
		if n := c.toBackend.Load(); n != int64(len(typed('Q', "select 1"))) {
			t.Errorf("counted %d bytes to the backend, want the query's", n)
		}
	}
	if tries != 1 || theKernel.kernel != nil {
		t.Errorf("tried to load the kernel relay %d times (want once), and have %v", tries, theKernel.kernel)
	}
}

package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/config"
)

// startTLSRelay is startRelay with TLS on the client leg: app is the
// client program's TLS connection, and the relay gets the server's end as
// TLSServer makes it, its handshake done, as a login leaves it.
func startTLSRelay(t *testing.T, limits config.Proxy, r func(client, backend net.Conn) Relay) (c *Conn, app *tls.Conn, appTCP, db *net.TCPConn, done <-chan relayed) {
	t.Helper()
	serverCfg, clientCfg := testTLSConfigs(t)
	handshook := make(chan error, 1)
	// Socket buffers that a TLS record fits in several times over: with
	// buffers smaller than a record, loopback TCP waits for its window
	// probes, whoever relays.
	c, appTCP, db, done = startRelayBuffered(t, limits, 128<<10, func(client, backend net.Conn) Relay {
		tc := TLSServer(client, nil, serverCfg)
		handshook <- tc.Handshake()
		return r(tc, backend)
	})
	app = tls.Client(appTCP, clientCfg)
	if err := app.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-handshook; err != nil {
		t.Fatal(err)
	}
	return c, app, appTCP, db, done
}

// waitOnLoop waits for the loops to hold want sessions.
func waitOnLoop(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for loopSessionsOpen() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the loops hold %d sessions, want %d", loopSessionsOpen(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestEventLoopRelaysTLS: a session with TLS on the client leg goes to
// the event loop, which carries 4 MiB each way at once through
// crypto/tls while neither reader keeps up, in order, telling the
// framers and counts of the data (not of the records); the session is
// still on the loop after it, and the ends of both streams (the client's
// close_notify, the backend's FIN, passed on as a close_notify) end it
// there.
func TestEventLoopRelaysTLS(t *testing.T) {
	relayTLSBothWays(t, nil)
}

// TestEventLoopFiltersTLS: the same with a filter of the client's bytes,
// which sees the data, not the records.
func TestEventLoopFiltersTLS(t *testing.T) {
	f := &holdingFilter{}
	relayTLSBothWays(t, f)
	if f.chunks.Load() < 2 || f.handOffs.Load() != 0 {
		t.Errorf("the filter saw %d chunks and handed off %d times; want several and none", f.chunks.Load(), f.handOffs.Load())
	}
}

func relayTLSBothWays(t *testing.T, filter *holdingFilter) {
	before := loopSessionsOpen()
	toClient, toBackend := &recordingFramer{}, &recordingFramer{}
	c, app, _, db, done := startTLSRelay(t, config.Proxy{}, func(client, backend net.Conn) Relay {
		r := Relay{Client: client, Backend: backend, ToClient: toClient, ToBackend: toBackend}
		if filter != nil {
			r.FromClient = filter
		}
		return r
	})
	waitOnLoop(t, before+1)

	up, down := make([]byte, 4<<20), make([]byte, 4<<20)
	rand.Read(up)
	rand.Read(down)
	up = bytes.ReplaceAll(up, []byte("!"), []byte("?")) // the test filter's command

	// Each side writes all of its stream before it reads: the relay's
	// writes meet full socket buffers both ways. Each reads exactly what
	// the other sent, so that the session is still open afterwards.
	// The test filter keeps the last byte it saw until the next chunk or
	// the end of the stream.
	held := 0
	if filter != nil {
		held = 1
	}
	var wg sync.WaitGroup
	gotByDB, gotByApp := make([]byte, len(up)-held), make([]byte, len(down))
	var errs [4]error
	wg.Go(func() { _, errs[0] = app.Write(up) })
	wg.Go(func() { _, errs[1] = db.Write(down) })
	wg.Go(func() { _, errs[2] = io.ReadFull(db, gotByDB) })
	wg.Go(func() { _, errs[3] = io.ReadFull(app, gotByApp) })
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := loopSessionsOpen(); n != before+1 {
		t.Errorf("after the transfer the loops hold %d sessions, want %d: the session left its loop", n, before+1)
	}
	if sha256.Sum256(gotByDB) != sha256.Sum256(up[:len(up)-held]) {
		t.Error("the backend did not get the bytes the client sent")
	}
	if sha256.Sum256(gotByApp) != sha256.Sum256(down) {
		t.Error("the client did not get the bytes the backend sent")
	}
	if got := toBackend.bytes(); !bytes.Equal(got, up[:len(up)-held]) {
		t.Errorf("the client's framer was told of %d bytes, want the %d relayed, in order", len(got), len(up)-held)
	}
	if got := toClient.bytes(); !bytes.Equal(got, down) {
		t.Errorf("the backend's framer was told of %d bytes, want the %d of data relayed, in order", len(got), len(down))
	}
	if c.toBackend.Load() != int64(len(up)-held) || c.toClient.Load() != int64(len(down)) {
		t.Errorf("counted %d bytes to the backend and %d to the client, want %d and %d", c.toBackend.Load(), c.toClient.Load(), len(up)-held, len(down))
	}

	// The ends: the client's close_notify shuts the backend's write half,
	// and the backend's FIN reaches the client as a close_notify.
	if err := app.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(db); err != nil || !bytes.Equal(rest, up[len(up)-held:]) {
		t.Fatalf("the backend read %d bytes more and %v, want %d and the end of the stream", len(rest), err, held)
	}
	db.CloseWrite()
	if rest, err := io.ReadAll(app); err != nil || len(rest) > 0 {
		t.Fatalf("the client read %d bytes more and %v, want a close_notify", len(rest), err)
	}
	r := <-done
	if r.err != nil || r.reason != endClientClosed {
		t.Errorf("the relay ended with %q, %v; want %q", r.reason, r.err, endClientClosed)
	}
	if n := loopSessionsOpen(); n != before {
		t.Errorf("the loops still hold %d sessions after the session ended, want %d", n, before)
	}
}

// TestEventLoopHandsBackTLS: a TLS session ended while the backend
// streams to a client that is not reading goes back to its goroutine with
// whatever the loop sealed and could not write yet; the client gets all
// the data the loop sealed, then the goodbye, sealed after it.
func TestEventLoopHandsBackTLS(t *testing.T) {
	before := loopSessionsOpen()
	toClient := &recordingFramer{}
	c, app, _, db, done := startTLSRelay(t, config.Proxy{}, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend, ToClient: toClient, ToBackend: &recordingFramer{},
			Goodbye: func(w io.Writer, cause error) error {
				_, err := io.WriteString(w, "goodbye: "+cause.Error())
				return err
			}}
	})
	waitOnLoop(t, before+1)

	down := make([]byte, 4<<20)
	rand.Read(down)
	go db.Write(down)
	deadline := time.Now().Add(10 * time.Second)
	for c.toClient.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the loop sealed nothing for the client")
		}
		time.Sleep(time.Millisecond)
	}
	c.cancel(ErrTerminated)
	waitOnLoop(t, before)

	got, err := io.ReadAll(app)
	if err != nil {
		t.Fatal(err)
	}
	sealed := toClient.bytes()
	if want := append(bytes.Clone(sealed), "goodbye: "+ErrTerminated.Error()...); !bytes.Equal(got, want) {
		t.Fatalf("the client read %d bytes, want the %d relayed and then the goodbye", len(got), len(want))
	}
	if !bytes.Equal(sealed, down[:len(sealed)]) {
		t.Fatal("what the client was sent is not the start of what the backend sent")
	}
	if r := <-done; r.reason != endTerminated {
		t.Errorf("ended with %q, %v; want %q", r.reason, r.err, endTerminated)
	}
}

// TestUnsentRecordsGoFirst: records an event loop sealed and could not
// write, handed to the goroutines as the TLS connection's unsent bytes,
// reach the client before anything the goroutines write, even when the
// backend has nothing more to say.
func TestUnsentRecordsGoFirst(t *testing.T) {
	client, server := tlsPair(t)
	// Seal a record the way the loop does, into bytes not yet written.
	var sealed bytes.Buffer
	sock := server.rec.Conn
	server.rec.Conn = writeTo{sock, &sealed}
	if _, err := server.Write([]byte("sealed on the loop")); err != nil {
		t.Fatal(err)
	}
	server.rec.Conn, server.rec.unsent = sock, sealed.Bytes()

	backend, db := tcpPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	c := &Conn{srv: &Server{cancels: &cancelKeys{}}, ctx: ctx, cancel: cancel, log: zap.NewNop()}
	done := make(chan error, 1)
	go func() {
		r := Relay{Client: server, Backend: backend, ToClient: &recordingFramer{}, ToBackend: &recordingFramer{},
			Goodbye: func(w io.Writer, cause error) error {
				_, err := io.WriteString(w, " then goodbye")
				return err
			}}
		_, err := c.relayOnGoroutines(&r)
		server.Close()
		done <- err
	}()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len("sealed on the loop"))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "sealed on the loop" {
		t.Fatalf("the client read %q, %v; want the sealed record's data", buf, err)
	}
	c.cancel(ErrTerminated)
	rest, err := io.ReadAll(client)
	if err != nil || string(rest) != " then goodbye" {
		t.Fatalf("then the client read %q, %v; want the goodbye", rest, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	db.Close()
}

// writeTo is a connection whose writes go to w.
type writeTo struct {
	net.Conn
	w io.Writer
}

func (c writeTo) Write(p []byte) (int, error) { return c.w.Write(p) }

// TestEventLoopTLSEndRightBehindData: a client that sends its last
// records and its close_notify at once (which the loop may read in one
// go) has all of its data reach the backend before the backend's write
// half is shut.
func TestEventLoopTLSEndRightBehindData(t *testing.T) {
	before := loopSessionsOpen()
	_, app, _, db, done := startTLSRelay(t, config.Proxy{}, func(client, backend net.Conn) Relay {
		return Relay{Client: client, Backend: backend}
	})
	waitOnLoop(t, before+1)
	var want bytes.Buffer
	for i := range 50 {
		rec := fmt.Sprintf("record %d;", i)
		want.WriteString(rec)
		if _, err := io.WriteString(app, rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(db)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the backend read %q, %v; want %q and the end of the stream", got, err, want.Bytes())
	}
	db.CloseWrite()
	if rest, err := io.ReadAll(app); err != nil || len(rest) > 0 {
		t.Fatalf("the client read %q, %v; want a close_notify", rest, err)
	}
	if r := <-done; r.err != nil || r.reason != endClientClosed {
		t.Errorf("the relay ended with %q, %v; want %q", r.reason, r.err, endClientClosed)
	}
}

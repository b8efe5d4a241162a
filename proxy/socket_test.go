package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP sockets.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d.(*net.TCPConn), c.(*net.TCPConn)
}

// A poll socket is a net.Conn like the socket under it: bytes both ways
// at once, read deadlines, end of stream, half-close.
func TestPollSocket(t *testing.T) {
	raw, peer := tcpPair(t)
	s := PollSocket(raw)
	if _, ok := s.(*pollSocket); !ok {
		t.Fatalf("PollSocket of a TCP socket is a %T, want a *pollSocket", s)
	}
	if again := PollSocket(s); again != s {
		t.Fatal("PollSocket of a poll socket wraps it again")
	}
	if plainSocket(s) == nil {
		t.Fatal("the splice would not read the poll socket's descriptor itself")
	}

	// 4 MiB each way at once: more than the socket buffers hold, so both
	// a read and a write wait for the poller. A deadline turns a socket
	// that loses track of either into a failure rather than a hang.
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range []net.Conn{s, peer} {
		c.SetDeadline(deadline)
	}
	out := bytes.Repeat([]byte("portcullis"), 400<<10)
	in := bytes.Repeat([]byte("backend"), 600<<10)
	var wg sync.WaitGroup
	var gotBySocket, gotByPeer []byte
	var errs [4]error
	wg.Add(4)
	go func() { defer wg.Done(); _, errs[0] = s.Write(out) }()
	go func() { defer wg.Done(); gotBySocket, errs[1] = io.ReadAll(io.LimitReader(s, int64(len(in)))) }()
	go func() { defer wg.Done(); _, errs[2] = peer.Write(in) }()
	go func() { defer wg.Done(); gotByPeer, errs[3] = io.ReadAll(io.LimitReader(peer, int64(len(out)))) }()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
	}
	if !bytes.Equal(gotBySocket, in) || !bytes.Equal(gotByPeer, out) {
		t.Fatalf("got %d and %d bytes, want %d and %d, equal", len(gotBySocket), len(gotByPeer), len(in), len(out))
	}
	for _, c := range []net.Conn{s, peer} {
		c.SetDeadline(time.Time{})
	}

	// A read deadline ends a read that waits.
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: got %v, want os.ErrDeadlineExceeded", err)
	}
	s.SetReadDeadline(time.Time{})

	// Half-close: the peer sees the end, and can still answer.
	if err := s.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(peer); err != nil || len(b) != 0 {
		t.Fatalf("peer after the half-close: read %q, %v; want end of stream", b, err)
	}
	if _, err := peer.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	peer.Close()
	if b, err := io.ReadAll(s); err != nil || string(b) != "bye" {
		t.Fatalf("after the peer closed: read %q, %v; want \"bye\" then end of stream", b, err)
	}
}

// Anything but a bare socket (a TLS connection, a pipe) is left as it is.
func TestPollSocketLeavesOthersAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := PollSocket(a); got != a {
		t.Fatalf("PollSocket of a pipe is %T, want the pipe itself", got)
	}
}

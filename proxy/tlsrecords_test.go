package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/internal/testpg"
)

// records is a stream of TLS records of the given body lengths, each
// body filled with its record's index.
func records(lengths ...int) []byte {
	var b []byte
	for i, n := range lengths {
		b = append(b, 23, 3, 3, byte(n>>8), byte(n))
		b = append(b, bytes.Repeat([]byte{byte(i)}, n)...)
	}
	return b
}

// chunkedConn hands out its stream in chunks of the given sizes, the
// last size repeating.
type chunkedConn struct {
	net.Conn
	rest   []byte
	chunks []int
}

func (c *chunkedConn) Read(p []byte) (int, error) {
	if len(c.rest) == 0 {
		return 0, io.EOF
	}
	size := c.chunks[0]
	if len(c.chunks) > 1 {
		c.chunks = c.chunks[1:]
	}
	n := copy(p[:min(len(p), size)], c.rest)
	c.rest = c.rest[n:]
	return n, nil
}

// TestRecordConnHandsOutOneRecord: however the socket's reads fall, a
// Read of a recordConn returns bytes of one record at most, and the
// stream comes through whole and in order.
func TestRecordConnHandsOutOneRecord(t *testing.T) {
	lengths := []int{0, 1, 4, 5, 300, 16384 + 256, 2, 0, 7000}
	stream := records(lengths...)
	for _, chunks := range [][]int{{1}, {3}, {5}, {6}, {64 << 10}, {2, 9000, 1}, {len(stream)}} {
		for _, early := range []int{0, 3, 40} {
			rc := &recordConn{Conn: &chunkedConn{rest: stream[early:], chunks: chunks}}
			rc.stash = append([]byte(nil), stream[:early]...)
			var got []byte
			buf := make([]byte, 20000)
			for {
				n, err := rc.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				// One record at most: the bytes of this Read lie within one
				// record's extent.
				if first, last := recordAt(lengths, len(got)-n), recordAt(lengths, len(got)-1); n > 0 && first != last {
					t.Fatalf("chunks %v, early %d: a Read of %d bytes spans records %d to %d", chunks, early, n, first, last)
				}
			}
			if !bytes.Equal(got, stream) {
				t.Fatalf("chunks %v, early %d: the stream came through changed (%d bytes of %d)", chunks, early, len(got), len(stream))
			}
			if !rc.between() {
				t.Fatalf("chunks %v, early %d: after the last record, the record layer is not between records", chunks, early)
			}
		}
	}
}

// recordAt is the index of the record holding offset off of the stream.
func recordAt(lengths []int, off int) int {
	for i, n := range lengths {
		if off < tlsRecordHeaderLen+n {
			return i
		}
		off -= tlsRecordHeaderLen + n
	}
	return len(lengths)
}

// testTLSConfigs are a server's TLS configuration, with a certificate for
// localhost from a test CA, and a client's that trusts that CA.
func testTLSConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := testpg.NewCA("portcullis test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("localhost")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{ServerName: "localhost", RootCAs: ca.Pool}
}

// tlsPair is a TLS connection over loopback TCP: the client's end, and
// the server's as TLSServer makes it.
func tlsPair(t *testing.T) (client *tls.Conn, server *TLSConn) {
	t.Helper()
	serverCfg, clientCfg := testTLSConfigs(t)
	a, b := tcpPair(t)
	server = TLSServer(PollSocket(a), nil, serverCfg)
	client = tls.Client(b, clientCfg)
	done := make(chan error, 1)
	go func() { done <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestTLSSourceWaitsWithoutBuffer: the relay's source for a TLS client
// leg gives its buffer back once a record's data is passed on, still
// returns what crypto/tls or the record layer holds without waiting for
// the socket, and reads what the login left in crypto/tls first.
func TestTLSSourceWaitsWithoutBuffer(t *testing.T) {
	client, server := tlsPair(t)
	server.SetReadDeadline(time.Now().Add(10 * time.Second))

	// The login read part of a record: the rest is crypto/tls's.
	if _, err := client.Write([]byte("login and the start of a query")); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 5)
	if _, err := io.ReadFull(server, small); err != nil {
		t.Fatal(err)
	}
	src := newChunkSource(server)
	ts, ok := src.(*tlsSource)
	if !ok {
		t.Fatalf("the source of a TLSServer connection is a %T", src)
	}
	next := func(want string) {
		t.Helper()
		p, err := src.next()
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if string(p) != want {
			t.Fatalf("read %q, want %q", p, want)
		}
		src.passed()
		if ts.buf != nil {
			t.Fatalf("after %q was passed on, the source still holds a buffer", want)
		}
	}
	next(" and the start of a query")

	// Two records in one write: the second waits in the record layer,
	// not on the socket.
	if _, err := client.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("two")); err != nil {
		t.Fatal(err)
	}
	next("one")
	next("two")

	// Idle: next waits for the socket, holding nothing, until a record
	// comes.
	got := make(chan error, 1)
	go func() {
		p, err := src.next()
		if err == nil && string(p) != "later" {
			err = errors.New("read " + string(p))
		}
		got <- err
	}()
	if _, err := client.Write([]byte("later")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	src.passed()
	src.close()

	// Idle and stopped: the wait honours the read deadline.
	server.SetReadDeadline(time.Now())
	if _, err := src.next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle wait past its deadline: %v, want the deadline", err)
	}
}

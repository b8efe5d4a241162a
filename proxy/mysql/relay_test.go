package mysql

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// scriptedConn is a client connection that delivers in at most chunk
// bytes per Read and records what is written to it.
type scriptedConn struct {
	net.Conn
	in    *bytes.Reader
	chunk int
	out   bytes.Buffer
}

func (c *scriptedConn) Read(p []byte) (int, error) {
	return c.in.Read(p[:min(len(p), c.chunk)])
}

func (c *scriptedConn) Write(p []byte) (int, error) { return c.out.Write(p) }

type fixedKiller struct{ ids map[uint32]bool }

func (k fixedKiller) kill(_ context.Context, id uint32, _ bool) (bool, []byte, []byte) {
	if !k.ids[id] {
		return false, nil, nil
	}
	return true, append([]byte{gomysql.COM_QUERY}, "DO 0"...), nil
}

func pkt(seq uint8, payload ...byte) []byte { return appendPacket(nil, seq, payload) }

func query(sql string) []byte { return pkt(0, append([]byte{gomysql.COM_QUERY}, sql...)...) }

// What the client sends reaches the backend unchanged, whatever the read
// sizes, except COM_CHANGE_USER (answered by portcullis) and a KILL of a
// portcullis connection id (replaced).
func TestClientStream(t *testing.T) {
	changeUser := pkt(0, append([]byte{gomysql.COM_CHANGE_USER}, "root\x00\x00"...)...)
	big := make([]byte, 300)
	big[0] = gomysql.COM_CHANGE_USER // a continuation's first byte is data, not a command
	tests := []struct {
		name        string
		in          [][]byte
		wantBackend [][]byte
		wantClient  []byte
	}{
		{name: "queries pass", in: [][]byte{query("SELECT 1"), pkt(0, gomysql.COM_PING)}, wantBackend: [][]byte{query("SELECT 1"), pkt(0, gomysql.COM_PING)}},
		{name: "change user refused", in: [][]byte{changeUser, query("SELECT 2")}, wantBackend: [][]byte{query("SELECT 2")},
			wantClient: appendPacket(nil, 1, errPacket(gomysql.ER_NOT_SUPPORTED_YET, stateSyntaxAccess, "portcullis does not support COM_CHANGE_USER: this connection stays signed in as it is; open a new connection to sign in as someone else"))},
		{name: "non-command packets pass", in: [][]byte{pkt(3, big...)}, wantBackend: [][]byte{pkt(3, big...)}},
		{name: "kill of a portcullis id", in: [][]byte{query("kill query 1073741825;"), query("SELECT 3")}, wantBackend: [][]byte{query("DO 0"), query("SELECT 3")}},
		{name: "kill of a backend id passes", in: [][]byte{query("KILL QUERY 12")}, wantBackend: [][]byte{query("KILL QUERY 12")}},
		{name: "empty packet", in: [][]byte{pkt(0)}, wantBackend: [][]byte{pkt(0)}},
		{name: "truncated at the end", in: [][]byte{{5, 0, 0}}, wantBackend: [][]byte{{5, 0, 0}}},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 3, 4096} {
			t.Run(tt.name, func(t *testing.T) {
				conn := &scriptedConn{in: bytes.NewReader(bytes.Join(tt.in, nil)), chunk: chunk}
				s := &clientStream{Conn: conn, kills: fixedKiller{ids: map[uint32]bool{1073741825: true}}}
				got, err := io.ReadAll(s)
				if err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				if want := bytes.Join(tt.wantBackend, nil); !bytes.Equal(got, want) {
					t.Errorf("chunk %d: backend got %q, want %q", chunk, got, want)
				}
				if !bytes.Equal(conn.out.Bytes(), tt.wantClient) {
					t.Errorf("chunk %d: client got %q, want %q", chunk, conn.out.Bytes(), tt.wantClient)
				}
			})
		}
	}
}

func TestPacketFramer(t *testing.T) {
	stream := bytes.Join([][]byte{pkt(1, 1, 2, 3), pkt(2), pkt(7, make([]byte, 70000)...)}, nil)
	f := &packetFramer{}
	var boundaries []int
	for i := range stream {
		f.Relayed(stream[i : i+1])
		if f.Pending() == 0 {
			boundaries = append(boundaries, i+1)
		}
	}
	want := []int{7, 11, len(stream)}
	if len(boundaries) != len(want) {
		t.Fatalf("boundaries %v, want %v", boundaries, want)
	}
	for i := range want {
		if boundaries[i] != want[i] {
			t.Fatalf("boundaries %v, want %v", boundaries, want)
		}
	}
}

func FuzzParseHandshakeResponse(f *testing.F) {
	resp := func(caps uint32, rest string) []byte {
		b := []byte{byte(caps), byte(caps >> 8), byte(caps >> 16), byte(caps >> 24)}
		b = append(b, make([]byte, 28)...)
		return append(b, rest...)
	}
	all := offeredCaps | gomysql.CLIENT_SSL
	f.Add(resp(all, "alice\x00\x20"+string(make([]byte, 32))+"app\x00caching_sha2_password\x00\x0c\x04_pid\x0412345"))
	f.Add(resp(all&^gomysql.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, "bob\x00\x00\x00mysql_native_password\x00"))
	f.Add(resp(gomysql.CLIENT_PROTOCOL_41, "carol\x00secret\x00"))
	f.Add(resp(all, "x\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, p []byte) {
		hs, err := parseHandshakeResponse(p)
		if err != nil {
			var r *refusal
			if !errors.As(err, &r) {
				t.Fatalf("error %v is not a refusal", err)
			}
			return
		}
		if len(hs.auth) > len(p) || len(hs.user) > len(p) {
			t.Fatalf("fields longer than the packet: %+v", hs)
		}
	})
}

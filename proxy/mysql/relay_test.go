package mysql

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/proxy"
)

// recordedOutput is a FilterOutput that records what each side got; a
// client answer is refused while backendMidMessage is set. While onLoop
// is set it stands for the event loop: it takes every hand-off (into
// handedOff) and refuses an answer to the client.
type recordedOutput struct {
	backend, client   bytes.Buffer
	backendMidMessage bool
	backendWrites     int
	onLoop            bool
	handedOff         []byte
	handOffs          int
}

func (o *recordedOutput) HandOff(rest []byte) bool {
	if !o.onLoop {
		return false
	}
	o.handedOff = bytes.Clone(rest)
	o.handOffs++
	return true
}

// filterThrough runs chunks through f as a session does, on the event
// loop first if onLoop: once the filter hands off, the session's
// goroutine filters what was handed off, then everything after it.
func filterThrough(f *commandFilter, out *recordedOutput, chunks [][]byte, onLoop bool) error {
	out.onLoop = onLoop
	for _, c := range chunks {
		if err := f.Filter(c, out); err != nil {
			return err
		}
		if out.handedOff != nil {
			rest := out.handedOff
			out.onLoop, out.handedOff = false, nil
			if err := f.Filter(rest, out); err != nil {
				return err
			}
		}
	}
	return f.End(out)
}

func (o *recordedOutput) ToBackend(p []byte) error {
	o.backendWrites++
	o.backend.Write(p)
	return nil
}

func (o *recordedOutput) ToClient(p []byte) error {
	if o.onLoop {
		return errors.New("answered the client on the event loop")
	}
	if o.backendMidMessage {
		return proxy.ErrBackendMidMessage
	}
	o.client.Write(p)
	return nil
}

type fixedKiller struct{ ids map[uint32]bool }

func (k fixedKiller) kill(_ context.Context, id uint32, _ bool) (bool, []byte, []byte) {
	if !k.ids[id] {
		return false, nil, nil
	}
	return true, append([]byte{gomysql.COM_QUERY}, "DO 0"...), nil
}

func pkt(seq uint8, payload ...byte) []byte { return appendPacket(nil, seq, payload) }

func query(sql string) []byte { return pkt(0, append([]byte{gomysql.COM_QUERY}, sql...)...) }

// What the client sends reaches the backend unchanged, however the splice
// happens to cut it into chunks, except COM_CHANGE_USER (answered by
// portcullis) and a KILL of a portcullis connection id (replaced).
func TestCommandFilter(t *testing.T) {
	changeUser := pkt(0, append([]byte{gomysql.COM_CHANGE_USER}, "root\x00\x00"...)...)
	refusal := appendPacket(nil, 1, errPacket(gomysql.ER_NOT_SUPPORTED_YET, stateSyntaxAccess, "portcullis does not support COM_CHANGE_USER: this connection stays signed in as it is; open a new connection to sign in as someone else"))
	big := make([]byte, 300)
	big[0] = gomysql.COM_CHANGE_USER // a continuation's first byte is data, not a command
	tests := []struct {
		name        string
		in          [][]byte
		wantBackend [][]byte
		wantClient  []byte
		handOff     bool // on the event loop, the filter hands the session off
	}{
		{name: "queries pass", in: [][]byte{query("SELECT 1"), pkt(0, gomysql.COM_PING)}, wantBackend: [][]byte{query("SELECT 1"), pkt(0, gomysql.COM_PING)}},
		{name: "change user refused", in: [][]byte{changeUser, query("SELECT 2")}, wantBackend: [][]byte{query("SELECT 2")}, wantClient: refusal, handOff: true},
		{name: "change user between queries", in: [][]byte{query("SELECT 1"), changeUser, query("SELECT 2")}, wantBackend: [][]byte{query("SELECT 1"), query("SELECT 2")}, wantClient: refusal, handOff: true},
		{name: "non-command packets pass", in: [][]byte{pkt(3, big...)}, wantBackend: [][]byte{pkt(3, big...)}},
		{name: "kill of a portcullis id", in: [][]byte{query("kill query 1073741825;"), query("SELECT 3")}, wantBackend: [][]byte{query("DO 0"), query("SELECT 3")}, handOff: true},
		{name: "kill after white space", in: [][]byte{query("SELECT 1"), query(" \n\tKILL 1073741825")}, wantBackend: [][]byte{query("SELECT 1"), query("DO 0")}, handOff: true},
		{name: "kill of a backend id passes", in: [][]byte{query("KILL QUERY 12")}, wantBackend: [][]byte{query("KILL QUERY 12")}, handOff: true},
		{name: "a long kill passes", in: [][]byte{query("KILL 1073741825" + strings.Repeat(" ", killCandidateMax))}, wantBackend: [][]byte{query("KILL 1073741825" + strings.Repeat(" ", killCandidateMax))}},
		{name: "empty packet", in: [][]byte{pkt(0)}, wantBackend: [][]byte{pkt(0)}},
		{name: "truncated at the end", in: [][]byte{{5, 0, 0}}, wantBackend: [][]byte{{5, 0, 0}}},
		{name: "truncated after the header", in: [][]byte{{5, 0, 0, 0}}, wantBackend: [][]byte{{5, 0, 0, 0}}},
		{name: "truncated candidate kill", in: [][]byte{query("SELECT 1"), query("KILL 1073741825")[:9]}, wantBackend: [][]byte{query("SELECT 1"), query("KILL 1073741825")[:9]}},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 3, 4096} {
			for _, onLoop := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/chunk %d/on the loop %v", tt.name, chunk, onLoop), func(t *testing.T) {
					f := &commandFilter{kills: fixedKiller{ids: map[uint32]bool{1073741825: true}}}
					out := &recordedOutput{}
					var chunks [][]byte
					for in := bytes.Join(tt.in, nil); len(in) > 0; in = in[min(chunk, len(in)):] {
						chunks = append(chunks, in[:min(chunk, len(in))])
					}
					if err := filterThrough(f, out, chunks, onLoop); err != nil {
						t.Fatal(err)
					}
					if want := onLoop && tt.handOff; (out.handOffs == 1) != want || out.handOffs > 1 {
						t.Errorf("%d hand-offs; want one: %v", out.handOffs, want)
					}
					if want := bytes.Join(tt.wantBackend, nil); !bytes.Equal(out.backend.Bytes(), want) {
						t.Errorf("backend got %q, want %q", out.backend.Bytes(), want)
					}
					if !bytes.Equal(out.client.Bytes(), tt.wantClient) {
						t.Errorf("client got %q, want %q", out.client.Bytes(), tt.wantClient)
					}
				})
			}
		}
	}
}

// A chunk with nothing to act on goes to the backend whole, in one write,
// and nothing of it is kept: the filter costs a look at each header.
func TestCommandFilterPassesChunksWhole(t *testing.T) {
	chunk := bytes.Join([][]byte{query("SELECT 1"), pkt(0, gomysql.COM_STMT_EXECUTE, 1, 0, 0, 0), query("select 2")}, nil)
	f := &commandFilter{kills: fixedKiller{}}
	out := &recordedOutput{}
	for range 3 {
		if err := f.Filter(chunk, out); err != nil {
			t.Fatal(err)
		}
	}
	if out.backendWrites != 3 || len(f.held) != 0 {
		t.Errorf("3 chunks took %d writes to the backend and left %d bytes held, want 3 and 0", out.backendWrites, len(f.held))
	}
}

// COM_CHANGE_USER while the backend is half way through a message to the
// client cannot be answered in order: the session ends.
func TestCommandFilterAnswerMidMessage(t *testing.T) {
	f := &commandFilter{}
	out := &recordedOutput{backendMidMessage: true}
	err := f.Filter(pkt(0, gomysql.COM_CHANGE_USER), out)
	if !errors.Is(err, proxy.ErrBackendMidMessage) {
		t.Fatalf("got %v, want ErrBackendMidMessage", err)
	}
	if out.client.Len() != 0 || out.backend.Len() != 0 {
		t.Errorf("client got %q and backend %q, want nothing", out.client.Bytes(), out.backend.Bytes())
	}
}

// TestKillTarget: KILL without QUERY ends the connection, as in MySQL and
// MariaDB.
func TestKillTarget(t *testing.T) {
	tests := []struct {
		sql        string
		id         uint32
		connection bool
		ok         bool
	}{
		{"KILL 5", 5, true, true},
		{"kill 5;", 5, true, true},
		{"KILL CONNECTION 5", 5, true, true},
		{"KILL HARD 5", 5, true, true},
		{"KILL QUERY 5", 5, false, true},
		{"kill soft query 5", 5, false, true},
		{"KILL USER bob", 0, false, false},
		{"KILL QUERY ID 5", 0, false, false},
	}
	for _, tt := range tests {
		id, connection, ok := killTarget([]byte(tt.sql))
		if id != tt.id || connection != tt.connection || ok != tt.ok {
			t.Errorf("killTarget(%q) = %d, %v, %v; want %d, %v, %v", tt.sql, id, connection, ok, tt.id, tt.connection, tt.ok)
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

// TestPacketFramerGoodbye: a COM_QUIT is a one-byte command packet
// (sequence id 0) whose byte is 1, however the stream is cut; the same
// byte elsewhere is not.
func TestPacketFramerGoodbye(t *testing.T) {
	quit := pkt(0, gomysql.COM_QUIT)
	tests := []struct {
		name   string
		stream []byte
		want   bool
	}{
		{"COM_QUIT after a query", append(pkt(0, gomysql.COM_QUERY, 's'), quit...), true},
		{"COM_PING", pkt(0, gomysql.COM_PING), false},
		{"a query starting with byte 1", pkt(0, gomysql.COM_QUIT, 'x'), false},
		{"byte 1 later in an exchange", pkt(2, gomysql.COM_QUIT), false},
		{"byte 1 in a long packet's body", pkt(0, append([]byte{gomysql.COM_QUERY}, bytes.Repeat([]byte{0, 0, 1, 0, 0, 1}, 10)...)...), false},
	}
	for _, tt := range tests {
		for _, split := range []bool{false, true} {
			f := &packetFramer{}
			if split {
				for i := range tt.stream {
					f.Relayed(tt.stream[i : i+1])
				}
			} else {
				f.Relayed(tt.stream)
			}
			if got := f.SaidGoodbye(); got != tt.want {
				t.Errorf("%s (byte by byte: %v): SaidGoodbye() = %v, want %v", tt.name, split, got, tt.want)
			}
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

// FuzzCommandFilter: whatever the client sends, however the splice's reads
// cut it, and whether the event loop or the session's goroutine runs the
// filter, the backend and the client get the same bytes; and a stream with
// neither a COM_CHANGE_USER byte nor a K in it reaches the backend as it
// is.
func FuzzCommandFilter(f *testing.F) {
	f.Add(bytes.Join([][]byte{query("SELECT 1"), pkt(0, gomysql.COM_PING)}, nil), uint16(5))
	f.Add(bytes.Join([][]byte{pkt(0, gomysql.COM_CHANGE_USER, 'r', 0), query("SELECT 2")}, nil), uint16(3))
	f.Add(bytes.Join([][]byte{query(" kill query 1073741825"), query("KILL 12")}, nil), uint16(9))
	f.Add([]byte{0xff, 0xff, 0xff, 0, gomysql.COM_QUERY, 'K'}, uint16(2))
	f.Add([]byte{5, 0, 0}, uint16(1))
	f.Fuzz(func(t *testing.T, in []byte, cut uint16) {
		run := func(chunks [][]byte, onLoop bool) (backend, client []byte) {
			filter := &commandFilter{kills: fixedKiller{ids: map[uint32]bool{1073741825: true}}}
			out := &recordedOutput{}
			if err := filterThrough(filter, out, chunks, onLoop); err != nil {
				t.Fatalf("filter: %v", err)
			}
			return out.backend.Bytes(), out.client.Bytes()
		}
		wholeBackend, wholeClient := run([][]byte{in}, false)
		k := int(cut) % (len(in) + 1)
		// Cut in two on the event loop, which hands off where the filter
		// would answer or wait.
		splitBackend, splitClient := run([][]byte{in[:k], in[k:]}, true)
		var bytewise [][]byte
		for i := range in {
			bytewise = append(bytewise, in[i:i+1])
		}
		byteBackend, byteClient := run(bytewise, false)
		if !bytes.Equal(wholeBackend, splitBackend) || !bytes.Equal(wholeBackend, byteBackend) {
			t.Fatalf("the backend got different bytes by chunking: whole %q, cut at %d %q, byte by byte %q", wholeBackend, k, splitBackend, byteBackend)
		}
		if !bytes.Equal(wholeClient, splitClient) || !bytes.Equal(wholeClient, byteClient) {
			t.Fatalf("the client got different bytes by chunking: whole %q, cut at %d %q, byte by byte %q", wholeClient, k, splitClient, byteClient)
		}
		if !bytes.ContainsAny(in, "kK\x11") && (!bytes.Equal(wholeBackend, in) || len(wholeClient) > 0) {
			t.Fatalf("a stream with nothing to act on changed: backend got %q of %q, client %q", wholeBackend, in, wholeClient)
		}
	})
}

package postgres

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// wireClient speaks the protocol by hand (with pgx's codec) to exercise
// what libpq and pgx never send.
type wireClient struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialWire(t *testing.T, h *harness) *wireClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", h.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &wireClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

func (w *wireClient) send(msgs ...pgproto3.FrontendMessage) {
	w.t.Helper()
	for _, m := range msgs {
		w.fe.Send(m)
	}
	if err := w.fe.Flush(); err != nil {
		w.t.Fatal(err)
	}
}

// sendRaw encodes msgs into one write, so they arrive together.
func (w *wireClient) sendRaw(msgs ...pgproto3.FrontendMessage) {
	w.t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			w.t.Fatal(err)
		}
	}
	if _, err := w.conn.Write(buf); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wireClient) byte() byte {
	w.t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(w.conn, b[:]); err != nil {
		w.t.Fatalf("read one byte: %v", err)
	}
	return b[0]
}

func (w *wireClient) startTLS(h *harness) {
	w.t.Helper()
	w.send(&pgproto3.SSLRequest{})
	if b := w.byte(); b != 'S' {
		w.t.Fatalf("SSLRequest answered %q, want 'S'", b)
	}
	tc := tls.Client(w.conn, &tls.Config{RootCAs: h.ca.Pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		w.t.Fatalf("TLS: %v", err)
	}
	w.conn = tc
	w.fe = pgproto3.NewFrontend(tc, tc)
}

func (w *wireClient) receive() pgproto3.BackendMessage {
	w.t.Helper()
	msg, err := w.fe.Receive()
	if err != nil {
		w.t.Fatalf("receive: %v", err)
	}
	return msg
}

func (w *wireClient) expectError(code string) *pgproto3.ErrorResponse {
	w.t.Helper()
	msg := w.receive()
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok {
		w.t.Fatalf("got %T, want ErrorResponse %s", msg, code)
	}
	if e.Code != code || e.Severity != "FATAL" {
		w.t.Fatalf("got %s %s %q, want FATAL %s", e.Severity, e.Code, e.Message, code)
	}
	return e
}

func startupMessage(version uint32, params map[string]string) *pgproto3.StartupMessage {
	return &pgproto3.StartupMessage{ProtocolVersion: version, Parameters: params}
}

var aliceStartup = map[string]string{"user": alice, "database": "analytics"}

func TestGSSEncRequestIsDeclinedThenTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	w := dialWire(t, h)
	w.send(&pgproto3.GSSEncRequest{})
	if b := w.byte(); b != 'N' {
		t.Fatalf("GSSEncRequest answered %q, want 'N'", b)
	}
	w.startTLS(h)
	w.send(startupMessage(pgproto3.ProtocolVersion30, aliceStartup))
	if msg := w.receive(); !isCleartextRequest(msg) {
		t.Fatalf("got %T, want AuthenticationCleartextPassword", msg)
	}
}

func isCleartextRequest(msg pgproto3.BackendMessage) bool {
	_, ok := msg.(*pgproto3.AuthenticationCleartextPassword)
	return ok
}

func TestNewerMinorVersionIsNegotiated(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	w := dialWire(t, h)
	w.startTLS(h)
	params := map[string]string{"user": alice, "database": "analytics", "_pq_.test_option": "on"}
	w.send(startupMessage(pgproto3.ProtocolVersion32, params))
	msg := w.receive()
	npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
	if !ok {
		t.Fatalf("got %T, want NegotiateProtocolVersion", msg)
	}
	if npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.test_option" {
		t.Errorf("NegotiateProtocolVersion = %+v, want minor 0 and [_pq_.test_option]", npv)
	}
	if msg := w.receive(); !isCleartextRequest(msg) {
		t.Fatalf("got %T, want AuthenticationCleartextPassword", msg)
	}
}

func TestStartupRefusals(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	tests := []struct {
		name   string
		send   func(w *wireClient)
		code   string
		wantIn string
	}{
		{
			name: "protocol 2",
			send: func(w *wireClient) {
				w.startTLS(h)
				w.send(startupMessage(2<<16, aliceStartup))
			},
			code: codeFeatureNotSupported, wantIn: "unsupported frontend protocol 2.0",
		},
		{
			name: "startup packet over the limit",
			send: func(w *wireClient) {
				var b [8]byte
				binary.BigEndian.PutUint32(b[:], 20000)
				binary.BigEndian.PutUint32(b[4:], pgproto3.ProtocolVersion30)
				w.conn.Write(b[:])
			},
			code: codeProtocolViolation, wantIn: "startup packet length",
		},
		{
			name: "plaintext bytes behind an SSLRequest",
			send: func(w *wireClient) {
				w.sendRaw(&pgproto3.SSLRequest{}, startupMessage(pgproto3.ProtocolVersion30, aliceStartup))
			},
			code: codeProtocolViolation, wantIn: "unencrypted data",
		},
		{
			name: "no user",
			send: func(w *wireClient) {
				w.startTLS(h)
				w.send(startupMessage(pgproto3.ProtocolVersion30, map[string]string{"database": "analytics"}))
			},
			code: codeInvalidAuthorization, wantIn: "no user name",
		},
		{
			name: "replication",
			send: func(w *wireClient) {
				w.startTLS(h)
				w.send(startupMessage(pgproto3.ProtocolVersion30, map[string]string{"user": alice, "database": "analytics", "replication": "database"}))
			},
			code: codeFeatureNotSupported, wantIn: "replication",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := dialWire(t, h)
			tt.send(w)
			if e := w.expectError(tt.code); !strings.Contains(e.Message, tt.wantIn) {
				t.Errorf("message %q does not contain %q", e.Message, tt.wantIn)
			}
		})
	}
}

// A cancel request with a key portcullis never issued gets no answer
// but a closed connection.
func TestUnknownCancelKeyIsDropped(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	w := dialWire(t, h)
	w.send(&pgproto3.CancelRequest{ProcessID: 12345, SecretKey: []byte{1, 2, 3, 4}})
	n, err := w.conn.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read after an unknown cancel request: %d bytes, %v; want end of stream", n, err)
	}
	h.waitEvent("cancel.dropped", nil)
}

// A client that sends its first query together with its password loses
// nothing at the hand-off: the query was read ahead by the handshake and
// must reach the backend. Also with a startup packet longer than the
// login's first read buffer, which moves to a larger one, and a query
// longer than either.
func TestBytesReadAheadReachTheBackend(t *testing.T) {
	long := strings.Repeat("x", 3*startupBufferSize)
	for _, tc := range []struct {
		name    string
		startup map[string]string
		query   string
		want    string
	}{
		{"short", aliceStartup, "select current_user", roleAnalyst.Name},
		{"long", map[string]string{"user": alice, "database": "analytics", "options": "-c portcullis.pad=" + strings.Repeat("p", startupBufferSize+100)},
			"select current_user || length(current_setting('portcullis.pad')) || length('" + long + "')",
			roleAnalyst.Name + itoa(uint32(startupBufferSize+100)) + itoa(uint32(len(long)))},
	} {
		t.Run(tc.name, func(t *testing.T) { readAheadReachesTheBackend(t, tc.startup, tc.query, tc.want) })
	}
}

func readAheadReachesTheBackend(t *testing.T, startup map[string]string, query, want string) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	w := dialWire(t, h)
	w.startTLS(h)
	w.send(startupMessage(pgproto3.ProtocolVersion30, startup))
	if msg := w.receive(); !isCleartextRequest(msg) {
		t.Fatalf("got %T, want AuthenticationCleartextPassword", msg)
	}
	w.sendRaw(&pgproto3.PasswordMessage{Password: key}, &pgproto3.Query{String: query})

	var ready int
	var got string
	var keyData *pgproto3.BackendKeyData
	for ready < 2 {
		switch m := w.receive().(type) {
		case *pgproto3.ReadyForQuery:
			ready++
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.BackendKeyData:
			keyData = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s %s", m.Code, m.Message)
		}
	}
	if got != want {
		t.Errorf("pipelined query returned %q, want %q", got, want)
	}
	if keyData == nil || len(keyData.SecretKey) != 4 {
		t.Fatalf("BackendKeyData = %+v, want a 4-byte key", keyData)
	}
	// The key's process id is the backend's (its secret is portcullis's
	// own: TestCancelKeyTakesBackendPID).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	su, err := h.pg.Superuser(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	res, err := su.Exec(ctx, "select count(*) from pg_stat_activity where usename = 'analyst_ro' and pid = "+itoa(keyData.ProcessID)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if string(res[0].Rows[0][0]) != "1" {
		t.Errorf("process id %d in the client's key is not its backend's", keyData.ProcessID)
	}
}

func itoa(n uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestListenerTLSSettings(t *testing.T) {
	tests := []struct {
		listener string
		sslmode  string
		wantErr  string // "" for success
	}{
		{listener: config.ListenerTLSRequired, sslmode: "disable", wantErr: "sslmode=require"},
		{listener: config.ListenerTLSRequired, sslmode: "verify-full"},
		{listener: config.ListenerTLSOptional, sslmode: "disable"},
		{listener: config.ListenerTLSOptional, sslmode: "verify-full"},
		{listener: config.ListenerTLSDisabled, sslmode: "disable"},
		{listener: config.ListenerTLSDisabled, sslmode: "require", wantErr: "refused TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.listener+"/"+tt.sslmode, func(t *testing.T) {
			h := newHarness(t, harnessOptions{listenerTLS: tt.listener})
			key := h.signIn(alice)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cfg, err := pgconn.ParseConfig("host=127.0.0.1 port=" + itoa(uint32(h.port)) + " user=" + alice + " dbname=analytics sslmode=" + tt.sslmode + " sslrootcert=" + h.caFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Password = key
			c, err := pgconn.ConnectConfig(ctx, cfg)
			if tt.wantErr != "" {
				if err == nil {
					c.Close(ctx)
					t.Fatalf("connected; want an error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
				t.Errorf("current_user = %q", got)
			}
		})
	}
}

func TestFramer(t *testing.T) {
	msg := func(typ byte, body string) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
		return append(b, body...)
	}
	two := append(msg('D', "hello"), msg('C', "")...)
	tests := []struct {
		name    string
		chunks  [][]byte
		want    int
		goodbye bool
	}{
		{name: "nothing", want: 0},
		{name: "whole messages", chunks: [][]byte{two}, want: 0},
		{name: "terminate", chunks: [][]byte{two, msg('X', "")}, want: 0, goodbye: true},
		{name: "terminate byte by byte", chunks: splitEach(append(two, msg('X', "")...)), want: 0, goodbye: true},
		{name: "X inside a body", chunks: [][]byte{msg('Q', "X\x00\x00\x00\x04")}, want: 0},
		{name: "half a header", chunks: [][]byte{two[:2]}, want: 3},
		{name: "header only", chunks: [][]byte{two[:5]}, want: 5},
		{name: "mid body", chunks: [][]byte{two[:7]}, want: 3},
		{name: "byte by byte", chunks: splitEach(two), want: 0},
		{name: "into the second header", chunks: [][]byte{two[:11], two[11:12]}, want: 3},
		{name: "empty body message", chunks: [][]byte{msg('c', "")}, want: 0},
		{name: "length below 4", chunks: [][]byte{{'X', 0, 0, 0, 3}}, want: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f framer
			for _, c := range tt.chunks {
				f.Relayed(c)
			}
			if got := f.Pending(); got != tt.want {
				t.Errorf("Pending() = %d, want %d", got, tt.want)
			}
			if got := f.SaidGoodbye(); got != tt.goodbye {
				t.Errorf("SaidGoodbye() = %v, want %v", got, tt.goodbye)
			}
		})
	}
}

func splitEach(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func TestPromptMode(t *testing.T) {
	tests := []struct {
		setting, app string
		want         auth.PromptMode
	}{
		{setting: "auto", app: "psql", want: auth.PromptNotice},
		{setting: "auto", app: "", want: auth.PromptNotice},
		{setting: "", app: "pgAdmin 4 - DB:analytics", want: auth.PromptNotice},
		{setting: "auto", app: "PostgreSQL JDBC Driver", want: auth.PromptError},
		{setting: "auto", app: "DBeaver 23.2.0 - Main <analytics>", want: auth.PromptError},
		{setting: "auto", app: "DataGrip 2023.3", want: auth.PromptError},
		{setting: "notice", app: "DBeaver 23.2.0", want: auth.PromptNotice},
		{setting: "error", app: "psql", want: auth.PromptError},
	}
	for _, tt := range tests {
		if got := promptMode(tt.setting, tt.app); got != tt.want {
			t.Errorf("promptMode(%q, %q) = %s, want %s", tt.setting, tt.app, got, tt.want)
		}
	}
}

// TestDirectTLS: a client may open with the TLS handshake itself, no
// SSLRequest first (sslnegotiation=direct, libpq 17 and later), asking
// for ALPN "postgresql" as PostgreSQL requires; a handshake that asks
// for another protocol or none is refused.
func TestDirectTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// pgx as libpq does it; its cancel request goes the same way.
	cfg := h.config(alice, key, "analytics")
	cfg.SSLNegotiation = "direct"
	cfg.TLSConfig.NextProtos = []string{"postgresql"}
	cancelsByRequest(cfg)
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
		t.Errorf("current_user = %q, want %q", got, roleAnalyst.Name)
	}
	qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer qcancel()
	if _, err := c.Exec(qctx, "select pg_sleep(30)").ReadAll(); pgCode(err) != "57014" {
		t.Fatalf("got %v, want query_canceled (57014): the cancel over direct TLS", err)
	}
	h.waitEvent("cancel.forwarded", nil)

	for _, tt := range []struct {
		name  string
		alpn  []string
		alert bool // the handshake fails; else a FATAL comes over TLS
	}{
		{name: "no ALPN", alpn: nil},
		{name: "ALPN h2", alpn: []string{"h2"}, alert: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := dialWire(t, h)
			tc := tls.Client(w.conn, &tls.Config{RootCAs: h.ca.Pool, ServerName: "127.0.0.1", NextProtos: tt.alpn})
			err := tc.Handshake()
			if tt.alert {
				if err == nil || !strings.Contains(err.Error(), "no application protocol") {
					t.Fatalf("handshake: %v, want the no_application_protocol alert", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			w.conn, w.fe = tc, pgproto3.NewFrontend(tc, tc)
			if e := w.expectError(codeProtocolViolation); !strings.Contains(e.Message, `ALPN protocol "postgresql"`) {
				t.Errorf("message %q does not say what was missing", e.Message)
			}
		})
	}
}

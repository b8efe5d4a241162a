package postgres

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/hostile"
)

// badHandshake is the catalogue's handshake_timeout: short, so the cases
// that wait for it cost little, yet ample for a TLS handshake under -race.
const badHandshake = 2 * time.Second

// badCloseWithin bounds the wait for a connection that the handshake
// deadline must end. What proves the deadline works is what each such
// connection is sent before the close (the "timed out" error), not how
// soon it comes; the bound only turns a connection that is never ended
// into a failure rather than a hang. It is generous because the
// catalogue shares the machine with every other package's tests in CI,
// and stays under the 20 s a hostile client's connection lives at most.
const badCloseWithin = badHandshake + 13*time.Second

// TestBadInputCatalogue drives hostile clients at the PostgreSQL listener
// over raw sockets: each must get a FATAL ErrorResponse with the right
// SQLSTATE, or a close, and never a panic; afterwards nothing may be left
// behind and a good client must still get in. The shared rules and the
// leak check are in internal/hostile; the MySQL listener has a table of
// its own in proxy/mysql.
func TestBadInputCatalogue(t *testing.T) {
	h := newHarness(t, harnessOptions{handshake: badHandshake})
	plain := badPlainListener(t, h)
	key := h.signIn(alice)
	cases := badPostgresCases(h, plain, key)
	if len(cases) < 25 {
		t.Fatalf("the PostgreSQL catalogue has %d cases; it must keep at least 25", len(cases))
	}
	hostile.Run(t, hostile.Target{
		Open:   func() int { return len(h.srv.Sessions()) },
		Settle: h.http.CloseIdleConnections,
		GoodClient: func(t *testing.T) {
			// A session-key sign-in and a fresh device-code sign-in, each
			// through the real identity core to the real PostgreSQL.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
			if err != nil {
				t.Fatalf("session-key sign-in: %v", err)
			}
			defer c.Close(ctx)
			if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
				t.Fatalf("current_user = %q, want %q", got, roleAnalyst.Name)
			}
			daveKey := h.signIn(dave)
			c2, err := pgconn.ConnectConfig(ctx, h.config(dave, daveKey, "analytics_md5"))
			if err != nil {
				t.Fatalf("dave's session key: %v", err)
			}
			defer c2.Close(ctx)
			if got := currentUser(ctx, t, c2); got != roleMD5.Name {
				t.Fatalf("current_user = %q, want %q", got, roleMD5.Name)
			}
		},
	}, cases)
}

// badPlainListener serves a second listener of the harness's portcullis
// with TLS disabled, for the cases about negotiating no encryption.
func badPlainListener(t *testing.T, h *harness) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := config.Listener{Name: "pg-plain", Protocol: config.ProtocolPostgres, TLS: config.ListenerTLSDisabled, DefaultResource: "analytics"}
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, l) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve(pg-plain): %v", err)
		}
	})
	return ln.Addr().String()
}

// badPostgresCases is the PostgreSQL table. addr is the TLS-required
// listener, plain the TLS-disabled one, key alice's session key.
func badPostgresCases(h *harness, plain, key string) []hostile.Case {
	aliceParams := []string{"user", alice, "database", "analytics"}
	onMain := func(t *testing.T) *badClient { return badDial(t, h, h.addr()) }
	onPlain := func(t *testing.T) *badClient { return badDial(t, h, plain) }
	// loggedIn is a client that has been asked for its password over TLS.
	loggedIn := func(t *testing.T, params ...string) *badClient {
		c := onMain(t)
		c.startTLS()
		c.send(badStartup(pgproto3.ProtocolVersion30, params...))
		c.untilPassword()
		return c
	}
	// refusedPassword: password is refused as a bad credential.
	refusedPassword := func(user, password string) func(t *testing.T) {
		return func(t *testing.T) {
			c := loggedIn(t, "user", user, "database", "analytics")
			c.send(badMessage('p', cstr(password)))
			c.fatal(codeInvalidPassword, "")
		}
	}
	// A key with a mistyped code is refused for the code, not the key.
	refusedCode := func(user, password string) func(t *testing.T) {
		return func(t *testing.T) {
			c := loggedIn(t, "user", user, "database", "analytics")
			c.send(badMessage('p', cstr(password)))
			c.fatal(codeInvalidPassword, "is not 6 digits")
		}
	}
	tokens := badTokens{h: h}

	return []hostile.Case{
		// Lengths and framing of the first packet, in the clear.
		{Name: "length 0", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(0))
			c.fatal(codeProtocolViolation, "invalid startup packet length 0")
		}},
		{Name: "length 7", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(7), []byte{0, 3, 0})
			c.fatal(codeProtocolViolation, "invalid startup packet length 7")
		}},
		{Name: "length 2^31-1", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(1<<31-1), be32(pgproto3.ProtocolVersion30))
			c.fatal(codeProtocolViolation, "invalid startup packet length 2147483647")
		}},
		{Name: "length 2^31 (negative as int32)", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(1<<31), be32(pgproto3.ProtocolVersion30))
			c.fatal(codeProtocolViolation, "invalid startup packet length 2147483648")
		}},
		{Name: "length -1", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(0xffffffff), be32(pgproto3.ProtocolVersion30))
			c.fatal(codeProtocolViolation, "invalid startup packet length 4294967295")
		}},
		{Name: "startup packet one byte over max_startup_bytes", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(config.DefaultMaxStartupBytes+1), be32(pgproto3.ProtocolVersion30))
			c.fatal(codeProtocolViolation, "invalid startup packet length 10001")
		}},
		{Name: "half a length then end of stream", Run: func(t *testing.T) {
			c := onMain(t)
			c.send([]byte{0, 0})
			c.closeWrite()
			c.silentClose()
		}},
		{Name: "truncated startup packet then end of stream", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badStartup(pgproto3.ProtocolVersion30, aliceParams...)[:20])
			c.closeWrite()
			c.silentClose()
		}},
		{Name: "startup parameter without terminator", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badPacket(be32(pgproto3.ProtocolVersion30), []byte("user\x00"+alice)))
			c.fatal(codeProtocolViolation, "malformed startup packet")
		}},
		{Name: "startup parameter name without a value", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badPacket(be32(pgproto3.ProtocolVersion30), []byte("user\x00"+alice+"\x00database\x00")))
			c.fatal(codeProtocolViolation, "malformed startup packet")
		}},
		{Name: "an HTTP request", Run: func(t *testing.T) {
			c := onMain(t)
			c.send([]byte("GET / HTTP/1.1\r\nHost: portcullis\r\n\r\n"))
			c.fatal(codeProtocolViolation, "invalid startup packet length")
		}},
		{Name: "a TLS ClientHello without SSLRequest, cut short", Slow: true, Run: func(t *testing.T) {
			// Taken for a direct TLS handshake (sslnegotiation=direct),
			// which the deadline ends as it ends one after 'S'.
			c := onMain(t)
			c.send([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
			if got := hostile.ReadToClose(t, c.raw, badCloseWithin); len(got) > 0 {
				if err := badTimedOut(got); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{Name: "a TLS ClientHello without SSLRequest on a listener without TLS", Run: func(t *testing.T) {
			c := onPlain(t)
			c.send([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
			c.fatal(codeProtocolViolation, "invalid startup packet length")
		}},

		// Protocol versions.
		{Name: "protocol 3.2 is negotiated down to 3.0", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(pgproto3.ProtocolVersion32, aliceParams...))
			npv := c.untilPassword()
			if npv == nil || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 0 {
				t.Fatalf("NegotiateProtocolVersion = %+v, want newest minor 0 and no options", npv)
			}
			c.send(badMessage('X', nil))
			c.silentClose()
		}},
		{Name: "protocol 3.9999 with protocol options", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(3<<16|9999, append(aliceParams, "_pq_.b", "1", "_pq_.a", "2")...))
			npv := c.untilPassword()
			if npv == nil || npv.NewestMinorProtocol != 0 || strings.Join(npv.UnrecognizedOptions, ",") != "_pq_.a,_pq_.b" {
				t.Fatalf("NegotiateProtocolVersion = %+v, want newest minor 0 and [_pq_.a _pq_.b]", npv)
			}
			c.send(badMessage('X', nil))
			c.silentClose()
		}},
		{Name: "protocol 2.0", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badStartup(2<<16, aliceParams...))
			c.fatal(codeFeatureNotSupported, "unsupported frontend protocol 2.0")
		}},
		{Name: "protocol 1234.5681 (next to the request codes)", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(1234<<16 | 5681)))
			c.fatal(codeFeatureNotSupported, "unsupported frontend protocol 1234.5681")
		}},
		{Name: "protocol 4.0", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(4<<16, aliceParams...))
			c.fatal(codeFeatureNotSupported, "unsupported frontend protocol 4.0")
		}},
		{Name: "protocol 0.0", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(0)))
			c.fatal(codeFeatureNotSupported, "unsupported frontend protocol 0.0")
		}},

		// Encryption negotiation.
		{Name: "SSLRequest twice", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badPacket(be32(codeSSLRequest)))
			c.fatal(codeProtocolViolation, "SSLRequest")
		}},
		{Name: "SSLRequest twice on a listener without TLS", Run: func(t *testing.T) {
			c := onPlain(t)
			c.send(badPacket(be32(codeSSLRequest)))
			c.answer('N')
			c.send(badPacket(be32(codeSSLRequest)))
			c.fatal(codeProtocolViolation, "SSLRequest")
		}},
		{Name: "GSSENCRequest twice", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(codeGSSEncRequest)))
			c.answer('N')
			c.send(badPacket(be32(codeGSSEncRequest)))
			c.fatal(codeProtocolViolation, "GSSENCRequest")
		}},
		{Name: "GSSENCRequest inside TLS", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badPacket(be32(codeGSSEncRequest)))
			c.fatal(codeProtocolViolation, "GSSENCRequest")
		}},
		{Name: "plaintext where TLS is required", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badStartup(pgproto3.ProtocolVersion30, aliceParams...))
			c.fatal(codeInvalidAuthorization, "requires an encrypted connection")
		}},
		{Name: "plaintext queued behind SSLRequest", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(append(badPacket(be32(codeSSLRequest)), badStartup(pgproto3.ProtocolVersion30, aliceParams...)...))
			c.fatal(codeProtocolViolation, "unencrypted data")
		}},
		{Name: "plaintext startup after the server said S", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(codeSSLRequest)))
			c.answer('S')
			c.send(badStartup(pgproto3.ProtocolVersion30, aliceParams...))
			c.closeAllowingAlert()
		}},
		{Name: "a malformed ClientHello after S", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(codeSSLRequest)))
			c.answer('S')
			c.send([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff})
			c.closeAllowingAlert()
		}},

		// The handshake deadline.
		{Name: "one byte per second", Slow: true, Run: func(t *testing.T) {
			c := onMain(t)
			c.dripThenTimeout(badPacket(be32(codeSSLRequest)))
		}},
		{Name: "one byte per second inside TLS", Slow: true, Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.dripThenTimeout(badStartup(pgproto3.ProtocolVersion30, aliceParams...))
		}},
		{Name: "500 connections that never speak", Slow: true, Run: func(t *testing.T) {
			opened := time.Now()
			conns := hostile.Silent(t, h.addr(), 500)
			hostile.AllClosedBy(t, conns, opened.Add(badCloseWithin), func(_ int, got []byte) error {
				return badTimedOut(got)
			})
		}},
		{Name: "a length and then silence", Slow: true, Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(100), be32(pgproto3.ProtocolVersion30))
			c.fatalWithin(codeProtocolViolation, "timed out", badCloseWithin)
		}},
		{Name: "S and then no ClientHello", Slow: true, Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(codeSSLRequest)))
			c.answer('S')
			// The client is owed nothing it could read over TLS; the
			// connection must simply not outlive the deadline.
			if got := hostile.ReadToClose(t, c.raw, badCloseWithin); len(got) > 0 {
				if err := badTimedOut(got); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{Name: "asked for a password, never sends one", Slow: true, Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.fatalWithin(codeProtocolViolation, "timed out", badCloseWithin)
		}},

		// What comes after the startup packet.
		{Name: "garbage where the password should be", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send([]byte("GET / HTTP/1.1\r\nHost: portcullis\r\n\r\n"))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "password message over 64 KiB", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send([]byte{'p'}, be32(1<<20))
			c.fatal(codeProtocolViolation, "too long")
		}},
		{Name: "password message of length 3", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send([]byte{'p'}, be32(3))
			c.fatal(codeProtocolViolation, "malformed message")
		}},
		{Name: "password without its NUL terminator", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send([]byte{'p'}, be32(4+7), []byte("hunter2"))
			c.fatal(codeProtocolViolation, "malformed message")
		}},
		{Name: "a query instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('Q', cstr("select 1")))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "a message type that does not exist", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage(0, nil))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		// Each of these four made the codec index past the end of the
		// message: a panic that ended the whole process.
		{Name: "a query without its terminator instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('Q', []byte("select 1")))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "a FunctionCall with lying counts instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('F', []byte{0, 0, 0, 1, 0xff, 0xff}))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "a Bind with a negative length instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('B', []byte{0, 0, 0, 0, 0, 0, 1, 0x80, 0, 0, 0}))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "a CopyFail without its terminator instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('f', nil))
			c.fatal(codeProtocolViolation, "expected a password")
		}},
		{Name: "Terminate instead of a password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('X', nil))
			c.silentClose()
		}},
		{Name: "garbage behind a refused password", Run: func(t *testing.T) {
			c := loggedIn(t, aliceParams...)
			c.send(badMessage('p', cstr("pcx_short")), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 'Q'})
			c.fatal(codeInvalidPassword, "")
		}},
		{Name: "a password over a listener without TLS, then garbage", Run: func(t *testing.T) {
			c := onPlain(t)
			c.send(badStartup(pgproto3.ProtocolVersion30, aliceParams...))
			c.untilPassword()
			c.send(badMessage('p', cstr(key+"x")), []byte("\x00\x00\x00"))
			c.fatal(codeInvalidPassword, "")
		}},

		// User names.
		{Name: "non-UTF-8 user name", Run: refusedPassword("\xff\xfe\xfd\xc3\x28", key)},
		{Name: "64 KiB user name", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			// The server refuses on the length alone and closes with most
			// of the packet unread, so the kernel may reset the
			// connection and drop the answer on the client's side.
			c.sendAlongside(badStartup(pgproto3.ProtocolVersion30, "user", strings.Repeat("a", 64<<10), "database", "analytics"))
			c.fatalOrReset(codeProtocolViolation, "invalid startup packet length")
		}},
		{Name: "9000-byte user name within the limit", Run: refusedPassword(strings.Repeat("b", 9000)+"@contoso.example", "pcx_short")},
		{Name: "empty user name", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(pgproto3.ProtocolVersion30, "user", "", "database", "analytics"))
			c.fatal(codeInvalidAuthorization, "no user name")
		}},
		{Name: "a log line in the user name", Run: refusedPassword("mallory\n{\"event\":\"auth.succeeded\",\"user\":\""+alice+"\"}", "pcx_short")},
		{Name: "SQL in the user name, signed in as alice", Run: func(t *testing.T) {
			login := alice + "'; DROP ROLE analyst_ro; --"
			c := loggedIn(t, "user", login, "database", "analytics")
			c.send(badMessage('p', cstr("sign me in")))
			c.approveNotice(alice)
			c.fatal(codeInvalidAuthorization, "signed in as "+alice)
		}},
		{Name: "SQL in the user name, with alice's session key", Run: refusedPassword("' OR 1=1; --", key)},

		// Access tokens.
		{Name: "JWT with alg none", Run: func(t *testing.T) { refusedPassword(alice, tokens.algNone(t))(t) }},
		{Name: "JWT signed HS256 with the public key", Run: func(t *testing.T) { refusedPassword(alice, tokens.hs256PublicKey(t))(t) }},
		{Name: "JWT with kid ../../etc/passwd", Run: func(t *testing.T) { refusedPassword(alice, tokens.kidTraversal(t))(t) }},
		{Name: "JWT over 16 KiB", Run: refusedPassword(alice, "eyJ"+strings.Repeat("a", 16<<10)+".eyJ.sig")},
		{Name: "genuine JWT (control for the forged ones)", Run: func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pgconn.ConnectConfig(ctx, h.config(alice, tokens.genuine(t), "analytics"))
			if err != nil {
				t.Fatalf("a genuine token was refused: %v", err)
			}
			defer c.Close(ctx)
			if got := currentUser(ctx, t, c); got != roleAnalyst.Name {
				t.Fatalf("current_user = %q", got)
			}
		}},

		// Session keys and TOTP codes.
		{Name: "session key one character short", Run: refusedPassword(alice, key[:len(key)-1])},
		{Name: "session key one character long", Run: refusedPassword(alice, key+"a")},
		{Name: "session key in upper case", Run: refusedPassword(alice, auth.SessionKeyPrefix+strings.ToUpper(key[len(auth.SessionKeyPrefix):]))},
		{Name: "session key outside its alphabet", Run: refusedPassword(alice, auth.SessionKeyPrefix+strings.Repeat("18", (len(key)-len(auth.SessionKeyPrefix))/2))},
		{Name: "session key that was never issued", Run: refusedPassword(alice, auth.SessionKeyPrefix+strings.Repeat("a", len(key)-len(auth.SessionKeyPrefix)))},
		{Name: "alice's session key presented as bob", Run: refusedPassword(bob, key)},
		{Name: "TOTP code with a letter", Run: refusedCode(alice, key+":12a456")},
		{Name: "TOTP code of 7 digits", Run: refusedCode(alice, key+":1234567")},
		{Name: "TOTP code of 5 digits", Run: refusedCode(alice, key+":12345")},

		// Cancel requests.
		{Name: "forged cancel key", Run: func(t *testing.T) {
			before := len(h.events("cancel.dropped"))
			c := onMain(t)
			c.send(badCancel(0x12345678, 0x9abcdef0))
			c.silentClose()
			badWaitCount(t, h, "cancel.dropped", before+1)
		}},
		{Name: "cancel request of 12 bytes", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(be32(12), be32(codeCancelRequest), be32(1))
			c.fatal(codeProtocolViolation, "malformed CancelRequest")
		}},
		{Name: "cancel request with a 32-byte key", Run: func(t *testing.T) {
			c := onMain(t)
			c.send(badPacket(be32(codeCancelRequest), be32(7), make([]byte, 32)))
			c.fatal(codeProtocolViolation, "malformed CancelRequest")
		}},
		{Name: "right process id, wrong secret, while a query runs", Run: func(t *testing.T) {
			badForgedCancelLeavesQuery(t, h, key)
		}},
		{Name: "cancel key replayed after its session ended", Run: func(t *testing.T) {
			badReplayedCancel(t, h, key)
		}},

		// Resources.
		{Name: "unknown database", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(pgproto3.ProtocolVersion30, "user", alice, "database", "no_such_db"))
			c.fatal(codeInvalidCatalog, "no_such_db")
		}},
		{Name: "replication connection", Run: func(t *testing.T) {
			c := onMain(t)
			c.startTLS()
			c.send(badStartup(pgproto3.ProtocolVersion30, append(aliceParams, "replication", "database")...))
			c.fatal(codeFeatureNotSupported, "replication")
		}},
	}
}

// badClient is a raw client connection: bytes in, backend messages out.
type badClient struct {
	t    *testing.T
	h    *harness
	raw  *net.TCPConn
	conn net.Conn // raw, or the TLS client over it
	fe   *pgproto3.Frontend
}

func badDial(t *testing.T, h *harness, addr string) *badClient {
	t.Helper()
	raw := hostile.Dial(t, addr)
	return &badClient{t: t, h: h, raw: raw, conn: raw, fe: pgproto3.NewFrontend(raw, io.Discard)}
}

// send writes parts in one write.
func (c *badClient) send(parts ...[]byte) {
	c.t.Helper()
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// sendAlongside writes b while the test goes on to read: the server may
// close before it has read it all.
func (c *badClient) sendAlongside(b []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.conn.Write(b)
	}()
	c.t.Cleanup(func() {
		c.raw.Close()
		<-done
	})
}

// fatalOrReset is fatal, except that a connection reset before the
// answer could be read also passes.
func (c *badClient) fatalOrReset(code, want string) {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := c.fe.Receive()
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		c.t.Fatalf("want FATAL %s or a reset, got %v", code, err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Code != code || !strings.Contains(e.Message, want) {
		c.t.Fatalf("got %#v, want FATAL %s containing %q", msg, code, want)
	}
}

// answer reads the one-byte answer to an SSLRequest or GSSENCRequest.
func (c *badClient) answer(want byte) {
	c.t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c.conn, b[:]); err != nil {
		c.t.Fatalf("read the answer to an encryption request: %v", err)
	}
	if b[0] != want {
		c.t.Fatalf("encryption request answered %q, want %q", b[0], want)
	}
}

func (c *badClient) startTLS() {
	c.t.Helper()
	c.send(badPacket(be32(codeSSLRequest)))
	c.answer('S')
	tc := tls.Client(c.raw, &tls.Config{RootCAs: c.h.ca.Pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.fe = pgproto3.NewFrontend(tc, io.Discard)
}

func (c *badClient) closeWrite() {
	c.t.Helper()
	var err error
	if tc, ok := c.conn.(*tls.Conn); ok {
		err = tc.CloseWrite()
	} else {
		err = c.raw.CloseWrite()
	}
	if err != nil {
		c.t.Fatalf("close the write side: %v", err)
	}
}

// untilPassword reads up to AuthenticationCleartextPassword and returns
// the NegotiateProtocolVersion that came before it, if any.
func (c *badClient) untilPassword() *pgproto3.NegotiateProtocolVersion {
	c.t.Helper()
	var npv *pgproto3.NegotiateProtocolVersion
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("waiting for the password request: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			npv = &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: m.NewestMinorProtocol, UnrecognizedOptions: append([]string(nil), m.UnrecognizedOptions...)}
		case *pgproto3.AuthenticationCleartextPassword:
			return npv
		case *pgproto3.ErrorResponse:
			c.t.Fatalf("waiting for the password request: %s %s", m.Code, m.Message)
		default:
			c.t.Fatalf("waiting for the password request: got %T", msg)
		}
	}
}

var badCodeRE = regexp.MustCompile(`enter the code ([^\s,]+)`)

// approveNotice reads AuthenticationOk and the sign-in notice and
// approves the code shown as upn.
func (c *badClient) approveNotice(upn string) {
	c.t.Helper()
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("waiting for the sign-in notice: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
		case *pgproto3.NoticeResponse:
			if match := badCodeRE.FindStringSubmatch(m.Message); match != nil {
				if err := sim.Approve(match[1], upn); err != nil {
					c.t.Fatalf("approve the code: %v", err)
				}
				return
			}
		default:
			c.t.Fatalf("waiting for the sign-in notice: got %T", msg)
		}
	}
}

// fatal expects a FATAL ErrorResponse with code whose message contains
// want, and then the end of the connection.
func (c *badClient) fatal(code, want string) {
	c.t.Helper()
	c.fatalWithin(code, want, 10*time.Second)
}

func (c *badClient) fatalWithin(code, want string, within time.Duration) {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(within))
	msg, err := c.fe.Receive()
	for err == nil {
		// Notices (a sign-in prompt) may come before the verdict.
		if _, ok := msg.(*pgproto3.NoticeResponse); !ok {
			break
		}
		msg, err = c.fe.Receive()
	}
	if err != nil {
		c.t.Fatalf("want FATAL %s, got %v", code, err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok {
		c.t.Fatalf("want FATAL %s, got %T", code, msg)
	}
	if e.Severity != "FATAL" || e.Code != code || !strings.Contains(e.Message, want) {
		c.t.Fatalf("got %s %s %q, want FATAL %s containing %q", e.Severity, e.Code, e.Message, code, want)
	}
	c.end()
}

// end expects the server to close the connection with nothing more.
func (c *badClient) end() {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := c.fe.Receive()
	switch {
	case err == nil:
		c.t.Fatalf("after the error, got %T; want the connection closed", msg)
	case !errors.Is(err, io.ErrUnexpectedEOF) && !hostile.Closed(err):
		c.t.Fatalf("after the error: %v; want the connection closed", err)
	}
}

// silentClose expects the server to close without a word.
func (c *badClient) silentClose() {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := c.fe.Receive()
	switch {
	case err == nil:
		c.t.Fatalf("got %T; want the connection closed without an answer", msg)
	case !errors.Is(err, io.ErrUnexpectedEOF) && !hostile.Closed(err):
		c.t.Fatalf("%v; want the connection closed without an answer", err)
	}
}

// closeAllowingAlert expects a close, after at most a TLS alert: the
// client has started TLS and can read nothing else.
func (c *badClient) closeAllowingAlert() {
	c.t.Helper()
	got := hostile.ReadToClose(c.t, c.raw, 10*time.Second)
	if len(got) > 0 && got[0] != 0x15 {
		c.t.Fatalf("after S, got %q; want a close or a TLS alert", hostile.Excerpt(got))
	}
}

// dripThenTimeout sends data one byte a second: the handshake deadline
// must end the connection with 08P01 before it is all sent.
func (c *badClient) dripThenTimeout(data []byte) {
	c.t.Helper()
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() { sent <- hostile.Drip(c.conn, data, time.Second, stop) }()
	defer func() {
		close(stop)
		if n := <-sent; n >= len(data) {
			c.t.Errorf("all %d bytes were sent one a second before the deadline of %s closed the connection", n, badHandshake)
		}
	}()
	c.fatalWithin(codeProtocolViolation, "timed out", badCloseWithin)
}

// badTimedOut checks that got is the FATAL 08P01 of a handshake deadline.
func badTimedOut(got []byte) error {
	fe := pgproto3.NewFrontend(strings.NewReader(string(got)), io.Discard)
	msg, err := fe.Receive()
	if err != nil {
		return fmt.Errorf("want FATAL 08P01 before the close, got %q (%v)", hostile.Excerpt(got), err)
	}
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Code != codeProtocolViolation || !strings.Contains(e.Message, "timed out") {
		return fmt.Errorf("want FATAL 08P01 timed out, got %#v", msg)
	}
	if _, err := fe.Receive(); err == nil {
		return errors.New("more after the FATAL error")
	}
	return nil
}

// badWaitCount waits until at least n entries named event were logged.
func badWaitCount(t *testing.T, h *harness, event string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.events(event)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d %s events, want %d", len(h.events(event)), event, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// badForgedCancelLeavesQuery sends a cancel request with the right
// process id and a wrong secret while a query runs: portcullis must drop
// it, and the genuine key must still cancel the query.
func badForgedCancelLeavesQuery(t *testing.T, h *harness, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	pid, secret := pc.PID(), pc.SecretKey()
	if len(secret) != 4 {
		t.Fatalf("cancel secret of %d bytes, want 4", len(secret))
	}
	done := make(chan error, 1)
	go func() {
		_, err := pc.Exec(ctx, "select pg_sleep(30) /* forged-cancel */").ReadAll()
		done <- err
	}()
	badWaitActive(t, h, "forged-cancel")

	dropped, forwarded := len(h.events("cancel.dropped")), len(h.events("cancel.forwarded"))
	c := badDial(t, h, h.addr())
	c.send(badCancel(pid, binary.BigEndian.Uint32(secret)^1))
	c.silentClose()
	badWaitCount(t, h, "cancel.dropped", dropped+1)
	if n := len(h.events("cancel.forwarded")); n != forwarded {
		t.Fatalf("a forged cancel key was forwarded")
	}
	select {
	case err := <-done:
		t.Fatalf("the query ended after a forged cancel request: %v", err)
	default:
	}

	if err := pc.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; pgCode(err) != "57014" {
		t.Fatalf("after the genuine cancel request: %v, want SQLSTATE 57014", err)
	}
	badWaitCount(t, h, "cancel.forwarded", forwarded+1)
}

// badReplayedCancel replays a session's cancel key after the session
// ended: it must be dropped.
func badReplayedCancel(t *testing.T, h *harness, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, h.config(alice, key, "analytics"))
	if err != nil {
		t.Fatal(err)
	}
	pid, secret := pc.PID(), pc.SecretKey()
	// The client has its ReadyForQuery before portcullis marks the session
	// started, so "no started session" could be seen before this one even
	// began. Wait for this connection itself to leave the registry, which
	// it does after its cancel keys are released.
	addr := pc.Conn().LocalAddr().String()
	pc.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for badListed(h, addr) {
		if time.Now().After(deadline) {
			t.Fatal("the session did not end after its client closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dropped, forwarded := len(h.events("cancel.dropped")), len(h.events("cancel.forwarded"))
	c := badDial(t, h, h.addr())
	c.send(badCancel(pid, binary.BigEndian.Uint32(secret)))
	c.silentClose()
	badWaitCount(t, h, "cancel.dropped", dropped+1)
	if n := len(h.events("cancel.forwarded")); n != forwarded {
		t.Fatal("a cancel key was forwarded after its session ended")
	}
}

// badListed reports whether the connection from the client address addr
// is still in portcullis's registry, in its handshake or relaying.
func badListed(h *harness, addr string) bool {
	for _, s := range h.srv.Sessions() {
		if s.ClientAddr.String() == addr {
			return true
		}
	}
	return false
}

// badWaitActive waits until the backend runs a query containing marker.
func badWaitActive(t *testing.T, h *harness, marker string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	su, err := h.pg.Superuser(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	for {
		res, err := su.Exec(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '%"+marker+"%' and pid <> pg_backend_pid()").ReadAll()
		if err != nil {
			t.Fatalf("wait for the query to run: %v", err)
		}
		if string(res[0].Rows[0][0]) != "0" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("the query never started")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// badTokens forges access tokens for alice around a genuine one.
type badTokens struct{ h *harness }

// claims are the claims of a genuine token for alice.
func (b badTokens) claims(t *testing.T) jwt.MapClaims {
	t.Helper()
	tok := b.genuine(t)
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func (b badTokens) genuine(t *testing.T) string {
	t.Helper()
	tok, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: alice, Audience: portcullisApp, ClientID: "04b07795-8ddb-461a-bbee-02f9e1bf7b46"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (b badTokens) algNone(t *testing.T) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, b.claims(t))
	tok.Header["kid"] = sim.SigningKeyID()
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (b badTokens) hs256PublicKey(t *testing.T) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(sim.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, b.claims(t))
	tok.Header["kid"] = sim.SigningKeyID()
	s, err := tok.SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (b badTokens) kidTraversal(t *testing.T) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, b.claims(t))
	tok.Header["kid"] = "../../etc/passwd"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Builders of raw protocol bytes, right or wrong on purpose.

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func cstr(s string) []byte { return append([]byte(s), 0) }

// badPacket is a startup-phase packet: its true length, then the parts.
func badPacket(parts ...[]byte) []byte {
	n := 4
	for _, p := range parts {
		n += len(p)
	}
	out := be32(uint32(n))
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// badStartup is a well-formed startup packet for version with the
// parameters kv (name, value, name, value, ...).
func badStartup(version uint32, kv ...string) []byte {
	body := be32(version)
	for _, s := range kv {
		body = append(body, cstr(s)...)
	}
	return badPacket(append(body, 0))
}

// badMessage is a regular message: type, true length, body.
func badMessage(typ byte, body []byte) []byte {
	out := append([]byte{typ}, be32(uint32(4+len(body)))...)
	return append(out, body...)
}

func badCancel(pid, secret uint32) []byte {
	return badPacket(be32(codeCancelRequest), be32(pid), be32(secret))
}

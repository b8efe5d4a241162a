package mysql

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/golang-jwt/jwt/v5"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/hostile"
)

// catHandshake is the catalogue's handshake_timeout: short, so the cases
// that wait for it cost little, yet ample for a TLS handshake under -race.
const catHandshake = 2 * time.Second

// catCloseWithin bounds the wait for a connection that the handshake
// deadline must end. What proves the deadline works is what each such
// connection is sent before the close (the "timed out" error), not how
// soon it comes; the bound only turns a connection that is never ended
// into a failure rather than a hang. It is generous because the
// catalogue shares the machine with every other package's tests in CI,
// and stays under the 20 s a hostile client's connection lives at most.
const catCloseWithin = catHandshake + 13*time.Second

// TestBadInputCatalogue drives hostile clients at the MySQL listener over
// raw sockets, with the real identity core on the Entra ID simulator and
// the shared MariaDB behind: each must get an ERR packet with the right
// code, or a close, and never a panic; afterwards nothing may be left
// behind and a good client must still get in (internal/hostile runs the
// table; proxy/postgres has the PostgreSQL listener's).
func TestBadInputCatalogue(t *testing.T) {
	h := newHarness(t, harnessOptions{handshake: catHandshake})
	plain := catListener(t, h, config.Listener{Name: "mysql-plain", Protocol: config.ProtocolMySQL, TLS: config.ListenerTLSDisabled, DefaultResource: "app"})
	bare := catListener(t, h, config.Listener{Name: "mysql-no-default", Protocol: config.ProtocolMySQL, TLS: config.ListenerTLSRequired})
	aliceKey, err := catSignIn(t, h, aliceUPN, aliceUPN)
	if err != nil {
		t.Fatalf("alice's sign-in: %v", err)
	}
	bobKey, err := catSignIn(t, h, bobUPN, bobUPN)
	if err != nil {
		t.Fatalf("bob's sign-in: %v", err)
	}
	cases := catCases(h, plain, bare, aliceKey, bobKey)
	if len(cases) < 25 {
		t.Fatalf("the MySQL catalogue has %d cases; it must keep at least 25", len(cases))
	}
	hostile.Run(t, hostile.Target{
		Open:   func() int { return len(h.srv.Sessions()) },
		Settle: h.http.CloseIdleConnections,
		GoodClient: func(t *testing.T) {
			// alice with her session key, and bob through a fresh
			// device-code sign-in, each through the real identity core to
			// MariaDB with go-sql-driver.
			if got := catCurrentUser(t, h, aliceUPN, aliceKey, "app"); got != userNative.Name+"@%" {
				t.Fatalf("alice runs as %q, want %s@%%", got, userNative.Name)
			}
			key, err := catSignIn(t, h, bobUPN, bobUPN)
			if err != nil {
				t.Fatalf("bob's device-code sign-in: %v", err)
			}
			if got := catCurrentUser(t, h, bobUPN, key, "app_ed"); got != userEd25519.Name+"@%" {
				t.Fatalf("bob runs as %q, want %s@%%", got, userEd25519.Name)
			}
		},
	}, cases)
}

// catCases is the MySQL table. plain is a listener without TLS, bare one
// without a default resource.
func catCases(h *harness, plain, bare, aliceKey, bobKey string) []hostile.Case {
	onMain := func(t *testing.T) *rawClient { return dialRaw(t, h.addr) }
	header := func(n int, seq byte) []byte { return []byte{byte(n), byte(n >> 8), byte(n >> 16), seq} }
	plainResponse := buildHandshakeResponse(rawCaps, aliceUPN, []byte("x"), "app", pluginCachingSHA2)
	// refused: logging in over TLS as user with password gets ERR 1045
	// refusing the credential (never a sign-in prompt), and a close.
	refused := func(user, password, want string) func(t *testing.T) {
		return func(t *testing.T) {
			r := onMain(t)
			catRefused(t, r, r.login(h.tlsCfg, user, password, "app"), want)
		}
	}
	tokens := catTokens{h: h}

	return []hostile.Case{
		// Lengths and framing of the handshake response, in the clear.
		{Name: "length 0", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(header(0, 1))
			catERR(t, r, gomysql.ER_HANDSHAKE_ERROR, "too short")
		}},
		{Name: "length 2^24-1", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(header(1<<24-1, 1))
			catERR(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "packet of 16777215 bytes")
		}},
		{Name: "one byte over 64 KiB", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(header(maxHandshakeBytes+1, 1))
			catERR(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "packet of 65537 bytes")
		}},
		{Name: "half a header then end of stream", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write([]byte{40, 0})
			catCloseWrite(t, r)
			catSilentClose(t, r)
		}},
		{Name: "truncated handshake response then end of stream", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(appendPacket(nil, 1, plainResponse)[:30])
			catCloseWrite(t, r)
			catSilentClose(t, r)
		}},
		{Name: "sequence id out of order", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(appendPacket(nil, 7, plainResponse))
			catERR(t, r, gomysql.ER_NET_PACKETS_OUT_OF_ORDER, "sequence id 7, expected 1")
		}},
		{Name: "sequence id 0 again", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(appendPacket(nil, 0, plainResponse))
			catERR(t, r, gomysql.ER_NET_PACKETS_OUT_OF_ORDER, "sequence id 0, expected 1")
		}},
		{Name: "an HTTP request", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write([]byte("GET / HTTP/1.1\r\nHost: portcullis\r\n\r\n"))
			catERR(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "during the handshake")
		}},
		{Name: "a TLS ClientHello without SSLRequest", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
			catERR(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "during the handshake")
		}},
		{Name: "a client without protocol 4.1", Run: func(t *testing.T) {
			r := onMain(t)
			r.write(buildHandshakeResponse(gomysql.CLIENT_SECURE_CONNECTION|gomysql.CLIENT_SSL, aliceUPN, nil, "app", ""))
			catERR(t, r, gomysql.ER_NOT_SUPPORTED_AUTH_MODE, "protocol 4.1")
		}},

		// Encryption.
		{Name: "plaintext where TLS is required", Run: func(t *testing.T) {
			r := onMain(t)
			r.write(plainResponse)
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "only over TLS: connect with --ssl")
		}},
		{Name: "plaintext on a listener without TLS", Run: func(t *testing.T) {
			r := dialRaw(t, plain)
			if r.caps&gomysql.CLIENT_SSL != 0 {
				t.Fatal("a listener without TLS offers CLIENT_SSL")
			}
			r.write(plainResponse)
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "has TLS turned off")
		}},
		{Name: "a scramble that matches no key, without TLS", Run: func(t *testing.T) {
			r := dialRaw(t, plain)
			r.write(buildHandshakeResponse(rawCaps, aliceUPN, make([]byte, 32), "app", pluginCachingSHA2))
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "only a valid session key")
		}},
		{Name: "bob's key scrambled as alice, without TLS", Run: func(t *testing.T) {
			r := dialRaw(t, plain)
			r.write(buildHandshakeResponse(rawCaps, aliceUPN, mysqlScramble(bobKey, r.nonce), "app", pluginCachingSHA2))
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "only a valid session key")
		}},
		{Name: "alice's scramble replayed against another greeting", Run: func(t *testing.T) {
			seen := dialRaw(t, plain)
			r := dialRaw(t, plain)
			r.write(buildHandshakeResponse(rawCaps, aliceUPN, mysqlScramble(aliceKey, seen.nonce), "app", pluginCachingSHA2))
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "only a valid session key")
		}},
		{Name: "SSLRequest on a listener without TLS", Run: func(t *testing.T) {
			r := dialRaw(t, plain)
			r.write(sslRequest(rawCaps))
			catERR(t, r, gomysql.ER_HANDSHAKE_ERROR, "TLS was not offered")
		}},
		{Name: "SSLRequest twice", Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			r.write(sslRequest(rawCaps))
			catERR(t, r, gomysql.ER_HANDSHAKE_ERROR, "bad handshake")
		}},
		{Name: "plaintext queued behind SSLRequest", Run: func(t *testing.T) {
			r := onMain(t)
			r.conn.Write(append(appendPacket(nil, 1, sslRequest(rawCaps)), appendPacket(nil, 2, plainResponse)...))
			catCloseAllowingAlert(t, r)
		}},
		{Name: "garbage instead of a ClientHello", Run: func(t *testing.T) {
			r := onMain(t)
			r.write(sslRequest(rawCaps))
			r.conn.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff})
			catCloseAllowingAlert(t, r)
		}},

		// The handshake deadline.
		{Name: "one byte per second", Slow: true, Run: func(t *testing.T) {
			r := onMain(t)
			catDripThenTimeout(t, r, appendPacket(nil, 1, plainResponse))
		}},
		{Name: "one byte per second inside TLS", Slow: true, Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			catDripThenTimeout(t, r, appendPacket(nil, 2, plainResponse))
		}},
		{Name: "300 connections that never speak", Slow: true, Run: func(t *testing.T) {
			opened := time.Now()
			conns := hostile.Silent(t, h.addr, 300)
			hostile.AllClosedBy(t, conns, opened.Add(catCloseWithin), func(_ int, got []byte) error {
				return catTimedOut(got)
			})
		}},
		{Name: "SSLRequest and then no ClientHello", Slow: true, Run: func(t *testing.T) {
			r := onMain(t)
			r.write(sslRequest(rawCaps))
			// The client is owed nothing it could read before TLS; the
			// connection must simply not outlive the deadline.
			hostile.ReadToClose(t, r.conn, catCloseWithin)
		}},
		{Name: "asked for the password, never sends it", Slow: true, Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			r.write(buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, aliceUPN, make([]byte, 32), "app", pluginCachingSHA2))
			p, err := r.read()
			if err != nil || len(p) != 2 || p[0] != authMoreDataHeader || p[1] != sha2PerformFullAuth {
				t.Fatalf("want AuthMoreData(perform full authentication), got %q, %v", p, err)
			}
			catERRWithin(t, r, gomysql.ER_NET_READ_INTERRUPTED, "timed out", catCloseWithin)
		}},

		// What comes after the handshake response.
		{Name: "garbage queued behind the handshake response", Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			resp := buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, aliceUPN, make([]byte, 32), "app", pluginCachingSHA2)
			r.conn.Write(append(appendPacket(nil, 2, resp), "\x05\x00\x00\x09hello"...))
			p, err := r.read()
			if err != nil || len(p) != 2 || p[0] != authMoreDataHeader {
				t.Fatalf("want AuthMoreData, got %q, %v", p, err)
			}
			catERR(t, r, gomysql.ER_NET_PACKETS_OUT_OF_ORDER, "sequence id 9, expected 4")
		}},
		{Name: "a password packet of 2^24-1 bytes", Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			r.write(buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, aliceUPN, make([]byte, 32), "app", pluginCachingSHA2))
			if _, err := r.read(); err != nil {
				t.Fatal(err)
			}
			r.conn.Write(header(1<<24-1, r.seq))
			catERR(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "packet of 16777215 bytes")
		}},
		{Name: "a request for the server's public key over TLS", Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			r.write(buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, aliceUPN, make([]byte, 32), "app", pluginCachingSHA2))
			if _, err := r.read(); err != nil {
				t.Fatal(err)
			}
			r.write([]byte{sha2RequestPublicKey})
			catERR(t, r, gomysql.ER_ACCESS_DENIED_ERROR, "only over TLS")
		}},

		// User names.
		{Name: "non-UTF-8 user name", Run: refused("\xff\xfe\xfd\xc3\x28", aliceKey, "session key")},
		{Name: "64 KiB user name", Run: func(t *testing.T) {
			r := onMain(t)
			r.startTLS(h.tlsCfg)
			// Refused on the length alone with most of the packet unread:
			// the kernel may reset the connection before the answer is
			// read.
			resp := appendPacket(nil, r.seq, buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, strings.Repeat("a", 64<<10), make([]byte, 32), "app", pluginCachingSHA2))
			go r.conn.Write(resp)
			catERROrReset(t, r, gomysql.ER_NET_PACKET_TOO_LARGE, "during the handshake")
		}},
		{Name: "60 KiB user name within the limit", Run: refused(strings.Repeat("b", 60<<10)+"@contoso.example", "pcx_short", "session key")},
		{Name: "empty user name", Run: func(t *testing.T) {
			r := onMain(t)
			catRefused(t, r, r.login(h.tlsCfg, "", aliceKey, "app"), "no user name")
		}},
		{Name: "a log line in the user name", Run: refused("mallory\n{\"event\":\"auth.succeeded\",\"user\":\""+aliceUPN+"\"}", "pcx_short", "session key")},
		{Name: "SQL in the user name, with alice's session key", Run: refused("' OR 1=1; --", aliceKey, "session key")},
		{Name: "SQL in the user name, signed in as alice", Run: func(t *testing.T) {
			login := aliceUPN + "'; DROP USER app_native; --"
			_, err := catSignIn(t, h, login, aliceUPN)
			if err == nil || !strings.Contains(err.Error(), "ERR 1045") || !strings.Contains(err.Error(), "signed in as "+aliceUPN) {
				t.Fatalf("sign-in as %q approved by alice: %v, want ERR 1045 saying who signed in", login, err)
			}
		}},

		// Access tokens.
		{Name: "JWT with alg none", Run: func(t *testing.T) { refused(aliceUPN, tokens.algNone(t), "access token")(t) }},
		{Name: "JWT signed HS256 with the public key", Run: func(t *testing.T) { refused(aliceUPN, tokens.hs256PublicKey(t), "access token")(t) }},
		{Name: "JWT with kid ../../etc/passwd", Run: func(t *testing.T) { refused(aliceUPN, tokens.kidTraversal(t), "access token")(t) }},
		{Name: "genuine JWT (control for the forged ones)", Run: func(t *testing.T) {
			if got := catCurrentUser(t, h, aliceUPN, tokens.genuine(t), "app"); got != userNative.Name+"@%" {
				t.Fatalf("a genuine token runs as %q", got)
			}
		}},

		// Session keys and TOTP codes.
		{Name: "session key one character short", Run: refused(aliceUPN, aliceKey[:len(aliceKey)-1], "session key")},
		{Name: "session key one character long", Run: refused(aliceUPN, aliceKey+"a", "session key")},
		{Name: "session key in upper case", Run: refused(aliceUPN, auth.SessionKeyPrefix+strings.ToUpper(aliceKey[len(auth.SessionKeyPrefix):]), "session key")},
		{Name: "alice's session key presented as bob", Run: refused(bobUPN, aliceKey, "session key")},
		{Name: "TOTP code with a letter", Run: refused(aliceUPN, aliceKey+":12a456", "is not 6 digits")},
		{Name: "TOTP code of 7 digits", Run: refused(aliceUPN, aliceKey+":1234567", "is not 6 digits")},

		// After the login: the session stays who it is.
		{Name: "COM_CHANGE_USER to bob after login", Run: func(t *testing.T) {
			r := catLoggedIn(t, h, aliceUPN, aliceKey)
			before := catQuery(t, r, "SELECT CURRENT_USER(), CONNECTION_ID()")
			body := append([]byte{gomysql.COM_CHANGE_USER}, bobUPN+"\x00"...)
			body = append(body, 20)
			body = append(body, make([]byte, 20)...)
			body = append(body, "app\x00"...)
			r.seq = 0
			r.write(body)
			catCommandERR(t, r, gomysql.ER_NOT_SUPPORTED_YET, "COM_CHANGE_USER")
			if after := catQuery(t, r, "SELECT CURRENT_USER(), CONNECTION_ID()"); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("after COM_CHANGE_USER the session is %q, was %q", after, before)
			}
			catOnlyLogins(t, h, aliceUPN, bobUPN)
		}},
		{Name: "COM_CHANGE_USER of 60 KiB", Run: func(t *testing.T) {
			r := catLoggedIn(t, h, aliceUPN, aliceKey)
			before := catQuery(t, r, "SELECT CURRENT_USER(), CONNECTION_ID()")
			r.seq = 0
			r.write(append([]byte{gomysql.COM_CHANGE_USER}, strings.Repeat("root\x00", 12<<10)...))
			catCommandERR(t, r, gomysql.ER_NOT_SUPPORTED_YET, "COM_CHANGE_USER")
			if after := catQuery(t, r, "SELECT CURRENT_USER(), CONNECTION_ID()"); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("after COM_CHANGE_USER the session is %q, was %q", after, before)
			}
		}},
		{Name: "KILL with a forged portcullis connection id", Run: func(t *testing.T) {
			r := catLoggedIn(t, h, aliceUPN, aliceKey)
			before := catQuery(t, r, "SELECT CONNECTION_ID()")
			// An id in portcullis's range that it did not hand out goes to
			// the backend, which knows no such thread.
			r.seq = 0
			r.write(append([]byte{gomysql.COM_QUERY}, fmt.Sprintf("KILL QUERY %d", r.connID^0x5a5a5)...))
			catCommandERR(t, r, gomysql.ER_NO_SUCH_THREAD, "Unknown thread id")
			if after := catQuery(t, r, "SELECT CONNECTION_ID()"); after[0] != before[0] {
				t.Fatalf("the session changed backend thread: %s, was %s", after[0], before[0])
			}
		}},
		{Name: "KILL CONNECTION of another person's session", Run: func(t *testing.T) {
			bob := catLoggedIn(t, h, bobUPN, bobKey)
			bobThread := catQuery(t, bob, "SELECT CONNECTION_ID()")
			r := catLoggedIn(t, h, aliceUPN, aliceKey)
			r.seq = 0
			r.write(append([]byte{gomysql.COM_QUERY}, fmt.Sprintf("KILL CONNECTION %d", bob.connID)...))
			catCommandERR(t, r, gomysql.ER_KILL_DENIED_ERROR, "not owner")
			if got := catQuery(t, bob, "SELECT CONNECTION_ID()"); got[0] != bobThread[0] {
				t.Fatalf("bob's session changed backend thread: %s, was %s", got[0], bobThread[0])
			}
			catQuery(t, r, "SELECT 1")
		}},
		{Name: "KILL with an id beyond 32 bits", Run: func(t *testing.T) {
			r := catLoggedIn(t, h, aliceUPN, aliceKey)
			r.seq = 0
			r.write(append([]byte{gomysql.COM_QUERY}, "KILL 99999999999"...))
			catCommandERR(t, r, gomysql.ER_NO_SUCH_THREAD, "")
			catQuery(t, r, "SELECT 1")
		}},

		// Resources.
		{Name: "unknown database, no default resource", Run: func(t *testing.T) {
			r := dialRaw(t, bare)
			p := r.login(h.tlsCfg, aliceUPN, aliceKey, "no_such_db")
			if code, _, msg := errOf(p); code != gomysql.ER_BAD_DB_ERROR || !strings.Contains(msg, "no_such_db") {
				t.Fatalf("got ERR %d %q, want 1049 naming the database", code, msg)
			}
			catSilentClose(t, r)
		}},
		{Name: "unknown database, refused by the default resource's server", Run: func(t *testing.T) {
			r := onMain(t)
			p := r.login(h.tlsCfg, aliceUPN, aliceKey, "no_such_db")
			code, _, msg := errOf(p)
			if code != gomysql.ER_DBACCESS_DENIED_ERROR || !strings.Contains(msg, "'no_such_db'") || !strings.Contains(msg, "no resource named") {
				t.Fatalf("got ERR %d %q, want MariaDB's 1044 for the database, saying no resource has its name", code, msg)
			}
			catSilentClose(t, r)
		}},
	}
}

// catListener serves l as one more listener of the harness's portcullis.
func catListener(t *testing.T, h *harness, l config.Listener) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, l) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve(%s): %v", l.Name, err)
		}
	})
	return ln.Addr().String()
}

// catSignIn signs user in through retry mode, approving the code in the
// ERR as approveAs, and returns the session key from the OK. Unlike
// harness.signIn, everything it opens belongs to t.
func catSignIn(t *testing.T, h *harness, user, approveAs string) (string, error) {
	t.Helper()
	p := dialRaw(t, h.addr).login(h.tlsCfg, user, "sign me in", "app")
	code, _, msg := errOf(p)
	m := codeInMessage.FindStringSubmatch(msg)
	if code != gomysql.ER_ACCESS_DENIED_ERROR || m == nil {
		return "", fmt.Errorf("first connection: want ERR 1045 with a code, got ERR %d %q", code, msg)
	}
	if err := h.sim.Approve(m[1], approveAs); err != nil {
		return "", err
	}
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		r := dialRaw(t, h.addr)
		p = r.login(h.tlsCfg, user, "sign me in", "app")
		r.conn.Close() // only the key is wanted, not the session
		if p[0] == gomysql.OK_HEADER {
			if m := keyInInfo.FindStringSubmatch(okInfo(p)); m != nil {
				return m[1], nil
			}
			return "", fmt.Errorf("no session key in the OK's info %q", okInfo(p))
		}
		if code, _, msg := errOf(p); code != gomysql.ER_ACCESS_DENIED_ERROR || !strings.Contains(msg, "Sign-in required") {
			return "", fmt.Errorf("reconnect: ERR %d %q", code, msg)
		}
		time.Sleep(50 * time.Millisecond) // the sign-in is collected by polling Entra
	}
	return "", errors.New("the sign-in was not collected in time")
}

// catCurrentUser logs in with go-sql-driver and returns CURRENT_USER().
func catCurrentUser(t *testing.T, h *harness, user, password, database string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	db, err := sql.Open("mysql", h.dsn(user, password, database, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&got); err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	return got
}

// catLoggedIn is a raw client logged in as user with password.
func catLoggedIn(t *testing.T, h *harness, user, password string) *rawClient {
	t.Helper()
	r := dialRaw(t, h.addr)
	if p := r.login(h.tlsCfg, user, password, "app"); p[0] != gomysql.OK_HEADER {
		code, _, msg := errOf(p)
		t.Fatalf("login as %s: ERR %d %q", user, code, msg)
	}
	return r
}

// catQuery runs sql on a logged-in raw client and returns the first
// row's values as text.
func catQuery(t *testing.T, r *rawClient, sql string) []string {
	t.Helper()
	r.seq = 0
	r.write(append([]byte{gomysql.COM_QUERY}, sql...))
	p, err := r.read()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if code, _, msg := errOf(p); code != 0 {
		t.Fatalf("%s: ERR %d %q", sql, code, msg)
	}
	columns := int(p[0])
	if columns == 0 || columns >= 0xfb {
		t.Fatalf("%s: want a small result set, got %q", sql, p)
	}
	for range columns {
		if _, err := r.read(); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := r.read(); err != nil || p[0] != gomysql.EOF_HEADER {
		t.Fatalf("%s: want EOF after the columns, got %q, %v", sql, p, err)
	}
	var row []string
	for {
		p, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		if p[0] == gomysql.EOF_HEADER && len(p) < 9 {
			return row
		}
		if row != nil {
			continue
		}
		rd := reader{b: p}
		for range columns {
			row = append(row, string(rd.lenencBytes()))
		}
		if rd.err != nil {
			t.Fatalf("%s: row %q: %v", sql, p, rd.err)
		}
	}
}

// catCommandERR reads the answer to a command: an ERR with code (any
// message when want is empty), and the session goes on.
func catCommandERR(t *testing.T, r *rawClient, code uint16, want string) {
	t.Helper()
	p, err := r.read()
	if err != nil {
		t.Fatalf("want ERR %d, got %v", code, err)
	}
	got, _, msg := errOf(p)
	if got != code || !strings.Contains(msg, want) {
		t.Fatalf("got %q, want ERR %d containing %q", p, code, want)
	}
}

// catOnlyLogins fails t if any open session of the server is logged in
// as other (portcullis's view of who each connection is).
func catOnlyLogins(t *testing.T, h *harness, want, other string) {
	t.Helper()
	seen := false
	for _, s := range h.srv.Sessions() {
		switch {
		case strings.EqualFold(s.LoginName, other) || strings.EqualFold(s.Identity.Name(), other):
			t.Fatalf("session %s is now %s / %s", s.ID, s.LoginName, s.Identity.Name())
		case s.LoginName == want && !s.Started.IsZero():
			seen = true
		}
	}
	if !seen {
		t.Fatalf("no session of %s is open", want)
	}
}

// catRefused checks that p, the answer to a login, is ERR 1045 (28000)
// as a bad credential (not a sign-in prompt) mentioning want, and that
// the connection then closes.
func catRefused(t *testing.T, r *rawClient, p []byte, want string) {
	t.Helper()
	code, state, msg := errOf(p)
	if code != gomysql.ER_ACCESS_DENIED_ERROR || state != stateAccessDenied || strings.Contains(msg, "Sign-in required") || !strings.Contains(msg, want) {
		t.Fatalf("got ERR %d (%s) %q, want 1045 (28000) refusing the credential (containing %q)", code, state, msg, want)
	}
	catSilentClose(t, r)
}

// catERR expects an ERR packet with code whose message contains want,
// and then the end of the connection.
func catERR(t *testing.T, r *rawClient, code uint16, want string) {
	t.Helper()
	catERRWithin(t, r, code, want, 10*time.Second)
}

func catERRWithin(t *testing.T, r *rawClient, code uint16, want string, within time.Duration) {
	t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(within))
	p, err := r.read()
	if err != nil {
		t.Fatalf("want ERR %d, got %v", code, err)
	}
	got, state, msg := errOf(p)
	if got != code || !strings.Contains(msg, want) {
		t.Fatalf("got %q, want ERR %d containing %q", p, code, want)
	}
	if wantState := catStates[code]; wantState != "" && state != wantState {
		t.Fatalf("ERR %d with SQLSTATE %s, want %s", code, state, wantState)
	}
	catSilentClose(t, r)
}

// catStates are the SQLSTATEs that go with portcullis's own errors.
var catStates = map[uint16]string{
	gomysql.ER_ACCESS_DENIED_ERROR:      stateAccessDenied,
	gomysql.ER_HANDSHAKE_ERROR:          stateCommLink,
	gomysql.ER_NET_PACKET_TOO_LARGE:     stateCommLink,
	gomysql.ER_NET_PACKETS_OUT_OF_ORDER: stateCommLink,
	gomysql.ER_NET_READ_INTERRUPTED:     stateCommLink,
	gomysql.ER_NOT_SUPPORTED_AUTH_MODE:  stateCommLink,
}

// catERROrReset is catERR, except that a reset before the answer could
// be read also passes.
func catERROrReset(t *testing.T, r *rawClient, code uint16, want string) {
	t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := r.read()
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatalf("want ERR %d or a reset, got %v", code, err)
	}
	if got, _, msg := errOf(p); got != code || !strings.Contains(msg, want) {
		t.Fatalf("got %q, want ERR %d containing %q", hostile.Excerpt(p), code, want)
	}
}

// catSilentClose expects the server to close with nothing more.
func catSilentClose(t *testing.T, r *rawClient) {
	t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(r.br)
	if err != nil && !hostile.Closed(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("want the connection closed: %v", err)
	}
	if len(got) > 0 {
		t.Fatalf("want the connection closed, got %q", hostile.Excerpt(got))
	}
}

// catCloseAllowingAlert expects a close, after at most a TLS alert: the
// client asked for TLS and can read nothing else.
func catCloseAllowingAlert(t *testing.T, r *rawClient) {
	t.Helper()
	got := hostile.ReadToClose(t, r.conn, 10*time.Second)
	if len(got) > 0 && got[0] != 0x15 {
		t.Fatalf("after an SSLRequest, got %q; want a close or a TLS alert", hostile.Excerpt(got))
	}
}

func catCloseWrite(t *testing.T, r *rawClient) {
	t.Helper()
	if err := r.conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("close the write side: %v", err)
	}
}

// catDripThenTimeout sends data one byte a second: the handshake deadline
// must end the connection with ERR 1159 before it is all sent.
func catDripThenTimeout(t *testing.T, r *rawClient, data []byte) {
	t.Helper()
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() { sent <- hostile.Drip(r.conn, data, time.Second, stop) }()
	defer func() {
		close(stop)
		if n := <-sent; n >= len(data) {
			t.Errorf("all %d bytes were sent one a second before the deadline of %s closed the connection", n, catHandshake)
		}
	}()
	catERRWithin(t, r, gomysql.ER_NET_READ_INTERRUPTED, "timed out", catCloseWithin)
}

// catTimedOut checks that got is a greeting and then the ERR 1159 of a
// handshake deadline, and nothing else.
func catTimedOut(got []byte) error {
	var packets [][]byte
	for len(got) >= 4 {
		n := int(got[0]) | int(got[1])<<8 | int(got[2])<<16
		if len(got) < 4+n {
			break
		}
		packets = append(packets, got[4:4+n])
		got = got[4+n:]
	}
	if len(got) > 0 || len(packets) != 2 || len(packets[0]) == 0 || packets[0][0] != gomysql.ClassicProtocolVersion {
		return fmt.Errorf("want a greeting and one ERR, got %d packets and %d stray bytes", len(packets), len(got))
	}
	if code, state, msg := errOf(packets[1]); code != gomysql.ER_NET_READ_INTERRUPTED || state != stateCommLink || !strings.Contains(msg, "timed out") {
		return fmt.Errorf("want ERR 1159 (08S01) timed out, got %d (%s) %q", code, state, msg)
	}
	return nil
}

// catTokens forges access tokens for alice around a genuine one.
type catTokens struct{ h *harness }

func (c catTokens) genuine(t *testing.T) string {
	t.Helper()
	tok, err := c.h.sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: appID, ClientID: appID})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// claims are the claims of a genuine token for alice.
func (c catTokens) claims(t *testing.T) jwt.MapClaims {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(c.genuine(t), ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func (c catTokens) algNone(t *testing.T) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, c.claims(t))
	tok.Header["kid"] = c.h.sim.SigningKeyID()
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c catTokens) hs256PublicKey(t *testing.T) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(c.h.sim.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c.claims(t))
	tok.Header["kid"] = c.h.sim.SigningKeyID()
	s, err := tok.SignedString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c catTokens) kidTraversal(t *testing.T) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c.claims(t))
	tok.Header["kid"] = "../../etc/passwd"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

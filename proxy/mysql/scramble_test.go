package mysql

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	driver "github.com/go-sql-driver/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// Session keys without TLS: caching_sha2_password's fast authentication
// on listeners with tls optional and disabled, through go-sql-driver,
// the mariadb command line and a hand-made client, against the real
// identity core on the Entra ID simulator, a real SQLite state store and
// real MariaDB.

// tapListener records every byte its connections carry either way, as
// someone on the network would see them.
type tapListener struct {
	net.Listener
	mu   sync.Mutex
	seen bytes.Buffer
}

func (l *tapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tapConn{Conn: c, l: l}, nil
}

func (l *tapListener) record(p []byte) {
	l.mu.Lock()
	l.seen.Write(p)
	l.mu.Unlock()
}

func (l *tapListener) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.seen.Bytes())
}

type tapConn struct {
	net.Conn
	l *tapListener
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.record(p[:n])
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.record(p[:n])
	return n, err
}

func (c *tapConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// listen serves another listener of the harness's portcullis, with the
// given TLS setting, and returns its address and what it carried.
func (h *harness) listen(t *testing.T, tlsSetting string) (string, *tapListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &tapListener{Listener: ln}
	h.serveOn(t, tap, tlsSetting)
	return ln.Addr().String(), tap
}

// listenBare is listen without the tap: its sessions' client legs are
// bare sockets, as in production, so that the relay's event loop takes
// them where the backend leg is bare too.
func (h *harness) listenBare(t *testing.T, tlsSetting string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.serveOn(t, ln, tlsSetting)
	return ln.Addr().String()
}

func (h *harness) serveOn(t *testing.T, ln net.Listener, tlsSetting string) {
	l := config.Listener{Name: "mysql-" + tlsSetting, Protocol: config.ProtocolMySQL, TLS: tlsSetting, DefaultResource: "app"}
	served := make(chan error, 1)
	go func() { served <- h.srv.Serve(context.Background(), ln, l) }()
	t.Cleanup(func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve(%s): %v", l.Name, err)
		}
	})
}

// openPlain opens one go-sql-driver connection to addr without TLS.
func openPlain(t *testing.T, addr, user, password, database string) *sql.DB {
	t.Helper()
	cfg := driver.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = user, password, "tcp", addr, database
	cfg.Timeout = 20 * time.Second
	conn, err := driver.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// olderKey makes a session key as an older portcullis stored them, under
// the SHA-256 of the key, for the identity that key belongs to.
func olderKey(t *testing.T, h *harness, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h1 := sha256.Sum256([]byte(key))
	rec, ok, err := h.store.GetSignIn(ctx, sha256.Sum256(h1[:]))
	if err != nil || !ok {
		t.Fatalf("the key's record under its verifier: %v, %v", ok, err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	older := auth.SessionKeyPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
	rec.ScrambleUser = ""
	if err := h.store.PutSignIn(ctx, sha256.Sum256([]byte(older)), rec); err != nil {
		t.Fatal(err)
	}
	return older
}

// otherKey is key with its last character changed: well formed, and
// nobody's.
func otherKey(key string) string {
	last := byte('a')
	if key[len(key)-1] == last {
		last = 'b'
	}
	return key[:len(key)-1] + string(last)
}

// mysqlScramble is caching_sha2_password's fast-authentication response
// for password against nonce, as a MySQL client computes it.
func mysqlScramble(password string, nonce []byte) []byte {
	h1 := sha256.Sum256([]byte(password))
	h2 := sha256.Sum256(h1[:])
	m := sha256.New()
	m.Write(h2[:])
	m.Write(nonce)
	out := m.Sum(nil)
	for i := range out {
		out[i] ^= h1[i]
	}
	return out
}

// go-sql-driver without TLS proves a session key by the scramble, on a
// listener with TLS optional and one with TLS off, and nothing that
// crosses the network gives the key away. Anything else is refused with
// ERR 1045 saying to use TLS, without a sign-in: a wrong key, someone
// else's, a key stored by an older portcullis (which still works over
// TLS), a password that is no key, a resource that requires TOTP, and
// any key on a listener that requires TLS.
func TestSessionKeyWithoutTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{totp: true})
	optional, tap := h.listen(t, config.ListenerTLSOptional)
	disabled, _ := h.listen(t, config.ListenerTLSDisabled)
	alice, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := h.signIn(bobUPN, bobUPN)
	if err != nil {
		t.Fatal(err)
	}
	older := olderKey(t, h, alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for _, addr := range []string{optional, disabled} {
		var user string
		if err := openPlain(t, addr, aliceUPN, alice, "app").QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
			t.Fatalf("alice's key without TLS: %v", err)
		}
		if want := userNative.Name + "@%"; user != want {
			t.Errorf("CURRENT_USER() = %q, want %q", user, want)
		}
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })
	codes := len(h.events("auth.device_code.issued"))

	wrong := otherKey(alice)
	tests := []struct {
		name     string
		addr     string
		user     string
		password string
		database string
		wantIn   []string
		wantOut  []string
	}{
		{name: "a wrong key", addr: optional, user: aliceUPN, password: wrong, database: "app",
			wantIn: []string{"connect with --ssl", "only a valid session key"}},
		{name: "bob's key as alice", addr: optional, user: aliceUPN, password: bob, database: "app",
			wantIn: []string{"only a valid session key"}},
		{name: "alice's key as someone with no keys", addr: optional, user: carolUPN, password: alice, database: "app",
			wantIn: []string{"only a valid session key"}},
		{name: "a key stored by an older portcullis", addr: optional, user: aliceUPN, password: older, database: "app",
			wantIn: []string{"only a valid session key"}},
		{name: "a password that is no key", addr: optional, user: aliceUPN, password: "sign me in", database: "app",
			wantIn: []string{"only a valid session key"}},
		{name: "a wrong key where TLS is off", addr: disabled, user: aliceUPN, password: wrong, database: "app",
			wantIn: []string{"has TLS turned off: here only a valid session key"}},
		{name: "a resource that requires TOTP", addr: optional, user: aliceUPN, password: alice, database: totpResource,
			wantIn: []string{`"app_totp" requires a TOTP code`, "only over TLS: connect with --ssl"}},
		{name: "a listener that requires TLS", addr: h.addr, user: aliceUPN, password: alice, database: "app",
			wantIn: []string{"only over TLS: connect with --ssl"}, wantOut: []string{"session key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := openPlain(t, tt.addr, tt.user, tt.password, tt.database).PingContext(ctx)
			e := myErr(err)
			if e == nil || e.Number != gomysql.ER_ACCESS_DENIED_ERROR || string(e.SQLState[:]) != stateAccessDenied {
				t.Fatalf("%v, want ERR 1045 (28000)", err)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message %q does not say %q", e.Message, s)
				}
			}
			for _, s := range tt.wantOut {
				if strings.Contains(e.Message, s) {
					t.Errorf("message %q says %q", e.Message, s)
				}
			}
		})
	}
	if n := len(h.events("auth.device_code.issued")); n != codes {
		t.Errorf("%d device codes issued to clients without TLS", n-codes)
	}

	// The key stored by an older portcullis still works over TLS.
	var user string
	if err := h.open(aliceUPN, older, "app", "").QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
		t.Errorf("the older key over TLS: %v", err)
	}

	// Nothing the listener without TLS carried gives a key away.
	seen := tap.bytes()
	if !bytes.Contains(seen, []byte(aliceUPN)) {
		t.Fatal("the tap saw no login: it proves nothing")
	}
	for _, key := range []string{alice, bob, older} {
		h1 := sha256.Sum256([]byte(key))
		for what, b := range map[string][]byte{"a key": []byte(key), "a key's random part": []byte(key[len(auth.SessionKeyPrefix):]), "a key's SHA-256": h1[:]} {
			if bytes.Contains(seen, b) {
				t.Errorf("%s crossed the network in the clear", what)
			}
		}
	}
	h.noSecretsLogged(alice, bob, older, userNative.Password)
}

// A hand-made client sees caching_sha2_password's exchange exactly: the
// scramble in the handshake response, fast_auth_success (sequence id 2),
// then the OK (3), and a session. A client on another plugin is switched
// to caching_sha2_password; one with no password or a short scramble is
// refused as before, with no word of session keys.
func TestScrambleExchange(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	optional, _ := h.listen(t, config.ListenerTLSOptional)
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}

	r := dialRaw(t, optional)
	if r.plugin != pluginCachingSHA2 || len(r.nonce) != 20 || r.caps&gomysql.CLIENT_SSL == 0 {
		t.Fatalf("greeting: plugin %q, %d-byte scramble, caps %#x", r.plugin, len(r.nonce), r.caps)
	}
	r.write(buildHandshakeResponse(rawCaps, aliceUPN, mysqlScramble(key, r.nonce), "app", pluginCachingSHA2))
	p, err := r.read()
	if err != nil || !bytes.Equal(p, []byte{authMoreDataHeader, sha2FastAuthSuccess}) || r.seq != 3 {
		t.Fatalf("want fast_auth_success with sequence id 2, got %q (next %d), %v", p, r.seq, err)
	}
	if p, err = r.read(); err != nil || p[0] != gomysql.OK_HEADER || r.seq != 4 {
		code, _, msg := errOf(p)
		t.Fatalf("want the OK with sequence id 3, got ERR %d %q (next %d), %v", code, msg, r.seq, err)
	}
	if got := catQuery(t, r, "SELECT CURRENT_USER()"); len(got) != 1 || got[0] != userNative.Name+"@%" {
		t.Errorf("CURRENT_USER() = %q", got)
	}

	// A client that answered with another plugin is switched to
	// caching_sha2_password over the same nonce, and proves the key there,
	// whether it answered that plugin's way or (as MariaDB's library does
	// for a plugin it is not using) with nothing.
	for _, first := range []struct{ plugin, auth string }{
		{pluginNative, strings.Repeat("\x07", 20)},
		{pluginNative, ""},
		{pluginClear, "not sent in the clear\x00"},
	} {
		t.Run(fmt.Sprintf("switched from %s with %d bytes", first.plugin, len(first.auth)), func(t *testing.T) {
			r := dialRaw(t, optional)
			plugin := first.plugin
			first := []byte(first.auth)
			r.write(buildHandshakeResponse(rawCaps, aliceUPN, first, "app", plugin))
			p, err := r.read()
			want := append(append([]byte{0xfe}, pluginCachingSHA2+"\x00"...), append(append([]byte(nil), r.nonce...), 0)...)
			if err != nil || !bytes.Equal(p, want) {
				t.Fatalf("want an auth switch to caching_sha2_password over the greeting's nonce, got %q, %v", p, err)
			}
			r.write(mysqlScramble(key, r.nonce))
			if p, err = r.read(); err != nil || !bytes.Equal(p, []byte{authMoreDataHeader, sha2FastAuthSuccess}) {
				t.Fatalf("want fast_auth_success, got %q, %v", p, err)
			}
			if p, err = r.read(); err != nil || p[0] != gomysql.OK_HEADER {
				code, _, msg := errOf(p)
				t.Fatalf("want the OK, got ERR %d %q, %v", code, msg, err)
			}
		})
	}

	// A switched client with no password answers the switch with an empty
	// scramble, and is refused as one that started without a password.
	t.Run("switched, without a password", func(t *testing.T) {
		r := dialRaw(t, optional)
		r.write(buildHandshakeResponse(rawCaps, aliceUPN, nil, "app", pluginNative))
		if p, err := r.read(); err != nil || len(p) == 0 || p[0] != 0xfe {
			t.Fatalf("want an auth switch, got %q, %v", p, err)
		}
		r.write(nil)
		p, err := r.read()
		code, state, msg := errOf(p)
		if err != nil || code != gomysql.ER_ACCESS_DENIED_ERROR || state != stateAccessDenied ||
			!strings.Contains(msg, "only over TLS: connect with --ssl") || strings.Contains(msg, "session key") {
			t.Errorf("got ERR %d (%s) %q, %v; want 1045 saying to connect with --ssl", code, state, msg, err)
		}
	})

	tests := []struct {
		name   string
		auth   []byte
		plugin string
	}{
		{name: "caching_sha2_password without a password", plugin: pluginCachingSHA2},
		{name: "caching_sha2_password with a short scramble", auth: mysqlScramble(key, r.nonce)[:20], plugin: pluginCachingSHA2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, optional)
			r.write(buildHandshakeResponse(rawCaps, aliceUPN, tt.auth, "app", tt.plugin))
			p, err := r.read()
			code, state, msg := errOf(p)
			if err != nil || code != gomysql.ER_ACCESS_DENIED_ERROR || state != stateAccessDenied ||
				!strings.Contains(msg, "only over TLS: connect with --ssl") || strings.Contains(msg, "session key") {
				t.Errorf("got ERR %d (%s) %q, %v; want 1045 saying to connect with --ssl", code, state, msg, err)
			}
		})
	}
	h.waitEvent("conn.refused", func(m map[string]any) bool { return m["reason"] == "tls_required" })
}

// The mariadb command line without TLS gets in with a session key; a
// wrong one is told to use TLS.
func TestCLIWithoutTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	optional, _ := h.listen(t, config.ListenerTLSOptional)
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	_, port, _ := net.SplitHostPort(optional)
	cli := func(password string, more ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--no-defaults", "--skip-ssl",
			"-h", "127.0.0.1", "-P", port, "-u", aliceUPN, "--password=" + password, "--connect-timeout=20",
			"-D", "app", "-N", "-B", "-e", "SELECT CURRENT_USER()"}, more...)
		cmd := exec.CommandContext(ctx, mariadbCLI(t), args...)
		cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	out, errOut, err := cli(key)
	if err != nil {
		t.Fatalf("mariadb --skip-ssl with the session key: %v: %s", err, errOut)
	}
	if got := strings.TrimSpace(out); got != userNative.Name+"@%" {
		t.Errorf("CURRENT_USER() = %q, want %s@%%", got, userNative.Name)
	}
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })

	// A client starting on mysql_native_password, as MariaDB's library
	// does when its caching_sha2_password plugin is not loaded yet (the
	// first connections of a multi-threaded program, all at once), answers
	// the greeting with nothing at all; it is switched and gets in.
	out, errOut, err = cli(key, "--default-auth=mysql_native_password")
	if err != nil {
		t.Fatalf("mariadb --skip-ssl --default-auth=mysql_native_password with the session key: %v: %s", err, errOut)
	}
	if got := strings.TrimSpace(out); got != userNative.Name+"@%" {
		t.Errorf("starting on mysql_native_password: CURRENT_USER() = %q, want %s@%%", got, userNative.Name)
	}

	_, errOut, err = cli(otherKey(key))
	if err == nil || !strings.Contains(errOut, "ERROR 1045 (28000)") || !strings.Contains(errOut, "only a valid session key") {
		t.Errorf("a wrong key: %v: %s", err, errOut)
	}
	h.noSecretsLogged(key)
}

// Over TLS, a client that answered the greeting with another plugin is
// switched to caching_sha2_password, the greeting's own, over the same
// nonce, then asked for full authentication: a client whose library
// loads plugins on first use already holds that one (or is loading it
// for a thread beside it), where a switch to mysql_clear_password would
// make every such thread load another plugin at once.
func TestSwitchOverTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	for _, first := range [][]byte{nil, bytes.Repeat([]byte{7}, 20)} {
		t.Run(fmt.Sprintf("from mysql_native_password with %d bytes", len(first)), func(t *testing.T) {
			r := dialRaw(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(h.port())))
			r.startTLS(h.tlsCfg)
			r.write(buildHandshakeResponse(rawCaps|gomysql.CLIENT_SSL, aliceUPN, first, "app", pluginNative))
			p, err := r.read()
			want := append(append([]byte{0xfe}, pluginCachingSHA2+"\x00"...), append(append([]byte(nil), r.nonce...), 0)...)
			if err != nil || !bytes.Equal(p, want) {
				t.Fatalf("want an auth switch to caching_sha2_password over the greeting's nonce, got %q, %v", p, err)
			}
			r.write(bytes.Repeat([]byte{9}, 32))
			if p, err = r.read(); err != nil || !bytes.Equal(p, []byte{authMoreDataHeader, sha2PerformFullAuth}) {
				t.Fatalf("want perform_full_authentication, got %q, %v", p, err)
			}
			r.write(append([]byte(key), 0))
			if p, err = r.read(); err != nil || len(p) == 0 || p[0] != gomysql.OK_HEADER {
				code, _, msg := errOf(p)
				t.Fatalf("want the OK, got ERR %d %q, %v", code, msg, err)
			}
		})
	}
	h.noSecretsLogged(key)
}

package mysql

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// go-sql-driver logs in with the session key through
// caching_sha2_password's full authentication over TLS, and, with
// allowCleartextPasswords, through a switch to mysql_clear_password; a
// wrong key is refused either way, so the password really got through.
func TestGoDriverLogin(t *testing.T) {
	tests := []struct {
		name      string
		cleartext bool
		params    string
	}{
		{name: "caching_sha2 full authentication"},
		{name: "mysql_clear_password", cleartext: true, params: "allowCleartextPasswords=true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{cleartext: tt.cleartext})
			key, err := h.signIn(aliceUPN, aliceUPN)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()

			db := h.open(aliceUPN, key, "app", tt.params)
			var user, cipher string
			if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')").Scan(&user, &cipher); err != nil {
				t.Fatalf("query: %v", err)
			}
			if want := userNative.Name + "@%"; user != want {
				t.Errorf("CURRENT_USER() = %q, want %q", user, want)
			}
			if cipher == "" {
				t.Error("the backend connection is not encrypted")
			}
			h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodSessionKey) })

			bad := h.open(aliceUPN, key[:len(key)-1]+"x", "app", tt.params)
			err = bad.PingContext(ctx)
			if e := myErr(err); e == nil || e.Number != gomysql.ER_ACCESS_DENIED_ERROR || string(e.SQLState[:]) != stateAccessDenied {
				t.Fatalf("wrong key: %v, want ERR 1045 (28000)", err)
			}
			if strings.Contains(err.Error(), key[:20]) {
				t.Error("the refusal repeats the key")
			}
			h.noSecretsLogged(key, userNative.Password, graphSecret)
		})
	}
}

// A 100 MB result comes through byte for byte; prepared statements,
// multi-statements and a rolled-back transaction behave as on the server.
func TestSessionTraffic(t *testing.T) {
	h := newHarness(t, harnessOptions{grace: 10 * time.Minute})
	if _, err := h.signIn(aliceUPN, aliceUPN); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Address grace: the same person from the same address, any password.
	db := h.open(aliceUPN, "anything", "app", "multiStatements=true")

	t.Run("100 MB select", func(t *testing.T) {
		const rows, size = 100, 1 << 20
		rs, err := db.QueryContext(ctx, fmt.Sprintf("SELECT seq, REPEAT(CHAR(65 + seq %% 26), %d) FROM seq_1_to_%d", size, rows))
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		got, want := sha256.New(), sha256.New()
		var n int
		for rs.Next() {
			var seq int
			var v sql.RawBytes
			if err := rs.Scan(&seq, &v); err != nil {
				t.Fatal(err)
			}
			got.Write(v)
			n += len(v)
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= rows; i++ {
			want.Write([]byte(strings.Repeat(string(rune(65+i%26)), size)))
		}
		if n != rows*size || string(got.Sum(nil)) != string(want.Sum(nil)) {
			t.Fatalf("got %d bytes with checksum %x, want %d with %x", n, got.Sum(nil), rows*size, want.Sum(nil))
		}
	})

	t.Run("prepared statement", func(t *testing.T) {
		stmt, err := db.PrepareContext(ctx, "SELECT owner, ? + id FROM accounts WHERE id = ?")
		if err != nil {
			t.Fatal(err)
		}
		defer stmt.Close()
		for _, tc := range []struct {
			id    int
			owner string
		}{{1, "alice"}, {2, "bob"}} {
			var owner string
			var sum int
			if err := stmt.QueryRowContext(ctx, 40, tc.id).Scan(&owner, &sum); err != nil {
				t.Fatal(err)
			}
			if owner != tc.owner || sum != 40+tc.id {
				t.Errorf("id %d: got (%q, %d), want (%q, %d)", tc.id, owner, sum, tc.owner, 40+tc.id)
			}
		}
	})

	t.Run("multi-statements", func(t *testing.T) {
		rs, err := db.QueryContext(ctx, "SELECT 1; SELECT 'two'; SELECT COUNT(*) FROM accounts")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var got []string
		for {
			for rs.Next() {
				var v string
				if err := rs.Scan(&v); err != nil {
					t.Fatal(err)
				}
				got = append(got, v)
			}
			if !rs.NextResultSet() {
				break
			}
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != "1,two,2" {
			t.Errorf("results %q, want 1,two,2", got)
		}
	})

	t.Run("rolled-back transaction", func(t *testing.T) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO accounts VALUES (3, 'mallory')"); err != nil {
			t.Fatal(err)
		}
		var inside int
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM accounts").Scan(&inside); err != nil || inside != 3 {
			t.Fatalf("inside the transaction: %d rows, %v; want 3", inside, err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		var after int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM accounts").Scan(&after); err != nil || after != 2 {
			t.Fatalf("after the rollback: %d rows, %v; want 2", after, err)
		}
	})
	h.waitEvent("auth.succeeded", func(m map[string]any) bool { return m["method"] == string(auth.MethodAddressGrace) })
}

// KILL QUERY from a second connection stops a running query, with the
// backend's thread id (passed through) and with the connection id in
// portcullis's greeting (carried out by portcullis); another person
// cannot kill it.
func TestKillQuery(t *testing.T) {
	h := newHarness(t, harnessOptions{grace: 10 * time.Minute})
	if _, err := h.signIn(aliceUPN, aliceUPN); err != nil {
		t.Fatal(err)
	}
	if _, err := h.signIn(bobUPN, bobUPN); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	killer := h.open(aliceUPN, "x", "app", "")

	t.Run("backend thread id", func(t *testing.T) {
		victim := h.open(aliceUPN, "x", "app", "")
		conn, err := victim.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var thread int64
		if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&thread); err != nil {
			t.Fatal(err)
		}
		elapsed := runKilled(ctx, t, func(ctx context.Context) error {
			_, err := conn.ExecContext(ctx, "SELECT SLEEP(20)")
			return err
		}, func() error {
			_, err := killer.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", thread))
			return err
		})
		if elapsed > 10*time.Second {
			t.Errorf("the query ran %s after KILL QUERY", elapsed)
		}
		var one int
		if err := conn.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Errorf("the victim's connection is unusable after KILL QUERY: %v", err)
		}
	})

	t.Run("portcullis connection id", func(t *testing.T) {
		r := dialRaw(t, h.addr)
		if p := r.login(h.tlsCfg, aliceUPN, "x", "app"); p[0] != gomysql.OK_HEADER {
			t.Fatalf("login: %q", p)
		}
		bob := h.open(bobUPN, "x", "app", "")
		_, err := bob.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", r.connID))
		if e := myErr(err); e == nil || e.Number != gomysql.ER_KILL_DENIED_ERROR {
			t.Fatalf("bob killing alice's query: %v, want ERR 1095", err)
		}
		killSleepOn(ctx, t, r, killer)
	})
}

// TestKillQueryWithoutTLS: without TLS on either leg, the killer's session
// is relayed by the event loop, which hands it to its goroutine to carry
// out a KILL of a portcullis connection id; the session goes on there.
// TestKillOwnConnection: a KILL CONNECTION of a session's own portcullis
// connection id (the one its greeting gave, which the mariadb CLI shows
// as "Your MariaDB connection id") is answered as MariaDB answers a KILL
// of its own thread: error 1927 as packet 1, then the close, and a
// command pipelined behind the KILL does not run. The
// session ends as killed, with TLS on the client leg or without; the
// person's other session goes on.
func TestKillOwnConnection(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	optional, _ := h.listen(t, config.ListenerTLSOptional)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	other := h.open(aliceUPN, key, "app", "")
	var n int
	if err := other.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}

	tlsClient := dialRaw(t, h.addr)
	if p := tlsClient.login(h.tlsCfg, aliceUPN, key, "app"); p[0] != gomysql.OK_HEADER {
		t.Fatalf("login over TLS: %q", p)
	}
	// app_ed's backend leg has no TLS either.
	plainClient := dialRaw(t, optional)
	plainClient.write(buildHandshakeResponse(rawCaps, aliceUPN, mysqlScramble(key, plainClient.nonce), "app_ed", pluginCachingSHA2))
	plainClient.read() // fast_auth_success
	if p, err := plainClient.read(); err != nil || p[0] != gomysql.OK_HEADER {
		t.Fatalf("login without TLS: %q, %v", p, err)
	}

	for i, r := range []*rawClient{tlsClient, plainClient} {
		// A command sent along with the KILL never runs: all that comes
		// back is the KILL's answer.
		kill := appendPacket(nil, 0, append([]byte{gomysql.COM_QUERY}, fmt.Sprintf("KILL CONNECTION %d", r.connID)...))
		if _, err := r.conn.Write(appendPacket(kill, 0, append([]byte{gomysql.COM_QUERY}, "SELECT 1"...))); err != nil {
			t.Fatal(err)
		}
		r.seq = 0
		p, err := r.read()
		if err != nil {
			t.Fatalf("client %d: KILL of its own id: %v, want ERR 1927", i, err)
		}
		if p[0] != gomysql.ERR_HEADER || binary.LittleEndian.Uint16(p[1:3]) != erConnectionKilled || string(p[4:9]) != stateKilled || r.seq != 2 {
			t.Fatalf("client %d: KILL of its own id answered %q as packet %d, want ERR 1927 (70100) as packet 1", i, p, r.seq-1)
		}
		if p, err := r.read(); err == nil {
			t.Fatalf("client %d: after the ERR, got %q; want the connection closed", i, p)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		killed := 0
		for _, e := range h.events("session.ended") {
			if e.ContextMap()["reason"] == "killed" {
				killed++
			}
		}
		if killed == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions ended as killed, want 2", killed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := other.QueryRowContext(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Errorf("her other session after the KILLs: %d, %v", n, err)
	}
}

func TestKillQueryWithoutTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	key, err := h.signIn(aliceUPN, aliceUPN)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	plain := h.listenBare(t, config.ListenerTLSDisabled)
	// app_ed's backend leg has no TLS either.
	killer := openPlain(t, plain, aliceUPN, key, "app_ed")
	var n int
	if err := killer.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	r := dialRaw(t, h.addr)
	if p := r.login(h.tlsCfg, aliceUPN, key, "app"); p[0] != gomysql.OK_HEADER {
		t.Fatalf("login: %q", p)
	}
	killSleepOn(ctx, t, r, killer)
	if err := killer.QueryRowContext(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Errorf("the killer's session after the KILL: %d, %v", n, err)
	}
}

// killSleepOn runs SELECT SLEEP(20) on r and has killer send KILL QUERY
// with r's portcullis connection id: the query must end well before its
// 20 s.
func killSleepOn(ctx context.Context, t *testing.T, r *rawClient, killer *sql.DB) {
	t.Helper()
	elapsed := runKilled(ctx, t, func(ctx context.Context) error {
		r.seq = 0
		r.write(append([]byte{gomysql.COM_QUERY}, "SELECT SLEEP(20)"...))
		_, err := r.read()
		return err
	}, func() error {
		_, err := killer.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", r.connID))
		return err
	})
	if elapsed > 10*time.Second {
		t.Errorf("the query ran %s after KILL QUERY", elapsed)
	}
}

// runKilled runs query, waits until the backend shows it running, runs
// kill, and returns how long query took to end.
func runKilled(ctx context.Context, t *testing.T, query func(context.Context) error, kill func() error) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- query(ctx) }()
	root, err := mariadb.Server(t).Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for {
		r, err := root.Execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(20)%'")
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := r.GetInt(0, 0); n > 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the query never showed up in the process list")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := kill(); err != nil {
		t.Fatalf("KILL QUERY: %v", err)
	}
	select {
	case err := <-done:
		if err != nil && !strings.Contains(err.Error(), "interrupted") {
			t.Logf("killed query ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the query did not end")
	}
	return time.Since(start)
}

// Refusals come as ERR packets a client shows, with MySQL's codes.
func TestRefusals(t *testing.T) {
	h := newHarness(t, harnessOptions{grace: 10 * time.Minute})
	if _, err := h.signIn(aliceUPN, aliceUPN); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	tests := []struct {
		name     string
		user     string
		database string
		approve  string // sign in through retry mode as this UPN first
		wantCode uint16
		wantIn   []string
		wantOut  []string
	}{
		{name: "a database the default resource's server refuses", user: aliceUPN, database: "nope", wantCode: gomysql.ER_DBACCESS_DENIED_ERROR, wantIn: []string{"'nope'", "no resource named"}},
		{name: "backend unreachable", user: aliceUPN, database: "gone", wantCode: gomysql.ER_CONNECT_TO_FOREIGN_DATA_SOURCE, wantIn: []string{`"gone"`}, wantOut: []string{"127.0.0.1"}},
		{name: "backend certificate not trusted", user: aliceUPN, database: "wrong_ca", wantCode: gomysql.ER_CONNECT_TO_FOREIGN_DATA_SOURCE, wantIn: []string{`"wrong_ca"`}},
		{name: "not in an allowed group", user: carolUPN, database: "app", approve: carolUPN, wantCode: gomysql.ER_DBACCESS_DENIED_ERROR},
		{name: "signed in as someone else", user: "dave@contoso.example", database: "app", approve: bobUPN, wantCode: gomysql.ER_ACCESS_DENIED_ERROR, wantIn: []string{bobUPN}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.approve != "" {
				_, err := h.signIn(tt.user, tt.approve)
				if err == nil || !strings.Contains(err.Error(), fmt.Sprint(tt.wantCode)) {
					t.Fatalf("sign-in: %v, want ERR %d", err, tt.wantCode)
				}
				return
			}
			err := h.open(tt.user, "x", tt.database, "").PingContext(ctx)
			e := myErr(err)
			if e == nil || e.Number != tt.wantCode {
				t.Fatalf("error %v, want ERR %d", err, tt.wantCode)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(e.Message, s) {
					t.Errorf("message %q does not mention %q", e.Message, s)
				}
			}
			for _, s := range tt.wantOut {
				if strings.Contains(e.Message, s) {
					t.Errorf("message %q gives away %q", e.Message, s)
				}
			}
		})
	}
}

// The backend is reached with each plugin: mysql_native_password over
// verified TLS, ed25519 in the clear.
func TestBackendPlugins(t *testing.T) {
	h := newHarness(t, harnessOptions{grace: 10 * time.Minute})
	if _, err := h.signIn(aliceUPN, aliceUPN); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	tests := []struct {
		resource string
		wantUser string
		wantSSL  bool
	}{
		{resource: "app", wantUser: userNative.Name, wantSSL: true},
		{resource: "app_ed", wantUser: userEd25519.Name},
		{resource: "", wantUser: userNative.Name, wantSSL: true}, // the listener's default
	}
	for _, tt := range tests {
		t.Run("resource "+tt.resource, func(t *testing.T) {
			var user, db, cipher string
			err := h.open(aliceUPN, "x", tt.resource, "").QueryRowContext(ctx,
				"SELECT CURRENT_USER(), DATABASE(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')").Scan(&user, &db, &cipher)
			if err != nil {
				t.Fatal(err)
			}
			if user != tt.wantUser+"@%" || db != "app" || (cipher != "") != tt.wantSSL {
				t.Errorf("got user %q, database %q, cipher %q; want %s@%%, app, encrypted %v", user, db, cipher, tt.wantUser, tt.wantSSL)
			}
		})
	}
}

// A session portcullis ends on shutdown hears why, in a MySQL error.
func TestShutdownTellsClient(t *testing.T) {
	h := newHarness(t, harnessOptions{grace: 10 * time.Minute, drain: 100 * time.Millisecond})
	if _, err := h.signIn(aliceUPN, aliceUPN); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	db := h.open(aliceUPN, "x", "app", "")
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(ctx, "SELECT SLEEP(20)")
		done <- err
	}()
	h.waitEvent("session.started", nil)
	waitProcess(ctx, t, "SELECT SLEEP(20)")
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if e := myErr(err); e == nil || e.Number != gomysql.ER_SERVER_SHUTDOWN {
		t.Fatalf("query during shutdown: %v, want ERR 1053", err)
	}
	h.waitEvent("session.ended", func(m map[string]any) bool { return m["reason"] == "shutdown" })
}

func waitProcess(ctx context.Context, t *testing.T, prefix string) {
	t.Helper()
	root, err := mariadb.Server(t).Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for ctx.Err() == nil {
		r, err := root.Execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE ?", prefix+"%")
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := r.GetInt(0, 0); n > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%q never showed up in the process list", prefix)
}

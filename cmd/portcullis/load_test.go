package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

// loadScale is how much TestLoad does at once.
type loadScale struct {
	// people sign in first; each then opens connsEach connections with
	// their session key, all at the same moment.
	people, connsEach int
	// signIns are device-code sign-ins of other people, started at that
	// same moment.
	signIns int
	// copies are COPY streams (half FROM STDIN, half TO STDOUT) that run
	// through the whole of it, in rounds of copyRound bytes, each round
	// checked, and at least copyMin bytes each.
	copies             int
	copyRound, copyMin int
}

var (
	fullLoad  = loadScale{people: 50, connsEach: 10, signIns: 200, copies: 10, copyRound: 4 << 20, copyMin: 24 << 20}
	shortLoad = loadScale{people: 10, connsEach: 5, signIns: 20, copies: 2, copyRound: 1 << 20, copyMin: 2 << 20}
)

func (sc loadScale) keyConns() int { return sc.people * sc.connsEach }

// Each kind of client comes from addresses of its own: a person's
// connections from one, every signing-in person from another (as people
// on their own machines do; portcullis caps sign-ins in progress per
// address), every program from its own.
func loadAddr(kind byte, i int) net.IP { return net.IPv4(127, kind, byte(i/200), byte(i%200+1)) }

const (
	keyPeopleNet = 10
	signInNet    = 20
	copyNet      = 30
)

func loadUPN(kind string, i int) string { return fmt.Sprintf("%s-%03d@ops.example", kind, i) }

func loadDirectory(sc loadScale, graphSecret string) *entrasim.Directory {
	d := &entrasim.Directory{
		Tenant:            entrasim.Tenant{ID: opsTenant, Domain: "ops.example", DisplayName: "load tests"},
		Applications:      []entrasim.Application{{AppID: opsApp, DisplayName: "portcullis", PublicClient: true}},
		ServicePrincipals: []entrasim.ServicePrincipal{{ID: "33333333-0000-4000-8000-000000000001", AppID: opsApp, DisplayName: "portcullis", Secrets: []string{graphSecret}}},
	}
	var analysts []string
	add := func(kind string, n int) {
		for i := range n {
			upn := loadUPN(kind, i)
			d.Users = append(d.Users, entrasim.User{ID: fmt.Sprintf("11111111-0000-4000-8000-%012d", len(d.Users)+1), UPN: upn, DisplayName: upn})
			analysts = append(analysts, upn)
		}
	}
	add("key", sc.people)
	add("new", sc.signIns)
	add("etl", sc.copies)
	d.Groups = []entrasim.Group{{ID: "22222222-0000-4000-8000-000000000001", DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: analysts}}}
	return d
}

// loadConfig is the operations tests' tenant on the embedded state store.
// The load shows that every login succeeds however slowly a busy machine
// gets through them all, and measures how long they take: the bounds on
// the backend's login and on each handshake step are raised so that they
// do not decide it.
var loadConfig = template.Must(template.New("load").Parse(`providers:
  - name: ops
    tenant_id: {{.Tenant}}
    client_id: {{.App}}
    authority_host: {{.Sim}}
    graph_endpoint: {{.Sim}}
    graph_auth: application
    client_secret_file: {{.Dir}}/graph-secret
    ca_file: {{.Dir}}/sim-ca.pem
resources:
  - name: demo
    protocol: postgres
    address: {{.Backend}}
    database: postgres
    connect_timeout: 2m
    allow_groups: [Analysts]
    credentials:
      - groups: [Analysts]
        user: {{.Role}}
        password_file: {{.Dir}}/backend.password
listeners:
  - name: postgres
    protocol: postgres
    address: 127.0.0.1:0
tls:
  cert_file: {{.Dir}}/listener.crt
  key_file: {{.Dir}}/listener.key
store:
  driver: sqlite
  path: {{.Dir}}/state.db
sessions:
  address_grace: 0s
admin:
  address: 127.0.0.1:0
proxy:
  handshake_timeout: 2m
`))

// loadEnv is serve, the binary as shipped in a process of its own (as in
// production, where its clients are elsewhere; so its CPU time, its
// goroutines and its descriptors are its own to measure), in front of a
// PostgreSQL that takes hundreds of connections, with a simulator that
// records every secret it issues.
type loadEnv struct {
	*process
	role   testpg.Role
	simLog *syncBuffer
	stderr *syncBuffer
}

func startLoad(t *testing.T, sc loadScale) *loadEnv {
	t.Helper()
	e := &loadEnv{simLog: &syncBuffer{}, stderr: &syncBuffer{}}
	secrets := newSecretLedger()
	e.role = testpg.Role{Name: "load_demo", Password: "load-backend-" + randomPassword()}
	secrets.add("backend password", e.role.Password)
	graphSecret := "load-graph-" + randomPassword()
	secrets.add("client secret", graphSecret)

	pg := testpg.Start(t, testpg.Options{
		Roles:          []testpg.Role{e.role},
		MaxConnections: sc.keyConns() + sc.signIns + sc.copies + 50,
	})
	// The database would have a machine of its own. Here it shares two
	// CPUs with portcullis, and its hundreds of processes (ten of them
	// busy with COPY throughout) would each get as much CPU time as one
	// of portcullis's threads: what is measured would be the database's
	// load. In a CPU group of its own it competes as one program; its own
	// login time is reported apart.
	if err := pg.ConfineCPU(1024); err != nil {
		t.Logf("the database competes for the CPUs process by process: %v", err)
	}
	sim, err := entrasim.New(loadDirectory(sc, graphSecret), entrasim.Options{
		Middleware: secrets.watch,
		Logf:       func(format string, args ...any) { fmt.Fprintf(e.simLog, format+"\n", args...) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	dir := t.TempDir()
	if err := sim.WriteCAFile(filepath.Join(dir, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"graph-secret": graphSecret, "backend.password": e.role.Password} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := writeSelfSignedCert(dir); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "portcullis.yaml")
	var cfg bytes.Buffer
	if err := loadConfig.Execute(&cfg, map[string]any{"Tenant": opsTenant, "App": opsApp, "Sim": sim.URL(), "Dir": dir, "Backend": pg.Addr(), "Role": e.role.Name}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &opsServe{t: t, sim: sim, pg: pg, dir: dir, cfgPath: cfgPath, stdout: &syncBuffer{}, done: make(chan error, 1), secrets: secrets}
	e.process = runServe(s, buildPortcullis(t), e.stderr)
	return e
}

// config is a client's connection configuration: user with password,
// to the demo resource, from the local address from.
func (e *loadEnv) config(user, password string, from net.IP) *pgconn.Config {
	host, port, _ := net.SplitHostPort(e.pgAddr)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=demo sslmode=require connect_timeout=120", host, port, user))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Password = password
	cfg.DialFunc = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: from}}).DialContext
	return cfg
}

// login is one client's connection: how long it took from dialling to
// ReadyForQuery, and the address portcullis saw it come from.
type login struct {
	conn    *pgconn.PgConn
	took    time.Duration
	addr    string // the client's ip:port
	key     string // a session key it was given
	codes   int    // device codes it was shown
	err     error
	checked error // what `select current_user` found wrong
}

// signIn connects as upn with a typed password, approving the device
// code it is shown as that person, and collects the session key.
func (e *loadEnv) signIn(ctx context.Context, upn string, from net.IP, label string) *login {
	password := "typed-" + randomPassword()
	e.secrets.add("typed password", password)
	cfg := e.config(upn, password, from)
	l := &login{}
	// pgconn calls OnNotice on the goroutine that connects.
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		var own string
		if m := userCodeInNotice.FindStringSubmatch(n.Message); m != nil {
			l.codes++
			// Approved from the person's browser, while the client
			// waits.
			go func() {
				if err := e.sim.Approve(m[1], upn); err != nil {
					e.t.Errorf("%s: approve the device code: %v", label, err)
				}
			}()
		}
		if _, k, ok := strings.Cut(n.Message, "session key as your password: "); ok {
			own = k
			e.secrets.add("session key", k)
			l.key = k
		}
		e.secrets.clientSaw(label+": a notice", n.Message, own)
	}
	e.connect(ctx, cfg, l, label)
	return l
}

// withKey connects as upn with a session key, which needs no sign-in.
func (e *loadEnv) withKey(ctx context.Context, upn, key string, from net.IP, label string) *login {
	cfg := e.config(upn, key, from)
	l := &login{}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if userCodeInNotice.MatchString(n.Message) {
			l.codes++
		}
		if _, k, ok := strings.Cut(n.Message, "session key as your password: "); ok {
			l.key = k
		}
		e.secrets.clientSaw(label+": a notice", n.Message)
	}
	e.connect(ctx, cfg, l, label)
	return l
}

func (e *loadEnv) connect(ctx context.Context, cfg *pgconn.Config, l *login, label string) {
	start := time.Now()
	l.conn, l.err = pgconn.ConnectConfig(ctx, cfg)
	l.took = time.Since(start)
	if l.err != nil {
		e.secrets.clientSaw(label+": the connection's error", l.err.Error())
		return
	}
	l.addr = l.conn.Conn().LocalAddr().String()
	res, err := l.conn.Exec(ctx, "select current_user").ReadAll()
	switch {
	case err != nil:
		e.secrets.clientSaw(label+": the query's error", err.Error())
		l.checked = err
	case len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != e.role.Name:
		l.checked = fmt.Errorf("current_user is not %s", e.role.Name)
	}
}

// copyStream is one program moving data through portcullis with COPY,
// round after round, until told to stop (and it has moved at least
// copyMin bytes).
type copyStream struct {
	from   bool // COPY FROM STDIN; else TO STDOUT
	rounds int
	bytes  int64
	err    error
}

func (e *loadEnv) runCopy(ctx context.Context, sc loadScale, i int, cs *copyStream, connected func(), stop <-chan struct{}) {
	defer connected() // also when it could not connect
	upn := loadUPN("etl", i)
	token, err := e.sim.IssueAccessToken(entrasim.TokenSpec{Subject: upn, Audience: opsApp, ClientID: opsApp})
	if err != nil {
		cs.err = err
		return
	}
	e.secrets.add("access token", token)
	label := fmt.Sprintf("COPY stream %d", i)
	cfg := e.config(upn, token, loadAddr(copyNet, i))
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { e.secrets.clientSaw(label+": a notice", n.Message) }
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		e.secrets.clientSaw(label+": the connection's error", err.Error())
		cs.err = fmt.Errorf("connect: %w", err)
		return
	}
	defer c.Close(context.Background())
	// The data and what it must come to are worked out once: each round
	// moves the same, so the test's own work stays small beside
	// portcullis's.
	cs.from = i%2 == 0
	var round func() (int64, error)
	if cs.from {
		if _, err := c.Exec(ctx, "create temp table copy_in (n int, payload text)").ReadAll(); err != nil {
			cs.err = err
			return
		}
		in := newCopyIn(i, sc.copyRound)
		round = func() (int64, error) { return in.round(ctx, c) }
	} else {
		out := newCopyOut(i, sc.copyRound)
		round = func() (int64, error) { return out.round(ctx, c) }
	}
	connected()
	for {
		n, err := round()
		if err != nil {
			e.secrets.clientSaw(label+": an error", err.Error())
			cs.err = fmt.Errorf("round %d: %w", cs.rounds, err)
			return
		}
		cs.rounds++
		cs.bytes += n
		if cs.bytes >= int64(sc.copyMin) {
			select {
			case <-stop:
				return
			default:
			}
		}
	}
}

// copyIn is a round of COPY FROM STDIN: about size bytes of rows whose
// payloads differ from row to row, and what the server must then hold.
type copyIn struct {
	data []byte
	rows int
	want []string // count, md5 of the payloads in order, their bytes
}

func newCopyIn(i, size int) *copyIn {
	var data bytes.Buffer
	digest := md5.New()
	rows := 0
	for data.Len() < size {
		sum := sha256.Sum256(fmt.Appendf(nil, "%d/%d", i, rows))
		p := strings.Repeat(hex.EncodeToString(sum[:]), 3)
		fmt.Fprintf(&data, "%d\t%s\n", rows, p)
		digest.Write([]byte(p))
		rows++
	}
	return &copyIn{data: data.Bytes(), rows: rows, want: []string{fmt.Sprint(rows), hex.EncodeToString(digest.Sum(nil)), fmt.Sprint(rows * 192)}}
}

// round empties the table, sends the rows, and has the server count
// them and digest what it stored.
func (in *copyIn) round(ctx context.Context, c *pgconn.PgConn) (int64, error) {
	if _, err := c.Exec(ctx, "truncate copy_in").ReadAll(); err != nil {
		return 0, err
	}
	tag, err := c.CopyFrom(ctx, bytes.NewReader(in.data), "copy copy_in (n, payload) from stdin")
	if err != nil {
		return 0, err
	}
	if tag.RowsAffected() != int64(in.rows) {
		return 0, fmt.Errorf("COPY FROM stored %d rows, want %d", tag.RowsAffected(), in.rows)
	}
	res, err := c.Exec(ctx, "select count(*), md5(string_agg(payload, '' order by n)), sum(octet_length(payload)) from copy_in").ReadAll()
	if err != nil {
		return 0, err
	}
	got := res[0].Rows[0]
	for k := range in.want {
		if string(got[k]) != in.want[k] {
			return 0, fmt.Errorf("after COPY FROM the table holds (count, md5, bytes) %s, want %s", got, in.want)
		}
	}
	return int64(len(in.data)), nil
}

// copyOut is a round of COPY TO STDOUT: a query for about size bytes,
// and the digest of exactly what it must produce.
type copyOut struct {
	query string
	rows  int64
	bytes int64
	sum   []byte
}

func newCopyOut(i, size int) *copyOut {
	const rowBytes = 105 // a 7-digit number, a tab, 96 bytes, a newline
	rows := size / rowBytes
	first := 1_000_000 + i*rows
	want := sha256.New()
	var n int64
	for k := first; k < first+rows; k++ {
		line := fmt.Sprintf("%d\t%s\n", k, strings.Repeat(md5Hex(fmt.Sprint(k)), 3))
		want.Write([]byte(line))
		n += int64(len(line))
	}
	return &copyOut{
		query: fmt.Sprintf("copy (select n, repeat(md5(n::text), 3) from generate_series(%d, %d) n) to stdout", first, first+rows-1),
		rows:  int64(rows), bytes: n, sum: want.Sum(nil),
	}
}

// round reads the rows and checks every byte.
func (out *copyOut) round(ctx context.Context, c *pgconn.PgConn) (int64, error) {
	got := &countingHash{h: sha256.New()}
	tag, err := c.CopyTo(ctx, got, out.query)
	if err != nil {
		return 0, err
	}
	if tag.RowsAffected() != out.rows || got.n != out.bytes || !bytes.Equal(got.h.Sum(nil), out.sum) {
		return 0, fmt.Errorf("COPY TO gave %d rows and %d bytes (digest %x), want %d rows and %d bytes (digest %x)",
			tag.RowsAffected(), got.n, got.h.Sum(nil), out.rows, out.bytes, out.sum)
	}
	return got.n, nil
}

func md5Hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// Issue 9's load: hundreds of people connecting at once with their
// session keys and hundreds more signing in with device codes, while
// programs stream COPY data through portcullis the whole time. Every
// login and sign-in succeeds, no COPY loses a byte, and afterwards no
// session, goroutine or file descriptor is left behind, and no secret
// used anywhere in the run reached a log line or a client that should not
// see it. Login latency is measured, for the record, not asserted.
func TestLoad(t *testing.T) {
	sc := fullLoad
	if testing.Short() {
		sc = shortLoad
	}
	began := time.Now()
	e := startLoad(t, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The people sign in, all at once, and keep their session keys.
	keys := make([]string, sc.people)
	var wg sync.WaitGroup
	for p := range sc.people {
		wg.Go(func() {
			l := e.signIn(ctx, loadUPN("key", p), loadAddr(keyPeopleNet, p), fmt.Sprintf("person %d signing in", p))
			if l.conn != nil {
				l.conn.Close(ctx)
			}
			if l.err != nil || l.checked != nil || l.key == "" {
				t.Errorf("person %d's sign-in: %v, %v, session key shown: %v", p, l.err, l.checked, l.key != "")
			}
			keys[p] = l.key
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	prepared := time.Since(began)
	e.waitNoSessions(30 * time.Second)
	simPort, store := e.simPort(), filepath.Join(e.dir, "state.db")
	base := e.settledProcess(simPort, store)

	// The COPY streams start first and run until every login is done.
	pid := e.cmd.Process.Pid
	ranBefore, waitedBefore := schedStat(pid)
	testRanBefore, testWaitedBefore := schedStat(os.Getpid())
	loadStart := time.Now()
	copies := make([]copyStream, sc.copies)
	var connected, copyDone sync.WaitGroup
	stopCopies := make(chan struct{})
	for i := range sc.copies {
		connected.Add(1)
		copyDone.Go(func() {
			var once sync.Once
			e.runCopy(ctx, sc, i, &copies[i], func() { once.Do(connected.Done) }, stopCopies)
		})
	}
	connected.Wait()

	// Then, at one moment, every session-key connection and every
	// device-code sign-in.
	startLogins := make(chan struct{})
	release := make(chan struct{})
	keyLogins := make([]*login, sc.keyConns())
	signIns := make([]*login, sc.signIns)
	var ready, closed sync.WaitGroup
	for n := range keyLogins {
		p := n / sc.connsEach
		ready.Add(1)
		closed.Go(func() {
			<-startLogins
			l := e.withKey(ctx, loadUPN("key", p), keys[p], loadAddr(keyPeopleNet, p), fmt.Sprintf("key connection %d of person %d", n%sc.connsEach, p))
			keyLogins[n] = l
			ready.Done()
			<-release
			if l.conn != nil {
				l.conn.Close(ctx)
			}
		})
	}
	for n := range signIns {
		ready.Add(1)
		closed.Go(func() {
			<-startLogins
			l := e.signIn(ctx, loadUPN("new", n), loadAddr(signInNet, n), fmt.Sprintf("sign-in %d", n))
			signIns[n] = l
			ready.Done()
			<-release
			if l.conn != nil {
				l.conn.Close(ctx)
			}
		})
	}
	close(startLogins)
	ready.Wait()
	loginsTook := time.Since(loadStart)
	// All of them are open together (those that got in).
	peak := e.openSessions()
	close(release)
	closed.Wait()
	close(stopCopies)
	copyDone.Wait()
	loadTook := time.Since(loadStart)
	ranAfter, waitedAfter := schedStat(pid)
	testRanAfter, testWaitedAfter := schedStat(os.Getpid())

	// Every one of them got in, as the mapped role.
	failures := 0
	for n, l := range keyLogins {
		if l.err != nil || l.checked != nil {
			failures++
			if failures <= 10 {
				t.Errorf("key connection %d: connect: %v; current_user: %v", n, l.err, l.checked)
			}
		}
		if l.codes > 0 || l.key != "" {
			t.Errorf("key connection %d was shown a device code or a new session key", n)
		}
	}
	seen := map[string]bool{}
	for _, k := range keys {
		seen[k] = true
	}
	for n, l := range signIns {
		if l.err != nil || l.checked != nil {
			failures++
			if failures <= 10 {
				t.Errorf("sign-in %d: connect: %v; current_user: %v", n, l.err, l.checked)
			}
			continue
		}
		if l.codes != 1 || l.key == "" {
			t.Errorf("sign-in %d was shown %d device codes and a session key: %v", n, l.codes, l.key != "")
		}
		if seen[l.key] {
			t.Errorf("sign-in %d was given a session key someone else holds", n)
		}
		seen[l.key] = true
	}
	if failures > 10 {
		t.Errorf("… %d logins failed in all", failures)
	}
	if want := sc.keyConns() + sc.signIns + sc.copies; failures == 0 && peak != want {
		t.Errorf("with every client connected, the session registry held %d sessions, want %d", peak, want)
	}
	var copied int64
	for i, cs := range copies {
		if cs.err != nil {
			t.Errorf("COPY stream %d (from stdin: %v) after %d rounds: %v", i, cs.from, cs.rounds, cs.err)
		}
		copied += cs.bytes
	}

	// Nothing is left behind: no session in the registry, and the
	// process back to the goroutines and descriptors it had before.
	e.waitNoSessions(30 * time.Second)
	after := e.waitForProcess(base, simPort, store, 30*time.Second)

	// No secret of the whole run in a log line or where a client could
	// see it.
	e.secrets.check(t, map[string]string{
		"portcullis log":    e.stdout.String(),
		"portcullis stderr": e.stderr.String(),
		"entrasim log":      e.simLog.String(),
	})

	// For the record: how long logging in took, with and without the
	// backend's part.
	times := e.loginTimes()
	var total, backend, own, accepted []time.Duration
	for _, l := range keyLogins {
		if l.err != nil {
			continue
		}
		total = append(total, l.took)
		if lt, ok := times[l.addr]; ok {
			backend = append(backend, lt.backend())
			own = append(own, l.took-lt.backend())
			accepted = append(accepted, lt.authorized.Sub(lt.accepted))
		}
	}
	var signInTook []time.Duration
	for _, l := range signIns {
		if l.err == nil {
			signInTook = append(signInTook, l.took)
		}
	}
	t.Logf("scale: %d session-key connections (%d people × %d), %d device-code sign-ins, %d COPY streams; peak %d open sessions",
		sc.keyConns(), sc.people, sc.connsEach, sc.signIns, sc.copies, peak)
	t.Logf("session-key login, client connect to ready:            %s", percentiles(total))
	t.Logf("  of which the backend's login (decision to session):   %s", percentiles(backend))
	t.Logf("  apart from the backend's login:                       %s", percentiles(own))
	t.Logf("  portcullis's own part (accepted to decision):         %s", percentiles(accepted))
	t.Logf("device-code sign-in, connect to ready (approval incl.): %s", percentiles(signInTook))
	t.Logf("COPY: %d MiB through %d streams; every round intact", copied>>20, sc.copies)
	t.Logf("time: setup and first sign-ins %v, logins %v, load %v, whole test %v",
		prepared.Round(time.Millisecond), loginsTook.Round(time.Millisecond), loadTook.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	if ranAfter > 0 {
		t.Logf("CPU during the load: portcullis ran %v and waited %v for a CPU while ready to run; this test's clients and simulator ran %v and waited %v (PostgreSQL had the rest)",
			(ranAfter - ranBefore).Round(time.Millisecond), (waitedAfter - waitedBefore).Round(time.Millisecond),
			(testRanAfter - testRanBefore).Round(time.Millisecond), (testWaitedAfter - testWaitedBefore).Round(time.Millisecond))
	}
	t.Logf("process: %d goroutines and %d fds before the load, %d and %d after (of which %d and %d connections to the simulator, %d and %d fds of the store, %d and %d epoll instances)",
		base.goroutines, base.fds, after.goroutines, after.fds, base.simConns, after.simConns, base.storeFDs, after.storeFDs, base.pollFDs, after.pollFDs)
}

func (e *loadEnv) simPort() int {
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.sim.URL(), "https://"))
	var n int
	fmt.Sscan(port, &n)
	return n
}

// openSessions counts the sessions in portcullis's registry, as its
// metrics report them.
func (e *loadEnv) openSessions() int {
	_, text := e.get("/metrics")
	n := 0
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, "portcullis_connections_active{"); ok {
			var v float64
			if _, val, ok := strings.Cut(rest, "} "); ok {
				fmt.Sscan(val, &v)
			}
			n += int(v)
		}
	}
	return n
}

// waitNoSessions polls until portcullis's session registry is empty.
func (e *loadEnv) waitNoSessions(within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		n := e.openSessions()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d sessions still registered %v after their clients closed", n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loginTime is when portcullis accepted a connection, decided on it,
// and started its session, from its log.
type loginTime struct{ accepted, authorized, started time.Time }

// backend is the part of a login spent logging in to the backend:
// from the decision to the session's start.
func (lt loginTime) backend() time.Duration { return lt.started.Sub(lt.authorized) }

// loginTimes reads the log's timestamps of every session that started,
// by the client's address.
func (e *loadEnv) loginTimes() map[string]loginTime {
	type event struct {
		Event      string `json:"event"`
		TS         string `json:"ts"`
		SessionID  string `json:"session_id"`
		ClientAddr string `json:"client_addr"`
	}
	bySession := map[string]*loginTime{}
	addrOf := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(e.stdout.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev event
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.SessionID == "" {
			continue
		}
		ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", ev.TS)
		if err != nil {
			continue
		}
		lt := bySession[ev.SessionID]
		if lt == nil {
			lt = &loginTime{}
			bySession[ev.SessionID] = lt
		}
		switch ev.Event {
		case "conn.accepted":
			lt.accepted = ts
			addrOf[ev.SessionID] = ev.ClientAddr
		case "auth.succeeded":
			lt.authorized = ts
		case "session.started":
			lt.started = ts
		}
	}
	out := map[string]loginTime{}
	for id, lt := range bySession {
		if !lt.accepted.IsZero() && !lt.authorized.IsZero() && !lt.started.IsZero() {
			out[addrOf[id]] = *lt
		}
	}
	return out
}

func percentiles(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(p float64) time.Duration {
		return s[min(len(s)-1, int(p*float64(len(s))))].Round(time.Millisecond)
	}
	return fmt.Sprintf("p50 %v  p90 %v  p99 %v  max %v  (n=%d)", at(0.50), at(0.90), at(0.99), s[len(s)-1].Round(time.Millisecond), len(s))
}

// processLoad is what a leak would grow: goroutines and open file
// descriptors of the portcullis process.
type processLoad struct {
	goroutines, fds int
	// simConns are the keep-alive connections from portcullis to the
	// simulator: the HTTP client's pool, which it bounds and times out,
	// not anything a session holds. A burst of sign-ins may leave a few
	// more of them than there were. Each costs a descriptor and up to
	// two goroutines (HTTP/2's reader, or HTTP/1.1's reader and writer),
	// so they are counted apart.
	simConns int
	// storeFDs are open on the state store's SQLite file and its -wal
	// and -shm: the store keeps a small pool of connections (at most one
	// per CPU), opened as they are first needed, so the load may have
	// opened more of them than were open before it.
	storeFDs int
	// pollFDs are epoll instances: the runtime's poller's, each event
	// loop's, and while a loop sleeps, a duplicate of its own that it
	// closes on waking. They follow the loops' state, not the sessions,
	// so they are counted apart too.
	pollFDs int
	// files, for telling what is in excess: descriptors by what they are
	// open on.
	files map[string]int
}

const goroutinesPerSimConn, fdsPerSimConn = 2, 1

// maxStoreFDs bounds storeFDs: the file and its -wal for each of the
// store's connections, and the -shm.
func maxStoreFDs() int { return 2*max(2, runtime.GOMAXPROCS(0)) + 1 }

// maxPollFDs bounds pollFDs: the runtime's poller, and two for each
// event loop (at most one per CPU).
func maxPollFDs() int { return 1 + 2*runtime.NumCPU() }

// own is what the process holds apart from connections to the
// simulator and the store's pool.
func (p processLoad) own() (goroutines, fds int) {
	return p.goroutines - goroutinesPerSimConn*p.simConns, p.fds - fdsPerSimConn*p.simConns - p.storeFDs - p.pollFDs
}

// sampleProcess reads the portcullis process's goroutines from its
// metrics and its descriptors from /proc.
func (e *loadEnv) sampleProcess(simPort int, store string) processLoad {
	e.t.Helper()
	p := processLoad{goroutines: e.goroutines()}
	pid := e.cmd.Process.Pid
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	p.fds = len(fds)
	sockets := tcpSockets()
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, store) {
			p.storeFDs++
		}
		if target == "anon_inode:[eventpoll]" {
			p.pollFDs++
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			if s, ok := sockets[strings.TrimSuffix(inode, "]")]; ok && s.remote == simPort && s.state == tcpEstablished {
				p.simConns++
			}
		}
	}
	return p
}

// goroutines is go_goroutines from portcullis's metrics.
func (e *loadEnv) goroutines() int {
	e.t.Helper()
	_, text := e.get("/metrics")
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			var n int
			if _, err := fmt.Sscan(v, &n); err == nil {
				return n
			}
		}
	}
	e.t.Fatal("no go_goroutines in portcullis's metrics")
	return 0
}

// settledProcess is the process once goroutines that are ending have
// ended: the lowest count seen until it has not fallen for a while.
func (e *loadEnv) settledProcess(simPort int, store string) processLoad {
	best := e.sampleProcess(simPort, store)
	for still := 0; still < 10; still++ {
		time.Sleep(20 * time.Millisecond)
		cur := e.sampleProcess(simPort, store)
		bg, bf := best.own()
		if cg, cf := cur.own(); cg < bg || cf < bf {
			best = cur
			still = -1
		}
	}
	best.files = e.openFiles()
	return best
}

// waitForProcess polls until the process is back to base, failing the
// test (with what is in excess) if it is not within the deadline.
func (e *loadEnv) waitForProcess(base processLoad, simPort int, store string, within time.Duration) processLoad {
	t := e.t
	t.Helper()
	deadline := time.Now().Add(within)
	bg, bf := base.own()
	for {
		cur := e.sampleProcess(simPort, store)
		cg, cf := cur.own()
		if cg <= bg && cf <= bf && cur.storeFDs <= max(base.storeFDs, maxStoreFDs()) && cur.pollFDs <= maxPollFDs() {
			return cur
		}
		if time.Now().After(deadline) {
			t.Errorf("%v after the load: %d goroutines and %d open fds (apart from %d connections to the simulator, %d fds of the store and %d epoll instances), against %d and %d (%d, %d, %d) before it",
				within, cg, cf, cur.simConns, cur.storeFDs, cur.pollFDs, bg, bf, base.simConns, base.storeFDs, base.pollFDs)
			var excess []string
			for k, n := range e.openFiles() {
				if n > base.files[k] {
					excess = append(excess, fmt.Sprintf("%+d fd %s", n-base.files[k], k))
				}
			}
			sort.Strings(excess)
			t.Logf("descriptors in excess:\n%s", strings.Join(excess, "\n"))
			// What the goroutines in excess are doing: on SIGQUIT the Go
			// runtime prints every goroutine's stack on stderr and exits;
			// stderr is shown with the log when the test ends.
			if err := e.cmd.Process.Signal(syscall.SIGQUIT); err == nil {
				select {
				case e.err = <-e.done:
					e.stopped = true
				case <-time.After(10 * time.Second):
				}
			}
			return cur
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openFiles counts portcullis's descriptors by what they are open on; a
// TCP socket is named by its ports and state.
func (e *loadEnv) openFiles() map[string]int {
	pid := e.cmd.Process.Pid
	sockets := tcpSockets()
	out := map[string]int{}
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range entries {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			if s, ok := sockets[strings.TrimSuffix(inode, "]")]; ok {
				target = fmt.Sprintf("tcp %s→%s state %s", e.portName(s.local), e.portName(s.remote), s.state)
			}
		}
		out[target]++
	}
	return out
}

// portName names port by what listens on it in this test, so that a
// descriptor in excess says which connection it is.
func (e *loadEnv) portName(port int) string {
	for _, l := range []struct{ name, addr string }{
		{"postgres listener", e.pgAddr},
		{"admin", strings.TrimPrefix(e.admin, "http://")},
		{"simulator", strings.TrimPrefix(e.sim.URL(), "https://")},
		{"backend", e.pg.Addr()},
	} {
		if _, p, err := net.SplitHostPort(l.addr); err == nil && p == strconv.Itoa(port) {
			return fmt.Sprintf("%s :%d", l.name, port)
		}
	}
	return fmt.Sprintf(":%d", port)
}

const tcpEstablished = "01"

type tcpSocket struct {
	local, remote int
	state         string
}

// tcpSockets are the TCP sockets of this network namespace, by inode.
func tcpSockets() map[string]tcpSocket {
	out := map[string]tcpSocket{}
	for _, f := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 {
				continue
			}
			port := func(a string) int {
				_, p, _ := strings.Cut(a, ":")
				var n int
				fmt.Sscanf(p, "%X", &n)
				return n
			}
			out[fs[9]] = tcpSocket{local: port(fs[1]), remote: port(fs[2]), state: fs[3]}
		}
	}
	return out
}

// schedStat sums, over the threads of process pid, the time they ran and
// the time they waited on a run queue (Linux schedstat); zero where it is
// not available.
func schedStat(pid int) (ran, waited time.Duration) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task.Name()))
		if err != nil {
			continue
		}
		var r, w int64
		if _, err := fmt.Sscan(string(b), &r, &w); err == nil {
			ran += time.Duration(r)
			waited += time.Duration(w)
		}
	}
	return ran, waited
}

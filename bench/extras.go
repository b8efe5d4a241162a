package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gosqlmysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
)

// connect opens one session at e, from the harness.
func connect(ctx context.Context, e *endpoint, from net.IP) (*pgconn.PgConn, error) {
	host, port := splitAddr(e.addr)
	mode := "disable"
	if e.tls {
		mode = "require"
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=%s connect_timeout=60", host, port, e.user, e.database, mode))
	if err != nil {
		return nil, err
	}
	cfg.Password = e.password
	if from != nil {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from}, Timeout: 30 * time.Second}
		cfg.DialFunc = d.DialContext
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

// setupLatency opens and closes n sessions at e one after another and
// returns how long each took to be ready for a query.
func setupLatency(ctx context.Context, e *endpoint, n int) ([]time.Duration, error) {
	// A few untimed ones first, so one-off costs (a first Graph call, TLS
	// session set-up in the client library) are not counted.
	for range 5 {
		c, err := connect(ctx, e, nil)
		if err != nil {
			return nil, err
		}
		c.Close(ctx)
	}
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		c, err := connect(ctx, e, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
		c.Close(ctx)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func writeSetupLatency(ctx context.Context, w io.Writer, s *stack, peers []*peer, n int) {
	fmt.Fprintf(w, "Connection set-up, %d sessions opened one after another from the harness (pgx), time until ready for a query:\n\n", n)
	fmt.Fprintln(w, "| peer | authentication | p50 | p99 | sessions/s (one at a time) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|")
	for _, p := range peers {
		if p.pg == nil || p.id == "pgbouncer" {
			continue
		}
		how := "SCRAM-SHA-256 to PostgreSQL"
		switch p.id {
		case "haproxy":
			how = "SCRAM-SHA-256, relayed"
		case "portcullis":
			how = "cached sign-in (session key); SCRAM-SHA-256 to PostgreSQL"
		case "portcullis-tls":
			how = "TLS + cached sign-in (session key); SCRAM-SHA-256 to PostgreSQL"
		}
		d, err := setupLatency(ctx, p.pg, n)
		if err != nil {
			fmt.Fprintf(w, "| %s | %s | failed: %v | | |\n", p.title, how, err)
			continue
		}
		var total time.Duration
		for _, x := range d {
			total += x
		}
		rate := float64(len(d)) / total.Seconds()
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.0f |\n", p.title, how, ms(percentile(d, 50)), ms(percentile(d, 99)), rate)
	}
	fmt.Fprintln(w)
}

// sourceAddress spreads clients over loopback addresses, ten to an
// address, because portcullis caps pending sign-ins per client address.
func sourceAddress(i int) net.IP {
	a := i / 10
	return net.IPv4(127, 0, byte(1+a/250), byte(1+a%250))
}

// pendingSignIns starts n device-code sign-ins at once through
// portcullis, waits until all n codes are pending together, then approves
// every one through the simulator and waits for every session.
func pendingSignIns(ctx context.Context, w io.Writer, s *stack, n int) {
	fmt.Fprintf(w, "Pending device-code sign-ins: %d people connect at once (ten per client address), each is shown a code; when all %d codes are pending together, all are approved through the simulator.\n\n", n, n)
	if n > 1024 {
		fmt.Fprintf(w, "(portcullis holds at most 1024 sign-ins in progress; beyond that it refuses, so expect %d refusals.)\n\n", n-1024)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	codes := make(chan string, n)
	release := make(chan struct{})
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := signIn(ctx, s.sim, s.pc.setup.PGPlain, signInUser(i), "idle", sourceAddress(i), codes, release)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()

	got := 0
	var issuedIn time.Duration
collect:
	for got < n {
		select {
		case <-codes:
			got++
		case <-allDone:
			break collect
		case <-ctx.Done():
			break collect
		}
	}
	issuedIn = time.Since(start)
	pendingAtOnce := len(s.sim.PendingDeviceCodes())
	approveStart := time.Now()
	close(release)
	<-allDone
	completedIn := time.Since(approveStart)

	fmt.Fprintln(w, "| sign-ins | codes shown | pending at once (simulator) | all codes shown after | all sessions ready after approval | failed |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|")
	fmt.Fprintf(w, "| %d | %d | %d | %.1f s | %.1f s | %d |\n\n", n, got, pendingAtOnce, issuedIn.Seconds(), completedIn.Seconds(), failed.Load())
	if err, _ := firstErr.Load().(error); err != nil {
		fmt.Fprintf(w, "first failure: %v\n\n", err)
	}
}

// rss is a process's resident set in bytes.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// settledRSS waits for the RSS to stop moving (the runtime returns freed
// memory in the background), up to 10 s.
func settledRSS(pid int) (int64, error) {
	prev, err := rss(pid)
	if err != nil {
		return 0, err
	}
	for range 20 {
		time.Sleep(500 * time.Millisecond)
		cur, err := rss(pid)
		if err != nil {
			return 0, err
		}
		if d := cur - prev; d < prev/200 && -d < prev/200 {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// fdLimit is this process's open-file limit, which the children inherit.
func fdLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	return l.Cur
}

// idleSessions is what the memory measurement holds open: sessions of
// one protocol through portcullis's listener without TLS.
type idleSessions struct {
	// what is measured, for the report's heading.
	what string
	// open starts one session and returns what ends it.
	open func(ctx context.Context) (io.Closer, error)
}

type closeFunc func() error

func (f closeFunc) Close() error { return f() }

// idlePostgres are PostgreSQL sessions through PgBouncer, which holds
// thousands of idle clients on one PostgreSQL connection.
func idlePostgres(s *stack) idleSessions {
	return idlePostgresOn(s, false)
}

// idlePostgresTLS are the same with TLS on the client leg.
func idlePostgresTLS(s *stack) idleSessions {
	return idlePostgresOn(s, true)
}

func idlePostgresOn(s *stack, tls bool) idleSessions {
	e := &endpoint{addr: s.pc.setup.PGPlain, user: analyst, password: s.pc.key, database: "idle"}
	what := "PostgreSQL sessions (client leg without TLS, backend PgBouncer in session mode)"
	if tls {
		e.addr, e.tls = s.pc.setup.PGTLS, true
		what = "PostgreSQL sessions (client leg with TLS, backend PgBouncer in session mode)"
	}
	return idleSessions{
		what: what,
		open: func(ctx context.Context) (io.Closer, error) {
			c, err := connect(ctx, e, nil)
			if err != nil {
				return nil, err
			}
			return closeFunc(func() error { return c.Close(context.Background()) }), nil
		},
	}
}

// idleMySQL are MySQL sessions, the session key proven by
// caching_sha2_password's scramble, each with a MariaDB connection of its
// own behind it.
func idleMySQL(s *stack) idleSessions {
	cfg := gosqlmysql.NewConfig()
	cfg.User, cfg.Passwd = analyst, s.pc.key
	cfg.Net, cfg.Addr, cfg.DBName = "tcp", s.pc.setup.MyPlain, "sbtest"
	cfg.Timeout = 60 * time.Second
	return idleSessions{
		what: "MySQL sessions (client leg without TLS, go-sql-driver/mysql; backend MariaDB)",
		open: func(ctx context.Context) (io.Closer, error) {
			connector, err := gosqlmysql.NewConnector(cfg)
			if err != nil {
				return nil, err
			}
			return connector.Connect(ctx)
		},
	}
}

// idleRSS measures a fresh portcullis holding n idle spliced sessions
// of one kind, made for it once it has started (its listeners and the
// analyst's session key are new with each start).
func idleRSS(ctx context.Context, w io.Writer, s *stack, n int, of func(*stack) idleSessions) {
	fmt.Fprintf(w, "Memory: a fresh portcullis process, RSS with idle spliced %s.\n\n", of(s).what)
	// Each spliced session costs portcullis two descriptors (client and
	// backend); the open-file limit cannot be raised here past the hard
	// limit, so measure as many as fit and give the per-session cost.
	limit := fdLimit()
	if fit := int((limit - 200) / 2); n > fit {
		fmt.Fprintf(w, "The open-file limit is %d (hard limit; raising it needs CAP_SYS_RESOURCE), so portcullis can hold %d spliced sessions at most; measuring %d instead of %d and reporting the per-session cost.\n\n", limit, fit, fit, n)
		n = fit
	}
	if err := s.restartPortcullis(ctx, s.pc); err != nil {
		fmt.Fprintf(w, "could not restart portcullis: %v\n\n", err)
		return
	}
	kind := of(s)
	pid := s.pc.pid()
	base, err := settledRSS(pid)
	if err != nil {
		fmt.Fprintf(w, "could not read the RSS: %v\n\n", err)
		return
	}
	checkpoints := map[int]bool{n / 10: true, n / 2: true, n: true}
	type point struct {
		sessions int
		rss      int64
	}
	points := []point{{0, base}}
	var conns []io.Closer
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	const parallel = 8
	for len(conns) < n {
		batch := min(parallel, n-len(conns))
		got := make([]io.Closer, batch)
		errs := make([]error, batch)
		var wg sync.WaitGroup
		for i := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], errs[i] = kind.open(ctx)
			}()
		}
		wg.Wait()
		for i := range batch {
			if errs[i] != nil {
				fmt.Fprintf(w, "session %d failed: %v\n\n", len(conns)+1, errs[i])
				return
			}
			conns = append(conns, got[i])
			if checkpoints[len(conns)] {
				r, err := settledRSS(pid)
				if err != nil {
					fmt.Fprintf(w, "could not read the RSS: %v\n\n", err)
					return
				}
				points = append(points, point{len(conns), r})
			}
		}
	}
	opened := time.Since(start)
	fmt.Fprintln(w, "| idle sessions | RSS | per session above the empty process |")
	fmt.Fprintln(w, "|---:|---:|---:|")
	for _, p := range points {
		per := "—"
		if p.sessions > 0 {
			per = fmt.Sprintf("%.1f KiB", float64(p.rss-base)/float64(p.sessions)/1024)
		}
		fmt.Fprintf(w, "| %d | %.1f MiB | %s |\n", p.sessions, float64(p.rss)/(1<<20), per)
	}
	last := points[len(points)-1]
	fmt.Fprintf(w, "\n%d sessions opened in %.1f s (%d at a time). Extrapolated to 10,000 idle sessions: %.0f MiB.\n\n",
		n, opened.Seconds(), parallel, (float64(base)+float64(last.rss-base)/float64(last.sessions)*10000)/(1<<20))
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

// stack is everything one benchmark run starts: the database servers,
// the simulated Entra ID, the peers and portcullis.
type stack struct {
	opts options
	tb   toolbox
	dir  string
	log  io.Writer

	password string // the bench role's, in PostgreSQL and MariaDB
	pg       *testpg.Server
	my       *mariaDB
	sim      *entrasim.Server

	haproxy       *child
	haproxyPG     string
	haproxyMy     string
	pgbouncer     *child
	pgbouncerAddr string

	// sysbenchTLS is where sysbench finds its TLS files.
	sysbenchTLS string

	// pcBase is the part of every portcullis configuration that does not
	// change between instances.
	pcBase   portcullisSetup
	pc       *instance
	variants []*instance
}

func (s *stack) wants(peerID string) bool {
	for _, p := range s.opts.peers {
		if p == peerID {
			return true
		}
	}
	return false
}

func (s *stack) wantsProto(proto string) bool {
	for _, w := range s.opts.workloads {
		if w.proto == proto {
			return true
		}
	}
	return false
}

// needs lists the tools the run's peers, workloads and extra
// measurements require.
func (o options) needs() []need {
	ns := []need{{toolPostgres, "the PostgreSQL server"}, {toolPgbench, "making the pgbench tables"}}
	for _, w := range o.workloads {
		if w.proto == protoMySQL {
			ns = append(ns, need{toolSysbench, w.id}, need{toolMariadbd, w.id}, need{toolMariadbSetup, w.id}, need{toolMariadb, w.id})
		}
	}
	for _, p := range o.peers {
		switch p {
		case "haproxy":
			ns = append(ns, need{toolHAProxy, "peer haproxy"})
		case "pgbouncer":
			ns = append(ns, need{toolPgBouncer, "peer pgbouncer"})
		}
	}
	if o.idleConns > 0 || o.idleTLS > 0 {
		ns = append(ns, need{toolPgBouncer, "-idle and -idle-tls (PostgreSQL cannot hold that many sessions; PgBouncer can)"})
	}
	if o.signIns > 0 {
		ns = append(ns, need{toolPgBouncer, "-signins (the signed-in sessions end at PgBouncer)"})
	}
	if o.portcullis == "" {
		ns = append(ns, need{toolGo, "building portcullis"})
	}
	return ns
}

// startStack starts everything; on failure it stops what it started.
func startStack(ctx context.Context, opts options, tb toolbox, log io.Writer) (*stack, error) {
	s := &stack{opts: opts, tb: tb, log: log, password: randomSecret()}
	ok := false
	defer func() {
		if !ok {
			s.stop()
		}
	}()
	var err error
	if s.dir, err = os.MkdirTemp("", "portcullis-bench-"); err != nil {
		return nil, err
	}
	// Daemons that run as their own users must reach their directories.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return nil, err
	}
	step := func(what string) func() {
		start := time.Now()
		fmt.Fprintf(log, "  %s ... ", what)
		return func() { fmt.Fprintf(log, "%.1fs\n", time.Since(start).Seconds()) }
	}

	done := step("PostgreSQL")
	s.pg, err = testpg.Launch(testpg.Options{
		Roles: []testpg.Role{{Name: "bench", Password: s.password}},
		Setup: []string{"CREATE DATABASE bench OWNER bench"},
	})
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	done()
	done = step(fmt.Sprintf("pgbench tables, scale %d", opts.scale))
	host, port := splitAddr(s.pg.Addr())
	initCmd := exec.CommandContext(ctx, tb.path(toolPgbench), "-i", "-q", "-s", strconv.Itoa(opts.scale), "-h", host, "-p", port, "-U", "bench", "bench")
	initCmd.Env = pgEnv(&endpoint{password: s.password})
	if err := runQuiet(initCmd); err != nil {
		return nil, err
	}
	done()

	if s.wantsProto(protoMySQL) {
		done = step("MariaDB and the sysbench table")
		if s.my, err = launchMariaDB(ctx, tb, filepath.Join(s.dir, "mariadb"), s.password, opts.idleMySQL+100); err != nil {
			return nil, err
		}
		direct := &endpoint{addr: s.my.addr(), user: "bench", password: s.password, database: "sbtest"}
		args := append([]string{"oltp_point_select"}, sysbenchConn(direct)...)
		args = append(append(args, sysbenchTable(opts.scale)...), "prepare")
		prep := exec.CommandContext(ctx, tb.path(toolSysbench), args...)
		prep.Env = mysqlEnv()
		if err := runQuiet(prep); err != nil {
			return nil, err
		}
		done()
	}

	done = step("simulated Entra ID")
	graphSecret := randomSecret()
	if s.sim, err = entrasim.New(benchDirectory(opts.signIns, graphSecret), entrasim.Options{}); err != nil {
		return nil, fmt.Errorf("start the Entra ID simulator: %w", err)
	}
	s.pcBase.CAFile = filepath.Join(s.dir, "entrasim-ca.pem")
	if err := s.sim.WriteCAFile(s.pcBase.CAFile); err != nil {
		return nil, err
	}
	s.pcBase.SimURL = s.sim.URL()
	s.pcBase.SecretFile = filepath.Join(s.dir, "graph-secret")
	s.pcBase.PasswordFile = filepath.Join(s.dir, "bench.password")
	for path, v := range map[string]string{s.pcBase.SecretFile: graphSecret, s.pcBase.PasswordFile: s.password} {
		if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	done()

	if s.wants("haproxy") {
		done = step("HAProxy")
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		s.haproxyPG = loopback(p)
		myServer := ""
		if s.my != nil {
			if p, err = freePort(); err != nil {
				return nil, err
			}
			s.haproxyMy, myServer = loopback(p), s.my.addr()
		}
		if s.haproxy, err = startHAProxy(ctx, tb, filepath.Join(s.dir, "haproxy"), s.haproxyPG, s.pg.Addr(), s.haproxyMy, myServer); err != nil {
			return nil, err
		}
		done()
	}
	if s.wants("pgbouncer") || opts.idleConns > 0 || opts.idleTLS > 0 || opts.signIns > 0 {
		done = step("PgBouncer")
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		s.pgbouncerAddr = loopback(p)
		if s.pgbouncer, err = startPgBouncer(ctx, tb, filepath.Join(s.dir, "pgbouncer"), p, s.pg.Port, s.password); err != nil {
			return nil, err
		}
		done()
	}

	s.pc = &instance{}
	if opts.portcullis == "" {
		done = step("building portcullis")
		if s.pc.bin, err = buildPortcullis(ctx, tb.path(toolGo), s.dir); err != nil {
			return nil, err
		}
		done()
	} else if opts.portcullis != inProcess {
		s.pc.bin = opts.portcullis
	}
	done = step("portcullis and a device-code sign-in")
	if err := s.startPortcullis(ctx, s.pc); err != nil {
		return nil, err
	}
	done()
	for _, v := range opts.variants {
		done = step("portcullis " + v.name)
		inst := &instance{name: v.name, bin: v.bin, env: v.env}
		s.variants = append(s.variants, inst)
		if err := s.startPortcullis(ctx, inst); err != nil {
			return nil, fmt.Errorf("variant %s: %w", v.name, err)
		}
		done()
	}
	ok = true
	return s, nil
}

// instance is one portcullis with its own configuration, listeners and
// signed-in analyst: the one measured, or a variant to compare with it.
type instance struct {
	name  string   // "" for the one measured
	bin   string   // "" runs it inside the harness
	env   []string // extra environment (GOMAXPROCS=1, GODEBUG=...)
	setup portcullisSetup
	runs  int
	run   runningPortcullis
	key   string // the analyst's session key
}

// startPortcullis writes inst's configuration, starts it and signs the
// analyst in. Without a MySQL front door in the build it starts again
// with PostgreSQL listeners only.
func (s *stack) startPortcullis(ctx context.Context, inst *instance) error {
	cert, key, err := s.listenerCertificate()
	if err != nil {
		return err
	}
	inst.setup = s.pcBase
	inst.setup.CertFile, inst.setup.KeyFile = cert, key
	inst.setup.PGBackend = s.pg.Addr()
	inst.setup.IdleBackend = s.pgbouncerAddr
	if s.my != nil {
		inst.setup.MyBackend = s.my.addr()
		inst.setup.MySQL = true
	}
	for _, addr := range []*string{&inst.setup.PGPlain, &inst.setup.PGTLS, &inst.setup.MyPlain, &inst.setup.MyTLS} {
		p, err := freePort()
		if err != nil {
			return err
		}
		*addr = loopback(p)
	}
	base := "portcullis"
	if inst.name != "" {
		base += "-" + inst.name
	}
	cfgPath := filepath.Join(s.dir, base+".yaml")
	// A fresh state file per start: nothing signed in earlier is reused.
	inst.setup.StorePath = filepath.Join(s.dir, fmt.Sprintf("%s-%d.db", base, inst.runs+1))
	for {
		if err := writePortcullisConfig(cfgPath, inst.setup); err != nil {
			return err
		}
		inst.runs++
		logPath := filepath.Join(s.dir, fmt.Sprintf("%s-%d.log", base, inst.runs))
		listeners := []string{inst.setup.PGPlain, inst.setup.PGTLS}
		if inst.setup.MySQL {
			listeners = append(listeners, inst.setup.MyPlain, inst.setup.MyTLS)
		}
		// A failed start leaves inst.run nil, not an interface holding a
		// nil pointer, so that stopping the stack skips it.
		var run runningPortcullis
		if inst.bin != "" {
			var b *portcullisBinary
			if b, err = startPortcullisBinary(ctx, inst.bin, inst.env, cfgPath, logPath, listeners); err == nil {
				run = b
			}
		} else {
			var p *portcullisInProcess
			if p, err = startPortcullisInProcess(ctx, cfgPath, logPath); err == nil {
				run = p
			}
		}
		if errors.Is(err, errNoMySQLFrontDoor) && inst.setup.MySQL {
			inst.setup.MySQL = false
			continue
		}
		if err != nil {
			return err
		}
		inst.run = run
		break
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	inst.key, err = signIn(sctx, s.sim, inst.setup.PGPlain, analyst, "bench", nil, nil, nil)
	return err
}

// restartPortcullis gives a measurement a fresh portcullis process (and a
// fresh sign-in: session keys live in its memory).
func (s *stack) restartPortcullis(ctx context.Context, inst *instance) error {
	if inst.run != nil {
		if err := inst.run.stop(); err != nil {
			return err
		}
		inst.run = nil
	}
	return s.startPortcullis(ctx, inst)
}

func (s *stack) listenerCertificate() (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(s.dir, "listener.crt"), filepath.Join(s.dir, "listener.key")
	if _, err := os.Stat(certFile); err == nil {
		return certFile, keyFile, nil
	}
	ca, err := testpg.NewCA("portcullis bench CA")
	if err != nil {
		return "", "", err
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return "", "", err
	}
	// sysbench 1.0 takes no TLS file options: with --mysql-ssl=on it
	// loads cacert.pem, client-cert.pem and client-key.pem from its
	// working directory. portcullis asks for no client certificate, so
	// the client pair is only there to be found.
	s.sysbenchTLS = filepath.Join(s.dir, "sysbench-tls")
	if err := os.MkdirAll(s.sysbenchTLS, 0o700); err != nil {
		return "", "", err
	}
	clientCert, clientKey, err := ca.Issue("portcullis-bench-client")
	if err != nil {
		return "", "", err
	}
	files := map[string][]byte{
		certFile: certPEM, keyFile: keyPEM,
		filepath.Join(s.sysbenchTLS, "cacert.pem"):      ca.CertPEM,
		filepath.Join(s.sysbenchTLS, "client-cert.pem"): clientCert,
		filepath.Join(s.sysbenchTLS, "client-key.pem"):  clientKey,
	}
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return "", "", err
		}
	}
	return certFile, keyFile, nil
}

// peers are the columns of the throughput table, as asked for.
func (s *stack) peers() []*peer {
	var out []*peer
	for _, id := range s.opts.peers {
		p := &peer{id: id, title: peerTitles[id]}
		myDB := func(addr string, tls bool) *endpoint {
			return &endpoint{addr: addr, user: "bench", password: s.password, database: "sbtest", tls: tls}
		}
		switch id {
		case "direct":
			p.pg = &endpoint{addr: s.pg.Addr(), user: "bench", password: s.password, database: "bench"}
			if s.my != nil {
				p.my = myDB(s.my.addr(), false)
			}
		case "haproxy":
			p.pid = s.haproxy.pid
			p.pg = &endpoint{addr: s.haproxyPG, user: "bench", password: s.password, database: "bench"}
			if s.my != nil {
				p.my = myDB(s.haproxyMy, false)
			}
		case "pgbouncer":
			p.pid = s.pgbouncer.pid
			p.pg = &endpoint{addr: s.pgbouncerAddr, user: "bench", database: "bench"}
			p.noMy = "PgBouncer speaks only PostgreSQL"
		case "portcullis", "portcullis-tls":
			s.pc.endpoints(p, id == "portcullis-tls", s.sysbenchTLS)
		}
		if p.my == nil && p.noMy == "" {
			p.noMy = "MariaDB not started"
		}
		out = append(out, p)
	}
	for _, v := range s.variants {
		p := &peer{id: "variant-" + v.name, title: "portcullis " + v.name}
		v.endpoints(p, false, "")
		out = append(out, p)
		if s.wants("portcullis-tls") {
			p := &peer{id: "variant-" + v.name + "-tls", title: "portcullis " + v.name + "+TLS"}
			v.endpoints(p, true, s.sysbenchTLS)
			out = append(out, p)
		}
	}
	return out
}

// endpoints fills in where p reaches this portcullis, with or without TLS
// on the client leg.
func (inst *instance) endpoints(p *peer, tls bool, tlsDir string) {
	p.pg = &endpoint{addr: pick(tls, inst.setup.PGTLS, inst.setup.PGPlain), user: analyst, password: inst.key, database: "bench", tls: tls}
	switch {
	case !inst.setup.MySQL:
		p.noMy = "no MySQL front door in this build"
	case !tls:
		// Without TLS the session key is proven by caching_sha2_password's
		// scramble, never sent: like for like with HAProxy.
		p.my = &endpoint{addr: inst.setup.MyPlain, user: analyst, password: inst.key, database: "sbtest"}
	default:
		p.my = &endpoint{addr: inst.setup.MyTLS, user: analyst, password: inst.key, database: "sbtest", tls: true, tlsDir: tlsDir}
	}
	p.pid = inst.pid
}

// pid is the portcullis process, 0 when it runs inside the harness.
func (inst *instance) pid() int {
	if inst.run == nil {
		return 0
	}
	return inst.run.pid()
}

func pick(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

// stop ends everything the stack started, the dependants first.
func (s *stack) stop() {
	for _, inst := range append([]*instance{s.pc}, s.variants...) {
		if inst != nil && inst.run != nil {
			inst.run.stop()
		}
	}
	for _, c := range []*child{s.haproxy, s.pgbouncer} {
		if c != nil {
			c.stop()
		}
	}
	if s.sim != nil {
		s.sim.Close()
	}
	if s.my != nil {
		s.my.stop()
	}
	if s.pg != nil {
		s.pg.Stop()
	}
	if s.dir != "" && !s.opts.keep {
		os.RemoveAll(s.dir)
	}
}

// Command bench measures portcullis as a relay against what an operator
// could put in its place, in the same run on the same machine: a direct
// connection (the limit), HAProxy in TCP mode (the best plain L4 relay)
// and PgBouncer in session mode (the usual PostgreSQL proxy).
//
//	go run ./bench                      # 10 s × 3 rounds, everything
//	go run ./bench -duration 5s -rounds 5 -workloads select-1,select-16
//
// It starts throwaway PostgreSQL and MariaDB servers, HAProxy, PgBouncer,
// the Entra ID simulator and portcullis (built from this module, or
// -portcullis BINARY), signs one person in through the device-code flow
// (approved through the simulator) and gives the load generators the
// session key portcullis hands out, as a BI server's pool would. Then it
// runs interleaved rounds (every peer in turn, in a rotating order, for
// each workload) of pgbench and sysbench and prints the median throughput
// and ratio to direct. It also measures connection set-up time with a
// cached sign-in, 1,000 device-code sign-ins pending at once, and the
// memory of portcullis holding thousands of idle spliced sessions.
//
// It installs nothing: a missing tool is reported with the Debian package
// that provides it, and the run stops (exit status 3).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// inProcess as -portcullis runs portcullis inside the harness.
const inProcess = "inprocess"

type options struct {
	duration  time.Duration
	rounds    int
	scale     int
	peers     []string
	workloads []workload
	setups    int
	signIns   int
	idleConns int
	idleMySQL int
	idleTLS   int
	// portcullis is a binary to measure, inProcess, or "" to build one.
	portcullis string
	// variants are more portcullis builds or settings to compare in the
	// same run, each its own peer.
	variants []variant
	keep     bool
	// hold starts everything, prints how to reach it, and waits.
	hold bool
	// args is the command line, for the report.
	args []string
}

// variant is a portcullis binary, with extra environment, measured as
// one more peer: "name=BINARY[,ENV=VALUE...]".
type variant struct {
	name string
	bin  string
	env  []string
}

type variantFlag struct{ v *[]variant }

func (f variantFlag) String() string { return "" }

func (f variantFlag) Set(s string) error {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" || rest == "" {
		return errors.New("want NAME=BINARY[,ENV=VALUE...]")
	}
	parts := strings.Split(rest, ",")
	v := variant{name: name, bin: parts[0], env: parts[1:]}
	for _, e := range v.env {
		if !strings.Contains(e, "=") {
			return fmt.Errorf("environment %q: want ENV=VALUE", e)
		}
	}
	*f.v = append(*f.v, v)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	err = run(ctx, opts, stdout, stderr)
	var missing *missingToolsError
	switch {
	case errors.As(err, &missing):
		fmt.Fprintln(stderr, "bench:", err)
		return 3
	case err != nil:
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return 0
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each run")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of every workload against every peer (the table shows medians)")
	fs.IntVar(&o.scale, "scale", 10, "pgbench scale factor (sysbench's table gets as many hundred thousand rows, up to a million)")
	peers := fs.String("peers", strings.Join(peerIDs, ","), "peers to measure, direct first")
	var ids []string
	for _, w := range workloads {
		ids = append(ids, w.id)
	}
	wl := fs.String("workloads", strings.Join(ids, ","), "workloads to run")
	fs.IntVar(&o.setups, "setups", 500, "connections timed one after another for the set-up latency (0 skips)")
	fs.IntVar(&o.signIns, "signins", 1000, "device-code sign-ins pending at once (0 skips)")
	fs.IntVar(&o.idleConns, "idle", 10000, "idle spliced sessions for the memory measurement (0 skips; capped by the open-file limit)")
	fs.IntVar(&o.idleTLS, "idle-tls", 2000, "idle spliced PostgreSQL sessions with TLS on the client leg for the memory measurement (0 skips)")
	fs.IntVar(&o.idleMySQL, "idle-mysql", 10000, "idle spliced MySQL sessions for the memory measurement (0 skips; capped by the open-file limit; each holds a MariaDB connection and thread)")
	fs.StringVar(&o.portcullis, "portcullis", "", "portcullis binary to measure; empty builds ./cmd/portcullis; \""+inProcess+"\" runs it inside the harness (no memory figure)")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (configurations, logs) after the run")
	fs.Var(variantFlag{&o.variants}, "variant", "another portcullis to measure as a peer: NAME=BINARY[,ENV=VALUE...] (repeatable), e.g. gmp1=/tmp/portcullis,GOMAXPROCS=1")
	fs.BoolVar(&o.hold, "hold", false, "start everything, print the endpoints and wait for an interrupt (for profiling by hand)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./bench [flags]\n\nworkloads:\n")
		for _, w := range workloads {
			fmt.Fprintf(stderr, "  %-16s %s\n", w.id, w.title)
		}
		fmt.Fprintf(stderr, "peers: %s\n\nflags:\n", strings.Join(peerIDs, ", "))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.args = args
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.rounds < 1 || o.duration < time.Second {
		return o, errors.New("-rounds must be at least 1 and -duration at least 1s")
	}
	o.peers = splitList(*peers)
	if len(o.peers) == 0 || o.peers[0] != "direct" {
		return o, errors.New("-peers must start with direct: every ratio is to it")
	}
	for _, p := range o.peers {
		if _, ok := peerTitles[p]; !ok {
			return o, fmt.Errorf("unknown peer %q (known: %s)", p, strings.Join(peerIDs, ", "))
		}
	}
	for _, id := range splitList(*wl) {
		w, ok := workloadByID(id)
		if !ok {
			return o, fmt.Errorf("unknown workload %q (known: %s)", id, strings.Join(ids, ", "))
		}
		o.workloads = append(o.workloads, w)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func numCPU() int { return runtime.NumCPU() }

// run starts the stack, runs the rounds and the extra measurements, and
// writes the report to stdout; progress goes to stderr.
func run(ctx context.Context, opts options, stdout, stderr io.Writer) error {
	tb, err := findTools(opts.needs())
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, "starting:")
	s, err := startStack(ctx, opts, tb, stderr)
	if err != nil {
		return err
	}
	defer s.stop()
	if opts.keep {
		fmt.Fprintf(stderr, "working directory (kept): %s\n", s.dir)
	}
	peers := s.peers()
	if opts.hold {
		return hold(ctx, s, peers, stdout)
	}

	fmt.Fprintln(stdout, "# portcullis benchmark")
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "command: go run ./bench %s\n", strings.Join(opts.args, " "))
	machine(stdout)
	s.writeVersions(stdout)
	fmt.Fprintln(stdout)

	res := newResults(opts.workloads, peers)
	total := 0
	for _, w := range opts.workloads {
		for _, p := range peers {
			if e, _ := p.endpoint(w.proto); e != nil {
				total += opts.rounds
			}
		}
	}
	n := 0
	for round := range opts.rounds {
		for _, w := range opts.workloads {
			// Rotate the order every round so no peer always runs
			// right after the write-heavy or the connection-heavy one.
			for i := range peers {
				p := peers[(i+round)%len(peers)]
				e, _ := p.endpoint(w.proto)
				if e == nil {
					continue
				}
				n++
				fmt.Fprintf(stderr, "[%d/%d] round %d  %-38s %-15s ", n, total, round+1, w.title, p.title)
				var pid int
				if p.pid != nil {
					pid = p.pid()
				}
				use0, useErr := processUsage(pid)
				cpu0, cpuErr := readMachineCPU()
				m, err := runWorkload(ctx, tb, w, e, opts.duration, opts.scale)
				cpu1, cpuErr1 := readMachineCPU()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					fmt.Fprintln(stderr, "failed")
				} else {
					fmt.Fprintf(stderr, "%.0f tps", m.tps)
					if cpuErr == nil && cpuErr1 == nil {
						idle, busy := cpu0.idleShare(cpu1), cpu0.busyPer(cpu1, m.txns)
						res.addIdle(w, p, idle, busy)
						fmt.Fprintf(stderr, ", machine %.1f%% idle, %.0f µs busy per tx", idle, busy)
					}
					if use1, err := processUsage(pid); useErr == nil && err == nil && m.txns > 0 {
						u := use1.sub(use0)
						res.addUsage(w, p, u, m.txns)
						fmt.Fprintf(stderr, ", relay %.1f µs CPU and %.2f context switches per tx", float64(u.cpu)/float64(time.Microsecond)/float64(m.txns), float64(u.switches)/float64(m.txns))
					}
					fmt.Fprintln(stderr)
				}
				res.add(w, p, m.tps, err)
			}
		}
	}
	res.writeTable(stdout, opts.duration, opts.rounds)
	fmt.Fprintln(stdout)
	res.writeCPUTable(stdout)
	fmt.Fprintln(stdout)
	res.writeIdleTable(stdout)
	fmt.Fprintln(stdout)
	res.writeVersus(stdout)
	fmt.Fprintln(stdout)
	res.writeTargets(stdout)
	res.writeRounds(stdout)
	fmt.Fprintln(stdout)

	if opts.setups > 0 {
		fmt.Fprintln(stderr, "connection set-up latency ...")
		writeSetupLatency(ctx, stdout, s, peers, opts.setups)
	}
	if opts.signIns > 0 {
		fmt.Fprintln(stderr, "pending sign-ins ...")
		pendingSignIns(ctx, stdout, s, opts.signIns)
	}
	if opts.idleConns > 0 || opts.idleTLS > 0 || opts.idleMySQL > 0 {
		if s.pc.bin == "" {
			fmt.Fprintln(stdout, "Memory with idle sessions: not measured (portcullis ran inside the harness).")
		} else {
			if opts.idleConns > 0 {
				fmt.Fprintln(stderr, "idle sessions ...")
				idleRSS(ctx, stdout, s, opts.idleConns, idlePostgres)
			}
			if opts.idleTLS > 0 {
				fmt.Fprintln(stderr, "idle TLS sessions ...")
				idleRSS(ctx, stdout, s, opts.idleTLS, idlePostgresTLS)
			}
			switch {
			case opts.idleMySQL > 0 && s.my == nil:
				fmt.Fprintln(stdout, "Memory with idle MySQL sessions: not measured (no MySQL workload in this run, so no MariaDB).")
			case opts.idleMySQL > 0:
				fmt.Fprintln(stderr, "idle MySQL sessions ...")
				idleRSS(ctx, stdout, s, opts.idleMySQL, idleMySQL)
			}
		}
	}
	return ctx.Err()
}

// writeVersions names every program measured, for the report.
func (s *stack) writeVersions(w io.Writer) {
	fmt.Fprintf(w, "PostgreSQL %s; %s\n", s.pg.Version, toolVersion(s.tb.path(toolPgbench), "--version"))
	if p := s.tb.path(toolHAProxy); p != "" {
		fmt.Fprintln(w, toolVersion(p, "-v"))
	}
	if p := s.tb.path(toolPgBouncer); p != "" {
		fmt.Fprintln(w, toolVersion(p, "--version"))
	}
	if s.my != nil {
		fmt.Fprintf(w, "%s; sysbench %s\n", toolVersion(s.tb.path(toolMariadbd), "--version"), toolVersion(s.tb.path(toolSysbench), "--version"))
	}
	if s.pc.bin != "" {
		fmt.Fprintf(w, "portcullis: %s (built with %s)\n", s.pc.bin, runtime.Version())
		for _, v := range s.variants {
			fmt.Fprintf(w, "portcullis %s: %s %s\n", v.name, v.bin, strings.Join(v.env, " "))
		}
	} else {
		fmt.Fprintf(w, "portcullis: inside the harness (%s, GOMAXPROCS %d)\n", runtime.Version(), runtime.GOMAXPROCS(0))
	}
}

// hold prints how to reach every peer and waits for an interrupt.
func hold(ctx context.Context, s *stack, peers []*peer, w io.Writer) error {
	fmt.Fprintf(w, "working directory: %s\n", s.dir)
	for _, p := range peers {
		for _, e := range []*endpoint{p.pg, p.my} {
			if e == nil {
				continue
			}
			pid := 0
			if p.pid != nil {
				pid = p.pid()
			}
			fmt.Fprintf(w, "%-18s %-15s user=%s database=%s tls=%v pid=%d\n", p.title, e.addr, e.user, e.database, e.tls, pid)
		}
	}
	fmt.Fprintf(w, "passwords: %s/bench.password (direct, HAProxy); portcullis session keys: %s/session-key[-VARIANT]\n", s.dir, s.dir)
	for _, inst := range append([]*instance{s.pc}, s.variants...) {
		name := "session-key"
		if inst.name != "" {
			name += "-" + inst.name
		}
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(inst.key+"\n"), 0o600); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "holding; interrupt to stop")
	<-ctx.Done()
	return nil
}

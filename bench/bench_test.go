package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the harness the way CI can afford: one 1-second round of
// pgbench -S and of sysbench's point select against every peer, with
// portcullis running inside the harness, a few timed connections and a
// few pending sign-ins. It checks that every path of the run works and
// that its table parses, never how fast anything is.
func TestSmoke(t *testing.T) {
	opts, err := parseOptions([]string{
		"-duration", "1s", "-rounds", "1", "-scale", "1",
		"-workloads", "select-1,point-select-1",
		"-setups", "5", "-signins", "5", "-idle", "0", "-idle-tls", "0", "-idle-mysql", "0",
		"-portcullis", inProcess,
	}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := findTools(opts.needs()); err != nil {
		msg := "\n\n*** SKIPPING: the benchmark harness cannot run here:\n" + err.Error() + "\n***\n"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "*** CI=true: the harness smoke test must run in CI ***")
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, progress bytes.Buffer
	if err := run(ctx, opts, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	t.Log(out.String())

	table, err := parseTable(out.String())
	if err != nil {
		t.Fatalf("parse the table: %v", err)
	}
	row, ok := table["pgbench -S, 1 client"]
	if !ok {
		t.Fatalf("no pgbench -S row in:\n%s", out.String())
	}
	if c := row["direct"]; !c.ok || !(c.tps > 0) {
		t.Errorf("direct: got %+v, want a throughput above 0", c)
	}
	for _, peer := range []string{"HAProxy", "PgBouncer", "portcullis", "portcullis+TLS"} {
		if c := row[peer]; !c.ok || !(c.tps > 0) || !(c.ratio > 0) {
			t.Errorf("pgbench, %s: got %+v, want a throughput and a ratio to direct above 0", peer, c)
		}
	}
	myRow, ok := table["sysbench point select, 1 thread"]
	if !ok {
		t.Fatalf("no sysbench row in:\n%s", out.String())
	}
	for _, peer := range []string{"direct", "HAProxy", "portcullis", "portcullis+TLS"} {
		if c := myRow[peer]; !c.ok || !(c.tps > 0) {
			t.Errorf("sysbench, %s: got %+v, want a throughput above 0", peer, c)
		}
	}
	if !strings.Contains(out.String(), "cached sign-in (session key)") {
		t.Errorf("no set-up latency through portcullis in:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "| 5 | 5 | 5 |") {
		t.Errorf("the 5 pending sign-ins did not all show a code and wait together in:\n%s", out.String())
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "defaults", args: nil},
		{name: "direct must come first", args: []string{"-peers", "haproxy,direct"}, wantErr: "must start with direct"},
		{name: "unknown peer", args: []string{"-peers", "direct,nginx"}, wantErr: `unknown peer "nginx"`},
		{name: "unknown workload", args: []string{"-workloads", "select-2"}, wantErr: `unknown workload "select-2"`},
		{name: "too short", args: []string{"-duration", "10ms"}, wantErr: "at least 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args, &bytes.Buffer{})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			case tt.wantErr == "" && (len(o.workloads) != len(workloads) || len(o.peers) != len(peerIDs)):
				t.Fatalf("defaults: got %d workloads and %d peers, want %d and %d", len(o.workloads), len(o.peers), len(workloads), len(peerIDs))
			}
		})
	}
}

func TestMedianAndRatio(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name string
		v    []float64
		want float64
	}{
		{name: "odd", v: []float64{3, 1, 2}, want: 2},
		{name: "even", v: []float64{4, 1, 3, 2}, want: 2.5},
		{name: "failed runs left out", v: []float64{nan, 5, nan}, want: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.v); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
	if got := median([]float64{nan}); !math.IsNaN(got) {
		t.Errorf("median of only failures = %v, want NaN", got)
	}

	// The ratio is taken within each round, then the median over rounds:
	// a slow round for everyone does not move it.
	w := workloads[0]
	direct, relay := &peer{id: "direct", title: "direct", pg: &endpoint{}}, &peer{id: "relay", title: "relay", pg: &endpoint{}}
	r := newResults([]workload{w}, []*peer{direct, relay})
	for _, round := range []struct{ d, p float64 }{{1000, 900}, {500, 450}, {1000, 700}} {
		r.add(w, direct, round.d, nil)
		r.add(w, relay, round.p, nil)
	}
	if got := r.ratio(w, relay); math.Abs(got-0.9) > 1e-9 {
		t.Errorf("ratio = %v, want 0.9", got)
	}
	r.add(w, direct, 0, errors.New("pgbench failed"))
	r.add(w, relay, 800, nil)
	if got := median(r.tps[w.id]["direct"]); got != 1000 {
		t.Errorf("median with a failed round = %v, want 1000", got)
	}
}

// The comparison with HAProxy is taken round by round, and a round in
// which either failed is left out of it.
func TestVersus(t *testing.T) {
	w := workloads[0]
	pg := &endpoint{}
	direct := &peer{id: "direct", title: "direct", pg: pg}
	haproxy := &peer{id: "haproxy", title: "HAProxy", pg: pg}
	pc := &peer{id: "portcullis", title: "portcullis", pg: pg}
	r := newResults([]workload{w}, []*peer{direct, haproxy, pc})
	for _, round := range []struct {
		d, h, p float64
		err     error
	}{
		{d: 1000, h: 700, p: 770},
		{d: 2000, h: 800, p: 720},
		{d: 1000, h: 500, p: 600},
		{d: 1000, h: 900, p: 0, err: errors.New("pgbench failed")},
	} {
		r.add(w, direct, round.d, nil)
		r.add(w, haproxy, round.h, nil)
		r.add(w, pc, round.p, round.err)
	}
	ratio, ahead, rounds := r.versus(w, "portcullis", "haproxy")
	if math.Abs(ratio-1.1) > 1e-9 || ahead != 2 || rounds != 3 {
		t.Errorf("versus = %.3f, %d of %d; want 1.100, 2 of 3", ratio, ahead, rounds)
	}

	var b bytes.Buffer
	r.writeVersus(&b)
	if want := "| " + w.title + " | 1.10 (2 of 3); level: 1.06, 95% 0.73-1.53 |"; !strings.Contains(b.String(), want) {
		t.Errorf("table lacks %q:\n%s", want, b.String())
	}
	// Without HAProxy among the peers there is nothing to compare with.
	b.Reset()
	newResults([]workload{w}, []*peer{direct, pc}).writeVersus(&b)
	if b.Len() != 0 {
		t.Errorf("without HAProxy: %q, want nothing", b.String())
	}
}

// Where the rounds leave portcullis against HAProxy: ahead or behind only
// when the 95% interval of the same-round ratio lies wholly on one side.
func TestStanding(t *testing.T) {
	w := workloads[0]
	pg := &endpoint{}
	haproxy := &peer{id: "haproxy", title: "HAProxy", pg: pg}
	pc := &peer{id: "portcullis", title: "portcullis", pg: pg}
	tests := []struct {
		name     string
		h, p     []float64
		want     string
		enoughOK bool
	}{
		{name: "ahead", h: []float64{1000, 1000, 1000, 1000}, p: []float64{1100, 1120, 1090, 1110}, want: "ahead: 1.10, 95% 1.08-1.13", enoughOK: true},
		{name: "behind", h: []float64{1000, 1000, 1000}, p: []float64{900, 910, 890}, want: "behind: 0.90, 95% 0.88-0.93", enoughOK: true},
		{name: "spread across level", h: []float64{1000, 1000, 1000}, p: []float64{900, 1100, 1000}, want: "level: 1.00, 95% 0.78-1.28", enoughOK: true},
		{name: "a failed round left out", h: []float64{1000, 1000, 1000}, p: []float64{900, 0, 910}, enoughOK: false},
		{name: "two rounds", h: []float64{1000, 1000}, p: []float64{1100, 1100}, enoughOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResults([]workload{w}, []*peer{haproxy, pc})
			for i := range tt.h {
				r.add(w, haproxy, tt.h[i], nil)
				r.add(w, pc, tt.p[i], nil)
			}
			got, ok := r.standing(w, "portcullis", "haproxy")
			if ok != tt.enoughOK || got != tt.want {
				t.Errorf("standing = %q, %v; want %q, %v", got, ok, tt.want, tt.enoughOK)
			}
		})
	}
	if got := tQuantile975(4); got != 2.776 {
		t.Errorf("t(0.975, 4) = %v, want 2.776", got)
	}
	if got := tQuantile975(100); got != 1.960 {
		t.Errorf("t(0.975, 100) = %v, want 1.960", got)
	}
}

func TestTableRoundTrip(t *testing.T) {
	pg := &endpoint{}
	direct := &peer{id: "direct", title: "direct", pg: pg, noMy: "MariaDB not started"}
	relay := &peer{id: "portcullis", title: "portcullis", pg: pg, noMy: "no MySQL front door in this build"}
	ws := []workload{workloads[0], workloads[4]}
	r := newResults(ws, []*peer{direct, relay})
	r.add(ws[0], direct, 10000, nil)
	r.add(ws[0], relay, 8500, nil)

	var b bytes.Buffer
	r.writeTable(&b, time.Second, 1)
	table, err := parseTable(b.String())
	if err != nil {
		t.Fatalf("parse:\n%s\n%v", b.String(), err)
	}
	tests := []struct {
		name       string
		row, col   string
		wantOK     bool
		wantTPS    float64
		wantRatio  float64
		ratioIsNaN bool
	}{
		{name: "direct", row: ws[0].title, col: "direct", wantOK: true, wantTPS: 10000, ratioIsNaN: true},
		{name: "relay", row: ws[0].title, col: "portcullis", wantOK: true, wantTPS: 8500, wantRatio: 0.85},
		{name: "not served", row: ws[1].title, col: "portcullis", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := table[tt.row][tt.col]
			if !ok {
				t.Fatalf("no cell %q/%q in\n%s", tt.row, tt.col, b.String())
			}
			if c.ok != tt.wantOK {
				t.Fatalf("ok = %v, want %v", c.ok, tt.wantOK)
			}
			if !tt.wantOK {
				return
			}
			if c.tps != tt.wantTPS {
				t.Errorf("tps = %v, want %v", c.tps, tt.wantTPS)
			}
			if tt.ratioIsNaN != math.IsNaN(c.ratio) || (!tt.ratioIsNaN && c.ratio != tt.wantRatio) {
				t.Errorf("ratio = %v, want %v", c.ratio, tt.wantRatio)
			}
		})
	}
	if _, err := parseTable("no table here"); err == nil {
		t.Error("parseTable of text without a table: no error")
	}
}

func TestMissingToolsNamePackages(t *testing.T) {
	_, err := findTools([]need{{tool{"portcullis-bench-no-such-tool", "no-such-package"}, "a test"}})
	var missing *missingToolsError
	if !errors.As(err, &missing) {
		t.Fatalf("got %v, want a *missingToolsError", err)
	}
	for _, want := range []string{"portcullis-bench-no-such-tool", "apt-get install -y no-such-package", "needed for a test"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not mention %q", err, want)
		}
	}
}

// The machine's idle share counts idle and iowait against the busy
// columns, and leaves out steal and guest time (guest time is already in
// user time).
func TestMachineIdleShare(t *testing.T) {
	before, err := parseMachineCPU("cpu  100 0 50 800 50 0 0 999 40 0")
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseMachineCPU("cpu  400 0 150 1000 50 0 0 1999 240 0")
	if err != nil {
		t.Fatal(err)
	}
	// busy: 300 user + 100 system; idle: 200.
	if got := before.idleShare(after); math.Abs(got-100.0/3) > 1e-9 {
		t.Errorf("idle share = %v, want 33.3", got)
	}
	if got := after.idleShare(after); !math.IsNaN(got) {
		t.Errorf("idle share over no time = %v, want NaN", got)
	}
	// 400 ticks of 10 ms over 1,000 transactions.
	if got := before.busyPer(after, 1000); math.Abs(got-4000) > 1e-9 {
		t.Errorf("busy per transaction = %v µs, want 4000", got)
	}
	if got := before.busyPer(after, 0); !math.IsNaN(got) {
		t.Errorf("busy per transaction over none = %v, want NaN", got)
	}
	for _, line := range []string{"intr 1 2 3 4 5 6", "cpu 1 2 x 4 5"} {
		if _, err := parseMachineCPU(line); err == nil {
			t.Errorf("parseMachineCPU(%q): no error", line)
		}
	}
	if _, err := readMachineCPU(); err != nil {
		t.Errorf("reading this machine's /proc/stat: %v", err)
	}
}

// The targets are checked on the medians of the ratios to direct: at or
// above HAProxy's on every workload, and the floors on theirs.
func TestTargets(t *testing.T) {
	byID := map[string]workload{}
	for _, w := range workloads {
		byID[w.id] = w
	}
	ws := []workload{byID["select-1"], byID["select-16"], byID["connect-8"]}
	pg := &endpoint{}
	direct := &peer{id: "direct", title: "direct", pg: pg}
	haproxy := &peer{id: "haproxy", title: "HAProxy", pg: pg}
	pc := &peer{id: "portcullis", title: "portcullis", pg: pg}
	r := newResults(ws, []*peer{direct, haproxy, pc})
	for _, row := range []struct {
		w       workload
		d, h, p float64
	}{
		{ws[0], 1000, 850, 920}, // ahead, and past the 0.90 floor
		{ws[1], 1000, 720, 700}, // behind, and short of 0.75
		{ws[2], 100, 90, 75},    // behind HAProxy, past the 0.70 floor
	} {
		r.add(row.w, direct, row.d, nil)
		r.add(row.w, haproxy, row.h, nil)
		r.add(row.w, pc, row.p, nil)
	}
	var b bytes.Buffer
	r.writeTargets(&b)
	out := b.String()
	for _, want := range []string{
		"| pgbench -S, 1 client: at or above HAProxy's ratio | 0.92 against 0.85 | yes | — |",
		"| pgbench -S, 1 client: at least 0.90 of direct (stretch) | 0.92 | yes | — |",
		"| pgbench -S, 16 clients: at or above HAProxy's ratio | 0.70 against 0.72 | no | — |",
		"| pgbench -S, 16 clients: at least 0.75 of direct (stretch) | 0.70 | no | — |",
		"| pgbench -S -C, 8 clients (login path): at or above HAProxy's ratio | 0.75 against 0.90 | no | — |",
		"| pgbench -S -C, 8 clients (login path): at least 0.70 of direct | 0.75 | yes | — |",
		"Met: 3 of 6.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("targets lack %q:\n%s", want, out)
		}
	}

	// From three rounds the HAProxy rows also say where the rounds leave
	// portcullis, compared the right way round.
	r = newResults(ws[1:2], []*peer{direct, haproxy, pc})
	for _, p := range []float64{900, 910, 890} {
		r.add(ws[1], direct, 1000, nil)
		r.add(ws[1], haproxy, 1000, nil)
		r.add(ws[1], pc, p, nil)
	}
	b.Reset()
	r.writeTargets(&b)
	if want := "| 0.90 against 1.00 | no | behind: 0.90, 95% 0.88-0.93 |"; !strings.Contains(b.String(), want) {
		t.Errorf("targets lack %q:\n%s", want, b.String())
	}

	b.Reset()
	newResults(ws, []*peer{direct, pc}).writeTargets(&b)
	if b.Len() != 0 {
		t.Errorf("without HAProxy: %q, want nothing", b.String())
	}
}

package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// results are the throughput runs: per workload and peer, one value per
// round (NaN for a failed run).
type results struct {
	workloads []workload
	peers     []*peer
	tps       map[string]map[string][]float64 // workload id → peer id → per round
	cpu       map[string]map[string][]float64 // the relay's CPU µs per transaction, per round
	wait      map[string]map[string][]float64 // µs per transaction its threads waited for a CPU, per round
	switches  map[string]map[string][]float64 // the relay's context switches per transaction, per round
	idle      map[string]map[string][]float64 // % of the machine's CPU time left idle, per round
	busy      map[string]map[string][]float64 // the machine's busy CPU µs per transaction, per round
	errs      map[string]map[string]error     // the last failure, if any
}

func newResults(ws []workload, ps []*peer) *results {
	r := &results{workloads: ws, peers: ps, tps: map[string]map[string][]float64{}, cpu: map[string]map[string][]float64{}, wait: map[string]map[string][]float64{}, switches: map[string]map[string][]float64{}, idle: map[string]map[string][]float64{}, busy: map[string]map[string][]float64{}, errs: map[string]map[string]error{}}
	for _, w := range ws {
		r.tps[w.id] = map[string][]float64{}
		r.cpu[w.id] = map[string][]float64{}
		r.wait[w.id] = map[string][]float64{}
		r.switches[w.id] = map[string][]float64{}
		r.idle[w.id] = map[string][]float64{}
		r.busy[w.id] = map[string][]float64{}
		r.errs[w.id] = map[string]error{}
	}
	return r
}

func (r *results) add(w workload, p *peer, tps float64, err error) {
	if err != nil {
		tps = math.NaN()
		r.errs[w.id][p.id] = err
	}
	r.tps[w.id][p.id] = append(r.tps[w.id][p.id], tps)
}

// addUsage records the relay's CPU time, its wait for a CPU and its
// context switches per transaction in one run.
func (r *results) addUsage(w workload, p *peer, u usage, txns int64) {
	if txns <= 0 {
		return
	}
	r.cpu[w.id][p.id] = append(r.cpu[w.id][p.id], float64(u.cpu)/float64(time.Microsecond)/float64(txns))
	r.wait[w.id][p.id] = append(r.wait[w.id][p.id], float64(u.wait)/float64(time.Microsecond)/float64(txns))
	r.switches[w.id][p.id] = append(r.switches[w.id][p.id], float64(u.switches)/float64(txns))
}

// addIdle records the share of the machine's CPU left idle in one run,
// and its busy CPU µs per transaction.
func (r *results) addIdle(w workload, p *peer, pct, busy float64) {
	r.idle[w.id][p.id] = append(r.idle[w.id][p.id], pct)
	r.busy[w.id][p.id] = append(r.busy[w.id][p.id], busy)
}

// writeIdleTable prints how much of the machine's CPU each peer's runs
// left idle. The load generator, the database and the relay share the
// CPUs; when a relay leaves some idle while the others leave none, what
// it lacks is not CPU but something it serialises on. The busy CPU per
// transaction, against direct's, is what a relay costs the machine in
// all: unlike the relay process's own CPU, it includes the work the
// kernel does for it, all of a kernel relay's.
func (r *results) writeIdleTable(w io.Writer) {
	writeGrid(w, "The machine's CPU during the run: % left idle [busy CPU µs per transaction, every process and the kernel] (medians; all CPUs, from /proc/stat):", r.workloads, r.peers, func(wl workload, p *peer) string {
		m := median(r.idle[wl.id][p.id])
		if math.IsNaN(m) {
			return "—"
		}
		if b := median(r.busy[wl.id][p.id]); !math.IsNaN(b) {
			return fmt.Sprintf("%.1f [%.0f]", m, b)
		}
		return fmt.Sprintf("%.1f", m)
	})
}

// writeCPUTable prints the relays' CPU time, wait for a CPU and context
// switches per transaction: they move much less than throughput when
// something else loads the machine, and the wait is the relay's share of
// the latency that comes from sharing the CPUs.
func (r *results) writeCPUTable(w io.Writer) {
	var cols []*peer
	for _, p := range r.peers {
		for _, wl := range r.workloads {
			if len(r.cpu[wl.id][p.id]) > 0 {
				cols = append(cols, p)
				break
			}
		}
	}
	if len(cols) == 0 {
		return
	}
	writeGrid(w, "The relay process per transaction: CPU µs / µs waiting for a CPU / context switches (medians; all its threads, from /proc/PID/task/*/{schedstat,status}):", r.workloads, cols, func(wl workload, p *peer) string {
		if m := median(r.cpu[wl.id][p.id]); !math.IsNaN(m) {
			return fmt.Sprintf("%.1f / %.1f / %.2f", m, median(r.wait[wl.id][p.id]), median(r.switches[wl.id][p.id]))
		}
		return "—"
	})
}

// writeGrid prints a Markdown table under heading: a row per workload, a
// column per peer, each cell from cell.
func writeGrid(w io.Writer, heading string, rows []workload, cols []*peer, cell func(workload, *peer) string) {
	fmt.Fprintln(w, heading)
	fmt.Fprintln(w)
	fmt.Fprint(w, "| workload |")
	for _, p := range cols {
		fmt.Fprintf(w, " %s |", p.title)
	}
	fmt.Fprint(w, "\n|---|")
	for range cols {
		fmt.Fprint(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, wl := range rows {
		fmt.Fprintf(w, "| %s |", wl.title)
		for _, p := range cols {
			fmt.Fprintf(w, " %s |", cell(wl, p))
		}
		fmt.Fprintln(w)
	}
}

// median of the values that are not NaN; NaN if there are none.
func median(v []float64) float64 {
	var ok []float64
	for _, x := range v {
		if !math.IsNaN(x) {
			ok = append(ok, x)
		}
	}
	if len(ok) == 0 {
		return math.NaN()
	}
	sort.Float64s(ok)
	n := len(ok)
	if n%2 == 1 {
		return ok[n/2]
	}
	return (ok[n/2-1] + ok[n/2]) / 2
}

// ratio is the median over rounds of peer/direct within the same round,
// so drift on the shared machine between rounds cancels out.
func (r *results) ratio(w workload, p *peer) float64 {
	direct, mine := r.tps[w.id]["direct"], r.tps[w.id][p.id]
	var ratios []float64
	for i := range min(len(direct), len(mine)) {
		if direct[i] > 0 {
			ratios = append(ratios, mine[i]/direct[i])
		} else {
			ratios = append(ratios, math.NaN())
		}
	}
	return median(ratios)
}

// versus compares peer p with peer q round by round: the median over
// rounds of p's throughput over q's in the same round, and in how many
// of the rounds where both ran p was at least level with q. Two relays
// measured minutes apart share the host's drift, so this moves less than
// the difference of their ratios to direct, each of which also carries
// the noise of that round's one direct run.
func (r *results) versus(w workload, p, q string) (ratio float64, ahead, rounds int) {
	ratios := r.pairedRatios(w, p, q)
	for _, x := range ratios {
		if x >= 1 {
			ahead++
		}
	}
	return median(ratios), ahead, len(ratios)
}

// pairedRatios are p's throughput over q's, one per round in which both
// ran.
func (r *results) pairedRatios(w workload, p, q string) []float64 {
	mine, theirs := r.tps[w.id][p], r.tps[w.id][q]
	var ratios []float64
	for i := range min(len(mine), len(theirs)) {
		if mine[i] > 0 && theirs[i] > 0 {
			ratios = append(ratios, mine[i]/theirs[i])
		}
	}
	return ratios
}

// interval is the geometric mean of per-round ratios with its 95%
// confidence interval, from Student's t on their logarithms; ok is false
// with fewer than three rounds. On a host whose rounds move by a tenth, a
// median a few percent off level says little: the interval says whether
// the rounds could as well have come from two equal relays.
func interval(ratios []float64) (mean, lo, hi float64, ok bool) {
	n := len(ratios)
	if n < 3 {
		return 0, 0, 0, false
	}
	logs := make([]float64, n)
	var sum, sq float64
	for i, x := range ratios {
		logs[i] = math.Log(x)
		sum += logs[i]
	}
	m := sum / float64(n)
	for _, l := range logs {
		sq += (l - m) * (l - m)
	}
	half := tQuantile975(n-1) * math.Sqrt(sq/float64(n-1)/float64(n))
	return math.Exp(m), math.Exp(m - half), math.Exp(m + half), true
}

// tQuantile975 is Student's t distribution's 97.5th percentile for df
// degrees of freedom (two-sided 95%); past 30, the normal's.
func tQuantile975(df int) float64 {
	table := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	if df >= 1 && df <= len(table) {
		return table[df-1]
	}
	return 1.960
}

// standing says where p stands against q over the rounds: ahead or
// behind when the 95% interval of the same-round ratio lies wholly on
// that side of level, else level; with its interval, as text.
func (r *results) standing(w workload, p, q string) (string, bool) {
	mean, lo, hi, ok := interval(r.pairedRatios(w, p, q))
	if !ok {
		return "", false
	}
	verdict := "level"
	switch {
	case lo > 1:
		verdict = "ahead"
	case hi < 1:
		verdict = "behind"
	}
	return fmt.Sprintf("%s: %.2f, 95%% %.2f-%.2f", verdict, mean, lo, hi), true
}

// writeVersus prints, for each portcullis peer, its throughput against
// HAProxy's in the same round: the comparison the targets are set in.
func (r *results) writeVersus(w io.Writer) {
	const ref = "haproxy"
	var cols []*peer
	hasRef := false
	for _, p := range r.peers {
		switch {
		case p.id == ref:
			hasRef = true
		case strings.HasPrefix(p.id, "portcullis") || strings.HasPrefix(p.id, "variant-"):
			cols = append(cols, p)
		}
	}
	if !hasRef || len(cols) == 0 {
		return
	}
	heading := "Against HAProxy in the same round: median of portcullis tps ÷ HAProxy tps (rounds at least level, of rounds)" +
		"; from three rounds, where that leaves it (geometric mean and its 95% interval):"
	writeGrid(w, heading, r.workloads, cols, func(wl workload, p *peer) string {
		m, ahead, n := r.versus(wl, p.id, ref)
		if n == 0 {
			return "—"
		}
		cell := fmt.Sprintf("%.2f (%d of %d)", m, ahead, n)
		if st, ok := r.standing(wl, p.id, ref); ok {
			cell += "; " + st
		}
		return cell
	})
}

// floors are the ratios to direct that portcullis (client leg without
// TLS) is to reach on some workloads, besides HAProxy's ratio on every
// one: the stretch figures of the relay, and the login path's.
var floors = []struct {
	workload string
	min      float64
	stretch  bool
}{
	{"select-1", 0.90, true},
	{"select-16", 0.75, true},
	{"connect-8", 0.70, false},
}

// writeTargets checks this run against the targets in
// docs/performance.md: on every workload portcullis's ratio to direct at
// or above HAProxy's, and the floors above. It says nothing when either
// peer was not measured.
func (r *results) writeTargets(w io.Writer) {
	var pc, ha *peer
	for _, p := range r.peers {
		switch p.id {
		case "portcullis":
			pc = p
		case "haproxy":
			ha = p
		}
	}
	if pc == nil || ha == nil {
		return
	}
	type check struct {
		target, measured string
		met              bool
		standing         string // HAProxy's rows: where the rounds leave it
	}
	var checks []check
	for _, wl := range r.workloads {
		mine, theirs := r.ratio(wl, pc), r.ratio(wl, ha)
		if math.IsNaN(mine) || math.IsNaN(theirs) {
			continue
		}
		st, ok := r.standing(wl, pc.id, ha.id)
		if !ok {
			st = "—"
		}
		checks = append(checks, check{wl.title + ": at or above HAProxy's ratio", fmt.Sprintf("%.2f against %.2f", mine, theirs), mine >= theirs, st})
		for _, f := range floors {
			if f.workload == wl.id {
				target := fmt.Sprintf("%s: at least %.2f of direct", wl.title, f.min)
				if f.stretch {
					target += " (stretch)"
				}
				checks = append(checks, check{target, fmt.Sprintf("%.2f", mine), mine >= f.min, "—"})
			}
		}
	}
	if len(checks) == 0 {
		return
	}
	fmt.Fprintln(w, "Targets for portcullis (ratios to direct, medians of this run; docs/performance.md):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | measured | met | against HAProxy, same round |")
	fmt.Fprintln(w, "|---|---:|---|---|")
	met := 0
	for _, c := range checks {
		verdict := "no"
		if c.met {
			verdict, met = "yes", met+1
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", c.target, c.measured, verdict, c.standing)
	}
	fmt.Fprintf(w, "\nMet: %d of %d.\n\n", met, len(checks))
}

// writeTable prints the throughput table in Markdown: median tps and, in
// parentheses, the ratio to direct.
func (r *results) writeTable(w io.Writer, d time.Duration, rounds int) {
	heading := fmt.Sprintf("Throughput in transactions/s, median of %d rounds of %s; (ratio to direct: median of the per-round ratios)", rounds, d)
	writeGrid(w, heading, r.workloads, r.peers, r.cell)
}

func (r *results) cell(wl workload, p *peer) string {
	if e, why := p.endpoint(wl.proto); e == nil {
		return "— (" + why + ")"
	}
	m := median(r.tps[wl.id][p.id])
	if math.IsNaN(m) {
		return "failed"
	}
	if p.id == "direct" {
		return fmt.Sprintf("%.0f", m)
	}
	ratio := r.ratio(wl, p)
	if math.IsNaN(ratio) {
		return fmt.Sprintf("%.0f", m)
	}
	return fmt.Sprintf("%.0f (%.2f)", m, ratio)
}

// writeRounds prints every round's figures, so a reader can see the
// spread behind each median.
func (r *results) writeRounds(w io.Writer) {
	fmt.Fprintln(w, "Every round: tps [relay CPU µs / µs waiting for a CPU / context switches per transaction]:")
	fmt.Fprintln(w)
	for _, wl := range r.workloads {
		for _, p := range r.peers {
			v := r.tps[wl.id][p.id]
			if len(v) == 0 {
				continue
			}
			s := make([]string, len(v))
			cpu, wait, sw := r.cpu[wl.id][p.id], r.wait[wl.id][p.id], r.switches[wl.id][p.id]
			for i, x := range v {
				s[i] = strconv.FormatFloat(x, 'f', 0, 64)
				// Usage is recorded for every successful run, so it
				// lines up with the rounds when no run failed.
				if len(cpu) == len(v) {
					s[i] += fmt.Sprintf(" [%.1f/%.1f/%.2f]", cpu[i], wait[i], sw[i])
				}
			}
			fmt.Fprintf(w, "    %-40s %-15s %s\n", wl.title, p.title, strings.Join(s, "  "))
		}
	}
	for _, wl := range r.workloads {
		for _, p := range r.peers {
			if err := r.errs[wl.id][p.id]; err != nil {
				fmt.Fprintf(w, "\n%s via %s failed: %v\n", wl.title, p.title, err)
			}
		}
	}
}

// tableCell is one parsed cell of the throughput table.
type tableCell struct {
	tps   float64
	ratio float64 // NaN for direct
	ok    bool    // false for "failed" and "—" cells
}

// parseTable reads the throughput table (the first table whose first
// column is "workload") back, by row title and column title. It is the
// inverse of writeTable, for tests and for tools that compare runs.
func parseTable(text string) (map[string]map[string]tableCell, error) {
	var header []string
	out := map[string]map[string]tableCell{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if header != nil {
				break // the end of the table
			}
			continue
		}
		if strings.HasPrefix(line, "|---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if header == nil {
			if cells[0] != "workload" {
				continue
			}
			header = cells
			continue
		}
		if len(cells) != len(header) {
			return nil, fmt.Errorf("row %q has %d cells, the header %d", cells[0], len(cells), len(header))
		}
		row := map[string]tableCell{}
		for i := 1; i < len(cells); i++ {
			c, err := parseCell(cells[i])
			if err != nil {
				return nil, fmt.Errorf("row %q, column %q: %w", cells[0], header[i], err)
			}
			row[header[i]] = c
		}
		out[cells[0]] = row
	}
	if header == nil {
		return nil, fmt.Errorf("no throughput table")
	}
	return out, nil
}

func parseCell(s string) (tableCell, error) {
	if s == "failed" || strings.HasPrefix(s, "—") {
		return tableCell{tps: math.NaN(), ratio: math.NaN()}, nil
	}
	tpsText, ratioText, hasRatio := strings.Cut(s, " (")
	tps, err := strconv.ParseFloat(tpsText, 64)
	if err != nil {
		return tableCell{}, err
	}
	c := tableCell{tps: tps, ratio: math.NaN(), ok: true}
	if hasRatio {
		if c.ratio, err = strconv.ParseFloat(strings.TrimSuffix(ratioText, ")"), 64); err != nil {
			return tableCell{}, err
		}
	}
	return c, nil
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

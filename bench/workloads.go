package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A workload is one load generator run with fixed arguments, measured in
// transactions per second.
type workload struct {
	id    string // flag value
	title string // row label
	proto string // protoPostgres or protoMySQL
	args  []string
}

const (
	protoPostgres = "postgres"
	protoMySQL    = "mysql"
)

// workloads are the rows of the throughput table, in order. pgbench runs
// with -n (no vacuum before each run, so every peer sees the same
// database); the tables are vacuumed once after they are made.
var workloads = []workload{
	{id: "select-1", title: "pgbench -S, 1 client", proto: protoPostgres, args: []string{"-S", "-c", "1", "-j", "1"}},
	{id: "select-16", title: "pgbench -S, 16 clients", proto: protoPostgres, args: []string{"-S", "-c", "16", "-j", "2"}},
	{id: "tpcb-16", title: "pgbench TPC-B, 16 clients", proto: protoPostgres, args: []string{"-c", "16", "-j", "2"}},
	{id: "connect-8", title: "pgbench -S -C, 8 clients (login path)", proto: protoPostgres, args: []string{"-S", "-C", "-c", "8"}},
	{id: "point-select-1", title: "sysbench point select, 1 thread", proto: protoMySQL, args: []string{"--threads=1"}},
	{id: "point-select-16", title: "sysbench point select, 16 threads", proto: protoMySQL, args: []string{"--threads=16"}},
}

func workloadByID(id string) (workload, bool) {
	for _, w := range workloads {
		if w.id == id {
			return w, true
		}
	}
	return workload{}, false
}

// endpoint is where and as whom a load generator connects.
type endpoint struct {
	addr     string // host:port
	user     string
	password string
	database string
	tls      bool
	// tlsDir is where sysbench, which has no options for them, finds
	// its TLS files.
	tlsDir string
}

// A peer is one way of reaching the database: directly, or through a
// relay. A peer may serve only one protocol; for the other its cells say
// why they are empty.
type peer struct {
	id    string
	title string
	pg    *endpoint
	my    *endpoint
	// noPG and noMy say why pg or my is nil, for the table.
	noPG, noMy string
	// pid is the relay's process, whose CPU time per transaction is
	// measured; nil or 0 when there is none to measure.
	pid func() int
}

var peerIDs = []string{"direct", "haproxy", "pgbouncer", "portcullis", "portcullis-tls"}

var peerTitles = map[string]string{
	"direct":         "direct",
	"haproxy":        "HAProxy",
	"pgbouncer":      "PgBouncer",
	"portcullis":     "portcullis",
	"portcullis-tls": "portcullis+TLS",
}

func (p *peer) endpoint(proto string) (*endpoint, string) {
	if proto == protoMySQL {
		return p.my, p.noMy
	}
	return p.pg, p.noPG
}

// generatorEnv is the harness's environment without any PG* or MySQL
// client variable that could redirect a load generator, plus extra.
func generatorEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "MYSQL") || strings.HasPrefix(kv, "LIBMYSQL") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func pgEnv(e *endpoint) []string {
	mode := "disable"
	if e.tls {
		mode = "require"
	}
	return generatorEnv("PGPASSWORD="+e.password, "PGSSLMODE="+mode, "PGCONNECT_TIMEOUT=30")
}

var (
	pgbenchTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	pgbenchCount  = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	sysbenchTPS   = regexp.MustCompile(`transactions:\s+\d+\s+\(([0-9.]+) per sec\.\)`)
	sysbenchCount = regexp.MustCompile(`transactions:\s+(\d+)\s`)
)

// measurement is one run's outcome.
type measurement struct {
	tps  float64
	txns int64
}

// runWorkload runs w against e for d and returns its throughput.
func runWorkload(ctx context.Context, tb toolbox, w workload, e *endpoint, d time.Duration, scale int) (measurement, error) {
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	var cmd *exec.Cmd
	var re, count *regexp.Regexp
	switch w.proto {
	case protoPostgres:
		host, port := splitAddr(e.addr)
		args := append([]string{"-n", "-T", secs, "-h", host, "-p", port, "-U", e.user}, w.args...)
		args = append(args, e.database)
		cmd = exec.CommandContext(ctx, tb.path(toolPgbench), args...)
		cmd.Env = pgEnv(e)
		re, count = pgbenchTPS, pgbenchCount
	case protoMySQL:
		args := append([]string{"oltp_point_select", "--time=" + secs, "--report-interval=0"}, sysbenchConn(e)...)
		args = append(args, sysbenchTable(scale)...)
		args = append(append(args, w.args...), "run")
		cmd = exec.CommandContext(ctx, tb.path(toolSysbench), args...)
		cmd.Env = mysqlEnv()
		cmd.Dir = e.tlsDir
		re, count = sysbenchTPS, sysbenchCount
	default:
		return measurement{}, fmt.Errorf("workload %s: unknown protocol %q", w.id, w.proto)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	m, c := re.FindSubmatch(out.Bytes()), count.FindSubmatch(out.Bytes())
	if err != nil || m == nil || c == nil {
		if err == nil {
			err = errors.New("no throughput in its output")
		}
		return measurement{}, fmt.Errorf("%s against %s: %w\n%s", w.title, e.addr, err, lastLines(out.String(), 8))
	}
	var r measurement
	if r.tps, err = strconv.ParseFloat(string(m[1]), 64); err != nil {
		return r, err
	}
	r.txns, err = strconv.ParseInt(string(c[1]), 10, 64)
	return r, err
}

// usage is what a process has used so far: CPU time of all its
// threads, from the scheduler's per-thread accounting (nanoseconds,
// unlike the clock ticks of /proc/PID/stat), how long its threads were
// ready to run but waited for a CPU, and how often they were switched
// out (voluntary: they slept; involuntary: preempted).
type usage struct {
	cpu      time.Duration
	wait     time.Duration
	switches int64
}

func (u usage) sub(v usage) usage {
	return usage{cpu: u.cpu - v.cpu, wait: u.wait - v.wait, switches: u.switches - v.switches}
}

func processUsage(pid int) (usage, error) {
	var u usage
	if pid <= 0 {
		return u, errors.New("no process")
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return u, err
	}
	for _, t := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s/", pid, t.Name())
		b, err := os.ReadFile(dir + "schedstat")
		if err != nil {
			continue // the thread has just exited
		}
		// On the CPU, waiting on a run queue (both in ns), time slices.
		if f := strings.Fields(string(b)); len(f) >= 2 {
			on, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return u, fmt.Errorf("%sschedstat: %w", dir, err)
			}
			waited, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return u, fmt.Errorf("%sschedstat: %w", dir, err)
			}
			u.cpu += time.Duration(on)
			u.wait += time.Duration(waited)
		}
		status, err := os.ReadFile(dir + "status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.switches += n
			}
		}
	}
	return u, nil
}

// machineCPU is the machine's CPU time so far, all CPUs together, in
// the clock ticks of /proc/stat: busy, and idle (iowait counted as idle).
// Time the hypervisor gave to other guests (steal) is neither.
type machineCPU struct{ busy, idle int64 }

func readMachineCPU() (machineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseMachineCPU(line)
}

// parseMachineCPU reads the first line of /proc/stat: "cpu", then user,
// nice, system, idle, iowait, irq, softirq, steal, guest and guest_nice.
func parseMachineCPU(line string) (machineCPU, error) {
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return machineCPU{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var m machineCPU
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return machineCPU{}, fmt.Errorf("/proc/stat: %w", err)
		}
		switch i {
		case 3, 4:
			m.idle += n
		case 7, 8, 9: // steal; guest time, already in user time
		default:
			m.busy += n
		}
	}
	return m, nil
}

// idleShare is the share of the machine's CPU time left idle between m
// and a later reading n, in percent.
func (m machineCPU) idleShare(n machineCPU) float64 {
	busy, idle := n.busy-m.busy, n.idle-m.idle
	if busy+idle <= 0 {
		return math.NaN()
	}
	return 100 * float64(idle) / float64(busy+idle)
}

// userHZ is the clock tick of /proc/stat: USER_HZ, 100 on every Linux
// architecture the harness runs on.
const userHZ = 100

// busyPer is the machine's busy CPU time between m and a later reading n,
// in µs per transaction: the load generator, the database, the relay,
// and the kernel's work for all of them, softirqs and its own threads
// included.
func (m machineCPU) busyPer(n machineCPU, txns int64) float64 {
	if txns <= 0 {
		return math.NaN()
	}
	return float64(n.busy-m.busy) * (1e6 / userHZ) / float64(txns)
}

func mysqlEnv() []string {
	// No cleartext plugin: without TLS portcullis takes the session key
	// by caching_sha2_password's scramble, as the server would.
	return generatorEnv()
}

func sysbenchConn(e *endpoint) []string {
	host, port := splitAddr(e.addr)
	args := []string{"--db-driver=mysql", "--mysql-host=" + host, "--mysql-port=" + port, "--mysql-user=" + e.user, "--mysql-password=" + e.password, "--mysql-db=" + e.database}
	if e.tls {
		args = append(args, "--mysql-ssl=on")
	}
	return args
}

// sysbenchTable sizes sysbench's one table like pgbench's accounts at the
// same scale factor would be, up to a million rows.
func sysbenchTable(scale int) []string {
	return []string{"--tables=1", "--table-size=" + strconv.Itoa(min(max(scale, 1)*100000, 1000000))}
}

func splitAddr(addr string) (host, port string) {
	i := strings.LastIndexByte(addr, ':')
	return addr[:i], addr[i+1:]
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/internal/testmysql"
	"github.com/portcullisdb/portcullis/internal/testpg"
)

// The tenant of the pool test: one program, pool-loader, in Loaders,
// which is nested in Pipelines, the group both resources map.
const (
	poolTenant      = "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c"
	poolApp         = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d" // portcullis's own registration
	poolGraphSecret = "pool-graph-secret-4d7e"
	poolBotApp      = "b7c6d5e4-f3a2-4b1c-9d0e-1f2a3b4c5d6e"
	poolBotOID      = "44444444-0000-4000-8000-000000000001"
	poolBotName     = "pool-loader"
	poolBotSecret   = "pool-loader-secret-9f3a61"
)

var (
	poolPGRole = testpg.Role{Name: "pool_pg", Password: "pool-pg-backend-pw"}
	poolMyUser = testmysql.User{Name: "pool_my", Password: "pool-my-backend-pw"}
)

func poolDirectory() *entrasim.Directory {
	return &entrasim.Directory{
		Tenant:       entrasim.Tenant{ID: poolTenant, Domain: "pools.example", DisplayName: "pool tests"},
		Applications: []entrasim.Application{{AppID: poolApp, DisplayName: "portcullis", PublicClient: true}},
		Groups: []entrasim.Group{
			{ID: "55555555-0000-4000-8000-000000000001", DisplayName: "Pipelines", Members: entrasim.GroupMembers{Groups: []string{"Loaders"}}},
			{ID: "55555555-0000-4000-8000-000000000002", DisplayName: "Loaders", Members: entrasim.GroupMembers{ServicePrincipals: []string{poolBotName}}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: "44444444-0000-4000-8000-000000000000", AppID: poolApp, DisplayName: "portcullis", Secrets: []string{poolGraphSecret}},
			{ID: poolBotOID, AppID: poolBotApp, DisplayName: poolBotName, Secrets: []string{poolBotSecret}},
		},
	}
}

// Both caches a program's connection meets, the accepted secret and the
// transitive groups, live for the same short TTL, so that each turns over
// several times while the workloads run.
var poolConfig = template.Must(template.New("pools").Parse(`providers:
  - name: pools
    tenant_id: {{.Tenant}}
    client_id: {{.App}}
    authority_host: {{.Sim}}
    graph_endpoint: {{.Sim}}
    graph_auth: application
    client_secret_file: {{.Dir}}/graph-secret
    ca_file: {{.Dir}}/sim-ca.pem
    group_cache_ttl: {{.TTL}}
service_principals:
  cache_ttl: {{.TTL}}
resources:
  - name: pool_pg
    protocol: postgres
    address: {{.PGBackend}}
    database: pooldb
    allow_groups: [Pipelines]
    credentials:
      - groups: [Pipelines]
        user: {{.PGRole}}
        password_file: {{.Dir}}/pg.password
  - name: pool_my
    protocol: mysql
    address: {{.MyBackend}}
    database: sbtest
    allow_groups: [Pipelines]
    credentials:
      - groups: [Pipelines]
        user: {{.MyUser}}
        password_file: {{.Dir}}/my.password
listeners:
  - name: postgres
    protocol: postgres
    address: 127.0.0.1:0
    tls: required
  - name: mysql
    protocol: mysql
    address: 127.0.0.1:0
    tls: required
tls:
  cert_file: {{.Dir}}/listener.crt
  key_file: {{.Dir}}/listener.key
store:
  driver: memory
log:
  format: json
`))

// simTally counts the simulator's requests by what they were for, from
// the one line the simulator logs per request (method, path, status,
// duration and notes such as grant= and client=; never a secret).
type simTally struct {
	mu     sync.Mutex
	grants int // client-credentials grants by the program
	groups int // Graph reads of the program's transitive groups
}

type simCount struct{ grants, groups int }

func (s *simTally) logf(format string, args ...any) {
	f := strings.Fields(fmt.Sprintf(format, args...))
	if len(f) < 5 || f[0] != "entrasim:" {
		return // not a request line
	}
	path, notes := f[2], f[5:]
	has := func(note string) bool {
		for _, n := range notes {
			if n == note {
				return true
			}
		}
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case (strings.HasSuffix(path, "/oauth2/v2.0/token") || strings.HasSuffix(path, "/oauth2/token")) &&
		has("grant=client_credentials") && has("client="+poolBotApp):
		s.grants++
	case strings.HasPrefix(path, "/v1.0/servicePrincipals/"+poolBotOID+"/transitiveMemberOf"):
		s.groups++
	}
}

func (s *simTally) now() simCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return simCount{grants: s.grants, groups: s.groups}
}

// lookTool finds a load generator, skipping the test without it (failing
// under CI=true).
func lookTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found; CI=true requires it", name)
		}
		t.Skipf("\n\n*** SKIPPING: %s not found on $PATH ***\n", name)
	}
	return path
}

// toolEnv is the test's environment without any PG* or MySQL client
// variable that could redirect a load generator, plus extra.
func toolEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "MYSQL") || strings.HasPrefix(kv, "LIBMYSQL") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// toolRun is one load generator's finished run.
type toolRun struct {
	out string // stdout and stderr, the program's secret redacted
	err error
}

func runTool(ctx context.Context, dir string, env []string, bin string, args ...string) toolRun {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir, cmd.Env = dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return toolRun{out: strings.ReplaceAll(out.String(), poolBotSecret, "[secret]"), err: err}
}

var (
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	sysbenchTxns     = regexp.MustCompile(`transactions:\s+(\d+)\s`)
	// sysbench 1.0 reports only the errors it ignored: with
	// --mysql-ignore-errors=none any other error ends the run.
	sysbenchErrors  = regexp.MustCompile(`ignored errors:\s+(\d+)\s`)
	sysbenchReconns = regexp.MustCompile(`reconnects:\s+(\d+)\s`)
)

// capturedInt reads the one number re captures in out, or -1.
func capturedInt(re *regexp.Regexp, out string) int {
	m := re.FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return -1
	}
	return n
}

// Issue 6's acceptance: a program opening a new connection per
// transaction (pgbench -C) and a program holding a pool (sysbench), both
// signing in as one service principal with its client secret, at the same
// time, for 60 s (12 s under -short) through both front doors. Nothing
// fails, and Entra ID and Graph are asked once per TTL, not once per
// connection.
func TestServicePrincipalPools(t *testing.T) {
	pgbench, sysbench := lookTool(t, "pgbench"), lookTool(t, "sysbench")
	duration := 60 * time.Second
	if testing.Short() {
		duration = 12 * time.Second
	}
	ttl := duration / 6
	secs := strconv.Itoa(int(duration / time.Second))

	pg := testpg.Start(t, testpg.Options{Roles: []testpg.Role{poolPGRole}, Setup: []string{"CREATE DATABASE pooldb OWNER " + poolPGRole.Name}})
	my := testmysql.Start(t, testmysql.Options{Databases: []string{"sbtest"}, Users: []testmysql.User{poolMyUser}})
	tally := &simTally{}
	sim, err := entrasim.New(poolDirectory(), entrasim.Options{Logf: tally.logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })

	dir := t.TempDir()
	if err := sim.WriteCAFile(filepath.Join(dir, "sim-ca.pem")); err != nil {
		t.Fatal(err)
	}
	// The listeners' certificate comes from a CA that sysbench is given:
	// sysbench 1.0 takes its TLS files from fixed names in its working
	// directory, and insists on a client pair (which portcullis never
	// asks for).
	ca, err := testpg.NewCA("pool test CA")
	if err != nil {
		t.Fatal(err)
	}
	listenerCert, listenerKey, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := ca.Issue("sysbench")
	if err != nil {
		t.Fatal(err)
	}
	sysbenchDir := filepath.Join(dir, "sysbench")
	if err := os.Mkdir(sysbenchDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for path, b := range map[string][]byte{
		"graph-secret":             []byte(poolGraphSecret + "\n"),
		"pg.password":              []byte(poolPGRole.Password + "\n"),
		"my.password":              []byte(poolMyUser.Password + "\n"),
		"listener.crt":             listenerCert,
		"listener.key":             listenerKey,
		"sysbench/cacert.pem":      ca.CertPEM,
		"sysbench/client-cert.pem": clientCert,
		"sysbench/client-key.pem":  clientKey,
	} {
		if err := os.WriteFile(filepath.Join(dir, path), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "portcullis.yaml")
	var cfgText bytes.Buffer
	if err := poolConfig.Execute(&cfgText, map[string]any{
		"Tenant": poolTenant, "App": poolApp, "Sim": sim.URL(), "Dir": dir, "TTL": ttl.String(),
		"PGBackend": pg.Addr(), "PGRole": poolPGRole.Name, "MyBackend": my.Addr(), "MyUser": poolMyUser.Name,
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, cfgText.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration+3*time.Minute)
	defer cancel()

	// The workloads' tables, made directly on the backends so that the
	// run through portcullis is nothing but the workloads.
	pgHost, pgPort, _ := net.SplitHostPort(pg.Addr())
	if r := runTool(ctx, dir, toolEnv("PGPASSWORD="+poolPGRole.Password, "PGSSLMODE=disable"),
		pgbench, "-i", "-q", "-s", "1", "-h", pgHost, "-p", pgPort, "-U", poolPGRole.Name, "pooldb"); r.err != nil {
		t.Fatalf("pgbench -i: %v\n%s", r.err, r.out)
	}
	sysbenchTable := []string{"oltp_point_select", "--db-driver=mysql", "--tables=1", "--table-size=10000"}
	if r := runTool(ctx, dir, toolEnv(), sysbench, append(sysbenchTable,
		"--mysql-host="+my.Host, "--mysql-port="+strconv.Itoa(my.Port), "--mysql-user="+poolMyUser.Name,
		"--mysql-password="+poolMyUser.Password, "--mysql-db=sbtest", "prepare")...); r.err != nil {
		t.Fatalf("sysbench prepare: %v\n%s", r.err, r.out)
	}

	logs := &syncBuffer{}
	log, err := logging.New(logs, logging.Format(cfg.Log.Format), cfg.Log.Level)
	if err != nil {
		t.Fatal(err)
	}
	proxyCtx, stopProxy := context.WithCancel(ctx)
	ready := make(chan []net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- runProxy(proxyCtx, cfg, log, nil, func(addrs []net.Addr) { ready <- addrs }, &configSource{path: cfgPath})
	}()
	var addrs []net.Addr
	select {
	case addrs = <-ready:
	case err := <-served:
		t.Fatalf("portcullis stopped before serving: %v\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		stopProxy()
		if err := <-served; err != nil {
			t.Errorf("portcullis: %v", err)
		}
		if t.Failed() {
			t.Logf("portcullis log (last lines):\n%s", tailLines(logs.String(), 40))
		}
	})
	_, pgListen, _ := net.SplitHostPort(addrs[0].String())
	_, myListen, _ := net.SplitHostPort(addrs[1].String())

	before := tally.now()
	endpoints := []entrasim.Endpoint{entrasim.EndpointDiscovery, entrasim.EndpointDeviceCode, entrasim.EndpointToken, entrasim.EndpointKeys, entrasim.EndpointGraph}
	requestsBefore := map[entrasim.Endpoint]int{}
	for _, ep := range endpoints {
		requestsBefore[ep] = sim.Requests(ep)
	}
	start := time.Now()
	var pgRun, myRun toolRun
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		pgRun = runTool(ctx, dir, toolEnv("PGPASSWORD="+poolBotSecret, "PGSSLMODE=require", "PGCONNECT_TIMEOUT=30"),
			pgbench, "-n", "-S", "-C", "-c", "2", "-j", "2", "-T", secs, "-h", "127.0.0.1", "-p", pgListen, "-U", poolBotApp, "pool_pg")
	}()
	go func() {
		defer wg.Done()
		myRun = runTool(ctx, sysbenchDir, toolEnv(), sysbench, append(sysbenchTable,
			"--mysql-host=127.0.0.1", "--mysql-port="+myListen, "--mysql-user="+poolBotApp, "--mysql-password="+poolBotSecret,
			"--mysql-db=pool_my", "--mysql-ssl=on", "--mysql-ignore-errors=none",
			"--threads=2", "--time="+secs, "--report-interval=0", "run")...)
	}()
	wg.Wait()
	elapsed := time.Since(start)
	used := tally.now()
	grants, groups := used.grants-before.grants, used.groups-before.groups

	// The workloads: no failure of any kind, and real work done.
	pgTxns, pgFailed := capturedInt(pgbenchProcessed, pgRun.out), capturedInt(pgbenchFailed, pgRun.out)
	if pgRun.err != nil || pgTxns <= 0 || pgFailed != 0 || strings.Contains(pgRun.out, "aborted") {
		t.Errorf("pgbench -C: %v; %d transactions, %d failed\n%s", pgRun.err, pgTxns, pgFailed, tailLines(pgRun.out, 20))
	}
	myTxns, myErrors, myReconnects := capturedInt(sysbenchTxns, myRun.out), capturedInt(sysbenchErrors, myRun.out), capturedInt(sysbenchReconns, myRun.out)
	if myRun.err != nil || myTxns <= 0 || myErrors != 0 || myReconnects != 0 {
		t.Errorf("sysbench: %v; %d transactions, %d errors, %d reconnects\n%s", myRun.err, myTxns, myErrors, myReconnects, tailLines(myRun.out, 30))
	}

	// portcullis's side of it: every connection signed in as the program
	// by its secret, none refused.
	signIns := map[string]int{}
	var refused []string
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		switch m["event"] {
		case "auth.succeeded":
			if m["method"] == "service_principal" && m["oid"] == poolBotOID {
				signIns[fmt.Sprint(m["resource"])]++
			}
		case "auth.failed", "authz.denied", "conn.refused", "backend.failed":
			refused = append(refused, sc.Text())
		}
	}
	if len(refused) > 0 {
		t.Errorf("%d connections were refused or failed, the first:\n%s", len(refused), refused[0])
	}
	if signIns["pool_pg"] < pgTxns {
		t.Errorf("portcullis signed the program in %d times on pool_pg, fewer than pgbench's %d connections", signIns["pool_pg"], pgTxns)
	}
	if signIns["pool_my"] < 2 {
		t.Errorf("portcullis signed the program in %d times on pool_my, want sysbench's 2 threads", signIns["pool_my"])
	}

	// Entra ID and Graph: one grant and one group read per TTL at most,
	// whatever the number of connections.
	limit := int(math.Ceil(float64(elapsed)/float64(ttl))) + 1
	connections := signIns["pool_pg"] + signIns["pool_my"]
	if connections <= 3*limit {
		t.Errorf("only %d connections in %v: too few to tell one grant per TTL from one per connection", connections, elapsed.Round(time.Second))
	}
	if grants < 1 || grants > limit {
		t.Errorf("%d connections over %v cost %d token grants of the program's secret, want 1 to %d (one per cache_ttl %v)",
			connections, elapsed.Round(time.Second), grants, limit, ttl)
	}
	// The run outlasts several TTLs: a secret accepted once must be
	// checked with Entra ID again, or a revoked secret would never be
	// noticed.
	if grants < 2 {
		t.Errorf("%d token grant(s) in %v with cache_ttl %v: the accepted secret was never checked again", grants, elapsed.Round(time.Second), ttl)
	}
	if groups < 1 || groups > limit {
		t.Errorf("%d connections over %v cost %d Graph reads of the program's groups, want 1 to %d (one per TTL %v)",
			connections, elapsed.Round(time.Second), groups, limit, ttl)
	}
	// Nor does anything else the simulator serves cost a request per
	// connection.
	for _, ep := range endpoints {
		if n := sim.Requests(ep) - requestsBefore[ep]; n > limit {
			t.Errorf("%d connections cost %d requests to the simulator's %s endpoint, want at most %d", connections, n, ep, limit)
		}
	}
	t.Logf("%v (cache_ttl and group_cache_ttl %v): pgbench -C %d transactions, sysbench %d transactions; %d sign-ins on pool_pg, %d on pool_my; %d token grants, %d Graph group reads (limit %d each)",
		elapsed.Round(time.Millisecond), ttl, pgTxns, myTxns, signIns["pool_pg"], signIns["pool_my"], grants, groups, limit)
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// tool is an outside program the harness drives. The harness installs
// nothing: it looks for each tool it needs and, when some are missing,
// says which Debian packages provide them.
type tool struct {
	name string // executable name
	pkg  string // Debian package that provides it
}

var (
	toolPostgres     = tool{"postgres", "postgresql-15"}
	toolPgbench      = tool{"pgbench", "postgresql-contrib"}
	toolHAProxy      = tool{"haproxy", "haproxy"}
	toolPgBouncer    = tool{"pgbouncer", "pgbouncer"}
	toolSysbench     = tool{"sysbench", "sysbench"}
	toolMariadbd     = tool{"mariadbd", "mariadb-server"}
	toolMariadbSetup = tool{"mariadb-install-db", "mariadb-server"}
	toolMariadb      = tool{"mariadb", "mariadb-client"}
	toolGo           = tool{"go", "the Go toolchain (or pass -portcullis BINARY)"}
)

// lookTool finds t on $PATH, then in the sbin directories daemons live in
// (not on a non-root user's $PATH), then among PostgreSQL's versioned
// binaries.
func lookTool(t tool) (string, bool) {
	if p, err := exec.LookPath(t.name); err == nil {
		return p, true
	}
	dirs := []string{"/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/go/bin"}
	pg, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(pg)))
	for _, d := range append(dirs, pg...) {
		p := filepath.Join(d, t.name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// need records what a run requires and why.
type need struct {
	tool tool
	why  string
}

// toolbox is every tool found, by name.
type toolbox map[string]string

func (tb toolbox) path(t tool) string { return tb[t.name] }

// findTools looks for everything needs lists. It returns the tools found
// and, if any is missing, an error that lists them with their packages
// and an apt-get line.
func findTools(needs []need) (toolbox, error) {
	tb := toolbox{}
	missing := map[string][]string{} // tool → what needs it
	var order []tool
	for _, n := range needs {
		if _, done := tb[n.tool.name]; done {
			continue
		}
		if p, ok := lookTool(n.tool); ok {
			tb[n.tool.name] = p
			continue
		}
		if _, seen := missing[n.tool.name]; !seen {
			order = append(order, n.tool)
		}
		missing[n.tool.name] = append(missing[n.tool.name], n.why)
	}
	if len(order) == 0 {
		return tb, nil
	}
	var b strings.Builder
	b.WriteString("missing tools (the harness installs nothing itself):\n")
	pkgs := map[string]bool{}
	var pkgList []string
	for _, t := range order {
		fmt.Fprintf(&b, "  %-20s from %-22s needed for %s\n", t.name, t.pkg, strings.Join(dedupe(missing[t.name]), ", "))
		if !strings.Contains(t.pkg, " ") && !pkgs[t.pkg] {
			pkgs[t.pkg] = true
			pkgList = append(pkgList, t.pkg)
		}
	}
	if len(pkgList) > 0 {
		fmt.Fprintf(&b, "install them with:\n  apt-get install -y %s\n", strings.Join(pkgList, " "))
	}
	b.WriteString("or leave out what needs them with -peers and -workloads")
	return tb, &missingToolsError{msg: b.String()}
}

// missingToolsError is a run that cannot start for want of tools; main
// exits with status 3 for it.
type missingToolsError struct{ msg string }

func (e *missingToolsError) Error() string { return e.msg }

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// toolVersion is the first line a tool prints about its version, for the
// report's header.
func toolVersion(path string, args ...string) string {
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// machine describes the host for the report.
func machine(w io.Writer) {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	release := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		release = strings.TrimSpace(string(b))
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		if f := strings.Fields(line); len(f) > 1 {
			mem = strings.Join(f[1:], " ")
		}
	}
	fmt.Fprintf(w, "machine: %d CPUs (%s), %s memory, Linux %s\n", numCPU(), cpu, mem, release)
}

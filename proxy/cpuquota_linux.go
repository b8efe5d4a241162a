package proxy

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// Where the process's cgroup is named, and where the unified (v2)
// hierarchy is mounted; tests point them at trees of their own.
var (
	selfCgroupFile = "/proc/self/cgroup"
	cgroupRoot     = "/sys/fs/cgroup"
)

// warnBusyPollQuota warns when busy polling is on in a cgroup with a CPU
// quota: the looking spends the quota, and the spare-CPU guard cannot
// see it (/proc/loadavg counts the host's tasks, not the container's),
// so a loop can poll while the container is being throttled.
func warnBusyPollQuota(log *zap.Logger, busyPoll time.Duration, relayThreads int) {
	if busyPoll <= 0 || relayThreads < 0 {
		return
	}
	if cpus, ok := cgroupCPUQuota(selfCgroupFile, cgroupRoot); ok {
		log.Warn("busy polling is on under a CPU quota, which the polling spends; see docs/operating.md",
			logging.Event("proxy.busy_poll_under_quota"), zap.Duration("busy_poll", busyPoll), zap.Float64("cpu_quota", cpus))
	}
}

// cgroupCPUQuota is the CPU limit, in CPUs, of the cgroup v2 group the
// process runs in: the lowest quota in cpu.max on the way from its group
// up to root, the mount point of the unified hierarchy. ok is false when
// there is none, or the process is not in a cgroup v2 group (version 1
// hierarchies are not looked at).
func cgroupCPUQuota(selfCgroup, root string) (cpus float64, ok bool) {
	b, err := os.ReadFile(selfCgroup)
	if err != nil {
		return 0, false
	}
	group, found := "", false
	for _, line := range strings.Split(string(b), "\n") {
		if group, found = strings.CutPrefix(line, "0::"); found {
			break
		}
	}
	if !found {
		return 0, false
	}
	root = filepath.Clean(root)
	cpus = math.Inf(1)
	for dir := filepath.Join(root, group); strings.HasPrefix(dir, root); dir = filepath.Dir(dir) {
		if q, limited := cpuMax(filepath.Join(dir, "cpu.max")); limited {
			cpus = min(cpus, q)
		}
		if dir == root {
			break
		}
	}
	return cpus, !math.IsInf(cpus, 1)
}

// cpuMax reads a cpu.max file ("QUOTA PERIOD" in microseconds, or "max
// PERIOD" for none) as CPUs.
func cpuMax(path string) (float64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	quota, err1 := strconv.ParseFloat(f[0], 64)
	period, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil || quota <= 0 || period <= 0 {
		return 0, false
	}
	return quota / period, true
}

package proxy

import (
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// cgroupTree writes a /proc/self/cgroup naming self and, under a root of
// its own, the cpu.max files given by group path.
func cgroupTree(t *testing.T, self string, cpuMax map[string]string) (selfFile, root string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "cgroup")
	selfFile = filepath.Join(dir, "self-cgroup")
	if err := os.WriteFile(selfFile, []byte(self), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for group, content := range cpuMax {
		d := filepath.Join(root, group)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cpu.max"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return selfFile, root
}

func TestCgroupCPUQuota(t *testing.T) {
	const v2 = "0::/kubepods/pod1/ctr\n"
	tests := []struct {
		name   string
		self   string
		cpuMax map[string]string
		want   float64 // 0: no quota
	}{
		{name: "no limit anywhere", self: v2, cpuMax: map[string]string{"kubepods/pod1/ctr": "max 100000\n", "kubepods": "max 100000\n"}},
		{name: "limit on its own group", self: v2, cpuMax: map[string]string{"kubepods/pod1/ctr": "150000 100000\n"}, want: 1.5},
		{name: "a parent's lower limit wins", self: v2, cpuMax: map[string]string{"kubepods/pod1/ctr": "400000 100000\n", "kubepods/pod1": "50000 100000\n"}, want: 0.5},
		{name: "a parent's higher limit does not", self: v2, cpuMax: map[string]string{"kubepods/pod1/ctr": "200000 100000\n", "kubepods": "800000 100000\n"}, want: 2},
		{name: "namespaced: its group is the root", self: "0::/\n", cpuMax: map[string]string{".": "100000 100000\n"}, want: 1},
		{name: "cgroup v1 only", self: "4:memory:/x\n1:cpu:/x\n", cpuMax: map[string]string{"x": "100000 100000\n"}},
		{name: "unreadable cpu.max", self: v2, cpuMax: map[string]string{"kubepods/pod1/ctr": "lots\n"}},
		{name: "hybrid: v1 lines before the v2 one", self: "1:cpu:/\n0::/kubepods/pod1/ctr\n", cpuMax: map[string]string{"kubepods/pod1/ctr": "25000 100000\n"}, want: 0.25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			self, root := cgroupTree(t, tt.self, tt.cpuMax)
			got, ok := cgroupCPUQuota(self, root)
			if ok != (tt.want != 0) || (ok && math.Abs(got-tt.want) > 1e-9) {
				t.Errorf("cgroupCPUQuota = %v, %v; want %v, %v", got, ok, tt.want, tt.want != 0)
			}
		})
	}
	if _, ok := cgroupCPUQuota(filepath.Join(t.TempDir(), "absent"), "/sys/fs/cgroup"); ok {
		t.Error("a missing /proc/self/cgroup reported a quota")
	}
}

// Busy polling under a quota is logged once, at start, and only when the
// loops would poll.
func TestBusyPollQuotaWarning(t *testing.T) {
	oldSelf, oldRoot := selfCgroupFile, cgroupRoot
	t.Cleanup(func() { selfCgroupFile, cgroupRoot = oldSelf, oldRoot })
	selfCgroupFile, cgroupRoot = cgroupTree(t, "0::/svc\n", map[string]string{"svc": "150000 100000\n"})

	for _, tt := range []struct {
		name     string
		busyPoll time.Duration
		threads  int
		warned   bool
	}{
		{name: "busy polling on", busyPoll: 100 * time.Microsecond, threads: 0, warned: true},
		{name: "busy polling off", busyPoll: 0, threads: 0},
		{name: "no event loop", busyPoll: 100 * time.Microsecond, threads: -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			warnBusyPollQuota(zap.New(core), tt.busyPoll, tt.threads)
			got := logs.FilterField(zap.String("event", "proxy.busy_poll_under_quota")).All()
			if !tt.warned {
				if len(got) != 0 {
					t.Errorf("warned: %v", got)
				}
				return
			}
			if len(got) != 1 || got[0].Level != zapcore.WarnLevel {
				t.Fatalf("want one warning, got %v", logs.All())
			}
			if q := got[0].ContextMap()["cpu_quota"]; q != 1.5 {
				t.Errorf("cpu_quota = %v, want 1.5", q)
			}
		})
	}
}

package testpg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// cpuCgroupRoot is where the cgroup v1 cpu controller is mounted.
const cpuCgroupRoot = "/sys/fs/cgroup/cpu"

// ConfineCPU puts the server's processes, those it runs now and those it
// starts later, in a CPU control group of their own with the given share
// (cgroup v1 cpu.shares: 1024 is what a process of its own gets). The
// kernel then weighs the whole server as one competitor for the CPUs
// rather than each of its processes as one: a test that runs hundreds of
// sessions on a small machine, and measures something other than the
// database, keeps the database from crowding it out by numbers, as a
// database on a machine of its own could not. The group is removed by
// Stop. It needs the cpu controller and the right to make a group (root).
func (s *Server) ConfineCPU(shares int) error {
	if _, err := os.Stat(filepath.Join(cpuCgroupRoot, "cpu.shares")); err != nil {
		return fmt.Errorf("confine the server's CPU: no cgroup v1 cpu controller: %w", err)
	}
	dir := filepath.Join(cpuCgroupRoot, fmt.Sprintf("testpg-%d", s.Port))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("confine the server's CPU: %w", err)
	}
	s.cgroup = dir
	if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(shares)), 0o644); err != nil {
		return fmt.Errorf("confine the server's CPU: %w", err)
	}
	postmaster := s.cmd.Process.Pid
	for _, pid := range append([]int{postmaster}, ChildrenOf(postmaster)...) {
		err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
		if err != nil && !errors.Is(err, syscall.ESRCH) { // a process that has ended needs no moving
			return fmt.Errorf("confine the server's CPU: process %d: %w", pid, err)
		}
	}
	return nil
}

// ChildrenOf lists the processes whose parent is pid (a server's
// postmaster's, say, for a test that kills or confines them all).
func ChildrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) > 1 {
			if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == pid {
				out = append(out, child)
			}
		}
	}
	return out
}

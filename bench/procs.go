package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a server the harness started and must stop: HAProxy,
// PgBouncer, MariaDB, or a portcullis binary.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// startChild starts cmd with its output in logPath. The child is killed if
// the harness dies, so no server outlives an interrupted run.
func startChild(name string, cmd *exec.Cmd, logPath string) (*child, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: create log: %w", name, err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	c := &child{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the forking thread exits: keep it alive as
		// long as the child runs.
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err != nil {
			runtime.UnlockOSThread()
			logFile.Close()
			return
		}
		c.waitErr = cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, cmd.Path, err)
	}
	return c, nil
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// running reports whether the child has not exited.
func (c *child) running() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// stop asks the child to end (SIGTERM), then kills it after a grace.
func (c *child) stop() error {
	if !c.running() {
		return nil
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	c.cmd.Process.Kill()
	<-c.exited
	return fmt.Errorf("%s did not stop within 10s and was killed", c.name)
}

// logTail is the end of the child's output, for error messages.
func (c *child) logTail() string {
	return fileTail(c.logPath, 3000)
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// waitTCP waits until addr accepts connections, failing early if the
// child exits.
func (c *child) waitTCP(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited during start-up (%v):\n%s", c.name, c.waitErr, c.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %s within 30s: %w\n%s", c.name, addr, err, c.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freePort finds a loopback port nobody listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// serviceUser is the account daemons that refuse root (PgBouncer,
// mariadbd) run as when the harness is root: nil when it is not root.
func serviceUser(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root and there is no %s user to run the server as: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s has a non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// handOver gives dir and everything in it to cred (when not nil).
func handOver(cred *syscall.Credential, dir string) error {
	if cred == nil {
		return nil
	}
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("hand %s over: %w", p, err)
		}
		return nil
	})
}

// runQuiet runs cmd and returns its combined output in the error when it
// fails.
func runQuiet(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", commandLine(cmd.Args), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// commandLine shows args for an error message with any password flag's
// value left out.
func commandLine(args []string) string {
	shown := make([]string, len(args))
	for i, a := range args {
		if k, _, ok := strings.Cut(a, "="); ok && strings.Contains(strings.ToLower(k), "password") {
			a = k + "=[redacted]"
		}
		shown[i] = a
	}
	return strings.Join(shown, " ")
}

// errSkipped marks a measurement that was not made because something it
// needs is missing; the report says so instead of failing the run.
var errSkipped = errors.New("skipped")

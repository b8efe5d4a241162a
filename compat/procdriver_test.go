package compat

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// procDriver drives a client program under clients/ (pgjdbc, psycopg2,
// node-postgres) through the line protocol its programs share.
//
// Commands, one per line on its stdin, fields separated by tabs:
//
//	version
//	connect   <database> <user> <password> <CA file>
//	query     <sql>
//	prepared  <sql> <check sql> <comma-separated int args>
//	rollback  <insert sql> <count sql>
//	cancel    <sql>            answered by a "started" message; the
//	                           program then waits for a line "go" and cancels
//	close
//
// Answers, one JSON object per line on stdout: {"type":"notice",
// "message"} for each notice the client surfaced, {"type":"started"}, and
// last {"type":"reply","ok",...} with the result fields of procMsg or
// {"ok":false,"code","message"}. Before each reply the program writes the
// line "compat-sync" to stderr, so that whatever libpq printed on stderr
// before it (notices while connecting) has been read when the reply is
// handled.
type procDriver struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	msgs   chan procMsg
	syncs  chan struct{}
	exited chan struct{}
	stderr *tailBuffer

	mu       sync.Mutex
	onNotice func(string)
}

// procMsg is one answer line.
type procMsg struct {
	Type    string   `json:"type"`
	OK      bool     `json:"ok"`
	Code    string   `json:"code"`
	Message string   `json:"message"`
	Version string   `json:"version"`
	Count   int      `json:"count"`
	SHA256  string   `json:"sha256"`
	First   []string `json:"first"`
	Results []string `json:"results"`
	Check   string   `json:"check"`
	Inside  string   `json:"inside"`
	After   string   `json:"after"`
	Millis  int64    `json:"ms"`
}

// startProc starts a client program; it is killed when t ends.
func startProc(t *testing.T, name string, cmd *exec.Cmd) (*procDriver, error) {
	d := &procDriver{name: name, cmd: cmd, msgs: make(chan procMsg, 16), syncs: make(chan struct{}, 16), exited: make(chan struct{}), stderr: &tailBuffer{}}
	var err error
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var m procMsg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				d.stderr.Write([]byte("(stdout) " + sc.Text() + "\n"))
				continue
			}
			if m.Type == "notice" {
				d.notice(m.Message)
				continue
			}
			d.msgs <- m
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if line == "compat-sync" {
				d.syncs <- struct{}{}
				continue
			}
			d.stderr.Write([]byte(line + "\n"))
			// libpq prints the notices it gets while connecting here.
			d.notice(line)
		}
	}()
	go func() {
		readers.Wait()
		cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stdin.Close()
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("%s stderr (last lines):\n%s", name, redact(d.stderr.String()))
		}
	})
	return d, nil
}

func (d *procDriver) notice(msg string) {
	d.mu.Lock()
	f := d.onNotice
	d.mu.Unlock()
	if f != nil {
		f(msg)
	}
}

// call sends one command and waits for its reply. onStarted, if not nil,
// runs when the program says the statement is under way; "go" is sent
// after it returns.
func (d *procDriver) call(ctx context.Context, onStarted func(context.Context) error, fields ...string) (procMsg, error) {
	for _, f := range fields {
		if strings.ContainsAny(f, "\t\n") {
			return procMsg{}, fmt.Errorf("%s: a command field holds a tab or newline", d.name)
		}
	}
	if _, err := io.WriteString(d.stdin, strings.Join(fields, "\t")+"\n"); err != nil {
		return procMsg{}, fmt.Errorf("%s: send %s: %w", d.name, fields[0], err)
	}
	var startErr error
	for {
		select {
		case m := <-d.msgs:
			switch m.Type {
			case "started":
				if onStarted != nil {
					startErr = onStarted(ctx)
				}
				if _, err := io.WriteString(d.stdin, "go\n"); err != nil {
					return procMsg{}, fmt.Errorf("%s: send go: %w", d.name, err)
				}
				continue
			case "reply":
			default:
				return procMsg{}, fmt.Errorf("%s: unexpected %q message", d.name, m.Type)
			}
			select {
			case <-d.syncs:
			case <-ctx.Done():
				return procMsg{}, fmt.Errorf("%s: %s: no sync line on stderr: %w", d.name, fields[0], ctx.Err())
			}
			if startErr != nil {
				return m, startErr
			}
			if !m.OK {
				return m, &dbError{code: m.Code, message: m.Message}
			}
			return m, nil
		case <-d.exited:
			return procMsg{}, fmt.Errorf("%s exited during %s: %s", d.name, fields[0], firstLine(redact(d.stderr.String())))
		case <-ctx.Done():
			// The program is stuck: it cannot be used again.
			d.cmd.Process.Kill()
			return procMsg{}, fmt.Errorf("%s: %s: %w", d.name, fields[0], ctx.Err())
		}
	}
}

func (d *procDriver) version(ctx context.Context) (string, error) {
	m, err := d.call(ctx, nil, "version")
	return m.Version, err
}

func (d *procDriver) connect(ctx context.Context, p connectParams) error {
	d.mu.Lock()
	d.onNotice = p.onNotice
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.onNotice = nil
		d.mu.Unlock()
	}()
	_, err := d.call(ctx, nil, "connect", p.resource, p.user, p.password, p.caFile)
	return err
}

func (d *procDriver) query(ctx context.Context, sql string) (rowSet, error) {
	m, err := d.call(ctx, nil, "query", sql)
	if err != nil {
		return rowSet{}, err
	}
	return rowSet{count: m.Count, sum: m.SHA256, first: m.First}, nil
}

func (d *procDriver) prepared(ctx context.Context, sql string, args []int, check string) ([]string, string, error) {
	a := make([]string, len(args))
	for i, v := range args {
		a[i] = strconv.Itoa(v)
	}
	m, err := d.call(ctx, nil, "prepared", sql, check, strings.Join(a, ","))
	if err != nil {
		return nil, "", err
	}
	return m.Results, m.Check, nil
}

func (d *procDriver) rollback(ctx context.Context, insert, count string) (string, string, error) {
	m, err := d.call(ctx, nil, "rollback", insert, count)
	if err != nil {
		return "", "", err
	}
	return m.Inside, m.After, nil
}

func (d *procDriver) cancel(ctx context.Context, sql string, running func(context.Context) error) (time.Duration, error) {
	m, err := d.call(ctx, running, "cancel", sql)
	return time.Duration(m.Millis) * time.Millisecond, err
}

func (d *procDriver) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.call(ctx, nil, "close")
}

// tailBuffer keeps the last 16 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - 16<<10; over > 0 {
		b.buf = b.buf[over:]
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// procEnv is the environment of a client program: the test's, without
// the PG* variables libpq would pick up.
func procEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// startDriverProc starts a program and asks its version.
func startDriverProc(t *testing.T, s *suite, dl *dialect, name string, cmd *exec.Cmd) (driver, string, error) {
	cmd.Env = procEnv("COMPAT_HOST="+s.host, "COMPAT_PORT="+strconv.Itoa(dl.port))
	d, err := startProc(t, name, cmd)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := d.version(ctx)
	if err != nil {
		var dbErr *dbError
		if errors.As(err, &dbErr) {
			// The program runs but its driver is missing.
			return nil, "", err
		}
		t.Fatalf("%s: %v", name, err)
	}
	return d, v, nil
}

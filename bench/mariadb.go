package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// mariaDB is a throwaway MariaDB server in a directory of its own, on a
// free loopback port, with a bench user and an sbtest database.
type mariaDB struct {
	port   int
	socket string
	proc   *child
	client string // the mariadb CLI
}

func (m *mariaDB) addr() string { return loopback(m.port) }

// launchMariaDB initialises a data directory under dir and starts
// mariadbd on it, taking at least maxConns connections; the bench user
// gets password.
func launchMariaDB(ctx context.Context, tb toolbox, dir, password string, maxConns int) (*mariaDB, error) {
	cred, err := serviceUser("mysql")
	if err != nil {
		return nil, fmt.Errorf("MariaDB: %w", err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	if err := handOver(cred, dir); err != nil {
		return nil, err
	}
	userFlag := func() []string {
		if cred != nil {
			return []string{"--user=mysql"}
		}
		return nil
	}
	install := exec.CommandContext(ctx, tb.path(toolMariadbSetup), append([]string{
		"--no-defaults", "--datadir=" + data, "--auth-root-authentication-method=normal", "--skip-test-db",
	}, userFlag()...)...)
	if err := runQuiet(install); err != nil {
		return nil, fmt.Errorf("MariaDB: initialise the data directory: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &mariaDB{port: port, socket: filepath.Join(dir, "mysqld.sock"), client: tb.path(toolMariadb)}
	args := append([]string{
		"--no-defaults",
		"--datadir=" + data,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--socket=" + m.socket,
		"--pid-file=" + filepath.Join(dir, "mysqld.pid"),
		"--skip-name-resolve",
		"--skip-log-bin",
		// Durability is pointless for a throwaway server.
		"--innodb-flush-log-at-trx-commit=0",
		"--innodb-buffer-pool-size=256M",
		// One thread per connection, as a default install has: the idle
		// memory measurement holds one per session it opens.
		"--max-connections=" + strconv.Itoa(max(2000, maxConns)),
	}, userFlag()...)
	cmd := exec.Command(tb.path(toolMariadbd), args...)
	if m.proc, err = startChild("mariadbd", cmd, filepath.Join(dir, "mariadbd.log")); err != nil {
		return nil, err
	}
	if err := m.proc.waitTCP(ctx, m.addr()); err != nil {
		m.proc.stop()
		return nil, err
	}
	// The bench user may connect from anywhere on loopback: directly,
	// through HAProxy, or through portcullis.
	setup := fmt.Sprintf(`CREATE DATABASE sbtest;
CREATE USER 'bench'@'127.0.0.1' IDENTIFIED BY '%s';
GRANT ALL ON sbtest.* TO 'bench'@'127.0.0.1';
`, strings.ReplaceAll(password, "'", "''"))
	if err := m.exec(ctx, setup); err != nil {
		m.proc.stop()
		return nil, err
	}
	return m, nil
}

// exec runs sql as root over the socket, the statements on stdin so that
// no password appears in a command line.
func (m *mariaDB) exec(ctx context.Context, sql string) error {
	cmd := exec.CommandContext(ctx, m.client, "--no-defaults", "--socket="+m.socket, "--user=root")
	cmd.Stdin = strings.NewReader(sql)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := runQuiet(cmd); err != nil {
		return fmt.Errorf("MariaDB setup: %w", err)
	}
	return nil
}

func (m *mariaDB) stop() error { return m.proc.stop() }

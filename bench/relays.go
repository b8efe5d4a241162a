package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/template"
)

// The peers' configurations are ../shared/bench's reference ones with the
// ports the harness chose: HAProxy as a plain TCP relay, PgBouncer in
// session mode.

var haproxyConfig = template.Must(template.New("haproxy").Parse(`global
  maxconn {{.MaxConn}}
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen pg
  bind {{.PGListen}}
  server pg {{.PGServer}}
{{- if .MyServer}}
listen my
  bind {{.MyListen}}
  server my {{.MyServer}}
{{- end}}
`))

var pgbouncerConfig = template.Must(template.New("pgbouncer").Parse(`[databases]
bench = host=127.0.0.1 port={{.PGPort}} dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {{.Port}}
unix_socket_dir =
auth_type = trust
auth_file = {{.Dir}}/userlist.txt
pool_mode = session
max_client_conn = 20000
default_pool_size = 200
`))

// startHAProxy relays pgListen to pgServer and, if myServer is set,
// myListen to myServer.
func startHAProxy(ctx context.Context, tb toolbox, dir, pgListen, pgServer, myListen, myServer string) (*child, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	f, err := os.Create(cfg)
	if err != nil {
		return nil, err
	}
	// The reference's maxconn 20000 needs twice as many descriptors; where
	// the open-file limit is lower (and cannot be raised), HAProxy refuses
	// to start, so fit it under the limit. No workload comes near it.
	maxConn := min(20000, (fdLimit()-100)/2)
	err = haproxyConfig.Execute(f, map[string]any{"MaxConn": maxConn, "PGListen": pgListen, "PGServer": pgServer, "MyListen": myListen, "MyServer": myServer})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write haproxy.cfg: %w", err)
	}
	// -db: stay in the foreground so the harness owns the process.
	c, err := startChild("haproxy", exec.Command(tb.path(toolHAProxy), "-db", "-f", cfg), filepath.Join(dir, "haproxy.log"))
	if err != nil {
		return nil, err
	}
	if err := c.waitTCP(ctx, pgListen); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// startPgBouncer pools connections to the bench database on pgPort. The
// bench role's password is in its auth file: with auth_type trust it is
// what PgBouncer logs in to PostgreSQL with.
func startPgBouncer(ctx context.Context, tb toolbox, dir string, port, pgPort int, password string) (*child, error) {
	cred, err := serviceUser("postgres") // PgBouncer refuses to run as root
	if err != nil {
		return nil, fmt.Errorf("PgBouncer: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	users := fmt.Sprintf("%q %q\n", "bench", password)
	if err := os.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(users), 0o600); err != nil {
		return nil, err
	}
	ini := filepath.Join(dir, "pgbouncer.ini")
	f, err := os.Create(ini)
	if err != nil {
		return nil, err
	}
	err = pgbouncerConfig.Execute(f, map[string]any{"Port": port, "PGPort": pgPort, "Dir": dir})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write pgbouncer.ini: %w", err)
	}
	if err := handOver(cred, dir); err != nil {
		return nil, err
	}
	cmd := exec.Command(tb.path(toolPgBouncer), ini)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	c, err := startChild("pgbouncer", cmd, filepath.Join(dir, "pgbouncer.log"))
	if err != nil {
		return nil, err
	}
	if err := c.waitTCP(ctx, loopback(port)); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

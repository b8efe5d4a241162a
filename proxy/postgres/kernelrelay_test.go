package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/portcullisdb/portcullis/config"
)

// TestKernelRelay: with proxy.kernel_relay on, a plain session (no TLS on
// either leg) is relayed inside the kernel: pgx runs queries, the
// extended protocol and a COPY of 10 MB through it with every byte
// intact, and psql a query of 5,000 rows; then portcullis shuts down
// while a query runs, and the client gets FATAL 57P01 between two
// messages, as from the user-space relays.
func TestKernelRelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the kernel relay needs CAP_BPF and CAP_NET_ADMIN")
	}
	h := newHarness(t, harnessOptions{listenerTLS: config.ListenerTLSOptional, kernelRelay: true, drain: 200 * time.Millisecond})
	key := h.signIn(alice)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := h.config(alice, key, "analytics_md5")
	cfg.TLSConfig, cfg.Fallbacks = nil, nil
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	h.waitEvent("session.kernel_relay", nil)

	for i := range 100 {
		res := c.ExecParams(ctx, "select $1::int * 2", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if got, want := string(res.Rows[0][0]), fmt.Sprint(2*i); got != want {
			t.Fatalf("select %d * 2 = %s", i, got)
		}
	}

	// 20,000 rows of 512 characters and a newline, checked against the
	// server's own digest of them.
	const query = "select repeat(md5(i::text), 16) from generate_series(1, 20000) i"
	sum := sha256.New()
	if _, err := c.CopyTo(ctx, sum, "copy ("+query+") to stdout"); err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, "select encode(sha256(convert_to(string_agg(r || E'\\n', '' order by i), 'UTF8')), 'hex') from (select i, repeat(md5(i::text), 16) r from generate_series(1, 20000) i) s").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%x", sum.Sum(nil)), string(res[0].Rows[0][0]); got != want {
		t.Fatalf("COPY's digest %s, the server's %s", got, want)
	}

	// psql, the analyst's client, through the same relay: a result of
	// 5,000 rows and a count, in one connection of its own.
	run := h.psql(ctx, alice, "analytics_md5", map[string]string{"PGPASSWORD": key, "PGSSLMODE": "disable"},
		"select i, md5(i::text) from generate_series(1, 5000) i; select count(*) from generate_series(1, 5000)")
	run.start(t, func(string) {})
	if err := run.wait(); err != nil {
		t.Fatalf("psql: %v\nstderr:\n%s", err, run.stderr)
	}
	lines := strings.Split(strings.TrimSpace(run.stdout.String()), "\n")
	if len(lines) != 5001 || lines[0] != "1|c4ca4238a0b923820dcc509a6f75849b" || lines[5000] != "5000" {
		t.Fatalf("psql printed %d lines, first %q, last %q; want 5,000 rows and the count", len(lines), lines[0], lines[len(lines)-1])
	}
	if n := len(h.events("session.kernel_relay")); n != 2 {
		t.Errorf("%d sessions went to the kernel relay, want 2 (pgx's and psql's)", n)
	}

	queried := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(20)").ReadAll()
		queried <- err
	}()
	waitRunning(t, h, "select pg_sleep(20)")
	shut := make(chan error, 1)
	go func() { shut <- h.srv.Shutdown(ctx) }()
	err = <-queried
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Fatalf("got %v, want FATAL 57P01", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	ended := h.waitEvent("session.ended", func(m map[string]any) bool { return m["reason"] == "shutdown" })
	if n, _ := ended["bytes_to_client"].(int64); n < 20000*513 {
		t.Errorf("session.ended counts %v bytes to the client, fewer than the COPY alone", ended["bytes_to_client"])
	}
}

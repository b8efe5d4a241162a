package compat

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	sqldriver "database/sql/driver"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
)

// moduleVersion is the version of a module this test binary was built
// with.
func moduleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, m := range info.Deps {
			if m.Path == path {
				if m.Replace != nil {
					return m.Replace.Version
				}
				return m.Version
			}
		}
	}
	// Test binaries may carry no dependency list: go.mod says what the
	// build used.
	data, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == path {
			return f[1]
		}
	}
	return ""
}

// keywordDSN is a libpq-style connection string for p, verifying
// portcullis's certificate against p.caFile.
func (s *suite) keywordDSN(p connectParams) string {
	quote := func(v string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
	}
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=verify-full sslrootcert=%s connect_timeout=30 password=%s",
		s.host, p.port, quote(p.user), quote(p.resource), quote(p.caFile), quote(p.password))
}

// pgx, in this process.
type pgxDriver struct {
	s    *suite
	conn *pgx.Conn
}

func pgxClient() driverClient {
	return driverClient{
		name: "pgx", slug: "pgx",
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			return &pgxDriver{s: s}, moduleVersion("github.com/jackc/pgx/v5"), nil
		},
		notes: map[string]string{
			featSignIn.key: "Notices arrive through ConnConfig.OnNotice while the connection waits.",
			featCancel.key: "PgConn.CancelRequest from another goroutine.",
		},
	}
}

// pgxErr turns a pgx error into what the suite compares.
func pgxErr(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &dbError{code: pgErr.Code, message: pgErr.Message}
	}
	return &dbError{message: err.Error()}
}

func (d *pgxDriver) connect(ctx context.Context, p connectParams) error {
	d.close()
	cfg, err := pgx.ParseConfig(d.s.keywordDSN(p))
	if err != nil {
		return err
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { p.onNotice(n.Message) }
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return pgxErr(err)
	}
	d.conn = c
	return nil
}

func (d *pgxDriver) query(ctx context.Context, sql string) (rowSet, error) {
	rows, err := d.conn.Query(ctx, sql)
	if err != nil {
		return rowSet{}, pgxErr(err)
	}
	defer rows.Close()
	var rs rowSet
	sum := newRowSum()
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return rowSet{}, pgxErr(err)
		}
		cols := make([]string, len(vals))
		for i, v := range vals {
			cols[i] = fmt.Sprint(v)
		}
		if rs.first == nil {
			rs.first = cols
		}
		sum.add(cols...)
	}
	if err := rows.Err(); err != nil {
		return rowSet{}, pgxErr(err)
	}
	rs.count, rs.sum = sum.n, sum.sum()
	return rs, nil
}

func (d *pgxDriver) prepared(ctx context.Context, sql string, args []int, check string) ([]string, string, error) {
	if _, err := d.conn.Prepare(ctx, "compat_double", sql); err != nil {
		return nil, "", pgxErr(err)
	}
	var out []string
	for _, a := range args {
		var v int64
		if err := d.conn.QueryRow(ctx, "compat_double", a).Scan(&v); err != nil {
			return nil, "", pgxErr(err)
		}
		out = append(out, strconv.FormatInt(v, 10))
	}
	var n int64
	if err := d.conn.QueryRow(ctx, check).Scan(&n); err != nil {
		return nil, "", pgxErr(err)
	}
	return out, strconv.FormatInt(n, 10), nil
}

func (d *pgxDriver) rollback(ctx context.Context, insert, count string) (string, string, error) {
	tx, err := d.conn.Begin(ctx)
	if err != nil {
		return "", "", pgxErr(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, insert); err != nil {
		return "", "", pgxErr(err)
	}
	var inside, after int64
	if err := tx.QueryRow(ctx, count).Scan(&inside); err != nil {
		return "", "", pgxErr(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		return "", "", pgxErr(err)
	}
	if err := d.conn.QueryRow(ctx, count).Scan(&after); err != nil {
		return "", "", pgxErr(err)
	}
	return strconv.FormatInt(inside, 10), strconv.FormatInt(after, 10), nil
}

func (d *pgxDriver) cancel(ctx context.Context, sql string, running func(context.Context) error) (time.Duration, error) {
	done := make(chan error, 1)
	go func() {
		_, err := d.conn.Exec(ctx, sql)
		done <- err
	}()
	if err := running(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := d.conn.PgConn().CancelRequest(ctx); err != nil {
		return 0, fmt.Errorf("CancelRequest: %w", err)
	}
	err := <-done
	took := time.Since(start)
	if err != nil {
		return took, pgxErr(err)
	}
	return took, nil
}

func (d *pgxDriver) close() {
	if d.conn != nil {
		d.conn.Close(context.Background())
		d.conn = nil
	}
}

// signInWithPgx signs user in through pgx and returns the session key
// portcullis showed: for clients that cannot show it themselves.
func (s *suite) signInWithPgx(ctx context.Context, user string) (string, error) {
	d := &pgxDriver{s: s}
	defer d.close()
	n := &notices{s: s, user: user}
	err := d.connect(ctx, connectParams{port: s.pgPort, resource: resourcePostgres, user: user, password: signInPassword, caFile: s.caFile, onNotice: n.add})
	_, key, aerr := n.result()
	if err != nil || aerr != nil {
		return "", fmt.Errorf("sign %s in with pgx: %w", user, errors.Join(err, aerr))
	}
	if key == "" {
		return "", fmt.Errorf("sign %s in with pgx: no session key shown", user)
	}
	return key, nil
}

// sqlDriver is a database/sql driver in this process, driven over one
// *sql.Conn of a pool that opens connections with the same parameters.
type sqlDriver struct {
	connector func(p connectParams) (sqldriver.Connector, error)
	convert   func(error) error // to *dbError
	db        *sql.DB
	conn      *sql.Conn
}

func libpqClient() driverClient {
	return driverClient{
		name: "lib/pq", slug: "libpq",
		// lib/pq installs a notice handler only once the connection is
		// made, so it would drop a prompt sent as a notice; portcullis
		// knows it by its startup parameters and puts it in error mode.
		errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			return &sqlDriver{
				connector: func(p connectParams) (sqldriver.Connector, error) {
					base, err := pq.NewConnector(s.keywordDSN(p))
					if err != nil {
						return nil, err
					}
					return pq.ConnectorWithNoticeHandler(base, func(n *pq.Error) { p.onNotice(n.Message) }), nil
				},
				convert: pqErr,
			}, moduleVersion("github.com/lib/pq"), nil
		},
		notes: map[string]string{
			featSignIn.key: "Error mode: lib/pq drops notices that arrive before the connection is made, and portcullis knows it by its startup parameters (no application_name, datestyle \"ISO, MDY\").",
			featCancel.key: "Cancelling the query's context; lib/pq sends the CancelRequest, then retires the connection, as it does against PostgreSQL, and database/sql opens a new one (with the session key) for the next statement.",
		},
	}
}

// pqErr turns a lib/pq error into what the suite compares.
func pqErr(err error) error {
	var e *pq.Error
	if errors.As(err, &e) {
		return &dbError{code: string(e.Code), message: e.Message}
	}
	return &dbError{message: err.Error()}
}

func goMySQLClient() driverClient {
	return driverClient{
		name: "go-sql-driver/mysql", slug: "go-mysql", mysql: true, errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			return &sqlDriver{
				connector: func(p connectParams) (sqldriver.Connector, error) {
					tlsName, err := registerMySQLTLS(p.caFile)
					if err != nil {
						return nil, err
					}
					cfg := mysqldriver.NewConfig()
					cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = p.user, p.password, "tcp", net.JoinHostPort(s.host, strconv.Itoa(p.port)), p.resource
					cfg.TLSConfig = tlsName
					cfg.Timeout = 30 * time.Second
					return mysqldriver.NewConnector(cfg)
				},
				convert: mysqlErr,
			}, moduleVersion("github.com/go-sql-driver/mysql"), nil
		},
		notes: map[string]string{
			featSignIn.key:   "Retry mode: the first connection fails with error 1045 carrying the URL and code; the reconnect after signing in gets in.",
			featPrepared.key: "DB.Prepare: COM_STMT_PREPARE on the server.",
		},
		na: map[string]string{
			featCancel.key: "go-sql-driver/mysql has no cancel: cancelling a context closes the connection and returns context.Canceled; the server is never asked to stop the statement (KILL QUERY), through portcullis or directly.",
		},
	}
}

// mysqlTLS names go-sql-driver TLS configurations by CA file.
var mysqlTLS sync.Map

// registerMySQLTLS registers, once per CA file, a TLS configuration that
// verifies the server's certificate chain against caFile and its name
// (verify-full).
func registerMySQLTLS(caFile string) (string, error) {
	name := "compat-" + caFile
	if _, done := mysqlTLS.Load(name); done {
		return name, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return "", fmt.Errorf("%s holds no certificate", caFile)
	}
	if err := mysqldriver.RegisterTLSConfig(name, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}); err != nil {
		return "", err
	}
	mysqlTLS.Store(name, true)
	return name, nil
}

// mysqlErr turns a go-sql-driver error into what the suite compares.
func mysqlErr(err error) error {
	var e *mysqldriver.MySQLError
	if errors.As(err, &e) {
		return &dbError{code: strconv.Itoa(int(e.Number)), message: e.Message}
	}
	return &dbError{message: err.Error()}
}

func (d *sqlDriver) connect(ctx context.Context, p connectParams) error {
	d.close()
	c, err := d.connector(p)
	if err != nil {
		return err
	}
	db := sql.OpenDB(c)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return d.convert(err)
	}
	d.db, d.conn = db, conn
	return nil
}

func (d *sqlDriver) query(ctx context.Context, q string) (rowSet, error) {
	rows, err := d.conn.QueryContext(ctx, q)
	if err != nil {
		return rowSet{}, d.convert(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return rowSet{}, d.convert(err)
	}
	var rs rowSet
	sum := newRowSum()
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return rowSet{}, d.convert(err)
		}
		text := make([]string, len(vals))
		for i, v := range vals {
			text[i] = v.String
		}
		if rs.first == nil {
			rs.first = text
		}
		sum.add(text...)
	}
	if err := rows.Err(); err != nil {
		return rowSet{}, d.convert(err)
	}
	rs.count, rs.sum = sum.n, sum.sum()
	return rs, nil
}

func (d *sqlDriver) prepared(ctx context.Context, q string, args []int, check string) ([]string, string, error) {
	stmt, err := d.conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, "", d.convert(err)
	}
	defer stmt.Close()
	var out []string
	for _, a := range args {
		var v string
		if err := stmt.QueryRowContext(ctx, a).Scan(&v); err != nil {
			return nil, "", d.convert(err)
		}
		out = append(out, v)
	}
	var n string
	if err := d.conn.QueryRowContext(ctx, check).Scan(&n); err != nil {
		return nil, "", d.convert(err)
	}
	return out, n, nil
}

func (d *sqlDriver) rollback(ctx context.Context, insert, count string) (string, string, error) {
	tx, err := d.conn.BeginTx(ctx, nil)
	if err != nil {
		return "", "", d.convert(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, insert); err != nil {
		return "", "", d.convert(err)
	}
	var inside, after string
	if err := tx.QueryRowContext(ctx, count).Scan(&inside); err != nil {
		return "", "", d.convert(err)
	}
	if err := tx.Rollback(); err != nil {
		return "", "", d.convert(err)
	}
	if err := d.conn.QueryRowContext(ctx, count).Scan(&after); err != nil {
		return "", "", d.convert(err)
	}
	return inside, after, nil
}

// cancel cancels the query's context, which is how database/sql asks a
// driver to cancel.
func (d *sqlDriver) cancel(ctx context.Context, q string, running func(context.Context) error) (time.Duration, error) {
	qctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		_, err := d.conn.ExecContext(qctx, q)
		done <- err
	}()
	if err := running(ctx); err != nil {
		return 0, err
	}
	start := time.Now()
	stop()
	err := <-done
	took := time.Since(start)
	// A driver may retire a connection whose context was cancelled
	// (lib/pq does); database/sql then opens a new one.
	d.conn.Close()
	c, cerr := d.db.Conn(ctx)
	if cerr != nil {
		d.conn = nil
		return took, fmt.Errorf("a new connection after the cancel: %w", d.convert(cerr))
	}
	d.conn = c
	if err != nil {
		return took, d.convert(err)
	}
	return took, nil
}

func (d *sqlDriver) close() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.db != nil {
		d.db.Close()
		d.db = nil
	}
}

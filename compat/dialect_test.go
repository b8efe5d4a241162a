package compat

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// Table sections, one per protocol.
const (
	sectionPostgres = "PostgreSQL"
	sectionMySQL    = "MySQL and MariaDB"
)

// dialect is what the features run, and expect, on one protocol.
type dialect struct {
	section      string
	resource     string // the resource (database name) clients connect to
	totpResource string // the resource that requires TOTP
	port         int    // portcullis's listener for the protocol

	currentUser string // a query answering the backend login
	wantUser    string // its answer for the mapped backend login
	signInCode  string // the error code of an error-mode prompt
	// wrongCodeCode is the error code of a wrong TOTP code: PostgreSQL's
	// invalid_password, as the server itself answers a wrong password,
	// and MySQL's access denied.
	wrongCodeCode string

	rowsSQL string // rowCount rows whose checksum is rowsWant

	// preparedSQL doubles its one parameter, written with the protocol's
	// usual placeholder ($1 or ?); preparedSeen is a one-value query,
	// non-zero once the session has prepared a statement on the server.
	preparedSQL  string
	preparedSeen string

	syntaxSQL  string
	syntaxCode string // SQLSTATE or MySQL error number
	syntaxText string // in the server's message

	cancelCode string
	sleepSQL   func(marker string) string

	backend backend
}

// backend is a look at the real server behind portcullis's back.
type backend interface {
	// running counts active statements containing marker.
	running(ctx context.Context, marker string) (int, error)
	// rowsWithMarker counts compat_rollback rows carrying marker.
	rowsWithMarker(ctx context.Context, marker string) (string, error)
	// oneValue runs a one-value query as the superuser.
	oneValue(ctx context.Context, sql string) (string, error)
}

const (
	rowCount = 10000
	aliveSQL = "select 'still here'"
)

func postgresDialect(s *suite) *dialect {
	return &dialect{
		section: sectionPostgres, resource: resourcePostgres, totpResource: resourcePostgresTOTP, port: s.pgPort,
		currentUser: "select current_user", wantUser: s.role.Name, signInCode: "28000", wrongCodeCode: "28P01",
		rowsSQL:      "select g, md5(g::text) from generate_series(1, 10000) as g order by g",
		preparedSQL:  "select $1::int * 2",
		preparedSeen: "select count(*) from pg_prepared_statements",
		syntaxSQL:    "selec 1 as broken", syntaxCode: "42601", syntaxText: `syntax error at or near "selec"`,
		cancelCode: "57014",
		sleepSQL:   func(marker string) string { return "select pg_sleep(30) as " + marker },
		backend:    pgBackend{s},
	}
}

func mysqlDialect(s *suite) *dialect {
	return &dialect{
		section: sectionMySQL, resource: resourceMySQL, totpResource: resourceMySQLTOTP, port: s.myPort,
		currentUser: "select current_user()", wantUser: s.myUser.Name + "@%", signInCode: "1045", wrongCodeCode: "1045",
		rowsSQL:     "select seq, md5(seq) from seq_1_to_10000 order by seq",
		preparedSQL: "select ? * 2",
		// Protocol-level and SQL-level prepares of this session.
		preparedSeen: "select sum(variable_value) from information_schema.session_status where variable_name in ('COM_STMT_PREPARE', 'COM_PREPARE_SQL')",
		syntaxSQL:    "selec 1 as broken", syntaxCode: "1064", syntaxText: "You have an error in your SQL syntax",
		cancelCode: "1317",
		sleepSQL:   func(marker string) string { return "select sleep(30) as " + marker },
		backend:    myBackend{s},
	}
}

// rollbackSQL inserts a row carrying marker, and counts such rows.
func rollbackSQL(client, marker string) (insert, count string) {
	return fmt.Sprintf("insert into compat_rollback (client, marker) values ('%s', '%s')", client, marker),
		fmt.Sprintf("select count(*) from compat_rollback where marker = '%s'", marker)
}

// preparedArgs: six executions, enough for drivers that prepare on the
// server only after a statement has run a few times (pgjdbc: 5).
var preparedArgs = []int{1, 2, 3, 4, 5, 6}

func preparedWant() []string {
	var want []string
	for _, a := range preparedArgs {
		want = append(want, strconv.Itoa(a*2))
	}
	return want
}

// rowSum checksums rows as every client does: SHA-256 over each row's
// columns, as text, joined by "|", one line per row.
type rowSum struct {
	h hash.Hash
	n int
}

func newRowSum() *rowSum { return &rowSum{h: sha256.New()} }

func (r *rowSum) add(cols ...string) {
	r.h.Write([]byte(strings.Join(cols, "|") + "\n"))
	r.n++
}

func (r *rowSum) sum() string { return hex.EncodeToString(r.h.Sum(nil)) }

// rowsWant is the checksum of rowsSQL's answer (n, md5 of n's text),
// computed here.
func rowsWant() string {
	r := newRowSum()
	for g := 1; g <= rowCount; g++ {
		m := md5.Sum([]byte(strconv.Itoa(g)))
		r.add(strconv.Itoa(g), hex.EncodeToString(m[:]))
	}
	return r.sum()
}

// pgBackend looks at PostgreSQL as its superuser.
type pgBackend struct{ s *suite }

func (b pgBackend) oneValue(ctx context.Context, sql string) (string, error) {
	su, err := b.s.pg.Superuser(ctx, backendDB)
	if err != nil {
		return "", err
	}
	defer su.Close(context.Background())
	res, err := su.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", fmt.Errorf("%s: %w", sql, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return "", fmt.Errorf("%s: not one row", sql)
	}
	return string(res[0].Rows[0][0]), nil
}

func (b pgBackend) running(ctx context.Context, marker string) (int, error) {
	return atoi(b.oneValue(ctx, "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() and query like '%"+marker+"%'"))
}

func (b pgBackend) rowsWithMarker(ctx context.Context, marker string) (string, error) {
	return b.oneValue(ctx, "select count(*) from compat_rollback where marker = '"+marker+"'")
}

// myBackend looks at MariaDB as root.
type myBackend struct{ s *suite }

func (b myBackend) oneValue(ctx context.Context, sql string) (string, error) {
	root, err := b.s.my.Root(ctx)
	if err != nil {
		return "", err
	}
	defer root.Close()
	res, err := root.Execute(sql)
	if err != nil {
		return "", fmt.Errorf("%s: %w", sql, err)
	}
	if res.Resultset == nil || len(res.Values) != 1 {
		return "", fmt.Errorf("%s: not one row", sql)
	}
	return res.GetString(0, 0)
}

func (b myBackend) running(ctx context.Context, marker string) (int, error) {
	return atoi(b.oneValue(ctx, "select count(*) from information_schema.processlist where command = 'Query' and id <> connection_id() and info like '%"+marker+"%'"))
}

func (b myBackend) rowsWithMarker(ctx context.Context, marker string) (string, error) {
	return b.oneValue(ctx, "select count(*) from "+backendDB+".compat_rollback where marker = '"+marker+"'")
}

func atoi(s string, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

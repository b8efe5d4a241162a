// Package compat is portcullis's client compatibility suite. It has no
// API: its tests start real PostgreSQL and MariaDB servers
// (internal/testpg and internal/testmysql, with TLS), the Entra ID
// simulator (auth/entrasim) and portcullis itself with the real identity
// core (auth.Authorizer), its TOTP checker on a SQLite state store, and
// both front doors, then drive real clients
// through portcullis feature by feature and record pass, fail or not
// applicable, with the reason, in docs/compatibility.md.
//
// Clients are of three kinds:
//
//   - command-line programs (psql, pgbench, mariadb, sysbench), run once
//     per step;
//   - Go drivers (pgx, lib/pq, go-sql-driver/mysql), driven in the test
//     process;
//   - drivers in other languages (pgjdbc, psycopg2, node-postgres, MariaDB
//     Connector/J, PyMySQL, mysql2), each driven through a small program
//     under clients/ that stays up for the whole run, reads one command
//     per line on stdin (fields separated by tabs) and answers with one
//     JSON object per line on stdout. The Java program, one for both JDBC
//     drivers, is compiled with javac at test time.
//
// Every client signs in as a user of its own, so that clients run in
// parallel without one's sign-in standing in for another's.
//
// The features are the same for every client: sign-in (the device-code
// prompt where the client can show it while it connects — a PostgreSQL
// notice, a MariaDB dialog question — else as an error followed by a
// reconnect), reconnecting with the session key, TOTP (the session key
// and a code from the person's authenticator app, to a resource that
// requires it; every client's user is enrolled first), a query of 10,000
// rows (count and checksum), prepared statements, a transaction rolled
// back, cancelling a running statement with the client's own mechanism, a
// backend syntax error arriving intact with its SQLSTATE or MySQL error
// number, and TLS with certificate verification.
//
// Running it:
//
//	bash .ci/compat-deps                      # JDK, drivers, npm ci
//	go test -count=1 ./compat/                # compare with the committed table
//	COMPAT_WRITE_DOCS=1 go test -count=1 ./compat/   # rewrite docs/compatibility.md
//
// Without COMPAT_WRITE_DOCS the suite fails on a regression: a cell the
// committed table calls pass that does not pass now, or a failure the
// table does not record. A client whose program is missing is skipped
// with a loud message, except under CI=true, where that is a failure.
package compat

package compat

import (
	"archive/zip"
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// JDBC drivers, where Debian's libpostgresql-jdbc-java and
// libmariadb-java put them.
const (
	pgjdbcJar  = "/usr/share/java/postgresql.jar"
	mariadbJar = "/usr/share/java/mariadb-java-client.jar"
)

// javaFlags start a short-lived JVM quickly.
var javaFlags = []string{"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"}

// startJDBC compiles clients/jdbc/CompatDriver.java into a temporary
// directory and runs it with jar for kind ("postgresql" or "mariadb").
func startJDBC(t *testing.T, s *suite, dl *dialect, name, kind, jar string) (driver, string, error) {
	javac, err := exec.LookPath("javac")
	if err != nil {
		return nil, "", err
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, "", err
	}
	if _, err := os.Stat(jar); err != nil {
		return nil, "", fmt.Errorf("the %s JDBC driver: %w", name, err)
	}
	classes := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	build := exec.CommandContext(ctx, javac, "-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1", "-nowarn", "-d", classes, filepath.Join("clients", "jdbc", "CompatDriver.java"))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("compile the JDBC driver program: %v\n%s", err, out)
	}
	args := append(append([]string{}, javaFlags...), "-cp", classes+string(os.PathListSeparator)+jar, "CompatDriver", kind)
	d, version, err := startDriverProc(t, s, dl, name, exec.Command(java, args...))
	if v := jarVersion(jar); v != "" && err == nil {
		// The driver reports major.minor only; the manifest has it all.
		if _, java, ok := strings.Cut(version, " "); ok {
			version = v + " " + java
		}
	}
	return d, version, err
}

// jarVersion is the version a jar's manifest states.
func jarVersion(jar string) string {
	z, err := zip.OpenReader(jar)
	if err != nil {
		return ""
	}
	defer z.Close()
	f, err := z.Open("META-INF/MANIFEST.MF")
	if err != nil {
		return ""
	}
	defer f.Close()
	found := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ": "); ok {
			found[k] = strings.TrimSpace(v)
		}
	}
	if v := found["Implementation-Version"]; v != "" {
		return v
	}
	return found["Bundle-Version"]
}

func pgjdbcClient() driverClient {
	return driverClient{
		name: "pgjdbc", slug: "pgjdbc",
		// pgjdbc sends no application_name at startup (it SETs it once
		// connected); portcullis knows it by its startup parameters and
		// puts it in error mode under prompt: auto.
		errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			return startJDBC(t, s, dl, "pgjdbc", "postgresql", pgjdbcJar)
		},
		notes: map[string]string{
			featSignIn.key:     "Error mode: JDBC shows no notice until the connection is made. pgjdbc sends application_name at startup only with assumeMinServerVersion=9.0 or later, so portcullis also knows it by its other startup parameters. The first connection fails with the URL and code; the reconnect after signing in gets in.",
			featSessionKey.key: "The key arrives as a warning on the new connection (Connection.getWarnings).",
			featPrepared.key:   "pgjdbc prepares on the server from a statement's fifth run (prepareThreshold).",
			featCancel.key:     "Statement.cancel from another thread.",
		},
	}
}

func mariadbJDBCClient() driverClient {
	return driverClient{
		name: "MariaDB Connector/J", slug: "mariadb-java", mysql: true, errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			return startJDBC(t, s, dl, "MariaDB Connector/J", "mariadb", mariadbJar)
		},
		notes: map[string]string{
			featSignIn.key:   "Retry mode: the first connection fails with error 1045 carrying the URL and code; the reconnect after signing in gets in.",
			featPrepared.key: "useServerPrepStmts=true: Connector/J 2.x emulates prepared statements in the driver unless told to prepare them on the server.",
			featCancel.key:   "Statement.cancel: Connector/J connects again and sends KILL QUERY with the connection id portcullis gave it, which portcullis carries out on the right backend session.",
		},
	}
}

// debianPython is the interpreter Debian's python3-psycopg2 is built for,
// whatever python3 comes first on $PATH.
const debianPython = "/usr/bin/python3"

func psycopg2Client() driverClient {
	return driverClient{
		name: "psycopg2", slug: "psycopg2",
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			if _, err := os.Stat(debianPython); err != nil {
				return nil, "", err
			}
			return startDriverProc(t, s, dl, "psycopg2", exec.Command(debianPython, "-u", filepath.Join("clients", "psycopg2", "driver.py")))
		},
		notes: map[string]string{
			featSignIn.key:   "libpq prints the prompt on stderr while psycopg2 waits in connect().",
			featPrepared.key: "psycopg2 binds parameters on the client; prepared statements are SQL PREPARE and EXECUTE.",
			featCancel.key:   "connection.cancel() from another thread.",
		},
		uncodedRefusal: "psycopg2 raises a refused connection as OperationalError with libpq's message: the FATAL (that the TOTP code is wrong) shows, its SQLSTATE (28P01) does not.",
	}
}

func pymysqlClient() driverClient {
	return driverClient{
		name: "PyMySQL", slug: "pymysql", mysql: true, errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			if _, err := os.Stat(debianPython); err != nil {
				return nil, "", err
			}
			return startDriverProc(t, s, dl, "PyMySQL", exec.Command(debianPython, "-u", filepath.Join("clients", "pymysql", "driver.py")))
		},
		notes: map[string]string{
			featSignIn.key:   "Retry mode: the first connection fails with error 1045 carrying the URL and code; the reconnect after signing in gets in.",
			featPrepared.key: "PyMySQL binds parameters on the client; prepared statements are SQL PREPARE and EXECUTE.",
			featCancel.key:   "PyMySQL has no cancel call: KILL QUERY with Connection.thread_id() from a second connection, which portcullis carries out on the right backend session.",
		},
	}
}

func mysql2Client() driverClient {
	return driverClient{
		name: "mysql2", slug: "mysql2", mysql: true, errorMode: true,
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			node, err := exec.LookPath("node")
			if err != nil {
				return nil, "", err
			}
			return startDriverProc(t, s, dl, "mysql2", exec.Command(node, filepath.Join("clients", "node", "mysql2_driver.js")))
		},
		notes: map[string]string{
			featSignIn.key:   "Retry mode: the first connection fails with error 1045 carrying the URL and code; the reconnect after signing in gets in.",
			featPrepared.key: "Connection.execute: COM_STMT_PREPARE on the server, once per connection.",
			featCancel.key:   "mysql2 has no cancel call: KILL QUERY with the connection's threadId from a second connection, which portcullis carries out on the right backend session.",
		},
	}
}

func nodePostgresClient() driverClient {
	return driverClient{
		name: "node-postgres", slug: "node-postgres",
		start: func(t *testing.T, s *suite, dl *dialect) (driver, string, error) {
			node, err := exec.LookPath("node")
			if err != nil {
				return nil, "", err
			}
			return startDriverProc(t, s, dl, "node-postgres", exec.Command(node, filepath.Join("clients", "node", "pg_driver.js")))
		},
		notes: map[string]string{
			featSignIn.key:   "The client's \"notice\" event fires while connect() waits.",
			featPrepared.key: "A named query, prepared on the server once per connection.",
			featCancel.key:   "Client.cancel on a second Client with the same configuration.",
		},
	}
}

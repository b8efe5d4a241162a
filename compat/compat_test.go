package compat

import (
	"os"
	"strings"
	"testing"
)

// compatClient is one row of the table.
type compatClient struct {
	name string
	slug string // its user, login(slug), and its subtest's name
	run  func(t *testing.T, s *suite, res *results)
}

func fromDriver(c driverClient) compatClient {
	return compatClient{name: c.name, slug: c.slug, run: c.run}
}

// postgresClients are the PostgreSQL rows, in the table's order.
func postgresClients() []compatClient {
	return []compatClient{
		psqlClient(),
		pgbenchClient(),
		fromDriver(pgxClient()),
		fromDriver(libpqClient()),
		fromDriver(pgjdbcClient()),
		fromDriver(psycopg2Client()),
		fromDriver(nodePostgresClient()),
	}
}

// mysqlClients are the MySQL and MariaDB rows, in the table's order.
func mysqlClients() []compatClient {
	return []compatClient{
		mariadbCLIClient(),
		sysbenchClient(),
		fromDriver(goMySQLClient()),
		fromDriver(mariadbJDBCClient()),
		fromDriver(pymysqlClient()),
		fromDriver(mysql2Client()),
	}
}

// TestCompatibility runs every client through every feature, then
// rewrites docs/compatibility.md (COMPAT_WRITE_DOCS=1) or fails on a
// regression against it.
func TestCompatibility(t *testing.T) {
	if testing.Short() {
		t.Skip("the compatibility suite starts servers and client programs")
	}
	clients := append(postgresClients(), mysqlClients()...)
	var slugs, order []string
	for _, c := range clients {
		slugs = append(slugs, c.slug)
		order = append(order, c.name)
	}
	s := startSuite(t, slugs)
	res := newResults()
	t.Run("clients", func(t *testing.T) {
		for _, c := range clients {
			t.Run(c.slug, func(t *testing.T) {
				t.Parallel()
				c.run(t, s, res)
			})
		}
	})
	rows := res.all()
	measured := map[string]bool{}
	for _, r := range rows {
		measured[r.client] = true
	}
	var missing []string
	for _, c := range clients {
		if !measured[c.name] {
			missing = append(missing, c.name)
		}
	}

	if os.Getenv(envWriteDocs) != "" {
		if len(missing) > 0 {
			t.Fatalf("not rewriting %s: %s did not run (install every client with .ci/compat-deps)", docPath(), strings.Join(missing, ", "))
		}
		if err := os.WriteFile(docPath(), []byte(render(rows, order)), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", docPath())
		return
	}
	doc, err := readDoc()
	if err != nil {
		t.Fatalf("read %s: %v", docPath(), err)
	}
	regressions, changes := compare(doc, rows)
	for _, r := range regressions {
		t.Errorf("regression: %s", r)
	}
	if len(changes) > 0 {
		t.Logf("%s is out of date (regenerate it with %s=1):\n  %s", docPath(), envWriteDocs, strings.Join(changes, "\n  "))
	}
}

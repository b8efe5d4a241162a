package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/portcullisdb/portcullis/internal/testpg"
)

// pgRole is the login the PostgreSQL stores use, over TCP with SCRAM, as
// a replica would.
var pgRole = testpg.Role{Name: "portcullis", Password: "pw-" + randomHex(12)}

var pg = testpg.NewShared(testpg.Options{Roles: []testpg.Role{pgRole}})

func TestMain(m *testing.M) {
	code := m.Run()
	if err := pg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
	}
	os.Exit(code)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func testKey(t *testing.T) []byte {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// database is one empty database of a backend. connect may be called
// many times: each call is another process (replica) on the same data.
type database struct {
	connect func(ctx context.Context, keys Keys) (Store, error)
	// connectAt connects with only the first n migrations, as an older
	// portcullis would.
	connectAt func(ctx context.Context, n int) (Store, error)
	// migrations are the backend's.
	migrations []migration
	// raw returns every byte the database holds of portcullis's data, as
	// an attacker with a copy of it would see them; nil when there is no
	// such thing (memory).
	raw func(t *testing.T) []byte
}

// open connects to db and closes the store when the test ends.
func (db database) open(t *testing.T, keys Keys) Store {
	t.Helper()
	s, err := db.connect(testContext(t), keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type backend struct {
	name string
	// fresh makes an empty database (it may skip the test).
	fresh func(t *testing.T) database
}

var backends = []backend{
	{name: "sqlite", fresh: freshSQLite},
	{name: "postgres", fresh: freshPostgres},
	{name: "memory", fresh: freshMemory},
}

// eachBackend runs test once per backend against a fresh database.
func eachBackend(t *testing.T, test func(t *testing.T, db database)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			test(t, b.fresh(t))
		})
	}
}

// eachDurableBackend is eachBackend without the memory store, for what
// needs several processes or a file.
func eachDurableBackend(t *testing.T, test func(t *testing.T, db database)) {
	t.Helper()
	for _, b := range backends {
		if b.name == "memory" {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			test(t, b.fresh(t))
		})
	}
}

func freshSQLite(t *testing.T) database {
	dir := t.TempDir()
	path := filepath.Join(dir, "portcullis.db")
	return database{
		connect: func(ctx context.Context, keys Keys) (Store, error) {
			return OpenSQLite(ctx, path, keys)
		},
		connectAt: func(ctx context.Context, n int) (Store, error) {
			return openSQLite(ctx, "file:"+path+"?_txlock=immediate&_pragma=busy_timeout(5000)", path, Keys{}, 0, sqliteMigrations[:n])
		},
		migrations: sqliteMigrations,
		raw: func(t *testing.T) []byte {
			t.Helper()
			// The database, its write-ahead log and its shared memory:
			// recent writes live in the log until a checkpoint.
			var all []byte
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				b, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, b...)
			}
			return all
		},
	}
}

// freshMemory is one memory store: every connect returns it (a memory
// store has no second process), with the keys of the first.
func freshMemory(t *testing.T) database {
	var (
		mu sync.Mutex
		s  *SQLite
	)
	t.Cleanup(func() {
		if s != nil {
			s.Close()
		}
	})
	return database{
		connect: func(ctx context.Context, keys Keys) (Store, error) {
			mu.Lock()
			defer mu.Unlock()
			if s == nil {
				var err error
				if s, err = OpenMemory(ctx, keys); err != nil {
					return nil, err
				}
			}
			return unclosable{s}, nil
		},
	}
}

// unclosable shares one memory store between handles.
type unclosable struct{ *SQLite }

func (unclosable) Close() error { return nil }

var pgDatabases atomic.Int64

func freshPostgres(t *testing.T) database {
	srv := pg.Server(t)
	name := fmt.Sprintf("store_%d", pgDatabases.Add(1))
	if err := srv.Exec(testContext(t), fmt.Sprintf("CREATE DATABASE %s OWNER %s", name, pgRole.Name)); err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pgRole.Name, pgRole.Password, srv.Addr(), name)
	return database{
		connect: func(ctx context.Context, keys Keys) (Store, error) {
			return OpenPostgres(ctx, dsn, keys)
		},
		connectAt: func(ctx context.Context, n int) (Store, error) {
			return openPostgres(ctx, dsn, Keys{}, postgresMigrations[:n])
		},
		migrations: postgresMigrations,
		raw: func(t *testing.T) []byte {
			t.Helper()
			return dumpPostgres(t, dsn)
		},
	}
}

// dumpPostgres renders every row of every table in the database as text,
// the way pg_dump would show it (bytea in hex).
func dumpPostgres(t *testing.T, dsn string) []byte {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 4 {
		t.Fatalf("only tables %v in the database", tables)
	}
	var out bytes.Buffer
	for _, table := range tables {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT t::text FROM %s t", pgx.Identifier{table}.Sanitize()))
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			fmt.Fprintf(&out, "%s: %s\n", table, l)
		}
	}
	return out.Bytes()
}

package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// A burst of logins reads and writes the SQLite file from hundreds of
// goroutines at once. The store keeps to its few connections, so the
// burst neither opens a connection per login (slow) nor leaves the file
// open on a descriptor per login afterwards (SQLite keeps a closed
// connection's descriptor while others hold locks on the file).
func TestSQLiteBurst(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenSQLite(ctx, path, Keys{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var known auth.KeyHash
	known[0] = 1
	if err := s.PutSignIn(ctx, known, auth.SignInRecord{LoginName: "alice@example.com", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			if i%10 == 0 {
				var h auth.KeyHash
				h[0], h[1] = 2, byte(i)
				errs <- s.PutSignIn(ctx, h, auth.SignInRecord{LoginName: "bob@example.com", ExpiresAt: time.Now().Add(time.Hour)})
				return
			}
			_, ok, err := s.GetSignIn(ctx, known)
			if err == nil && !ok {
				t.Error("the sign-in is gone")
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := s.db.Stats(); st.MaxOpenConnections != sqliteConns() || st.OpenConnections > sqliteConns() {
		t.Errorf("%d connections open (at most %d allowed), want at most %d", st.OpenConnections, st.MaxOpenConnections, sqliteConns())
	}
	// Each connection has the file and its -wal open; a few more while
	// SQLite holds on to descriptors is fine, one per goroutine is not.
	if fds := openOn(t, path); fds > 2*sqliteConns()+2 {
		t.Errorf("after the burst %d descriptors are open on %s and its -wal and -shm, with %d connections", fds, filepath.Base(path), sqliteConns())
	}
}

// openOn counts this process's descriptors open on path or its -wal and
// -shm files.
func openOn(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list descriptors: %v", err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, path) {
			n++
		}
	}
	return n
}

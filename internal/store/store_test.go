package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/mfa"
)

var (
	alice = mfa.NewUser("contoso", "Alice@Contoso.Example")
	bob   = mfa.NewUser("contoso", "bob@contoso.example")
)

// at is a fixed instant, in whole microseconds (what both databases keep).
var at = time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC)

func signInRecord(upn string, addr netip.Addr, expires time.Time) auth.SignInRecord {
	return auth.SignInRecord{
		Identity: auth.Identity{
			Kind: auth.KindUser, Provider: "contoso", TenantID: "7d1e2b3c-4a5f-4e6d-8c9b-0a1b2c3d4e5f",
			ObjectID: "11111111-aaaa-4aaa-8aaa-111111111111", UPN: upn, DisplayName: "Alice Analyst",
		},
		LoginName: strings.ToUpper(upn), ClientAddr: addr, SignedInAt: at, ExpiresAt: expires,
		HomeAccountID: "11111111-aaaa-4aaa-8aaa-111111111111.7d1e2b3c-4a5f-4e6d-8c9b-0a1b2c3d4e5f",
	}
}

func sameRecord(a, b auth.SignInRecord) bool {
	return a.Identity == b.Identity && a.LoginName == b.LoginName && a.ClientAddr == b.ClientAddr &&
		a.SignedInAt.Equal(b.SignedInAt) && a.ExpiresAt.Equal(b.ExpiresAt) && a.HomeAccountID == b.HomeAccountID &&
		a.ScrambleUser == b.ScrambleUser
}

// sessionKeyRecord is a session key's record as auth stores it: listed
// for scrambles under the lower-case UPN.
func sessionKeyRecord(upn string, addr netip.Addr, expires time.Time) auth.SignInRecord {
	rec := signInRecord(upn, addr, expires)
	rec.ScrambleUser = strings.ToLower(upn)
	return rec
}

// TestSessionKeysOf: a person's live session keys stored under their
// verifier are listed, with the hash each is under; address-grace
// records, keys stored before verifiers, expired keys and other people's
// keys are not.
func TestSessionKeysOf(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		addr := netip.MustParseAddr("192.0.2.10")
		hash := func(s string) auth.KeyHash { return sha256.Sum256([]byte(s)) }
		later, latest := sessionKeyRecord("Alice@Contoso.Example", addr, at.Add(time.Hour)), sessionKeyRecord("alice@contoso.example", addr, at.Add(2*time.Hour))
		latest.SignedInAt = at.Add(time.Minute)
		puts := []struct {
			h   auth.KeyHash
			rec auth.SignInRecord
		}{
			{hash("alice's first key"), later},
			{hash("alice's second key"), latest},
			{hash("alice's expired key"), sessionKeyRecord("alice@contoso.example", addr, at)},
			{hash("alice's address grace"), signInRecord("alice@contoso.example", addr, at.Add(time.Hour))},
			{hash("alice's key from before verifiers"), signInRecord("alice@contoso.example", addr, at.Add(time.Hour))},
			{hash("bob's key"), sessionKeyRecord("bob@contoso.example", addr, at.Add(time.Hour))},
		}
		for _, p := range puts {
			if err := s.PutSignIn(ctx, p.h, p.rec); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name string
			user string
			now  time.Time
			want []auth.StoredSessionKey // newest first
		}{
			{name: "alice", user: "alice@contoso.example", now: at, want: []auth.StoredSessionKey{
				{Verifier: hash("alice's second key"), Record: latest},
				{Verifier: hash("alice's first key"), Record: later},
			}},
			{name: "at the first key's expiry", user: "alice@contoso.example", now: at.Add(time.Hour), want: []auth.StoredSessionKey{
				{Verifier: hash("alice's second key"), Record: latest},
			}},
			{name: "bob", user: "bob@contoso.example", now: at, want: []auth.StoredSessionKey{{Verifier: hash("bob's key"), Record: puts[5].rec}}},
			{name: "the name in another case", user: "Alice@Contoso.Example", now: at},
			{name: "no name", user: "", now: at},
			{name: "carol", user: "carol@contoso.example", now: at},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := s.SessionKeysOf(ctx, tt.user, tt.now)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("%d keys listed, want %d", len(got), len(tt.want))
				}
				for i := range got {
					if got[i].Verifier != tt.want[i].Verifier || !sameRecord(got[i].Record, tt.want[i].Record) {
						t.Errorf("key %d = %x %+v, want %x %+v", i, got[i].Verifier[:4], got[i].Record, tt.want[i].Verifier[:4], tt.want[i].Record)
					}
				}
			})
		}

		// Replaced by a record no scramble may reach, a key is no longer
		// listed.
		if err := s.PutSignIn(ctx, hash("alice's second key"), signInRecord("alice@contoso.example", addr, at.Add(2*time.Hour))); err != nil {
			t.Fatal(err)
		}
		if got, err := s.SessionKeysOf(ctx, "alice@contoso.example", at.Add(time.Hour)); err != nil || len(got) != 0 {
			t.Errorf("after the replacement: %d keys, %v", len(got), err)
		}
	})
}

func TestSignIns(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		h1 := auth.KeyHash(sha256.Sum256([]byte("first")))
		h2 := auth.KeyHash(sha256.Sum256([]byte("second")))
		h3 := auth.KeyHash(sha256.Sum256([]byte("third")))
		tests := []struct {
			name string
			h    auth.KeyHash
			rec  auth.SignInRecord
		}{
			{"IPv4", h1, signInRecord("alice@contoso.example", netip.MustParseAddr("192.0.2.10"), at.Add(time.Hour))},
			{"IPv6", h2, signInRecord("bob@contoso.example", netip.MustParseAddr("2001:db8::7"), at.Add(2*time.Hour))},
			{"no address", h3, signInRecord("carol@contoso.example", netip.Addr{}, at.Add(-time.Minute))},
		}
		for _, tt := range tests {
			if err := s.PutSignIn(ctx, tt.h, tt.rec); err != nil {
				t.Fatalf("%s: put: %v", tt.name, err)
			}
		}
		for _, tt := range tests {
			got, ok, err := s.GetSignIn(ctx, tt.h)
			if err != nil || !ok {
				t.Fatalf("%s: get = %v, %v", tt.name, ok, err)
			}
			if !sameRecord(got, tt.rec) {
				t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.rec)
			}
		}

		// A put under the same hash replaces the record.
		replaced := signInRecord("alice@contoso.example", netip.MustParseAddr("198.51.100.7"), at.Add(3*time.Hour))
		if err := s.PutSignIn(ctx, h1, replaced); err != nil {
			t.Fatal(err)
		}
		if got, _, err := s.GetSignIn(ctx, h1); err != nil || !sameRecord(got, replaced) {
			t.Errorf("after replacing: %+v, %v", got, err)
		}

		// Expired is "ExpiresAt at or before now".
		n, err := s.DeleteExpiredSignIns(ctx, at)
		if err != nil || n != 1 {
			t.Errorf("DeleteExpiredSignIns = %d, %v; want 1 (carol's)", n, err)
		}
		if _, ok, _ := s.GetSignIn(ctx, h3); ok {
			t.Error("an expired record survived")
		}
		if n, err := s.DeleteExpiredSignIns(ctx, at.Add(time.Hour)); err != nil || n != 0 {
			t.Errorf("DeleteExpiredSignIns at the first expiry = %d, %v; want 0 (h1 was extended)", n, err)
		}
		if err := s.DeleteSignIn(ctx, h2); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := s.GetSignIn(ctx, h2); ok || err != nil {
			t.Errorf("deleted record: ok=%v err=%v", ok, err)
		}
		if err := s.DeleteSignIn(ctx, h2); err != nil {
			t.Errorf("deleting twice: %v", err)
		}
	})
}

// TestSharedBetweenReplicas: what one process writes, another reads.
func TestSharedBetweenReplicas(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		key := testKey(t)
		one, two := db.open(t, Keys{Current: key}), db.open(t, Keys{Current: key})
		ctx := testContext(t)
		h := auth.KeyHash(sha256.Sum256([]byte("shared")))
		rec := signInRecord("alice@contoso.example", netip.MustParseAddr("192.0.2.10"), at.Add(time.Hour))
		if err := one.PutSignIn(ctx, h, rec); err != nil {
			t.Fatal(err)
		}
		if got, ok, err := two.GetSignIn(ctx, h); err != nil || !ok || !sameRecord(got, rec) {
			t.Errorf("the other replica reads %+v, %v, %v", got, ok, err)
		}
		created, err := one.CreateTOTPSecret(ctx, pendingSecret(t, alice))
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := two.AcceptTOTPStep(ctx, alice, created.EnrollmentID, 100, at); err != nil || !ok {
			t.Fatalf("accept on the other replica = %v, %v", ok, err)
		}
		if ok, err := one.AcceptTOTPStep(ctx, alice, created.EnrollmentID, 100, at); err != nil || ok {
			t.Errorf("the same step on the first replica = %v, %v; want refused", ok, err)
		}
	})
}

func pendingSecret(t *testing.T, u mfa.User) mfa.Secret {
	t.Helper()
	key := []byte(randomHex(10))
	return mfa.Secret{User: u, Key: key, EnrollmentID: randomHex(8), CreatedAt: at}
}

func TestTOTPSecrets(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{Current: testKey(t)})
		ctx := testContext(t)
		if _, ok, err := s.TOTPSecret(ctx, alice); ok || err != nil {
			t.Fatalf("secret before any: ok=%v err=%v", ok, err)
		}

		first := pendingSecret(t, alice)
		got, err := s.CreateTOTPSecret(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Key, first.Key) || got.EnrollmentID != first.EnrollmentID || got.Active || got.LastStep != 0 ||
			!got.CreatedAt.Equal(at) || !got.ActivatedAt.IsZero() || got.User != alice {
			t.Errorf("created = %+v", got)
		}
		// A second enrolment finds the first.
		second := pendingSecret(t, alice)
		got, err = s.CreateTOTPSecret(ctx, second)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Key, first.Key) || got.EnrollmentID != first.EnrollmentID {
			t.Error("a second enrolment replaced the pending secret")
		}

		tests := []struct {
			name       string
			enrollment string
			step       int64
			want       bool
		}{
			{"first code activates", first.EnrollmentID, 1000, true},
			{"the same step again", first.EnrollmentID, 1000, false},
			{"an earlier step", first.EnrollmentID, 999, false},
			{"a later step", first.EnrollmentID, 1001, true},
			{"another enrolment's id", second.EnrollmentID, 1005, false},
		}
		for _, tt := range tests {
			ok, err := s.AcceptTOTPStep(ctx, alice, tt.enrollment, tt.step, at.Add(time.Duration(tt.step)*time.Second))
			if err != nil || ok != tt.want {
				t.Errorf("%s: AcceptTOTPStep = %v, %v; want %v", tt.name, ok, err, tt.want)
			}
		}
		got, _, err = s.TOTPSecret(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Active || got.LastStep != 1001 || !got.ActivatedAt.Equal(at.Add(1000*time.Second)) || !got.LastUsedAt.Equal(at.Add(1001*time.Second)) {
			t.Errorf("after use: active=%v last=%d activated=%v used=%v", got.Active, got.LastStep, got.ActivatedAt, got.LastUsedAt)
		}
		if _, ok, _ := s.TOTPSecret(ctx, bob); ok {
			t.Error("bob has alice's secret")
		}

		if had, err := s.DeleteTOTPSecret(ctx, alice); err != nil || !had {
			t.Errorf("delete = %v, %v", had, err)
		}
		if had, err := s.DeleteTOTPSecret(ctx, alice); err != nil || had {
			t.Errorf("delete again = %v, %v", had, err)
		}
		if ok, err := s.AcceptTOTPStep(ctx, alice, first.EnrollmentID, 2000, at); err != nil || ok {
			t.Errorf("accept after delete = %v, %v", ok, err)
		}
	})
}

func TestAcceptStepRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		key := testKey(t)
		// Two handles on the same data: two replicas (one for memory).
		handles := []Store{db.open(t, Keys{Current: key}), db.open(t, Keys{Current: key})}
		ctx := testContext(t)
		sec, err := handles[0].CreateTOTPSecret(ctx, pendingSecret(t, alice))
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range []int64{500, 501} {
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				wins int
				errs []error
			)
			start := make(chan struct{})
			for i := 0; i < 20; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					ok, err := handles[i%2].AcceptTOTPStep(ctx, alice, sec.EnrollmentID, step, at)
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
					}
					if ok {
						wins++
					}
				}()
			}
			close(start)
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("step %d: %d errors, first %v", step, len(errs), errs[0])
			}
			if wins != 1 {
				t.Errorf("step %d accepted %d times by 20 racing callers, want exactly once", step, wins)
			}
		}
	})
}

func TestFailures(t *testing.T) {
	const max, window = 3, 15 * time.Minute
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		if f, err := s.TOTPFailures(ctx, alice); err != nil || f != (mfa.Failures{}) {
			t.Fatalf("failures before any = %+v, %v", f, err)
		}
		steps := []struct {
			name       string
			at         time.Time
			wantCount  int
			wantStart  time.Time
			wantLocked time.Time
		}{
			{"first", at, 1, at, time.Time{}},
			{"second", at.Add(time.Minute), 2, at, time.Time{}},
			{"third locks", at.Add(2 * time.Minute), 3, at, at.Add(2*time.Minute + window)},
			{"while locked the lock stays", at.Add(3 * time.Minute), 4, at, at.Add(2*time.Minute + window)},
			{"after the lock a new window", at.Add(2*time.Minute + window), 1, at.Add(2*time.Minute + window), time.Time{}},
			{"in it", at.Add(3*time.Minute + window), 2, at.Add(2*time.Minute + window), time.Time{}},
			{"after the window a new one", at.Add(2*time.Minute + 2*window), 1, at.Add(2*time.Minute + 2*window), time.Time{}},
		}
		for _, st := range steps {
			f, err := s.RecordTOTPFailure(ctx, alice, st.at, max, window)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if f.Count != st.wantCount || !f.WindowStart.Equal(st.wantStart) || !f.LockedUntil.Equal(st.wantLocked) {
				t.Errorf("%s: failures = %d since %v, locked until %v; want %d since %v, locked until %v",
					st.name, f.Count, f.WindowStart, f.LockedUntil, st.wantCount, st.wantStart, st.wantLocked)
			}
			read, err := s.TOTPFailures(ctx, alice)
			if err != nil || read != f {
				if !(read.Count == f.Count && read.WindowStart.Equal(f.WindowStart) && read.LockedUntil.Equal(f.LockedUntil)) {
					t.Errorf("%s: read back %+v, %v; want %+v", st.name, read, err, f)
				}
			}
		}
		if f, _ := s.TOTPFailures(ctx, bob); f.Count != 0 {
			t.Errorf("bob has %d failures", f.Count)
		}
		if err := s.ClearTOTPFailures(ctx, alice); err != nil {
			t.Fatal(err)
		}
		if f, err := s.TOTPFailures(ctx, alice); err != nil || f.Count != 0 {
			t.Errorf("after clearing: %+v, %v", f, err)
		}
		// A policy of one locks at the first failure.
		if f, err := s.RecordTOTPFailure(ctx, bob, at, 1, window); err != nil || !f.LockedUntil.Equal(at.Add(window)) {
			t.Errorf("max 1: %+v, %v", f, err)
		}
	})
}

func TestFailuresRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		handles := []Store{db.open(t, Keys{}), db.open(t, Keys{})}
		ctx := testContext(t)
		const n, max = 30, 10
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			counts = map[int]int{}
			locks  = map[int64]bool{} // lock ends, in microseconds
		)
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				f, err := handles[i%2].RecordTOTPFailure(ctx, alice, at, max, time.Hour)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				counts[f.Count]++
				if !f.LockedUntil.IsZero() {
					locks[f.LockedUntil.UnixMicro()] = true
				}
			}()
		}
		close(start)
		wg.Wait()
		// Atomic increments: every caller saw a different count, 1..n.
		for c := 1; c <= n; c++ {
			if counts[c] != 1 {
				t.Errorf("count %d seen %d times, want once (all: %v)", c, counts[c], counts)
				break
			}
		}
		if len(locks) != 1 || !locks[at.Add(time.Hour).UnixMicro()] {
			t.Errorf("lock ends seen: %v, want just %v", locks, at.Add(time.Hour))
		}
		if f, _ := handles[0].TOTPFailures(ctx, alice); f.Count != n {
			t.Errorf("final count %d, want %d", f.Count, n)
		}
	})
}

func TestSealing(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		ctx := testContext(t)
		keyless := db.open(t, Keys{})
		if _, err := keyless.CreateTOTPSecret(ctx, pendingSecret(t, alice)); !errors.Is(err, ErrNoKey) {
			t.Fatalf("create without a key = %v, want ErrNoKey", err)
		}
		if db.raw == nil {
			return // one connection: the rest needs a second handle with other keys
		}
		key, other := testKey(t), testKey(t)
		s := db.open(t, Keys{Current: key})
		if _, err := s.CreateTOTPSecret(ctx, pendingSecret(t, alice)); err != nil {
			t.Fatal(err)
		}
		var unknown *UnknownKeyError
		if _, _, err := db.open(t, Keys{Current: other}).TOTPSecret(ctx, alice); !errors.As(err, &unknown) || unknown.KeyID != KeyID(key) {
			t.Errorf("read under another key = %v, want an UnknownKeyError naming %s", err, KeyID(key))
		}
		if _, _, err := keyless.TOTPSecret(ctx, alice); !errors.Is(err, ErrNoKey) {
			t.Errorf("read without a key = %v, want ErrNoKey", err)
		}
		// A sealed secret moved onto another user does not open.
		moveSecret(t, s, alice, bob)
		if _, _, err := s.TOTPSecret(ctx, bob); err == nil || !strings.Contains(err.Error(), "does not open") {
			t.Errorf("alice's sealed secret read as bob's: %v", err)
		}
	})
}

// moveSecret rewrites the row of from as to's, as someone with write
// access to the database might.
func moveSecret(t *testing.T, s Store, from, to mfa.User) {
	t.Helper()
	ctx := testContext(t)
	var err error
	switch s := s.(type) {
	case *SQLite:
		_, err = s.db.ExecContext(ctx, `UPDATE totp_secrets SET user_name = ?1 WHERE provider = ?2 AND user_name = ?3`, to.Name, from.Provider, from.Name)
	case *Postgres:
		_, err = s.pool.Exec(ctx, `UPDATE totp_secrets SET user_name = $1 WHERE provider = $2 AND user_name = $3`, to.Name, from.Provider, from.Name)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestRotateKey(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		ctx := testContext(t)
		oldKey, newKey := testKey(t), testKey(t)
		before := db.open(t, Keys{Current: oldKey})
		secrets := map[mfa.User][]byte{}
		for _, u := range []mfa.User{alice, bob} {
			s, err := before.CreateTOTPSecret(ctx, pendingSecret(t, u))
			if err != nil {
				t.Fatal(err)
			}
			secrets[u] = s.Key
		}
		if _, err := before.RotateKey(ctx); err != nil {
			t.Fatalf("rotating to the key in use: %v", err)
		}

		during := db.open(t, Keys{Current: newKey, Previous: [][]byte{oldKey}})
		for u, want := range secrets {
			if got, _, err := during.TOTPSecret(ctx, u); err != nil || !bytes.Equal(got.Key, want) {
				t.Errorf("%s under the previous key: %v", u, err)
			}
		}
		// A secret created during the rotation is sealed under the new key.
		carol := mfa.NewUser("contoso", "carol@contoso.example")
		if _, err := during.CreateTOTPSecret(ctx, pendingSecret(t, carol)); err != nil {
			t.Fatal(err)
		}
		n, err := during.RotateKey(ctx)
		if err != nil || n != 2 {
			t.Fatalf("RotateKey = %d, %v; want 2", n, err)
		}
		if n, err := during.RotateKey(ctx); err != nil || n != 0 {
			t.Errorf("RotateKey again = %d, %v; want 0", n, err)
		}

		after := db.open(t, Keys{Current: newKey})
		for u, want := range secrets {
			if got, _, err := after.TOTPSecret(ctx, u); err != nil || !bytes.Equal(got.Key, want) {
				t.Errorf("%s under the new key alone: %v", u, err)
			}
		}
		var unknown *UnknownKeyError
		if _, _, err := db.open(t, Keys{Current: oldKey}).TOTPSecret(ctx, alice); !errors.As(err, &unknown) || unknown.KeyID != KeyID(newKey) {
			t.Errorf("the old key alone after rotation: %v, want UnknownKeyError", err)
		}
		if _, err := db.open(t, Keys{}).RotateKey(ctx); !errors.Is(err, ErrNoKey) {
			t.Errorf("RotateKey without a key = %v", err)
		}
	})
}

func TestKeys(t *testing.T) {
	k1, k2 := testKey(t), testKey(t)
	if KeyID(k1) == KeyID(k2) || len(KeyID(k1)) != 16 || KeyID(k1) != KeyID(append([]byte(nil), k1...)) {
		t.Errorf("key ids %s and %s", KeyID(k1), KeyID(k2))
	}
	if strings.Contains(hex.EncodeToString(k1), KeyID(k1)) {
		t.Error("the key id is part of the key")
	}
	for _, bad := range []string{"", "c2hvcnQ=", "not base64!", strings.Repeat("A", 44) + "=="} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
	if _, err := newSealer(Keys{Previous: [][]byte{k1}}); err == nil {
		t.Error("a previous key without a current one was accepted")
	}
	if _, err := newSealer(Keys{Current: k1[:16]}); err == nil {
		t.Error("a 16-byte key was accepted")
	}
	keys, err := KeysFromConfig(config.Store{Key: config.NewSecret("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")})
	if err != nil || len(keys.Current) != KeySize || keys.Previous != nil {
		t.Errorf("KeysFromConfig = %v, %v", keys, err)
	}
	if _, err := KeysFromConfig(config.Store{Key: config.NewSecret("short")}); err == nil || strings.Contains(err.Error(), "short") {
		t.Errorf("a bad key: %v (the error must not quote it)", err)
	}
}

// TestNothingInClear looks for a session key and a TOTP secret in every
// byte the database holds, as someone with a copy of it would.
func TestNothingInClear(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		ctx := testContext(t)
		s := db.open(t, Keys{Current: testKey(t)})
		// Stored as auth stores it: under its verifier, SHA-256 of its
		// SHA-256; the SHA-256 itself would answer a MySQL scramble.
		sessionKey := auth.SessionKeyPrefix + strings.Repeat("q", 20) + randomHex(16)
		h1 := sha256.Sum256([]byte(sessionKey))
		rec := sessionKeyRecord("alice@contoso.example", netip.MustParseAddr("192.0.2.10"), at.Add(time.Hour))
		if err := s.PutSignIn(ctx, sha256.Sum256(h1[:]), rec); err != nil {
			t.Fatal(err)
		}
		sec := pendingSecret(t, alice)
		sec.Key = []byte("totp-secret-" + randomHex(4)) // 20 bytes
		if _, err := s.CreateTOTPSecret(ctx, sec); err != nil {
			t.Fatal(err)
		}
		b32 := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sec.Key)

		raw := db.raw(t)
		// The dump must see the data, or finding nothing proves nothing.
		for _, visible := range []string{rec.Identity.UPN, alice.Name, sec.EnrollmentID} {
			if !bytes.Contains(raw, []byte(visible)) {
				t.Fatalf("the raw bytes do not show %q: the dump misses the data", visible)
			}
		}
		forbidden := map[string][]byte{
			"the session key":                       []byte(sessionKey),
			"the session key's random part":         []byte(sessionKey[len(auth.SessionKeyPrefix):]),
			"the session key's SHA-256":             h1[:],
			"the session key's SHA-256 in hex":      []byte(hex.EncodeToString(h1[:])),
			"the TOTP secret":                       sec.Key,
			"the TOTP secret in hex":                []byte(hex.EncodeToString(sec.Key)),
			"the TOTP secret in base32":             []byte(b32),
			"the TOTP secret in lower-case base32":  []byte(strings.ToLower(b32)),
			"the TOTP secret's first 8 bytes (hex)": []byte(hex.EncodeToString(sec.Key[:8])),
		}
		for what, b := range forbidden {
			if bytes.Contains(raw, b) {
				t.Errorf("%s is in the database in clear", what)
			}
		}
	})
}

func TestMigrations(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		ctx := testContext(t)
		var want []int
		for _, m := range db.migrations {
			want = append(want, m.version)
		}
		// Replicas starting together on an empty database.
		var wg sync.WaitGroup
		stores := make([]Store, 8)
		errs := make([]error, 8)
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = db.connect(ctx, Keys{})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("concurrent open: %v", err)
				continue
			}
			t.Cleanup(func() { stores[i].Close() })
		}
		if t.Failed() {
			return
		}
		s := stores[0]
		if got := appliedVersions(t, s); !slices.Equal(got, want) {
			t.Errorf("schema_migrations = %v, want %v, each once", got, want)
		}
		// Opening again changes nothing.
		db.open(t, Keys{})
		if got := appliedVersions(t, s); !slices.Equal(got, want) {
			t.Errorf("after another open, schema_migrations = %v", got)
		}
		// A schema newer than this build is refused.
		markVersion(t, s, 99)
		if s, err := db.connect(ctx, Keys{}); err == nil || !strings.Contains(err.Error(), "schema version 99") {
			if err == nil {
				s.Close()
			}
			t.Errorf("open of a newer schema = %v, want a refusal naming version 99", err)
		}
	})
}

// TestUpgrade: a database made by an older portcullis, with data in it,
// is brought up to date without losing the data: from the first schema,
// and from the one before the latest.
func TestUpgrade(t *testing.T) {
	for _, from := range []int{len(sqliteMigrations) - 1, 1} {
		t.Run(fmt.Sprintf("from version %d", from), func(t *testing.T) {
			eachDurableBackend(t, func(t *testing.T, db database) {
				testUpgradeFrom(t, db, from)
			})
		})
	}
}

func testUpgradeFrom(t *testing.T, db database, from int) {
	ctx := testContext(t)
	old, err := db.connectAt(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	if got := appliedVersions(t, old); len(got) != from || got[from-1] != from {
		t.Fatalf("the old schema = %v", got)
	}
	// What portcullis wrote before verifiers: a session key under the
	// SHA-256 of its text, and an address-grace record.
	key := auth.KeyHash(sha256.Sum256([]byte("pcx_from before " + randomHex(8))))
	grace := auth.KeyHash(sha256.Sum256([]byte("address-grace from before " + randomHex(8))))
	rec := signInRecord("alice@contoso.example", netip.MustParseAddr("192.0.2.10"), at.Add(time.Hour))
	putSignInAsVersion1(t, old, key, rec)
	putSignInAsVersion1(t, old, grace, rec)
	old.Close()

	s := db.open(t, Keys{})
	if got := appliedVersions(t, s); len(got) != len(db.migrations) {
		t.Errorf("after the upgrade, schema_migrations = %v", got)
	}
	for _, h := range []auth.KeyHash{key, grace} {
		if got, ok, err := s.GetSignIn(ctx, h); err != nil || !ok || !sameRecord(got, rec) {
			t.Errorf("a sign-in from before the upgrade: %+v, %v, %v", got, ok, err)
		}
	}
	// Neither is reachable by a scramble.
	if got, err := s.SessionKeysOf(ctx, "alice@contoso.example", at); err != nil || len(got) != 0 {
		t.Errorf("rows from before the upgrade are listed: %d, %v", len(got), err)
	}
	// New keys are.
	v := auth.KeyHash(sha256.Sum256([]byte("a verifier")))
	if err := s.PutSignIn(ctx, v, sessionKeyRecord("alice@contoso.example", netip.Addr{}, at.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SessionKeysOf(ctx, "alice@contoso.example", at); err != nil || len(got) != 1 || got[0].Verifier != v {
		t.Errorf("a key stored after the upgrade: %d listed, %v", len(got), err)
	}
	if from < 2 {
		if err := s.PutPendingSignIn(ctx, key, auth.PendingSignIn{ExpiresAt: at}); err != nil {
			t.Errorf("the new table: %v", err)
		}
	}
}

// putSignInAsVersion1 writes a sign-in as portcullis did before
// migration 4, into the columns of migration 1.
func putSignInAsVersion1(t *testing.T, s Store, h auth.KeyHash, rec auth.SignInRecord) {
	t.Helper()
	ctx := testContext(t)
	r := toRow(rec)
	var err error
	switch s := s.(type) {
	case *SQLite:
		_, err = s.db.ExecContext(ctx, `INSERT INTO sign_ins (key_hash, provider, kind, tenant_id, object_id, upn, app_id,
				display_name, login_name, client_addr, signed_in_at, expires_at, home_account_id)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)`,
			h[:], r.provider, r.kind, r.tenantID, r.objectID, r.upn, r.appID, r.displayName, r.loginName,
			r.clientAddr, micros(r.signedInAt), micros(r.expiresAt), r.homeAccountID)
	case *Postgres:
		_, err = s.pool.Exec(ctx, `INSERT INTO sign_ins (key_hash, provider, kind, tenant_id, object_id, upn, app_id,
				display_name, login_name, client_addr, signed_in_at, expires_at, home_account_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			h[:], r.provider, r.kind, r.tenantID, r.objectID, r.upn, r.appID, r.displayName, r.loginName,
			r.clientAddr, r.signedInAt, r.expiresAt, r.homeAccountID)
	default:
		t.Fatalf("a %T has no old schema", s)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func appliedVersions(t *testing.T, s Store) []int {
	t.Helper()
	ctx := testContext(t)
	var out []int
	switch s := s.(type) {
	case *SQLite:
		rows, err := s.db.QueryContext(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			out = append(out, v)
		}
	case *Postgres:
		rows, err := s.pool.Query(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		if out, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func markVersion(t *testing.T, s Store, v int) {
	t.Helper()
	ctx := testContext(t)
	var err error
	switch s := s.(type) {
	case *SQLite:
		_, err = s.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'from the future', 0)`, v)
	case *Postgres:
		_, err = s.pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')`, v)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestPendingSignIns(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		h := auth.KeyHash(sha256.Sum256([]byte("pending")))
		prompt := auth.DeviceCodePrompt{VerificationURL: "https://login.example/device", UserCode: "ABCD-EFGH", ExpiresAt: at.Add(15 * time.Minute), Message: "To sign in, ..."}
		pending := auth.PendingSignIn{Prompt: prompt, ExpiresAt: prompt.ExpiresAt}
		if err := s.PutPendingSignIn(ctx, h, pending); err != nil {
			t.Fatal(err)
		}
		got, ok, err := s.GetPendingSignIn(ctx, h)
		if err != nil || !ok || got.Done || got.Prompt.UserCode != prompt.UserCode || got.Prompt.VerificationURL != prompt.VerificationURL ||
			got.Prompt.Message != prompt.Message || !got.Prompt.ExpiresAt.Equal(prompt.ExpiresAt) || !got.ExpiresAt.Equal(pending.ExpiresAt) {
			t.Fatalf("pending = %+v, %v, %v", got, ok, err)
		}
		// A pending sign-in cannot be taken.
		if _, ok, err := s.TakePendingSignIn(ctx, h); ok || err != nil {
			t.Fatalf("took a pending sign-in: %v, %v", ok, err)
		}

		done := auth.PendingSignIn{Prompt: prompt, Done: true, ExpiresAt: at.Add(5 * time.Minute),
			Identity: signInRecord("alice@contoso.example", netip.Addr{}, at).Identity}
		if err := s.PutPendingSignIn(ctx, h, done); err != nil {
			t.Fatal(err)
		}
		// Of many takers, one gets it.
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			taken []auth.PendingSignIn
		)
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, ok, err := s.TakePendingSignIn(ctx, h)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Error(err)
				}
				if ok {
					taken = append(taken, p)
				}
			}()
		}
		wg.Wait()
		if len(taken) != 1 {
			t.Fatalf("taken %d times, want once", len(taken))
		}
		if p := taken[0]; !p.Done || p.Identity != done.Identity || p.Reason != "" {
			t.Errorf("taken = %+v", p)
		}
		if _, ok, _ := s.GetPendingSignIn(ctx, h); ok {
			t.Error("a taken sign-in is still there")
		}

		// A refusal travels too; expired records go with the sign-ins.
		refused := auth.PendingSignIn{Prompt: prompt, Done: true, Reason: auth.ReasonDeclined, Message: "the sign-in was declined", ExpiresAt: at}
		if err := s.PutPendingSignIn(ctx, h, refused); err != nil {
			t.Fatal(err)
		}
		if p, ok, err := s.GetPendingSignIn(ctx, h); err != nil || !ok || p.Reason != auth.ReasonDeclined || p.Message != refused.Message {
			t.Errorf("refused = %+v, %v, %v", p, ok, err)
		}
		if n, err := s.DeleteExpiredSignIns(ctx, at); err != nil || n != 1 {
			t.Errorf("DeleteExpiredSignIns = %d, %v; want the pending one", n, err)
		}
	})
}

// TestSQLiteFileNames: the file is where store.path says, whatever
// characters the name holds (the driver reads it as a URI).
func TestSQLiteFileNames(t *testing.T) {
	for _, name := range []string{"plain.db", "with space.db", "per%41cent.db", "ask?and#hash.db", "ünï.db"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a dir", name)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			s, err := OpenSQLite(testContext(t), path, Keys{})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatalf("the database is not at %s: %v", path, err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("the database file has mode %v, want 0600", fi.Mode().Perm())
			}
		})
	}
}

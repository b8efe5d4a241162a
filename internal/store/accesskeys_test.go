package store

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// newAccessKey makes a key for forID on resource, created at created.
func newAccessKey(t *testing.T, forID, resource string, created time.Time) (string, auth.AccessKey, auth.KeyHash) {
	t.Helper()
	key, rec, h, err := auth.NewAccessKey("contoso", forID, resource, 90*24*time.Hour, created)
	if err != nil {
		t.Fatal(err)
	}
	return key, rec, h
}

func sameAccessKey(a, b auth.AccessKey) bool {
	return a.ID == b.ID && a.Provider == b.Provider && a.For == b.For && a.Kind == b.Kind && a.Resource == b.Resource &&
		a.CreatedAt.Equal(b.CreatedAt) && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.LastUsedAt.Equal(b.LastUsedAt) && a.RevokedAt.Equal(b.RevokedAt)
}

func TestAccessKeys(t *testing.T) {
	eachBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		botKey, bot, botHash := newAccessKey(t, "6E5D4C3B-2A19-4807-B6A5-948372615041", "finance", at)
		_, person, personHash := newAccessKey(t, "Alice@Contoso.Example", "sales", at.Add(time.Second))
		for h, k := range map[auth.KeyHash]auth.AccessKey{botHash: bot, personHash: person} {
			if err := s.PutAccessKey(ctx, h, k); err != nil {
				t.Fatal(err)
			}
		}

		got, ok, err := s.AccessKeyByHash(ctx, sha256.Sum256([]byte(botKey)))
		if err != nil || !ok || !sameAccessKey(got, bot) {
			t.Errorf("by hash = %+v, %v, %v; want %+v", got, ok, err, bot)
		}
		if got.Kind != auth.KindServicePrincipal || got.For != strings.ToLower(bot.For) {
			t.Errorf("the program's key is for %s %q", got.Kind, got.For)
		}
		if got, ok, err := s.AccessKeyByID(ctx, person.ID); err != nil || !ok || !sameAccessKey(got, person) {
			t.Errorf("by id = %+v, %v, %v; want %+v", got, ok, err, person)
		}
		if _, ok, err := s.AccessKeyByHash(ctx, sha256.Sum256([]byte(botKey+"x"))); ok || err != nil {
			t.Errorf("another key found: %v, %v", ok, err)
		}
		if _, ok, err := s.AccessKeyByID(ctx, "aaaaaaaaaaaa"); ok || err != nil {
			t.Errorf("an unknown id found: %v, %v", ok, err)
		}

		// An id or a hash is never stored twice.
		dup := person
		dup.For = "mallory@contoso.example"
		if err := s.PutAccessKey(ctx, sha256.Sum256([]byte("other")), dup); err == nil {
			t.Errorf("a second key with id %s was stored", dup.ID)
		}
		_, fresh, _ := newAccessKey(t, "mallory@contoso.example", "sales", at)
		if err := s.PutAccessKey(ctx, personHash, fresh); err == nil {
			t.Errorf("a second key with the same hash was stored")
		}

		if err := s.TouchAccessKey(ctx, bot.ID, at.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.RevokeAccessKey(ctx, bot.ID, at.Add(2*time.Hour)); !ok || err != nil {
			t.Fatalf("revoke = %v, %v", ok, err)
		}
		// Revoking again keeps the first time.
		if ok, err := s.RevokeAccessKey(ctx, bot.ID, at.Add(3*time.Hour)); !ok || err != nil {
			t.Fatalf("revoke again = %v, %v", ok, err)
		}
		if ok, err := s.RevokeAccessKey(ctx, "aaaaaaaaaaaa", at); ok || err != nil {
			t.Errorf("revoke of an unknown id = %v, %v", ok, err)
		}

		list, err := s.ListAccessKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bot.LastUsedAt, bot.RevokedAt = at.Add(time.Hour), at.Add(2*time.Hour)
		if len(list) != 2 || !sameAccessKey(list[0], bot) || !sameAccessKey(list[1], person) {
			t.Errorf("list = %+v, want the program's key (used, revoked) then the person's", list)
		}
		if list[0].Usable(at.Add(3*time.Hour)) || !list[1].Usable(at.Add(3*time.Hour)) {
			t.Errorf("usable: revoked %v, active %v", list[0].Usable(at), list[1].Usable(at))
		}
	})
}

func TestAccessKeysSharedBetweenReplicas(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		a, b := db.open(t, Keys{}), db.open(t, Keys{})
		ctx := testContext(t)
		key, rec, h := newAccessKey(t, "alice@contoso.example", "sales", at)
		if err := a.PutAccessKey(ctx, h, rec); err != nil {
			t.Fatal(err)
		}
		// Revoked through one replica (the CLI), seen by the other (the
		// proxy).
		if ok, err := b.RevokeAccessKey(ctx, rec.ID, at.Add(time.Minute)); !ok || err != nil {
			t.Fatalf("revoke = %v, %v", ok, err)
		}
		got, ok, err := a.AccessKeyByHash(ctx, sha256.Sum256([]byte(key)))
		if err != nil || !ok || !got.Revoked() {
			t.Errorf("the other replica sees %+v, %v, %v; want it revoked", got, ok, err)
		}
		// Concurrent revocations agree on one time.
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := a.RevokeAccessKey(ctx, rec.ID, at.Add(time.Duration(i+2)*time.Minute)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got, _, _ := b.AccessKeyByID(ctx, rec.ID); !got.RevokedAt.Equal(at.Add(time.Minute)) {
			t.Errorf("revoked at %v, want the first revocation %v", got.RevokedAt, at.Add(time.Minute))
		}
	})
}

func TestAccessKeyNotInClear(t *testing.T) {
	eachDurableBackend(t, func(t *testing.T, db database) {
		s := db.open(t, Keys{})
		ctx := testContext(t)
		key, rec, h := newAccessKey(t, "alice@contoso.example", "sales", at)
		if err := s.PutAccessKey(ctx, h, rec); err != nil {
			t.Fatal(err)
		}
		raw := db.raw(t)
		if !bytes.Contains(raw, []byte(rec.ID)) {
			t.Fatalf("the raw bytes do not show the key's id: the dump misses the data")
		}
		for what, b := range map[string]string{
			"the key":               key,
			"the key's random part": key[len(auth.AccessKeyPrefix):],
			"its first 16 chars":    key[len(auth.AccessKeyPrefix) : len(auth.AccessKeyPrefix)+16],
		} {
			if bytes.Contains(raw, []byte(b)) {
				t.Errorf("%s is in the database in clear", what)
			}
		}
	})
}

package auth_test

import (
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/internal/store"
)

// mysqlScramble is caching_sha2_password's fast-authentication response
// for password against nonce, as a MySQL client computes it.
func mysqlScramble(password string, nonce []byte) []byte {
	h1 := sha256.Sum256([]byte(password))
	h2 := sha256.Sum256(h1[:])
	m := sha256.New()
	m.Write(h2[:])
	m.Write(nonce)
	out := m.Sum(nil)
	for i := range out {
		out[i] ^= h1[i]
	}
	return out
}

func scrambled(t *testing.T, login, resource, key string) auth.Request {
	t.Helper()
	nonce := make([]byte, 20)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	req := request(t, login, resource, "", elsewhere, time.Now())
	req.Protocol = ""
	req.Scramble = &auth.SHA2Scramble{Nonce: nonce, Response: mysqlScramble(key, nonce)}
	return req
}

// A session key proven by a scramble, on the real state store: shared by
// replicas on PostgreSQL; refused on a resource that requires TOTP (no
// code can come with a scramble); refused, not allowed, once the store
// is gone.
func TestScrambleOnTheStateStore(t *testing.T) {
	t.Parallel()
	sim := newSim(t)
	stores := map[string][]store.Store{
		"sqlite":   {sqliteStore(t)},
		"postgres": postgresStores(t, 2),
	}
	for name, sts := range stores {
		t.Run(name, func(t *testing.T) {
			one := newReplica(t, sim, sts[0], 0)
			other := one
			if len(sts) > 1 {
				other = newReplica(t, sim, sts[1], 0)
			}
			d, err := signIn(t, one, sim, aliceUPN, "open", "anything")
			if err != nil || d.SessionKey == "" {
				t.Fatalf("sign-in: %v", err)
			}
			ctx := testContext(t)
			got, err := other.a.Decide(ctx, scrambled(t, aliceUPN, "open", d.SessionKey))
			if err != nil || got.Method != auth.MethodSessionKey || got.Identity.UPN != aliceUPN {
				t.Fatalf("the key by a scramble: %v", err)
			}
			_, err = other.a.Decide(ctx, scrambled(t, aliceUPN, "vault", d.SessionKey))
			r := wantRefusal(t, err, auth.ReasonNotAllowed)
			if !strings.Contains(r.Message, "TOTP") || !strings.Contains(r.Message, "TLS") {
				t.Errorf("refusal on vault = %q, want it to say TOTP needs TLS", r.Message)
			}

			sts[len(sts)-1].Close()
			_, err = other.a.Decide(ctx, scrambled(t, aliceUPN, "open", d.SessionKey))
			wantRefusal(t, err, auth.ReasonUnavailable)
		})
	}
}

package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
)

// clientScramble is what a MySQL client sends for password with
// caching_sha2_password's fast authentication, written as go-sql-driver
// writes it (scrambleSHA256Password), independently of proves:
// XOR(SHA256(password), SHA256(SHA256(SHA256(password)), nonce)).
func clientScramble(password string, nonce []byte) []byte {
	crypt := sha256.New()
	crypt.Write([]byte(password))
	message1 := crypt.Sum(nil)
	crypt.Reset()
	crypt.Write(message1)
	message1Hash := crypt.Sum(nil)
	crypt.Reset()
	crypt.Write(message1Hash)
	crypt.Write(nonce)
	message2 := crypt.Sum(nil)
	for i := range message1 {
		message1[i] ^= message2[i]
	}
	return message1
}

func newNonce(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// scrambleRequest proves key as login by a scramble against a fresh
// nonce; a device-code prompt fails the test.
func scrambleRequest(t *testing.T, login, resource, key string, addr netip.Addr) Request {
	req := noPromptRequest(t, login, "", addr)
	req.Resource = resource
	nonce := newNonce(t)
	req.Scramble = &SHA2Scramble{Nonce: nonce, Response: clientScramble(key, nonce)}
	return req
}

func TestScrambleProves(t *testing.T) {
	key, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	nonce := newNonce(t)
	v := sessionKeyVerifier(key)
	tests := []struct {
		name string
		s    SHA2Scramble
		v    KeyHash
		want bool
	}{
		{name: "the key", s: SHA2Scramble{Nonce: nonce, Response: clientScramble(key, nonce)}, v: v, want: true},
		{name: "another nonce", s: SHA2Scramble{Nonce: newNonce(t), Response: clientScramble(key, nonce)}, v: v},
		{name: "another key", s: SHA2Scramble{Nonce: nonce, Response: clientScramble(key+"x", nonce)}, v: v},
		{name: "a short response", s: SHA2Scramble{Nonce: nonce, Response: clientScramble(key, nonce)[:31]}, v: v},
		{name: "a long response", s: SHA2Scramble{Nonce: nonce, Response: append(clientScramble(key, nonce), 0)}, v: v},
		// A record under the SHA-256 of the key (an older portcullis's)
		// cannot be proven: the client's math leads to the verifier.
		{name: "against the key's SHA-256", s: SHA2Scramble{Nonce: nonce, Response: clientScramble(key, nonce)}, v: hashKey(key)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.proves(tt.v); got != tt.want {
				t.Errorf("proves = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSessionKeyScramble(t *testing.T) {
	clk := &clock{}
	store := NewMemorySessionStore()
	e := newEnv(t, withDeps(func(d *Deps) { d.Now, d.Sessions = clk.Now, store }), withConfig(func(c *config.Config) {
		c.Sessions.Aliases = map[string]string{"Alice": aliceUPN}
		c.Sessions.AddressGrace = durationPtr(10 * time.Minute)
	}))
	alice := e.signIn(t, aliceUPN, "sales", aliceAddr)
	bob := e.signIn(t, bobUPN, "sales", otherAddr)
	ctx := testContext(t)

	// A key stored by an older portcullis: under its SHA-256, not listed.
	legacy, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	rec, ok, err := store.GetSignIn(ctx, sessionKeyVerifier(alice.SessionKey))
	if err != nil || !ok {
		t.Fatalf("alice's key: %v, %v", ok, err)
	}
	rec.ScrambleUser = ""
	if err := store.PutSignIn(ctx, hashKey(legacy), rec); err != nil {
		t.Fatal(err)
	}
	// Listed: alice's one key, not her address-grace record nor the old key.
	if keys, err := store.SessionKeysOf(ctx, aliceUPN, clk.Now()); err != nil || len(keys) != 1 || keys[0].Verifier != sessionKeyVerifier(alice.SessionKey) {
		t.Fatalf("alice's listed keys = %d, %v; want her one key", len(keys), err)
	}
	wrongKey, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	codes := e.sim.Requests(entrasim.EndpointDeviceCode)

	tests := []struct {
		name     string
		req      Request
		want     RefusalReason
		wantUser string
	}{
		{name: "alice's key", req: scrambleRequest(t, aliceUPN, "sales", alice.SessionKey, otherAddr), wantUser: aliceUPN},
		{name: "login in another case", req: scrambleRequest(t, "ALICE@Contoso.Example", "sales", alice.SessionKey, otherAddr), wantUser: aliceUPN},
		{name: "through an alias", req: scrambleRequest(t, "alice", "sales", alice.SessionKey, otherAddr), wantUser: aliceUPN},
		{name: "bob's key", req: scrambleRequest(t, bobUPN, "sales", bob.SessionKey, otherAddr), wantUser: bobUPN},
		{name: "alice's key as bob", req: scrambleRequest(t, bobUPN, "sales", alice.SessionKey, otherAddr), want: ReasonBadCredentials},
		{name: "bob's key as alice", req: scrambleRequest(t, aliceUPN, "sales", bob.SessionKey, otherAddr), want: ReasonBadCredentials},
		{name: "an unknown key", req: scrambleRequest(t, aliceUPN, "sales", wrongKey, otherAddr), want: ReasonBadCredentials},
		// Address grace is not a way in without a key.
		{name: "an unknown key from alice's address", req: scrambleRequest(t, aliceUPN, "sales", wrongKey, aliceAddr), want: ReasonBadCredentials},
		{name: "a key stored by an older portcullis", req: scrambleRequest(t, aliceUPN, "sales", legacy, otherAddr), want: ReasonBadCredentials},
		{name: "carol, who has no key", req: scrambleRequest(t, carolUPN, "sales", alice.SessionKey, otherAddr), want: ReasonBadCredentials},
		{name: "a scramble for another nonce", req: func() Request {
			r := scrambleRequest(t, aliceUPN, "sales", alice.SessionKey, otherAddr)
			r.Scramble.Nonce = newNonce(t)
			return r
		}(), want: ReasonBadCredentials},
		{name: "a short nonce", req: func() Request {
			nonce := newNonce(t)[:8]
			r := scrambleRequest(t, aliceUPN, "sales", alice.SessionKey, otherAddr)
			r.Scramble = &SHA2Scramble{Nonce: nonce, Response: clientScramble(alice.SessionKey, nonce)}
			return r
		}(), want: ReasonBadCredentials},
		{name: "the key in the password does not count", req: func() Request {
			r := scrambleRequest(t, aliceUPN, "sales", wrongKey, otherAddr)
			r.Password = alice.SessionKey
			return r
		}(), want: ReasonBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.a.Decide(testContext(t), tt.req)
			if tt.want != "" {
				r := wantRefusal(t, err, tt.want)
				if strings.Contains(r.Error(), SessionKeyPrefix) {
					t.Errorf("refusal %q quotes a key", r.Error())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Method != MethodSessionKey || d.Identity.UPN != tt.wantUser || d.SessionKey != "" || d.Backend.User == "" {
				t.Errorf("decision = %s by %s (new key %v, backend %q), want %s by session key", d.Identity.Name(), d.Method, d.SessionKey != "", d.Backend.User, tt.wantUser)
			}
			if MethodFor(tt.req) != MethodSessionKey {
				t.Errorf("MethodFor = %s", MethodFor(tt.req))
			}
		})
	}
	if got := e.sim.Requests(entrasim.EndpointDeviceCode); got != codes {
		t.Errorf("%d device codes requested for scrambles", got-codes)
	}

	// The old key still works as a password.
	if d, err := e.a.Decide(ctx, noPromptRequest(t, aliceUPN, legacy, otherAddr)); err != nil || d.Identity.UPN != aliceUPN {
		t.Errorf("the old key as a password: %v", err)
	}
	// Groups decide as for a typed key: bob is in Finance, alice is not.
	if d, err := e.a.Decide(ctx, scrambleRequest(t, bobUPN, "finance", bob.SessionKey, otherAddr)); err != nil || d.Backend.User != "fin" {
		t.Errorf("bob's key on finance: %v", err)
	}
	_, err = e.a.Decide(ctx, scrambleRequest(t, aliceUPN, "finance", alice.SessionKey, otherAddr))
	wantRefusal(t, err, ReasonNotAllowed)

	// Past sessions.ttl, the key no longer answers a scramble.
	clk.Advance(12*time.Hour + time.Second)
	_, err = e.a.Decide(ctx, scrambleRequest(t, aliceUPN, "sales", alice.SessionKey, otherAddr))
	wantRefusal(t, err, ReasonBadCredentials)
}

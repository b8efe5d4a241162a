package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// FuzzValidateToken hands arbitrary strings to the access-token check of
// a started identity core on the Entra ID simulator, and also splices
// them into a genuine token the simulator just signed, so that the
// mutator works on the bytes around a live signature. The rules: only a
// genuine token, byte for byte, validates; everything else is refused as
// a bad credential (the simulator is up, so never "unavailable"); nothing
// panics; and a refusal never repeats the token.
func FuzzValidateToken(f *testing.F) {
	for _, s := range []string{
		"",
		"a.b.c",
		"eyJ.eyJ.",
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
		"eyJhbGciOiJSUzI1NiIsImtpZCI6Ii4uLy4uL2V0Yy9wYXNzd2QifQ.eyJ0aWQiOiJ4In0.c2ln",
		"eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
		strings.Repeat("A", maxTokenBytes) + ".b.c",
	} {
		f.Add(s, false, uint16(0), uint16(0))
	}
	// Splices: the last character of the signature (one of each group of
	// 16 that share their two significant bits), the middle of the
	// claims, the whole header.
	for _, c := range []string{"B", "R", "h", "x"} {
		f.Add(c, true, uint16(0xffff), uint16(1))
	}
	f.Add("x", true, uint16(400), uint16(1))
	f.Add("eyJhbGciOiJub25lIn0", true, uint16(0), uint16(0))

	sim, err := entrasim.New(testDirectory(), entrasim.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sim.Close() })
	a, err := New(simConfig(sim), Deps{Logger: zap.NewNop(), HTTPClients: httpClients(sim)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = a.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		f.Fatal(err)
	}
	p := a.providers["contoso"]
	if p == nil {
		f.Fatal("no provider contoso")
	}
	genuine, err := sim.IssueAccessToken(entrasim.TokenSpec{Subject: aliceUPN, Audience: portcullisApp, ClientID: "04b07795-8ddb-461a-bbee-02f9e1bf7b46", Lifetime: 24 * time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	// The genuine token itself must pass, or the rule below proves
	// nothing.
	if _, err := a.validateToken(ctx, p, genuine, aliceUPN); err != nil {
		f.Fatalf("the genuine token does not validate: %v", err)
	}

	// The last character of an RS256 signature carries two bits and four
	// of padding: another character with the same two bits decodes to the
	// same signature, and must still be refused (a token has one
	// spelling). Seeded from this process's genuine token, this is exact
	// when the seeds run as a test.
	const base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(base64url, genuine[len(genuine)-1])
	f.Add(string(base64url[last^1]), true, uint16(len(genuine)-1), uint16(1))

	f.Fuzz(func(t *testing.T, s string, splice bool, at, cut uint16) {
		tok := s
		if splice {
			i := int(at) % (len(genuine) + 1)
			j := min(i+int(cut), len(genuine))
			tok = genuine[:i] + s + genuine[j:]
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		id, err := a.validateToken(ctx, p, tok, aliceUPN)
		if err == nil {
			if tok != genuine {
				// The token itself stays out of the failure message.
				t.Fatalf("a token the simulator never issued (%d bytes, splice %v at %d) validated as %s", len(tok), splice, at, id.Name())
			}
			return
		}
		var r *Refusal
		if !errors.As(err, &r) || r.Reason != ReasonBadCredentials {
			t.Fatalf("refusal %v (%T), want a *Refusal for bad credentials", err, err)
		}
		if len(tok) >= 16 && (strings.Contains(r.Message, tok) || strings.Contains(err.Error(), tok)) {
			t.Fatalf("the refusal (%s) repeats the token", r.Reason)
		}
	})
}

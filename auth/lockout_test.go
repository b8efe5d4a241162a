package auth_test

// Wrong service-principal secrets count toward the same lockout as wrong
// TOTP codes, in the real state store.

import (
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/mfa"
)

func TestServicePrincipalSecretLockout(t *testing.T) {
	for _, b := range []struct {
		name string
		open func(t *testing.T) store.Store
	}{
		{"sqlite", sqliteStore},
		{"postgres", func(t *testing.T) store.Store { return postgresStores(t, 1)[0] }},
	} {
		t.Run(b.name, func(t *testing.T) {
			sim := newSim(t)
			r := newReplica(t, sim, b.open(t), 0)
			ctx := testContext(t)
			bot := mfa.NewUser("fabrikam", botAppID)
			connect := func(secret string) error {
				_, err := r.a.Decide(ctx, request(t, botAppID, "open", secret, elsewhere, time.Now()))
				return err
			}
			wrong := "not-" + botSecret
			max := r.totp.MaxFailures()

			// A good secret, remembered before anyone guesses.
			if err := connect(botSecret); err != nil {
				t.Fatalf("good secret: %v", err)
			}
			for i := 1; i < max; i++ {
				ref := wantRefusal(t, connect(wrong), auth.ReasonBadCredentials)
				if strings.Contains(ref.Error(), wrong) {
					t.Fatalf("the refusal repeats the secret")
				}
			}
			st, err := r.totp.Status(ctx, bot)
			if err != nil {
				t.Fatal(err)
			}
			if st.Failures.Count != max-1 {
				t.Fatalf("failures counted under the app id = %d, want %d (the TOTP lockout's counter)", st.Failures.Count, max-1)
			}
			ref := wantRefusal(t, connect(wrong), auth.ReasonBadCredentials)
			if !strings.Contains(ref.Message, "locked until") {
				t.Errorf("the wrong secret that locks says %q", ref.Message)
			}

			// Locked: a secret not already proven is refused without asking
			// Entra, even the right one from a new process...
			other := newReplica(t, sim, r.st, 0)
			tokens := sim.Requests(entrasim.EndpointToken)
			_, err = other.a.Decide(ctx, request(t, botAppID, "open", botSecret, elsewhere, time.Now()))
			ref = wantRefusal(t, err, auth.ReasonLocked)
			if !strings.Contains(ref.Message, "portcullis totp reset "+botAppID) {
				t.Errorf("locked message = %q", ref.Message)
			}
			_ = wantRefusal(t, connect(wrong), auth.ReasonLocked)
			if got := sim.Requests(entrasim.EndpointToken); got != tokens {
				t.Errorf("a locked principal cost %d token requests", got-tokens)
			}
			// ...while the process that proved it keeps its pool running.
			if err := connect(botSecret); err != nil {
				t.Errorf("the proven secret was locked out: %v", err)
			}

			// An admin's reset ends the lockout.
			if _, err := r.totp.Reset(ctx, bot); err != nil {
				t.Fatal(err)
			}
			if _, err := other.a.Decide(ctx, request(t, botAppID, "open", botSecret, elsewhere, time.Now())); err != nil {
				t.Errorf("after the reset: %v", err)
			}
		})
	}
}

func TestUnknownApplicationIsNotCounted(t *testing.T) {
	sim := newSim(t)
	r := newReplica(t, sim, sqliteStore(t), 0)
	ctx := testContext(t)
	const unknown = "0badc0de-0000-4000-8000-000000000000"
	for i := 0; i < r.totp.MaxFailures()+1; i++ {
		_, err := r.a.Decide(ctx, request(t, unknown, "open", "whatever", elsewhere, time.Now()))
		wantRefusal(t, err, auth.ReasonBadCredentials)
	}
	st, err := r.totp.Status(ctx, mfa.NewUser("fabrikam", unknown))
	if err != nil {
		t.Fatal(err)
	}
	if st.Failures.Count != 0 {
		t.Errorf("an application the tenant does not know has %d failures recorded, want none", st.Failures.Count)
	}
}

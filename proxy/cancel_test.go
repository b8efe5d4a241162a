package proxy

import (
	"context"
	"testing"
)

func TestCancelKeys(t *testing.T) {
	k := newCancelKeys()
	var calls []string
	fn := func(name string) CancelFunc {
		return func(context.Context) error {
			calls = append(calls, name)
			return nil
		}
	}
	a, err := k.issue("session-a", fn("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.issue("session-b", fn("b"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.ProcessID == b.ProcessID {
		t.Fatalf("two sessions share process id %d", a.ProcessID)
	}
	if a.ProcessID == 0 || a.ProcessID > 1<<31-1 {
		t.Errorf("process id %d is not a positive 31-bit number", a.ProcessID)
	}

	tests := []struct {
		name string
		key  CancelKey
		want string // "" for not found
	}{
		{name: "a", key: a, want: "a"},
		{name: "b", key: b, want: "b"},
		{name: "a's pid with a wrong secret", key: CancelKey{ProcessID: a.ProcessID, Secret: a.Secret + 1}, want: ""},
		{name: "unknown pid", key: CancelKey{ProcessID: a.ProcessID ^ b.ProcessID ^ 1, Secret: a.Secret}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls = nil
			e, ok := k.lookup(tt.key)
			if ok != (tt.want != "") {
				t.Fatalf("lookup found = %v, want %v", ok, tt.want != "")
			}
			if !ok {
				return
			}
			e.cancel(context.Background())
			if len(calls) != 1 || calls[0] != tt.want {
				t.Errorf("cancel reached %v, want %s", calls, tt.want)
			}
		})
	}

	if got := len(k.ofSession("session-a")); got != 1 {
		t.Errorf("session-a has %d cancel functions, want 1", got)
	}
	k.releaseSession("session-a")
	if _, ok := k.lookup(a); ok {
		t.Error("a's key still works after its session ended")
	}
	if _, ok := k.lookup(b); !ok {
		t.Error("b's key was released with a's session")
	}
}

// TestCancelKeyTakesBackendPID: a key carries the backend's process id
// while no other session holds it, and a random one otherwise.
func TestCancelKeyTakesBackendPID(t *testing.T) {
	k := newCancelKeys()
	nop := func(context.Context) error { return nil }
	tests := []struct {
		session  string
		pid      uint32
		wantSame bool
	}{
		{"first", 4242, true},
		{"same pid, another server", 4242, false},
		{"none", 0, false},
		{"beyond 31 bits", 1 << 31, false},
		{"another", 4243, true},
	}
	for _, tt := range tests {
		key, err := k.issue(tt.session, nop, tt.pid)
		if err != nil {
			t.Fatal(err)
		}
		if got := key.ProcessID == tt.pid; got != tt.wantSame {
			t.Errorf("%s: backend pid %d, key's pid %d", tt.session, tt.pid, key.ProcessID)
		}
		if key.ProcessID == 0 || key.ProcessID > 1<<31-1 {
			t.Errorf("%s: process id %d is not a positive 31-bit number", tt.session, key.ProcessID)
		}
		if e, ok := k.lookup(key); !ok || e.session != tt.session {
			t.Errorf("%s: its key does not find it", tt.session)
		}
	}
	k.releaseSession("first")
	if key, _ := k.issue("after the first ended", nop, 4242); key.ProcessID != 4242 {
		t.Errorf("pid 4242, free again, was not taken: got %d", key.ProcessID)
	}
}

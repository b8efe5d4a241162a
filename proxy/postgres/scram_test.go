package postgres

import (
	"crypto/tls"
	"strings"
	"testing"
)

// The exchange of RFC 7677, section 3, computed by portcullis's client.
func TestSCRAMExchangeOfRFC7677(t *testing.T) {
	const (
		serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	exchange := func(cache *scramKeyCache) *scramClient {
		return &scramClient{
			mechanism: scramSHA256, gs2Header: "n,,", password: "pencil",
			nonce: "rOprNGfwEbeRWgbNEkqO", firstBare: "n=user,r=rOprNGfwEbeRWgbNEkqO", keys: cache,
		}
	}
	cache := &scramKeyCache{keys: map[[32]byte]scramKeys{}}
	// Twice: the second time from the cache.
	for round := range 2 {
		sc := exchange(cache)
		got, err := sc.clientFinal([]byte(serverFirst))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != clientFinal {
			t.Fatalf("round %d: client-final-message\n got %s\nwant %s", round, got, clientFinal)
		}
		if err := sc.verifyFinal([]byte(serverFinal)); err != nil {
			t.Fatalf("round %d: the RFC's server signature: %v", round, err)
		}
		if n := len(cache.keys); n != 1 {
			t.Fatalf("round %d: %d keys cached, want 1", round, n)
		}
	}

	// Another password with the same salt is another entry, and its proof
	// differs.
	other := exchange(cache)
	other.password = "pencil2"
	got, err := other.clientFinal([]byte(serverFirst))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) == clientFinal || len(cache.keys) != 2 {
		t.Fatalf("another password gave the same proof, or shared its cache entry (%d entries)", len(cache.keys))
	}
	if err := other.verifyFinal([]byte(serverFinal)); err == nil {
		t.Fatal("a server signature for another password was accepted")
	}

	// A server that does not prove it knows the password is refused.
	sc := exchange(cache)
	if _, err := sc.clientFinal([]byte(serverFirst)); err != nil {
		t.Fatal(err)
	}
	for _, final := range []string{
		"v=" + strings.Repeat("A", 44),
		"e=invalid-proof",
		"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
		"v=not base64!",
		"",
	} {
		if err := sc.verifyFinal([]byte(final)); err == nil {
			t.Errorf("server-final-message %q was accepted", final)
		}
	}
}

func TestSCRAMRefusesABadServerFirstMessage(t *testing.T) {
	for _, first := range []string{
		"r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
		"r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", // the client's nonce, not extended
		"r=abcdef,i=4096",
		"r=abcdef,s=!!,i=4096",
		"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
		"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=many",
		"r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==",
	} {
		sc := &scramClient{gs2Header: "n,,", password: "pencil", nonce: "abc", firstBare: "n=,r=abc",
			keys: &scramKeyCache{keys: map[[32]byte]scramKeys{}}}
		if _, err := sc.clientFinal([]byte(first)); err == nil {
			t.Errorf("server-first-message %q was answered", first)
		}
	}
}

func TestSCRAMMechanism(t *testing.T) {
	overTLS := &tls.Conn{} // not asked for its certificate unless -PLUS is chosen
	for _, tc := range []struct {
		offered   []string
		tls       *tls.Conn
		mechanism string
		gs2       string
	}{
		{[]string{scramSHA256}, nil, scramSHA256, "n,,"},
		{[]string{scramSHA256Plus, scramSHA256}, nil, scramSHA256, "n,,"},
		// Over TLS to a server that offers no binding: the client says it
		// could have bound, so a downgraded offer is refused by the server.
		{[]string{scramSHA256}, overTLS, scramSHA256, "y,,"},
		{[]string{"SCRAM-SHA-1"}, nil, "", ""},
		{nil, nil, "", ""},
	} {
		sc, err := newSCRAM(tc.offered, "pw", tc.tls)
		if tc.mechanism == "" {
			if err == nil {
				t.Errorf("offered %q: chose %s, want a refusal", tc.offered, sc.mechanism)
			}
			continue
		}
		if err != nil {
			t.Errorf("offered %q: %v", tc.offered, err)
			continue
		}
		if sc.mechanism != tc.mechanism || sc.gs2Header != tc.gs2 {
			t.Errorf("offered %q (TLS %v): %s with %q, want %s with %q", tc.offered, tc.tls != nil, sc.mechanism, sc.gs2Header, tc.mechanism, tc.gs2)
		}
		if first := string(sc.clientFirst()); !strings.HasPrefix(first, tc.gs2+"n=,r=") || len(first) != len(tc.gs2)+5+24 {
			t.Errorf("client-first-message %q", first)
		}
	}
}

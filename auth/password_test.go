package auth

import (
	"strings"
	"testing"
)

func TestParsePassword(t *testing.T) {
	key, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	const jwtLike = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	tests := []struct {
		name     string
		password string
		want     Password
	}{
		{name: "anything", password: "hunter2", want: Password{Kind: CredentialNone}},
		{name: "empty", password: "", want: Password{Kind: CredentialNone}},
		{name: "TOTP code", password: "123456", want: Password{Kind: CredentialNone, TOTP: "123456"}},
		{name: "five digits", password: "12345", want: Password{Kind: CredentialNone}},
		{name: "seven digits", password: "1234567", want: Password{Kind: CredentialNone}},
		{name: "session key", password: key, want: Password{Kind: CredentialSessionKey, Credential: key}},
		{name: "session key and TOTP", password: key + ":654321", want: Password{Kind: CredentialSessionKey, Credential: key, TOTP: "654321"}},
		{name: "session key and a bad TOTP", password: key + ":65432x", want: Password{Kind: CredentialSessionKey, Credential: key + ":65432x"}},
		{name: "JWT", password: jwtLike, want: Password{Kind: CredentialAccessToken, Credential: jwtLike}},
		{name: "JWT and TOTP", password: jwtLike + ":024680", want: Password{Kind: CredentialAccessToken, Credential: jwtLike, TOTP: "024680"}},
		{name: "JWT and a bad TOTP", password: jwtLike + ":02468", want: Password{Kind: CredentialAccessToken, Credential: jwtLike + ":02468"}},
		{name: "words and a code", password: "hunter2:123456", want: Password{Kind: CredentialNone}},
		{name: "JWT without signature", password: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", want: Password{Kind: CredentialAccessToken, Credential: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."}},
		{name: "dotted words", password: "a.b.c", want: Password{Kind: CredentialAccessToken, Credential: "a.b.c"}},
		{name: "two parts", password: "abc.def", want: Password{Kind: CredentialNone}},
		{name: "four parts", password: "a.b.c.d", want: Password{Kind: CredentialNone}},
		{name: "padding is not base64url", password: "abc=.def.ghi", want: Password{Kind: CredentialNone}},
		{name: "too long to be a token", password: strings.Repeat("a", maxTokenBytes) + ".b.c", want: Password{Kind: CredentialNone}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParsePassword(tt.password); got != tt.want {
				t.Errorf("ParsePassword(%q) = %+v, want %+v", tt.password, got, tt.want)
			}
		})
	}
}

func TestSessionKeyShape(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		k, err := newSessionKey()
		if err != nil {
			t.Fatal(err)
		}
		if !wellFormedSessionKey(k) || len(k) != len(SessionKeyPrefix)+52 {
			t.Fatalf("key %q is not well formed", k)
		}
		if seen[k] {
			t.Fatalf("key repeated")
		}
		seen[k] = true
		if p := ParsePassword(k); p.Kind != CredentialSessionKey {
			t.Fatalf("key parses as %s", p.Kind)
		}
	}
	for _, bad := range []string{"", SessionKeyPrefix, SessionKeyPrefix + strings.Repeat("a", 51), SessionKeyPrefix + strings.Repeat("A", 52), SessionKeyPrefix + strings.Repeat("1", 52)} {
		if wellFormedSessionKey(bad) {
			t.Errorf("%q accepted as a session key", bad)
		}
	}
}

func FuzzParsePassword(f *testing.F) {
	for _, s := range []string{"", "123456", "hunter2", "pcx_abc:123456", "a.b.c", "eyJ.eyJ.", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := ParsePassword(s)
		switch p.Kind {
		case CredentialNone:
			if p.Credential != "" {
				t.Fatalf("no credential kind but credential %q", p.Credential)
			}
			if p.TOTP != "" && p.TOTP != s {
				t.Fatalf("bare TOTP %q from %q", p.TOTP, s)
			}
		case CredentialSessionKey:
			if !strings.HasPrefix(p.Credential, SessionKeyPrefix) {
				t.Fatalf("session key %q without prefix", p.Credential)
			}
			want := p.Credential
			if p.TOTP != "" {
				want += ":" + p.TOTP
			}
			if want != s {
				t.Fatalf("parts %q + %q do not rebuild %q", p.Credential, p.TOTP, s)
			}
		case CredentialAccessToken:
			want := p.Credential
			if p.TOTP != "" {
				want += ":" + p.TOTP
			}
			if want != s {
				t.Fatalf("token parse of %q = %+v", s, p)
			}
		default:
			t.Fatalf("unknown kind %q", p.Kind)
		}
		if p.TOTP != "" && !isSixDigits(p.TOTP) {
			t.Fatalf("TOTP %q is not six digits", p.TOTP)
		}
	})
}

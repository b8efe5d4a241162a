package auth

import (
	"strings"
	"testing"
	"time"
)

func TestParsePassword(t *testing.T) {
	key, err := newSessionKey()
	if err != nil {
		t.Fatal(err)
	}
	const jwtLike = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	akey, _, _, err := NewAccessKey("contoso", aliceUPN, "sales", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
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
		{name: "access key", password: akey, want: Password{Kind: CredentialAccessKey, Credential: akey}},
		{name: "access key and TOTP", password: akey + ":135790", want: Password{Kind: CredentialAccessKey, Credential: akey, TOTP: "135790"}},
		{name: "access key and a bad TOTP", password: akey + ":1357", want: Password{Kind: CredentialAccessKey, Credential: akey + ":1357"}},
		{name: "access key prefix in another case", password: strings.ToUpper(akey), want: Password{Kind: CredentialNone}},
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

func TestAccessKeyShape(t *testing.T) {
	seen := map[string]bool{}
	ids := map[string]bool{}
	for i := 0; i < 100; i++ {
		k, rec, h, err := NewAccessKey("contoso", etlBotApp, "finance", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if !wellFormedAccessKey(k) || seen[k] || ids[rec.ID] || !ValidAccessKeyID(rec.ID) {
			t.Fatalf("key %d (id %q) is malformed or repeated", i, rec.ID)
		}
		if wellFormedSessionKey(k) {
			t.Fatalf("an access key has the shape of a session key")
		}
		if h != hashKey(k) || strings.Contains(rec.ID, k[len(AccessKeyPrefix):len(AccessKeyPrefix)+8]) {
			t.Fatalf("the record gives the key away or the hash is not the key's")
		}
		if rec.Kind != KindServicePrincipal || rec.For != etlBotApp {
			t.Fatalf("record = %+v", rec)
		}
		seen[k], ids[rec.ID] = true, true
	}
	tests := []struct {
		name    string
		forID   string
		ttl     time.Duration
		want    Kind
		wantErr bool
	}{
		{name: "a UPN", forID: "Alice@Contoso.Example", ttl: time.Hour, want: KindUser},
		{name: "an app id", forID: strings.ToUpper(etlBotApp), ttl: time.Hour, want: KindServicePrincipal},
		{name: "a display name", forID: "etl-bot", ttl: time.Hour, wantErr: true},
		{name: "empty", forID: "", ttl: time.Hour, wantErr: true},
		{name: "no lifetime", forID: aliceUPN, ttl: 0, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rec, _, err := NewAccessKey("contoso", tt.forID, "sales", tt.ttl, time.Now())
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewAccessKey(%q, %s) = %+v, want an error", tt.forID, tt.ttl, rec)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rec.Kind != tt.want || rec.For != strings.ToLower(tt.forID) {
				t.Errorf("record = %+v, want kind %s for %s", rec, tt.want, strings.ToLower(tt.forID))
			}
		})
	}
}

func FuzzParsePassword(f *testing.F) {
	for _, s := range []string{"", "123456", "hunter2", "pcx_abc:123456", "pak_abc:123456", "pak_", "a.b.c", "eyJ.eyJ.", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"} {
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
		case CredentialSessionKey, CredentialAccessKey:
			prefix := SessionKeyPrefix
			if p.Kind == CredentialAccessKey {
				prefix = AccessKeyPrefix
			}
			if !strings.HasPrefix(p.Credential, prefix) {
				t.Fatalf("%s %q without prefix %s", p.Kind, p.Credential, prefix)
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

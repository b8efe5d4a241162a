package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/mfa"
)

const totpConfigYAML = `providers:
  - name: contoso
    tenant_id: 3f2a7c1e-5b8d-4e6f-9a0b-1c2d3e4f5a6b
    client_id: 8c1d0f5e-2a3b-4c5d-8e9f-0a1b2c3d4e5f
resources:
  - name: vault
    protocol: postgres
    address: 127.0.0.1:5432
    allow_groups: [Analysts]
    require_totp: true
    credentials:
      - groups: [Analysts]
        user: reader
        password_env: READER_PASSWORD
listeners:
  - protocol: postgres
    tls: disabled
store:
  driver: sqlite
  path: state.db
`

// totpFixture is a configuration with a TOTP resource and a SQLite store
// in a temporary directory.
type totpFixture struct {
	dir string
	env []string
}

func newTOTPFixture(t *testing.T) *totpFixture {
	t.Helper()
	f := &totpFixture{dir: t.TempDir(), env: []string{"READER_PASSWORD=x"}}
	f.writeKey(t, "store.key")
	f.writeConfig(t, "portcullis.yaml", "  key_file: store.key\n")
	return f
}

func (f *totpFixture) writeKey(t *testing.T, name string) {
	t.Helper()
	k, err := store.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(k+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *totpFixture) writeConfig(t *testing.T, name, storeKeys string) string {
	t.Helper()
	path := filepath.Join(f.dir, name)
	if err := os.WriteFile(path, []byte(totpConfigYAML+storeKeys), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs a command against the fixture's portcullis.yaml (or the
// config given with --config in args).
func (f *totpFixture) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := append([]string{config.EnvConfigFile + "=" + filepath.Join(f.dir, "portcullis.yaml")}, f.env...)
	code = run(args, env, &out, &errOut)
	return code, out.String(), errOut.String()
}

// totp opens the fixture's store the way serve does.
func (f *totpFixture) totp(t *testing.T, configName string) (*mfa.TOTP, func()) {
	t.Helper()
	cfg, err := config.Load(filepath.Join(f.dir, configName), f.env, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, totp, err := openState(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return totp, func() { st.Close() }
}

func TestTOTPCommands(t *testing.T) {
	f := newTOTPFixture(t)
	alice := mfa.NewUser("contoso", "alice@contoso.example")

	code, out, errOut := f.run(t, "totp", "status", "Alice@contoso.example")
	if code != exitOK || !strings.Contains(out, "alice@contoso.example (provider contoso): no TOTP secret") {
		t.Fatalf("status before enrolment: %d\n%s%s", code, out, errOut)
	}

	// enroll, with the flag after USER as people type it.
	png := filepath.Join(f.dir, "alice.png")
	code, out, errOut = f.run(t, "totp", "enroll", "alice@contoso.example", "--png", png)
	if code != exitOK || !strings.Contains(out, "hand it over privately") {
		t.Fatalf("enroll: %d\n%s%s", code, out, errOut)
	}
	fi, err := os.Stat(png)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the PNG: %v, mode %v; want 0600", err, fi.Mode())
	}
	written, _ := os.ReadFile(png)
	totp, closeStore := f.totp(t, "portcullis.yaml")
	enrolment, err := totp.Enroll(context.Background(), alice)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := enrolment.PNG(enrolmentPNGSize); !bytes.Equal(written, want) {
		t.Error("the PNG is not the pending enrolment's QR code")
	}
	if code, _, errOut := f.run(t, "totp", "enroll", "alice@contoso.example", "--png", png); code != exitFailure || !strings.Contains(errOut, "file exists") {
		t.Errorf("enroll over an existing file: %d %s", code, errOut)
	}
	if _, out, _ := f.run(t, "totp", "status", "alice@contoso.example"); !strings.Contains(out, "enrolment pending since") {
		t.Errorf("status while pending: %s", out)
	}

	// Alice scans it and uses it; then five wrong codes.
	secret, _ := mfa.SecretFromURI(enrolment.URI)
	now := time.Now()
	good, _ := mfa.CodeAt(secret, now)
	if err := totp.Check(context.Background(), alice, good, now); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_ = totp.Check(context.Background(), alice, wrongFor(secret, now), now)
	}
	closeStore()
	_, out, _ = f.run(t, "totp", "status", "alice@contoso.example")
	if !strings.Contains(out, "active since") || !strings.Contains(out, "last good code") || !strings.Contains(out, "locked until") {
		t.Errorf("status when active and locked:\n%s", out)
	}
	if code, _, errOut := f.run(t, "totp", "enroll", "alice@contoso.example", "--png", filepath.Join(f.dir, "again.png")); code != exitFailure || !strings.Contains(errOut, "totp reset alice@contoso.example") {
		t.Errorf("enroll when active: %d %s", code, errOut)
	}

	code, out, _ = f.run(t, "totp", "reset", "alice@contoso.example")
	if code != exitOK || !strings.Contains(out, "TOTP secret removed") {
		t.Errorf("reset: %d %s", code, out)
	}
	_, out, _ = f.run(t, "totp", "status", "alice@contoso.example")
	if !strings.Contains(out, "no TOTP secret") || !strings.Contains(out, "no recent wrong codes") {
		t.Errorf("status after reset:\n%s", out)
	}
}

func wrongFor(secret string, at time.Time) string {
	for _, c := range []string{"000000", "111111", "222222"} {
		ok := true
		for d := -1; d <= 1; d++ {
			if got, _ := mfa.CodeAt(secret, at.Add(time.Duration(d)*mfa.Period)); got == c {
				ok = false
			}
		}
		if ok {
			return c
		}
	}
	return "333333"
}

func TestStoreRotateKey(t *testing.T) {
	f := newTOTPFixture(t)
	alice := mfa.NewUser("contoso", "alice@contoso.example")
	if code, out, errOut := f.run(t, "totp", "enroll", "alice@contoso.example", "--png", filepath.Join(f.dir, "a.png")); code != exitOK {
		t.Fatalf("enroll: %d %s %s", code, out, errOut)
	}
	f.writeKey(t, "new.key")
	rotating := f.writeConfig(t, "rotating.yaml", "  key_file: new.key\n  previous_key_file: store.key\n")
	code, out, errOut := f.run(t, "store", "rotate-key", "--config", rotating)
	if code != exitOK || !strings.Contains(out, "re-sealed 1 TOTP secret under key id") || !strings.Contains(out, "remove store.previous_key") {
		t.Fatalf("rotate-key: %d\n%s%s", code, out, errOut)
	}
	f.writeConfig(t, "new.yaml", "  key_file: new.key\n")
	totp, closeStore := f.totp(t, "new.yaml")
	defer closeStore()
	if _, err := totp.Enroll(context.Background(), alice); err != nil {
		t.Errorf("the secret under the new key alone: %v", err)
	}
	// The old key alone no longer opens it.
	code, _, errOut = f.run(t, "totp", "status", "alice@contoso.example")
	if code != exitFailure || !strings.Contains(errOut, "neither store.key nor store.previous_key") {
		t.Errorf("status with the old key: %d %s", code, errOut)
	}
	// Rotating without the previous key names what is missing.
	code, _, errOut = f.run(t, "store", "rotate-key", "--config", filepath.Join(f.dir, "portcullis.yaml"))
	if code != exitFailure || !strings.Contains(errOut, "set store.previous_key_env or store.previous_key_file") {
		t.Errorf("rotate-key without the previous key: %d %s", code, errOut)
	}
}

func TestAdminCommandUsage(t *testing.T) {
	f := newTOTPFixture(t)
	memory := f.writeConfig(t, "memory.yaml", "")
	text := strings.NewReplacer("require_totp: true", "require_totp: false", "driver: sqlite", "driver: memory").Replace(totpConfigYAML)
	if err := os.WriteFile(memory, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "totp alone", args: []string{"totp"}, wantCode: exitUsage, wantStderr: "status|reset|enroll"},
		{name: "unknown totp command", args: []string{"totp", "frob", "alice"}, wantCode: exitUsage, wantStderr: `unknown totp command "frob"`},
		{name: "no user", args: []string{"totp", "status"}, wantCode: exitUsage, wantStderr: "exactly one USER"},
		{name: "two users", args: []string{"totp", "reset", "alice", "bob"}, wantCode: exitUsage, wantStderr: "exactly one USER"},
		{name: "enroll without png", args: []string{"totp", "enroll", "alice"}, wantCode: exitUsage, wantStderr: "needs --png FILE"},
		{name: "unknown provider", args: []string{"totp", "status", "alice", "--provider", "other"}, wantCode: exitUsage, wantStderr: `provider "other" is not configured`},
		{name: "memory store", args: []string{"totp", "status", "alice", "--config", memory}, wantCode: exitConfig, wantStderr: "store.driver is memory"},
		{name: "store alone", args: []string{"store"}, wantCode: exitUsage, wantStderr: "store rotate-key"},
		{name: "rotate-key with an argument", args: []string{"store", "rotate-key", "now"}, wantCode: exitUsage, wantStderr: "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := f.run(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, tt.wantCode, tt.wantStderr)
			}
		})
	}
}

package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSecretsResolve(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string // contents of the password file; "" means use password_env
		env  []string
		want string
	}{
		{"from env", "", []string{"DB_PASSWORD=pa ss=word "}, "pa ss=word "},
		{"from file", "file-pass\n", nil, "file-pass"},
		{"only one newline trimmed", "file-pass\n\n", nil, "file-pass\n"},
		{"crlf trimmed", "file-pass\r\n", nil, "file-pass"},
		{"no newline", "file-pass", nil, "file-pass"},
		{"later env entry wins", "", []string{"DB_PASSWORD=first", "DB_PASSWORD=second"}, "second"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := "password_env: DB_PASSWORD"
			if tt.file != "" {
				p := writeFile(t, dir, fmt.Sprintf("pw%d", i), []byte(tt.file))
				ref = "password_file: " + p
			}
			text := strings.Replace(minimal, "password_env: READER_PASSWORD", ref, 1)
			cfg := mustParse(t, text, tt.env, nil)
			if got := cfg.Resources[0].Credentials[0].Password.Reveal(); got != tt.want {
				t.Errorf("password = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSecretProblems(t *testing.T) {
	dir := t.TempDir()
	empty := writeFile(t, dir, "empty", []byte("\n"))
	const secret = "Zq9-never-print-me"
	full := writeFile(t, dir, "full", []byte(secret+"\n"))
	tests := []struct {
		name string
		ref  string
		env  []string
		want string
	}{
		{"env unset", "password_env: DB_PASSWORD #<", nil, "resources[0].credentials[0].password_env: environment variable DB_PASSWORD is not set"},
		{"env empty", "password_env: DB_PASSWORD #<", []string{"DB_PASSWORD="}, "resources[0].credentials[0].password_env: environment variable DB_PASSWORD is empty"},
		{"file missing", "password_file: " + filepath.Join(dir, "absent") + " #<", nil, "resources[0].credentials[0].password_file: file " + filepath.Join(dir, "absent") + " does not exist"},
		{"file empty", "password_file: " + empty + " #<", nil, "resources[0].credentials[0].password_file: file " + empty + " is empty"},
		{"file is a directory", "password_file: " + dir + " #<", nil, "resources[0].credentials[0].password_file: file " + dir + " cannot be read"},
		{"both", "password_env: DB_PASSWORD\n        password_file: " + full + " #<", []string{"DB_PASSWORD=" + secret}, "resources[0].credentials[0].password_file: password_env and password_file are both set; keep one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(minimal, "password_env: READER_PASSWORD", tt.ref, 1)
			ps := problemsOf(t, text, tt.env, nil)
			p, ok := findProblem(ps, tt.want)
			if !ok {
				t.Fatalf("no problem contains %q; got:\n%s", tt.want, Report(ps))
			}
			if want := markedLine(t, text); p.Line != want {
				t.Errorf("problem %q at line %d, want %d", p, p.Line, want)
			}
			if strings.Contains(Report(ps), secret) {
				t.Error("a problem shows the secret value")
			}
		})
	}
}

func TestStoreAndProviderSecrets(t *testing.T) {
	dir := t.TempDir()
	const (
		dsn        = "postgres://portcullis:Dsn-pw-91@db/portcullis"
		key        = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
		oldKey     = "HxwdHhscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA="
		clientSeed = "cs~Entra.Secret_42"
	)
	keyFile := writeFile(t, dir, "store.key", []byte(key+"\n"))
	oldKeyFile := writeFile(t, dir, "store-old.key", []byte(oldKey+"\n"))
	text := strings.Replace(minimal, "    client_id:", "    client_secret_env: ENTRA_SECRET\n    client_id:", 1) +
		"store:\n  driver: postgres\n  dsn_env: STORE_DSN\n  key_file: " + keyFile + "\n  previous_key_file: " + oldKeyFile + "\n"
	env := append(slices.Clone(minimalEnv), "ENTRA_SECRET="+clientSeed, "STORE_DSN="+dsn)
	cfg := mustParse(t, text, env, nil)
	if cfg.Store.DSN.Reveal() != dsn || cfg.Store.Key.Reveal() != key || cfg.Store.PreviousKey.Reveal() != oldKey ||
		cfg.Providers[0].ClientSecret.Reveal() != clientSeed {
		t.Fatal("a secret did not resolve to its value")
	}
	if cfg.Providers[0].GraphAuth != GraphAuthApplication {
		t.Errorf("graph_auth = %q, want application", cfg.Providers[0].GraphAuth)
	}
	for _, s := range []string{dsn, key, oldKey, clientSeed, readerPassword} {
		assertNotPrinted(t, cfg, s)
	}
}

// assertNotPrinted fails if s shows in any usual rendering of cfg.
func assertNotPrinted(t *testing.T, cfg *Config, s string) {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{
		"%v":              fmt.Sprintf("%v", cfg),
		"%+v":             fmt.Sprintf("%+v", cfg),
		"%#v":             fmt.Sprintf("%#v", cfg),
		"%v of the value": fmt.Sprintf("%+v", *cfg),
		"json":            string(js),
	} {
		if strings.Contains(out, s) {
			t.Errorf("%s rendering of the config contains a secret", name)
		}
	}
}

func TestSecretString(t *testing.T) {
	s := NewSecret("hunter2")
	for _, out := range []string{s.String(), fmt.Sprint(s), fmt.Sprintf("%#v", s), fmt.Sprintf("%+v", struct{ S Secret }{s})} {
		if strings.Contains(out, "hunter2") || !strings.Contains(out, "redacted") {
			t.Errorf("rendering %q, want it redacted", out)
		}
	}
	if s.Reveal() != "hunter2" || !s.IsSet() || NewSecret("").IsSet() {
		t.Error("Reveal/IsSet")
	}
}

// A secret-holding variable with the PORTCULLIS_ prefix is not mistaken
// for an overlay, even when a flag names it.
func TestPrefixedSecretVariableNamedByFlag(t *testing.T) {
	env := []string{"PORTCULLIS_DB_PASSWORD=flagged", "READER_PASSWORD=unused"}
	cfg := mustParse(t, minimal, env, []string{"resources.0.credentials.0.password_env=PORTCULLIS_DB_PASSWORD"})
	if got := cfg.Resources[0].Credentials[0].Password.Reveal(); got != "flagged" {
		t.Errorf("password = %q, want the flag-named variable's", got)
	}
}

func TestProcessEnvironmentIgnored(t *testing.T) {
	t.Setenv("PORTCULLIS_LOG_LEVEL", "debug")
	t.Setenv("READER_PASSWORD", "from-process")
	ps := problemsOf(t, minimal, nil, nil)
	if _, ok := findProblem(ps, "environment variable READER_PASSWORD is not set"); !ok {
		t.Errorf("got:\n%s", Report(ps))
	}
	cfg := mustParse(t, minimal, minimalEnv, nil)
	if cfg.Log.Level != "info" {
		t.Errorf("log.level = %q: the process environment leaked in", cfg.Log.Level)
	}
	if os.Getenv("PORTCULLIS_LOG_LEVEL") != "debug" {
		t.Fatal("t.Setenv did not take")
	}
}

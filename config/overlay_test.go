package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnvOverlay(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		got  func(*Config) any
		want any
	}{
		{"duration", []string{"PORTCULLIS_SESSIONS_TTL=1h"}, func(c *Config) any { return c.Sessions.TTL }, time.Hour},
		{"enum", []string{"PORTCULLIS_LOG_LEVEL=debug"}, func(c *Config) any { return c.Log.Level }, "debug"},
		{"address", []string{"PORTCULLIS_ADMIN_ADDRESS=:9090"}, func(c *Config) any { return c.Admin.Address }, ":9090"},
		{"list index and a key with underscores", []string{"PORTCULLIS_PROVIDERS_0_CLIENT_ID=0b6b1a8e-1111-4222-8333-444455556666"},
			func(c *Config) any { return c.Providers[0].ClientID }, "0b6b1a8e-1111-4222-8333-444455556666"},
		{"nested list", []string{"PORTCULLIS_RESOURCES_0_CREDENTIALS_0_USER=writer"},
			func(c *Config) any { return c.Resources[0].Credentials[0].User }, "writer"},
		{"nested struct in a list", []string{"PORTCULLIS_RESOURCES_0_TLS_MODE=require"},
			func(c *Config) any { return c.Resources[0].TLS.Mode }, "require"},
		{"item of a string list", []string{"PORTCULLIS_RESOURCES_0_ALLOW_GROUPS_0=Readers"},
			func(c *Config) any { return c.Resources[0].AllowGroups }, []string{"Readers"}},
		{"appending to a string list", []string{"PORTCULLIS_ADMIN_GROUPS_1=Auditors", "PORTCULLIS_ADMIN_GROUPS_0=Operators"},
			func(c *Config) any { return c.Admin.Groups }, []string{"Operators", "Auditors"}},
		{"bool", []string{"PORTCULLIS_RESOURCES_0_REQUIRE_TOTP=true", "PORTCULLIS_STORE_KEY_ENV=STORE_KEY", "STORE_KEY=" + testStoreKey},
			func(c *Config) any { return c.Resources[0].RequireTOTP }, true},
		{"mfa", []string{"PORTCULLIS_MFA_MAX_FAILURES=3", "PORTCULLIS_MFA_FAILURE_WINDOW=1h"},
			func(c *Config) any { return []any{c.MFA.MaxFailures, c.MFA.FailureWindow} }, []any{3, time.Hour}},
		{"previous store key", []string{"PORTCULLIS_STORE_KEY_ENV=STORE_KEY", "STORE_KEY=" + testStoreKey, "PORTCULLIS_STORE_PREVIOUS_KEY_ENV=OLD_KEY", "OLD_KEY=" + otherStoreKey},
			func(c *Config) any { return c.Store.PreviousKey.Reveal() }, otherStoreKey},
		{"int", []string{"PORTCULLIS_PROXY_MAX_STARTUP_BYTES=20000"}, func(c *Config) any { return c.Proxy.MaxStartupBytes }, 20000},
		{"pointer duration zero", []string{"PORTCULLIS_SESSIONS_ADDRESS_GRACE=0"}, func(c *Config) any { return c.Sessions.Grace() }, time.Duration(0)},
		{"map entry", []string{"PORTCULLIS_SESSIONS_ALIASES_ALICE=alice@contoso.com"},
			func(c *Config) any { return c.Sessions.Aliases["alice"] }, "alice@contoso.com"},
		{"allow-listed variable", []string{"PORTCULLIS_CONFIG=/etc/portcullis.yaml"}, func(c *Config) any { return c.Log.Level }, "info"},
		{"variable named by a *_env key", []string{"PORTCULLIS_READER=from-env"},
			func(c *Config) any { return c.Resources[0].Credentials[0].Password.Reveal() }, "from-env"},
		{"other variables are not ours", []string{"PATH=/usr/bin", "portcullis_log_level=debug"}, func(c *Config) any { return c.Log.Level }, "info"},
		{"a new list item, built field by field", []string{
			"PORTCULLIS_LISTENERS_0_PROTOCOL=postgres",
			"PORTCULLIS_LISTENERS_1_PROTOCOL=postgres",
			"PORTCULLIS_LISTENERS_1_NAME=second",
			"PORTCULLIS_LISTENERS_1_ADDRESS=127.0.0.1:6432",
		}, func(c *Config) any { return c.Listeners[1] }, Listener{Name: "second", Protocol: "postgres", Address: "127.0.0.1:6432", TLS: "required"}},
	}
	text := strings.Replace(minimal, "password_env: READER_PASSWORD", "password_env: PORTCULLIS_READER", 1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"PORTCULLIS_READER=from-env"}, tt.env...)
			cfg := mustParse(t, text, env, nil)
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	file := minimal + "log:\n  level: warn\n"
	tests := []struct {
		name      string
		env       []string
		overrides []string
		want      string
	}{
		{"file", nil, nil, "warn"},
		{"env beats file", []string{"PORTCULLIS_LOG_LEVEL=error"}, nil, "error"},
		{"flag beats env", []string{"PORTCULLIS_LOG_LEVEL=error"}, []string{"log.level=debug"}, "debug"},
		{"flag beats file", nil, []string{"log.level=debug"}, "debug"},
		{"last flag wins", nil, []string{"log.level=debug", "log.level=error"}, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, file, append(slices.Clone(minimalEnv), tt.env...), tt.overrides)
			if cfg.Log.Level != tt.want {
				t.Errorf("log.level = %q, want %q", cfg.Log.Level, tt.want)
			}
		})
	}

	// The same for a list item, by env index and by either flag spelling.
	cfg := mustParse(t, minimal, append(slices.Clone(minimalEnv), "PORTCULLIS_RESOURCES_0_ADDRESS=10.0.0.1:5432"), []string{"resources[0].address=10.0.0.2:5432"})
	if got := cfg.Resources[0].Address; got != "10.0.0.2:5432" {
		t.Errorf("resources[0].address = %q, want the flag's", got)
	}
	cfg = mustParse(t, minimal, append(slices.Clone(minimalEnv), "PORTCULLIS_RESOURCES_0_ADDRESS=10.0.0.1:5432"), []string{"resources.0.address=10.0.0.2:5432"})
	if got := cfg.Resources[0].Address; got != "10.0.0.2:5432" {
		t.Errorf("resources.0.address = %q, want the flag's", got)
	}
	// Validation judges the overlaid value, not the file's.
	cfg = mustParse(t, strings.Replace(minimal, "protocol: postgres", "protocol: mysql", 1), minimalEnv, []string{"resources.0.protocol=postgres"})
	if cfg.Resources[0].Protocol != "postgres" {
		t.Errorf("protocol = %q", cfg.Resources[0].Protocol)
	}
}

func TestOverlayProblems(t *testing.T) {
	tests := []struct {
		name      string
		env       []string
		overrides []string
		wantFile  string
		want      string
	}{
		{"unknown variable", []string{"PORTCULLIS_SESSION_TTL=1h"}, nil, "env PORTCULLIS_SESSION_TTL", "matches no configuration key"},
		{"a section is not a value", []string{"PORTCULLIS_SESSIONS=1h"}, nil, "env PORTCULLIS_SESSIONS", "matches no configuration key"},
		{"a list needs an index", []string{"PORTCULLIS_ADMIN_GROUPS=a,b"}, nil, "env PORTCULLIS_ADMIN_GROUPS", "matches no configuration key"},
		{"secret fields are not keys", []string{"PORTCULLIS_PROVIDERS_0_CLIENT_SECRET=x"}, nil, "env PORTCULLIS_PROVIDERS_0_CLIENT_SECRET", "matches no configuration key"},
		{"bad env value", []string{"PORTCULLIS_SESSIONS_TTL=soon"}, nil, "env PORTCULLIS_SESSIONS_TTL", `sessions.ttl: must be a duration such as 30s, 10m or 12h, got "soon"`},
		{"env index too far", []string{"PORTCULLIS_PROVIDERS_5_NAME=x"}, nil, "env PORTCULLIS_PROVIDERS_5_NAME", "providers[5]: the list has 1 items, so the next one to add is 1"},
		{"env value fails validation", []string{"PORTCULLIS_LOG_FORMAT=text"}, nil, "env PORTCULLIS_LOG_FORMAT", `log.format: must be json or console, got "text"`},
		{"flag without =", nil, []string{"log.level"}, "--set", "log.level: must be key.path=value"},
		{"unknown flag key", nil, []string{"log.levle=debug"}, "--set", `log.levle: unknown key "levle" (did you mean level?)`},
		{"flag on a section", nil, []string{"sessions=1h"}, "--set", "sessions: is a section, not a single value"},
		{"flag on a list", nil, []string{"admin.groups=a"}, "--set", "admin.groups: is a list; set one item at a time"},
		{"flag index not a number", nil, []string{"providers.first.name=x"}, "--set", `providers is a list: the next part must be an item number, got "first"`},
		{"flag past a value", nil, []string{"log.level.x=1"}, "--set", `log.level is a single value and has no key "x"`},
		{"flag value fails validation", nil, []string{"resources.0.prompt=popup"}, "--set", `resources[0].prompt: must be one of auto, notice or error, got "popup"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := problemsOf(t, minimal, append(slices.Clone(minimalEnv), tt.env...), tt.overrides)
			p, ok := findProblem(ps, tt.want)
			if !ok {
				t.Fatalf("no problem contains %q; got:\n%s", tt.want, Report(ps))
			}
			if p.File != tt.wantFile || p.Line != 0 {
				t.Errorf("problem %q is located at %q line %d, want %q line 0", p, p.File, p.Line, tt.wantFile)
			}
		})
	}
}

// TestEnvNamesResolveByKeys exercises the matching of "_"-split names on a
// schema where one name has two readings.
func TestEnvNamesResolveByKeys(t *testing.T) {
	type inner struct {
		B string `yaml:"b"`
	}
	type schema struct {
		A  inner  `yaml:"a"`
		AB string `yaml:"a_b"`
		C  []struct {
			DE string `yaml:"d_e"`
		} `yaml:"c"`
	}
	rt := reflect.TypeOf(schema{})
	tests := []struct {
		name string
		toks string
		want []string
	}{
		{"two readings", "a_b", []string{"a.b", "a_b"}},
		{"key with underscore in a list", "c_3_d_e", []string{"c[3].d_e"}},
		{"no reading", "c_d_e", nil},
		{"stops at a section", "a", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, m := range matchEnv(rt, strings.Split(tt.toks, "_")) {
				got = append(got, keyPath(m))
			}
			slices.Sort(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("matchEnv(%s) = %v, want %v", tt.toks, got, tt.want)
			}
		})
	}
}

func TestNaturalOrder(t *testing.T) {
	got := []string{"P_10_A", "P_2_A", "P_1_B", "P_1_A"}
	slices.SortFunc(got, func(a, b string) int {
		if naturalLess(a, b) {
			return -1
		}
		if naturalLess(b, a) {
			return 1
		}
		return 0
	})
	if want := []string{"P_1_A", "P_1_B", "P_2_A", "P_10_A"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// An overlay inside a list item does not move the item's file line: a
// problem with a sibling key still points into the file.
func TestOverlayKeepsFileLines(t *testing.T) {
	text := strings.Replace(minimal, "    tenant_id: "+tenantID+"\n", "", 1)
	ps := problemsOf(t, text, append(slices.Clone(minimalEnv), "PORTCULLIS_PROVIDERS_0_NAME=fabrikam"), nil)
	p, ok := findProblem(ps, "providers[0].tenant_id: is required")
	if !ok {
		t.Fatalf("got:\n%s", Report(ps))
	}
	if p.File != "test.yaml" || p.Line != 2 {
		t.Errorf("problem located at %s:%d, want test.yaml:2", p.File, p.Line)
	}
}

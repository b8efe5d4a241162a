package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExampleLoads(t *testing.T) {
	dir := t.TempDir()
	serving := validCert(t, "portcullis.example")
	ca := validCert(t, "Contoso DB CA")
	certPath := writeFile(t, dir, "tls.crt", serving.certPEM)
	keyPath := writeFile(t, dir, "tls.key", serving.keyPEM)
	caPath := writeFile(t, dir, "ca.pem", ca.certPEM)
	env := []string{
		"PORTCULLIS_ENTRA_CLIENT_SECRET=example-client-secret",
		"REPORTING_RW_PASSWORD=rw-pass",
		"REPORTING_RO_PASSWORD=ro-pass",
		"PORTCULLIS_STORE_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
		// The example's absolute paths exist on a server, not here.
		"PORTCULLIS_TLS_CERT_FILE=" + certPath,
		"PORTCULLIS_TLS_KEY_FILE=" + keyPath,
		"PORTCULLIS_RESOURCES_0_TLS_CA_FILE=" + caPath,
		"PORTCULLIS_CONFIG=../testdata/config/example.yaml",
		"HOME=/root",
	}
	cfg, err := Load("../testdata/config/example.yaml", env, nil)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	p := cfg.Providers[0]
	app := cfg.Resources[1]
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"provider name", p.Name, "contoso"},
		{"graph auth from the secret", p.GraphAuth, GraphAuthApplication},
		{"client secret", p.ClientSecret.Reveal(), "example-client-secret"},
		{"authority default", p.AuthorityHost, DefaultAuthorityHost},
		{"allowed tenants default", p.AllowedTenants, []string{tenantID}},
		{"audiences as written", len(p.Audiences), 3},
		{"reporting database", cfg.Resources[0].Database, "reporting_prod"},
		{"reporting provider default", cfg.Resources[0].Provider, "contoso"},
		{"reporting tls", cfg.Resources[0].TLS.Mode, BackendTLSVerifyFull},
		{"reporting ca from env", cfg.Resources[0].TLS.CAFile, caPath},
		{"first mapping password", cfg.Resources[0].Credentials[0].Password.Reveal(), "rw-pass"},
		{"app database default", app.Database, "app"},
		{"app tls on loopback", app.TLS.Mode, BackendTLSDisable},
		{"app password from a file relative to the config", app.Credentials[0].Password.Reveal(), "not-a-real-password"},
		{"app prompt default", app.Prompt, PromptAuto},
		{"mysql listener name", cfg.Listeners[1].Name, "mysql"},
		{"mysql listener tls", cfg.Listeners[1].TLS, ListenerTLSRequired},
		{"store key", cfg.Store.Key.IsSet(), true},
		{"alias", cfg.Sessions.Aliases["alice"], "alice@contoso.example"},
		{"address grace", cfg.Sessions.Grace(), 10 * time.Minute},
		{"admin address", cfg.Admin.Address, "127.0.0.1:9090"},
		{"max startup default", cfg.Proxy.MaxStartupBytes, DefaultMaxStartupBytes},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, minimal, minimalEnv, nil)
	p, r := cfg.Providers[0], cfg.Resources[0]
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"authority_host", p.AuthorityHost, "https://login.microsoftonline.com"},
		{"graph_endpoint", p.GraphEndpoint, "https://graph.microsoft.com"},
		{"graph_auth without a credential", p.GraphAuth, "delegated"},
		{"allowed_tenants", p.AllowedTenants, []string{tenantID}},
		{"audiences", p.Audiences, []string{clientID, "api://" + clientID}},
		{"group_cache_ttl", p.GroupCacheTTL, 5 * time.Minute},
		{"resource database", r.Database, "reporting"},
		{"resource provider", r.Provider, "contoso"},
		{"resource prompt", r.Prompt, "auto"},
		{"resource connect_timeout", r.ConnectTimeout, 10 * time.Second},
		{"resource tls on loopback", r.TLS.Mode, "disable"},
		{"one listener per protocol", len(cfg.Listeners), 1},
		{"listener name", cfg.Listeners[0].Name, "postgres"},
		{"listener address", cfg.Listeners[0].Address, "127.0.0.1:15432"},
		{"listener tls", cfg.Listeners[0].TLS, "required"},
		{"store driver", cfg.Store.Driver, "sqlite"},
		{"store path", cfg.Store.Path, "portcullis.db"},
		{"sessions ttl", cfg.Sessions.TTL, 12 * time.Hour},
		{"sessions address_grace", *cfg.Sessions.AddressGrace, 10 * time.Minute},
		{"mfa max_failures", cfg.MFA.MaxFailures, 5},
		{"mfa failure_window", cfg.MFA.FailureWindow, 15 * time.Minute},
		{"service_principals cache_ttl", cfg.ServicePrincipals.CacheTTL, 5 * time.Minute},
		{"authz recheck", cfg.Authz.Recheck, 5 * time.Minute},
		{"authz recheck_failures", cfg.Authz.RecheckFailures, 3},
		{"handshake_timeout", cfg.Proxy.HandshakeTimeout, 30 * time.Second},
		{"drain_timeout", cfg.Proxy.DrainTimeout, 30 * time.Second},
		{"max_startup_bytes", cfg.Proxy.MaxStartupBytes, 10000},
		{"relay_threads", cfg.Proxy.RelayThreads, 0},
		{"busy_poll", cfg.Proxy.BusyPoll, time.Duration(0)},
		{"log format", cfg.Log.Format, "json"},
		{"log level", cfg.Log.Level, "info"},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestDefaultsThatDependOnOtherKeys(t *testing.T) {
	tests := []struct {
		name      string
		overrides []string
		env       []string
		got       func(*Config) any
		want      any
	}{
		{
			name:      "graph_auth is application with a secret",
			overrides: []string{"providers.0.client_secret_env=ENTRA_SECRET"},
			env:       []string{"ENTRA_SECRET=x"},
			got:       func(c *Config) any { return c.Providers[0].GraphAuth },
			want:      "application",
		},
		{
			name:      "backend tls is verify-full off the host",
			overrides: []string{"resources.0.address=db.example.com:5432"},
			got:       func(c *Config) any { return c.Resources[0].TLS.Mode },
			want:      "verify-full",
		},
		{
			name:      "backend tls is verify-full on loopback with a server name",
			overrides: []string{"resources.0.tls.server_name=db.example.com"},
			got:       func(c *Config) any { return c.Resources[0].TLS.Mode },
			want:      "verify-full",
		},
		{
			name:      "localhost counts as loopback",
			overrides: []string{"resources.0.address=localhost:5432"},
			got:       func(c *Config) any { return c.Resources[0].TLS.Mode },
			want:      "disable",
		},
		{
			name:      "explicit zero address_grace stays zero",
			overrides: []string{"sessions.address_grace=0"},
			got:       func(c *Config) any { return c.Sessions.Grace() },
			want:      time.Duration(0),
		},
		{
			name:      "mysql listener address",
			overrides: []string{"listeners.0.protocol=mysql", "resources.0.protocol=mysql"},
			got:       func(c *Config) any { return c.Listeners[0].Address },
			want:      "127.0.0.1:13306",
		},
		{
			name:      "trailing slash trimmed from authority_host",
			overrides: []string{"providers.0.authority_host=https://login.microsoftonline.us/"},
			got:       func(c *Config) any { return c.Providers[0].AuthorityHost },
			want:      "https://login.microsoftonline.us",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, minimal, append(slices.Clone(minimalEnv), tt.env...), tt.overrides)
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestValidation runs each rule on its own: the case's YAML is valid but
// for one thing, and the problem must point at the line marked "#<".
func TestValidation(t *testing.T) {
	provider := func(extra string) string {
		return "providers:\n  - name: contoso\n    tenant_id: " + tenantID + "\n    client_id: " + clientID + "\n" + extra
	}
	const resourceHead = "resources:\n  - name: reporting\n    protocol: postgres\n    address: 127.0.0.1:5432\n"
	const resourceTail = "    allow_groups: [Analysts]\n    credentials:\n      - groups: [Analysts]\n        user: reader\n        password_env: READER_PASSWORD\n"
	resource := func(extra string) string { return provider("") + resourceHead + extra + resourceTail }
	tail := func(extra string) string { return minimal + extra }

	tests := []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"no providers", "resources: []\nlisteners: []\nlog: {level: info}\n", nil, "providers: at least one provider is required"},
		{"provider name required", strings.Replace(minimal, "  - name: contoso\n", "  - name: \"\" #<\n", 1), nil, "providers[0].name: is required"},
		{"provider name pattern", strings.Replace(minimal, "name: contoso\n", "name: con toso #<\n", 1), nil, "providers[0].name: must be 1 to 63"},
		{"tenant_id required", mark(strings.Replace(minimal, "    tenant_id: "+tenantID+"\n", "", 1), "- name: contoso"), nil, "providers[0].tenant_id: is required"},
		{"tenant_id shape", strings.Replace(minimal, "tenant_id: "+tenantID, "tenant_id: not/a/tenant #<", 1), nil, "providers[0].tenant_id: must be a tenant id"},
		{"client_id required", mark(strings.Replace(minimal, "    client_id: "+clientID+"\n", "", 1), "- name: contoso"), nil, "providers[0].client_id: is required"},
		{"client_id guid", strings.Replace(minimal, "client_id: "+clientID, "client_id: portcullis #<", 1), nil, `providers[0].client_id: must be the application (client) id, a GUID, got "portcullis"`},
		{"authority https", provider("    authority_host: http://login.example.com #<\n") + resourceHead + resourceTail, nil, `providers[0].authority_host: must be an https URL, got "http://login.example.com"`},
		{"authority without path", provider("    authority_host: https://login.example.com/tenant #<\n") + resourceHead + resourceTail, nil, "providers[0].authority_host: must be just https://host[:port]"},
		{"graph https", provider("    graph_endpoint: graph.microsoft.com #<\n") + resourceHead + resourceTail, nil, "providers[0].graph_endpoint: must be an https URL"},
		{"graph_auth enum", provider("    graph_auth: app #<\n") + resourceHead + resourceTail, nil, `providers[0].graph_auth: must be application or delegated, got "app"`},
		{"graph_auth application needs a credential", provider("    graph_auth: application #<\n") + resourceHead + resourceTail, nil, "providers[0].graph_auth: is application, which needs"},
		{"secret and certificate", provider("    client_secret_env: S\n    client_certificate_file: /nonexistent/cert.pem #<\n") + resourceHead + resourceTail, []string{"S=x"}, "providers[0].client_certificate_file: a client secret is set too"},
		{"password env without certificate", provider("    client_certificate_password_env: P #<\n") + resourceHead + resourceTail, []string{"P=x"}, "providers[0].client_certificate_password_env: is only used with client_certificate_file"},
		{"multi-tenant needs allowed_tenants", strings.Replace(minimal, "tenant_id: "+tenantID, "tenant_id: organizations #<", 1), nil, "providers[0].allowed_tenants: is required when tenant_id is not a tenant GUID"},
		{"domain tenant with allowed_tenants", strings.Replace(minimal, "tenant_id: "+tenantID, "tenant_id: contoso.example\n    allowed_tenants: [\"*\"] #<", 1), nil, `providers[0].allowed_tenants[0]: must be a tenant id (a GUID), got "*"`},
		{"allowed tenant guid", provider("    allowed_tenants:\n      - contoso.com #<\n") + resourceHead + resourceTail, nil, `providers[0].allowed_tenants[0]: must be a tenant id (a GUID), got "contoso.com"`},
		{"empty audience", provider("    audiences:\n      - \"\" #<\n") + resourceHead + resourceTail, nil, "providers[0].audiences[0]: an empty audience is not allowed"},
		{"provider ca_file missing", provider("    ca_file: /nonexistent/ca.pem #<\n") + resourceHead + resourceTail, nil, "providers[0].ca_file: file /nonexistent/ca.pem does not exist"},
		{"negative group_cache_ttl", provider("    group_cache_ttl: -1m #<\n") + resourceHead + resourceTail, nil, "providers[0].group_cache_ttl: must not be negative"},
		{"duplicate provider", provider("  - name: contoso #<\n    tenant_id: "+tenantID+"\n    client_id: "+clientID+"\n") + strings.Replace(resourceHead, "protocol:", "provider: contoso\n    protocol:", 1) + resourceTail, nil, `providers[1].name: providers[0] is already named "contoso"`},

		{"no resources", provider(""), nil, "resources: at least one resource is required"},
		{"resource name required", strings.Replace(minimal, "  - name: reporting\n    protocol: postgres\n", "  - protocol: postgres #<\n", 1), nil, "resources[0].name: is required"},
		{"reserved resource name", strings.Replace(minimal, "name: reporting", "name: portcullis #<", 1), nil, `resources[0].name: "portcullis" is reserved for the admin console`},
		{"protocol enum", strings.Replace(minimal, "protocol: postgres", "protocol: pg #<", 1), nil, `resources[0].protocol: must be postgres or mysql, got "pg"`},
		{"protocol required", mark(strings.Replace(minimal, "    protocol: postgres\n", "", 1), "- name: reporting") + "listeners: [{protocol: postgres}]\n", nil, "resources[0].protocol: is required"},
		{"address required", mark(strings.Replace(minimal, "    address: 127.0.0.1:5432\n", "", 1), "- name: reporting"), nil, "resources[0].address: is required"},
		{"address host:port", strings.Replace(minimal, "address: 127.0.0.1:5432", "address: db.example.com #<", 1), nil, `resources[0].address: must be host:port, got "db.example.com"`},
		{"address port range", strings.Replace(minimal, "address: 127.0.0.1:5432", "address: db.example.com:99999 #<", 1), nil, "resources[0].address: port must be a number from 1 to 65535"},
		{"address host required", strings.Replace(minimal, "address: 127.0.0.1:5432", "address: :5432 #<", 1), nil, "resources[0].address: must name a host"},
		{"unknown provider", resource("    provider: fabrikam #<\n"), nil, `resources[0].provider: names provider "fabrikam", which is not configured`},
		{"provider required with two", provider("  - name: fabrikam\n    tenant_id: "+tenantID+"\n    client_id: "+clientID+"\n") + "resources:\n  - name: reporting #<\n    protocol: postgres\n    address: 127.0.0.1:5432\n" + resourceTail, nil, "resources[0].provider: is required when more than one provider is configured"},
		{"allow_groups required", strings.Replace(minimal, "allow_groups: [Analysts]", "allow_groups: [] #<", 1), nil, "resources[0].allow_groups: at least one group is required (an empty list does not mean everyone)"},
		{"empty allow group", strings.Replace(minimal, "allow_groups: [Analysts]", "allow_groups: [Analysts, \"\"] #<", 1), nil, "resources[0].allow_groups[1]: an empty group is not allowed"},
		{"prompt enum", resource("    prompt: popup #<\n"), nil, `resources[0].prompt: must be one of auto, notice or error, got "popup"`},
		{"backend tls enum", resource("    tls:\n      mode: prefer #<\n"), nil, `resources[0].tls.mode: must be one of disable, require or verify-full, got "prefer"`},
		{"backend tls disable with ca", resource("    tls:\n      mode: disable #<\n      server_name: db\n"), nil, "resources[0].tls.mode: is disable, but ca_file or server_name is set"},
		{"backend ca_file", resource("    tls:\n      ca_file: /nonexistent/ca.pem #<\n"), nil, "resources[0].tls.ca_file: file /nonexistent/ca.pem does not exist"},
		{"negative connect_timeout", resource("    connect_timeout: -5s #<\n"), nil, "resources[0].connect_timeout: must not be negative, got -5s"},
		{"credentials required", provider("") + resourceHead + "    allow_groups: [Analysts]\n    credentials: [] #<\n", nil, "resources[0].credentials: at least one credential mapping is required"},
		{"mapping groups required", strings.Replace(minimal, "groups: [Analysts]\n        user", "groups: [] #<\n        user", 1), nil, "resources[0].credentials[0].groups: at least one group is required"},
		{"mapping user required", strings.Replace(minimal, "      - groups: [Analysts]\n        user: reader\n", "      - groups: [Analysts] #<\n", 1), nil, "resources[0].credentials[0].user: is required (or set entra: true)"},
		{"mapping password required", mark(strings.Replace(minimal, "        password_env: READER_PASSWORD\n", "", 1), "- groups: [Analysts]"), nil, "resources[0].credentials[0]: password_env or password_file is required"},
		{"entra mapping takes no password", strings.Replace(minimal, "        user: reader\n", "        entra: true #<\n", 1), nil, "resources[0].credentials[0].entra: an entra mapping logs in with the user's own token"},
		{"no listener for protocol", strings.Replace(minimal, "protocol: postgres", "protocol: mysql #<", 1) + "listeners:\n  - protocol: postgres\n", nil, "resources[0].protocol: no mysql listener is configured"},
		{"duplicate resource", minimal + "  - name: reporting #<\n    protocol: postgres\n    address: 127.0.0.1:5433\n" + resourceTail, nil, `resources[1].name: resources[0] is already named "reporting"`},

		{"listener protocol required", tail("listeners:\n  - address: 127.0.0.1:15432 #<\n"), nil, "listeners[0].protocol: is required"},
		{"listener protocol enum", tail("listeners:\n  - protocol: postgresql #<\n"), nil, `listeners[0].protocol: must be postgres or mysql, got "postgresql"`},
		{"listener tls enum", tail("listeners:\n  - protocol: postgres\n    tls: maybe #<\n"), nil, `listeners[0].tls: must be one of required, optional or disabled, got "maybe"`},
		{"listener address", tail("listeners:\n  - protocol: postgres\n    address: localhost #<\n"), nil, "listeners[0].address: must be host:port"},
		{"duplicate listener name", tail("listeners:\n  - protocol: postgres\n  - protocol: postgres #<\n    address: 127.0.0.1:15433\n"), nil, `listeners[1].name: listeners[0] is already named "postgres"`},
		{"duplicate listener address", tail("listeners:\n  - protocol: postgres\n  - name: other\n    protocol: postgres\n    address: 127.0.0.1:15432 #<\n"), nil, "listeners[1].address: 127.0.0.1:15432 overlaps 127.0.0.1:15432 of listeners[0]"},
		{"wildcard listener overlap", tail("listeners:\n  - protocol: postgres\n    address: :6432\n  - name: other\n    protocol: postgres\n    address: 127.0.0.1:6432 #<\n"), nil, "listeners[1].address: 127.0.0.1:6432 overlaps :6432"},
		{"unknown default_resource", tail("listeners:\n  - protocol: postgres\n    default_resource: nowhere #<\n"), nil, `listeners[0].default_resource: names resource "nowhere", which is not configured`},
		{"default_resource protocol", tail("listeners:\n  - protocol: postgres\n  - protocol: mysql\n    default_resource: reporting #<\n"), nil, `listeners[1].default_resource: resource "reporting" speaks postgres, but this listener speaks mysql`},

		{"tls key without cert", tail("tls: #<\n  key_file: /nonexistent/tls.key\n"), nil, "tls.cert_file: is required with tls.key_file"},
		{"tls cert missing", tail("tls:\n  cert_file: /nonexistent/tls.crt #<\n  key_file: /nonexistent/tls.key\n"), nil, "tls.cert_file: file /nonexistent/tls.crt does not exist"},

		{"store driver enum", tail("store:\n  driver: mongo #<\n"), nil, `store.driver: must be one of memory, sqlite or postgres, got "mongo"`},
		{"postgres store needs dsn", tail("store:\n  driver: postgres #<\n"), nil, "store.driver: is postgres, which needs store.dsn_env or store.dsn_file"},
		{"store key shape", tail("store:\n  key_env: STORE_KEY #<\n"), []string{"STORE_KEY=c2hvcnQ="}, "store.key_env: the key must be 32 random bytes in base64"},
		{"totp needs a store key", strings.Replace(minimal, "    allow_groups:", "    require_totp: true\n    allow_groups:", 1) + "store: #<\n  driver: sqlite\n", nil, "store: store.key_env or store.key_file is required: resources[0] requires TOTP"},
		{"totp needs a store key by default", strings.Replace(minimal, "    allow_groups:", "    require_totp: true\n    allow_groups:", 1), nil, "store: store.key_env or store.key_file is required: resources[0] requires TOTP"},
		{"totp needs a durable store", strings.Replace(minimal, "    allow_groups:", "    require_totp: true\n    allow_groups:", 1) + "store:\n  driver: memory #<\n  key_env: STORE_KEY\n", []string{"STORE_KEY=" + testStoreKey}, "store.driver: is memory, which forgets TOTP secrets at every restart, and resources[0] requires TOTP"},
		{"previous key shape", tail("store:\n  key_env: STORE_KEY\n  previous_key_env: OLD_KEY #<\n"), []string{"STORE_KEY=" + testStoreKey, "OLD_KEY=c2hvcnQ="}, "store.previous_key_env: the key must be 32 random bytes in base64"},
		{"previous key without a key", tail("store: #<\n  previous_key_env: OLD_KEY\n"), []string{"OLD_KEY=" + testStoreKey}, "store.previous_key: is set without store.key_env or store.key_file"},
		{"previous key is the key", tail("store: #<\n  key_env: STORE_KEY\n  previous_key_env: OLD_KEY\n"), []string{"STORE_KEY=" + testStoreKey, "OLD_KEY=" + testStoreKey}, "store.previous_key: is the same key as store.key"},
		{"previous key file missing", tail("store:\n  key_env: STORE_KEY\n  previous_key_file: /nonexistent/old-key #<\n"), []string{"STORE_KEY=" + testStoreKey}, "store.previous_key_file: file /nonexistent/old-key does not exist"},

		{"negative max_failures", tail("mfa:\n  max_failures: -1 #<\n"), nil, "mfa.max_failures: must be at least 1, got -1"},
		{"negative failure_window", tail("mfa:\n  failure_window: -1m #<\n"), nil, "mfa.failure_window: must not be negative"},

		{"negative service principal cache_ttl", tail("service_principals:\n  cache_ttl: -1m #<\n"), nil, "service_principals.cache_ttl: must not be negative"},
		{"negative recheck", tail("authz:\n  recheck: -5m #<\n"), nil, "authz.recheck: must not be negative"},
		{"recheck too often", tail("authz:\n  recheck: 10ms #<\n"), nil, "authz.recheck: must be at least 1s, got 10ms"},
		{"negative recheck_failures", tail("authz:\n  recheck_failures: -2 #<\n"), nil, "authz.recheck_failures: must be at least 1, got -2"},

		{"negative ttl", tail("sessions:\n  ttl: -1h #<\n"), nil, "sessions.ttl: must not be negative"},
		{"negative address_grace", tail("sessions:\n  address_grace: -1m #<\n"), nil, "sessions.address_grace: must not be negative"},
		{"duration without unit", tail("sessions:\n  ttl: 12 #<\n"), nil, `sessions.ttl: must be a duration such as 30s, 10m or 12h, got "12"`},
		{"alias repeated ignoring case", tail("sessions:\n  aliases:\n    alice: alice@contoso.com\n    Alice: alice@contoso.com #<\n"), nil, `sessions.aliases.Alice: repeats alias "alice"`},
		{"alias without upn", tail("sessions:\n  aliases:\n    alice: \"\" #<\n"), nil, "sessions.aliases.alice: must name the UPN"},

		{"admin address", tail("admin:\n  address: 9090 #<\n"), nil, "admin.address: must be host:port"},
		{"empty admin group", tail("admin:\n  groups:\n    - \"\" #<\n"), nil, "admin.groups[0]: an empty group is not allowed"},
		{"negative drain", tail("proxy:\n  drain_timeout: -1s #<\n"), nil, "proxy.drain_timeout: must not be negative"},
		{"startup bytes range", tail("proxy:\n  max_startup_bytes: 100000000 #<\n"), nil, "proxy.max_startup_bytes: must be between 1 and 1048576"},
		{"not a number", tail("proxy:\n  max_startup_bytes: lots #<\n"), nil, `proxy.max_startup_bytes: must be a whole number, got "lots"`},
		{"relay threads range", tail("proxy:\n  relay_threads: -2 #<\n"), nil, "proxy.relay_threads: must be -1 (off), 0 (half the CPUs) or up to 256, got -2"},
		{"busy poll range", tail("proxy:\n  busy_poll: 5ms #<\n"), nil, "proxy.busy_poll: must be between 0 (off) and 1ms, got 5ms"},
		{"log format", tail("log:\n  format: text #<\n"), nil, `log.format: must be json or console, got "text"`},
		{"log level", tail("log:\n  level: verbose #<\n"), nil, `log.level: must be one of debug, info, warn or error, got "verbose"`},

		{"bool", strings.Replace(minimal, "    allow_groups:", "    require_totp: sometimes #<\n    allow_groups:", 1), nil, `resources[0].require_totp: must be true or false, got "sometimes"`},
		{"list expected", strings.Replace(minimal, "allow_groups: [Analysts]", "allow_groups: Analysts #<", 1), nil, `resources[0].allow_groups: must be a list, got "Analysts"`},
		{"mapping expected", tail("store: sqlite #<\n"), nil, `store: must be a mapping of keys, got "sqlite"`},
		{"key set twice", tail("log:\n  level: info\n  level: debug #<\n"), nil, "log.level: set twice (first at line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append(slices.Clone(minimalEnv), tt.env...)
			ps := problemsOf(t, tt.yaml, env, nil)
			p, ok := findProblem(ps, tt.want)
			if !ok {
				t.Fatalf("no problem contains %q; got:\n%s", tt.want, Report(ps))
			}
			wantLine := 0
			if strings.Contains(tt.yaml, "#<") {
				wantLine = markedLine(t, tt.yaml)
			}
			if p.Line != wantLine {
				t.Errorf("problem %q is at line %d, want %d", p, p.Line, wantLine)
			}
			if p.File != "test.yaml" {
				t.Errorf("problem %q names file %q, want test.yaml", p, p.File)
			}
		})
	}
}

// mark appends the "#<" marker to the first line containing sub.
func mark(text, sub string) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if strings.Contains(l, sub) {
			lines[i] = l + " #<"
			break
		}
	}
	return strings.Join(lines, "\n")
}

// An absent allow_groups is as bad as an empty one, and the problem points
// at the resource.
func TestAllowGroupsMissing(t *testing.T) {
	text := strings.Replace(minimal, "    allow_groups: [Analysts]\n", "", 1)
	ps := problemsOf(t, text, minimalEnv, nil)
	p, ok := findProblem(ps, "resources[0].allow_groups: at least one group is required")
	if !ok {
		t.Fatalf("no allow_groups problem; got:\n%s", Report(ps))
	}
	if want := 6; p.Line != want { // the "- name: reporting" line
		t.Errorf("line = %d, want %d", p.Line, want)
	}
}

func TestBrokenFileReportsEveryProblem(t *testing.T) {
	const path = "../testdata/config/broken.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var badLines []int
	for i, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "# bad:") {
			badLines = append(badLines, i+1)
		}
	}
	ps, err := Check(path, minimalEnv, nil)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	reported := map[int]bool{}
	for _, p := range ps {
		if p.File != path {
			t.Errorf("problem %q names file %q, want %q", p, p.File, path)
		}
		reported[p.Line] = true
	}
	for _, l := range badLines {
		if !reported[l] {
			t.Errorf("nothing reported for line %d; got:\n%s", l, Report(ps))
		}
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].Line < ps[i-1].Line {
			t.Errorf("problems not in line order: %q before %q", ps[i-1], ps[i])
		}
	}
	// A value that failed to decode is not complained about twice.
	if n := strings.Count(Report(ps), "sessions.ttl"); n != 1 {
		t.Errorf("sessions.ttl reported %d times, want 1:\n%s", n, Report(ps))
	}
}

func TestUnknownKeys(t *testing.T) {
	const path = "../testdata/config/unknown-key.yaml"
	_, err := Load(path, minimalEnv, nil)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load error = %v, want *ValidationError", err)
	}
	tests := []struct {
		want string
		line int
	}{
		{"providers[0].tenant: unknown key (did you mean tenant_id?)", 4},
	}
	for _, tt := range tests {
		p, ok := findProblem(ve.Problems, tt.want)
		if !ok {
			t.Errorf("no problem contains %q; got:\n%s", tt.want, err)
			continue
		}
		if p.Line != tt.line {
			t.Errorf("%q at line %d, want %d", tt.want, p.Line, tt.line)
		}
		if got := p.String(); !strings.HasPrefix(got, fmt.Sprintf("%s:%d: ", path, tt.line)) {
			t.Errorf("String() = %q, want it to start with file:line", got)
		}
	}

	ps := problemsOf(t, minimal+"lisenters:\n  - protocol: postgres\n", minimalEnv, nil)
	p, ok := findProblem(ps, "lisenters: unknown key (did you mean listeners?)")
	if !ok || p.Line != 14 {
		t.Errorf("top-level typo: got %+v (found %v), want line 14", p, ok)
	}
	ps = problemsOf(t, minimal+"colour: blue\n", minimalEnv, nil)
	if p, ok := findProblem(ps, "colour: unknown key"); !ok || strings.Contains(p.Message, "did you mean") {
		t.Errorf("far-off key: got %+v, want an unknown key without a suggestion", p)
	}
	// Secret fields are not keys.
	ps = problemsOf(t, strings.Replace(minimal, "        password_env: READER_PASSWORD\n", "        password: hunter2\n", 1), minimalEnv, nil)
	if _, ok := findProblem(ps, "resources[0].credentials[0].password: unknown key"); !ok {
		t.Errorf("password as a key was accepted; got:\n%s", Report(ps))
	}
}

func TestSyntaxError(t *testing.T) {
	ps, err := Check("../testdata/config/syntax.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("got %d problems, want 1 syntax problem:\n%s", len(ps), Report(ps))
	}
	if ps[0].Line != 5 || !strings.Contains(ps[0].Message, "invalid YAML") {
		t.Errorf("got %q, want an invalid YAML problem at line 5", ps[0])
	}

	ps = problemsOf(t, minimal+"---\nlog: {level: debug}\n", minimalEnv, nil)
	if p, ok := findProblem(ps, "more than one YAML document"); !ok || p.Line != 14 {
		t.Errorf("second document: got %+v, want a problem at line 14", p)
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), nil, nil)
	var ve *ValidationError
	if err == nil || errors.As(err, &ve) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want a wrapped not-exist error", err)
	}
	if _, err := Check(filepath.Join(t.TempDir(), "absent.yaml"), nil, nil); err == nil {
		t.Fatal("Check of a missing file returned no error")
	}
}

func TestCheckReport(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", []byte(minimal))
	ps, err := Check(good, minimalEnv, nil)
	if err != nil || len(ps) != 0 {
		t.Fatalf("Check(good) = %v, %v; want no problems", ps, err)
	}
	if got := Report(ps); got != "OK\n" {
		t.Errorf("Report(none) = %q, want OK", got)
	}

	bad := writeFile(t, dir, "bad.yaml", []byte(strings.Replace(minimal, "protocol: postgres", "protocol: pg", 1)+"log:\n  level: loud\n"))
	ps, err = Check(bad, minimalEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := bad + ":7: resources[0].protocol: must be postgres or mysql, got \"pg\"\n" +
		bad + ":15: log.level: must be one of debug, info, warn or error, got \"loud\"\n"
	if got := Report(ps); got != want {
		t.Errorf("Report =\n%s\nwant\n%s", got, want)
	}
}

func TestAliasesAndMerge(t *testing.T) {
	text := minimal + `x-timeouts: &t
  handshake_timeout: 5s
proxy:
  <<: *t
  drain_timeout: 1m
`
	// x- keys are not allowed either: anchors must live under a real key.
	ps := problemsOf(t, text, minimalEnv, nil)
	if _, ok := findProblem(ps, "x-timeouts: unknown key"); !ok {
		t.Errorf("got:\n%s", Report(ps))
	}

	text = strings.Replace(minimal, "    allow_groups: [Analysts]\n", "    allow_groups: &readers [Analysts, Readers]\n", 1) +
		"admin:\n  groups: *readers\n"
	cfg := mustParse(t, text, minimalEnv, nil)
	if want := []string{"Analysts", "Readers"}; !reflect.DeepEqual(cfg.Admin.Groups, want) {
		t.Errorf("admin.groups via alias = %v, want %v", cfg.Admin.Groups, want)
	}

	text = minimal + `listeners:
  - &pg
    protocol: postgres
    tls: optional
  - <<: *pg
    name: second
    address: 127.0.0.1:15433
`
	cfg = mustParse(t, text, minimalEnv, nil)
	if l := cfg.Listeners[1]; l.Protocol != "postgres" || l.TLS != "optional" || l.Name != "second" {
		t.Errorf("merged listener = %+v", l)
	}
}

func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "secrets/reader", []byte("from-file\n"))
	text := strings.Replace(minimal, "password_env: READER_PASSWORD", "password_file: secrets/reader", 1) +
		"store:\n  driver: sqlite\n  path: state/portcullis.db\n"
	path := writeFile(t, dir, "portcullis.yaml", []byte(text))
	cfg, err := Load(path, nil, []string{"tls.cert_file=cwd.crt", "tls.key_file=cwd.key"})
	if err == nil {
		t.Fatalf("Load succeeded with missing TLS files")
	}
	// The TLS files came from flags and stay relative to the working
	// directory; the file's own paths are relative to the file.
	if !strings.Contains(err.Error(), "file cwd.crt does not exist") {
		t.Errorf("error %q does not name cwd.crt as given", err)
	}
	cfg, err = Load(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Resources[0].Credentials[0].Password.Reveal(); got != "from-file" {
		t.Errorf("password = %q, want from-file", got)
	}
	if want := filepath.Join(dir, "state/portcullis.db"); cfg.Store.Path != want {
		t.Errorf("store.path = %q, want %q", cfg.Store.Path, want)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	cfg := &Config{
		Providers: []Provider{{Name: "contoso", TenantID: tenantID, ClientID: clientID, ClientSecret: NewSecret("s")}},
		Resources: []Resource{{
			Name: "reporting", Protocol: "postgres", Address: "127.0.0.1:5432",
			AllowGroups: []string{"Analysts"},
			Credentials: []CredentialMapping{{Groups: []string{"Analysts"}, User: "reader", Password: NewSecret("p")}},
		}},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if cfg.Providers[0].GraphAuth != GraphAuthApplication {
		t.Errorf("graph_auth = %q, want application for a resolved secret", cfg.Providers[0].GraphAuth)
	}

	cfg.Resources[0].AllowGroups = nil
	err := cfg.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Key != "resources[0].allow_groups" || ve.Problems[0].File != "" {
		t.Fatalf("Validate = %v, want one allow_groups problem without a file", err)
	}
	if got := ve.Problems[0].String(); !strings.HasPrefix(got, "resources[0].allow_groups: ") {
		t.Errorf("String() = %q", got)
	}
}

func TestValidationErrorListsAll(t *testing.T) {
	e := &ValidationError{Problems: []Problem{
		{File: "a.yaml", Line: 3, Key: "log.level", Message: "bad"},
		{File: "env PORTCULLIS_X", Message: "matches no configuration key"},
	}}
	want := "invalid configuration (2 problems):\n\ta.yaml:3: log.level: bad\n\tenv PORTCULLIS_X: matches no configuration key"
	if got := e.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	wrapped := fmt.Errorf("serve: %w", e)
	var ve *ValidationError
	if !errors.As(wrapped, &ve) || ve != e {
		t.Error("errors.As through a wrap failed")
	}
}

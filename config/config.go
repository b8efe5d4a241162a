package config

import "time"

// Config is the whole configuration of one portcullis process.
type Config struct {
	// Providers are the Entra ID tenants (or sovereign clouds) identities
	// come from.
	Providers []Provider `yaml:"providers"`
	// Resources are the databases behind portcullis and who may reach them.
	Resources []Resource `yaml:"resources"`
	// Listeners are the addresses clients connect to; default one for each
	// protocol the resources speak, at that protocol's default address.
	Listeners []Listener `yaml:"listeners"`
	// TLS is the certificate presented to clients.
	TLS TLS `yaml:"tls"`
	// Store is where durable state lives.
	Store Store `yaml:"store"`
	// Sessions governs reuse of a sign-in.
	Sessions Sessions `yaml:"sessions"`
	// MFA governs TOTP codes for resources that require them.
	MFA MFA `yaml:"mfa"`
	// ServicePrincipals governs programs that sign in with a client secret.
	ServicePrincipals ServicePrincipals `yaml:"service_principals"`
	// Authz governs the re-checking of open sessions.
	Authz Authz `yaml:"authz"`
	// Admin is the operator surface: admin groups and the HTTP address.
	Admin Admin `yaml:"admin"`
	// Proxy holds connection-handling limits.
	Proxy Proxy `yaml:"proxy"`
	// Log controls log output.
	Log Log `yaml:"log"`
}

// Provider is one Entra ID tenant and the app registration portcullis uses
// in it.
type Provider struct {
	// Name is how resources and the console refer to this provider.
	Name string `yaml:"name"`
	// TenantID is the directory (tenant) id.
	TenantID string `yaml:"tenant_id"`
	// ClientID is portcullis's app registration (a public client for the
	// device-code flow).
	ClientID string `yaml:"client_id"`
	// AuthorityHost defaults to https://login.microsoftonline.com; set it
	// for sovereign clouds (https://login.microsoftonline.us,
	// https://login.chinacloudapi.cn) or the simulator.
	AuthorityHost string `yaml:"authority_host"`
	// GraphEndpoint defaults to https://graph.microsoft.com.
	GraphEndpoint string `yaml:"graph_endpoint"`
	// GraphAuth is "application" (app-only token from the client secret or
	// certificate; the default when one is configured) or "delegated" (the
	// signed-in user's own token).
	GraphAuth string `yaml:"graph_auth"`
	// ClientSecretEnv / ClientSecretFile supply the confidential client's
	// secret.
	ClientSecretEnv  string `yaml:"client_secret_env"`
	ClientSecretFile string `yaml:"client_secret_file"`
	// ClientCertificateFile is a PEM (certificate and key) or PFX file;
	// ClientCertificatePasswordEnv unlocks a PFX or an encrypted key.
	ClientCertificateFile        string `yaml:"client_certificate_file"`
	ClientCertificatePasswordEnv string `yaml:"client_certificate_password_env"`
	// AllowedTenants are the tenant ids (GUIDs) whose tokens are accepted;
	// default just TenantID when that is a GUID, and required when it is a
	// domain name or a multi-tenant value such as "organizations".
	AllowedTenants []string `yaml:"allowed_tenants"`
	// Audiences are the accepted aud values of access tokens presented as
	// passwords; default the client id and api://<client id>. Add
	// https://ossrdbms-aad.database.windows.net for Azure Database tools.
	Audiences []string `yaml:"audiences"`
	// CAFile, if set, is the only CA trusted for the authority and Graph
	// (the simulator's CA in dev and tests).
	CAFile string `yaml:"ca_file"`
	// GroupCacheTTL is how long transitive groups, and whether the account
	// is enabled, are cached per identity for new connections; default 5m.
	// Rechecks of open sessions read afresh.
	GroupCacheTTL time.Duration `yaml:"group_cache_ttl"`

	// ClientSecret is the resolved secret (from ClientSecretEnv or
	// ClientSecretFile); never printed.
	ClientSecret Secret `yaml:"-"`
	// ClientCertificate is ClientCertificateFile read, unlocked and checked
	// at load time, so a bad certificate is a configuration problem rather
	// than a failure at the first sign-in; its String never shows the key.
	ClientCertificate *ClientCertificate `yaml:"-"`
}

// Resource is one backend database and its policy.
type Resource struct {
	// Name is what clients put as their database (PostgreSQL) or schema
	// (MySQL) to reach this resource.
	Name string `yaml:"name"`
	// Protocol is "postgres" or "mysql".
	Protocol string `yaml:"protocol"`
	// Address is the backend host:port.
	Address string `yaml:"address"`
	// Database is the backend database name; default Name.
	Database string `yaml:"database"`
	// Provider names the identity provider; default the only one.
	Provider string `yaml:"provider"`
	// AllowGroups are group object ids or display names (resolved to ids at
	// start-up); a member of any may connect. Required: an empty list is an
	// error, never "everyone".
	AllowGroups []string `yaml:"allow_groups"`
	// RequireTOTP demands a TOTP code at every connection.
	RequireTOTP bool `yaml:"require_totp"`
	// Prompt is "auto" (default: by application_name, or by the startup
	// parameters of drivers that hide notices), "notice" or "error".
	Prompt string `yaml:"prompt"`
	// TLS is how portcullis connects to the backend.
	TLS BackendTLS `yaml:"tls"`
	// Credentials map groups to backend logins; the first whose groups meet
	// the user's wins.
	Credentials []CredentialMapping `yaml:"credentials"`
	// ConnectTimeout bounds the backend dial and login; default 10s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// BackendTLS is the TLS policy toward a backend.
type BackendTLS struct {
	// Mode is "disable", "require" (encrypt, do not verify) or
	// "verify-full". Default verify-full, except disable for a loopback
	// address with neither CAFile nor ServerName set.
	Mode string `yaml:"mode"`
	// CAFile verifies the backend certificate; default system roots.
	CAFile string `yaml:"ca_file"`
	// ServerName overrides the name checked in the certificate.
	ServerName string `yaml:"server_name"`
}

// CredentialMapping maps group membership to a backend login.
type CredentialMapping struct {
	// Groups are ids or display names; any match selects this mapping.
	// Required, non-empty.
	Groups []string `yaml:"groups"`
	// User is the backend user name; required unless Entra.
	User string `yaml:"user"`
	// PasswordEnv / PasswordFile supply the backend password; exactly one
	// is required unless Entra.
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	// Entra: log in as the user's own Entra identity with an access token
	// for Azure Database (User is then ignored).
	Entra bool `yaml:"entra"`

	// Password is resolved from PasswordEnv or PasswordFile.
	Password Secret `yaml:"-"`
}

// Listener is one address clients connect to.
type Listener struct {
	// Name labels metrics and logs; default "<protocol>".
	Name string `yaml:"name"`
	// Protocol is "postgres" or "mysql".
	Protocol string `yaml:"protocol"`
	// Address is host:port; defaults 127.0.0.1:15432 (postgres) and
	// 127.0.0.1:13306 (mysql).
	Address string `yaml:"address"`
	// TLS is "required" (default), "optional" or "disabled".
	TLS string `yaml:"tls"`
	// DefaultResource is used when the client names no database.
	DefaultResource string `yaml:"default_resource"`
}

// TLS is the certificate clients see.
type TLS struct {
	// CertFile and KeyFile are a PEM certificate (chain) and its key; set
	// both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Store selects the durable state backend.
type Store struct {
	// Driver is "sqlite" (default: one file, one process), "postgres"
	// (shared by replicas) or "memory" (forgotten at restart; not for
	// resources that require TOTP).
	Driver string `yaml:"driver"`
	// Path is the SQLite file; default portcullis.db.
	Path string `yaml:"path"`
	// DSNEnv / DSNFile supply the PostgreSQL connection string; required
	// by the postgres driver.
	DSNEnv  string `yaml:"dsn_env"`
	DSNFile string `yaml:"dsn_file"`
	// KeyEnv / KeyFile supply the 32-byte (base64) key sealing TOTP
	// secrets; required by the sqlite and postgres drivers when a resource
	// requires TOTP.
	KeyEnv  string `yaml:"key_env"`
	KeyFile string `yaml:"key_file"`
	// PreviousKeyEnv / PreviousKeyFile supply the key that sealed TOTP
	// secrets before a rotation: secrets sealed under it still open, and
	// `portcullis store rotate-key` re-seals them under the key. Remove it
	// once the rotation has run.
	PreviousKeyEnv  string `yaml:"previous_key_env"`
	PreviousKeyFile string `yaml:"previous_key_file"`

	// DSN is resolved from DSNEnv or DSNFile.
	DSN Secret `yaml:"-"`
	// Key is resolved from KeyEnv or KeyFile; it is still base64 text.
	Key Secret `yaml:"-"`
	// PreviousKey is resolved from PreviousKeyEnv or PreviousKeyFile.
	PreviousKey Secret `yaml:"-"`
}

// Sessions governs reuse of a completed sign-in.
type Sessions struct {
	// TTL is how long a session key is valid; default 12h.
	TTL time.Duration `yaml:"ttl"`
	// AddressGrace lets the same user from the same client address reuse a
	// sign-in without a key for this long; default 10m, 0 turns it off.
	AddressGrace *time.Duration `yaml:"address_grace"`
	// Aliases map a login name to the UPN it stands for
	// (e.g. "alice" → "alice@contoso.com").
	Aliases map[string]string `yaml:"aliases"`
}

// MFA governs the TOTP codes asked for by resources with require_totp.
type MFA struct {
	// MaxFailures wrong codes within FailureWindow lock a user's TOTP
	// sign-ins for FailureWindow; default 5.
	MaxFailures int `yaml:"max_failures"`
	// FailureWindow is how long wrong codes count, and how long a lockout
	// lasts; default 15m.
	FailureWindow time.Duration `yaml:"failure_window"`
}

// ServicePrincipals governs programs that sign in as a service
// principal (an application id and a client secret).
type ServicePrincipals struct {
	// CacheTTL is how long a secret Entra ID accepted is remembered (as a
	// salted hash), so that a pool of connections costs one token request;
	// default 5m.
	CacheTTL time.Duration `yaml:"cache_ttl"`
}

// Authz governs continuous authorization: open sessions are checked
// against the directory again while they run.
type Authz struct {
	// Recheck is how often every open session's identity is checked again
	// (groups, account enabled, access key not revoked); default 5m.
	Recheck time.Duration `yaml:"recheck"`
	// RecheckFailures is how many rechecks in a row may fail to reach
	// Entra ID or Microsoft Graph before a session is ended anyway;
	// default 3.
	RecheckFailures int `yaml:"recheck_failures"`
}

// Admin is the operator surface.
type Admin struct {
	// Groups may use the admin console (ids or display names).
	Groups []string `yaml:"groups"`
	// Provider names the identity provider admins sign in with; default
	// the only one, required when there are several.
	Provider string `yaml:"provider"`
	// Address is the HTTP address (host:port) for /metrics, /healthz and
	// /readyz; empty disables it.
	Address string `yaml:"address"`
}

// Proxy holds connection-handling limits.
type Proxy struct {
	// HandshakeTimeout bounds each step before the splice (TLS, startup,
	// password, backend login); default 30s. Waiting for a device-code
	// sign-in is bounded by the code's lifetime instead.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// DrainTimeout is how long open sessions may run after SIGTERM;
	// default 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// MaxStartupBytes caps a PostgreSQL startup packet; default 10000.
	MaxStartupBytes int `yaml:"max_startup_bytes"`
	// RelayThreads is how many event-loop threads relay sessions
	// (PostgreSQL or MySQL, with or without TLS on the client leg, none on
	// the backend's); 0, the default, is half the CPUs, at least 1; -1
	// relays every session on goroutines of its own. Read once, when the
	// first such session starts.
	RelayThreads int `yaml:"relay_threads"`
	// BusyPoll is how long an event loop keeps looking for its next
	// event before it waits for one, while the machine has a CPU to
	// spare; 0, the default, turns it off. It trades CPU for latency.
	// Read once, as RelayThreads is.
	BusyPoll time.Duration `yaml:"busy_poll"`
	// KernelRelay has the kernel relay PostgreSQL sessions whose client
	// and backend legs are both plain TCP, with a SOCKMAP and a BPF
	// program (Linux 5.17 or later, and CAP_BPF with CAP_NET_ADMIN, or
	// root); where it cannot, sessions are relayed as without it. Off by
	// default. Read once, when the first such session starts.
	KernelRelay bool `yaml:"kernel_relay"`
}

// Log controls log output.
type Log struct {
	// Format is "json" (default) or "console".
	Format string `yaml:"format"`
	// Level is "debug", "info" (default), "warn" or "error".
	Level string `yaml:"level"`
}

// Secret is a value that must never be printed. Its String and
// MarshalText redact it; call Reveal to use it.
type Secret struct{ v string }

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{v: s} }

// Reveal returns the secret value.
func (s Secret) Reveal() string { return s.v }

// IsSet reports whether a value is present.
func (s Secret) IsSet() bool { return s.v != "" }

// String redacts the secret: "[redacted]", or "" when unset.
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return "[redacted]"
}

// GoString redacts the secret in %#v.
func (s Secret) GoString() string { return s.String() }

// MarshalText redacts the secret in JSON and YAML output.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

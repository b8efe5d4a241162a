package config

import (
	"net"
	"path/filepath"
	"strings"
	"time"
)

// The documented defaults. Each field's doc comment repeats its own.
const (
	DefaultAuthorityHost    = "https://login.microsoftonline.com"
	DefaultGraphEndpoint    = "https://graph.microsoft.com"
	DefaultGroupCacheTTL    = 5 * time.Minute
	DefaultConnectTimeout   = 10 * time.Second
	DefaultPostgresAddress  = "127.0.0.1:15432"
	DefaultMySQLAddress     = "127.0.0.1:13306"
	DefaultStorePath        = "portcullis.db"
	DefaultSessionTTL       = 12 * time.Hour
	DefaultAddressGrace     = 10 * time.Minute
	DefaultMaxFailures      = 5
	DefaultFailureWindow    = 15 * time.Minute
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
	DefaultMaxStartupBytes  = 10000
	// MaxRelayThreads bounds proxy.relay_threads.
	MaxRelayThreads = 256
	// MaxBusyPoll bounds proxy.busy_poll.
	MaxBusyPoll = time.Millisecond

	DefaultServicePrincipalCacheTTL = 5 * time.Minute
	DefaultRecheck                  = 5 * time.Minute
	DefaultRecheckFailures          = 3
)

// Values of the enumerated keys.
const (
	ProtocolPostgres = "postgres"
	ProtocolMySQL    = "mysql"

	GraphAuthApplication = "application"
	GraphAuthDelegated   = "delegated"

	PromptAuto   = "auto"
	PromptNotice = "notice"
	PromptError  = "error"

	BackendTLSDisable    = "disable"
	BackendTLSRequire    = "require"
	BackendTLSVerifyFull = "verify-full"

	ListenerTLSRequired = "required"
	ListenerTLSOptional = "optional"
	ListenerTLSDisabled = "disabled"

	StoreMemory   = "memory"
	StoreSQLite   = "sqlite"
	StorePostgres = "postgres"

	LogJSON    = "json"
	LogConsole = "console"
)

// ApplyDefaults fills every unset key with its documented default. Load
// calls it; call it yourself on a Config built in code, before Validate.
// It is idempotent.
func (c *Config) ApplyDefaults() {
	for i := range c.Providers {
		p := &c.Providers[i]
		if p.AuthorityHost == "" {
			p.AuthorityHost = DefaultAuthorityHost
		}
		p.AuthorityHost = strings.TrimRight(p.AuthorityHost, "/")
		if p.GraphEndpoint == "" {
			p.GraphEndpoint = DefaultGraphEndpoint
		}
		p.GraphEndpoint = strings.TrimRight(p.GraphEndpoint, "/")
		if p.GraphAuth == "" {
			p.GraphAuth = GraphAuthDelegated
			if p.hasClientCredential() {
				p.GraphAuth = GraphAuthApplication
			}
		}
		// Tokens carry the tenant GUID in tid, so only a GUID tenant_id
		// can stand in for the allow-list; Validate asks for an explicit
		// list otherwise.
		if len(p.AllowedTenants) == 0 && isGUID(p.TenantID) {
			p.AllowedTenants = []string{p.TenantID}
		}
		if len(p.Audiences) == 0 && p.ClientID != "" {
			p.Audiences = []string{p.ClientID, "api://" + p.ClientID}
		}
		if p.GroupCacheTTL == 0 {
			p.GroupCacheTTL = DefaultGroupCacheTTL
		}
	}

	for i := range c.Resources {
		r := &c.Resources[i]
		if r.Database == "" {
			r.Database = r.Name
		}
		if r.Provider == "" && len(c.Providers) == 1 {
			r.Provider = c.Providers[0].Name
		}
		if r.Prompt == "" {
			r.Prompt = PromptAuto
		}
		if r.ConnectTimeout == 0 {
			r.ConnectTimeout = DefaultConnectTimeout
		}
		if r.TLS.Mode == "" {
			// Across a network the backend must prove who it is; on the
			// same host there is no one in between to fool. Naming a CA
			// or server name asks for verification wherever it is.
			r.TLS.Mode = BackendTLSVerifyFull
			if isLoopback(r.Address) && r.TLS.CAFile == "" && r.TLS.ServerName == "" {
				r.TLS.Mode = BackendTLSDisable
			}
		}
	}

	if len(c.Listeners) == 0 {
		// One listener for each protocol some resource speaks.
		for _, proto := range []string{ProtocolPostgres, ProtocolMySQL} {
			for _, r := range c.Resources {
				if r.Protocol == proto {
					c.Listeners = append(c.Listeners, Listener{Protocol: proto})
					break
				}
			}
		}
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.Name == "" {
			l.Name = l.Protocol
		}
		if l.Address == "" {
			switch l.Protocol {
			case ProtocolPostgres:
				l.Address = DefaultPostgresAddress
			case ProtocolMySQL:
				l.Address = DefaultMySQLAddress
			}
		}
		if l.TLS == "" {
			l.TLS = ListenerTLSRequired
		}
	}

	if c.Store.Driver == "" {
		c.Store.Driver = StoreSQLite
	}
	if c.Store.Path == "" {
		c.Store.Path = DefaultStorePath
	}

	if c.Sessions.TTL == 0 {
		c.Sessions.TTL = DefaultSessionTTL
	}
	if c.Sessions.AddressGrace == nil {
		g := DefaultAddressGrace
		c.Sessions.AddressGrace = &g
	}

	if c.MFA.MaxFailures == 0 {
		c.MFA.MaxFailures = DefaultMaxFailures
	}
	if c.MFA.FailureWindow == 0 {
		c.MFA.FailureWindow = DefaultFailureWindow
	}

	if c.ServicePrincipals.CacheTTL == 0 {
		c.ServicePrincipals.CacheTTL = DefaultServicePrincipalCacheTTL
	}
	if c.Authz.Recheck == 0 {
		c.Authz.Recheck = DefaultRecheck
	}
	if c.Authz.RecheckFailures == 0 {
		c.Authz.RecheckFailures = DefaultRecheckFailures
	}

	if c.Proxy.HandshakeTimeout == 0 {
		c.Proxy.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.Proxy.DrainTimeout == 0 {
		c.Proxy.DrainTimeout = DefaultDrainTimeout
	}
	if c.Proxy.MaxStartupBytes == 0 {
		c.Proxy.MaxStartupBytes = DefaultMaxStartupBytes
	}

	if c.Log.Format == "" {
		c.Log.Format = LogJSON
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
}

// hasClientCredential reports whether a secret or certificate is
// configured, by reference or already resolved.
func (p *Provider) hasClientCredential() bool {
	return p.ClientSecretEnv != "" || p.ClientSecretFile != "" || p.ClientSecret.IsSet() ||
		p.ClientCertificateFile != "" || p.ClientCertificate != nil
}

// Grace returns sessions.address_grace with its default applied: 0 means
// address reuse is off.
func (s Sessions) Grace() time.Duration {
	if s.AddressGrace == nil {
		return DefaultAddressGrace
	}
	return *s.AddressGrace
}

// isLoopback reports whether a host:port names this host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// resolvePaths makes relative file paths written in the configuration file
// relative to the file's directory, so a configuration means the same from
// any working directory. It runs before overlays: paths given in env or
// flags stay relative to the working directory, as on a command line.
func (c *Config) resolvePaths(dir string) {
	if dir == "" || dir == "." {
		return
	}
	for _, p := range c.filePaths() {
		if *p != "" && !filepath.IsAbs(*p) && !strings.HasPrefix(*p, "file:") && !strings.HasPrefix(*p, ":") {
			*p = filepath.Join(dir, *p)
		}
	}
}

// filePaths points at every key that holds a file path.
func (c *Config) filePaths() []*string {
	var ps []*string
	for i := range c.Providers {
		p := &c.Providers[i]
		ps = append(ps, &p.ClientSecretFile, &p.ClientCertificateFile, &p.CAFile)
	}
	for i := range c.Resources {
		r := &c.Resources[i]
		ps = append(ps, &r.TLS.CAFile)
		for j := range r.Credentials {
			ps = append(ps, &r.Credentials[j].PasswordFile)
		}
	}
	return append(ps, &c.TLS.CertFile, &c.TLS.KeyFile, &c.Store.Path, &c.Store.DSNFile, &c.Store.KeyFile, &c.Store.PreviousKeyFile)
}

// secretEnvNames returns every variable named by a *_env key.
func (c *Config) secretEnvNames() map[string]bool {
	m := map[string]bool{}
	add := func(s string) {
		if s != "" {
			m[s] = true
		}
	}
	for _, p := range c.Providers {
		add(p.ClientSecretEnv)
		add(p.ClientCertificatePasswordEnv)
	}
	for _, r := range c.Resources {
		for _, m := range r.Credentials {
			add(m.PasswordEnv)
		}
	}
	add(c.Store.DSNEnv)
	add(c.Store.KeyEnv)
	add(c.Store.PreviousKeyEnv)
	return m
}

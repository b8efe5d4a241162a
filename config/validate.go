package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Validate checks a Config built in code, after ApplyDefaults, and returns
// a *ValidationError with every problem, or nil. Load validates on its own,
// with file lines; Validate knows no lines. Secrets count as configured
// when their Secret field is set or when a *_env or *_file key names them.
func (c *Config) Validate() error {
	ps := newProblems("")
	c.validate(ps)
	return ps.result()
}

var (
	guidPattern   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	domainPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
	namePattern   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$`)
)

func isGUID(s string) bool { return guidPattern.MatchString(s) }

// multiTenant are the tenant_id values that stand for many tenants.
var multiTenant = map[string]bool{"common": true, "organizations": true, "consumers": true}

// reservedResource is the PostgreSQL database name of the admin console.
const reservedResource = ConsoleResource

func (c *Config) validate(ps *problems) {
	providers := map[string]int{}
	if len(c.Providers) == 0 {
		ps.add("providers", "at least one provider is required")
	}
	for i := range c.Providers {
		c.Providers[i].validate(ps, i, providers)
	}

	listenerProtocols := map[string]bool{}
	for _, l := range c.Listeners {
		listenerProtocols[l.Protocol] = true
	}
	resources := map[string]int{}
	if len(c.Resources) == 0 {
		ps.add("resources", "at least one resource is required")
	}
	for i := range c.Resources {
		c.validateResource(ps, i, resources, listenerProtocols)
	}

	c.validateListeners(ps)
	c.validateTLS(ps)
	c.validateStore(ps)
	c.validateSessions(ps)
	c.validateMFA(ps)
	c.validateAuthz(ps)

	if c.Admin.Address != "" {
		checkAddress(ps, "admin.address", c.Admin.Address, false)
	}
	checkList(ps, "admin.groups", c.Admin.Groups, "group")
	c.validateAdminProvider(ps)

	nonNegative(ps, "proxy.handshake_timeout", c.Proxy.HandshakeTimeout)
	nonNegative(ps, "proxy.drain_timeout", c.Proxy.DrainTimeout)
	if n := c.Proxy.MaxStartupBytes; n < 0 || n > 1<<20 {
		ps.add("proxy.max_startup_bytes", "must be between 1 and %d, got %d", 1<<20, n)
	}
	if n := c.Proxy.RelayThreads; n < -1 || n > MaxRelayThreads {
		ps.add("proxy.relay_threads", "must be -1 (off), 0 (half the CPUs) or up to %d, got %d", MaxRelayThreads, n)
	}
	if d := c.Proxy.BusyPoll; d < 0 || d > MaxBusyPoll {
		ps.add("proxy.busy_poll", "must be between 0 (off) and %s, got %s", MaxBusyPoll, d)
	}

	oneOf(ps, "log.format", c.Log.Format, LogJSON, LogConsole)
	oneOf(ps, "log.level", c.Log.Level, "debug", "info", "warn", "error")
}

func (p *Provider) validate(ps *problems, i int, names map[string]int) {
	key := fmt.Sprintf("providers[%d]", i)
	checkName(ps, "providers", i, p.Name, names)

	switch {
	case p.TenantID == "":
		ps.add(key+".tenant_id", "is required")
	case !isGUID(p.TenantID) && !domainPattern.MatchString(p.TenantID):
		ps.add(key+".tenant_id", "must be a tenant id (a GUID) or a domain name, got %q", p.TenantID)
	}
	switch {
	case p.ClientID == "":
		ps.add(key+".client_id", "is required")
	case !isGUID(p.ClientID):
		ps.add(key+".client_id", "must be the application (client) id, a GUID, got %q", p.ClientID)
	}

	checkHTTPS(ps, key+".authority_host", p.AuthorityHost)
	checkHTTPS(ps, key+".graph_endpoint", p.GraphEndpoint)

	if oneOf(ps, key+".graph_auth", p.GraphAuth, GraphAuthApplication, GraphAuthDelegated) &&
		p.GraphAuth == GraphAuthApplication && !p.hasClientCredential() {
		ps.add(key+".graph_auth", "is application, which needs client_secret_env, client_secret_file or client_certificate_file")
	}
	hasSecret := p.ClientSecretEnv != "" || p.ClientSecretFile != "" || p.ClientSecret.IsSet()
	if hasSecret && p.ClientCertificateFile != "" {
		ps.add(key+".client_certificate_file", "a client secret is set too; configure one credential")
	}
	if p.ClientCertificatePasswordEnv != "" && p.ClientCertificateFile == "" {
		ps.add(key+".client_certificate_password_env", "is only used with client_certificate_file")
	}

	if len(p.AllowedTenants) == 0 {
		if p.TenantID != "" && !isGUID(p.TenantID) {
			ps.addNear(key+".allowed_tenants", key+".tenant_id", "is required when tenant_id is not a tenant GUID: tokens name their tenant by GUID")
		}
	}
	for j, t := range p.AllowedTenants {
		if !isGUID(t) {
			ps.add(fmt.Sprintf("%s.allowed_tenants[%d]", key, j), "must be a tenant id (a GUID), got %q", t)
		}
	}
	checkList(ps, key+".audiences", p.Audiences, "audience")

	if p.CAFile != "" {
		checkCAFile(ps, key+".ca_file", p.CAFile)
	}
	nonNegative(ps, key+".group_cache_ttl", p.GroupCacheTTL)
}

func (c *Config) validateResource(ps *problems, i int, names map[string]int, listeners map[string]bool) {
	r := &c.Resources[i]
	key := fmt.Sprintf("resources[%d]", i)
	if checkName(ps, "resources", i, r.Name, names) && strings.EqualFold(r.Name, reservedResource) {
		ps.add(key+".name", "%q is reserved for the admin console", r.Name)
	}
	protoOK := false
	if r.Protocol == "" {
		ps.add(key+".protocol", "is required (postgres or mysql)")
	} else {
		protoOK = oneOf(ps, key+".protocol", r.Protocol, ProtocolPostgres, ProtocolMySQL)
	}
	if r.Address == "" {
		ps.add(key+".address", "is required")
	} else {
		checkAddress(ps, key+".address", r.Address, true)
	}

	switch {
	case r.Provider == "" && len(c.Providers) > 1:
		ps.add(key+".provider", "is required when more than one provider is configured")
	case r.Provider != "" && len(c.Providers) > 0:
		// Match against every name, valid or not: a bad name is reported
		// once, at the provider.
		if !slices.ContainsFunc(c.Providers, func(p Provider) bool { return p.Name == r.Provider }) {
			ps.add(key+".provider", "names provider %q, which is not configured", r.Provider)
		}
	}

	if len(r.AllowGroups) == 0 {
		ps.add(key+".allow_groups", "at least one group is required (an empty list does not mean everyone)")
	}
	checkList(ps, key+".allow_groups", r.AllowGroups, "group")
	oneOf(ps, key+".prompt", r.Prompt, PromptAuto, PromptNotice, PromptError)

	if oneOf(ps, key+".tls.mode", r.TLS.Mode, BackendTLSDisable, BackendTLSRequire, BackendTLSVerifyFull) &&
		r.TLS.Mode == BackendTLSDisable && (r.TLS.CAFile != "" || r.TLS.ServerName != "") {
		ps.add(key+".tls.mode", "is disable, but ca_file or server_name is set; use verify-full")
	}
	if r.TLS.CAFile != "" {
		checkCAFile(ps, key+".tls.ca_file", r.TLS.CAFile)
	}
	nonNegative(ps, key+".connect_timeout", r.ConnectTimeout)

	if len(r.Credentials) == 0 {
		ps.add(key+".credentials", "at least one credential mapping is required")
	}
	for j := range r.Credentials {
		m := &r.Credentials[j]
		mk := fmt.Sprintf("%s.credentials[%d]", key, j)
		if len(m.Groups) == 0 {
			ps.add(mk+".groups", "at least one group is required")
		}
		checkList(ps, mk+".groups", m.Groups, "group")
		hasPassword := m.PasswordEnv != "" || m.PasswordFile != "" || m.Password.IsSet()
		switch {
		case m.Entra && hasPassword:
			ps.add(mk+".entra", "an entra mapping logs in with the user's own token; remove password_env/password_file")
		case !m.Entra && m.User == "":
			ps.add(mk+".user", "is required (or set entra: true)")
		case !m.Entra && !hasPassword:
			ps.add(mk, "password_env or password_file is required (or set entra: true)")
		}
	}

	if protoOK && len(listeners) > 0 && !listeners[r.Protocol] {
		ps.add(key+".protocol", "no %s listener is configured, so clients cannot reach this resource", r.Protocol)
	}
}

func (c *Config) validateListeners(ps *problems) {
	names := map[string]int{}
	type bound struct {
		key, host string
	}
	ports := map[string][]bound{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		key := fmt.Sprintf("listeners[%d]", i)
		if l.Protocol == "" {
			ps.add(key+".protocol", "is required (postgres or mysql)")
		} else {
			oneOf(ps, key+".protocol", l.Protocol, ProtocolPostgres, ProtocolMySQL)
		}
		if l.Name != "" || l.Protocol != "" {
			checkName(ps, "listeners", i, l.Name, names)
		}
		oneOf(ps, key+".tls", l.TLS, ListenerTLSRequired, ListenerTLSOptional, ListenerTLSDisabled)

		if l.Address != "" && checkAddress(ps, key+".address", l.Address, false) {
			host, port, _ := net.SplitHostPort(l.Address)
			if port != "0" { // port 0 picks a free port each time
				for _, other := range ports[port] {
					if other.host == host || isWildcard(other.host) || isWildcard(host) {
						ps.add(key+".address", "%s overlaps %s of %s", l.Address, net.JoinHostPort(other.host, port), other.key)
						break
					}
				}
				ports[port] = append(ports[port], bound{key: key, host: host})
			}
		}

		if l.DefaultResource != "" {
			j := slices.IndexFunc(c.Resources, func(r Resource) bool { return r.Name == l.DefaultResource })
			switch {
			case j < 0:
				ps.add(key+".default_resource", "names resource %q, which is not configured", l.DefaultResource)
			case c.Resources[j].Protocol != l.Protocol && l.Protocol != "":
				ps.add(key+".default_resource", "resource %q speaks %s, but this listener speaks %s", l.DefaultResource, c.Resources[j].Protocol, l.Protocol)
			}
		}
	}
}

func isWildcard(host string) bool {
	return host == "" || host == "0.0.0.0" || host == "::"
}

func (c *Config) validateTLS(ps *problems) {
	cert, key := c.TLS.CertFile, c.TLS.KeyFile
	switch {
	case cert == "" && key == "":
	case cert == "":
		ps.add("tls.cert_file", "is required with tls.key_file")
	case key == "":
		ps.add("tls.key_file", "is required with tls.cert_file")
	default:
		if err := fileReadable(cert); err != nil {
			ps.add("tls.cert_file", "%s", err.Error())
			return
		}
		if err := fileReadable(key); err != nil {
			ps.add("tls.key_file", "%s", err.Error())
			return
		}
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			ps.add("tls.cert_file", "cannot use %s with %s: %s", cert, key, strings.TrimPrefix(err.Error(), "tls: "))
		}
	}
}

func (c *Config) validateStore(ps *problems) {
	s := &c.Store
	if !oneOf(ps, "store.driver", s.Driver, StoreMemory, StoreSQLite, StorePostgres) {
		return
	}
	if s.Driver == StorePostgres && s.DSNEnv == "" && s.DSNFile == "" && !s.DSN.IsSet() {
		ps.add("store.driver", "is postgres, which needs store.dsn_env or store.dsn_file")
	}
	if s.Driver == StoreSQLite && s.Path == "" {
		ps.add("store.path", "is required for the sqlite driver")
	}
	hasKey := s.KeyEnv != "" || s.KeyFile != "" || s.Key.IsSet()
	hasPrevious := s.PreviousKeyEnv != "" || s.PreviousKeyFile != "" || s.PreviousKey.IsSet()
	checkStoreKey(ps, s.Key, "store.key", s.KeyFile != "")
	checkStoreKey(ps, s.PreviousKey, "store.previous_key", s.PreviousKeyFile != "")
	switch {
	case hasPrevious && !hasKey:
		ps.add("store.previous_key", "is set without store.key_env or store.key_file: the previous key is only read while rotating to a new one")
	case s.Key.IsSet() && s.PreviousKey.IsSet() && strings.TrimSpace(s.Key.Reveal()) == strings.TrimSpace(s.PreviousKey.Reveal()):
		ps.add("store.previous_key", "is the same key as store.key")
	}
	for i, r := range c.Resources {
		if !r.RequireTOTP {
			continue
		}
		switch {
		case s.Driver == StoreMemory:
			ps.add("store.driver", "is memory, which forgets TOTP secrets at every restart, and resources[%d] requires TOTP: use sqlite or postgres", i)
		case !hasKey:
			ps.add("store", "store.key_env or store.key_file is required: resources[%d] requires TOTP, and TOTP secrets are sealed with that key", i)
		}
		break
	}
}

// checkStoreKey says what is wrong with a sealing key, never what it is.
func checkStoreKey(ps *problems, key Secret, name string, fromFile bool) {
	if !key.IsSet() {
		return
	}
	if fromFile {
		name += "_file"
	} else {
		name += "_env"
	}
	if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(key.Reveal())); err != nil || len(b) != 32 {
		ps.add(name, "the key must be 32 random bytes in base64 (openssl rand -base64 32)")
	}
}

func (c *Config) validateMFA(ps *problems) {
	if c.MFA.MaxFailures < 0 {
		ps.add("mfa.max_failures", "must be at least 1, got %d", c.MFA.MaxFailures)
	}
	nonNegative(ps, "mfa.failure_window", c.MFA.FailureWindow)
}

func (c *Config) validateAuthz(ps *problems) {
	nonNegative(ps, "service_principals.cache_ttl", c.ServicePrincipals.CacheTTL)
	if r := c.Authz.Recheck; r < 0 {
		ps.add("authz.recheck", "must not be negative, got %s", r)
	} else if r > 0 && r < time.Second {
		// Every recheck asks Graph about every open session's identity.
		ps.add("authz.recheck", "must be at least 1s, got %s", r)
	}
	if n := c.Authz.RecheckFailures; n < 0 {
		ps.add("authz.recheck_failures", "must be at least 1, got %d", n)
	}
}

func (c *Config) validateSessions(ps *problems) {
	s := &c.Sessions
	if s.TTL < 0 {
		ps.add("sessions.ttl", "must not be negative, got %s", s.TTL)
	}
	if s.AddressGrace != nil {
		nonNegative(ps, "sessions.address_grace", *s.AddressGrace)
	}
	seen := map[string]string{}
	for name, upn := range s.Aliases {
		key := "sessions.aliases." + name
		if strings.TrimSpace(name) == "" {
			ps.add("sessions.aliases", "an alias name must not be empty")
			continue
		}
		if strings.TrimSpace(upn) == "" {
			ps.add(key, "must name the UPN it stands for")
		}
		lower := strings.ToLower(name)
		if other, dup := seen[lower]; dup {
			// Report once, on the later of the two in the file.
			a, b := other, name
			if ps.locate(key).line < ps.locate("sessions.aliases."+other).line {
				a, b = name, other
			}
			ps.add("sessions.aliases."+b, "repeats alias %q (names are compared ignoring case)", a)
			continue
		}
		seen[lower] = name
	}
}

// checkName checks the required, unique name of list[i]; it reports
// whether the name is usable.
func checkName(ps *problems, list string, i int, name string, seen map[string]int) bool {
	key := fmt.Sprintf("%s[%d].name", list, i)
	if name == "" {
		ps.add(key, "is required")
		return false
	}
	if !namePattern.MatchString(name) {
		ps.add(key, "must be 1 to 63 letters, digits, '_', '.' or '-', got %q", name)
		return false
	}
	if first, dup := seen[name]; dup {
		ps.add(key, "%s[%d] is already named %q", list, first, name)
		return false
	}
	seen[name] = i
	return true
}

// checkList reports empty entries of a list of names.
func checkList(ps *problems, key string, items []string, what string) {
	for i, s := range items {
		if strings.TrimSpace(s) == "" {
			ps.add(fmt.Sprintf("%s[%d]", key, i), "an empty %s is not allowed", what)
		}
	}
}

// oneOf checks an enumerated value; it reports whether the value is valid.
func oneOf(ps *problems, key, got string, allowed ...string) bool {
	for _, a := range allowed {
		if got == a {
			return true
		}
	}
	ps.add(key, "must be %s, got %q", orList(allowed), got)
	return false
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	if len(s) == 2 {
		return s[0] + " or " + s[1]
	}
	return "one of " + strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

func nonNegative(ps *problems, key string, d time.Duration) {
	if d < 0 {
		ps.add(key, "must not be negative, got %s", d)
	}
}

// checkAddress checks a host:port; backends need a host and a real port,
// listeners may leave the host empty (every interface) and use port 0.
func checkAddress(ps *problems, key, addr string, backend bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		msg := err.Error()
		if errors.As(err, &ae) {
			msg = ae.Err
		}
		ps.add(key, "must be host:port, got %q (%s)", addr, msg)
		return false
	}
	n, err := strconv.Atoi(port)
	lowest := 0
	if backend {
		lowest = 1
	}
	if err != nil || n < lowest || n > 65535 {
		ps.add(key, "port must be a number from %d to 65535, got %q", lowest, port)
		return false
	}
	if backend && host == "" {
		ps.add(key, "must name a host, got %q", addr)
		return false
	}
	return true
}

// checkHTTPS checks a base URL that must be https with a host and nothing
// after it: MSAL refuses any other authority, and tokens must not cross
// the network in the clear.
func checkHTTPS(ps *problems, key, s string) {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Host == "":
		ps.add(key, "must be an https URL such as https://host, got %q", s)
	case u.Scheme != "https":
		ps.add(key, "must be an https URL, got %q", s)
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		ps.add(key, "must be just https://host[:port], without a path, query or user, got %q", s)
	}
}

// checkCAFile checks that a CA file holds at least one PEM certificate.
func checkCAFile(ps *problems, key, path string) {
	data, err := readLimited(path, maxPEMFile)
	if err != nil {
		ps.add(key, "%s", err.Error())
		return
	}
	if !x509.NewCertPool().AppendCertsFromPEM(data) {
		ps.add(key, "file %s holds no PEM certificate", path)
	}
}

func fileReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fileError(path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory, not a file", path)
	}
	return nil
}

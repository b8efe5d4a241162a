package auth

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"

	"github.com/portcullisdb/portcullis/config"
)

// microsoftClouds are the authority hosts of Microsoft's public and
// sovereign clouds. MSAL's instance discovery (authority validation) stays
// on for them; it is turned off only for other hosts (a private
// deployment or the simulator), which discovery would reject.
var microsoftClouds = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"sts.windows.net":                  true,
	"login.microsoftonline.us":         true,
	"login-us.microsoftonline.com":     true,
	"login.usgovcloudapi.net":          true,
	"login.chinacloudapi.cn":           true,
	"login.partner.microsoftonline.cn": true,
	"login.microsoftonline.de":         true,
}

// provider is one configured Entra tenant with everything needed to sign
// people in against it.
type provider struct {
	name      string
	cfg       config.Provider
	http      *http.Client
	groups    GroupSource
	authority string // AuthorityHost/TenantID
	// instanceDiscovery is MSAL's authority validation: on for Microsoft's
	// clouds, off elsewhere.
	instanceDiscovery bool
	graphEndpoint     string
	// delegated: Graph is read with the signed-in identity's own token.
	delegated bool
	// signInScopes are requested in the device-code flow.
	signInScopes []string
	pca          public.Client

	allowedTenants map[string]bool // lower case
	audiences      map[string]bool

	tokens *tokenKeys
}

func newProvider(pc config.Provider, hc *http.Client, groups GroupSource) (*provider, error) {
	if pc.TenantID == "" || pc.ClientID == "" {
		return nil, fmt.Errorf("provider %q: tenant_id and client_id are required", pc.Name)
	}
	host := strings.TrimRight(pc.AuthorityHost, "/")
	if host == "" {
		host = config.DefaultAuthorityHost
	}
	u, err := url.Parse(host)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("provider %q: authority_host %q must be an https URL", pc.Name, pc.AuthorityHost)
	}
	graphEP := strings.TrimRight(pc.GraphEndpoint, "/")
	if graphEP == "" {
		graphEP = config.DefaultGraphEndpoint
	}
	p := &provider{
		name:              pc.Name,
		cfg:               pc,
		http:              hc,
		groups:            groups,
		authority:         host + "/" + pc.TenantID,
		instanceDiscovery: microsoftClouds[strings.ToLower(u.Hostname())],
		graphEndpoint:     graphEP,
		allowedTenants:    map[string]bool{},
		audiences:         map[string]bool{},
	}
	switch pc.GraphAuth {
	case config.GraphAuthDelegated:
		p.delegated = true
	case config.GraphAuthApplication:
	case "":
		// config.ApplyDefaults' rule, for a Config built by hand.
		p.delegated = !hasAppCredential(pc)
	default:
		return nil, fmt.Errorf("provider %q: graph_auth %q: want application or delegated", pc.Name, pc.GraphAuth)
	}
	if p.delegated {
		// /me/transitiveMemberOf with the user's own token.
		p.signInScopes = []string{graphEP + "/GroupMember.Read.All"}
	} else {
		// The least a sign-in can ask for; MSAL adds openid, profile and
		// offline_access, and refuses an empty scope list.
		p.signInScopes = []string{graphEP + "/User.Read"}
	}
	tenants := pc.AllowedTenants
	if len(tenants) == 0 {
		tenants = []string{pc.TenantID}
	}
	for _, t := range tenants {
		p.allowedTenants[strings.ToLower(t)] = true
	}
	auds := pc.Audiences
	if len(auds) == 0 {
		auds = []string{pc.ClientID, "api://" + pc.ClientID}
	}
	for _, a := range auds {
		p.audiences[a] = true
	}
	p.pca, err = public.New(pc.ClientID,
		public.WithAuthority(p.authority),
		public.WithHTTPClient(hc),
		public.WithInstanceDiscovery(p.instanceDiscovery),
	)
	if err != nil {
		return nil, fmt.Errorf("provider %q: public client: %w", pc.Name, err)
	}
	p.tokens = newTokenKeys(p)
	return p, nil
}

// tenantAllowed reports whether tid is one of the provider's allowed
// tenants.
func (p *provider) tenantAllowed(tid string) bool {
	return tid != "" && p.allowedTenants[strings.ToLower(tid)]
}

// HTTPClientFor returns the HTTP client portcullis uses to reach a
// provider's authority and Graph: when CAFile is set it trusts that CA and
// nothing else (the simulator's CA in dev and tests), otherwise the system
// roots.
func HTTPClientFor(pc config.Provider) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if pc.CAFile != "" {
		pem, err := os.ReadFile(pc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("provider %q: ca_file: %w", pc.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("provider %q: ca_file %s holds no PEM certificate", pc.Name, pc.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// hasAppCredential reports whether the provider has a resolved secret or
// certificate for app-only Graph tokens.
func hasAppCredential(pc config.Provider) bool {
	return pc.ClientSecret.IsSet() || pc.ClientCertificate != nil
}

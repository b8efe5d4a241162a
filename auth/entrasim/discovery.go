package entrasim

import (
	"net/http"
	"strings"
)

// graphAudience is the audience of Graph tokens this simulator issues when
// a client asks for Graph without naming it (OIDC scopes only, or bare
// Graph scopes such as "User.Read"): the simulator's own URL, which plays
// https://graph.microsoft.com. Graph accepts it alongside
// "https://graph.microsoft.com" and the Graph app id.
func (s *Server) graphAudience() string { return s.url }

// Well-known first-party resources a client may ask tokens for besides the
// tenant's own applications.
const (
	graphResource    = "https://graph.microsoft.com"
	graphAppID       = "00000003-0000-0000-c000-000000000000"
	ossrdbmsResource = "https://ossrdbms-aad.database.windows.net"
)

// discoveryTenant is the tenant part of endpoint URLs and the issuer in a
// discovery document: endpoints keep "organizations"/"common" when asked
// through them, and the issuer then carries Entra's {tenantid} placeholder.
func discoveryTenant(t tenantRef) (endpoints, issuer string) {
	if t.Multi {
		return t.Segment, "{tenantid}"
	}
	return t.ID, t.ID
}

// serveDiscoveryV2 answers /{tenant}/v2.0/.well-known/openid-configuration
// with the fields Entra publishes that make sense here. MSAL needs
// authorization_endpoint, token_endpoint and an issuer on the authority's
// host.
func (s *Server) serveDiscoveryV2(w http.ResponseWriter, r *http.Request, t tenantRef) {
	ep, iss := discoveryTenant(t)
	base := s.url + "/" + ep
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                s.url + "/" + iss + "/v2.0",
		"request_uri_parameter_supported":       false,
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"end_session_endpoint":                  base + "/oauth2/v2.0/logout",
		"claims_supported": []string{"sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
			"cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce",
			"preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"},
		"tenant_region_scope":   "NA",
		"cloud_instance_name":   s.host(),
		"cloud_graph_host_name": s.host(),
		"msgraph_host":          s.host(),
	})
}

// serveDiscoveryV1 answers /{tenant}/.well-known/openid-configuration, the
// v1 document whose issuer is the v1 token issuer.
func (s *Server) serveDiscoveryV1(w http.ResponseWriter, r *http.Request, t tenantRef) {
	ep, iss := discoveryTenant(t)
	base := s.url + "/" + ep
	issuer := s.Issuer(1, iss)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/discovery/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "token id_token", "token"},
		"scopes_supported":                      []string{"openid"},
		"issuer":                                issuer,
		"microsoft_multi_refresh_token":         true,
		"authorization_endpoint":                base + "/oauth2/authorize",
		"device_authorization_endpoint":         base + "/oauth2/devicecode",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"end_session_endpoint":                  base + "/oauth2/logout",
		"claims_supported": []string{"sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
			"cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce",
			"email", "given_name", "family_name", "nickname"},
		"tenant_region_scope":   "NA",
		"cloud_instance_name":   s.host(),
		"cloud_graph_host_name": s.host(),
		"msgraph_host":          s.host(),
	})
}

// serveKeys answers both JWKS paths with every published signing key.
func (s *Server) serveKeys(w http.ResponseWriter, r *http.Request, t tenantRef) {
	writeJSON(w, http.StatusOK, s.jwks())
}

// host is the simulator's host:port, which stands in for Entra's and
// Graph's host names.
func (s *Server) host() string { return strings.TrimPrefix(s.url, "https://") }

package entrasim

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// overageThreshold is the number of groups above which Entra leaves the
// groups claim out of a JWT and points at Graph instead.
const overageThreshold = 200

// TokenSpec describes an access token to issue directly, for tests that
// need a token without running a grant (or a subtly wrong one).
type TokenSpec struct {
	// Subject is a user (object id or UPN) or a service principal (object
	// id, app id or display name).
	Subject string
	// Audience is the aud claim, e.g. "api://portcullis", an app id, or
	// "https://ossrdbms-aad.database.windows.net".
	Audience string
	// ClientID is the application the token was issued to (appid / azp).
	ClientID string
	// Version is 1 or 2 (default 2); it selects the issuer form and claims.
	Version int
	// Scopes go into scp for user tokens; Roles into roles for app tokens.
	Scopes []string
	Roles  []string
	// IssuedAt defaults to now; Lifetime defaults to the server's.
	IssuedAt time.Time
	Lifetime time.Duration
	// TenantID overrides tid and the issuer's tenant (wrong-tenant tests).
	TenantID string
}

// IssueAccessToken signs an access token described by spec with the
// current key.
func (s *Server) IssueAccessToken(spec TokenSpec) (string, error) {
	claims, err := s.accessClaims(spec)
	if err != nil {
		return "", err
	}
	return s.sign(claims)
}

// Issuer returns the issuer for tokens of the given version (1 or 2) in
// tenant tid: v1 https://sts.windows.net/{tid}/ on the real cloud, here
// {URL}/{tid}/ ; v2 {URL}/{tid}/v2.0.
func (s *Server) Issuer(version int, tid string) string {
	if version == 1 {
		return s.url + "/" + tid + "/"
	}
	return s.url + "/" + tid + "/v2.0"
}

func (s *Server) accessClaims(spec TokenSpec) (jwt.MapClaims, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	version := spec.Version
	if version == 0 {
		version = 2
	}
	tid := spec.TenantID
	if tid == "" {
		tid = s.dir.Tenant.ID
	}
	iat := spec.IssuedAt
	if iat.IsZero() {
		iat = s.now()
	}
	life := spec.Lifetime
	if life == 0 {
		life = s.opts.AccessTokenLifetime
	}
	c := jwt.MapClaims{
		"aud": spec.Audience,
		"iss": s.Issuer(version, tid),
		"iat": iat.Unix(),
		"nbf": iat.Unix(),
		"exp": iat.Add(life).Unix(),
		"tid": tid,
		"ver": fmt.Sprintf("%d.0", version),
		"uti": randomID(16),
	}
	if version == 1 {
		c["appid"] = spec.ClientID
		c["appidacr"] = "1"
	} else {
		c["azp"] = spec.ClientID
		c["azpacr"] = "1"
	}
	var objectID string
	if u := s.dir.UserByName(spec.Subject); u != nil {
		if !u.IsEnabled() {
			return nil, fmt.Errorf("user %s is disabled", u.UPN)
		}
		objectID = u.ID
		c["oid"] = u.ID
		c["sub"] = pairwiseSubject(u.ID, spec.ClientID)
		c["name"] = u.DisplayName
		c["idtyp"] = "user"
		if version == 1 {
			c["upn"] = u.UPN
			c["unique_name"] = u.UPN
		} else {
			c["preferred_username"] = u.UPN
			c["upn"] = u.UPN
		}
		if len(spec.Scopes) > 0 {
			c["scp"] = strings.Join(spec.Scopes, " ")
		}
	} else if sp := s.dir.ServicePrincipalByName(spec.Subject); sp != nil {
		if !sp.IsEnabled() {
			return nil, fmt.Errorf("service principal %s is disabled", sp.DisplayName)
		}
		objectID = sp.ID
		c["oid"] = sp.ID
		c["sub"] = sp.ID
		c["idtyp"] = "app"
		if version == 1 {
			c["appid"] = sp.AppID
		} else {
			c["azp"] = sp.AppID
		}
		if len(spec.Roles) > 0 {
			c["roles"] = spec.Roles
		}
	} else {
		return nil, fmt.Errorf("no user or service principal %q", spec.Subject)
	}
	s.addGroupsClaim(c, objectID)
	return c, nil
}

// addGroupsClaim puts group object ids into the token, or, above the
// overage threshold, the _claim_names/_claim_sources pointer to Graph.
func (s *Server) addGroupsClaim(c jwt.MapClaims, objectID string) {
	groups := s.dir.TransitiveGroups(objectID)
	if len(groups) == 0 {
		return
	}
	if len(groups) > overageThreshold {
		c["_claim_names"] = map[string]string{"groups": "src1"}
		c["_claim_sources"] = map[string]any{"src1": map[string]string{
			"endpoint": s.url + "/v1.0/users/" + objectID + "/getMemberObjects",
		}}
		return
	}
	ids := make([]string, len(groups))
	for i, g := range groups {
		ids[i] = g.ID
	}
	c["groups"] = ids
}

// clientInfo is the base64url JSON MSAL uses to build the home account id.
func clientInfo(uid, utid string) string {
	b, _ := json.Marshal(map[string]string{"uid": uid, "utid": utid})
	return base64.RawURLEncoding.EncodeToString(b)
}

// pairwiseSubject mimics Entra's per-application subject: stable for a
// (user, app) pair and different across apps.
func pairwiseSubject(oid, appID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(oid + ":" + appID))[:43]
}

func randomID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

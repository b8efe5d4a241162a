package entrasim

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Grant types the token endpoint understands. MSAL sends "device_code";
// RFC 8628 names the URN; Entra takes both.
const (
	grantDeviceCode    = "device_code"
	grantDeviceCodeURN = "urn:ietf:params:oauth:grant-type:device_code"
	grantClientCreds   = "client_credentials"
	grantRefreshToken  = "refresh_token"
	assertionTypeJWT   = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// oidcScopes are the OpenID Connect scopes; they select what comes back
// (id_token, refresh_token) rather than a resource.
var oidcScopes = map[string]bool{"openid": true, "profile": true, "email": true, "offline_access": true}

// serveToken answers POST /{tenant}/oauth2/v2.0/token (and the v1
// /{tenant}/oauth2/token, which names the resource instead of scopes).
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, t tenantRef) {
	if err := r.ParseForm(); err != nil {
		s.writeErr(w, r, &oauthErr{status: http.StatusBadRequest, code: "invalid_request", aadsts: 900144, msg: "The request body could not be parsed."})
		return
	}
	v1 := strings.HasSuffix(r.URL.Path, "/oauth2/token")
	if v1 {
		v1ResourceToScope(r)
	}
	grant := r.PostForm.Get("grant_type")
	noteRequest(r, "grant="+grant)
	if id := r.PostForm.Get("client_id"); id != "" {
		noteRequest(r, "client="+id)
	}
	var (
		tr *tokenResult
		e  *oauthErr
	)
	switch grant {
	case "":
		e = missingParam("grant_type")
	case grantDeviceCode, grantDeviceCodeURN:
		tr, e = s.deviceCodeGrant(r)
	case grantClientCreds:
		tr, e = s.clientCredentialsGrant(r, t)
	case grantRefreshToken:
		tr, e = s.refreshTokenGrant(r)
	default:
		e = &oauthErr{status: http.StatusBadRequest, code: "unsupported_grant_type", aadsts: 70003,
			msg: fmt.Sprintf("The app requested an unsupported grant type '%s'.", grant)}
	}
	if e != nil {
		s.writeErr(w, r, e)
		return
	}
	writeJSON(w, http.StatusOK, tr.body(v1))
}

// v1ResourceToScope turns the v1 endpoint's resource parameter into the
// v2 form, so that one code path serves both.
func v1ResourceToScope(r *http.Request) {
	res := r.PostForm.Get("resource")
	if res == "" {
		return
	}
	scopes := strings.Fields(r.PostForm.Get("scope"))
	scopes = slices.DeleteFunc(scopes, func(s string) bool { return !oidcScopes[s] })
	r.PostForm.Set("scope", strings.Join(append([]string{strings.TrimSuffix(res, "/") + "/.default"}, scopes...), " "))
}

// tokenResult is what a successful grant returns.
type tokenResult struct {
	accessToken  string
	idToken      string
	refreshToken string
	clientInfo   string
	scope        string // granted scopes; empty for app tokens, as Entra
	resource     string // the aud, for the v1 answer
	issuedAt     time.Time
	lifetime     time.Duration
}

func (tr *tokenResult) body(v1 bool) map[string]any {
	secs := int(tr.lifetime / time.Second)
	b := map[string]any{
		"token_type":   "Bearer",
		"access_token": tr.accessToken,
	}
	if v1 {
		// The v1 endpoint writes numbers as strings.
		b["expires_in"] = strconv.Itoa(secs)
		b["ext_expires_in"] = strconv.Itoa(secs)
		b["expires_on"] = strconv.FormatInt(tr.issuedAt.Add(tr.lifetime).Unix(), 10)
		b["not_before"] = strconv.FormatInt(tr.issuedAt.Unix(), 10)
		b["resource"] = tr.resource
	} else {
		b["expires_in"] = secs
		b["ext_expires_in"] = secs
	}
	if tr.scope != "" {
		b["scope"] = tr.scope
	}
	if tr.idToken != "" {
		b["id_token"] = tr.idToken
	}
	if tr.refreshToken != "" {
		b["refresh_token"] = tr.refreshToken
	}
	if tr.clientInfo != "" {
		b["client_info"] = tr.clientInfo
	}
	return b
}

// resource is who an access token is for, worked out from the scopes.
type resource struct {
	aud     string
	version int
	scp     []string // short scope names for a user token's scp claim
}

// resolveResource decides the audience from the requested scopes as Entra
// does: every non-OIDC scope names one resource ("api://portcullis/read",
// "{app id}/.default", "https://graph.microsoft.com/User.Read"); a bare
// name such as "User.Read" is a Graph scope; OIDC scopes alone mean Graph.
// More than one resource is an error. appOnly (client credentials) needs
// exactly one "{resource}/.default".
func (s *Server) resolveResource(scopes []string, appOnly bool) (resource, *oauthErr) {
	var resID, resKey string
	var names []string
	var oidc []string
	for _, sc := range scopes {
		if oidcScopes[sc] {
			oidc = append(oidc, sc)
			continue
		}
		id, name, ok := splitScope(sc)
		if !ok {
			return resource{}, invalidScope(sc)
		}
		key := strings.ToLower(strings.TrimSuffix(id, "/"))
		if s.isGraph(id) {
			key = "graph"
		}
		if resKey != "" && resKey != key {
			return resource{}, &oauthErr{status: http.StatusBadRequest, code: "invalid_scope", aadsts: 28000,
				msg: "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope " + strings.Join(scopes, " ") + " is not valid."}
		}
		resKey = key
		if resID == "" || resID == graphBare {
			resID = id // an explicit Graph URL wins over bare names
		}
		names = append(names, name)
	}
	if appOnly && (resID == "" || slices.ContainsFunc(names, func(n string) bool { return n != ".default" })) {
		return resource{}, &oauthErr{status: http.StatusBadRequest, code: "invalid_scope", aadsts: 1002012,
			msg: fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", strings.Join(scopes, " "))}
	}
	scp := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == ".default" })

	switch {
	case resID == "" || s.isGraph(resID):
		aud := resID
		if aud == "" || aud == graphBare {
			aud = s.graphAudience()
		}
		if len(scp) == 0 {
			scp = []string{"User.Read"}
		}
		for _, o := range oidc {
			if o != "offline_access" && !slices.Contains(scp, o) {
				scp = append(scp, o)
			}
		}
		return resource{aud: aud, version: 1, scp: scp}, nil
	case strings.EqualFold(strings.TrimSuffix(resID, "/"), ossrdbmsResource):
		if len(scp) == 0 {
			scp = []string{"user_impersonation"}
		}
		return resource{aud: ossrdbmsResource, version: 1, scp: scp}, nil
	}
	s.mu.Lock()
	app := s.applicationByResource(resID)
	var appID, tenant string
	if app != nil {
		appID = app.AppID
	}
	tenant = s.dir.Tenant.Domain
	if tenant == "" {
		tenant = s.dir.Tenant.ID
	}
	s.mu.Unlock()
	if app == nil {
		return resource{}, &oauthErr{status: http.StatusBadRequest, code: "invalid_resource", aadsts: 500011,
			msg: fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", resID, tenant)}
	}
	if len(scp) == 0 {
		scp = []string{"user_impersonation"}
	}
	if s.opts.AccessTokenVersion == 1 {
		return resource{aud: resID, version: 1, scp: scp}, nil
	}
	return resource{aud: appID, version: 2, scp: scp}, nil
}

// graphBare marks scopes that named no resource ("User.Read").
const graphBare = "\x00graph"

// splitScope splits "api://portcullis/read" into its resource and name.
// Scopes with a scheme split at the last slash; "{guid}/name" at the
// first; a bare name is a Graph scope.
func splitScope(sc string) (res, name string, ok bool) {
	if i := strings.Index(sc, "://"); i >= 0 {
		j := strings.LastIndex(sc, "/")
		if j <= i+2 || j == len(sc)-1 {
			return "", "", false
		}
		return sc[:j], sc[j+1:], true
	}
	if i := strings.Index(sc, "/"); i >= 0 {
		if i == 0 || i == len(sc)-1 {
			return "", "", false
		}
		return sc[:i], sc[i+1:], true
	}
	return graphBare, sc, true
}

func invalidScope(sc string) *oauthErr {
	return &oauthErr{status: http.StatusBadRequest, code: "invalid_scope", aadsts: 70011,
		msg: fmt.Sprintf("The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", sc)}
}

// isGraph reports whether id names Microsoft Graph: its URL, its app id,
// or the simulator's own URL, which plays Graph.
func (s *Server) isGraph(id string) bool {
	id = strings.TrimSuffix(id, "/")
	return id == graphBare || strings.EqualFold(id, graphResource) || strings.EqualFold(id, graphAppID) || strings.EqualFold(id, s.url)
}

// applicationByResource finds the app registration a resource id names:
// an identifier URI or the app id. Call with s.mu held.
func (s *Server) applicationByResource(id string) *Application {
	if app := s.dir.ApplicationByID(id); app != nil {
		return app
	}
	for i := range s.dir.Applications {
		for _, uri := range s.dir.Applications[i].IdentifierURIs {
			if strings.EqualFold(strings.TrimSuffix(uri, "/"), strings.TrimSuffix(id, "/")) {
				return &s.dir.Applications[i]
			}
		}
	}
	return nil
}

// deviceCodeGrant redeems an approved device code.
func (s *Server) deviceCodeGrant(r *http.Request) (*tokenResult, *oauthErr) {
	dc, e := s.pollDeviceCode(r)
	if e != nil {
		return nil, e
	}
	return s.userTokens(r, dc.userID, dc.clientID, dc.scopes)
}

// userTokens issues what a user sign-in returns: the access token, an
// id_token for "openid", a refresh token for "offline_access", and
// client_info when the client asks for it.
func (s *Server) userTokens(r *http.Request, userID, clientID string, scopes []string) (*tokenResult, *oauthErr) {
	res, e := s.resolveResource(scopes, false)
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	u := s.dir.UserByName(userID)
	var user User
	if u != nil {
		user = *u
	}
	tid := s.dir.Tenant.ID
	s.mu.Unlock()
	switch {
	case u == nil:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_grant", aadsts: 50034,
			msg: "The user account does not exist in the directory."}
	case !user.IsEnabled():
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_grant", aadsts: 50057,
			msg: "The user account is disabled."}
	}
	now := s.now()
	noteRequest(r, "user="+user.UPN)
	at, err := s.IssueAccessToken(TokenSpec{Subject: user.ID, Audience: res.aud, ClientID: clientID,
		Version: res.version, Scopes: res.scp, IssuedAt: now})
	if err != nil {
		return nil, serverError(err)
	}
	tr := &tokenResult{
		accessToken: at,
		scope:       strings.Join(scopes, " "),
		resource:    res.aud,
		issuedAt:    now,
		lifetime:    s.opts.AccessTokenLifetime,
	}
	if slices.Contains(scopes, "openid") {
		if tr.idToken, err = s.idToken(user, clientID, tid, slices.Contains(scopes, "email"), now); err != nil {
			return nil, serverError(err)
		}
	}
	if slices.Contains(scopes, "offline_access") {
		tr.refreshToken = s.oauth.issueRefresh(&refreshGrant{userID: user.ID, clientID: clientID, scopes: scopes, issuedAt: now})
	}
	if r.PostForm.Get("client_info") == "1" {
		tr.clientInfo = clientInfo(user.ID, tid)
	}
	return tr, nil
}

// idToken is the OIDC id_token: who signed in, for the client (aud).
func (s *Server) idToken(u User, clientID, tid string, email bool, now time.Time) (string, error) {
	c := jwt.MapClaims{
		"aud":                clientID,
		"iss":                s.Issuer(2, tid),
		"iat":                now.Unix(),
		"nbf":                now.Unix(),
		"exp":                now.Add(time.Hour).Unix(),
		"tid":                tid,
		"oid":                u.ID,
		"sub":                pairwiseSubject(u.ID, clientID),
		"preferred_username": u.UPN,
		"name":               u.DisplayName,
		"ver":                "2.0",
		"uti":                randomID(16),
	}
	if email && u.Mail != "" {
		c["email"] = u.Mail
	}
	return s.sign(c)
}

func serverError(err error) *oauthErr {
	return &oauthErr{status: http.StatusInternalServerError, code: "server_error", aadsts: 90100,
		msg: "An error occurred in the simulator: " + err.Error()}
}

// refreshGrant is what a refresh token stands for.
type refreshGrant struct {
	userID   string
	clientID string
	scopes   []string
	issuedAt time.Time
	// spent is set when the token was redeemed (refresh tokens rotate) or
	// revoked; the entry stays so that reuse is told apart from garbage.
	spent bool
}

func refreshKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// issueRefresh mints an opaque refresh token and remembers only its hash.
func (st *oauthState) issueRefresh(g *refreshGrant) string {
	token := "0.A" + randomID(96)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.refresh[refreshKey(token)] = g
	return token
}

// redeemRefresh spends a refresh token presented by clientID.
func (st *oauthState) redeemRefresh(token, clientID string) (*refreshGrant, *oauthErr) {
	st.mu.Lock()
	defer st.mu.Unlock()
	g, ok := st.refresh[refreshKey(token)]
	switch {
	case !ok:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_grant", aadsts: 9002313,
			msg: "Invalid request. Request is malformed or invalid. The refresh token is not valid."}
	case g.spent:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_grant", aadsts: 50173,
			msg: "The provided grant has expired due to it being revoked or already used, a fresh auth token is needed."}
	case !strings.EqualFold(g.clientID, clientID):
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_grant", aadsts: 70000,
			msg: "Provided grant is invalid or malformed: the refresh token was issued to a different client."}
	}
	g.spent = true
	return g, nil
}

// refreshTokenGrant redeems a refresh token for new tokens, possibly for
// another resource (Entra's refresh tokens are multi-resource), and
// rotates it.
func (s *Server) refreshTokenGrant(r *http.Request) (*tokenResult, *oauthErr) {
	token, clientID := r.PostForm.Get("refresh_token"), r.PostForm.Get("client_id")
	if token == "" {
		return nil, missingParam("refresh_token")
	}
	if clientID == "" {
		return nil, missingParam("client_id")
	}
	g, e := s.oauth.redeemRefresh(token, clientID)
	if e != nil {
		return nil, e
	}
	scopes := strings.Fields(r.PostForm.Get("scope"))
	if len(scopes) == 0 {
		scopes = g.scopes
	}
	return s.userTokens(r, g.userID, g.clientID, scopes)
}

// RevokeRefreshTokens invalidates every refresh token issued to the user
// (UPN or object id), as a sign-out everywhere or a password reset does.
func (s *Server) RevokeRefreshTokens(upn string) {
	s.mu.Lock()
	u := s.dir.UserByName(upn)
	var id string
	if u != nil {
		id = u.ID
	}
	s.mu.Unlock()
	if id == "" {
		return
	}
	s.oauth.mu.Lock()
	defer s.oauth.mu.Unlock()
	for _, g := range s.oauth.refresh {
		if strings.EqualFold(g.userID, id) {
			g.spent = true
		}
	}
}

// clientCredentialsGrant issues an app-only token to a service principal
// that proved itself with a secret or a signed client assertion.
func (s *Server) clientCredentialsGrant(r *http.Request, t tenantRef) (*tokenResult, *oauthErr) {
	sp, e := s.authenticateClient(r, t)
	if e != nil {
		return nil, e
	}
	scope := r.PostForm.Get("scope")
	if strings.TrimSpace(scope) == "" {
		return nil, missingParam("scope")
	}
	res, e := s.resolveResource(strings.Fields(scope), true)
	if e != nil {
		return nil, e
	}
	now := s.now()
	at, err := s.IssueAccessToken(TokenSpec{Subject: sp.ID, Audience: res.aud, ClientID: sp.AppID,
		Version: res.version, IssuedAt: now})
	if err != nil {
		return nil, serverError(err)
	}
	return &tokenResult{accessToken: at, resource: res.aud, issuedAt: now, lifetime: s.opts.AccessTokenLifetime}, nil
}

// authenticateClient identifies a confidential client by client_id and
// checks its secret (form or HTTP Basic) or client assertion.
func (s *Server) authenticateClient(r *http.Request, t tenantRef) (ServicePrincipal, *oauthErr) {
	clientID := r.PostForm.Get("client_id")
	secret := r.PostForm.Get("client_secret")
	if id, pw, ok := r.BasicAuth(); ok {
		clientID, secret = id, pw
	}
	if clientID == "" {
		return ServicePrincipal{}, missingParam("client_id")
	}
	s.mu.Lock()
	var sp ServicePrincipal
	found := false
	for _, p := range s.dir.ServicePrincipals {
		if strings.EqualFold(p.AppID, clientID) {
			sp, found = p, true
			sp.Secrets = slices.Clone(p.Secrets)
			sp.Certificates = slices.Clone(p.Certificates)
			break
		}
	}
	tid := s.dir.Tenant.ID
	s.mu.Unlock()
	if !found {
		return sp, unknownApp(clientID, tid)
	}
	if !sp.IsEnabled() {
		return sp, &oauthErr{status: http.StatusBadRequest, code: "unauthorized_client", aadsts: 7000112,
			msg: fmt.Sprintf("Application '%s'(%s) is disabled.", sp.AppID, sp.DisplayName)}
	}
	assertion, assertionType := r.PostForm.Get("client_assertion"), r.PostForm.Get("client_assertion_type")
	switch {
	case assertion != "" || assertionType != "":
		if assertionType != assertionTypeJWT {
			return sp, &oauthErr{status: http.StatusBadRequest, code: "invalid_request", aadsts: 50027,
				msg: fmt.Sprintf("The client_assertion_type '%s' is not supported.", assertionType)}
		}
		if e := s.verifyClientAssertion(assertion, sp, t); e != nil {
			return sp, e
		}
		noteRequest(r, "auth=assertion")
		return sp, nil
	case secret != "":
		for _, want := range sp.Secrets {
			if subtle.ConstantTimeCompare([]byte(want), []byte(secret)) == 1 {
				noteRequest(r, "auth=secret")
				return sp, nil
			}
		}
		return sp, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", aadsts: 7000215,
			msg: fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", sp.AppID)}
	}
	return sp, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", aadsts: 7000218,
		msg: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
}

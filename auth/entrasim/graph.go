package entrasim

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Audiences Graph accepts besides the simulator's own URL: the resource URI
// and the well-known application id of Microsoft Graph.
const (
	msGraphResourceURI = "https://graph.microsoft.com"
	msGraphAppID       = "00000003-0000-0000-c000-000000000000"
)

// graphPrefix is the root of every Graph route.
const graphPrefix = "/v1.0/"

// routeGraph registers the Microsoft Graph v1.0 endpoints. One pattern
// takes every path under /v1.0/ (it is more specific than the login
// routes' "/{tenant}/{rest...}"), and the handler parses the path itself,
// as Graph's segments are case-insensitive and include forms such as
// servicePrincipals(appId='…') that mux patterns cannot express.
func (s *Server) routeGraph(mux *http.ServeMux) {
	mux.HandleFunc(graphPrefix+"{rest...}", s.serveGraph)
}

// graphCaller is who a Graph request acts for.
type graphCaller struct {
	app      bool   // app-only token (client credentials)
	objectID string // oid: the user (delegated) or the service principal (app)
}

// graphRequest is one parsed Graph call.
type graphRequest struct {
	w      http.ResponseWriter
	r      *http.Request
	caller graphCaller
	q      *graphQuery
	segs   []string // path segments after /v1.0/
}

func (s *Server) serveGraph(w http.ResponseWriter, r *http.Request) {
	reqID := newRequestID()
	w.Header().Set("request-id", reqID)
	if c := r.Header.Get("client-request-id"); c != "" {
		w.Header().Set("client-request-id", c)
	} else {
		w.Header().Set("client-request-id", reqID)
	}
	caller, err := s.graphAuthenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="", authorization_uri="%s/common/oauth2/authorize", client_id="%s"`, s.url, msGraphAppID))
		s.logf("graph %s %s: 401 %v", r.Method, r.URL.Path, err)
		writeGraphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", err.Error())
		return
	}
	q, gerr := parseGraphQuery(r)
	if gerr != nil {
		gerr.write(w)
		return
	}
	req := &graphRequest{w: w, r: r, caller: caller, q: q, segs: splitGraphPath(r.URL.Path)}
	if gerr := s.routeGraphRequest(req); gerr != nil {
		s.logf("graph %s %s: %d %s", r.Method, r.URL.Path, gerr.status, gerr.code)
		gerr.write(w)
	}
}

// splitGraphPath returns the segments of path after /v1.0/.
func splitGraphPath(path string) []string {
	rest := strings.Trim(strings.TrimPrefix(path, graphPrefix), "/")
	if rest == "" {
		return nil
	}
	return strings.Split(rest, "/")
}

// graphError is an error answer in Graph's shape.
type graphError struct {
	status  int
	code    string
	message string
}

func (e *graphError) write(w http.ResponseWriter) { writeGraphError(w, e.status, e.code, e.message) }

func badRequest(code, format string, args ...any) *graphError {
	return &graphError{status: http.StatusBadRequest, code: code, message: fmt.Sprintf(format, args...)}
}

func notFound(id string) *graphError {
	return &graphError{
		status:  http.StatusNotFound,
		code:    "Request_ResourceNotFound",
		message: fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", id),
	}
}

func segmentNotFound(seg string) *graphError {
	return badRequest("BadRequest", "Resource not found for the segment '%s'.", seg)
}

var errMethodNotAllowed = &graphError{
	status:  http.StatusMethodNotAllowed,
	code:    "Request_BadRequest",
	message: "Specified HTTP method is not allowed for the request target.",
}

// graphAuthenticate checks the bearer token as Graph does: a signature by
// one of the published keys, an unexpired lifetime, Graph's audience and
// the simulated tenant.
func (s *Server) graphAuthenticate(r *http.Request) (graphCaller, error) {
	h := r.Header.Get("Authorization")
	scheme, raw, _ := strings.Cut(h, " ")
	raw = strings.TrimSpace(raw)
	if h == "" || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return graphCaller{}, errors.New("Access token is empty.")
	}
	if strings.Count(raw, ".") != 2 {
		return graphCaller{}, errors.New("Invalid JWT token. The token is not in JWS Compact Serialization Format.")
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, s.graphKey,
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithTimeFunc(s.now),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Minute), // Entra's resource servers allow clock skew
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return graphCaller{}, errors.New("Lifetime validation failed, the token is expired.")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return graphCaller{}, errors.New("Lifetime validation failed, the token is not yet valid.")
	case err != nil:
		return graphCaller{}, errors.New("Access token validation failure.")
	}
	aud, _ := claims["aud"].(string)
	switch strings.TrimSuffix(aud, "/") {
	case s.url, msGraphResourceURI, msGraphAppID:
	default:
		return graphCaller{}, errors.New("Access token validation failure. Invalid audience.")
	}
	s.mu.Lock()
	tenant := s.dir.Tenant.ID
	s.mu.Unlock()
	tid, _ := claims["tid"].(string)
	iss, _ := claims["iss"].(string)
	if !strings.EqualFold(tid, tenant) || (iss != s.Issuer(1, tenant) && iss != s.Issuer(2, tenant)) {
		return graphCaller{}, errors.New("Access token validation failure. Invalid issuer or tenant.")
	}
	oid, _ := claims["oid"].(string)
	if oid == "" {
		return graphCaller{}, errors.New("Access token validation failure. The token has no oid claim.")
	}
	// A delegated token carries scp (and idtyp user); an app-only one
	// carries roles and idtyp app.
	scp, _ := claims["scp"].(string)
	idtyp, _ := claims["idtyp"].(string)
	app := idtyp == "app" || (idtyp == "" && scp == "")
	return graphCaller{app: app, objectID: oid}, nil
}

// graphKey finds the public key a token names by kid among the keys the
// simulator publishes.
func (s *Server) graphKey(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	for _, k := range s.keys.keys {
		if k.kid == kid {
			return &k.key.PublicKey, nil
		}
	}
	return nil, fmt.Errorf("unknown signing key %q", kid)
}

// routeGraphRequest dispatches on the path segments.
func (s *Server) routeGraphRequest(req *graphRequest) *graphError {
	segs := req.segs
	if len(segs) == 0 {
		return segmentNotFound("v1.0")
	}
	root := segs[0]
	switch {
	case strings.EqualFold(root, "me"):
		if !req.caller.app {
			return s.graphObject(req, kindUser, req.caller.objectID, segs[1:])
		}
		return badRequest("BadRequest", "/me request is only valid with delegated authentication flow.")
	case strings.EqualFold(root, "users"):
		return s.graphEntitySet(req, kindUser, segs[1:])
	case strings.EqualFold(root, "groups"):
		return s.graphEntitySet(req, kindGroup, segs[1:])
	case strings.EqualFold(root, "servicePrincipals"):
		return s.graphEntitySet(req, kindServicePrincipal, segs[1:])
	}
	// servicePrincipals(appId='...'): the alternate key form.
	if key, ok := strings.CutPrefix(root, "servicePrincipals(appId="); ok && strings.HasSuffix(key, ")") {
		appID, err := unquoteODataString(strings.TrimSuffix(key, ")"))
		if err != nil {
			return badRequest("BadRequest", "Bad request. Please fix the request before retrying.")
		}
		s.mu.Lock()
		var id string
		for _, sp := range s.dir.ServicePrincipals {
			if strings.EqualFold(sp.AppID, appID) {
				id = sp.ID
			}
		}
		s.mu.Unlock()
		if id == "" {
			return notFound(appID)
		}
		return s.graphObject(req, kindServicePrincipal, id, segs[1:])
	}
	return segmentNotFound(root)
}

// graphEntitySet serves /users, /groups, /servicePrincipals and what lies
// below them.
func (s *Server) graphEntitySet(req *graphRequest, kind entityKind, rest []string) *graphError {
	if len(rest) == 0 {
		if req.r.Method != http.MethodGet {
			return errMethodNotAllowed
		}
		s.mu.Lock()
		all := allEntities(s.dir, kind, s.dir.Tenant.ID)
		s.mu.Unlock()
		return s.writeCollection(req, kind, all, collectionList)
	}
	if rest[0] == "$count" && len(rest) == 1 {
		if req.r.Method != http.MethodGet {
			return errMethodNotAllowed
		}
		return s.writeCount(req, kind)
	}
	return s.graphObject(req, kind, rest[0], rest[1:])
}

// graphObject serves one object and its navigation properties.
func (s *Server) graphObject(req *graphRequest, kind entityKind, key string, rest []string) *graphError {
	s.mu.Lock()
	obj, ok := findEntity(s.dir, kind, key)
	var groups []entity
	if ok && len(rest) > 0 {
		for _, g := range memberships(s.dir, obj.id) {
			groups = append(groups, groupEntity(g))
		}
	}
	s.mu.Unlock()
	if !ok {
		return notFound(key)
	}
	if len(rest) == 0 {
		if req.r.Method != http.MethodGet {
			return errMethodNotAllowed
		}
		return s.writeEntity(req, kind, obj)
	}
	nav := rest[0]
	switch {
	case strings.EqualFold(nav, "transitiveMemberOf"):
	case strings.EqualFold(nav, "getMemberObjects"), strings.EqualFold(nav, "getMemberGroups"):
		if len(rest) != 1 {
			return segmentNotFound(rest[1])
		}
		return s.writeMemberObjects(req, groups)
	default:
		return segmentNotFound(nav)
	}
	if req.r.Method != http.MethodGet {
		return errMethodNotAllowed
	}
	rest = rest[1:]
	cast := false
	if len(rest) > 0 && strings.EqualFold(rest[0], "microsoft.graph.group") {
		cast = true
		rest = rest[1:]
	}
	if len(rest) == 1 && rest[0] == "$count" {
		if !req.q.eventual {
			return badRequest("Request_BadRequest", "$count is not currently supported.")
		}
		return s.writeCountOf(req, kindGroup, groups)
	}
	if len(rest) > 0 {
		return segmentNotFound(rest[0])
	}
	if gerr := req.q.requireAdvancedForLink(cast); gerr != nil {
		return gerr
	}
	mode := collectionLink
	if cast {
		mode = collectionCast
	}
	return s.writeCollection(req, kindGroup, groups, mode)
}

// writeMemberObjects answers POST getMemberObjects / getMemberGroups: the
// ids of every group the object belongs to (the endpoint a token's groups
// overage claim points at).
func (s *Server) writeMemberObjects(req *graphRequest, groups []entity) *graphError {
	if req.r.Method != http.MethodPost {
		return errMethodNotAllowed
	}
	var body struct {
		SecurityEnabledOnly *bool `json:"securityEnabledOnly"`
	}
	if err := json.NewDecoder(io.LimitReader(req.r.Body, 1<<16)).Decode(&body); err != nil || body.SecurityEnabledOnly == nil {
		return badRequest("Request_BadRequest", "The request body must be JSON with a boolean securityEnabledOnly.")
	}
	ids := make([]string, 0, len(groups))
	for _, g := range groups {
		ids = append(ids, g.id)
	}
	writeGraphJSON(req.w, jsonObject{
		{"@odata.context", s.url + "/v1.0/$metadata#Collection(Edm.String)"},
		{"value", ids},
	})
	return nil
}

// writeEntity answers a single-object GET.
func (s *Server) writeEntity(req *graphRequest, kind entityKind, e entity) *graphError {
	if req.q.filter != nil || req.q.search != nil || req.q.top != 0 || req.q.skip != 0 {
		return badRequest("Request_BadRequest", "Query option is not allowed on a single entity.")
	}
	props, gerr := req.q.projection(kind)
	if gerr != nil {
		return gerr
	}
	obj := jsonObject{{"@odata.context", s.contextURL(kind.setName(), req.q.selected) + "/$entity"}}
	obj = append(obj, e.render(props, false)...)
	writeGraphJSON(req.w, obj)
	return nil
}

// collectionMode says how a collection was reached, which decides the
// context URL and whether each object carries its type.
type collectionMode int

const (
	collectionList collectionMode = iota // /users, /groups, /servicePrincipals
	collectionLink                       // /…/transitiveMemberOf
	collectionCast                       // /…/transitiveMemberOf/microsoft.graph.group
)

// writeCollection filters, orders, counts and pages items as the query
// asks.
func (s *Server) writeCollection(req *graphRequest, kind entityKind, items []entity, mode collectionMode) *graphError {
	q := req.q
	if mode == collectionList {
		if gerr := q.requireAdvancedForList(kind); gerr != nil {
			return gerr
		}
	}
	props, gerr := q.projection(kind)
	if gerr != nil {
		return gerr
	}
	matched, gerr := q.apply(kind, items)
	if gerr != nil {
		return gerr
	}
	size := q.pageSize()
	if q.skip > len(matched) {
		return badRequest("Request_BadRequest", "The skip token is invalid or has expired.")
	}
	end := min(q.skip+size, len(matched))
	page := matched[q.skip:end]

	set := kind.setName()
	if mode == collectionLink {
		set = "directoryObjects"
	}
	out := jsonObject{{"@odata.context", s.contextURL(set, q.selected)}}
	if q.count {
		out = append(out, jsonField{"@odata.count", len(matched)})
	}
	if end < len(matched) {
		out = append(out, jsonField{"@odata.nextLink", s.nextLink(req.r, end)})
	}
	values := make([]jsonObject, 0, len(page))
	for _, e := range page {
		values = append(values, e.render(props, mode != collectionList))
	}
	out = append(out, jsonField{"value", values})
	writeGraphJSON(req.w, out)
	return nil
}

// writeCount answers /users/$count and the like: a bare number, only with
// ConsistencyLevel: eventual.
func (s *Server) writeCount(req *graphRequest, kind entityKind) *graphError {
	if !req.q.eventual {
		return badRequest("Request_BadRequest", "$count is not currently supported.")
	}
	s.mu.Lock()
	all := allEntities(s.dir, kind, s.dir.Tenant.ID)
	s.mu.Unlock()
	return s.writeCountOf(req, kind, all)
}

func (s *Server) writeCountOf(req *graphRequest, kind entityKind, items []entity) *graphError {
	matched, gerr := req.q.apply(kind, items)
	if gerr != nil {
		return gerr
	}
	req.w.Header().Set("Content-Type", "text/plain")
	req.w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(req.w, strconv.Itoa(len(matched)))
	return nil
}

// contextURL is the @odata.context of a response from set, with the
// selected properties when $select was given.
func (s *Server) contextURL(set string, selected []string) string {
	u := s.url + "/v1.0/$metadata#" + set
	if len(selected) > 0 {
		u += "(" + strings.Join(selected, ",") + ")"
	}
	return u
}

// nextLink is the request's own URL, its query kept as the client wrote
// it, with the skip token moved to offset.
func (s *Server) nextLink(r *http.Request, offset int) string {
	var parts []string
	for _, p := range strings.Split(r.URL.RawQuery, "&") {
		name, _, _ := strings.Cut(p, "=")
		if n, err := url.QueryUnescape(name); p == "" || err == nil && (n == "$skiptoken" || n == "skiptoken") {
			continue
		}
		parts = append(parts, p)
	}
	parts = append(parts, "$skiptoken="+encodeSkipToken(offset))
	return s.url + r.URL.EscapedPath() + "?" + strings.Join(parts, "&")
}

// writeGraphError writes Graph's error JSON. The innerError carries the
// request ids the handler put in the response headers (a fresh one when
// the answer comes from fault injection).
func writeGraphError(w http.ResponseWriter, status int, code, message string) {
	reqID := w.Header().Get("request-id")
	if reqID == "" {
		reqID = newRequestID()
		w.Header().Set("request-id", reqID)
	}
	clientReqID := w.Header().Get("client-request-id")
	if clientReqID == "" {
		clientReqID = reqID
		w.Header().Set("client-request-id", clientReqID)
	}
	body, _ := json.Marshal(jsonObject{{"error", jsonObject{
		{"code", code},
		{"message", message},
		{"innerError", jsonObject{
			{"date", time.Now().UTC().Format("2006-01-02T15:04:05")},
			{"request-id", reqID},
			{"client-request-id", clientReqID},
		}},
	}}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func graphErrorCode(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusServiceUnavailable:
		return "serviceNotAvailable"
	case http.StatusNotFound:
		return "Request_ResourceNotFound"
	case http.StatusUnauthorized:
		return "InvalidAuthenticationToken"
	case http.StatusForbidden:
		return "Authorization_RequestDenied"
	case http.StatusBadRequest:
		return "BadRequest"
	}
	return "generalException"
}

// writeGraphJSON writes a successful JSON answer with Graph's content type.
func writeGraphJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeGraphError(w, http.StatusInternalServerError, "generalException", "could not encode the response")
		return
	}
	w.Header().Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// jsonObject is a JSON object that keeps its fields in order, as Graph's
// answers do (@odata annotations first).
type jsonObject []jsonField

type jsonField struct {
	Name  string
	Value any
}

// MarshalJSON writes the fields in order.
func (o jsonObject) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.Name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.Value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// newRequestID returns a random UUID (version 4), the form of Graph's
// request-id.
func newRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

package entrasim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// oauthState holds pending device codes and issued refresh tokens. It has
// its own lock; code that holds it never takes the directory lock (s.mu),
// so the two cannot deadlock.
type oauthState struct {
	mu sync.Mutex
	// codes by device_code and by normalised user code.
	byDevice map[string]*deviceCode
	byUser   map[string]*deviceCode
	// newCode is closed and replaced whenever a device code is issued, so
	// that WaitForDeviceCode can sleep until there is something to return.
	newCode chan struct{}
	// slowDown is how many device-code polls still get slow_down.
	slowDown int
	// refresh maps the SHA-256 of a refresh token to what it grants; the
	// token itself is not kept.
	refresh map[string]*refreshGrant
}

func newOAuthState() *oauthState {
	return &oauthState{
		byDevice: map[string]*deviceCode{},
		byUser:   map[string]*deviceCode{},
		newCode:  make(chan struct{}),
		refresh:  map[string]*refreshGrant{},
	}
}

// routeOAuth registers the login endpoints MSAL calls, the device-login
// page and the simulator's own control endpoints.
//
// Every tenant-scoped route goes through one catch-all pattern rather than
// one pattern each: a pattern such as "/{tenant}/discovery/keys" would
// conflict with a Graph pattern such as "/v1.0/" in net/http's mux, while
// "/{tenant}/{rest...}" is less specific than any Graph route.
func (s *Server) routeOAuth(mux *http.ServeMux) {
	mux.HandleFunc("/{tenant}/{rest...}", s.serveTenant)
	mux.HandleFunc("/devicelogin", s.serveDeviceLogin)
	mux.HandleFunc("POST /_sim/devicecode/approve", s.serveSimApprove)
	mux.HandleFunc("POST /_sim/devicecode/decline", s.serveSimDecline)
	mux.HandleFunc("GET /_sim/devicecode/pending", s.serveSimPending)
}

// serveTenant dispatches /{tenant}/... requests.
func (s *Server) serveTenant(w http.ResponseWriter, r *http.Request) {
	seg, rest := r.PathValue("tenant"), r.PathValue("rest")
	if seg == "v1.0" || seg == "beta" {
		// A Graph path that no Graph route took.
		writeGraphError(w, http.StatusBadRequest, "BadRequest", "Unsupported request: "+r.Method+" "+r.URL.Path)
		return
	}
	rt, ok := tenantRoutes[rest]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method != rt.method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", rt.method)
		s.writeErr(w, r, &oauthErr{status: http.StatusMethodNotAllowed, code: "invalid_request", aadsts: 900561,
			msg: "The endpoint only accepts " + rt.method + " requests. Received a " + r.Method + " request."})
		return
	}
	t, ok := s.resolveTenant(seg)
	if !ok {
		code := "invalid_request"
		if strings.HasSuffix(rest, "openid-configuration") {
			code = "invalid_tenant"
		}
		s.writeErr(w, r, &oauthErr{status: http.StatusBadRequest, code: code, aadsts: 90002,
			msg: fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", seg)})
		return
	}
	rt.handle(s, w, r, t)
}

// tenantRoute is one endpoint under /{tenant}/.
type tenantRoute struct {
	method string
	handle func(*Server, http.ResponseWriter, *http.Request, tenantRef)
}

var tenantRoutes = map[string]tenantRoute{
	"v2.0/.well-known/openid-configuration": {http.MethodGet, (*Server).serveDiscoveryV2},
	".well-known/openid-configuration":      {http.MethodGet, (*Server).serveDiscoveryV1},
	"discovery/v2.0/keys":                   {http.MethodGet, (*Server).serveKeys},
	"discovery/keys":                        {http.MethodGet, (*Server).serveKeys},
	"oauth2/v2.0/devicecode":                {http.MethodPost, (*Server).serveDeviceCode},
	"oauth2/devicecode":                     {http.MethodPost, (*Server).serveDeviceCode},
	"oauth2/v2.0/token":                     {http.MethodPost, (*Server).serveToken},
	"oauth2/token":                          {http.MethodPost, (*Server).serveToken},
}

// tenantRef is the tenant a request's path named, resolved.
type tenantRef struct {
	// ID is the directory's tenant id.
	ID string
	// Segment is the path segment as the client sent it (lower case):
	// the tenant id, the domain, "organizations" or "common".
	Segment string
	// Multi is true for "organizations" and "common", whose discovery
	// documents carry Entra's {tenantid} placeholder issuer.
	Multi bool
}

// resolveTenant maps a path segment to the simulated tenant. The one
// tenant answers to its id, its domain, and the multi-tenant aliases.
func (s *Server) resolveTenant(seg string) (tenantRef, bool) {
	s.mu.Lock()
	tid, domain := s.dir.Tenant.ID, s.dir.Tenant.Domain
	s.mu.Unlock()
	seg = strings.ToLower(seg)
	switch {
	case seg == "organizations" || seg == "common":
		return tenantRef{ID: tid, Segment: seg, Multi: true}, true
	case strings.EqualFold(seg, tid), domain != "" && strings.EqualFold(seg, domain):
		return tenantRef{ID: tid, Segment: seg}, true
	}
	return tenantRef{}, false
}

// oauthErr is an error answer from the login endpoints.
type oauthErr struct {
	status int
	code   string // the OAuth error, e.g. invalid_grant
	aadsts int    // Entra's AADSTS number; 0 for none
	msg    string
}

// writeErr writes e in Entra's error JSON, echoing the client's
// client-request-id as the correlation id as Entra does.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, e *oauthErr) {
	noteRequest(r, "error="+e.code)
	if e.aadsts != 0 {
		noteRequest(r, "aadsts="+strconv.Itoa(e.aadsts))
	}
	desc := e.msg
	if e.aadsts != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.aadsts, e.msg)
	}
	writeEntraError(w, e.status, e.code, desc, r.Header.Get("client-request-id"), s.url)
}

// writeOAuthError writes Entra's OAuth error JSON. An "AADSTSnnnn:" prefix
// in description becomes error_codes.
func writeOAuthError(w http.ResponseWriter, status int, code, description string) {
	writeEntraError(w, status, code, description, "", "")
}

var aadstsPrefix = regexp.MustCompile(`^AADSTS(\d+):`)

func writeEntraError(w http.ResponseWriter, status int, code, description, correlationID, baseURL string) {
	if correlationID == "" {
		correlationID = newUUID()
	}
	traceID := newUUID()
	now := time.Now().UTC()
	codes := []int{}
	if m := aadstsPrefix.FindStringSubmatch(description); m != nil {
		n, _ := strconv.Atoi(m[1])
		codes = append(codes, n)
	}
	body := map[string]any{
		"error": code,
		"error_description": fmt.Sprintf("%s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s",
			description, traceID, correlationID, now.Format("2006-01-02 15:04:05Z")),
		"error_codes":    codes,
		"timestamp":      now.Format("2006-01-02 15:04:05Z"),
		"trace_id":       traceID,
		"correlation_id": correlationID,
	}
	if len(codes) > 0 && baseURL != "" {
		body["error_uri"] = fmt.Sprintf("%s/error?code=%d", baseURL, codes[0])
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// newUUID returns a random (version 4) UUID string.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// requestNote collects short, secret-free facts about a request (grant
// type, error code) for the one log line the server writes per request.
type requestNote struct {
	mu    sync.Mutex
	parts []string
}

type noteKey struct{}

func noteRequest(r *http.Request, part string) {
	if n, ok := r.Context().Value(noteKey{}).(*requestNote); ok {
		n.mu.Lock()
		n.parts = append(n.parts, part)
		n.mu.Unlock()
	}
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack lets the fault injector drop the connection through the recorder.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(r.ResponseWriter).Hijack()
}

// logRequests writes one line per request through Options.Logf: method,
// path, status, duration and the notes handlers left. Paths and notes hold
// no secrets; query strings and bodies are never logged.
func (s *Server) logRequests(next http.Handler) http.Handler {
	if s.opts.Logf == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		note := &requestNote{}
		rec := &statusRecorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), noteKey{}, note))
		defer func() {
			note.mu.Lock()
			extra := strings.Join(note.parts, " ")
			note.mu.Unlock()
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			s.logf("entrasim: %s %s %d %s %s", r.Method, r.URL.Path, status, time.Since(start).Round(time.Millisecond), extra)
		}()
		next.ServeHTTP(rec, r)
	})
}

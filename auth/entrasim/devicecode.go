package entrasim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"
)

// Errors from Approve and Decline, so that callers (the device-login page,
// the JSON control endpoint, `portcullis dev approve`) can say what is wrong.
var (
	// ErrUnknownUserCode: no device code was issued with this user code
	// (or it was already redeemed and forgotten).
	ErrUnknownUserCode = errors.New("unknown user code")
	// ErrUserCodeExpired: the code's lifetime has passed.
	ErrUserCodeExpired = errors.New("user code has expired")
	// ErrUserCodeUsed: the code was already approved or declined.
	ErrUserCodeUsed = errors.New("user code was already approved or declined")
	// ErrUnknownUser: no user with this UPN or object id.
	ErrUnknownUser = errors.New("unknown user")
	// ErrUserDisabled: the account is disabled and cannot sign in.
	ErrUserDisabled = errors.New("user account is disabled")
)

// deviceCodeStatus is where a device code is in its life.
type deviceCodeStatus int

const (
	codePending deviceCodeStatus = iota
	codeApproved
	codeDeclined
)

// deviceCode is one device-authorization request.
type deviceCode struct {
	deviceCode string
	userCode   string
	clientID   string
	tenantID   string
	scopes     []string
	issuedAt   time.Time
	expiresAt  time.Time
	status     deviceCodeStatus
	userID     string // object id of the approving user
	lastPoll   time.Time
	announced  bool // returned by WaitForDeviceCode already
}

// PendingDeviceCode is a device code waiting for someone to approve or
// decline it. The device_code itself, which redeems tokens, is never
// exposed.
type PendingDeviceCode struct {
	UserCode  string
	ClientID  string
	Scopes    []string
	ExpiresAt time.Time
}

func (c *deviceCode) pending() PendingDeviceCode {
	return PendingDeviceCode{
		UserCode:  c.userCode,
		ClientID:  c.clientID,
		Scopes:    append([]string(nil), c.scopes...),
		ExpiresAt: c.expiresAt,
	}
}

// userCodeAlphabet leaves out 0/O and 1/I so codes read back unambiguously.
const userCodeAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

// newUserCode returns a 9-character code like Entra's.
func newUserCode() string {
	b := make([]byte, 9)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(b)
}

// normalizeUserCode lets people type a code in lower case, with spaces or
// dashes.
func normalizeUserCode(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == ' ' || r == '-' || r == '\t':
			return -1
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		}
		return r
	}, code)
}

func ceilSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// serveDeviceCode answers POST /{tenant}/oauth2/v2.0/devicecode: the first
// leg of the device authorization grant (RFC 8628).
func (s *Server) serveDeviceCode(w http.ResponseWriter, r *http.Request, t tenantRef) {
	if err := r.ParseForm(); err != nil {
		s.writeErr(w, r, &oauthErr{status: http.StatusBadRequest, code: "invalid_request", aadsts: 900144, msg: "The request body could not be parsed."})
		return
	}
	v1 := strings.HasSuffix(r.URL.Path, "/oauth2/devicecode")
	if v1 {
		v1ResourceToScope(r)
	}
	clientID := r.PostForm.Get("client_id")
	noteRequest(r, "client="+clientID)
	if clientID == "" {
		s.writeErr(w, r, missingParam("client_id"))
		return
	}
	if e := s.checkPublicClient(clientID); e != nil {
		s.writeErr(w, r, e)
		return
	}
	scope := r.PostForm.Get("scope")
	if strings.TrimSpace(scope) == "" {
		s.writeErr(w, r, missingParam("scope"))
		return
	}
	scopes := strings.Fields(scope)
	if _, e := s.resolveResource(scopes, false); e != nil {
		s.writeErr(w, r, e)
		return
	}

	now := s.now()
	life := s.opts.DeviceCodeLifetime
	dc := &deviceCode{
		deviceCode: randomID(96),
		clientID:   clientID,
		tenantID:   t.ID,
		scopes:     scopes,
		issuedAt:   now,
		expiresAt:  now.Add(life),
	}
	st := s.oauth
	st.mu.Lock()
	st.prune(now, life)
	for {
		dc.userCode = newUserCode()
		if _, taken := st.byUser[dc.userCode]; !taken {
			break
		}
	}
	st.byDevice[dc.deviceCode] = dc
	st.byUser[dc.userCode] = dc
	close(st.newCode)
	st.newCode = make(chan struct{})
	st.mu.Unlock()

	verify := s.url + "/devicelogin"
	answer := map[string]any{
		"user_code":        dc.userCode,
		"device_code":      dc.deviceCode,
		"verification_uri": verify,
		"expires_in":       ceilSeconds(life),
		"interval":         max(1, ceilSeconds(s.opts.PollInterval)),
		"message": fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.",
			verify, dc.userCode),
	}
	if v1 {
		// The v1 endpoint predates RFC 8628's name for the field.
		answer["verification_url"] = verify
		delete(answer, "verification_uri")
	}
	writeJSON(w, http.StatusOK, answer)
}

// checkPublicClient checks that clientID is an app registration that
// allows public-client flows such as the device code.
func (s *Server) checkPublicClient(clientID string) *oauthErr {
	s.mu.Lock()
	defer s.mu.Unlock()
	app := s.dir.ApplicationByID(clientID)
	if app == nil {
		return unknownApp(clientID, s.dir.Tenant.ID)
	}
	if !app.PublicClient {
		return &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", aadsts: 7000218,
			msg: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	}
	return nil
}

func unknownApp(clientID, tenantID string) *oauthErr {
	return &oauthErr{status: http.StatusBadRequest, code: "unauthorized_client", aadsts: 700016,
		msg: fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", clientID, tenantID)}
}

func missingParam(name string) *oauthErr {
	return &oauthErr{status: http.StatusBadRequest, code: "invalid_request", aadsts: 900144,
		msg: fmt.Sprintf("The request body must contain the following parameter: '%s'.", name)}
}

// prune forgets codes that expired more than one lifetime ago; until then
// a late poll still hears expired_token rather than bad_verification_code.
func (st *oauthState) prune(now time.Time, life time.Duration) {
	for k, dc := range st.byDevice {
		if now.After(dc.expiresAt.Add(life)) {
			delete(st.byDevice, k)
			delete(st.byUser, dc.userCode)
		}
	}
}

// pollDeviceCode is the device_code grant: it says whether the user has
// acted yet and, once they approved, who they are.
func (s *Server) pollDeviceCode(r *http.Request) (*deviceCode, *oauthErr) {
	code, clientID := r.PostForm.Get("device_code"), r.PostForm.Get("client_id")
	if code == "" {
		return nil, missingParam("device_code")
	}
	now := s.now()
	st := s.oauth
	st.mu.Lock()
	defer st.mu.Unlock()
	dc, ok := st.byDevice[code]
	if !ok || !strings.EqualFold(dc.clientID, clientID) {
		return nil, &oauthErr{status: http.StatusBadRequest, code: "bad_verification_code", aadsts: 70018,
			msg: "The provided value for the input parameter 'device_code' is not valid."}
	}
	last := dc.lastPoll
	dc.lastPoll = now
	switch {
	case !now.Before(dc.expiresAt):
		return nil, &oauthErr{status: http.StatusBadRequest, code: "expired_token", aadsts: 70019,
			msg: "Verification code expired. Start the sign-in again to get a new code."}
	case dc.status == codeDeclined:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "authorization_declined", aadsts: 70000,
			msg: "The end user has denied the authorization request."}
	case dc.status == codePending && st.slowDown > 0:
		st.slowDown--
		return nil, slowDown()
	case dc.status == codePending && s.opts.EnforcePollInterval && !last.IsZero() && now.Sub(last) < s.opts.PollInterval:
		return nil, slowDown()
	case dc.status == codePending:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "authorization_pending", aadsts: 70016,
			msg: "OAuth 2.0 device flow error. Authorization is pending. Continue polling."}
	}
	// Approved: the code is spent whatever happens next.
	delete(st.byDevice, dc.deviceCode)
	delete(st.byUser, dc.userCode)
	return dc, nil
}

func slowDown() *oauthErr {
	return &oauthErr{status: http.StatusBadRequest, code: "slow_down",
		msg: "The client is polling too quickly and should back off."}
}

// Approve signs userCode in as the user named by upn (a UPN or object id),
// as if they had entered the code on the device-login page and consented.
func (s *Server) Approve(userCode, upn string) error {
	s.mu.Lock()
	u := s.dir.UserByName(upn)
	var uid string
	var enabled bool
	if u != nil {
		uid, enabled = u.ID, u.IsEnabled()
	}
	s.mu.Unlock()
	if u == nil {
		return fmt.Errorf("approve code for %s: %w", upn, ErrUnknownUser)
	}
	if !enabled {
		return fmt.Errorf("approve code for %s: %w", upn, ErrUserDisabled)
	}
	return s.settle(userCode, func(dc *deviceCode) {
		dc.status = codeApproved
		dc.userID = uid
	})
}

// Decline refuses userCode, as a person pressing "decline" would; the
// client's next poll gets authorization_declined.
func (s *Server) Decline(userCode string) error {
	return s.settle(userCode, func(dc *deviceCode) { dc.status = codeDeclined })
}

func (s *Server) settle(userCode string, apply func(*deviceCode)) error {
	now := s.now()
	st := s.oauth
	st.mu.Lock()
	defer st.mu.Unlock()
	dc, ok := st.byUser[normalizeUserCode(userCode)]
	switch {
	case !ok:
		return fmt.Errorf("user code %q: %w", userCode, ErrUnknownUserCode)
	case !now.Before(dc.expiresAt):
		return fmt.Errorf("user code %q: %w", userCode, ErrUserCodeExpired)
	case dc.status != codePending:
		return fmt.Errorf("user code %q: %w", userCode, ErrUserCodeUsed)
	}
	apply(dc)
	return nil
}

// PendingDeviceCodes lists the codes nobody has approved or declined yet
// and that have not expired, oldest first.
func (s *Server) PendingDeviceCodes() []PendingDeviceCode {
	now := s.now()
	st := s.oauth
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []PendingDeviceCode
	for _, dc := range st.pendingLocked(now) {
		out = append(out, dc.pending())
	}
	return out
}

func (st *oauthState) pendingLocked(now time.Time) []*deviceCode {
	var out []*deviceCode
	for _, dc := range st.byDevice {
		if dc.status == codePending && now.Before(dc.expiresAt) {
			out = append(out, dc)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].issuedAt.Before(out[j].issuedAt) })
	return out
}

// WaitForDeviceCode returns the oldest pending code it has not returned
// before, waiting for one to be issued if need be. Tests use it to approve
// a sign-in without scraping what the client printed.
func (s *Server) WaitForDeviceCode(ctx context.Context) (PendingDeviceCode, error) {
	st := s.oauth
	for {
		st.mu.Lock()
		for _, dc := range st.pendingLocked(s.now()) {
			if !dc.announced {
				dc.announced = true
				st.mu.Unlock()
				return dc.pending(), nil
			}
		}
		wait := st.newCode
		st.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return PendingDeviceCode{}, fmt.Errorf("wait for a device code: %w", ctx.Err())
		}
	}
}

// ForceSlowDown makes the next n device-code polls (of codes still
// pending) answer slow_down. Entra rarely sends it and MSAL ignores the
// advertised interval, so it is off unless a test asks for it.
func (s *Server) ForceSlowDown(n int) {
	s.oauth.mu.Lock()
	defer s.oauth.mu.Unlock()
	s.oauth.slowDown = n
}

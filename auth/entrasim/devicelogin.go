package entrasim

import (
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"net/http"
	"strings"
)

// deviceLoginPage is the simulator's stand-in for the device-login page: a
// person enters the code, picks who they are and approves or declines. It
// is plain server-rendered HTML so that it works in any browser, text ones
// included.
var deviceLoginPage = template.Must(template.New("devicelogin").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in to {{.Tenant}} (simulated)</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 34rem; margin: 3rem auto; padding: 0 1rem; color: #1b1b1b; }
h1 { font-size: 1.4rem; font-weight: 600; }
label { display: block; margin-top: 1rem; font-weight: 600; }
input, select { font-size: 1.1rem; padding: .4rem; width: 100%; box-sizing: border-box; }
.buttons { margin-top: 1.5rem; display: flex; gap: 1rem; }
button { font-size: 1rem; padding: .5rem 1.2rem; }
.ok { background: #e6f4ea; border: 1px solid #8bc34a; padding: 1rem; }
.err { background: #fdecea; border: 1px solid #e57373; padding: 1rem; }
.note { color: #555; font-size: .9rem; margin-top: 2rem; }
</style>
</head>
<body>
<h1>{{.Tenant}}: device sign-in</h1>
{{if .Done}}<p class="ok" role="status">{{.Done}}</p>
{{else}}{{if .Error}}<p class="err" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="/devicelogin">
<label for="user_code">Enter the code shown by the application</label>
<input id="user_code" name="user_code" value="{{.Code}}" autocomplete="off" autofocus required>
<label for="upn">Sign in as</label>
<select id="upn" name="upn">
{{range .Users}}<option value="{{.UPN}}"{{if .Selected}} selected{{end}}>{{.DisplayName}} &lt;{{.UPN}}&gt;{{if .Disabled}} (disabled){{end}}</option>
{{end}}</select>
<div class="buttons">
<button type="submit" name="action" value="approve">Approve</button>
<button type="submit" name="action" value="decline">Decline</button>
</div>
</form>
{{end}}
<p class="note">This is the portcullis Entra ID simulator. No password is asked for: choosing a user signs in as that user.</p>
</body>
</html>
`))

type deviceLoginUser struct {
	UPN, DisplayName   string
	Disabled, Selected bool
}

type deviceLoginView struct {
	Tenant      string
	Code        string
	Users       []deviceLoginUser
	Error, Done string
}

// serveDeviceLogin shows the form (GET, optionally with ?code= filled in)
// and acts on it (POST).
func (s *Server) serveDeviceLogin(w http.ResponseWriter, r *http.Request) {
	var v deviceLoginView
	status := http.StatusOK
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		v.Code = r.URL.Query().Get("code")
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, "cannot parse form", http.StatusBadRequest)
			return
		}
		code, upn := strings.TrimSpace(r.PostForm.Get("user_code")), r.PostForm.Get("upn")
		v.Code = code
		var err error
		switch r.PostForm.Get("action") {
		case "decline":
			if err = s.Decline(code); err == nil {
				v.Done = "You declined to sign in. You can close this window."
			}
		default:
			if err = s.Approve(code, upn); err == nil {
				v.Done = "You have signed in as " + upn + ". You can now close this window and return to the application."
			}
		}
		if err != nil {
			status = controlStatus(err)
			v.Error = controlMessage(err)
		}
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s.fillDeviceLoginView(&v, r.PostForm.Get("upn"))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_ = deviceLoginPage.Execute(w, v)
	}
}

func (s *Server) fillDeviceLoginView(v *deviceLoginView, selected string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v.Tenant = s.dir.Tenant.DisplayName
	if v.Tenant == "" {
		v.Tenant = s.dir.Tenant.Domain
	}
	for _, u := range s.dir.Users {
		v.Users = append(v.Users, deviceLoginUser{
			UPN:         u.UPN,
			DisplayName: u.DisplayName,
			Disabled:    !u.IsEnabled(),
			Selected:    strings.EqualFold(u.UPN, selected),
		})
	}
}

// controlStatus maps an Approve/Decline error to an HTTP status.
func controlStatus(err error) int {
	switch {
	case errors.Is(err, ErrUnknownUserCode), errors.Is(err, ErrUnknownUser):
		return http.StatusNotFound
	case errors.Is(err, ErrUserCodeExpired):
		return http.StatusGone
	case errors.Is(err, ErrUserCodeUsed):
		return http.StatusConflict
	case errors.Is(err, ErrUserDisabled):
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

// controlMessage says what went wrong in words a person reads.
func controlMessage(err error) string {
	switch {
	case errors.Is(err, ErrUnknownUserCode):
		return "That code is not valid. Check the code the application shows and try again."
	case errors.Is(err, ErrUserCodeExpired):
		return "That code has expired. Start the sign-in in the application again to get a new code."
	case errors.Is(err, ErrUserCodeUsed):
		return "That code has already been used."
	case errors.Is(err, ErrUnknownUser):
		return "There is no such user in this directory."
	case errors.Is(err, ErrUserDisabled):
		return "Your account has been disabled. Contact your administrator."
	}
	return err.Error()
}

// controlRequest is the body of the JSON control endpoints.
type controlRequest struct {
	UserCode string `json:"user_code"`
	UPN      string `json:"upn"`
}

func readControlRequest(w http.ResponseWriter, r *http.Request) (controlRequest, bool) {
	var req controlRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_request", "message": "body must be JSON like {\"user_code\": \"...\", \"upn\": \"...\"}: " + err.Error()})
		return req, false
	}
	if req.UserCode == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_request", "message": "user_code is required"})
		return req, false
	}
	return req, true
}

func writeControlError(w http.ResponseWriter, err error) {
	writeJSON(w, controlStatus(err), map[string]string{"error": controlErrorCode(err), "message": err.Error()})
}

func controlErrorCode(err error) string {
	switch {
	case errors.Is(err, ErrUnknownUserCode):
		return "unknown_user_code"
	case errors.Is(err, ErrUserCodeExpired):
		return "expired_user_code"
	case errors.Is(err, ErrUserCodeUsed):
		return "user_code_used"
	case errors.Is(err, ErrUnknownUser):
		return "unknown_user"
	case errors.Is(err, ErrUserDisabled):
		return "user_disabled"
	}
	return "bad_request"
}

// serveSimApprove is POST /_sim/devicecode/approve {"user_code", "upn"}.
func (s *Server) serveSimApprove(w http.ResponseWriter, r *http.Request) {
	req, ok := readControlRequest(w, r)
	if !ok {
		return
	}
	if req.UPN == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_request", "message": "upn is required"})
		return
	}
	if err := s.Approve(req.UserCode, req.UPN); err != nil {
		writeControlError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "approved", "user_code": normalizeUserCode(req.UserCode), "upn": req.UPN})
}

// serveSimDecline is POST /_sim/devicecode/decline {"user_code"}.
func (s *Server) serveSimDecline(w http.ResponseWriter, r *http.Request) {
	req, ok := readControlRequest(w, r)
	if !ok {
		return
	}
	if err := s.Decline(req.UserCode); err != nil {
		writeControlError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "declined", "user_code": normalizeUserCode(req.UserCode)})
}

// serveSimPending is GET /_sim/devicecode/pending: the codes waiting for
// someone, so a person at a terminal can see what to approve.
func (s *Server) serveSimPending(w http.ResponseWriter, r *http.Request) {
	type item struct {
		UserCode  string   `json:"user_code"`
		ClientID  string   `json:"client_id"`
		Scopes    []string `json:"scopes"`
		ExpiresAt string   `json:"expires_at"`
	}
	out := []item{}
	for _, p := range s.PendingDeviceCodes() {
		out = append(out, item{p.UserCode, p.ClientID, p.Scopes, p.ExpiresAt.UTC().Format("2006-01-02T15:04:05Z")})
	}
	writeJSON(w, http.StatusOK, map[string]any{"pending": out})
}

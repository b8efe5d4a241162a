package entrasim

import (
	"encoding/json"
	"net/http"
)

// oauthState holds pending device codes and issued refresh tokens.
type oauthState struct{}

func newOAuthState() *oauthState { return &oauthState{} }

// routeOAuth registers the login endpoints MSAL calls.
func (s *Server) routeOAuth(mux *http.ServeMux) {}

// writeOAuthError writes Entra's OAuth error JSON.
func writeOAuthError(w http.ResponseWriter, status int, code, description string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error":             code,
		"error_description": description,
		"error_codes":       []int{},
	})
}

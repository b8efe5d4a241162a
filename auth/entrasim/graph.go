package entrasim

import (
	"encoding/json"
	"net/http"
)

// routeGraph registers the Microsoft Graph v1.0 endpoints.
func (s *Server) routeGraph(mux *http.ServeMux) {}

// writeGraphError writes Graph's error JSON.
func writeGraphError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error": map[string]any{"code": code, "message": message},
	})
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

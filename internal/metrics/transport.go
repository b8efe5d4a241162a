package metrics

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Transport wraps rt, the transport a provider's HTTP client reaches
// Entra ID and Microsoft Graph with, so that every request is counted:
// a Graph API path (/v1.0/, /beta/) as a Graph request, with its latency
// and any throttling, anything else as an authority request. A nil rt
// means http.DefaultTransport.
func (r *Registry) Transport(provider string, rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &countingTransport{r: r, provider: provider, next: rt}
}

type countingTransport struct {
	r        *Registry
	provider string
	next     http.RoundTripper
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	if isGraphPath(req.URL.Path) {
		t.r.graphRequests.WithLabelValues(t.provider, code).Inc()
		t.r.graphLatency.WithLabelValues(t.provider).Observe(time.Since(start).Seconds())
		if err == nil && resp.StatusCode == http.StatusTooManyRequests {
			t.r.graphThrottled.WithLabelValues(t.provider).Inc()
		}
	} else {
		t.r.entraRequests.WithLabelValues(t.provider, code).Inc()
	}
	return resp, err
}

// isGraphPath tells Graph API paths from the authority's (/{tenant}/...),
// also when a Graph endpoint has a path prefix of its own.
func isGraphPath(p string) bool {
	return strings.Contains(p, "/v1.0/") || strings.HasSuffix(p, "/v1.0") ||
		strings.Contains(p, "/beta/") || strings.HasSuffix(p, "/beta")
}

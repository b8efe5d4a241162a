package entrasim

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Endpoint groups the simulator's routes for fault injection.
type Endpoint string

// Endpoints that faults can target.
const (
	EndpointDiscovery  Endpoint = "discovery"  // openid-configuration
	EndpointDeviceCode Endpoint = "devicecode" // /oauth2/v2.0/devicecode (and v1)
	EndpointToken      Endpoint = "token"      // /oauth2/v2.0/token (and v1)
	EndpointKeys       Endpoint = "keys"       // /discovery/v2.0/keys
	EndpointGraph      Endpoint = "graph"      // /v1.0/...
)

// Fault describes how an endpoint misbehaves. A zero Fault is healthy.
type Fault struct {
	// Status, if non-zero, is returned instead of the real answer
	// (429 and 503 carry Retry-After when RetryAfter is set).
	Status     int
	RetryAfter time.Duration
	// Latency is added before answering.
	Latency time.Duration
	// Down closes the connection without an answer.
	Down bool
	// Times limits the fault to the next n requests; 0 means until cleared.
	Times int
	// For limits the fault to this long from SetFault (wall-clock time,
	// whatever Options.Now says), as an outage or a throttling spell
	// that ends on its own; 0 means until cleared. With Times, the
	// fault ends at whichever comes first.
	For time.Duration
}

type faults struct {
	mu    sync.Mutex
	byEP  map[Endpoint]*Fault
	until map[Endpoint]time.Time // end of a fault set with For
	count map[Endpoint]int
}

func newFaults() *faults {
	return &faults{byEP: map[Endpoint]*Fault{}, until: map[Endpoint]time.Time{}, count: map[Endpoint]int{}}
}

// SetFault makes ep misbehave as f describes; a zero Fault clears it.
func (s *Server) SetFault(ep Endpoint, f Fault) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	delete(s.faults.until, ep)
	if f == (Fault{}) {
		delete(s.faults.byEP, ep)
		return
	}
	s.faults.byEP[ep] = &f
	if f.For > 0 {
		s.faults.until[ep] = time.Now().Add(f.For)
	}
}

// Requests reports how many requests ep has received.
func (s *Server) Requests(ep Endpoint) int {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	return s.faults.count[ep]
}

func endpointOf(path string) Endpoint {
	switch {
	case strings.HasPrefix(path, "/v1.0/"):
		return EndpointGraph
	case strings.HasSuffix(path, "/.well-known/openid-configuration"):
		return EndpointDiscovery
	case strings.HasSuffix(path, "/oauth2/v2.0/devicecode"), strings.HasSuffix(path, "/oauth2/devicecode"):
		return EndpointDeviceCode
	case strings.HasSuffix(path, "/oauth2/v2.0/token"), strings.HasSuffix(path, "/oauth2/token"):
		return EndpointToken
	case strings.HasSuffix(path, "/discovery/v2.0/keys"), strings.HasSuffix(path, "/discovery/keys"):
		return EndpointKeys
	}
	return ""
}

// take returns the fault to apply to one request on ep, if any.
func (f *faults) take(ep Endpoint) *Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count[ep]++
	ft, ok := f.byEP[ep]
	if !ok {
		return nil
	}
	if until, ok := f.until[ep]; ok && !time.Now().Before(until) {
		delete(f.byEP, ep)
		delete(f.until, ep)
		return nil
	}
	cp := *ft
	if ft.Times > 0 {
		ft.Times--
		if ft.Times == 0 {
			delete(f.byEP, ep)
			delete(f.until, ep)
		}
	}
	return &cp
}

func (f *faults) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ep := endpointOf(r.URL.Path)
		if ep == "" {
			next.ServeHTTP(w, r)
			return
		}
		ft := f.take(ep)
		if ft == nil {
			next.ServeHTTP(w, r)
			return
		}
		if ft.Latency > 0 {
			select {
			case <-time.After(ft.Latency):
			case <-r.Context().Done():
				return
			}
		}
		if ft.Down {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		if ft.Status == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if ft.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((ft.RetryAfter+time.Second-1)/time.Second)))
		}
		if ep == EndpointGraph {
			writeGraphError(w, ft.Status, graphErrorCode(ft.Status), http.StatusText(ft.Status))
			return
		}
		writeOAuthError(w, ft.Status, "temporarily_unavailable", http.StatusText(ft.Status))
	})
}

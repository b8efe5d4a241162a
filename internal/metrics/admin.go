package metrics

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Check is one condition /readyz requires; Run returns nil when it holds.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// checkTimeout bounds each readiness check, so that a probe never hangs
// on a dependency.
const checkTimeout = 2 * time.Second

// AdminHandler serves the admin HTTP surface:
//
//	/metrics  the Prometheus exposition
//	/healthz  200 while the process runs (liveness)
//	/readyz   200 when every check holds, else 503; the body lists each
//	          check as "ok NAME" or "failed NAME: why"
func (r *Registry) AdminHandler(checks []Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		var b strings.Builder
		ready := true
		for _, c := range checks {
			ctx, cancel := context.WithTimeout(req.Context(), checkTimeout)
			err := c.Run(ctx)
			cancel()
			if err != nil {
				ready = false
				fmt.Fprintf(&b, "failed %s: %v\n", c.Name, err)
				continue
			}
			fmt.Fprintf(&b, "ok %s\n", c.Name)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, b.String())
	})
	return mux
}

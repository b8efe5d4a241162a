// Package metrics is portcullis's Prometheus instrumentation and its
// admin HTTP surface (/metrics, /healthz, /readyz). A *Registry
// implements proxy.Metrics; it also wraps the HTTP transport that reaches
// Entra ID and Microsoft Graph and the sign-in store, and reads the
// open connections from the proxy when it is scraped, so that nothing is
// counted per relayed byte.
//
// The families, all prefixed portcullis_:
//
//	connections_accepted_total{listener,protocol}          connections accepted
//	connections_active{protocol,resource,state}            open connections, at scrape time; state handshake|active|console
//	sessions_total{protocol,resource}                       sessions that relayed, counted as they end
//	bytes_relayed_total{protocol,resource,direction}        bytes each way (to_backend|to_client), counted as sessions end
//	sign_ins_total{protocol,method,result}                  decisions: result ok|pending|totp_required|abandoned|error|<refusal reason>
//	device_code_wait_seconds{result}                        from showing a device code (notice mode) to the decision
//	connection_failures_total{protocol,kind}                every refusal and failure, by kind
//	sessions_revoked_total{reason}                          sessions portcullis ended on purpose (operator: KILL)
//	graph_requests_total{provider,code}                     Microsoft Graph requests by HTTP status (code "error": no answer)
//	graph_request_duration_seconds{provider}                their latency
//	graph_throttled_total{provider}                         Graph answers 429
//	entra_requests_total{provider,code}                     requests to the Entra ID authority (token, device code, discovery, keys)
//	store_operation_duration_seconds{op}                    sign-in store latency
//	store_errors_total{op}                                  sign-in store failures
//	config_reloads_total{result}                            reloads: ok|failed
//	build_info{version}                                     1
//
// plus the Go runtime and process collectors.
package metrics

import (
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

const namespace = "portcullis"

// Registry holds portcullis's metrics. Create it with New; it is safe
// for concurrent use.
type Registry struct {
	reg *prometheus.Registry

	connsAccepted  *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	bytes          *prometheus.CounterVec
	signIns        *prometheus.CounterVec
	deviceWait     *prometheus.HistogramVec
	failures       *prometheus.CounterVec
	revoked        *prometheus.CounterVec
	graphRequests  *prometheus.CounterVec
	graphLatency   *prometheus.HistogramVec
	graphThrottled *prometheus.CounterVec
	entraRequests  *prometheus.CounterVec
	storeLatency   *prometheus.HistogramVec
	storeErrors    *prometheus.CounterVec
	reloads        *prometheus.CounterVec

	active *activeCollector
}

var _ proxy.Metrics = (*Registry)(nil)

// New makes a Registry with every family registered, and the Go runtime
// and process collectors.
func New(version string) *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
		r.reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
		r.reg.MustRegister(h)
		return h
	}
	r.connsAccepted = counter("connections_accepted_total", "Client connections accepted, by listener.", "listener", "protocol")
	r.sessions = counter("sessions_total", "Sessions that relayed to a backend, counted as they end.", "protocol", "resource")
	r.bytes = counter("bytes_relayed_total", "Bytes relayed, counted as sessions end.", "protocol", "resource", "direction")
	r.signIns = counter("sign_ins_total", "Sign-in decisions by method and result (ok, pending, totp_required, abandoned, error, or the refusal reason).", "protocol", "method", "result")
	r.deviceWait = histogram("device_code_wait_seconds", "Time from showing a device code (notice mode) to the decision.",
		[]float64{5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900}, "result")
	r.failures = counter("connection_failures_total", "Refusals and failures of connections, by kind.", "protocol", "kind")
	r.revoked = counter("sessions_revoked_total", "Sessions portcullis ended on purpose while open, by reason.", "reason")
	r.graphRequests = counter("graph_requests_total", "Microsoft Graph requests by HTTP status (error: no answer).", "provider", "code")
	r.graphLatency = histogram("graph_request_duration_seconds", "Microsoft Graph request latency.", prometheus.DefBuckets, "provider")
	r.graphThrottled = counter("graph_throttled_total", "Microsoft Graph answers 429 (throttled).", "provider")
	r.entraRequests = counter("entra_requests_total", "Requests to the Entra ID authority (tokens, device codes, discovery, keys) by HTTP status.", "provider", "code")
	r.storeLatency = histogram("store_operation_duration_seconds", "Sign-in store operation latency.",
		[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}, "op")
	r.storeErrors = counter("store_errors_total", "Sign-in store operations that failed.", "op")
	r.reloads = counter("config_reloads_total", "Configuration reloads (SIGHUP, RELOAD) by result.", "result")

	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info", Help: "The running portcullis version (always 1)."}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	r.reg.MustRegister(build)

	r.active = &activeCollector{desc: prometheus.NewDesc(namespace+"_connections_active",
		"Open client connections at scrape time, by resource and state (handshake, active, console).",
		[]string{"protocol", "resource", "state"}, nil)}
	r.reg.MustRegister(r.active)

	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// WatchSessions gives the Registry the proxy's open connections, read at
// every scrape for connections_active.
func (r *Registry) WatchSessions(list func() []proxy.SessionInfo) {
	r.active.mu.Lock()
	r.active.list = list
	r.active.mu.Unlock()
}

// Handler serves /metrics in the Prometheus exposition formats.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{})
}

// ConnAccepted implements proxy.Metrics.
func (r *Registry) ConnAccepted(listener, protocol string) {
	r.connsAccepted.WithLabelValues(listener, protocol).Inc()
}

// ConnClosed implements proxy.Metrics: a session that relayed is counted
// with its bytes, and one that ended in an error counts as a failure.
func (r *Registry) ConnClosed(s proxy.SessionInfo, err error) {
	if s.Started.IsZero() {
		return
	}
	r.sessions.WithLabelValues(s.Protocol, s.Resource).Inc()
	r.bytes.WithLabelValues(s.Protocol, s.Resource, "to_backend").Add(float64(s.BytesToBackend))
	r.bytes.WithLabelValues(s.Protocol, s.Resource, "to_client").Add(float64(s.BytesToClient))
	if err != nil {
		r.failures.WithLabelValues(s.Protocol, "relay_error").Inc()
	}
}

// SignIn implements proxy.Metrics.
func (r *Registry) SignIn(protocol string, method auth.Method, result string) {
	r.signIns.WithLabelValues(protocol, string(method), result).Inc()
}

// DeviceCodeWait implements proxy.Metrics.
func (r *Registry) DeviceCodeWait(result string, d time.Duration) {
	r.deviceWait.WithLabelValues(result).Observe(d.Seconds())
}

// Failure implements proxy.Metrics.
func (r *Registry) Failure(protocol, kind string) {
	r.failures.WithLabelValues(protocol, kind).Inc()
}

// SessionRevoked implements proxy.Metrics; continuous authorization
// counts its disconnections here too.
func (r *Registry) SessionRevoked(reason string) {
	r.revoked.WithLabelValues(reason).Inc()
}

// ConfigReloaded counts a reload and its result.
func (r *Registry) ConfigReloaded(err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	r.reloads.WithLabelValues(result).Inc()
}

// ObserveStore records one store operation: its latency, and whether it
// failed. A store other than the sign-in store may report through it.
func (r *Registry) ObserveStore(op string, d time.Duration, err error) {
	r.storeLatency.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		r.storeErrors.WithLabelValues(op).Inc()
	}
}

// Sample is one current value of a metric.
type Sample struct {
	Name   string
	Labels string // name="value", ... in label order; empty for none
	Value  float64
}

// Snapshot returns portcullis's own samples (not the runtime's): counters
// and gauges as they are, histograms as _count and _sum. It is what the
// admin console's SHOW STATS shows.
func (r *Registry) Snapshot() ([]Sample, error) {
	families, err := r.reg.Gather()
	if err != nil && len(families) == 0 {
		return nil, err
	}
	var out []Sample
	for _, f := range families {
		name := f.GetName()
		if !strings.HasPrefix(name, namespace+"_") {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := labelText(m.GetLabel())
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, Sample{name, labels, m.GetCounter().GetValue()})
			case dto.MetricType_GAUGE:
				out = append(out, Sample{name, labels, m.GetGauge().GetValue()})
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out = append(out, Sample{name + "_count", labels, float64(h.GetSampleCount())}, Sample{name + "_sum", labels, h.GetSampleSum()})
			}
		}
	}
	return out, nil
}

func labelText(labels []*dto.LabelPair) string {
	parts := make([]string, len(labels))
	for i, l := range labels {
		parts[i] = l.GetName() + `="` + l.GetValue() + `"`
	}
	return strings.Join(parts, ", ")
}

// activeCollector counts the proxy's open connections when scraped.
type activeCollector struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	list func() []proxy.SessionInfo
}

func (a *activeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

func (a *activeCollector) Collect(ch chan<- prometheus.Metric) {
	a.mu.Lock()
	list := a.list
	a.mu.Unlock()
	if list == nil {
		return
	}
	type key struct{ protocol, resource, state string }
	counts := map[key]int{}
	for _, s := range list() {
		counts[key{s.Protocol, s.Resource, connState(s)}]++
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].protocol+keys[i].resource+keys[i].state < keys[j].protocol+keys[j].resource+keys[j].state
	})
	for _, k := range keys {
		ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, float64(counts[k]), k.protocol, k.resource, k.state)
	}
}

// connState is where a connection is: relaying (active), in the admin
// console, or still in its handshake.
func connState(s proxy.SessionInfo) string {
	switch {
	case !s.Started.IsZero():
		return "active"
	case s.Resource == config.ConsoleResource && s.Identity.ObjectID != "":
		return "console"
	}
	return "handshake"
}

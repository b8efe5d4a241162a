package proxy

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// Metrics counts what happens to connections, for an operator's
// dashboards; internal/metrics implements it with Prometheus. Every
// method is called on a connection's own goroutine, so it must be cheap
// and safe for concurrent use. Nothing is called per relayed chunk: bytes
// are counted once, when the connection closes.
type Metrics interface {
	// ConnAccepted counts a connection accepted on a listener.
	ConnAccepted(listener, protocol string)
	// ConnClosed is told about every connection once, as it closes, with
	// its final snapshot (a session relayed if s.Started is set) and the
	// error it ended with, if any.
	ConnClosed(s SessionInfo, err error)
	// SignIn counts one decision: how the identity was (or was to be)
	// proven, and the result: "ok", "pending" (error-mode prompt),
	// "totp_required", "abandoned", "error", or a refusal reason.
	SignIn(protocol string, method auth.Method, result string)
	// DeviceCodeWait observes how long a person shown a device code in
	// notice mode took until the decision, with its result.
	DeviceCodeWait(result string, d time.Duration)
	// Failure counts a refusal or failure of any kind (a refusal reason,
	// "backend_failed", "accept_failed", "cancel_unknown_key", ...).
	Failure(protocol, kind string)
	// SessionRevoked counts a connection portcullis ended on purpose
	// while it was open ("operator": Server.End).
	SessionRevoked(reason string)
}

// nopMetrics is the Metrics of a Server given none.
type nopMetrics struct{}

func (nopMetrics) ConnAccepted(string, string)          {}
func (nopMetrics) ConnClosed(SessionInfo, error)        {}
func (nopMetrics) SignIn(string, auth.Method, string)   {}
func (nopMetrics) DeviceCodeWait(string, time.Duration) {}
func (nopMetrics) Failure(string, string)               {}
func (nopMetrics) SessionRevoked(string)                {}

func orNop(m Metrics) Metrics {
	if m == nil {
		return nopMetrics{}
	}
	return m
}

// Sign-in results other than refusal reasons.
const (
	resultOK           = "ok"
	resultPending      = "pending"
	resultTOTPRequired = "totp_required"
	resultAbandoned    = "abandoned"
	resultError        = "error"
)

// codeShown remembers when a device code was first shown to the client,
// for the device-code wait histogram.
type codeShown struct {
	mu sync.Mutex
	at time.Time
}

func (w *codeShown) when() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.at
}

// watchDeviceCode wraps req.Prompt so that the first prompt shown is
// timed.
func (c *Conn) watchDeviceCode(req *auth.Request) *codeShown {
	w := &codeShown{}
	if prompt := req.Prompt; prompt != nil {
		req.Prompt = func(p auth.DeviceCodePrompt) error {
			w.mu.Lock()
			if w.at.IsZero() {
				w.at = time.Now()
			}
			w.mu.Unlock()
			return prompt(p)
		}
	}
	return w
}

// countDecision feeds a decision to the metrics and, when it allowed
// someone in, to the record of recent identities.
func (c *Conn) countDecision(ctx context.Context, req auth.Request, dec *auth.Decision, err error, shown *codeShown) {
	m := c.srv.metrics
	method := auth.MethodFor(req)
	var (
		pending *auth.SignInPending
		totp    *auth.TOTPRequired
		refusal *auth.Refusal
		result  string
	)
	switch {
	case err == nil:
		method, result = dec.Method, resultOK
		c.srv.recent.record(req, dec, time.Now())
	case errors.As(err, &pending):
		method, result = auth.MethodDeviceCode, resultPending
	case errors.As(err, &totp):
		result = resultTOTPRequired
	case ctx.Err() != nil:
		result = resultAbandoned
	case errors.As(err, &refusal):
		result = string(refusal.Reason)
	default:
		result = resultError
	}
	m.SignIn(c.protocol, method, result)
	switch result {
	case resultOK, resultPending, resultTOTPRequired:
	case resultError:
		m.Failure(c.protocol, "auth_error")
	default:
		m.Failure(c.protocol, result)
	}
	if at := shown.when(); !at.IsZero() {
		m.DeviceCodeWait(result, time.Since(at))
	}
}

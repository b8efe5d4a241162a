// Package graph is the Microsoft Graph client portcullis uses to learn
// who is in which group: transitive group membership of users and service
// principals (with paging, throttling and a per-identity cache), user and
// service-principal lookups, resolution of configured group names to
// object ids, and a raw GET for the admin console's azure_search.
//
// It reports facts and typed errors; it decides nothing. In particular an
// *UnavailableError means "unknown", and the caller must refuse.
package graph

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultEndpoint is the Graph root of the global Azure cloud. Sovereign
// clouds and the simulator have their own.
const DefaultEndpoint = "https://graph.microsoft.com"

// Defaults for Options.
const (
	DefaultCacheTTL   = 5 * time.Minute
	DefaultMaxRetries = 5
	DefaultMaxWait    = 20 * time.Second
)

const (
	apiVersion = "/v1.0"
	// maxBody bounds what is read from one Graph answer (a page of 999
	// groups is about 100 KB).
	maxBody = 16 << 20
	// maxPages stops a walk that a misbehaving server would never end.
	maxPages = 1000
	// otherRetries bounds retries of errors that are less likely to pass
	// (500, 502, network errors) than throttling and 503/504.
	otherRetries = 2
	// baseDelay is the first backoff step when Graph gives no Retry-After.
	baseDelay = 200 * time.Millisecond
	maxDelay  = 8 * time.Second
	// walkTimeout bounds a shared walk, which runs detached from the
	// context of whoever started it.
	walkTimeout = time.Minute
)

// TokenSource supplies bearer tokens for Graph. Implementations cache and
// refresh as they see fit; Token is called before every request.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// TokenFunc adapts a function to TokenSource, e.g. to hand the client a
// signed-in user's delegated token.
type TokenFunc func(ctx context.Context) (string, error)

// Token calls f.
func (f TokenFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

// Options configure a Client. Zero values pick the defaults.
type Options struct {
	// Endpoint is the Graph root without the version, default
	// DefaultEndpoint; the client appends /v1.0. It must be https.
	Endpoint string
	// HTTPClient makes the requests; default a client with a 30 s timeout.
	HTTPClient *http.Client
	// Tokens supplies app-only tokens (see NewAppTokens). Lookups other
	// than a delegated Subject need it.
	Tokens TokenSource
	// CacheTTL is how long transitive groups are cached per identity;
	// default 5 minutes, negative disables the cache.
	CacheTTL time.Duration
	// MaxRetries bounds the retries of one request; default 5, negative
	// means none.
	MaxRetries int
	// MaxWait bounds the total time one call (a lookup, or all the pages
	// of one TransitiveGroups walk) may spend waiting between retries;
	// default 20 s. A Retry-After beyond what is left of it ends the call
	// at once with an *UnavailableError.
	MaxWait time.Duration
	// Now is the clock for the cache and HTTP-date Retry-After values;
	// default time.Now.
	Now func() time.Time
}

// Client talks to Microsoft Graph. It is safe for concurrent use.
type Client struct {
	base     *url.URL // endpoint + /v1.0
	endpoint *url.URL
	http     *http.Client
	tokens   TokenSource
	ttl      time.Duration
	retries  int
	maxWait  time.Duration
	now      func() time.Time

	mu          sync.Mutex
	cache       map[string]cacheEntry
	flights     map[string]*flight[[]Group]
	userFlights map[string]*flight[User]
}

// New checks opts and returns a client.
func New(opts Options) (*Client, error) {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	ep, err := url.Parse(strings.TrimRight(opts.Endpoint, "/"))
	if err != nil {
		return nil, fmt.Errorf("graph: endpoint %q: %w", opts.Endpoint, err)
	}
	if ep.Scheme != "https" || ep.Host == "" || ep.User != nil || ep.RawQuery != "" || ep.Fragment != "" {
		return nil, fmt.Errorf("graph: endpoint %q must be an https URL with no query", opts.Endpoint)
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	switch {
	case opts.CacheTTL == 0:
		opts.CacheTTL = DefaultCacheTTL
	case opts.CacheTTL < 0:
		opts.CacheTTL = 0
	}
	switch {
	case opts.MaxRetries == 0:
		opts.MaxRetries = DefaultMaxRetries
	case opts.MaxRetries < 0:
		opts.MaxRetries = 0
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	base := *ep
	base.Path += apiVersion
	return &Client{
		base:        &base,
		endpoint:    ep,
		http:        opts.HTTPClient,
		tokens:      opts.Tokens,
		ttl:         opts.CacheTTL,
		retries:     opts.MaxRetries,
		maxWait:     opts.MaxWait,
		now:         opts.Now,
		cache:       map[string]cacheEntry{},
		flights:     map[string]*flight[[]Group]{},
		userFlights: map[string]*flight[User]{},
	}, nil
}

// Response is a raw Graph answer.
type Response struct {
	StatusCode int
	Header     http.Header
	Body       []byte
}

// Get sends a GET with the app-only token to a Graph API URL under the
// configured endpoint (absolute, or a path such as "/v1.0/users?$top=5";
// /v1.0/ and /beta/ are allowed) and returns Graph's answer whatever its
// status, after retrying throttling and server errors. It is the
// pass-through for the admin console's azure_search. Header adds request
// headers (ConsistencyLevel, say); Authorization cannot be overridden. A
// URL elsewhere is refused with an error wrapping ErrOutsideEndpoint.
func (c *Client) Get(ctx context.Context, rawURL string, header http.Header) (*Response, error) {
	u, err := c.resolve(rawURL)
	if err != nil {
		return nil, fmt.Errorf("graph: get: %w", err)
	}
	return c.do(ctx, &call{op: "get " + u.Path, tokens: c.tokens, header: header}, u.String())
}

// call is one logical operation: a GET, or the pages of one walk, which
// share one wait budget.
type call struct {
	op     string
	tokens TokenSource
	header http.Header
	waited time.Duration // spent so far between retries
}

// resolve turns a caller's or Graph's URL into an absolute URL and checks
// that it is a Graph API URL (/v1.0/ or /beta/ under the endpoint), so that
// a token never leaves for another host, nor for another service on the
// same host.
func (c *Client) resolve(raw string) (*url.URL, error) {
	ref, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse URL: %w", err)
	}
	u := c.endpoint.ResolveReference(ref) // also removes dot segments
	under := false
	for _, v := range []string{"/v1.0/", "/beta/"} {
		under = under || strings.HasPrefix(u.Path, c.endpoint.Path+v)
	}
	if !strings.EqualFold(u.Scheme, c.endpoint.Scheme) || !strings.EqualFold(u.Host, c.endpoint.Host) || u.User != nil || !under {
		return nil, fmt.Errorf("%s://%s%s: %w %s", u.Scheme, u.Host, u.Path, ErrOutsideEndpoint, c.endpoint)
	}
	u.Fragment = ""
	return u, nil
}

// do sends one GET, retrying as Graph's throttling guidance asks: 429,
// 503 and 504 honour Retry-After (seconds or an HTTP date) or else back
// off exponentially with jitter; other 5xx and network errors are retried
// a little; 4xx are not retried. The retries are bounded by MaxRetries
// per request, by MaxWait for the whole call, and by ctx. Any answer below
// 500 other than 429 is returned as is.
func (c *Client) do(ctx context.Context, cl *call, target string) (*Response, error) {
	op := cl.op
	if cl.tokens == nil {
		return nil, &UnavailableError{Op: op, Err: errors.New("no token source for Graph is configured")}
	}
	var (
		lastStatus int
		retryAfter time.Duration
		lastErr    error
	)
	for attempt := 0; ; attempt++ {
		tok, err := cl.tokens.Token(ctx)
		if err != nil {
			return nil, &UnavailableError{Op: op, Attempts: attempt, Err: fmt.Errorf("get a token for Graph: %w", err)}
		}
		resp, err := c.send(ctx, target, cl.header, tok)
		limit := otherRetries
		var delay time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, &UnavailableError{Op: op, Status: lastStatus, Attempts: attempt + 1, Err: ctx.Err()}
			}
			lastErr, lastStatus = err, 0
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGatewayTimeout:
			limit = c.retries
			lastErr, lastStatus = replyError(op, resp), resp.StatusCode
			if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), c.now()); ok {
				delay, retryAfter = d, d
			}
		case resp.StatusCode >= 500:
			lastErr, lastStatus = replyError(op, resp), resp.StatusCode
		default:
			return resp, nil
		}
		if attempt >= min(limit, c.retries) {
			return nil, &UnavailableError{Op: op, Status: lastStatus, Attempts: attempt + 1, RetryAfter: retryAfter, Err: lastErr}
		}
		if delay == 0 {
			delay = backoff(attempt)
		}
		if cl.waited+delay > c.maxWait {
			return nil, &UnavailableError{Op: op, Status: lastStatus, Attempts: attempt + 1, RetryAfter: retryAfter,
				Err: fmt.Errorf("next retry in %s would exceed the %s wait budget: %w", delay, c.maxWait, lastErr)}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &UnavailableError{Op: op, Status: lastStatus, Attempts: attempt + 1, RetryAfter: retryAfter, Err: ctx.Err()}
		case <-t.C:
		}
		cl.waited += delay
	}
}

// send makes one request and reads the whole answer.
func (c *Client) send(ctx context.Context, target string, header http.Header, token string) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		if strings.EqualFold(k, "Authorization") || strings.EqualFold(k, "Host") {
			continue
		}
		req.Header[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	req.Header.Set("client-request-id", newRequestID())
	resp, err := c.http.Do(req)
	if err != nil {
		// The URL is ours and holds no secret; the error is kept whole.
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("answer larger than %d bytes", maxBody)
	}
	return &Response{StatusCode: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// replyError reads Graph's error JSON from an answer.
func replyError(op string, resp *Response) *ResponseError {
	e := &ResponseError{Op: op, Status: resp.StatusCode, RequestID: resp.Header.Get("request-id")}
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(resp.Body, &body) == nil {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	return e
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// backoff is the wait before retry number attempt+1 when Graph did not
// say: exponential, capped, with jitter so that many clients throttled
// together do not return together.
func backoff(attempt int) time.Duration {
	d := baseDelay << min(attempt, 10)
	d = min(d, maxDelay)
	return d/2 + mrand.N(d/2+1)
}

// newRequestID returns a random UUID for client-request-id, which Graph
// echoes so a request can be traced.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// getJSON GETs target and decodes a 2xx answer into v. A 404 becomes
// *NotFoundError{kind, key}; other errors *ResponseError or
// *UnavailableError.
func (c *Client) getJSON(ctx context.Context, cl *call, target, kind, key string, v any) error {
	resp, err := c.do(ctx, cl, target)
	if err != nil {
		return err
	}
	return decodeReply(cl.op, resp, kind, key, v)
}

// appCall is a call with the app-only token.
func (c *Client) appCall(op string) *call { return &call{op: op, tokens: c.tokens} }

func decodeReply(op string, resp *Response, kind, key string, v any) error {
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return &NotFoundError{Op: op, Kind: kind, Key: key}
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return replyError(op, resp)
	}
	if err := json.Unmarshal(resp.Body, v); err != nil {
		return fmt.Errorf("graph: %s: decode answer: %w", op, err)
	}
	return nil
}

// apiURL joins the /v1.0 root, an already escaped path and a query.
func (c *Client) apiURL(escapedPath string, query ...string) string {
	u := c.base.String() + escapedPath
	if len(query) > 0 {
		u += "?" + strings.Join(query, "&")
	}
	return u
}

// queryParam is name=value with the value escaped for a query string,
// spaces as %20 (a '+' would be read as a plus sign by some OData
// servers).
func queryParam(name, value string) string {
	return name + "=" + strings.ReplaceAll(url.QueryEscape(value), "+", "%20")
}

// odataString quotes s as an OData string literal.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

package graph

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// UnavailableError means Microsoft Graph could not give an answer: it was
// unreachable, kept failing with 5xx, throttled the client beyond its
// retry budget, no token could be obtained for it, or the context ended
// first. Callers must treat it as "we cannot know" and refuse (fail
// closed), telling the person that the directory is unreachable.
type UnavailableError struct {
	// Op says what was being done, e.g. "transitive groups of user
	// alice@contoso.com".
	Op string
	// Status is the last HTTP status Graph answered, 0 if none.
	Status int
	// Attempts is how many requests were made.
	Attempts int
	// RetryAfter is the last wait Graph asked for, if it throttled.
	RetryAfter time.Duration
	// Err is the underlying cause (a network error, a context error, a
	// token error, or Graph's error reply), if any.
	Err error
}

// Error says what failed for whom and why; it never holds a token.
func (e *UnavailableError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "graph: %s: Microsoft Graph unavailable", e.Op)
	switch {
	case e.Status == 429:
		fmt.Fprintf(&b, " (throttled, HTTP 429, retry after %s, %d attempts)", e.RetryAfter, e.Attempts)
	case e.Status != 0:
		fmt.Fprintf(&b, " (HTTP %d, %d attempts)", e.Status, e.Attempts)
	case e.Attempts > 0:
		fmt.Fprintf(&b, " (%d attempts)", e.Attempts)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the cause, so errors.Is(err, context.Canceled) works.
func (e *UnavailableError) Unwrap() error { return e.Err }

// NotFoundError means Graph answered that the object does not exist (404
// Request_ResourceNotFound), or a search by name found nothing.
type NotFoundError struct {
	Op string
	// Kind is "user", "group" or "service principal"; Key is the id,
	// name or UPN that was looked up.
	Kind, Key string
}

// Error names what was not found.
func (e *NotFoundError) Error() string {
	return fmt.Sprintf("graph: %s: no %s %q in the directory", e.Op, e.Kind, e.Key)
}

// AmbiguousError means a display name matched more than one object.
type AmbiguousError struct {
	Kind string   // "group" or "service principal"
	Name string   // the display name looked up
	IDs  []string // the object ids it matched
}

// Error names the name and the ids it matched.
func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("graph: %s name %q is ambiguous: it matches %s", e.Kind, e.Name, strings.Join(e.IDs, ", "))
}

// ResponseError is any other error reply from Graph (a 4xx other than
// 404 and 429): a bad request, or missing permissions (401/403), which
// usually means the app registration lacks a Graph permission.
type ResponseError struct {
	Op        string
	Status    int
	Code      string // Graph's error code, e.g. Authorization_RequestDenied
	Message   string // Graph's message
	RequestID string // Graph's request-id, for support cases
}

// Error carries Graph's code, message and request id.
func (e *ResponseError) Error() string {
	msg := fmt.Sprintf("graph: %s: HTTP %d", e.Op, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.RequestID != "" {
		msg += " (request-id " + e.RequestID + ")"
	}
	return msg
}

// ResolveError lists every group reference ResolveGroups could not turn
// into exactly one group, so that a configuration check can report them
// all at once.
type ResolveError struct {
	// Unknown are names or ids that matched no group.
	Unknown []string
	// Ambiguous maps each display name that matched several groups to
	// their ids.
	Ambiguous map[string][]string
}

// Error lists every unknown and ambiguous reference.
func (e *ResolveError) Error() string {
	var parts []string
	if len(e.Unknown) > 0 {
		q := make([]string, len(e.Unknown))
		for i, u := range e.Unknown {
			q[i] = fmt.Sprintf("%q", u)
		}
		parts = append(parts, "no such group: "+strings.Join(q, ", "))
	}
	names := make([]string, 0, len(e.Ambiguous))
	for n := range e.Ambiguous {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("group name %q is ambiguous (ids %s); use an object id", n, strings.Join(e.Ambiguous[n], ", ")))
	}
	return "graph: resolve groups: " + strings.Join(parts, "; ")
}

// ErrOutsideEndpoint is returned (wrapped) for a URL that is not under the
// configured Graph endpoint: the client never sends its token elsewhere,
// whether the URL came from a caller or from a nextLink.
var ErrOutsideEndpoint = errors.New("URL is not under the Graph endpoint")

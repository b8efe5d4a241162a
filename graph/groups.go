package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Kind tells a user from a service principal.
type Kind int

// Kinds of subject.
const (
	KindUser Kind = iota + 1
	KindServicePrincipal
)

// String is the kind as messages name it.
func (k Kind) String() string {
	switch k {
	case KindUser:
		return "user"
	case KindServicePrincipal:
		return "service principal"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Subject is an identity whose groups are wanted.
type Subject struct {
	Kind Kind
	// ID is the object id (or, for a user, the UPN). It is also the cache
	// key, so give the same form every time for one identity.
	ID string
	// Token, if set, is the user's own delegated token; the lookup then
	// uses /me with it instead of the app-only token. Users only; ID must
	// then be the id of the user the token belongs to, as it keys the
	// cache.
	Token TokenSource
}

// Group is a group the subject is a transitive member of.
type Group struct {
	ID          string
	DisplayName string
}

type cacheEntry struct {
	groups  []Group
	expires time.Time
}

// sweepAt is the cache size above which expired entries are dropped.
const sweepAt = 4096

// TransitiveGroups returns every group the subject belongs to, directly or
// through nested groups, sorted by display name. It asks Graph for
// /transitiveMemberOf/microsoft.graph.group as an advanced query
// (ConsistencyLevel: eventual, $count=true), 999 per page, following
// @odata.nextLink. Answers are cached per identity for CacheTTL, and
// concurrent calls for one identity share a single walk: fifty
// connections opened at once by one person cost one Graph walk.
//
// Errors: *UnavailableError (refuse; it also wraps ctx's error when the
// caller gives up first), *NotFoundError (no such identity),
// *ResponseError (for example, the app lacks a Graph permission).
func (c *Client) TransitiveGroups(ctx context.Context, s Subject) ([]Group, error) {
	op := fmt.Sprintf("transitive groups of %s %s", s.Kind, s.ID)
	if s.ID == "" {
		return nil, fmt.Errorf("graph: %s: the subject has no id", op)
	}
	var path string
	tokens := c.tokens
	switch {
	case s.Kind == KindUser && s.Token != nil:
		path, tokens = "/me", s.Token
	case s.Kind == KindUser:
		path = "/users/" + url.PathEscape(s.ID)
	case s.Kind == KindServicePrincipal && s.Token == nil:
		path = "/servicePrincipals/" + url.PathEscape(s.ID)
	default:
		return nil, fmt.Errorf("graph: %s: unsupported subject", op)
	}
	key := s.Kind.String() + "\x00" + strings.ToLower(s.ID)
	groups, err := share(c, c.flights, ctx, key, func(ctx context.Context) ([]Group, error) {
		return c.walkGroups(ctx, op, path, tokens, s)
	}, &shareCache[[]Group]{
		lookup: func() ([]Group, bool) { return c.cachedLocked(key) },
		keep:   func(groups []Group) { c.storeLocked(key, groups) },
	})
	if err != nil {
		if ctx.Err() != nil && !IsUnavailable(err) {
			err = &UnavailableError{Op: op, Err: err}
		}
		return nil, err
	}
	return slices.Clone(groups), nil
}

// flight is one request shared by every caller that asks for the same
// thing while it runs.
type flight[T any] struct {
	done    chan struct{}
	val     T
	err     error
	waiters int
	cancel  context.CancelFunc
}

// shareCache is how share consults and fills a cache, both under c.mu.
type shareCache[T any] struct {
	// lookup answers from the cache, if it can.
	lookup func() (T, bool)
	// keep is given a successful result, unless the flight was forgotten
	// meanwhile.
	keep func(T)
}

// share runs fetch once for all concurrent callers of key in flights.
// The fetch runs detached from the context of the caller who started it,
// so one caller giving up does not fail the others; when the last one
// gives up the fetch is cancelled. With a cache, share looks in it under
// the same lock that a finishing flight fills it under, so a caller that
// arrives just after a flight ends takes its result rather than starting
// another. The result is shared: callers copy what they would change.
func share[T any](c *Client, flights map[string]*flight[T], ctx context.Context, key string, fetch func(context.Context) (T, error), cache *shareCache[T]) (T, error) {
	c.mu.Lock()
	if cache != nil {
		if v, ok := cache.lookup(); ok {
			c.mu.Unlock()
			return v, nil
		}
	}
	f, ok := flights[key]
	if !ok {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), walkTimeout)
		f = &flight[T]{done: make(chan struct{}), cancel: cancel}
		flights[key] = f
		go func() {
			val, err := fetch(fctx)
			cancel()
			c.mu.Lock()
			f.val, f.err = val, err
			// A flight that Forget (or its abandonment) removed must not
			// refill the cache.
			if flights[key] == f {
				delete(flights, key)
				if err == nil && cache != nil {
					cache.keep(val)
				}
			}
			c.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
			if flights[key] == f {
				delete(flights, key)
			}
		}
		c.mu.Unlock()
		var zero T
		return zero, ctx.Err()
	}
}

// Forget drops the cached groups of a subject, so that the next
// TransitiveGroups asks Graph (after a membership change is known, say).
func (c *Client) Forget(s Subject) {
	key := s.Kind.String() + "\x00" + strings.ToLower(s.ID)
	c.mu.Lock()
	delete(c.cache, key)
	delete(c.flights, key)
	c.mu.Unlock()
}

// cachedLocked is the unexpired cache entry under key; the caller holds
// c.mu. The slice is the cache's own.
func (c *Client) cachedLocked(key string) ([]Group, bool) {
	if c.ttl == 0 {
		return nil, false
	}
	e, ok := c.cache[key]
	if !ok || !c.now().Before(e.expires) {
		return nil, false
	}
	return e.groups, true
}

// storeLocked caches groups under key; the caller holds c.mu.
func (c *Client) storeLocked(key string, groups []Group) {
	if c.ttl == 0 {
		return
	}
	now := c.now()
	if len(c.cache) >= sweepAt {
		for k, e := range c.cache {
			if !now.Before(e.expires) {
				delete(c.cache, k)
			}
		}
	}
	c.cache[key] = cacheEntry{groups: groups, expires: now.Add(c.ttl)}
}

// groupPage is one page of a directory-object collection.
type groupPage struct {
	NextLink string `json:"@odata.nextLink"`
	Value    []struct {
		Type        string `json:"@odata.type"`
		ID          string `json:"id"`
		DisplayName string `json:"displayName"`
	} `json:"value"`
}

// walkGroups follows the pages of one transitiveMemberOf query.
func (c *Client) walkGroups(ctx context.Context, op, path string, tokens TokenSource, s Subject) ([]Group, error) {
	next := c.apiURL(path+"/transitiveMemberOf/microsoft.graph.group",
		"$count=true", "$select=id,displayName", "$top=999")
	cl := &call{op: op, tokens: tokens, header: http.Header{"ConsistencyLevel": {"eventual"}}}
	var groups []Group
	seen := map[string]bool{}
	for pages := 0; next != ""; pages++ {
		if pages == maxPages {
			return nil, fmt.Errorf("graph: %s: more than %d pages", op, maxPages)
		}
		var page groupPage
		if err := c.getJSON(ctx, cl, next, s.Kind.String(), s.ID, &page); err != nil {
			return nil, err
		}
		for _, v := range page.Value {
			if v.Type != "" && v.Type != "#microsoft.graph.group" {
				continue
			}
			if v.ID == "" || seen[v.ID] {
				continue
			}
			seen[v.ID] = true
			groups = append(groups, Group{ID: v.ID, DisplayName: v.DisplayName})
		}
		next = ""
		if page.NextLink != "" {
			u, err := c.resolve(page.NextLink)
			if err != nil {
				return nil, fmt.Errorf("graph: %s: nextLink: %w", op, err)
			}
			next = u.String()
		}
	}
	slices.SortFunc(groups, func(a, b Group) int {
		if c := strings.Compare(a.DisplayName, b.DisplayName); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return groups, nil
}

// IsUnavailable reports whether err means Graph could not answer, the
// case in which a caller must refuse rather than decide.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}

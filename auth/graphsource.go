package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
)

// AccountChecker is what a GroupSource may also offer: whether an
// identity's account still exists and is enabled. A sign-in reused by
// session key or address grace is checked with it, so that disabling
// someone in Entra ID ends the reuse at once rather than when the key
// expires.
type AccountChecker interface {
	AccountEnabled(ctx context.Context, id Identity) (bool, error)
}

// ErrNotFound marks a directory answer that the identity does not exist
// (deleted since it signed in). GroupSource implementations wrap it.
var ErrNotFound = errors.New("not found in the directory")

// NewGraphClient builds the Microsoft Graph client for a provider. When the
// provider has a client secret or certificate, the client gets app-only
// tokens with it (client-credentials grant); without one it can only read
// groups with a signed-in user's own token (delegated Graph mode).
func NewGraphClient(pc config.Provider, hc *http.Client) (*graph.Client, error) {
	endpoint := strings.TrimRight(pc.GraphEndpoint, "/")
	if endpoint == "" {
		endpoint = config.DefaultGraphEndpoint
	}
	opts := graph.Options{Endpoint: endpoint, HTTPClient: hc, CacheTTL: pc.GroupCacheTTL}
	var cred *confidential.Credential
	switch {
	case pc.ClientSecret.IsSet():
		c, err := confidential.NewCredFromSecret(pc.ClientSecret.Reveal())
		if err != nil {
			return nil, fmt.Errorf("provider %q client secret: %w", pc.Name, err)
		}
		cred = &c
	case pc.ClientCertificate != nil:
		c, err := confidential.NewCredFromCert(pc.ClientCertificate.Chain, pc.ClientCertificate.Key)
		if err != nil {
			return nil, fmt.Errorf("provider %q client certificate: %w", pc.Name, err)
		}
		cred = &c
	}
	if cred != nil {
		host := strings.TrimRight(pc.AuthorityHost, "/")
		if host == "" {
			host = config.DefaultAuthorityHost
		}
		u, err := url.Parse(host)
		if err != nil {
			return nil, fmt.Errorf("provider %q authority_host: %w", pc.Name, err)
		}
		tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
			Authority:                host + "/" + pc.TenantID,
			ClientID:                 pc.ClientID,
			Credential:               *cred,
			Endpoint:                 endpoint,
			HTTPClient:               hc,
			DisableInstanceDiscovery: !microsoftClouds[strings.ToLower(u.Hostname())],
		})
		if err != nil {
			return nil, fmt.Errorf("provider %q app-only Graph tokens: %w", pc.Name, err)
		}
		opts.Tokens = tokens
	}
	c, err := graph.New(opts)
	if err != nil {
		return nil, fmt.Errorf("provider %q Graph client: %w", pc.Name, err)
	}
	return c, nil
}

// GraphGroups is the GroupSource (and ServicePrincipalFinder and
// AccountChecker) backed by a Microsoft Graph client.
type GraphGroups struct {
	Client *graph.Client
	// AppOnly says the client has app-only tokens; without them only
	// delegated group reads work and account checks are skipped.
	AppOnly bool
	// AccountTTL is how long an account's state (enabled, disabled) is
	// remembered, like its groups; 0 asks Graph every time. Rechecks of
	// open sessions always ask afresh (ForgetGroups).
	AccountTTL time.Duration

	mu       sync.Mutex
	accounts map[string]accountState
	lookups  sharedCalls[string, bool]
	now      func() time.Time // time.Now; tests may stop the clock
}

// accountState is an account's answer from Graph and when it came.
type accountState struct {
	enabled bool
	at      time.Time
}

// NewGraphGroupSource is the default GroupSource of a provider: Microsoft
// Graph reached through hc.
func NewGraphGroupSource(pc config.Provider, hc *http.Client) (*GraphGroups, error) {
	c, err := NewGraphClient(pc, hc)
	if err != nil {
		return nil, err
	}
	return &GraphGroups{Client: c, AppOnly: hasAppCredential(pc), AccountTTL: pc.GroupCacheTTL}, nil
}

// TransitiveGroups implements GroupSource.
func (g *GraphGroups) TransitiveGroups(ctx context.Context, who GroupSubject) ([]Group, error) {
	s := graph.Subject{Kind: graph.KindUser, ID: who.ObjectID}
	if who.Kind == KindServicePrincipal {
		s.Kind = graph.KindServicePrincipal
	} else if who.Token != "" {
		token := who.Token
		s.Token = graph.TokenFunc(func(context.Context) (string, error) { return token, nil })
	}
	if s.Token == nil && !g.AppOnly {
		return nil, fmt.Errorf("groups of %s %s: no client secret or certificate is configured for app-only Graph reads", who.Kind, who.ObjectID)
	}
	groups, err := g.Client.TransitiveGroups(ctx, s)
	if err != nil {
		return nil, classifyGraphError(err)
	}
	out := make([]Group, len(groups))
	for i, gr := range groups {
		out[i] = Group{ID: gr.ID, DisplayName: gr.DisplayName}
	}
	return out, nil
}

// ResolveGroups implements GroupSource: object ids are confirmed to
// exist, display names must match exactly one group.
func (g *GraphGroups) ResolveGroups(ctx context.Context, names []string) (map[string]string, error) {
	if !g.AppOnly {
		// Nothing to look names up with before anyone signs in: object ids
		// are taken as written, display names are an error.
		out := map[string]string{}
		var bad []string
		for _, n := range names {
			if isObjectID(n) {
				out[n] = n
			} else {
				bad = append(bad, fmt.Sprintf("%q", n))
			}
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("group names %s cannot be resolved without a client secret or certificate (app-only Graph access); give object ids instead", strings.Join(bad, ", "))
		}
		return out, nil
	}
	got, err := g.Client.ResolveGroups(ctx, names)
	if err != nil {
		return nil, classifyGraphError(err)
	}
	out := make(map[string]string, len(got))
	for ref, gr := range got {
		out[ref] = gr.ID
	}
	return out, nil
}

// ServicePrincipalByName implements ServicePrincipalFinder.
func (g *GraphGroups) ServicePrincipalByName(ctx context.Context, displayName string) (ServicePrincipal, error) {
	sp, err := g.Client.ServicePrincipalByName(ctx, displayName)
	if err != nil {
		return ServicePrincipal{}, classifyGraphError(err)
	}
	return ServicePrincipal{ObjectID: sp.ID, AppID: sp.AppID, DisplayName: sp.DisplayName}, nil
}

// AccountEnabled implements AccountChecker. Without app-only tokens it
// cannot look anyone up and reports true: the check is then left to
// Entra ID at the next interactive sign-in.
//
// Answers are remembered for AccountTTL, so that a pool reconnecting with
// a session key costs Graph one lookup per TTL rather than one per
// connection (and waits for none): the same bound as the group cache puts
// on how late a change in the directory is seen by new connections. A
// failed lookup is never remembered. Callers asking about one account at
// once share a single lookup.
func (g *GraphGroups) AccountEnabled(ctx context.Context, id Identity) (bool, error) {
	if !g.AppOnly {
		return true, nil
	}
	key := accountKey(id.Kind, id.ObjectID)
	enabled, err := g.lookups.do(ctx, &g.mu, key,
		func() (bool, bool) { return g.cachedAccountLocked(key) },
		func() (bool, error) { return g.lookupAccount(ctx, id) },
		func(enabled bool) bool { g.rememberLocked(key, enabled); return enabled })
	if err != nil && err == ctx.Err() {
		// A wait for another caller's lookup cut short, reported as the
		// lookup itself reports one.
		err = classifyGraphError(&graph.UnavailableError{Op: "look up the account of " + id.Name(), Err: err})
	}
	return enabled, err
}

// lookupAccount asks Graph whether the account is enabled.
func (g *GraphGroups) lookupAccount(ctx context.Context, id Identity) (bool, error) {
	if id.Kind == KindServicePrincipal {
		sp, err := g.Client.ServicePrincipalByAppID(ctx, id.AppID)
		if err != nil {
			return false, classifyGraphError(err)
		}
		return sp.AccountEnabled, nil
	}
	u, err := g.Client.User(ctx, id.ObjectID)
	if err != nil {
		return false, classifyGraphError(err)
	}
	return u.AccountEnabled, nil
}

func accountKey(kind Kind, objectID string) string {
	return string(kind) + "\x00" + strings.ToLower(objectID)
}

func (g *GraphGroups) clock() time.Time {
	if g.now != nil {
		return g.now()
	}
	return time.Now()
}

// cachedAccountLocked is the remembered state of the account under key,
// if it is recent enough; the caller holds g.mu.
func (g *GraphGroups) cachedAccountLocked(key string) (enabled, ok bool) {
	if g.AccountTTL <= 0 {
		return false, false
	}
	st, ok := g.accounts[key]
	if !ok || g.clock().Sub(st.at) >= g.AccountTTL {
		return false, false
	}
	return st.enabled, true
}

// rememberLocked remembers the account's state; the caller holds g.mu.
func (g *GraphGroups) rememberLocked(key string, enabled bool) {
	if g.AccountTTL <= 0 {
		return
	}
	if g.accounts == nil {
		g.accounts = map[string]accountState{}
	}
	now := g.clock()
	if len(g.accounts) >= maxRememberedAccounts {
		for k, st := range g.accounts {
			if now.Sub(st.at) >= g.AccountTTL {
				delete(g.accounts, k)
			}
		}
	}
	g.accounts[key] = accountState{enabled: enabled, at: now}
}

// maxRememberedAccounts is when remembering one more account first sweeps
// out the expired ones.
const maxRememberedAccounts = 4096

// forgetAccount drops what is remembered of an account.
func (g *GraphGroups) forgetAccount(kind Kind, objectID string) {
	key := accountKey(kind, objectID)
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.accounts, key)
	// A lookup still running may have read the directory before the
	// change that this forgetting is for: later callers ask afresh.
	g.lookups.forget(key)
}

// classifyGraphError marks graph's typed errors with this package's
// sentinels, keeping the cause.
func classifyGraphError(err error) error {
	var nf *graph.NotFoundError
	switch {
	case graph.IsUnavailable(err):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case errors.As(err, &nf):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
)

// Deps are what an Authorizer needs besides its configuration. Zero
// values pick working defaults.
type Deps struct {
	// Logger receives background events only (JWKS refreshes, sign-ins
	// completed in the background); per-connection audit events are the
	// caller's, built from the Decision or the refusal. Default: no-op.
	Logger *zap.Logger
	// HTTPClients by provider name reach the authority and Graph. Default:
	// HTTPClientFor(provider), which trusts the provider's CAFile if set.
	HTTPClients map[string]*http.Client
	// Groups by provider name read group membership. Default: a Microsoft
	// Graph client for the provider (NewGraphGroupSource).
	Groups map[string]GroupSource
	// Sessions keeps session keys and address-grace records. Default: a
	// MemorySessionStore. Replicas share them through a shared store
	// (internal/store on PostgreSQL).
	Sessions SessionStore
	// PendingSignIns shares error-mode sign-ins in progress with other
	// replicas. Default: Sessions, if it is a PendingSignInStore (give it
	// explicitly when Sessions is wrapped, say for metrics); otherwise
	// they stay in this process.
	PendingSignIns PendingSignInStore
	// TOTP checks TOTP codes for resources with require_totp (*mfa.TOTP
	// on the state store). It has no default: New refuses a configuration
	// with such a resource and no TOTP.
	TOTP TOTPVerifier
	// Now is the clock for session expiry, address grace, the service
	// principal cache and token validation. Default: time.Now.
	Now func() time.Time
	// ServicePrincipalCacheTTL overrides service_principals.cache_ttl
	// (default DefaultServicePrincipalCacheTTL).
	ServicePrincipalCacheTTL time.Duration
	// Lockout counts wrong service-principal secrets toward the TOTP
	// lockout. Default: TOTP, if it implements Lockout; otherwise wrong
	// secrets are refused without being counted.
	Lockout Lockout
	// AccessKeys keeps the access keys admins make. Default: Sessions, if
	// it implements AccessKeyStore; otherwise access keys are refused.
	AccessKeys AccessKeyStore
}

// Authorizer decides who may use which resource. Create it with New, call
// Start once, then Decide from any number of goroutines; Close ends the
// background work.
type Authorizer struct {
	log        *zap.Logger
	now        func() time.Time
	store      SessionStore
	pending    PendingSignInStore // nil: error-mode sign-ins stay in this process
	totp       TOTPVerifier
	providers  map[string]*provider
	rcfg       []config.Resource
	aliases    map[string]string // lower-case login → lower-case UPN
	sessionTTL time.Duration
	grace      time.Duration
	spCache    *spCache
	lockout    Lockout        // nil: wrong secrets are not counted
	keys       AccessKeyStore // nil: access keys are refused

	started atomic.Bool
	admin   config.Admin
	policy  atomic.Pointer[policy] // set by Start, replaced by Reload (admin.go)

	// bg bounds background work: error-mode polling, store cleanup.
	bg       context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup

	flowMu      sync.Mutex
	flows       map[flowKey]*flow
	activePolls atomic.Int64
}

// New checks the configuration and prepares an Authorizer. It makes no
// network calls; Start does.
func New(cfg *config.Config, deps Deps) (*Authorizer, error) {
	if cfg == nil {
		return nil, errors.New("auth: no configuration")
	}
	if len(cfg.Providers) == 0 {
		return nil, errors.New("auth: no providers configured")
	}
	a := &Authorizer{
		log:        deps.Logger,
		now:        deps.Now,
		store:      deps.Sessions,
		totp:       deps.TOTP,
		providers:  map[string]*provider{},
		rcfg:       cfg.Resources,
		admin:      cfg.Admin,
		aliases:    map[string]string{},
		sessionTTL: cfg.Sessions.TTL,
		flows:      map[flowKey]*flow{},
	}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.store == nil {
		a.store = NewMemorySessionStore()
	}
	a.pending = deps.PendingSignIns
	if a.pending == nil {
		a.pending, _ = a.store.(PendingSignInStore)
	}
	// config.Load fills the defaults; a Config built by hand gets the same
	// ones here. An address grace of zero turns it off.
	a.grace = cfg.Sessions.Grace()
	if a.sessionTTL <= 0 {
		a.sessionTTL = config.DefaultSessionTTL
	}
	for login, upn := range cfg.Sessions.Aliases {
		a.aliases[strings.ToLower(login)] = strings.ToLower(upn)
	}
	a.lockout = deps.Lockout
	if a.lockout == nil {
		a.lockout, _ = deps.TOTP.(Lockout)
	}
	a.keys = deps.AccessKeys
	if a.keys == nil {
		a.keys, _ = a.store.(AccessKeyStore)
	}
	ttl := deps.ServicePrincipalCacheTTL
	if ttl == 0 {
		ttl = cfg.ServicePrincipals.CacheTTL
	}
	if ttl <= 0 {
		ttl = DefaultServicePrincipalCacheTTL
	}
	var err error
	if a.spCache, err = newSPCache(ttl); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	for _, pc := range cfg.Providers {
		if _, dup := a.providers[pc.Name]; dup {
			return nil, fmt.Errorf("auth: provider %q is configured twice", pc.Name)
		}
		hc := deps.HTTPClients[pc.Name]
		if hc == nil {
			if hc, err = HTTPClientFor(pc); err != nil {
				return nil, fmt.Errorf("auth: %w", err)
			}
		}
		gs := deps.Groups[pc.Name]
		if gs == nil {
			gg, err := NewGraphGroupSource(pc, hc)
			if err != nil {
				return nil, fmt.Errorf("auth: %w", err)
			}
			gs = gg
		}
		p, err := newProvider(pc, hc, gs)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		a.providers[pc.Name] = p
	}
	for _, r := range cfg.Resources {
		if _, err := a.providerFor(r); err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		if r.RequireTOTP && a.totp == nil {
			return nil, fmt.Errorf("auth: resource %q requires TOTP, and no TOTP verifier (state store) was given", r.Name)
		}
	}
	a.bg, a.bgCancel = context.WithCancel(context.Background())
	return a, nil
}

// providerFor is the provider a resource names, or the only one.
func (a *Authorizer) providerFor(r config.Resource) (*provider, error) {
	if r.Provider == "" {
		if len(a.providers) == 1 {
			for _, p := range a.providers {
				return p, nil
			}
		}
		return nil, fmt.Errorf("resource %q names no provider and %d are configured", r.Name, len(a.providers))
	}
	p, ok := a.providers[r.Provider]
	if !ok {
		return nil, fmt.Errorf("resource %q: provider %q is not configured", r.Name, r.Provider)
	}
	return p, nil
}

// Start fetches each provider's discovery documents and signing keys and
// resolves the group display names in the resources and admin.groups to
// object ids via Graph. An unknown or ambiguous group name is an error naming it. It also
// starts the cleanup of expired session keys, which runs until Close.
func (a *Authorizer) Start(ctx context.Context) error {
	if a.started.Load() {
		return errors.New("auth: already started")
	}
	for _, p := range a.providers {
		if err := p.tokens.load(ctx, a.now()); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	pol, err := a.resolvePolicy(ctx, a.rcfg, a.admin)
	if err != nil {
		return err
	}
	a.policy.Store(pol)
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("auth: already started")
	}
	a.bgWG.Add(1)
	go func() {
		defer a.bgWG.Done()
		a.expireSignIns()
	}()
	return nil
}

// expireSignIns removes expired session keys and grace records every
// minute until Close.
func (a *Authorizer) expireSignIns() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-a.bg.Done():
			return
		case <-t.C:
			n, err := a.store.DeleteExpiredSignIns(a.bg, a.now())
			if err != nil {
				a.log.Warn("could not remove expired sign-ins", logging.Event("auth.sessions.expire_failed"), zap.Error(err))
			} else if n > 0 {
				a.log.Debug("removed expired sign-ins", logging.Event("auth.sessions.expired"), zap.Int("count", n))
			}
		}
	}
}

// Close stops background polling and cleanup and waits for them.
func (a *Authorizer) Close() error {
	a.bgCancel()
	a.bgWG.Wait()
	return nil
}

// Decide proves who is connecting and decides whether they may use the
// resource they asked for. It returns a *Decision, or an error that is a
// *Refusal, a *TOTPRequired (the resource needs a TOTP code this
// connection did not give) or (error prompt mode) a *SignInPending. See
// the package documentation for the methods and the rules.
func (a *Authorizer) Decide(ctx context.Context, req Request) (*Decision, error) {
	if !a.started.Load() {
		return nil, &Refusal{Reason: ReasonUnavailable, Message: "portcullis is still starting; try again shortly", Err: errors.New("auth: Decide before Start")}
	}
	res, ok := a.resourceFor(req)
	if ok && req.Protocol != "" && res.cfg.Protocol != "" && req.Protocol != res.cfg.Protocol {
		// A PostgreSQL resource does not exist as far as a MySQL client is
		// concerned, and the other way round.
		ok = false
	}
	if !ok {
		return nil, &Refusal{Reason: ReasonUnknownResource, Message: fmt.Sprintf("there is no resource called %q", req.Resource)}
	}
	p := res.provider
	receivedAt := req.ReceivedAt
	if receivedAt.IsZero() {
		receivedAt = a.now()
	}
	if strings.TrimSpace(req.LoginName) == "" {
		return nil, &Refusal{Reason: ReasonBadCredentials, Message: "no user name was given"}
	}

	pw := ParsePassword(req.Password)
	if req.Scramble != nil {
		// The scramble is the credential; whatever else came is not.
		pw = Password{Kind: CredentialNone}
		if res.cfg.RequireTOTP {
			return nil, &Refusal{
				Reason:  ReasonNotAllowed,
				Message: fmt.Sprintf("%q requires a TOTP code, which a session key proven without TLS cannot carry; connect with TLS", req.Resource),
			}
		}
	}
	var (
		id         Identity
		method     Method
		graphToken string
		fresh      bool // an interactive sign-in just completed
		homeAcct   string
		keyID      string   // the access key that proved the identity
		tokenAud   []string // audiences of a presented token
		err        error
	)
	_, _, isSP := servicePrincipalLogin(req.LoginName)
	if isSP && pw.Kind == CredentialAccessToken && !strings.HasPrefix(pw.Credential, "eyJ") {
		// A client secret may happen to have two dots; a JWT always starts
		// with an encoded '{"'.
		pw = Password{Kind: CredentialNone}
	}
	if isSP && pw.Kind == CredentialAccessKey && !wellFormedAccessKey(pw.Credential) {
		// Likewise a secret may start like an access key.
		pw = Password{Kind: CredentialNone}
	}
	if isSP && res.cfg.RequireTOTP && pw.Kind != CredentialAccessToken {
		// Refused before asking Entra: a program has no authenticator.
		return nil, &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%q requires a TOTP code, which a service principal cannot give", req.Resource),
		}
	}
	switch {
	case req.Scramble != nil:
		// Only a session key can match, and nothing else is tried: no
		// device code, no address grace.
		method = MethodSessionKey
		id, graphToken, homeAcct, err = a.scrambleSignIn(ctx, p, req.LoginName, *req.Scramble)
	case pw.Kind == CredentialAccessToken:
		method = MethodAccessToken
		id, tokenAud, err = a.checkToken(ctx, p, pw.Credential, req.LoginName)
		if err == nil {
			err = a.checkLogin(req.LoginName, id)
		}
	case pw.Kind == CredentialAccessKey:
		method = MethodAccessKey
		id, keyID, err = a.accessKeySignIn(ctx, p, res, req.LoginName, pw.Credential)
	case isSP:
		// The whole password is the secret, whatever it looks like.
		method = MethodServicePrincipal
		// Its groups are read with the app-only token: Graph's /me is for
		// people.
		id, err = a.servicePrincipalSignIn(ctx, p, req.LoginName, req.Password)
	case pw.Kind == CredentialSessionKey:
		method = MethodSessionKey
		id, graphToken, homeAcct, err = a.sessionKeySignIn(ctx, p, req.LoginName, pw.Credential)
	default:
		var reused bool
		id, graphToken, homeAcct, reused, err = a.addressGraceSignIn(ctx, p, req)
		if reused {
			method = MethodAddressGrace
			break
		}
		if err != nil {
			return nil, err
		}
		method = MethodDeviceCode
		var sr signInResult
		sr, err = a.deviceCodeSignIn(ctx, p, req)
		id, graphToken, homeAcct, fresh = sr.identity, sr.graphToken, sr.homeAccountID, err == nil
	}
	if err != nil {
		return nil, err
	}

	if method == MethodSessionKey || method == MethodAddressGrace {
		if err := a.checkAccount(ctx, p, id); err != nil {
			return nil, err
		}
	}
	groups, err := p.groups.TransitiveGroups(ctx, GroupSubject{Kind: id.Kind, ObjectID: id.ObjectID, Token: graphToken})
	if err != nil {
		return nil, directoryRefusal(id, "read the groups of", err)
	}
	granted, err := res.authorize(id, groups)
	if err != nil {
		return nil, err
	}
	backend := granted.backend
	if granted.entra {
		backend, err = a.entraBackend(ctx, p, res, entraSource{
			method: method, id: id, presented: pw.Credential, presentedAud: tokenAud,
			homeAccount: homeAcct, secret: req.Password,
		})
		if err != nil {
			return nil, err
		}
	}
	d := &Decision{
		Identity:    id,
		Method:      method,
		Groups:      groups,
		Matched:     granted.matched,
		Resource:    res.cfg.Name,
		Backend:     backend,
		AccessKeyID: keyID,
		homeAccount: homeAcct,
	}
	// The TOTP code is looked at only now, with the identity proven and
	// allowed in: an unauthenticated caller learns nothing from it.
	var need *TOTPRequired
	if res.cfg.RequireTOTP {
		err := a.checkTOTP(ctx, totpCheck{
			res: res, id: id, method: method, fresh: fresh, code: pw.TOTP, at: receivedAt,
			sameAddress: req.ClientAddr.IsValid(),
		})
		if err != nil && !errors.As(err, &need) {
			return nil, err
		}
		d.TOTPVerified = err == nil
	}
	if fresh {
		// A person asked to come back with a code gets the key to come
		// back with.
		key, expires, err := a.issueSessionKey(ctx, req, id, homeAcct)
		if err != nil {
			return nil, err
		}
		d.SessionKey, d.SessionKeyExpires = key, expires
	}
	if need != nil {
		need.SessionKey, need.SessionKeyExpires = d.SessionKey, d.SessionKeyExpires
		return nil, need
	}
	return d, nil
}

// checkLogin enforces the first identity rule: who signed in must be who
// the client named at login. People match on UPN case-insensitively (or
// through an alias); service principals on app id or display name.
func (a *Authorizer) checkLogin(login string, id Identity) error {
	if a.loginMatches(login, id) {
		return nil
	}
	return &Refusal{
		Reason:  ReasonIdentityMismatch,
		Message: fmt.Sprintf("signed in as %s, but connected as %s", id.Name(), login),
	}
}

func (a *Authorizer) loginMatches(login string, id Identity) bool {
	l := strings.ToLower(login)
	switch id.Kind {
	case KindServicePrincipal:
		if appID, name, ok := servicePrincipalLogin(login); ok {
			if appID != "" {
				return strings.EqualFold(appID, id.AppID)
			}
			return name == id.DisplayName
		}
		return false
	default:
		if id.UPN == "" {
			return false
		}
		upn := strings.ToLower(id.UPN)
		if l == upn {
			return true
		}
		alias, ok := a.aliases[l]
		return ok && alias == upn
	}
}

// sessionKeySignIn accepts a session key issued earlier, for the same
// login name only.
func (a *Authorizer) sessionKeySignIn(ctx context.Context, p *provider, login, key string) (id Identity, graphToken, homeAccount string, err error) {
	bad := &Refusal{
		Reason:  ReasonBadCredentials,
		Message: fmt.Sprintf("the session key presented for %s is not valid (it may have expired); connect with any other password to sign in again", login),
	}
	if mistypedCode(key, wellFormedSessionKey) {
		return Identity{}, "", "", mistypedCodeRefusal("session key", login)
	}
	if !wellFormedSessionKey(key) {
		bad.Err = errors.New("malformed session key")
		return Identity{}, "", "", bad
	}
	// Keys are stored under their verifier; a key stored by an older
	// portcullis, under the SHA-256 of the key, is still found by its
	// text until it expires.
	var (
		rec SignInRecord
		ok  bool
		h   KeyHash
	)
	for _, h = range []KeyHash{sessionKeyVerifier(key), hashKey(key)} {
		var err error
		if rec, ok, err = a.store.GetSignIn(ctx, h); err != nil {
			return Identity{}, "", "", storeRefusal(login, err)
		}
		if ok {
			break
		}
	}
	if !ok {
		bad.Err = errors.New("no such session key")
		return Identity{}, "", "", bad
	}
	return a.reuseSessionKey(ctx, p, login, h, rec, bad)
}

// reuseSessionKey accepts the record of a session key stored under h for
// login, unless it has expired (then it is removed), belongs to another
// provider or identity, or the person's Graph token cannot be had again;
// bad is the refusal for a key that is not good.
func (a *Authorizer) reuseSessionKey(ctx context.Context, p *provider, login string, h KeyHash, rec SignInRecord, bad *Refusal) (id Identity, graphToken, homeAccount string, err error) {
	if !a.now().Before(rec.ExpiresAt) {
		_ = a.store.DeleteSignIn(ctx, h)
		bad.Err = errors.New("session key expired")
		return Identity{}, "", "", bad
	}
	if rec.Identity.Provider != p.name || !a.loginMatches(login, rec.Identity) {
		// Someone else's key, or a key from another directory: refused as
		// a bad password (28P01) without saying whose key it is.
		bad.Err = errors.New("session key issued to another identity")
		return Identity{}, "", "", bad
	}
	token, err := a.delegatedToken(ctx, p, rec.HomeAccountID)
	if err != nil {
		return Identity{}, "", "", &Refusal{
			Reason:  ReasonBadCredentials,
			Message: fmt.Sprintf("the session key of %s can no longer be used to read their groups; connect with any other password to sign in again", login),
			Err:     err,
		}
	}
	return rec.Identity, token, rec.HomeAccountID, nil
}

// addressGraceSignIn reuses a sign-in by the same login from the same
// address within sessions.address_grace. reused is false (and err nil)
// when there is nothing to reuse.
func (a *Authorizer) addressGraceSignIn(ctx context.Context, p *provider, req Request) (id Identity, graphToken, homeAccount string, reused bool, err error) {
	if a.grace <= 0 || !req.ClientAddr.IsValid() {
		return Identity{}, "", "", false, nil
	}
	rec, ok, err := a.store.GetSignIn(ctx, graceHash(p.name, req.LoginName, req.ClientAddr))
	if err != nil {
		return Identity{}, "", "", false, storeRefusal(req.LoginName, err)
	}
	if !ok || !a.now().Before(rec.ExpiresAt) || rec.ClientAddr.Unmap() != req.ClientAddr.Unmap() ||
		rec.Identity.Provider != p.name || !a.loginMatches(req.LoginName, rec.Identity) {
		return Identity{}, "", "", false, nil
	}
	token, err := a.delegatedToken(ctx, p, rec.HomeAccountID)
	if err != nil {
		// The user's Graph token cannot be had again: sign in afresh.
		return Identity{}, "", "", false, nil
	}
	return rec.Identity, token, rec.HomeAccountID, true, nil
}

// recordGrace remembers a sign-in for address grace as soon as it is
// proven (before any connection collects it, so that several connections
// coming back at once all find it), whatever the resource's policy says:
// a person who picks another resource next does not sign in again.
func (a *Authorizer) recordGrace(ctx context.Context, p *provider, login string, addr netip.Addr, id Identity, homeAcct string) error {
	if a.grace <= 0 || !addr.IsValid() {
		return nil
	}
	now := a.now()
	rec := SignInRecord{Identity: id, LoginName: login, ClientAddr: addr, SignedInAt: now, ExpiresAt: now.Add(a.grace), HomeAccountID: homeAcct}
	return a.store.PutSignIn(ctx, graceHash(p.name, login, addr), rec)
}

// issueSessionKey makes a session key for a fresh sign-in and stores it
// under its verifier.
func (a *Authorizer) issueSessionKey(ctx context.Context, req Request, id Identity, homeAcct string) (string, time.Time, error) {
	key, err := newSessionKey()
	if err != nil {
		return "", time.Time{}, &Refusal{Reason: ReasonUnavailable, Message: fmt.Sprintf("a session key for %s could not be made", id.Name()), Err: err}
	}
	now := a.now()
	rec := SignInRecord{
		Identity: id, LoginName: req.LoginName, ClientAddr: req.ClientAddr, SignedInAt: now, ExpiresAt: now.Add(a.sessionTTL), HomeAccountID: homeAcct,
		// Listed for scrambles under the name every login that may use
		// the key leads to (loginMatches).
		ScrambleUser: strings.ToLower(id.UPN),
	}
	if err := a.store.PutSignIn(ctx, sessionKeyVerifier(key), rec); err != nil {
		return "", time.Time{}, storeRefusal(id.Name(), err)
	}
	return key, rec.ExpiresAt, nil
}

// checkAccount refuses a reused sign-in of an identity that has since been
// disabled or deleted, when the group source can tell.
func (a *Authorizer) checkAccount(ctx context.Context, p *provider, id Identity) error {
	ac, ok := p.groups.(AccountChecker)
	if !ok {
		return nil
	}
	enabled, err := ac.AccountEnabled(ctx, id)
	if err != nil {
		return directoryRefusal(id, "check the account of", err)
	}
	if !enabled {
		return &Refusal{Reason: ReasonDisabled, Message: fmt.Sprintf("the account of %s is disabled", id.Name())}
	}
	return nil
}

// directoryRefusal turns a failed directory lookup into a refusal: the
// directory unreachable, the identity gone, or any other failure — never
// an allow.
func directoryRefusal(id Identity, what string, err error) error {
	switch {
	case IsUnavailable(err):
		return &Refusal{
			Reason:  ReasonUnavailable,
			Message: fmt.Sprintf("Microsoft Graph could not be reached to %s %s; try again later", what, id.Name()),
			Err:     err,
		}
	case errors.Is(err, ErrNotFound):
		return &Refusal{
			Reason:  ReasonDisabled,
			Message: fmt.Sprintf("%s no longer exists in the directory", id.Name()),
			Err:     err,
		}
	}
	return &Refusal{
		Reason:  ReasonUnavailable,
		Message: fmt.Sprintf("portcullis could not %s %s in Microsoft Graph", what, id.Name()),
		Err:     err,
	}
}

func storeRefusal(who string, err error) error {
	return &Refusal{
		Reason:  ReasonUnavailable,
		Message: fmt.Sprintf("the sign-in store could not be reached for %s; try again later", who),
		Err:     fmt.Errorf("session store: %w", err),
	}
}

func dedupe(list []string) []string {
	seen := map[string]bool{}
	out := list[:0:0]
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/internal/logging"
)

// Limits on device-code sign-ins in progress, so that connections naming
// made-up users cannot make portcullis poll Entra without bound.
const (
	maxPendingFlows        = 1024
	maxPendingFlowsPerAddr = 16
	// finishedFlowRetention is how long the outcome of a background
	// (error-mode) sign-in waits for the reconnect that collects it.
	finishedFlowRetention = 5 * time.Minute
	// storeTimeout bounds a store write made in the background.
	storeTimeout = 10 * time.Second
)

// flowKey identifies one person's sign-in from one place: a reconnect by
// the same login name from the same address finds the flow it started.
type flowKey struct {
	provider string
	login    string // lower case
	addr     netip.Addr
}

// flow is one device-code sign-in, shared by every connection with the
// same key (single flight).
type flow struct {
	key    flowKey
	cancel context.CancelFunc

	ready    chan struct{} // closed when prompt or startErr is set
	prompt   DeviceCodePrompt
	startErr error

	done chan struct{} // closed when result or err is set
	res  signInResult
	err  error

	// Guarded by Authorizer.flowMu.
	waiters    int  // notice-mode connections waiting on this flow
	detached   bool // an error-mode connection relies on background polling
	finishedAt time.Time

	// shared: the outcome was shared with other replicas (set before done
	// is closed), so collecting it here takes it from the store.
	shared bool
}

// signInResult is what a completed interactive sign-in proved.
type signInResult struct {
	identity Identity
	// graphToken is the user's own Graph token (delegated mode only); it
	// lives in memory for the length of one decision.
	graphToken    string
	homeAccountID string
}

func (f *flow) isDone() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// deviceCodeSignIn proves a person's identity with a device-code sign-in,
// in the prompt mode the request asks for.
func (a *Authorizer) deviceCodeSignIn(ctx context.Context, p *provider, req Request) (signInResult, error) {
	if req.Mode != PromptError && req.Prompt == nil {
		return signInResult{}, &Refusal{
			Reason:  ReasonUnavailable,
			Message: fmt.Sprintf("portcullis cannot show a sign-in prompt to %s on this connection", req.LoginName),
			Err:     errors.New("notice mode without a Prompt callback"),
		}
	}
	key := flowKey{provider: p.name, login: strings.ToLower(req.LoginName), addr: req.ClientAddr}
	if req.Mode == PromptError {
		// A flow another replica runs for this person, shared through the
		// store.
		if res, handled, err := a.sharedFlow(ctx, p, key, req.LoginName); handled {
			return res, err
		}
	}
	f, err := a.joinFlow(p, key, req.LoginName, req.Mode == PromptError)
	if err != nil {
		return signInResult{}, err
	}
	if req.Mode == PromptError {
		res, err := a.collectFlow(ctx, f)
		if errors.Is(err, errCollectedElsewhere) {
			// A reconnect to another replica took the outcome: this is a
			// later connection, which signs in afresh.
			if f, err = a.joinFlow(p, key, req.LoginName, true); err != nil {
				return signInResult{}, err
			}
			return a.collectFlow(ctx, f)
		}
		return res, err
	}
	defer a.leaveFlow(f)

	select {
	case <-f.ready:
	case <-ctx.Done():
		return signInResult{}, cancelled(req.LoginName, ctx.Err())
	}
	if f.startErr != nil {
		a.forgetFlow(f)
		return signInResult{}, f.startErr
	}
	if !f.isDone() {
		if err := req.Prompt(f.prompt); err != nil {
			return signInResult{}, &Refusal{
				Reason:  ReasonDeclined,
				Message: fmt.Sprintf("the sign-in instructions could not be shown to %s", req.LoginName),
				Err:     fmt.Errorf("prompt: %w", err),
			}
		}
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return signInResult{}, cancelled(req.LoginName, ctx.Err())
	}
	a.forgetFlow(f)
	return f.res, f.err
}

// collectFlow is the error-mode half: answer at once with the code while
// the flow is pending, or with its outcome once it has one.
func (a *Authorizer) collectFlow(ctx context.Context, f *flow) (signInResult, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return signInResult{}, cancelled(f.key.login, ctx.Err())
	}
	if f.startErr != nil {
		a.forgetFlow(f)
		return signInResult{}, f.startErr
	}
	if !f.isDone() {
		return signInResult{}, &SignInPending{Prompt: f.prompt}
	}
	a.forgetFlow(f)
	if err := a.collectShared(ctx, f); err != nil {
		return signInResult{}, err
	}
	return f.res, f.err
}

func cancelled(login string, err error) error {
	return &Refusal{
		Reason:  ReasonDeclined,
		Message: fmt.Sprintf("the sign-in of %s was abandoned", login),
		Err:     err,
	}
}

// joinFlow returns the flow for key, starting one if there is none.
func (a *Authorizer) joinFlow(p *provider, key flowKey, login string, detached bool) (*flow, error) {
	a.flowMu.Lock()
	defer a.flowMu.Unlock()
	a.sweepFlowsLocked()
	f := a.flows[key]
	if f == nil {
		pending, fromAddr := 0, 0
		for _, g := range a.flows {
			if !g.isDone() {
				pending++
				if g.key.addr == key.addr {
					fromAddr++
				}
			}
		}
		if pending >= maxPendingFlows || fromAddr >= maxPendingFlowsPerAddr {
			return nil, &Refusal{
				Reason:  ReasonUnavailable,
				Message: fmt.Sprintf("too many sign-ins are in progress; %s should finish or wait for one and try again", login),
				Err:     fmt.Errorf("%d sign-ins pending, %d from %s", pending, fromAddr, key.addr),
			}
		}
		ctx, cancel := context.WithCancel(a.bg)
		f = &flow{key: key, cancel: cancel, ready: make(chan struct{}), done: make(chan struct{})}
		a.flows[key] = f
		a.bgWG.Add(1)
		go func() {
			defer a.bgWG.Done()
			defer cancel()
			a.runFlow(ctx, p, f, login)
		}()
	}
	if detached {
		f.detached = true
	} else {
		f.waiters++
	}
	return f, nil
}

// leaveFlow is called when a notice-mode connection stops waiting. The
// last one out cancels polling at once unless an error-mode connection
// still relies on it.
func (a *Authorizer) leaveFlow(f *flow) {
	a.flowMu.Lock()
	defer a.flowMu.Unlock()
	f.waiters--
	if f.waiters == 0 && !f.detached {
		f.cancel()
		if a.flows[f.key] == f {
			delete(a.flows, f.key)
		}
	}
}

// forgetFlow removes a flow whose outcome has been collected: a finished
// sign-in serves the connections that waited for it (or the one
// reconnect that collects it), never a later one.
func (a *Authorizer) forgetFlow(f *flow) {
	a.flowMu.Lock()
	defer a.flowMu.Unlock()
	if a.flows[f.key] == f {
		delete(a.flows, f.key)
	}
}

// sweepFlowsLocked drops finished flows nobody came back for.
func (a *Authorizer) sweepFlowsLocked() {
	now := a.now()
	for k, f := range a.flows {
		if f.isDone() && !f.finishedAt.IsZero() && now.Sub(f.finishedAt) > finishedFlowRetention {
			delete(a.flows, k)
		}
	}
}

// runFlow asks Entra for a device code, publishes the prompt, polls until
// the person signs in, declines, the code expires or ctx ends, and checks
// who signed in.
func (a *Authorizer) runFlow(ctx context.Context, p *provider, f *flow, login string) {
	a.activePolls.Add(1)
	defer a.activePolls.Add(-1)
	finish := func(res signInResult, err error) {
		if f.prompt.UserCode != "" {
			// Shared before done closes, so a connection here that
			// collects the outcome finds it in the store.
			f.shared = a.publish(ctx, p, f, a.outcome(f, res, err))
		}
		a.flowMu.Lock()
		f.res, f.err, f.finishedAt = res, err, a.now()
		detached := f.detached
		a.flowMu.Unlock()
		close(f.done)
		if detached {
			ev := a.log.With(logging.Event("auth.device_code.completed"), zap.String("provider", p.name), zap.String("user", login), zap.String("client_addr", f.key.addr.String()))
			if err != nil {
				var r *Refusal
				if errors.As(err, &r) {
					ev = ev.With(zap.String("reason", string(r.Reason)))
				}
				ev.Info("background sign-in failed")
			} else {
				ev.Info("background sign-in completed", zap.String("oid", res.identity.ObjectID))
			}
		}
	}

	dc, err := p.pca.AcquireTokenByDeviceCode(ctx, p.signInScopes)
	if err != nil {
		f.startErr = entraRefusal(err, ReasonUnavailable, fmt.Sprintf("a sign-in for %s could not be started", login))
		close(f.ready)
		finish(signInResult{}, f.startErr)
		return
	}
	f.prompt = DeviceCodePrompt{
		VerificationURL: dc.Result.VerificationURL,
		UserCode:        dc.Result.UserCode,
		ExpiresAt:       dc.Result.ExpiresOn,
		Message:         dc.Result.Message,
	}
	// Shared before the first connection is answered, so that its
	// reconnect finds the code whichever replica it reaches.
	a.publish(ctx, p, f, PendingSignIn{Prompt: f.prompt, ExpiresAt: dc.Result.ExpiresOn})
	close(f.ready)

	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		finish(signInResult{}, a.pollRefusal(ctx, err, login, dc.Result.ExpiresOn))
		return
	}
	id, err := identityFromSignIn(p, res)
	if err == nil {
		err = a.checkLogin(login, id)
	}
	out := signInResult{identity: id, homeAccountID: res.Account.HomeAccountID}
	if p.delegated && err == nil {
		out.graphToken = res.AccessToken
	}
	if err != nil || !a.keepsAccounts(p) {
		// Nothing will need this account's refresh token again (neither
		// Graph in the person's name nor a token for Azure Database): do
		// not keep it in memory.
		_ = p.pca.RemoveAccount(context.WithoutCancel(ctx), res.Account)
		out.homeAccountID = ""
	}
	if err == nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
		if serr := a.recordGrace(sctx, p, login, f.key.addr, id, out.homeAccountID); serr != nil {
			a.log.Warn("could not record the sign-in for address grace", logging.Event("auth.sessions.store_failed"),
				zap.String("provider", p.name), zap.String("user", login), zap.Error(serr))
		}
		cancel()
	}
	finish(out, err)
}

// identityFromSignIn reads who signed in from the id token (falling back
// to MSAL's account) and checks the tenant.
func identityFromSignIn(p *provider, res public.AuthResult) (Identity, error) {
	idt := res.IDToken
	id := Identity{
		Kind:        KindUser,
		Provider:    p.name,
		TenantID:    idt.TenantID,
		ObjectID:    idt.Oid,
		UPN:         firstNonEmpty(idt.UPN, idt.PreferredUsername, res.Account.PreferredUsername),
		DisplayName: idt.Name,
	}
	if uid, utid, ok := strings.Cut(res.Account.HomeAccountID, "."); ok {
		if id.ObjectID == "" {
			id.ObjectID = uid
		}
		if id.TenantID == "" {
			id.TenantID = utid
		}
	}
	if id.ObjectID == "" || id.UPN == "" {
		return Identity{}, &Refusal{
			Reason:  ReasonUnavailable,
			Message: "Microsoft Entra ID did not say who signed in",
			Err:     errors.New("sign-in result has no oid or user name"),
		}
	}
	if !p.tenantAllowed(id.TenantID) {
		return Identity{}, &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%s signed in from a tenant that is not allowed", id.UPN),
			Err:     fmt.Errorf("tenant %q not in allowed_tenants of provider %q", id.TenantID, p.name),
		}
	}
	return id, nil
}

// pollRefusal turns the error that ended polling into a refusal.
func (a *Authorizer) pollRefusal(ctx context.Context, err error, login string, expires time.Time) error {
	code, _ := oauthErrorCode(err)
	switch {
	case code == "authorization_declined":
		return &Refusal{Reason: ReasonDeclined, Message: fmt.Sprintf("the sign-in of %s was declined", login), Err: oauthError(err)}
	case code == "expired_token" || code == "code_expired" ||
		// MSAL stops polling at the code's expiry (on the real clock)
		// with a deadline error of its own while ours is still running.
		(errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil && !time.Now().Before(expires.Add(-time.Second))):
		return &Refusal{Reason: ReasonDeclined, Message: fmt.Sprintf("the sign-in code for %s expired before it was used; connect again for a new one", login), Err: oauthError(err)}
	case ctx.Err() != nil:
		return cancelled(login, ctx.Err())
	case code == "bad_verification_code" || code == "invalid_grant":
		return &Refusal{Reason: ReasonDeclined, Message: fmt.Sprintf("Microsoft Entra ID no longer knows the sign-in code for %s; connect again for a new one", login), Err: oauthError(err)}
	}
	return entraRefusal(err, ReasonDeclined, fmt.Sprintf("the sign-in of %s could not be completed", login))
}

// entraRefusal is the refusal for a failed call to Entra's endpoints: an
// OAuth error answer (400 or 401) is the authority saying no, refused for
// the given reason; anything else means it could not be reached, and we
// fail closed.
func entraRefusal(err error, refused RefusalReason, what string) error {
	if _, status := oauthErrorCode(err); status == 400 || status == 401 {
		return &Refusal{Reason: refused, Message: what + ": Microsoft Entra ID refused it", Err: oauthError(err)}
	}
	return &Refusal{Reason: ReasonUnavailable, Message: what + ": Microsoft Entra ID could not be reached; try again later", Err: oauthError(err)}
}

// oauthErrorCode extracts the OAuth "error" code and HTTP status from an
// MSAL call error.
func oauthErrorCode(err error) (code string, status int) {
	var ce msalerrors.CallErr
	if !errors.As(err, &ce) || ce.Resp == nil {
		return "", 0
	}
	return parseOAuthBody(ce), ce.Resp.StatusCode
}

func parseOAuthBody(ce msalerrors.CallErr) string {
	// MSAL has consumed the body into the error text; the JSON follows
	// the first newline.
	msg := ce.Err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		var body struct {
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(msg[i+1:]), &body) == nil {
			return body.Error
		}
	}
	return ""
}

// OAuthError is a failed call to Entra's endpoints, reduced to what is
// safe to log: the status and OAuth error code, never the request.
type OAuthError struct {
	Status int
	Code   string
	err    error // the cause without its request and response text
}

func (e *OAuthError) Error() string {
	switch {
	case e.Code != "":
		return fmt.Sprintf("entra: status %d: %s", e.Status, e.Code)
	case e.Status != 0:
		return fmt.Sprintf("entra: status %d", e.Status)
	}
	return fmt.Sprintf("entra: %v", e.err)
}

func (e *OAuthError) Unwrap() error { return e.err }

// oauthError reduces an MSAL error to an *OAuthError; other errors (a
// context error, a transport error) pass through.
func oauthError(err error) error {
	var ce msalerrors.CallErr
	if !errors.As(err, &ce) || ce.Resp == nil {
		return err
	}
	code, status := oauthErrorCode(err)
	return &OAuthError{Status: status, Code: code, err: errors.New("call to Microsoft Entra ID failed")}
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// delegatedToken gets the user's own Graph token again for a reused
// sign-in (delegated Graph mode), from the refresh token MSAL keeps in
// memory. In application mode there is nothing to get.
func (a *Authorizer) delegatedToken(ctx context.Context, p *provider, homeAccountID string) (string, error) {
	if !p.delegated {
		return "", nil
	}
	if homeAccountID == "" {
		return "", errors.New("no account recorded for a delegated Graph token")
	}
	accounts, err := p.pca.Accounts(ctx)
	if err != nil {
		return "", fmt.Errorf("list accounts: %w", err)
	}
	for _, acct := range accounts {
		if acct.HomeAccountID != homeAccountID {
			continue
		}
		res, err := p.pca.AcquireTokenSilent(ctx, p.signInScopes, public.WithSilentAccount(acct))
		if err != nil {
			return "", fmt.Errorf("silent token: %w", oauthError(err))
		}
		return res.AccessToken, nil
	}
	return "", errors.New("the account is no longer in memory (portcullis restarted?)")
}

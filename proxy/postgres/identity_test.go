package postgres

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// identityCore is what these tests need from portcullis's identity core:
// the proxy.Authorizer, and a way to approve a device code as a person
// does in a browser.
type identityCore interface {
	proxy.Authorizer
	// Approve completes the sign-in for userCode as upn.
	Approve(userCode, upn string) error
}

// newIdentityCore is the identity core the tests run against. The
// rule-based one below stands in for auth.Authorizer in front of
// auth/entrasim, so that these tests are about the wire protocol; swap
// this line to run them against the real thing.
func newIdentityCore(t testing.TB, cfg *config.Config) identityCore {
	return newRuleAuthorizer(cfg, testDirectory)
}

// person is one user of the stand-in directory.
type person struct {
	oid       string
	groups    []string
	disabled  bool
	graphDown bool // looking up their groups fails, as when Graph is down
}

// testDirectory is the directory the tests sign in against.
var testDirectory = map[string]person{
	"alice@contoso.com":   {oid: "00000000-0000-0000-0000-00000000a11c", groups: []string{"analysts"}},
	"bob@contoso.com":     {oid: "00000000-0000-0000-0000-000000000b0b", groups: []string{"finance"}},
	"mallory@contoso.com": {oid: "00000000-0000-0000-0000-0000000ma110", groups: []string{"visitors"}},
	"carol@contoso.com":   {oid: "00000000-0000-0000-0000-00000000ca01", groups: []string{"analysts"}, graphDown: true},
	"dave@contoso.com":    {oid: "00000000-0000-0000-0000-00000000da7e", groups: []string{"analysts"}, disabled: true},
}

// ruleAuthorizer is a deterministic stand-in for the identity core. It
// keeps the rules of ARCHITECTURE §3 and §4 that the protocol layer
// depends on: device-code sign-in in notice mode (prompt, then wait) and
// error mode (pending, then the reconnect by the same user from the same
// address completes), session keys stored hashed and bound to their user,
// the signed-in identity matching the login name, the first credential
// mapping whose groups match, and failing closed when the directory
// cannot be asked.
type ruleAuthorizer struct {
	cfg *config.Config
	dir map[string]person

	mu       sync.Mutex
	codes    map[string]*deviceCode // by user code
	pending  map[string]*deviceCode // error mode, by login name and address
	keys     map[string]sessionKey  // by sha256 of the key
	lifetime time.Duration
}

type deviceCode struct {
	prompt   auth.DeviceCodePrompt
	approved chan string // receives the upn that signed in
	upn      string      // set once approved (error mode)
}

type sessionKey struct {
	upn     string
	expires time.Time
}

func newRuleAuthorizer(cfg *config.Config, dir map[string]person) *ruleAuthorizer {
	return &ruleAuthorizer{
		cfg:      cfg,
		dir:      dir,
		codes:    make(map[string]*deviceCode),
		pending:  make(map[string]*deviceCode),
		keys:     make(map[string]sessionKey),
		lifetime: 15 * time.Minute,
	}
}

const keyPrefix = "pcsk_"

func (a *ruleAuthorizer) Decide(ctx context.Context, req auth.Request) (*auth.Decision, error) {
	res, ok := a.resource(req.Resource)
	if !ok {
		return nil, &auth.Refusal{Reason: auth.ReasonUnknownResource, Message: fmt.Sprintf("no resource named %q", req.Resource)}
	}
	login := strings.ToLower(req.LoginName)

	if strings.HasPrefix(req.Password, keyPrefix) {
		a.mu.Lock()
		k, ok := a.keys[hashKey(req.Password)]
		a.mu.Unlock()
		if !ok || time.Now().After(k.expires) || k.upn != login {
			return nil, &auth.Refusal{Reason: auth.ReasonBadCredentials, Message: "the session key is not valid for " + req.LoginName}
		}
		return a.authorize(res, k.upn, auth.MethodSessionKey, false)
	}

	if req.Mode == auth.PromptError {
		return a.decideErrorMode(res, login, req.ClientAddr)
	}

	code := a.issue()
	if err := req.Prompt(code.prompt); err != nil {
		return nil, fmt.Errorf("show device code: %w", err)
	}
	select {
	case upn := <-code.approved:
		return a.signedIn(res, login, upn)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Until(code.prompt.ExpiresAt)):
		return nil, &auth.Refusal{Reason: auth.ReasonDeclined, Message: "the code expired before the sign-in was completed"}
	}
}

func (a *ruleAuthorizer) decideErrorMode(res config.Resource, login string, addr netip.Addr) (*auth.Decision, error) {
	slot := login + "|" + addr.String()
	a.mu.Lock()
	code := a.pending[slot]
	if code != nil && time.Now().After(code.prompt.ExpiresAt) {
		delete(a.pending, slot)
		code = nil
	}
	if code != nil && code.upn != "" {
		delete(a.pending, slot)
	}
	a.mu.Unlock()

	switch {
	case code == nil:
		code = a.issue()
		a.mu.Lock()
		a.pending[slot] = code
		a.mu.Unlock()
		return nil, &auth.SignInPending{Prompt: code.prompt}
	case code.upn == "":
		return nil, &auth.SignInPending{Prompt: code.prompt}
	}
	return a.signedIn(res, login, code.upn)
}

func (a *ruleAuthorizer) signedIn(res config.Resource, login, upn string) (*auth.Decision, error) {
	if upn != login {
		return nil, &auth.Refusal{Reason: auth.ReasonIdentityMismatch, Message: fmt.Sprintf("signed in as %s, but connected as %s", upn, login)}
	}
	return a.authorize(res, upn, auth.MethodDeviceCode, true)
}

func (a *ruleAuthorizer) authorize(res config.Resource, upn string, method auth.Method, newKey bool) (*auth.Decision, error) {
	p, ok := a.dir[upn]
	switch {
	case !ok:
		return nil, &auth.Refusal{Reason: auth.ReasonNotAllowed, Message: upn + " is not in the directory"}
	case p.disabled:
		return nil, &auth.Refusal{Reason: auth.ReasonDisabled, Message: "the account " + upn + " is disabled"}
	case p.graphDown:
		return nil, &auth.Refusal{Reason: auth.ReasonUnavailable, Message: "Microsoft Graph could not be reached to read your groups; try again later", Err: fmt.Errorf("graph: connection refused")}
	}
	for _, m := range res.Credentials {
		for _, g := range m.Groups {
			if !slices.Contains(p.groups, g) {
				continue
			}
			dec := &auth.Decision{
				Identity: auth.Identity{Kind: auth.KindUser, ObjectID: p.oid, UPN: upn},
				Method:   method,
				Groups:   groupsOf(p.groups),
				Matched:  []auth.Group{{ID: "id-" + g, DisplayName: g}},
				Resource: res.Name,
				Backend:  auth.BackendCredentials{User: m.User, Password: m.Password.Reveal()},
			}
			if newKey {
				dec.SessionKey, dec.SessionKeyExpires = a.newSessionKey(upn)
			}
			return dec, nil
		}
	}
	return nil, &auth.Refusal{Reason: auth.ReasonNotAllowed, Message: fmt.Sprintf("%s is not in a group allowed to use %q", upn, res.Name)}
}

func (a *ruleAuthorizer) Approve(userCode, upn string) error {
	a.mu.Lock()
	code, ok := a.codes[userCode]
	if ok {
		delete(a.codes, userCode)
		code.upn = upn
	}
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("approve: no device code %q is waiting", userCode)
	}
	code.approved <- upn
	return nil
}

func (a *ruleAuthorizer) issue() *deviceCode {
	var b [8]byte
	rand.Read(b[:])
	const letters = "BCDFGHJKLMNPQRSTVWXZ"
	var sb strings.Builder
	for i, v := range b {
		if i == 4 {
			sb.WriteByte('-')
		}
		sb.WriteByte(letters[int(v)%len(letters)])
	}
	code := &deviceCode{
		prompt: auth.DeviceCodePrompt{
			VerificationURL: "https://login.example.test/device",
			UserCode:        sb.String(),
			ExpiresAt:       time.Now().Add(a.lifetime),
		},
		approved: make(chan string, 1),
	}
	a.mu.Lock()
	a.codes[code.prompt.UserCode] = code
	a.mu.Unlock()
	return code
}

func (a *ruleAuthorizer) newSessionKey(upn string) (string, time.Time) {
	var b [32]byte
	rand.Read(b[:])
	key := keyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	expires := time.Now().Add(12 * time.Hour)
	a.mu.Lock()
	a.keys[hashKey(key)] = sessionKey{upn: upn, expires: expires}
	a.mu.Unlock()
	return key, expires
}

func (a *ruleAuthorizer) resource(name string) (config.Resource, bool) {
	for _, r := range a.cfg.Resources {
		if r.Name == name {
			return r, true
		}
	}
	return config.Resource{}, false
}

func hashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func groupsOf(names []string) []auth.Group {
	out := make([]auth.Group, len(names))
	for i, n := range names {
		out[i] = auth.Group{ID: "id-" + n, DisplayName: n}
	}
	return out
}

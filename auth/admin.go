package auth

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
)

// policy is the part of the configuration that can change while
// portcullis runs: the resources with their groups resolved, and the
// admin console's groups. Start sets it, Reload replaces it whole, and a
// decision reads the one in force when it begins.
type policy struct {
	resources map[string]*resource
	// admin is the console's pseudo-resource: admin.groups both allow
	// and (with no backend login) map; nil when admin.groups is empty.
	admin *resource
}

// resourceFor finds the resource a request asks for in the policy in
// force: the admin console's when req.Admin is set.
func (a *Authorizer) resourceFor(req Request) (*resource, bool) {
	pol := a.policy.Load()
	if pol == nil {
		return nil, false
	}
	if req.Admin {
		return pol.admin, pol.admin != nil
	}
	r, ok := pol.resources[req.Resource]
	return r, ok
}

// resolvePolicy resolves the group references of resources and of the
// admin groups to object ids, one Graph lookup batch per provider. An
// unknown or ambiguous group name is an error naming it.
func (a *Authorizer) resolvePolicy(ctx context.Context, resources []config.Resource, admin config.Admin) (*policy, error) {
	var adminProvider *provider
	if len(admin.Groups) > 0 {
		p, err := a.adminProvider(admin)
		if err != nil {
			return nil, err
		}
		adminProvider = p
	}
	names := map[string][]string{}             // provider → group references
	usedBy := map[string]map[string][]string{} // provider → reference → where
	use := func(p, where string, refs []string) {
		names[p] = append(names[p], refs...)
		if usedBy[p] == nil {
			usedBy[p] = map[string][]string{}
		}
		for _, g := range refs {
			if w := usedBy[p][g]; len(w) == 0 || w[len(w)-1] != where {
				usedBy[p][g] = append(w, where)
			}
		}
	}
	for _, r := range resources {
		p, err := a.providerFor(r)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		use(p.name, fmt.Sprintf("resource %q", r.Name), groupRefs(r))
	}
	if adminProvider != nil {
		use(adminProvider.name, "admin.groups", admin.Groups)
	}
	ids := map[string]map[string]string{}
	for pname, list := range names {
		list = dedupe(list)
		if len(list) == 0 {
			continue
		}
		got, err := a.providers[pname].groups.ResolveGroups(ctx, list)
		if err != nil {
			return nil, fmt.Errorf("auth: resolve groups of provider %q%s: %w", pname, whereUsed(err, usedBy[pname]), err)
		}
		ids[pname] = got
	}
	pol := &policy{resources: map[string]*resource{}}
	for _, r := range resources {
		p, _ := a.providerFor(r)
		res, err := resolveResource(r, p, ids[p.name])
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		pol.resources[r.Name] = res
	}
	if adminProvider != nil {
		// The admin groups both let an admin in and are the one "mapping",
		// which has no backend login: the console is portcullis itself.
		rc := config.Resource{
			Name:        config.ConsoleResource,
			Provider:    adminProvider.name,
			AllowGroups: admin.Groups,
			Credentials: []config.CredentialMapping{{Groups: admin.Groups}},
		}
		res, err := resolveResource(rc, adminProvider, ids[adminProvider.name])
		if err != nil {
			return nil, fmt.Errorf("auth: admin.groups: %w", err)
		}
		pol.admin = res
	}
	return pol, nil
}

// whereUsed names, for the group references a failed resolution
// complains about, what in the configuration uses them.
func whereUsed(err error, usedBy map[string][]string) string {
	var re *graph.ResolveError
	if !errors.As(err, &re) {
		return ""
	}
	var bad []string
	bad = append(bad, re.Unknown...)
	for name := range re.Ambiguous {
		bad = append(bad, name)
	}
	sort.Strings(bad)
	var parts []string
	for _, g := range bad {
		if w := usedBy[g]; len(w) > 0 {
			parts = append(parts, fmt.Sprintf("%q in %s", g, strings.Join(w, ", ")))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// adminProvider is the provider admins sign in with: admin.provider, or
// the only one.
func (a *Authorizer) adminProvider(admin config.Admin) (*provider, error) {
	if admin.Provider == "" {
		if len(a.providers) == 1 {
			for _, p := range a.providers {
				return p, nil
			}
		}
		return nil, fmt.Errorf("auth: admin.provider must name one of the %d providers admins sign in with", len(a.providers))
	}
	p, ok := a.providers[admin.Provider]
	if !ok {
		return nil, fmt.Errorf("auth: admin.provider %q is not configured", admin.Provider)
	}
	return p, nil
}

// Reload puts cfg's resources and admin groups in force for decisions
// that begin from now on, and for rechecks of open sessions (Recheck). Group names are resolved through Graph first, so a reload
// that names an unknown group fails and the running policy stays.
//
// Providers cannot change while portcullis runs (their clients, caches,
// pending sign-ins and keys hang on them): a cfg whose providers differ
// from the running ones is refused with a *ReloadError. The sign-in
// settings New read (sessions) are kept as they were; they need a
// restart.
func (a *Authorizer) Reload(ctx context.Context, cfg *config.Config) error {
	if cfg == nil {
		return errors.New("auth: reload: no configuration")
	}
	if !a.started.Load() {
		return errors.New("auth: reload before Start")
	}
	if err := a.sameProviders(cfg.Providers); err != nil {
		return err
	}
	for _, r := range cfg.Resources {
		if r.RequireTOTP && a.totp == nil {
			return fmt.Errorf("auth: reload: resource %q requires TOTP, and no TOTP verifier (state store) was given at start", r.Name)
		}
	}
	pol, err := a.resolvePolicy(ctx, cfg.Resources, cfg.Admin)
	if err != nil {
		return err
	}
	a.policy.Store(pol)
	return nil
}

// sameProviders refuses a provider list that differs from the running
// one in anything but order.
func (a *Authorizer) sameProviders(list []config.Provider) error {
	var added, removed, changed []string
	seen := map[string]bool{}
	for _, pc := range list {
		seen[pc.Name] = true
		p, ok := a.providers[pc.Name]
		switch {
		case !ok:
			added = append(added, pc.Name)
		case !reflect.DeepEqual(p.cfg, pc):
			changed = append(changed, pc.Name)
		}
	}
	for name := range a.providers {
		if !seen[name] {
			removed = append(removed, name)
		}
	}
	if len(added)+len(removed)+len(changed) == 0 {
		return nil
	}
	var what []string
	for _, d := range []struct {
		verb  string
		names []string
	}{{"added", added}, {"removed", removed}, {"changed", changed}} {
		if len(d.names) > 0 {
			sort.Strings(d.names)
			what = append(what, d.verb+" "+strings.Join(d.names, ", "))
		}
	}
	return &ReloadError{Message: fmt.Sprintf("providers %s: providers cannot change without a restart", strings.Join(what, "; "))}
}

// ReloadError is a configuration that cannot be put in force without a
// restart.
type ReloadError struct{ Message string }

func (e *ReloadError) Error() string { return "auth: reload: " + e.Message }

// Ready reports whether the Authorizer can make decisions: nil once Start
// has fetched every provider's discovery document and signing keys and
// resolved the configured groups, otherwise an error saying what is
// missing. It makes no network call, so a readiness probe may call it
// freely.
func (a *Authorizer) Ready() error {
	if !a.started.Load() {
		return errors.New("identity providers not started: discovery documents, signing keys and group names not fetched yet")
	}
	var missing []string
	for name, p := range a.providers {
		p.tokens.mu.Lock()
		n := len(p.tokens.keys)
		p.tokens.mu.Unlock()
		if n == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("no signing keys for providers %s", strings.Join(missing, ", "))
	}
	return nil
}

// GraphClient is the Microsoft Graph client of a provider, with its
// app-only token, for the admin console's azure_search. It fails for a
// provider that reads Graph only with its users' own tokens (delegated
// mode without a client secret or certificate), or whose group source is
// not Graph.
func (a *Authorizer) GraphClient(providerName string) (*graph.Client, error) {
	p, ok := a.providers[providerName]
	if !ok {
		names := make([]string, 0, len(a.providers))
		for n := range a.providers {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("there is no provider called %q (providers: %s)", providerName, strings.Join(names, ", "))
	}
	gg, ok := p.groups.(*GraphGroups)
	if !ok || gg.Client == nil {
		return nil, fmt.Errorf("provider %q does not read the directory through Microsoft Graph", providerName)
	}
	if !gg.AppOnly {
		return nil, fmt.Errorf("provider %q has no client secret or certificate, so portcullis has no app-only Graph access to search with", providerName)
	}
	return gg.Client, nil
}

// MethodFor is the method a request will be proven by, judged from its
// login name and password alone, as Decide judges them: for counting
// refusals by method. A device-code request that address grace answers
// is reported by Decide as MethodAddressGrace; MethodFor cannot know.
func MethodFor(req Request) Method {
	if req.Scramble != nil {
		return MethodSessionKey
	}
	pw := ParsePassword(req.Password)
	_, _, isSP := servicePrincipalLogin(req.LoginName)
	switch {
	case pw.Kind == CredentialAccessToken && (!isSP || strings.HasPrefix(pw.Credential, "eyJ")):
		return MethodAccessToken
	case pw.Kind == CredentialAccessKey && (!isSP || wellFormedAccessKey(pw.Credential)):
		return MethodAccessKey
	case isSP:
		return MethodServicePrincipal
	case pw.Kind == CredentialSessionKey:
		return MethodSessionKey
	}
	return MethodDeviceCode
}

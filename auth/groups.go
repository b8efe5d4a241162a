package auth

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/portcullisdb/portcullis/config"
)

// GroupSubject is whose transitive groups to read.
type GroupSubject struct {
	Kind     Kind
	ObjectID string
	// Token, when set, is the identity's own Microsoft Graph token
	// (delegated Graph mode); otherwise the source uses its app-only token.
	Token string
}

// GroupSource reads group membership from the directory (Microsoft Graph).
// One source serves one provider.
type GroupSource interface {
	// TransitiveGroups lists every group who is a member of, directly or
	// through nesting. An error for which IsUnavailable is true means the
	// directory could not be reached.
	TransitiveGroups(ctx context.Context, who GroupSubject) ([]Group, error)
	// ResolveGroups maps group display names to object ids. A name that
	// matches no group or more than one is an error naming it.
	ResolveGroups(ctx context.Context, names []string) (map[string]string, error)
}

// ErrUnavailable marks a failure to reach Entra ID or Microsoft Graph (as
// opposed to an answer that says no). GroupSource implementations wrap it,
// or return an error with an Unavailable() bool method, so that the
// decision can say "could not be reached" and fail closed.
var ErrUnavailable = errors.New("service unavailable")

// IsUnavailable reports whether err says a service could not be reached.
func IsUnavailable(err error) bool {
	if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var u interface{ Unavailable() bool }
	return errors.As(err, &u) && u.Unavailable()
}

// objectIDShape is a GUID: config values of this shape are taken as group
// object ids and not looked up by display name.
var objectIDShape = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// isObjectID reports whether s is a GUID.
func isObjectID(s string) bool { return objectIDShape.MatchString(s) }

// resource is a config.Resource with its groups resolved to object ids.
type resource struct {
	cfg      config.Resource
	provider *provider
	// allow holds the object ids of AllowGroups (lower case).
	allow    map[string]bool
	mappings []mapping
}

// mapping is one credential mapping with its groups resolved.
type mapping struct {
	cfg    config.CredentialMapping
	groups map[string]bool // object ids, lower case
}

// groupRefs collects the group references (object ids and display names)
// that a resource's allow_groups and credential mappings mention.
func groupRefs(r config.Resource) []string {
	seen := map[string]bool{}
	var out []string
	add := func(list []string) {
		for _, g := range list {
			if !seen[g] {
				seen[g] = true
				out = append(out, g)
			}
		}
	}
	add(r.AllowGroups)
	for _, m := range r.Credentials {
		add(m.Groups)
	}
	return out
}

// resolveResource turns the group references of r into object ids using
// ids (reference as written → object id).
func resolveResource(r config.Resource, p *provider, ids map[string]string) (*resource, error) {
	lookup := func(list []string, where string) (map[string]bool, error) {
		set := map[string]bool{}
		for _, g := range list {
			id, ok := ids[g]
			if !ok && isObjectID(g) {
				// A source that only resolves names leaves ids as they are.
				id, ok = g, true
			}
			if !ok || id == "" {
				return nil, fmt.Errorf("resource %q %s: group %q was not found in the directory of provider %q", r.Name, where, g, p.name)
			}
			set[strings.ToLower(id)] = true
		}
		return set, nil
	}
	allow, err := lookup(r.AllowGroups, "allow_groups")
	if err != nil {
		return nil, err
	}
	out := &resource{cfg: r, provider: p, allow: allow}
	for i, m := range r.Credentials {
		set, err := lookup(m.Groups, fmt.Sprintf("credentials[%d].groups", i))
		if err != nil {
			return nil, err
		}
		out.mappings = append(out.mappings, mapping{cfg: m, groups: set})
	}
	return out, nil
}

// grant is what a resource's policy gives an identity: the backend login
// of the winning credential mapping (or, for an entra mapping, the
// instruction to log in as the identity itself) and the groups that
// granted access.
type grant struct {
	backend BackendCredentials
	entra   bool
	matched []Group
}

// authorize applies a resource's policy to the identity's groups: some
// group must be allowed, and the first credential mapping that meets the
// groups supplies the backend login.
func (r *resource) authorize(id Identity, groups []Group) (grant, error) {
	var matched []Group
	inMatched := map[string]bool{}
	for _, g := range groups {
		if r.allow[strings.ToLower(g.ID)] {
			matched = append(matched, g)
			inMatched[strings.ToLower(g.ID)] = true
		}
	}
	if len(matched) == 0 {
		return grant{}, &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%s is not in any group allowed to use %q", id.Name(), r.cfg.Name),
		}
	}
	for _, m := range r.mappings {
		var hit []Group
		for _, g := range groups {
			if m.groups[strings.ToLower(g.ID)] {
				hit = append(hit, g)
			}
		}
		if len(hit) == 0 {
			continue
		}
		for _, g := range hit {
			if !inMatched[strings.ToLower(g.ID)] {
				matched = append(matched, g)
				inMatched[strings.ToLower(g.ID)] = true
			}
		}
		if m.cfg.Entra {
			return grant{entra: true, matched: matched}, nil
		}
		return grant{backend: BackendCredentials{User: m.cfg.User, Password: m.cfg.Password.Reveal()}, matched: matched}, nil
	}
	return grant{}, &Refusal{
		Reason:  ReasonNotAllowed,
		Message: fmt.Sprintf("no database login of %q is mapped to the groups of %s", r.cfg.Name, id.Name()),
	}
}

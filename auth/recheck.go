package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
)

// GroupCacheForgetter is what a GroupSource may also offer: dropping the
// groups it cached for an identity, so that a recheck reads the directory
// as it is now rather than as it was up to a cache TTL ago.
type GroupCacheForgetter interface {
	ForgetGroups(who GroupSubject)
}

// ForgetGroups implements GroupCacheForgetter; it also forgets the
// account's remembered state.
func (g *GraphGroups) ForgetGroups(who GroupSubject) {
	g.forgetAccount(who.Kind, who.ObjectID)
	kind := graph.KindUser
	if who.Kind == KindServicePrincipal {
		kind = graph.KindServicePrincipal
	}
	g.Client.Forget(graph.Subject{Kind: kind, ID: who.ObjectID})
}

// Recheck decides again whether the identity of an earlier decision may
// go on using its resource, against the directory and the policy as they
// are now: the resource is still configured, the access key that proved
// the identity (if one did) is neither revoked nor expired, the account
// still exists and is enabled, its transitive groups (read afresh,
// bypassing the group cache) still meet allow_groups, and they still map
// to the same backend login. It returns nil, or a *Refusal saying why the
// session must end.
//
// A *Refusal with ReasonUnavailable means the answer could not be had
// (Entra ID, Graph or the store unreachable); for new connections that
// is a refusal, but whether an open session survives a brief outage is
// the caller's policy (see authz.recheck_failures).
//
// Recheck does not prove the identity again: the session's credential
// was checked when it began. Nor does it look at TOTP: the code was for
// the connection.
func (a *Authorizer) Recheck(ctx context.Context, d *Decision) error {
	if d == nil {
		return errors.New("auth: recheck of no decision")
	}
	if !a.started.Load() {
		return &Refusal{Reason: ReasonUnavailable, Message: "portcullis is still starting", Err: errors.New("auth: Recheck before Start")}
	}
	id := d.Identity
	pol := a.policy.Load()
	res := pol.resources[d.Resource]
	if d.Resource == config.ConsoleResource {
		res = pol.admin
	}
	if res == nil {
		return &Refusal{Reason: ReasonUnknownResource, Message: fmt.Sprintf("%q is no longer configured", d.Resource)}
	}
	p := res.provider
	if p.name != id.Provider {
		return &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%q now signs people in with provider %q, not %q", d.Resource, p.name, id.Provider),
		}
	}
	if d.AccessKeyID != "" {
		if err := a.recheckAccessKey(ctx, d.AccessKeyID, id); err != nil {
			return err
		}
	}
	subject := GroupSubject{Kind: id.Kind, ObjectID: id.ObjectID}
	if f, ok := p.groups.(GroupCacheForgetter); ok {
		// Read afresh: the account and the groups as they are now.
		f.ForgetGroups(subject)
	}
	if err := a.checkAccount(ctx, p, id); err != nil {
		return err
	}
	if id.Kind == KindUser && p.delegated {
		token, err := a.delegatedToken(ctx, p, d.homeAccount)
		if err != nil {
			return &Refusal{
				Reason:  ReasonUnavailable,
				Message: fmt.Sprintf("portcullis holds no Microsoft Graph token in the name of %s to read their groups with", id.Name()),
				Err:     err,
			}
		}
		subject.Token = token
	}
	groups, err := p.groups.TransitiveGroups(ctx, subject)
	if err != nil {
		return directoryRefusal(id, "read the groups of", err)
	}
	g, err := res.authorize(id, groups)
	if err != nil {
		return err
	}
	if g.entra != (d.Backend.AccessToken != "") || (!g.entra && g.backend.User != d.Backend.User) {
		return &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("the groups of %s now map to another database login of %q", id.Name(), d.Resource),
		}
	}
	return nil
}

// recheckAccessKey ends what an access key opened once the key is
// revoked or expired.
func (a *Authorizer) recheckAccessKey(ctx context.Context, keyID string, id Identity) error {
	if a.keys == nil {
		return &Refusal{Reason: ReasonUnavailable, Message: "access keys cannot be checked: this portcullis has no state store for them", Err: errors.New("auth: no access key store")}
	}
	k, ok, err := a.keys.AccessKeyByID(ctx, keyID)
	switch {
	case err != nil:
		return storeRefusal(id.Name(), err)
	case !ok || k.Revoked():
		return &Refusal{Reason: ReasonKeyRevoked, Message: fmt.Sprintf("the access key %s of %s was revoked", keyID, id.Name())}
	case !a.now().Before(k.ExpiresAt):
		return &Refusal{Reason: ReasonKeyRevoked, Message: fmt.Sprintf("the access key %s of %s has expired", keyID, id.Name())}
	}
	return nil
}

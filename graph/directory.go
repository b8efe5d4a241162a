package graph

import (
	"context"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// User is what portcullis needs to know about a user.
type User struct {
	ID             string `json:"id"`
	UPN            string `json:"userPrincipalName"`
	DisplayName    string `json:"displayName"`
	Mail           string `json:"mail"`
	AccountEnabled bool   `json:"accountEnabled"`
}

// ServicePrincipal is what portcullis needs to know about a service
// principal.
type ServicePrincipal struct {
	ID             string `json:"id"`
	AppID          string `json:"appId"`
	DisplayName    string `json:"displayName"`
	AccountEnabled bool   `json:"accountEnabled"`
}

const (
	userSelect = "$select=id,userPrincipalName,displayName,mail,accountEnabled"
	spSelect   = "$select=id,appId,displayName,accountEnabled"
)

// User looks a user up by object id or UPN with the app-only token.
// accountEnabled is asked for explicitly, as Graph leaves it out by
// default. An unknown user is a *NotFoundError. Nothing is cached (the
// answer says whether the account may sign in now), but concurrent
// lookups of one user share a single request: ten connections opened at
// once with one person's session key cost one Graph call, not ten.
func (c *Client) User(ctx context.Context, idOrUPN string) (User, error) {
	op := "look up user " + idOrUPN
	u, err := share(c, c.userFlights, ctx, strings.ToLower(idOrUPN), func(ctx context.Context) (User, error) {
		var u User
		err := c.getJSON(ctx, c.appCall(op), c.apiURL("/users/"+url.PathEscape(idOrUPN), userSelect), "user", idOrUPN, &u)
		return u, err
	}, nil)
	if err != nil && ctx.Err() != nil && !IsUnavailable(err) {
		err = &UnavailableError{Op: op, Err: err}
	}
	return u, err
}

// ServicePrincipalByAppID looks a service principal up by its application
// (client) id. An unknown app id is a *NotFoundError.
func (c *Client) ServicePrincipalByAppID(ctx context.Context, appID string) (ServicePrincipal, error) {
	op := "look up service principal with app id " + appID
	var sp ServicePrincipal
	path := "/servicePrincipals(appId=" + url.PathEscape(odataString(appID)) + ")"
	err := c.getJSON(ctx, c.appCall(op), c.apiURL(path, spSelect), "service principal", appID, &sp)
	return sp, err
}

// ServicePrincipalByName looks a service principal up by display name.
// None is a *NotFoundError, several an *AmbiguousError.
func (c *Client) ServicePrincipalByName(ctx context.Context, displayName string) (ServicePrincipal, error) {
	op := "look up service principal named " + displayName
	var page struct {
		Value []ServicePrincipal `json:"value"`
	}
	target := c.apiURL("/servicePrincipals", queryParam("$filter", "displayName eq "+odataString(displayName)), spSelect, "$top=999")
	if err := c.getJSON(ctx, c.appCall(op), target, "service principal", displayName, &page); err != nil {
		return ServicePrincipal{}, err
	}
	switch len(page.Value) {
	case 0:
		return ServicePrincipal{}, &NotFoundError{Op: op, Kind: "service principal", Key: displayName}
	case 1:
		return page.Value[0], nil
	}
	ids := make([]string, len(page.Value))
	for i, sp := range page.Value {
		ids[i] = sp.ID
	}
	return ServicePrincipal{}, &AmbiguousError{Kind: "service principal", Name: displayName, IDs: ids}
}

var guidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ResolveGroups turns the group references of a configuration (object ids
// or display names) into groups, keyed by the reference as written. An id
// is looked up to confirm that the group exists; a name must match
// exactly one group (Graph compares names without regard to case). Every
// reference that is unknown or ambiguous is reported in one
// *ResolveError; a Graph failure ends the resolution with its error.
func (c *Client) ResolveGroups(ctx context.Context, namesOrIDs []string) (map[string]Group, error) {
	out := make(map[string]Group, len(namesOrIDs))
	var rerr ResolveError
	for _, ref := range namesOrIDs {
		if _, done := out[ref]; done || slices.Contains(rerr.Unknown, ref) || rerr.Ambiguous[ref] != nil {
			continue
		}
		name := strings.TrimSpace(ref)
		if name == "" {
			rerr.Unknown = append(rerr.Unknown, ref)
			continue
		}
		matches, err := c.findGroups(ctx, name)
		if err != nil {
			return nil, err
		}
		switch len(matches) {
		case 0:
			rerr.Unknown = append(rerr.Unknown, ref)
		case 1:
			out[ref] = matches[0]
		default:
			if rerr.Ambiguous == nil {
				rerr.Ambiguous = map[string][]string{}
			}
			for _, g := range matches {
				rerr.Ambiguous[ref] = append(rerr.Ambiguous[ref], g.ID)
			}
		}
	}
	if len(rerr.Unknown) > 0 || len(rerr.Ambiguous) > 0 {
		return nil, &rerr
	}
	return out, nil
}

// findGroups returns the groups a reference can mean: the group with that
// object id, or every group with that display name.
func (c *Client) findGroups(ctx context.Context, ref string) ([]Group, error) {
	type groupJSON struct {
		ID          string `json:"id"`
		DisplayName string `json:"displayName"`
	}
	if guidPattern.MatchString(ref) {
		op := "look up group " + ref
		var g groupJSON
		err := c.getJSON(ctx, c.appCall(op), c.apiURL("/groups/"+ref, "$select=id,displayName"), "group", ref, &g)
		if _, ok := err.(*NotFoundError); ok {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []Group{{ID: g.ID, DisplayName: g.DisplayName}}, nil
	}
	op := "look up group named " + ref
	var page struct {
		Value []groupJSON `json:"value"`
	}
	target := c.apiURL("/groups", queryParam("$filter", "displayName eq "+odataString(ref)), "$select=id,displayName", "$top=999")
	if err := c.getJSON(ctx, c.appCall(op), target, "group", ref, &page); err != nil {
		return nil, err
	}
	out := make([]Group, 0, len(page.Value))
	for _, g := range page.Value {
		out = append(out, Group{ID: g.ID, DisplayName: g.DisplayName})
	}
	return out, nil
}

package entrasim

import (
	"strings"
)

// entityKind is a Graph entity type the simulator serves.
type entityKind int

const (
	kindUser entityKind = iota + 1
	kindGroup
	kindServicePrincipal
)

// setName is the entity set in URLs and context URLs.
func (k entityKind) setName() string {
	switch k {
	case kindUser:
		return "users"
	case kindGroup:
		return "groups"
	}
	return "servicePrincipals"
}

// typeName is the OData type, as in @odata.type.
func (k entityKind) typeName() string {
	switch k {
	case kindUser:
		return "microsoft.graph.user"
	case kindGroup:
		return "microsoft.graph.group"
	}
	return "microsoft.graph.servicePrincipal"
}

// resourceName is how Graph's error messages name the type.
func (k entityKind) resourceName() string {
	switch k {
	case kindUser:
		return "User"
	case kindGroup:
		return "Group"
	}
	return "ServicePrincipal"
}

// entityProperties lists, per kind, every property the simulator knows
// (what $select and $filter may name) and the default set Graph returns
// without $select. accountEnabled of a user is, as in Graph, only returned
// when selected.
var entityProperties = map[entityKind]struct{ all, defaults []string }{
	kindUser: {
		all: []string{"id", "accountEnabled", "businessPhones", "displayName", "givenName", "jobTitle", "mail",
			"mailNickname", "mobilePhone", "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "userType"},
		defaults: []string{"businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
			"officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id"},
	},
	kindGroup: {
		all: []string{"id", "deletedDateTime", "classification", "description", "displayName", "groupTypes",
			"mail", "mailEnabled", "mailNickname", "securityEnabled", "visibility"},
	},
	kindServicePrincipal: {
		all: []string{"id", "accountEnabled", "appDisplayName", "appId", "appOwnerOrganizationId", "displayName",
			"servicePrincipalNames", "servicePrincipalType", "tags"},
	},
}

func defaultProperties(k entityKind) []string {
	p := entityProperties[k]
	if p.defaults != nil {
		return p.defaults
	}
	return p.all
}

// canonicalProperty returns the property's proper spelling, matching
// case-insensitively as Graph does.
func canonicalProperty(k entityKind, name string) (string, bool) {
	for _, p := range entityProperties[k].all {
		if strings.EqualFold(p, name) {
			return p, true
		}
	}
	return "", false
}

// entity is a snapshot of one directory object as Graph shows it, taken
// under the directory lock so that it can be rendered without it.
type entity struct {
	kind  entityKind
	id    string
	props map[string]any
}

// render returns the object with the given properties, preceded by its
// @odata.type when it sits in a polymorphic collection.
func (e entity) render(props []string, withType bool) jsonObject {
	out := make(jsonObject, 0, len(props)+1)
	if withType {
		out = append(out, jsonField{"@odata.type", "#" + e.kind.typeName()})
	}
	for _, p := range props {
		out = append(out, jsonField{p, e.props[p]})
	}
	return out
}

// str returns a string property, "" when absent or null.
func (e entity) str(name string) string {
	s, _ := e.props[name].(string)
	return s
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func userEntity(u *User) entity {
	nick, _, _ := strings.Cut(u.UPN, "@")
	return entity{kind: kindUser, id: u.ID, props: map[string]any{
		"id":                u.ID,
		"accountEnabled":    u.IsEnabled(),
		"businessPhones":    []string{},
		"displayName":       nullable(u.DisplayName),
		"givenName":         nil,
		"jobTitle":          nil,
		"mail":              nullable(u.Mail),
		"mailNickname":      nick,
		"mobilePhone":       nil,
		"officeLocation":    nil,
		"preferredLanguage": nil,
		"surname":           nil,
		"userPrincipalName": u.UPN,
		"userType":          "Member",
	}}
}

func groupEntity(g *Group) entity {
	return entity{kind: kindGroup, id: g.ID, props: map[string]any{
		"id":              g.ID,
		"deletedDateTime": nil,
		"classification":  nil,
		"description":     nil,
		"displayName":     g.DisplayName,
		"groupTypes":      []string{},
		"mail":            nil,
		"mailEnabled":     false,
		"mailNickname":    strings.ReplaceAll(g.DisplayName, " ", ""),
		"securityEnabled": true,
		"visibility":      nil,
	}}
}

func servicePrincipalEntity(sp *ServicePrincipal, tenantID string) entity {
	return entity{kind: kindServicePrincipal, id: sp.ID, props: map[string]any{
		"id":                     sp.ID,
		"accountEnabled":         sp.IsEnabled(),
		"appDisplayName":         sp.DisplayName,
		"appId":                  sp.AppID,
		"appOwnerOrganizationId": tenantID,
		"displayName":            sp.DisplayName,
		"servicePrincipalNames":  []string{sp.AppID},
		"servicePrincipalType":   "Application",
		"tags":                   []string{},
	}}
}

// allEntities snapshots every object of a kind, in directory order.
// The caller holds the directory lock.
func allEntities(d *Directory, kind entityKind, tenantID string) []entity {
	var out []entity
	switch kind {
	case kindUser:
		for i := range d.Users {
			out = append(out, userEntity(&d.Users[i]))
		}
	case kindGroup:
		for i := range d.Groups {
			out = append(out, groupEntity(&d.Groups[i]))
		}
	case kindServicePrincipal:
		for i := range d.ServicePrincipals {
			out = append(out, servicePrincipalEntity(&d.ServicePrincipals[i], tenantID))
		}
	}
	return out
}

// findEntity looks an object up the way Graph's path keys work: users by
// object id or userPrincipalName, groups and service principals by object
// id. The caller holds the directory lock.
func findEntity(d *Directory, kind entityKind, key string) (entity, bool) {
	switch kind {
	case kindUser:
		if u := d.UserByName(key); u != nil {
			return userEntity(u), true
		}
	case kindGroup:
		for i := range d.Groups {
			if strings.EqualFold(d.Groups[i].ID, key) {
				return groupEntity(&d.Groups[i]), true
			}
		}
	case kindServicePrincipal:
		if sp := d.spByID(key); sp != nil {
			return servicePrincipalEntity(sp, d.Tenant.ID), true
		}
	}
	return entity{}, false
}

// memberships returns every group objectID (a user, group or service
// principal) belongs to, directly or through nested groups, in directory
// order so that paging is stable. It indexes the membership graph once,
// so a tenant with thousands of groups is walked in linear time. Cycles
// are tolerated. The caller holds the directory lock.
func memberships(d *Directory, objectID string) []*Group {
	// groupIndex resolves a member reference (object id or display name)
	// to a group, as Directory.GroupByName does.
	byID := make(map[string]int, len(d.Groups))
	byName := make(map[string]int, len(d.Groups))
	byFoldedName := make(map[string]int, len(d.Groups))
	for i := len(d.Groups) - 1; i >= 0; i-- { // the first of equal names wins
		g := &d.Groups[i]
		byID[strings.ToLower(g.ID)] = i
		byName[g.DisplayName] = i
		byFoldedName[strings.ToLower(g.DisplayName)] = i
	}
	groupIndex := func(ref string) (int, bool) {
		if i, ok := byID[strings.ToLower(ref)]; ok {
			return i, true
		}
		if i, ok := byName[ref]; ok {
			return i, true
		}
		i, ok := byFoldedName[strings.ToLower(ref)]
		return i, ok
	}
	parents := make(map[int][]int) // group index → groups that contain it
	for gi := range d.Groups {
		for _, ref := range d.Groups[gi].Members.Groups {
			if ci, ok := groupIndex(ref); ok {
				parents[ci] = append(parents[ci], gi)
			}
		}
	}

	var direct []int
	switch {
	case d.userByID(objectID) != nil:
		u := d.userByID(objectID)
		for gi := range d.Groups {
			if containsFold(d.Groups[gi].Members.Users, u.UPN) || containsFold(d.Groups[gi].Members.Users, u.ID) {
				direct = append(direct, gi)
			}
		}
	case d.spByID(objectID) != nil:
		sp := d.spByID(objectID)
		for gi := range d.Groups {
			m := d.Groups[gi].Members.ServicePrincipals
			if containsFold(m, sp.DisplayName) || containsFold(m, sp.AppID) || containsFold(m, sp.ID) {
				direct = append(direct, gi)
			}
		}
	default:
		if gi, ok := byID[strings.ToLower(objectID)]; ok {
			direct = parents[gi]
		}
	}

	in := make([]bool, len(d.Groups))
	queue := append([]int(nil), direct...)
	for len(queue) > 0 {
		gi := queue[0]
		queue = queue[1:]
		if in[gi] {
			continue
		}
		in[gi] = true
		queue = append(queue, parents[gi]...)
	}
	var out []*Group
	for gi := range d.Groups {
		if in[gi] {
			out = append(out, &d.Groups[gi])
		}
	}
	return out
}

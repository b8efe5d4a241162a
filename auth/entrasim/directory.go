package entrasim

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// Directory is the simulated tenant: who exists, which groups they are in,
// and which applications may ask for tokens. It is loaded from a YAML file
// (see testdata/directory/demo.yaml) or built in Go by tests.
type Directory struct {
	Tenant            Tenant             `yaml:"tenant"`
	Users             []User             `yaml:"users"`
	Groups            []Group            `yaml:"groups"`
	ServicePrincipals []ServicePrincipal `yaml:"service_principals"`
	Applications      []Application      `yaml:"applications"`
}

// Tenant names the simulated Entra tenant.
type Tenant struct {
	ID          string `yaml:"id"`
	Domain      string `yaml:"domain"`
	DisplayName string `yaml:"display_name"`
}

// User is a member of the tenant who can sign in with the device-code flow.
type User struct {
	ID          string `yaml:"id"`  // object id (oid)
	UPN         string `yaml:"upn"` // userPrincipalName
	DisplayName string `yaml:"display_name"`
	Mail        string `yaml:"mail"`
	// Enabled is accountEnabled; a nil value means true.
	Enabled *bool `yaml:"enabled"`
}

// IsEnabled reports whether the account may sign in.
func (u User) IsEnabled() bool { return u.Enabled == nil || *u.Enabled }

// Group is a security group. Members may be users (by UPN), other groups
// (by display name) and service principals (by display name or app id), so
// groups nest to any depth.
type Group struct {
	ID          string       `yaml:"id"`
	DisplayName string       `yaml:"display_name"`
	Members     GroupMembers `yaml:"members"`
}

// GroupMembers lists a group's direct members by kind.
type GroupMembers struct {
	Users             []string `yaml:"users"`
	Groups            []string `yaml:"groups"`
	ServicePrincipals []string `yaml:"service_principals"`
}

// ServicePrincipal is an application identity in the tenant that can use the
// client-credentials grant with a secret or a certificate.
type ServicePrincipal struct {
	ID          string `yaml:"id"`     // object id
	AppID       string `yaml:"app_id"` // client id
	DisplayName string `yaml:"display_name"`
	Enabled     *bool  `yaml:"enabled"`
	// Secrets are the client secrets the application may present.
	Secrets []string `yaml:"secrets"`
	// Certificates are PEM-encoded X.509 certificates whose keys may sign a
	// client assertion.
	Certificates []string `yaml:"certificates"`
}

// IsEnabled reports whether the principal may obtain tokens.
func (s ServicePrincipal) IsEnabled() bool { return s.Enabled == nil || *s.Enabled }

// Application is an app registration: a client id that users sign in to
// (public client, device code) and that may expose an API (identifier URIs
// become accepted token audiences).
type Application struct {
	AppID          string   `yaml:"app_id"`
	DisplayName    string   `yaml:"display_name"`
	IdentifierURIs []string `yaml:"identifier_uris"`
	PublicClient   bool     `yaml:"public_client"`
}

// LoadDirectory reads a directory file. Unknown keys are an error so that a
// typo in a fixture does not silently change who is in which group.
func LoadDirectory(path string) (*Directory, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var d Directory
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("parse directory %s: %w", path, err)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("directory %s: %w", path, err)
	}
	return &d, nil
}

// Validate checks that ids are present and unique and that every member
// reference names something that exists.
func (d *Directory) Validate() error {
	if d.Tenant.ID == "" {
		return fmt.Errorf("tenant.id is required")
	}
	ids := map[string]string{}
	claim := func(id, what string) error {
		if id == "" {
			return fmt.Errorf("%s has no id", what)
		}
		if prev, ok := ids[strings.ToLower(id)]; ok {
			return fmt.Errorf("id %s used by both %s and %s", id, prev, what)
		}
		ids[strings.ToLower(id)] = what
		return nil
	}
	for _, u := range d.Users {
		if u.UPN == "" {
			return fmt.Errorf("user %s has no upn", u.ID)
		}
		if err := claim(u.ID, "user "+u.UPN); err != nil {
			return err
		}
	}
	for _, g := range d.Groups {
		if err := claim(g.ID, "group "+g.DisplayName); err != nil {
			return err
		}
	}
	for _, s := range d.ServicePrincipals {
		if s.AppID == "" {
			return fmt.Errorf("service principal %s has no app_id", s.DisplayName)
		}
		if err := claim(s.ID, "service principal "+s.DisplayName); err != nil {
			return err
		}
	}
	for _, g := range d.Groups {
		for _, upn := range g.Members.Users {
			if d.UserByName(upn) == nil {
				return fmt.Errorf("group %s: member user %s does not exist", g.DisplayName, upn)
			}
		}
		for _, name := range g.Members.Groups {
			if d.GroupByName(name) == nil {
				return fmt.Errorf("group %s: member group %s does not exist", g.DisplayName, name)
			}
		}
		for _, name := range g.Members.ServicePrincipals {
			if d.ServicePrincipalByName(name) == nil {
				return fmt.Errorf("group %s: member service principal %s does not exist", g.DisplayName, name)
			}
		}
	}
	return nil
}

// UserByName finds a user by object id or UPN (case-insensitive).
func (d *Directory) UserByName(idOrUPN string) *User {
	for i := range d.Users {
		if strings.EqualFold(d.Users[i].ID, idOrUPN) || strings.EqualFold(d.Users[i].UPN, idOrUPN) {
			return &d.Users[i]
		}
	}
	return nil
}

// GroupByName finds a group by object id or display name.
func (d *Directory) GroupByName(idOrName string) *Group {
	for i := range d.Groups {
		if strings.EqualFold(d.Groups[i].ID, idOrName) || d.Groups[i].DisplayName == idOrName {
			return &d.Groups[i]
		}
	}
	return nil
}

// ServicePrincipalByName finds a service principal by object id, app id or
// display name.
func (d *Directory) ServicePrincipalByName(s string) *ServicePrincipal {
	for i := range d.ServicePrincipals {
		sp := &d.ServicePrincipals[i]
		if strings.EqualFold(sp.ID, s) || strings.EqualFold(sp.AppID, s) || sp.DisplayName == s {
			return sp
		}
	}
	return nil
}

// ApplicationByID finds an app registration by app (client) id.
func (d *Directory) ApplicationByID(appID string) *Application {
	for i := range d.Applications {
		if strings.EqualFold(d.Applications[i].AppID, appID) {
			return &d.Applications[i]
		}
	}
	return nil
}

// TransitiveGroups returns every group the object (user, group or service
// principal, by object id) is a member of, directly or through nesting, in
// a stable order. Cycles are tolerated.
func (d *Directory) TransitiveGroups(objectID string) []*Group {
	var out []*Group
	seen := map[string]bool{}
	var visit func(isMember func(g *Group) bool)
	visit = func(isMember func(g *Group) bool) {
		for i := range d.Groups {
			g := &d.Groups[i]
			if seen[g.ID] || !isMember(g) {
				continue
			}
			seen[g.ID] = true
			out = append(out, g)
			name := g.DisplayName
			visit(func(parent *Group) bool { return containsFold(parent.Members.Groups, name) })
		}
	}
	switch {
	case d.userByID(objectID) != nil:
		u := d.userByID(objectID)
		visit(func(g *Group) bool { return containsFold(g.Members.Users, u.UPN) })
	case d.spByID(objectID) != nil:
		sp := d.spByID(objectID)
		visit(func(g *Group) bool {
			return containsFold(g.Members.ServicePrincipals, sp.DisplayName) || containsFold(g.Members.ServicePrincipals, sp.AppID)
		})
	default:
		if g := d.GroupByName(objectID); g != nil {
			name := g.DisplayName
			visit(func(parent *Group) bool { return containsFold(parent.Members.Groups, name) })
		}
	}
	return out
}

func (d *Directory) userByID(id string) *User {
	for i := range d.Users {
		if strings.EqualFold(d.Users[i].ID, id) {
			return &d.Users[i]
		}
	}
	return nil
}

func (d *Directory) spByID(id string) *ServicePrincipal {
	for i := range d.ServicePrincipals {
		if strings.EqualFold(d.ServicePrincipals[i].ID, id) {
			return &d.ServicePrincipals[i]
		}
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

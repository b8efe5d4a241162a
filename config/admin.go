package config

// ConsoleResource is the database name (PostgreSQL) that reaches the admin
// console rather than a resource; no resource may be called this.
const ConsoleResource = "portcullis"

// validateAdminProvider checks that admins have one provider to sign in
// with when the console is enabled.
func (c *Config) validateAdminProvider(ps *problems) {
	name := c.Admin.Provider
	if name == "" {
		if len(c.Admin.Groups) > 0 && len(c.Providers) > 1 {
			ps.addNear("admin.provider", "admin.groups", "is required when there are several providers: it names the one admins sign in with")
		}
		return
	}
	for _, p := range c.Providers {
		if p.Name == name {
			return
		}
	}
	ps.add("admin.provider", "names provider %q, which is not configured", name)
}

package postgres

import (
	"testing"

	"github.com/portcullisdb/portcullis/auth"
)

// The parameters are what each client sent in its StartupMessage, as
// captured from the real drivers.
func TestStartupPromptMode(t *testing.T) {
	pgjdbc := map[string]string{"user": "u", "database": "db", "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "Etc/UTC", "extra_float_digits": "2"}
	pgjdbcNamed := map[string]string{"user": "u", "database": "db", "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "Etc/UTC", "extra_float_digits": "3", "application_name": "DBeaver 23.2.0 - Main <db>"}
	libpq := map[string]string{"user": "u", "database": "db"}
	psql := map[string]string{"user": "u", "database": "db", "application_name": "psql", "client_encoding": "UTF8"}
	libPQGo := map[string]string{"user": "u", "database": "db", "client_encoding": "UTF8", "datestyle": "ISO, MDY"}
	nodePG := map[string]string{"user": "u", "database": "db", "client_encoding": "UTF8"}
	pgx := map[string]string{"user": "u", "database": "db"}
	tests := []struct {
		name    string
		setting string
		params  map[string]string
		want    auth.PromptMode
	}{
		{"pgjdbc without application_name", "auto", pgjdbc, auth.PromptError},
		{"pgjdbc, setting unset", "", pgjdbc, auth.PromptError},
		{"pgjdbc naming DBeaver", "auto", pgjdbcNamed, auth.PromptError},
		{"lib/pq", "auto", libPQGo, auth.PromptError},
		{"libpq without a name", "auto", libpq, auth.PromptNotice},
		{"psql", "auto", psql, auth.PromptNotice},
		{"node-postgres", "auto", nodePG, auth.PromptNotice},
		{"pgx", "auto", pgx, auth.PromptNotice},
		{"notice wins over the fingerprint", "notice", pgjdbc, auth.PromptNotice},
		{"error for anyone", "error", psql, auth.PromptError},
		{"a named client is taken at its word", "auto", map[string]string{"application_name": "psql", "DateStyle": "ISO", "extra_float_digits": "2"}, auth.PromptNotice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := startupPromptMode(tt.setting, tt.params); got != tt.want {
				t.Errorf("startupPromptMode(%q, %v) = %s, want %s", tt.setting, tt.params, got, tt.want)
			}
		})
	}
}

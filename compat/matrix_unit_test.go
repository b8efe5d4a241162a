package compat

import (
	"reflect"
	"strings"
	"testing"
)

func TestRenderParseRoundTrip(t *testing.T) {
	rows := []row{
		{section: "PostgreSQL", client: "psql", version: "15.2", cells: map[string]outcome{
			featSignIn.key: pass(""), featTOTP.key: notApplicable("not yet | here"), featRows.key: failed("lost %d rows", 3),
		}},
		{section: "PostgreSQL", client: "pgx", version: "v5", cells: map[string]outcome{
			featSignIn.key: pass("error mode"), featTOTP.key: notApplicable("not yet | here"),
		}},
	}
	page := render(rows, []string{"psql", "pgx"})
	if strings.Count(page, "not yet | here") != 1 {
		t.Errorf("a shared note should be written once:\n%s", page)
	}
	got, err := parseDoc(page)
	if err != nil {
		t.Fatal(err)
	}
	want := recorded{
		"psql": {},
		"pgx":  {},
	}
	for _, f := range features {
		want["psql"][f.key] = statusFail // not run
		want["pgx"][f.key] = statusFail
	}
	want["psql"][featSignIn.key] = statusPass
	want["psql"][featTOTP.key] = statusNA
	want["pgx"][featSignIn.key] = statusPass
	want["pgx"][featTOTP.key] = statusNA
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parse(render) = %v, want %v", got, want)
	}
}

func TestCompare(t *testing.T) {
	doc := recorded{"psql": {featSignIn.key: statusPass, featRows.key: statusFail, featTOTP.key: statusNA, featCancel.key: statusPass}}
	tests := []struct {
		name        string
		cells       map[string]outcome
		regressions int
		changes     int
	}{
		{name: "same", cells: map[string]outcome{featSignIn.key: pass(""), featRows.key: failed("x"), featTOTP.key: notApplicable("y")}},
		{name: "pass now fails", cells: map[string]outcome{featSignIn.key: failed("broke")}, regressions: 1},
		{name: "pass now n/a", cells: map[string]outcome{featCancel.key: notApplicable("gone")}, regressions: 1},
		{name: "new failure", cells: map[string]outcome{featPrepared.key: failed("new")}, regressions: 1},
		{name: "n/a now fails", cells: map[string]outcome{featTOTP.key: failed("new")}, regressions: 1},
		{name: "known failure now passes", cells: map[string]outcome{featRows.key: pass("")}, changes: 1},
		{name: "new pass", cells: map[string]outcome{featPrepared.key: pass("")}, changes: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, ch := compare(doc, []row{{client: "psql", cells: tt.cells}})
			if len(reg) != tt.regressions || len(ch) != tt.changes {
				t.Errorf("regressions %q, changes %q; want %d and %d", reg, ch, tt.regressions, tt.changes)
			}
		})
	}
}

func TestParseDocRejectsGarbage(t *testing.T) {
	tests := []struct{ name, page string }{
		{"unknown status", "| client | version | sign-in |\n|---|---|---|\n| psql | 15 | maybe |\n"},
		{"short row", "| client | version | sign-in |\n|---|---|---|\n| psql | 15 |\n"},
		{"row without heading", "| psql | 15 | pass |\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseDoc(tt.page); err == nil {
				t.Errorf("parseDoc accepted %q", tt.page)
			}
		})
	}
}

// TestAccessDeniedIsTheErrorNotThePort: a refusal is the server's error
// 1045 as the clients print it, not any 1045 in their output (sysbench
// names the port it failed to reach).
func TestAccessDeniedIsTheErrorNotThePort(t *testing.T) {
	for text, want := range map[string]bool{
		"ERROR 1045 (28000): Access denied for user 'ana'":                         true,
		"FATAL: error 1045: Access denied for user 'ana'":                          true,
		"FATAL: unable to connect to MySQL server on host '127.0.0.1', port 41045": false,
		"FATAL: error 2026: TLS/SSL error: certificate verify failed":              false,
	} {
		if got := accessDeniedRE.MatchString(text); got != want {
			t.Errorf("accessDeniedRE on %q = %v, want %v", text, got, want)
		}
	}
}

package entrasim

import (
	"testing"
)

func TestDemoDirectoryNesting(t *testing.T) {
	d, err := LoadDirectory("../../testdata/directory/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		who  string
		want []string
	}{
		{name: "alice through nesting", who: "alice@contoso.example", want: []string{"Analysts", "Data Readers"}},
		{name: "bob three levels", who: "bob@contoso.example", want: []string{"Senior Analysts", "Analysts", "Data Readers", "Finance"}},
		{name: "carol none", who: "carol@contoso.example", want: nil},
		{name: "service principal", who: "reporting-bot", want: []string{"Finance"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var id string
			if u := d.UserByName(tt.who); u != nil {
				id = u.ID
			} else {
				id = d.ServicePrincipalByName(tt.who).ID
			}
			got := map[string]bool{}
			for _, g := range d.TransitiveGroups(id) {
				got[g.DisplayName] = true
			}
			if len(got) != len(tt.want) {
				t.Fatalf("groups of %s = %v, want %v", tt.who, got, tt.want)
			}
			for _, w := range tt.want {
				if !got[w] {
					t.Errorf("groups of %s = %v, missing %s", tt.who, got, w)
				}
			}
		})
	}
}

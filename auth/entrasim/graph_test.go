package entrasim

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const graphTestTenant = "7d6c5b4a-3928-4716-a5b4-c3d2e1f0a9b8"

func guid(kind, n int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", kind, n)
}

// graphTestDirectory has three levels of nesting (Platform ⊃ Data ⊃
// Analysts ∋ alice), a service principal in a nested group, a disabled
// user, and extra groups that only bulk holds, for paging.
func graphTestDirectory(bulkGroups int) *Directory {
	disabled := false
	d := &Directory{
		Tenant: Tenant{ID: graphTestTenant, Domain: "fabrikam.example"},
		Users: []User{
			{ID: guid(1, 1), UPN: "alice@fabrikam.example", DisplayName: "Alice Able", Mail: "alice@fabrikam.example"},
			{ID: guid(1, 2), UPN: "bob@fabrikam.example", DisplayName: "Bob Baker"},
			{ID: guid(1, 3), UPN: "carol@fabrikam.example", DisplayName: "Carol Cole", Enabled: &disabled},
			{ID: guid(1, 4), UPN: "bulk@fabrikam.example", DisplayName: "Bulk Member"},
		},
		Groups: []Group{
			{ID: guid(2, 1), DisplayName: "Platform", Members: GroupMembers{Groups: []string{"Data"}}},
			{ID: guid(2, 2), DisplayName: "Data", Members: GroupMembers{Groups: []string{"Analysts"}, ServicePrincipals: []string{"etl-bot"}}},
			{ID: guid(2, 3), DisplayName: "Analysts", Members: GroupMembers{Users: []string{"alice@fabrikam.example"}}},
			{ID: guid(2, 4), DisplayName: "Finance", Members: GroupMembers{Users: []string{"bob@fabrikam.example"}}},
		},
		ServicePrincipals: []ServicePrincipal{
			{ID: guid(3, 1), AppID: guid(4, 1), DisplayName: "etl-bot"},
			{ID: guid(3, 2), AppID: guid(4, 2), DisplayName: "portcullis-graph"},
		},
	}
	for i := range bulkGroups {
		d.Groups = append(d.Groups, Group{
			ID:          guid(5, i),
			DisplayName: fmt.Sprintf("Bulk %04d", i),
			Members:     GroupMembers{Users: []string{"bulk@fabrikam.example"}},
		})
	}
	return d
}

func newGraphSim(t *testing.T, bulkGroups int) *Server {
	t.Helper()
	s, err := New(graphTestDirectory(bulkGroups), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// appToken is an app-only Graph token for the portcullis-graph principal.
func appToken(t *testing.T, s *Server) string {
	t.Helper()
	tok, err := s.IssueAccessToken(TokenSpec{
		Subject:  "portcullis-graph",
		Audience: s.URL(),
		Roles:    []string{"GroupMember.Read.All", "User.Read.All"},
		Version:  1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type graphReply struct {
	status int
	header http.Header
	body   []byte
}

func (g graphReply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(g.body, &m); err != nil {
		t.Fatalf("reply %d is not JSON: %v: %s", g.status, err, g.body)
	}
	return m
}

// errorCode checks Graph's error shape and returns the code.
func (g graphReply) errorCode(t *testing.T) string {
	t.Helper()
	m := g.json(t)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", g.body)
	}
	inner, _ := e["innerError"].(map[string]any)
	if inner == nil || inner["request-id"] == "" || inner["request-id"] != g.header.Get("request-id") || inner["date"] == nil {
		t.Errorf("innerError %v does not carry the request-id header %q and a date", inner, g.header.Get("request-id"))
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("error without a message: %s", g.body)
	}
	code, _ := e["code"].(string)
	return code
}

func graphGet(t *testing.T, s *Server, token, path string, header http.Header) graphReply {
	t.Helper()
	target := path
	if !strings.HasPrefix(path, "https://") {
		target = s.URL() + path
	}
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return graphReply{status: resp.StatusCode, header: resp.Header, body: body}
}

var eventual = http.Header{"Consistencylevel": {"eventual"}}

func values(t *testing.T, m map[string]any) []map[string]any {
	t.Helper()
	raw, ok := m["value"].([]any)
	if !ok {
		t.Fatalf("no value array in %v", m)
	}
	out := make([]map[string]any, len(raw))
	for i, v := range raw {
		out[i] = v.(map[string]any)
	}
	return out
}

func displayNames(objs []map[string]any) []string {
	var out []string
	for _, o := range objs {
		out = append(out, fmt.Sprint(o["displayName"]))
	}
	slices.Sort(out)
	return out
}

func TestGraphAuthRejection(t *testing.T) {
	s := newGraphSim(t, 0)
	issue := func(spec TokenSpec) string {
		tok, err := s.IssueAccessToken(spec)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	base := TokenSpec{Subject: "portcullis-graph", Audience: s.URL(), Version: 1}
	with := func(f func(*TokenSpec)) string {
		spec := base
		f(&spec)
		return issue(spec)
	}
	// A token of the right shape signed by a key the simulator never
	// published.
	stranger, err := newSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	claims, err := s.accessClaims(base)
	if err != nil {
		t.Fatal(err)
	}
	forged := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	forged.Header["kid"] = s.SigningKeyID()
	forgedTok, err := forged.SignedString(stranger.key)
	if err != nil {
		t.Fatal(err)
	}
	noneTok, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		token string
		want  int
	}{
		{name: "app token for the simulator's URL", token: issue(base), want: http.StatusOK},
		{name: "graph resource audience", token: with(func(s *TokenSpec) { s.Audience = "https://graph.microsoft.com" }), want: http.StatusOK},
		{name: "graph app id audience", token: with(func(s *TokenSpec) { s.Audience = "00000003-0000-0000-c000-000000000000" }), want: http.StatusOK},
		{name: "v2 token", token: with(func(s *TokenSpec) { s.Version = 2 }), want: http.StatusOK},
		{name: "no token", token: "", want: http.StatusUnauthorized},
		{name: "not a jwt", token: "opaque-token-value", want: http.StatusUnauthorized},
		{name: "wrong audience", token: with(func(s *TokenSpec) { s.Audience = "api://portcullis" }), want: http.StatusUnauthorized},
		{name: "expired", token: with(func(s *TokenSpec) { s.IssuedAt = time.Now().Add(-3 * time.Hour); s.Lifetime = time.Hour }), want: http.StatusUnauthorized},
		{name: "other tenant", token: with(func(s *TokenSpec) { s.TenantID = "00000000-1111-2222-3333-444444444444" }), want: http.StatusUnauthorized},
		{name: "signed by an unknown key", token: forgedTok, want: http.StatusUnauthorized},
		{name: "alg none", token: noneTok, want: http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := graphGet(t, s, tt.token, "/v1.0/users/alice@fabrikam.example", nil)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.body)
			}
			if tt.want == http.StatusUnauthorized {
				if code := r.errorCode(t); code != "InvalidAuthenticationToken" {
					t.Errorf("code %q, want InvalidAuthenticationToken", code)
				}
				if r.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
		})
	}

	t.Run("rotated out key", func(t *testing.T) {
		old := issue(base)
		if err := s.RotateKeys(false); err != nil {
			t.Fatal(err)
		}
		if r := graphGet(t, s, old, "/v1.0/users/alice@fabrikam.example", nil); r.status != http.StatusUnauthorized {
			t.Errorf("token signed by a withdrawn key: status %d, want 401", r.status)
		}
		if r := graphGet(t, s, issue(base), "/v1.0/users/alice@fabrikam.example", nil); r.status != http.StatusOK {
			t.Errorf("token signed by the new key: status %d: %s", r.status, r.body)
		}
	})
}

func TestGraphTransitiveMemberOfNesting(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)
	tests := []struct {
		name string
		path string
		want []string
	}{
		{name: "user by upn, three levels", path: "/v1.0/users/alice@fabrikam.example/transitiveMemberOf", want: []string{"Analysts", "Data", "Platform"}},
		{name: "user by id", path: "/v1.0/users/" + guid(1, 1) + "/transitiveMemberOf", want: []string{"Analysts", "Data", "Platform"}},
		{name: "one direct group", path: "/v1.0/users/bob@fabrikam.example/transitiveMemberOf", want: []string{"Finance"}},
		{name: "no groups", path: "/v1.0/users/carol@fabrikam.example/transitiveMemberOf", want: nil},
		{name: "service principal", path: "/v1.0/servicePrincipals/" + guid(3, 1) + "/transitiveMemberOf", want: []string{"Data", "Platform"}},
		{name: "group", path: "/v1.0/groups/" + guid(2, 3) + "/transitiveMemberOf", want: []string{"Data", "Platform"}},
		{name: "cast with advanced query", path: "/v1.0/users/alice@fabrikam.example/transitiveMemberOf/microsoft.graph.group?$count=true&$select=id,displayName", want: []string{"Analysts", "Data", "Platform"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := graphGet(t, s, tok, tt.path, eventual)
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			m := r.json(t)
			objs := values(t, m)
			if got := displayNames(objs); !slices.Equal(got, tt.want) {
				t.Errorf("groups %v, want %v", got, tt.want)
			}
			for _, o := range objs {
				if o["@odata.type"] != "#microsoft.graph.group" {
					t.Errorf("object %v lacks @odata.type #microsoft.graph.group", o)
				}
			}
			ctx, _ := m["@odata.context"].(string)
			if !strings.HasPrefix(ctx, s.URL()+"/v1.0/$metadata#") {
				t.Errorf("@odata.context %q", ctx)
			}
		})
	}

	t.Run("delegated /me", func(t *testing.T) {
		user, err := s.IssueAccessToken(TokenSpec{Subject: "alice@fabrikam.example", Audience: "https://graph.microsoft.com", Scopes: []string{"User.Read"}, Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		r := graphGet(t, s, user, "/v1.0/me/transitiveMemberOf/microsoft.graph.group?$count=true&$select=id,displayName", eventual)
		if r.status != http.StatusOK {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if got := displayNames(values(t, r.json(t))); !slices.Equal(got, []string{"Analysts", "Data", "Platform"}) {
			t.Errorf("groups %v", got)
		}
		if r := graphGet(t, s, tok, "/v1.0/me", nil); r.status != http.StatusBadRequest {
			t.Errorf("/me with an app token: status %d, want 400", r.status)
		}
	})

	t.Run("membership change is visible at once", func(t *testing.T) {
		s.Directory(func(d *Directory) {
			g := d.GroupByName("Finance")
			g.Members.Groups = append(g.Members.Groups, "Platform")
		})
		t.Cleanup(func() {
			s.Directory(func(d *Directory) { d.GroupByName("Finance").Members.Groups = nil })
		})
		r := graphGet(t, s, tok, "/v1.0/users/alice@fabrikam.example/transitiveMemberOf", nil)
		if got := displayNames(values(t, r.json(t))); !slices.Equal(got, []string{"Analysts", "Data", "Finance", "Platform"}) {
			t.Errorf("groups after nesting Platform in Finance: %v", got)
		}
	})
}

func TestGraphConsistencyLevelRule(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)
	const link = "/v1.0/users/alice@fabrikam.example/transitiveMemberOf"
	tests := []struct {
		name     string
		path     string
		eventual bool
		want     int
		wantCode string
	}{
		{name: "plain link", path: link, want: 200},
		{name: "select and top need nothing", path: link + "?$select=id&$top=2", want: 200},
		{name: "cast without header", path: link + "/microsoft.graph.group", want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "cast with header but no count", path: link + "/microsoft.graph.group", eventual: true, want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "cast with count but no header", path: link + "/microsoft.graph.group?$count=true", want: 400, wantCode: "Request_BadRequest"},
		{name: "cast advanced", path: link + "/microsoft.graph.group?$count=true", eventual: true, want: 200},
		{name: "filter without header", path: link + "?$filter=" + url.QueryEscape("startswith(displayName,'A')"), want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "filter advanced", path: link + "?$count=true&$filter=" + url.QueryEscape("startswith(displayName,'A')"), eventual: true, want: 200},
		{name: "orderby without header", path: link + "?$orderby=displayName", want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "orderby advanced", path: link + "?$orderby=displayName&$count=true", eventual: true, want: 200},
		{name: "search with header only", path: link + `?$search="displayName:ana"`, eventual: true, want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "search advanced", path: link + `?$search="displayName:ana"&$count=true`, eventual: true, want: 200},
		{name: "users $count without header", path: "/v1.0/users/$count", want: 400, wantCode: "Request_BadRequest"},
		{name: "users $count", path: "/v1.0/users/$count", eventual: true, want: 200},
		{name: "users search without header", path: `/v1.0/users?$search="displayName:alice"`, want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "users ne needs advanced", path: "/v1.0/users?$filter=" + url.QueryEscape("accountEnabled ne true"), want: 400, wantCode: "Request_UnsupportedQuery"},
		{name: "users ne advanced", path: "/v1.0/users?$count=true&$filter=" + url.QueryEscape("accountEnabled ne true"), eventual: true, want: 200},
		{name: "top too large", path: link + "?$top=1000", want: 400, wantCode: "Request_BadRequest"},
		{name: "top zero", path: "/v1.0/users?$top=0", want: 400, wantCode: "Request_BadRequest"},
		{name: "unknown select", path: "/v1.0/users?$select=shoeSize", want: 400, wantCode: "Request_BadRequest"},
		{name: "bad filter", path: "/v1.0/users?$filter=" + url.QueryEscape("displayName eq"), want: 400, wantCode: "BadRequest"},
		{name: "bad skip token", path: "/v1.0/users?$skiptoken=garbage", want: 400, wantCode: "Request_BadRequest"},
		{name: "unknown segment", path: "/v1.0/users/alice@fabrikam.example/manager", want: 400, wantCode: "BadRequest"},
		{name: "unknown root", path: "/v1.0/sites", want: 400, wantCode: "BadRequest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h http.Header
			if tt.eventual {
				h = eventual
			}
			r := graphGet(t, s, tok, tt.path, h)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.body)
			}
			if tt.wantCode != "" {
				if code := r.errorCode(t); code != tt.wantCode {
					t.Errorf("code %q, want %q", code, tt.wantCode)
				}
			}
		})
	}
}

func TestGraphPaging(t *testing.T) {
	const n = 250
	s := newGraphSim(t, n)
	tok := appToken(t, s)
	tests := []struct {
		name      string
		query     string
		wantPages []int
	}{
		{name: "default page of 100", query: "", wantPages: []int{100, 100, 50}},
		{name: "top 100", query: "?$top=100", wantPages: []int{100, 100, 50}},
		{name: "top 999", query: "?$top=999", wantPages: []int{250}},
		{name: "top 250 exactly", query: "?$top=250", wantPages: []int{250}},
		{name: "top 249", query: "?$top=249", wantPages: []int{249, 1}},
		{name: "cast with count", query: "/microsoft.graph.group?$count=true&$top=120&$select=id,displayName", wantPages: []int{120, 120, 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := "/v1.0/users/bulk@fabrikam.example/transitiveMemberOf" + tt.query
			seen := map[string]bool{}
			var pages []int
			for next != "" {
				r := graphGet(t, s, tok, next, eventual)
				if r.status != http.StatusOK {
					t.Fatalf("page %d: status %d: %s", len(pages)+1, r.status, r.body)
				}
				m := r.json(t)
				objs := values(t, m)
				pages = append(pages, len(objs))
				for _, o := range objs {
					id := o["id"].(string)
					if seen[id] {
						t.Fatalf("group %s returned twice", id)
					}
					seen[id] = true
				}
				if strings.Contains(tt.query, "$count=true") {
					if c, _ := m["@odata.count"].(float64); c != n {
						t.Errorf("@odata.count %v, want %d", m["@odata.count"], n)
					}
				} else if _, ok := m["@odata.count"]; ok {
					t.Error("@odata.count without $count=true")
				}
				next, _ = m["@odata.nextLink"].(string)
				if next != "" && !strings.HasPrefix(next, s.URL()+"/v1.0/") {
					t.Fatalf("nextLink %q is not on the Graph endpoint", next)
				}
				if next != "" && !strings.Contains(next, "skiptoken") {
					t.Fatalf("nextLink %q without a skip token", next)
				}
				if len(pages) > 10 {
					t.Fatal("paging does not end")
				}
			}
			if !slices.Equal(pages, tt.wantPages) {
				t.Errorf("page sizes %v, want %v", pages, tt.wantPages)
			}
			if len(seen) != n {
				t.Errorf("saw %d groups, want %d", len(seen), n)
			}
		})
	}
}

func TestGraphUsers(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)

	t.Run("default properties leave out accountEnabled", func(t *testing.T) {
		r := graphGet(t, s, tok, "/v1.0/users/ALICE@fabrikam.example", nil)
		if r.status != http.StatusOK {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		m := r.json(t)
		if m["id"] != guid(1, 1) || m["userPrincipalName"] != "alice@fabrikam.example" || m["displayName"] != "Alice Able" || m["mail"] != "alice@fabrikam.example" {
			t.Errorf("user %v", m)
		}
		if _, ok := m["accountEnabled"]; ok {
			t.Error("accountEnabled returned without $select")
		}
		if ctx := m["@odata.context"]; ctx != s.URL()+"/v1.0/$metadata#users/$entity" {
			t.Errorf("@odata.context %v", ctx)
		}
	})

	t.Run("select", func(t *testing.T) {
		r := graphGet(t, s, tok, "/v1.0/users/"+guid(1, 3)+"?$select=id,accountEnabled", nil)
		m := r.json(t)
		if len(m) != 3 || m["accountEnabled"] != false || m["id"] != guid(1, 3) {
			t.Errorf("selected user %v, want @odata.context, id and accountEnabled=false", m)
		}
		if ctx := m["@odata.context"]; ctx != s.URL()+"/v1.0/$metadata#users(id,accountEnabled)/$entity" {
			t.Errorf("@odata.context %v", ctx)
		}
	})

	t.Run("unknown user", func(t *testing.T) {
		r := graphGet(t, s, tok, "/v1.0/users/nobody@fabrikam.example", nil)
		if r.status != http.StatusNotFound || r.errorCode(t) != "Request_ResourceNotFound" {
			t.Errorf("status %d: %s", r.status, r.body)
		}
	})

	filters := []struct {
		name   string
		filter string
		want   []string
	}{
		{name: "upn eq", filter: "userPrincipalName eq 'bob@fabrikam.example'", want: []string{"Bob Baker"}},
		{name: "upn eq any case", filter: "userPrincipalName eq 'BOB@Fabrikam.example'", want: []string{"Bob Baker"}},
		{name: "displayName eq", filter: "displayName eq 'Alice Able'", want: []string{"Alice Able"}},
		{name: "startswith", filter: "startswith(displayName,'b')", want: []string{"Bob Baker", "Bulk Member"}},
		{name: "disabled", filter: "accountEnabled eq false", want: []string{"Carol Cole"}},
		{name: "enabled and startswith", filter: "accountEnabled eq true and startswith(userPrincipalName,'a')", want: []string{"Alice Able"}},
		{name: "or", filter: "displayName eq 'Alice Able' or displayName eq 'Carol Cole'", want: []string{"Alice Able", "Carol Cole"}},
		{name: "in", filter: "id in ('" + guid(1, 2) + "','" + guid(1, 4) + "')", want: []string{"Bob Baker", "Bulk Member"}},
		{name: "quote in literal", filter: "displayName eq 'O''Brien'", want: nil},
		{name: "no match", filter: "displayName eq 'Nobody'", want: nil},
	}
	for _, tt := range filters {
		t.Run("filter "+tt.name, func(t *testing.T) {
			r := graphGet(t, s, tok, "/v1.0/users?$filter="+url.QueryEscape(tt.filter), nil)
			if r.status != http.StatusOK {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if got := displayNames(values(t, r.json(t))); !slices.Equal(got, tt.want) {
				t.Errorf("users %v, want %v", got, tt.want)
			}
		})
	}

	t.Run("count", func(t *testing.T) {
		tests := []struct {
			path string
			want int
		}{
			{path: "/v1.0/users/$count", want: 4},
			{path: "/v1.0/users/$count?$filter=" + url.QueryEscape("accountEnabled eq true"), want: 3},
			{path: "/v1.0/groups/$count", want: 4},
		}
		for _, tt := range tests {
			r := graphGet(t, s, tok, tt.path, eventual)
			if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
				t.Fatalf("%s: status %d, content type %q", tt.path, r.status, r.header.Get("Content-Type"))
			}
			if got, err := strconv.Atoi(string(r.body)); err != nil || got != tt.want {
				t.Errorf("%s = %q, want %d", tt.path, r.body, tt.want)
			}
		}
	})

	t.Run("list with select, top and order", func(t *testing.T) {
		r := graphGet(t, s, tok, "/v1.0/users?$select=displayName&$top=3&$orderby=displayName%20desc", nil)
		m := r.json(t)
		objs := values(t, m)
		var got []string
		for _, o := range objs {
			if len(o) != 1 {
				t.Errorf("selected object %v has more than displayName", o)
			}
			got = append(got, o["displayName"].(string))
		}
		if want := []string{"Carol Cole", "Bulk Member", "Bob Baker"}; !slices.Equal(got, want) {
			t.Errorf("users %v, want %v", got, want)
		}
		if next, _ := m["@odata.nextLink"].(string); next == "" {
			t.Error("no nextLink for the fourth user")
		} else {
			r := graphGet(t, s, tok, next, nil)
			if got := displayNames(values(t, r.json(t))); !slices.Equal(got, []string{"Alice Able"}) {
				t.Errorf("second page %v", got)
			}
		}
	})

	t.Run("search", func(t *testing.T) {
		r := graphGet(t, s, tok, "/v1.0/users?$search="+url.QueryEscape(`"displayName:ba" OR "userPrincipalName:alice"`), eventual)
		if got := displayNames(values(t, r.json(t))); !slices.Equal(got, []string{"Alice Able", "Bob Baker"}) {
			t.Errorf("search found %v", got)
		}
	})
}

func TestGraphServicePrincipalsAndGroups(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)
	tests := []struct {
		name     string
		path     string
		want     int
		wantName []string
	}{
		{name: "sp by id", path: "/v1.0/servicePrincipals/" + guid(3, 1), want: 200, wantName: []string{"etl-bot"}},
		{name: "sp by app id key", path: "/v1.0/servicePrincipals(appId='" + guid(4, 1) + "')", want: 200, wantName: []string{"etl-bot"}},
		{name: "sp filter appId", path: "/v1.0/servicePrincipals?$filter=" + url.QueryEscape("appId eq '"+guid(4, 2)+"'"), want: 200, wantName: []string{"portcullis-graph"}},
		{name: "sp filter displayName", path: "/v1.0/servicePrincipals?$filter=" + url.QueryEscape("displayName eq 'etl-bot'"), want: 200, wantName: []string{"etl-bot"}},
		{name: "sp unknown id", path: "/v1.0/servicePrincipals/" + guid(3, 99), want: 404},
		{name: "sp unknown app id", path: "/v1.0/servicePrincipals(appId='" + guid(4, 99) + "')", want: 404},
		{name: "group by id", path: "/v1.0/groups/" + guid(2, 4), want: 200, wantName: []string{"Finance"}},
		{name: "group filter displayName", path: "/v1.0/groups?$filter=" + url.QueryEscape("displayName eq 'data'"), want: 200, wantName: []string{"Data"}},
		{name: "group filter id", path: "/v1.0/groups?$filter=" + url.QueryEscape("id eq '"+guid(2, 1)+"'"), want: 200, wantName: []string{"Platform"}},
		{name: "group unknown", path: "/v1.0/groups/" + guid(2, 99), want: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := graphGet(t, s, tok, tt.path, nil)
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.body)
			}
			if tt.want == 404 {
				if code := r.errorCode(t); code != "Request_ResourceNotFound" {
					t.Errorf("code %q", code)
				}
				return
			}
			m := r.json(t)
			var got []string
			if _, ok := m["value"]; ok {
				got = displayNames(values(t, m))
			} else {
				got = []string{fmt.Sprint(m["displayName"])}
			}
			if !slices.Equal(got, tt.wantName) {
				t.Errorf("got %v, want %v", got, tt.wantName)
			}
		})
	}
}

func TestGraphFaultsKeepErrorShape(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)
	s.SetFault(EndpointGraph, Fault{Status: http.StatusTooManyRequests, RetryAfter: 2 * time.Second, Times: 1})
	r := graphGet(t, s, tok, "/v1.0/users/alice@fabrikam.example", nil)
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "2" {
		t.Fatalf("status %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	if code := r.errorCode(t); code != "TooManyRequests" {
		t.Errorf("code %q", code)
	}
	if r := graphGet(t, s, tok, "/v1.0/users/alice@fabrikam.example", nil); r.status != http.StatusOK {
		t.Errorf("after the fault: status %d", r.status)
	}
}

func TestGraphGetMemberObjects(t *testing.T) {
	s := newGraphSim(t, 0)
	tok := appToken(t, s)
	req, err := http.NewRequest(http.MethodPost, s.URL()+"/v1.0/users/"+guid(1, 1)+"/getMemberObjects", strings.NewReader(`{"securityEnabledOnly":false}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Value []string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	slices.Sort(body.Value)
	if want := []string{guid(2, 1), guid(2, 2), guid(2, 3)}; !slices.Equal(body.Value, want) {
		t.Errorf("member objects %v, want %v", body.Value, want)
	}
}

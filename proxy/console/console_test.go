package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
)

const (
	tenantID  = "6f1d2c3b-8e4a-4b5c-9d6e-1f2a3b4c5d6e"
	appID     = "d8b2f1e3-5c4a-4b6f-9e7d-0a1b2c3d4e5f"
	appSecret = "console-test-secret"
	userCount = 7
)

// sim is a simulated tenant with userCount users, for azure_search.
var sim *entrasim.Server

func TestMain(m *testing.M) {
	var users []entrasim.User
	for i := 1; i <= userCount; i++ {
		users = append(users, entrasim.User{
			ID:          fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
			UPN:         fmt.Sprintf("user%d@console.example", i),
			DisplayName: fmt.Sprintf("User %d", i),
		})
	}
	var err error
	sim, err = entrasim.New(&entrasim.Directory{
		Tenant:            entrasim.Tenant{ID: tenantID, Domain: "console.example", DisplayName: "console tests"},
		Applications:      []entrasim.Application{{AppID: appID, DisplayName: "portcullis", PublicClient: true}},
		Users:             users,
		ServicePrincipals: []entrasim.ServicePrincipal{{ID: "b0000009-0000-4000-8000-000000000009", AppID: appID, DisplayName: "portcullis", Secrets: []string{appSecret}}},
	}, entrasim.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the Entra ID simulator:", err)
		os.Exit(1)
	}
	code := m.Run()
	sim.Close()
	os.Exit(code)
}

// graphClient is a real Graph client on the simulator, with an app-only
// token, as the console gets from auth.Authorizer.GraphClient.
func graphClient(t *testing.T) *graph.Client {
	t.Helper()
	hc := sim.HTTPClient()
	cred, err := confidential.NewCredFromSecret(appSecret)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
		Authority: sim.Authority(), ClientID: appID, Credential: cred,
		Endpoint: sim.GraphEndpoint(), HTTPClient: hc, DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	gc, err := graph.New(graph.Options{Endpoint: sim.GraphEndpoint(), HTTPClient: hc, Tokens: tokens, MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return gc
}

// fixedServer is a proxy seen from the console: a few sessions and
// identities, and a record of what was ended.
type fixedServer struct {
	cfg      *config.Config
	sessions []proxy.SessionInfo
	ids      []proxy.IdentitySeen

	mu    sync.Mutex
	ended []string
	// lingering sessions are ended but do not close before End's context
	// ends.
	lingering map[string]bool
}

func (s *fixedServer) Sessions() []proxy.SessionInfo          { return s.sessions }
func (s *fixedServer) RecentIdentities() []proxy.IdentitySeen { return s.ids }
func (s *fixedServer) Config() *config.Config                 { return s.cfg }
func (s *fixedServer) End(ctx context.Context, id string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.sessions {
		if x.ID == id {
			s.ended = append(s.ended, id)
			if s.lingering[id] {
				<-ctx.Done()
				return true, ctx.Err()
			}
			return true, nil
		}
	}
	return false, nil
}

var (
	started = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	admin   = Caller{SessionID: "c0ffee", Identity: auth.Identity{Kind: auth.KindUser, Provider: "contoso", UPN: "erin@contoso.example", ObjectID: "e"}}
)

func newFixedServer() *fixedServer {
	return &fixedServer{
		cfg: &config.Config{
			Providers: []config.Provider{{Name: "contoso"}},
			Resources: []config.Resource{{
				Name: "analytics", Protocol: "postgres", Address: "db:5432", Database: "analytics",
				AllowGroups: []string{"Analysts"},
				Credentials: []config.CredentialMapping{{Groups: []string{"Analysts"}, User: "analyst_ro"}},
			}},
			Admin: config.Admin{Groups: []string{"Admins"}},
		},
		sessions: []proxy.SessionInfo{
			{ID: "a1", Protocol: "postgres", Resource: "analytics", LoginName: "alice@contoso.example", BackendUser: "analyst_ro",
				Identity: auth.Identity{UPN: "alice@contoso.example", ObjectID: "a"}, Method: auth.MethodSessionKey,
				ClientAddr: netip.MustParseAddrPort("10.0.0.5:51000"), Accepted: started, Started: started, BytesToBackend: 120, BytesToClient: 4096},
			{ID: "c0ffee", Protocol: "postgres", Resource: config.ConsoleResource, LoginName: "erin@contoso.example",
				Identity: admin.Identity, ClientAddr: netip.MustParseAddrPort("10.0.0.9:52000"), Accepted: started},
		},
		ids: []proxy.IdentitySeen{{
			Identity:  auth.Identity{Kind: auth.KindUser, Provider: "contoso", UPN: "alice@contoso.example", ObjectID: "a"},
			LoginName: "alice@contoso.example", Resource: "analytics", Method: auth.MethodSessionKey,
			Groups: []string{"Analysts", "Everyone"}, GroupCount: 3, LastSeen: started, Connections: 2,
		}},
	}
}

type fakeTOTP struct {
	mu    sync.Mutex
	reset []mfa.User
}

func (f *fakeTOTP) Reset(_ context.Context, u mfa.User) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reset = append(f.reset, u)
	return true, nil
}

func newConsole(t *testing.T, srv *fixedServer, mod func(*Deps)) *Console {
	t.Helper()
	d := Deps{Server: srv}
	if mod != nil {
		mod(&d)
	}
	c, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func str(p *string) string {
	if p == nil {
		return "NULL"
	}
	return *p
}

// column returns the cells of the named column.
func column(t *testing.T, r *Result, name string) []string {
	t.Helper()
	for i, c := range r.Columns {
		if c == name {
			var out []string
			for _, row := range r.Rows {
				out = append(out, str(row[i]))
			}
			return out
		}
	}
	t.Fatalf("no column %q in %v", name, r.Columns)
	return nil
}

func wantCode(t *testing.T, err error, code string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v, want a console error %s", err, code)
	}
	if e.Code != code {
		t.Fatalf("code %s (%s), want %s", e.Code, e.Message, code)
	}
	return e
}

func TestParse(t *testing.T) {
	tests := []struct {
		name   string
		query  string
		want   string // command name; empty when refused
		code   string // SQLSTATE of the refusal
		target string
	}{
		{name: "show sessions", query: "SHOW SESSIONS", want: "show sessions"},
		{name: "lower case and semicolon", query: "show resources;", want: "show resources"},
		{name: "mixed case and space", query: "  Show\tUsers  ; ", want: "show users"},
		{name: "help", query: "show help", want: "show help"},
		{name: "stats", query: "SHOW STATS", want: "show stats"},
		{name: "kill", query: "KILL 0123abcd", want: "kill", target: "0123abcd"},
		{name: "kill quoted", query: "kill '0123abcd';", want: "kill", target: "0123abcd"},
		{name: "reload", query: "reload", want: "reload"},
		{name: "totp reset", query: "TOTP RESET alice@contoso.example", want: "totp reset", target: "alice@contoso.example"},
		{name: "totp reset with provider", query: "totp reset 'alice@contoso.example' contoso", want: "totp reset", target: "alice@contoso.example"},
		{name: "azure_search", query: "CALL azure_search('contoso', '/v1.0/users?$filter=startswith(displayName,''A'')')", want: "azure_search", target: "contoso /v1.0/users?$filter=startswith(displayName,'A')"},
		{name: "azure_search spaced", query: "call AZURE_SEARCH ( 'contoso' , '/v1.0/users/$count' ) ;", want: "azure_search", target: "contoso /v1.0/users/$count"},
		{name: "a comment", query: "-- what is open?\nSHOW SESSIONS", want: "show sessions"},
		{name: "unknown", query: "SELECT 1", code: CodeSyntaxError},
		{name: "unknown show", query: "SHOW TABLES", code: CodeSyntaxError},
		{name: "kill without id", query: "KILL", code: CodeSyntaxError},
		{name: "kill two ids", query: "KILL a b", code: CodeSyntaxError},
		{name: "totp without user", query: "TOTP RESET", code: CodeSyntaxError},
		{name: "totp other verb", query: "TOTP ENROLL alice", code: CodeSyntaxError},
		{name: "azure_search unquoted", query: "CALL azure_search(contoso, /v1.0/users)", code: CodeSyntaxError},
		{name: "azure_search one argument", query: "CALL azure_search('/v1.0/users')", code: CodeSyntaxError},
		{name: "other procedure", query: "CALL drop_everything()", code: CodeSyntaxError},
		{name: "unterminated", query: "KILL 'abc", code: CodeSyntaxError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stmts, err := splitStatements(tt.query)
			if err == nil && len(stmts) != 1 {
				t.Fatalf("split into %q", stmts)
			}
			var cmd *command
			if err == nil {
				var toks []token
				if toks, err = tokenize(stmts[0]); err == nil {
					cmd, err = parse(toks)
				}
			}
			if tt.code == "" {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				if cmd.name != tt.want || cmd.target != tt.target {
					t.Errorf("parsed %q (target %q), want %q (target %q)", cmd.name, cmd.target, tt.want, tt.target)
				}
				return
			}
			e := wantCode(t, err, tt.code)
			if !strings.Contains(e.Hint, "SHOW HELP") {
				t.Errorf("hint %q does not point to SHOW HELP", e.Hint)
			}
		})
	}
}

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name, query string
		want        []string
	}{
		{name: "one", query: "SHOW HELP", want: []string{"SHOW HELP"}},
		{name: "two", query: "SHOW HELP; SHOW USERS;", want: []string{"SHOW HELP", "SHOW USERS"}},
		{name: "semicolon in a string", query: "CALL azure_search('a', '/v1.0/users?x=1;2'); RELOAD", want: []string{"CALL azure_search('a', '/v1.0/users?x=1;2')", "RELOAD"}},
		{name: "empty", query: " ; ;", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitStatements(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestShowCommands(t *testing.T) {
	srv := newFixedServer()
	stats := []Stat{{Name: "portcullis_sign_ins_total", Labels: `method="device_code", result="ok"`, Value: 3}}
	c := newConsole(t, srv, func(d *Deps) { d.Stats = func() []Stat { return stats } })
	ctx := context.Background()

	res, err := c.Exec(ctx, admin, "SHOW SESSIONS; SHOW RESOURCES; SHOW USERS; SHOW STATS; SHOW HELP")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("%d results for 5 statements", len(res))
	}
	for _, r := range res {
		if r.Tag != "SHOW" {
			t.Errorf("tag %q, want SHOW", r.Tag)
		}
	}
	sessions, resources, users, st, help := res[0], res[1], res[2], res[3], res[4]
	for _, tt := range []struct {
		name string
		r    *Result
		col  string
		want []string
	}{
		{"session ids", sessions, "id", []string{"a1", "c0ffee"}},
		{"session users", sessions, "user", []string{"alice@contoso.example", "erin@contoso.example"}},
		{"session backend users", sessions, "backend_user", []string{"analyst_ro", "NULL"}},
		{"session states", sessions, "state", []string{"active", "console"}},
		{"session client addresses", sessions, "client_addr", []string{"10.0.0.5:51000", "10.0.0.9:52000"}},
		{"session start", sessions, "started", []string{"2025-03-04 05:06:07+00", "2025-03-04 05:06:07+00"}},
		{"bytes to backend", sessions, "bytes_to_backend", []string{"120", "0"}},
		{"bytes to client", sessions, "bytes_to_client", []string{"4096", "0"}},
		{"resource names", resources, "name", []string{"analytics"}},
		{"resource credentials", resources, "credentials", []string{"Analysts → analyst_ro"}},
		{"resource provider defaults to the only one", resources, "provider", []string{"contoso"}},
		{"active sessions per resource", resources, "active_sessions", []string{"1"}},
		{"users", users, "user", []string{"alice@contoso.example"}},
		{"user groups", users, "groups", []string{"Analysts, Everyone, … (1 more)"}},
		{"user connections", users, "connections", []string{"2"}},
		{"stats", st, "value", []string{"3"}},
		{"stats labels", st, "labels", []string{`method="device_code", result="ok"`}},
	} {
		if got := column(t, tt.r, tt.col); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: %s = %q, want %q", tt.name, tt.col, got, tt.want)
		}
	}
	if got := column(t, help, "command"); len(got) != len(help.Rows) || !strings.Contains(strings.Join(got, "\n"), "CALL azure_search") {
		t.Errorf("help lists %q", got)
	}
}

func TestKill(t *testing.T) {
	srv := newFixedServer()
	c := newConsole(t, srv, nil)
	ctx := context.Background()

	res, err := c.Exec(ctx, admin, "KILL a1")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Tag != "KILL" || len(res[0].Notices) != 1 || !strings.Contains(res[0].Notices[0], "alice@contoso.example") {
		t.Errorf("KILL answered %+v", res[0])
	}
	if fmt.Sprint(srv.ended) != "[a1]" {
		t.Errorf("ended %v, want [a1]", srv.ended)
	}

	_, err = c.Exec(ctx, admin, "KILL nosuch")
	wantCode(t, err, CodeUndefinedObject)
	_, err = c.Exec(ctx, admin, "KILL c0ffee")
	wantCode(t, err, CodeObjectInUse)
	if fmt.Sprint(srv.ended) != "[a1]" {
		t.Errorf("ended %v after refused KILLs", srv.ended)
	}

	// A session that does not close in time: KILL says so rather than
	// report it ended.
	srv.sessions = append(srv.sessions, proxy.SessionInfo{ID: "b2", Protocol: "mysql", Resource: "analytics", LoginName: "bob@contoso.example", Accepted: started})
	srv.lingering = map[string]bool{"b2": true}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = c.Exec(short, admin, "KILL b2")
	wantCode(t, err, CodeQueryCanceled)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("KILL of a lingering session: %v", err)
	}
}

// The first failing statement stops the rest, as in a database.
func TestExecStopsAtTheFirstError(t *testing.T) {
	srv := newFixedServer()
	c := newConsole(t, srv, nil)
	res, err := c.Exec(context.Background(), admin, "SHOW HELP; NONSENSE; KILL a1")
	wantCode(t, err, CodeSyntaxError)
	if len(res) != 1 {
		t.Errorf("%d results before the error, want 1", len(res))
	}
	if len(srv.ended) != 0 {
		t.Errorf("a statement after the error ran: ended %v", srv.ended)
	}
}

func TestReloadAndTOTP(t *testing.T) {
	srv := newFixedServer()
	ctx := context.Background()

	off := newConsole(t, srv, nil)
	_, err := off.Exec(ctx, admin, "RELOAD")
	wantCode(t, err, CodeFeatureNotEnabled)
	_, err = off.Exec(ctx, admin, "TOTP RESET alice@contoso.example")
	e := wantCode(t, err, CodeFeatureNotEnabled)
	if !strings.Contains(e.Message, "TOTP") {
		t.Errorf("message %q", e.Message)
	}

	totp := &fakeTOTP{}
	reloadErr := errors.New("invalid configuration (2 problems):\n\tp.yaml:3: resources[0].name: is required\n\tp.yaml:9: listeners: bad")
	fail := true
	on := newConsole(t, srv, func(d *Deps) {
		d.TOTP = totp
		d.Reload = func(context.Context) (string, error) {
			if fail {
				return "", reloadErr
			}
			return "configuration reloaded: resources added sales", nil
		}
	})
	_, err = on.Exec(ctx, admin, "RELOAD")
	e = wantCode(t, err, CodeConfigFileError)
	if !strings.Contains(e.Message, "running one stays") || !strings.Contains(e.Detail, "resources[0].name") {
		t.Errorf("reload error %q / %q", e.Message, e.Detail)
	}
	fail = false
	res, err := on.Exec(ctx, admin, "reload;")
	if err != nil || res[0].Tag != "RELOAD" || !strings.Contains(res[0].Notices[0], "added sales") {
		t.Errorf("RELOAD = %+v, %v", res, err)
	}

	res, err = on.Exec(ctx, admin, "TOTP RESET Alice@Contoso.Example")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Tag != "TOTP" || len(totp.reset) != 1 || totp.reset[0] != mfa.NewUser("contoso", "alice@contoso.example") {
		t.Errorf("TOTP RESET = %+v, reset %v", res[0], totp.reset)
	}
	_, err = on.Exec(ctx, admin, "TOTP RESET alice@contoso.example fabrikam")
	wantCode(t, err, CodeUndefinedObject)
}

func TestAzureSearch(t *testing.T) {
	gc := graphClient(t)
	srv := newFixedServer()
	c := newConsole(t, srv, func(d *Deps) {
		d.RowLimit = 5
		d.Graph = func(p string) (GraphSearcher, error) {
			if p != "contoso" {
				return nil, fmt.Errorf("there is no provider called %q", p)
			}
			return gc, nil
		}
	})
	ctx := context.Background()
	run := func(query string) (*Result, error) {
		res, err := c.Exec(ctx, admin, query)
		if err != nil {
			return nil, err
		}
		return res[0], nil
	}

	t.Run("count", func(t *testing.T) {
		r, err := run("CALL azure_search('contoso', '/v1.0/users/$count')")
		if err != nil {
			t.Fatal(err)
		}
		if got := column(t, r, "count"); fmt.Sprint(got) != fmt.Sprint([]string{fmt.Sprint(userCount)}) || r.Tag != "SELECT 1" {
			t.Errorf("count = %q, tag %q; want %d", got, r.Tag, userCount)
		}
	})
	t.Run("pages up to the row limit", func(t *testing.T) {
		before := sim.Requests(entrasim.EndpointGraph)
		r, err := run("CALL azure_search('contoso', '/v1.0/users?$select=id,userPrincipalName&$top=2')")
		if err != nil {
			t.Fatal(err)
		}
		upns := column(t, r, "userPrincipalName")
		if len(upns) != 5 || upns[0] != "user1@console.example" || upns[4] != "user5@console.example" {
			t.Errorf("userPrincipalName = %q, want the first 5 users", upns)
		}
		if r.Tag != "SELECT 5" {
			t.Errorf("tag %q", r.Tag)
		}
		if len(r.Notices) != 1 || !strings.Contains(r.Notices[0], "stopped at 5 rows") {
			t.Errorf("notices %q, want one about the row limit", r.Notices)
		}
		if n := sim.Requests(entrasim.EndpointGraph) - before; n != 3 {
			t.Errorf("%d Graph requests for 3 pages of 2", n)
		}
	})
	t.Run("all pages within the limit", func(t *testing.T) {
		c2 := newConsole(t, srv, func(d *Deps) { d.Graph = c.d.Graph })
		res, err := c2.Exec(ctx, admin, "CALL azure_search('contoso', '/v1.0/users?$top=3')")
		if err != nil {
			t.Fatal(err)
		}
		r := res[0]
		if ids := column(t, r, "id"); len(ids) != userCount || len(r.Notices) != 0 {
			t.Errorf("ids %q, notices %q; want all %d users", ids, r.Notices, userCount)
		}
		column(t, r, "displayName")
	})
	t.Run("one entity", func(t *testing.T) {
		r, err := run("CALL azure_search('contoso', '/v1.0/users/user3@console.example')")
		if err != nil {
			t.Fatal(err)
		}
		if got := column(t, r, "displayName"); fmt.Sprint(got) != "[User 3]" {
			t.Errorf("displayName = %q", got)
		}
		for _, col := range r.Columns {
			if col == "@odata.context" {
				t.Error("@odata.context is a column")
			}
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, err := run("CALL azure_search('contoso', '/v1.0/users/nobody@console.example')")
		wantCode(t, err, CodeUndefinedObject)
	})
	t.Run("another host is refused", func(t *testing.T) {
		before := sim.Requests(entrasim.EndpointGraph)
		_, err := run("CALL azure_search('contoso', 'https://attacker.example/v1.0/users')")
		e := wantCode(t, err, CodeInvalidParameter)
		if !errors.Is(e, graph.ErrOutsideEndpoint) {
			t.Errorf("cause %v", e.Err)
		}
		if sim.Requests(entrasim.EndpointGraph) != before {
			t.Error("a request was sent")
		}
	})
	t.Run("outside the API", func(t *testing.T) {
		_, err := run("CALL azure_search('contoso', '/" + tenantID + "/oauth2/v2.0/token')")
		wantCode(t, err, CodeInvalidParameter)
	})
	t.Run("unknown provider", func(t *testing.T) {
		_, err := run("CALL azure_search('fabrikam', '/v1.0/users')")
		wantCode(t, err, CodeUndefinedObject)
	})
	t.Run("graph down", func(t *testing.T) {
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusServiceUnavailable})
		defer sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		_, err := run("CALL azure_search('contoso', '/v1.0/users')")
		wantCode(t, err, CodeSystemError)
	})
}

func TestTableColumnsAreTheUnionOfKeys(t *testing.T) {
	var tab table
	for _, item := range []string{
		`{"id":"1","name":"a","tags":["x","y"]}`,
		`{"id":"2","extra":{"k":1},"name":null}`,
		`{"id":"3","flag":true,"n":42}`,
	} {
		if err := tab.add([]byte(item)); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(tab.columns, ","); got != "id,name,tags,extra,flag,n" {
		t.Errorf("columns %s", got)
	}
	var rows []string
	for _, r := range tab.rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = str(c)
		}
		rows = append(rows, strings.Join(cells, "|"))
	}
	want := []string{
		`1|a|["x","y"]|NULL|NULL|NULL`,
		`2|NULL|NULL|{"k":1}|NULL|NULL`,
		`3|NULL|NULL|NULL|true|42`,
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("rows\n%s\nwant\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}

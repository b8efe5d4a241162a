package graph_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"

	"github.com/portcullisdb/portcullis/auth/entrasim"
	"github.com/portcullisdb/portcullis/graph"
)

const (
	tenantID     = "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716"
	graphAppName = "portcullis-graph"
	graphSecret  = "test-only-graph-client-secret"
)

func id(kind, n int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", kind, n) }

// directory builds a tenant with three levels of nesting (Platform ⊃ Data
// ⊃ Analysts ∋ alice), a service principal in a nested group, two groups
// that share a name, a disabled user, and bulk groups that only the bulk
// user is in.
func directory(bulk int) *entrasim.Directory {
	off := false
	d := &entrasim.Directory{
		Tenant: entrasim.Tenant{ID: tenantID, Domain: "tailspin.example"},
		Users: []entrasim.User{
			{ID: id(1, 1), UPN: "alice@tailspin.example", DisplayName: "Alice Able"},
			{ID: id(1, 2), UPN: "bob@tailspin.example", DisplayName: "Bob Baker"},
			{ID: id(1, 3), UPN: "carol@tailspin.example", DisplayName: "Carol Cole", Enabled: &off},
			{ID: id(1, 4), UPN: "bulk@tailspin.example", DisplayName: "Bulk Member"},
		},
		Groups: []entrasim.Group{
			{ID: id(2, 1), DisplayName: "Platform", Members: entrasim.GroupMembers{Groups: []string{"Data"}}},
			{ID: id(2, 2), DisplayName: "Data", Members: entrasim.GroupMembers{Groups: []string{"Analysts"}, ServicePrincipals: []string{"etl-bot"}}},
			{ID: id(2, 3), DisplayName: "Analysts", Members: entrasim.GroupMembers{Users: []string{"alice@tailspin.example"}}},
			{ID: id(2, 4), DisplayName: "Finance", Members: entrasim.GroupMembers{Users: []string{"bob@tailspin.example"}}},
			{ID: id(2, 5), DisplayName: "Ops", Members: entrasim.GroupMembers{Users: []string{"bob@tailspin.example"}}},
			{ID: id(2, 6), DisplayName: "Ops", Members: entrasim.GroupMembers{}},
		},
		ServicePrincipals: []entrasim.ServicePrincipal{
			{ID: id(3, 1), AppID: id(4, 1), DisplayName: "etl-bot"},
			{ID: id(3, 2), AppID: id(4, 2), DisplayName: graphAppName, Secrets: []string{graphSecret}},
			{ID: id(3, 3), AppID: id(4, 3), DisplayName: "twin"},
			{ID: id(3, 4), AppID: id(4, 4), DisplayName: "twin"},
		},
	}
	for i := range bulk {
		d.Groups = append(d.Groups, entrasim.Group{
			ID:          id(5, i),
			DisplayName: fmt.Sprintf("Bulk %05d", i),
			Members:     entrasim.GroupMembers{Users: []string{"bulk@tailspin.example"}},
		})
	}
	return d
}

func newSim(t *testing.T, bulk int) *entrasim.Server {
	t.Helper()
	s, err := entrasim.New(directory(bulk), entrasim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// simTokens mints tokens directly from the simulator, standing in for a
// token grant so that these tests exercise Graph alone.
type simTokens struct {
	sim     *entrasim.Server
	subject string
	scopes  []string // delegated when set
	calls   atomic.Int32
}

func (s *simTokens) Token(context.Context) (string, error) {
	s.calls.Add(1)
	spec := entrasim.TokenSpec{Subject: s.subject, Audience: s.sim.URL(), Version: 1, Scopes: s.scopes}
	if s.scopes == nil {
		spec.Roles = []string{"GroupMember.Read.All", "User.Read.All", "Application.Read.All"}
	}
	return s.sim.IssueAccessToken(spec)
}

func newClient(t *testing.T, sim *entrasim.Server, opts graph.Options) *graph.Client {
	t.Helper()
	opts.Endpoint = sim.GraphEndpoint()
	opts.HTTPClient = sim.HTTPClient()
	if opts.Tokens == nil {
		opts.Tokens = &simTokens{sim: sim, subject: graphAppName}
	}
	c, err := graph.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func names(groups []graph.Group) []string {
	var out []string
	for _, g := range groups {
		out = append(out, g.DisplayName)
	}
	return out
}

func TestTransitiveGroups(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	c := newClient(t, sim, graph.Options{CacheTTL: -1})
	alice := &simTokens{sim: sim, subject: "alice@tailspin.example", scopes: []string{"User.Read"}}
	tests := []struct {
		name    string
		subject graph.Subject
		want    []string
	}{
		{name: "three levels of nesting", subject: graph.Subject{Kind: graph.KindUser, ID: id(1, 1)}, want: []string{"Analysts", "Data", "Platform"}},
		{name: "by upn", subject: graph.Subject{Kind: graph.KindUser, ID: "alice@tailspin.example"}, want: []string{"Analysts", "Data", "Platform"}},
		{name: "direct groups only", subject: graph.Subject{Kind: graph.KindUser, ID: id(1, 2)}, want: []string{"Finance", "Ops"}},
		{name: "no groups", subject: graph.Subject{Kind: graph.KindUser, ID: id(1, 3)}, want: nil},
		{name: "service principal through nesting", subject: graph.Subject{Kind: graph.KindServicePrincipal, ID: id(3, 1)}, want: []string{"Data", "Platform"}},
		{name: "delegated token uses /me", subject: graph.Subject{Kind: graph.KindUser, ID: id(1, 1), Token: alice}, want: []string{"Analysts", "Data", "Platform"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.TransitiveGroups(context.Background(), tt.subject)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(names(got), tt.want) {
				t.Errorf("groups %v, want %v", names(got), tt.want)
			}
			for _, g := range got {
				if g.ID == "" {
					t.Errorf("group %q without id", g.DisplayName)
				}
			}
		})
	}
	if alice.calls.Load() == 0 {
		t.Error("the delegated lookup did not use the user's token")
	}

	t.Run("unknown user", func(t *testing.T) {
		_, err := c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: "nobody@tailspin.example"})
		var nf *graph.NotFoundError
		if !errors.As(err, &nf) || nf.Key != "nobody@tailspin.example" {
			t.Errorf("err = %v, want *NotFoundError for nobody", err)
		}
		if graph.IsUnavailable(err) {
			t.Error("a missing user reported as Graph unavailable")
		}
	})
}

func TestTransitiveGroupsManyPages(t *testing.T) {
	t.Parallel()
	const n = 2500
	sim := newSim(t, n)
	c := newClient(t, sim, graph.Options{})
	before := sim.Requests(entrasim.EndpointGraph)
	got, err := c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: "bulk@tailspin.example"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d groups, want %d", len(got), n)
	}
	seen := map[string]bool{}
	for _, g := range got {
		seen[g.ID] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct groups, want %d", len(seen), n)
	}
	// 999 a page: 999 + 999 + 502.
	if reqs := sim.Requests(entrasim.EndpointGraph) - before; reqs != 3 {
		t.Errorf("%d Graph requests, want 3 pages", reqs)
	}
}

func TestThrottling(t *testing.T) {
	t.Parallel()
	alice := graph.Subject{Kind: graph.KindUser, ID: id(1, 1)}

	t.Run("a storm within the budget is waited out", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{MaxRetries: 4, MaxWait: 10 * time.Second})
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: time.Second, Times: 2})
		start := time.Now()
		got, err := c.TransitiveGroups(context.Background(), alice)
		if err != nil {
			t.Fatal(err)
		}
		if elapsed := time.Since(start); elapsed < 2*time.Second {
			t.Errorf("done in %s; two Retry-After: 1 answers ask for at least 2s", elapsed)
		}
		if len(got) != 3 {
			t.Errorf("groups %v", names(got))
		}
		if reqs := sim.Requests(entrasim.EndpointGraph); reqs != 3 {
			t.Errorf("%d requests, want 2 throttled and 1 answered", reqs)
		}
	})

	t.Run("a storm beyond the budget is unavailable", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{MaxRetries: 10, MaxWait: 1500 * time.Millisecond})
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: time.Second})
		start := time.Now()
		_, err := c.TransitiveGroups(context.Background(), alice)
		var ue *graph.UnavailableError
		if !errors.As(err, &ue) {
			t.Fatalf("err = %v, want *UnavailableError", err)
		}
		if ue.Status != http.StatusTooManyRequests || ue.RetryAfter != time.Second || ue.Attempts != 2 {
			t.Errorf("status %d, retry after %s, attempts %d; want 429, 1s, 2", ue.Status, ue.RetryAfter, ue.Attempts)
		}
		if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
			t.Errorf("gave up after %s, beyond MaxWait", elapsed)
		}
	})

	t.Run("retries are bounded by MaxRetries", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{MaxRetries: 2, MaxWait: time.Minute})
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusServiceUnavailable})
		_, err := c.TransitiveGroups(context.Background(), alice)
		var ue *graph.UnavailableError
		if !errors.As(err, &ue) || ue.Status != http.StatusServiceUnavailable {
			t.Fatalf("err = %v, want *UnavailableError with 503", err)
		}
		if reqs := sim.Requests(entrasim.EndpointGraph); reqs != 3 {
			t.Errorf("%d requests, want 1 + 2 retries", reqs)
		}
	})

	t.Run("a passing 500 is retried", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{})
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusInternalServerError, Times: 1})
		if _, err := c.TransitiveGroups(context.Background(), alice); err != nil {
			t.Fatal(err)
		}
	})
}

func TestGraphDown(t *testing.T) {
	t.Parallel()
	alice := graph.Subject{Kind: graph.KindUser, ID: id(1, 1)}
	tests := []struct {
		name       string
		fault      entrasim.Fault
		wantStatus int
	}{
		{name: "connection dropped", fault: entrasim.Fault{Down: true}, wantStatus: 0},
		{name: "503 forever", fault: entrasim.Fault{Status: http.StatusServiceUnavailable}, wantStatus: 503},
		{name: "502 forever", fault: entrasim.Fault{Status: http.StatusBadGateway}, wantStatus: 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim := newSim(t, 0)
			c := newClient(t, sim, graph.Options{MaxRetries: 3, MaxWait: 5 * time.Second})
			sim.SetFault(entrasim.EndpointGraph, tt.fault)
			_, err := c.TransitiveGroups(context.Background(), alice)
			var ue *graph.UnavailableError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want *UnavailableError", err)
			}
			if ue.Status != tt.wantStatus {
				t.Errorf("status %d, want %d", ue.Status, tt.wantStatus)
			}
			if !strings.Contains(err.Error(), "unavailable") || !strings.Contains(err.Error(), id(1, 1)) {
				t.Errorf("message %q should say Graph is unavailable and for whom", err)
			}
		})
	}

	t.Run("caller gives up while throttled", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{MaxWait: time.Minute})
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Status: http.StatusTooManyRequests, RetryAfter: 30 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := c.TransitiveGroups(ctx, alice)
		if !graph.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want *UnavailableError wrapping the deadline", err)
		}
	})

	t.Run("no token", func(t *testing.T) {
		t.Parallel()
		sim := newSim(t, 0)
		c := newClient(t, sim, graph.Options{Tokens: graph.TokenFunc(func(context.Context) (string, error) {
			return "", errors.New("authority unreachable")
		})})
		_, err := c.TransitiveGroups(context.Background(), alice)
		if !graph.IsUnavailable(err) || sim.Requests(entrasim.EndpointGraph) != 0 {
			t.Errorf("err = %v, requests %d; want *UnavailableError and no Graph request", err, sim.Requests(entrasim.EndpointGraph))
		}
	})
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestCache(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	clk := &clock{t: time.Now()}
	c := newClient(t, sim, graph.Options{CacheTTL: time.Minute, Now: clk.Now})
	bob := graph.Subject{Kind: graph.KindUser, ID: id(1, 2)}
	ctx := context.Background()

	lookup := func(want ...string) int {
		t.Helper()
		before := sim.Requests(entrasim.EndpointGraph)
		got, err := c.TransitiveGroups(ctx, bob)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(names(got), want) {
			t.Errorf("groups %v, want %v", names(got), want)
		}
		return sim.Requests(entrasim.EndpointGraph) - before
	}

	if n := lookup("Finance", "Ops"); n != 1 {
		t.Errorf("first lookup made %d requests, want 1", n)
	}
	sim.Directory(func(d *entrasim.Directory) {
		g := d.GroupByName("Analysts")
		g.Members.Users = append(g.Members.Users, "bob@tailspin.example")
	})
	clk.advance(59 * time.Second)
	if n := lookup("Finance", "Ops"); n != 0 {
		t.Errorf("cached lookup made %d requests, want 0", n)
	}
	clk.advance(2 * time.Second)
	if n := lookup("Analysts", "Data", "Finance", "Ops", "Platform"); n != 1 {
		t.Errorf("lookup after the TTL made %d requests, want 1", n)
	}
	// The cache hands out copies.
	got, _ := c.TransitiveGroups(ctx, bob)
	got[0].DisplayName = "tampered"
	if n := lookup("Analysts", "Data", "Finance", "Ops", "Platform"); n != 0 {
		t.Errorf("cached lookup made %d requests", n)
	}
	c.Forget(bob)
	if n := lookup("Analysts", "Data", "Finance", "Ops", "Platform"); n != 1 {
		t.Errorf("lookup after Forget made %d requests, want 1", n)
	}
}

func TestSingleFlight(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	// No cache: only single-flight can keep the count at one.
	c := newClient(t, sim, graph.Options{CacheTTL: -1})
	sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Latency: 500 * time.Millisecond})
	const n = 50
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, err := c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: id(1, 1)})
			if err == nil && len(got) != 3 {
				err = fmt.Errorf("groups %v", names(got))
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if reqs := sim.Requests(entrasim.EndpointGraph); reqs != 1 {
		t.Errorf("%d concurrent lookups made %d Graph requests, want 1", n, reqs)
	}

	t.Run("a caller leaving does not fail the others", func(t *testing.T) {
		before := sim.Requests(entrasim.EndpointGraph)
		subject := graph.Subject{Kind: graph.KindServicePrincipal, ID: id(3, 1)}
		impatient, cancel := context.WithCancel(context.Background())
		first := make(chan error, 1)
		go func() {
			_, err := c.TransitiveGroups(impatient, subject)
			first <- err
		}()
		// Wait until the shared walk is on the wire, then give up on it.
		deadline := time.Now().Add(5 * time.Second)
		for sim.Requests(entrasim.EndpointGraph) == before {
			if time.Now().After(deadline) {
				t.Fatal("the walk never started")
			}
			time.Sleep(5 * time.Millisecond)
		}
		second := make(chan error, 1)
		go func() {
			_, err := c.TransitiveGroups(context.Background(), subject)
			second <- err
		}()
		cancel()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller: err = %v", err)
		}
		if err := <-second; err != nil {
			t.Errorf("patient caller: %v", err)
		}
	})
}

// Concurrent lookups of one user share a request, and nothing is kept:
// the next lookup asks Graph again, and sees a disabled account at once.
func TestUserSingleFlight(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	c := newClient(t, sim, graph.Options{})
	sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Latency: 500 * time.Millisecond, Times: 1})
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		// Both forms of the same key, in both cases.
		key := "alice@tailspin.example"
		if i%2 == 1 {
			key = "Alice@Tailspin.example"
		}
		wg.Go(func() {
			<-start
			u, err := c.User(context.Background(), key)
			if err == nil && (u.ID != id(1, 1) || !u.AccountEnabled) {
				err = fmt.Errorf("user %+v", u)
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if reqs := sim.Requests(entrasim.EndpointGraph); reqs != 1 {
		t.Errorf("%d concurrent lookups of one user made %d Graph requests, want 1", n, reqs)
	}

	sim.Directory(func(d *entrasim.Directory) {
		disabled := false
		d.UserByName("alice@tailspin.example").Enabled = &disabled
	})
	u, err := c.User(context.Background(), "alice@tailspin.example")
	if err != nil || u.AccountEnabled {
		t.Errorf("after the account was disabled: %+v, %v", u, err)
	}
	if reqs := sim.Requests(entrasim.EndpointGraph); reqs != 2 {
		t.Errorf("a later lookup made %d requests in all, want 2: a user is not cached", reqs)
	}
}

func TestResolveGroups(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	c := newClient(t, sim, graph.Options{})
	ctx := context.Background()

	got, err := c.ResolveGroups(ctx, []string{"Analysts", "platform", id(2, 4), "Analysts"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]graph.Group{
		"Analysts": {ID: id(2, 3), DisplayName: "Analysts"},
		"platform": {ID: id(2, 1), DisplayName: "Platform"},
		id(2, 4):   {ID: id(2, 4), DisplayName: "Finance"},
	}
	if len(got) != len(want) {
		t.Errorf("resolved %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%q resolved to %+v, want %+v", k, got[k], w)
		}
	}

	tests := []struct {
		name          string
		refs          []string
		wantUnknown   []string
		wantAmbiguous []string
	}{
		{name: "unknown name", refs: []string{"Analysts", "Nobody's Group"}, wantUnknown: []string{"Nobody's Group"}},
		{name: "unknown id", refs: []string{id(2, 99)}, wantUnknown: []string{id(2, 99)}},
		{name: "ambiguous name", refs: []string{"Ops"}, wantAmbiguous: []string{"Ops"}},
		{name: "all problems at once", refs: []string{"Ops", "Ghosts", "Data", id(2, 77)}, wantUnknown: []string{"Ghosts", id(2, 77)}, wantAmbiguous: []string{"Ops"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.ResolveGroups(ctx, tt.refs)
			var re *graph.ResolveError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want *ResolveError", err)
			}
			if !slices.Equal(re.Unknown, tt.wantUnknown) {
				t.Errorf("unknown %v, want %v", re.Unknown, tt.wantUnknown)
			}
			var amb []string
			for name, ids := range re.Ambiguous {
				amb = append(amb, name)
				if len(ids) < 2 {
					t.Errorf("ambiguous %q lists ids %v", name, ids)
				}
			}
			if !slices.Equal(amb, tt.wantAmbiguous) {
				t.Errorf("ambiguous %v, want %v", amb, tt.wantAmbiguous)
			}
			for _, name := range append(tt.wantUnknown, tt.wantAmbiguous...) {
				if !strings.Contains(err.Error(), name) {
					t.Errorf("message %q does not name %q", err, name)
				}
			}
		})
	}

	t.Run("graph down", func(t *testing.T) {
		sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{Down: true})
		defer sim.SetFault(entrasim.EndpointGraph, entrasim.Fault{})
		_, err := c.ResolveGroups(ctx, []string{"Analysts"})
		if !graph.IsUnavailable(err) {
			t.Errorf("err = %v, want *UnavailableError", err)
		}
	})
}

func TestLookups(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	c := newClient(t, sim, graph.Options{})
	ctx := context.Background()

	t.Run("users", func(t *testing.T) {
		tests := []struct {
			key  string
			want graph.User
		}{
			{key: "alice@tailspin.example", want: graph.User{ID: id(1, 1), UPN: "alice@tailspin.example", DisplayName: "Alice Able", AccountEnabled: true}},
			{key: id(1, 3), want: graph.User{ID: id(1, 3), UPN: "carol@tailspin.example", DisplayName: "Carol Cole", AccountEnabled: false}},
		}
		for _, tt := range tests {
			got, err := c.User(ctx, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("User(%s) = %+v, want %+v", tt.key, got, tt.want)
			}
		}
		_, err := c.User(ctx, "ghost@tailspin.example")
		var nf *graph.NotFoundError
		if !errors.As(err, &nf) {
			t.Errorf("unknown user: err = %v", err)
		}
	})

	t.Run("service principals", func(t *testing.T) {
		sp, err := c.ServicePrincipalByAppID(ctx, id(4, 1))
		if err != nil {
			t.Fatal(err)
		}
		if want := (graph.ServicePrincipal{ID: id(3, 1), AppID: id(4, 1), DisplayName: "etl-bot", AccountEnabled: true}); sp != want {
			t.Errorf("by app id: %+v, want %+v", sp, want)
		}
		sp, err = c.ServicePrincipalByName(ctx, "etl-bot")
		if err != nil || sp.ID != id(3, 1) {
			t.Errorf("by name: %+v, %v", sp, err)
		}
		var nf *graph.NotFoundError
		if _, err := c.ServicePrincipalByAppID(ctx, "it's-not-there"); !errors.As(err, &nf) {
			t.Errorf("unknown app id: err = %v", err)
		}
		if _, err := c.ServicePrincipalByName(ctx, "nobody"); !errors.As(err, &nf) {
			t.Errorf("unknown name: err = %v", err)
		}
		var amb *graph.AmbiguousError
		if _, err := c.ServicePrincipalByName(ctx, "twin"); !errors.As(err, &amb) || len(amb.IDs) != 2 {
			t.Errorf("ambiguous name: err = %v", err)
		}
	})
}

func TestGet(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	c := newClient(t, sim, graph.Options{})
	ctx := context.Background()

	resp, err := c.Get(ctx, "/v1.0/users/$count", http.Header{"ConsistencyLevel": {"eventual"}, "Authorization": {"Bearer stolen"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(resp.Body) != "4" {
		t.Errorf("users/$count: %d %q", resp.StatusCode, resp.Body)
	}
	resp, err = c.Get(ctx, sim.GraphEndpoint()+"/v1.0/groups/"+id(2, 99), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(resp.Body), "Request_ResourceNotFound") {
		t.Errorf("missing group: %d %s", resp.StatusCode, resp.Body)
	}

	before := sim.Requests(entrasim.EndpointGraph)
	for _, u := range []string{
		"https://example.invalid/v1.0/users",
		"http://" + strings.TrimPrefix(sim.GraphEndpoint(), "https://") + "/v1.0/users",
		sim.GraphEndpoint() + "/v1.0/../oauth2/token",
		"//example.invalid/v1.0/users",
		sim.Authority() + "/oauth2/v2.0/token",
	} {
		if _, err := c.Get(ctx, u, nil); !errors.Is(err, graph.ErrOutsideEndpoint) {
			t.Errorf("Get(%s): err = %v, want ErrOutsideEndpoint", u, err)
		}
	}
	if n := sim.Requests(entrasim.EndpointGraph) - before; n != 0 {
		t.Errorf("refused URLs still made %d requests", n)
	}
}

// A nextLink that points at another host must not receive the token.
// Only a hostile or broken server sends one, so a small server plays it.
func TestNextLinkStaysOnEndpoint(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	defer other.Close()
	var hostile *httptest.Server
	hostile = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"value":[{"@odata.type":"#microsoft.graph.group","id":"g1","displayName":"G"}],"@odata.nextLink":%q}`, other.URL+"/v1.0/next")
	}))
	defer hostile.Close()
	c, err := graph.New(graph.Options{
		Endpoint:   hostile.URL,
		HTTPClient: hostile.Client(),
		Tokens:     graph.TokenFunc(func(context.Context) (string, error) { return "app-token", nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: "u1"})
	if !errors.Is(err, graph.ErrOutsideEndpoint) {
		t.Errorf("err = %v, want ErrOutsideEndpoint", err)
	}
	if elsewhere.Load() != 0 {
		t.Error("the token was sent to the nextLink's foreign host")
	}
}

func TestNewChecksEndpoint(t *testing.T) {
	tests := []struct {
		endpoint string
		ok       bool
	}{
		{endpoint: "", ok: true},
		{endpoint: "https://graph.example/", ok: true},
		{endpoint: "http://graph.example", ok: false},
		{endpoint: "https://graph.example?x=1", ok: false},
		{endpoint: "graph.example", ok: false},
	}
	for _, tt := range tests {
		_, err := graph.New(graph.Options{Endpoint: tt.endpoint})
		if (err == nil) != tt.ok {
			t.Errorf("New(%q): err = %v, want ok=%v", tt.endpoint, err, tt.ok)
		}
	}
}

// TestAppTokensThroughMSAL runs the whole path the product uses: MSAL's
// confidential client gets an app-only token from the simulator's token
// endpoint with a client secret, and Graph accepts it.
func TestAppTokensThroughMSAL(t *testing.T) {
	t.Parallel()
	sim := newSim(t, 0)
	cred, err := confidential.NewCredFromSecret(graphSecret)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
		Authority:                sim.Authority(),
		ClientID:                 id(4, 2),
		Credential:               cred,
		Endpoint:                 sim.GraphEndpoint(),
		HTTPClient:               sim.HTTPClient(),
		DisableInstanceDiscovery: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, sim, graph.Options{Tokens: tokens})
	got, err := c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: "alice@tailspin.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names(got), []string{"Analysts", "Data", "Platform"}) {
		t.Errorf("groups %v", names(got))
	}
	// MSAL caches the token: a second lookup asks Graph, not the authority.
	before := sim.Requests(entrasim.EndpointToken)
	if _, err := c.User(context.Background(), "bob@tailspin.example"); err != nil {
		t.Fatal(err)
	}
	if n := sim.Requests(entrasim.EndpointToken) - before; n != 0 {
		t.Errorf("second call made %d token requests, want 0 (cached)", n)
	}

	t.Run("wrong secret", func(t *testing.T) {
		bad, _ := confidential.NewCredFromSecret("not-the-secret")
		tokens, err := graph.NewAppTokens(graph.AppTokenOptions{
			Authority: sim.Authority(), ClientID: id(4, 2), Credential: bad,
			Endpoint: sim.GraphEndpoint(), HTTPClient: sim.HTTPClient(), DisableInstanceDiscovery: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		c := newClient(t, sim, graph.Options{Tokens: tokens})
		_, err = c.TransitiveGroups(context.Background(), graph.Subject{Kind: graph.KindUser, ID: id(1, 1)})
		if !graph.IsUnavailable(err) {
			t.Errorf("err = %v, want *UnavailableError (no token)", err)
		}
		if strings.Contains(err.Error(), "not-the-secret") {
			t.Error("the secret appears in the error")
		}
	})
}

package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// scrape GETs path from h and returns the status and body.
func scrape(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// value is the value of one series in exposition text, -1 if absent.
func value(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

func TestConnectionsAndSignIns(t *testing.T) {
	r := New("v9")
	start := time.Now()
	open := []proxy.SessionInfo{
		{Protocol: "postgres", Resource: "sales", Started: start},
		{Protocol: "postgres", Resource: "sales", Started: start},
		{Protocol: "postgres", Resource: config.ConsoleResource, Identity: auth.Identity{ObjectID: "e"}},
		{Protocol: "mysql"},
	}
	r.WatchSessions(func() []proxy.SessionInfo { return open })

	r.ConnAccepted("pg", "postgres")
	r.ConnAccepted("pg", "postgres")
	r.ConnClosed(proxy.SessionInfo{Protocol: "postgres", Resource: "sales", Started: start, BytesToBackend: 100, BytesToClient: 2000}, nil)
	r.ConnClosed(proxy.SessionInfo{Protocol: "postgres", Resource: "sales", Started: start, BytesToBackend: 1}, errors.New("reset"))
	r.ConnClosed(proxy.SessionInfo{Protocol: "postgres", Resource: "sales"}, errors.New("refused before the session")) // no session
	r.SignIn("postgres", auth.MethodDeviceCode, "ok")
	r.SignIn("postgres", auth.MethodSessionKey, "bad_credentials")
	r.DeviceCodeWait("ok", 40*time.Second)
	r.Failure("postgres", "bad_credentials")
	r.SessionRevoked("operator")
	r.ConfigReloaded(nil)
	r.ConfigReloaded(errors.New("bad file"))
	r.ObserveStore("put_sign_in", time.Millisecond, nil)
	r.ObserveStore("put_sign_in", time.Millisecond, errors.New("down"))

	code, text := scrape(t, r.Handler(), "/")
	if code != http.StatusOK {
		t.Fatalf("scrape: %d", code)
	}
	tests := []struct {
		series string
		want   float64
	}{
		{`portcullis_connections_accepted_total{listener="pg",protocol="postgres"}`, 2},
		{`portcullis_connections_active{protocol="postgres",resource="sales",state="active"}`, 2},
		{`portcullis_connections_active{protocol="postgres",resource="portcullis",state="console"}`, 1},
		{`portcullis_connections_active{protocol="mysql",resource="",state="handshake"}`, 1},
		{`portcullis_sessions_total{protocol="postgres",resource="sales"}`, 2},
		{`portcullis_bytes_relayed_total{direction="to_backend",protocol="postgres",resource="sales"}`, 101},
		{`portcullis_bytes_relayed_total{direction="to_client",protocol="postgres",resource="sales"}`, 2000},
		{`portcullis_connection_failures_total{kind="relay_error",protocol="postgres"}`, 1},
		{`portcullis_connection_failures_total{kind="bad_credentials",protocol="postgres"}`, 1},
		{`portcullis_sign_ins_total{method="device_code",protocol="postgres",result="ok"}`, 1},
		{`portcullis_sign_ins_total{method="session_key",protocol="postgres",result="bad_credentials"}`, 1},
		{`portcullis_device_code_wait_seconds_bucket{result="ok",le="30"}`, 0},
		{`portcullis_device_code_wait_seconds_bucket{result="ok",le="45"}`, 1},
		{`portcullis_sessions_revoked_total{reason="operator"}`, 1},
		{`portcullis_config_reloads_total{result="ok"}`, 1},
		{`portcullis_config_reloads_total{result="failed"}`, 1},
		{`portcullis_store_operation_duration_seconds_count{op="put_sign_in"}`, 2},
		{`portcullis_store_errors_total{op="put_sign_in"}`, 1},
		{`portcullis_build_info{version="v9"}`, 1},
	}
	for _, tt := range tests {
		if got := value(text, tt.series); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
		}
	}
	if !strings.Contains(text, "go_goroutines") || !strings.Contains(text, "process_") {
		t.Error("the runtime and process collectors are missing")
	}

	snap, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range snap {
		if strings.HasPrefix(s.Name, "go_") || strings.HasPrefix(s.Name, "process_") {
			t.Errorf("snapshot has the runtime's %s", s.Name)
		}
		if s.Name == "portcullis_device_code_wait_seconds_sum" && s.Labels == `result="ok"` && s.Value == 40 {
			found = true
		}
	}
	if !found {
		t.Errorf("snapshot has no device-code wait sum of 40: %v", snap)
	}
}

func TestTransportTellsGraphFromEntra(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case strings.HasSuffix(req.URL.Path, "/throttle"):
			w.WriteHeader(http.StatusTooManyRequests)
		case strings.HasSuffix(req.URL.Path, "/missing"):
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer backend.Close()
	r := New("test")
	hc := &http.Client{Transport: r.Transport("contoso", nil)}
	for _, path := range []string{
		"/v1.0/users", "/v1.0/users/throttle", "/beta/groups/missing", "/v1.0",
		"/tenant/oauth2/v2.0/token", "/tenant/v2.0/.well-known/openid-configuration",
	} {
		resp, err := hc.Get(backend.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	if _, err := hc.Get(closed.URL + "/v1.0/users"); err == nil {
		t.Fatal("a closed server answered")
	}

	_, text := scrape(t, r.Handler(), "/")
	tests := []struct {
		series string
		want   float64
	}{
		{`portcullis_graph_requests_total{code="200",provider="contoso"}`, 2},
		{`portcullis_graph_requests_total{code="429",provider="contoso"}`, 1},
		{`portcullis_graph_requests_total{code="404",provider="contoso"}`, 1},
		{`portcullis_graph_requests_total{code="error",provider="contoso"}`, 1},
		{`portcullis_graph_request_duration_seconds_count{provider="contoso"}`, 5},
		{`portcullis_graph_throttled_total{provider="contoso"}`, 1},
		{`portcullis_entra_requests_total{code="200",provider="contoso"}`, 2},
	}
	for _, tt := range tests {
		if got := value(text, tt.series); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.series, got, tt.want)
		}
	}
}

func TestSessionStoreIsTimed(t *testing.T) {
	r := New("test")
	s := r.SessionStore(auth.NewMemorySessionStore())
	ctx := context.Background()
	var h auth.KeyHash
	if err := s.PutSignIn(ctx, h, auth.SignInRecord{LoginName: "alice", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := s.GetSignIn(ctx, h)
	if err != nil || !ok || rec.LoginName != "alice" {
		t.Fatalf("GetSignIn through the wrapper = %+v %v %v", rec, ok, err)
	}
	if err := s.DeleteSignIn(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteExpiredSignIns(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SessionKeysOf(ctx, "alice", time.Now()); err != nil {
		t.Fatal(err)
	}
	_, text := scrape(t, r.Handler(), "/")
	for _, op := range []string{"put_sign_in", "get_sign_in", "delete_sign_in", "delete_expired_sign_ins", "list_session_keys"} {
		if got := value(text, `portcullis_store_operation_duration_seconds_count{op="`+op+`"}`); got != 1 {
			t.Errorf("%s timed %v times, want 1", op, got)
		}
	}
}

func TestAdminHandler(t *testing.T) {
	r := New("test")
	var storeErr error
	h := r.AdminHandler([]Check{
		{Name: "config", Run: func(context.Context) error { return nil }},
		{Name: "store", Run: func(context.Context) error { return storeErr }},
	})
	tests := []struct {
		name     string
		path     string
		storeErr error
		code     int
		body     string
	}{
		{name: "alive", path: "/healthz", code: 200, body: "ok"},
		{name: "ready", path: "/readyz", code: 200, body: "ok config\nok store"},
		{name: "store down", path: "/readyz", storeErr: errors.New("connection refused"), code: 503, body: "ok config\nfailed store: connection refused"},
		{name: "alive while not ready", path: "/healthz", storeErr: errors.New("connection refused"), code: 200, body: "ok"},
		{name: "metrics", path: "/metrics", code: 200, body: "portcullis_build_info"},
		{name: "elsewhere", path: "/debug", code: 404, body: "404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			storeErr = tt.storeErr
			code, body := scrape(t, h, tt.path)
			if code != tt.code || !strings.Contains(body, tt.body) {
				t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.code, tt.body)
			}
		})
	}
}

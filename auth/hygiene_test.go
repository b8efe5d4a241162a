package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

// secretRecorder is an HTTP transport that notes every secret crossing
// the wire between portcullis and the simulator: client secrets and
// assertions, device codes, and every token in either direction.
type secretRecorder struct {
	next http.RoundTripper

	mu      sync.Mutex
	secrets map[string]string // value → what it is
}

func (s *secretRecorder) add(what, v string) {
	if len(v) < 8 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[v] = what
	// A JWT's payload or signature alone would be a leak too.
	if parts := strings.Split(v, "."); len(parts) == 3 {
		s.secrets[parts[1]] = what + " (payload)"
		s.secrets[parts[2]] = what + " (signature)"
	}
}

func (s *secretRecorder) all() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.secrets))
	for v, what := range s.secrets {
		out[v] = what
	}
	return out
}

func (s *secretRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if auth := req.Header.Get("Authorization"); auth != "" {
		s.add("bearer token", strings.TrimPrefix(auth, "Bearer "))
	}
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		if form, err := url.ParseQuery(string(body)); err == nil {
			for _, k := range []string{"client_secret", "client_assertion", "device_code", "refresh_token", "code_verifier", "password", "assertion"} {
				s.add(k, form.Get(k))
			}
		}
	}
	resp, err := s.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var fields map[string]any
	if json.Unmarshal(body, &fields) == nil {
		for _, k := range []string{"access_token", "refresh_token", "id_token", "device_code"} {
			if v, ok := fields[k].(string); ok {
				s.add(k, v)
			}
		}
	}
	return resp, nil
}

func TestLogHygiene(t *testing.T) {
	rec := &secretRecorder{secrets: map[string]string{}}
	e := newEnv(t, withDeps(func(d *Deps) {
		hc := d.HTTPClients["contoso"]
		rec.next = hc.Transport
		d.HTTPClients = map[string]*http.Client{"contoso": {Transport: rec, Timeout: hc.Timeout}}
	}))
	for _, s := range []string{graphSecret, etlSecret, backendPass, seniorPass, financePass} {
		rec.add("configured secret", s)
	}
	ctx := testContext(t)
	var errs []error
	note := func(_ *Decision, err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	// Device code, notice mode, and its session key.
	d := e.signIn(t, aliceUPN, "sales", aliceAddr)
	rec.add("session key", d.SessionKey)
	note(e.a.Decide(ctx, noPromptRequest(t, aliceUPN, d.SessionKey, otherAddr)))
	note(e.a.Decide(ctx, noPromptRequest(t, bobUPN, d.SessionKey, otherAddr)))
	note(e.a.Decide(ctx, noPromptRequest(t, aliceUPN, d.SessionKey[:len(d.SessionKey)-1]+"a", otherAddr)))

	// Device code, error mode, completed in the background; and a
	// mismatch.
	req := Request{Resource: "sales", LoginName: bobUPN, Password: "bobs-typed-password-" + randomHex(4), ClientAddr: otherAddr, Mode: PromptError}
	rec.add("typed password", req.Password)
	_, err := e.a.Decide(ctx, req)
	var p *SignInPending
	if !errors.As(err, &p) {
		t.Fatalf("Decide = %v, want *SignInPending", err)
	}
	if err := e.sim.Approve(p.Prompt.UserCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background sign-in", func() bool { return e.a.flowDone(e.a.flowKeyFor("contoso", req)) })
	note(e.a.Decide(ctx, req))

	// Access tokens, good and forged.
	for _, spec := range []entrasim.TokenSpec{
		{Subject: aliceUPN, Audience: portcullisApp, ClientID: portcullisApp},
		{Subject: aliceUPN, Audience: "api://elsewhere", ClientID: portcullisApp},
		{Subject: "etl-bot", Audience: portcullisApp, ClientID: etlBotApp},
	} {
		tok, err := e.sim.IssueAccessToken(spec)
		if err != nil {
			t.Fatal(err)
		}
		rec.add("presented token", tok)
		note(e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", tok)))
		parts := strings.Split(tok, ".")
		forged := parts[0] + "." + parts[1] + "." + base64Flip(parts[2])
		rec.add("forged token", forged)
		note(e.a.Decide(ctx, tokenRequest(aliceUPN, "sales", forged)))
	}

	// Service principals: good, cached, wrong secret, by name.
	wrong := "wrong-secret-" + randomHex(8)
	rec.add("wrong secret", wrong)
	note(e.a.Decide(ctx, Request{Resource: "finance", LoginName: etlBotApp, Password: etlSecret, ClientAddr: otherAddr, Mode: PromptError}))
	note(e.a.Decide(ctx, Request{Resource: "finance", LoginName: etlBotApp, Password: etlSecret, ClientAddr: otherAddr, Mode: PromptError}))
	note(e.a.Decide(ctx, Request{Resource: "finance", LoginName: etlBotApp, Password: wrong, ClientAddr: otherAddr, Mode: PromptError}))
	note(e.a.Decide(ctx, Request{Resource: "sales", LoginName: "spn:etl-bot", Password: etlSecret, ClientAddr: otherAddr, Mode: PromptError}))

	if err := e.a.Close(); err != nil {
		t.Fatal(err)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "auth.device_code.completed") || !strings.Contains(logs, "/oauth2/v2.0/token") {
		t.Fatalf("the capture missed the Authorizer's or the simulator's log lines:\n%s", logs)
	}
	if len(errs) < 6 {
		t.Fatalf("only %d refusals to inspect", len(errs))
	}
	var texts []string
	for _, err := range errs {
		texts = append(texts, err.Error())
	}
	refusals := strings.Join(texts, "\n")
	secrets := rec.all()
	if len(secrets) < 20 {
		t.Fatalf("only %d secrets recorded; the recorder is not seeing the traffic", len(secrets))
	}
	for s, what := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a %s appears in the logs", what)
		}
		if strings.Contains(refusals, s) {
			t.Errorf("a %s appears in a refusal", what)
		}
	}
}

// base64Flip changes the last character of a base64url string.
func base64Flip(s string) string {
	if strings.HasSuffix(s, "A") {
		return s[:len(s)-1] + "B"
	}
	return s[:len(s)-1] + "A"
}

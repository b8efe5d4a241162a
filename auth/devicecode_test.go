package auth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullisdb/portcullis/auth/entrasim"
)

type decideResult struct {
	d   *Decision
	err error
}

// decideAsync runs Decide in a goroutine.
func decideAsync(ctx context.Context, a *Authorizer, req Request) <-chan decideResult {
	ch := make(chan decideResult, 1)
	go func() {
		d, err := a.Decide(ctx, req)
		ch <- decideResult{d, err}
	}()
	return ch
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testDeadline):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func TestDeviceCodeNoticeMode(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	prompts := make(chan DeviceCodePrompt, 1)
	res := decideAsync(ctx, e.a, noticeRequest(aliceUPN, "sales", aliceAddr, prompts))
	pending := e.approveNext(t, ctx, aliceUPN)
	p := receive(t, prompts, "the prompt")
	r := receive(t, res, "the decision")
	if r.err != nil {
		t.Fatalf("Decide: %v", r.err)
	}

	if p.UserCode != pending.UserCode || !strings.HasPrefix(p.VerificationURL, e.sim.URL()) ||
		!strings.Contains(p.Message, p.UserCode) || !p.ExpiresAt.After(time.Now()) {
		t.Errorf("prompt = %+v, want the simulator's code %s with URL, message and a future expiry", p, pending.UserCode)
	}
	d := r.d
	if d.Method != MethodDeviceCode || d.Identity.UPN != aliceUPN || d.Identity.Kind != KindUser ||
		d.Identity.ObjectID != "11111111-aaaa-4aaa-8aaa-111111111111" || d.Identity.TenantID != testTenant || d.Identity.Provider != "contoso" {
		t.Errorf("identity = %+v by %s, want alice by device code", d.Identity, d.Method)
	}
	if d.Backend.User != "sales_reader" || d.Backend.Password != backendPass {
		t.Errorf("backend user = %q, want sales_reader with the mapped password", d.Backend.User)
	}
	if len(d.Matched) != 1 || d.Matched[0].ID != analystsID {
		t.Errorf("matched = %+v, want Analysts", d.Matched)
	}
	if !wellFormedSessionKey(d.SessionKey) {
		t.Errorf("session key %q is not well formed", d.SessionKey)
	}
	if got := time.Until(d.SessionKeyExpires); got < 11*time.Hour || got > 12*time.Hour+time.Minute {
		t.Errorf("session key valid for %v, want about 12h", got)
	}
	waitFor(t, "polling to end", func() bool { return e.a.activePolls.Load() == 0 })
	if n := e.a.pendingFlows(); n != 0 {
		t.Errorf("%d flows left after the sign-in was collected", n)
	}
}

func TestDeviceCodeNestedGroupsPickFirstMapping(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	res := decideAsync(ctx, e.a, noticeRequest(bobUPN, "sales", aliceAddr, nil))
	e.approveNext(t, ctx, bobUPN)
	r := receive(t, res, "the decision")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.d.Backend.User != "sales_senior" {
		t.Errorf("backend user = %q, want sales_senior (the first mapping that matches)", r.d.Backend.User)
	}
	got := map[string]bool{}
	for _, g := range r.d.Matched {
		got[g.ID] = true
	}
	if !got[analystsID] || !got[seniorID] || len(got) != 2 {
		t.Errorf("matched = %+v, want Analysts (allowed, through nesting) and Senior Analysts (mapping)", r.d.Matched)
	}
}

func TestDeviceCodeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		login   string
		act     func(t *testing.T, e *env, code string)
		want    RefusalReason
		message string
	}{
		{
			name: "identity mismatch", login: aliceUPN, want: ReasonIdentityMismatch,
			message: "signed in as bob@contoso.example, but connected as alice@contoso.example",
			act: func(t *testing.T, e *env, code string) {
				if err := e.sim.Approve(code, bobUPN); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "declined", login: aliceUPN, want: ReasonDeclined, message: "declined",
			act: func(t *testing.T, e *env, code string) {
				if err := e.sim.Decline(code); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "not in an allowed group", login: carolUPN, want: ReasonNotAllowed,
			message: `carol@contoso.example is not in any group allowed to use "sales"`,
			act: func(t *testing.T, e *env, code string) {
				if err := e.sim.Approve(code, carolUPN); err != nil {
					t.Error(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := testContext(t)
			res := decideAsync(ctx, e.a, noticeRequest(tt.login, "sales", aliceAddr, nil))
			pc, err := e.sim.WaitForDeviceCode(ctx)
			if err != nil {
				t.Fatal(err)
			}
			tt.act(t, e, pc.UserCode)
			r := receive(t, res, "the decision")
			ref := wantRefusal(t, r.err, tt.want)
			if !strings.Contains(ref.Message, tt.message) {
				t.Errorf("message = %q, want it to contain %q", ref.Message, tt.message)
			}
		})
	}
}

func TestDeviceCodeExpiry(t *testing.T) {
	e := newEnv(t, withSim(entrasim.Options{DeviceCodeLifetime: time.Second}))
	r := receive(t, decideAsync(testContext(t), e.a, noticeRequest(aliceUPN, "sales", aliceAddr, nil)), "the decision")
	ref := wantRefusal(t, r.err, ReasonDeclined)
	if !strings.Contains(ref.Message, "expired") {
		t.Errorf("message = %q, want it to say the code expired", ref.Message)
	}
}

func TestDeviceCodeCancellationStopsPolling(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(testContext(t))
	prompts := make(chan DeviceCodePrompt, 1)
	res := decideAsync(ctx, e.a, noticeRequest(aliceUPN, "sales", aliceAddr, prompts))
	receive(t, prompts, "the prompt")
	// Let polling get going before the client goes away.
	waitFor(t, "a poll", func() bool { return e.sim.Requests(entrasim.EndpointToken) > 0 })
	cancel()
	start := time.Now()
	r := receive(t, res, "the decision")
	if took := time.Since(start); took > time.Second {
		t.Errorf("Decide took %v to return after cancellation", took)
	}
	ref := wantRefusal(t, r.err, ReasonDeclined)
	if !errors.Is(ref, context.Canceled) {
		t.Errorf("refusal %v does not wrap context.Canceled", ref)
	}
	waitFor(t, "polling to stop", func() bool { return e.a.activePolls.Load() == 0 })
	if n := e.a.pendingFlows(); n != 0 {
		t.Errorf("%d flows left after cancellation", n)
	}
}

func TestDeviceCodeErrorMode(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	req := noticeRequest(aliceUPN, "sales", aliceAddr, nil)
	req.Mode, req.Prompt = PromptError, nil

	_, err := e.a.Decide(ctx, req)
	var first *SignInPending
	if !errors.As(err, &first) {
		t.Fatalf("first Decide = %v, want *SignInPending", err)
	}
	if first.Prompt.UserCode == "" || strings.Contains(first.Error(), first.Prompt.UserCode) {
		t.Fatalf("pending = %+v, error %q: want a code in the prompt and none in the error string", first.Prompt, first.Error())
	}

	// Connections that come back before the sign-in (DBeaver opens
	// several) share the one flow.
	var wg sync.WaitGroup
	codes := make(chan string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.a.Decide(ctx, req)
			var p *SignInPending
			if errors.As(err, &p) {
				codes <- p.Prompt.UserCode
			} else {
				codes <- "error: " + err.Error()
			}
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != first.Prompt.UserCode {
			t.Errorf("reconnect got %q, want the same code %q", c, first.Prompt.UserCode)
		}
	}
	if n := e.sim.Requests(entrasim.EndpointDeviceCode); n != 1 {
		t.Errorf("%d device codes requested, want 1", n)
	}

	// The same person from another address gets a flow of their own.
	other := req
	other.ClientAddr = otherAddr
	_, err = e.a.Decide(ctx, other)
	var second *SignInPending
	if !errors.As(err, &second) || second.Prompt.UserCode == first.Prompt.UserCode {
		t.Fatalf("Decide from another address = %v, want a different pending code", err)
	}

	if err := e.sim.Approve(first.Prompt.UserCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background sign-in", func() bool { return e.a.flowDone(e.a.flowKeyFor("contoso", req)) })
	d, err := e.a.Decide(ctx, req)
	if err != nil {
		t.Fatalf("Decide after approval: %v", err)
	}
	if d.Method != MethodDeviceCode || d.Identity.UPN != aliceUPN || d.SessionKey == "" {
		t.Errorf("decision = %+v", d)
	}
	if !strings.Contains(e.logs.String(), "auth.device_code.completed") {
		t.Errorf("no background completion event logged")
	}

	// The outcome served its reconnect; with address grace off the next
	// connection signs in again.
	_, err = e.a.Decide(ctx, req)
	var third *SignInPending
	if !errors.As(err, &third) || third.Prompt.UserCode == first.Prompt.UserCode {
		t.Fatalf("Decide after the sign-in was collected = %v, want a new pending code", err)
	}
}

func TestDeviceCodeErrorModeDeclined(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	req := Request{Resource: "sales", LoginName: aliceUPN, Password: "x", ClientAddr: aliceAddr, Mode: PromptError}
	_, err := e.a.Decide(ctx, req)
	var p *SignInPending
	if !errors.As(err, &p) {
		t.Fatalf("Decide = %v, want *SignInPending", err)
	}
	if err := e.sim.Decline(p.Prompt.UserCode); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background sign-in", func() bool { return e.a.flowDone(e.a.flowKeyFor("contoso", req)) })
	_, err = e.a.Decide(ctx, req)
	wantRefusal(t, err, ReasonDeclined)
	// Forgotten: the next attempt starts afresh.
	_, err = e.a.Decide(ctx, req)
	var again *SignInPending
	if !errors.As(err, &again) || again.Prompt.UserCode == p.Prompt.UserCode {
		t.Fatalf("Decide after a declined sign-in = %v, want a new pending code", err)
	}
}

func TestDeviceCodeNoticeConnectionsShareOneFlow(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	prompts := make(chan DeviceCodePrompt, 2)
	r1 := decideAsync(ctx, e.a, noticeRequest(aliceUPN, "sales", aliceAddr, prompts))
	r2 := decideAsync(ctx, e.a, noticeRequest("ALICE@contoso.example", "sales", aliceAddr, prompts))
	p1, p2 := receive(t, prompts, "a prompt"), receive(t, prompts, "a prompt")
	if p1.UserCode != p2.UserCode {
		t.Fatalf("codes %s and %s, want one shared code", p1.UserCode, p2.UserCode)
	}
	if err := e.sim.Approve(p1.UserCode, aliceUPN); err != nil {
		t.Fatal(err)
	}
	d1, d2 := receive(t, r1, "decision 1"), receive(t, r2, "decision 2")
	if d1.err != nil || d2.err != nil {
		t.Fatalf("decisions: %v, %v", d1.err, d2.err)
	}
	if d1.d.SessionKey == d2.d.SessionKey {
		t.Errorf("two connections were given the same session key")
	}
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// secretLedger collects every secret a test uses — those it makes, those
// portcullis hands out, and those that cross the wire to the simulator —
// and then looks for them in everything the test captured: portcullis's
// log lines and what clients were shown. A secret is found by any
// fragment of it, not only whole, and never named in a failure message.
type secretLedger struct {
	mu     sync.Mutex
	values map[string]secretEntry // every secret, by value
	shown  []shownText
}

type secretEntry struct {
	what string
	// shownToOwner: a value its own person is shown (a device code's
	// user code), so it may appear in client-visible text, but never in
	// a log.
	shownToOwner bool
}

// shownText is something a client was shown: an error or a notice.
type shownText struct{ where, text string }

// ledgerWindow is the length of the fragments that identify a secret, and
// ledgerStep how far apart they start: any copy of 11 or more
// consecutive characters of a secret is found. No secret is shorter than
// a window.
const (
	ledgerWindow = 8
	ledgerStep   = 4
)

func newSecretLedger() *secretLedger {
	return &secretLedger{values: map[string]secretEntry{}}
}

// add records v, described as what, as a secret that nobody may see
// but whoever already holds it.
func (l *secretLedger) add(what, v string) { l.record(what, v, false) }

// addShownToOwner records v as something its own person is shown but that
// never belongs in a log.
func (l *secretLedger) addShownToOwner(what, v string) { l.record(what, v, true) }

// record only notes v: it is called from the simulator's handlers, under
// load, so the index is built when the ledger is checked.
func (l *secretLedger) record(what, v string, shownToOwner bool) {
	if len(v) < ledgerWindow {
		return // too short to be told from ordinary text
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.values[v]; !ok {
		l.values[v] = secretEntry{what: what, shownToOwner: shownToOwner}
	}
}

// index maps every window of every secret to its entry. A JWT's payload
// or signature alone is a leak too; the windows of the whole token cover
// them, but indexing the parts as well names the leak better.
func (l *secretLedger) index() map[string]secretEntry {
	idx := map[string]secretEntry{}
	add := func(e secretEntry, v string) {
		for i := 0; ; i += ledgerStep {
			if i+ledgerWindow > len(v) {
				i = len(v) - ledgerWindow // the tail, too
			}
			w := v[i : i+ledgerWindow]
			if old, ok := idx[w]; !ok || old.shownToOwner {
				// Where two secrets share a window, the stricter wins.
				idx[w] = e
			}
			if i == len(v)-ledgerWindow {
				return
			}
		}
	}
	for v, e := range l.values {
		if parts := strings.Split(v, "."); len(parts) == 3 && len(parts[1]) >= ledgerWindow && len(parts[2]) >= ledgerWindow {
			add(secretEntry{what: e.what + " (payload)", shownToOwner: e.shownToOwner}, parts[1])
			add(secretEntry{what: e.what + " (signature)", shownToOwner: e.shownToOwner}, parts[2])
		}
	}
	for v, e := range l.values {
		add(e, v)
	}
	return idx
}

// clientSaw records text that a client was shown, at where. own are the
// values this client may legitimately see in it (its own new session
// key); they are taken out before the text is searched.
func (l *secretLedger) clientSaw(where, text string, own ...string) {
	for _, o := range own {
		if o != "" {
			text = strings.ReplaceAll(text, o, "<its own>")
		}
	}
	l.mu.Lock()
	l.shown = append(l.shown, shownText{where: where, text: text})
	l.mu.Unlock()
}

// find returns the entry of the first secret in text that it may not
// hold: in a log, none; shown to a client, none but its own.
func find(idx map[string]secretEntry, text string, inLog bool) (secretEntry, bool) {
	for i := 0; i+ledgerWindow <= len(text); i++ {
		if e, ok := idx[text[i:i+ledgerWindow]]; ok && (inLog || !e.shownToOwner) {
			return e, true
		}
	}
	return secretEntry{}, false
}

// check fails t for every log line (logs maps a source's name to what it
// wrote) and every client-visible text that holds a secret. It reports
// where and what kind of secret, never the secret.
func (l *secretLedger) check(t *testing.T, logs map[string]string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	idx := l.index()
	const maxReports = 20
	reports, lines := 0, 0
	report := func(format string, args ...any) {
		if reports < maxReports {
			t.Errorf(format, args...)
		}
		reports++
	}
	for source, text := range logs {
		sc := bufio.NewScanner(strings.NewReader(text))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for n := 1; sc.Scan(); n++ {
			lines++
			if e, ok := find(idx, sc.Text(), true); ok {
				report("%s line %d (%s) holds a %s", source, n, lineEvent(sc.Bytes()), e.what)
			}
		}
	}
	for _, s := range l.shown {
		if e, ok := find(idx, s.text, false); ok {
			report("a client was shown a %s: %s", e.what, s.where)
		}
	}
	if reports > maxReports {
		t.Errorf("… and %d more secrets in logs or client-visible text", reports-maxReports)
	}
	t.Logf("secret hygiene: %d secrets searched for in %d log lines and %d client-visible texts", len(l.values), lines, len(l.shown))
}

// lineEvent names a JSON log line by its event, for a report.
func lineEvent(line []byte) string {
	var m struct {
		Event string `json:"event"`
	}
	if json.Unmarshal(line, &m) == nil && m.Event != "" {
		return "event " + m.Event
	}
	return "not a JSON event"
}

// opsLedger is a ledger that knows the secrets of the operations tests'
// configuration.
func opsLedger() *secretLedger {
	l := newSecretLedger()
	l.add("client secret", opsSecret)
	l.add("backend password", opsRole.Password)
	return l
}

// checkSecretsAtEnd has the test's secrets looked for in serve's log, once
// serve has stopped, and in what clients were shown. Call it before the
// cleanup that stops serve is registered, so that it runs after it.
func (s *opsServe) checkSecretsAtEnd() {
	s.t.Cleanup(func() {
		s.secrets.check(s.t, map[string]string{"portcullis log": s.stdout.String()})
	})
}

// watch is an entrasim.Options.Middleware that records every secret
// crossing the wire between portcullis and the simulator: client secrets
// and assertions, device codes, and tokens either way. User codes are
// for their person's eyes, so they may be shown but not logged.
func (l *secretLedger) watch(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			l.add("bearer token", strings.TrimPrefix(a, "Bearer "))
		}
		if r.Body != nil {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, "read body", http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			if form, err := url.ParseQuery(string(body)); err == nil {
				for _, k := range []string{"client_secret", "client_assertion", "device_code", "refresh_token", "code_verifier", "password", "assertion"} {
					l.add(k, form.Get(k))
				}
			}
		}
		tee := &teeResponse{ResponseWriter: w}
		next.ServeHTTP(tee, r)
		var fields map[string]any
		if json.Unmarshal(tee.body.Bytes(), &fields) != nil {
			return
		}
		for _, k := range []string{"access_token", "refresh_token", "id_token", "device_code"} {
			if v, ok := fields[k].(string); ok {
				l.add(k, v)
			}
		}
		if v, ok := fields["user_code"].(string); ok {
			l.addShownToOwner("user code", v)
		}
	})
}

// teeResponse keeps a copy of what a handler writes.
type teeResponse struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (t *teeResponse) Write(p []byte) (int, error) {
	t.body.Write(p)
	return t.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (the simulator's fault injector
// hijacks connections) reach the real writer.
func (t *teeResponse) Unwrap() http.ResponseWriter { return t.ResponseWriter }

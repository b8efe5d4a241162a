package console

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
)

// command is one parsed statement: its name and target for the log, and
// what it does.
type command struct {
	name   string
	target string
	run    func(ctx context.Context, c *Console, who Caller) (*Result, error)
}

// help lists the commands, as SHOW HELP shows them.
var help = [][2]string{
	{"SHOW HELP", "this list"},
	{"SHOW SESSIONS", "open connections: who, which resource, as which backend user, from where, since when, bytes each way"},
	{"SHOW RESOURCES", "the resources in force, their groups and credential mappings"},
	{"SHOW USERS", "identities let in lately, with their groups"},
	{"SHOW STATS", "the metrics, as /metrics has them"},
	{"KILL <session id>", "end a session; its client is told an operator ended it"},
	{"RELOAD", "re-read the configuration file, as SIGHUP does; open sessions stay"},
	{"TOTP RESET <user> [<provider>]", "forget a user's TOTP secret and lockout; they enrol again"},
	{"CALL azure_search('<provider>', '<graph url>')", "GET a Microsoft Graph URL of that provider, e.g. '/v1.0/users?$select=id,userPrincipalName' or '/v1.0/users/$count'"},
}

// parse recognises a statement's tokens.
func parse(toks []token) (*command, error) {
	if len(toks) == 0 {
		return nil, syntaxError("empty command")
	}
	first := toks[0]
	switch {
	case first.is("SHOW"):
		if len(toks) != 2 || toks[1].quoted {
			return nil, syntaxError("SHOW takes one of HELP, SESSIONS, RESOURCES, USERS, STATS")
		}
		what := strings.ToUpper(toks[1].text)
		cmd := &command{name: "show " + strings.ToLower(what)}
		switch what {
		case "HELP":
			cmd.run = showHelp
		case "SESSIONS":
			cmd.run = showSessions
		case "RESOURCES":
			cmd.run = showResources
		case "USERS":
			cmd.run = showUsers
		case "STATS":
			cmd.run = showStats
		default:
			return nil, syntaxError("SHOW %s is not a console command", toks[1].text)
		}
		return cmd, nil
	case first.is("KILL"):
		if len(toks) != 2 || isPunct(toks[1]) {
			return nil, syntaxError("KILL takes one session id (SHOW SESSIONS lists them)")
		}
		id := toks[1].text
		return &command{name: "kill", target: id, run: func(ctx context.Context, c *Console, who Caller) (*Result, error) {
			return c.kill(ctx, who, id)
		}}, nil
	case first.is("RELOAD"):
		if len(toks) != 1 {
			return nil, syntaxError("RELOAD takes no arguments")
		}
		return &command{name: "reload", run: func(ctx context.Context, c *Console, _ Caller) (*Result, error) {
			return c.reload(ctx)
		}}, nil
	case first.is("TOTP"):
		if len(toks) < 3 || len(toks) > 4 || !toks[1].is("RESET") || isPunct(toks[2]) || (len(toks) == 4 && isPunct(toks[3])) {
			return nil, syntaxError("the TOTP command is TOTP RESET <user> [<provider>]")
		}
		user, provider := toks[2].text, ""
		if len(toks) == 4 {
			provider = toks[3].text
		}
		return &command{name: "totp reset", target: user, run: func(ctx context.Context, c *Console, who Caller) (*Result, error) {
			return c.totpReset(ctx, who, user, provider)
		}}, nil
	case first.is("CALL"):
		return parseCall(toks[1:])
	case first.is("SET"):
		// Drivers and GUI tools send SET statements when they connect;
		// they change nothing here.
		return &command{name: "set", run: func(context.Context, *Console, Caller) (*Result, error) {
			return &Result{Tag: "SET"}, nil
		}}, nil
	}
	return nil, syntaxError("%q is not a console command", clip(first.text, 40))
}

// parseCall recognises azure_search('<provider>', '<url>').
func parseCall(toks []token) (*command, error) {
	const usage = "the call is CALL azure_search('<provider>', '<graph url>')"
	if len(toks) == 0 || !toks[0].is("azure_search") {
		return nil, syntaxError("%s", usage)
	}
	if len(toks) != 6 || !toks[1].is("(") || !toks[2].quoted || !toks[3].is(",") || !toks[4].quoted || !toks[5].is(")") {
		return nil, syntaxError("%s, with both arguments in single quotes", usage)
	}
	provider, url := toks[2].text, toks[4].text
	return &command{name: "azure_search", target: provider + " " + url, run: func(ctx context.Context, c *Console, _ Caller) (*Result, error) {
		return c.azureSearch(ctx, provider, url)
	}}, nil
}

func isPunct(t token) bool { return !t.quoted && (t.text == "(" || t.text == ")" || t.text == ",") }

func clip(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

func showHelp(context.Context, *Console, Caller) (*Result, error) {
	rows := make([][]*string, len(help))
	for i, h := range help {
		rows[i] = row(h[0], h[1])
	}
	return showResult([]string{"command", "description"}, rows), nil
}

// timestamp formats a time as PostgreSQL shows a timestamptz in UTC.
func timestamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	return text(t.UTC().Format("2006-01-02 15:04:05+00"))
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return text(s)
}

// sessionState says where a connection is: in its handshake, relaying a
// session, or in the console.
func sessionState(s proxy.SessionInfo) string {
	switch {
	case !s.Started.IsZero():
		return "active"
	case s.Resource == config.ConsoleResource && s.Identity.ObjectID != "":
		return "console"
	}
	return "handshake"
}

func showSessions(_ context.Context, c *Console, _ Caller) (*Result, error) {
	cols := []string{"id", "user", "identity", "resource", "backend_user", "method", "protocol", "client_addr", "state", "started", "bytes_to_backend", "bytes_to_client"}
	var rows [][]*string
	for _, s := range c.d.Server.Sessions() {
		started := s.Started
		if started.IsZero() {
			started = s.Accepted
		}
		rows = append(rows, []*string{
			text(s.ID), optional(s.LoginName), optional(s.Identity.Name()), optional(s.Resource),
			optional(s.BackendUser), optional(string(s.Method)), text(s.Protocol), text(s.ClientAddr.String()),
			text(sessionState(s)), timestamp(started),
			text(strconv.FormatInt(s.BytesToBackend, 10)), text(strconv.FormatInt(s.BytesToClient, 10)),
		})
	}
	return showResult(cols, rows), nil
}

func showResources(_ context.Context, c *Console, _ Caller) (*Result, error) {
	cfg := c.d.Server.Config()
	active := map[string]int{}
	for _, s := range c.d.Server.Sessions() {
		if !s.Started.IsZero() {
			active[s.Protocol+"/"+s.Resource]++
		}
	}
	cols := []string{"name", "protocol", "address", "database", "provider", "allow_groups", "credentials", "require_totp", "prompt", "backend_tls", "active_sessions"}
	var rows [][]*string
	for _, r := range cfg.Resources {
		var maps []string
		for _, m := range r.Credentials {
			to := m.User
			if m.Entra {
				to = "(entra)"
			}
			maps = append(maps, strings.Join(m.Groups, "|")+" → "+to)
		}
		provider := r.Provider
		if provider == "" && len(cfg.Providers) == 1 {
			provider = cfg.Providers[0].Name
		}
		rows = append(rows, []*string{
			text(r.Name), text(r.Protocol), text(r.Address), optional(r.Database), optional(provider),
			text(strings.Join(r.AllowGroups, ", ")), text(strings.Join(maps, "; ")),
			text(strconv.FormatBool(r.RequireTOTP)), optional(r.Prompt), optional(r.TLS.Mode),
			text(strconv.Itoa(active[r.Protocol+"/"+r.Name])),
		})
	}
	return showResult(cols, rows), nil
}

func showUsers(_ context.Context, c *Console, _ Caller) (*Result, error) {
	cols := []string{"user", "kind", "provider", "oid", "last_login", "last_resource", "method", "client_addr", "last_seen", "connections", "groups"}
	var rows [][]*string
	for _, u := range c.d.Server.RecentIdentities() {
		groups := strings.Join(u.Groups, ", ")
		if more := u.GroupCount - len(u.Groups); more > 0 {
			groups += fmt.Sprintf(", … (%d more)", more)
		}
		addr := ""
		if u.ClientAddr.IsValid() {
			addr = u.ClientAddr.String()
		}
		rows = append(rows, []*string{
			text(u.Identity.Name()), text(string(u.Identity.Kind)), text(u.Identity.Provider), text(u.Identity.ObjectID),
			text(u.LoginName), text(u.Resource), text(string(u.Method)), optional(addr),
			timestamp(u.LastSeen), text(strconv.Itoa(u.Connections)), text(groups),
		})
	}
	return showResult(cols, rows), nil
}

func showStats(_ context.Context, c *Console, _ Caller) (*Result, error) {
	if c.d.Stats == nil {
		return nil, &Error{Code: CodeFeatureNotEnabled, Message: "no metrics are kept by this portcullis"}
	}
	stats := c.d.Stats()
	sort.SliceStable(stats, func(i, j int) bool {
		if stats[i].Name != stats[j].Name {
			return stats[i].Name < stats[j].Name
		}
		return stats[i].Labels < stats[j].Labels
	})
	var rows [][]*string
	for _, s := range stats {
		rows = append(rows, []*string{text(s.Name), text(s.Labels), text(strconv.FormatFloat(s.Value, 'f', -1, 64))})
	}
	return showResult([]string{"metric", "labels", "value"}, rows), nil
}

// killWait bounds how long KILL waits for the session to close. Each
// step of a session's goodbye (the message in flight, the goodbye, the
// backend's cancel) is bounded by 2 s, so a session closes well within it.
const killWait = 10 * time.Second

// kill ends the session id and answers once it has closed, so that
// nothing its client sends after the answer reaches the backend.
func (c *Console) kill(ctx context.Context, who Caller, id string) (*Result, error) {
	if id == who.SessionID {
		return nil, &Error{Code: CodeObjectInUse, Message: "that is this console session", Hint: "Disconnect instead."}
	}
	var target *proxy.SessionInfo
	for _, s := range c.d.Server.Sessions() {
		if s.ID == id {
			target = &s
			break
		}
	}
	if target == nil {
		return nil, noSession(id)
	}
	ctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	found, err := c.d.Server.End(ctx, id)
	if !found {
		return nil, noSession(id)
	}
	if err != nil {
		return nil, &Error{
			Code:    CodeQueryCanceled,
			Message: fmt.Sprintf("session %s was told to end but has not closed within %s", id, killWait),
			Hint:    "SHOW SESSIONS tells whether it has gone since.",
			Err:     err,
		}
	}
	who2 := target.LoginName
	if who2 == "" {
		who2 = "a client still in its handshake"
	}
	note := fmt.Sprintf("ended session %s of %s", id, who2)
	if target.Resource != "" {
		note += " on " + target.Resource
	}
	return &Result{Tag: "KILL", Notices: []string{note}}, nil
}

func (c *Console) reload(ctx context.Context) (*Result, error) {
	if c.d.Reload == nil {
		return nil, &Error{Code: CodeFeatureNotEnabled, Message: "this portcullis was not started from a configuration file it can re-read"}
	}
	summary, err := c.d.Reload(ctx)
	if err != nil {
		msg, detail, _ := strings.Cut(err.Error(), "\n")
		return nil, &Error{
			Code:    CodeConfigFileError,
			Message: "the configuration was not reloaded; the running one stays: " + msg,
			Detail:  strings.TrimSpace(detail),
			Err:     err,
		}
	}
	return &Result{Tag: "RELOAD", Notices: []string{summary}}, nil
}

func (c *Console) totpReset(ctx context.Context, who Caller, user, provider string) (*Result, error) {
	if c.d.TOTP == nil {
		return nil, &Error{Code: CodeFeatureNotEnabled, Message: "TOTP is not available on this portcullis: it has no state store with TOTP enrolments"}
	}
	if provider == "" {
		provider = who.Identity.Provider
	}
	known := false
	for _, p := range c.d.Server.Config().Providers {
		known = known || p.Name == provider
	}
	if !known {
		return nil, &Error{Code: CodeUndefinedObject, Message: fmt.Sprintf("there is no provider called %q", clip(provider, 60))}
	}
	u := mfa.NewUser(provider, user)
	had, err := c.d.TOTP.Reset(ctx, u)
	if err != nil {
		return nil, &Error{Code: CodeSystemError, Message: fmt.Sprintf("the TOTP enrolment of %s could not be reset: the state store failed", u), Err: err}
	}
	note := fmt.Sprintf("TOTP of %s reset: they enrol again at their next sign-in to a resource that requires it", u)
	if !had {
		note = fmt.Sprintf("%s had no TOTP secret; any wrong-code count and lockout are cleared", u)
	}
	return &Result{Tag: "TOTP", Notices: []string{note}}, nil
}

func noSession(id string) *Error {
	return &Error{Code: CodeUndefinedObject, Message: fmt.Sprintf("there is no session %q", clip(id, 40)), Hint: "SHOW SESSIONS lists the open ones."}
}

// Package console is portcullis's admin console, in the spirit of
// PgBouncer's pgbouncer database: an operator signs in as for any
// resource, is allowed in by admin.groups, and types commands in the SQL
// tool they already have open. The package parses and runs the commands
// and answers in rows and columns of text; it speaks no wire protocol, so
// each front door renders the answers in its own (proxy/postgres does).
//
// Commands, case-insensitive, each with an optional trailing semicolon
// (several may be sent at once, separated by semicolons):
//
//	SHOW HELP | SESSIONS | RESOURCES | USERS | STATS
//	KILL <session id>
//	RELOAD
//	TOTP RESET <user> [<provider>]
//	CALL azure_search('<provider>', '<graph url>')
//
// azure_search is a GET, with the provider's app-only token, to a
// Microsoft Graph URL under that provider's Graph endpoint only (the
// graph package refuses any other). A collection answers one row per
// element of value, with the union of the elements' keys as columns
// (objects and arrays as JSON text, null as NULL); @odata.nextLink is
// followed until RowLimit rows (default 1000); a $count answers one
// row. Every request carries ConsistencyLevel: eventual, which Graph
// requires for $count, $search and advanced $filter queries.
//
// Every command is logged (console.command) with the admin's identity,
// the session and what was acted on; nothing it logs is a secret.
package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/graph"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/mfa"
	"github.com/portcullisdb/portcullis/proxy"
)

// DefaultRowLimit bounds the rows one azure_search returns.
const DefaultRowLimit = 1000

// Server is what the console reads and acts on; *proxy.Server is it.
type Server interface {
	Sessions() []proxy.SessionInfo
	End(ctx context.Context, id string) (bool, error)
	RecentIdentities() []proxy.IdentitySeen
	Config() *config.Config
}

// GraphSearcher sends azure_search's GET; *graph.Client is one.
type GraphSearcher interface {
	Get(ctx context.Context, rawURL string, header http.Header) (*graph.Response, error)
}

// TOTPResetter forgets a user's TOTP secret and lockout; *mfa.TOTP is
// one.
type TOTPResetter interface {
	Reset(ctx context.Context, u mfa.User) (bool, error)
}

// Stat is one sample of portcullis's metrics, for SHOW STATS.
type Stat struct {
	Name   string
	Labels string // `name="value", ...`, empty for none
	Value  float64
}

// Deps are what a Console needs. Server is required; a command whose
// dependency is nil answers that it is not available here.
type Deps struct {
	Server Server
	// Reload re-reads the configuration file and puts it in force (as
	// SIGHUP does) and returns a one-line summary of what changed.
	Reload func(ctx context.Context) (string, error)
	// Graph returns the Graph client of a provider, for azure_search.
	Graph func(provider string) (GraphSearcher, error)
	// TOTP resets TOTP enrolments (the state store's).
	TOTP TOTPResetter
	// Stats lists the current metric samples.
	Stats func() []Stat
	// Logger receives console.command events; nil discards them.
	Logger *zap.Logger
	// RowLimit bounds azure_search's rows; default DefaultRowLimit.
	RowLimit int
	// Now is the clock for durations shown; default time.Now.
	Now func() time.Time
}

// Console runs admin commands. It is safe for concurrent use.
type Console struct {
	d Deps
}

// New returns a Console on deps.
func New(deps Deps) (*Console, error) {
	if deps.Server == nil {
		return nil, errors.New("console: no server")
	}
	if deps.Logger == nil {
		deps.Logger = zap.NewNop()
	}
	if deps.RowLimit <= 0 {
		deps.RowLimit = DefaultRowLimit
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	return &Console{d: deps}, nil
}

// Enabled reports whether the configuration in force names admin groups;
// without them nobody may use the console.
func (c *Console) Enabled() bool {
	cfg := c.d.Server.Config()
	return cfg != nil && len(cfg.Admin.Groups) > 0
}

// Caller is the admin running a command.
type Caller struct {
	SessionID string
	Identity  auth.Identity
}

// Result is one command's answer: rows of text under Columns (a nil cell
// is NULL), the command tag ("SHOW", "SELECT 3", "KILL"), and notices
// for the person. A command without rows has no Columns.
type Result struct {
	Columns []string
	Rows    [][]*string
	Tag     string
	Notices []string
}

// Error is a command that failed, with a SQLSTATE for protocols that
// have one. Message, Detail and Hint are for the admin and hold no
// secret.
type Error struct {
	Code    string
	Message string
	Detail  string
	Hint    string
	Err     error // the cause, for the log
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (SQLSTATE %s): %v", e.Message, e.Code, e.Err)
	}
	return fmt.Sprintf("%s (SQLSTATE %s)", e.Message, e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

// SQLSTATEs of console errors.
const (
	CodeSyntaxError       = "42601" // an unknown or malformed command
	CodeUndefinedObject   = "42704" // no such session, provider or Graph object
	CodeInvalidParameter  = "22023" // Graph refused the request
	CodeNotAuthorized     = "42501" // Graph refused portcullis's token
	CodeFeatureNotEnabled = "0A000" // a command this portcullis cannot run
	CodeConfigFileError   = "F0000" // RELOAD found a bad file
	CodeSystemError       = "58000" // a dependency failed (Graph down, store down)
	CodeObjectInUse       = "55006" // KILL of the caller's own session
	CodeQueryCanceled     = "57014" // KILL gave up waiting for the session to close
)

// Exec runs every statement of query in turn and returns their results.
// At the first failure it stops and returns the results so far and an
// *Error, as a database does with a multi-statement query. An empty
// query returns no results and no error.
func (c *Console) Exec(ctx context.Context, who Caller, query string) ([]*Result, error) {
	stmts, err := splitStatements(query)
	if err != nil {
		return nil, err
	}
	var out []*Result
	for _, s := range stmts {
		r, err := c.run(ctx, who, s)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// run parses and runs one statement.
func (c *Console) run(ctx context.Context, who Caller, stmt string) (*Result, error) {
	toks, err := tokenize(stmt)
	if err != nil {
		return nil, err
	}
	cmd, err := parse(toks)
	if err != nil {
		c.logCommand(who, "unknown", "", err)
		return nil, err
	}
	r, err := cmd.run(ctx, c, who)
	c.logCommand(who, cmd.name, cmd.target, err)
	return r, err
}

func (c *Console) logCommand(who Caller, name, target string, err error) {
	fields := []zap.Field{
		logging.Event("console.command"),
		zap.String("session_id", who.SessionID),
		zap.String("user", who.Identity.Name()),
		zap.String("oid", who.Identity.ObjectID),
		zap.String("command", name),
	}
	if target != "" {
		fields = append(fields, zap.String("target", target))
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
		c.d.Logger.Info("console command failed", fields...)
		return
	}
	c.d.Logger.Info("console command", fields...)
}

// syntaxError is an unknown or malformed command.
func syntaxError(format string, args ...any) *Error {
	return &Error{Code: CodeSyntaxError, Message: fmt.Sprintf(format, args...), Hint: "SHOW HELP lists the commands."}
}

// text is a non-NULL cell.
func text(s string) *string { return &s }

// row builds a row of non-NULL cells.
func row(cells ...string) []*string {
	out := make([]*string, len(cells))
	for i, s := range cells {
		out[i] = text(s)
	}
	return out
}

func showResult(columns []string, rows [][]*string) *Result {
	return &Result{Columns: columns, Rows: rows, Tag: "SHOW"}
}

// splitStatements cuts query at semicolons outside quotes, dropping
// empty statements.
func splitStatements(query string) ([]string, error) {
	var out []string
	var quote rune
	start := 0
	for i, r := range query {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0 // a doubled quote reopens at once: same result
			}
		case r == '\'' || r == '"':
			quote = r
		case r == ';':
			if s := strings.TrimSpace(query[start:i]); s != "" {
				out = append(out, s)
			}
			start = i + 1
		}
	}
	if quote != 0 {
		return nil, syntaxError("unterminated quoted string")
	}
	if s := strings.TrimSpace(query[start:]); s != "" {
		out = append(out, s)
	}
	return out, nil
}

// token is a word, a quoted string or one punctuation mark.
type token struct {
	text   string
	quoted bool
}

func (t token) is(word string) bool { return !t.quoted && strings.EqualFold(t.text, word) }

// tokenize splits a statement into words (runs of anything but space,
// quotes and ( ) ,), '...' strings with ” for a quote, "..." identifiers,
// and the punctuation ( ) ,. A -- comment runs to the end of its line.
func tokenize(s string) ([]token, error) {
	var out []token
	rs := []rune(s)
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			i++
		case r == '-' && i+1 < len(rs) && rs[i+1] == '-':
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
		case r == '(' || r == ')' || r == ',':
			out = append(out, token{text: string(r)})
			i++
		case r == '\'' || r == '"':
			var b strings.Builder
			i++
			closed := false
			for i < len(rs) {
				if rs[i] == r {
					if i+1 < len(rs) && rs[i+1] == r {
						b.WriteRune(r)
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteRune(rs[i])
				i++
			}
			if !closed {
				return nil, syntaxError("unterminated quoted string")
			}
			out = append(out, token{text: b.String(), quoted: r == '\''})
		default:
			j := i
			for j < len(rs) && !strings.ContainsRune(" \t\n\r(),'\"", rs[j]) {
				j++
			}
			out = append(out, token{text: string(rs[i:j])})
			i = j
		}
	}
	return out, nil
}

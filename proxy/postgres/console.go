package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	pgproto3 "github.com/jackc/pgproto3/v2"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy/console"
)

// Console runs the admin console's commands; *console.Console is it.
type Console interface {
	// Enabled reports whether admins are configured at all.
	Enabled() bool
	// Exec runs a query string of one or more commands.
	Exec(ctx context.Context, who console.Caller, query string) ([]*console.Result, error)
}

// consoleResource is what the console is to the sign-in: a resource
// named config.ConsoleResource, with the prompt chosen by application
// name like any other.
var consoleResource = config.Resource{Name: config.ConsoleResource}

// consoleServerVersion is what the console tells clients it is. psql
// only needs a version it can parse; the words say what it really is.
const consoleServerVersion = "16.0 (portcullis admin console)"

// textOID is the type of every column the console returns.
const textOID = 25

// Extended-protocol requests are refused: the console parses no
// statements to prepare and binds no parameters.
const msgSimpleQueryOnly = "the portcullis console supports the simple query protocol only"

// serveConsole signs an admin in exactly as for a resource (the decision
// checks admin.groups instead of a resource's groups and maps no backend
// login), then answers simple queries itself until the client leaves or
// the session is ended.
func (p *Protocol) serveConsole(ctx context.Context, fe *frontend, st *startup) error {
	c := fe.c
	if p.Console == nil || !p.Console.Enabled() {
		return fe.fail(ctx, &fatal{
			code:    codeInvalidCatalog,
			message: "database \"portcullis\" (the admin console) is not enabled on this portcullis",
			hint:    "An operator enables it by listing admin groups in admin.groups.",
			reason:  "console_disabled",
		})
	}
	password, err := fe.password(st)
	if err != nil {
		return fe.fail(ctx, err)
	}
	dec, err := fe.decide(ctx, consoleResource, st, password)
	if err != nil {
		return fe.fail(ctx, err)
	}
	who := console.Caller{SessionID: c.ID(), Identity: dec.Identity}

	if err := c.Step(); err != nil {
		return fe.fail(ctx, err)
	}
	buf := fe.appendAuthOK(nil)
	if dec.SessionKey != "" {
		buf = appendNotice(buf, fmt.Sprintf("Signed in as %s. Until %s you can connect without signing in again by giving this session key as your password: %s",
			dec.Identity.Name(), dec.SessionKeyExpires.UTC().Format("2006-01-02 15:04 UTC"), dec.SessionKey))
	}
	buf = appendNotice(buf, fmt.Sprintf("portcullis admin console, signed in as %s (session %s). SHOW HELP lists the commands.", dec.Identity.Name(), c.ID()))
	for _, ps := range consoleParameters(st) {
		buf = appendMessage(buf, ps)
	}
	buf = appendMessage(buf, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := fe.write(buf); err != nil {
		return fe.fail(ctx, err)
	}

	// Between commands the admin may think as long as they like; writes
	// stay bounded, and ending the session (KILL, shutdown) still wakes
	// the read.
	skipping := false // after an extended-protocol message, until Sync
	for {
		if err := c.Await(); err != nil {
			return fe.fail(ctx, err)
		}
		typ, body, err := readConsoleMessage(fe)
		if err != nil {
			return fe.fail(ctx, err)
		}
		var out []byte
		switch typ {
		case 'X': // Terminate
			return nil
		case 'Q':
			query, ok := cString(body)
			if !ok {
				return fe.fail(ctx, protocolError("malformed Query message: the query text is not terminated", "malformed_message"))
			}
			results, err := p.Console.Exec(ctx, who, query)
			if ctx.Err() != nil {
				return fe.fail(ctx, context.Cause(ctx))
			}
			out = appendResults(nil, results, err, len(query) == 0)
			out = appendMessage(out, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'S': // Sync
			skipping = false
			out = appendMessage(nil, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'H': // Flush
		case 'P', 'B', 'D', 'E', 'C', 'F': // Parse, Bind, Describe, Execute, Close, FunctionCall
			// As PostgreSQL does after an error in an extended-protocol
			// exchange: one error, then nothing until Sync. The bodies are
			// never decoded: the console has no use for them.
			if !skipping {
				skipping = true
				out = appendMessage(nil, &pgproto3.ErrorResponse{
					Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: codeFeatureNotSupported,
					Message: msgSimpleQueryOnly,
					Hint:    "Use psql, or a driver's simple query mode (JDBC preferQueryMode=simple, pgx QueryExecModeSimpleProtocol).",
				})
			}
		default:
			out = appendMessage(nil, &pgproto3.ErrorResponse{
				Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: codeProtocolViolation,
				Message: fmt.Sprintf("unexpected message of type %q in the portcullis console", typ),
			})
			out = appendMessage(out, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		}
		if len(out) == 0 {
			continue
		}
		if err := c.Await(); err != nil {
			return fe.fail(ctx, err)
		}
		if err := fe.write(out); err != nil {
			return fe.fail(ctx, err)
		}
	}
}

// consoleParameters are the ParameterStatus messages the console sends:
// what libpq and drivers look for after the login.
func consoleParameters(st *startup) []*pgproto3.ParameterStatus {
	app := st.params["application_name"]
	return []*pgproto3.ParameterStatus{
		{Name: "application_name", Value: app},
		{Name: "client_encoding", Value: "UTF8"},
		{Name: "DateStyle", Value: "ISO, MDY"},
		{Name: "integer_datetimes", Value: "on"},
		{Name: "IntervalStyle", Value: "postgres"},
		{Name: "is_superuser", Value: "off"},
		{Name: "server_encoding", Value: "UTF8"},
		{Name: "server_version", Value: consoleServerVersion},
		{Name: "session_authorization", Value: st.params["user"]},
		{Name: "standard_conforming_strings", Value: "on"},
		{Name: "TimeZone", Value: "UTC"},
	}
}

// appendResults renders a query's results (text columns, DataRows, the
// command tag) and its error, if any, as an ERROR that leaves the session
// open.
func appendResults(buf []byte, results []*console.Result, err error, empty bool) []byte {
	if empty || (len(results) == 0 && err == nil) {
		return appendMessage(buf, &pgproto3.EmptyQueryResponse{})
	}
	for _, r := range results {
		for _, n := range r.Notices {
			buf = appendNotice(buf, n)
		}
		if len(r.Columns) > 0 {
			fields := make([]pgproto3.FieldDescription, len(r.Columns))
			for i, name := range r.Columns {
				fields[i] = pgproto3.FieldDescription{Name: []byte(name), DataTypeOID: textOID, DataTypeSize: -1, TypeModifier: -1}
			}
			buf = appendMessage(buf, &pgproto3.RowDescription{Fields: fields})
			for _, row := range r.Rows {
				values := make([][]byte, len(row))
				for i, v := range row {
					if v != nil {
						values[i] = []byte(*v)
					}
				}
				buf = appendMessage(buf, &pgproto3.DataRow{Values: values})
			}
		}
		buf = appendMessage(buf, &pgproto3.CommandComplete{CommandTag: []byte(r.Tag)})
	}
	if err != nil {
		e := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "XX000", Message: "the command failed"}
		var ce *console.Error
		if errors.As(err, &ce) {
			e.Code, e.Message, e.Detail, e.Hint = ce.Code, ce.Message, ce.Detail, ce.Hint
		}
		buf = appendMessage(buf, e)
	}
	return buf
}

// maxConsoleMessage bounds one message to the console; commands are short.
const maxConsoleMessage = 1 << 20

// readConsoleMessage reads one frontend message as its type and raw body.
// The console decodes only what it uses (a Query's text) itself, so a
// message whose length fields lie cannot reach a codec that trusts them.
func readConsoleMessage(fe *frontend) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(fe.br, hdr[:]); err != nil {
		return 0, nil, &clientIOError{err}
	}
	n := int64(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > maxConsoleMessage {
		return 0, nil, protocolError(fmt.Sprintf("invalid message length %d", n+4), "malformed_message")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(fe.br, body); err != nil {
		return 0, nil, &clientIOError{err}
	}
	return hdr[0], body, nil
}

// cString returns the NUL-terminated string that must fill b exactly.
func cString(b []byte) (string, bool) {
	if len(b) == 0 || b[len(b)-1] != 0 || bytes.IndexByte(b, 0) != len(b)-1 {
		return "", false
	}
	return string(b[:len(b)-1]), true
}

package compat

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// A feature is one column of the table.
type feature struct {
	key   string // stable id, used in code
	title string // the column heading in docs/compatibility.md
	means string // what passing it takes, for the page
}

// The columns, in order.
var (
	featSignIn     = feature{"sign-in", "sign-in", "The client signs in with the device-code flow: in notice mode the prompt (URL and code) reaches the person while the connection waits (a PostgreSQL notice, a MariaDB dialog question); in error mode the first connection fails with the URL and code in its error message and a reconnect after the sign-in gets in. The test approves the code it read from what the client showed, as a person would, and checks the session runs as the backend role policy maps the user to."}
	featSessionKey = feature{"session-key", "session key", "A new connection with the session key portcullis showed after the sign-in as its password gets in without a new device code."}
	featTOTP       = feature{"totp", "TOTP", "A resource that requires TOTP takes a code given with the password. The client's user, enrolled beforehand as `portcullis totp enroll` does (every client is a person of its own: a code is good once per person), connects with `<session key>:<code>` as its password, the code from their authenticator app, and the session runs on the backend as the mapped role; a wrong code is refused with SQLSTATE 28P01 or error 1045 (28000) as the client shows it, and portcullis's audit log shows it refused the code as wrong."}
	featRows       = feature{"rows", "10,000 rows", "A query returning 10,000 rows arrives whole: the client counts the rows and checksums their text (SHA-256 of each row's columns joined by \"|\", one line per row), and both match what the test computes on its own."}
	featPrepared   = feature{"prepared", "prepared", "A statement prepared with the client's own mechanism runs several times with parameters and gives the right answers, and the server shows it was prepared in that session (pg_prepared_statements; MariaDB's prepare counters)."}
	featRollback   = feature{"rollback", "rollback", "A row inserted in a transaction is visible inside it and gone after the client rolls the transaction back (checked by the client and, independently, on the server)."}
	featCancel     = feature{"cancel", "cancel", "A running pg_sleep(30) or SLEEP(30) is cancelled with the client's own mechanism (PostgreSQL: a CancelRequest, which portcullis routes to the right backend by the key it gave the client; MySQL: KILL QUERY with the connection id portcullis gave the client, which portcullis carries out on the right backend session): the statement ends with SQLSTATE 57014 or error 1317 within five seconds, the server no longer runs it, and the connection (or, where the driver retires it, its pool) still works."}
	featError      = feature{"error", "backend error", "A syntax error arrives intact: SQLSTATE 42601 or error 1064 and the server's message, and the connection still works."}
	featTLS        = feature{"tls", "TLS verify-full", "The client verifies portcullis's certificate against the CA file it is given (sslmode=verify-full or the driver's equivalent): it connects when that is the right CA and refuses when it is another one."}

	features = []feature{featSignIn, featSessionKey, featTOTP, featRows, featPrepared, featRollback, featCancel, featError, featTLS}
)

// Outcomes of a cell.
const (
	statusPass = "pass"
	statusFail = "fail"
	statusNA   = "n/a"
)

// outcome is one cell: the status and why (required for fail and n/a; a
// note for pass, when something about it is worth knowing).
type outcome struct {
	status string
	note   string
}

func pass(note string) outcome               { return outcome{statusPass, note} }
func failed(format string, a ...any) outcome { return outcome{statusFail, fmt.Sprintf(format, a...)} }
func notApplicable(why string) outcome       { return outcome{statusNA, why} }

// row is what one client did.
type row struct {
	section string // "PostgreSQL" or "MySQL and MariaDB"
	client  string
	version string
	cells   map[string]outcome // by feature key
}

// sections in the order they appear on the page.
var sections = []string{"PostgreSQL", "MySQL and MariaDB"}

// results collects the rows of clients running in parallel.
type results struct {
	mu   sync.Mutex
	rows map[string]*row
}

func newResults() *results { return &results{rows: map[string]*row{}} }

func (r *results) set(section, client, version string, key string, o outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rw := r.rows[client]
	if rw == nil {
		rw = &row{section: section, client: client, cells: map[string]outcome{}}
		r.rows[client] = rw
	}
	if version != "" {
		rw.version = version
	}
	rw.cells[key] = o
}

func (r *results) all() []row {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]row, 0, len(r.rows))
	for _, rw := range r.rows {
		cp := *rw
		cp.cells = map[string]outcome{}
		for k, v := range rw.cells {
			cp.cells[k] = v
		}
		out = append(out, cp)
	}
	return out
}

// docPath is the page the suite writes and checks against.
func docPath() string { return filepath.Join("..", "docs", "compatibility.md") }

// envWriteDocs makes the suite rewrite docs/compatibility.md instead of
// comparing with it.
const envWriteDocs = "COMPAT_WRITE_DOCS"

// render writes the page for rows, in the order of order (client names);
// clients missing from order come after, by name.
func render(rows []row, order []string) string {
	rank := map[string]int{}
	for i, name := range order {
		rank[name] = i
	}
	sort.SliceStable(rows, func(i, j int) bool {
		ri, iok := rank[rows[i].client]
		rj, jok := rank[rows[j].client]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok
		}
		return rows[i].client < rows[j].client
	})

	var b strings.Builder
	b.WriteString(`# Client compatibility

Analysts and BI servers reach databases through many drivers, and each must
work through portcullis as it does against the database itself. This page is
what the compatibility suite (` + "`compat/`" + `) measured: every client below, run
as a real program or library, against a real PostgreSQL or MariaDB server
behind portcullis, with the real identity core signing people in against the
Entra ID simulator. The page is generated; do not edit the tables by hand.

## Regenerating this page

` + "```" + `
bash .ci/compat-deps                                  # JDK, JDBC, Python and Node drivers
COMPAT_WRITE_DOCS=1 go test -count=1 ./compat/        # rewrite this page
go test -count=1 ./compat/                            # compare with it (what CI does)
` + "```" + `

Without ` + "`COMPAT_WRITE_DOCS=1`" + ` the suite compares what it measures with this page
and fails on a regression: a cell that says pass here and does not pass now,
or a failure this page does not record. A client whose program is not
installed is skipped with a loud message, and under ` + "`CI=true`" + ` the suite fails
instead. .ci/run installs every client with .ci/compat-deps.

## What each column checks

`)
	for _, f := range features {
		fmt.Fprintf(&b, "- **%s**: %s\n", f.title, f.means)
	}
	b.WriteString("\nA cell is pass, fail (with the reason), or n/a (the feature does not exist for that client, with the reason). A number in brackets points to a note below its table.\n")

	for _, section := range sections {
		var in []row
		for _, r := range rows {
			if r.section == section {
				in = append(in, r)
			}
		}
		fmt.Fprintf(&b, "\n## %s\n\n", section)
		if len(in) == 0 {
			b.WriteString("Not measured yet.\n")
			continue
		}
		b.WriteString("| client | version |")
		for _, f := range features {
			fmt.Fprintf(&b, " %s |", f.title)
		}
		b.WriteString("\n|---|---|")
		for range features {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		var notes []string
		noteNum := map[string]int{}
		for _, r := range in {
			fmt.Fprintf(&b, "| %s | %s |", r.client, cellText(r.version))
			for _, f := range features {
				o, ok := r.cells[f.key]
				if !ok {
					o = failed("not run")
				}
				cell := o.status
				if o.note != "" {
					n, seen := noteNum[o.note]
					if !seen {
						notes = append(notes, o.note)
						n = len(notes)
						noteNum[o.note] = n
					}
					cell += fmt.Sprintf(" [%d]", n)
				}
				fmt.Fprintf(&b, " %s |", cell)
			}
			b.WriteString("\n")
		}
		if len(notes) > 0 {
			b.WriteString("\n")
			for i, n := range notes {
				fmt.Fprintf(&b, "%d. %s\n", i+1, oneLine(n))
			}
		}
	}
	return b.String()
}

// cellText keeps a value from breaking the table.
func cellText(s string) string {
	if s == "" {
		return "?"
	}
	return strings.ReplaceAll(oneLine(s), "|", "/")
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// recorded is what the committed page says: status by client and
// feature key.
type recorded map[string]map[string]string

// parseDoc reads the tables of a page render wrote.
func parseDoc(text string) (recorded, error) {
	byTitle := map[string]string{}
	for _, f := range features {
		byTitle[f.title] = f.key
	}
	rec := recorded{}
	var columns []string // feature keys by column, "" for others
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			columns = nil
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case cells[0] == "client":
			columns = make([]string, len(cells))
			for i, c := range cells {
				columns[i] = byTitle[c]
			}
		case strings.HasPrefix(cells[0], "---"):
		case columns == nil:
			return nil, fmt.Errorf("line %d: a table row before its heading", n+1)
		default:
			if len(cells) != len(columns) {
				return nil, fmt.Errorf("line %d: %d cells, the heading has %d", n+1, len(cells), len(columns))
			}
			m := map[string]string{}
			for i, c := range cells {
				if columns[i] == "" {
					continue
				}
				status, _, _ := strings.Cut(c, " ")
				switch status {
				case statusPass, statusFail, statusNA:
				default:
					return nil, fmt.Errorf("line %d: %q is not pass, fail or n/a", n+1, c)
				}
				m[columns[i]] = status
			}
			rec[cells[0]] = m
		}
	}
	return rec, nil
}

// compare returns the regressions of now against the page (each fails
// the suite) and the other differences (the page is out of date).
func compare(doc recorded, now []row) (regressions, changes []string) {
	for _, r := range now {
		was := doc[r.client]
		for _, f := range features {
			o, ok := r.cells[f.key]
			if !ok {
				continue
			}
			before := was[f.key]
			switch {
			case before == statusPass && o.status != statusPass:
				regressions = append(regressions, fmt.Sprintf("%s / %s: was pass, now %s: %s", r.client, f.title, o.status, o.note))
			case o.status == statusFail && before != statusFail:
				regressions = append(regressions, fmt.Sprintf("%s / %s: fails, and %s does not record that: %s", r.client, f.title, docPath(), o.note))
			case before != o.status:
				if before == "" {
					before = "absent"
				}
				changes = append(changes, fmt.Sprintf("%s / %s: %s on the page, %s now", r.client, f.title, before, o.status))
			}
		}
	}
	sort.Strings(regressions)
	sort.Strings(changes)
	return regressions, changes
}

// readDoc reads the committed page; a missing page records nothing.
func readDoc() (recorded, error) {
	data, err := os.ReadFile(docPath())
	if os.IsNotExist(err) {
		return recorded{}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseDoc(string(data))
}

package entrasim

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Page sizes of directory collections in Graph.
const (
	defaultPageSize = 100
	maxPageSize     = 999
)

// graphQuery holds the OData query options of one request.
type graphQuery struct {
	selectRaw []string
	selected  []string // canonical names, set by projection
	filter    filterNode
	search    searchExpr
	orderBy   []orderKey
	top       int // 0: the default page size
	skip      int // offset decoded from $skiptoken
	count     bool
	eventual  bool // ConsistencyLevel: eventual
}

// parseGraphQuery reads the query options. Graph accepts them with and
// without the leading $.
func parseGraphQuery(r *http.Request) (*graphQuery, *graphError) {
	v := r.URL.Query()
	get := func(name string) (string, bool) {
		for _, k := range []string{"$" + name, name} {
			if v.Has(k) {
				return v.Get(k), true
			}
		}
		return "", false
	}
	q := &graphQuery{eventual: strings.EqualFold(strings.TrimSpace(r.Header.Get("ConsistencyLevel")), "eventual")}
	if s, ok := get("select"); ok {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				q.selectRaw = append(q.selectRaw, p)
			}
		}
	}
	if s, ok := get("top"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > maxPageSize {
			return nil, badRequest("Request_BadRequest", "Invalid page size specified: '%s'. Must be between 1 and %d inclusive.", s, maxPageSize)
		}
		q.top = n
	}
	if s, ok := get("count"); ok {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "true":
			q.count = true
		case "false":
		default:
			return nil, badRequest("BadRequest", "Invalid value '%s' for $count; expected true or false.", s)
		}
	}
	if s, ok := get("skiptoken"); ok {
		n, err := decodeSkipToken(s)
		if err != nil {
			return nil, badRequest("Request_BadRequest", "The skip token is invalid or has expired.")
		}
		q.skip = n
	}
	if _, ok := get("skip"); ok {
		return nil, badRequest("Request_BadRequest", "'$skip' is not supported by this API.")
	}
	if s, ok := get("filter"); ok {
		f, err := parseFilter(s)
		if err != nil {
			return nil, badRequest("BadRequest", "Invalid filter clause: %v", err)
		}
		q.filter = f
	}
	if s, ok := get("search"); ok {
		se, err := parseSearch(s)
		if err != nil {
			return nil, badRequest("Request_UnsupportedQuery", "Syntax error in $search: %v", err)
		}
		q.search = se
	}
	if s, ok := get("orderby"); ok {
		keys, err := parseOrderBy(s)
		if err != nil {
			return nil, badRequest("BadRequest", "Invalid $orderby: %v", err)
		}
		q.orderBy = keys
	}
	return q, nil
}

// advanced reports whether the request carries Graph's advanced query
// parameters: ConsistencyLevel: eventual and $count=true.
func (q *graphQuery) advanced() bool { return q.eventual && q.count }

// requireAdvancedForLink enforces Graph's rule for the memberOf family:
// $filter, $search, $orderby and the OData cast work only as advanced
// queries.
func (q *graphQuery) requireAdvancedForLink(cast bool) *graphError {
	if q.count && !q.eventual {
		return badRequest("Request_BadRequest", "$count is not currently supported.")
	}
	if q.advanced() {
		return nil
	}
	switch {
	case q.filter != nil:
		return badRequest("Request_UnsupportedQuery", "The specified filter to the reference property query is currently not supported.")
	case q.orderBy != nil:
		return badRequest("Request_UnsupportedQuery", "Sorting not supported for current query.")
	case q.search != nil:
		return badRequest("Request_UnsupportedQuery", "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual' and $count=true.")
	case cast:
		return badRequest("Request_UnsupportedQuery", "The specified type cast on the reference property query is currently not supported without 'ConsistencyLevel: eventual' and $count=true.")
	}
	return nil
}

// requireAdvancedForList enforces the rules for /users, /groups and
// /servicePrincipals: $count and $search need ConsistencyLevel: eventual;
// ne, not, endswith, null comparisons and sorting a filtered result need
// the full advanced query.
func (q *graphQuery) requireAdvancedForList(kind entityKind) *graphError {
	if q.count && !q.eventual {
		return badRequest("Request_BadRequest", "$count is not currently supported.")
	}
	if q.search != nil && !q.eventual {
		return badRequest("Request_UnsupportedQuery", "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual'")
	}
	if q.advanced() {
		return nil
	}
	if q.filter != nil {
		if prop := q.filter.advancedProperty(); prop != "" {
			return badRequest("Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property '%s' of resource '%s'.", prop, kind.resourceName())
		}
		if q.orderBy != nil {
			return badRequest("Request_UnsupportedQuery", "Sorting not supported for current query.")
		}
	}
	return nil
}

// pageSize is $top or Graph's default.
func (q *graphQuery) pageSize() int {
	if q.top > 0 {
		return q.top
	}
	return defaultPageSize
}

// projection returns the properties to render: $select in canonical
// spelling, or the type's defaults.
func (q *graphQuery) projection(kind entityKind) ([]string, *graphError) {
	if len(q.selectRaw) == 0 {
		return defaultProperties(kind), nil
	}
	q.selected = q.selected[:0]
	for _, p := range q.selectRaw {
		c, ok := canonicalProperty(kind, p)
		if !ok {
			return nil, badRequest("Request_BadRequest", "Could not find a property named '%s' on type '%s'.", p, kind.typeName())
		}
		if !slices.Contains(q.selected, c) {
			q.selected = append(q.selected, c)
		}
	}
	return q.selected, nil
}

// apply filters, searches and sorts items.
func (q *graphQuery) apply(kind entityKind, items []entity) ([]entity, *graphError) {
	if q.filter != nil {
		if gerr := q.filter.check(kind); gerr != nil {
			return nil, gerr
		}
	}
	if q.search != nil {
		if gerr := q.search.check(kind); gerr != nil {
			return nil, gerr
		}
	}
	for i, k := range q.orderBy {
		c, ok := canonicalProperty(kind, k.prop)
		if !ok || collectionProperties[c] {
			return nil, badRequest("Request_UnsupportedQuery", "Sorting by property '%s' of resource '%s' is not supported.", k.prop, kind.resourceName())
		}
		q.orderBy[i].prop = c
	}
	out := make([]entity, 0, len(items))
	for _, e := range items {
		if q.filter != nil && !q.filter.eval(e) {
			continue
		}
		if q.search != nil && !q.search.match(e) {
			continue
		}
		out = append(out, e)
	}
	if len(q.orderBy) > 0 {
		slices.SortStableFunc(out, func(a, b entity) int {
			for _, k := range q.orderBy {
				c := compareValues(a.props[k.prop], b.props[k.prop])
				if k.desc {
					c = -c
				}
				if c != 0 {
					return c
				}
			}
			return 0
		})
	}
	return out, nil
}

// collectionProperties are multi-valued; $filter on them needs any(),
// which the simulator does not offer.
var collectionProperties = map[string]bool{
	"businessPhones": true, "groupTypes": true, "servicePrincipalNames": true, "tags": true,
}

// Skip tokens are opaque to clients; here they carry an offset.
const skipTokenPrefix = "entrasim-page:"

func encodeSkipToken(offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(skipTokenPrefix + strconv.Itoa(offset)))
}

func decodeSkipToken(tok string) (int, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, err
	}
	rest, ok := strings.CutPrefix(string(raw), skipTokenPrefix)
	if !ok {
		return 0, fmt.Errorf("not a skip token")
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad offset")
	}
	return n, nil
}

// compareValues orders property values: null first, then by string
// (case-insensitively) or boolean.
func compareValues(a, b any) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	switch av := a.(type) {
	case string:
		bv, _ := b.(string)
		return strings.Compare(strings.ToLower(av), strings.ToLower(bv))
	case bool:
		bv, _ := b.(bool)
		switch {
		case av == bv:
			return 0
		case !av:
			return -1
		}
		return 1
	}
	return 0
}

// orderKey is one $orderby term.
type orderKey struct {
	prop string
	desc bool
}

func parseOrderBy(s string) ([]orderKey, error) {
	var keys []orderKey
	for _, term := range strings.Split(s, ",") {
		f := strings.Fields(term)
		if len(f) == 0 || len(f) > 2 {
			return nil, fmt.Errorf("bad term %q", strings.TrimSpace(term))
		}
		k := orderKey{prop: f[0]}
		if len(f) == 2 {
			switch strings.ToLower(f[1]) {
			case "asc":
			case "desc":
				k.desc = true
			default:
				return nil, fmt.Errorf("bad direction %q", f[1])
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// ---- $filter ----

// filterNode is a parsed $filter expression.
type filterNode interface {
	eval(e entity) bool
	check(kind entityKind) *graphError
	// advancedProperty names a property used in a way only advanced
	// queries allow (ne, not, endswith, null), or "".
	advancedProperty() string
}

type filterLogical struct {
	and  bool
	l, r filterNode
}

func (f filterLogical) eval(e entity) bool {
	if f.and {
		return f.l.eval(e) && f.r.eval(e)
	}
	return f.l.eval(e) || f.r.eval(e)
}

func (f filterLogical) check(k entityKind) *graphError {
	if g := f.l.check(k); g != nil {
		return g
	}
	return f.r.check(k)
}

func (f filterLogical) advancedProperty() string {
	if p := f.l.advancedProperty(); p != "" {
		return p
	}
	return f.r.advancedProperty()
}

type filterNot struct{ x filterNode }

func (f filterNot) eval(e entity) bool             { return !f.x.eval(e) }
func (f filterNot) check(k entityKind) *graphError { return f.x.check(k) }
func (f filterNot) advancedProperty() string {
	if p := f.x.advancedProperty(); p != "" {
		return p
	}
	return firstProperty(f.x)
}

// firstProperty names the first property an expression tests.
func firstProperty(n filterNode) string {
	switch f := n.(type) {
	case *filterCompare:
		return f.prop
	case filterLogical:
		return firstProperty(f.l)
	case filterNot:
		return firstProperty(f.x)
	}
	return ""
}

// filterCompare is "prop op literal", "prop in (…)", startswith(prop,'x')
// or endswith(prop,'x').
type filterCompare struct {
	prop string
	op   string // eq ne gt ge lt le in startswith endswith
	lits []filterLiteral
}

type filterLiteral struct {
	str    string
	isStr  bool
	isBool bool
	b      bool
	isNull bool
}

func (f *filterCompare) check(k entityKind) *graphError {
	c, ok := canonicalProperty(k, f.prop)
	if !ok || collectionProperties[c] {
		return badRequest("Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property '%s' of resource '%s'.", f.prop, k.resourceName())
	}
	f.prop = c
	return nil
}

func (f *filterCompare) advancedProperty() string {
	if f.op == "ne" || f.op == "endswith" {
		return f.prop
	}
	for _, l := range f.lits {
		if l.isNull {
			return f.prop
		}
	}
	return ""
}

func (f *filterCompare) eval(e entity) bool {
	v := e.props[f.prop]
	switch f.op {
	case "eq", "in":
		for _, l := range f.lits {
			if equalValue(v, l) {
				return true
			}
		}
		return false
	case "ne":
		return !equalValue(v, f.lits[0])
	case "startswith", "endswith":
		s, ok := v.(string)
		if !ok {
			return false
		}
		s, p := strings.ToLower(s), strings.ToLower(f.lits[0].str)
		if f.op == "startswith" {
			return strings.HasPrefix(s, p)
		}
		return strings.HasSuffix(s, p)
	}
	s, ok := v.(string)
	if !ok || !f.lits[0].isStr {
		return false
	}
	c := strings.Compare(strings.ToLower(s), strings.ToLower(f.lits[0].str))
	switch f.op {
	case "gt":
		return c > 0
	case "ge":
		return c >= 0
	case "lt":
		return c < 0
	case "le":
		return c <= 0
	}
	return false
}

// equalValue compares as directory queries do: strings without regard to
// case.
func equalValue(v any, l filterLiteral) bool {
	switch {
	case l.isNull:
		return v == nil
	case l.isBool:
		b, ok := v.(bool)
		return ok && b == l.b
	}
	s, ok := v.(string)
	return ok && strings.EqualFold(s, l.str)
}

// filterToken is a lexical token of $filter.
type filterToken struct {
	kind byte // 'i' identifier, 's' string, '(' ')' ','
	text string
}

func lexFilter(s string) ([]filterToken, error) {
	var toks []filterToken
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '(' || c == ')' || c == ',':
			toks = append(toks, filterToken{kind: c})
			i++
		case c == '\'':
			var b strings.Builder
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unterminated string")
				}
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						b.WriteByte('\'')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			toks = append(toks, filterToken{kind: 's', text: b.String()})
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t(),'", rune(s[j])) {
				j++
			}
			toks = append(toks, filterToken{kind: 'i', text: s[i:j]})
			i = j
		}
	}
	return toks, nil
}

// filterParser is a recursive-descent parser for the $filter subset
// directory queries use: eq ne gt ge lt le in, startswith, endswith, and,
// or, not and parentheses.
type filterParser struct {
	toks []filterToken
	pos  int
}

func parseFilter(s string) (filterNode, error) {
	toks, err := lexFilter(s)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("empty expression")
	}
	p := &filterParser{toks: toks}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q", p.toks[p.pos].text)
	}
	return n, nil
}

func (p *filterParser) peekWord(w string) bool {
	return p.pos < len(p.toks) && p.toks[p.pos].kind == 'i' && strings.EqualFold(p.toks[p.pos].text, w)
}

func (p *filterParser) expect(kind byte) error {
	if p.pos >= len(p.toks) || p.toks[p.pos].kind != kind {
		return fmt.Errorf("expected %q", string(kind))
	}
	p.pos++
	return nil
}

func (p *filterParser) or() (filterNode, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.peekWord("or") {
		p.pos++
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = filterLogical{and: false, l: l, r: r}
	}
	return l, nil
}

func (p *filterParser) and() (filterNode, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for p.peekWord("and") {
		p.pos++
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		l = filterLogical{and: true, l: l, r: r}
	}
	return l, nil
}

func (p *filterParser) unary() (filterNode, error) {
	if p.peekWord("not") {
		p.pos++
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return filterNot{x: x}, nil
	}
	return p.primary()
}

func (p *filterParser) primary() (filterNode, error) {
	if p.pos >= len(p.toks) {
		return nil, fmt.Errorf("unexpected end of expression")
	}
	t := p.toks[p.pos]
	if t.kind == '(' {
		p.pos++
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		return n, p.expect(')')
	}
	if t.kind != 'i' {
		return nil, fmt.Errorf("expected a property or function, got %q", t.text)
	}
	p.pos++
	if fn := strings.ToLower(t.text); (fn == "startswith" || fn == "endswith") && p.pos < len(p.toks) && p.toks[p.pos].kind == '(' {
		p.pos++
		if p.pos >= len(p.toks) || p.toks[p.pos].kind != 'i' {
			return nil, fmt.Errorf("%s needs a property", t.text)
		}
		prop := p.toks[p.pos].text
		p.pos++
		if err := p.expect(','); err != nil {
			return nil, err
		}
		lit, err := p.literal()
		if err != nil {
			return nil, err
		}
		if !lit.isStr {
			return nil, fmt.Errorf("%s needs a string", t.text)
		}
		return &filterCompare{prop: prop, op: fn, lits: []filterLiteral{lit}}, p.expect(')')
	}
	if p.pos >= len(p.toks) || p.toks[p.pos].kind != 'i' {
		return nil, fmt.Errorf("expected an operator after %q", t.text)
	}
	op := strings.ToLower(p.toks[p.pos].text)
	p.pos++
	switch op {
	case "eq", "ne", "gt", "ge", "lt", "le":
		lit, err := p.literal()
		if err != nil {
			return nil, err
		}
		return &filterCompare{prop: t.text, op: op, lits: []filterLiteral{lit}}, nil
	case "in":
		if err := p.expect('('); err != nil {
			return nil, err
		}
		var lits []filterLiteral
		for {
			lit, err := p.literal()
			if err != nil {
				return nil, err
			}
			lits = append(lits, lit)
			if p.pos < len(p.toks) && p.toks[p.pos].kind == ',' {
				p.pos++
				continue
			}
			break
		}
		return &filterCompare{prop: t.text, op: "in", lits: lits}, p.expect(')')
	}
	return nil, fmt.Errorf("unknown operator %q", op)
}

func (p *filterParser) literal() (filterLiteral, error) {
	if p.pos >= len(p.toks) {
		return filterLiteral{}, fmt.Errorf("expected a value")
	}
	t := p.toks[p.pos]
	p.pos++
	switch {
	case t.kind == 's':
		return filterLiteral{str: t.text, isStr: true}, nil
	case t.kind == 'i' && strings.EqualFold(t.text, "true"):
		return filterLiteral{isBool: true, b: true}, nil
	case t.kind == 'i' && strings.EqualFold(t.text, "false"):
		return filterLiteral{isBool: true}, nil
	case t.kind == 'i' && strings.EqualFold(t.text, "null"):
		return filterLiteral{isNull: true}, nil
	}
	return filterLiteral{}, fmt.Errorf("expected a value, got %q", t.text)
}

// unquoteODataString reads 'text' with ” standing for a quote.
func unquoteODataString(s string) (string, error) {
	if len(s) < 2 || s[0] != '\'' || s[len(s)-1] != '\'' {
		return "", fmt.Errorf("not a quoted string")
	}
	inner := s[1 : len(s)-1]
	if strings.Count(strings.ReplaceAll(inner, "''", ""), "'") != 0 {
		return "", fmt.Errorf("stray quote")
	}
	return strings.ReplaceAll(inner, "''", "'"), nil
}

// ---- $search ----

// searchExpr is an OR of ANDs of "property:term" clauses.
type searchExpr [][]searchClause

type searchClause struct {
	prop string
	term string
}

// searchableProperties are the properties Graph's $search covers.
var searchableProperties = []string{"displayName", "description", "mail", "mailNickname", "userPrincipalName", "givenName", "surname"}

func parseSearch(s string) (searchExpr, error) {
	var expr searchExpr
	var cur []searchClause
	wantClause := true
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == ' ':
			i++
		case c == '"':
			if !wantClause {
				return nil, fmt.Errorf("expected AND or OR")
			}
			end := strings.IndexByte(s[i+1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote")
			}
			prop, term, ok := strings.Cut(s[i+1:i+1+end], ":")
			if !ok || strings.TrimSpace(term) == "" {
				return nil, fmt.Errorf(`a clause must be "property:value"`)
			}
			cur = append(cur, searchClause{prop: strings.TrimSpace(prop), term: strings.TrimSpace(term)})
			wantClause = false
			i += end + 2
		default:
			j := i
			for j < len(s) && s[j] != ' ' && s[j] != '"' {
				j++
			}
			word := s[i:j]
			i = j
			if wantClause {
				return nil, fmt.Errorf("clauses must be quoted, got %q", word)
			}
			switch word {
			case "AND":
			case "OR":
				expr = append(expr, cur)
				cur = nil
			default:
				return nil, fmt.Errorf("expected AND or OR, got %q", word)
			}
			wantClause = true
		}
	}
	if wantClause {
		return nil, fmt.Errorf("missing clause")
	}
	return append(expr, cur), nil
}

func (se searchExpr) check(k entityKind) *graphError {
	for _, and := range se {
		for i, c := range and {
			name, ok := canonicalProperty(k, c.prop)
			if !ok || !slices.Contains(searchableProperties, name) {
				return badRequest("Request_UnsupportedQuery", "Unsupported property '%s' in $search on resource '%s'.", c.prop, k.resourceName())
			}
			and[i].prop = name
		}
	}
	return nil
}

func (se searchExpr) match(e entity) bool {
	for _, and := range se {
		all := true
		for _, c := range and {
			if !searchMatches(e.str(c.prop), c.term) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// searchMatches is Graph's tokenized search: every word of the term is a
// prefix of some word of the value.
func searchMatches(value, term string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
			return !unicode.IsLetter(r) && !unicode.IsDigit(r)
		})
	}
	words := split(value)
	for _, t := range split(term) {
		found := false
		for _, w := range words {
			if strings.HasPrefix(w, t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

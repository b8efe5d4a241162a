package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/portcullisdb/portcullis/graph"
)

// azureSearch GETs a Graph URL of provider and turns the answer into
// rows: see the package documentation.
func (c *Console) azureSearch(ctx context.Context, provider, rawURL string) (*Result, error) {
	if c.d.Graph == nil {
		return nil, &Error{Code: CodeFeatureNotEnabled, Message: "azure_search is not available on this portcullis"}
	}
	gc, err := c.d.Graph(provider)
	if err != nil {
		return nil, &Error{Code: CodeUndefinedObject, Message: "azure_search: " + err.Error(), Err: err}
	}
	header := http.Header{"ConsistencyLevel": {"eventual"}}
	var (
		tab       table
		truncated bool
	)
	next := rawURL
	for next != "" {
		resp, err := gc.Get(ctx, next, header)
		if err != nil {
			return nil, graphFailure(provider, err)
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return nil, graphRefusal(resp)
		}
		body := bytes.TrimSpace(resp.Body)
		if len(body) == 0 || body[0] != '{' {
			// $count answers a bare number, as text/plain.
			if !json.Valid(body) {
				return nil, &Error{Code: CodeSystemError, Message: fmt.Sprintf("Microsoft Graph answered something that is neither JSON nor a number (%d bytes)", len(body))}
			}
			cell := cellOf(body)
			return &Result{Columns: []string{"count"}, Rows: [][]*string{{cell}}, Tag: "SELECT 1"}, nil
		}
		keys, obj, err := orderedObject(body)
		if err != nil {
			return nil, &Error{Code: CodeSystemError, Message: "Microsoft Graph's answer could not be read", Err: err}
		}
		next = ""
		value, isCollection := obj["value"]
		switch {
		case isCollection && bytes.HasPrefix(bytes.TrimSpace(value), []byte("[")):
			var items []json.RawMessage
			if err := json.Unmarshal(value, &items); err != nil {
				return nil, &Error{Code: CodeSystemError, Message: "Microsoft Graph's value array could not be read", Err: err}
			}
			for _, it := range items {
				if len(tab.rows) == c.d.RowLimit {
					truncated = true
					break
				}
				if err := tab.add(it); err != nil {
					return nil, &Error{Code: CodeSystemError, Message: "an element of Microsoft Graph's value could not be read", Err: err}
				}
			}
			if link, ok := obj["@odata.nextLink"]; ok && !truncated {
				if err := json.Unmarshal(link, &next); err != nil {
					return nil, &Error{Code: CodeSystemError, Message: "Microsoft Graph's @odata.nextLink could not be read", Err: err}
				}
				if len(tab.rows) == c.d.RowLimit && next != "" {
					truncated, next = true, ""
				}
			}
		case isCollection:
			// A single property, e.g. /users/{id}/displayName.
			tab.columns = []string{"value"}
			tab.rows = [][]*string{{cellOf(value)}}
		default:
			// One entity, e.g. /users/{id}.
			delete(obj, "@odata.context")
			tab.addObject(keys, obj)
		}
	}
	r := &Result{Columns: tab.columns, Rows: tab.rows, Tag: "SELECT " + strconv.Itoa(len(tab.rows))}
	if len(r.Columns) == 0 {
		// No element at all: still a result set, with one column, so
		// that a client shows "(0 rows)".
		r.Columns = []string{"value"}
	}
	if truncated {
		r.Notices = append(r.Notices, fmt.Sprintf("azure_search stopped at %d rows; narrow the query ($filter, $top, $select) to see the rest", c.d.RowLimit))
	}
	return r, nil
}

// table gathers rows whose columns are the union of their objects' keys,
// in the order they first appear.
type table struct {
	columns []string
	index   map[string]int
	rows    [][]*string
}

func (t *table) add(item json.RawMessage) error {
	item = bytes.TrimSpace(item)
	if len(item) == 0 || item[0] != '{' {
		// A collection of plain values.
		t.addObject([]string{"value"}, map[string]json.RawMessage{"value": item})
		return nil
	}
	keys, obj, err := orderedObject(item)
	if err != nil {
		return err
	}
	t.addObject(keys, obj)
	return nil
}

func (t *table) addObject(keys []string, obj map[string]json.RawMessage) {
	if t.index == nil {
		t.index = map[string]int{}
	}
	for _, k := range keys {
		if _, ok := obj[k]; !ok {
			continue
		}
		if _, ok := t.index[k]; !ok {
			t.index[k] = len(t.columns)
			t.columns = append(t.columns, k)
			for i := range t.rows {
				t.rows[i] = append(t.rows[i], nil)
			}
		}
	}
	r := make([]*string, len(t.columns))
	for k, v := range obj {
		r[t.index[k]] = cellOf(v)
	}
	t.rows = append(t.rows, r)
}

// orderedObject decodes a JSON object, keeping the order of its keys.
func orderedObject(data []byte) ([]string, map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("not a JSON object")
	}
	var keys []string
	obj := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("object key is %T", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		if _, dup := obj[k]; !dup {
			keys = append(keys, k)
		}
		obj[k] = v
	}
	return keys, obj, nil
}

// cellOf renders a JSON value as text: a string as itself, null as
// NULL, anything else as compact JSON.
func cellOf(v json.RawMessage) *string {
	v = bytes.TrimSpace(v)
	switch {
	case len(v) == 0 || string(v) == "null":
		return nil
	case v[0] == '"':
		var s string
		if json.Unmarshal(v, &s) == nil {
			return text(s)
		}
	}
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return text(string(v))
	}
	return text(b.String())
}

// graphFailure explains a request that got no answer from Graph.
func graphFailure(provider string, err error) *Error {
	if errors.Is(err, graph.ErrOutsideEndpoint) {
		return &Error{
			Code:    CodeInvalidParameter,
			Message: fmt.Sprintf("azure_search reaches only Microsoft Graph URLs of provider %q (/v1.0/... or /beta/... under its graph_endpoint)", provider),
			Hint:    "Give a path such as '/v1.0/users?$select=id,userPrincipalName'.",
			Err:     err,
		}
	}
	if graph.IsUnavailable(err) {
		return &Error{Code: CodeSystemError, Message: fmt.Sprintf("Microsoft Graph of provider %q could not be reached or kept failing; try again later", provider), Err: err}
	}
	return &Error{Code: CodeSystemError, Message: fmt.Sprintf("azure_search on provider %q failed", provider), Err: err}
}

// graphRefusal turns Graph's error answer into a console error with its
// code and message.
func graphRefusal(resp *graph.Response) *Error {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(resp.Body, &body)
	msg := fmt.Sprintf("Microsoft Graph answered HTTP %d", resp.StatusCode)
	if body.Error.Code != "" {
		msg += " " + body.Error.Code
	}
	if body.Error.Message != "" {
		msg += ": " + strings.TrimSpace(body.Error.Message)
	}
	e := &Error{Message: msg}
	switch resp.StatusCode {
	case http.StatusBadRequest:
		e.Code = CodeInvalidParameter
	case http.StatusUnauthorized, http.StatusForbidden:
		e.Code = CodeNotAuthorized
		e.Hint = "portcullis's app registration may lack the Graph application permission this query needs (User.Read.All, GroupMember.Read.All)."
	case http.StatusNotFound:
		e.Code = CodeUndefinedObject
	default:
		e.Code = CodeSystemError
	}
	if id := resp.Header.Get("request-id"); id != "" {
		e.Detail = "Graph request-id " + id
	}
	return e
}

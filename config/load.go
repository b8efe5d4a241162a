package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// Load reads the YAML file at path, overlays the PORTCULLIS_* variables of
// env (in os.Environ form) and then overrides ("key.path=value", from
// --set flags), fills defaults, resolves secrets and validates the result.
// env is also where *_env secrets are looked up; Load never reads the
// process environment itself.
//
// Every problem in the content is reported at once in a *ValidationError;
// any other error means the file could not be read.
func Load(path string, env, overrides []string) (*Config, error) {
	data, err := readLimited(path, maxConfigFile)
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	return Parse(data, path, env, overrides)
}

// Parse is Load for a configuration already in memory. name labels
// problems and, as with Load, relative file paths written in data are taken
// relative to filepath.Dir(name).
func Parse(data []byte, name string, env, overrides []string) (*Config, error) {
	ps := newProblems(name)
	cfg := &Config{}
	decodeYAML(ps, data, cfg)
	cfg.resolvePaths(filepath.Dir(name))

	vars := envMap(env)
	overlay(ps, cfg, vars, overrides)

	cfg.ApplyDefaults()
	cfg.resolveSecrets(ps, vars)
	cfg.validate(ps)
	if err := ps.result(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// envMap turns os.Environ-style entries into a map; a later entry wins, as
// it does for a child process.
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		m[k] = v
	}
	return m
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// decodeYAML parses data into cfg through yaml.Node, so that every key's
// line is recorded and unknown keys are caught.
func decodeYAML(ps *problems, data []byte, cfg *Config) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return // an empty file is an empty configuration
		}
		src, msg := source{file: ps.file}, err.Error()
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			src.line, _ = strconv.Atoi(m[1])
			msg = m[2]
		} else {
			msg = strings.TrimPrefix(msg, "yaml: ")
		}
		ps.at(src, "", "invalid YAML: %s", msg)
		ps.bad[""] = true
		return
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		ps.at(source{file: ps.file, line: extra.Line}, "", "more than one YAML document; put the whole configuration in one")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return
		}
		root = root.Content[0]
	}
	d := &decoder{ps: ps}
	d.value(root, reflect.ValueOf(cfg).Elem(), "")
}

// decoder walks a yaml.Node tree alongside the Go value it fills.
type decoder struct {
	ps    *problems
	depth int
	// visits counts values decoded and merges applied. Aliases make a
	// small document stand for a huge tree ("billion laughs"), so the walk
	// gives up past maxDecodeVisits instead of expanding it.
	visits   int
	tooLarge bool
}

// maxDecodeVisits is far beyond any real configuration (thousands of
// resources) and small enough to decode in well under a second.
const maxDecodeVisits = 1 << 20

// maxDecodeProblems stops the walk once this many problems are found: an
// alias repeated a million times repeats its mistake as often, and a
// report of a million lines helps nobody (and takes seconds to build).
const maxDecodeProblems = 100

// visit counts one step of the walk and reports whether to go on.
func (d *decoder) visit(n *yaml.Node, path string) bool {
	if d.tooLarge {
		return false
	}
	d.visits++
	if d.visits > maxDecodeVisits {
		d.tooLarge = true
		d.ps.decodeFailed(d.src(n), path, "expands to more than %d values (aliases repeated too often?)", maxDecodeVisits)
		return false
	}
	if len(d.ps.list) >= maxDecodeProblems {
		d.tooLarge = true
		d.ps.decodeFailed(d.src(n), path, "decoding stopped after %d problems; fix these first", len(d.ps.list))
		return false
	}
	return true
}

var durationType = reflect.TypeOf(time.Duration(0))

func (d *decoder) src(n *yaml.Node) source { return source{file: d.ps.file, line: n.Line} }

// value decodes n into v, whose key path is path.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if !d.visit(n, path) {
		return
	}
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > 64 {
		d.ps.decodeFailed(d.src(n), path, "nested too deeply (alias loop?)")
		return
	}
	if n.Kind == yaml.AliasNode {
		d.value(n.Alias, v, path)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value keeps the zero value, hence the default
	}
	t := v.Type()
	switch {
	case t == durationType || t.Kind() == reflect.String || t.Kind() == reflect.Bool || t.Kind() == reflect.Int ||
		(t.Kind() == reflect.Pointer && t.Elem() == durationType):
		if n.Kind != yaml.ScalarNode {
			d.ps.decodeFailed(d.src(n), path, "must be %s, got %s", describeType(t), describeNode(n))
			return
		}
		if err := setScalar(v, n.Value); err != nil {
			d.ps.decodeFailed(d.src(n), path, "%s", err.Error())
		}
	case t.Kind() == reflect.Struct:
		d.mapping(n, v, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.ps.decodeFailed(d.src(n), path, "must be a list, got %s", describeNode(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			d.ps.locs[ip] = d.src(item)
			d.value(item, s.Index(i), ip)
		}
		v.Set(s)
	case t.Kind() == reflect.Map:
		d.stringMap(n, v, path)
	default:
		// Only reachable if a field of an unsupported type is added.
		d.ps.decodeFailed(d.src(n), path, "cannot be set (unsupported type %s)", t)
	}
}

// mapping decodes a YAML mapping into the struct v, reporting unknown and
// repeated keys.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.ps.decodeFailed(d.src(n), path, "must be a mapping of keys, got %s", describeNode(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := map[string]int{}
	// Merged mappings (<<: *anchor) go first so that keys written here
	// override them, as YAML says.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "<<" && k.Tag == "!!merge" {
			d.merge(n.Content[i+1], v, path)
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Kind == yaml.ScalarNode && kn.Value == "<<" && kn.Tag == "!!merge" {
			continue
		}
		if kn.Kind != yaml.ScalarNode {
			d.ps.decodeFailed(d.src(kn), path, "keys must be plain names, got %s", describeNode(kn))
			continue
		}
		key := joinKey(path, kn.Value)
		if first, dup := seen[kn.Value]; dup {
			d.ps.decodeFailed(d.src(kn), key, "set twice (first at line %d)", first)
			continue
		}
		seen[kn.Value] = kn.Line
		f, ok := fields[kn.Value]
		if !ok {
			msg := "unknown key"
			if s := suggest(kn.Value, fields); s != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", s)
			}
			d.ps.decodeFailed(d.src(kn), key, "%s", msg)
			continue
		}
		d.ps.locs[key] = d.src(kn)
		d.value(vn, v.Field(f.index), key)
	}
}

// merge applies a "<<" value: one mapping or a list of them.
func (d *decoder) merge(n *yaml.Node, v reflect.Value, path string) {
	if !d.visit(n, path) {
		return
	}
	// A mapping can merge itself (&a {<<: *a}): without this bound the
	// walk would recurse until the stack overflows.
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > 64 {
		d.ps.decodeFailed(d.src(n), path, "merges nested too deeply (alias loop?)")
		return
	}
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.SequenceNode {
		for i := len(n.Content) - 1; i >= 0; i-- { // earlier ones win
			d.merge(n.Content[i], v, path)
		}
		return
	}
	d.mapping(n, v, path)
}

// stringMap decodes a mapping of names to strings.
func (d *decoder) stringMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.ps.decodeFailed(d.src(n), path, "must be a mapping of names to values, got %s", describeNode(n))
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		for vn.Kind == yaml.AliasNode {
			vn = vn.Alias
		}
		if kn.Kind != yaml.ScalarNode {
			d.ps.decodeFailed(d.src(kn), path, "keys must be plain names, got %s", describeNode(kn))
			continue
		}
		key := path + "." + kn.Value
		if first, dup := seen[kn.Value]; dup {
			d.ps.decodeFailed(d.src(kn), key, "set twice (first at line %d)", first)
			continue
		}
		seen[kn.Value] = kn.Line
		d.ps.locs[key] = d.src(kn)
		if vn.Kind != yaml.ScalarNode {
			d.ps.decodeFailed(d.src(vn), key, "must be a string, got %s", describeNode(vn))
			continue
		}
		val := ""
		if vn.Tag != "!!null" {
			val = vn.Value
		}
		m.SetMapIndex(reflect.ValueOf(kn.Value), reflect.ValueOf(val))
	}
	v.Set(m)
}

// setScalar parses s into v, a string, bool, int, duration or *duration.
// Its errors are complete messages that may quote s: no scalar key holds a
// secret.
func setScalar(v reflect.Value, s string) error {
	t := v.Type()
	if t.Kind() == reflect.Pointer {
		p := reflect.New(t.Elem())
		if err := setScalar(p.Elem(), s); err != nil {
			return err
		}
		v.Set(p)
		return nil
	}
	switch {
	case t == durationType:
		dur, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("must be a duration such as 30s, 10m or 12h, got %q", s)
		}
		v.SetInt(int64(dur))
	case t.Kind() == reflect.String:
		v.SetString(s)
	case t.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("must be true or false, got %q", s)
		}
		v.SetBool(b)
	case t.Kind() == reflect.Int:
		i, err := strconv.ParseInt(strings.TrimSpace(s), 10, 0)
		if err != nil {
			return fmt.Errorf("must be a whole number, got %q", s)
		}
		v.SetInt(i)
	default:
		return fmt.Errorf("is %s, not a single value", describeType(t))
	}
	return nil
}

func isScalarType(t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64:
		return true
	}
	return false
}

func describeType(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return "a duration"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Int:
		return "a whole number"
	case t.Kind() == reflect.Slice:
		return "a list"
	case t.Kind() == reflect.Map, t.Kind() == reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// field is one YAML key of a struct.
type field struct {
	index int
	name  string
	typ   reflect.Type
}

var fieldCache sync.Map // reflect.Type → map[string]field

// yamlFields lists the keys of struct type t by their yaml tags; fields
// tagged "-" (resolved secrets) are not keys.
func yamlFields(t reflect.Type) map[string]field {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]field)
	}
	m := map[string]field{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		m[name] = field{index: i, name: name, typ: sf.Type}
	}
	fieldCache.Store(t, m)
	return m
}

// suggest returns the known key closest to an unknown one, if any is
// close: a couple of typing slips away, or the unknown key shortened.
func suggest(key string, fields map[string]field) string {
	key = strings.ToLower(key)
	best, bestDist := "", 3
	for name := range fields {
		d := editDistance(key, name)
		if len(key) >= 4 && strings.HasPrefix(name, key) {
			d = min(d, 2)
		}
		if d < bestDist || (d == bestDist && name < best) {
			best, bestDist = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

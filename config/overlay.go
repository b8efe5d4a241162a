package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// EnvPrefix starts every environment variable that overlays a key.
const EnvPrefix = "PORTCULLIS_"

// EnvConfigFile names the configuration file when no --config flag is
// given. It is not a key, so Load does not treat it as a typo.
const EnvConfigFile = "PORTCULLIS_CONFIG"

// envNotKeys are PORTCULLIS_* variables that are not configuration keys.
var envNotKeys = map[string]bool{
	EnvConfigFile: true,
}

// step is one segment of a resolved key path.
type step struct {
	field int    // struct field index, when isField
	name  string // yaml key, when isField
	index int    // list index, when isIndex
	key   string // map key, when isMapKey
	kind  stepKind
}

type stepKind int

const (
	isField stepKind = iota
	isIndex
	isMapKey
)

// keyPath renders steps the way problems name keys: resources[1].tls.mode.
func keyPath(steps []step) string {
	var b strings.Builder
	for _, s := range steps {
		switch s.kind {
		case isField:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.name)
		case isIndex:
			fmt.Fprintf(&b, "[%d]", s.index)
		case isMapKey:
			b.WriteByte('.')
			b.WriteString(s.key)
		}
	}
	return b.String()
}

// setting is one overlay value bound for a key.
type setting struct {
	origin string // "env NAME" or "--set"
	steps  []step
	value  string
}

// isSecretRef reports whether the setting sets a *_env key, whose value
// names another environment variable.
func (s setting) isSecretRef() bool {
	last := s.steps[len(s.steps)-1]
	return last.kind == isField && strings.HasSuffix(last.name, "_env")
}

// overlay applies the PORTCULLIS_* variables of env and then the --set
// overrides to cfg, in that order, so flags beat env and env beats the
// file.
func overlay(ps *problems, cfg *Config, env map[string]string, overrides []string) {
	root := reflect.TypeOf(cfg).Elem()

	type unmatched struct{ name, why string }
	var fromEnv []setting
	var unknown []unmatched
	names := make([]string, 0, len(env))
	for name := range env {
		if strings.HasPrefix(name, EnvPrefix) && !envNotKeys[name] {
			names = append(names, name)
		}
	}
	// Natural order puts PROVIDERS_1_* before PROVIDERS_2_*, so a list can
	// be extended one item at a time whatever order the environment has.
	sort.Slice(names, func(i, j int) bool { return naturalLess(names[i], names[j]) })
	for _, name := range names {
		toks := strings.Split(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "_")
		matches := matchEnv(root, toks)
		switch len(matches) {
		case 0:
			unknown = append(unknown, unmatched{name, "matches no configuration key"})
		case 1:
			fromEnv = append(fromEnv, setting{origin: "env " + name, steps: matches[0], value: env[name]})
		default:
			paths := make([]string, len(matches))
			for i, m := range matches {
				paths[i] = keyPath(m)
			}
			sort.Strings(paths)
			unknown = append(unknown, unmatched{name, "is ambiguous: it could mean " + strings.Join(paths, " or ") + "; use --set"})
		}
	}

	var fromFlags []setting
	for _, o := range overrides {
		path, value, ok := strings.Cut(o, "=")
		if !ok {
			ps.decodeFailed(source{file: "--set"}, strings.TrimSpace(o), "must be key.path=value")
			continue
		}
		steps, err := matchPath(root, strings.TrimSpace(path))
		if err != nil {
			ps.decodeFailed(source{file: "--set"}, strings.TrimSpace(path), "%s", err.Error())
			continue
		}
		fromFlags = append(fromFlags, setting{origin: "--set", steps: steps, value: value})
	}

	// Variables named by *_env keys hold secrets, not overlay values, even
	// when they happen to carry the prefix.
	referenced := cfg.secretEnvNames()
	for _, s := range append(append([]setting(nil), fromEnv...), fromFlags...) {
		if s.isSecretRef() {
			referenced[s.value] = true
		}
	}
	for _, u := range unknown {
		if !referenced[u.name] {
			ps.at(source{file: "env " + u.name}, "", "%s (the %s prefix is reserved for configuration keys)", u.why, EnvPrefix)
		}
	}

	v := reflect.ValueOf(cfg).Elem()
	for _, s := range fromEnv {
		if referenced[strings.TrimPrefix(s.origin, "env ")] {
			continue
		}
		apply(ps, v, s)
	}
	for _, s := range fromFlags {
		apply(ps, v, s)
	}
}

// apply sets one overlay value, growing a list by at most one item.
func apply(ps *problems, v reflect.Value, s setting) {
	src := source{file: s.origin}
	key := keyPath(s.steps)
	for i, st := range s.steps {
		switch st.kind {
		case isField:
			v = v.Field(st.field)
		case isIndex:
			if st.index > v.Len() {
				ps.decodeFailed(src, keyPath(s.steps[:i+1]), "the list has %d items, so the next one to add is %d", v.Len(), v.Len())
				return
			}
			if st.index == v.Len() {
				v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
			}
			v = v.Index(st.index)
		case isMapKey:
			if v.IsNil() {
				v.Set(reflect.MakeMap(v.Type()))
			}
			v.SetMapIndex(reflect.ValueOf(st.key), reflect.ValueOf(s.value))
			ps.locs[key] = src
			return
		}
		// Enclosing keys keep their file lines unless this overlay made
		// them.
		if k := keyPath(s.steps[:i+1]); ps.locs[k] == (source{}) {
			ps.locs[k] = src
		}
	}
	ps.locs[key] = src
	if err := setScalar(v, s.value); err != nil {
		ps.decodeFailed(src, key, "%s", err.Error())
		return
	}
	// A value set again by an overlay is no longer the one that failed.
	delete(ps.bad, key)
}

// matchEnv finds every way the lower-cased, "_"-split tokens of a variable
// name spell a path to a single value under t. Key names contain "_" too,
// so the schema decides where one key ends and the next begins.
func matchEnv(t reflect.Type, toks []string) [][]step {
	if len(toks) == 0 {
		if isScalarType(t) {
			return [][]step{nil}
		}
		return nil
	}
	var out [][]step
	switch t.Kind() {
	case reflect.Struct:
		for name, f := range yamlFields(t) {
			ft := strings.Split(name, "_")
			if len(ft) > len(toks) || !equalTokens(ft, toks[:len(ft)]) {
				continue
			}
			for _, rest := range matchEnv(f.typ, toks[len(ft):]) {
				out = append(out, append([]step{{kind: isField, field: f.index, name: name}}, rest...))
			}
		}
	case reflect.Slice:
		i, ok := listIndex(toks[0])
		if !ok {
			return nil
		}
		for _, rest := range matchEnv(t.Elem(), toks[1:]) {
			out = append(out, append([]step{{kind: isIndex, index: i}}, rest...))
		}
	case reflect.Map:
		out = append(out, []step{{kind: isMapKey, key: strings.Join(toks, "_")}})
	}
	return out
}

func equalTokens(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// listIndex parses a list index; it caps the value so that a stray
// variable cannot make Load allocate a huge list.
func listIndex(s string) (int, bool) {
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i > 9999 || s != strconv.Itoa(i) {
		return 0, false
	}
	return i, true
}

// matchPath resolves a --set path such as providers.0.client_id (or
// providers[0].client_id) against t.
func matchPath(t reflect.Type, path string) ([]step, error) {
	if path == "" {
		return nil, fmt.Errorf("must be key.path=value")
	}
	segs := strings.Split(strings.NewReplacer("[", ".", "]", "").Replace(path), ".")
	var steps []step
	for i := 0; i < len(segs); i++ {
		seg := segs[i]
		switch t.Kind() {
		case reflect.Struct:
			f, ok := yamlFields(t)[seg]
			if !ok {
				msg := "unknown key"
				if s := suggest(seg, yamlFields(t)); s != "" {
					msg += fmt.Sprintf(" %q (did you mean %s?)", seg, s)
				}
				return nil, fmt.Errorf("%s", msg)
			}
			steps = append(steps, step{kind: isField, field: f.index, name: seg})
			t = f.typ
		case reflect.Slice:
			idx, ok := listIndex(seg)
			if !ok {
				return nil, fmt.Errorf("%s is a list: the next part must be an item number, got %q", keyPath(steps), seg)
			}
			steps = append(steps, step{kind: isIndex, index: idx})
			t = t.Elem()
		case reflect.Map:
			// The rest is the map key: alias names may contain dots.
			return append(steps, step{kind: isMapKey, key: strings.Join(segs[i:], ".")}), nil
		default:
			return nil, fmt.Errorf("%s is a single value and has no key %q", keyPath(steps), seg)
		}
	}
	if !isScalarType(t) {
		if t.Kind() == reflect.Slice {
			return nil, fmt.Errorf("is a list; set one item at a time (%s.0=…)", path)
		}
		return nil, fmt.Errorf("is a section, not a single value")
	}
	return steps, nil
}

// naturalLess orders strings with digit runs compared as numbers.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, _ := strconv.Atoi(a[:da])
			nb, _ := strconv.Atoi(b[:db])
			if na != nb {
				return na < nb
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitRun(s string) int {
	n := 0
	for n < len(s) && n < 9 && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

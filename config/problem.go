package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Problem is one thing wrong with a configuration, located as precisely as
// its source allows.
type Problem struct {
	// File is the configuration file name; for a value that came from an
	// overlay it is "env NAME" or "--set"; empty for a Config built in code.
	File string
	// Line is the 1-based line in File, or 0 when there is no line (an
	// overlay, a key that is missing altogether, a Config built in code).
	Line int
	// Key is the key path at fault, e.g. resources[1].protocol; empty for a
	// problem with the file as a whole (a YAML syntax error).
	Key string
	// Message says what is wrong. It never contains a secret value.
	Message string
}

// String formats the problem as "file:line: key: message", leaving out
// what is not known.
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	}
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// ValidationError is every problem found in a configuration. Load returns
// it (wrapped or not, use errors.As) for anything wrong with the content;
// other errors mean the file could not be read at all.
type ValidationError struct {
	Problems []Problem
}

// Error lists every problem, one per line after the first.
func (e *ValidationError) Error() string {
	switch len(e.Problems) {
	case 0:
		return "invalid configuration"
	case 1:
		return "invalid configuration: " + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid configuration (%d problems):", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n\t")
		b.WriteString(p.String())
	}
	return b.String()
}

// Check loads path as Load does and returns every problem found; none
// means the configuration is valid. err is reserved for a file that cannot
// be read. It backs `portcullis config check FILE`.
func Check(path string, env, overrides []string) (problems []Problem, err error) {
	_, err = Load(path, env, overrides)
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Problems, nil
	}
	return nil, err
}

// Report renders the outcome of Check as `portcullis config check` prints
// it: "OK" when there are no problems, else one problem per line.
func Report(problems []Problem) string {
	if len(problems) == 0 {
		return "OK\n"
	}
	var b strings.Builder
	for _, p := range problems {
		b.WriteString(p.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// problems collects Problems and knows where each key path was set.
type problems struct {
	file string            // the configuration file's name
	locs map[string]source // key path → where its value came from
	bad  map[string]bool   // key paths that failed to decode
	list []Problem
}

// source is where a key's value came from.
type source struct {
	file string
	line int
}

func newProblems(file string) *problems {
	return &problems{file: file, locs: map[string]source{}, bad: map[string]bool{}}
}

// at records a problem with an explicit location.
func (ps *problems) at(src source, key, format string, args ...any) {
	ps.list = append(ps.list, Problem{File: src.file, Line: src.line, Key: key, Message: fmt.Sprintf(format, args...)})
}

// decodeFailed records a problem found while decoding key and marks the key
// so that validation does not pile further complaints on it.
func (ps *problems) decodeFailed(src source, key, format string, args ...any) {
	ps.at(src, key, format, args...)
	ps.bad[key] = true
}

// add records a problem with key, located where key (or the nearest
// enclosing key that was set) came from. Keys under one that failed to
// decode are skipped: their value is unknown, not wrong.
func (ps *problems) add(key, format string, args ...any) {
	for k := key; ; k = parentKey(k) {
		if ps.bad[k] {
			return
		}
		if k == "" {
			break
		}
	}
	ps.at(ps.locate(key), key, format, args...)
}

// addNear is add for a key that is usually absent when it is wrong; the
// problem then points at near, the key that made it necessary.
func (ps *problems) addNear(key, near, format string, args ...any) {
	if _, set := ps.locs[key]; !set {
		if _, set := ps.locs[near]; set {
			for k := near; k != ""; k = parentKey(k) {
				if ps.bad[k] {
					return
				}
			}
			ps.at(ps.locs[near], key, format, args...)
			return
		}
	}
	ps.add(key, format, args...)
}

// locate finds where key, or failing that its nearest set ancestor, came
// from.
func (ps *problems) locate(key string) source {
	for k := key; k != ""; k = parentKey(k) {
		if src, ok := ps.locs[k]; ok {
			return src
		}
	}
	return source{file: ps.file}
}

// result returns nil when nothing was found, else a *ValidationError with
// the problems in file order: the file's by line, then overlays.
func (ps *problems) result() error {
	if len(ps.list) == 0 {
		return nil
	}
	out := append([]Problem(nil), ps.list...)
	rank := func(p Problem) int {
		if p.File == ps.file {
			return 0
		}
		return 1
	}
	sort.SliceStable(out, func(i, j int) bool {
		ri, rj := rank(out[i]), rank(out[j])
		if ri != rj {
			return ri < rj
		}
		return ri == 0 && out[i].Line < out[j].Line
	})
	return &ValidationError{Problems: out}
}

// parentKey strips the last segment of a key path: "a.b[2]" → "a.b",
// "a.b" → "a", "a" → "".
func parentKey(k string) string {
	i := strings.LastIndexAny(k, ".[")
	if i < 0 {
		return ""
	}
	return k[:i]
}

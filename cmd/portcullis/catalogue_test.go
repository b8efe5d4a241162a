package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// eventName finds the audit event names the code writes: arguments of
// logging.Event and values given to a variable named event.
var eventName = regexp.MustCompile(`(?:logging\.Event\(|\bevent\s*:?=\s*)"([a-z0-9_]+(?:\.[a-z0-9_]+)+)"`)

// TestAuditCatalogueComplete fails when the code writes an audit event
// that docs/operating.md does not list, so operators can rely on the
// catalogue when they write alerts.
func TestAuditCatalogueComplete(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "operating.md"))
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range eventName.FindAllSubmatch(src, -1) {
			found[string(m[1])] = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) < 20 {
		t.Fatalf("found only %d audit events in the code; the pattern no longer matches how events are written", len(found))
	}
	for name, path := range found {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("%s writes the event %q, which docs/operating.md does not list", path, name)
		}
	}
}

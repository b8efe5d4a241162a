package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse loads arbitrary bytes as a configuration file. Whatever they
// are, Parse must return (no panic, no runaway recursion or expansion),
// fail only with a *ValidationError whose report names no secret it
// resolved, and anything it accepts must pass Validate as it is and
// again after a second ApplyDefaults.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(""))
	f.Add([]byte("providers: [\n"))
	f.Add([]byte("proxy: &a\n  <<: *a\n"))
	for _, name := range []string{"example.yaml", "broken.yaml", "syntax.yaml", "unknown-key.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "testdata", "config", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// Relative paths in the data resolve inside an empty directory, so
	// inputs read no files of the repository.
	name := filepath.Join(f.TempDir(), "portcullis.yaml")
	env := append([]string{"PORTCULLIS_STORE_KEY=" + testStoreKey}, minimalEnv...)
	secrets := []string{readerPassword, testStoreKey}

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, name, env, nil)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse failed with %T, want a *ValidationError: %v", err, err)
			}
			for _, s := range secrets {
				if !strings.Contains(string(data), s) && strings.Contains(err.Error(), s) {
					t.Fatal("the problem report contains a secret resolved from the environment")
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a configuration that Validate refuses: %v", err)
		}
		cfg.ApplyDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("a second ApplyDefaults broke an accepted configuration: %v", err)
		}
	})
}

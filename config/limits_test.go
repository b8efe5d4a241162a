package config

import (
	"strings"
	"testing"
)

// Files the configuration names are read with a bound: /dev/zero is a
// clear error, not exhausted memory.
func TestNamedFilesAreBounded(t *testing.T) {
	tests := []struct {
		name string
		read func() error
		want string
	}{
		{name: "config file", read: func() error { _, err := Load("/dev/zero", nil, nil); return err }, want: "larger than"},
		{name: "client certificate", read: func() error { _, err := LoadClientCertificate("/dev/zero", ""); return err }, want: "larger than"},
		{name: "secret file", read: func() error { _, err := readSecretFile("/dev/zero"); return err }, want: "larger than"},
		{name: "CA file", read: func() error {
			ps := newProblems("")
			checkCAFile(ps, "providers[0].ca_file", "/dev/zero")
			return ps.result()
		}, want: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.read()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

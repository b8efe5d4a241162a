package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRunExitCodesAndOutput(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "no command", args: nil, wantCode: exitUsage, wantStderr: "no command given"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: exitUsage, wantStderr: `unknown command "frobnicate"`},
		{name: "version", args: []string{"version"}, wantCode: exitOK, wantStdout: "portcullis dev"},
		{name: "help", args: []string{"help"}, wantCode: exitOK, wantStdout: "portcullis serve --config FILE"},
		{name: "config without check", args: []string{"config"}, wantCode: exitUsage, wantStderr: "config check FILE"},
		{name: "config check without file", args: []string{"config", "check"}, wantCode: exitUsage, wantStderr: "exactly one FILE"},
		{name: "config check missing file", args: []string{"config", "check", "testdata/nope.yaml"}, wantCode: exitConfig, wantStderr: "nope.yaml"},
		{
			name:       "config check lists every problem with its line",
			args:       []string{"config", "check", "../../testdata/config/broken.yaml"},
			wantCode:   exitConfig,
			wantStdout: "broken.yaml:22: resources[1].protocol: must be postgres or mysql",
			wantStderr: "problem(s)",
		},
		{
			name:       "config check OK with secrets from env",
			args:       []string{"config", "check", "../../testdata/config/example.yaml", "--set", "tls.cert_file=", "--set", "tls.key_file=", "--set", "resources.0.tls.ca_file="},
			env:        []string{"PORTCULLIS_ENTRA_CLIENT_SECRET=s1", "REPORTING_RW_PASSWORD=p1", "REPORTING_RO_PASSWORD=p2", "PORTCULLIS_STORE_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
			wantCode:   exitOK,
			wantStdout: "OK",
		},
		{name: "serve without config", args: []string{"serve"}, wantCode: exitUsage, wantStderr: "serve needs --config"},
		{name: "serve with a bad flag", args: []string{"serve", "--nope"}, wantCode: exitUsage, wantStderr: "flag provided but not defined"},
		{name: "serve with an invalid config", args: []string{"serve", "--config", "../../testdata/config/broken.yaml"}, wantCode: exitConfig, wantStderr: "resources[1].protocol"},
		{name: "dev approve without a code", args: []string{"dev", "approve"}, wantCode: exitUsage, wantStderr: "needs a CODE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tt.args, tt.env, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestJSONLineHasEventAndFields(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, JSON, "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("connection accepted", Event("conn.accepted"), zap.String("client_addr", "127.0.0.1:5000"))
	log.Debug("dropped below level", Event("debug.only"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %q", len(lines), buf.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("line is not JSON: %v: %s", err, lines[0])
	}
	for key, want := range map[string]string{"event": "conn.accepted", "client_addr": "127.0.0.1:5000", "level": "info", "msg": "connection accepted"} {
		if got[key] != want {
			t.Errorf("%s = %v, want %q", key, got[key], want)
		}
	}
	if _, ok := got["ts"]; !ok {
		t.Error("no ts field")
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name   string
		format Format
		level  string
		want   string
	}{
		{name: "unknown format", format: "xml", level: "info", want: "log format"},
		{name: "unknown level", format: JSON, level: "loud", want: "log level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(&bytes.Buffer{}, tt.format, tt.level)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

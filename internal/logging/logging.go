// Package logging builds the zap logger portcullis writes its events with:
// one JSON object per line on stdout for operators, or a console format for
// people. Every event carries a stable "event" field (conn.accepted,
// auth.succeeded, session.ended, ...) so that logs can be filtered by it.
package logging

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Format is how log lines are written.
type Format string

// Formats.
const (
	JSON    Format = "json"
	Console Format = "console"
)

// New returns a logger writing to w in the given format at the given level
// ("debug", "info", "warn", "error").
func New(w io.Writer, format Format, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.MessageKey = "msg"
	enc.EncodeDuration = zapcore.StringDurationEncoder
	var encoder zapcore.Encoder
	switch format {
	case JSON, "":
		encoder = zapcore.NewJSONEncoder(enc)
	case Console:
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, fmt.Errorf("log format %q: want json or console", format)
	}
	core := zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core), nil
}

// Event is the field that names what happened; every log line has one.
func Event(name string) zap.Field { return zap.String("event", name) }

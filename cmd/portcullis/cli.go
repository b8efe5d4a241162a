package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes, mapped from errors in one place (exitCode).
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad flags or arguments
	exitConfig  = 3 // the configuration is invalid
)

// usageError marks a mistake in how the command was called.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// configError marks an invalid configuration.
type configError struct{ err error }

func (e *configError) Error() string { return e.err.Error() }
func (e *configError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var u *usageError
	var c *configError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.As(err, &c):
		return exitConfig
	}
	return exitFailure
}

const usage = `portcullis signs people and programs in with Microsoft Entra ID before
they reach PostgreSQL or MySQL.

Usage:
  portcullis serve --config FILE     run the proxy
  portcullis dev                     run a self-contained demo: simulated tenant, local databases
  portcullis dev approve CODE --as UPN
                                     approve a pending sign-in in the dev simulator
  portcullis config check FILE       print OK or every problem in FILE
  portcullis totp status USER --config FILE
                                     show a user's TOTP enrolment, wrong codes and lockout
  portcullis totp reset USER --config FILE
                                     forget a user's TOTP secret and lockout; they enrol again
  portcullis totp enroll USER --png FILE --config FILE
                                     write a user's TOTP enrolment QR code to a new PNG file
  portcullis keys create --for ID --resource R --ttl 90d --config FILE
                                     make an access key for a program (printed once)
  portcullis keys list --config FILE list access keys
  portcullis keys revoke KEYID --config FILE
                                     revoke an access key; its sessions end at the next recheck
  portcullis store rotate-key --config FILE
                                     re-seal TOTP secrets under store.key (old key: store.previous_key)
  portcullis version                 print the version

Run 'portcullis COMMAND -h' for a command's flags.
`

// env is the process environment, passed explicitly so tests can set it.
type env []string

func (e env) get(name string) string {
	for i := len(e) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(e[i], "="); ok && k == name {
			return v
		}
	}
	return ""
}

func run(args []string, environ []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := dispatch(ctx, args, env(environ), stdout, stderr)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stderr, "portcullis: %v\n", err)
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitCode(err)
}

func dispatch(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &usageError{"no command given"}
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:], e, stdout, stderr)
	case "dev":
		if len(args) > 1 && args[1] == "approve" {
			return cmdDevApprove(ctx, args[2:], stdout, stderr)
		}
		return cmdDev(ctx, args[1:], e, stdout, stderr)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			return &usageError{"usage: portcullis config check FILE"}
		}
		return cmdConfigCheck(args[2:], e, stdout, stderr)
	case "totp":
		return cmdTOTP(ctx, args[1:], e, stdout, stderr)
	case "store":
		return cmdStore(ctx, args[1:], e, stdout, stderr)
	case "keys":
		return cmdKeys(ctx, args[1:], e, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "portcullis %s\n", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args, allowing flags after positional arguments
// ("config check FILE --set k=v"), and turns flag mistakes into usage
// errors. The positional arguments are left in fs.Args().
func parseFlags(fs *flag.FlagSet, args []string) error {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return &usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	// Parse once more with no flags so that fs.Args() holds the
	// positional arguments only.
	return fs.Parse(append([]string{"--"}, positional...))
}

// multiFlag collects a repeatable flag such as --set.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

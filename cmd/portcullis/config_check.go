package main

import (
	"fmt"
	"io"

	"github.com/portcullisdb/portcullis/config"
)

func cmdConfigCheck(args []string, e env, stdout, stderr io.Writer) error {
	fs := newFlagSet("config check", stderr)
	var sets multiFlag
	fs.Var(&sets, "set", "override a key, e.g. --set sessions.ttl=1h (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: portcullis config check [--set key=value ...] FILE")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path := fs.Arg(0)
	if path == "" {
		path = e.get(config.EnvConfigFile)
	}
	if path == "" || fs.NArg() > 1 {
		fs.Usage()
		return &usageError{"config check needs exactly one FILE"}
	}
	problems, err := config.Check(path, e, sets)
	if err != nil {
		return &configError{err}
	}
	fmt.Fprint(stdout, config.Report(problems))
	if len(problems) > 0 {
		return &configError{fmt.Errorf("%s has %d problem(s)", path, len(problems))}
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/store"
	"github.com/portcullisdb/portcullis/mfa"
)

// storeOpenTimeout bounds opening the state store and migrating it.
const storeOpenTimeout = 30 * time.Second

// openState opens the state store the configuration names (applying its
// migrations) and the TOTP checker on it, for serve and the admin
// commands.
func openState(ctx context.Context, cfg *config.Config) (store.Store, *mfa.TOTP, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancel()
	st, err := store.Open(ctx, cfg.Store)
	if err != nil {
		return nil, nil, fmt.Errorf("open the state store (%s): %w", cfg.Store.Driver, err)
	}
	return st, mfa.New(st, mfa.Options{MaxFailures: cfg.MFA.MaxFailures, FailureWindow: cfg.MFA.FailureWindow}), nil
}

// adminFlags are the flags every admin command takes, like serve's.
type adminFlags struct {
	path string
	sets multiFlag
}

func (f *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.path, "config", "", "configuration file (default $"+config.EnvConfigFile+")")
	fs.Var(&f.sets, "set", "override a key, e.g. --set store.path=/var/lib/portcullis/portcullis.db (repeatable)")
}

// load reads the configuration and refuses a store that keeps nothing.
func (f *adminFlags) load(e env, command string) (*config.Config, error) {
	if f.path == "" {
		f.path = e.get(config.EnvConfigFile)
	}
	if f.path == "" {
		return nil, &usageError{command + " needs --config FILE (or $" + config.EnvConfigFile + ")"}
	}
	cfg, err := config.Load(f.path, e, f.sets)
	if err != nil {
		return nil, &configError{err}
	}
	if cfg.Store.Driver == config.StoreMemory {
		return nil, &configError{errors.New("store.driver is memory: nothing outlives a portcullis process, so there is no state to manage")}
	}
	return cfg, nil
}

// parseInterspersed parses flags that may come before or after the
// positional arguments ("totp enroll USER --png FILE") and returns the
// positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

const storeUsage = `usage: portcullis store rotate-key --config FILE

rotate-key re-seals every TOTP secret under store.key, opening those sealed
under an older key with store.previous_key. Run it after a restart with the
new key as store.key and the old one as store.previous_key, then remove
store.previous_key_env / previous_key_file from the configuration.
`

func cmdStore(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "rotate-key" {
		fmt.Fprint(stderr, storeUsage)
		return &usageError{"usage: portcullis store rotate-key --config FILE"}
	}
	fs := newFlagSet("store rotate-key", stderr)
	var af adminFlags
	af.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, storeUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return &usageError{"store rotate-key takes no arguments"}
	}
	cfg, err := af.load(e, "store rotate-key")
	if err != nil {
		return err
	}
	if !cfg.Store.Key.IsSet() {
		return &configError{errors.New("store.key_env or store.key_file must name the key to seal under")}
	}
	st, _, err := openState(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	n, err := st.RotateKey(ctx)
	var unknown *store.UnknownKeyError
	if errors.As(err, &unknown) {
		return fmt.Errorf("%w; set store.previous_key_env or store.previous_key_file to the key with that id", err)
	}
	if err != nil {
		return err
	}
	keys, _ := store.KeysFromConfig(cfg.Store)
	fmt.Fprintf(stdout, "re-sealed %s under key id %s\n", countNoun(n, "TOTP secret", "TOTP secrets"), store.KeyID(keys.Current))
	if cfg.Store.PreviousKey.IsSet() {
		fmt.Fprintln(stdout, "every secret is now sealed under store.key: remove store.previous_key_env / previous_key_file from the configuration")
	}
	return nil
}

// countNoun writes "1 secret", "2 secrets".
func countNoun(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

const keysUsage = `usage:
  portcullis keys create --for ID --resource R [--ttl 90d] --config FILE
                                  make an access key; it is printed once, never stored
  portcullis keys list --config FILE
                                  list access keys (never the keys themselves)
  portcullis keys revoke KEYID --config FILE
                                  revoke a key; its open sessions end at the next recheck

ID is a user's UPN or a service principal's application id. The program
connects with ID as its user name and the key as its password; the
identity's groups are checked at every connection, and while it runs.
`

func cmdKeys(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return &usageError{"usage: portcullis keys create|list|revoke --config FILE"}
	}
	sub := args[0]
	switch sub {
	case "create", "list", "revoke":
	default:
		fmt.Fprint(stderr, keysUsage)
		return &usageError{fmt.Sprintf("unknown keys command %q", sub)}
	}
	fs := newFlagSet("keys "+sub, stderr)
	var af adminFlags
	af.register(fs)
	var forID, resource, ttlText *string
	if sub == "create" {
		forID = fs.String("for", "", "the identity the key proves: a UPN or an application id")
		resource = fs.String("resource", "", "the one resource the key opens")
		ttlText = fs.String("ttl", "90d", "how long the key is valid, e.g. 90d, 12h")
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, keysUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	switch {
	case sub == "revoke" && len(pos) != 1:
		return &usageError{"keys revoke needs exactly one KEYID (see portcullis keys list)"}
	case sub != "revoke" && len(pos) != 0:
		return &usageError{fmt.Sprintf("keys %s takes no arguments", sub)}
	}
	var ttl time.Duration
	if sub == "create" {
		if *forID == "" || *resource == "" {
			return &usageError{"keys create needs --for ID and --resource R"}
		}
		if ttl, err = parseTTL(*ttlText); err != nil {
			return &usageError{fmt.Sprintf("--ttl: %v", err)}
		}
	}
	cfg, err := af.load(e, "keys "+sub)
	if err != nil {
		return err
	}
	st, _, err := openState(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()

	switch sub {
	case "create":
		return createKey(ctx, st, cfg, *forID, *resource, ttl, time.Now(), stdout)
	case "list":
		return listKeys(ctx, st, time.Now(), stdout)
	}
	return revokeKey(ctx, st, pos[0], time.Now(), stdout)
}

// parseTTL reads a lifetime: a Go duration ("12h", "30m") or a number of
// days ("90d").
func parseTTL(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(strings.TrimSpace(s), "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a duration such as 90d or 12h", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: the lifetime must be positive", s)
	}
	return d, nil
}

// createKey makes an access key for forID on resource, stores its hash
// and prints the key, once.
func createKey(ctx context.Context, st auth.AccessKeyStore, cfg *config.Config, forID, resource string, ttl time.Duration, now time.Time, stdout io.Writer) error {
	var res *config.Resource
	for i := range cfg.Resources {
		if cfg.Resources[i].Name == resource {
			res = &cfg.Resources[i]
		}
	}
	if res == nil {
		names := make([]string, len(cfg.Resources))
		for i, r := range cfg.Resources {
			names[i] = r.Name
		}
		return &usageError{fmt.Sprintf("there is no resource called %q (resources: %s)", resource, strings.Join(names, ", "))}
	}
	key, rec, h, err := auth.NewAccessKey(res.Provider, forID, resource, ttl, now)
	if err != nil {
		return &usageError{strings.TrimPrefix(err.Error(), "access key: ")}
	}
	if err := st.PutAccessKey(ctx, h, rec); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "access key %s for %s (%s) on %s, valid until %s.\n", rec.ID, rec.For, kindWord(rec.Kind), rec.Resource, stamp(rec.ExpiresAt))
	fmt.Fprintf(stdout, "It is shown only now: give it to the program as its password, with %s as its user name.\n", rec.For)
	fmt.Fprintln(stdout, key)
	return nil
}

// listKeys prints every key's id, identity, resource, times and state.
func listKeys(ctx context.Context, st auth.AccessKeyStore, now time.Time, stdout io.Writer) error {
	keys, err := st.ListAccessKeys(ctx)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		fmt.Fprintln(stdout, "no access keys")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFOR\tRESOURCE\tCREATED\tEXPIRES\tLAST USED\tSTATE")
	for _, k := range keys {
		used := "never"
		if !k.LastUsedAt.IsZero() {
			used = stamp(k.LastUsedAt)
		}
		state := "active"
		switch {
		case k.Revoked():
			state = "revoked " + stamp(k.RevokedAt)
		case !now.Before(k.ExpiresAt):
			state = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.For, k.Resource, stamp(k.CreatedAt), stamp(k.ExpiresAt), used, state)
	}
	return tw.Flush()
}

// revokeKey revokes the key with id.
func revokeKey(ctx context.Context, st auth.AccessKeyStore, id string, now time.Time, stdout io.Writer) error {
	id = strings.ToLower(strings.TrimSpace(id))
	if !auth.ValidAccessKeyID(id) {
		return &usageError{fmt.Sprintf("%q is not an access key id (see portcullis keys list)", id)}
	}
	k, ok, err := st.AccessKeyByID(ctx, id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("there is no access key %s", id)
	}
	if _, err := st.RevokeAccessKey(ctx, id, now); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "access key %s (%s on %s) revoked: it opens no new connection, and its open sessions end at the next recheck (authz.recheck)\n", id, k.For, k.Resource)
	return nil
}

func kindWord(k auth.Kind) string {
	if k == auth.KindServicePrincipal {
		return "service principal"
	}
	return "user"
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

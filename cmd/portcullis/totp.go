package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/mfa"
)

const totpUsage = `usage:
  portcullis totp status USER --config FILE        show USER's TOTP enrolment, wrong codes and lockout
  portcullis totp reset USER --config FILE         forget USER's TOTP secret and lockout: they enrol again
  portcullis totp enroll USER --png FILE --config FILE
                                                   write USER's pending enrolment as a QR code (PNG)

USER is the person's UPN. With several providers, name one with --provider.
`

// enrolmentPNGSize is the width of `totp enroll --png` images, in pixels.
const enrolmentPNGSize = 400

func cmdTOTP(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, totpUsage)
		return &usageError{"usage: portcullis totp status|reset|enroll USER --config FILE"}
	}
	sub := args[0]
	switch sub {
	case "status", "reset", "enroll":
	default:
		fmt.Fprint(stderr, totpUsage)
		return &usageError{fmt.Sprintf("unknown totp command %q", sub)}
	}
	fs := newFlagSet("totp "+sub, stderr)
	var af adminFlags
	af.register(fs)
	provider := fs.String("provider", "", "the provider USER signs in with (default: the only one)")
	var pngPath *string
	if sub == "enroll" {
		pngPath = fs.String("png", "", "write the QR code to this new file (it holds the secret: hand it over privately, then delete it)")
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, totpUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return &usageError{fmt.Sprintf("totp %s needs exactly one USER", sub)}
	}
	if sub == "enroll" && *pngPath == "" {
		return &usageError{"totp enroll needs --png FILE"}
	}
	cfg, err := af.load(e, "totp "+sub)
	if err != nil {
		return err
	}
	pname, err := pickProvider(cfg, *provider)
	if err != nil {
		return err
	}
	user := mfa.NewUser(pname, pos[0])
	if user.Name == "" {
		return &usageError{"USER must not be empty"}
	}
	st, totp, err := openState(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()

	switch sub {
	case "status":
		status, err := totp.Status(ctx, user)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, describeTOTP(status, totp, time.Now()))
		return nil
	case "reset":
		had, err := totp.Reset(ctx, user)
		if err != nil {
			return err
		}
		if had {
			fmt.Fprintf(stdout, "%s: TOTP secret removed and wrong codes forgotten; they enrol again at their next sign-in to a resource that requires TOTP\n", user)
		} else {
			fmt.Fprintf(stdout, "%s had no TOTP secret; wrong codes and any lockout forgotten\n", user)
		}
		return nil
	}
	return enrollPNG(ctx, totp, user, *pngPath, stdout)
}

// pickProvider is the provider named, or the only one.
func pickProvider(cfg *config.Config, name string) (string, error) {
	if name == "" {
		if len(cfg.Providers) != 1 {
			return "", &usageError{fmt.Sprintf("%d providers are configured: name one with --provider", len(cfg.Providers))}
		}
		return cfg.Providers[0].Name, nil
	}
	for _, p := range cfg.Providers {
		if p.Name == name {
			return name, nil
		}
	}
	return "", &usageError{fmt.Sprintf("provider %q is not configured", name)}
}

// enrollPNG writes u's pending enrolment to a new file only its owner can
// read: it holds the secret.
func enrollPNG(ctx context.Context, totp *mfa.TOTP, u mfa.User, path string, stdout io.Writer) error {
	enrolment, err := totp.Enroll(ctx, u)
	if errors.Is(err, mfa.ErrAlreadyEnrolled) {
		return fmt.Errorf("%s already has an active TOTP secret; run 'portcullis totp reset %s' first to replace it", u, u)
	}
	if err != nil {
		return err
	}
	img, err := enrolment.PNG(enrolmentPNGSize)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write the enrolment of %s: %w", u, err)
	}
	if _, err := f.Write(img); err != nil {
		f.Close()
		return fmt.Errorf("write the enrolment of %s to %s: %w", u, path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write the enrolment of %s to %s: %w", u, path, err)
	}
	fmt.Fprintf(stdout, "wrote the TOTP enrolment of %s to %s.\nThe image holds the secret: hand it over privately, then delete it. The secret becomes active with the first good code.\n", u, path)
	return nil
}

// describeTOTP is what `totp status` prints.
func describeTOTP(st mfa.Status, totp *mfa.TOTP, now time.Time) string {
	stamp := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }
	out := fmt.Sprintf("%s (provider %s): ", st.User, st.User.Provider)
	switch {
	case !st.Enrolled:
		out += "no TOTP secret; enrolled at the next sign-in to a resource that requires TOTP\n"
	case !st.Active:
		out += fmt.Sprintf("enrolment pending since %s, awaiting the first good code\n", stamp(st.CreatedAt))
	default:
		out += fmt.Sprintf("active since %s", stamp(st.ActivatedAt))
		if !st.LastUsedAt.IsZero() {
			out += fmt.Sprintf("; last good code %s", stamp(st.LastUsedAt))
		}
		out += "\n"
	}
	f := st.Failures
	switch {
	case f.Locked(now):
		out += fmt.Sprintf("locked until %s after %s (portcullis totp reset ends it now)\n", stamp(f.LockedUntil), countNoun(f.Count, "wrong code", "wrong codes"))
	case f.Count > 0 && now.Sub(f.WindowStart) < totp.FailureWindow():
		out += fmt.Sprintf("%s since %s; %d lock TOTP sign-in\n", countNoun(f.Count, "wrong code", "wrong codes"), stamp(f.WindowStart), totp.MaxFailures())
	default:
		out += "no recent wrong codes\n"
	}
	return out
}

package mfa

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// The code parameters every authenticator app understands. They are set
// explicitly rather than left to the library's defaults.
const (
	// Period is the length of one step.
	Period = 30 * time.Second
	// Digits is the length of a code.
	Digits = 6
	// Skew is how many steps either side of the arrival time are
	// accepted.
	Skew = 1
	// SecretBytes is the size of a secret: 160 bits, as RFC 4226
	// recommends for HMAC-SHA1.
	SecretBytes = 20
)

// validateOpts checks one step exactly: Check walks the skew itself so
// that it knows which step matched.
var validateOpts = totp.ValidateOpts{
	Period:    uint(Period / time.Second),
	Skew:      0,
	Digits:    otp.DigitsSix,
	Algorithm: otp.AlgorithmSHA1,
}

// base32NoPad is how secrets are written in otpauth URIs.
var base32NoPad = base32.StdEncoding.WithPadding(base32.NoPadding)

// Step is the TOTP step (counter) that t falls in.
func Step(t time.Time) int64 {
	s := t.Unix() / int64(Period/time.Second)
	if t.Unix() < 0 && t.Unix()%int64(Period/time.Second) != 0 {
		s--
	}
	return s
}

// stepStart is the first instant of step s.
func stepStart(s int64) time.Time { return time.Unix(s*int64(Period/time.Second), 0) }

// newKey reads a fresh secret from crypto/rand.
func newKey() ([]byte, error) {
	b := make([]byte, SecretBytes)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// matchStep finds the step, within Skew of at, whose code is code. It
// prefers the earliest step after last. reused is true when code matches
// only steps at or before last.
func matchStep(key []byte, code string, at time.Time, last int64) (step int64, reused, ok bool) {
	if len(code) != Digits {
		return 0, false, false
	}
	secret := base32NoPad.EncodeToString(key)
	center := Step(at)
	for s := center - Skew; s <= center+Skew; s++ {
		good, err := totp.ValidateCustom(code, secret, stepStart(s), validateOpts)
		if err != nil || !good {
			continue
		}
		if s > last {
			return s, false, true
		}
		reused = true
	}
	return 0, reused, false
}

// CodeAt is the code of a base32 secret (as in an otpauth URI) at t. It
// is what an authenticator app shows; tests and tools use it.
func CodeAt(secret string, t time.Time) (string, error) {
	return totp.GenerateCodeCustom(secret, t, validateOpts)
}

// SecretFromURI returns the base32 secret of an otpauth:// URI.
func SecretFromURI(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" {
		return "", errors.New("not an otpauth://totp/ URI")
	}
	s := u.Query().Get("secret")
	if s == "" {
		return "", errors.New("the otpauth URI has no secret")
	}
	return s, nil
}

// Enrollment is what a person needs to add their secret to an
// authenticator app. URI and Key carry the secret: show them to that
// person only, never log them.
type Enrollment struct {
	User User
	// URI is the otpauth://totp/ URI the QR code encodes.
	URI string
	// Key is the secret in base32, in groups of four, for typing in by
	// hand.
	Key string
}

// String keeps the secret out of logs and error messages that print an
// Enrollment by accident.
func (e Enrollment) String() string {
	return fmt.Sprintf("TOTP enrolment of %s (secret redacted)", e.User)
}

// GoString redacts the secret in %#v.
func (e Enrollment) GoString() string { return e.String() }

// TerminalQR is the URI as a QR code drawn with Unicode half blocks (see
// TerminalQR).
func (e Enrollment) TerminalQR() ([]string, error) { return TerminalQR(e.URI) }

// PNG is the URI as a QR code in a PNG image about size pixels wide.
func (e Enrollment) PNG(size int) ([]byte, error) { return PNG(e.URI, size) }

// enrollment builds the otpauth URI of a secret with the library, handing
// it the secret rather than letting it make one.
func (t *TOTP) enrollment(sec Secret) (Enrollment, error) {
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer:      t.issuer,
		AccountName: sec.User.Name,
		Period:      uint(Period / time.Second),
		Secret:      sec.Key,
		Digits:      otp.DigitsSix,
		Algorithm:   otp.AlgorithmSHA1,
	})
	if err != nil {
		return Enrollment{}, fmt.Errorf("mfa: otpauth URI for %q: %w", sec.User.Name, err)
	}
	return Enrollment{User: sec.User, URI: key.URL(), Key: groupsOfFour(base32NoPad.EncodeToString(sec.Key))}, nil
}

func groupsOfFour(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i:min(i+4, len(s))])
	}
	return b.String()
}

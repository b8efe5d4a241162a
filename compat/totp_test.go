package compat

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/mfa"
)

// authenticator is a person's authenticator app, set up with the secret
// of their TOTP enrolment.
type authenticator struct{ secret string }

// enrolTOTP enrols user as `portcullis totp enroll` does, and sets up
// their app from the otpauth URI the QR code holds. Every client's user
// is a person of their own: a code is good once per person (replay
// protection), so clients running in parallel would refuse each other's.
func (s *suite) enrolTOTP(ctx context.Context, user string) (authenticator, error) {
	e, err := s.totp.Enroll(ctx, mfa.NewUser(providerName, user))
	if err != nil {
		return authenticator{}, fmt.Errorf("enrol %s for TOTP: %w", user, err)
	}
	secret, err := mfa.SecretFromURI(e.URI)
	if err != nil {
		return authenticator{}, fmt.Errorf("the enrolment of %s: %w", user, err)
	}
	return authenticator{secret: secret}, nil
}

// code is what the app shows now.
func (a authenticator) code() (string, error) { return mfa.CodeAt(a.secret, time.Now()) }

// wrongCode is a code that no step portcullis accepts now has (one of
// skew either way, and a step more for a slow client).
func (a authenticator) wrongCode() (string, error) {
	valid := map[string]bool{}
	for d := -2; d <= 2; d++ {
		c, err := mfa.CodeAt(a.secret, time.Now().Add(time.Duration(d)*mfa.Period))
		if err != nil {
			return "", err
		}
		valid[c] = true
	}
	now, err := a.code()
	if err != nil {
		return "", err
	}
	n, _ := strconv.Atoi(now)
	for i := 1; ; i++ {
		if c := fmt.Sprintf("%06d", (n+i*7919)%1000000); !valid[c] {
			return c, nil
		}
	}
}

// withCode is the password of a person who gives a TOTP code.
func withCode(key, code string) string { return key + ":" + code }

// totpRefusals counts the TOTP codes of user that portcullis refused,
// of kind, by its audit log: it logs a refusal before the client hears
// of it.
func (s *suite) totpRefusals(user string, kind auth.TOTPFailureKind) int {
	return s.logs.FilterField(zap.String("event", "mfa.totp.failed")).FilterField(zap.String("user", user)).FilterField(zap.String("kind", string(kind))).Len()
}

// admitted counts the connections of user to resource that portcullis
// let in.
func (s *suite) admitted(user, resource string) int {
	return s.logs.FilterField(zap.String("event", "auth.succeeded")).FilterField(zap.String("user", user)).FilterField(zap.String("resource", resource)).Len()
}

// wrongCodeText is in what portcullis tells a person whose code is wrong.
func wrongCodeText(user string) string { return "the TOTP code for " + user + " is wrong" }

// reusedCodeText is in what portcullis tells a person whose code was
// already used.
func reusedCodeText(user string) string { return "the TOTP code for " + user + " was already used" }

// wrongCodeRefused judges the attempt with a wrong code, given whether it
// failed and what the client showed: portcullis must have refused the
// code, and the client must show its refusal.
func (s *suite) wrongCodeRefused(user string, before int, got bool, shown string) outcome {
	if got {
		return failed("a wrong TOTP code got in")
	}
	if n := s.totpRefusals(user, auth.TOTPWrongCode); n != before+1 {
		return failed("portcullis did not refuse the wrong code as wrong (%d refusals): the client showed %s", n-before, firstLine(redact(shown)))
	}
	return pass("")
}

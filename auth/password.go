package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// SessionKeyPrefix starts every session key, so a key is recognisable in a
// password field (and to secret scanners) and never mistaken for a token.
const SessionKeyPrefix = "pcx_"

// sessionKeyBytes is the entropy of a session key: 256 bits.
const sessionKeyBytes = 32

// sessionKeyEncoding is lower-case, unpadded base32: no character a shell,
// a connection string or a password dialog treats specially, and no ':'
// (which separates a key from a TOTP code).
var sessionKeyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// maxTokenBytes bounds an access token presented as a password. Entra
// tokens are a few kilobytes (groups beyond 200 move out of the token), so
// anything larger is refused before any parsing or cryptography.
const maxTokenBytes = 16 << 10

// CredentialKind says what the credential part of a password is.
type CredentialKind string

// Kinds of credential a password can carry.
const (
	// CredentialNone: nothing usable as a credential (any text, or a bare
	// TOTP code); a person signs in with a device code.
	CredentialNone CredentialKind = "none"
	// CredentialAccessToken: a JWT (three base64url parts).
	CredentialAccessToken CredentialKind = "access_token"
	// CredentialSessionKey: a session key issued by portcullis.
	CredentialSessionKey CredentialKind = "session_key"
	// CredentialAccessKey: an access key an admin made for a program.
	CredentialAccessKey CredentialKind = "access_key"
)

// Password is a password split by the grammar of ARCHITECTURE §3:
//
//	<JWT>                 an Entra access token (also anything that
//	                      starts "eyJ" and has two dots: validation
//	                      then refuses it rather than a device code
//	                      being started for a mangled token)
//	<JWT>:<TOTP>          the same, with a 6-digit TOTP code
//	<session key>         a key from an earlier sign-in
//	<session key>:<TOTP>  the same, with a 6-digit TOTP code
//	<access key>          a key an admin made ("pak_...")
//	<access key>:<TOTP>   the same, with a 6-digit TOTP code
//	<TOTP>                just a 6-digit code (sign in with a device code)
//	anything else         sign in with a device code
//
// A service principal's secret is not classified here: for a service
// principal login name the whole password is the secret (see Decide).
type Password struct {
	Kind CredentialKind
	// Credential is the token, session key or access key; empty for
	// CredentialNone.
	Credential string
	// TOTP is the 6-digit code, when the password carries one.
	TOTP string
}

// ParsePassword splits a password into its credential and TOTP parts. It
// never fails: what it does not recognise is CredentialNone. It decodes
// nothing and does no cryptography, so it is safe on hostile input.
func ParsePassword(s string) Password {
	if isSixDigits(s) {
		return Password{Kind: CredentialNone, TOTP: s}
	}
	if strings.HasPrefix(s, SessionKeyPrefix) {
		if key, code, ok := strings.Cut(s, ":"); ok && isSixDigits(code) {
			return Password{Kind: CredentialSessionKey, Credential: key, TOTP: code}
		}
		return Password{Kind: CredentialSessionKey, Credential: s}
	}
	if strings.HasPrefix(s, AccessKeyPrefix) {
		if key, code, ok := strings.Cut(s, ":"); ok && isSixDigits(code) {
			return Password{Kind: CredentialAccessKey, Credential: key, TOTP: code}
		}
		return Password{Kind: CredentialAccessKey, Credential: s}
	}
	// A JWT, or something that means to be one (a JSON header in base64url
	// starts "eyJ"): the latter is refused by validation rather than
	// silently starting a device-code sign-in. A JWT has no ':', so one
	// before six final digits separates a TOTP code.
	if tok, code, ok := cutLast(s, ':'); ok && isSixDigits(code) && isToken(tok) {
		return Password{Kind: CredentialAccessToken, Credential: tok, TOTP: code}
	}
	if isToken(s) {
		return Password{Kind: CredentialAccessToken, Credential: s}
	}
	return Password{Kind: CredentialNone}
}

func isToken(s string) bool {
	return looksLikeJWT(s) || (strings.HasPrefix(s, "eyJ") && strings.Count(s, ".") >= 2)
}

func cutLast(s string, sep byte) (before, after string, ok bool) {
	if i := strings.LastIndexByte(s, sep); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

func isSixDigits(s string) bool {
	if len(s) != 6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// looksLikeJWT is the pre-parse guard: a bounded size and exactly three
// non-empty base64url parts. It runs before anything decodes the token.
func looksLikeJWT(s string) bool {
	if len(s) > maxTokenBytes || len(s) < 5 {
		return false
	}
	parts := 0
	partLen := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if partLen == 0 {
				return false
			}
			parts++
			partLen = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			partLen++
		default:
			return false
		}
	}
	return parts == 2 && partLen > 0
}

// newSessionKey returns a fresh key: the prefix and 256 random bits.
func newSessionKey() (string, error) {
	b := make([]byte, sessionKeyBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return SessionKeyPrefix + sessionKeyEncoding.EncodeToString(b), nil
}

// sessionKeyShape accepts exactly what newSessionKey produces.
var sessionKeyShape = regexp.MustCompile(`^` + SessionKeyPrefix + `[a-z2-7]{52}$`)

// wellFormedSessionKey reports whether key could have been issued by
// newSessionKey; malformed keys are refused without a store lookup.
func wellFormedSessionKey(key string) bool { return sessionKeyShape.MatchString(key) }

// mistypedCode reports whether s is a well-formed key followed by a colon
// and something other than a 6-digit code (ParsePassword splits off a
// code of 6 digits): a TOTP code mistyped, not a key gone bad.
func mistypedCode(s string, wellFormed func(string) bool) bool {
	key, _, ok := strings.Cut(s, ":")
	return ok && wellFormed(key)
}

// mistypedCodeRefusal says that the code after a key is not 6 digits.
func mistypedCodeRefusal(what, login string) *Refusal {
	return &Refusal{
		Reason:  ReasonBadCredentials,
		Message: fmt.Sprintf("the TOTP code after the %s presented for %s is not 6 digits; connect again with <key>:<the 6-digit code from your authenticator app>", what, login),
		Err:     fmt.Errorf("%s followed by a malformed TOTP code", what),
	}
}

// KeyHash is what a secret is stored under, never the secret itself: for
// a session key its verifier (sessionKeyVerifier), for an access key, an
// address-grace record or a session key stored by an older portcullis
// the SHA-256 of its text (hashKey). A leaked store therefore yields no
// usable key.
type KeyHash [sha256.Size]byte

// String is the hash in hex, for use as a database key.
func (h KeyHash) String() string { return hex.EncodeToString(h[:]) }

// hashKey is the SHA-256 of a key's text: the store key of an access key,
// and of a session key stored before verifiers (see sessionKeyVerifier),
// which the password path still looks up.
func hashKey(key string) KeyHash { return sha256.Sum256([]byte(key)) }

// sessionKeyVerifier is the store key of a session key: SHA-256 of
// SHA-256 of its text, the value a MySQL server keeps to check
// caching_sha2_password's fast-authentication scramble (SHA2Scramble).
// The inner hash is exactly what a scramble proves, so it must never be
// stored: with it, a copy of the store would let anyone answer a
// scramble. From the verifier, nothing can be answered.
func sessionKeyVerifier(key string) KeyHash {
	h := sha256.Sum256([]byte(key))
	return sha256.Sum256(h[:])
}

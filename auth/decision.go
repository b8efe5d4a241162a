package auth

import (
	"fmt"
	"net/netip"
	"time"
)

// Kind tells a person from a program.
type Kind string

// Kinds of identity.
const (
	KindUser             Kind = "user"
	KindServicePrincipal Kind = "service_principal"
)

// Method is how an identity was proven on one connection.
type Method string

// Methods, as they appear in the "method" log field.
const (
	MethodDeviceCode       Method = "device_code"
	MethodSessionKey       Method = "session_key"
	MethodAddressGrace     Method = "address_grace"
	MethodAccessToken      Method = "access_token"
	MethodServicePrincipal Method = "service_principal"
	MethodAccessKey        Method = "access_key"
)

// Identity is who is connecting, as Entra ID knows them.
type Identity struct {
	Kind        Kind
	Provider    string // config provider name
	TenantID    string
	ObjectID    string // oid
	UPN         string // users only
	AppID       string // service principals (and the client of a token)
	DisplayName string
}

// Name is what logs and messages call the identity: the UPN of a user, the
// display name or app id of a service principal.
func (i Identity) Name() string {
	switch {
	case i.UPN != "":
		return i.UPN
	case i.DisplayName != "":
		return i.DisplayName
	}
	return i.AppID
}

// Group is one group the identity is a transitive member of.
type Group struct {
	ID          string
	DisplayName string
}

// PromptMode says how the client can show a device-code prompt.
type PromptMode string

// Prompt modes.
const (
	// PromptNotice: the client shows notices after AuthenticationOk, so the
	// decision calls Request.Prompt and waits on the same connection.
	PromptNotice PromptMode = "notice"
	// PromptError: the client only shows errors, so the decision returns a
	// *SignInPending at once and keeps polling in the background; a
	// reconnect by the same user from the same address picks it up.
	PromptError PromptMode = "error"
)

// Request is everything the protocol layer learned before asking for a
// decision.
type Request struct {
	Protocol    string // "postgres" or "mysql"
	Resource    string // resource name the client selected
	LoginName   string // the user named at login
	Password    string // what the client sent; never logged
	ClientAddr  netip.Addr
	Application string // application_name or program name, may be empty
	// ReceivedAt is when the password arrived; a TOTP code in it is
	// judged by this time, however long the sign-in takes. Zero means
	// when Decide was called.
	ReceivedAt time.Time
	Mode       PromptMode
	// Admin asks for the admin console rather than Resource: the same
	// sign-in, decided against admin.groups, with no backend login.
	Admin bool
	// Prompt shows the device-code instructions (notice mode only). It
	// must not block for long; the decision then waits for the sign-in
	// until ctx ends or the code expires.
	Prompt func(DeviceCodePrompt) error
	// Scramble, when set, stands in for Password: a MySQL client without
	// TLS proved a key with caching_sha2_password's fast authentication.
	// Only a session key of LoginName stored under its verifier can
	// match; nothing else is tried (no device code, no address grace),
	// and a resource with require_totp refuses it, since it carries no
	// code. Never logged.
	Scramble *SHA2Scramble
}

// DeviceCodePrompt is what a person needs to complete a device-code sign-in.
type DeviceCodePrompt struct {
	VerificationURL string
	UserCode        string
	ExpiresAt       time.Time
	// Message is Entra's own sentence ("To sign in, use a web browser to
	// open the page ... and enter the code ...").
	Message string
}

// BackendCredentials is how the proxy logs in to the real database.
type BackendCredentials struct {
	User     string
	Password string // from env or file; never logged
	// AccessToken, for an entra pass-through mapping: an Entra token for the
	// Azure OSS RDBMS audience used as the password.
	AccessToken string
}

// Decision is a yes: who it is, how they proved it, and how to reach the
// backend.
type Decision struct {
	Identity Identity
	Method   Method
	Groups   []Group // all transitive groups
	// Matched are the groups that granted access (allow_groups ∩ Groups
	// and the winning credential mapping), for the audit log.
	Matched  []Group
	Resource string
	Backend  BackendCredentials
	// SessionKey is set when this decision signed someone in afresh: the
	// key they may present as their password until SessionKeyExpires. It
	// is shown to the user once and stored only as a hash.
	SessionKey        string
	SessionKeyExpires time.Time
	// TOTPVerified: the resource requires TOTP and this connection gave a
	// good code.
	TOTPVerified bool
	// AccessKeyID names the access key that proved the identity
	// (MethodAccessKey), for the audit log and for rechecks, which end
	// the session once the key is revoked.
	AccessKeyID string

	// homeAccount is the MSAL account of an interactive sign-in kept in
	// this process, for rechecks in delegated Graph mode.
	homeAccount string
}

// RefusalReason classifies a refusal so the protocol layer can pick the
// right SQLSTATE or MySQL error code.
type RefusalReason string

// Refusal reasons.
const (
	// ReasonBadCredentials: a wrong session key, token or secret (28P01).
	ReasonBadCredentials RefusalReason = "bad_credentials"
	// ReasonIdentityMismatch: signed in as someone other than the login
	// name (28000).
	ReasonIdentityMismatch RefusalReason = "identity_mismatch"
	// ReasonNotAllowed: not in an allowed group or no credential mapping
	// matches (28000).
	ReasonNotAllowed RefusalReason = "not_allowed"
	// ReasonUnknownResource: no such resource (3D000).
	ReasonUnknownResource RefusalReason = "unknown_resource"
	// ReasonDeclined: the user declined or the code expired (28000).
	ReasonDeclined RefusalReason = "declined"
	// ReasonDisabled: the account is disabled in the directory (28000).
	ReasonDisabled RefusalReason = "disabled"
	// ReasonUnavailable: Entra ID, Graph or the store could not be reached;
	// we fail closed (08004).
	ReasonUnavailable RefusalReason = "unavailable"
	// ReasonTOTPLocked: too many wrong TOTP codes; the user is locked out
	// of TOTP resources for a while (28000).
	ReasonTOTPLocked RefusalReason = "totp_locked"
	// ReasonLocked: too many wrong secrets for a service principal; it is
	// locked out for a while, by the same counter as TOTP codes (28000).
	ReasonLocked RefusalReason = "locked"
	// ReasonKeyRevoked: the access key that opened a session was revoked
	// or has expired since (rechecks only; at connection time such a key
	// is ReasonBadCredentials) (28000).
	ReasonKeyRevoked RefusalReason = "key_revoked"
)

// Refusal is a typed "no". Message is a sentence for the person at the
// client and never holds a secret; Err is the underlying cause for logs.
type Refusal struct {
	Reason  RefusalReason
	Message string
	Err     error
}

func (r *Refusal) Error() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: %v", r.Message, r.Err)
	}
	return r.Message
}

func (r *Refusal) Unwrap() error { return r.Err }

// SignInPending is returned in PromptError mode: the person must open the
// URL, enter the code, then reconnect.
type SignInPending struct {
	Prompt DeviceCodePrompt
}

// Error leaves the user code out: it belongs on the person's screen (the
// protocol layer renders Prompt), not in logs that error strings reach.
func (p *SignInPending) Error() string {
	return fmt.Sprintf("sign-in pending until %s: the person must complete the device-code sign-in, then reconnect",
		p.Prompt.ExpiresAt.UTC().Format(time.RFC3339))
}

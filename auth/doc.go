// Package auth decides who is connecting to portcullis and whether they may
// use the resource they asked for. It speaks no wire protocol: the
// PostgreSQL and MySQL front doors collect a login name, a password, the
// resource and the client address into a Request, call
// (*Authorizer).Decide, and render the answer — a *Decision, a *Refusal, a
// *TOTPRequired or a *SignInPending — in their own protocol.
//
// # Proving who it is
//
// Every client is asked for a password, and what it sends selects the
// method (ParsePassword splits it; see ARCHITECTURE §3):
//
//   - An Entra ID access token (a JWT, "xxx.yyy.zzz", optionally followed
//     by ":" and a TOTP code). It is checked
//     without any call to Entra except for signing keys: a size limit and
//     the three-part shape before any decoding; RS256 only (so "alg: none"
//     and HS256 signed with the public key are refused before any key is
//     used); the signature against the keys published at the jwks_uri of
//     the provider's discovery document, fetched again when a token names
//     an unknown kid (at most every 30 seconds, so made-up kids cannot
//     make portcullis hammer Entra; 5 seconds after a fetch that failed,
//     meanwhile refusing such tokens as Entra being unreachable, not as
//     bad) and at least daily; the tenant (tid)
//     in allowed_tenants; the issuer equal to the v1 or v2 issuer of that
//     tenant, as the v1 and v2 discovery documents spell it; the audience
//     among the provider's audiences; exp and nbf with one minute of skew.
//     A token with upn or preferred_username is a person's; one without is
//     an application's (appid/azp).
//
//   - A session key ("pcx_" and 52 base32 characters: 256 random bits).
//     Portcullis hands one out after each interactive sign-in (Decision.
//     SessionKey), valid for sessions.ttl, and keeps only its verifier,
//     SHA-256 of its SHA-256, in the SessionStore, so a copy of the store
//     yields no usable key, nor anything that answers a MySQL scramble
//     (below). Keys stored by an older portcullis, under their SHA-256,
//     are still found when typed, until they expire. A key is accepted
//     only for the login name it was issued to: alice's key presented as
//     bob is refused as a bad password (ReasonBadCredentials, SQLSTATE
//     28P01), exactly like a key that never existed, so the answer does
//     not tell a holder of a stolen key whose it is.
//
//     A MySQL client without TLS may prove a session key with
//     caching_sha2_password's fast-authentication scramble instead of
//     sending it (Request.Scramble, SHA2Scramble). Every live key the
//     store lists for the login's UPN (SessionKeysOf) is checked against
//     it in constant time, and nothing else is tried: no device code, no
//     address grace, no key stored under its bare SHA-256. The rest of
//     the decision is a typed key's, except that a resource with
//     require_totp refuses it, since a scramble carries no code.
//
//   - An access key ("pak_" and 52 base32 characters), made by an admin
//     (`portcullis keys create`) for one identity — a UPN or an
//     application id — and one resource, and kept only as its SHA-256 in
//     the AccessKeyStore. It is accepted only for its resource and for
//     the login name of its identity (anything else is a bad password),
//     while neither revoked nor expired; the identity is then looked up in
//     Graph (IdentityResolver), so a deleted or disabled one is refused,
//     and its groups decide as for any sign-in.
//
//   - A service principal. A login name that is a GUID (an application id)
//     or "spn:<display name>" makes the whole password the client secret,
//     proven by a client-credentials grant against Entra through MSAL's
//     confidential client. A positive answer is remembered for
//     service_principals.cache_ttl (five minutes) under an HMAC of
//     (provider, app id, secret) keyed by a random per-process value;
//     concurrent checks of one secret share a single grant, so a program
//     that opens many connections at once costs one token request, and
//     the secret itself is never held. A wrong secret is always checked
//     with Entra and refused, and Entra's invalid_client answer counts
//     toward the principal's lockout (Lockout: the TOTP failure counter,
//     keyed by the application id); while locked, a secret not already
//     remembered is refused (ReasonLocked) without asking Entra.
//
//   - Anything else: an interactive device-code sign-in through MSAL's
//     public client. The person opens the verification URL, enters the
//     code, and signs in in their browser, with whatever MFA and
//     conditional access the tenant demands.
//
// Device-code prompts reach people in one of two ways (Request.Mode).
// In notice mode, Decide calls Request.Prompt with the URL, code, expiry
// and Entra's own message and waits for the sign-in; cancelling the
// context (the client went away) stops polling Entra at once. In error
// mode, for tools that show only errors, Decide returns a *SignInPending
// at once and keeps polling in the background for as long as the code
// lives; a later Decide by the same login name from the same client
// address finds the flow: still pending, the same *SignInPending again;
// completed, the decision; declined or expired, a refusal, after which the
// flow is forgotten. There is one flow per (provider, login name, client
// address): connections opened together share it, and a finished outcome
// serves the connections waiting for it (or the one reconnect that
// collects it), never a later one. Flows in progress are capped (in all
// and per address) so that made-up logins cannot make portcullis poll
// Entra without bound.
//
// Replicas behind one load balancer share error-mode flows when the
// session store is also a PendingSignInStore (the state store is): the
// replica that starts a flow records its prompt, and later its outcome,
// and a reconnect that reaches another replica is shown the same code
// and collects the outcome, once, wherever it lands. The device code
// itself, and the polling, stay with the replica that started the flow.
// In delegated Graph mode nothing is shared: the person's Graph token
// lives only in that replica.
//
// After an interactive sign-in, the same person from the same client
// address may connect again without a key for sessions.address_grace
// (MethodAddressGrace; zero turns this off). It exists because GUI tools
// open several connections at once and hide the notice that carries the
// key. Address binding is weak where many people share an address (NAT,
// a jump host): anyone there who claims the login name is let in for the
// grace period. Operators who cannot accept that set it to zero.
//
// # Identity rules that never bend
//
// The identity Entra proves must be the one the client named at login:
// for people, the UPN (or preferred_username) equal to the login name
// without regard to case, or reached through sessions.aliases; for
// service principals, the app id (or display name). Otherwise the answer
// is ReasonIdentityMismatch, "signed in as bob@contoso.com, but connected
// as alice@contoso.com": a person who approves a code on someone else's
// behalf does not become them.
//
// The identity's tenant must be an allowed tenant of the provider.
//
// A sign-in is reused only through its session key, or by the same login
// name from the same address within the grace. A reused sign-in is checked
// against the directory (a disabled or deleted account is refused) when
// the group source can tell (AccountChecker).
//
// If Entra ID or Microsoft Graph cannot be reached, the answer is a
// refusal (ReasonUnavailable) saying so — never an allow. The same holds
// for the session store.
//
// # Authorization
//
// A resource names allow_groups and an ordered list of credential
// mappings; Start resolves the group display names in them to object ids
// through Graph (an unknown or ambiguous name stops start-up, naming it).
// Decide reads the identity's transitive groups (GroupSource: Graph's
// /transitiveMemberOf, with the app-only token, or in delegated Graph mode
// the person's own token via /me), requires at least one allowed group,
// and takes the first credential mapping whose groups meet the person's.
// Decision.Matched lists the groups that granted access, for the audit
// log.
//
// An entra mapping logs in to Azure Database as the identity itself: the
// backend user is the UPN (a service principal's display name) and the
// password (BackendCredentials.AccessToken) a token for OSSRDBMSAudience,
// got without a prompt: the token the client presented when it is already
// for that audience; for a person who signed in with a device code (or
// reuses that sign-in), a silent MSAL request with the refresh token kept
// in memory for providers that have such mappings; for a service
// principal, a client-credentials grant with its secret, remembered like
// the proof of the secret. An access key cannot log in this way.
//
// # Continuous authorization
//
// Recheck decides again, for an open session's Decision, whether its
// identity may keep its resource: the resource still configured, the
// access key (if any) neither revoked nor expired, the account enabled,
// and the transitive groups — read afresh, past the group cache
// (GroupCacheForgetter) — still allowed and mapped to the same backend
// login. The proxy runs it every authz.recheck and ends the sessions it
// refuses; a ReasonUnavailable answer is the proxy's to tolerate for
// authz.recheck_failures rounds.
//
// # A second factor: TOTP
//
// A resource with require_totp asks at every connection for a TOTP code
// (see package mfa), carried in the same password: "<code>",
// "<session key>:<code>" or "<access token>:<code>". The code is looked
// at only after the identity is proven and allowed to use the resource,
// so a caller who has not proven who they are learns nothing from it (not
// whether it is right, nor whether the person has enrolled) and cannot
// count wrong guesses against them. It is judged by Request.ReceivedAt,
// the time the password arrived, not the time the sign-in finished: a
// code typed as the password survives a device-code sign-in that took
// minutes.
//
// The outcomes, after the identity and the groups check out:
//
//   - a good code: the *Decision, with TOTPVerified set. Its step is
//     never accepted again for that person, on any replica.
//   - no code: a *TOTPRequired whose Message says what to reconnect with.
//   - no secret yet: a *TOTPRequired with an Enrollment (the otpauth URI,
//     the key for typing in, and the QR code in terminal lines). The
//     secret stays pending until its first good code. Since only a
//     freshly proven identity (with whatever MFA Entra demanded) is shown
//     it, the first person to sign in as a user binds the authenticator:
//     trust on first use. Operators who want otherwise hand the code over
//     themselves (`portcullis totp enroll USER --png FILE`);
//     `portcullis totp reset USER` starts over.
//   - a wrong code: ReasonBadCredentials, with a *TOTPFailure as the
//     cause; it counts toward the lockout (mfa.max_failures within
//     mfa.failure_window).
//   - a code already used: ReasonBadCredentials; it does not count.
//   - locked out: ReasonTOTPLocked, saying until when; no code is looked
//     at meanwhile. The wrong code that locks carries LockedNow, for the
//     audit event.
//   - the store unreachable: ReasonUnavailable, never an allow.
//
// A service principal cannot give a code: it is refused before Entra is
// asked (or, presenting an application's token, after the token checks).
//
// A person in device-code notice mode cannot give a code on the
// connection that signs them in: the password was sent before the
// sign-in prompt. That connection signs them in and ends with the
// *TOTPRequired (enrolment or not) carrying the new session key; they
// reconnect with "<session key>:<code>", or with just the code from the
// same address within sessions.address_grace. Someone who knows the
// resource wants a code types it as the password at once: it is checked,
// at its arrival time, when the sign-in completes.
//
// # The admin console and reloads
//
// A Request with Admin set asks for the admin console: the same methods
// and identity rules, decided against admin.groups (resolved at Start
// like allow_groups, on admin.provider or the only provider), with no
// backend login in the Decision. Reload puts a new configuration's
// resources and admin groups in force for decisions from then on,
// after resolving their groups; providers cannot change without a
// restart. Ready tells a readiness probe whether Start has completed.
//
// # Secrets
//
// No password, token, session key, client secret, device code, TOTP code
// or TOTP secret is written to a log or put in an error string (the
// enrolment in a *TOTPRequired is in fields of its own, for the person's
// screen only): refusals carry a sentence
// for the person (Refusal.Message) and a cause for the operator
// (Refusal.Err) reduced to status codes and OAuth error codes. The logger
// in Deps receives background events only (a sign-in completed with no
// connection waiting, a store failure); per-connection audit events are
// the caller's.
package auth

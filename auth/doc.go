// Package auth decides who is connecting to portcullis and whether they may
// use the resource they asked for. It speaks no wire protocol: the
// PostgreSQL and MySQL front doors collect a login name, a password, the
// resource and the client address into a Request, call
// (*Authorizer).Decide, and render the answer — a *Decision, a *Refusal, or
// a *SignInPending — in their own protocol.
//
// # Proving who it is
//
// Every client is asked for a password, and what it sends selects the
// method (ParsePassword splits it; see ARCHITECTURE §3):
//
//   - An Entra ID access token (a JWT, "xxx.yyy.zzz"). It is checked
//     without any call to Entra except for signing keys: a size limit and
//     the three-part shape before any decoding; RS256 only (so "alg: none"
//     and HS256 signed with the public key are refused before any key is
//     used); the signature against the keys published at the jwks_uri of
//     the provider's discovery document, fetched again when a token names
//     an unknown kid (at most every 30 seconds, so made-up kids cannot
//     make portcullis hammer Entra) and at least daily; the tenant (tid)
//     in allowed_tenants; the issuer equal to the v1 or v2 issuer of that
//     tenant, as the v1 and v2 discovery documents spell it; the audience
//     among the provider's audiences; exp and nbf with one minute of skew.
//     A token with upn or preferred_username is a person's; one without is
//     an application's (appid/azp).
//
//   - A session key ("pcx_" and 52 base32 characters: 256 random bits).
//     Portcullis hands one out after each interactive sign-in (Decision.
//     SessionKey), valid for sessions.ttl, and keeps only its SHA-256 in
//     the SessionStore, so a copy of the store yields no usable key. A key
//     is accepted only for the login name it was issued to: alice's key
//     presented as bob is refused as a bad password (ReasonBadCredentials,
//     SQLSTATE 28P01), exactly like a key that never existed, so the
//     answer does not tell a holder of a stolen key whose it is.
//
//   - A service principal. A login name that is a GUID (an application id)
//     or "spn:<display name>" makes the whole password the client secret,
//     proven by a client-credentials grant against Entra through MSAL's
//     confidential client. A positive answer is remembered for five
//     minutes under an HMAC of (provider, app id, secret) keyed by a random
//     per-process value, so a program that opens many connections costs
//     one token request, the secret itself is never held, and a wrong
//     secret is always checked with Entra (and refused).
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
// log. A resource that requires TOTP is refused for everyone (before any
// sign-in is started) until TOTP verification is part of the build; an
// Entra pass-through mapping likewise.
//
// # Secrets
//
// No password, token, session key, client secret or device code is
// written to a log or put in an error string: refusals carry a sentence
// for the person (Refusal.Message) and a cause for the operator
// (Refusal.Err) reduced to status codes and OAuth error codes. The logger
// in Deps receives background events only (a sign-in completed with no
// connection waiting, a store failure); per-connection audit events are
// the caller's.
package auth

// Package entrasim simulates Microsoft Entra ID (the login half) and
// Microsoft Graph over HTTPS, closely enough that MSAL Go, the real client
// library, signs in against it unchanged. Tests and `portcullis dev` use
// it; no production path does.
//
// The login half serves, for the one simulated tenant (named by its id,
// its domain, or "organizations"/"common"):
//
//	GET  /{tenant}/v2.0/.well-known/openid-configuration   discovery (v2)
//	GET  /{tenant}/.well-known/openid-configuration        discovery (v1)
//	GET  /{tenant}/discovery/v2.0/keys, /discovery/keys    JWKS
//	POST /{tenant}/oauth2/v2.0/devicecode                  device authorization
//	POST /{tenant}/oauth2/v2.0/token                       device_code, client_credentials, refresh_token
//	POST /{tenant}/oauth2/token                            the same, v1 (resource=)
//	GET, POST /devicelogin                                 the page where a person enters the code
//	POST /_sim/devicecode/approve, /_sim/devicecode/decline, GET /_sim/devicecode/pending
//
// Errors have Entra's JSON shape (error, "AADSTSnnnn: ..." description,
// error_codes, timestamp, trace_id, correlation_id) and status codes.
//
// Audiences follow Entra's rules: scopes of one of the tenant's
// applications ("api://portcullis/read", "{app id}/.default") give a token
// for that application (v2, aud = app id, unless Options.AccessTokenVersion
// is 1); Graph scopes, bare scopes such as "User.Read", or OIDC scopes
// alone give a v1 Graph token. The simulator's own URL plays
// https://graph.microsoft.com.
//
// What a real person does in a browser, tests do through Approve, Decline,
// PendingDeviceCodes and WaitForDeviceCode. Knobs such as SetFault,
// ForceSlowDown, RotateKeys, RevokeRefreshTokens, Options.Now and
// Directory let tests drive the failure cases.
package entrasim

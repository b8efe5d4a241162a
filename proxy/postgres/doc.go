// Package postgres is portcullis's PostgreSQL front door: the client side
// of the wire protocol (version 3.0, on github.com/jackc/pgproto3/v2), the
// sign-in prompts rendered inside the client, the protocol's own error
// messages, and the login to the real server (spoken here on
// github.com/jackc/pgx/v5's pgproto3, with pgconn's error types).
//
// One connection, as Protocol.Serve reads:
//
//  1. Startup. GSSEncRequest is answered 'N'. SSLRequest is answered 'S'
//     and TLS starts with the configured certificate; unencrypted bytes
//     sent after an SSLRequest are refused. A listener with tls: required
//     (the default) tells a plaintext client to use sslmode=require.
//     CancelRequest is forwarded by key and the connection closed. The
//     StartupMessage is limited to proxy.max_startup_bytes; a 3.x client
//     newer than 3.0 or with _pq_ options gets NegotiateProtocolVersion,
//     any other major version a FATAL error.
//  2. Resource. The database parameter names the resource; none (or
//     what clients put there when the person named none: the user name,
//     or postgres for psql -l, DBeaver and pgAdmin; when no resource has
//     that name) means the listener's default_resource; an unknown one is
//     FATAL 3D000 with a hint.
//  3. Credentials. AuthenticationCleartextPassword, then the password
//     (ARCHITECTURE §3: a token, a session key, a TOTP code or anything).
//  4. Decision. In notice mode (libpq and most clients) a device-code
//     prompt is shown as NoticeResponse lines after AuthenticationOk, and
//     the connection waits, bounded by the code's lifetime; a client that
//     hangs up ends the wait. In error mode (JDBC tools, which hide
//     notices) the prompt is a FATAL 28000 whose message carries the URL
//     and code, and the reconnect completes. resource.prompt picks the
//     mode, or application_name does when it is auto. The time the
//     password arrived goes with it: a TOTP code in it is judged by
//     that time. A resource with require_totp needs a code in the
//     password (auth's *TOTPRequired when there is none). The
//     connection that signed the person in, or gave no code, ends
//     there: in notice mode AuthenticationOk, a notice with the new
//     session key, for a
//     person without an authenticator one notice whose first line is
//     text and the rest a QR code in Unicode half blocks (psql prefixes
//     only the first line, so the code stays aligned) and one with the
//     otpauth URI and the key to type in, then FATAL 28000 saying to
//     reconnect with "<session key>:<code>"; in error mode one FATAL
//     28000 carrying all of it. None of it is logged.
//  5. Backend. portcullis logs in with the mapped credentials (SCRAM,
//     bound to the server's certificate over TLS where the server offers
//     it; MD5; cleartext; TLS disable, require or verify-full) before the
//     client is told anything more, and reads nothing past the server's
//     first ReadyForQuery. A SCRAM login checks the server's proof, and
//     the keys derived from the password are kept for the next login
//     (scram.go).
//  6. Ready. AuthenticationOk (unless a prompt sent it), a notice with a
//     new session key, the backend's own login notices, its
//     ParameterStatus, a BackendKeyData with portcullis's cancel key (not
//     the backend's) and ReadyForQuery, in one write.
//  7. Splice, with the bytes the client codec had buffered going first.
//
// The database "portcullis" is the admin console (console.go): the same
// sign-in, decided against admin.groups, then portcullis answers simple
// queries itself with text columns (proxy/console runs the commands); the
// extended protocol gets an ERROR until Sync.
//
// Every refusal is a FATAL ErrorResponse a person can act on: 28P01 for a
// bad key or token or a wrong or reused TOTP code, 28000 for a sign-in
// that is pending, declined, of someone else or not allowed, for a TOTP
// code still to give and for a TOTP lockout, 3D000 for an unknown
// resource, 08004 when a
// dependency such as Microsoft Graph is down, 08006 when the backend
// cannot be reached or its connection breaks mid-session with an error
// (naming the resource, never its address), and 57P01 when portcullis is
// shutting down or an operator ends the session. A backend that closes
// its connection without a word (its process killed) is passed on as a
// close, as a client connected to it directly would see it.
package postgres

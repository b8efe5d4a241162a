// Package mysql is portcullis's MySQL and MariaDB front door: the server
// side of the classic protocol's connection phase, written here so that
// every byte up to the hand-off is portcullis's own; the sign-in prompts
// rendered as MySQL errors or MariaDB dialog questions; protocol-native
// refusals; and the login to the real server with
// github.com/go-mysql-org/go-mysql's client, whose connection is then
// spliced to the client's. go-mysql's mysql package supplies the
// constants and codecs; its server package is not used, because a proxy
// needs the handshake's exact bytes, sequence ids and capabilities in
// hand.
//
// One connection, as Protocol.Serve reads:
//
//  1. Greeting. A HandshakeV10 with a connection id of portcullis's own
//     (see KILL below), the version of the listener's default resource's
//     server once one has been seen (clients adapt to it; the resource is
//     only known after the greeting), caching_sha2_password as the
//     plugin, and only the capabilities listed at offeredCaps.
//  2. TLS and the HandshakeResponse41. A client that sends an SSLRequest
//     gets TLS with the configured certificate (its ClientHello may come
//     right behind the request, as the server does not answer it). Every
//     packet before the splice is checked: at most 64 KiB, sequence ids
//     in order, every field within the packet; anything else is an ERR
//     (1153, 1156, 1043) and a close. portcullis takes passwords in the
//     clear, and only over TLS. Without TLS, on a listener whose tls is
//     optional or disabled, a client that answered with
//     caching_sha2_password's fast-authentication scramble (32 bytes,
//     against the greeting's 20-byte nonce) may prove a session key
//     that way, and nothing else (step 4); a client on another plugin is
//     switched to caching_sha2_password first (step 4); any other client
//     without TLS (an empty password, or a listener that requires TLS) is
//     refused with 1045 telling it to connect with --ssl.
//  3. Resource. The database in the handshake names the resource; none
//     means the listener's default_resource, and the backend database is
//     the resource's. Where the listener has a default, any other name is
//     a database on the default resource's server (the mariadb command
//     line reconnects asking for the database it last switched to with
//     USE), which that server's grants allow or refuse (1044, 1049, with
//     a note that no resource has the name). Without a default, an
//     unknown name is 1049 (42000), as is a name of the other protocol's
//     resource.
//  4. Password. A client on caching_sha2_password is told to perform full
//     authentication and sends the password in the clear over TLS, which
//     stock clients do without any cleartext option. A client that answered
//     with another plugin (often with nothing: MariaDB's library starts on
//     mysql_native_password when its caching_sha2_password plugin is not
//     loaded yet) is switched to caching_sha2_password over the same nonce
//     (then, over TLS, asked for full authentication): the greeting's
//     plugin is the one such a library has just loaded, where a switch to
//     another would make many threads load one at once, and lose the race.
//     AskCleartext greets with mysql_native_password and, over TLS,
//     switches such clients to mysql_clear_password instead. Without TLS
//     there is no password: the scramble goes to auth (Request.Scramble), which
//     checks it, in constant time, against the login's live session keys,
//     stored under SHA-256(SHA-256(key)), the very verifier a MySQL server
//     keeps; keys stored by an older portcullis under SHA-256(key) are never
//     tried. The rest of the decision is a typed key's: expiry, the identity
//     matching the login, groups, the resource's policy, backend
//     credentials. A yes is answered with fast_auth_success (AuthMoreData
//     3), then step 6. A scramble that matches no key is 1045 (28000),
//     saying to connect with --ssl and that without TLS only a valid session
//     key is accepted. No sign-in is ever started without TLS (step 5's
//     prompts, retry and dialog alike, are TLS only), and a resource with
//     require_totp is refused with 1045 saying to use TLS: a scramble
//     carries no code. The key never crosses the network; the session's
//     traffic does, in the clear, and someone on the path could take the
//     connection over once it is logged in: docs/security.md.
//  5. Decision. Retry mode (most clients): a device-code prompt is an ERR
//     1045 (28000) whose message holds the verification URL and code;
//     auth keeps polling and a reconnect by the same user from the same
//     address completes. Dialog mode (MariaDB's client library, which has
//     the dialog plugin, and in prompt: auto only its mysql/mariadb
//     command line): portcullis switches the client to the dialog plugin,
//     whose first question shows the URL and code and waits for Enter;
//     the sign-in finishes in the same connection, and a last question
//     shows the new session key ("Press Enter to continue"). A client that
//     hangs up ends the wait. A resource with require_totp needs a
//     code (auth's *TOTPRequired when the password had none). In dialog
//     mode a question asks for it in the same connection, showing
//     first, to a person with no authenticator yet, the enrolment (a QR
//     code in Unicode half blocks under a line of text, the otpauth URI
//     and the key to type in) and the session key of a fresh sign-in;
//     the answer is decided on as "<session key>:<code>" would be,
//     timed by its arrival. In retry mode the connection ends with ERR
//     1045 (28000) carrying the URI and key first, then what to
//     reconnect with, then the session key, in at most 511 bytes (what
//     libmysqlclient keeps of a message). None of it is logged.
//  6. Backend. go-mysql's client logs in (mysql_native_password,
//     caching_sha2_password over TLS or RSA, MariaDB's client_ed25519;
//     TLS disable, require or verify-full with a CA file) asking for
//     exactly the wire-relevant capabilities the client agreed to
//     (relayedCaps), never compression, LOCAL INFILE or query attributes;
//     a server that lacks one the client agreed to is refused rather than
//     spliced out of step. CLIENT_INTERACTIVE, which go-mysql cannot send,
//     becomes SET SESSION wait_timeout = @@interactive_timeout. The
//     client's connection attributes are passed on, with
//     portcullis_session added. go-mysql reads through a buffer of its
//     own; a boundedConn under it stops every read at the end of the
//     MySQL packet (before TLS) or TLS record (after) in flight, so no
//     byte beyond the login's last packet is read and none is lost at the
//     hand-off.
//  7. OK. The client gets an OK with its own sequence id and the backend
//     session's status flags (go-mysql does not keep the backend's OK, so
//     its warnings and session-tracking data of the login are not
//     relayed). In retry mode, after a fresh sign-in, its info string
//     holds the session key; the mariadb command line does not show it,
//     and address grace lets the person's next connections in anyway.
//  8. Splice. The client's read-ahead goes first; then bytes both ways.
//
// # What the splice looks at
//
// Client to backend, the splice watches packet headers only, and the
// first byte of each command (sequence id 0). COM_CHANGE_USER is answered
// with ERR 1235 and never reaches the backend: the session stays who it
// is. A short COM_QUERY "KILL [QUERY|CONNECTION] <id>" naming a
// connection id portcullis gave out (the mysql command line's Ctrl-C sends
// exactly that, with the id from the greeting) is carried out by
// portcullis against that session's backend thread if it belongs to the
// same person (else ERR 1095), and the backend is sent DO 0 instead, so
// the answer carries its real status. KILL CONNECTION of the session's
// own id ends the session, answered with ERR 1927 (70100) as a server
// answers a KILL of its own thread. KILL with a backend thread id (from
// CONNECTION_ID() or the process list) passes through unchanged. The ids
// portcullis hands out are at or above 2^30, where no real server's
// thread ids are.
//
// Backend to client, packet headers are followed so that portcullis can
// end a session between two packets: on shutdown the client gets ERR 1053
// (08S01), when an operator ends it ERR 1927 (70100), numbered to follow
// the exchange in flight; the backend gets COM_QUIT, and its running
// query is killed.
//
// Refusals: 1045 (28000) for a bad key or token (without TLS: a
// scramble that matches no session key), a pending, declined or
// mismatched sign-in, a disabled account, or a TOTP code missing, wrong,
// reused or locked out; 1044 (42000) for someone not
// allowed on the resource; 1049 (42000) for an unknown resource; 1105
// when Entra ID or Graph cannot be reached (portcullis fails closed); 1429
// when the backend cannot be reached or refuses portcullis's login, naming
// the resource and never its address.
package mysql

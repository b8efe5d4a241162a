// Package store is portcullis's durable state behind one small interface
// (Store), in an SQLite file (the embedded default, through a pure-Go
// driver, so the binary needs no cgo) or in a PostgreSQL database that
// several replicas share. Nothing else opens these tables.
//
// # What it keeps
//
//   - sign_ins: session keys and address-grace records (auth.SessionStore),
//     each under a hash of its key; the key itself is never stored. A
//     session key is under its verifier, SHA-256 of its SHA-256, with the
//     owner's lower-case UPN in scramble_user, by which SessionKeysOf
//     lists a person's live keys for MySQL's caching_sha2_password
//     scramble. Address-grace records, and session keys stored before
//     schema version 4 (under the SHA-256 of the key, the very value a
//     scramble proves), have no scramble_user and are never listed.
//   - totp_secrets: each user's TOTP secret, sealed with AES-256-GCM under
//     a key from store.key_env or store.key_file, with the id of that key
//     (KeyID) beside it; pending or active; the last accepted step.
//   - totp_failures: each user's count of wrong codes and any lockout.
//   - pending_sign_ins: error-mode device-code sign-ins in progress
//     (auth.PendingSignInStore), so that a reconnect reaching another
//     replica is shown the same code and collects the outcome; they hold
//     the code shown to the person, never the device code itself.
//   - access_keys: the access keys admins make for programs
//     (auth.AccessKeyStore), under the SHA-256 of the key with a public
//     id, the identity and resource they are bound to, their expiry, last
//     use and revocation; the key itself is never stored.
//   - schema_migrations: the schema versions applied.
//
// A sealed secret is bound to its owner (provider and user name are the
// GCM additional data), so a row copied onto another user's does not
// open. Rotation: configure the new key as store.key and the old one as
// store.previous_key, restart (secrets sealed under either open), run
// `portcullis store rotate-key`, then drop the previous key.
//
// # Atomic writes
//
// The writes that guard security are single statements that the database
// makes atomic: accepting a TOTP step is an UPDATE ... WHERE last_step <
// step (a compare-and-set: of any number of concurrent callers with the
// same step, one wins), and counting a wrong code is one INSERT ... ON
// CONFLICT DO UPDATE ... RETURNING. PostgreSQL serialises them on the row
// lock; SQLite on its write lock (with a busy timeout, so concurrent
// writers wait rather than fail).
//
// # Migrations
//
// Open applies the schema migrations the database lacks, each once, in
// one transaction: on PostgreSQL after taking an advisory lock, so
// replicas starting together queue and the later ones find the work done;
// on SQLite under BEGIN IMMEDIATE, which takes the file's write lock
// first. A database with a schema newer than the running portcullis is
// refused.
//
// # Failing closed
//
// Every method returns an error when the database cannot be reached or
// answers unexpectedly; auth turns any such error into a refusal
// (ReasonUnavailable), never an allow.
package store

// Package config holds portcullis's one configuration type and loads it
// from a YAML file.
//
// # Precedence
//
// Command-line flags beat environment variables, which beat the file:
//
//	--set key.path=value   >   PORTCULLIS_KEY_PATH=value   >   the YAML file
//
// A key path names a key from the top, with list items by number:
// sessions.ttl, providers.0.client_id (or providers[0].client_id),
// resources.1.tls.mode, sessions.aliases.alice. The variable for a path is
// PORTCULLIS_ and the path upper-cased with "_" between segments:
// PORTCULLIS_SESSIONS_TTL, PORTCULLIS_PROVIDERS_0_CLIENT_ID. Key names
// contain "_" too; a name is matched against the known keys to find where
// one key ends. Only single values can be overlaid (a list is set item by
// item; an index one past the end adds an item). A PORTCULLIS_ variable
// that matches no key is an error, so typos do not pass silently; the
// exceptions are PORTCULLIS_CONFIG (the file to load, read by the command)
// and any variable a *_env key names. Load reads only the environment it
// is given, never the process's own.
//
// # Secrets
//
// Secrets are never written in the file. A key ending in _env names an
// environment variable that holds the value; one ending in _file names a
// file that holds it (one trailing newline is dropped). Setting both, or
// naming a variable or file that is missing or empty, is an error that
// names the key and line but never the value. Resolved values land in
// Secret fields, which print as [redacted].
//
// Relative paths written in the file are relative to the file's
// directory; paths given by env or flag are relative to the working
// directory; the default store.path stays relative to the working
// directory.
//
// # Keys and defaults
//
//	providers[]                        at least one
//	  name                             required, unique
//	  tenant_id                        required: tenant GUID or domain
//	  client_id                        required: app registration GUID
//	  authority_host                   https://login.microsoftonline.com
//	  graph_endpoint                   https://graph.microsoft.com
//	  graph_auth                       application with a secret or certificate, else delegated
//	  client_secret_env / _file        none
//	  client_certificate_file          none; PEM (certificate + key) or PFX, read and checked at load
//	  client_certificate_password_env  none; unlocks a PFX or an encrypted PKCS#8 key
//	  allowed_tenants                  [tenant_id] when it is a GUID; required otherwise
//	  audiences                        [client_id, api://client_id]
//	  ca_file                          system roots
//	  group_cache_ttl                  5m
//	resources[]                        at least one
//	  name                             required, unique; "portcullis" is reserved
//	  protocol                         required: postgres | mysql
//	  address                          required: host:port
//	  database                         name
//	  provider                         the only provider; required when there are several
//	  allow_groups                     required, non-empty (empty never means everyone)
//	  require_totp                     false
//	  prompt                           auto | notice | error; auto
//	  tls.mode                         disable | require | verify-full; verify-full,
//	                                   but disable for a loopback address without ca_file/server_name
//	  tls.ca_file                      system roots
//	  tls.server_name                  the address's host
//	  credentials[]                    at least one; first match wins
//	    groups                         required, non-empty
//	    user                           required unless entra
//	    password_env / password_file   one required unless entra
//	    entra                          false
//	  connect_timeout                  10s
//	listeners[]                        one per protocol the resources use
//	  name                             protocol; unique
//	  protocol                         required: postgres | mysql
//	  address                          127.0.0.1:15432 (postgres), 127.0.0.1:13306 (mysql)
//	  tls                              required | optional | disabled; required
//	  default_resource                 none; must exist and speak the listener's protocol
//	tls.cert_file, tls.key_file        none; both or neither
//	store.driver                       sqlite | postgres | memory; sqlite (memory refused when a resource requires TOTP)
//	store.path                         portcullis.db
//	store.dsn_env / dsn_file           required for postgres
//	store.key_env / key_file           32 bytes in base64; required when a resource requires TOTP
//	store.previous_key_env / _file     none; the key before a rotation, until `portcullis store rotate-key` has run
//	sessions.ttl                       12h
//	sessions.address_grace             10m; 0 turns it off
//	sessions.aliases                   none; login name → UPN
//	mfa.max_failures                   5; wrong TOTP codes within failure_window that lock a user
//	mfa.failure_window                 15m; also how long the lockout lasts
//	admin.groups                       none
//	admin.provider                     the only provider; required with admin.groups when there are several
//	admin.address                      none (no admin HTTP)
//	proxy.handshake_timeout            30s
//	proxy.drain_timeout                30s
//	proxy.max_startup_bytes            10000
//	proxy.relay_threads                0: half the CPUs, at least 1; -1 turns the event loop off
//	proxy.busy_poll                    0 (off); up to 1ms
//	log.format                         json | console; json
//	log.level                          debug | info | warn | error; info
//
// A duration is written with a unit (30s, 10m, 12h); an unset or zero
// duration takes its default, except sessions.address_grace, where an
// explicit 0 means off. Durations must not be negative.
//
// # Problems
//
// Load reports every problem at once in a *ValidationError, each as
// "file:line: key.path: message"; a problem that came from an overlay is
// located as "env NAME" or "--set". Check and Report give
// `portcullis config check` what it prints. docs/configuration.md is the
// operator's version of this page.
package config

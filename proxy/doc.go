// Package proxy is the part of portcullis that owns connections: it
// accepts them on the configured listeners, hands each to its wire
// protocol, asks auth for a decision, splices the client to the backend,
// keeps the registry of sessions, routes cancel requests, and drains on
// shutdown. It knows nothing of Entra ID (it asks an Authorizer) and
// nothing of any wire format (it asks a Protocol).
//
// # One connection
//
// The Server accepts a connection, gives it an id and a *Conn, logs
// conn.accepted and calls Protocol.Serve, which reads top to bottom:
// TLS and startup, credentials, Conn.Decide, backend login, the answer to
// the client, Conn.Splice. Conn is the protocol's only way to the rest of
// portcullis, so every connection is audited the same way whatever its
// protocol: auth.device_code.issued, auth.succeeded, auth.failed,
// authz.denied, mfa.totp.enrollment_required, mfa.totp.code_required,
// mfa.totp.failed, mfa.totp.locked, session.started and session.ended
// come from here, with session_id, user, oid, resource, client_addr,
// method and reason. No password, token, session key, device code, TOTP
// code or TOTP secret is ever logged.
//
// # Deadlines
//
// Every step before the splice is bounded: the protocol calls Conn.Step
// before each one, which gives reads and writes Proxy.HandshakeTimeout.
// Waiting for a device-code sign-in is the exception (Conn.Await): it is
// bounded by the code's lifetime, and the protocol watches the socket so a
// client that hangs up ends the wait. After the splice starts nothing is
// bounded.
//
// # Splice
//
// Conn.Splice copies both directions (the client's on the connection's
// own goroutine, the backend's on one more), counting bytes, and
// half-closes: when the client stops sending, the backend's write side is
// shut and the backend's answer still flows back, and the other way round.
// It ends when both directions have ended, or at once when either fails.
// Bytes a protocol codec read ahead during the handshake travel in
// Relay.ClientPending and Relay.BackendPending and go first, so none is
// lost at the hand-off. A protocol that must act on some of the client's
// messages itself (MySQL's COM_CHANGE_USER and KILL) gives a
// Relay.FromClient filter, which sees each chunk before the backend does
// and may answer the client between two of the backend's messages.
//
// Bare sockets are read and written with raw non-blocking system calls,
// waiting through the runtime's poller. A protocol does its handshakes
// (the client's, and its login to the backend) over PollSocket and builds
// TLS connections on it, so that logins and TLS sessions cost the same
// way; the splice reads a poll socket's descriptor as it does a bare one.
//
// A session whose two legs are bare sockets is relayed by an event loop
// (eventloop_linux.go) while its bytes simply flow: one goroutine per
// loop, on a thread of its own, serves every ready socket of its sessions
// per wake-up, running the session's filter if it has one. Stream ends
// are passed on there; a reset, an error, the session's end, or a filter
// that must answer the client or wait (FilterOutput.HandOff) hands the
// sockets back, with the bytes the loop held, to the goroutines above.
// Proxy.RelayThreads sets the number of loops; Proxy.BusyPoll has them
// look for the next message for a while before they wait for it, while
// the machine has a CPU to spare.
//
// With Proxy.KernelRelay, a PostgreSQL session whose two legs are plain
// TCP is relayed inside the kernel instead (kernelrelay_linux.go): its
// sockets go into a SOCKMAP whose BPF program redirects each chunk to
// the other socket and follows the messages, so that portcullis can take
// the bytes back between two messages when the session must end, and
// hand the session to the goroutines to say goodbye.
//
// # Ending sessions: drain and kill
//
// Shutdown stops accepting, lets connections run for Proxy.DrainTimeout,
// then ends the rest; Server.End ends one. A connection still in its
// handshake sees its context end with ErrShuttingDown or ErrTerminated as
// the cause and answers in its protocol's words. A spliced session is
// stopped between two messages: the protocol's Framer for each direction
// says where a message ends, the splice finishes the message in flight to
// the client, writes Relay.Goodbye (for PostgreSQL, FATAL 57P01), asks the
// backend to cancel whatever it is running, and says Relay.Terminate to
// it. A protocol without framers is simply closed. A backend connection
// that breaks mid-session (a reset, a failed read or write) ends the
// session the same way, with a *BackendLostError (ErrBackendLost) as the
// Goodbye's cause, if the stream to the client is between two messages:
// the client hears which resource was lost, not just a closed socket.
//
// # Continuous authorization
//
// RecheckSessions asks a Rechecker (the Authorizer) every authz.recheck
// whether the identity of each open session may keep its resource, once
// per identity, resource and credential. A session it refuses is ended the
// same way, with a *RevokedError (ErrRevoked) as the cause: the client
// hears "access revoked: <why>" (PostgreSQL FATAL 28000, MySQL ERR 1045),
// session.revoked is logged and Metrics.SessionRevoked counts the reason.
// A recheck that gets no answer (the directory unreachable) is tolerated
// for authz.recheck_failures rounds in a row before the session ends.
//
// # Operating it
//
// Deps.Metrics is told about every accepted connection, every decision
// (by method and result), every refusal or failure (by kind) and every
// connection's end, with its bytes: nothing is counted per relayed chunk.
// Sessions and RecentIdentities feed the admin console (proxy/console),
// End is its KILL. Reload swaps the resources new connections are routed
// to, atomically; open sessions keep what they were given. Draining says
// Shutdown has begun, for a readiness probe.
//
// # Cancel requests
//
// A client never learns its backend's cancel key. The protocol registers
// how to cancel the backend with Conn.IssueCancelKey and gives the client
// the key it gets back; a cancel request carrying that key comes in on a
// new connection and Conn.ForwardCancel runs the registered function. A
// key nobody issued is dropped without a word, as PostgreSQL does. The
// key's secret is always portcullis's own; its process id is the
// backend's where no other open session holds that one, so that a client
// comparing it with what the server reports (pg_backend_pid(), the sender
// of a notification) recognises its own connection.
package proxy

package postgres

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	pgproto3v5 "github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// backend is a logged-in connection to a resource's server, taken over
// from pgconn.
type backend struct {
	conn     net.Conn
	params   map[string]string
	txStatus byte
	// notices the server sent during login, relayed to the client.
	notices []*pgconn.Notice
	// auth is how the server had portcullis log in: "trust", "password",
	// "md5", or the SCRAM mechanism.
	auth string
	// pid and secret are the server's cancel key for this connection.
	pid    uint32
	secret []byte
	// cancel asks the server to cancel what this connection runs.
	cancel proxy.CancelFunc
}

// startupOnly are startup parameters that belong to the client's
// conversation with portcullis, not to the backend's startup.
var startupOnly = map[string]bool{"user": true, "database": true, "replication": true}

// connectBackend logs in to res's server as creds and takes the
// connection over. Client startup parameters (application_name,
// client_encoding, options, ...) are passed on.
//
// portcullis speaks the login itself, not through a driver: it needs the
// connection bare afterwards, and a SCRAM login's derived keys can then be
// kept between logins (scram.go). Nothing here is read from PG*
// environment variables, so the proxy's environment cannot redirect a
// backend login.
func connectBackend(ctx context.Context, res config.Resource, creds auth.BackendCredentials, clientParams map[string]string) (*backend, error) {
	fail := func(err error) error { return &backendError{resource: res.Name, user: creds.User, err: err} }

	tlsConfig, err := proxy.BackendTLS(res)
	if err != nil {
		return nil, fail(err)
	}
	if res.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, res.ConnectTimeout)
		defer cancel()
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", res.Address)
	if err != nil {
		return nil, fail(err)
	}
	// The login's reads and writes go through proxy.PollSocket, as the
	// splice's do, rather than the runtime's blocking system-call path.
	var conn net.Conn = proxy.PollSocket(raw)
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	b, err := login(ctx, conn, tlsConfig, res, creds, clientParams)
	if !stop() {
		// ctx ended the login, or ended it just as it succeeded: the
		// deadline it set may land after any reset, so the connection
		// goes either way.
		if err == nil {
			err = ctx.Err()
		} else {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
	}
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}
	if err != nil {
		raw.Close()
		return nil, fail(err)
	}
	// The cancel function lives as long as the session: it holds the
	// key and the address, not the login's parameters.
	address, pid, secret := res.Address, b.pid, b.secret
	b.cancel = func(ctx context.Context) error {
		return sendCancel(ctx, address, tlsConfig, pid, secret)
	}
	return b, nil
}

// login runs the startup conversation on conn up to the server's first
// ReadyForQuery.
func login(ctx context.Context, conn net.Conn, tlsConfig *tls.Config, res config.Resource, creds auth.BackendCredentials, clientParams map[string]string) (*backend, error) {
	var tc *tls.Conn
	if tlsConfig != nil {
		var err error
		if tc, err = startTLS(ctx, conn, tlsConfig); err != nil {
			return nil, err
		}
		conn = tc
	}
	database := res.Database
	if database == "" {
		database = res.Name
	}
	password := creds.Password
	if creds.AccessToken != "" {
		password = creds.AccessToken
	}
	params := make(map[string]string, len(clientParams)+2)
	for k, v := range clientParams {
		if !startupOnly[k] {
			params[k] = v
		}
	}
	params["user"], params["database"] = creds.User, database
	fe := pgproto3v5.NewFrontend(conn, conn)
	// Clients speak 3.0 to portcullis, so the backend does too.
	fe.Send(&pgproto3v5.StartupMessage{ProtocolVersion: pgproto3v5.ProtocolVersion30, Parameters: params})

	b := &backend{params: map[string]string{}, auth: "trust"}
	var sc *scramClient
	verified := false
	for {
		if err := fe.Flush(); err != nil {
			return nil, err
		}
		msg, err := fe.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3v5.AuthenticationOk:
			if sc != nil && !verified {
				return nil, errors.New("the server accepted the login before proving it knows the password")
			}
		case *pgproto3v5.AuthenticationCleartextPassword:
			b.auth = "password"
			fe.Send(&pgproto3v5.PasswordMessage{Password: password})
		case *pgproto3v5.AuthenticationMD5Password:
			b.auth = "md5"
			fe.Send(&pgproto3v5.PasswordMessage{Password: md5Password(creds.User, password, m.Salt)})
		case *pgproto3v5.AuthenticationSASL:
			if sc, err = newSCRAM(m.AuthMechanisms, password, tc); err != nil {
				return nil, err
			}
			b.auth = sc.mechanism
			fe.Send(&pgproto3v5.SASLInitialResponse{AuthMechanism: sc.mechanism, Data: sc.clientFirst()})
		case *pgproto3v5.AuthenticationSASLContinue:
			if sc == nil {
				return nil, errors.New("the server continued a SASL exchange that was never begun")
			}
			final, err := sc.clientFinal(m.Data)
			if err != nil {
				return nil, err
			}
			fe.Send(&pgproto3v5.SASLResponse{Data: final})
		case *pgproto3v5.AuthenticationSASLFinal:
			if sc == nil {
				return nil, errors.New("the server ended a SASL exchange that was never begun")
			}
			if err := sc.verifyFinal(m.Data); err != nil {
				return nil, err
			}
			verified = true
		case *pgproto3v5.AuthenticationGSS, *pgproto3v5.AuthenticationGSSContinue:
			return nil, errors.New("the server asks for GSSAPI or SSPI authentication, which portcullis does not speak")
		case *pgproto3v5.BackendKeyData:
			b.pid, b.secret = m.ProcessID, slices.Clone(m.SecretKey)
		case *pgproto3v5.ParameterStatus:
			b.params[m.Name] = m.Value
		case *pgproto3v5.NoticeResponse:
			b.notices = append(b.notices, (*pgconn.Notice)(pgconn.ErrorResponseToPgError((*pgproto3v5.ErrorResponse)(m))))
		case *pgproto3v5.NegotiateProtocolVersion:
			// The server speaks 3.0 and names startup options it does
			// not know; it goes on without them.
		case *pgproto3v5.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(m)
		case *pgproto3v5.ReadyForQuery:
			// Nothing of the server's may be left in the frontend's
			// buffer: the splice reads the connection from here on.
			if n := fe.ReadBufferLen(); n != 0 {
				return nil, fmt.Errorf("%d bytes from the server arrived after its ReadyForQuery", n)
			}
			b.conn, b.txStatus = conn, m.TxStatus
			return b, nil
		default:
			return nil, fmt.Errorf("unexpected %T during login", msg)
		}
	}
}

// startTLS asks the server at the other end of conn for TLS and shakes
// hands.
func startTLS(ctx context.Context, conn net.Conn, tlsConfig *tls.Config) (*tls.Conn, error) {
	req, err := (&pgproto3v5.SSLRequest{}).Encode(nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	// One byte and no more: anything after it would have come before
	// the handshake, unprotected.
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	if answer[0] != 'S' {
		return nil, errors.New("the server refused TLS")
	}
	tc := tls.Client(conn, tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return tc, nil
}

// md5Password is the answer to AuthenticationMD5Password.
func md5Password(user, password string, salt [4]byte) string {
	inner := md5.Sum([]byte(password + user))
	outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), salt[:]...))
	return "md5" + hex.EncodeToString(outer[:])
}

// sendCancel delivers a CancelRequest for (pid, secret) to the server at
// address, over TLS when the session's connection used it, so the key is
// never sent in the clear where the session was not.
func sendCancel(ctx context.Context, address string, tlsConfig *tls.Config, pid uint32, secret []byte) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return fmt.Errorf("cancel request: %w", err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	conn := raw
	if tlsConfig != nil {
		tc, err := startTLS(ctx, raw, tlsConfig)
		if err != nil {
			return fmt.Errorf("cancel request: %w", err)
		}
		conn = tc
	}
	msg, err := (&pgproto3v5.CancelRequest{ProcessID: pid, SecretKey: secret}).Encode(nil)
	if err != nil {
		return fmt.Errorf("cancel request: %w", err)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("cancel request: %w", err)
	}
	// The server closes the connection once it has read the request;
	// waiting for that means the request arrived before we return.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return fmt.Errorf("cancel request: waiting for the server to close: %w", err)
	}
	return nil
}

// terminate is the splice's Relay.Terminate: a polite goodbye to the
// backend.
func terminate(w io.Writer) error {
	msg, err := (&pgproto3v5.Terminate{}).Encode(nil)
	if err != nil {
		return err
	}
	_, err = w.Write(msg)
	return err
}

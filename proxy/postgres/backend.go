package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strconv"
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
	// pid is the server's process id for this connection.
	pid uint32
	// cancel asks the server to cancel what this connection runs.
	cancel proxy.CancelFunc
}

// startupOnly are startup parameters that belong to the client's
// conversation with portcullis, not to the backend's startup.
var startupOnly = map[string]bool{"user": true, "database": true, "replication": true}

// connectBackend logs in to res's server as creds and takes the
// connection over. Client startup parameters (application_name,
// client_encoding, options, ...) are passed on.
func connectBackend(ctx context.Context, res config.Resource, creds auth.BackendCredentials, clientParams map[string]string) (*backend, error) {
	fail := func(err error) error { return &backendError{resource: res.Name, user: creds.User, err: err} }

	tlsConfig, err := proxy.BackendTLS(res)
	if err != nil {
		return nil, fail(err)
	}
	host, portText, err := net.SplitHostPort(res.Address)
	if err != nil {
		return nil, fail(fmt.Errorf("address %q: %w", res.Address, err))
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fail(fmt.Errorf("address %q: bad port: %w", res.Address, err))
	}

	// ParseConfig is the only way to make a pgconn.Config; every field it
	// may have taken from PG* environment variables is set below, so the
	// proxy's environment cannot redirect a backend login.
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fail(fmt.Errorf("backend configuration: %w", err))
	}
	cfg.Host = host
	cfg.Port = uint16(port)
	cfg.Database = res.Database
	if cfg.Database == "" {
		cfg.Database = res.Name
	}
	cfg.User = creds.User
	cfg.Password = creds.Password
	if creds.AccessToken != "" {
		cfg.Password = creds.AccessToken
	}
	// The login's reads and writes go through proxy.PollSocket, as the
	// splice's do, rather than the runtime's blocking system-call path.
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return proxy.PollSocket(c), nil
	}
	cfg.TLSConfig = tlsConfig
	cfg.SSLNegotiation = "postgres"
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = res.ConnectTimeout
	// Clients speak 3.0 to portcullis, so the backend does too.
	cfg.MinProtocolVersion, cfg.MaxProtocolVersion = "3.0", "3.0"
	cfg.ValidateConnect = nil
	cfg.AfterConnect = nil
	cfg.RuntimeParams = make(map[string]string, len(clientParams))
	for k, v := range clientParams {
		if !startupOnly[k] {
			cfg.RuntimeParams[k] = v
		}
	}
	var notices []*pgconn.Notice
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n) }

	if res.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, res.ConnectTimeout)
		defer cancel()
	}
	pg, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fail(err)
	}
	// SyncConn stops pgconn's background reader and leaves its read
	// buffer empty, so Hijack hands over a connection with no byte of the
	// server's read ahead and lost.
	if err := pg.SyncConn(ctx); err != nil {
		pg.Close(context.Background())
		return nil, fail(err)
	}
	hc, err := pg.Hijack()
	if err != nil {
		pg.Close(context.Background())
		return nil, fail(err)
	}
	if n := hc.Frontend.ReadBufferLen(); n != 0 {
		hc.Conn.Close()
		return nil, fail(fmt.Errorf("%d bytes from the server still buffered after hijacking", n))
	}
	if err := hc.Conn.SetDeadline(time.Time{}); err != nil {
		hc.Conn.Close()
		return nil, fail(err)
	}

	pid, secret := hc.PID, append([]byte(nil), hc.SecretKey...)
	return &backend{
		conn:     hc.Conn,
		params:   maps.Clone(hc.ParameterStatuses),
		txStatus: hc.TxStatus,
		notices:  notices,
		pid:      pid,
		cancel: func(ctx context.Context) error {
			return sendCancel(ctx, res.Address, tlsConfig, pid, secret)
		},
	}, nil
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
		req, err := (&pgproto3v5.SSLRequest{}).Encode(nil)
		if err != nil {
			return fmt.Errorf("cancel request: %w", err)
		}
		if _, err := raw.Write(req); err != nil {
			return fmt.Errorf("cancel request: SSLRequest: %w", err)
		}
		var answer [1]byte
		if _, err := io.ReadFull(raw, answer[:]); err != nil {
			return fmt.Errorf("cancel request: SSLRequest: %w", err)
		}
		if answer[0] != 'S' {
			return errors.New("cancel request: the server refused TLS")
		}
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("cancel request: TLS: %w", err)
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

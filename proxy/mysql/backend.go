package mysql

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/pingcap/tidb/pkg/parser/charset"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/proxy"
)

// relayedCaps are the capabilities that change what flows on the wire
// after the login; the backend session must have exactly the ones the
// client agreed to.
var relayedCaps = []uint32{
	gomysql.CLIENT_FOUND_ROWS,
	gomysql.CLIENT_IGNORE_SPACE,
	gomysql.CLIENT_MULTI_STATEMENTS,
	gomysql.CLIENT_MULTI_RESULTS,
	gomysql.CLIENT_PS_MULTI_RESULTS,
	gomysql.CLIENT_SESSION_TRACK,
	gomysql.CLIENT_DEPRECATE_EOF,
}

// neverCaps are asked of no backend: portcullis offers them to no
// client.
var neverCaps = []uint32{
	gomysql.CLIENT_COMPRESS,
	gomysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM,
	gomysql.CLIENT_LOCAL_FILES,
	gomysql.CLIENT_QUERY_ATTRIBUTES,
}

// backend is a logged-in connection to a resource's server, taken over
// from go-mysql's client.
type backend struct {
	// conn is what the splice reads and writes: the TLS connection or the
	// TCP one. go-mysql holds no unread byte of it (see boundedConn).
	conn     net.Conn
	version  string
	threadID uint32
	status   uint16
	// kill runs KILL QUERY (or KILL CONNECTION) for this session's thread
	// over a connection of its own.
	kill func(ctx context.Context, connection bool) error
}

// backendLogin is what connectBackend needs to know about the client.
type backendLogin struct {
	caps      uint32
	collation uint8
	attrs     map[string]string
	sessionID string
	// database, when set, is the database the client asked for, on the
	// resource's server, in place of the resource's own.
	database string
}

// connectBackend logs in to res's server as creds with the capabilities
// the client agreed to, and takes the connection over.
func connectBackend(ctx context.Context, res config.Resource, creds auth.BackendCredentials, login backendLogin) (*backend, error) {
	fail := func(err error) error {
		return &backendError{resource: res.Name, user: creds.User, database: login.database, err: err}
	}

	tlsConfig, err := proxy.BackendTLS(res)
	if err != nil {
		return nil, fail(err)
	}
	password := creds.Password
	if creds.AccessToken != "" {
		password = creds.AccessToken
	}
	database := login.database
	if database == "" {
		database = res.Database
	}
	if database == "" {
		database = res.Name
	}
	timeout := res.ConnectTimeout
	if timeout <= 0 {
		timeout = config.DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var (
		mu sync.Mutex // bc is set by the dialer and read by the AfterFunc
		bc *boundedConn
	)
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			raw.SetDeadline(dl)
		}
		mu.Lock()
		defer mu.Unlock()
		// The login's reads and writes go through proxy.PollSocket, as
		// the splice's do.
		bc = &boundedConn{Conn: proxy.PollSocket(raw)}
		return bc, nil
	}
	collation := collationName(login.collation)
	attrs := make(map[string]string, len(login.attrs)+1)
	for k, v := range login.attrs {
		attrs[k] = v
	}
	attrs["portcullis_session"] = login.sessionID
	configure := func(c *client.Conn) error {
		if tlsConfig != nil {
			c.SetTLSConfig(tlsConfig)
		}
		for _, f := range relayedCaps {
			switch {
			case login.caps&f == 0:
				c.UnsetCapability(f)
			case f != gomysql.CLIENT_DEPRECATE_EOF: // go-mysql's default
				if err := c.SetCapability(f); err != nil {
					return fmt.Errorf("capability %#x: %w", f, err)
				}
			}
		}
		for _, f := range neverCaps {
			c.UnsetCapability(f)
		}
		c.SetAttributes(attrs)
		return c.SetCollation(collation)
	}

	// go-mysql bounds only the dial by ctx; the login is bounded by the
	// connection's deadline, which ending ctx brings forward.
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if bc != nil {
			bc.SetDeadline(time.Unix(1, 0))
		}
	})
	cc, err := client.ConnectWithDialer(ctx, "tcp", res.Address, creds.User, password, database, dial, configure)
	if !stop() && err == nil {
		// ctx ended just as the login finished: the deadline may be in
		// the past now; the login is abandoned all the same.
		cc.Close()
		err = context.Cause(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return nil, fail(err)
	}
	ok := false
	defer func() {
		if !ok {
			cc.Close()
		}
	}()
	if missing := login.caps & relayedMask() &^ bc.serverCaps(); missing != 0 {
		return nil, fail(fmt.Errorf("the server does not support capabilities %#x that the client agreed to", missing))
	}
	if login.caps&gomysql.CLIENT_INTERACTIVE != 0 {
		// go-mysql cannot ask for an interactive session; this is the
		// one thing CLIENT_INTERACTIVE changes.
		if _, err := cc.Execute("SET SESSION wait_timeout = @@interactive_timeout"); err != nil {
			return nil, fail(fmt.Errorf("make the session interactive: %w", err))
		}
	}
	conn := cc.Conn.Conn
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, fail(err)
	}
	bc.release()
	if b, ok := conn.(*boundedConn); ok {
		// No TLS: nothing of the stream is held above the socket, so the
		// relay gets the (poll) socket itself and reads and writes its
		// descriptor directly.
		conn = b.Conn
	}

	var status uint16
	if cc.IsAutoCommit() {
		status |= gomysql.SERVER_STATUS_AUTOCOMMIT
	}
	if cc.IsInTransaction() {
		status |= gomysql.SERVER_STATUS_IN_TRANS
	}
	threadID := cc.GetConnectionID()
	ok = true
	return &backend{
		conn:     conn,
		version:  cc.GetServerVersion(),
		threadID: threadID,
		status:   status,
		kill: func(ctx context.Context, connection bool) error {
			return killThread(ctx, res, tlsConfig, creds.User, password, threadID, connection)
		},
	}, nil
}

func relayedMask() uint32 {
	var m uint32
	for _, f := range relayedCaps {
		m |= f
	}
	return m
}

// collationName is the name go-mysql needs for the client's collation
// id; an id it does not know becomes utf8mb4_general_ci, which MySQL and
// MariaDB both know (go-mysql's own default, 255, is MySQL's only).
func collationName(id uint8) string {
	if c, err := charset.GetCollationByID(int(id)); err == nil && id != 0 {
		return c.Name
	}
	return "utf8mb4_general_ci"
}

// killThread runs KILL QUERY (or KILL CONNECTION) for thread on res's
// server, logged in as the session's own backend user, which may kill
// its own threads.
func killThread(ctx context.Context, res config.Resource, tlsConfig *tls.Config, user, password string, thread uint32, connection bool) error {
	d := net.Dialer{}
	cc, err := client.ConnectWithDialer(ctx, "tcp", res.Address, user, password, "", func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, address)
		if err == nil {
			if dl, ok := ctx.Deadline(); ok {
				conn.SetDeadline(dl)
			}
		}
		return conn, err
	}, func(c *client.Conn) error {
		if tlsConfig != nil {
			c.SetTLSConfig(tlsConfig)
		}
		return c.SetCollation("utf8mb4_general_ci")
	})
	if err != nil {
		return fmt.Errorf("kill thread %d on resource %q: connect: %w", thread, res.Name, err)
	}
	defer cc.Close()
	what := "QUERY"
	if connection {
		what = "CONNECTION"
	}
	if _, err := cc.Execute("KILL " + what + " " + strconv.FormatUint(uint64(thread), 10)); err != nil {
		var my *gomysql.MyError
		if errors.As(err, &my) && my.Code == gomysql.ER_NO_SUCH_THREAD {
			return nil // it ended by itself
		}
		return fmt.Errorf("kill thread %d on resource %q: %w", thread, res.Name, err)
	}
	return nil
}

// boundedConn is the backend's TCP connection as go-mysql's client sees
// it during the login. go-mysql reads through a bufio.Reader that could
// read past the login's last packet and keep those bytes to itself; so
// until release, every Read stops at the end of the unit in flight — a
// MySQL packet before TLS, a TLS record after — and nothing beyond the
// login's final OK (which the server flushes alone) is ever read. It also
// keeps the server's greeting, for its capabilities.
type boundedConn struct {
	net.Conn

	released atomic.Bool
	tls      bool
	header   [5]byte
	have     int // header bytes of the next unit read so far
	left     int // bytes of the current unit still to come
	units    int
	greeting []byte
}

func (b *boundedConn) Read(p []byte) (int, error) {
	if b.released.Load() || len(p) == 0 {
		return b.Conn.Read(p)
	}
	hlen := 4
	if b.tls {
		hlen = 5
	}
	if b.left == 0 {
		n, err := b.Conn.Read(p[:min(len(p), hlen-b.have)])
		copy(b.header[b.have:], p[:n])
		b.have += n
		if b.have == hlen {
			b.have = 0
			b.units++
			if b.tls {
				b.left = int(binary.BigEndian.Uint16(b.header[3:5]))
			} else {
				b.left = int(b.header[0]) | int(b.header[1])<<8 | int(b.header[2])<<16
			}
		}
		return n, err
	}
	n, err := b.Conn.Read(p[:min(len(p), b.left)])
	b.left -= n
	if !b.tls && b.units == 1 && len(b.greeting) < 1024 {
		b.greeting = append(b.greeting, p[:n]...)
	}
	return n, err
}

// Write notices the SSLRequest go-mysql sends (a 32-byte packet with
// CLIENT_SSL): what the server sends after it is TLS records.
func (b *boundedConn) Write(p []byte) (int, error) {
	if !b.released.Load() && !b.tls && len(p) == 36 && binary.LittleEndian.Uint32(p[4:])&gomysql.CLIENT_SSL != 0 {
		b.tls = true
	}
	return b.Conn.Write(p)
}

// release ends the bounding, for the splice.
func (b *boundedConn) release() { b.released.Store(true) }

// serverCaps are the capabilities in the server's greeting.
func (b *boundedConn) serverCaps() uint32 {
	g := b.greeting
	if len(g) < 2 {
		return 0
	}
	i := bytes.IndexByte(g[1:], 0)
	if i < 0 {
		return 0
	}
	pos := 1 + i + 1 + 4 + 8 + 1
	if len(g) < pos+2 {
		return 0
	}
	caps := uint32(binary.LittleEndian.Uint16(g[pos:]))
	if len(g) >= pos+7 {
		caps |= uint32(binary.LittleEndian.Uint16(g[pos+5:])) << 16
	}
	return caps
}

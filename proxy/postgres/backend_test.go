package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	pgproto3v5 "github.com/jackc/pgx/v5/pgproto3"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// The backend's login reads and writes through proxy.PollSocket, and the
// splice must be handed that poll socket (whose descriptor it reads
// without holding a buffer while the session is idle) or, over TLS, the
// TLS connection; either must carry on the conversation the login began.
func TestBackendHandsOverThePollSocket(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	resource := func(t *testing.T, name string) config.Resource {
		i := slices.IndexFunc(h.cfg.Resources, func(r config.Resource) bool { return r.Name == name })
		if i < 0 {
			t.Fatalf("no resource %q", name)
		}
		return h.cfg.Resources[i]
	}
	for _, tc := range []struct {
		resource string
		role     string
		password string
		want     string // the type the splice is handed
		auth     string // how portcullis logged in
	}{
		{"analytics_md5", roleMD5.Name, roleMD5.Password, "*proxy.pollSocket", "md5"},
		{"analytics_md5", roleFinance.Name, roleFinance.Password, "*proxy.pollSocket", scramSHA256},
		{"analytics_clear", roleClear.Name, roleClear.Password, "*tls.Conn", "password"},
		// Over TLS, SCRAM is bound to the server's certificate: a login
		// that succeeds this way proves the certificate hash right.
		{"analytics", roleAnalyst.Name, roleAnalyst.Password, "*tls.Conn", scramSHA256Plus},
	} {
		t.Run(tc.resource+"/"+tc.role, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			b, err := connectBackend(ctx, resource(t, tc.resource), auth.BackendCredentials{User: tc.role, Password: tc.password}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer b.conn.Close()
			if got := fmt.Sprintf("%T", b.conn); got != tc.want {
				t.Fatalf("the splice would be handed a %s, want a %s", got, tc.want)
			}
			if b.auth != tc.auth {
				t.Fatalf("logged in by %q, want %q", b.auth, tc.auth)
			}
			if b.pid == 0 || len(b.secret) == 0 || b.params["server_version"] == "" || b.txStatus != 'I' {
				t.Fatalf("login left pid %d, a %d-byte secret, server_version %q, status %q", b.pid, len(b.secret), b.params["server_version"], b.txStatus)
			}

			b.conn.SetDeadline(time.Now().Add(10 * time.Second))
			fe := pgproto3v5.NewFrontend(b.conn, b.conn)
			fe.Send(&pgproto3v5.Query{String: "select current_user"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			var user string
			for {
				msg, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if row, ok := msg.(*pgproto3v5.DataRow); ok {
					user = string(row.Values[0])
				}
				if _, ok := msg.(*pgproto3v5.ReadyForQuery); ok {
					break
				}
			}
			if user != tc.role {
				t.Fatalf("current_user = %q, want %q", user, tc.role)
			}
		})
	}
}

// A password the server does not take comes back as the server's own
// error (28P01), whichever way it was asked for, so the client is told
// that the mapped login was refused rather than that the server is down.
func TestBackendLoginRefused(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	for _, tc := range []struct{ resource, role string }{
		{"analytics_md5", roleMD5.Name},
		{"analytics_md5", roleFinance.Name},
		{"analytics_clear", roleClear.Name},
		{"analytics", roleAnalyst.Name},
	} {
		t.Run(tc.resource+"/"+tc.role, func(t *testing.T) {
			i := slices.IndexFunc(h.cfg.Resources, func(r config.Resource) bool { return r.Name == tc.resource })
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := connectBackend(ctx, h.cfg.Resources[i], auth.BackendCredentials{User: tc.role, Password: "not-the-password"}, nil)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
				t.Fatalf("login with a wrong password: %v, want the server's 28P01", err)
			}
			var be *backendError
			if !errors.As(err, &be) {
				t.Fatalf("%v is not a backendError", err)
			}
			if f := backendFatal(be, "s1"); f.code != codeRejected || !strings.Contains(f.message, "refused portcullis's login as") {
				t.Fatalf("the client would be told %s %q", f.code, f.message)
			}
		})
	}
}

// A server that starts SCRAM and then lets portcullis in without proving
// that it knows the password (a stand-in that accepts anyone) is refused.
func TestBackendLoginWantsTheServersProof(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		be := pgproto3v5.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		be.Send(&pgproto3v5.AuthenticationSASL{AuthMechanisms: []string{scramSHA256}})
		be.Flush()
		if err := be.SetAuthType(pgproto3v5.AuthTypeSASL); err != nil {
			return
		}
		if _, err := be.Receive(); err != nil {
			return
		}
		be.Send(&pgproto3v5.AuthenticationOk{})
		be.Send(&pgproto3v5.ReadyForQuery{TxStatus: 'I'})
		be.Flush()
		io.Copy(io.Discard, c)
	}()
	res := config.Resource{Name: "impostor", Protocol: "postgres", Address: ln.Addr().String(), TLS: config.BackendTLS{Mode: config.BackendTLSDisable}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := connectBackend(ctx, res, auth.BackendCredentials{User: "u", Password: "pw"}, nil)
	if err == nil {
		b.conn.Close()
		t.Fatal("logged in to a server that never proved it knows the password")
	}
	if !strings.Contains(err.Error(), "before proving") {
		t.Fatalf("refused for another reason: %v", err)
	}
}

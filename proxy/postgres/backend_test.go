package postgres

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

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
	}{
		{"analytics_md5", roleMD5.Name, roleMD5.Password, "*proxy.pollSocket"},
		{"analytics", roleAnalyst.Name, roleAnalyst.Password, "*tls.Conn"},
	} {
		t.Run(tc.resource, func(t *testing.T) {
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

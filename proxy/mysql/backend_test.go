package mysql

import (
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

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
		user     string
		password string
		want     string // the type the splice is handed
	}{
		{"app_ed", userEd25519.Name, userEd25519.Password, "*proxy.pollSocket"},
		{"app", userNative.Name, userNative.Password, "*tls.Conn"},
	} {
		t.Run(tc.resource, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			caps := uint32(gomysql.CLIENT_PROTOCOL_41 | gomysql.CLIENT_SECURE_CONNECTION | gomysql.CLIENT_PLUGIN_AUTH)
			b, err := connectBackend(ctx, resource(t, tc.resource), auth.BackendCredentials{User: tc.user, Password: tc.password}, backendLogin{caps: caps, collation: 45})
			if err != nil {
				t.Fatal(err)
			}
			defer b.conn.Close()
			if got := fmt.Sprintf("%T", b.conn); got != tc.want {
				t.Fatalf("the splice would be handed a %s, want a %s", got, tc.want)
			}

			// COM_PING, sequence 0: the server answers OK.
			b.conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := b.conn.Write([]byte{1, 0, 0, 0, gomysql.COM_PING}); err != nil {
				t.Fatal(err)
			}
			var head [4]byte
			if _, err := io.ReadFull(b.conn, head[:]); err != nil {
				t.Fatal(err)
			}
			body := make([]byte, int(head[0])|int(head[1])<<8|int(head[2])<<16)
			if _, err := io.ReadFull(b.conn, body); err != nil {
				t.Fatal(err)
			}
			if head[3] != 1 || len(body) == 0 || body[0] != gomysql.OK_HEADER {
				t.Fatalf("COM_PING answered with sequence %d and %x, want an OK packet with sequence 1", head[3], body)
			}
		})
	}
}

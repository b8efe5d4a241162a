package testmysql

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
)

var (
	userNative  = User{Name: "native_user", Password: "native-pw-1", RequireTLS: true}
	userEd25519 = User{Name: "ed_user", Password: "ed-pw-2", Auth: AuthEd25519}
)

var shared = NewShared(Options{
	TLS:       true,
	Databases: []string{"app"},
	Users:     []User{userNative, userEd25519},
	Setup:     []string{"CREATE TABLE app.t (id INT PRIMARY KEY)", "INSERT INTO app.t VALUES (1), (2), (3)"},
})

func TestMain(m *testing.M) {
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "stop MariaDB:", err)
		code = 1
	}
	os.Exit(code)
}

func connect(ctx context.Context, s *Server, u User, tlsConfig *tls.Config) (*client.Conn, error) {
	return client.ConnectWithContext(ctx, s.Addr(), u.Name, u.Password, "app", 10*time.Second, func(c *client.Conn) error {
		if tlsConfig != nil {
			c.SetTLSConfig(tlsConfig)
		}
		return c.SetCollation("utf8mb4_general_ci")
	})
}

// Each user logs in with its own plugin; a REQUIRE SSL user only over
// TLS, verified against the server's CA.
func TestUsersAndTLS(t *testing.T) {
	s := shared.Server(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	verified := &tls.Config{RootCAs: s.CA.Pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}

	tests := []struct {
		name       string
		user       User
		tls        *tls.Config
		wantPlugin string
		wantSSL    bool
		wantErr    string
	}{
		{name: "native over tls", user: userNative, tls: verified, wantPlugin: AuthNative, wantSSL: true},
		{name: "native without tls refused", user: userNative, wantErr: "1045"},
		{name: "ed25519 in the clear", user: userEd25519, wantPlugin: AuthEd25519},
		{name: "ed25519 over tls", user: userEd25519, tls: verified, wantPlugin: AuthEd25519, wantSSL: true},
		{name: "wrong password", user: User{Name: userEd25519.Name, Password: "nope"}, wantErr: "1045"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := connect(ctx, s, tt.user, tt.tls)
			if tt.wantErr != "" {
				if err == nil {
					c.Close()
					t.Fatalf("connected, want error %s", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close()
			r, err := c.Execute("SELECT plugin FROM mysql.user WHERE user = ?", tt.user.Name)
			if err == nil {
				t.Errorf("%s could read mysql.user: privileges are wider than the test database", tt.user.Name)
				_ = r
			}
			r, err = c.Execute("SELECT COUNT(*), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher') FROM t")
			if err != nil {
				t.Fatal(err)
			}
			n, _ := r.GetInt(0, 0)
			cipher, _ := r.GetString(0, 1)
			if n != 3 {
				t.Errorf("count = %d, want 3", n)
			}
			if got := cipher != ""; got != tt.wantSSL {
				t.Errorf("ssl = %v (cipher %q), want %v", got, cipher, tt.wantSSL)
			}
		})
	}

	root, err := s.Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, u := range []User{userNative, userEd25519} {
		want := u.Auth
		if want == "" {
			want = AuthNative
		}
		r, err := root.Execute("SELECT plugin FROM mysql.user WHERE user = ?", u.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := r.GetString(0, 0); got != want {
			t.Errorf("%s has plugin %q, want %q", u.Name, got, want)
		}
	}
	if !strings.Contains(s.Version, "MariaDB") {
		t.Errorf("Version = %q, want a MariaDB version", s.Version)
	}
}

// Stop stops the server and removes its directory; a second Stop is
// harmless.
func TestStartStop(t *testing.T) {
	s := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still there after Stop (%v)", s.Dir, err)
	}
	if err := s.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("the server still answers after Stop")
	}
}

package testpg

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestServerRolesAndTLS(t *testing.T) {
	srv := Start(t, Options{
		TLS: true,
		Roles: []Role{
			{Name: "scram_user", Password: "scram-pw"},
			{Name: "md5_user", Password: "md5-pw", Auth: AuthMD5},
			{Name: "clear_user", Password: "clear-pw", Auth: AuthPassword},
			{Name: "tls_user", Password: "tls-pw", RequireTLS: true},
		},
		Setup: []string{"CREATE DATABASE extra"},
	})

	tests := []struct {
		name     string
		user     string
		password string
		tls      bool
		database string
		wantCode string // "" for success
	}{
		{name: "scram", user: "scram_user", password: "scram-pw"},
		{name: "scram wrong password", user: "scram_user", password: "nope", wantCode: "28P01"},
		{name: "md5", user: "md5_user", password: "md5-pw"},
		{name: "cleartext", user: "clear_user", password: "clear-pw"},
		{name: "tls role over tls", user: "tls_user", password: "tls-pw", tls: true},
		{name: "tls role without tls", user: "tls_user", password: "tls-pw", wantCode: "28000"},
		{name: "setup database", user: "scram_user", password: "scram-pw", database: "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			db := tt.database
			if db == "" {
				db = "postgres"
			}
			cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", srv.Host, srv.Port, tt.user, db))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Password = tt.password
			if tt.tls {
				cfg.TLSConfig = &tls.Config{RootCAs: srv.CA.Pool, ServerName: "localhost"}
			}
			c, err := pgconn.ConnectConfig(ctx, cfg)
			if tt.wantCode != "" {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != tt.wantCode {
					t.Fatalf("connect: got %v, want SQLSTATE %s", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close(ctx)
			res, err := c.Exec(ctx, "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			row := res[0].Rows[0]
			if got := string(row[0]); got != tt.user {
				t.Errorf("current_user = %q, want %q", got, tt.user)
			}
			if got, want := string(row[1]), map[bool]string{true: "t", false: "f"}[tt.tls]; got != want {
				t.Errorf("ssl = %q, want %q", got, want)
			}
		})
	}
}

func TestStopIsIdempotent(t *testing.T) {
	srv := Start(t, Options{})
	if srv.Version == "" {
		t.Error("server version not detected")
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("first stop: %v", err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := srv.Superuser(ctx, ""); err == nil {
		c.Close(ctx)
		t.Fatal("server still accepts connections after Stop")
	}
}

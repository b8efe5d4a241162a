package store

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/mfa"
)

// Store is portcullis's durable state. *SQLite and *Postgres implement
// it; auth and mfa each see only the part they declare.
type Store interface {
	// Sign-ins: session keys and address-grace records, by hash.
	auth.SessionStore
	// Error-mode sign-ins in progress, shared by replicas.
	auth.PendingSignInStore
	// Access keys admins make for programs, by hash.
	auth.AccessKeyStore
	// TOTP secrets (sealed), last accepted steps and failure counts.
	mfa.Store
	// RotateKey re-seals every TOTP secret that is not sealed under the
	// current key, opening it with a previous key, and reports how many
	// it re-sealed.
	RotateKey(ctx context.Context) (int, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Close releases the database.
	Close() error
}

// Compile-time checks that both implementations are complete.
var (
	_ Store = (*SQLite)(nil)
	_ Store = (*Postgres)(nil)
)

// Open opens the store the configuration names: the SQLite file at
// store.path, the PostgreSQL database at store.dsn, or (driver memory) an
// SQLite database in memory that ends with the process. It applies any
// schema migrations first.
func Open(ctx context.Context, cfg config.Store) (Store, error) {
	keys, err := KeysFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	switch cfg.Driver {
	case config.StoreSQLite:
		return OpenSQLite(ctx, cfg.Path, keys)
	case config.StorePostgres:
		return OpenPostgres(ctx, cfg.DSN.Reveal(), keys)
	case config.StoreMemory, "":
		return OpenMemory(ctx, keys)
	}
	return nil, fmt.Errorf("store: unknown driver %q", cfg.Driver)
}

// KeysFromConfig decodes store.key and store.previous_key.
func KeysFromConfig(cfg config.Store) (Keys, error) {
	var k Keys
	if cfg.Key.IsSet() {
		b, err := ParseKey(cfg.Key.Reveal())
		if err != nil {
			return Keys{}, fmt.Errorf("store.key: %w", err)
		}
		k.Current = b
	}
	if cfg.PreviousKey.IsSet() {
		b, err := ParseKey(cfg.PreviousKey.Reveal())
		if err != nil {
			return Keys{}, fmt.Errorf("store.previous_key: %w", err)
		}
		k.Previous = append(k.Previous, b)
	}
	return k, nil
}

// signInRow is a SignInRecord as both databases hold it.
type signInRow struct {
	provider, kind, tenantID, objectID, upn, appID, displayName string
	loginName, clientAddr, homeAccountID                        string
	signedInAt, expiresAt                                       time.Time
	// scrambleUser is NULL for records no scramble may reach.
	scrambleUser *string
}

func toRow(rec auth.SignInRecord) signInRow {
	addr := ""
	if rec.ClientAddr.IsValid() {
		addr = rec.ClientAddr.String()
	}
	id := rec.Identity
	return signInRow{
		provider: id.Provider, kind: string(id.Kind), tenantID: id.TenantID, objectID: id.ObjectID,
		upn: id.UPN, appID: id.AppID, displayName: id.DisplayName,
		loginName: rec.LoginName, clientAddr: addr, homeAccountID: rec.HomeAccountID,
		signedInAt: rec.SignedInAt, expiresAt: rec.ExpiresAt,
		scrambleUser: nullString(rec.ScrambleUser),
	}
}

// nullString maps "" to NULL.
func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (r signInRow) record() (auth.SignInRecord, error) {
	rec := auth.SignInRecord{
		Identity: auth.Identity{
			Kind: auth.Kind(r.kind), Provider: r.provider, TenantID: r.tenantID, ObjectID: r.objectID,
			UPN: r.upn, AppID: r.appID, DisplayName: r.displayName,
		},
		LoginName: r.loginName, SignedInAt: r.signedInAt, ExpiresAt: r.expiresAt, HomeAccountID: r.homeAccountID,
	}
	if r.scrambleUser != nil {
		rec.ScrambleUser = *r.scrambleUser
	}
	if r.clientAddr != "" {
		addr, err := netip.ParseAddr(r.clientAddr)
		if err != nil {
			return auth.SignInRecord{}, fmt.Errorf("store: a sign-in record has a bad client address: %w", err)
		}
		rec.ClientAddr = addr
	}
	return rec, nil
}

// migration is one step of the schema. Steps are applied in order, each
// once, and recorded in schema_migrations; they are never edited after
// release, only added.
type migration struct {
	version    int
	name       string
	statements []string
}

// checkVersions checks the versions a database has applied against the
// ones this build knows.
func checkVersions(applied map[int]bool, known []migration) error {
	max := 0
	for v := range applied {
		if v > max {
			max = v
		}
	}
	if latest := known[len(known)-1].version; max > latest {
		return fmt.Errorf("store: the database has schema version %d, newer than this portcullis knows (%d); upgrade portcullis", max, latest)
	}
	return nil
}

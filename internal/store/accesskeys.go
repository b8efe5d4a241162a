package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/portcullisdb/portcullis/auth"
)

// accessKeyColumns are read back by every access key query, in this
// order.
const accessKeyColumns = `id, provider, for_identity, kind, resource, created_at, expires_at, last_used_at, revoked_at`

// PutAccessKey implements auth.AccessKeyStore.
func (s *SQLite) PutAccessKey(ctx context.Context, h auth.KeyHash, k auth.AccessKey) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO access_keys (id, key_hash, provider, for_identity, kind, resource, created_at, expires_at)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`,
		k.ID, h[:], k.Provider, k.For, string(k.Kind), k.Resource, micros(k.CreatedAt), micros(k.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: put access key %s of %s: %w", k.ID, k.For, err)
	}
	return nil
}

func (s *SQLite) scanAccessKey(row interface{ Scan(...any) error }) (auth.AccessKey, error) {
	var (
		k                auth.AccessKey
		kind             string
		created, expires int64
		used, revoked    sql.NullInt64
	)
	if err := row.Scan(&k.ID, &k.Provider, &k.For, &kind, &k.Resource, &created, &expires, &used, &revoked); err != nil {
		return auth.AccessKey{}, err
	}
	k.Kind = auth.Kind(kind)
	k.CreatedAt, k.ExpiresAt = fromMicros(created), fromMicros(expires)
	k.LastUsedAt, k.RevokedAt = fromNullMicros(used), fromNullMicros(revoked)
	return k, nil
}

func (s *SQLite) oneAccessKey(row *sql.Row) (auth.AccessKey, bool, error) {
	k, err := s.scanAccessKey(row)
	if errors.Is(err, sql.ErrNoRows) {
		return auth.AccessKey{}, false, nil
	}
	if err != nil {
		return auth.AccessKey{}, false, fmt.Errorf("store: read access key: %w", err)
	}
	return k, true, nil
}

// AccessKeyByHash implements auth.AccessKeyStore.
func (s *SQLite) AccessKeyByHash(ctx context.Context, h auth.KeyHash) (auth.AccessKey, bool, error) {
	return s.oneAccessKey(s.db.QueryRowContext(ctx, `SELECT `+accessKeyColumns+` FROM access_keys WHERE key_hash = ?1`, h[:]))
}

// AccessKeyByID implements auth.AccessKeyStore.
func (s *SQLite) AccessKeyByID(ctx context.Context, id string) (auth.AccessKey, bool, error) {
	return s.oneAccessKey(s.db.QueryRowContext(ctx, `SELECT `+accessKeyColumns+` FROM access_keys WHERE id = ?1`, id))
}

// ListAccessKeys implements auth.AccessKeyStore.
func (s *SQLite) ListAccessKeys(ctx context.Context) ([]auth.AccessKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+accessKeyColumns+` FROM access_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list access keys: %w", err)
	}
	defer rows.Close()
	var out []auth.AccessKey
	for rows.Next() {
		k, err := s.scanAccessKey(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list access keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list access keys: %w", err)
	}
	return out, nil
}

// RevokeAccessKey implements auth.AccessKeyStore with one UPDATE that
// keeps the first revocation time.
func (s *SQLite) RevokeAccessKey(ctx context.Context, id string, at time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE access_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1`, id, micros(at))
	if err != nil {
		return false, fmt.Errorf("store: revoke access key %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: revoke access key %s: %w", id, err)
	}
	return n == 1, nil
}

// TouchAccessKey implements auth.AccessKeyStore.
func (s *SQLite) TouchAccessKey(ctx context.Context, id string, at time.Time) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE access_keys SET last_used_at = ?2 WHERE id = ?1`, id, micros(at)); err != nil {
		return fmt.Errorf("store: record the use of access key %s: %w", id, err)
	}
	return nil
}

// PutAccessKey implements auth.AccessKeyStore.
func (p *Postgres) PutAccessKey(ctx context.Context, h auth.KeyHash, k auth.AccessKey) error {
	_, err := p.pool.Exec(ctx, `INSERT INTO access_keys (id, key_hash, provider, for_identity, kind, resource, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		k.ID, h[:], k.Provider, k.For, string(k.Kind), k.Resource, k.CreatedAt, k.ExpiresAt)
	if err != nil {
		return fmt.Errorf("store: put access key %s of %s: %w", k.ID, k.For, err)
	}
	return nil
}

func scanPostgresAccessKey(row pgx.Row) (auth.AccessKey, error) {
	var (
		k             auth.AccessKey
		kind          string
		used, revoked *time.Time
	)
	if err := row.Scan(&k.ID, &k.Provider, &k.For, &kind, &k.Resource, &k.CreatedAt, &k.ExpiresAt, &used, &revoked); err != nil {
		return auth.AccessKey{}, err
	}
	k.Kind = auth.Kind(kind)
	k.LastUsedAt, k.RevokedAt = fromNullTime(used), fromNullTime(revoked)
	return k, nil
}

func onePostgresAccessKey(row pgx.Row) (auth.AccessKey, bool, error) {
	k, err := scanPostgresAccessKey(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return auth.AccessKey{}, false, nil
	}
	if err != nil {
		return auth.AccessKey{}, false, fmt.Errorf("store: read access key: %w", err)
	}
	return k, true, nil
}

// AccessKeyByHash implements auth.AccessKeyStore.
func (p *Postgres) AccessKeyByHash(ctx context.Context, h auth.KeyHash) (auth.AccessKey, bool, error) {
	return onePostgresAccessKey(p.pool.QueryRow(ctx, `SELECT `+accessKeyColumns+` FROM access_keys WHERE key_hash = $1`, h[:]))
}

// AccessKeyByID implements auth.AccessKeyStore.
func (p *Postgres) AccessKeyByID(ctx context.Context, id string) (auth.AccessKey, bool, error) {
	return onePostgresAccessKey(p.pool.QueryRow(ctx, `SELECT `+accessKeyColumns+` FROM access_keys WHERE id = $1`, id))
}

// ListAccessKeys implements auth.AccessKeyStore.
func (p *Postgres) ListAccessKeys(ctx context.Context) ([]auth.AccessKey, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+accessKeyColumns+` FROM access_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list access keys: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auth.AccessKey, error) { return scanPostgresAccessKey(row) })
	if err != nil {
		return nil, fmt.Errorf("store: list access keys: %w", err)
	}
	return out, nil
}

// RevokeAccessKey implements auth.AccessKeyStore with one UPDATE that
// keeps the first revocation time.
func (p *Postgres) RevokeAccessKey(ctx context.Context, id string, at time.Time) (bool, error) {
	tag, err := p.pool.Exec(ctx, `UPDATE access_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1`, id, at)
	if err != nil {
		return false, fmt.Errorf("store: revoke access key %s: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// TouchAccessKey implements auth.AccessKeyStore.
func (p *Postgres) TouchAccessKey(ctx context.Context, id string, at time.Time) error {
	if _, err := p.pool.Exec(ctx, `UPDATE access_keys SET last_used_at = $2 WHERE id = $1`, id, at); err != nil {
		return fmt.Errorf("store: record the use of access key %s: %w", id, err)
	}
	return nil
}

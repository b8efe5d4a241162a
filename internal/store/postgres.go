package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/mfa"
)

// migrationLockKey is the PostgreSQL advisory lock replicas take while
// they migrate, so that several starting at once apply each migration
// exactly once ("portcull" in ASCII).
const migrationLockKey int64 = 0x706f727463756c6c

// Postgres is the store in a PostgreSQL database, shared by every replica
// of portcullis behind one load balancer.
type Postgres struct {
	pool *pgxpool.Pool
	seal *sealer
}

// OpenPostgres connects to the database at dsn (a libpq connection string
// or URL) and applies the schema migrations.
func OpenPostgres(ctx context.Context, dsn string, keys Keys) (*Postgres, error) {
	return openPostgres(ctx, dsn, keys, postgresMigrations)
}

func openPostgres(ctx context.Context, dsn string, keys Keys, migrations []migration) (*Postgres, error) {
	seal, err := newSealer(keys)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the string, password and all.
		return nil, errors.New("store: store.dsn is not a valid PostgreSQL connection string")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: connect to PostgreSQL: %w", err)
	}
	p := &Postgres{pool: pool, seal: seal}
	if err := p.migrate(ctx, migrations); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// Ping implements Store.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("store: PostgreSQL: %w", err)
	}
	return nil
}

var postgresMigrations = []migration{
	{1, "sign-ins, TOTP secrets and failure counts", []string{
		`CREATE TABLE sign_ins (
			key_hash        bytea PRIMARY KEY,
			provider        text NOT NULL,
			kind            text NOT NULL,
			tenant_id       text NOT NULL,
			object_id       text NOT NULL,
			upn             text NOT NULL,
			app_id          text NOT NULL,
			display_name    text NOT NULL,
			login_name      text NOT NULL,
			client_addr     text NOT NULL,
			signed_in_at    timestamptz NOT NULL,
			expires_at      timestamptz NOT NULL,
			home_account_id text NOT NULL
		)`,
		`CREATE INDEX sign_ins_expires_at ON sign_ins (expires_at)`,
		`CREATE TABLE totp_secrets (
			provider      text NOT NULL,
			user_name     text NOT NULL,
			enrollment_id text NOT NULL,
			key_id        text NOT NULL,
			sealed        bytea NOT NULL,
			active        boolean NOT NULL DEFAULT false,
			last_step     bigint NOT NULL DEFAULT 0,
			created_at    timestamptz NOT NULL,
			activated_at  timestamptz,
			last_used_at  timestamptz,
			PRIMARY KEY (provider, user_name)
		)`,
		`CREATE TABLE totp_failures (
			provider     text NOT NULL,
			user_name    text NOT NULL,
			window_start timestamptz NOT NULL,
			failures     integer NOT NULL,
			locked_until timestamptz,
			PRIMARY KEY (provider, user_name)
		)`,
	}},
	{2, "error-mode sign-ins shared by replicas", []string{
		`CREATE TABLE pending_sign_ins (
			key_hash         bytea PRIMARY KEY,
			verification_url text NOT NULL,
			user_code        text NOT NULL,
			code_expires_at  timestamptz NOT NULL,
			message          text NOT NULL,
			done             boolean NOT NULL,
			provider         text NOT NULL,
			kind             text NOT NULL,
			tenant_id        text NOT NULL,
			object_id        text NOT NULL,
			upn              text NOT NULL,
			app_id           text NOT NULL,
			display_name     text NOT NULL,
			reason           text NOT NULL,
			refusal          text NOT NULL,
			expires_at       timestamptz NOT NULL
		)`,
		`CREATE INDEX pending_sign_ins_expires_at ON pending_sign_ins (expires_at)`,
	}},
	{3, "access keys", []string{
		`CREATE TABLE access_keys (
			id           text PRIMARY KEY,
			key_hash     bytea NOT NULL UNIQUE,
			provider     text NOT NULL,
			for_identity text NOT NULL,
			kind         text NOT NULL,
			resource     text NOT NULL,
			created_at   timestamptz NOT NULL,
			expires_at   timestamptz NOT NULL,
			last_used_at timestamptz,
			revoked_at   timestamptz
		)`,
	}},
	{4, "session keys a MySQL scramble can prove", []string{
		// Set only on session keys stored under their verifier; rows
		// from before stay NULL and are never listed for a scramble.
		`ALTER TABLE sign_ins ADD COLUMN scramble_user text`,
		`CREATE INDEX sign_ins_scramble_user ON sign_ins (scramble_user) WHERE scramble_user IS NOT NULL`,
	}},
}

// migrate applies the migrations this database lacks in one transaction
// that first takes an advisory lock: replicas starting together queue on
// it, and the later ones find the work done.
func (p *Postgres) migrate(ctx context.Context, migrations []migration) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockKey); err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: take the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: %w", err)
	}
	applied := map[int]bool{}
	for _, v := range versions {
		applied[v] = true
	}
	if err := checkVersions(applied, migrations); err != nil {
		return err
	}
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		for _, stmt := range m.statements {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("store: PostgreSQL: migration %d (%s): %w", m.version, m.name, err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("store: PostgreSQL: record migration %d: %w", m.version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("store: migrate PostgreSQL: %w", err)
	}
	return nil
}

// nullTime maps the zero time to NULL.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func fromNullTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// PutSignIn implements auth.SessionStore.
func (p *Postgres) PutSignIn(ctx context.Context, h auth.KeyHash, rec auth.SignInRecord) error {
	r := toRow(rec)
	_, err := p.pool.Exec(ctx, `INSERT INTO sign_ins (key_hash, provider, kind, tenant_id, object_id, upn, app_id,
			display_name, login_name, client_addr, signed_in_at, expires_at, home_account_id, scramble_user)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (key_hash) DO UPDATE SET provider = excluded.provider, kind = excluded.kind,
			tenant_id = excluded.tenant_id, object_id = excluded.object_id, upn = excluded.upn,
			app_id = excluded.app_id, display_name = excluded.display_name, login_name = excluded.login_name,
			client_addr = excluded.client_addr, signed_in_at = excluded.signed_in_at,
			expires_at = excluded.expires_at, home_account_id = excluded.home_account_id,
			scramble_user = excluded.scramble_user`,
		h[:], r.provider, r.kind, r.tenantID, r.objectID, r.upn, r.appID, r.displayName, r.loginName,
		r.clientAddr, r.signedInAt, r.expiresAt, r.homeAccountID, r.scrambleUser)
	if err != nil {
		return fmt.Errorf("store: put sign-in of %s: %w", rec.Identity.Name(), err)
	}
	return nil
}

func scanPostgresSignIn(row pgx.Row, extra ...any) (auth.SignInRecord, error) {
	var r signInRow
	dest := append([]any{&r.provider, &r.kind, &r.tenantID, &r.objectID, &r.upn, &r.appID, &r.displayName,
		&r.loginName, &r.clientAddr, &r.signedInAt, &r.expiresAt, &r.homeAccountID, &r.scrambleUser}, extra...)
	if err := row.Scan(dest...); err != nil {
		return auth.SignInRecord{}, err
	}
	return r.record()
}

// GetSignIn implements auth.SessionStore.
func (p *Postgres) GetSignIn(ctx context.Context, h auth.KeyHash) (auth.SignInRecord, bool, error) {
	rec, err := scanPostgresSignIn(p.pool.QueryRow(ctx, `SELECT `+signInColumns+` FROM sign_ins WHERE key_hash = $1`, h[:]))
	if errors.Is(err, pgx.ErrNoRows) {
		return auth.SignInRecord{}, false, nil
	}
	if err != nil {
		return auth.SignInRecord{}, false, fmt.Errorf("store: get sign-in: %w", err)
	}
	return rec, true, nil
}

// SessionKeysOf implements auth.SessionStore.
func (p *Postgres) SessionKeysOf(ctx context.Context, user string, now time.Time) ([]auth.StoredSessionKey, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+signInColumns+`, key_hash FROM sign_ins
		WHERE scramble_user = $1 AND expires_at > $2 ORDER BY signed_in_at DESC`, user, now)
	if err != nil {
		return nil, fmt.Errorf("store: list the session keys of %s: %w", user, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auth.StoredSessionKey, error) {
		var h []byte
		rec, err := scanPostgresSignIn(row, &h)
		if err == nil && len(h) != len(auth.KeyHash{}) {
			err = fmt.Errorf("a key hash of %d bytes", len(h))
		}
		if err != nil {
			return auth.StoredSessionKey{}, err
		}
		return auth.StoredSessionKey{Verifier: auth.KeyHash(h), Record: rec}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list the session keys of %s: %w", user, err)
	}
	return out, nil
}

// DeleteSignIn implements auth.SessionStore.
func (p *Postgres) DeleteSignIn(ctx context.Context, h auth.KeyHash) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM sign_ins WHERE key_hash = $1`, h[:]); err != nil {
		return fmt.Errorf("store: delete sign-in: %w", err)
	}
	return nil
}

// DeleteExpiredSignIns implements auth.SessionStore; it removes expired
// pending sign-ins too.
func (p *Postgres) DeleteExpiredSignIns(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for _, table := range []string{"sign_ins", "pending_sign_ins"} {
		tag, err := p.pool.Exec(ctx, `DELETE FROM `+table+` WHERE expires_at <= $1`, now)
		if err != nil {
			return total, fmt.Errorf("store: delete expired %s: %w", table, err)
		}
		total += int(tag.RowsAffected())
	}
	return total, nil
}

// PutPendingSignIn implements auth.PendingSignInStore.
func (p *Postgres) PutPendingSignIn(ctx context.Context, h auth.KeyHash, rec auth.PendingSignIn) error {
	id := rec.Identity
	_, err := p.pool.Exec(ctx, `INSERT INTO pending_sign_ins (key_hash, verification_url, user_code, code_expires_at,
			message, done, provider, kind, tenant_id, object_id, upn, app_id, display_name, reason, refusal, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
		ON CONFLICT (key_hash) DO UPDATE SET verification_url = excluded.verification_url,
			user_code = excluded.user_code, code_expires_at = excluded.code_expires_at, message = excluded.message,
			done = excluded.done, provider = excluded.provider, kind = excluded.kind, tenant_id = excluded.tenant_id,
			object_id = excluded.object_id, upn = excluded.upn, app_id = excluded.app_id,
			display_name = excluded.display_name, reason = excluded.reason, refusal = excluded.refusal,
			expires_at = excluded.expires_at`,
		h[:], rec.Prompt.VerificationURL, rec.Prompt.UserCode, rec.Prompt.ExpiresAt, rec.Prompt.Message, rec.Done,
		id.Provider, string(id.Kind), id.TenantID, id.ObjectID, id.UPN, id.AppID, id.DisplayName,
		string(rec.Reason), rec.Message, rec.ExpiresAt)
	if err != nil {
		return fmt.Errorf("store: put pending sign-in: %w", err)
	}
	return nil
}

func scanPending(row pgx.Row) (auth.PendingSignIn, bool, error) {
	var (
		rec          auth.PendingSignIn
		kind, reason string
	)
	err := row.Scan(&rec.Prompt.VerificationURL, &rec.Prompt.UserCode, &rec.Prompt.ExpiresAt, &rec.Prompt.Message, &rec.Done,
		&rec.Identity.Provider, &kind, &rec.Identity.TenantID, &rec.Identity.ObjectID, &rec.Identity.UPN,
		&rec.Identity.AppID, &rec.Identity.DisplayName, &reason, &rec.Message, &rec.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return auth.PendingSignIn{}, false, nil
	}
	if err != nil {
		return auth.PendingSignIn{}, false, fmt.Errorf("store: read pending sign-in: %w", err)
	}
	rec.Identity.Kind, rec.Reason = auth.Kind(kind), auth.RefusalReason(reason)
	return rec, true, nil
}

// GetPendingSignIn implements auth.PendingSignInStore.
func (p *Postgres) GetPendingSignIn(ctx context.Context, h auth.KeyHash) (auth.PendingSignIn, bool, error) {
	return scanPending(p.pool.QueryRow(ctx, `SELECT `+pendingColumns+` FROM pending_sign_ins WHERE key_hash = $1`, h[:]))
}

// TakePendingSignIn implements auth.PendingSignInStore with one DELETE
// ... RETURNING: of concurrent callers, one gets the row.
func (p *Postgres) TakePendingSignIn(ctx context.Context, h auth.KeyHash) (auth.PendingSignIn, bool, error) {
	return scanPending(p.pool.QueryRow(ctx, `DELETE FROM pending_sign_ins WHERE key_hash = $1 AND done RETURNING `+pendingColumns, h[:]))
}

// TOTPSecret implements mfa.Store.
func (p *Postgres) TOTPSecret(ctx context.Context, u mfa.User) (mfa.Secret, bool, error) {
	var (
		keyID           string
		sealed          []byte
		activated, used *time.Time
		sec             = mfa.Secret{User: u}
	)
	err := p.pool.QueryRow(ctx, `SELECT enrollment_id, key_id, sealed, active, last_step, created_at, activated_at, last_used_at
		FROM totp_secrets WHERE provider = $1 AND user_name = $2`, u.Provider, u.Name).Scan(
		&sec.EnrollmentID, &keyID, &sealed, &sec.Active, &sec.LastStep, &sec.CreatedAt, &activated, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return mfa.Secret{}, false, nil
	}
	if err != nil {
		return mfa.Secret{}, false, fmt.Errorf("store: read the TOTP secret of %s: %w", u, err)
	}
	if sec.Key, err = p.seal.open(u, keyID, sealed); err != nil {
		return mfa.Secret{}, false, err
	}
	sec.ActivatedAt, sec.LastUsedAt = fromNullTime(activated), fromNullTime(used)
	return sec, true, nil
}

// CreateTOTPSecret implements mfa.Store.
func (p *Postgres) CreateTOTPSecret(ctx context.Context, sec mfa.Secret) (mfa.Secret, error) {
	keyID, sealed, err := p.seal.seal(sec.User, sec.Key)
	if err != nil {
		return mfa.Secret{}, err
	}
	_, err = p.pool.Exec(ctx, `INSERT INTO totp_secrets (provider, user_name, enrollment_id, key_id, sealed, active, last_step, created_at)
		VALUES ($1, $2, $3, $4, $5, false, 0, $6) ON CONFLICT (provider, user_name) DO NOTHING`,
		sec.User.Provider, sec.User.Name, sec.EnrollmentID, keyID, sealed, sec.CreatedAt)
	if err != nil {
		return mfa.Secret{}, fmt.Errorf("store: create the TOTP secret of %s: %w", sec.User, err)
	}
	got, ok, err := p.TOTPSecret(ctx, sec.User)
	if err == nil && !ok {
		err = fmt.Errorf("store: the TOTP secret of %s vanished as it was created", sec.User)
	}
	return got, err
}

// AcceptTOTPStep implements mfa.Store with one UPDATE: PostgreSQL locks
// the row, and a second UPDATE waiting on it re-checks last_step < $4
// against the first one's result, so only one of them succeeds.
func (p *Postgres) AcceptTOTPStep(ctx context.Context, u mfa.User, enrollmentID string, step int64, at time.Time) (bool, error) {
	tag, err := p.pool.Exec(ctx, `UPDATE totp_secrets
		SET last_step = $4, active = true, activated_at = COALESCE(activated_at, $5), last_used_at = $5
		WHERE provider = $1 AND user_name = $2 AND enrollment_id = $3 AND last_step < $4`,
		u.Provider, u.Name, enrollmentID, step, at)
	if err != nil {
		return false, fmt.Errorf("store: accept a TOTP step of %s: %w", u, err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeleteTOTPSecret implements mfa.Store.
func (p *Postgres) DeleteTOTPSecret(ctx context.Context, u mfa.User) (bool, error) {
	tag, err := p.pool.Exec(ctx, `DELETE FROM totp_secrets WHERE provider = $1 AND user_name = $2`, u.Provider, u.Name)
	if err != nil {
		return false, fmt.Errorf("store: delete the TOTP secret of %s: %w", u, err)
	}
	return tag.RowsAffected() > 0, nil
}

// TOTPFailures implements mfa.Store.
func (p *Postgres) TOTPFailures(ctx context.Context, u mfa.User) (mfa.Failures, error) {
	var (
		f      mfa.Failures
		locked *time.Time
	)
	err := p.pool.QueryRow(ctx, `SELECT failures, window_start, locked_until FROM totp_failures
		WHERE provider = $1 AND user_name = $2`, u.Provider, u.Name).Scan(&f.Count, &f.WindowStart, &locked)
	if errors.Is(err, pgx.ErrNoRows) {
		return mfa.Failures{}, nil
	}
	if err != nil {
		return mfa.Failures{}, fmt.Errorf("store: read the TOTP failures of %s: %w", u, err)
	}
	f.LockedUntil = fromNullTime(locked)
	return f, nil
}

// RecordTOTPFailure implements mfa.Store with one INSERT ... ON CONFLICT
// DO UPDATE, atomic under the row lock it takes.
func (p *Postgres) RecordTOTPFailure(ctx context.Context, u mfa.User, now time.Time, max int, window time.Duration) (mfa.Failures, error) {
	var (
		f      mfa.Failures
		locked *time.Time
	)
	// $3 now, $4 the oldest window start still counting, $5 the end of a
	// lockout starting now, $6 the failures that lock.
	err := p.pool.QueryRow(ctx, `INSERT INTO totp_failures (provider, user_name, window_start, failures, locked_until)
		VALUES ($1, $2, $3, 1, CASE WHEN 1 >= $6::integer THEN $5::timestamptz END)
		ON CONFLICT (provider, user_name) DO UPDATE SET
			window_start = CASE WHEN `+postgresFresh+` THEN $3 ELSE totp_failures.window_start END,
			failures = CASE WHEN `+postgresFresh+` THEN 1 ELSE totp_failures.failures + 1 END,
			locked_until = CASE
				WHEN totp_failures.locked_until > $3 THEN totp_failures.locked_until
				WHEN (CASE WHEN `+postgresFresh+` THEN 1 ELSE totp_failures.failures + 1 END) >= $6::integer THEN $5::timestamptz
			END
		RETURNING failures, window_start, locked_until`,
		u.Provider, u.Name, now, now.Add(-window), now.Add(window), max,
	).Scan(&f.Count, &f.WindowStart, &locked)
	if err != nil {
		return mfa.Failures{}, fmt.Errorf("store: count a TOTP failure of %s: %w", u, err)
	}
	f.LockedUntil = fromNullTime(locked)
	return f, nil
}

// postgresFresh: the stored window no longer counts, because it began too
// long ago or its lockout is over.
const postgresFresh = `(totp_failures.window_start <= $4::timestamptz OR totp_failures.locked_until <= $3::timestamptz)`

// ClearTOTPFailures implements mfa.Store.
func (p *Postgres) ClearTOTPFailures(ctx context.Context, u mfa.User) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM totp_failures WHERE provider = $1 AND user_name = $2`, u.Provider, u.Name); err != nil {
		return fmt.Errorf("store: clear the TOTP failures of %s: %w", u, err)
	}
	return nil
}

// RotateKey implements Store; see (*SQLite).RotateKey.
func (p *Postgres) RotateKey(ctx context.Context) (int, error) {
	if p.seal.current == "" {
		return 0, ErrNoKey
	}
	rows, err := p.pool.Query(ctx, `SELECT provider, user_name, key_id, sealed FROM totp_secrets WHERE key_id <> $1`, p.seal.current)
	if err != nil {
		return 0, fmt.Errorf("store: rotate key: %w", err)
	}
	old, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (sealedRow, error) {
		var r sealedRow
		err := row.Scan(&r.user.Provider, &r.user.Name, &r.keyID, &r.sealed)
		return r, err
	})
	if err != nil {
		return 0, fmt.Errorf("store: rotate key: %w", err)
	}
	n := 0
	for _, r := range old {
		keyID, sealed, err := p.seal.reseal(r)
		if err != nil {
			return n, err
		}
		tag, err := p.pool.Exec(ctx, `UPDATE totp_secrets SET key_id = $1, sealed = $2
			WHERE provider = $3 AND user_name = $4 AND key_id = $5 AND sealed = $6`,
			keyID, sealed, r.user.Provider, r.user.Name, r.keyID, r.sealed)
		if err != nil {
			return n, fmt.Errorf("store: rotate key: re-seal the secret of %s: %w", r.user, err)
		}
		if tag.RowsAffected() == 1 {
			n++
		}
	}
	return n, nil
}

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite" // the pure-Go SQLite driver, registered as "sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/mfa"
)

// sqliteBusyTimeout is how long a write waits for another connection's
// (or another process's) write to finish before failing.
const sqliteBusyTimeout = 5 * time.Second

// SQLite is the store in one SQLite file: the embedded default, for a
// single portcullis process (other processes on the same host, such as
// the `portcullis totp` commands, may use the file at the same time).
type SQLite struct {
	db   *sql.DB
	seal *sealer
	path string
	// getSignIn is the lookup of every login with a session key,
	// prepared on first use and kept: SQLite would otherwise parse it
	// each time, which was half of the lookup's cost.
	mu        sync.Mutex
	getSignIn *sql.Stmt
}

// OpenSQLite opens (creating it if needed) the SQLite file at path and
// applies the schema migrations.
func OpenSQLite(ctx context.Context, path string, keys Keys) (*SQLite, error) {
	if path == "" {
		return nil, errors.New("store: no SQLite file name")
	}
	// Readable by portcullis alone: SQLite gives its -wal and -shm files
	// the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open SQLite %s: %w", path, err)
	}
	f.Close()
	// WAL lets readers run beside a writer; every transaction takes the
	// write lock when it begins (BEGIN IMMEDIATE), so a read-then-write
	// transaction never fails half-way on an upgrade to a write lock.
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	file := "file:" + uriEscaper.Replace(path) + "?"
	if err := enableWAL(ctx, file+q.Encode(), path); err != nil {
		return nil, err
	}
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return openSQLite(ctx, file+q.Encode(), path, keys, sqliteConns(), sqliteMigrations)
}

// enableWAL puts the file in WAL mode, which the file then keeps. The
// change takes the file's exclusive lock, and a connection that finds
// another one changing it too gets SQLITE_BUSY at once rather than after
// its busy timeout: replicas, or a `portcullis totp` command beside
// serve, opening a new file together would fail. So it is made here,
// before the pool opens, on a connection of its own, and retried for as
// long as a write would wait.
func enableWAL(ctx context.Context, dsn, path string) error {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return fmt.Errorf("store: open SQLite %s: %w", path, err)
	}
	defer db.Close()
	deadline := time.Now().Add(sqliteBusyTimeout)
	for {
		var mode string
		err := db.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode)
		switch {
		case err == nil && strings.EqualFold(mode, "wal"):
			return nil
		case err == nil:
			return fmt.Errorf("store: SQLite %s: journal mode %q, not WAL", path, mode)
		case !sqliteBusy(err) || time.Now().After(deadline):
			return fmt.Errorf("store: SQLite %s: WAL mode: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store: SQLite %s: WAL mode: %w", path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// sqliteBusy reports whether err is SQLite's SQLITE_BUSY (any extended
// code of it).
func sqliteBusy(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code()&0xff == sqlite3.SQLITE_BUSY
}

// sqliteConns bounds the connections to an SQLite file, and keeps them
// open. The driver is SQLite compiled to Go: its work is CPU work in this
// process, so connections beyond the CPUs only wait — inside SQLite,
// where one that finds the write lock taken sleeps and retries — and
// opening one (its pragmas, the schema) is costly in itself. Beyond the
// bound, callers queue in database/sql instead. The bound also caps
// descriptors: SQLite on Unix cannot close a connection's descriptor
// while another connection holds a lock on the file, so it keeps it, and
// without a bound every connection once open at the same moment (one per
// concurrent login, in a burst) would stay as an open descriptor.
func sqliteConns() int { return max(2, runtime.GOMAXPROCS(0)) }

// uriEscaper writes a file name into an SQLite URI, where '%' starts an
// escape and '?' and '#' end the name.
var uriEscaper = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// OpenMemory opens a store in memory that ends with the process: for
// store.driver memory and tests. Its one connection serialises all use.
func OpenMemory(ctx context.Context, keys Keys) (*SQLite, error) {
	q := url.Values{}
	q.Set("_txlock", "immediate")
	return openSQLite(ctx, "file::memory:?"+q.Encode(), ":memory:", keys, 1, sqliteMigrations)
}

func openSQLite(ctx context.Context, dsn, path string, keys Keys, maxConns int, migrations []migration) (*SQLite, error) {
	seal, err := newSealer(keys)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open SQLite %s: %w", path, err)
	}
	if maxConns > 0 {
		db.SetMaxOpenConns(maxConns)
		db.SetMaxIdleConns(maxConns)
		// A memory database lives as long as its connection.
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
	}
	s := &SQLite{db: db, seal: seal, path: path}
	if err := s.migrate(ctx, migrations); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Path is the SQLite file (":memory:" for a memory store).
func (s *SQLite) Path() string { return s.path }

// Close implements Store.
func (s *SQLite) Close() error {
	s.mu.Lock()
	if s.getSignIn != nil {
		s.getSignIn.Close()
	}
	s.mu.Unlock()
	return s.db.Close()
}

// signInLookup is getSignIn, prepared the first time it is asked for.
func (s *SQLite) signInLookup(ctx context.Context) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.getSignIn == nil {
		stmt, err := s.db.PrepareContext(ctx, `SELECT `+signInColumns+` FROM sign_ins WHERE key_hash = ?1`)
		if err != nil {
			return nil, err
		}
		s.getSignIn = stmt
	}
	return s.getSignIn, nil
}

// Ping implements Store.
func (s *SQLite) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("store: SQLite %s: %w", s.path, err)
	}
	return nil
}

var sqliteMigrations = []migration{
	{1, "sign-ins, TOTP secrets and failure counts", []string{
		`CREATE TABLE sign_ins (
			key_hash        BLOB PRIMARY KEY,
			provider        TEXT NOT NULL,
			kind            TEXT NOT NULL,
			tenant_id       TEXT NOT NULL,
			object_id       TEXT NOT NULL,
			upn             TEXT NOT NULL,
			app_id          TEXT NOT NULL,
			display_name    TEXT NOT NULL,
			login_name      TEXT NOT NULL,
			client_addr     TEXT NOT NULL,
			signed_in_at    INTEGER NOT NULL,
			expires_at      INTEGER NOT NULL,
			home_account_id TEXT NOT NULL
		)`,
		`CREATE INDEX sign_ins_expires_at ON sign_ins (expires_at)`,
		`CREATE TABLE totp_secrets (
			provider      TEXT NOT NULL,
			user_name     TEXT NOT NULL,
			enrollment_id TEXT NOT NULL,
			key_id        TEXT NOT NULL,
			sealed        BLOB NOT NULL,
			active        INTEGER NOT NULL DEFAULT 0,
			last_step     INTEGER NOT NULL DEFAULT 0,
			created_at    INTEGER NOT NULL,
			activated_at  INTEGER,
			last_used_at  INTEGER,
			PRIMARY KEY (provider, user_name)
		)`,
		`CREATE TABLE totp_failures (
			provider     TEXT NOT NULL,
			user_name    TEXT NOT NULL,
			window_start INTEGER NOT NULL,
			failures     INTEGER NOT NULL,
			locked_until INTEGER,
			PRIMARY KEY (provider, user_name)
		)`,
	}},
	{2, "error-mode sign-ins shared by replicas", []string{
		`CREATE TABLE pending_sign_ins (
			key_hash         BLOB PRIMARY KEY,
			verification_url TEXT NOT NULL,
			user_code        TEXT NOT NULL,
			code_expires_at  INTEGER NOT NULL,
			message          TEXT NOT NULL,
			done             INTEGER NOT NULL,
			provider         TEXT NOT NULL,
			kind             TEXT NOT NULL,
			tenant_id        TEXT NOT NULL,
			object_id        TEXT NOT NULL,
			upn              TEXT NOT NULL,
			app_id           TEXT NOT NULL,
			display_name     TEXT NOT NULL,
			reason           TEXT NOT NULL,
			refusal          TEXT NOT NULL,
			expires_at       INTEGER NOT NULL
		)`,
		`CREATE INDEX pending_sign_ins_expires_at ON pending_sign_ins (expires_at)`,
	}},
	{3, "access keys", []string{
		`CREATE TABLE access_keys (
			id           TEXT PRIMARY KEY,
			key_hash     BLOB NOT NULL UNIQUE,
			provider     TEXT NOT NULL,
			for_identity TEXT NOT NULL,
			kind         TEXT NOT NULL,
			resource     TEXT NOT NULL,
			created_at   INTEGER NOT NULL,
			expires_at   INTEGER NOT NULL,
			last_used_at INTEGER,
			revoked_at   INTEGER
		)`,
	}},
	{4, "session keys a MySQL scramble can prove", []string{
		// Set only on session keys stored under their verifier; rows
		// from before stay NULL and are never listed for a scramble.
		`ALTER TABLE sign_ins ADD COLUMN scramble_user TEXT`,
		`CREATE INDEX sign_ins_scramble_user ON sign_ins (scramble_user) WHERE scramble_user IS NOT NULL`,
	}},
}

// migrate applies the migrations this database lacks, in one transaction
// that holds the write lock from its start, so processes opening the file
// at once apply each migration exactly once.
func (s *SQLite) migrate(ctx context.Context, migrations []migration) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
	}
	if err := checkVersions(applied, migrations); err != nil {
		return err
	}
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		for _, stmt := range m.statements {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("store: SQLite %s: migration %d (%s): %w", s.path, m.version, m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)`,
			m.version, m.name, time.Now().UnixMicro()); err != nil {
			return fmt.Errorf("store: SQLite %s: record migration %d: %w", s.path, m.version, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate SQLite %s: %w", s.path, err)
	}
	return nil
}

// Times are kept as microseconds since the epoch, PostgreSQL's precision.
func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(v int64) time.Time { return time.UnixMicro(v) }

func nullMicros(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

func fromNullMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMicro(v.Int64)
}

// PutSignIn implements auth.SessionStore.
func (s *SQLite) PutSignIn(ctx context.Context, h auth.KeyHash, rec auth.SignInRecord) error {
	r := toRow(rec)
	_, err := s.db.ExecContext(ctx, `INSERT INTO sign_ins (key_hash, provider, kind, tenant_id, object_id, upn, app_id,
			display_name, login_name, client_addr, signed_in_at, expires_at, home_account_id, scramble_user)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
		ON CONFLICT (key_hash) DO UPDATE SET provider = excluded.provider, kind = excluded.kind,
			tenant_id = excluded.tenant_id, object_id = excluded.object_id, upn = excluded.upn,
			app_id = excluded.app_id, display_name = excluded.display_name, login_name = excluded.login_name,
			client_addr = excluded.client_addr, signed_in_at = excluded.signed_in_at,
			expires_at = excluded.expires_at, home_account_id = excluded.home_account_id,
			scramble_user = excluded.scramble_user`,
		h[:], r.provider, r.kind, r.tenantID, r.objectID, r.upn, r.appID, r.displayName, r.loginName,
		r.clientAddr, micros(r.signedInAt), micros(r.expiresAt), r.homeAccountID, r.scrambleUser)
	if err != nil {
		return fmt.Errorf("store: put sign-in of %s: %w", rec.Identity.Name(), err)
	}
	return nil
}

// signInColumns are read back by GetSignIn and SessionKeysOf, in
// scanSignIn's order.
const signInColumns = `provider, kind, tenant_id, object_id, upn, app_id, display_name,
	login_name, client_addr, signed_in_at, expires_at, home_account_id, scramble_user`

func scanSQLiteSignIn(scan func(dest ...any) error, extra ...any) (auth.SignInRecord, error) {
	var (
		r                 signInRow
		signedIn, expires int64
	)
	dest := append([]any{&r.provider, &r.kind, &r.tenantID, &r.objectID, &r.upn, &r.appID, &r.displayName,
		&r.loginName, &r.clientAddr, &signedIn, &expires, &r.homeAccountID, &r.scrambleUser}, extra...)
	if err := scan(dest...); err != nil {
		return auth.SignInRecord{}, err
	}
	r.signedInAt, r.expiresAt = fromMicros(signedIn), fromMicros(expires)
	return r.record()
}

// GetSignIn implements auth.SessionStore.
func (s *SQLite) GetSignIn(ctx context.Context, h auth.KeyHash) (auth.SignInRecord, bool, error) {
	stmt, err := s.signInLookup(ctx)
	if err != nil {
		return auth.SignInRecord{}, false, fmt.Errorf("store: get sign-in: %w", err)
	}
	rec, err := scanSQLiteSignIn(stmt.QueryRowContext(ctx, h[:]).Scan)
	if errors.Is(err, sql.ErrNoRows) {
		return auth.SignInRecord{}, false, nil
	}
	if err != nil {
		return auth.SignInRecord{}, false, fmt.Errorf("store: get sign-in: %w", err)
	}
	return rec, true, nil
}

// SessionKeysOf implements auth.SessionStore.
func (s *SQLite) SessionKeysOf(ctx context.Context, user string, now time.Time) ([]auth.StoredSessionKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+signInColumns+`, key_hash FROM sign_ins
		WHERE scramble_user = ?1 AND expires_at > ?2 ORDER BY signed_in_at DESC`, user, micros(now))
	if err != nil {
		return nil, fmt.Errorf("store: list the session keys of %s: %w", user, err)
	}
	defer rows.Close()
	var out []auth.StoredSessionKey
	for rows.Next() {
		var h []byte
		rec, err := scanSQLiteSignIn(rows.Scan, &h)
		if err == nil && len(h) != len(auth.KeyHash{}) {
			err = fmt.Errorf("a key hash of %d bytes", len(h))
		}
		if err != nil {
			return nil, fmt.Errorf("store: list the session keys of %s: %w", user, err)
		}
		out = append(out, auth.StoredSessionKey{Verifier: auth.KeyHash(h), Record: rec})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list the session keys of %s: %w", user, err)
	}
	return out, nil
}

// DeleteSignIn implements auth.SessionStore.
func (s *SQLite) DeleteSignIn(ctx context.Context, h auth.KeyHash) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM sign_ins WHERE key_hash = ?1`, h[:]); err != nil {
		return fmt.Errorf("store: delete sign-in: %w", err)
	}
	return nil
}

// DeleteExpiredSignIns implements auth.SessionStore; it removes expired
// pending sign-ins too.
func (s *SQLite) DeleteExpiredSignIns(ctx context.Context, now time.Time) (int, error) {
	total := 0
	for _, table := range []string{"sign_ins", "pending_sign_ins"} {
		res, err := s.db.ExecContext(ctx, `DELETE FROM `+table+` WHERE expires_at <= ?1`, micros(now))
		if err != nil {
			return total, fmt.Errorf("store: delete expired %s: %w", table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("store: delete expired %s: %w", table, err)
		}
		total += int(n)
	}
	return total, nil
}

// PutPendingSignIn implements auth.PendingSignInStore.
func (s *SQLite) PutPendingSignIn(ctx context.Context, h auth.KeyHash, p auth.PendingSignIn) error {
	id := p.Identity
	_, err := s.db.ExecContext(ctx, `INSERT INTO pending_sign_ins (key_hash, verification_url, user_code, code_expires_at,
			message, done, provider, kind, tenant_id, object_id, upn, app_id, display_name, reason, refusal, expires_at)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
		ON CONFLICT (key_hash) DO UPDATE SET verification_url = excluded.verification_url,
			user_code = excluded.user_code, code_expires_at = excluded.code_expires_at, message = excluded.message,
			done = excluded.done, provider = excluded.provider, kind = excluded.kind, tenant_id = excluded.tenant_id,
			object_id = excluded.object_id, upn = excluded.upn, app_id = excluded.app_id,
			display_name = excluded.display_name, reason = excluded.reason, refusal = excluded.refusal,
			expires_at = excluded.expires_at`,
		h[:], p.Prompt.VerificationURL, p.Prompt.UserCode, micros(p.Prompt.ExpiresAt), p.Prompt.Message, p.Done,
		id.Provider, string(id.Kind), id.TenantID, id.ObjectID, id.UPN, id.AppID, id.DisplayName,
		string(p.Reason), p.Message, micros(p.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: put pending sign-in: %w", err)
	}
	return nil
}

// pendingColumns are read back by GetPendingSignIn and TakePendingSignIn.
const pendingColumns = `verification_url, user_code, code_expires_at, message, done, provider, kind, tenant_id,
	object_id, upn, app_id, display_name, reason, refusal, expires_at`

func (s *SQLite) scanPending(row *sql.Row) (auth.PendingSignIn, bool, error) {
	var (
		p                auth.PendingSignIn
		kind, reason     string
		codeExp, expires int64
	)
	err := row.Scan(&p.Prompt.VerificationURL, &p.Prompt.UserCode, &codeExp, &p.Prompt.Message, &p.Done,
		&p.Identity.Provider, &kind, &p.Identity.TenantID, &p.Identity.ObjectID, &p.Identity.UPN,
		&p.Identity.AppID, &p.Identity.DisplayName, &reason, &p.Message, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return auth.PendingSignIn{}, false, nil
	}
	if err != nil {
		return auth.PendingSignIn{}, false, fmt.Errorf("store: read pending sign-in: %w", err)
	}
	p.Identity.Kind, p.Reason = auth.Kind(kind), auth.RefusalReason(reason)
	p.Prompt.ExpiresAt, p.ExpiresAt = fromMicros(codeExp), fromMicros(expires)
	return p, true, nil
}

// GetPendingSignIn implements auth.PendingSignInStore.
func (s *SQLite) GetPendingSignIn(ctx context.Context, h auth.KeyHash) (auth.PendingSignIn, bool, error) {
	return s.scanPending(s.db.QueryRowContext(ctx, `SELECT `+pendingColumns+` FROM pending_sign_ins WHERE key_hash = ?1`, h[:]))
}

// TakePendingSignIn implements auth.PendingSignInStore with one DELETE
// ... RETURNING: of concurrent callers, one gets the row.
func (s *SQLite) TakePendingSignIn(ctx context.Context, h auth.KeyHash) (auth.PendingSignIn, bool, error) {
	return s.scanPending(s.db.QueryRowContext(ctx, `DELETE FROM pending_sign_ins WHERE key_hash = ?1 AND done <> 0 RETURNING `+pendingColumns, h[:]))
}

// TOTPSecret implements mfa.Store.
func (s *SQLite) TOTPSecret(ctx context.Context, u mfa.User) (mfa.Secret, bool, error) {
	var (
		keyID           string
		sealed          []byte
		created         int64
		activated, used sql.NullInt64
		sec             = mfa.Secret{User: u}
	)
	err := s.db.QueryRowContext(ctx, `SELECT enrollment_id, key_id, sealed, active, last_step, created_at, activated_at, last_used_at
		FROM totp_secrets WHERE provider = ?1 AND user_name = ?2`, u.Provider, u.Name).Scan(
		&sec.EnrollmentID, &keyID, &sealed, &sec.Active, &sec.LastStep, &created, &activated, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return mfa.Secret{}, false, nil
	}
	if err != nil {
		return mfa.Secret{}, false, fmt.Errorf("store: read the TOTP secret of %s: %w", u, err)
	}
	if sec.Key, err = s.seal.open(u, keyID, sealed); err != nil {
		return mfa.Secret{}, false, err
	}
	sec.CreatedAt, sec.ActivatedAt, sec.LastUsedAt = fromMicros(created), fromNullMicros(activated), fromNullMicros(used)
	return sec, true, nil
}

// CreateTOTPSecret implements mfa.Store.
func (s *SQLite) CreateTOTPSecret(ctx context.Context, sec mfa.Secret) (mfa.Secret, error) {
	keyID, sealed, err := s.seal.seal(sec.User, sec.Key)
	if err != nil {
		return mfa.Secret{}, err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO totp_secrets (provider, user_name, enrollment_id, key_id, sealed, active, last_step, created_at)
		VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6) ON CONFLICT (provider, user_name) DO NOTHING`,
		sec.User.Provider, sec.User.Name, sec.EnrollmentID, keyID, sealed, micros(sec.CreatedAt))
	if err != nil {
		return mfa.Secret{}, fmt.Errorf("store: create the TOTP secret of %s: %w", sec.User, err)
	}
	got, ok, err := s.TOTPSecret(ctx, sec.User)
	if err == nil && !ok {
		err = fmt.Errorf("store: the TOTP secret of %s vanished as it was created", sec.User)
	}
	return got, err
}

// AcceptTOTPStep implements mfa.Store: one UPDATE, which SQLite runs
// under its write lock, so concurrent callers cannot both succeed.
func (s *SQLite) AcceptTOTPStep(ctx context.Context, u mfa.User, enrollmentID string, step int64, at time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE totp_secrets
		SET last_step = ?4, active = 1, activated_at = COALESCE(activated_at, ?5), last_used_at = ?5
		WHERE provider = ?1 AND user_name = ?2 AND enrollment_id = ?3 AND last_step < ?4`,
		u.Provider, u.Name, enrollmentID, step, micros(at))
	if err != nil {
		return false, fmt.Errorf("store: accept a TOTP step of %s: %w", u, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: accept a TOTP step of %s: %w", u, err)
	}
	return n == 1, nil
}

// DeleteTOTPSecret implements mfa.Store.
func (s *SQLite) DeleteTOTPSecret(ctx context.Context, u mfa.User) (bool, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM totp_secrets WHERE provider = ?1 AND user_name = ?2`, u.Provider, u.Name)
	if err != nil {
		return false, fmt.Errorf("store: delete the TOTP secret of %s: %w", u, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: delete the TOTP secret of %s: %w", u, err)
	}
	return n > 0, nil
}

// TOTPFailures implements mfa.Store.
func (s *SQLite) TOTPFailures(ctx context.Context, u mfa.User) (mfa.Failures, error) {
	var (
		f      mfa.Failures
		start  int64
		locked sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT failures, window_start, locked_until FROM totp_failures
		WHERE provider = ?1 AND user_name = ?2`, u.Provider, u.Name).Scan(&f.Count, &start, &locked)
	if errors.Is(err, sql.ErrNoRows) {
		return mfa.Failures{}, nil
	}
	if err != nil {
		return mfa.Failures{}, fmt.Errorf("store: read the TOTP failures of %s: %w", u, err)
	}
	f.WindowStart, f.LockedUntil = fromMicros(start), fromNullMicros(locked)
	return f, nil
}

// RecordTOTPFailure implements mfa.Store with one upsert, atomic under
// SQLite's write lock.
func (s *SQLite) RecordTOTPFailure(ctx context.Context, u mfa.User, now time.Time, max int, window time.Duration) (mfa.Failures, error) {
	var (
		f      mfa.Failures
		start  int64
		locked sql.NullInt64
	)
	// ?3 now, ?4 the oldest window start still counting, ?5 the end of a
	// lockout starting now, ?6 the failures that lock.
	err := s.db.QueryRowContext(ctx, `INSERT INTO totp_failures (provider, user_name, window_start, failures, locked_until)
		VALUES (?1, ?2, ?3, 1, CASE WHEN 1 >= ?6 THEN ?5 END)
		ON CONFLICT (provider, user_name) DO UPDATE SET
			window_start = CASE WHEN `+sqliteFresh+` THEN ?3 ELSE totp_failures.window_start END,
			failures = CASE WHEN `+sqliteFresh+` THEN 1 ELSE totp_failures.failures + 1 END,
			locked_until = CASE
				WHEN totp_failures.locked_until > ?3 THEN totp_failures.locked_until
				WHEN (CASE WHEN `+sqliteFresh+` THEN 1 ELSE totp_failures.failures + 1 END) >= ?6 THEN ?5
			END
		RETURNING failures, window_start, locked_until`,
		u.Provider, u.Name, micros(now), micros(now.Add(-window)), micros(now.Add(window)), max,
	).Scan(&f.Count, &start, &locked)
	if err != nil {
		return mfa.Failures{}, fmt.Errorf("store: count a TOTP failure of %s: %w", u, err)
	}
	f.WindowStart, f.LockedUntil = fromMicros(start), fromNullMicros(locked)
	return f, nil
}

// sqliteFresh: the stored window no longer counts, because it began too
// long ago or its lockout is over.
const sqliteFresh = `(totp_failures.window_start <= ?4 OR (totp_failures.locked_until IS NOT NULL AND totp_failures.locked_until <= ?3))`

// ClearTOTPFailures implements mfa.Store.
func (s *SQLite) ClearTOTPFailures(ctx context.Context, u mfa.User) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM totp_failures WHERE provider = ?1 AND user_name = ?2`, u.Provider, u.Name); err != nil {
		return fmt.Errorf("store: clear the TOTP failures of %s: %w", u, err)
	}
	return nil
}

// RotateKey implements Store. Each secret is re-sealed with a
// compare-and-set on its old sealed value, so a secret reset or replaced
// meanwhile is left alone.
func (s *SQLite) RotateKey(ctx context.Context) (int, error) {
	if s.seal.current == "" {
		return 0, ErrNoKey
	}
	rows, err := s.db.QueryContext(ctx, `SELECT provider, user_name, key_id, sealed FROM totp_secrets WHERE key_id <> ?1`, s.seal.current)
	if err != nil {
		return 0, fmt.Errorf("store: rotate key: %w", err)
	}
	var old []sealedRow
	for rows.Next() {
		var r sealedRow
		if err := rows.Scan(&r.user.Provider, &r.user.Name, &r.keyID, &r.sealed); err != nil {
			rows.Close()
			return 0, fmt.Errorf("store: rotate key: %w", err)
		}
		old = append(old, r)
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("store: rotate key: %w", err)
	}
	n := 0
	for _, r := range old {
		keyID, sealed, err := s.seal.reseal(r)
		if err != nil {
			return n, err
		}
		res, err := s.db.ExecContext(ctx, `UPDATE totp_secrets SET key_id = ?1, sealed = ?2
			WHERE provider = ?3 AND user_name = ?4 AND key_id = ?5 AND sealed = ?6`,
			keyID, sealed, r.user.Provider, r.user.Name, r.keyID, r.sealed)
		if err != nil {
			return n, fmt.Errorf("store: rotate key: re-seal the secret of %s: %w", r.user, err)
		}
		if k, _ := res.RowsAffected(); k == 1 {
			n++
		}
	}
	return n, nil
}

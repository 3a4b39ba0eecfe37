//! Durable truth of backfill runs: runs, partitions, checkpoints and the audit chain.
//!
//! Owns: the state store schema and its migrations, every SQL statement that touches it, the
//! fencing of partition attempts and the hash-chained audit log. Today the store is a SQLite
//! file ([`Store::open`]); the SQL is kept portable so a PostgreSQL store can follow.
//!
//! Deliberately does not: decide *which* transition to make (the engine does, using
//! [`backfill_core::state`]), talk to sources or sinks, or run partitions. It only refuses what
//! the state machines forbid and records what happened.
//!
//! Invariants:
//! - A stale attempt can never move a checkpoint or finish a partition: every attempt-scoped
//!   write is fenced by the attempt number returned from [`Store::start_attempt`], and a write
//!   carrying an older number fails with [`StoreError::StaleAttempt`] having changed nothing.
//! - Every state change of a run or partition is an audit event appended in the same
//!   transaction as the change, so neither exists without the other.
//! - The audit chain breaks ([`Store::verify_audit`]) if any event is edited, removed from the
//!   middle or reordered: each event's hash covers its content and the previous event's hash.
//! - Passwords in error texts and audit details are masked with [`backfill_core::secret::redact`]
//!   before they are stored.
//! - A store written by a newer build is refused rather than misread.

mod audit;
mod codec;
mod error;
mod migrate;
mod partitions;
mod runs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit::{AuditCheck, AuditEvent};
pub use error::StoreError;
pub use partitions::{Outcome, PartitionRecord};
pub use runs::{NewRun, RunRecord};

/// A handle on one state store. Cheap to clone; every clone shares the connection pool.
///
/// All writes that change a state run in `BEGIN IMMEDIATE` transactions, so concurrent writers
/// queue on SQLite's write lock (waiting up to 30 s) instead of failing with a lock-upgrade
/// deadlock.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    url_redacted: String,
    path: Option<PathBuf>,
    /// Serialises this process's writers before they reach SQLite's write lock. Without it,
    /// concurrent workers collide on `BEGIN IMMEDIATE` and SQLite's busy handler makes the
    /// losers sleep for whole milliseconds; queueing here costs microseconds. Other processes
    /// still queue on SQLite's lock.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction holding this process's write gate until it commits or drops.
pub(crate) struct WriteTxn {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTxn {
    /// Commits, then releases the gate.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTxn {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTxn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// How long a connection waits for SQLite's write lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (creating if missing, with its parent directories) the SQLite state store at
    /// `url` and brings its schema up to date.
    ///
    /// Accepts `sqlite://path`, `sqlite:path`, a bare file path, or `sqlite::memory:` (one
    /// connection, gone on close; for tests). The file is put in WAL mode with foreign keys
    /// on. Fails with [`StoreError::NewerSchema`] when the file was written by a newer build,
    /// and with [`StoreError::Open`] (URL redacted) when it cannot be opened.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let url_redacted = backfill_core::secret::redact(url);
        let open_err = |message: String| StoreError::Open {
            url: url_redacted.clone(),
            message: backfill_core::secret::redact(&message),
        };
        let target = parse_url(url).map_err(open_err)?;

        // WAL with `synchronous = NORMAL`: a commit survives a killed process (SIGKILL, OOM)
        // without waiting for an fsync; only a power loss or OS crash can drop the last
        // commits, and then the state change and its audit event go together (same
        // transaction) and a lost checkpoint only means an idempotent batch is replayed. The
        // target keeps `synchronous = FULL`, so a checkpoint is never ahead of the target.
        let base = SqliteConnectOptions::new()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .create_if_missing(true);
        let (options, pool_options, path) = match &target {
            Target::Memory => (
                base.in_memory(true),
                // An in-memory database lives and dies with its one connection.
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None),
                None,
            ),
            Target::File(file) => {
                if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        open_err(format!("cannot create directory {}: {e}", parent.display()))
                    })?;
                }
                (
                    base.filename(file),
                    SqlitePoolOptions::new().max_connections(8),
                    Some(file.clone()),
                )
            }
        };
        let pool = pool_options
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        // Canonicalise once the file exists, so two spellings of one file compare equal.
        let path = path.map(|p| std::fs::canonicalize(&p).unwrap_or(p));

        let store = Store {
            pool,
            url_redacted,
            path,
            write_gate: Default::default(),
        };
        if let Err(e) = migrate::run(&store.pool).await {
            store.pool.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The URL this store was opened with, any password masked. Safe to log.
    pub fn url_redacted(&self) -> String {
        self.url_redacted.clone()
    }

    /// The canonical path of the SQLite file, or `None` for an in-memory store. Compare it with
    /// a target's canonical path to detect "the state store is the target database", where a
    /// batch and its checkpoint must commit in one transaction
    /// ([`Store::checkpoint_statement`]).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.path.clone()
    }

    /// Waits for in-flight statements and closes every connection. Later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction that holds SQLite's write lock from its first statement.
    pub(crate) async fn begin_write(&self) -> Result<WriteTxn, StoreError> {
        let gate = self.write_gate.clone().lock_owned().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTxn { tx, _gate: gate })
    }

    /// Holds this process's write gate for a single-statement write outside a transaction.
    pub(crate) async fn write_gate(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.write_gate.clone().lock_owned().await
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

enum Target {
    Memory,
    File(PathBuf),
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else if url.contains("://") {
        return Err("the state store must be a SQLite file (`sqlite://path` or a path)".into());
    } else {
        url
    };
    // Connection parameters (`?mode=rwc`) are ours to choose; ignore any given.
    let rest = rest.split('?').next().unwrap_or_default();
    if rest == ":memory:" {
        return Ok(Target::Memory);
    }
    if rest.is_empty() {
        return Err("the state store URL names no file".into());
    }
    Ok(Target::File(Path::new(rest).to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let file = |u: &str| match parse_url(u) {
            Ok(Target::File(p)) => p.display().to_string(),
            Ok(Target::Memory) => ":memory:".into(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(file("sqlite://a/b.db"), "a/b.db");
        assert_eq!(file("sqlite:///abs/b.db"), "/abs/b.db");
        assert_eq!(file("sqlite:b.db?mode=rwc"), "b.db");
        assert_eq!(file(".backfill/state.db"), ".backfill/state.db");
        assert_eq!(file("sqlite::memory:"), ":memory:");
        assert!(file("postgres://u:p@h/db").starts_with("error:"));
        assert!(file("sqlite://").starts_with("error:"));
    }
}

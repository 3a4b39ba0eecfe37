//! The one error type of every connector, with its retry class.
//!
//! Owns: turning driver failures into four database-neutral kinds the engine can act on, and
//! deciding for each whether another attempt may help ([`ConnectorError::class`]).
//! Does not: retry, log or render hints; the engine and the CLI do.
//!
//! Invariant: no message carries a password. URLs are stored redacted and driver messages pass
//! through [`backfill_core::secret::redact`] before they are stored here.

use backfill_core::retry::ErrorClass;

/// Why a connector call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The database could not be reached or opened (missing SQLite file, refused connection,
    /// bad credentials). Transient: a database that is restarting comes back; a missing file
    /// is reported when the connector is opened, before any retry loop.
    #[error("cannot open {url}: {message}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// What the driver said, password masked; names the file or host.
        message: String,
    },
    /// A statement failed in the database.
    #[error("{context} failed: {message}")]
    Sql {
        /// What was being done, e.g. `source query` or `upsert into "t"`.
        context: String,
        /// The database's message, password masked.
        message: String,
        /// Whether another attempt may succeed (busy, locked, I/O) or not (syntax, constraint).
        class: ErrorClass,
    },
    /// A column the write needs is not there: a key column the source query does not return,
    /// or a source column the target table does not have.
    #[error("column \"{column}\" not found in {table} (available: {})", available.join(", "))]
    MissingColumn {
        /// The column that was looked for.
        column: String,
        /// The columns that exist there.
        available: Vec<String>,
        /// Where it was looked for: `source query` or `target table "t"`.
        table: String,
    },
    /// The database stopped answering in the middle of a call: connection lost or refused,
    /// pool timed out, server shutting down or restarting. Transient: retried with backoff
    /// until the database is back. Unlike [`ConnectorError::Sql`] it does not count against
    /// the circuit breaker, which guards against a database that answers with errors.
    #[error("{context} failed: the database is unavailable: {message}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// What the driver said, password masked.
        message: String,
    },
    /// A value or row the connector refuses to move (a NULL key, a column name that is not a
    /// plain identifier, text that is not UTF-8).
    #[error("{message}")]
    Data {
        /// What is wrong and where (column, key), with values previewed, never in full.
        message: String,
    },
}

impl ConnectorError {
    /// Whether the engine should try the partition again. Only `Connect` and some `Sql` errors
    /// are transient; missing columns and bad data fail the same way every time.
    pub fn class(&self) -> ErrorClass {
        match self {
            ConnectorError::Connect { .. } | ConnectorError::Unavailable { .. } => {
                ErrorClass::Transient
            }
            ConnectorError::Sql { class, .. } => *class,
            ConnectorError::MissingColumn { .. } | ConnectorError::Data { .. } => {
                ErrorClass::Permanent
            }
        }
    }
}

impl ConnectorError {
    /// True when the database could not be reached at all (rather than answering with an
    /// error): a restart or an outage, which backoff waits out.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ConnectorError::Connect { .. } | ConnectorError::Unavailable { .. }
        )
    }
}

/// Whether a sqlx error means the connection is gone or cannot be had (any database).
pub(crate) fn lost_connection(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// Rows are read in key order: a source without key columns (possible in `sql` mode, which
/// reads none) refuses to read, naming the fix.
pub(crate) fn require_key(key: &[String]) -> Result<(), ConnectorError> {
    if key.is_empty() {
        return Err(ConnectorError::Data {
            message: "a source needs at least one key column to read in order; set `target.key`"
                .to_owned(),
        });
    }
    Ok(())
}

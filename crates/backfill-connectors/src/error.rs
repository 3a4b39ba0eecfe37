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
            ConnectorError::Connect { .. } => ErrorClass::Transient,
            ConnectorError::Sql { class, .. } => *class,
            ConnectorError::MissingColumn { .. } | ConnectorError::Data { .. } => {
                ErrorClass::Permanent
            }
        }
    }
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

//! The one error type of the store, and which of its errors are worth retrying.

/// Everything that can go wrong in the state store.
///
/// No variant carries a password: URLs and driver messages are redacted before they get here.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no state store this build can open (another scheme, no file name, a bad
    /// `schema=` parameter, a malformed PostgreSQL URL): the user's input is wrong.
    #[error("invalid state store URL {url}: {message}")]
    InvalidUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The state store's server cannot be reached (connection refused, unknown host, timed
    /// out): the URL may be right and the server down.
    #[error("cannot reach the state store {url}: {message}")]
    Unreachable {
        /// The URL, password masked.
        url: String,
        /// What the driver said, password masked.
        message: String,
    },
    /// The store was reached but could not be opened (login refused, unknown database,
    /// unwritable directory, a file that is not a database).
    #[error("cannot open the state store {url}: {message}")]
    Open {
        /// The URL, password masked.
        url: String,
        /// What went wrong, password masked.
        message: String,
    },
    /// No run or partition matches what was asked for (e.g. "no run matches `abc`").
    #[error("{0}")]
    NotFound(String),
    /// A run id prefix matches several runs.
    #[error("{0}")]
    Ambiguous(String),
    /// The state machine forbids the requested move; nothing was changed.
    #[error("{what} cannot move from {from} to {to}")]
    IllegalTransition {
        /// What tried to move (`run 0190…`, `partition p1a2b…`).
        what: String,
        /// Its stored state.
        from: String,
        /// The requested state.
        to: String,
    },
    /// Fencing: the attempt number is no longer current (another attempt started, or the
    /// partition was reset); nothing was changed and the caller must stop working on it.
    #[error("attempt on partition {partition_id} is stale: another attempt owns it now")]
    StaleAttempt {
        /// The partition whose attempt was superseded.
        partition_id: String,
    },
    /// Fencing: another process claimed the resource (a run) since this handle's lease was
    /// granted; nothing was changed and the caller must stop writing.
    #[error(
        "lost the claim on {resource}: another process claimed it after claim {fence}; \
         this process stops writing"
    )]
    LeaseLost {
        /// The resource (`run:<id>`).
        resource: String,
        /// The fence number this handle held.
        fence: u64,
    },
    /// The store was written by a newer build of backfill; it is not touched.
    #[error(
        "the state store has schema version {found}, but this build knows only up to {known}; \
         upgrade backfill"
    )]
    NewerSchema {
        /// The version found in the store.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The database reported an error.
    #[error("state store error: {}", describe(.0))]
    Database(#[from] sqlx::Error),
    /// A stored value cannot be read back (unknown state, bad timestamp, bad checkpoint).
    #[error("the state store is corrupt: {0}")]
    Corrupt(String),
}

/// SQLite's primary result codes for "another connection holds the lock".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

/// PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock detected, too many
/// connections, admin / crash shutdown, cannot connect now. Class `08` (connection exceptions)
/// is matched separately.
const PG_TRANSIENT: &[&str] = &["40001", "40P01", "53300", "57P01", "57P02", "57P03"];

impl StoreError {
    /// True when retrying the same call later may succeed: the database was busy or locked
    /// (SQLite), a transaction lost a serialization conflict or a deadlock, the server is
    /// shutting down or out of connection slots (PostgreSQL), a connection or I/O error
    /// occurred, or no connection became free in time.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    let code = pg.code();
                    code.starts_with("08") || PG_TRANSIENT.contains(&code)
                } else {
                    is_sqlite_busy(e)
                }
            }
            _ => false,
        }
    }
}

/// True when `e` is SQLite's "database is busy / locked": another connection holds a lock.
pub(crate) fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i64>().ok())
        // Extended codes keep the primary code in the low byte (SQLITE_BUSY_SNAPSHOT…).
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

/// A driver error for people: PostgreSQL's own message, detail and hint, without the server
/// source line sqlx appends (`… at line 2090`); other errors as the driver prints them.
pub(crate) fn describe(e: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = e else {
        return e.to_string();
    };
    let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return e.to_string();
    };
    let mut out = pg.message().to_owned();
    for (label, part) in [("detail", pg.detail()), ("hint", pg.hint())] {
        if let Some(part) = part {
            out.push_str(&format!("; {label}: {}", part.trim_end_matches('.')));
        }
    }
    out
}

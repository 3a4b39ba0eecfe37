//! Engine errors and their classification.

use backfill_connectors::ConnectorError;
use backfill_core::FieldChange;
use backfill_core::retry::ErrorClass;
use backfill_store::StoreError;

/// Why a run could not be started or continued. Errors of single partitions are not here: they
/// are retried or recorded on the partition, and the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The spec cannot be planned.
    #[error("cannot plan the spec: {0}")]
    Plan(#[from] backfill_core::plan::PlanError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// A source or target could not be opened or checked.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// An `upsert` or `replace` spec without a source (only a spec built in code can be: the
    /// parser refuses it).
    #[error("`{mode}` mode needs a source to read rows from; only `sql` mode can do without")]
    NoSource {
        /// The write mode.
        mode: &'static str,
    },
    /// The run has no reason.
    #[error("a run needs a reason")]
    NoReason,
    /// The spec no longer plans what an unfinished run was made from (see
    /// [`crate::check_same_plan`]).
    #[error("{}", plan_changed(.run_id, .spec, .stored, .current, .changes.as_deref()))]
    PlanChanged {
        /// The unfinished run.
        run_id: String,
        /// Spec name.
        spec: String,
        /// Plan hash of the stored run.
        stored: String,
        /// Plan hash of the spec now.
        current: String,
        /// Each changed field with its old and new value (never a password); `None` when the
        /// run was created before its normalised spec was stored, so only the hashes are
        /// known.
        changes: Option<Vec<FieldChange>>,
    },
    /// Another process holds the run's claim (it is executing the run); nothing was done.
    #[error(
        "run {run_id} is being executed by another process (pid {pid} on {host}, since {since})"
    )]
    Held {
        /// The run.
        run_id: String,
        /// The holder's host.
        host: String,
        /// The holder's process id.
        pid: u64,
        /// When it claimed the run.
        since: chrono::DateTime<chrono::Utc>,
        /// When its claim lapses unless it renews it.
        expires_at: chrono::DateTime<chrono::Utc>,
    },
    /// A shadow write could not ready its shadow table (see [`crate::shadow`]).
    #[error(transparent)]
    Shadow(#[from] crate::shadow::ShadowError),
    /// The run is in a state that cannot be continued.
    #[error("run {run_id} is {state}; {hint}")]
    NotResumable {
        /// The run.
        run_id: String,
        /// Its state.
        state: String,
        /// What to do instead.
        hint: String,
    },
    /// A resumed run began with an undo log, and the spec now asks for `partition_exchange`,
    /// which keeps none: continuing would leave a rollback that restores only part of it.
    #[error(
        "run {run_id} began with an undo log, and `partition_exchange` keeps none, so its \
         rollback would restore only part of it"
    )]
    UndoKept {
        /// The run.
        run_id: String,
    },
    /// An explicit `[validate]` could not be set up (an unknown or float column, a
    /// database unreachable for the comparison).
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
}

/// The text of [`EngineError::PlanChanged`]: one line naming every changed field, or both
/// plan hashes when the fields are unknown.
fn plan_changed(
    run_id: &str,
    spec: &str,
    stored: &str,
    current: &str,
    changes: Option<&[FieldChange]>,
) -> String {
    let head = format!("run {run_id} of spec `{spec}` was planned from a different spec");
    match changes {
        Some(changes) => {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            format!("{head}: {}", list.join("; "))
        }
        None => format!(
            "{head} (plan {stored} then, {current} now); it was created by a backfill version \
             that did not record the fields a plan covers, so the changed ones cannot be named"
        ),
    }
}

/// An error inside one partition attempt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The partition's lease was lost (another process took it): stop without writing.
    #[error("attempt is stale: another process owns this partition now")]
    Stale,
    /// A stop was requested; the partition stays resumable.
    #[error("interrupted")]
    Interrupted,
    /// The partition runs far longer than the others (`limits.split_slow`): split it.
    #[error("split requested")]
    SplitRequested,
}

impl AttemptError {
    /// True when a database (source, target or state store) could not be reached, rather
    /// than answering with an error: an outage or restart that backoff waits out, and that
    /// must not open the circuit breaker.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            AttemptError::Connector(e) => e.is_unavailable(),
            AttemptError::Store(e) => e.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            AttemptError::Connector(e) => e.class(),
            AttemptError::Store(e) if e.is_transient() => ErrorClass::Transient,
            AttemptError::Store(_)
            | AttemptError::Stale
            | AttemptError::Interrupted
            | AttemptError::SplitRequested => ErrorClass::Permanent,
        }
    }
}

//! `backfill rollback RUN` and `backfill cleanup RUN` (issue 11): restoring a run's scope
//! from its undo log, and dropping the log.
//!
//! Owns the order of a rollback: claim the run's lease (as `resume` would; refused while
//! another process executes or rolls back the run, and while it is held no `resume` can
//! start), refuse when it has no undo rows; audit `rollback.started`; roll back each partition that has
//! undo rows in its own target transaction (`backfill_connectors::undo`), audited as
//! `rollback.partition` with its counts and conflicting keys; audit `rollback.finished`
//! with the totals. A dry run audits nothing and changes nothing (each partition's
//! transaction is rolled back).
//!
//! Resumable: the log marks each row `restored` or `conflict` in the restore's own
//! transaction, so a killed rollback, run again, skips what it finished and ends the same.
//! Progress therefore lives in the target with the data, not in the state store.
//!
//! The claim is renewed in the background and released at the end; a dry run changes
//! nothing, so it only refuses while the run is held and does not claim it. `cleanup` claims
//! the run the same way while it drops the log.
//!
//! Does not: print (the caller gets a callback per partition), or stop a new run of the same
//! spec (another run id) from starting while it rolls back.

use backfill_connectors::{ConnectorError, RollbackCounts, UndoBatch, UndoTarget};
use backfill_core::Spec;
use backfill_store::{RunRecord, Store, StoreError, run_resource};
use serde_json::json;

use crate::claim::{KeptClaim, claim_run};
use crate::{EngineError, Shutdown};

/// How long a rollback's or cleanup's claim on the run lasts unless renewed (it is renewed
/// every third of it while the work goes on).
const CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a rollback or cleanup did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The target or its undo log failed.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// The run is being executed or rolled back by another process (its lease is live).
    #[error(
        "run {run_id} is held by another process (pid {pid} on {host}): it is executing or \
         being rolled back, and this would race its writes"
    )]
    Executing {
        /// The run.
        run_id: String,
        /// Its executing process.
        pid: u64,
        /// Its host.
        host: String,
    },
    /// The run's claim could not be taken, or was lost to another process midway.
    #[error("claim on run {run_id}: {message}")]
    Claim {
        /// The run.
        run_id: String,
        /// What went wrong.
        message: String,
    },
    /// The run has no undo rows (`undo = false`, `sql` mode, or already cleaned up).
    #[error("run {run_id} has no undo data in {table}")]
    NoUndo {
        /// The run.
        run_id: String,
        /// The undo table looked in.
        table: String,
    },
}

impl RollbackError {
    /// True when the user's input (which run) is the problem, not the work.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            RollbackError::Executing { .. } | RollbackError::NoUndo { .. }
        )
    }
}

/// How to roll back.
#[derive(Clone, Debug)]
pub struct RollbackOptions {
    /// Who asks (recorded in the audit events).
    pub actor: String,
    /// Overwrite rows changed by someone else since the run wrote them.
    pub force: bool,
    /// Compute and report, change nothing.
    pub dry_run: bool,
}

/// One partition rolled back.
#[derive(Clone, Debug)]
pub struct PartitionRollback {
    /// The partition.
    pub partition_id: String,
    /// Its position among the partitions with undo rows, from 1.
    pub index: usize,
    /// How many partitions have undo rows.
    pub total: usize,
    /// What it did.
    pub counts: RollbackCounts,
}

/// What a whole rollback did.
#[derive(Clone, Debug, Default)]
pub struct RollbackSummary {
    /// Partitions with undo rows.
    pub partitions: u64,
    /// Keys the run inserted, deleted again.
    pub deleted: u64,
    /// Keys whose before-image was restored.
    pub restored: u64,
    /// Keys left as they are because someone else changed them.
    pub conflicts: u64,
    /// A sample of the conflicting keys: (partition, key).
    pub conflict_keys: Vec<(String, String)>,
}

/// The undo table of `spec`'s target, for messages.
fn undo_table(spec: &Spec) -> String {
    backfill_connectors::undo::undo_table_name(spec.target.table.as_deref().unwrap_or("?"))
}

/// Claims `run` for this process (see the module doc), or says who holds it.
async fn claim(store: &Store, run: &RunRecord) -> Result<KeptClaim, RollbackError> {
    match claim_run(store, &run.id, CLAIM_TTL, false, &Shutdown::new()).await {
        Ok((lease, _)) => Ok(KeptClaim::keep(store, lease)),
        Err(EngineError::Held { host, pid, .. }) => Err(RollbackError::Executing {
            run_id: run.id.clone(),
            pid,
            host,
        }),
        Err(e) => Err(RollbackError::Claim {
            run_id: run.id.clone(),
            message: e.to_string(),
        }),
    }
}

/// True when `run` inserted, updated and deleted no row.
async fn wrote_nothing(store: &Store, run: &RunRecord) -> Result<bool, RollbackError> {
    let counts = store.partition_totals(&run.id).await?.counts;
    Ok(counts.inserted == 0 && counts.updated == 0 && counts.deleted == 0)
}

/// Refuses while another process holds `run` (for a dry run, which writes nothing).
async fn refuse_executing(store: &Store, run: &RunRecord) -> Result<(), RollbackError> {
    if let Some(holder) = store.lease_holder(&run_resource(&run.id)).await?
        && !holder.is_free(chrono::Utc::now())
    {
        return Err(RollbackError::Executing {
            run_id: run.id.clone(),
            pid: holder.pid,
            host: holder.host,
        });
    }
    Ok(())
}

/// Restores `run`'s scope from its undo log (see the module doc); `progress` is called
/// after each partition.
pub async fn rollback(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    options: &RollbackOptions,
    mut progress: impl FnMut(&PartitionRollback),
) -> Result<RollbackSummary, RollbackError> {
    let kept = if options.dry_run {
        refuse_executing(store, run).await?;
        None
    } else {
        Some(claim(store, run).await?)
    };
    let result = match UndoTarget::open(&spec.target).await {
        Ok(target) => {
            let result = rollback_on(
                store,
                &target,
                spec,
                run,
                options,
                kept.as_ref(),
                &mut progress,
            )
            .await;
            target.close().await;
            result
        }
        Err(e) => Err(e.into()),
    };
    if let Some(kept) = kept {
        kept.release().await;
    }
    result
}

async fn rollback_on(
    store: &Store,
    target: &UndoTarget,
    spec: &Spec,
    run: &RunRecord,
    options: &RollbackOptions,
    kept: Option<&KeptClaim>,
    progress: &mut impl FnMut(&PartitionRollback),
) -> Result<RollbackSummary, RollbackError> {
    let partitions = target.partitions(&run.id).await?;
    let logged = run.keeps_undo(spec.target.undo);
    if partitions.is_empty() && logged && wrote_nothing(store, run).await? {
        // PostgreSQL logs only the rows a write changed: a run that changed none has no undo
        // rows, and nothing to roll back.
        return Ok(RollbackSummary::default());
    }
    if partitions.is_empty() {
        return Err(RollbackError::NoUndo {
            run_id: run.id.clone(),
            table: undo_table(spec),
        });
    }
    let audit = !options.dry_run;
    // A dry run changes nothing, the log's indexes included: it reads the log per partition.
    if audit {
        target.index_partitions().await?;
    }
    let result =
        rollback_partitions(store, target, run, &partitions, options, kept, progress).await;
    if audit && let Err(e) = target.drop_partition_index().await {
        tracing::warn!(error = %e, "could not drop the undo log's rollback index");
    }
    result
}

/// Rolls back `partitions` of `run` in order, auditing each, and reports progress.
async fn rollback_partitions(
    store: &Store,
    target: &UndoTarget,
    run: &RunRecord,
    partitions: &[String],
    options: &RollbackOptions,
    kept: Option<&KeptClaim>,
    progress: &mut impl FnMut(&PartitionRollback),
) -> Result<RollbackSummary, RollbackError> {
    let audit = !options.dry_run;
    let (actor, force) = (options.actor.as_str(), options.force);
    if audit {
        let detail = json!({ "partitions": partitions.len(), "force": force });
        store
            .record_action(&run.id, None, actor, "rollback.started", detail)
            .await?;
    }
    let mut summary = RollbackSummary {
        partitions: partitions.len() as u64,
        ..RollbackSummary::default()
    };
    for (i, partition_id) in partitions.iter().enumerate() {
        if kept.is_some_and(KeptClaim::lost) {
            return Err(RollbackError::Claim {
                run_id: run.id.clone(),
                message: "this process's claim lapsed (it stalled, or the state store was \
                          unreachable, past its lease) and another process may hold the run; \
                          run `backfill rollback` again to finish"
                    .to_owned(),
            });
        }
        let batch = UndoBatch {
            run_id: run.id.clone(),
            partition_id: partition_id.clone(),
            every_key: false,
        };
        let counts = target
            .rollback_partition(&batch, force, options.dry_run)
            .await?;
        if audit {
            let detail = json!({
                "deleted": counts.deleted,
                "restored": counts.restored,
                "conflicts": counts.conflicts,
                "conflict_keys": counts.conflict_keys,
                "force": force,
            });
            store
                .record_action(
                    &run.id,
                    Some(partition_id),
                    actor,
                    "rollback.partition",
                    detail,
                )
                .await?;
        }
        summary.deleted += counts.deleted;
        summary.restored += counts.restored;
        summary.conflicts += counts.conflicts;
        summary.conflict_keys.extend(
            counts
                .conflict_keys
                .iter()
                .map(|k| (partition_id.clone(), k.clone())),
        );
        progress(&PartitionRollback {
            partition_id: partition_id.clone(),
            index: i + 1,
            total: partitions.len(),
            counts,
        });
    }
    if audit {
        let detail = json!({
            "partitions": summary.partitions,
            "deleted": summary.deleted,
            "restored": summary.restored,
            "conflicts": summary.conflicts,
            "force": force,
        });
        store
            .record_action(&run.id, None, actor, "rollback.finished", detail)
            .await?;
    }
    Ok(summary)
}

/// Drops `run`'s undo rows (refused while it executes), audited as `undo.cleaned`; returns
/// how many rows went. A run without undo rows is not an error: nothing to clean.
pub async fn cleanup(
    store: &Store,
    spec: &Spec,
    run: &RunRecord,
    actor: &str,
) -> Result<u64, RollbackError> {
    if spec.target.table.is_none() {
        refuse_executing(store, run).await?;
        return Ok(0);
    }
    let kept = claim(store, run).await?;
    let dropped = match UndoTarget::open(&spec.target).await {
        Ok(target) => {
            let dropped = target.drop_run(&run.id).await;
            target.close().await;
            dropped
        }
        Err(e) => Err(e),
    };
    kept.release().await;
    let dropped = dropped?;
    store
        .record_action(
            &run.id,
            None,
            actor,
            "undo.cleaned",
            json!({ "rows": dropped, "table": undo_table(spec) }),
        )
        .await?;
    Ok(dropped)
}

/// Rows of `run` in its target's undo log (0 without one), for `status`.
pub async fn undo_size(spec: &Spec, run: &RunRecord) -> Result<u64, RollbackError> {
    if !run.keeps_undo(spec.target.undo) || spec.target.table.is_none() {
        return Ok(0);
    }
    let target = UndoTarget::open(&spec.target).await?;
    let size = target.size(&run.id).await;
    target.close().await;
    Ok(size)
}

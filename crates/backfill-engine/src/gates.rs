//! Issue 11's gates seen from outside a run: which partitions of a plan the source is not
//! ready for (`plan`), and the canary's choice of partitions.
//!
//! The run's own gates live where they act: `execute::ready` waits for the source inside a
//! worker, `canary` runs the canary pass and the approval wait in `session::drive`.

use std::sync::Arc;

use backfill_connectors::{AnySource, ConnectorError, open_source};
use backfill_core::plan::Plan;
use backfill_core::{Partition, Spec};
use tokio::task::JoinSet;

/// At most this many partitions are checked by [`source_readiness`]; `plan` says so when the
/// plan has more.
pub const READINESS_CHECK_CAP: usize = 1000;

/// Ready queries in flight at once while planning.
const READINESS_CONCURRENCY: usize = 4;

/// What `source.ready` says about a plan's partitions.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Partitions checked (the first [`READINESS_CHECK_CAP`] in plan order).
    pub checked: usize,
    /// Partitions of the plan.
    pub total: usize,
    /// The checked partitions the source is not ready for, in plan order.
    pub not_ready: Vec<Partition>,
}

/// Runs `source.ready` for the plan's first [`READINESS_CHECK_CAP`] partitions, a few at a
/// time; `None` when the spec has no ready query. A failing ready query is the error (its
/// message names `source.ready`).
pub async fn source_readiness(
    spec: &Spec,
    plan: &Plan,
) -> Result<Option<Readiness>, ConnectorError> {
    let Some(source_spec) = &spec.source else {
        return Ok(None);
    };
    let Some(check) = &source_spec.ready else {
        return Ok(None);
    };
    let source = Arc::new(open_source(source_spec, spec.source_key(), 4).await?);
    let sql: Arc<str> = check.sql.as_str().into();
    let total = plan.len();
    let mut partitions = plan.partitions().take(READINESS_CHECK_CAP);
    let mut tasks: JoinSet<(Partition, Result<bool, ConnectorError>)> = JoinSet::new();
    let mut answers: Vec<(Partition, bool)> = Vec::new();
    let mut failure = None;
    loop {
        while failure.is_none() && tasks.len() < READINESS_CONCURRENCY {
            let Some(partition) = partitions.next() else {
                break;
            };
            tasks.spawn(ask(source.clone(), sql.clone(), partition));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((partition, Ok(ready))) => answers.push((partition, ready)),
            Ok((_, Err(e))) => failure = failure.or(Some(e)),
            Err(e) => tracing::error!(error = %e, "readiness check panicked"),
        }
    }
    source.close().await;
    if let Some(e) = failure {
        return Err(e);
    }
    answers.sort_by_key(|(p, _)| p.index);
    Ok(Some(Readiness {
        checked: answers.len(),
        total,
        not_ready: answers
            .into_iter()
            .filter(|(_, ready)| !ready)
            .map(|(p, _)| p)
            .collect(),
    }))
}

async fn ask(
    source: Arc<AnySource>,
    sql: Arc<str>,
    partition: Partition,
) -> (Partition, Result<bool, ConnectorError>) {
    let answer = source.ready(&sql, &partition.window).await;
    (partition, answer)
}

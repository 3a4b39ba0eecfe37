//! The canary of a run (`[canary]`, issue 11): representative partitions first, the rest
//! only when all of them succeeded, and (with `require_approval`) only after a person
//! approved.
//!
//! Protocol, from [`gate`] at the start of every session, before the first pass:
//! 1. No canary record yet: choose the partitions (`core::canary::choose`: first, last,
//!    largest by the source's count when it can count within a few seconds and the plan has
//!    at most [`COUNTED`] partitions, then random from the seed), store the record and append
//!    `canary.chosen` (seed, partitions, why each) in one transaction.
//! 2. Not passed yet: mark the run `running` and run one pass over only those partitions
//!    (`Pending::only`). A stop or hold leaves the rest for the next session, which runs the
//!    canary again from step 2 with the same partitions.
//! 3. Each canary partition must end `done` (a split one: with no failed or quarantined
//!    partition in the run, since only canary work ran). Otherwise `canary.failed` and the run
//!    moves to `failed` with reason `canary_failed`: no other partition was touched.
//! 4. Passed: `canary.passed` with the partitions' counts. With `require_approval` the run
//!    moves to `awaiting_approval` and this process waits (polling the store every
//!    [`POLL`], as a pause hold does) until `backfill approve` moves it to `running`; a cancel
//!    ends it; a stop request leaves it waiting, and `resume` or `run` waits again (or goes
//!    on at once when it was approved meanwhile).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backfill_core::canary::{Pick, choose};
use backfill_core::{PartitionState, RunState, Spec};
use backfill_store::{RunRecord, Store};
use serde_json::json;

use crate::control::Live;
use crate::execute::{self, Ctx};
use crate::pending::Pending;
use crate::{EngineError, Hold, Shutdown, patience};

/// Plans with more partitions are not counted to find the largest.
const COUNTED: usize = 1000;
/// Counting rows for the largest stops after this long.
const COUNT_BUDGET: Duration = Duration::from_secs(5);
/// How often a run awaiting approval reads its state.
const POLL: Duration = Duration::from_millis(500);

/// How the canary gate ended for this session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GateEnd {
    /// No canary, or it passed (and was approved when required): run the rest.
    Continue,
    /// A canary partition failed: the run is `failed` (reason `canary_failed`).
    Failed,
    /// A stop request or a hold came first; the run's state is the one given.
    Stopped(RunState),
    /// Cancelled while it awaited approval.
    Cancelled,
}

/// What the gate works with.
pub(crate) struct Gate<'a> {
    pub(crate) store: &'a Store,
    pub(crate) spec: &'a Spec,
    pub(crate) run: &'a RunRecord,
    pub(crate) ctx: &'a Arc<Ctx>,
    pub(crate) live: &'a Arc<Live>,
    pub(crate) shutdown: &'a Shutdown,
    pub(crate) actor: &'a str,
}

impl Gate<'_> {
    /// Runs the canary protocol (see the module doc); `state` is the run's state now and is
    /// kept up to date.
    pub(crate) async fn pass(&self, state: &mut RunState) -> Result<GateEnd, EngineError> {
        let Some(canary) = &self.spec.canary else {
            return Ok(GateEnd::Continue);
        };
        let run_id = &self.run.id;
        let record = patience::store(self.shutdown, "read the canary", || {
            self.store.canary(run_id)
        })
        .await?;
        let record = match record {
            Some(r) => r,
            None => self.choose(canary).await?,
        };
        if record["outcome"] != "passed" {
            if *state != RunState::Running {
                self.set_state(RunState::Running, json!({ "canary": true }))
                    .await?;
                *state = RunState::Running;
            }
            let indexes: Vec<u64> = record["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["index"].as_u64())
                .collect();
            let pending = Pending::only(self.store, run_id, indexes, self.shutdown);
            let pass = execute::run_partitions(self.ctx.clone(), pending).await;
            if let Some(e) = pass.error {
                return Err(e.into());
            }
            if pass.interrupted || self.shutdown.is_requested() || self.live.is_held() {
                return Ok(GateEnd::Stopped(*state));
            }
            if !self.judge(record).await? {
                self.set_state(RunState::Failed, json!({ "reason": "canary_failed" }))
                    .await?;
                *state = RunState::Failed;
                return Ok(GateEnd::Failed);
            }
        }
        if !canary.require_approval {
            return Ok(GateEnd::Continue);
        }
        self.await_approval(state).await
    }

    /// Step 1: chooses and records the canary's partitions.
    async fn choose(
        &self,
        canary: &backfill_core::CanarySpec,
    ) -> Result<serde_json::Value, EngineError> {
        let plan = backfill_core::plan::plan(self.spec)?;
        let total = plan.len();
        let rows = self.count_rows(&plan, total).await;
        let seed = canary.seed.unwrap_or_else(rand::random::<u64>);
        let wanted = usize::try_from(canary.partitions.get()).unwrap_or(usize::MAX);
        let picks = choose(total, wanted, &rows, seed);
        let mut chosen = Vec::with_capacity(picks.len());
        for Pick { index, why } in picks {
            let Some(p) = plan.partitions().nth(index) else {
                continue;
            };
            chosen.push(json!({
                "index": index,
                "partition_id": p.id,
                "window": p.window.to_string(),
                "why": why.to_string(),
                "estimated_rows": rows.get(index).copied().flatten(),
            }));
        }
        let record = json!({
            "seed": seed,
            "seed_given": canary.seed.is_some(),
            "require_approval": canary.require_approval,
            "partitions": chosen,
            "outcome": "running",
        });
        let detail = json!({
            "seed": seed,
            "seed_given": canary.seed.is_some(),
            "largest_counted": rows.iter().any(Option::is_some),
            "partitions": record["partitions"],
        });
        self.record(&record, "canary.chosen", detail).await?;
        Ok(record)
    }

    /// The source's rows per partition, when it can count, the plan is small enough and the
    /// counting fits [`COUNT_BUDGET`]; empty otherwise.
    async fn count_rows(&self, plan: &backfill_core::Plan, total: usize) -> Vec<Option<u64>> {
        let Some(source) = &self.ctx.source else {
            return Vec::new();
        };
        if total > COUNTED {
            return Vec::new();
        }
        let started = Instant::now();
        let mut rows = Vec::with_capacity(total);
        for window in plan.windows() {
            if started.elapsed() > COUNT_BUDGET {
                return Vec::new();
            }
            match source.count(&window).await {
                Ok(n) => rows.push(Some(n)),
                Err(_) => return Vec::new(),
            }
        }
        rows
    }

    /// Step 3: whether every canary partition succeeded; records the outcome.
    async fn judge(&self, mut record: serde_json::Value) -> Result<bool, EngineError> {
        let run_id = &self.run.id;
        let totals = patience::store(self.shutdown, "read the run's totals", || {
            self.store.partition_totals(run_id)
        })
        .await?;
        let clean = totals.count(PartitionState::Failed) == 0
            && totals.count(PartitionState::DoneWithQuarantine) == 0;
        let mut passed = clean;
        let mut results = Vec::new();
        for p in record["partitions"].as_array().cloned().unwrap_or_default() {
            let id = p["partition_id"].as_str().unwrap_or_default().to_owned();
            let part = patience::store(self.shutdown, "read a canary partition", || {
                self.store.partition(run_id, &id)
            })
            .await?;
            let ok = matches!(part.state, PartitionState::Done | PartitionState::Split);
            passed &= ok;
            results.push(json!({
                "partition_id": id,
                "window": p["window"],
                "state": part.state.as_str(),
                "rows_read": part.counts.read,
                "rows_written": part.counts.written(),
                "error": part.last_error.filter(|_| !ok),
            }));
        }
        let outcome = if passed { "passed" } else { "failed" };
        record["outcome"] = json!(outcome);
        record["results"] = json!(results);
        let detail = json!({ "partitions": results });
        self.record(&record, &format!("canary.{outcome}"), detail)
            .await?;
        Ok(passed)
    }

    /// Step 4: waits in `awaiting_approval` until approved, cancelled or stopped.
    async fn await_approval(&self, state: &mut RunState) -> Result<GateEnd, EngineError> {
        let run_id = &self.run.id;
        let current =
            patience::store(self.shutdown, "read the run", || self.store.get_run(run_id)).await?;
        *state = current.state;
        if current.state == RunState::Running {
            let record = self.store.canary(run_id).await?.unwrap_or_default();
            if record.get("approved_by").is_some() {
                return Ok(GateEnd::Continue);
            }
            self.set_state(
                RunState::AwaitingApproval,
                json!({ "canary": "passed", "approve": format!("backfill approve {run_id} --reason …") }),
            )
            .await?;
            *state = RunState::AwaitingApproval;
        }
        loop {
            if self.live.hold() == Some(Hold::Cancel) {
                return Ok(GateEnd::Cancelled);
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.shutdown.requested() => return Ok(GateEnd::Stopped(*state)),
            }
            let run = patience::store(self.shutdown, "read the run", || self.store.get_run(run_id))
                .await?;
            *state = run.state;
            match run.state {
                RunState::AwaitingApproval => {}
                RunState::Cancelled => return Ok(GateEnd::Cancelled),
                _ => return Ok(GateEnd::Continue),
            }
        }
    }

    async fn set_state(&self, to: RunState, detail: serde_json::Value) -> Result<(), EngineError> {
        patience::store(self.shutdown, "record the run's state", || {
            self.store
                .set_run_state(&self.run.id, to, self.actor, detail.clone())
        })
        .await?;
        Ok(())
    }

    async fn record(
        &self,
        record: &serde_json::Value,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), EngineError> {
        patience::store(self.shutdown, "record the canary", || {
            self.store
                .record_canary(&self.run.id, record, action, detail.clone(), self.actor)
        })
        .await?;
        Ok(())
    }
}

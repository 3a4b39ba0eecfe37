//! Whether an unfinished run may continue under its spec as it reads now.
//!
//! A run continues only when the spec still plans what the run was made from: the same plan
//! hash, which covers the normalised spec (`backfill_core::normalized`: databases as written,
//! query, formats, target, key, mode, scope and partitions; never where the spec file lies,
//! passwords or limits). Anything else would mix two specs in one target, or leave the
//! run's stored partitions and the plan apart. A refusal names every changed field from the
//! normalised spec stored with the run; a run created before it was stored (schema 7 and
//! older) is accepted when its hash is the old formula's for this spec, and otherwise
//! refused with both hashes.

use backfill_core::NormalizedSpec;
use backfill_core::Spec;
use backfill_core::plan::{Plan, legacy_hash};
use backfill_store::RunRecord;

use crate::EngineError;

/// `Ok` when `plan` (of `spec`) is the plan `run` was made from, so the run may continue;
/// [`EngineError::PlanChanged`] otherwise, with each changed field when the run stored its
/// normalised spec. Pure: reads nothing but its arguments.
pub fn check_same_plan(run: &RunRecord, spec: &Spec, plan: &Plan) -> Result<(), EngineError> {
    if run.plan_hash == plan.hash {
        return Ok(());
    }
    let stored = run.normalized_spec.as_deref();
    if stored.is_none() && run.plan_hash == legacy_hash(spec, plan) {
        return Ok(());
    }
    let changes = stored
        .and_then(NormalizedSpec::from_json)
        .map(|old| plan.normalized.changes_since(&old))
        .filter(|changes| !changes.is_empty());
    Err(EngineError::PlanChanged {
        run_id: run.id.clone(),
        spec: run.spec_name.clone(),
        stored: run.plan_hash.clone(),
        current: plan.hash.clone(),
        changes,
    })
}

//! The controller task: polls the state store for commands, applies the budget, the circuit
//! breaker and the run window as holds, renews the run's claim and reports heartbeats.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backfill_core::Spec;
use backfill_core::budget::{BudgetExtension, BudgetUse, BudgetVerdict};
use backfill_core::run_window::WindowState;
use backfill_core::slo::{Burn, BurnAction};
use backfill_store::{ControlRequest, Controls, Store, ThrottleChange};
use serde_json::json;
use tokio::sync::watch;

use crate::events::{Emitter, Event};

use super::burn::{BurnWatch, burn_json, throttled};
use super::{Clock, HEARTBEAT, Hold, Limits, Live, POLL, host};

/// What the controller's loop carries from one poll to the next.
struct LoopState {
    /// The controls version and resume count last acted on.
    seen_version: u64,
    seen_resumes: u64,
    /// The controls last read.
    controls: Controls,
    /// The limits in force.
    limits: Limits,
    /// Budget lines already warned about (80%).
    warned: Vec<&'static str>,
    last_beat: Instant,
    /// The next heartbeat goes out at once: the first (another process starting now sees
    /// this one), and one after a burn-rate action.
    first_beat: bool,
    /// The hold last announced, by reason.
    announced: Option<&'static str>,
    /// Running time (not held) since the last heartbeat.
    active_since_beat: Duration,
    last_tick: Instant,
    /// `[slo]`'s burn guard, when the spec has one.
    burn: Option<BurnWatch>,
}

/// What the controller needs besides the shared state.
pub(crate) struct Controller {
    pub(crate) run_id: String,
    pub(crate) spec: Spec,
    pub(crate) store: Store,
    pub(crate) live: Arc<Live>,
    pub(crate) clock: Clock,
    pub(crate) emitter: Emitter,
    /// Partitions in the run's plan.
    pub(crate) partitions_total: u64,
    /// Rows read and partitions finished by earlier sessions of the run.
    pub(crate) rows_before: u64,
    pub(crate) partitions_before: u64,
    /// The controls read when the session started.
    pub(crate) controls: Controls,
    /// What the adaptive throttle publishes for `status`, when the spec has `[throttle]`.
    pub(crate) adaptive: Option<crate::adaptive::SharedStatus>,
    /// This process's claim on the run, renewed with every heartbeat.
    pub(crate) lease: backfill_store::Lease,
    /// Requested when the claim is lost, so the workers stop at once.
    pub(crate) shutdown: crate::Shutdown,
}

impl Controller {
    /// Polls the store until `stop` is set; sets and clears holds, applies limit changes,
    /// reports heartbeats. Store errors are logged and retried at the next poll.
    /// `ready` is sent after the first decision, so no batch starts before it.
    pub(crate) async fn run(
        self,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut st = LoopState {
            seen_version: self.controls.version,
            seen_resumes: self.controls.resumes,
            controls: self.controls.clone(),
            limits: self.live.apply(Limits::of(&self.spec, &self.controls)),
            warned: Vec::new(),
            last_beat: Instant::now(),
            first_beat: true,
            announced: None,
            active_since_beat: Duration::ZERO,
            last_tick: Instant::now(),
            burn: BurnWatch::of(&self.spec, self.partitions_total),
        };
        let _ = self
            .store
            .record_rate_change(
                &self.run_id,
                rate_of(st.limits.rows_per_second),
                "start",
                &json!({ "concurrency": st.limits.concurrency, "batches_per_second": st.limits.batches_per_second }),
            )
            .await;
        loop {
            let now = Instant::now();
            if !self.live.is_held() {
                st.active_since_beat += now - st.last_tick;
            }
            st.last_tick = now;
            self.apply_commands(&mut st).await;
            let used = self.budget_use(&st.controls, st.active_since_beat);
            let extension = extension_of(&st.controls);
            let verdict = self.spec.limits.budget.verdict(&used, &extension);
            self.warn_budget(&verdict, &mut st.warned);
            self.guard_burn(&mut st, &used, &extension).await;
            let allowance = self.partition_allowance(&extension);
            self.live
                .partition_allowance
                .send_if_modified(|a| std::mem::replace(a, allowance) != allowance);
            let burn_hold = st.burn.as_ref().and_then(|b| b.hold.clone());
            let wanted = self.wanted_hold(&st.controls, &verdict, burn_hold);
            self.live.set_hold(wanted.clone());
            self.announce(wanted.as_ref(), &mut st.announced);
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            if (st.last_beat.elapsed() >= HEARTBEAT || st.first_beat)
                && !self.beat(&mut st, &used, &extension).await
            {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.live.poll_now.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.last_beat(st).await;
    }

    /// Reads the run's controls and applies what changed since the last poll: new limits
    /// (`throttle`), a closed breaker (`resume`).
    async fn apply_commands(&self, st: &mut LoopState) {
        match self.store.controls(&self.run_id).await {
            Ok(c) => st.controls = c,
            Err(e) => {
                tracing::warn!(run_id = self.run_id, error = %e, "cannot read run controls")
            }
        }
        if st.controls.version == st.seen_version {
            return;
        }
        st.seen_version = st.controls.version;
        let wanted = self.live.apply(Limits::of(&self.spec, &st.controls));
        if wanted != st.limits {
            self.limits_changed(st.limits, wanted).await;
            st.limits = wanted;
        }
        if st.controls.resumes != st.seen_resumes {
            st.seen_resumes = st.controls.resumes;
            self.live.close_breaker();
            if let Some(burn) = st.burn.as_mut() {
                burn.resumed();
            }
        }
    }

    /// Warns once per budget line at 80% of it.
    fn warn_budget(&self, verdict: &BudgetVerdict, warned: &mut Vec<&'static str>) {
        let BudgetVerdict::Warning(lines) = verdict else {
            return;
        };
        for line in lines {
            let kind = line.kind.as_str();
            if warned.contains(&kind) {
                continue;
            }
            warned.push(kind);
            tracing::warn!(
                run_id = self.run_id,
                budget = kind,
                used = line.used,
                limit = line.limit,
                "budget 80% used"
            );
            self.emitter.emit(Event::BudgetWarning {
                kind: kind.to_owned(),
                used: line.used,
                limit: line.limit,
            });
        }
    }

    /// Announces a hold (or its lift) when its reason differs from the last one announced: a
    /// worker may set a hold itself (the breaker), so announcing follows what was said, not
    /// what changed here.
    fn announce(&self, wanted: Option<&Hold>, announced: &mut Option<&'static str>) {
        let reason = wanted.map(Hold::pause_reason);
        if reason == *announced {
            return;
        }
        *announced = reason;
        match wanted {
            Some(hold) => {
                tracing::info!(
                    run_id = self.run_id,
                    reason = hold.pause_reason(),
                    "holding the workers"
                );
                self.emitter.emit(Event::Holding { hold: hold.clone() });
            }
            None => {
                tracing::info!(run_id = self.run_id, "releasing the workers");
                self.emitter.emit(Event::Released);
            }
        }
    }

    /// Renews the claim and reports the heartbeat with the running time since the last one.
    /// False when the claim is lost: the controller stops.
    async fn beat(
        &self,
        st: &mut LoopState,
        used: &BudgetUse,
        extension: &BudgetExtension,
    ) -> bool {
        st.first_beat = false;
        if !self.renew_claim().await {
            return false;
        }
        let live = self.telemetry(&st.limits, used, extension, st.burn.as_ref());
        let active_ms = u64::try_from(st.active_since_beat.as_millis()).unwrap_or(u64::MAX);
        match self.store.heartbeat(&self.run_id, active_ms, &live).await {
            Ok(()) => {
                st.controls.active_ms += active_ms;
                st.active_since_beat = Duration::ZERO;
            }
            Err(e) => {
                tracing::warn!(run_id = self.run_id, error = %e, "cannot report heartbeat")
            }
        }
        st.last_beat = Instant::now();
        true
    }

    /// The last slice of running time counts too, and the last telemetry stays for `status`,
    /// marked stopped so no one takes this process for a live one.
    async fn last_beat(&self, mut st: LoopState) {
        let active_ms = u64::try_from(st.active_since_beat.as_millis()).unwrap_or(u64::MAX);
        st.controls.active_ms += active_ms;
        let used = self.budget_use(&st.controls, Duration::ZERO);
        let extension = extension_of(&st.controls);
        let mut last = self.telemetry(&st.limits, &used, &extension, st.burn.as_ref());
        last["state"] = json!("stopped");
        let _ = self.store.heartbeat(&self.run_id, active_ms, &last).await;
    }

    /// Renews this process's claim on the run. False when another process claimed it: then
    /// every write of this process is refused, so the workers are told to stop.
    async fn renew_claim(&self) -> bool {
        match self.store.renew_lease(&self.lease).await {
            Ok(_) => true,
            Err(e @ backfill_store::StoreError::LeaseLost { .. }) => {
                tracing::error!(run_id = self.run_id, error = %e, "stopping");
                self.shutdown.request();
                false
            }
            Err(e) => {
                // Still ours until it expires; the next heartbeat tries again.
                tracing::warn!(run_id = self.run_id, error = %e, "cannot renew the run's claim");
                true
            }
        }
    }

    async fn limits_changed(&self, from: Limits, to: Limits) {
        tracing::info!(
            run_id = self.run_id,
            rows_per_second = to.rows_per_second,
            batches_per_second = to.batches_per_second,
            concurrency = to.concurrency,
            "limits changed by `throttle`"
        );
        if to.concurrency < from.concurrency.max(to.concurrency)
            && to.concurrency == self.live.capacity
        {
            tracing::warn!(
                run_id = self.run_id,
                capacity = self.live.capacity,
                "concurrency capped at this process's connection pools"
            );
        }
        self.emitter.emit(Event::Throttled {
            rows_per_second: to.rows_per_second,
            batches_per_second: to.batches_per_second,
            concurrency: to.concurrency,
        });
        let _ = self
            .store
            .record_rate_change(
                &self.run_id,
                rate_of(to.rows_per_second),
                "manual",
                &json!({
                    "from": rate_of(from.rows_per_second),
                    "concurrency": to.concurrency,
                    "batches_per_second": to.batches_per_second,
                }),
            )
            .await;
    }

    fn budget_use(&self, controls: &Controls, unreported: Duration) -> BudgetUse {
        BudgetUse {
            rows: self.rows_before + self.live.rows_read.load(Ordering::Relaxed),
            active: Duration::from_millis(controls.active_ms) + unreported,
            partitions: self.partitions_before
                + self.live.partitions_finished.load(Ordering::Relaxed),
        }
    }

    /// Partitions this session may finish under the partition budget and `extension`:
    /// `u64::MAX` without a partition budget.
    fn partition_allowance(&self, extension: &BudgetExtension) -> u64 {
        self.spec
            .limits
            .budget
            .partitions
            .map_or(u64::MAX, |limit| {
                (limit + extension.partitions).saturating_sub(self.partitions_before)
            })
    }

    /// The hold the run should be under now, most serious first.
    fn wanted_hold(
        &self,
        controls: &Controls,
        verdict: &BudgetVerdict,
        burn: Option<Hold>,
    ) -> Option<Hold> {
        match controls.requested {
            Some(ControlRequest::Cancel) => return Some(Hold::Cancel),
            Some(ControlRequest::Pause) => return Some(Hold::User),
            None => {}
        }
        if self.live.breaker_open() {
            return Some(self.live.circuit_hold());
        }
        if burn.is_some() {
            return burn;
        }
        if let BudgetVerdict::Exhausted(lines) = verdict {
            return Some(Hold::BudgetExhausted {
                lines: lines
                    .iter()
                    .filter(|l| l.used >= l.limit)
                    .map(|l| format!("{} {}/{}", l.kind.as_str(), l.used, l.limit))
                    .collect(),
            });
        }
        if let Some(window) = &self.spec.limits.window
            && let WindowState::Closed { opens_at } = window.state_at(self.clock.now())
        {
            return Some(Hold::OutsideWindow { opens_at });
        }
        None
    }

    fn telemetry(
        &self,
        limits: &Limits,
        used: &BudgetUse,
        extension: &BudgetExtension,
        burn: Option<&BurnWatch>,
    ) -> serde_json::Value {
        let budget = &self.spec.limits.budget;
        let verdict = &budget.verdict(used, extension);
        let lines = &budget.lines(used, extension);
        let hold = self.live.hold();
        let mut live = json!({
            "pid": std::process::id(),
            "host": host(),
            "state": if hold.is_some() { "held" } else { "running" },
            "hold": hold.as_ref().map(Hold::pause_reason),
            "rows_per_second": rate_of(limits.rows_per_second),
            "batches_per_second": rate_of(limits.batches_per_second),
            "concurrency": limits.concurrency,
            "breaker_error_rate": self.live.breaker_error_rate(),
            "budget": lines.iter().map(|l| json!({
                "kind": l.kind.as_str(), "used": l.used, "limit": l.limit,
            })).collect::<Vec<_>>(),
            "budget_warning": matches!(verdict, BudgetVerdict::Warning(_)),
        });
        live["order"] = json!(self.spec.limits.order.describe());
        if let Some(cost) = &self.spec.limits.budget.cost {
            live["cost"] = self.cost_telemetry(cost, used);
        }
        if let Some(burn) = burn {
            live["slo"] = burn.telemetry(&self.spec);
        }
        if let Some(adaptive) = &self.adaptive {
            live["adaptive"] = adaptive.lock().unwrap_or_else(|e| e.into_inner()).to_json();
        }
        if let Some(Hold::OutsideWindow { opens_at }) = &hold {
            live["resumes_at"] = json!(opens_at.to_rfc3339());
        }
        if let Some(window) = &self.spec.limits.window
            && let WindowState::Open { closes_at } = window.state_at(self.clock.now())
        {
            live["window_closes_at"] = json!(closes_at.to_rfc3339());
        }
        live
    }
}

impl Controller {
    /// `[slo]`: feeds the burn guard and carries out what it asks: a throttle now, or a hold.
    async fn guard_burn(&self, st: &mut LoopState, used: &BudgetUse, extension: &BudgetExtension) {
        let Some(watch) = st.burn.as_mut() else {
            return;
        };
        let Some(action) = watch.observe(&self.spec, &self.live, used, extension) else {
            return;
        };
        // `status` shows the guard's new stage at once, not a heartbeat later.
        st.first_beat = true;
        match action {
            BurnAction::Throttle(burn) => {
                if !self.burn_throttle(st, &burn, used).await
                    && let Some(watch) = st.burn.as_mut()
                {
                    watch.throttle_failed();
                }
            }
            BurnAction::Pause(burn) => {
                tracing::warn!(
                    run_id = self.run_id,
                    budget = burn.budget,
                    detail = burn.detail,
                    "burning too fast after the throttle: pausing the run (reason burn_rate)"
                );
                watch.hold = Some(Hold::BurnRate {
                    budget: burn.budget,
                    detail: burn.detail,
                });
            }
        }
    }

    /// Halves the limits in force through the run's controls, as `throttle` would, with the
    /// burn as the audited cause, and records the rate change (`burn_rate`). False when the
    /// store refused it.
    async fn burn_throttle(&self, st: &mut LoopState, burn: &Burn, used: &BudgetUse) -> bool {
        // The rate this session read at while it ran: held time (paused, outside the window)
        // does not count.
        let session_active = used
            .active
            .saturating_sub(Duration::from_millis(self.controls.active_ms));
        #[allow(clippy::cast_precision_loss)]
        let session_rate = self.live.rows_read.load(Ordering::Relaxed) as f64
            / session_active.as_secs_f64().max(1.0);
        let from = st.limits;
        let to = throttled(from, session_rate);
        let changed = |a: u32, b: u32| (a != b).then_some(b);
        let change = ThrottleChange {
            rows_per_second: changed(from.rows_per_second, to.rows_per_second),
            batches_per_second: changed(from.batches_per_second, to.batches_per_second),
            concurrency: changed(from.concurrency, to.concurrency),
        };
        tracing::warn!(
            run_id = self.run_id,
            budget = burn.budget,
            detail = burn.detail,
            concurrency = to.concurrency,
            rows_per_second = to.rows_per_second,
            "burning the budget too fast: throttling (it pauses if the burn goes on)"
        );
        let why = burn_json(burn);
        let after = match self
            .store
            .set_throttle_because(
                &self.run_id,
                change,
                "engine",
                Some(("burn_rate", why.clone())),
            )
            .await
        {
            Ok(after) => after,
            Err(e) => {
                tracing::warn!(run_id = self.run_id, error = %e, "cannot record the burn-rate throttle");
                return false;
            }
        };
        // When no other command came in between, this change is seen; otherwise the next poll
        // applies what came in (a resume, other limits) as usual.
        if after.version == st.seen_version + 1 {
            st.seen_version = after.version;
            st.controls = after.clone();
        }
        st.limits = self.live.apply(Limits::of(&self.spec, &after));
        self.emitter.emit(Event::Throttled {
            rows_per_second: st.limits.rows_per_second,
            batches_per_second: st.limits.batches_per_second,
            concurrency: st.limits.concurrency,
        });
        let _ = self
            .store
            .record_rate_change(
                &self.run_id,
                rate_of(st.limits.rows_per_second),
                "burn_rate",
                &json!({
                    "from": rate_of(from.rows_per_second),
                    "concurrency": st.limits.concurrency,
                    "batches_per_second": st.limits.batches_per_second,
                    "burn": why,
                }),
            )
            .await;
        true
    }

    /// Money spent so far and projected to complete, at the pace of the finished partitions.
    fn cost_telemetry(
        &self,
        cost: &backfill_core::budget::CostModel,
        used: &BudgetUse,
    ) -> serde_json::Value {
        let rows = used.rows;
        let finished = used.partitions;
        let active = used.active.as_secs_f64();
        let so_far = cost.cost(rows, used.active);
        let to_complete = (finished > 0).then(|| {
            let left = self.partitions_total.saturating_sub(finished) as f64 / finished as f64;
            let rows_left = (rows as f64 * left) as u64;
            let time_left = Duration::from_secs_f64((active * left).max(0.0));
            cost.cost(rows_left, time_left)
        });
        json!({
            "so_far": cost.format(so_far),
            "to_complete": to_complete.map(|c| cost.format(c)),
            "so_far_amount": so_far,
            "to_complete_amount": to_complete,
            "currency": cost.currency,
        })
    }
}

fn rate_of(per_second: u32) -> Option<f64> {
    (per_second > 0).then_some(f64::from(per_second))
}

/// The budget granted by `resume --extend-budget`, as the core policy counts it.
pub(crate) fn extension_of(controls: &Controls) -> BudgetExtension {
    BudgetExtension {
        rows: controls.budget_extra.rows,
        duration: Duration::from_millis(controls.budget_extra.duration_ms),
        partitions: controls.budget_extra.partitions,
        cost: controls.budget_extra.cost,
    }
}

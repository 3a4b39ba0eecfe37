//! The adaptive throttle's `watch` (issue 10): it follows what live traffic itself feels, read
//! from the live database with no probe statement, on a private PostgreSQL that loads
//! `pg_stat_statements` (`shared_preload_libraries` needs a server of its own: the shared one
//! does not load it, and loading it takes a restart).
//!
//! Live traffic is one session running `SELECT pg_sleep($1)` back to back: 2 ms per call
//! while healthy, 20 ms while the test slows it down. The backfill is SQLite to SQLite, so
//! the only link between the run and the live database is the watch. The run must hold its
//! rate while the statements keep their baseline, cut with cause `live_latency` once they
//! slow down, recover once they are fast again, and finish with the target equal to the
//! source. `backfill check` must say which signals a server offers, and why not. The live
//! transactions' time (`pg_stat_database`) must rise when a client is slow between its
//! statements, where each statement's own time does not move.
//!
//! Servers are private (`private_server.rs`): when their binaries are missing the tests are
//! skipped (and counted), or fail when services are required.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use backfill_connectors::{Probe, Watch};
use backfill_core::SecretUrl;
use backfill_core::live::StatDelta;
use backfill_store::Store;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::private_server::{PrivateMariaDb, PrivatePostgres};
use crate::replica_lag::{
    PATIENCE, RUN_TIMEOUT, Running, rate_changes, show, spawn_run, status, throttled_copy,
    wait_for, wait_for_cause,
};
use crate::support::{
    Workspace, assert_same_rows, copy_spec, make_source, make_target, target_rows,
};

/// 120,000 rows at up to 2,000 rows/s: a minute or more, so the slowdown and the recovery
/// land mid-run even on a slow machine (with 40,000 a run cut hard for long ended before it
/// recovered); once the test has seen the recovery it lifts the limit to finish.
const ROWS: i64 = 120_000;
const DAYS: i64 = 4;
const LIMITS: &str = "concurrency = 2\nbatch_rows = 100\nrows_per_second = 2000\n";
/// The drift and rest check tests' limits: [`LIMITS`] at half the rate, so their runs last
/// two minutes or more, and the rate's floor under [`throttle`] there (25% of 1,000 rows/s).
const DRIFT_LIMITS: &str = "concurrency = 2\nbatch_rows = 100\nrows_per_second = 1000\n";
const FLOOR: f64 = 250.0;
/// The live statement's time while healthy and while slowed down.
const FAST: f64 = 0.002;
const SLOW: f64 = 0.020;

/// A private PostgreSQL loading `pg_stat_statements`; the extension is created when `create`.
async fn server(create: bool) -> Option<PrivatePostgres> {
    let pg = PrivatePostgres::start_with(
        "shared_preload_libraries = 'pg_stat_statements'\nautovacuum = off\n",
    )?;
    if create {
        sqlx::raw_sql("CREATE EXTENSION pg_stat_statements")
            .execute(&mut pg.connect().await)
            .await
            .expect("create pg_stat_statements");
    }
    Some(pg)
}

/// The watch under test, no probe: 200 ms intervals, a baseline of 10 readings, +50% allowed
/// (`pg_sleep` is steady; a loaded test machine is not), and a floor of 25% so the run ends
/// soon after a cut. No rest checks: these tests slow live traffic down by themselves, which a
/// rest check rightly tells from the backfill's cost
/// ([`a_rest_check_tells_live_traffic_drift_from_the_backfills_cost`] tests those).
fn throttle(url: &str) -> String {
    format!(
        "\n[throttle]\nwatch = {{ url = \"{url}\" }}\ninterval = \"200ms\"\nbaseline_probes = 10\n\
         window = 10\nmax_latency_increase = 0.5\nincrease_fraction = 1.0\n\
         min_rate_fraction = 0.25\nrest_check = \"0s\"\n"
    )
}

/// Live traffic: `SELECT pg_sleep(delay)` back to back on one session, `delay` set by the
/// test. Not named `backfill`, so it is live traffic to the watch.
struct Traffic {
    delay: watch::Sender<f64>,
    task: JoinHandle<u64>,
}

impl Traffic {
    async fn start(pg: &PrivatePostgres) -> Traffic {
        let mut conn = pg.connect().await;
        let (delay, rx) = watch::channel(FAST);
        let task = tokio::spawn(async move {
            let mut calls = 0;
            // Stops when the test drops the sender.
            while rx.has_changed().is_ok() {
                let d = *rx.borrow();
                sqlx::query("SELECT pg_sleep($1)")
                    .bind(d)
                    .execute(&mut conn)
                    .await
                    .expect("live statement");
                calls += 1;
            }
            let _ = conn.close().await;
            calls
        });
        Traffic { delay, task }
    }

    fn set(&self, seconds: f64) {
        self.delay.send_replace(seconds);
    }

    async fn stop(self) -> u64 {
        drop(self.delay);
        self.task.await.expect("traffic task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cuts_on_live_statement_latency_with_no_probe_and_holds_otherwise() {
    let Some(pg) = server(true).await else {
        return;
    };
    let started = Instant::now();
    let ws = Workspace::new();
    let watched = WatchedRun::start(&pg, &ws, LIMITS, &throttle(&pg.url())).await;
    let (traffic, mut run, run_id) = (watched.traffic, watched.run, watched.run_id);
    let (live, baseline) = (watched.live, watched.baseline);
    assert!(
        (1.5..10.0).contains(&baseline) && live["unavailable"] == serde_json::json!([]),
        "the baseline is pg_sleep(2 ms)'s time, every signal offered: {live:#}"
    );
    // A client pays a round trip per transaction beyond the server's time: the allowed rise
    // (+50% here) is a share of both, the round trip measured at rest. (This traffic's one
    // busy session reports its transactions in lumps seconds apart, often too few for a
    // transactions baseline in the 1 s measured; the rule itself is `backfill_core::live`'s.)
    let trip = live["round_trip_ms"].as_f64().unwrap_or(-1.0);
    assert!(
        trip > 0.0 && trip < 50.0,
        "the round trip at rest: {live:#}"
    );
    if let Some(tx) = live["baseline_transaction_ms"].as_f64() {
        let limit = live["limit_transaction_ms"].as_f64().unwrap();
        assert!(limit >= tx + 0.5 * (tx + trip.min(1.0)) - 0.001, "{live:#}");
    }

    let text = ws.run(&["status", &run_id]);
    assert!(
        text.stdout.contains("  watch:      mean ")
            && text.stdout.contains("per call vs baseline")
            && text.stdout.contains("waiting on WAL or I/O")
            && text.stdout.contains("round trip"),
        "status shows the watch: {text:?}"
    );

    // Healthy: the rate climbs and is never cut while the statements keep their time.
    // A loaded machine can take longer than 3 s for the first healthy step, so the test
    // waits for it (and checks for cuts at every look).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut healthy = Vec::new();
    wait_for("the rate climbs while healthy", PATIENCE, async || {
        run.assert_alive("while healthy");
        healthy = rate_changes(&ws, &run_id).await;
        assert!(
            healthy
                .iter()
                .all(|c| ["start", "recovered", "manual"].contains(&c.cause.as_str())),
            "a cut while live traffic kept its baseline:\n{}",
            show(&healthy)
        );
        healthy.iter().any(|c| c.cause == "recovered")
    })
    .await;
    let before = healthy.last().map_or(0, |c| c.seq);

    // Live statements slow down tenfold: the run is cut for it, by the watch alone (its
    // statements' time, or its transactions', which here are one statement each).
    let slowed = Instant::now();
    traffic.set(SLOW);
    let cut = wait_for_live_cut(&ws, &mut run, &run_id).await;
    let cut_after = slowed.elapsed();
    let detail = &cut["rate"]["detail"];
    let (mean, limit) = if cut["rate"]["cause"] == "live_latency" {
        (
            detail["watch"]["mean_ms"].as_f64().unwrap(),
            detail["watch"]["limit_mean_ms"].as_f64().unwrap(),
        )
    } else {
        (
            detail["watch"]["transaction_ms"].as_f64().unwrap(),
            detail["watch"]["limit_transaction_ms"].as_f64().unwrap(),
        )
    };
    assert!(mean > limit && limit < 10.0, "{cut:#}");
    assert!(
        cut["rate"]["rows_per_second"].as_f64() < detail["from"].as_f64(),
        "a cut lowers the rate: {cut:#}"
    );

    // Fast again: the rate climbs back.
    traffic.set(FAST);
    let restored = Instant::now();
    let recovered = wait_for_cause(&ws, &mut run, &run_id, "recovered").await;
    let recovered_after = restored.elapsed();
    let calls = finish(
        &ws,
        &mut run,
        &run_id,
        traffic,
        &watched.target,
        &watched.want,
    )
    .await;

    let changes = rate_changes(&ws, &run_id).await;
    let cuts: Vec<_> = changes
        .iter()
        .filter(|c| !["start", "recovered", "manual"].contains(&c.cause.as_str()))
        .collect();
    assert!(
        cuts.iter()
            .all(|c| c.seq > before && LIVE_CUTS.contains(&c.cause.as_str())),
        "every cut is a live_latency or live_transactions cut during the slowdown or after:\n{}",
        show(&changes)
    );
    eprintln!(
        "cut {cut_after:?} after the slowdown (mean {mean:.2} ms > limit {limit:.2} ms, \
         baseline {baseline:.2} ms), recovered {recovered_after:?} after (rate {}); {} cuts; \
         {calls} live calls; {:?} in all\n{}",
        recovered["rate"]["rows_per_second"],
        cuts.len(),
        started.elapsed(),
        show(&changes)
    );
}

/// A SQLite-to-SQLite run of [`ROWS`] watching `pg` (no probe), live traffic at [`FAST`],
/// started and seen to have measured the live statements' baseline.
struct WatchedRun {
    traffic: Traffic,
    run: Running,
    run_id: String,
    /// `status`'s `watch` once the baseline is measured, and that baseline (ms).
    live: serde_json::Value,
    baseline: f64,
    target: sqlx::SqlitePool,
    want: Vec<Vec<Option<String>>>,
}

impl WatchedRun {
    /// `limits`: the spec's `[limits]` lines ([`LIMITS`] or [`DRIFT_LIMITS`]); `throttle`:
    /// its `[throttle]` ([`throttle`], or a variant of it).
    async fn start(
        pg: &PrivatePostgres,
        ws: &Workspace,
        limits: &str,
        throttle: &str,
    ) -> WatchedRun {
        let (want, target_pool) = throttled_copy(ws, ROWS, DAYS, limits, throttle).await;
        let traffic = Traffic::start(pg).await;
        let (mut run, run_id) = spawn_run(ws).await;

        // The baseline of the live statements is measured, then read every interval.
        let mut live = serde_json::Value::Null;
        wait_for(
            "status shows the live statements' mean",
            PATIENCE,
            async || {
                run.assert_alive("before the watch was read");
                live = status(ws, &run_id)["live"]["adaptive"]["watch"].clone();
                live["mean_ms"].is_number() && live["baseline_mean_ms"].is_number()
            },
        )
        .await;
        let baseline = live["baseline_mean_ms"].as_f64().unwrap();
        WatchedRun {
            traffic,
            run,
            run_id,
            live,
            baseline,
            target: target_pool,
            want,
        }
    }
}

/// Lifts the run's limit once the test has seen all it needs (a `manual` change), waits for
/// it to succeed, stops the traffic and checks the target equals the source; returns the live
/// calls made.
async fn finish(
    ws: &Workspace,
    run: &mut Running,
    run_id: &str,
    traffic: Traffic,
    target: &sqlx::SqlitePool,
    want: &[Vec<Option<String>>],
) -> u64 {
    let lifted = ws.run(&["throttle", run_id, "--rows-per-second", "100000"]);
    assert!(lifted.code == 0 || run.exited().is_some(), "{lifted:?}");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let code = loop {
        if let Some(code) = run.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish within {RUN_TIMEOUT:?}\n{:?}\n{:#}",
            run.ran(-1),
            status(ws, run_id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let calls = traffic.stop().await;
    let ran = run.ran(code);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["state"], "succeeded", "{ran:?}");
    assert_same_rows(&target_rows(target).await, want, "watch");
    calls
}

/// Live traffic drifts by itself: its statements take ~2.5x their time at rest for good,
/// more than the allowed rise (+100% here) and within two of them. The run is cut for it down to
/// its floor (or is still there, climbing slowly from its start); there a whole window still
/// over the limit becomes the baseline (`status` counts it), and the rate climbs again while
/// the traffic stays where it drifted to. Without following the drift the run would stay at
/// its floor to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_floor_the_watch_follows_live_traffic_drift_and_the_rate_climbs_again() {
    let Some(pg) = server(true).await else {
        return;
    };
    let ws = Workspace::new();
    // +100% allowed, so the drift's band (over one allowed rise, within two) is wide enough
    // for pg_sleep, which sleeps whole milliseconds.
    let wide =
        throttle(&pg.url()).replace("max_latency_increase = 0.5", "max_latency_increase = 1.0");
    assert!(wide.contains("max_latency_increase = 1.0"));
    let watched = WatchedRun::start(&pg, &ws, DRIFT_LIMITS, &wide).await;
    let (traffic, mut run, run_id) = (watched.traffic, watched.run, watched.run_id);
    let baseline = watched.baseline;
    // pg_sleep(2 ms) measured `baseline` (~0.1 ms of it the round trip): ~2.5x of it.
    let drifted_ms = (2.5 * baseline - 0.1).round().max(4.0);
    let drifted_at = rate_changes(&ws, &run_id).await.last().map_or(0, |c| c.seq);
    traffic.set(drifted_ms / 1000.0);
    // It all happens within seconds: a cut, the floor, the baseline moved, the climb. The
    // test reads it from the rate time series (a status poll can miss a state that brief).
    let deadline = Instant::now() + PATIENCE;
    let changes = loop {
        let changes = rate_changes(&ws, &run_id).await;
        let climbed = changes.iter().any(|c| {
            c.seq > drifted_at
                && c.cause == "recovered"
                && c.detail["watch"]["drift_followed"].as_u64() > Some(0)
        });
        if climbed {
            break changes;
        }
        assert!(
            run.exited().is_none() && Instant::now() < deadline,
            "no climb from a baseline that followed the drift, with the traffic drifted \
             (baseline {baseline:.2} ms, traffic at {drifted_ms} ms) within {PATIENCE:?} or \
             the run's life\n{}\n{:#}",
            show(&changes),
            status(&ws, &run_id)["live"]["adaptive"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The first climb judged against the followed baseline started from the floor: the
    // drift is followed there only (reached by a cut, or still there from the slow start).
    let climb = changes
        .iter()
        .find(|c| {
            c.seq > drifted_at
                && c.cause == "recovered"
                && c.detail["watch"]["drift_followed"].as_u64() > Some(0)
        })
        .expect("the climb");
    assert_eq!(
        climb.detail["from"].as_f64(),
        Some(FLOOR),
        "followed at the floor:\n{}",
        show(&changes)
    );
    let watch = &climb.detail["watch"];
    let followed = watch["baseline_mean_ms"].as_f64().unwrap();
    assert!(
        followed > 1.8 * baseline,
        "the baseline moved to the drifted level (was {baseline:.2} ms): {watch:#}"
    );
    // `status` shows it once the next heartbeat has published it.
    wait_for("status says the baseline moved", PATIENCE, async || {
        run.assert_alive("while waiting for status to show the drift followed");
        ws.run(&["status", &run_id])
            .stdout
            .contains("drift at the floor")
    })
    .await;
    // The drift ends: a full window of fast statements brings the followed baseline back
    // down toward their level (never under the level at rest), so its looser limit goes too.
    // Half-way back is enough: fast traffic on a loaded test machine takes more than the 2 ms
    // it took at rest.
    traffic.set(FAST);
    let deadline = Instant::now() + PATIENCE;
    let back = loop {
        let live = status(&ws, &run_id)["live"]["adaptive"]["watch"].clone();
        let back = live["baseline_mean_ms"].as_f64().unwrap_or(f64::MAX);
        if back < followed - 0.5 * (followed - baseline) {
            break back;
        }
        assert!(
            run.exited().is_none() && Instant::now() < deadline,
            "the followed baseline ({followed:.2} ms, {baseline:.2} ms at rest) did not come \
             back down with the traffic fast again within {PATIENCE:?} or the run's life\n{}\n{live:#}",
            show(&rate_changes(&ws, &run_id).await)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        back >= baseline - 1e-6,
        "never under the level at rest ({baseline:.3} ms): {back}"
    );
    let calls = finish(
        &ws,
        &mut run,
        &run_id,
        traffic,
        &watched.target,
        &watched.want,
    )
    .await;
    eprintln!(
        "baseline {baseline:.2} ms, traffic drifted to {drifted_ms:.2} ms, followed to \
         {followed:.2} ms; {calls} live calls\n{}",
        show(&rate_changes(&ws, &run_id).await)
    );
}

/// Live traffic that drifts by itself is told from the backfill's cost by a rest check
/// (`throttle.rest_check`): the run holds the backfill, measures live traffic at rest and
/// judges the window read before the hold against that.
///
/// First the traffic drifts to ~2.5x its time at rest whatever the run does: over the limit
/// (+100%), so the watch asks for a cut, but as slow at rest, so the check keeps the rate
/// (`status` counts it as spared) and no live cut is recorded. A check due for the climb
/// (the rate doubled) may measure the drift at rest first; then no cut is asked for, and the
/// baseline has followed the drift all the same. Then the traffic is slow only
/// while the backfill writes (the test polls the target's row count): the check finds it
/// fast at rest and the rate is cut. Without rest checks the drift cuts the rate; without
/// judging the window against the level at rest the harm could be taken for drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_check_tells_live_traffic_drift_from_the_backfills_cost() {
    let Some(pg) = server(true).await else {
        return;
    };
    let ws = Workspace::new();
    let checked = throttle(&pg.url())
        .replace("max_latency_increase = 0.5", "max_latency_increase = 1.0")
        .replace(
            "rest_check = \"0s\"",
            "rest_check = \"1s\"\nrest_check_every = \"10m\"",
        );
    assert!(checked.contains("rest_check = \"1s\"") && checked.contains("= 1.0"));
    // At half the rate, as the drift test: the run must outlast the drift's check, which now
    // waits for a window of two batches before it is asked for (at 2,000 rows/s a CI run
    // ended during the drift).
    let watched = WatchedRun::start(&pg, &ws, DRIFT_LIMITS, &checked).await;
    let (traffic, mut run, run_id) = (watched.traffic, watched.run, watched.run_id);
    let baseline = watched.baseline;
    // Rest checks run above the floor only: wait for the climb.
    wait_for_climb(&ws, &mut run, &run_id).await;

    // Drift: slower by itself, over the limit, within the two allowed rises a baseline may
    // move.
    let drifted_ms = (2.5 * baseline - 0.1).round().max(4.0);
    let drifted_at = rate_changes(&ws, &run_id).await.last().map_or(0, |c| c.seq);
    let done_before = status(&ws, &run_id)["live"]["adaptive"]["watch"]["rest_checks"]["done"]
        .as_u64()
        .unwrap_or(0);
    traffic.set(drifted_ms / 1000.0);
    let mut checks = serde_json::Value::Null;
    wait_for(
        "a rest check takes the drift as live traffic's level at rest",
        PATIENCE,
        async || {
            run.assert_alive("during the drift");
            let live = status(&ws, &run_id)["live"]["adaptive"]["watch"].clone();
            checks = live["rest_checks"].clone();
            let moved = live["baseline_mean_ms"].as_f64().unwrap_or(0.0);
            checks["spared"].as_u64() > Some(0)
                || (checks["done"].as_u64() > Some(done_before) && moved > 1.8 * baseline)
        },
    )
    .await;
    let changes = rate_changes(&ws, &run_id).await;
    assert!(
        changes
            .iter()
            .all(|c| c.seq <= drifted_at || !LIVE_CUTS.contains(&c.cause.as_str())),
        "the drift was cut for, though live traffic was as slow at rest ({checks:#}):\n{}",
        show(&changes)
    );
    let text = ws.run(&["status", &run_id]).stdout;
    assert!(
        text.contains(" rest check(s): ")
            && text.contains("kept it where live traffic was as slow"),
        "status says what the rest checks decided: {text}"
    );
    let live = status(&ws, &run_id)["live"]["adaptive"]["watch"].clone();
    let moved = live["baseline_mean_ms"].as_f64().unwrap_or(0.0);
    assert!(
        moved > 1.8 * baseline,
        "the level at rest is the baseline now (was {baseline:.2} ms, traffic at \
         {drifted_ms} ms): {live:#}"
    );

    // Harm: live traffic is slow only while the backfill writes.
    let harmed_at = changes.last().map_or(0, |c| c.seq);
    let mut counts = std::collections::VecDeque::from([-1_i64; 3]);
    let deadline = Instant::now() + PATIENCE;
    let mut polls = 0_u32;
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events_copy")
            .fetch_one(&watched.target)
            .await
            .expect("count the target");
        counts.pop_front();
        counts.push_back(count);
        // Writing within the last ~300 ms: slow; at rest: fast.
        traffic.set(if counts[0] < count { SLOW } else { FAST });
        polls += 1;
        if polls.is_multiple_of(10) {
            let changes = rate_changes(&ws, &run_id).await;
            let cut = changes
                .iter()
                .any(|c| c.seq > harmed_at && LIVE_CUTS.contains(&c.cause.as_str()));
            let checks = &status(&ws, &run_id)["live"]["adaptive"]["watch"]["rest_checks"];
            if cut && checks["cut"].as_u64() > Some(0) {
                break;
            }
            assert!(
                run.exited().is_none() && Instant::now() < deadline,
                "no cut while live traffic was slow only when the backfill wrote, within \
                 {PATIENCE:?} or the run's life ({checks:#})\n{}",
                show(&changes)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    traffic.set(FAST);
    let calls = finish(
        &ws,
        &mut run,
        &run_id,
        traffic,
        &watched.target,
        &watched.want,
    )
    .await;
    eprintln!(
        "baseline {baseline:.2} ms, drifted to {drifted_ms} ms and followed to {moved:.2} ms \
         by a rest check; {calls} live calls\n{}",
        show(&rate_changes(&ws, &run_id).await)
    );
}

/// A rest check that keeps the rate keeps the live window it judged, so the climb goes on at
/// the next interval. The rate doubles from its floor (a check is due at each doubling), and
/// the allowed rise is wide, so the check keeps the rate. Live traffic is twice as slow
/// while the check holds the backfill: the check takes that as the level at rest, and the
/// window read after it, faster, brings the baseline back down
/// (`Adaptive::return_from_drift`), which must not forget the window either. Batches of
/// 1,000 rows make the live window span 4 s at twice the floor (two batches), so a window
/// forgotten at the check or at the return would hold the climb about 4 s longer than the
/// hold itself (1.4 s of settling and a 1 s check): the longest pause between two raises
/// would be 6.4 s or more, against 2.4 s and an interval or two with the window kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_check_that_keeps_the_rate_lets_the_climb_go_on_at_once() {
    let Some(pg) = server(true).await else {
        return;
    };
    let ws = Workspace::new();
    let checked = throttle(&pg.url())
        .replace("window = 10", "window = 50")
        .replace("max_latency_increase = 0.5", "max_latency_increase = 1.0")
        .replace(
            "rest_check = \"0s\"",
            "rest_check = \"1s\"\nrest_check_every = \"10m\"",
        );
    assert!(checked.contains("window = 50") && checked.contains("rest_check = \"1s\""));
    let limits = DRIFT_LIMITS.replace("batch_rows = 100", "batch_rows = 1000");
    let watched = WatchedRun::start(&pg, &ws, &limits, &checked).await;
    let (traffic, mut run, run_id) = (watched.traffic, watched.run, watched.run_id);

    // The check at twice the floor, live traffic slower while it holds; then raises after it.
    let mut checked_at = 0;
    wait_for("a rest check keeps the rate", PATIENCE, async || {
        run.assert_alive("before the rest check");
        let checks = &status(&ws, &run_id)["live"]["adaptive"]["watch"]["rest_checks"];
        let holding = checks["holding"].as_bool() == Some(true);
        traffic.set(if holding { 2.0 * FAST } else { FAST });
        checked_at = rate_changes(&ws, &run_id).await.last().map_or(0, |c| c.seq);
        checks["done"].as_u64() > Some(0)
    })
    .await;
    traffic.set(FAST);
    wait_for("the climb goes on after the check", PATIENCE, async || {
        run.assert_alive("after the rest check");
        rate_changes(&ws, &run_id)
            .await
            .iter()
            .filter(|c| c.seq > checked_at && c.cause == "recovered")
            .count()
            >= 3
    })
    .await;
    let changes = rate_changes(&ws, &run_id).await;
    let checks = status(&ws, &run_id)["live"]["adaptive"]["watch"]["rest_checks"].clone();
    assert!(
        checks["cut"] == 0
            && changes
                .iter()
                .all(|c| !LIVE_CUTS.contains(&c.cause.as_str())),
        "steady live traffic was cut for ({checks:#}):\n{}",
        show(&changes)
    );
    let at = |c: &backfill_store::RateChangeRecord| {
        chrono::DateTime::parse_from_rfc3339(&c.at).expect("a change's time")
    };
    let raises: Vec<_> = changes.iter().filter(|c| c.cause == "recovered").collect();
    let (longest, after) = raises
        .windows(2)
        .map(|w| ((at(w[1]) - at(w[0])).to_std().unwrap_or_default(), w[1].seq))
        .max()
        .expect("raises");
    assert!(
        longest >= Duration::from_millis(2_000),
        "no pause between two raises as long as the check's hold ({longest:?}, {checks:#}):\n{}",
        show(&changes)
    );
    assert!(
        longest < Duration::from_millis(4_500),
        "the climb waited {longest:?} after the check (up to #{after}), as if the window it \
         had judged were forgotten:\n{}",
        show(&changes)
    );
    finish(
        &ws,
        &mut run,
        &run_id,
        traffic,
        &watched.target,
        &watched.want,
    )
    .await;
}

/// The run is stopped (SIGSTOP) for 7 s, past the 5 s gap a reading may span, and live traffic
/// is ten times slower for most of that time, then fast again before the run continues. The
/// reading that spans the stop holds those seconds, in which the backfill did nothing: judged,
/// it cut the rate (its 4.7 s of slow statements outweigh the window's 2 s); dropped, the run
/// goes on at its rate, and finishes with the target equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_that_spans_a_stop_of_the_process_is_not_judged() {
    let Some(pg) = server(true).await else {
        return;
    };
    let ws = Workspace::new();
    let watched = WatchedRun::start(&pg, &ws, LIMITS, &throttle(&pg.url())).await;
    let (traffic, mut run, run_id) = (watched.traffic, watched.run, watched.run_id);
    // A full window of readings at rest first, so the one after the stop would be judged.
    wait_for_climb(&ws, &mut run, &run_id).await;
    let before = rate_changes(&ws, &run_id).await;
    assert!(
        before
            .iter()
            .all(|c| !LIVE_CUTS.contains(&c.cause.as_str())),
        "a cut while live traffic kept its baseline:\n{}",
        show(&before)
    );
    let stopped_at = before.last().map_or(0, |c| c.seq);

    let pid = run.pid();
    stop_process("STOP", pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic.set(SLOW);
    tokio::time::sleep(Duration::from_millis(4_700)).await;
    traffic.set(FAST);
    // Live sessions report their counters up to a second late: all of the slow ones are in
    // before the run continues, so the reading that spans the stop holds them all.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop_process("CONT", pid);

    // Ten intervals (two windows) after the stop: no cut.
    tokio::time::sleep(Duration::from_secs(4)).await;
    run.assert_alive("after the stop");
    let after = rate_changes(&ws, &run_id).await;
    assert!(
        after
            .iter()
            .all(|c| c.seq <= stopped_at || !LIVE_CUTS.contains(&c.cause.as_str())),
        "the seconds live traffic was slow while the run was stopped were judged as the \
         backfill's cost:\n{}",
        show(&after)
    );
    finish(
        &ws,
        &mut run,
        &run_id,
        traffic,
        &watched.target,
        &watched.want,
    )
    .await;
}

/// Waits until the run's rate has climbed once (a `recovered` change).
async fn wait_for_climb(ws: &Workspace, run: &mut Running, run_id: &str) {
    wait_for("the rate climbs above its floor", PATIENCE, async || {
        run.assert_alive("while climbing");
        rate_changes(ws, run_id)
            .await
            .iter()
            .any(|c| c.cause == "recovered")
    })
    .await;
}

/// `kill -SIGNAL pid`.
fn stop_process(signal: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// The causes of a cut by the watched database's latency signals.
const LIVE_CUTS: [&str; 2] = ["live_latency", "live_transactions"];

/// Waits until `status` shows a cut by the live latency signals; returns that status.
async fn wait_for_live_cut(ws: &Workspace, run: &mut Running, run_id: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(
        "a live_latency or live_transactions cut",
        PATIENCE,
        async || {
            run.assert_alive("while waiting for a live cut");
            last = status(ws, run_id);
            LIVE_CUTS.iter().any(|c| last["rate"]["cause"] == *c)
        },
    )
    .await;
    last
}

/// Runs `n` transactions on a new live session (not named `backfill`), each two `SELECT 1`
/// with `between` of client time between them, then ends the session (which reports its
/// statistics at once); returns the watch's live transactions and statements over them.
async fn live_transactions(
    pg: &PrivatePostgres,
    watch: &mut Watch,
    n: u64,
    between: Duration,
) -> (StatDelta, StatDelta) {
    let mut conn = pg.connect().await;
    for _ in 0..n {
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("live");
        tokio::time::sleep(between).await;
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("live");
        tx.commit().await.expect("commit");
    }
    conn.close().await.expect("close");
    let (mut transactions, mut statements) = (StatDelta::default(), StatDelta::default());
    let add = |sum: &mut StatDelta, d: Option<StatDelta>| {
        if let Some(d) = d {
            sum.calls += d.calls;
            sum.time += d.time;
        }
    };
    // The session reports its counters as it exits, a moment after the close.
    wait_for(
        "the live session's transactions are reported",
        PATIENCE,
        async || {
            let reading = unhurried_reading(watch).await;
            assert_eq!(reading.unavailable, vec![], "every signal offered");
            add(&mut transactions, reading.transactions);
            add(&mut statements, reading.statements);
            transactions.calls >= n
        },
    )
    .await;
    (transactions, statements)
}

/// A reading of `watch` a second after the previous one. The watch takes its own
/// transactions (4 a reading) out of the count at once, but PostgreSQL adds them to
/// `pg_stat_database` only when each session flushes its statistics, at most once a second:
/// read every 100 ms, the watch's own transactions not yet flushed (up to ~40) outnumber the
/// 20 live ones, which then read as its own until the next flush (a flaky timeout).
async fn unhurried_reading(watch: &mut Watch) -> backfill_connectors::watch::Reading {
    tokio::time::sleep(Duration::from_millis(900)).await;
    watch.read().await.expect("reading")
}

fn per_call(d: StatDelta) -> Duration {
    d.time / u32::try_from(d.calls.max(1)).unwrap()
}

/// The signal that statement time misses: a client slow between the statements of its
/// transactions (short of CPU, say) makes each transaction longer while each statement keeps
/// its time. The watch's time per live transaction (time active or idle inside one, per
/// commit) rises with it; the statements' time per call does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_transaction_time_rises_when_clients_are_slow_between_statements() {
    let Some(pg) = server(true).await else {
        return;
    };
    let mut watch = Watch::open(&SecretUrl::new(pg.url())).await.expect("watch");
    let first = watch.read().await.expect("first reading");
    assert_eq!(first.transactions, None, "nothing to subtract from yet");

    let (quick, quick_statements) = live_transactions(&pg, &mut watch, 20, Duration::ZERO).await;
    let (slow, slow_statements) =
        live_transactions(&pg, &mut watch, 20, Duration::from_millis(20)).await;
    eprintln!(
        "per transaction: {:?} quick, {:?} slow; per statement: {:?} quick, {:?} slow          ({quick:?}, {slow:?})",
        per_call(quick),
        per_call(slow),
        per_call(quick_statements),
        per_call(slow_statements)
    );
    // Direction, and the 20 ms each slow transaction surely spent idle inside itself.
    assert!(per_call(slow) > per_call(quick), "{quick:?} vs {slow:?}");
    assert!(per_call(slow) >= Duration::from_millis(20), "{slow:?}");
    // The statements themselves stayed short: statement time alone would not have seen it.
    assert!(
        per_call(slow_statements) < per_call(slow) / 2,
        "{slow_statements:?} vs {slow:?}"
    );
}

/// Statements that read the statistics views (the watch's own, monitoring) are not live
/// traffic, and neither is their time: a monitoring session's slow reads of
/// `pg_stat_activity` between a live session's quick transactions leave the live
/// transactions' time as it is. Left in, the watch's own reads, which grow slower while a
/// backfill loads the server, would read as a rise in live transaction time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_that_read_the_statistics_are_not_live_traffic() {
    let Some(pg) = server(true).await else {
        return;
    };
    let mut watch = Watch::open(&SecretUrl::new(pg.url())).await.expect("watch");
    watch.read().await.expect("first reading");
    watch
        .read()
        .await
        .expect("second reading (counters of its own reads)");
    let (mut live, mut monitor) = (pg.connect().await, pg.connect().await);
    let n = 20;
    for _ in 0..n {
        sqlx::query("SELECT pg_sleep(0.02) FROM pg_stat_activity LIMIT 1")
            .execute(&mut monitor)
            .await
            .expect("monitoring read");
        let mut tx = live.begin().await.expect("begin");
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("live");
        tx.commit().await.expect("commit");
    }
    monitor.close().await.expect("close");
    live.close().await.expect("close");
    let mut transactions = StatDelta::default();
    wait_for(
        "the live session's transactions are reported",
        PATIENCE,
        async || {
            let reading = unhurried_reading(&mut watch).await;
            if let Some(d) = reading.transactions {
                transactions.calls += d.calls;
                transactions.time += d.time;
            }
            transactions.calls >= n
        },
    )
    .await;
    eprintln!("live transactions: {transactions:?}");
    // The monitoring reads took 20 x 20 ms; the live transactions a few ms in all.
    assert!(
        transactions.time < Duration::from_millis(200),
        "the monitoring reads' time counted as live: {transactions:?}"
    );
    assert!(transactions.calls < 2 * n, "{transactions:?}");
}

/// The watch reads `pg_stat_statements`' query texts once per statement it has not seen yet,
/// not at every reading: asking for the texts makes the server load its whole query-text file
/// (megabytes on a busy server), at every reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reads_statement_texts_once_not_at_every_reading() {
    let Some(pg) = server(true).await else {
        return;
    };
    let mut watch = Watch::open(&SecretUrl::new(pg.url())).await.expect("watch");
    let readings = 20;
    for _ in 0..readings {
        watch.read().await.expect("reading");
    }
    // Every statement the watch ran, by what it reads: the texts (it classifies statements
    // with `s.query ILIKE`) or only the counters.
    let ran: Vec<(String, i64)> = sqlx::query_as(
        "SELECT query, sum(calls)::int8 FROM pg_stat_statements \
         WHERE query LIKE '%FROM pg_stat_statements(%' GROUP BY query",
    )
    .fetch_all(&mut pg.connect().await)
    .await
    .expect("the watch's statements");
    eprintln!("{ran:#?}");
    let calls = |reads_texts: bool| -> i64 {
        ran.iter()
            .filter(|(q, _)| q.contains("s.query ILIKE") == reads_texts)
            .map(|(_, c)| c)
            .sum()
    };
    assert!(
        calls(false) >= readings,
        "the counters are read at every reading: {ran:?}"
    );
    assert!(
        (1..=3).contains(&calls(true)),
        "the texts were read {} times in {readings} readings: {ran:?}",
        calls(true)
    );
}

/// `check` on a spec whose `watch` is `url`: the `signals` object of `--json`, and the text.
async fn check_signals(url: &str) -> (serde_json::Value, crate::support::Ran) {
    let ws = Workspace::new();
    make_source(&ws.path("source.db"), 10, 1)
        .await
        .close()
        .await;
    make_target(&ws.path("target.db")).await.close().await;
    let spec = copy_spec(
        &ws.path("source.db").display().to_string(),
        &ws.path("target.db").display().to_string(),
        1,
        "rows_per_second = 100\n",
    );
    ws.write("spec.toml", &(spec + &throttle(url)));
    let json = ws.run(&["--json", "check", "spec.toml", "--offline"]);
    assert_eq!(json.code, 0, "offline check reads no signal: {json:?}");
    assert!(json.json().get("signals").is_none(), "{json:?}");
    let ran = ws.run(&["--json", "check", "spec.toml"]);
    let text = ws.run(&["check", "spec.toml"]);
    (ran.json()["signals"].clone(), text)
}

fn offer<'a>(signals: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    signals["offers"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["signal"] == name))
        .unwrap_or_else(|| panic!("no `{name}` in {signals:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_signals_the_watched_database_offers_and_why_not() {
    let Some(loaded) = server(false).await else {
        return;
    };
    let Some(plain) = PrivatePostgres::start() else {
        return;
    };
    // Not in shared_preload_libraries: says so and how to fix it, with a warning.
    let (signals, text) = check_signals(&plain.url()).await;
    assert_eq!(signals["database"], "throttle.watch");
    let statements = offer(&signals, "pg_stat_statements");
    assert_eq!(statements["available"], false, "{signals:#}");
    assert!(
        statements["detail"]
            .as_str()
            .unwrap()
            .contains("shared_preload_libraries"),
        "{signals:#}"
    );
    assert_eq!(offer(&signals, "wait events")["available"], true);
    assert_eq!(offer(&signals, "replica lag")["available"], true);
    // pg_stat_database needs no extension.
    assert_eq!(offer(&signals, "transaction time")["available"], true);
    assert!(text.stdout.contains("  transaction time: yes"), "{text:?}");
    assert!(
        text.stdout.contains("live signals of throttle.watch:")
            && text.stdout.contains("  pg_stat_statements: no (not loaded")
            && text.stdout.contains("  wait events: yes"),
        "{text:?}"
    );
    assert!(
        text.stderr.contains(
            "warning: throttle.watch: the watched database does not offer pg_stat_statements"
        ),
        "{text:?}"
    );
    // Loaded, not created in this database.
    let (signals, _) = check_signals(&loaded.url()).await;
    let detail = offer(&signals, "pg_stat_statements")["detail"].clone();
    assert!(
        detail.as_str().unwrap().contains("CREATE EXTENSION"),
        "{signals:#}"
    );
    // Created: offered.
    sqlx::raw_sql("CREATE EXTENSION pg_stat_statements")
        .execute(&mut loaded.connect().await)
        .await
        .expect("create pg_stat_statements");
    let (signals, text) = check_signals(&loaded.url()).await;
    assert_eq!(
        offer(&signals, "pg_stat_statements")["available"],
        true,
        "{signals:#}"
    );
    assert!(
        text.stdout.contains("  pg_stat_statements: yes")
            && !text.stderr.contains("throttle.watch"),
        "{text:?}"
    );
}

/// What the watch counts as live traffic: a session of the connectors (here the probe's) and
/// the state store's are named `backfill`, and the statements our sessions ran are left out
/// of the interval, while a live session's are counted with their own time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_sessions_are_named_and_their_statements_left_out_of_live_traffic() {
    let Some(pg) = server(true).await else {
        return;
    };
    let url = SecretUrl::new(pg.url());
    let store = Store::open(&pg.url()).await.expect("a state store in it");
    let ours = Probe::open(&url).await.expect("probe");
    let mut watch = Watch::open(&url).await.expect("watch");
    let mut live = pg.connect().await;
    let named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backfill'",
    )
    .fetch_one(&mut live)
    .await
    .unwrap();
    // The store's pool, the probe and the watch: at least three sessions named `backfill`.
    assert!(named >= 3, "{named} sessions named backfill");

    // Ours: a slow statement, seen by the first reading (which only sets the counters).
    ours.measure("SELECT pg_sleep(0.05), 'ours'")
        .await
        .expect("our statement");
    let first = watch.read().await.expect("first reading");
    assert_eq!(first.statements, None, "nothing to subtract from yet");
    // Our other sessions (the store's, the probe) use the watched database: its transaction
    // counters would mix theirs with live traffic's, so that signal is left out, said why.
    assert_eq!(first.transactions, None);
    assert!(
        matches!(
            first.unavailable.as_slice(),
            [("transaction time", why)] if why.contains("other backfill sessions")
        ),
        "every other signal offered: {first:?}"
    );
    assert!(first.waiting.is_some());

    // Then ours again, five times, and a live statement ten times.
    for _ in 0..5 {
        ours.measure("SELECT pg_sleep(0.05), 'ours'")
            .await
            .expect("our statement");
    }
    for _ in 0..10 {
        sqlx::query("SELECT pg_sleep($1)")
            .bind(FAST)
            .execute(&mut live)
            .await
            .expect("live statement");
    }
    let reading = watch.read().await.expect("reading");
    let interval = reading.statements.expect("an interval");
    let mean = interval.time.as_secs_f64() / interval.calls.max(1) as f64;
    assert_eq!(interval.calls, 10, "only the live calls: {reading:?}");
    assert!(
        (0.0015..0.02).contains(&mean),
        "the live statement's own time, not ours (50 ms): {mean} s"
    );

    // While ours share the database, the watch keeps reading; once they leave, the live
    // transactions count again, none of them taken for the watch's own transactions of the
    // readings in between (`transactions_count_again_once_our_sessions_leave`).
    for _ in 0..20 {
        watch.read().await.expect("reading");
    }
    store.close().await;
    ours.close().await;
    drop(live);
    wait_for(
        "the transaction time is offered again once our sessions left",
        PATIENCE,
        async || {
            let reading = watch.read().await.expect("reading");
            reading.unavailable.is_empty()
        },
    )
    .await;
    let (transactions, _) = live_transactions(&pg, &mut watch, 10, Duration::ZERO).await;
    assert!(transactions.calls >= 10, "{transactions:?}");
}

/// MariaDB: `Threads_running` always; the statement digests of the watched schema only with
/// `performance_schema = ON` (off by default, and on the shared test server), counted per
/// interval like `pg_stat_statements`. `check` says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_offers_threads_running_and_digests_only_with_performance_schema() {
    let Some(off) = PrivateMariaDb::start().await else {
        return;
    };
    let Some(on) = PrivateMariaDb::start_with(&["--performance-schema=ON"]).await else {
        return;
    };
    // Off: the digests are unavailable and say how to enable them; Threads_running reads.
    let mut watch = Watch::open(&SecretUrl::new(off.url()))
        .await
        .expect("watch");
    let reading = watch.read().await.expect("reading");
    assert!(reading.running.is_some_and(|n| n >= 1), "{reading:?}");
    assert_eq!(reading.statements, None);
    assert!(
        reading
            .unavailable
            .iter()
            .any(|(s, _)| *s == "statement digests"),
        "{reading:?}"
    );
    let (signals, text) = check_signals(&off.url()).await;
    let digests = offer(&signals, "statement digests");
    assert_eq!(digests["available"], false, "{signals:#}");
    assert!(
        digests["detail"]
            .as_str()
            .unwrap()
            .contains("performance_schema = ON"),
        "{signals:#}"
    );
    assert_eq!(offer(&signals, "Threads_running")["available"], true);
    assert!(
        text.stderr.contains(
            "warning: throttle.watch: the watched database does not offer statement digests"
        ),
        "{text:?}"
    );

    // On: live statements in the schema are counted with their own time.
    let mut watch = Watch::open(&SecretUrl::new(on.url())).await.expect("watch");
    assert_eq!(watch.read().await.expect("first").unavailable, vec![]);
    let mut live = on.connect("test").await.expect("connect");
    // Text protocol, as most application drivers send it (MariaDB keeps no digest for a
    // server-side prepared statement's executions).
    for _ in 0..10 {
        sqlx::raw_sql("SELECT SLEEP(0.01)")
            .execute(&mut live)
            .await
            .expect("live statement");
    }
    let reading = watch.read().await.expect("reading");
    let interval = reading.statements.expect("an interval");
    let mean = interval.time.as_secs_f64() / interval.calls.max(1) as f64;
    assert!(
        interval.calls >= 10 && (0.005..0.1).contains(&mean),
        "{interval:?}: mean {mean} s"
    );
    let (signals, _) = check_signals(&on.url()).await;
    assert_eq!(
        offer(&signals, "statement digests")["available"],
        true,
        "{signals:#}"
    );
}

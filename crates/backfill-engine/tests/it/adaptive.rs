//! Limits that steer a real run: the rows limiter's accuracy, and the adaptive throttle
//! reacting to a probe whose latency is made to rise on a real PostgreSQL server.
//!
//! PostgreSQL comes from `BACKFILL_TEST_POSTGRES_URL`; the adaptive test uses its own schema
//! (`backfill_testkit::PgSchema`), dropped at the end. When the server is unreachable it is
//! skipped and counted as skipped, or fails when services are required
//! (`backfill_testkit::skip`).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backfill_core::plan::{Scope, Step};
use backfill_core::spec::{Probe, Spec, ThrottleSpec};
use backfill_core::{RunState, SecretUrl};
use backfill_engine::{ExecuteOptions, RunSummary, Shutdown, execute, prepare_run};
use backfill_store::{RateChangeRecord, Store};
use backfill_testkit::PgSchema;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use tokio::task::JoinHandle;

use crate::{count, fixture, spec};

/// A run of `spec` executing in the background, with its state store and stop switch.
struct Running {
    store: Store,
    run_id: String,
    shutdown: Shutdown,
    task: JoinHandle<RunSummary>,
}

async fn start(spec: Spec, state: &str) -> Running {
    let store = Store::open(state).await.unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let launch = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    let run = launch.run().clone();
    let shutdown = Shutdown::new();
    let options = ExecuteOptions::new("t@h", shutdown.clone());
    let task = {
        let store = store.clone();
        tokio::spawn(async move { execute(&store, &spec, &run, options).await.unwrap() })
    };
    Running {
        store,
        run_id: launch.run().id.clone(),
        shutdown,
        task,
    }
}

impl Running {
    /// The rate changes so far, oldest first.
    async fn changes(&self) -> Vec<RateChangeRecord> {
        let mut all = self.store.rate_changes(&self.run_id, 1000).await.unwrap();
        all.sort_by_key(|c| c.seq);
        all
    }

    /// Waits (up to `within`) for a change after `after_seq` that `pred` accepts.
    async fn wait_change(
        &self,
        after_seq: u64,
        within: Duration,
        pred: impl Fn(&RateChangeRecord) -> bool,
    ) -> RateChangeRecord {
        let deadline = Instant::now() + within;
        loop {
            let changes = self.changes().await;
            if let Some(c) = changes.iter().find(|c| c.seq > after_seq && pred(c)) {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such rate change within {within:?}; changes: {:#?}",
                changes
                    .iter()
                    .map(|c| (c.seq, c.cause.as_str(), c.rate, c.detail.to_string()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> RunSummary {
        self.shutdown.request();
        self.task.await.unwrap()
    }
}

/// A day per partition, so partitions are long and few.
fn daily(mut spec: Spec) -> Spec {
    if let Scope::Time { step, .. } = &mut spec.scope {
        *step = Step::Seconds(86_400);
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_per_second_holds_within_ten_percent_over_twenty_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // 60,000 rows: 30 s at 2,000 rows/s; the test measures 20 s of it, then stops the run.
    let (source, target) = fixture(dir.path(), 60_000, "target.db").await;
    let mut spec = daily(spec(&source, &target, 1000));
    spec.limits.rows_per_second = NonZeroU32::new(2000);
    spec.limits.batch_rows = NonZeroU32::new(100).unwrap();
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let run = start(spec, &state).await;
    let copied = || count(&target, "SELECT count(*) FROM copy");
    while copied().await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the start-up burst (a tenth of a second of rows).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, c0) = (Instant::now(), copied().await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (t1, c1) = (Instant::now(), copied().await);
    #[allow(clippy::cast_precision_loss)]
    let observed = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    let summary = run.stop().await;
    assert_eq!(summary.state, RunState::Paused, "stopped before the end");
    assert!(
        (1800.0..=2200.0).contains(&observed),
        "observed {observed:.0} rows/s for a limit of 2000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_throttle_cuts_on_probe_latency_and_recovers() {
    let Some(schema) = PgSchema::create("bf_adaptive").await else {
        return;
    };
    schema
        .exec(&format!(
            "CREATE TABLE {0}.probe_delay (d float8 NOT NULL); \
             INSERT INTO {0}.probe_delay VALUES (0)",
            schema.name()
        ))
        .await;
    let outcome = tokio::spawn(latency_scenario(
        schema.server_url().to_owned(),
        schema.name().to_owned(),
    ))
    .await;
    schema.drop_now().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn latency_scenario(url: String, schema: String) {
    let dir = tempfile::tempdir().unwrap();
    // 12,000 rows: 30 s at 400 rows/s, more once cut; the test stops the run when done.
    let (source, target) = fixture(dir.path(), 12_000, "target.db").await;
    let mut spec = daily(spec(&source, &target, 200));
    spec.limits.rows_per_second = NonZeroU32::new(400);
    spec.limits.batch_rows = NonZeroU32::new(20).unwrap();
    spec.throttle = Some(ThrottleSpec {
        probe: Some(Probe {
            url: SecretUrl::new(&url),
            sql: format!("SELECT pg_sleep((SELECT d FROM {schema}.probe_delay))"),
        }),
        interval: Duration::from_millis(200),
        baseline_probes: 5,
        window: 5,
        increase_fraction: 0.25,
        // The rise below is 200 ms on a sub-millisecond baseline; a lenient threshold keeps a
        // busy machine's jitter from cutting often (a jitter cut before the rise is the
        // throttle working, so the test does not forbid one, it asserts the rise's cut).
        max_latency_increase: 5.0,
        ..ThrottleSpec::default()
    });
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let run = start(spec, &state).await;
    // The baseline is measured before the run starts; the adaptive start follows it, at the
    // floor (1% of 400: slow start), then climbs while healthy.
    let started = run
        .wait_change(0, Duration::from_secs(10), |c| {
            c.cause == "start" && c.detail["adaptive"] == true
        })
        .await;
    assert_eq!(started.rate, Some(4.0));
    let baseline_p90 = started.detail["baseline_p90_ms"].as_f64().unwrap();
    // The threshold (6× the baseline, or the probe's noise when larger: with 5 probes for a
    // window of 5, the baseline's maximum) must sit below the 200 ms rise.
    assert!(baseline_p90 < 30.0, "baseline p90 {baseline_p90} ms");
    let limit = started.detail["limit_p90_ms"].as_f64().unwrap();
    assert!(
        limit >= baseline_p90 * 6.0 - 1e-9 && limit < 200.0,
        "limit {limit} ms for a baseline p90 of {baseline_p90} ms"
    );
    // Up toward the maximum in steps of a quarter of it, once a window of probes is in
    // (the first step is enough: a cut from there is still well above the floor).
    // About 5 s on a quiet machine (×2 per window of probes); a loaded one delays probes and
    // its jitter may cut once on the way, so the wait is generous.
    let climbed = run
        .wait_change(started.seq, Duration::from_secs(60), |c| {
            c.cause == "recovered" && c.rate.is_some_and(|r| r >= 100.0)
        })
        .await;
    let before_rise = climbed.seq;

    let mut conn = PgConnection::connect(&url).await.unwrap();
    let set_delay = |d: f64| {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "UPDATE {schema}.probe_delay SET d = {d}"
        )))
    };
    conn.execute(set_delay(0.2)).await.unwrap();
    let cut = run
        .wait_change(before_rise, Duration::from_secs(10), |c| {
            c.cause == "latency"
        })
        .await;
    // Halved from wherever it stood (400, or 200 if jitter cut it once before the rise).
    let cut_from = cut.detail["from"].as_f64().unwrap();
    assert_eq!(cut.rate, Some(cut_from * 0.5), "halved: {}", cut.detail);
    assert!(
        cut.detail["p90_ms"].as_f64().unwrap() >= 200.0,
        "the cut saw the slow probe: {}",
        cut.detail
    );
    assert_eq!(cut.detail["baseline_p90_ms"].as_f64(), Some(baseline_p90));
    assert_eq!(cut.detail["limit_p90_ms"].as_f64(), Some(limit));

    conn.execute(set_delay(0.0)).await.unwrap();
    let recovered = run
        .wait_change(cut.seq, Duration::from_secs(10), |c| c.cause == "recovered")
        .await;
    let from = recovered.detail["from"].as_f64().unwrap();
    assert!(recovered.rate.unwrap() > from, "an increase: {recovered:?}");
    conn.close().await.unwrap();

    // `status` reads the adaptive numbers from the heartbeat.
    let live = run.store.controls(&run.run_id).await.unwrap().live.unwrap();
    assert_eq!(
        live["adaptive"]["baseline_p90_ms"].as_f64(),
        Some(baseline_p90),
        "{live}"
    );
    assert_eq!(
        live["adaptive"]["limit_p90_ms"].as_f64(),
        Some(limit),
        "{live}"
    );
    assert!(live["adaptive"]["rate"].as_f64().is_some(), "{live}");
    let summary = run.stop().await;
    assert_eq!(summary.state, RunState::Paused);
}

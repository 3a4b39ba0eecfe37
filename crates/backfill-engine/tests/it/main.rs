//! Engine tests through the library API on real SQLite files.

mod adaptive;

use std::num::NonZeroU32;
use std::str::FromStr;

use backfill_core::plan::{Scope, Step};
use backfill_core::spec::{Limits, SourceSpec, Spec, TargetSpec, WriteMode};
use backfill_core::{Guarantee, PartitionState, RunState, SecretUrl, TimeFormat};
use backfill_engine::{ExecuteOptions, Launch, Shutdown, execute, prepare_run, status};
use chrono::{TimeZone, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

async fn pool(url: &str) -> SqlitePool {
    SqlitePool::connect_with(
        SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true),
    )
    .await
    .unwrap()
}

/// A source with `n` rows, one per minute from 2026-03-01, and an empty target table.
async fn fixture(dir: &std::path::Path, n: i64, target_file: &str) -> (String, String) {
    let source = format!("sqlite://{}/source.db", dir.display());
    let target = format!("sqlite://{}/{target_file}", dir.display());
    let src = pool(&source).await;
    sqlx::query("CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, v INTEGER)")
        .execute(&src)
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
         INSERT INTO events SELECT i, strftime('%Y-%m-%dT%H:%M:%SZ', 1772323200 + i * 60, 'unixepoch'), i * 3 FROM n",
    )
    .bind(n)
    .execute(&src)
    .await
    .unwrap();
    src.close().await;
    let dst = pool(&target).await;
    sqlx::query("CREATE TABLE copy (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, v INTEGER)")
        .execute(&dst)
        .await
        .unwrap();
    dst.close().await;
    (source, target)
}

fn spec(source: &str, target: &str, hours: u32) -> Spec {
    Spec {
        name: "engine_test".into(),
        reason: Some("test".into()),
        source: Some(SourceSpec {
            url: SecretUrl::new(source),
            query: "SELECT id, ts, v FROM events WHERE ts >= :start AND ts < :end".into(),
            time_format: TimeFormat::Rfc3339,
            time_column: None,
            ready: None,
        }),
        target: TargetSpec {
            url: SecretUrl::new(target),
            table: Some("copy".into()),
            key: vec!["id".into()],
            mode: WriteMode::Upsert,
            time_format: TimeFormat::Rfc3339,
            guard: None,
            pushdown: true,
            shadow: None,
            undo: false,
            propagate_deletes: false,
            delete_window_column: None,
            partition_exchange: false,
        },
        scope: Scope::Time {
            start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
                + chrono::Duration::hours(i64::from(hours)),
            step: Step::Seconds(3600),
            timezone: chrono_tz::UTC,
        },
        limits: Limits {
            concurrency: NonZeroU32::new(3).unwrap(),
            batch_rows: NonZeroU32::new(7).unwrap(),
            ..Limits::default()
        },
        throttle: None,
        validate: Default::default(),
        canary: None,
        slo: None,
        redacted_text: String::new(),
        spec_hash: "h".into(),
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    let p = pool(url).await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&p)
        .await
        .unwrap();
    p.close().await;
    n
}

#[tokio::test]
async fn state_store_in_the_target_database_commits_checkpoints_with_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 300, "target.db").await;
    let spec = spec(&source, &target, 5);
    let store = backfill_store::Store::open(&target).await.unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let launch = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    let summary = execute(
        &store,
        &spec,
        launch.run(),
        ExecuteOptions::new("t@h", Shutdown::new()),
    )
    .await
    .unwrap();
    assert_eq!(
        summary.guarantee,
        Guarantee::ExactlyOnce,
        "upserts into the state store's database"
    );
    assert_eq!(summary.state, RunState::Succeeded);
    assert_eq!(summary.counts.read, 300);
    assert_eq!(
        summary.counts.inserted, 300,
        "counts survive the in-transaction checkpoint"
    );
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, 300);
    let parts = store.partitions(&launch.run().id).await.unwrap();
    assert!(
        parts
            .iter()
            .all(|p| p.state == PartitionState::Done && p.counts.read == 60)
    );
}

#[tokio::test]
async fn second_prepare_resumes_and_force_new_creates() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 120, "target.db").await;
    let spec = spec(&source, &target, 2);
    let store = backfill_store::Store::open(&format!("sqlite://{}/state.db", dir.path().display()))
        .await
        .unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let first = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    assert!(matches!(first, Launch::Created(_)));
    let again = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    assert!(matches!(&again, Launch::Resumed(r) if r.id == first.run().id));
    let forced = prepare_run(&store, &spec, &plan, None, "t@h", true)
        .await
        .unwrap();
    assert!(matches!(&forced, Launch::Created(r) if r.id != first.run().id));
    let no_reason = Spec {
        reason: None,
        ..spec.clone()
    };
    assert!(matches!(
        prepare_run(&store, &no_reason, &plan, Some("  "), "t@h", true).await,
        Err(backfill_engine::EngineError::NoReason)
    ));
}

#[tokio::test]
async fn a_changed_spec_is_refused_naming_each_field_and_an_old_run_resumes_by_its_old_hash() {
    use backfill_engine::EngineError;
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 120, "target.db").await;
    let spec = spec(&source, &target, 2);
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let store = backfill_store::Store::open(&state).await.unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let run = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap()
        .run()
        .clone();

    // Longer scope, another table: both named, old and new value.
    let mut changed = spec.clone();
    changed.scope = Scope::Time {
        start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
        end: Utc.with_ymd_and_hms(2026, 3, 1, 3, 0, 0).unwrap(),
        step: Step::Seconds(3600),
        timezone: chrono_tz::UTC,
    };
    changed.target.table = Some("copy2".into());
    let changed_plan = backfill_core::plan::plan(&changed).unwrap();
    let err = prepare_run(&store, &changed, &changed_plan, None, "t@h", false)
        .await
        .unwrap_err();
    let EngineError::PlanChanged {
        run_id, changes, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(run_id, &run.id);
    let lines: Vec<String> = changes.iter().flatten().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"target.table: "copy" -> "copy2""#,
            r#"scope.end: "2026-03-01T02:00:00Z" -> "2026-03-01T03:00:00Z""#,
        ]
    );
    assert!(err.to_string().contains(&lines[1]), "{err}");
    // Limits are not part of the plan: the same run resumes.
    let mut faster = spec.clone();
    faster.limits.concurrency = NonZeroU32::new(8).unwrap();
    let resumed = prepare_run(&store, &faster, &plan, None, "t@h", false)
        .await
        .unwrap();
    assert!(matches!(&resumed, Launch::Resumed(r) if r.id == run.id));

    // A run from before the normalised spec: its old hash still resumes it ...
    let db = pool(&state).await;
    let legacy = backfill_core::plan::legacy_hash(&spec, &plan);
    sqlx::query("UPDATE runs SET normalized_spec = NULL, plan_hash = ?1")
        .bind(&legacy)
        .execute(&db)
        .await
        .unwrap();
    let resumed = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    assert!(matches!(&resumed, Launch::Resumed(r) if r.id == run.id));
    // ... and a changed spec is refused with both hashes, the fields being unknown.
    let err = prepare_run(&store, &changed, &changed_plan, None, "t@h", false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::PlanChanged { changes: None, stored, .. } if *stored == legacy),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&legacy) && text.contains(&changed_plan.hash),
        "{text}"
    );
    db.close().await;
}

/// Executes `run` again, to its end.
async fn resume_to_end(
    store: &backfill_store::Store,
    spec: &Spec,
    run: &backfill_store::RunRecord,
) -> backfill_engine::RunSummary {
    execute(
        store,
        spec,
        run,
        ExecuteOptions::new("t@h", Shutdown::new()),
    )
    .await
    .unwrap()
}

/// Creates a run of `spec` (whose rate limit makes it last about a second) with a SQLite
/// state store in `dir`, and executes it with a stop request after 300 ms, so it pauses
/// mid-run: the store, the run and the paused session's summary.
async fn stopped_mid_run(
    dir: &std::path::Path,
    spec: &Spec,
) -> (
    backfill_store::Store,
    backfill_store::RunRecord,
    backfill_engine::RunSummary,
) {
    let state = format!("sqlite://{}/state.db", dir.display());
    let store = backfill_store::Store::open(&state).await.unwrap();
    let plan = backfill_core::plan::plan(spec).unwrap();
    let run = prepare_run(&store, spec, &plan, None, "t@h", false)
        .await
        .unwrap()
        .run()
        .clone();
    let shutdown = Shutdown::new();
    let stopper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            shutdown.request();
        })
    };
    let paused = execute(&store, spec, &run, ExecuteOptions::new("t@h", shutdown))
        .await
        .unwrap();
    stopper.await.unwrap();
    (store, run, paused)
}

#[tokio::test]
async fn a_stop_request_pauses_and_the_resume_finishes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 2_000, "target.db").await;
    let mut spec = spec(&source, &target, 34);
    // The limiter lets a tenth of a second of rows through at once, then 1,000 a second:
    // the 2,000 rows take about two seconds, so the stop at 300 ms always lands mid-run.
    spec.limits.rows_per_second = NonZeroU32::new(1_000);
    let (store, run, paused) = stopped_mid_run(dir.path(), &spec).await;
    assert_eq!(paused.state, RunState::Paused);
    let parts = store.partitions(&run.id).await.unwrap();
    assert!(
        parts.iter().all(|p| p.state != PartitionState::Running),
        "nothing left running"
    );
    let totals = backfill_store::PartitionTotals::of(&parts);
    let st = status::compute(
        &store.get_run(&run.id).await.unwrap(),
        &totals,
        &parts,
        Utc::now(),
    );
    assert!(st.success_rate < 1.0);

    spec.limits.rows_per_second = None;
    let done = resume_to_end(&store, &spec, &run).await;
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(
        done.counts.read, 2_000,
        "no row read twice across pause and resume"
    );
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, 2_000);
    assert_eq!(
        count(&target, "SELECT sum(v) FROM copy").await,
        (0..2_000).map(|i| i * 3).sum::<i64>()
    );
    assert!(store.verify_audit().await.unwrap().first_bad_seq.is_none());
}

/// Runs `spec` to the end with the state store at `state`.
async fn run_to_end(spec: &Spec, state: &str) -> backfill_engine::RunSummary {
    let store = backfill_store::Store::open(state).await.unwrap();
    let plan = backfill_core::plan::plan(spec).unwrap();
    let launch = prepare_run(&store, spec, &plan, None, "t@h", false)
        .await
        .unwrap();
    execute(
        &store,
        spec,
        launch.run(),
        ExecuteOptions::new("t@h", Shutdown::new()),
    )
    .await
    .unwrap()
}

/// The undo log of `copy` without its run ids, by key: empty when there is none.
async fn undo_log(url: &str) -> Vec<(String, String, Option<String>, i64, Option<i64>)> {
    let p = pool(url).await;
    let rows = sqlx::query_as(
        "SELECT bf_undo_partition, bf_undo_op, nullif(hex(bf_undo_after), ''), id, v \
         FROM copy__bf_undo ORDER BY id",
    )
    .fetch_all(&p)
    .await
    .unwrap_or_default();
    p.close().await;
    rows
}

async fn dump(url: &str) -> Vec<(i64, String, Option<i64>)> {
    let p = pool(url).await;
    let rows = sqlx::query_as("SELECT id, ts, v FROM copy ORDER BY id")
        .fetch_all(&p)
        .await
        .unwrap();
    p.close().await;
    rows
}

#[tokio::test]
async fn pushdown_and_row_path_give_the_same_target_and_counts() {
    let replace = WriteMode::Replace {
        window_column: "ts".into(),
    };
    for (mode, undo) in [
        (WriteMode::Upsert, false),
        (replace.clone(), false),
        (WriteMode::Upsert, true),
        (replace, true),
    ] {
        for state_in_target in [false, true] {
            let mut results = Vec::new();
            for pushdown in [true, false] {
                let dir = tempfile::tempdir().unwrap();
                let (source, target) = fixture(dir.path(), 500, "target.db").await;
                // The target already holds part of the data: 148 identical rows, 50 that
                // differ, 2 missing, and one row outside the scope.
                let dst = pool(&target).await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "ATTACH DATABASE '{}/source.db' AS s;
                     INSERT INTO copy SELECT id, ts, v FROM s.events WHERE id < 200;
                     UPDATE copy SET v = v + 1 WHERE id BETWEEN 100 AND 149;
                     DELETE FROM copy WHERE id IN (10, 20);
                     INSERT INTO copy VALUES (100000, '2030-01-01T00:00:00Z', 1);",
                    dir.path().display()
                )))
                .execute(&dst)
                .await
                .unwrap();
                dst.close().await;
                let mut spec = spec(&source, &target, 10);
                spec.target.mode = mode.clone();
                spec.target.pushdown = pushdown;
                spec.target.undo = undo;
                let state = if state_in_target {
                    target.clone()
                } else {
                    format!("sqlite://{}/state.db", dir.path().display())
                };
                let summary = run_to_end(&spec, &state).await;
                assert_eq!(summary.state, RunState::Succeeded);
                assert_eq!(summary.pushdown, pushdown, "{mode:?}");
                // Only upserts commit each batch with its checkpoint; a replaced partition
                // is replaced again after a crash, even in the store's database.
                let expected = if state_in_target && mode == WriteMode::Upsert {
                    Guarantee::ExactlyOnce
                } else {
                    Guarantee::Idempotent
                };
                assert_eq!(summary.guarantee, expected, "{mode:?}");
                results.push((summary.counts, dump(&target).await, undo_log(&target).await));
            }
            let label = format!("{mode:?}, undo {undo}, state store in target: {state_in_target}");
            assert_eq!(results[0], results[1], "{label}");
            let (counts, rows, log) = &results[0];
            assert_eq!(rows.len(), 501, "{label}");
            // Both paths log through the same triggers, in both modes only the rows the
            // run inserted (302) or changed (50).
            let expected_log = if undo { 352 } else { 0 };
            assert_eq!(log.len(), expected_log, "{label}");
            assert_eq!(counts.read, 500, "{label}");
            if mode == WriteMode::Upsert {
                assert_eq!(
                    (counts.inserted, counts.updated, counts.unchanged),
                    (302, 50, 148),
                    "{label}"
                );
            } else {
                assert_eq!((counts.inserted, counts.deleted), (500, 198), "{label}");
            }
        }
    }
}

/// A resumed run keeps the undo setting it was created with, whatever the spec says now, in
/// both modes and both directions: a run that began without a log goes on without one (its
/// rollback can never restore only the later partitions), a run that began with one logs
/// every row it writes. A run created before the setting was recorded (its column NULL) is
/// judged from its log: an upsert that wrote rows with none continues without one.
#[tokio::test]
async fn a_run_resumed_keeps_the_undo_log_it_began_with() {
    let replace = WriteMode::Replace {
        window_column: "ts".into(),
    };
    let cases = [
        (WriteMode::Upsert, false, true),
        (WriteMode::Upsert, true, true),
        (replace.clone(), false, true),
        (replace, true, true),
        // Recorded before the column existed.
        (WriteMode::Upsert, false, false),
    ];
    for (mode, began_with_log, recorded) in cases {
        let label = format!("{mode:?}, began with log: {began_with_log}, recorded: {recorded}");
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = fixture(dir.path(), 2_000, "target.db").await;
        let mut spec = spec(&source, &target, 34);
        spec.target.mode = mode;
        spec.target.undo = began_with_log;
        // As in the test below: the stop at 300 ms lands mid-run.
        spec.limits.rows_per_second = NonZeroU32::new(1_000);
        let (store, run, paused) = stopped_mid_run(dir.path(), &spec).await;
        assert_eq!(paused.state, RunState::Paused, "{label}");
        assert!(paused.counts.inserted > 0, "{label}: {paused:?}");
        assert!(paused.counts.inserted < 2_000, "{label}: {paused:?}");
        if !recorded {
            let state = pool(&format!("sqlite://{}/state.db", dir.path().display())).await;
            sqlx::query("UPDATE runs SET undo_log = NULL")
                .execute(&state)
                .await
                .unwrap();
            state.close().await;
        }
        // Resumed with the other setting.
        spec.target.undo = !began_with_log;
        spec.limits.rows_per_second = None;
        let done = resume_to_end(&store, &spec, &run).await;
        assert_eq!(done.state, RunState::Succeeded, "{label}");
        assert_eq!(done.counts.inserted, 2_000, "{label}");
        let logged = undo_log(&target).await.len();
        if began_with_log {
            assert_eq!(
                logged, 2_000,
                "{label}: every row the run inserted is logged"
            );
        } else {
            assert_eq!(logged, 0, "{label}: no partition logged after the resume");
        }
    }
}

/// A run that began with an undo log is not continued with `partition_exchange`, which keeps
/// none: the resume is refused, naming the run, and nothing more is written.
#[tokio::test]
async fn a_run_with_an_undo_log_is_not_resumed_by_partition_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 2_000, "target.db").await;
    let mut spec = spec(&source, &target, 34);
    spec.target.mode = WriteMode::Replace {
        window_column: "ts".into(),
    };
    spec.target.undo = true;
    spec.limits.rows_per_second = NonZeroU32::new(1_000);
    let (store, run, paused) = stopped_mid_run(dir.path(), &spec).await;
    assert_eq!(paused.state, RunState::Paused);
    let written = count(&target, "SELECT count(*) FROM copy").await;
    spec.target.undo = false;
    spec.target.partition_exchange = true;
    spec.limits.rows_per_second = None;
    let err = execute(
        &store,
        &spec,
        &run,
        ExecuteOptions::new("t@h", Shutdown::new()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, backfill_engine::EngineError::UndoKept { run_id } if *run_id == run.id),
        "{err}"
    );
    assert!(err.to_string().contains("partition_exchange"), "{err}");
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, written);
}

#[tokio::test]
async fn pushdown_stops_between_batches_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 2_000, "target.db").await;
    let mut spec = spec(&source, &target, 34);
    // The limiter lets a tenth of a second of rows through at once, then 1,000 a second:
    // the 2,000 rows take about two seconds, so the stop at 300 ms always lands mid-run.
    spec.limits.rows_per_second = NonZeroU32::new(1_000);
    let (store, run, paused) = stopped_mid_run(dir.path(), &spec).await;
    assert!(paused.pushdown);
    assert_eq!(paused.state, RunState::Paused);
    spec.limits.rows_per_second = None;
    let done = resume_to_end(&store, &spec, &run).await;
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.counts.read, 2_000, "resumed from the checkpoints");
    assert_eq!(done.counts.inserted, 2_000);
    assert_eq!(
        count(&target, "SELECT sum(v) FROM copy").await,
        (0..2_000).map(|i| i * 3).sum::<i64>()
    );
}

/// A run allowed only inside `limits.window` pauses itself at the window's edge (in-flight
/// batches checkpointed), says when it resumes, and continues by itself when the window opens
/// again; the clock is injected, so the test moves time instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_window_pauses_at_its_edge_and_resumes_at_the_next_opening() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 3_000, "target.db").await;
    let mut spec = spec(&source, &target, 50);
    spec.limits.rows_per_second = NonZeroU32::new(1_000);
    spec.limits.window = Some(backfill_core::run_window::RunWindow::parse("22:00-06:00").unwrap());
    let state = format!("sqlite://{}/state.db", dir.path().display());
    let store = backfill_store::Store::open(&state).await.unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let run = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap()
        .run()
        .clone();
    let now = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 5, 59, 0).unwrap(),
    ));
    let clock = {
        let now = now.clone();
        backfill_engine::Clock::from_fn(move || *now.lock().unwrap())
    };
    let mut options = ExecuteOptions::new("t@h", Shutdown::new());
    options.clock = clock;
    let running = {
        let (store, spec, run) = (store.clone(), spec.clone(), run.clone());
        tokio::spawn(async move { execute(&store, &spec, &run, options).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while count(&target, "SELECT count(*) FROM copy").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The window closes.
    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 1, 1, 6, 0, 1).unwrap();
    let paused = loop {
        let r = store.get_run(&run.id).await.unwrap();
        if r.state == RunState::Paused {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the run never paused");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(paused.pause_reason.as_deref(), Some("outside_window"));
    let parts = store.partitions(&run.id).await.unwrap();
    assert!(parts.iter().all(|p| p.state != PartitionState::Running));
    let held = count(&target, "SELECT count(*) FROM copy").await;
    assert!(held < 3_000, "paused before the end ({held} rows)");
    // The status says when it resumes (after the next heartbeat).
    let resumes_at = loop {
        let live = store.controls(&run.id).await.unwrap().live;
        if let Some(at) = live.as_ref().and_then(|l| l["resumes_at"].as_str()) {
            break at.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no resume time published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&resumes_at).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        count(&target, "SELECT count(*) FROM copy").await,
        held,
        "nothing is written outside the window"
    );
    assert!(!running.is_finished(), "the process waits for the window");

    // The window opens again: the run continues by itself and finishes exactly.
    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(
        done.counts.read, 3_000,
        "no row read twice across the pause"
    );
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, 3_000);
    assert_eq!(
        count(&target, "SELECT sum(v) FROM copy").await,
        (0..3_000).map(|i| i * 3).sum::<i64>()
    );
    let actions: Vec<String> = store
        .audit_events(Some(&run.id))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    let paused_at = actions.iter().position(|a| a == "run.paused").unwrap();
    assert!(
        actions[paused_at..].iter().any(|a| a == "run.running"),
        "{actions:?}"
    );
    assert!(store.verify_audit().await.unwrap().first_bad_seq.is_none());
}

/// A source over 12 hours where hour 5 holds `big` rows and every other hour 100; ids follow
/// time. Returns (source, target) URLs; the target table `copy` is empty.
async fn skewed_fixture(dir: &std::path::Path, big: i64) -> (String, String) {
    let (source, target) = fixture(dir, 0, "target.db").await;
    let src = pool(&source).await;
    sqlx::query("DELETE FROM events")
        .execute(&src)
        .await
        .unwrap();
    let mut id = 0i64;
    for hour in 0..12i64 {
        let n = if hour == 5 { big } else { 100 };
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1) \
             INSERT INTO events SELECT ?2 + i, \
             strftime('%Y-%m-%dT%H:%M:%SZ', 1772323200 + ?3 * 3600 + i * 3600 / ?1, 'unixepoch'), \
             (?2 + i) * 3 FROM n",
        )
        .bind(n)
        .bind(id)
        .bind(hour)
        .execute(&src)
        .await
        .unwrap();
        id += n;
    }
    src.close().await;
    (source, target)
}

async fn split_run(
    spec: &Spec,
    dir: &std::path::Path,
) -> (backfill_store::Store, String, backfill_engine::RunSummary) {
    let state = format!("sqlite://{}/state.db", dir.display());
    let store = backfill_store::Store::open(&state).await.unwrap();
    let plan = backfill_core::plan::plan(spec).unwrap();
    let run = prepare_run(&store, spec, &plan, None, "t@h", false)
        .await
        .unwrap()
        .run()
        .clone();
    let summary = execute(
        &store,
        spec,
        &run,
        ExecuteOptions::new("t@h", Shutdown::new()),
    )
    .await
    .unwrap();
    (store, run.id, summary)
}

async fn assert_split_copy_is_exact(target: &str, n: i64) {
    assert_eq!(count(target, "SELECT count(*) FROM copy").await, n);
    assert_eq!(
        count(target, "SELECT sum(v) FROM copy").await,
        (0..n).map(|i| i * 3).sum::<i64>()
    );
    assert_eq!(
        count(target, "SELECT count(*) FROM copy c JOIN (SELECT id FROM copy GROUP BY id HAVING count(*) > 1) d USING (id)").await,
        0
    );
}

/// `split_rows`: a partition whose window holds more rows than the limit is split before it
/// starts into ceil(rows / split_rows) children; the others are left whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_over_split_rows_is_split_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = skewed_fixture(dir.path(), 3_000).await;
    let mut spec = spec(&source, &target, 12);
    spec.limits.batch_rows = NonZeroU32::new(200).unwrap();
    spec.limits.split.rows = Some(1_000);
    let (store, run_id, summary) = split_run(&spec, dir.path()).await;
    assert_eq!(summary.state, RunState::Succeeded);
    assert_eq!(summary.counts.read, 4_100, "every row read once");
    assert_eq!(summary.total, 11 + 3, "the split hour became 3 partitions");
    assert_split_copy_is_exact(&target, 4_100).await;
    let parts = store.partitions(&run_id).await.unwrap();
    let split: Vec<_> = parts
        .iter()
        .filter(|p| p.state == PartitionState::Split)
        .collect();
    assert_eq!(split.len(), 1);
    let children: Vec<_> = parts
        .iter()
        .filter(|p| p.parent_id.as_deref() == Some(split[0].partition_id.as_str()))
        .collect();
    assert_eq!(children.len(), 3);
    assert!(children.iter().all(|c| c.state == PartitionState::Done));
    assert_eq!(
        children[0].partition_id,
        format!("{}.1", split[0].partition_id)
    );
    let events = store.audit_events(Some(&run_id)).await.unwrap();
    let event = events
        .iter()
        .find(|e| e.action == "partition.split")
        .unwrap();
    assert_eq!(event.detail["reason"]["trigger"], "estimate");
    assert_eq!(event.detail["reason"]["estimated_rows"], 3_000);
    assert!(store.verify_audit().await.unwrap().is_ok());
}

/// `split_slow`: a partition running far longer than the median is split at its checkpoint;
/// the children carry on after that key, so no row is read twice and none is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_partition_is_split_at_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = skewed_fixture(dir.path(), 6_000).await;
    let mut spec = spec(&source, &target, 12);
    spec.limits.concurrency = NonZeroU32::new(2).unwrap();
    spec.limits.batch_rows = NonZeroU32::new(100).unwrap();
    spec.limits.rows_per_second = NonZeroU32::new(3_000);
    spec.limits.split.slow_factor = Some(1.5);
    let (store, run_id, summary) = split_run(&spec, dir.path()).await;
    assert_eq!(summary.state, RunState::Succeeded);
    assert_eq!(
        summary.counts.read, 7_100,
        "no row read twice across the split"
    );
    assert_split_copy_is_exact(&target, 7_100).await;
    let parts = store.partitions(&run_id).await.unwrap();
    let children_of = |parent: &str| -> Vec<_> {
        parts
            .iter()
            .filter(|p| p.parent_id.as_deref() == Some(parent))
            .collect()
    };
    let rows_under = |parent: &backfill_store::PartitionRecord| -> u64 {
        parent.counts.read
            + children_of(&parent.partition_id)
                .iter()
                .map(|c| c.counts.read)
                .sum::<u64>()
    };
    // The big hour. On a loaded machine a small hour can be judged slow too and split after
    // its only batch (its children find nothing left): not the one this test is about.
    let parent = parts
        .iter()
        .filter(|p| p.state == PartitionState::Split)
        .max_by_key(|p| rows_under(p))
        .expect("the big hour was split");
    assert!(
        parent.counts.read > 0,
        "it had made progress before the split"
    );
    assert!(parent.counts.read < 6_000);
    let children = children_of(&parent.partition_id);
    assert_eq!(children.len(), 4, "two children per worker");
    assert!(children.iter().all(|c| c.state == PartitionState::Done));
    let child_rows: u64 = children.iter().map(|c| c.counts.read).sum();
    assert_eq!(parent.counts.read + child_rows, 6_000);
    let events = store.audit_events(Some(&run_id)).await.unwrap();
    let event = events
        .iter()
        .find(|e| {
            e.action == "partition.split"
                && e.partition_id.as_deref() == Some(parent.partition_id.as_str())
        })
        .unwrap();
    assert_eq!(event.detail["reason"]["trigger"], "slow");
    assert_eq!(event.detail["from_checkpoint"], true);
}

/// `sql` mode reads no rows, so it needs no key columns: a spec without `target.key` runs
/// its statement once per partition.
#[tokio::test]
async fn sql_mode_needs_no_key_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 600, "target.db").await;
    let dst = pool(&target).await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 599) \
         INSERT INTO copy SELECT i, strftime('%Y-%m-%dT%H:%M:%SZ', 1772323200 + i * 60, 'unixepoch'), 0 FROM n",
    )
    .execute(&dst)
    .await
    .unwrap();
    dst.close().await;
    let mut spec = spec(&source, &target, 10);
    spec.target.key = Vec::new();
    spec.target.mode = WriteMode::Sql {
        statement: "UPDATE copy SET v = v + 1 WHERE ts >= :start AND ts < :end".into(),
    };
    let summary = run_to_end(
        &spec,
        &format!("sqlite://{}/state.db", dir.path().display()),
    )
    .await;
    assert_eq!(summary.state, RunState::Succeeded, "{:?}", summary.failures);
    assert_eq!(summary.counts.affected, 600);
    assert_eq!(count(&target, "SELECT sum(v) FROM copy").await, 600);
}

/// `order` decides which partitions start first: newest first here, and a priority list
/// puts its windows before the rest (which run oldest first).
#[tokio::test]
async fn partitions_start_in_the_spec_order() {
    use backfill_core::order::{Order, PriorityRange};
    let started_order = |spec: Spec, dir: std::path::PathBuf| async move {
        let state = format!("sqlite://{}/state.db", dir.display());
        let summary = run_to_end(&spec, &state).await;
        assert_eq!(summary.state, RunState::Succeeded);
        let store = backfill_store::Store::open(&state).await.unwrap();
        let run = store.latest_run().await.unwrap().unwrap();
        let parts = store.partitions(&run.id).await.unwrap();
        let index_of = |id: &str| parts.iter().find(|p| p.partition_id == id).unwrap().index;
        store
            .audit_events(Some(&run.id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "partition.running")
            .map(|e| index_of(e.partition_id.as_deref().unwrap()))
            .collect::<Vec<u64>>()
    };

    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 300, "target.db").await;
    let mut newest = spec(&source, &target, 5);
    newest.limits.concurrency = NonZeroU32::new(1).unwrap();
    newest.limits.order = Order::NewestFirst;
    assert_eq!(
        started_order(newest, dir.path().to_owned()).await,
        [4, 3, 2, 1, 0]
    );

    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 300, "target.db").await;
    let mut priority = spec(&source, &target, 5);
    priority.limits.concurrency = NonZeroU32::new(1).unwrap();
    priority.limits.order = Order::Priority(vec![
        PriorityRange::parse("2026-03-01T03:00:00Z..2026-03-01T04:00:00Z", chrono_tz::UTC).unwrap(),
        PriorityRange::parse("2026-03-01T01:00:00Z..2026-03-01T02:00:00Z", chrono_tz::UTC).unwrap(),
    ]);
    assert_eq!(
        started_order(priority, dir.path().to_owned()).await,
        [3, 1, 0, 2, 4]
    );
}

/// More partitions than a page of pending work (1,000): the pages of a pass cover every
/// partition once, in the spec's order, whether the store pages it (newest first: by index,
/// descending) or the engine orders it first (a priority list: indexes read a page at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_more_partitions_than_a_page_start_each_once_in_order() {
    use backfill_core::order::{Order, PriorityRange};
    const HOURS: u32 = 2_100;
    let started_order = |spec: Spec, dir: std::path::PathBuf| async move {
        let state = format!("sqlite://{}/state.db", dir.display());
        let summary = run_to_end(&spec, &state).await;
        assert_eq!(summary.state, RunState::Succeeded);
        assert_eq!(summary.done, u64::from(HOURS));
        let store = backfill_store::Store::open(&state).await.unwrap();
        let run = store.latest_run().await.unwrap().unwrap();
        let parts = store.partitions(&run.id).await.unwrap();
        let index: std::collections::HashMap<&str, u64> = parts
            .iter()
            .map(|p| (p.partition_id.as_str(), p.index))
            .collect();
        store
            .audit_events(Some(&run.id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "partition.running")
            .map(|e| index[e.partition_id.as_deref().unwrap()])
            .collect::<Vec<u64>>()
    };

    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 300, "target.db").await;
    let mut newest = spec(&source, &target, HOURS);
    newest.limits.concurrency = NonZeroU32::new(1).unwrap();
    newest.limits.order = Order::NewestFirst;
    let expected: Vec<u64> = (0..u64::from(HOURS)).rev().collect();
    assert_eq!(started_order(newest, dir.path().to_owned()).await, expected);

    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 300, "target.db").await;
    let mut priority = spec(&source, &target, HOURS);
    priority.limits.concurrency = NonZeroU32::new(1).unwrap();
    // Hours 1,500 and 1,501 (in the second page of the plan) first, then the rest.
    priority.limits.order = Order::Priority(vec![
        PriorityRange::parse("2026-05-02T12:00:00Z..2026-05-02T14:00:00Z", chrono_tz::UTC).unwrap(),
    ]);
    let expected: Vec<u64> = [1500, 1501]
        .into_iter()
        .chain((0..u64::from(HOURS)).filter(|i| !(1500..1502).contains(i)))
        .collect();
    assert_eq!(
        started_order(priority, dir.path().to_owned()).await,
        expected
    );
}

/// A run started outside its window writes nothing, waits `paused` (never having run) with
/// the time it resumes, and starts by itself when the window opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_started_outside_its_window_waits_for_it() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = fixture(dir.path(), 500, "target.db").await;
    let mut spec = spec(&source, &target, 10);
    spec.limits.window =
        Some(backfill_core::run_window::RunWindow::parse("22:00-06:00 Europe/Paris").unwrap());
    let store = backfill_store::Store::open(&format!("sqlite://{}/state.db", dir.path().display()))
        .await
        .unwrap();
    let plan = backfill_core::plan::plan(&spec).unwrap();
    let run = prepare_run(&store, &spec, &plan, None, "t@h", false)
        .await
        .unwrap()
        .run()
        .clone();
    // Noon in Paris: closed until 22:00 Paris = 21:00 UTC (winter).
    let now = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).unwrap(),
    ));
    let mut options = ExecuteOptions::new("t@h", Shutdown::new());
    options.clock = {
        let now = now.clone();
        backfill_engine::Clock::from_fn(move || *now.lock().unwrap())
    };
    let running = {
        let (store, spec, run) = (store.clone(), spec.clone(), run.clone());
        tokio::spawn(async move { execute(&store, &spec, &run, options).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let paused = loop {
        let r = store.get_run(&run.id).await.unwrap();
        if r.state == RunState::Paused {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never paused: {:?}",
            r.state
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(paused.pause_reason.as_deref(), Some("outside_window"));
    assert!(paused.started_at.is_none(), "it never ran");
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, 0);
    let events = store.audit_events(Some(&run.id)).await.unwrap();
    let pause = events.iter().find(|e| e.action == "run.paused").unwrap();
    assert_eq!(pause.detail["from"], "planned");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(pause.detail["resumes_at"].as_str().unwrap()).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 1, 21, 0, 0).unwrap()
    );

    *now.lock().unwrap() = Utc.with_ymd_and_hms(2026, 1, 1, 21, 0, 0).unwrap();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(count(&target, "SELECT count(*) FROM copy").await, 500);
}

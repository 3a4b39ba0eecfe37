//! Using `backfill` as a library: build a spec in code, plan it and run it.
//!
//! Run with `cargo run -p backfill-engine --example library`. It creates two SQLite files in
//! a temporary folder, copies one day of rows from one to the other in hourly partitions, and
//! prints what changed.

#![allow(clippy::print_stdout)]

use std::num::NonZeroU32;

use backfill_core::plan::{Scope, Step};
use backfill_core::spec::{Limits, SourceSpec, Spec, TargetSpec, WriteMode};
use backfill_core::{SecretUrl, TimeFormat};
use backfill_engine::{ExecuteOptions, Shutdown, execute, prepare_run};
use chrono::{TimeZone, Utc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let source = format!("sqlite://{}/source.db", dir.path().display());
    let target = format!("sqlite://{}/target.db", dir.path().display());
    seed(&source, &target).await?;

    let spec = Spec {
        name: "library_example".into(),
        reason: Some("show the library API".into()),
        source: Some(SourceSpec {
            url: SecretUrl::new(&source),
            query: "SELECT id, ts, amount FROM events WHERE ts >= :start AND ts < :end".into(),
            time_format: TimeFormat::Rfc3339,
            time_column: Some("ts".into()),
            ready: None,
        }),
        target: TargetSpec {
            url: SecretUrl::new(&target),
            table: Some("events_copy".into()),
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
            end: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
            step: Step::Seconds(3600),
            timezone: chrono_tz::UTC,
        },
        limits: Limits {
            concurrency: NonZeroU32::new(2).unwrap(),
            ..Limits::default()
        },
        throttle: None,
        validate: Default::default(),
        canary: None,
        slo: None,
        redacted_text: String::new(),
        spec_hash: "library".into(),
    };

    let state = format!("sqlite://{}/state.db", dir.path().display());
    let store = backfill_store::Store::open(&state).await?;
    let plan = backfill_core::plan::plan(&spec)?;
    let launch = prepare_run(&store, &spec, &plan, None, "example@localhost", false).await?;
    let options = ExecuteOptions::new("example@localhost", Shutdown::new());
    let summary = execute(&store, &spec, launch.run(), options).await?;
    println!(
        "run {} {}: {} partitions, {} rows read, {} inserted",
        launch.run().id,
        summary.state,
        summary.total,
        summary.counts.read,
        summary.counts.inserted
    );
    Ok(())
}

/// Creates the source table with 24 hours of rows and an empty target table.
async fn seed(source: &str, target: &str) -> Result<(), sqlx::Error> {
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let src = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::from_str(source)?.create_if_missing(true),
    )
    .await?;
    sqlx::query("CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, amount INTEGER)")
        .execute(&src)
        .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1439) \
         INSERT INTO events SELECT i, strftime('%Y-%m-%dT%H:%M:%SZ', '2026-03-01', '+' || i || ' minutes'), i * 7 FROM n",
    )
    .execute(&src)
    .await?;
    let dst = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::from_str(target)?.create_if_missing(true),
    )
    .await?;
    sqlx::query(
        "CREATE TABLE events_copy (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, amount INTEGER)",
    )
    .execute(&dst)
    .await?;
    Ok(())
}

//! Integration tests of the SQLite state store. Each test opens its own store in its own
//! temporary directory.

mod audit;
mod open;
mod partitions;
mod runs;

use backfill_core::{Partition, Window};
use backfill_store::{NewRun, RunRecord, Store};
use chrono::{DateTime, TimeZone, Utc};

/// A fresh store in a temporary directory (kept alive by the returned guard).
pub(crate) async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}/state/backfill.db",
        dir.path().display()
    ))
    .await
    .unwrap();
    (store, dir)
}

/// A second, raw connection pool on the store's file, for tampering and for sinks.
pub(crate) async fn raw_pool(store: &Store) -> sqlx::SqlitePool {
    let path = store.sqlite_path().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(std::time::Duration::from_secs(30));
    sqlx::SqlitePool::connect_with(options).await.unwrap()
}

pub(crate) fn t(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).unwrap()
}

/// `n` hourly time partitions from 2026-03-01, the first starting at a sub-second instant.
pub(crate) fn time_partitions(n: usize) -> Vec<Partition> {
    let base = 1_772_323_200; // 2026-03-01T00:00:00Z
    (0..n)
        .map(|i| {
            let start = if i == 0 {
                t(base, 123_456_789)
            } else {
                t(base + 3600 * i as i64, 0)
            };
            let window = Window::Time {
                start,
                end: t(base + 3600 * (i as i64 + 1), 0),
            };
            Partition {
                id: backfill_core::plan::partition_id(&window),
                index: i,
                window,
            }
        })
        .collect()
}

pub(crate) fn key_partitions(n: usize) -> Vec<Partition> {
    (0..n)
        .map(|i| {
            let window = Window::Key {
                start: i64::MIN + 10 * i as i64,
                end: i64::MIN + 10 * (i as i64 + 1),
            };
            Partition {
                id: backfill_core::plan::partition_id(&window),
                index: i,
                window,
            }
        })
        .collect()
}

pub(crate) async fn create(store: &Store, spec_name: &str, partitions: &[Partition]) -> RunRecord {
    store
        .create_run(NewRun {
            spec_name,
            spec_hash: "spec-hash",
            plan_hash: "plan-hash",
            spec_text: "name = \"x\"",
            owner: "alice@laptop",
            reason: "ETL outage",
            partitions,
        })
        .await
        .unwrap()
}

//! Integration tests of the state store, on SQLite and on PostgreSQL.
//!
//! Most tests are written once against a [`TestDb`] and run on both backends by
//! [`on_both_backends!`] (test names end in `::sqlite` / `::postgres`). Each SQLite test opens
//! its own file in its own temporary directory; each PostgreSQL test its own schema
//! (`schema=bf_test_<random>`), dropped at the end.
//!
//! PostgreSQL comes from `BACKFILL_TEST_POSTGRES_URL` (`backfill_testkit::postgres_url`). When
//! it is unreachable, a PostgreSQL test is skipped and counted as skipped, or fails when
//! services are required (`backfill_testkit::skip`).

mod audit;
mod concurrency;
mod controls;
mod gates;
mod leases;
mod open;
mod partitions;
mod runs;
mod views;

use std::future::Future;
use std::sync::Arc;

use backfill_core::{Partition, Value, Window};
use backfill_store::{NewRun, RunRecord, Store};
use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Connection, Executor};

/// Generates `mod <test> { fn sqlite(); fn postgres(); }` for each `async fn <test>(TestDb)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    crate::run_on(crate::Backend::Sqlite, super::$name).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    crate::run_on(crate::Backend::Postgres, super::$name).await
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// One test's private database: a SQLite file in a temporary directory, or a fresh schema on
/// the test PostgreSQL server.
#[derive(Clone, Debug)]
pub(crate) struct TestDb {
    pub(crate) backend: Backend,
    /// The store URL (`sqlite://…` or `postgres://…?schema=bf_test_…`).
    pub(crate) url: String,
    /// The PostgreSQL server URL, without the schema parameter.
    server: String,
    schema: String,
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so on stderr) when PostgreSQL is unreachable
    /// and not required.
    pub(crate) async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Some(TestDb {
                    backend,
                    url: format!("sqlite://{}/state/backfill.db", dir.path().display()),
                    server: String::new(),
                    schema: String::new(),
                    _dir: Some(Arc::new(dir)),
                })
            }
            Backend::Postgres => {
                let server = backfill_testkit::postgres_url();
                if let Err(e) = sqlx::PgConnection::connect(&server).await {
                    return backfill_testkit::unreachable("PostgreSQL", &server, &e);
                }
                let schema = format!("bf_test_{}", uuid::Uuid::now_v7().simple());
                let sep = if server.contains('?') { '&' } else { '?' };
                Some(TestDb {
                    backend,
                    url: format!("{server}{sep}schema={schema}"),
                    server,
                    schema,
                    _dir: None,
                })
            }
        }
    }

    /// Opens a store handle with its own pool (a separate "process").
    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }

    /// Runs SQL (several statements allowed) on a separate raw connection to the store, inside
    /// the store's schema on PostgreSQL: tampering, as an outsider would.
    pub(crate) async fn raw_exec(&self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.backend {
            Backend::Sqlite => {
                let mut conn = self.raw_sqlite().await;
                conn.execute(sqlx::raw_sql(sql)).await.unwrap();
            }
            Backend::Postgres => {
                let mut conn = self.raw_postgres(true).await;
                conn.execute(sqlx::raw_sql(sql)).await.unwrap();
            }
        }
    }

    /// The integers a one-column query returns, read on a raw connection (as [`raw_exec`]).
    pub(crate) async fn raw_i64s(&self, sql: &str) -> Vec<i64> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.backend {
            Backend::Sqlite => sqlx::query_scalar(sql)
                .fetch_all(&mut self.raw_sqlite().await)
                .await
                .unwrap(),
            Backend::Postgres => sqlx::query_scalar(sql)
                .fetch_all(&mut self.raw_postgres(true).await)
                .await
                .unwrap(),
        }
    }

    /// Runs `sql` with `params` in a transaction of a "sink" that owns its own connection to
    /// the store's database (on PostgreSQL with the default `search_path`, not the store's
    /// schema), commits or rolls back, and returns the rows affected.
    pub(crate) async fn sink_exec(&self, sql: &str, params: &[Value], commit: bool) -> u64 {
        macro_rules! bind_all {
            ($query:expr) => {{
                let mut query = $query;
                for p in params {
                    query = match p {
                        Value::Null => query.bind(None::<i64>),
                        Value::Int(i) => query.bind(*i),
                        Value::Float(f) => query.bind(*f),
                        Value::Text(s) => query.bind(s.clone()),
                        Value::Blob(b) => query.bind(b.clone()),
                        other => query.bind(other.as_portable_text()),
                    };
                }
                query
            }};
        }
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.backend {
            Backend::Sqlite => {
                let mut conn = self.raw_sqlite().await;
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let done = bind_all!(sqlx::query(sql)).execute(&mut *tx).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                done.rows_affected()
            }
            Backend::Postgres => {
                let mut conn = self.raw_postgres(false).await;
                let mut tx = conn.begin().await.unwrap();
                let done = bind_all!(sqlx::query(sql)).execute(&mut *tx).await.unwrap();
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                done.rows_affected()
            }
        }
    }

    async fn raw_sqlite(&self) -> sqlx::SqliteConnection {
        let path = self.url.strip_prefix("sqlite://").unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(30));
        sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap()
    }

    /// A raw PostgreSQL connection, in the test's schema when `in_schema`.
    pub(crate) async fn raw_postgres(&self, in_schema: bool) -> sqlx::PgConnection {
        let mut conn = sqlx::PgConnection::connect(&self.server).await.unwrap();
        if in_schema {
            let set = format!("SET search_path TO \"{}\"", self.schema);
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(set)))
                .await
                .unwrap();
        }
        conn
    }

    /// Drops the test's schema (PostgreSQL); the SQLite directory goes with the last clone.
    async fn cleanup(&self) {
        if self.backend == Backend::Postgres {
            let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
            let mut conn = self.raw_postgres(false).await;
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop)))
                .await
                .unwrap();
        }
    }
}

/// Runs one test on a fresh database of `backend`, then cleans it up, also when it panics.
pub(crate) async fn run_on<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let result = tokio::spawn(test(db.clone())).await;
    db.cleanup().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A handle on a fresh SQLite store in a temporary directory, for SQLite-only tests.
pub(crate) async fn sqlite_db() -> TestDb {
    TestDb::new(Backend::Sqlite).await.unwrap()
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

/// The partition ids of run `run_id`, in plan order.
pub(crate) async fn partition_ids(store: &Store, run_id: &str) -> Vec<String> {
    store
        .partitions(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.partition_id)
        .collect()
}

pub(crate) async fn create(store: &Store, spec_name: &str, partitions: &[Partition]) -> RunRecord {
    store
        .create_run(NewRun {
            spec_name,
            spec_hash: "spec-hash",
            plan_hash: "plan-hash",
            normalized_spec: r#"{"scope.end":"2026-03-04T00:00:00Z"}"#,
            spec_text: "name = \"x\"",
            owner: "alice@laptop",
            reason: "ETL outage",
            partitions: &partitions,
            guarantee: backfill_core::Guarantee::Idempotent,
            undo_log: true,
        })
        .await
        .unwrap()
}

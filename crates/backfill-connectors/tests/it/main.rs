//! Integration tests of the connectors against real SQLite files in temporary folders.

mod fingerprint;
mod mysql;
mod postgres;
mod probe;
mod pushdown;
mod sink;
mod source;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use backfill_connectors::{AnySink, AnySource, open_sink, open_source};
use backfill_core::SecretUrl;
use backfill_core::plan::Window;
use backfill_core::spec::{SourceSpec, TargetSpec, WriteMode};
use backfill_core::timefmt::TimeFormat;
use backfill_core::value::{Batch, Value};
use chrono::{TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{AssertSqlSafe, Row};

/// A temporary folder holding SQLite files, removed on drop.
pub struct Dir(tempfile::TempDir);

impl Dir {
    pub fn temp() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Creates (or opens) `name` and runs `script` in it; returns its `sqlite://` URL.
    pub async fn db(&self, name: &str, script: &str) -> String {
        let path = self.path(name);
        let pool = fixture_pool(&path).await;
        sqlx::raw_sql(AssertSqlSafe(script.to_owned()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        url(&path)
    }
}

pub fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A direct pool for building fixtures and inspecting results.
pub async fn fixture_pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqlitePool::connect_with(options).await.unwrap()
}

/// All rows of `sql` in the database at `url`, read directly with sqlx (not through a connector).
pub async fn rows(url: &str, sql: &str) -> Vec<Vec<Value>> {
    let path = url.trim_start_matches("sqlite://");
    let pool = fixture_pool(Path::new(path)).await;
    let rows = sqlx::query(AssertSqlSafe(sql.to_owned()))
        .fetch_all(&pool)
        .await
        .unwrap();
    let out = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                        return v.map_or(Value::Null, Value::Int);
                    }
                    if let Ok(Some(v)) = r.try_get::<Option<f64>, _>(i) {
                        return Value::Float(v);
                    }
                    if let Ok(Some(v)) = r.try_get::<Option<String>, _>(i) {
                        return Value::Text(v);
                    }
                    let v: Option<Vec<u8>> = r.try_get(i).unwrap();
                    v.map_or(Value::Null, Value::Blob)
                })
                .collect()
        })
        .collect();
    pool.close().await;
    out
}

pub fn source_spec(url: &str, query: &str, format: TimeFormat) -> SourceSpec {
    SourceSpec {
        url: SecretUrl::new(url),
        query: query.to_owned(),
        time_format: format,
        time_column: None,
        ready: None,
    }
}

/// The rows `(id, a, v)` both guard tests expect after their upsert with guard `v`: row 1's
/// newer live write kept, rows 2 (older guard) and 3 (NULL guard) overwritten, row 4 new.
pub fn guarded_rows() -> Vec<Vec<Value>> {
    [
        (1, "live", 5),
        (2, "backfill", 2),
        (3, "backfill", 2),
        (4, "new", 2),
    ]
    .into_iter()
    .map(|(id, a, v)| vec![Value::Int(id), Value::Text(a.into()), Value::Int(v)])
    .collect()
}

pub fn target_spec(url: &str, table: &str, key: &[&str], mode: WriteMode) -> TargetSpec {
    TargetSpec {
        url: SecretUrl::new(url),
        table: Some(table.to_owned()),
        key: strings(key),
        mode,
        time_format: TimeFormat::Rfc3339,
        guard: None,
        pushdown: true,
        shadow: None,
        undo: false,
        propagate_deletes: false,
        delete_window_column: None,
        partition_exchange: false,
    }
}

pub async fn source(url: &str, query: &str, key: &[&str]) -> AnySource {
    open_source(
        &source_spec(url, query, TimeFormat::Rfc3339),
        &strings(key),
        2,
    )
    .await
    .unwrap()
}

pub async fn sink(url: &str, table: &str, key: &[&str], mode: WriteMode) -> AnySink {
    open_sink(&target_spec(url, table, key, mode), 2)
        .await
        .unwrap()
}

/// One end of a connection as a server lists it: host (an address or a name) and port.
pub type End = (String, u16);

/// `TCP_NODELAY` of this process's socket for each connection a server lists, given as its
/// client and server ends: `None` for a connection this process does not hold (any more).
pub fn nodelay_of(connections: &[(End, End)]) -> Vec<Option<bool>> {
    let addrs = |(host, port): &End| -> Vec<SocketAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host, *port)
            .to_socket_addrs()
            .map_or_else(|_| Vec::new(), Iterator::collect)
    };
    connections
        .iter()
        .map(|(client, server)| {
            let servers = addrs(server);
            addrs(client).into_iter().find_map(|local| {
                servers
                    .iter()
                    .find_map(|&peer| backfill_connectors::nodelay::tcp_nodelay(local, peer))
            })
        })
        .collect()
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub fn keys(from: i64, to: i64) -> Window {
    Window::Key {
        start: from,
        end: to,
    }
}

pub fn day(d: u32) -> Window {
    Window::Time {
        start: Utc.with_ymd_and_hms(2025, 1, d, 0, 0, 0).unwrap(),
        end: Utc.with_ymd_and_hms(2025, 1, d + 1, 0, 0, 0).unwrap(),
    }
}

/// Reads the whole window in batches of `limit`, resuming after the last key like the engine.
pub async fn read_all(source: &AnySource, window: &Window, limit: u32) -> (Batch, usize) {
    let mut all = Batch::default();
    let mut after: Option<Vec<Value>> = None;
    let mut batches = 0;
    loop {
        let batch = source
            .read_batch(window, after.as_deref(), limit)
            .await
            .unwrap();
        batches += 1;
        all.columns = batch.columns.clone();
        let positions = source.key_positions(&batch.columns).unwrap();
        if let Some(last) = batch.rows.last() {
            after = Some(positions.iter().map(|&p| last[p].clone()).collect());
        }
        let done = !batch.is_full(limit);
        all.rows.extend(batch.rows);
        if done {
            return (all, batches);
        }
    }
}

//! The throttle probe against real servers: it times the statement it is given, reads no
//! replica lag where there is no replication, and reports failures as classified errors.
//!
//! PostgreSQL and MySQL come from `BACKFILL_TEST_POSTGRES_URL` / `BACKFILL_TEST_MYSQL_URL`
//! (defaults on 127.0.0.1); an unreachable server skips the test (counted as skipped) unless
//! services are required (`backfill_testkit::skip`).

use std::time::Duration;

use backfill_connectors::{ConnectorError, Probe};
use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;

use crate::Dir;

/// The probe on `url`, or `None` (skipped, counted) when the server is down and not required.
async fn open_or_skip(url: &str) -> Option<Probe> {
    match Probe::open(&SecretUrl::new(url)).await {
        Ok(probe) => Some(probe),
        Err(e) => backfill_testkit::unreachable("the probe's server", url, &e),
    }
}

#[tokio::test]
async fn postgres_probe_times_the_statement_and_sees_no_replicas() {
    let url = backfill_testkit::postgres_url();
    let Some(probe) = open_or_skip(&url).await else {
        return;
    };
    let fast = probe.measure("SELECT 1").await.unwrap();
    let slow = probe
        .measure("SELECT pg_sleep(0.05), g FROM generate_series(1, 3) g")
        .await
        .unwrap();
    assert!(slow >= Duration::from_millis(50), "{slow:?}");
    assert!(fast < slow, "{fast:?} vs {slow:?}");
    // The test server is a primary without standbys.
    assert_eq!(probe.replica_lag().await.unwrap(), None);
    let err = probe
        .measure("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Sql { context, class: ErrorClass::Permanent, .. } if context == "probe"),
        "{err:?}"
    );
    // The connection survives a failed probe.
    probe.measure("SELECT 1").await.unwrap();
    probe.close().await;
}

#[tokio::test]
async fn mysql_probe_times_the_statement_and_sees_no_replication() {
    let url = backfill_testkit::mysql_url();
    let Some(probe) = open_or_skip(&url).await else {
        return;
    };
    let slow = probe.measure("SELECT SLEEP(0.05)").await.unwrap();
    assert!(slow >= Duration::from_millis(50), "{slow:?}");
    // The test server is not a replica: no replication status row.
    assert_eq!(probe.replica_lag().await.unwrap(), None);
    let err = probe.measure("SELEC 1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err:?}");
    probe.close().await;
}

#[tokio::test]
async fn sqlite_probe_measures_and_is_never_replicated() {
    let dir = Dir::temp();
    let url = dir
        .db(
            "live.db",
            "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .await;
    let probe = Probe::open(&SecretUrl::new(&url)).await.unwrap();
    assert!(probe.measure("SELECT id FROM t").await.unwrap() < Duration::from_secs(1));
    assert_eq!(probe.replica_lag().await.unwrap(), None);
    probe.close().await;
    let missing = Probe::open(&SecretUrl::new(format!(
        "sqlite://{}",
        dir.path("none.db").display()
    )))
    .await
    .unwrap_err();
    assert!(
        matches!(missing, ConnectorError::Connect { .. }),
        "{missing:?}"
    );
    let unsupported = Probe::open(&SecretUrl::new("redis://localhost"))
        .await
        .unwrap_err();
    assert!(
        unsupported
            .to_string()
            .contains("no connector for scheme `redis`"),
        "{unsupported}"
    );
}

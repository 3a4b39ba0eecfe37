//! The latency probe of adaptive throttling: one connection to a live-facing database that
//! times a representative statement and reads the database's replica lag.
//!
//! Owns: opening that connection with the same options as the system's connector (UTC and
//! strict mode on MySQL, `TCP_NODELAY` on PostgreSQL and MySQL sockets, redacted errors), timing
//! a statement end to end (sent, executed, every row fetched), and reading replication lag
//! where the system exposes it.
//!
//! Does not: decide anything. The engine keeps the samples, computes percentiles and moves the
//! rate; an error here is a signal for it, never a reason to stop a run.
//!
//! Invariants:
//! - One connection at most (a pool of one): the probe adds one session to the live database,
//!   and a connection lost while the server restarts is replaced on the next call.
//! - The probe statement is run as given, its rows fetched and discarded; nothing is bound.

use std::time::{Duration, Instant};

use backfill_core::SecretUrl;
use backfill_core::retry::ErrorClass;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, Row, SqlitePool};

use crate::ConnectorError;

/// A connection that times a statement on a live-facing database (`[throttle] probe`).
#[derive(Debug)]
pub enum Probe {
    /// A PostgreSQL server (primary or standby).
    Postgres(PgPool),
    /// A MySQL or MariaDB server (source or replica).
    MySql(MySqlPool),
    /// A SQLite file: latency only, never replicated.
    Sqlite(SqlitePool),
}

impl Probe {
    /// Connects to `url` (`postgres`, `postgresql`, `mysql` or `sqlite`); a refused connection
    /// or a missing SQLite file is a [`ConnectorError::Connect`] naming the redacted URL.
    pub async fn open(url: &SecretUrl) -> Result<Probe, ConnectorError> {
        match url.scheme().as_str() {
            "postgres" | "postgresql" => {
                Ok(Probe::Postgres(crate::postgres::connect(url, 1).await?))
            }
            "mysql" => Ok(Probe::MySql(crate::mysql::connect(url, 1).await?)),
            "sqlite" => Ok(Probe::Sqlite(
                crate::sqlite::connect(url, 1, crate::sqlite::Role::Source).await?,
            )),
            other => Err(crate::unsupported(other, url)),
        }
    }

    /// Runs `sql`, fetches every row it returns, and returns how long that took (waiting for
    /// the connection included: a pool of one is free unless the previous probe still runs).
    pub async fn measure(&self, sql: &str) -> Result<Duration, ConnectorError> {
        let sql = || AssertSqlSafe(sql.to_owned());
        let started = Instant::now();
        () = match self {
            Probe::Postgres(pool) => sqlx::query(sql())
                .fetch_all(pool)
                .await
                .map(drop)
                .map_err(|e| crate::postgres::sql_error("probe", &e))?,
            Probe::MySql(pool) => sqlx::query(sql())
                .fetch_all(pool)
                .await
                .map(drop)
                .map_err(|e| crate::mysql::sql_error("probe", &e))?,
            Probe::Sqlite(pool) => sqlx::query(sql())
                .fetch_all(pool)
                .await
                .map(drop)
                .map_err(|e| crate::sqlite::sql_error("probe", &e))?,
        };
        Ok(started.elapsed())
    }

    /// How far replicas are behind, `None` when the database is not replicated (or is SQLite).
    ///
    /// - PostgreSQL primary: the largest `replay_lag` in `pg_stat_replication` (zero when
    ///   standbys are attached and have replayed everything: the server reports no lag then).
    /// - PostgreSQL standby: `now() - pg_last_xact_replay_timestamp()`, or zero when everything
    ///   received is replayed (an idle primary sends nothing, which is not lag). A standby
    ///   with WAL to replay that has replayed no transaction since it started has no such
    ///   timestamp: its lag is unknown, which is an error, like a stopped MySQL SQL thread.
    /// - MySQL/MariaDB replica: the largest `Seconds_Behind_Source` (`…_Master`) of
    ///   `SHOW REPLICA STATUS` (`SHOW SLAVE STATUS` on servers without it). A replica whose
    ///   SQL thread is stopped reports no lag at all: that is an error, since its lag grows
    ///   unseen.
    pub async fn replica_lag(&self) -> Result<Option<Duration>, ConnectorError> {
        match self {
            Probe::Postgres(pool) => postgres_lag(pool).await,
            Probe::MySql(pool) => mysql_lag(pool).await,
            Probe::Sqlite(_) => Ok(None),
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        match self {
            Probe::Postgres(pool) => pool.close().await,
            Probe::MySql(pool) => pool.close().await,
            Probe::Sqlite(pool) => pool.close().await,
        }
    }
}

pub(crate) async fn postgres_lag(pool: &PgPool) -> Result<Option<Duration>, ConnectorError> {
    let fail = |e: sqlx::Error| crate::postgres::sql_error("replica lag", &e);
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(pool)
        .await
        .map_err(fail)?;
    let seconds: Option<f64> = if standby {
        let (caught_up, since_replay): (Option<bool>, Option<f64>) = sqlx::query_as(
            "SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), \
             EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8",
        )
        .fetch_one(pool)
        .await
        .map_err(fail)?;
        match (caught_up, since_replay) {
            (Some(true), _) => Some(0.0),
            (_, Some(seconds)) => Some(seconds),
            // WAL waits, but no transaction was replayed since the standby started (the
            // timestamp is not kept across restarts): the lag is unknown, and may be growing
            // (replay paused, or blocked by a conflicting query). Reading it as "not
            // replicated" would let the run go at full speed while the standby falls behind.
            (_, None) => {
                return Err(ConnectorError::Sql {
                    context: "replica lag".into(),
                    message: "the standby has WAL to replay but has replayed no transaction \
                              since it started (pg_last_xact_replay_timestamp() is NULL), so \
                              its lag is unknown"
                        .into(),
                    class: ErrorClass::Transient,
                });
            }
        }
    } else {
        let (standbys, lag): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM max(replay_lag))::float8 \
             FROM pg_stat_replication",
        )
        .fetch_one(pool)
        .await
        .map_err(fail)?;
        match standbys {
            0 => None,
            _ => Some(lag.unwrap_or(0.0)),
        }
    };
    Ok(seconds.map(seconds_to_duration))
}

pub(crate) async fn mysql_lag(pool: &MySqlPool) -> Result<Option<Duration>, ConnectorError> {
    let rows = match sqlx::raw_sql("SHOW REPLICA STATUS").fetch_all(pool).await {
        Ok(rows) => rows,
        // Servers older than MySQL 8.0.22 / MariaDB 10.5.1 only know the old name.
        Err(sqlx::Error::Database(_)) => sqlx::raw_sql("SHOW SLAVE STATUS")
            .fetch_all(pool)
            .await
            .map_err(|e| crate::mysql::sql_error("replica lag", &e))?,
        Err(e) => return Err(crate::mysql::sql_error("replica lag", &e)),
    };
    let mut lag: Option<Duration> = None;
    // One row per replication channel (MariaDB multi-source); the worst one counts.
    for row in &rows {
        let seconds = ["Seconds_Behind_Source", "Seconds_Behind_Master"]
            .iter()
            .find_map(|column| {
                row.try_get::<Option<i64>, _>(*column)
                    .or_else(|_| {
                        row.try_get::<Option<u64>, _>(*column)
                            .map(|v| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
                    })
                    .ok()
            });
        match seconds {
            Some(Some(s)) => {
                let this = Duration::from_secs(u64::try_from(s).unwrap_or(0));
                lag = Some(lag.map_or(this, |l| l.max(this)));
            }
            Some(None) => {
                return Err(ConnectorError::Sql {
                    context: "replica lag".into(),
                    message: "the replica's SQL thread is not running (Seconds_Behind_Master \
                              is NULL), so its lag is unknown"
                        .into(),
                    class: ErrorClass::Transient,
                });
            }
            None => {
                return Err(ConnectorError::Sql {
                    context: "replica lag".into(),
                    message: "SHOW REPLICA STATUS has no Seconds_Behind_Source or \
                              Seconds_Behind_Master column"
                        .into(),
                    class: ErrorClass::Permanent,
                });
            }
        }
    }
    Ok(lag)
}

fn seconds_to_duration(seconds: f64) -> Duration {
    // Clocks of primary and standby can disagree by a little: a negative lag is none.
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

//! The live signals of adaptive throttling (`[throttle] watch`): one connection to the live
//! database that reads what its own traffic feels, with no probe statement.
//!
//! Owns: reading, every interval, the live statements' calls and total execution time
//! (PostgreSQL `pg_stat_statements`, MySQL/MariaDB `performance_schema` statement digests)
//! and turning two readings into the interval's [`StatDelta`]; counting the live sessions
//! waiting on WAL or I/O (PostgreSQL `pg_stat_activity`) or the threads running (MySQL
//! `Threads_running`); the replica lag ([`crate::Probe::replica_lag`]'s rules); and saying
//! which of these the database offers, and why not ([`Watch::offers`], for `backfill check`).
//!
//! What is ours, and left out: every PostgreSQL connection of the connectors sets
//! `application_name = backfill` ([`APPLICATION_NAME`]; a URL that sets its own keeps it).
//! `pg_stat_statements` does not record sessions, so each reading also collects the query ids
//! that sessions named `backfill` last ran (`pg_stat_activity.query_id`, PostgreSQL 14+, which
//! `pg_stat_statements` turns on) and leaves those statements out from then on; only this
//! database's statements count, and statements reading the statistics views themselves
//! (ours, monitoring) never do. MySQL has no session name to go by: the digests of the watched
//! schema count, so `watch` should name the live schema, not the backfill's target.
//!
//! Does not: decide anything (`backfill_core::live` judges the readings) or fail a run: a
//! signal the database does not offer is absent from [`Reading`] and named in
//! [`Reading::unavailable`]; only a lost connection is an error.
//!
//! Invariants:
//! - One connection at most (a pool of one), replaced after a loss on the next call.
//! - A counter that went backwards (`pg_stat_statements_reset()`, an evicted entry, a server
//!   restart) never yields a negative interval: that statement is counted from its new value.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use backfill_core::SecretUrl;
use backfill_core::live::StatDelta;
use sqlx::{MySqlPool, PgPool, Row};

use crate::ConnectorError;

/// The `application_name` every PostgreSQL connection of the connectors sets (unless its URL
/// sets one), so the watch can tell the backfill's sessions from live traffic.
pub const APPLICATION_NAME: &str = "backfill";

/// This database's statements' counters, without their texts: `pg_stat_statements(false)`,
/// since asking for the texts makes the server read its whole query-text file (megabytes on a
/// busy server, every statement it keeps) at every reading, every `throttle.interval`.
const PG_STATEMENTS: &str = "SELECT s.userid::int8, s.queryid, sum(s.calls)::int8, \
     sum(s.total_exec_time)::float8 \
     FROM pg_stat_statements(false) s \
     WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND s.queryid IS NOT NULL \
     GROUP BY s.userid, s.queryid";

/// Whether each of the statements `$1` (query ids) reads the statistics views (`meta`: the
/// watch's own, and any monitoring): those are not live traffic, and their time is taken out
/// of the transactions' (see [`Reading::transactions`]). Read with the texts, so only for
/// statements the watch has not classified yet ([`Watch::kinds`]).
const PG_READS_STATS: &str = "SELECT s.userid::int8, s.queryid, \
     bool_or(s.query ILIKE '%pg_stat_statements%' OR s.query ILIKE '%pg_stat_activity%' \
             OR s.query ILIKE '%pg_stat_database%') \
     FROM pg_stat_statements(true) s \
     WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND s.queryid = ANY($1) \
     GROUP BY s.userid, s.queryid";

/// The most statements [`Watch::kinds`] remembers; past it, it forgets those the server no
/// longer lists (a server that keeps inventing statements must not grow the watch without
/// bound).
const MAX_KINDS: usize = 100_000;

/// Client sessions other than ours waiting on WAL (I/O, its locks, synchronous replication) or
/// on reading and writing data files.
const PG_WAITING: &str = "SELECT count(*)::int8 FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
       AND application_name IS DISTINCT FROM $1 \
       AND (wait_event_type = 'IO' \
            OR (wait_event_type = 'LWLock' AND wait_event LIKE 'WAL%') \
            OR (wait_event_type = 'IPC' AND wait_event = 'SyncRep'))";

/// The watched database's transactions (commits and rollbacks) and the time its sessions spent
/// active or idle inside a transaction (PostgreSQL 14+, milliseconds), and how many other
/// sessions named `backfill` are connected to it (their transactions would be counted too).
/// Each session adds its counters at the end of a transaction, at most once a second
/// (PostgreSQL 15+) or every half second (14), so one interval may see a lump of a second.
const PG_TRANSACTIONS: &str = "SELECT (d.xact_commit + d.xact_rollback)::int8, \
     (d.active_time + d.idle_in_transaction_time)::float8, \
     (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.datid \
        AND a.application_name = $1 AND a.pid <> pg_backend_pid())::int8 \
     FROM pg_stat_database d WHERE d.datname = current_database()";

/// The statements the watch runs on PostgreSQL per reading, each its own transaction: its
/// own part of [`PG_TRANSACTIONS`]'s count, taken out again when `pg_stat_statements` cannot
/// say how many statements read the statistics views.
const PG_OWN_TRANSACTIONS: u64 = 4;

/// The statements our sessions ran last (or run now).
const PG_OURS: &str = "SELECT DISTINCT query_id FROM pg_stat_activity \
     WHERE application_name = $1 AND query_id IS NOT NULL";

const MYSQL_DIGESTS: &str = "SELECT DIGEST, COUNT_STAR, SUM_TIMER_WAIT \
     FROM performance_schema.events_statements_summary_by_digest \
     WHERE SCHEMA_NAME = DATABASE() AND DIGEST IS NOT NULL \
       AND DIGEST_TEXT NOT LIKE '%performance_schema%' \
       AND DIGEST_TEXT NOT LIKE '%Threads_running%'";

/// The names of the signals, as `check`, logs and `status` show them.
pub mod signal {
    /// PostgreSQL: the live statements' time per call from `pg_stat_statements`.
    pub const PG_STAT_STATEMENTS: &str = "pg_stat_statements";
    /// PostgreSQL: live sessions waiting on WAL or I/O.
    pub const WAIT_EVENTS: &str = "wait events";
    /// PostgreSQL: the live sessions' time per transaction (active or idle inside it) from
    /// `pg_stat_database`.
    pub const TRANSACTIONS: &str = "transaction time";
    /// MySQL/MariaDB: the statements' time per call from the digest table.
    pub const DIGESTS: &str = "statement digests";
    /// MySQL/MariaDB: `Threads_running`.
    pub const THREADS_RUNNING: &str = "Threads_running";
    /// Either: how far replicas are behind.
    pub const REPLICA_LAG: &str = "replica lag";
}

/// One signal and whether the database offers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The signal's name ([`signal`]).
    pub signal: &'static str,
    /// Whether it can be read.
    pub available: bool,
    /// What was found: why not and how to enable it, or a caveat, or the current reading.
    pub detail: String,
}

/// One interval's readings; a signal the database does not offer is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// The live statements completed since the previous reading; `None` on the first reading
    /// (nothing to subtract from) or when the statistics are not offered.
    pub statements: Option<StatDelta>,
    /// The live transactions completed since the previous reading (PostgreSQL 14+): `calls`
    /// counts commits and rollbacks, `time` the time the sessions spent active or idle inside
    /// a transaction, so the time a client takes between its statements (slow when the
    /// machine is short of CPU) counts too. `None` on the first reading, before PostgreSQL 14,
    /// or while other `backfill` sessions use the watched database (theirs cannot be told
    /// apart: the reason is in `unavailable`). The transactions of statements that read the
    /// statistics views (the watch's own, monitoring) are taken out, count and execution time
    /// as `pg_stat_statements` records them: their time is not live traffic's, and it grows
    /// while a backfill loads the server (more sessions and statements to list, less CPU).
    /// Without `pg_stat_statements`, only their count is.
    pub transactions: Option<StatDelta>,
    /// Live sessions waiting on WAL or I/O right now (PostgreSQL).
    pub waiting: Option<u32>,
    /// `Threads_running` right now (MySQL/MariaDB).
    pub running: Option<u32>,
    /// How long a ping took as this process saw it, sent to answered: a round trip to the
    /// database and the scheduling on both ends, which a client pays per transaction and the
    /// server's counters do not see. `None` when it failed.
    pub round_trip: Option<Duration>,
    /// The signals that could not be read, with why: `(signal, reason)`.
    pub unavailable: Vec<(&'static str, String)>,
}

/// Cumulative counters of one statement: calls and total execution time in seconds.
type Totals = HashMap<String, (u64, f64)>;

/// A PostgreSQL statement as `pg_stat_statements` keys it: user and query id.
type StatementKey = (i64, i64);

/// The watched live database (`[throttle] watch`).
#[derive(Debug)]
pub struct Watch {
    pool: Pool,
    /// The previous reading's counters per statement; `None` before the first.
    previous: Option<Totals>,
    /// PostgreSQL query ids seen run by our sessions: never live traffic.
    ours: HashSet<i64>,
    /// PostgreSQL: whether each statement seen reads the statistics views, from its text,
    /// read once per statement ([`PG_READS_STATS`]), at most [`MAX_KINDS`] of them.
    kinds: HashMap<StatementKey, bool>,
    /// PostgreSQL: the previous reading's counters of the statements that read the statistics
    /// views; `None` before the first, or when `pg_stat_statements` is not offered.
    previous_meta: Option<Totals>,
    /// PostgreSQL: the previous reading's transactions and their time in seconds.
    transactions: Option<(u64, f64)>,
    /// PostgreSQL: the transactions (and their seconds) of statements that read the
    /// statistics views, not yet taken out of an interval (sessions report theirs up to a
    /// second late).
    own_pending: Own,
    /// MySQL: whether the server records digests, checked at the first reading (a server
    /// setting that needs a restart, so once per connection).
    digests: Option<Result<(), String>>,
}

#[derive(Debug)]
enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl Watch {
    /// Connects to `url` (`postgres`, `postgresql` or `mysql`); a refused connection is a
    /// [`ConnectorError::Connect`] naming the redacted URL, any other scheme is refused.
    pub async fn open(url: &SecretUrl) -> Result<Watch, ConnectorError> {
        let pool = match url.scheme().as_str() {
            "postgres" | "postgresql" => Pool::Postgres(crate::postgres::connect(url, 1).await?),
            "mysql" => Pool::MySql(crate::mysql::connect(url, 1).await?),
            other => return Err(crate::unsupported(other, url)),
        };
        Ok(Watch {
            pool,
            previous: None,
            ours: HashSet::new(),
            kinds: HashMap::new(),
            previous_meta: None,
            transactions: None,
            own_pending: Own::default(),
            digests: None,
        })
    }

    /// Reads every offered signal once. The statements' interval is the difference with the
    /// previous call's counters. Errors only when the database cannot be reached at all.
    pub async fn read(&mut self) -> Result<Reading, ConnectorError> {
        let mut reading = Reading::default();
        let totals = match &self.pool {
            Pool::Postgres(pool) => {
                // Also the round trip that tells a lost connection (an error of the whole
                // reading) from a view this server lacks (`query_id` before PostgreSQL 14).
                match pg_ours(pool)
                    .await
                    .map_err(|e| crate::postgres::sql_error("watch", &e))
                {
                    Ok((ids, took)) => {
                        reading.round_trip = Some(took);
                        self.ours.extend(ids);
                    }
                    Err(e @ ConnectorError::Unavailable { .. }) => return Err(e),
                    Err(_) => {}
                }
                match sqlx::query_scalar::<_, i64>(PG_WAITING)
                    .bind(APPLICATION_NAME)
                    .fetch_one(pool)
                    .await
                {
                    Ok(n) => reading.waiting = Some(u32::try_from(n).unwrap_or(u32::MAX)),
                    Err(e) => reading.unavailable.push((
                        signal::WAIT_EVENTS,
                        crate::postgres::sql_error("wait events", &e).to_string(),
                    )),
                }
                let totals = match pg_totals(pool, &self.ours, &mut self.kinds).await {
                    Ok((live, meta)) => {
                        match &self.previous_meta {
                            Some(before) => self.own_pending.add(delta(before, &meta)),
                            None => self.own_pending.calls += PG_OWN_TRANSACTIONS,
                        }
                        self.previous_meta = Some(meta);
                        Some(live)
                    }
                    Err(reason) => {
                        self.previous_meta = None;
                        self.own_pending.calls += PG_OWN_TRANSACTIONS;
                        reading
                            .unavailable
                            .push((signal::PG_STAT_STATEMENTS, reason));
                        None
                    }
                };
                match pg_transactions(pool).await {
                    Ok((_, _, others)) if others > 0 => {
                        // Counted afresh once they leave: nothing of ours is pending then.
                        self.transactions = None;
                        self.own_pending = Own::default();
                        reading.unavailable.push((
                            signal::TRANSACTIONS,
                            format!(
                                "{others} other backfill sessions use the watched database: \
                                 their transactions cannot be told apart from live traffic's"
                            ),
                        ));
                    }
                    Ok((count, secs, _)) => {
                        reading.transactions = self
                            .transactions
                            .map(|(pc, pt)| own_out(&mut self.own_pending, pc, pt, count, secs));
                        self.transactions = Some((count, secs));
                    }
                    Err(reason) => {
                        self.transactions = None;
                        self.own_pending = Own::default();
                        reading.unavailable.push((signal::TRANSACTIONS, reason));
                    }
                }
                totals
            }
            Pool::MySql(pool) => {
                // A handle (shared): the pool stays the watch's while it reads.
                let pool = pool.clone();
                self.read_mysql(&pool, &mut reading).await?
            }
        };
        reading.statements = match (&self.previous, &totals) {
            (Some(previous), Some(now)) => Some(delta(previous, now)),
            _ => None,
        };
        self.previous = totals;
        Ok(reading)
    }

    /// MySQL's part of a reading: `Threads_running` (and the round trip) into `reading`, and
    /// the statement digests' counters, `None` when the server does not record them. Errors
    /// only when the database cannot be reached.
    async fn read_mysql(
        &mut self,
        pool: &MySqlPool,
        reading: &mut Reading,
    ) -> Result<Option<Totals>, ConnectorError> {
        match threads_running(pool).await {
            Ok((n, took)) => {
                reading.round_trip = Some(took);
                reading.running = Some(n);
            }
            Err(e) => {
                if matches!(e, ConnectorError::Unavailable { .. }) {
                    return Err(e);
                }
                reading
                    .unavailable
                    .push((signal::THREADS_RUNNING, e.to_string()));
            }
        }
        if self.digests.is_none() {
            self.digests = Some(mysql_digests_ready(pool).await);
        }
        let ready = self.digests.clone().unwrap_or(Ok(()));
        Ok(match ready.and(mysql_totals(pool).await) {
            Ok(t) => Some(t),
            Err(reason) => {
                reading.unavailable.push((signal::DIGESTS, reason));
                None
            }
        })
    }

    /// How far replicas of the watched database are behind; see [`crate::Probe::replica_lag`].
    pub async fn replica_lag(&self) -> Result<Option<Duration>, ConnectorError> {
        match &self.pool {
            Pool::Postgres(pool) => crate::probe::postgres_lag(pool).await,
            Pool::MySql(pool) => crate::probe::mysql_lag(pool).await,
        }
    }

    /// Which signals the database offers, and why not: for `backfill check`. Never fails: a
    /// failed look-up is an unavailable signal with the database's message.
    pub async fn offers(&self) -> Vec<Offer> {
        let lag = match self.replica_lag().await {
            Ok(None) => offer(
                signal::REPLICA_LAG,
                true,
                "not replicated (no standby or replica): no lag to watch",
            ),
            Ok(Some(lag)) => offer(
                signal::REPLICA_LAG,
                true,
                format!("replicated; current lag {} ms", lag.as_millis()),
            ),
            Err(e) => offer(signal::REPLICA_LAG, false, e.to_string()),
        };
        let mut out = match &self.pool {
            Pool::Postgres(pool) => vec![
                pg_statements_offer(pool).await,
                pg_transactions_offer(pool).await,
                pg_waits_offer(pool).await,
            ],
            Pool::MySql(pool) => vec![
                mysql_digests_offer(pool).await,
                match threads_running(pool).await {
                    Ok((n, _)) => offer(
                        signal::THREADS_RUNNING,
                        true,
                        format!("{n} now; counts the backfill's own running threads too"),
                    ),
                    Err(e) => offer(signal::THREADS_RUNNING, false, e.to_string()),
                },
            ],
        };
        out.push(lag);
        out
    }

    /// Closes the connection.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::MySql(pool) => pool.close().await,
        }
    }
}

fn offer(signal: &'static str, available: bool, detail: impl Into<String>) -> Offer {
    Offer {
        signal,
        available,
        detail: detail.into(),
    }
}

/// Transactions that are not live traffic, not yet taken out of an interval: how many, and
/// their time in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Own {
    calls: u64,
    secs: f64,
}

impl Own {
    fn add(&mut self, d: StatDelta) {
        self.calls = self.calls.saturating_add(d.calls);
        self.secs += d.time.as_secs_f64();
    }
}

/// The transactions' interval from the counters before (`pc` transactions, `pt` seconds) and
/// now, less the `pending` transactions that are not live traffic: as many, and as much of
/// their time, as the interval holds; the rest stays pending for the next. Counters that
/// went backwards (a statistics reset) count from zero.
fn own_out(pending: &mut Own, pc: u64, pt: f64, count: u64, secs: f64) -> StatDelta {
    let (calls, time) = if pc <= count && pt <= secs {
        (count - pc, secs - pt)
    } else {
        (count, secs)
    };
    let ours = pending.calls.min(calls);
    pending.calls -= ours;
    let own_time = pending.secs.min(time).max(0.0);
    pending.secs -= own_time;
    StatDelta {
        calls: calls - ours,
        time: Duration::try_from_secs_f64((time - own_time).max(0.0)).unwrap_or(Duration::MAX),
    }
}

/// The query ids our sessions run ([`PG_OURS`]), and the round trip of a ping just before it
/// (the connection taken from the pool first: the pool's own check is another round trip).
async fn pg_ours(pool: &PgPool) -> Result<(Vec<i64>, Duration), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let round_trip = ping(&mut *conn).await?;
    let ids = sqlx::query_scalar::<_, i64>(PG_OURS)
        .bind(APPLICATION_NAME)
        .fetch_all(&mut *conn)
        .await?;
    Ok((ids, round_trip))
}

/// How long a ping takes on `conn`, sent to answered: a round trip that asks no work of the
/// server (PostgreSQL: a `Sync`; MySQL: `COM_PING`), so a busy statistics view (a server
/// with thousands of sessions) cannot pass for distance.
async fn ping<C: sqlx::Connection>(conn: &mut C) -> Result<Duration, sqlx::Error> {
    let sent = Instant::now();
    conn.ping().await?;
    Ok(sent.elapsed())
}

/// The watched database's transactions, their time in seconds, and the other `backfill`
/// sessions connected to it; the reason when the server cannot say (before PostgreSQL 14).
async fn pg_transactions(pool: &PgPool) -> Result<(u64, f64, i64), String> {
    let (count, ms, others): (i64, f64, i64) = sqlx::query_as(PG_TRANSACTIONS)
        .bind(APPLICATION_NAME)
        .fetch_one(pool)
        .await
        .map_err(|e| {
            crate::postgres::sql_error("reading pg_stat_database (PostgreSQL 14+)", &e).to_string()
        })?;
    Ok((u64::try_from(count).unwrap_or(0), ms / 1000.0, others))
}

/// The statements' interval: for each statement in `now` (none of them ours), its counters
/// minus `previous`'s; a statement new since then, or whose counters went backwards (reset,
/// evicted and back), counts from zero.
fn delta(previous: &Totals, now: &Totals) -> StatDelta {
    let (mut calls, mut secs) = (0u64, 0.0f64);
    for (key, &(c, t)) in now {
        let (dc, dt) = match previous.get(key) {
            Some(&(pc, pt)) if pc <= c && pt <= t => (c - pc, t - pt),
            _ => (c, t),
        };
        calls = calls.saturating_add(dc);
        secs += dt;
    }
    StatDelta {
        calls,
        time: Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX),
    }
}

/// The counters of this database's live statements (neither reading the statistics views
/// nor run by our sessions, `ours`) and, apart, of those that read the statistics views;
/// statements not in `kinds` yet are classified by their text first.
async fn pg_totals(
    pool: &PgPool,
    ours: &HashSet<i64>,
    kinds: &mut HashMap<StatementKey, bool>,
) -> Result<(Totals, Totals), String> {
    let rows: Vec<(i64, i64, i64, f64)> = sqlx::query_as(PG_STATEMENTS)
        .fetch_all(pool)
        .await
        .map_err(|e| crate::postgres::sql_error("reading pg_stat_statements", &e).to_string())?;
    if kinds.len() > MAX_KINDS {
        let listed: HashSet<StatementKey> = rows.iter().map(|r| (r.0, r.1)).collect();
        kinds.retain(|key, _| listed.contains(key));
    }
    let unknown: Vec<i64> = rows
        .iter()
        .filter(|(user, query, ..)| !kinds.contains_key(&(*user, *query)))
        .map(|&(_, query, ..)| query)
        .collect();
    if !unknown.is_empty() {
        classify(pool, &unknown, kinds).await?;
    }
    let (mut live, mut meta) = (Totals::with_capacity(rows.len()), Totals::new());
    for (user, query, calls, ms) in rows {
        let counters = (u64::try_from(calls).unwrap_or(0), ms / 1000.0);
        // A statement evicted before its text was read counts as live until it is read.
        if kinds.get(&(user, query)).copied().unwrap_or(false) {
            meta.insert(format!("{user}/{query}"), counters);
        } else if !ours.contains(&query) {
            live.insert(format!("{user}/{query}"), counters);
        }
    }
    Ok((live, meta))
}

/// Reads the texts of the statements `queries` and records in `kinds` whether each reads the
/// statistics views; a statement whose text the server could not give (`NULL`: its text file
/// was being rewritten) is not recorded, so it is read again at the next reading.
async fn classify(
    pool: &PgPool,
    queries: &[i64],
    kinds: &mut HashMap<StatementKey, bool>,
) -> Result<(), String> {
    let rows: Vec<(i64, i64, Option<bool>)> = sqlx::query_as(PG_READS_STATS)
        .bind(queries)
        .fetch_all(pool)
        .await
        .map_err(|e| crate::postgres::sql_error("reading pg_stat_statements", &e).to_string())?;
    for (user, query, reads_stats) in rows {
        if let Some(reads_stats) = reads_stats {
            kinds.insert((user, query), reads_stats);
        }
    }
    Ok(())
}

async fn mysql_totals(pool: &MySqlPool) -> Result<Totals, String> {
    let rows = sqlx::query(MYSQL_DIGESTS)
        .fetch_all(pool)
        .await
        .map_err(|e| crate::mysql::sql_error("reading statement digests", &e).to_string())?;
    let mut out = Totals::with_capacity(rows.len());
    for row in rows {
        let digest: String = row.try_get(0).map_err(|e| e.to_string())?;
        let calls: u64 = row.try_get(1).map_err(|e| e.to_string())?;
        let picos: u64 = row.try_get(2).map_err(|e| e.to_string())?;
        #[allow(clippy::cast_precision_loss)]
        out.insert(digest, (calls, picos as f64 / 1e12));
    }
    Ok(out)
}

/// `Threads_running`, and the round trip of a ping just before it (the connection taken from
/// the pool first: the pool's own check is another round trip).
async fn threads_running(pool: &MySqlPool) -> Result<(u32, Duration), ConnectorError> {
    let fail = |e: sqlx::Error| crate::mysql::sql_error("reading Threads_running", &e);
    let mut conn = pool.acquire().await.map_err(fail)?;
    let took = ping(&mut *conn).await.map_err(fail)?;
    let row = sqlx::query("SHOW GLOBAL STATUS LIKE 'Threads_running'")
        .fetch_optional(&mut *conn)
        .await
        .map_err(fail)?;
    let value: Option<String> = row.and_then(|r| r.try_get::<String, _>(1).ok());
    value
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(|n| (n, took))
        .ok_or_else(|| ConnectorError::Sql {
            context: "reading Threads_running".into(),
            message: "SHOW GLOBAL STATUS has no Threads_running".into(),
            class: backfill_core::retry::ErrorClass::Permanent,
        })
}

async fn pg_statements_offer(pool: &PgPool) -> Offer {
    let no = |detail: String| offer(signal::PG_STAT_STATEMENTS, false, detail);
    let preload: String =
        match sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
            .fetch_one(pool)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                return no(
                    crate::postgres::sql_error("reading shared_preload_libraries", &e).to_string(),
                );
            }
        };
    if !preload
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "pg_stat_statements")
    {
        return no(
            "not loaded: add pg_stat_statements to shared_preload_libraries in postgresql.conf \
             and restart the server, then run CREATE EXTENSION pg_stat_statements in this database"
                .to_owned(),
        );
    }
    let created: Option<String> = sqlx::query_scalar(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    if created.is_none() {
        return no(
            "loaded, but not created in this database: run CREATE EXTENSION pg_stat_statements"
                .to_owned(),
        );
    }
    if let Err(e) = sqlx::query(PG_STATEMENTS).fetch_all(pool).await {
        return no(crate::postgres::sql_error("reading pg_stat_statements", &e).to_string());
    }
    match all_stats(pool).await {
        true => offer(
            signal::PG_STAT_STATEMENTS,
            true,
            "loaded and created; every user's statements visible",
        ),
        false => offer(
            signal::PG_STAT_STATEMENTS,
            true,
            "loaded and created, but this role sees only its own statements' query ids: \
             GRANT pg_read_all_stats TO it to watch every user's",
        ),
    }
}

async fn pg_transactions_offer(pool: &PgPool) -> Offer {
    match pg_transactions(pool).await {
        Err(reason) => offer(signal::TRANSACTIONS, false, reason),
        Ok((_, _, others)) if others > 0 => offer(
            signal::TRANSACTIONS,
            true,
            format!(
                "pg_stat_database; but {others} other backfill sessions use this database now, \
                 and while they do their transactions cannot be told apart, so it is left out"
            ),
        ),
        Ok(_) => offer(
            signal::TRANSACTIONS,
            true,
            "pg_stat_database: time active or idle inside a transaction, per transaction, of \
             every session of this database",
        ),
    }
}

async fn pg_waits_offer(pool: &PgPool) -> Offer {
    let waiting: Result<i64, _> = sqlx::query_scalar(PG_WAITING)
        .bind(APPLICATION_NAME)
        .fetch_one(pool)
        .await;
    match (waiting, all_stats(pool).await) {
        (Err(e), _) => offer(
            signal::WAIT_EVENTS,
            false,
            crate::postgres::sql_error("reading pg_stat_activity", &e).to_string(),
        ),
        (Ok(n), true) => offer(
            signal::WAIT_EVENTS,
            true,
            format!("{n} live sessions waiting on WAL or I/O now"),
        ),
        (Ok(n), false) => offer(
            signal::WAIT_EVENTS,
            true,
            format!(
                "{n} waiting now, but this role sees only its own sessions' wait events: \
                 GRANT pg_read_all_stats TO it to see every session's"
            ),
        ),
    }
}

/// Whether the connected role sees every session's statistics.
async fn all_stats(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(false)
}

/// Whether the server records statement digests (`performance_schema` on, its
/// `statements_digest` consumer enabled); otherwise why not and how to enable them. With
/// `performance_schema` off the digest table exists but stays empty, so reading it is no test.
async fn mysql_digests_ready(pool: &MySqlPool) -> Result<(), String> {
    let on: i64 = sqlx::query_scalar("SELECT @@performance_schema + 0")
        .fetch_one(pool)
        .await
        .map_err(|e| crate::mysql::sql_error("reading @@performance_schema", &e).to_string())?;
    if on == 0 {
        return Err(
            "performance_schema is OFF: set performance_schema = ON in the server's \
                    configuration and restart it"
                .to_owned(),
        );
    }
    let consumer: Option<String> = sqlx::query_scalar(
        "SELECT ENABLED FROM performance_schema.setup_consumers WHERE NAME = 'statements_digest'",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    if consumer.as_deref() != Some("YES") {
        return Err(
            "the statements_digest consumer is disabled: UPDATE performance_schema.\
                    setup_consumers SET ENABLED = 'YES' WHERE NAME = 'statements_digest'"
                .to_owned(),
        );
    }
    mysql_totals(pool).await.map(drop)
}

async fn mysql_digests_offer(pool: &MySqlPool) -> Offer {
    match mysql_digests_ready(pool).await {
        Ok(()) => offer(
            signal::DIGESTS,
            true,
            "performance_schema digests of this schema; the backfill's own statements in it \
             count too",
        ),
        Err(reason) => offer(signal::DIGESTS, false, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(entries: &[(&str, u64, f64)]) -> Totals {
        entries
            .iter()
            .map(|(k, c, t)| ((*k).to_owned(), (*c, *t)))
            .collect()
    }

    #[test]
    fn an_interval_is_the_difference_and_a_reset_counts_from_zero() {
        let before = totals(&[("a", 100, 1.0), ("b", 10, 0.5), ("gone", 5, 0.1)]);
        let now = totals(&[
            ("a", 150, 1.5), // +50 calls, +0.5 s
            ("b", 4, 0.2),   // reset since: counts from zero
            ("new", 6, 0.3), // appeared since
        ]);
        let d = delta(&before, &now);
        assert_eq!(d.calls, 50 + 4 + 6);
        assert!((d.time.as_secs_f64() - 1.0).abs() < 1e-9, "{:?}", d.time);
        assert_eq!(delta(&now, &now), StatDelta::default());
    }

    #[test]
    fn the_watch_takes_its_own_transactions_out_even_when_reported_late() {
        let secs = |d: StatDelta| (d.calls, d.time.as_secs_f64());
        // 8 of ours pending; the interval holds 5 transactions: all 5 are taken as ours, 3
        // stay pending for the next interval, whose 103 are then 100 live ones.
        let mut pending = Own {
            calls: 8,
            secs: 0.0,
        };
        assert_eq!(secs(own_out(&mut pending, 100, 1.0, 105, 1.5)), (0, 0.5));
        assert_eq!(pending.calls, 3);
        assert_eq!(secs(own_out(&mut pending, 105, 1.5, 208, 2.5)), (100, 1.0));
        assert_eq!(pending.calls, 0);
        // A statistics reset: counts from zero.
        assert_eq!(secs(own_out(&mut pending, 208, 2.5, 10, 0.25)), (10, 0.25));
    }

    #[test]
    fn the_time_of_statements_reading_the_statistics_is_taken_out_too() {
        let secs = |d: StatDelta| (d.calls, (d.time.as_secs_f64() * 1e6).round() / 1e6);
        // 4 of ours took 0.02 s; the interval's 34 transactions took 0.25 s in all: 30 live
        // ones in 0.23 s.
        let mut pending = Own::default();
        pending.add(StatDelta {
            calls: 4,
            time: Duration::from_millis(20),
        });
        assert_eq!(secs(own_out(&mut pending, 100, 1.0, 134, 1.25)), (30, 0.23));
        assert_eq!(pending, Own::default());
        // Reported late: more of ours than the interval holds stays pending, never making
        // an interval's time negative.
        pending.add(StatDelta {
            calls: 4,
            time: Duration::from_millis(50),
        });
        assert_eq!(secs(own_out(&mut pending, 134, 1.25, 136, 1.28)), (0, 0.0));
        assert_eq!(pending.calls, 2);
        assert!((pending.secs - 0.02).abs() < 1e-9, "{pending:?}");
    }
}

//! `backfill demo`: a self-contained repair on SQLite.
//!
//! Creates a source of synthetic events and a derived table that is missing three days and has
//! one day of wrong values, writes the spec next to them, shows the gaps, runs the backfill and
//! shows the same days afterwards. The folder is marked so a second demo can recreate it
//! safely; a folder that is not an earlier demo is never deleted.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, SqlitePool};

use crate::args::DemoArgs;
use crate::commands::{duration, open_store, thousands, whoami};
use crate::output::Output;
use crate::{Reported, UserError, specfile};

const MARKER: &str = ".backfill-demo";
/// 2026-01-01T00:00:00Z: the demo covers the 90 days from here.
const START_UNIX: i64 = 1_767_225_600;
const DAYS: i64 = 90;
const MISSING_DAYS: [&str; 3] = ["2026-01-15", "2026-02-20", "2026-03-05"];
const WRONG_DAY: &str = "2026-03-18";

/// The transform from source to target, as the spec's query.
const QUERY: &str = "SELECT id, user_id, CAST(round(amount * 100) AS INTEGER) AS amount_cents, ts, lower(note) AS note FROM events WHERE ts >= :start AND ts < :end";

pub(crate) async fn run(args: &DemoArgs, out: Output) -> anyhow::Result<()> {
    if args.rows == 0 || args.rows > 100_000_000 {
        return Err(
            UserError::new(format!("--rows {} is out of range", args.rows))
                .hint("use between 1 and 100,000,000 rows")
                .into(),
        );
    }
    let dir = prepare_dir(&args.dir, out)?;
    let started = Instant::now();
    out.note(format!(
        "creating {} synthetic events over {DAYS} days in {}",
        thousands(args.rows),
        dir.join("source.db").display()
    ));
    let source = create_source(&dir, args.rows).await?;
    let target = create_target(&dir).await?;
    source.close().await;
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, spec_text())?;
    out.note(format!(
        "wrote {} and {} in {}",
        spec_path.display(),
        dir.join("target.db").display(),
        duration(started.elapsed().as_secs_f64())
    ));

    let before = gaps(&target, &dir).await?;
    let affected: Vec<String> = before
        .iter()
        .filter(|d| d.is_broken())
        .map(|d| d.day.clone())
        .collect();
    if !out.json {
        out.line("");
        out.line("before the backfill (gaps: days whose target differs from the source):");
        print_days(&before, &affected, out);
    }
    if args.prepare_only {
        out.json(
            &json!({ "dir": dir, "spec": spec_path, "before": days_json(&before, &affected) }),
        );
        out.line(format!(
            "\nnext: backfill --state sqlite://{}/.backfill/state.db run {}",
            dir.display(),
            spec_path.display()
        ));
        return Ok(());
    }

    let (spec, _) = specfile::load(&spec_path, out)?;
    let preview = diff_before(&spec, out).await?;
    let plan = backfill_core::plan::plan(&spec)?;
    let state_url = format!(
        "sqlite://{}",
        dir.join(".backfill").join("state.db").display()
    );
    let store = open_store(&state_url).await?;
    let owner = whoami();
    let launch = backfill_engine::prepare_run(&store, &spec, &plan, None, &owner, false).await?;
    let run = launch.run().clone();
    out.note(format!(
        "\nrunning backfill {} ({} daily partitions, concurrency {})",
        run.id,
        plan.len(),
        spec.limits.concurrency
    ));
    let summary = crate::commands::run::execute_quiet(
        &store,
        &spec,
        &run,
        out,
        false,
        crate::args::ClaimArgs {
            wait: false,
            lease: backfill_engine::DEFAULT_LEASE,
            metrics_addr: None,
        },
    )
    .await?;

    let after = gaps(&target, &dir).await?;
    target.close().await;
    // `backfill validate RUN`: both sides' fingerprints of every day compared again, now.
    let proof = backfill_engine::reconcile::validate(&store, &spec, Some(&run.id), &owner).await?;
    let secs = summary.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        summary.session_rows_read as f64 / secs
    } else {
        0.0
    };
    out.json(&json!({
        "dir": dir,
        "spec": spec_path,
        "run_id": run.id,
        "state": summary.state.as_str(),
        "before": days_json(&before, &affected),
        "after": days_json(&after, &affected),
        "rows": {
            "read": summary.counts.read,
            "inserted": summary.counts.inserted,
            "updated": summary.counts.updated,
            "unchanged": summary.counts.unchanged,
        },
        "elapsed_seconds": secs,
        "rows_per_second": rate,
        "reconciliation": crate::commands::run::reconciliation_json(&summary.checks, summary.not_verified_reason.as_deref()),
        "diff_before": preview,
        "validate_after": {
            "verified": proof.totals.verified,
            "mismatched": proof.totals.mismatched,
            "not_verified": proof.totals.not_verified,
        },
    }));
    if !out.json {
        out.line("");
        out.line("after the backfill (the same days):");
        print_days(&after, &affected, out);
        out.line("");
        out.line(format!("run {}: {}", run.id, summary.state));
        out.line(format!(
            "  {} partitions, {} rows read: {} inserted, {} updated, {} unchanged (not rewritten)",
            summary.total,
            thousands(summary.counts.read),
            thousands(summary.counts.inserted),
            thousands(summary.counts.updated),
            thousands(summary.counts.unchanged)
        ));
        out.line(format!(
            "  elapsed {} ({} rows/s)",
            duration(secs),
            thousands(rate as u64)
        ));
        out.line(format!(
            "  reconciled after each day: {}",
            crate::commands::run::reconciliation_line(
                &summary.checks,
                summary.not_verified_reason.as_deref()
            )
        ));
        out.line(format!(
            "  validate (every day's fingerprints compared again, now): {} verified, {} mismatched, {} not verified",
            thousands(proof.totals.verified),
            thousands(proof.totals.mismatched),
            thousands(proof.totals.not_verified)
        ));
        out.line(format!(
            "  inspect: backfill --state {state_url} status {}   |   audit: backfill --state {state_url} audit --verify",
            run.id
        ));
        out.line(format!(
            "  serve: backfill --state {state_url} serve   (then open the dashboard at http://127.0.0.1:8080/)"
        ));
        if spec.target.undo {
            out.line(format!(
                "  undo: backfill --state {state_url} rollback {} --dry-run   (the rows it inserted or changed were logged; `cleanup` drops the log)",
                run.id
            ));
        }
    }
    let remaining = after.iter().filter(|d| d.is_broken()).count();
    if summary.state != backfill_core::RunState::Succeeded
        || remaining > 0
        || proof.totals.mismatched > 0
    {
        out.note(format!(
            "demo run ended {} with {remaining} days still differing",
            summary.state
        ));
        return Err(Reported(1).into());
    }
    Ok(())
}

/// `backfill diff` before anything is written: what the run will change, from one fingerprint
/// query per side, as one line (the JSON result keeps the totals).
async fn diff_before(spec: &backfill_core::Spec, out: Output) -> anyhow::Result<serde_json::Value> {
    let options = backfill_engine::diff::DiffOptions::default();
    let started = Instant::now();
    let diff = backfill_engine::diff::diff(spec, &options, &mut |_| {}).await?;
    let t = diff.totals();
    let differ = diff.partitions.iter().filter(|p| !p.is_unchanged()).count();
    if !out.json {
        out.line(format!(
            "diff (what the run will change; nothing written yet): {} to insert, {} to update, \
             {} unchanged, {} extra, in {differ} of {} days ({})",
            thousands(t.insert),
            thousands(t.update),
            thousands(t.unchanged),
            thousands(t.extra),
            diff.partitions.len(),
            duration(started.elapsed().as_secs_f64())
        ));
    }
    Ok(json!({
        "insert": t.insert,
        "update": t.update,
        "unchanged": t.unchanged,
        "extra": t.extra,
        "partitions_differing": differ,
    }))
}

/// Creates `dir`, or recreates it when it holds an earlier demo. Never deletes anything else.
fn prepare_dir(dir: &Path, out: Output) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if is_demo {
            out.note(format!(
                "recreating {} (it holds an earlier demo)",
                dir.display()
            ));
            std::fs::remove_dir_all(dir)?;
        } else if !empty {
            return Err(UserError::new(format!(
                "{} exists and is not a backfill demo folder; not touching it",
                dir.display()
            ))
            .hint("pass --dir with a new or empty folder")
            .into());
        }
    } else {
        out.note(format!("creating {}", dir.display()));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "created by `backfill demo`; the next demo may delete this folder\n",
    )?;
    Ok(std::fs::canonicalize(dir)?)
}

async fn connect(path: &Path) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // Filling a million rows is slow by design: no driver log lines in the demo's output.
        .disable_statement_logging();
    Ok(sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

async fn create_source(dir: &Path, rows: u64) -> anyhow::Result<SqlitePool> {
    let pool = connect(&dir.join("source.db")).await?;
    sqlx::query(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, \
         amount REAL NOT NULL, ts TEXT NOT NULL, note TEXT)",
    )
    .execute(&pool)
    .await?;
    // Deterministic synthetic rows, evenly over the 90 days; every 11th note is NULL and every
    // 13th holds non-ASCII text.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO events (id, user_id, amount, ts, note) \
         SELECT i, (i * 7919) % 100000, ((i * 37) % 1000000) / 100.0, \
                strftime('%Y-%m-%dT%H:%M:%SZ', ?2 + (i - 1) * ?3 / ?1, 'unixepoch'), \
                CASE WHEN i % 11 = 0 THEN NULL \
                     WHEN i % 13 = 0 THEN 'Größe ' || i || ' ✓ Straße' \
                     ELSE 'Order #' || i || ' Status ' || \
                          (CASE i % 3 WHEN 0 THEN 'OK' WHEN 1 THEN 'Pending' ELSE 'FAILED' END) END \
         FROM n",
    )
    .bind(rows as i64)
    .bind(START_UNIX)
    .bind(DAYS * 86_400)
    .execute(&pool)
    .await?;
    sqlx::query("CREATE INDEX events_ts ON events (ts)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

async fn create_target(dir: &Path) -> anyhow::Result<SqlitePool> {
    let pool = connect(&dir.join("target.db")).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query(
        "CREATE TABLE events_fixed (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, \
         amount_cents INTEGER NOT NULL, ts TEXT NOT NULL, note TEXT)",
    )
    .execute(&mut *conn)
    .await?;
    // The time index a table read by day has: reconciliation after each partition reads
    // the partition's window by it (without it, each check would scan the whole table).
    sqlx::query("CREATE INDEX events_fixed_ts ON events_fixed (ts)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(attach_sql(dir)))
        .execute(&mut *conn)
        .await?;
    // The derived table as a correct pipeline would have built it...
    sqlx::query(
        "INSERT INTO events_fixed SELECT id, user_id, CAST(round(amount * 100) AS INTEGER), ts, lower(note) FROM src.events",
    )
    .execute(&mut *conn)
    .await?;
    // ...then the incident: three days never loaded, one day written by a buggy job.
    for day in MISSING_DAYS {
        sqlx::query("DELETE FROM events_fixed WHERE ts >= ?1 AND ts < date(?1, '+1 day')")
            .bind(day)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "UPDATE events_fixed SET amount_cents = amount_cents * 10 + 1, note = upper(note) \
         WHERE ts >= ?1 AND ts < date(?1, '+1 day')",
    )
    .bind(WRONG_DAY)
    .execute(&mut *conn)
    .await?;
    drop(conn);
    Ok(pool)
}

fn attach_sql(dir: &Path) -> String {
    let path = dir
        .join("source.db")
        .display()
        .to_string()
        .replace('\'', "''");
    format!("ATTACH DATABASE '{path}' AS src")
}

fn spec_text() -> String {
    format!(
        r#"# Written by `backfill demo`. Repairs `events_fixed` (a derived copy of `events`) after an
# ETL outage skipped three days and a buggy job wrote a fourth. See docs/spec.md for every key.
name   = "demo_events_fixed"
reason = "demo: ETL outage skipped {} and a bad deploy corrupted {WRONG_DAY}"

[source]
url         = "sqlite://source.db"
query       = "{QUERY}"
time_format = "rfc3339"
time_column = "ts"

[target]
url   = "sqlite://target.db"
table = "events_fixed"
key   = ["id"]
mode  = "upsert"

[scope]
start     = "2026-01-01T00:00:00Z"
end       = "2026-04-01T00:00:00Z"
partition = "1d"

[limits]
concurrency = 4
batch_rows  = 20000  # one batch per day here: fewer commits, still flat memory

[slo]
complete_within = "1h"   # status and the dashboard show the projection against it
success_rate    = 0.99   # more failed attempts than 1% burn the error budget
"#,
        MISSING_DAYS.join(", ")
    )
}

/// Per-day comparison of source and target.
struct Day {
    day: String,
    source_rows: u64,
    target_rows: u64,
    wrong_rows: u64,
}

impl Day {
    fn is_broken(&self) -> bool {
        self.source_rows != self.target_rows || self.wrong_rows > 0
    }
}

/// Counts rows per day in source and target, and target rows whose values differ from the
/// source's transform: the `gaps` report of the demo.
async fn gaps(target: &SqlitePool, dir: &Path) -> anyhow::Result<Vec<Day>> {
    let mut conn = target.acquire().await?;
    let attached: bool =
        sqlx::query("SELECT count(*) FROM pragma_database_list WHERE name = 'src'")
            .fetch_one(&mut *conn)
            .await?
            .get::<i64, _>(0)
            > 0;
    if !attached {
        sqlx::query(sqlx::AssertSqlSafe(attach_sql(dir)))
            .execute(&mut *conn)
            .await?;
    }
    let rows = sqlx::query(
        "WITH s AS (SELECT substr(ts, 1, 10) AS day, count(*) AS n FROM src.events GROUP BY 1), \
              t AS (SELECT substr(ts, 1, 10) AS day, count(*) AS n FROM main.events_fixed GROUP BY 1), \
              w AS (SELECT substr(e.ts, 1, 10) AS day, count(*) AS n FROM src.events e \
                    JOIN main.events_fixed f ON f.id = e.id \
                    WHERE f.amount_cents IS NOT CAST(round(e.amount * 100) AS INTEGER) \
                       OR f.note IS NOT lower(e.note) OR f.user_id IS NOT e.user_id OR f.ts IS NOT e.ts \
                    GROUP BY 1) \
         SELECT s.day, s.n, coalesce(t.n, 0), coalesce(w.n, 0) FROM s \
         LEFT JOIN t ON t.day = s.day LEFT JOIN w ON w.day = s.day ORDER BY s.day",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Day {
            day: r.get(0),
            source_rows: r.get::<i64, _>(1) as u64,
            target_rows: r.get::<i64, _>(2) as u64,
            wrong_rows: r.get::<i64, _>(3) as u64,
        })
        .collect())
}

fn print_days(days: &[Day], affected: &[String], out: Output) {
    out.line(format!(
        "  {:<12} {:>12} {:>12} {:>12}",
        "day", "source rows", "target rows", "wrong rows"
    ));
    for d in days.iter().filter(|d| affected.contains(&d.day)) {
        out.line(format!(
            "  {:<12} {:>12} {:>12} {:>12}  {}",
            d.day,
            thousands(d.source_rows),
            thousands(d.target_rows),
            thousands(d.wrong_rows),
            if d.is_broken() { "✗" } else { "✓" }
        ));
    }
    let broken = days.iter().filter(|d| d.is_broken()).count();
    out.line(format!("  {} of {} days differ", broken, days.len()));
}

fn days_json(days: &[Day], affected: &[String]) -> serde_json::Value {
    json!({
        "days_total": days.len(),
        "days_differing": days.iter().filter(|d| d.is_broken()).count(),
        "affected": days.iter().filter(|d| affected.contains(&d.day)).map(|d| json!({
            "day": d.day,
            "source_rows": d.source_rows,
            "target_rows": d.target_rows,
            "wrong_rows": d.wrong_rows,
        })).collect::<Vec<_>>(),
    })
}

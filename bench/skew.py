#!/usr/bin/env python3
"""Skew splitting (issue 5, "Skewed partitions"): the makespan of a run whose source has one day
holding 30x the rows of the others, with and without splitting.

Source: PostgreSQL database `bench_skew`, table `events` shaped like W1's (bench/w1.sql) over
30 UTC days (2025-03-01 .. 2025-03-31): --normal-rows rows on each day except day --big-day,
which holds --factor times as many. Target: `bench_skew_target.events_fixed` (a second
database), upsert mode, W1's transform, `partition = "1d"`, concurrency 4, batch_rows 5000, a
fresh SQLite state file per run, the target emptied (TRUNCATE + CHECKPOINT, not timed) before
each run. Cases (interleaved per repetition, best of --reps):

  none     no splitting (default order, oldest_first)
  rows     limits.split_rows = 2 x a normal day (the big day becomes ceil(30/2) = 15 children)
  slow     limits.split_slow = 3 (the big day splits into `concurrency` children at a checkpoint
           once it has run 3x the median partition time, the median floored at 1 s)
  largest  no splitting, limits.order = "largest_first" (the big day starts first)

Makespan = wall time of `backfill --json --state sqlite://FRESH run SPEC`, process start to exit.
Every run must succeed and leave a target equal to the source's transform (row count, sum of
amount_cents and a sum of 64-bit row hashes). Splits are counted from the state file.

Writes the "Skew splitting (issue 5)" section of bench/RESULTS.md (between its own markers;
replaced if present, appended at the end otherwise). Usage: bench/skew.py [--no-build] [--reps N]
or `bench/run --suite skew`. Creates and drops only `bench_skew` and `bench_skew_target`.
"""

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(BENCH))
import pg_suite  # noqa: E402

SRC_DB = "bench_skew"
TGT_DB = "bench_skew_target"
BEGIN = "<!-- bench/run suite skew: begin -->"  # bench/run keeps the section (SUITE_ORDER)
END = "<!-- bench/run suite skew: end -->"
DAYS = 30
FIRST_DAY = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)
SUM_SOURCE = "SELECT coalesce(sum(round(amount * 100)::bigint), 0) FROM events"
SUM_TARGET = "SELECT coalesce(sum(amount_cents), 0) FROM events_fixed"
CASES = ["none", "rows", "slow", "largest"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def source_sql(normal, factor, big_day):
    """The skewed source: W1's table shape, `normal` rows a day evenly spread over each day,
    `normal * factor` on day `big_day` (1-based), ids in ts order."""
    start = FIRST_DAY.strftime("%Y-%m-%d %H:%M:%S+00")
    return f"""SET timezone = 'UTC';
DROP TABLE IF EXISTS events;
CREATE TABLE events (
  id      bigserial PRIMARY KEY,
  ts      timestamptz NOT NULL,
  user_id int,
  amount  numeric(12,2),
  note    text
);
INSERT INTO events (ts, user_id, amount, note)
SELECT timestamptz '{start}' + d * interval '1 day' + (i - 1) * (interval '1 day' / c.n),
       ((d * 1000003 + i) * 7919) % 100000,
       (((d * 1000003 + i) * 37) % 1000000) / 100.0,
       'Order #' || (d * 1000003 + i) || ' Status ' || (CASE i % 3 WHEN 0 THEN 'OK' WHEN 1 THEN 'Pending' ELSE 'FAILED' END)
FROM generate_series(0::bigint, {DAYS - 1}) AS g(d)
CROSS JOIN LATERAL (SELECT CASE WHEN d = {big_day - 1} THEN {normal * factor} ELSE {normal} END AS n) AS c
CROSS JOIN LATERAL generate_series(1::bigint, c.n) AS s(i)
ORDER BY 1;
CREATE INDEX events_ts_idx ON events (ts);
VACUUM ANALYZE events;
"""


def ensure_source(pg, normal, factor, big_day):
    sql = source_sql(normal, factor, big_day)
    mark = hashlib.sha256(sql.encode()).hexdigest()[:16]
    if pg.exists(SRC_DB):
        got = pg.rows(SRC_DB, "SELECT to_regclass('bench_meta') IS NOT NULL")
        if got and got[0][0] == "t" and pg.value(SRC_DB, "SELECT m FROM bench_meta") == mark:
            log(f"  reusing database {SRC_DB}")
            return
    log(f"  creating database {SRC_DB}")
    t0 = time.perf_counter()
    pg.drop(SRC_DB)
    pg.create(SRC_DB)
    pg.run(SRC_DB, sql)
    pg.run(SRC_DB, f"CREATE TABLE bench_meta (m text); INSERT INTO bench_meta VALUES ('{mark}')")
    log(f"  loaded in {time.perf_counter() - t0:.0f} s")


def spec(work, name, pg, o, extra_limits):
    end = FIRST_DAY + dt.timedelta(days=DAYS)
    text = pg_suite.spec_text(
        name, pg.url(SRC_DB), pg.url(TGT_DB), pg_suite.UPSERT_LINES,
        pg_suite.rfc3339(FIRST_DAY), pg_suite.rfc3339(end), "1d", o.concurrency, o.batch_rows,
    ).replace('reason = "bench/run --suite pg"', 'reason = "bench/skew.py"')
    text += "".join(f"{line}\n" for line in extra_limits)
    return pg_suite.write_spec(work, name, text)


def parse_ts(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def state_facts(state_url, big_day):
    """From the run's SQLite state file: how many partitions were split, into how many
    children, the rows each child read (window order), when the split happened (seconds the
    parent had run; `split_slow` only) and when the big day's last piece finished (seconds
    after the first partition started)."""
    path = state_url.removeprefix("sqlite://")
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            "SELECT partition_id, parent_id, window_start, started_at, finished_at, rows_read "
            "FROM partitions"
        ).fetchall()
        details = [d for (d,) in con.execute(
            "SELECT detail FROM audit_events WHERE action = 'partition.split' ORDER BY seq"
        )]
    finally:
        con.close()
    children = [r for r in rows if r[1] is not None]
    parents = {r[1] for r in children}
    starts = [parse_ts(r[3]) for r in rows if r[3]]
    day0 = FIRST_DAY + dt.timedelta(days=big_day - 1)
    day1 = day0 + dt.timedelta(days=1)
    big_done = [
        parse_ts(r[4]) for r in rows
        if r[4] and day0 <= parse_ts(r[2]) < day1 and r[0] not in parents
    ]
    big_at = (max(big_done) - min(starts)).total_seconds() if big_done and starts else None

    def order(pid):
        return [int(x) if x.isdigit() else 0 for x in pid.split(".")]

    child_rows = [r[5] for r in sorted(children, key=lambda r: order(r[0]))]
    split_after = None
    for d in details:
        try:
            j = json.loads(d)
        except ValueError:
            continue
        reason = j.get("reason", j)
        if isinstance(reason, dict) and reason.get("elapsed_seconds") is not None:
            split_after = (reason["elapsed_seconds"], reason.get("median_seconds"))
    return {"splits": len(parents), "children": len(children), "big_done_at": big_at,
            "child_rows": child_rows, "split_after": split_after, "details": details}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--normal-rows", type=int, default=60_000, help="rows on each normal day (default 60,000: 3,540,000 rows in all, ~15 s a run here)")
    p.add_argument("--factor", type=int, default=30, help="the big day holds this many times a normal day (default 30)")
    p.add_argument("--big-day", type=int, default=20, help="which of the 30 days is big, 1-based (default 20)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch-rows", type=int, default=5000)
    p.add_argument("--split-slow", type=float, default=3.0)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", pg_suite.DEFAULT_URL))
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/backfill")
    p.add_argument("--binary", type=Path, help="measure this binary instead of building one")
    p.add_argument("--keep-dbs", action="store_true", help="keep bench_skew and bench_skew_target (default: dropped)")
    p.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    o = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlock
    benchlock.hold('bench/skew.py')
    cases = [c.strip() for c in o.cases.split(",") if c.strip()]
    if set(cases) - set(CASES):
        p.error(f"--cases: unknown {set(cases) - set(CASES)}")
    if not 1 <= o.big_day <= DAYS:
        p.error("--big-day: 1..30")

    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if o.binary:
        binary = o.binary.resolve()
    else:
        binary = target_dir / "release" / "backfill"
        if not o.no_build:
            log("building: cargo build --release -p backfill-cli")
            subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], cwd=REPO, check=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD")
    dirty = [f for f in git("diff", "--name-only", "HEAD").splitlines() if f and not f.startswith("bench/")]
    binary_mtime = dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    work = Path(tempfile.mkdtemp(prefix="backfill-skew-"))
    shutil.copy2(binary, work / "backfill")  # a rebuild by someone else cannot swap it mid-run
    pg = pg_suite.Pg(o.pg_url)
    engine = pg_suite.Engine(work / "backfill", work, pg)
    load_before = os.getloadavg()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    big = o.normal_rows * o.factor
    total = o.normal_rows * (DAYS - 1) + big
    split_rows = 2 * o.normal_rows
    limits = {
        "none": [],
        "rows": [f"split_rows  = {split_rows}"],
        "slow": [f"split_slow  = {o.split_slow}"],
        "largest": ['order       = "largest_first"'],
    }
    labels = {
        "none": "1. no splitting (oldest_first)",
        "rows": f"2. split_rows = {split_rows:,}",
        "slow": f"3. split_slow = {o.split_slow:g}",
        "largest": '4. no splitting, order = "largest_first"',
    }
    res = {c: [] for c in cases}
    try:
        log(f"source: {total:,} rows over {DAYS} days, day {o.big_day} with {big:,}")
        ensure_source(pg, o.normal_rows, o.factor, o.big_day)
        pg.create(TGT_DB)
        pg.run(TGT_DB, pg_suite.TARGET_DDL)
        expected = pg_suite.checksum(pg, SRC_DB, pg_suite.CHECKSUM_SOURCE)
        expected_sum = pg.value(SRC_DB, SUM_SOURCE)
        if expected[0] != total:
            raise SystemExit(f"{SRC_DB}.events holds {expected[0]:,} rows, expected {total:,}")
        specs = {c: spec(work, f"skew_{c}", pg, o, limits[c]) for c in cases}
        for rep in range(o.reps):
            for c in cases:
                pg_suite.reset_target(pg, TGT_DB)
                state = engine.sqlite_state()
                r = engine.run(specs[c], state=state, expect={"rows.read": total, "rows.inserted": total})
                pg_suite.verify(pg, TGT_DB, expected, f"case {c}")
                got_sum = pg.value(TGT_DB, SUM_TARGET)
                if got_sum != expected_sum:
                    raise SystemExit(f"case {c}: sum(amount_cents) {got_sum} != source {expected_sum}")
                facts = state_facts(state, o.big_day)
                res[c].append({"wall": r.wall, "inner": r.summary["elapsed_seconds"], **facts,
                               "partitions": r.summary["partitions"]})
                log(f"  rep {rep + 1}/{o.reps} {c:8s} {r.wall:7.2f} s  splits {facts['splits']} "
                    f"children {facts['children']}  big day done at {facts['big_done_at']}  "
                    f"child rows {facts['child_rows']}  split after {facts['split_after']}")
                if os.environ.get("SKEW_DEBUG"):
                    log(f"    split events: {facts['details']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not o.keep_dbs:
            pg.drop(TGT_DB)
            pg.drop(SRC_DB)
    load_after = os.getloadavg()

    best = {c: min(x["wall"] for x in res[c]) for c in cases}
    L = ["## Skew splitting (issue 5)", ""]
    L.append(
        f"{date}, commit {commit}"
        + (f" (binary built from the work tree with uncommitted changes in {', '.join(dirty)})" if dirty else " (binary built from the work tree)")
        + f", binary {binary_mtime}; `bench/skew.py --reps {o.reps}` (or `bench/run --suite skew`). "
        f"{os.cpu_count()} cores, shared with other work and the PostgreSQL server: load average "
        f"{' / '.join(f'{x:.2f}' for x in load_before)} before, {' / '.join(f'{x:.2f}' for x in load_after)} after."
    )
    L.append("")
    L.append(
        f"Source `bench_skew.events` (W1's shape and transform): {total:,} rows over {DAYS} days "
        f"({pg_suite.rfc3339(FIRST_DAY)[:10]} + 30 d), {o.normal_rows:,} rows on each day but day "
        f"{o.big_day}, which holds {big:,} ({o.factor}×). Target `bench_skew_target.events_fixed`, "
        f"upsert, `partition = \"1d\"`, concurrency {o.concurrency}, batch_rows {o.batch_rows}, "
        "fresh SQLite state file and empty target per run. Makespan = wall time of `backfill run`; "
        f"best of {o.reps}, cases interleaved per repetition. Every target checked: row count, "
        "sum(amount_cents) and a sum of row hashes equal the source's transform."
    )
    L.append("")
    L.append("| case | makespan best (s) | all reps (s) | median (s) | ÷ case 1 (best) | ÷ case 1 (median) | splits (children) | big day done at (s after start) |")
    L.append("|---|---|---|---|---|---|---|---|")
    med = {c: statistics.median(x["wall"] for x in res[c]) for c in cases}
    base = best.get("none")
    for c in cases:
        runs = res[c]
        b = min(runs, key=lambda x: x["wall"])
        ratio = f"{best[c] / base:.2f}" if base else "–"
        mratio = f"{med[c] / med['none']:.2f}" if base else "–"
        big_at = f"{b['big_done_at']:.1f}" if b["big_done_at"] is not None else "–"
        walls = ", ".join(f"{x['wall']:.2f}" for x in runs)
        L.append(
            f"| {labels[c]} | {best[c]:.2f} | {walls} | {med[c]:.2f} | {ratio} | {mratio} | "
            f"{b['splits']} ({b['children']}) | {big_at} |"
        )
    L.append("")
    for c in ("rows", "slow"):
        if c not in cases:
            continue
        x = min(res[c], key=lambda x: x["wall"])
        after = ""
        if x["split_after"]:
            e, m = x["split_after"]
            after = f"; the split came after the big day had run {e:.1f} s (median {m:.2f} s, floored at 1 s)"
        L.append(f"- {labels[c]}, best rep: the children read {', '.join(f'{n:,}' for n in x['child_rows']) or 'nothing'}{after}.")
    L.append("")
    section = "\n".join(L) + "\n"
    print(section)

    text = o.output.read_text() if o.output.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + BEGIN + "\n" + section + END + text.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + section + END + "\n"
    o.output.write_text(text)
    log(f"wrote {o.output}")


if __name__ == "__main__":
    main()

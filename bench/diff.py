#!/usr/bin/env python3
"""Issue 11: `backfill diff` on W1 (PostgreSQL to PostgreSQL) against a plain per-day
`count(*)` plus checksum query on both sides, measured in the same run.

The target is a correct copy of W1's transform (`events_fixed` in its own database
`bench_w1_diff`), then broken: one row changed in each of 3 days, 1 day deleted, 5 extra rows
in another day. The script checks that `diff` finds exactly those rows, then times, interleaved
`--reps` times: `backfill diff SPEC --json` (fingerprints of 365 partitions, one query per
side, then bisection of the 5 that differ) and the baseline (the same two per-day GROUP BY
queries a person would write, both sides at once). Target: diff ≤ 1.2× the baseline.

Usage: bench/diff.py [--binary PATH] [--no-build] [--rows N] [--reps N] [--base URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only
`bench_w1_diff`; reuses (or creates) the W1 source database of bench/pg_suite.py.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlock  # noqa: E402
import pg_suite  # noqa: E402
from pg_suite import QUERY, YEAR_END, YEAR_START, Pg, pipe  # noqa: E402

DIFF_DB = "bench_w1_diff"
TARGET_RATIO = 1.2
CHANGED_DAYS = ["2025-02-01", "2025-06-01", "2025-09-01"]
MISSING_DAY = "2025-04-01"
EXTRA_DAY = "2025-11-01"
EXTRA_ROWS = 5

BASELINE_SOURCE = (
    "SET timezone = 'UTC'; SELECT date_trunc('day', ts) AS day, count(*), "
    "sum(('x' || substr(md5(concat_ws('|', id, ts, user_id, round(amount * 100)::bigint, "
    "lower(note))), 1, 16))::bit(64)::bigint::numeric) FROM events "
    f"WHERE ts >= '{YEAR_START}' AND ts < '{YEAR_END}' GROUP BY 1 ORDER BY 1;"
)
BASELINE_TARGET = (
    "SET timezone = 'UTC'; SELECT date_trunc('day', ts) AS day, count(*), "
    "sum(('x' || substr(md5(concat_ws('|', id, ts, user_id, amount_cents, note)), 1, 16))"
    "::bit(64)::bigint::numeric) FROM events_fixed "
    f"WHERE ts >= '{YEAR_START}' AND ts < '{YEAR_END}' GROUP BY 1 ORDER BY 1;"
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(pg, rows):
    """The W1 source, and `bench_w1_diff.events_fixed`: its correct transform, then broken.
    Returns (source db, expected changes)."""
    src = pg_suite.ensure_source(pg, rows)
    log(f"  creating {DIFF_DB}: the transformed copy, then the breaks")
    pg.drop(DIFF_DB)
    pg.create(DIFF_DB)
    pg.run(
        DIFF_DB,
        "CREATE TABLE events_fixed (id bigint PRIMARY KEY, ts timestamptz, user_id int, "
        "amount_cents bigint, note text)",
    )
    pipe(
        pg,
        src,
        "COPY (SELECT id, ts, user_id, round(amount * 100)::bigint, lower(note) FROM events) "
        "TO STDOUT",
        DIFF_DB,
        "COPY events_fixed FROM STDIN",
    )
    pg.run(DIFF_DB, "CREATE INDEX events_fixed_ts ON events_fixed (ts); VACUUM ANALYZE events_fixed")
    changed = []
    for day in CHANGED_DAYS:
        key = pg.value(
            DIFF_DB,
            f"SELECT min(id) FROM events_fixed WHERE ts >= '{day}T00:00:00Z' "
            f"AND ts < '{day}T00:00:00Z'::timestamptz + interval '1 day'",
        )
        pg.run(DIFF_DB, f"UPDATE events_fixed SET amount_cents = amount_cents + 1 WHERE id = {key}")
        changed.append(key)
    missing = int(
        pg.value(
            DIFF_DB,
            f"SELECT count(*) FROM events_fixed WHERE ts >= '{MISSING_DAY}T00:00:00Z' "
            f"AND ts < '{MISSING_DAY}T00:00:00Z'::timestamptz + interval '1 day'",
        )
    )
    pg.run(
        DIFF_DB,
        f"DELETE FROM events_fixed WHERE ts >= '{MISSING_DAY}T00:00:00Z' "
        f"AND ts < '{MISSING_DAY}T00:00:00Z'::timestamptz + interval '1 day'",
    )
    extra = [str(100_000_000 + i) for i in range(EXTRA_ROWS)]
    values = ", ".join(
        f"({k}, '{EXTRA_DAY}T12:00:00Z', 1, 100, 'extra')" for k in extra
    )
    pg.run(DIFF_DB, f"INSERT INTO events_fixed VALUES {values}; VACUUM ANALYZE events_fixed")
    return src, {"changed": sorted(changed, key=int), "missing": missing, "extra": extra}


def spec_text(pg, src):
    return f'''name = "bench_diff"
reason = "bench/diff.py"

[source]
url = "{pg.url(src)}"
query = "{QUERY}"
time_column = "ts"

[target]
url = "{pg.url(DIFF_DB)}"
table = "events_fixed"
key = ["id"]

[scope]
start = "{YEAR_START}"
end = "{YEAR_END}"
partition = "1d"
'''


def run_diff(binary, spec, work):
    t0 = time.perf_counter()
    out = subprocess.run(
        [binary, "diff", spec, "--json"],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "BACKFILL_STATE": f"sqlite://{work}/state.db"},
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"backfill diff failed:\n{out.stderr}")
    return took, json.loads(out.stdout)


def run_baseline(pg, src):
    """Both per-day queries at once (as diff runs both sides at once); wall time of both."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(pg.cmd(db, "-A", "-t", "-c", sql), stdout=subprocess.DEVNULL)
        for db, sql in ((src, BASELINE_SOURCE), (DIFF_DB, BASELINE_TARGET))
    ]
    codes = [p.wait() for p in procs]
    took = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"baseline failed: {codes}")
    return took


def check(result, expected):
    totals = result["totals"]
    keys = {"update": [], "extra": []}
    for p in result["partitions"]:
        for k in p["keys"]:
            if k["change"] in keys:
                keys[k["change"]].append(k["key"]["id"])
    problems = []
    if sorted(keys["update"], key=int) != expected["changed"]:
        problems.append(f"updates {keys['update']} != {expected['changed']}")
    if sorted(keys["extra"], key=int) != expected["extra"]:
        problems.append(f"extras {keys['extra']} != {expected['extra']}")
    if totals["insert"] != expected["missing"]:
        problems.append(f"inserts {totals['insert']} != {expected['missing']}")
    if totals["partitions_changed"] != len(CHANGED_DAYS) + 2:
        problems.append(f"partitions changed {totals['partitions_changed']}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--base", default=pg_suite.DEFAULT_URL)
    ap.add_argument("--keep-db", action="store_true", help=f"keep {DIFF_DB} afterwards")
    args = ap.parse_args()
    benchlock.hold("bench/diff.py")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], check=True, cwd=BENCH.parent)
    pg = Pg(args.base)
    load_before = os.getloadavg()
    src, expected = prepare(pg, args.rows)
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "backfill"
        binary.write_bytes(Path(args.binary).read_bytes())
        binary.chmod(0o755)
        spec = Path(work) / "spec.toml"
        spec.write_text(spec_text(pg, src))
        run_diff(str(binary), str(spec), work)  # warm-up (caches), not counted
        run_baseline(pg, src)
        diffs, bases, result = [], [], None
        for _ in range(args.reps):
            took, result = run_diff(str(binary), str(spec), work)
            diffs.append(took)
            bases.append(run_baseline(pg, src))
    load_after = os.getloadavg()
    problems = check(result, expected)
    if not args.keep_db:
        pg.drop(DIFF_DB)
    best_d, best_b = min(diffs), min(bases)
    compared = result["totals"]["unchanged"] + result["totals"]["update"] + result["totals"]["insert"]
    rows_both = sum(p["source_rows"] + p["target_rows"] for p in result["partitions"])
    ratio = best_d / best_b
    print(f"rows: {args.rows:,}; partitions: {len(result['partitions'])}; "
          f"changed partitions: {result['totals']['partitions_changed']}")
    print(f"found exactly the breaks: {'yes' if not problems else 'NO: ' + '; '.join(problems)}")
    print(f"diff (best of {args.reps}): {best_d:.2f} s  all: {', '.join(f'{d:.2f}' for d in diffs)}")
    print(f"baseline per-day count+checksum, both sides (best): {best_b:.2f} s  all: "
          f"{', '.join(f'{b:.2f}' for b in bases)}")
    print(f"ratio diff/baseline: {ratio:.2f}x (target <= {TARGET_RATIO}x: "
          f"{'pass' if ratio <= TARGET_RATIO else 'MISS'})")
    print(f"rows compared per second (both sides): {rows_both / best_d:,.0f}; "
          f"source rows classified: {compared:,}; rows fetched: {result['rows_fetched']:,}; "
          f"fingerprint queries: {result['queries']}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

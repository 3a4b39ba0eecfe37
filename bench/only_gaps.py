#!/usr/bin/env python3
"""Issue 11: `backfill run --only-gaps` on W1 (PostgreSQL to PostgreSQL) against the full first
run, measured in the same run. Target: --only-gaps <= 0.3x the full first run.

Steps, each with a fresh SQLite state store: (1) the full first run, `upsert` into an empty
`events_fixed` in its own database `bench_w1_gaps` (5,000,000 rows, 365 partitions); (2) break
the target as bench/diff.py does (one row changed in each of 3 days, 1 day deleted, 5 extra rows
in another day); (3) `run --only-gaps`: one fingerprint query per side, 360 partitions skipped,
5 written; (4) break again, `run --only-diff` (bisection, only the differing slices written);
(5) break again, a full re-run of every partition (the other baseline: what a repair without
--only-gaps costs). Checks the skip counts from the JSON summaries.

Usage: bench/only_gaps.py [--binary PATH] [--no-build] [--rows N] [--base URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only
`bench_w1_gaps`; reuses (or creates) the W1 source database of bench/pg_suite.py.
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
from diff import CHANGED_DAYS, EXTRA_DAY, EXTRA_ROWS, MISSING_DAY  # noqa: E402
from pg_suite import QUERY, YEAR_END, YEAR_START, Pg  # noqa: E402

GAPS_DB = "bench_w1_gaps"
TARGET_RATIO = 0.3


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def day_range(day):
    return f"ts >= '{day}T00:00:00Z' AND ts < '{day}T00:00:00Z'::timestamptz + interval '1 day'"


def break_target(pg):
    """The breaks of bench/diff.py, repeatable: the same 3 keys changed, the same day deleted,
    the same extra rows (kept by an upsert run, so inserted once)."""
    for day in CHANGED_DAYS:
        key = pg.value(GAPS_DB, f"SELECT min(id) FROM events_fixed WHERE {day_range(day)}")
        pg.run(GAPS_DB, f"UPDATE events_fixed SET amount_cents = amount_cents + 1 WHERE id = {key}")
    pg.run(GAPS_DB, f"DELETE FROM events_fixed WHERE {day_range(MISSING_DAY)}")
    values = ", ".join(
        f"({100_000_000 + i}, '{EXTRA_DAY}T12:00:00Z', 1, 100, 'extra')" for i in range(EXTRA_ROWS)
    )
    pg.run(GAPS_DB, f"INSERT INTO events_fixed VALUES {values} ON CONFLICT DO NOTHING; "
                    "VACUUM ANALYZE events_fixed")


def spec_text(pg, src):
    return f'''name = "bench_only_gaps"
reason = "bench/only_gaps.py"

[source]
url = "{pg.url(src)}"
query = "{QUERY}"
time_column = "ts"

[target]
url = "{pg.url(GAPS_DB)}"
table = "events_fixed"
key = ["id"]
undo = false  # as measured before undo became the default (bench/undo.py measures it)

[scope]
start = "{YEAR_START}"
end = "{YEAR_END}"
partition = "1d"

[limits]
concurrency = 4
batch_rows = 5000
'''


def run(binary, spec, work, name, *flags):
    state = Path(work) / f"{name}.db"
    t0 = time.perf_counter()
    out = subprocess.run(
        [binary, "--json", "--state", f"sqlite://{state}", "run", spec, *flags],
        capture_output=True,
        text=True,
        cwd=work,
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"backfill run {' '.join(flags)} failed:\n{out.stderr}")
    summary = json.loads(out.stdout)
    log(f"  {name}: {took:.2f} s, {summary['partitions']}")
    return took, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--base", default=pg_suite.DEFAULT_URL)
    args = ap.parse_args()
    benchlock.hold("bench/only_gaps.py")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], check=True, cwd=BENCH.parent)
    pg = Pg(args.base)
    load_before = os.getloadavg()
    src = pg_suite.ensure_source(pg, args.rows)
    pg.drop(GAPS_DB)
    pg.create(GAPS_DB)
    pg.run(
        GAPS_DB,
        "CREATE TABLE events_fixed (id bigint PRIMARY KEY, ts timestamptz, user_id int, "
        "amount_cents bigint, note text); CREATE INDEX events_fixed_ts ON events_fixed (ts)",
    )
    problems = []
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "backfill"
        binary.write_bytes(Path(args.binary).read_bytes())
        binary.chmod(0o755)
        spec = str(Path(work) / "spec.toml")
        Path(spec).write_text(spec_text(pg, src))
        full, _ = run(str(binary), spec, work, "full_first_run")
        pg.run(GAPS_DB, "VACUUM ANALYZE events_fixed")
        break_target(pg)
        gaps, s = run(str(binary), spec, work, "only_gaps", "--only-gaps")
        if s["partitions"]["skipped"] != 360:
            problems.append(f"--only-gaps skipped {s['partitions']['skipped']} (expected 360)")
        break_target(pg)
        only_diff, s = run(str(binary), spec, work, "only_diff", "--only-diff")
        if s["partitions"]["skipped"] != 360:
            problems.append(f"--only-diff skipped {s['partitions']['skipped']} (expected 360)")
        diff_rows = s["rows"]["read"]
        break_target(pg)
        rerun, _ = run(str(binary), spec, work, "full_rerun")
    load_after = os.getloadavg()
    pg.drop(GAPS_DB)
    ratio = gaps / full
    print(f"rows: {args.rows:,}; partitions: 365; differing: 5 (3 drifted, 1 missing, 1 extra)")
    print(f"full first run (upsert into an empty target): {full:.2f} s")
    print(f"run --only-gaps (360 skipped, 5 written): {gaps:.2f} s; ratio {ratio:.3f}x "
          f"(target <= {TARGET_RATIO}x: {'pass' if ratio <= TARGET_RATIO else 'MISS'})")
    print(f"run --only-diff (360 skipped, differing slices written, {diff_rows:,} rows read): "
          f"{only_diff:.2f} s; ratio {only_diff / full:.3f}x")
    print(f"full re-run of the broken target (every partition): {rerun:.2f} s; "
          f"--only-gaps / re-run {gaps / rerun:.3f}x")
    print(f"checks: {'ok' if not problems else '; '.join(problems)}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

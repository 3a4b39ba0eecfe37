#!/usr/bin/env python3
"""Issue 11: the undo log's cost on PostgreSQL to PostgreSQL, W1-style, in one run.

A source `src` of N rows over 30 days (id, ts, user_id, amount_cents, note) and a target
`dst` holding the same rows but 10% changed and 10% missing. Times, interleaved `--reps`
times, each from the same broken target (rebuilt from a template table between runs):
`backfill run` in upsert mode with `undo = false`, then with `undo = true`, then
`backfill rollback` of the undo run. Reports undo/no-undo (goal <= 1.25x), the undo rows and
the undo table's size, and rollback/run. `--mode replace` measures `replace` (window `ts`)
instead; reconciliation is off in both modes, so the ratio is the log's own cost.

Usage: bench/undo.py [--binary PATH] [--rows N] [--reps N] [--base URL] [--mode upsert|replace]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only the database
`bench_undo`.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlock  # noqa: E402

DB = "bench_undo"


def psql(base, db, sql):
    out = subprocess.run(
        ["psql", f"{base}/{db}", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def prepare(base, rows):
    psql(base, "postgres", f"DROP DATABASE IF EXISTS {DB}")
    psql(base, "postgres", f"CREATE DATABASE {DB}")
    cols = "(id bigint PRIMARY KEY, ts timestamptz NOT NULL, user_id bigint, amount_cents bigint, note text)"
    psql(base, DB, f"""
        CREATE TABLE src {cols};
        INSERT INTO src SELECT i, timestamptz '2025-01-01 00:00:00+00' + (i * interval '30 days') / {rows},
            i % 1000, i * 7, 'note ' || i FROM generate_series(1, {rows}) i;
        CREATE INDEX ON src (ts);
        CREATE TABLE tmpl {cols};
        INSERT INTO tmpl SELECT * FROM src WHERE id % 10 <> 1;
        UPDATE tmpl SET amount_cents = amount_cents + 1 WHERE id % 10 = 2;
        ANALYZE;""")


def reset(base):
    psql(base, DB, """DROP TABLE IF EXISTS dst; DROP TABLE IF EXISTS dst__bf_undo;
        CREATE TABLE dst (LIKE tmpl INCLUDING ALL); INSERT INTO dst SELECT * FROM tmpl;
        CREATE INDEX ON dst (ts); ANALYZE dst;""")


def spec(base, undo, mode):
    url = f"{base}/{DB}"
    replace = 'mode = "replace"\nwindow_column = "ts"\n' if mode == "replace" else ""
    validate = "[validate]\nafter_partition = false\nat_end = false\n" if mode == "replace" else ""
    return f"""name = "bench_undo_{undo}"
reason = "bench"
[source]
url = "{url}"
query = "SELECT id, ts, user_id, amount_cents, note FROM src WHERE ts >= :start AND ts < :end"
[target]
url = "{url}"
table = "dst"
key = ["id"]
undo = {str(undo).lower()}
{replace}[scope]
start = "2025-01-01T00:00:00Z"
end = "2025-02-01T00:00:00Z"
partition = "1d"
[limits]
concurrency = 2
batch_rows = 5000
{validate}"""


def timed(cmd, cwd):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return took, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--base", default="postgres://postgres@127.0.0.1:5432")
    ap.add_argument("--mode", choices=["upsert", "replace"], default="upsert")
    args = ap.parse_args()
    benchlock.hold("bench/undo.py")
    prepare(args.base, args.rows)
    plain, undo, back, sizes = [], [], [], []
    for rep in range(args.reps):
        for with_undo in (False, True):
            reset(args.base)
            with tempfile.TemporaryDirectory() as d:
                Path(d, "spec.toml").write_text(spec(args.base, with_undo, args.mode))
                state = f"sqlite://{d}/state.db"
                took, out = timed([args.binary, "--state", state, "run", "spec.toml", "--json"], d)
                (undo if with_undo else plain).append(took)
                if with_undo:
                    run_id = json.loads(out)["run_id"]
                    rows = psql(args.base, DB, "SELECT count(*) FROM dst__bf_undo")
                    size = psql(args.base, DB, "SELECT pg_total_relation_size('dst__bf_undo')")
                    sizes.append((int(rows), int(size)))
                    t, _ = timed([args.binary, "--state", state, "rollback", run_id, "--json"], d)
                    back.append(t)
                    same = psql(args.base, DB, "SELECT count(*) FROM (SELECT * FROM dst EXCEPT SELECT * FROM tmpl) x")
                    if same != "0":
                        sys.exit(f"rollback left {same} rows different from the template")
        print(f"rep {rep + 1}: no undo {plain[-1]:.2f}s, undo {undo[-1]:.2f}s, rollback {back[-1]:.2f}s",
              file=sys.stderr)
    best = lambda xs: min(xs)  # noqa: E731
    report = {
        "mode": args.mode,
        "rows": args.rows,
        "changed": args.rows // 10,
        "new": args.rows // 10,
        "run_no_undo_s": best(plain),
        "run_undo_s": best(undo),
        "undo_ratio": best(undo) / best(plain),
        "goal_ratio": 1.25,
        "undo_rows": sizes[-1][0],
        "undo_bytes": sizes[-1][1],
        "rollback_s": best(back),
        "rollback_vs_run": best(back) / best(undo),
    }
    print(json.dumps(report, indent=2))
    psql(args.base, "postgres", f"DROP DATABASE IF EXISTS {DB}")


if __name__ == "__main__":
    main()

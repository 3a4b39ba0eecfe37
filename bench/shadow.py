#!/usr/bin/env python3
"""Issue 11: shadow write + promote against an in-place `replace` of the same scope, on W1
(PostgreSQL to PostgreSQL), measured in the same run; and the promote's lock time.

The live target is a correct copy of W1's transform (`events_fixed`, 5,000,000 rows with its
primary key and an index on `ts`, in its own database `bench_w1_shadow`). Each repetition
times, on a fresh state store:
- `replace`: `backfill run` rewriting `--days` days in place;
- `shadow+seed`: `backfill run` with `mode = "shadow"`, `seed_outside_scope = true` (the
  promoted table equals what `replace` leaves), then `backfill promote` — the same end state;
- `shadow`: the same without seeding (the promoted table would hold the scope only; timed
  run only, not promoted), to show what the seed copy costs.
After a promote the old table is dropped (`backfill cleanup`) so the next repetition starts
from the same table size. Goal: the promote's lock < 100 ms.

Usage: bench/shadow.py [--binary PATH] [--no-build] [--days N] [--reps N] [--base URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only
`bench_w1_shadow`; reuses (or creates) the W1 source database of bench/pg_suite.py.
"""

import argparse
import datetime as dt
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
from pg_suite import QUERY, Pg, pipe  # noqa: E402

DB = "bench_w1_shadow"
ROWS = 5_000_000
SCOPE_START = "2025-03-01"
LOCK_GOAL_MS = 100.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(pg):
    src = pg_suite.ensure_source(pg, ROWS)
    log(f"  creating {DB}: the transformed copy of W1 with its indexes")
    pg.drop(DB)
    pg.create(DB)
    pg.run(
        DB,
        "CREATE TABLE events_fixed (id bigint PRIMARY KEY, ts timestamptz NOT NULL, "
        "user_id int, amount_cents bigint, note text)",
    )
    pipe(
        pg,
        src,
        "COPY (SELECT id, ts, user_id, round(amount * 100)::bigint, lower(note) FROM events) "
        "TO STDOUT",
        DB,
        "COPY events_fixed FROM STDIN",
    )
    pg.run(DB, "CREATE INDEX events_fixed_ts ON events_fixed (ts); VACUUM ANALYZE events_fixed")
    return src


def spec_text(pg, src, days, mode):
    start = dt.date.fromisoformat(SCOPE_START)
    stop = start + dt.timedelta(days=days)
    target = {
        "replace": 'mode = "replace"\nwindow_column = "ts"\nundo = false',
        "shadow+seed": 'mode = "shadow"\nseed_outside_scope = true',
        "shadow": 'mode = "shadow"',
    }[mode]
    return f'''name = "bench_shadow_{mode.replace("+", "_")}"
reason = "bench/shadow.py"

[source]
url = "{pg.url(src)}"
query = "{QUERY}"
time_column = "ts"

[target]
url = "{pg.url(DB)}"
table = "events_fixed"
key = ["id"]
{target}

[scope]
start = "{start}T00:00:00Z"
end = "{stop}T00:00:00Z"
partition = "1d"

[limits]
concurrency = 2
'''


def backfill(binary, work, *args):
    t0 = time.perf_counter()
    out = subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "BACKFILL_STATE": f"sqlite://{work}/state.db"},
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"backfill {' '.join(args)} failed:\n{out.stderr}")
    return took, out.stdout


def last_run(binary, work):
    _, out = backfill(binary, work, "runs", "--json", "--limit", "1")
    return json.loads(out)[0]["run_id"]


def one_rep(pg, src, binary, work, days):
    times = {}
    for mode in ("replace", "shadow+seed", "shadow"):
        spec = Path(work) / f"{mode}.toml"
        spec.write_text(spec_text(pg, src, days, mode))
        took, _ = backfill(binary, work, "run", str(spec), "--new")
        times[mode] = took
        if mode == "shadow+seed":
            run = last_run(binary, work)
            took, out = backfill(binary, work, "promote", run, "--json")
            promoted = json.loads(out)
            times["promote"] = took
            times["lock_ms"] = promoted["lock_ms"]
            backfill(binary, work, "cleanup", run)
        if mode == "shadow":
            backfill(binary, work, "cleanup", last_run(binary, work))
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--base", default=pg_suite.DEFAULT_URL)
    ap.add_argument("--keep-db", action="store_true", help=f"keep {DB} afterwards")
    args = ap.parse_args()
    benchlock.hold("bench/shadow.py")
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "-p", "backfill-cli"], check=True, cwd=BENCH.parent
        )
    pg = Pg(args.base)
    load_before = os.getloadavg()
    src = prepare(pg)
    scope_rows = int(
        pg.value(
            DB,
            f"SELECT count(*) FROM events_fixed WHERE ts >= '{SCOPE_START}T00:00:00Z' "
            f"AND ts < '{SCOPE_START}T00:00:00Z'::timestamptz + interval '{args.days} days'",
        )
    )
    reps = []
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "backfill"
        binary.write_bytes(Path(args.binary).read_bytes())
        binary.chmod(0o755)
        for i in range(args.reps):
            log(f"  repetition {i + 1}/{args.reps}")
            reps.append(one_rep(pg, src, str(binary), work, args.days))
    total = int(pg.value(DB, "SELECT count(*) FROM events_fixed"))
    load_after = os.getloadavg()
    if not args.keep_db:
        pg.drop(DB)

    def best(key):
        return min(r[key] for r in reps)

    replace = best("replace")
    seeded = min(r["shadow+seed"] + r["promote"] for r in reps)
    lock = best("lock_ms")
    print(f"live table: {total:,} rows; scope: {args.days} days, {scope_rows:,} rows; "
          f"reps: {args.reps}")
    print(f"in-place replace (best): {replace:.2f} s")
    print(f"shadow write + seed + promote (best): {seeded:.2f} s "
          f"(run {best('shadow+seed'):.2f} s, promote command {best('promote'):.2f} s); "
          f"ratio to replace: {seeded / replace:.2f}x")
    print(f"shadow write without seed (best, run only): {best('shadow'):.2f} s; "
          f"ratio to replace: {best('shadow') / replace:.2f}x")
    locks = ", ".join(f"{r['lock_ms']:.1f}" for r in reps)
    print(f"promote lock (best): {lock:.1f} ms; all: {locks} "
          f"(goal < {LOCK_GOAL_MS:.0f} ms: {'met' if lock < LOCK_GOAL_MS else 'MISSED'})")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Issue 11: `replace` with `partition_exchange = true` against the same `replace` in place, on
W1 (PostgreSQL to PostgreSQL) loaded into a declared-partitioned target, in the same run.

The target is a correct copy of W1's transform (`events_fixed`, 5,000,000 rows) range-
partitioned by `ts` into 365 daily partitions, with the primary key (id, ts) and an index on
`ts`, in its own database `bench_w1_exchange`. Each repetition rewrites `--days` days (one
partition per window), in place and then by exchange (the order alternates between
repetitions), each on a fresh state store; both leave the same rows. Reported: best times and
their ratio, and the dead tuples each left behind in the scope's partitions (what a later
VACUUM must clean).

Usage: bench/exchange.py [--binary PATH] [--no-build] [--days N] [--reps N] [--base URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only
`bench_w1_exchange`; reuses (or creates) the W1 source database of bench/pg_suite.py.
"""

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlock  # noqa: E402
import pg_suite  # noqa: E402
from pg_suite import QUERY, Pg, pipe  # noqa: E402
from shadow import backfill  # noqa: E402

DB = "bench_w1_exchange"
ROWS = 5_000_000
YEAR = dt.date(2025, 1, 1)
SCOPE_START = dt.date(2025, 3, 1)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(pg):
    src = pg_suite.ensure_source(pg, ROWS)
    log(f"  creating {DB}: W1's transform, partitioned by day")
    pg.drop(DB)
    pg.create(DB)
    parts = []
    for i in range(365):
        day = YEAR + dt.timedelta(days=i)
        parts.append(
            f"CREATE TABLE events_fixed_{day:%Y%m%d} PARTITION OF events_fixed "
            f"FOR VALUES FROM ('{day}') TO ('{day + dt.timedelta(days=1)}')"
        )
    pg.run(
        DB,
        "SET TimeZone = 'UTC'; "
        "CREATE TABLE events_fixed (id bigint NOT NULL, ts timestamptz NOT NULL, user_id int, "
        "amount_cents bigint, note text, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts); "
        "CREATE INDEX events_fixed_ts ON events_fixed (ts); " + "; ".join(parts),
    )
    pipe(
        pg,
        src,
        "COPY (SELECT id, ts, user_id, round(amount * 100)::bigint, lower(note) FROM events) "
        "TO STDOUT",
        DB,
        "COPY events_fixed FROM STDIN",
    )
    pg.run(DB, "VACUUM ANALYZE events_fixed")
    return src


def spec_text(pg, src, days, exchange):
    stop = SCOPE_START + dt.timedelta(days=days)
    return f'''name = "bench_exchange_{"on" if exchange else "off"}"
reason = "bench/exchange.py"

[source]
url = "{pg.url(src)}"
query = "{QUERY}"
time_column = "ts"

[target]
url = "{pg.url(DB)}"
table = "events_fixed"
key = ["id", "ts"]
mode = "replace"
window_column = "ts"
partition_exchange = {"true" if exchange else "false"}
undo = false  # an exchange keeps none; the in-place replace measured without it too

[scope]
start = "{SCOPE_START}T00:00:00Z"
end = "{stop}T00:00:00Z"
partition = "1d"

[limits]
concurrency = 2
'''


def dead_tuples(pg, days):
    names = ", ".join(
        f"'events_fixed_{SCOPE_START + dt.timedelta(days=i):%Y%m%d}'" for i in range(days)
    )
    pg.run(DB, "SELECT pg_stat_force_next_flush()")
    return int(
        pg.value(
            DB,
            f"SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables "
            f"WHERE relname IN ({names})",
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--base", default=pg_suite.DEFAULT_URL)
    ap.add_argument("--keep-db", action="store_true", help=f"keep {DB} afterwards")
    args = ap.parse_args()
    benchlock.hold("bench/exchange.py")
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "-p", "backfill-cli"], check=True, cwd=BENCH.parent
        )
    pg = Pg(args.base)
    load_before = os.getloadavg()
    src = prepare(pg)
    times = {False: [], True: []}
    dead = {}
    with tempfile.TemporaryDirectory() as work:
        binary = Path(work) / "backfill"
        binary.write_bytes(Path(args.binary).read_bytes())
        binary.chmod(0o755)
        for i in range(args.reps):
            order = (False, True) if i % 2 == 0 else (True, False)
            for exchange in order:
                log(f"  repetition {i + 1}/{args.reps}: exchange {'on' if exchange else 'off'}")
                pg.run(DB, "VACUUM events_fixed")
                spec = Path(work) / f"exchange_{exchange}.toml"
                spec.write_text(spec_text(pg, src, args.days, exchange))
                took, _ = backfill(str(binary), work, "run", str(spec), "--new")
                times[exchange].append(took)
                dead[exchange] = dead_tuples(pg, args.days)
    total = int(pg.value(DB, "SELECT count(*) FROM events_fixed"))
    load_after = os.getloadavg()
    if not args.keep_db:
        pg.drop(DB)
    in_place, exchanged = min(times[False]), min(times[True])
    print(f"target: {total:,} rows in 365 daily partitions; scope: {args.days} days; "
          f"reps: {args.reps}")
    print(f"in-place replace (best): {in_place:.2f} s; all: "
          f"{', '.join(f'{t:.2f}' for t in times[False])}")
    print(f"partition exchange (best): {exchanged:.2f} s; all: "
          f"{', '.join(f'{t:.2f}' for t in times[True])}")
    print(f"ratio exchange / in place: {exchanged / in_place:.2f}x")
    print(f"dead tuples left in the scope's partitions: in place {dead[False]:,}, "
          f"exchange {dead[True]:,}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

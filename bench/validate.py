#!/usr/bin/env python3
"""Issue 11: the cost of reconciliation after writing (`[validate]`) on W1 (PostgreSQL to
PostgreSQL, 365 daily partitions, `replace` mode), measured in one run.

Times `backfill run` of the W1 copy with reconciliation on (the defaults: one fingerprint
query per side after each partition, one bucketed query per side at the end) against the
same spec with `[validate] after_partition = false, at_end = false` and with `at_end = false`
only (the end-of-run re-check's share), interleaved `--reps`
times, each on a fresh state store into the same target (`replace` rewrites every window).
Reports the best wall time of each and their ratio, and checks that the validated run
verified every partition.

Usage: bench/validate.py [--binary PATH] [--no-build] [--rows N] [--reps N] [--base URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only
`bench_w1_validate`; reuses (or creates) the W1 source database of bench/pg_suite.py.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import benchlock  # noqa: E402
import pg_suite  # noqa: E402
from pg_suite import TARGET_DDL, YEAR_END, YEAR_START, Engine, Pg  # noqa: E402

DB = "bench_w1_validate"
OFF = "\n[validate]\nafter_partition = false\nat_end = false\n"
# After each partition only: the end-of-run re-check's share of the cost.
PARTITION = "\n[validate]\nat_end = false\n"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(BENCH.parent / "target/release/backfill"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--base", default=pg_suite.DEFAULT_URL)
    args = ap.parse_args()
    benchlock.hold("bench/validate.py")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], check=True, cwd=BENCH.parent)
    pg = Pg(args.base)
    load_before = os.getloadavg()
    src = pg_suite.ensure_source(pg, args.rows)
    pg.drop(DB)
    pg.create(DB)
    pg.run(DB, TARGET_DDL + "; CREATE INDEX events_fixed_ts ON events_fixed (ts)")
    mode = 'table = "events_fixed"\nkey = ["id"]\nmode = "replace"\nwindow_column = "ts"'
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = Engine(Path(args.binary), work, pg)
        specs = {}
        for label, extra in (("on", ""), ("partition", PARTITION), ("off", OFF)):
            text = pg_suite.spec_text(
                f"bench_validate_{label}", pg.url(src), pg.url(DB), mode, YEAR_START, YEAR_END,
                "1d", args.concurrency, 5000,
            ) + extra
            specs[label] = pg_suite.write_spec(work, f"validate_{label}", text)
        engine.run(specs["off"])  # warm-up (caches, a full target), not counted
        times = {"on": [], "partition": [], "off": []}
        verified = None
        for rep in range(args.reps):
            labels = ("on", "partition", "off")
            for label in labels if rep % 2 == 0 else labels[::-1]:
                r = engine.run(specs[label], expect={"rows.read": args.rows})
                times[label].append(r.wall)
                log(f"  rep {rep + 1} validate {label}: {r.wall:.1f} s")
                if label == "on":
                    verified = r.summary["reconciliation"]
    load_after = os.getloadavg()
    pg.drop(DB)
    on, off, part = min(times["on"]), min(times["off"]), min(times["partition"])
    print(f"rows: {args.rows:,}; partitions: 365 (1d, replace, concurrency {args.concurrency})")
    print(f"validate on  (best of {args.reps}): {on:.1f} s  all: {', '.join(f'{t:.1f}' for t in times['on'])}")
    print(f"validate off (best of {args.reps}): {off:.1f} s  all: {', '.join(f'{t:.1f}' for t in times['off'])}")
    print(f"after_partition only (best of {args.reps}): {part:.1f} s  all: "
          f"{', '.join(f'{t:.1f}' for t in times['partition'])}")
    print(f"ratio on/off: {on / off:.2f}x; after_partition only/off: {part / off:.2f}x")
    print(f"reconciliation of the validated run: {verified}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f}; "
          f"after: {load_after[0]:.2f} {load_after[1]:.2f}")
    ok = verified and verified["verified"] == 365 and verified["mismatched"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

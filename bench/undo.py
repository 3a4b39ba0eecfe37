#!/usr/bin/env python3
"""Issue 11: the undo log's cost, PostgreSQL to PostgreSQL (W1-style) or SQLite to SQLite.

A source `src` of N rows over 30 days (id, ts, user_id, amount_cents, note) and a target
`dst` holding the same rows but 10% changed and 10% missing. Times, interleaved `--reps`
times, each from the same broken target (rebuilt from a template table between runs):
`backfill run` in upsert mode with `undo = false`, then with `undo = true`, then
`backfill rollback` of the undo run. Reports undo/no-undo (goal <= 1.25x), the undo rows and
the undo table's size, and rollback/run. `--mode replace` measures `replace` (window `ts`)
instead; reconciliation is off in both modes, so the ratio is the log's own cost.
`--system sqlite` does the same with two SQLite files (src.db, dst.db) in a temporary
directory: the rows move inside SQLite (the pushdown) with and without the log, whose
temporary triggers write it inside the same statements. `--system mysql` does it in the
MySQL/MariaDB database `bench_undo` at `--mysql` (source and target tables side by side).

Usage: bench/undo.py [--binary PATH] [--rows N] [--reps N] [--base URL] [--mode upsert|replace]
                     [--system postgres|sqlite|mysql] [--mysql URL]
Takes the machine's benchmark lock (bench/benchlock.py). Creates and drops only the database
`bench_undo` (PostgreSQL, MySQL).
"""

import argparse
import json
import shutil
import sqlite3
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


def sqlite_prepare(d, rows):
    """src.db with `rows` rows over 30 days (ts as RFC 3339 text) and tmpl.db: the same rows
    but 10% changed and 10% missing, both indexed on ts like the PostgreSQL tables."""
    cols = "(id INTEGER PRIMARY KEY, ts TEXT NOT NULL, user_id INTEGER, amount_cents INTEGER, note TEXT)"
    gen = (f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
           f"SELECT i, strftime('%Y-%m-%dT%H:%M:%SZ', 1735689600 + (i * 2592000) / {rows}, 'unixepoch'), "
           "i % 1000, i * 7, 'note ' || i FROM n TAIL")
    for name, tail in (("src", ""), ("tmpl", " WHERE i % 10 <> 1")):
        conn = sqlite3.connect(Path(d, f"{name}.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"CREATE TABLE {'src' if name == 'src' else 'dst'} {cols}")
        table = "src" if name == "src" else "dst"
        conn.execute(f"INSERT INTO {table} {gen.replace('TAIL', tail)}")
        if name == "tmpl":
            conn.execute("UPDATE dst SET amount_cents = amount_cents + 1 WHERE id % 10 = 2")
        conn.execute(f"CREATE INDEX {table}_ts ON {table} (ts)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()


def sqlite_reset(d):
    for suffix in ("", "-wal", "-shm"):
        Path(d, f"dst.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(Path(d, "tmpl.db"), Path(d, "dst.db"))


def sqlite_query(d, sql):
    conn = sqlite3.connect(Path(d, "dst.db"))
    conn.execute(f"ATTACH DATABASE '{Path(d, 'tmpl.db')}' AS tmpl")
    value = conn.execute(sql).fetchone()[0]
    conn.close()
    return value


def mysql(sql, db=DB):
    out = subprocess.run(
        ["mysql", "-h127.0.0.1", "-P3306", "-uroot", "-N", "-B", db, "-e", sql],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def mysql_prepare(rows):
    """`src` with `rows` rows over 30 days and `tmpl`: the same rows but 10% changed and 10%
    missing, both indexed on ts like the PostgreSQL tables."""
    mysql(f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}", db="test")
    cols = "(id BIGINT PRIMARY KEY, ts DATETIME(6) NOT NULL, user_id BIGINT, amount_cents BIGINT, note TEXT, KEY (ts))"
    mysql(f"""CREATE TABLE src {cols};
        INSERT INTO src SELECT seq, TIMESTAMP '2025-01-01 00:00:00' + INTERVAL (seq * 2592000 DIV {rows}) SECOND,
            seq % 1000, seq * 7, CONCAT('note ', seq) FROM seq_1_to_{rows};
        CREATE TABLE tmpl {cols};
        INSERT INTO tmpl SELECT * FROM src WHERE id % 10 <> 1;
        UPDATE tmpl SET amount_cents = amount_cents + 1 WHERE id % 10 = 2;
        ANALYZE TABLE src, tmpl;""")


def mysql_reset():
    mysql("""DROP TABLE IF EXISTS dst; DROP TABLE IF EXISTS dst__bf_undo;
        CREATE TABLE dst LIKE tmpl; INSERT INTO dst SELECT * FROM tmpl; ANALYZE TABLE dst;""")


def spec(base, undo, mode, system="postgres"):
    replace = 'mode = "replace"\nwindow_column = "ts"\n' if mode == "replace" else ""
    validate = "[validate]\nafter_partition = false\nat_end = false\n" if mode == "replace" else ""
    if system == "sqlite":
        source_url, target_url = "sqlite://src.db", "sqlite://dst.db"
        formats = ('time_format = "rfc3339"\ntime_column = "ts"\n', 'time_format = "rfc3339"\n')
        validate = "[validate]\nafter_partition = false\nat_end = false\n"
    elif system == "mysql":
        source_url = target_url = f"{base}/{DB}"
        formats = ('time_column = "ts"\n', "")
        validate = "[validate]\nafter_partition = false\nat_end = false\n"
    else:
        source_url = target_url = f"{base}/{DB}"
        formats = ("", "")
    return f"""name = "bench_undo_{undo}"
reason = "bench"
[source]
url = "{source_url}"
query = "SELECT id, ts, user_id, amount_cents, note FROM src WHERE ts >= :start AND ts < :end"
{formats[0]}[target]
url = "{target_url}"
{formats[1]}table = "dst"
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
    ap.add_argument("--system", choices=["postgres", "sqlite", "mysql"], default="postgres")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306")
    args = ap.parse_args()
    benchlock.hold("bench/undo.py")
    if args.system == "sqlite":
        return sqlite_main(args)
    if args.system == "mysql":
        return mysql_main(args)
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
    report = summary(args, plain, undo, back, sizes)
    print(json.dumps(report, indent=2))
    psql(args.base, "postgres", f"DROP DATABASE IF EXISTS {DB}")


def summary(args, plain, undo, back, sizes):
    best = lambda xs: min(xs)  # noqa: E731
    return {
        "system": args.system,
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


def sqlite_main(args):
    """The same measurement SQLite to SQLite; the state store is a third file."""
    plain, undo, back, sizes = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        sqlite_prepare(d, args.rows)
        for rep in range(args.reps):
            for with_undo in (False, True):
                sqlite_reset(d)
                Path(d, "spec.toml").write_text(spec(args.base, with_undo, args.mode, "sqlite"))
                shutil.rmtree(Path(d, "state"), ignore_errors=True)
                state = f"sqlite://{d}/state/state.db"
                took, out = timed([args.binary, "--state", state, "run", "spec.toml", "--json"], d)
                (undo if with_undo else plain).append(took)
                if not json.loads(out).get("rows", {}).get("read"):
                    sys.exit(f"the run read no rows: {out}")
                if with_undo:
                    run_id = json.loads(out)["run_id"]
                    rows = sqlite_query(d, "SELECT count(*) FROM dst__bf_undo")
                    pages = sqlite_query(d, "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size")
                    sizes.append((int(rows), int(pages)))
                    t, _ = timed([args.binary, "--state", state, "rollback", run_id, "--json"], d)
                    back.append(t)
                    diff = sqlite_query(
                        d,
                        "SELECT (SELECT count(*) FROM (SELECT * FROM main.dst EXCEPT SELECT * FROM tmpl.dst))"
                        " + (SELECT count(*) FROM (SELECT * FROM tmpl.dst EXCEPT SELECT * FROM main.dst))")
                    if diff != 0:
                        sys.exit(f"rollback left {diff} rows different from the template")
            print(f"rep {rep + 1}: no undo {plain[-1]:.2f}s, undo {undo[-1]:.2f}s, rollback {back[-1]:.2f}s",
                  file=sys.stderr)
    report = summary(args, plain, undo, back, sizes)
    # SQLite: the whole target file's size after the run (the undo table has no size of its own).
    report["target_file_bytes"] = report.pop("undo_bytes")
    print(json.dumps(report, indent=2))


def mysql_main(args):
    """The same measurement MySQL to MySQL (both tables in `bench_undo`)."""
    mysql_prepare(args.rows)
    plain, undo, back, sizes = [], [], [], []
    for rep in range(args.reps):
        for with_undo in (False, True):
            mysql_reset()
            with tempfile.TemporaryDirectory() as d:
                Path(d, "spec.toml").write_text(spec(args.mysql, with_undo, args.mode, "mysql"))
                state = f"sqlite://{d}/state.db"
                took, out = timed([args.binary, "--state", state, "run", "spec.toml", "--json"], d)
                (undo if with_undo else plain).append(took)
                if with_undo:
                    run_id = json.loads(out)["run_id"]
                    rows = mysql("ANALYZE TABLE dst__bf_undo; SELECT count(*) FROM dst__bf_undo").split()[-1]
                    size = mysql("SELECT data_length + index_length FROM information_schema.tables "
                                 f"WHERE table_schema = '{DB}' AND table_name = 'dst__bf_undo'")
                    sizes.append((int(rows), int(size)))
                    t, _ = timed([args.binary, "--state", state, "rollback", run_id, "--json"], d)
                    back.append(t)
                    same = mysql("SELECT (SELECT count(*) FROM (SELECT * FROM dst EXCEPT SELECT * FROM tmpl) x)"
                                 " + (SELECT count(*) FROM (SELECT * FROM tmpl EXCEPT SELECT * FROM dst) y)")
                    if same != "0":
                        sys.exit(f"rollback left {same} rows different from the template")
        print(f"rep {rep + 1}: no undo {plain[-1]:.2f}s, undo {undo[-1]:.2f}s, rollback {back[-1]:.2f}s",
              file=sys.stderr)
    print(json.dumps(summary(args, plain, undo, back, sizes), indent=2))
    mysql(f"DROP DATABASE IF EXISTS {DB}", db="test")


if __name__ == "__main__":
    main()

"""The PostgreSQL suite of `bench/run` (issue 4): workload W1 (rows over the 365 days of 2025,
one partition a day) in `sql`, `replace` and `upsert` modes, the re-run, W2 (2,000 empty
hourly partitions with the PostgreSQL state store) and the engine's peak memory at two sizes.
Each engine measurement is interleaved with its baseline, measured in the same run with
`psql`. See bench/README.md, "PostgreSQL suite".

Everything goes through the `psql` client (no Python driver needed). The benchmark creates and
drops only its own databases (`bench_w1`, `bench_w1_target` and, for other sizes,
`bench_w1_r<ROWS>` / `bench_w1_r<ROWS>_target`).
"""

import datetime as dt
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
W1_SQL = BENCH / "w1.sql"

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432"
YEAR_START = "2025-01-01T00:00:00Z"
YEAR_END = "2026-01-01T00:00:00Z"
W2_START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)  # after every W1 row: all empty
STATE_SCHEMA = "bf_bench_state"

TARGET_SQL_RATIO = 1.03  # W1-sql: engine time ÷ whole-year statement time, at most (issue 10)
TARGET_REPLACE_RATIO = 0.8  # W1-replace: engine rows/s ÷ COPY pipe rows/s, at least
TARGET_REPLACE_IX_RATIO = 0.9  # the same with the index on the window column (issue 10)
TARGET_UPSERT_RATIO = 1.1  # W1-upsert: engine time ÷ single statement time, at most (issue 10)
TARGET_RERUN_RATIO = 1.1  # W1-rerun: re-run time ÷ first run time, at most
TARGET_OVERHEAD_MS = 2.0  # W2: net overhead per partition, at most
TARGET_RSS_MIB = 32  # peak RSS, below (issue 10)
TARGET_RSS_GROWTH = 1.10  # peak RSS at 4× the rows ÷ at W1 rows, at most

COLUMNS = "id, ts, user_id, amount_cents, note"
# The day-by-day transform, as the engine's source query (`:start`/`:end` bound per window).
QUERY = (
    "SELECT id, ts, user_id, round(amount * 100)::bigint AS amount_cents, lower(note) AS note "
    "FROM events WHERE ts >= :start AND ts < :end"
)
# The transform as one upsert statement over `pred`, in the form the engine's sink writes
# (crates/backfill-connectors/src/postgres/sql.rs, `upsert`): update only rows that differ.
def upsert_statement(pred):
    return (
        f"INSERT INTO events_fixed AS t ({COLUMNS}) "
        "SELECT id, ts, user_id, round(amount * 100)::bigint, lower(note) FROM events "
        f"WHERE {pred} "
        "ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts, user_id = EXCLUDED.user_id, "
        "amount_cents = EXCLUDED.amount_cents, note = EXCLUDED.note "
        "WHERE ROW(t.ts, t.user_id, t.amount_cents, t.note) IS DISTINCT FROM "
        "ROW(EXCLUDED.ts, EXCLUDED.user_id, EXCLUDED.amount_cents, EXCLUDED.note)"
    )


# `sql` mode's per-partition statement, and the whole-year baseline: the same text, one window.
SQL_MODE_STATEMENT = upsert_statement("ts >= :start AND ts < :end")
WHOLE_YEAR = upsert_statement(
    "ts >= timestamptz '2025-01-01 00:00:00+00' AND ts < timestamptz '2026-01-01 00:00:00+00'"
)
PIPE_OUT = (
    "COPY (SELECT id, ts, user_id, round(amount * 100)::bigint, lower(note) FROM events) TO STDOUT"
)
PIPE_IN = f"COPY events_fixed ({COLUMNS}) FROM STDIN"
TARGET_DDL = (
    "DROP TABLE IF EXISTS events_fixed; "
    "CREATE TABLE events_fixed (id bigint PRIMARY KEY, ts timestamptz, user_id int, "
    "amount_cents bigint, note text); "
    # No autovacuum on the written table: a vacuum started by one repetition's writes would
    # otherwise run during the next measurement, engine or baseline alike.
    "ALTER TABLE events_fixed SET (autovacuum_enabled = off)"
)
# Order-independent fingerprint of a table's rows: count and a sum of 64-bit row hashes.
ROW_HASH = (
    "hashtextextended(concat_ws('|', id, extract(epoch FROM ts), coalesce(user_id::text, '~'), "
    "coalesce({cents}::text, '~'), coalesce({note}, '~')), 0)"
)
CHECKSUM_SOURCE = "SELECT count(*), coalesce(sum({}), 0) FROM events".format(
    ROW_HASH.format(cents="round(amount * 100)::bigint", note="lower(note)")
)
CHECKSUM_TARGET = "SELECT count(*), coalesce(sum({}), 0) FROM events_fixed".format(
    ROW_HASH.format(cents="amount_cents", note="note")
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def stats(values):
    return {"best": min(values), "median": statistics.median(values), "all": list(values)}


# ---------------------------------------------------------------------------------------------
# psql


class Pg:
    """The server, reached with `psql` at `base` (a URL without database)."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def url(self, db):
        return f"{self.base}/{db}"

    def cmd(self, db, *extra):
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(db), *extra]

    def rows(self, db, sql):
        out = subprocess.run(
            self.cmd(db, "-A", "-t", "-F", "\t", "-c", sql), capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"psql failed on {db}: {sql}\n{out.stderr}")
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    def value(self, db, sql):
        rows = self.rows(db, sql)
        return rows[0][0] if rows else None

    def run(self, db, sql):
        """Runs `sql` (one or more statements, each in its own transaction) from a file."""
        out = subprocess.run(self.cmd(db, "-f", "-"), input=sql, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"psql failed on {db}:\n{sql[:2000]}\n{out.stderr}")

    def timed(self, db, sql):
        """Wall time of one `psql` process running `sql` from a file, start to exit."""
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(sql)
            path = f.name
        try:
            t0 = time.perf_counter()
            out = subprocess.run(self.cmd(db, "-f", path), capture_output=True, text=True)
            took = time.perf_counter() - t0
        finally:
            os.unlink(path)
        if out.returncode != 0:
            raise SystemExit(f"psql failed on {db}:\n{sql[:2000]}\n{out.stderr}")
        return took

    def exists(self, db):
        return self.value("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{db}'") == "1"

    def create(self, db):
        if not self.exists(db):
            self.run("postgres", f'CREATE DATABASE "{db}"')

    def drop(self, db):
        if db in ("postgres", "test", "template0", "template1"):
            raise SystemExit(f"refusing to drop {db}")
        self.run("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def size(self, db):
        return int(self.value("postgres", f"SELECT pg_database_size('{db}')") or 0)


def pipe(pg, src_db, out_sql, dst_db, in_sql):
    """`psql SRC -c OUT | psql DST -c IN`; wall time of the pipe, start to both exits."""
    t0 = time.perf_counter()
    p1 = subprocess.Popen(pg.cmd(src_db, "-c", out_sql), stdout=subprocess.PIPE)
    p2 = subprocess.Popen(pg.cmd(dst_db, "-c", in_sql), stdin=p1.stdout, stdout=subprocess.DEVNULL)
    p1.stdout.close()
    r2 = p2.wait()
    r1 = p1.wait()
    took = time.perf_counter() - t0
    if r1 or r2:
        raise SystemExit(f"pipe failed ({r1}, {r2}): {src_db} {out_sql!r} | {dst_db} {in_sql!r}")
    return took


# ---------------------------------------------------------------------------------------------
# Databases


def w1_text(rows):
    """bench/w1.sql for `rows` rows: same shape, same year."""
    text = W1_SQL.read_text()
    if text.count("5000000") != 2:
        raise SystemExit(f"{W1_SQL}: expected the row count 5000000 twice")
    return text.replace("5000000", str(rows))


def db_names(rows):
    if rows == 5_000_000:
        return "bench_w1", "bench_w1_target"
    return f"bench_w1_r{rows}", f"bench_w1_r{rows}_target"


def marker(rows):
    return hashlib.sha256(w1_text(rows).encode()).hexdigest()[:16]


def has_marker(pg, db, rows):
    if not pg.exists(db):
        return False
    got = pg.rows(db, "SELECT to_regclass('bench_meta') IS NOT NULL")
    if not got or got[0][0] != "t":
        return False
    return pg.value(db, "SELECT w1 FROM bench_meta") == marker(rows)


def ensure_source(pg, rows):
    """The W1 source database for `rows` rows, created by bench/w1.sql unless a database of
    the same script and size is already there (its `bench_meta` table says so)."""
    src, _ = db_names(rows)
    if has_marker(pg, src, rows):
        log(f"  reusing database {src} ({rows:,} rows)")
    else:
        log(f"  creating database {src}: bench/w1.sql with {rows:,} rows (takes a while)")
        t0 = time.perf_counter()
        pg.drop(src)
        pg.create(src)
        pg.run(src, w1_text(rows))
        pg.run(src, f"CREATE TABLE bench_meta (w1 text); INSERT INTO bench_meta VALUES ('{marker(rows)}')")
        log(f"  loaded in {time.perf_counter() - t0:.0f} s")
    pg.run(src, TARGET_DDL)
    return src


def ensure_target(pg, rows, with_events):
    """The second database: an empty `events_fixed`; with `with_events`, also a copy of the
    source's `events` (the upsert baseline's source, inside the target database)."""
    src, tgt = db_names(rows)
    if with_events and not has_marker(pg, tgt, rows):
        log(f"  creating database {tgt} with a copy of {src}.events")
        pg.drop(tgt)
        pg.create(tgt)
        pg.run(
            tgt,
            "SET timezone = 'UTC'; CREATE TABLE events (id bigserial PRIMARY KEY, ts timestamptz "
            "NOT NULL, user_id int, amount numeric(12,2), note text)",
        )
        pipe(pg, src, "COPY events TO STDOUT", tgt, "COPY events FROM STDIN")
        pg.run(
            tgt,
            "CREATE INDEX events_ts_idx ON events (ts); VACUUM ANALYZE events; "
            f"CREATE TABLE bench_meta (w1 text); INSERT INTO bench_meta VALUES ('{marker(rows)}')",
        )
    else:
        pg.create(tgt)
    pg.run(tgt, TARGET_DDL)
    return tgt


def reset_target(pg, db):
    """Empties the target and checkpoints, so each measurement starts from the same state
    (not timed)."""
    pg.run(db, "TRUNCATE events_fixed; CHECKPOINT")


def checksum(pg, db, sql):
    n, s = pg.rows(db, sql)[0]
    return int(n), s


def verify(pg, db, expected, what):
    got = checksum(pg, db, CHECKSUM_TARGET)
    if got != expected:
        raise SystemExit(
            f"{what} left a wrong target in {db}: (rows, checksum) = {got}, expected {expected} "
            "from the source's transform"
        )


# ---------------------------------------------------------------------------------------------
# The engine


class EngineRun:
    def __init__(self, wall, maxrss_kb, summary, cmd):
        self.wall = wall
        self.maxrss_kb = maxrss_kb
        self.summary = summary
        self.cmd = cmd


def run_engine(binary, spec, state, logdir):
    """`backfill --json --state STATE run SPEC`, timed from process start to exit; peak RSS
    from wait4's rusage (the kernel's "Maximum resident set size")."""
    cmd = [str(binary), "--json", "--state", state, "run", str(spec)]
    out_path, err_path = logdir / "engine.out", logdir / "engine.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text()
    shown = " ".join(shlex.quote(c) for c in cmd)
    if code != 0:
        raise SystemExit(f"engine run failed ({code}): {shown}\n{stdout}\n{err_path.read_text()}")
    try:
        summary = json.loads(stdout)
    except ValueError:
        raise SystemExit(f"engine run printed no JSON summary: {shown}\n{stdout}\n{err_path.read_text()}")
    if summary.get("state") != "succeeded":
        raise SystemExit(f"engine run did not succeed: {shown}\n{stdout}\n{err_path.read_text()}")
    return EngineRun(wall, rusage.ru_maxrss, summary, shown)


class Engine:
    """The binary and a fresh state store for every run: a new SQLite file by default, or a
    freshly dropped PostgreSQL schema."""

    def __init__(self, binary, work, pg):
        self.binary = binary
        self.work = work
        self.pg = pg
        self.n = 0

    def sqlite_state(self):
        self.n += 1
        path = self.work / "state" / f"state-{self.n}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite://{path}"

    def pg_state(self, db):
        self.pg.run(db, f"DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE")
        return f"{self.pg.url(db)}?schema={STATE_SCHEMA}"

    def run(self, spec, state=None, expect=None):
        r = run_engine(self.binary, spec, state or self.sqlite_state(), self.work)
        for key, value in (expect or {}).items():
            section, field = key.split(".")
            if r.summary[section][field] != value:
                raise SystemExit(
                    f"engine run: expected {key} = {value:,}, got {r.summary[section]}\n{r.cmd}"
                )
        return r


# The benchmarks time the write path against statements that keep no undo log; the log is
# on by default for PostgreSQL targets since issue 11, and bench/undo.py measures its cost.
NO_UNDO = "undo = false  # the baseline keeps no undo log either (bench/undo.py measures it)"
# Likewise reconciliation after each partition (on by default since issue 11): the baselines
# check nothing; bench/validate.py measures what it costs.
UNCHECKED = "[validate]\nafter_partition = false  # the baseline checks nothing (bench/validate.py)\nat_end          = false"


def spec_text(name, src_url, tgt_url, mode_lines, start, end, partition, concurrency, batch_rows):
    return f"""name   = "{name}"
reason = "bench/run --suite pg"

[source]
url         = "{src_url}"
query       = '''{QUERY}'''
time_column = "ts"

[target]
url   = "{tgt_url}"
{mode_lines}
{NO_UNDO if "undo" not in mode_lines else ""}

{UNCHECKED}

[scope]
start     = "{start}"
end       = "{end}"
partition = "{partition}"

[limits]
concurrency = {concurrency}
batch_rows  = {batch_rows}
"""


def write_spec(d, name, text):
    path = d / f"{name}.toml"
    path.write_text(text)
    return path


UPSERT_LINES = 'table = "events_fixed"\nkey   = ["id"]\nmode  = "upsert"'
REPLACE_LINES = 'table = "events_fixed"\nkey   = ["id"]\nmode  = "replace"\nwindow_column = "ts"'
SQL_LINES = f"key   = [\"id\"]\nmode  = \"sql\"\nsql   = '''{SQL_MODE_STATEMENT}'''"


# ---------------------------------------------------------------------------------------------
# Measurements


def per_day_script():
    """The careful loop: one statement per day in one psql session, each its own transaction."""
    lines = [
        "PREPARE day(timestamptz, timestamptz) AS "
        + upsert_statement("ts >= $1 AND ts < $2")
        + ";"
    ]
    day = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    for _ in range(365):
        nxt = day + dt.timedelta(days=1)
        lines.append(f"EXECUTE day('{day.isoformat()}', '{nxt.isoformat()}');")
        day = nxt
    return "\n".join(lines) + "\n"


def bench_sql(pg, engine, o, src, expected):
    """W1-sql: `sql` mode in the source database vs the whole-year statement (and the per-day
    loop in one psql session)."""
    spec = write_spec(
        engine.work, "w1_sql",
        spec_text("bench_w1_sql", pg.url(src), pg.url(src), SQL_LINES, YEAR_START, YEAR_END, "1d", o.concurrency, o.batch_rows),
    )
    loop = per_day_script()
    res = {"engine": [], "inner": [], "baseline": [], "loop": [], "summary": None, "cmd": None}
    for rep in range(o.reps):
        log(f"  W1-sql rep {rep + 1}/{o.reps}")
        reset_target(pg, src)
        r = engine.run(spec, expect={"partitions.done": 365})
        verify(pg, src, expected, "the engine (sql mode)")
        res["engine"].append(r.wall)
        res["inner"].append(r.summary["elapsed_seconds"])
        res["summary"], res["cmd"] = r.summary, r.cmd
        reset_target(pg, src)
        res["baseline"].append(pg.timed(src, WHOLE_YEAR + ";\n"))
        if rep == 0:
            verify(pg, src, expected, "the whole-year statement")
        if not o.no_loop:
            reset_target(pg, src)
            res["loop"].append(pg.timed(src, loop))
            if rep == 0:
                verify(pg, src, expected, "the per-day loop")
    return res


def bench_replace(pg, engine, o, src, tgt, expected, rows, with_baseline=True, reps=None, label="W1-replace", index=False):
    """W1-replace: rows through the engine into the second database in `replace` mode vs the
    COPY … TO STDOUT | COPY … FROM STDIN pipe into the empty table. With `index`, the target
    has an index on `ts` (the window column) during both."""
    suffix = f"{rows}_ix" if index else f"{rows}"
    spec = write_spec(
        engine.work, f"w1_replace_{suffix}",
        spec_text(f"bench_w1_replace_{suffix}", pg.url(src), pg.url(tgt), REPLACE_LINES, YEAR_START, YEAR_END, "1d", o.concurrency, o.batch_rows),
    )
    res = {"engine": [], "inner": [], "baseline": [], "rss_kb": [], "summary": None, "cmd": None, "rows": rows}
    if index:
        pg.run(tgt, "CREATE INDEX IF NOT EXISTS events_fixed_ts ON events_fixed (ts)")
    try:
        _replace_reps(pg, engine, o, src, tgt, expected, rows, with_baseline, reps, label, spec, res)
    finally:
        if index:
            pg.run(tgt, "DROP INDEX IF EXISTS events_fixed_ts")
    return res


def _replace_reps(pg, engine, o, src, tgt, expected, rows, with_baseline, reps, label, spec, res):
    for rep in range(reps or o.reps):
        log(f"  {label} ({rows:,} rows) rep {rep + 1}/{reps or o.reps}")
        reset_target(pg, tgt)
        r = engine.run(spec, expect={"partitions.done": 365, "rows.read": rows, "rows.inserted": rows})
        verify(pg, tgt, expected, "the engine (replace mode)")
        res["engine"].append(r.wall)
        res["inner"].append(r.summary["elapsed_seconds"])
        res["rss_kb"].append(r.maxrss_kb)
        res["summary"], res["cmd"] = r.summary, r.cmd
        if with_baseline:
            reset_target(pg, tgt)
            res["baseline"].append(pipe(pg, src, PIPE_OUT, tgt, PIPE_IN))
            if rep == 0:
                verify(pg, tgt, expected, "the COPY pipe")


def bench_upsert(pg, engine, o, src, tgt, expected, rows):
    """W1-upsert into the second database's empty table, then W1-rerun over the now-correct
    table; baseline: the single whole-year statement run in the target database over its copy
    of `events` (empty target; and, as a reference, over the correct target)."""
    spec = write_spec(
        engine.work, "w1_upsert",
        spec_text("bench_w1_upsert", pg.url(src), pg.url(tgt), UPSERT_LINES, YEAR_START, YEAR_END, "1d", o.concurrency, o.batch_rows),
    )
    keys = ["first", "first_inner", "rerun", "rerun_inner", "baseline", "baseline_rerun"]
    res = {k: [] for k in keys}
    for rep in range(o.reps):
        log(f"  W1-upsert and W1-rerun rep {rep + 1}/{o.reps}")
        reset_target(pg, tgt)
        r = engine.run(spec, expect={"partitions.done": 365, "rows.read": rows, "rows.inserted": rows})
        verify(pg, tgt, expected, "the engine (upsert mode)")
        res["first"].append(r.wall)
        res["first_inner"].append(r.summary["elapsed_seconds"])
        res["first_summary"], res["first_cmd"] = r.summary, r.cmd
        pg.run(tgt, "CHECKPOINT")
        r = engine.run(
            spec,
            expect={"partitions.done": 365, "rows.read": rows, "rows.unchanged": rows, "rows.inserted": 0, "rows.updated": 0},
        )
        verify(pg, tgt, expected, "the engine's re-run (upsert mode)")
        res["rerun"].append(r.wall)
        res["rerun_inner"].append(r.summary["elapsed_seconds"])
        res["rerun_summary"], res["rerun_cmd"] = r.summary, r.cmd
        reset_target(pg, tgt)
        res["baseline"].append(pg.timed(tgt, WHOLE_YEAR + ";\n"))
        if rep == 0:
            verify(pg, tgt, expected, "the whole-year statement in the target database")
        if not o.no_loop:
            pg.run(tgt, "CHECKPOINT")
            res["baseline_rerun"].append(pg.timed(tgt, WHOLE_YEAR + ";\n"))
    return res


def bench_overhead(pg, engine, o, src, tgt):
    """W2: empty hourly partitions with the PostgreSQL state store, net of a 1-partition run;
    baseline: a bare psql session running the same number of empty-window statements."""
    n = o.partitions
    end_n = W2_START + dt.timedelta(hours=n)
    end_1 = W2_START + dt.timedelta(hours=1)
    spec_n = write_spec(engine.work, "w2_n", spec_text("bench_w2_n", pg.url(src), pg.url(tgt), UPSERT_LINES, rfc3339(W2_START), rfc3339(end_n), "1h", o.concurrency, o.batch_rows))
    spec_1 = write_spec(engine.work, "w2_1", spec_text("bench_w2_1", pg.url(src), pg.url(tgt), UPSERT_LINES, rfc3339(W2_START), rfc3339(end_1), "1h", o.concurrency, o.batch_rows))
    lines = ["PREPARE w(timestamptz, timestamptz) AS " + upsert_statement("ts >= $1 AND ts < $2") + ";"]
    for h in range(n):
        a, b = W2_START + dt.timedelta(hours=h), W2_START + dt.timedelta(hours=h + 1)
        lines.append(f"EXECUTE w('{a.isoformat()}', '{b.isoformat()}');")
    script = "\n".join(lines) + "\n"
    res = {"partitions": n, "engine_n": [], "engine_1": [], "baseline": []}
    for rep in range(o.reps):
        log(f"  W2 rep {rep + 1}/{o.reps}")
        r = engine.run(spec_n, state=engine.pg_state(src), expect={"partitions.done": n, "rows.read": 0})
        res["engine_n"].append(r.wall)
        res["cmd"] = r.cmd
        r = engine.run(spec_1, state=engine.pg_state(src), expect={"partitions.done": 1, "rows.read": 0})
        res["engine_1"].append(r.wall)
        res["baseline"].append(pg.timed(src, script))
    pg.run(src, f"DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE")
    return res


# ---------------------------------------------------------------------------------------------
# The suite


class part_load:
    """Records the 1-minute load average at the start and end of a part: on a shared machine,
    a part measured while something else kept the cores busy reads slower (latency-bound
    parts such as W2 most)."""

    def __init__(self, facts, name):
        self.facts, self.name = facts, name

    def __enter__(self):
        self.start = os.getloadavg()[0]

    def __exit__(self, *exc):
        self.facts.setdefault("load", []).append((self.name, self.start, os.getloadavg()[0]))
        return False


def run_suite(binary, work, o):
    """Runs the parts in `o.parts`; returns the results and facts for the report."""
    pg = Pg(o.pg_url)
    if subprocess.run(["psql", "--version"], capture_output=True).returncode != 0:
        raise SystemExit("the pg suite needs the psql client")
    server = pg.value("postgres", "SELECT version()")
    settings = dict(
        pg.rows(
            "postgres",
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
            "('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes', 'max_wal_size', "
            "'wal_level', 'work_mem', 'max_connections') ORDER BY name",
        )
    )
    engine = Engine(binary, work, pg)
    facts = {"server": server, "settings": settings, "rows": o.pg_rows, "big_rows": o.pg_big_rows}
    res = {}
    parts = o.parts
    log(f"pg: preparing W1 ({o.pg_rows:,} rows)")
    src = ensure_source(pg, o.pg_rows)
    tgt = ensure_target(pg, o.pg_rows, with_events="upsert" in parts)
    log("  checksum of the source's transform")
    expected = checksum(pg, src, CHECKSUM_SOURCE)
    if expected[0] != o.pg_rows:
        raise SystemExit(f"{src}.events has {expected[0]:,} rows, expected {o.pg_rows:,}")
    facts["src"], facts["tgt"] = src, tgt
    facts["src_size"] = pg.size(src)
    try:
        if "sql" in parts:
            log("pg 1. W1-sql")
            with part_load(facts, "W1-sql"):
                res["sql"] = bench_sql(pg, engine, o, src, expected)
        if "replace" in parts or "memory" in parts:
            log("pg 2. W1-replace")
            with part_load(facts, "W1-replace"):
                res["replace"] = bench_replace(pg, engine, o, src, tgt, expected, o.pg_rows)
        if "replace_ix" in parts:
            log("pg 2b. W1-replace with an index on events_fixed (ts), engine and pipe alike")
            with part_load(facts, "W1-replace, ts index"):
                res["replace_ix"] = bench_replace(pg, engine, o, src, tgt, expected, o.pg_rows, label="W1-replace, ts index", index=True)
        if "upsert" in parts:
            log("pg 3-4. W1-upsert and W1-rerun")
            with part_load(facts, "W1-upsert/rerun"):
                res["upsert"] = bench_upsert(pg, engine, o, src, tgt, expected, o.pg_rows)
        if "overhead" in parts:
            log(f"pg 5. W2: {o.partitions:,} empty hourly partitions, PostgreSQL state store")
            with part_load(facts, "W2"):
                res["overhead"] = bench_overhead(pg, engine, o, src, tgt)
        for db in (src, tgt):
            pg.run(db, "TRUNCATE events_fixed")
        if "memory" in parts:
            log(f"pg 6. peak memory: W1-replace at {o.pg_big_rows:,} rows")
            bsrc = ensure_source(pg, o.pg_big_rows)
            btgt = ensure_target(pg, o.pg_big_rows, with_events=False)
            bexpected = checksum(pg, bsrc, CHECKSUM_SOURCE)
            if bexpected[0] != o.pg_big_rows:
                raise SystemExit(f"{bsrc}.events has {bexpected[0]:,} rows, expected {o.pg_big_rows:,}")
            facts["big_src_size"] = pg.size(bsrc)
            with part_load(facts, f"memory run ({o.pg_big_rows:,} rows)"):
                res["big"] = bench_replace(
                    pg, engine, o, bsrc, btgt, bexpected, o.pg_big_rows, with_baseline=o.big_baseline, reps=1,
                    label="W1-replace (memory)",
                )
            facts["big_tgt_size"] = pg.size(btgt)
            if o.keep_dbs:
                pg.run(btgt, "TRUNCATE events_fixed")
                facts["big_dropped"] = False
            else:
                log(f"  dropping {bsrc} and {btgt} ({(facts['big_src_size'] + facts['big_tgt_size']) / 2**30:.1f} GiB; --keep-dbs keeps them)")
                pg.drop(btgt)
                pg.drop(bsrc)
                facts["big_dropped"] = True
            facts["big_src"], facts["big_tgt"] = bsrc, btgt
    finally:
        for db in (src, tgt):
            if pg.exists(db):
                pg.run(db, "TRUNCATE events_fixed")
    return res, facts


# ---------------------------------------------------------------------------------------------
# Report


def verdict(ok):
    return "**pass**" if ok else "**FAIL**"


def report(o, meta, res, facts):
    """The PostgreSQL section of RESULTS.md."""
    rows = facts["rows"]
    L = ["## PostgreSQL suite (issues 4 and 10)", ""]
    L.append(f"- date: {meta['date']}")
    L.append(f"- commit: `{meta['commit']}`; binary built from {meta['built_from']}{meta['dirty'] if meta['built_from'] == 'the work tree' else ''}")
    if meta["built_from"] == "the work tree":
        how = "found with `--no-build`" if meta["no_build"] else "built by this run"
        L.append(f"- binary: `target/release/backfill`, {how}, file time {meta['binary_mtime']}; copied into the work dir before the first repetition")
        if meta.get("dirty_files"):
            L.append(f"- uncommitted changes in the work tree when the run started: {', '.join(f'`{f}`' for f in meta['dirty_files'])}")
    L.append(f"- machine: {meta['nproc']} cores ({meta['cpu']}), {meta['os']}; server and benchmark on the same machine")
    L.append(f"- load average before / after: {meta['load_before']} / {meta['load_after']} (the machine is shared: expect noise of ±10 % or more between repetitions)")
    if facts.get("load"):
        L.append(
            "- load average (1 min) at the start → end of each part: "
            + ", ".join(f"{n} {a:.2f} → {b:.2f}" for n, a, b in facts["load"])
            + f" (with {meta['nproc']} cores, more than {meta['nproc']} means something else competed for them)"
        )
    L.append(f"- server: {facts['server'].split(' on ')[0]} at `{o.pg_url}` (loopback TCP); " + ", ".join(f"{k} = {v}" for k, v in facts["settings"].items()))
    L.append(
        f"- workload W1: `bench/w1.sql` with {rows:,} rows over the 365 UTC days of 2025 in `{facts['src']}` "
        f"({facts['src_size'] / 2**20:,.0f} MiB); second database `{facts['tgt']}`; spec: `partition = \"1d\"` (365 partitions), "
        f"`concurrency = {o.concurrency}`, `batch_rows = {o.batch_rows}`, `time_format` native (timestamptz)"
    )
    L.append("- engine: `backfill --json --state STATE run SPEC`, wall time from process start to exit; STATE is a fresh SQLite file for W1 and a freshly dropped PostgreSQL schema for W2")
    L.append("- baselines: `psql` processes, wall time from start to exit; every target table is emptied (`TRUNCATE`) and the server checkpointed (`CHECKPOINT`) before each engine and baseline repetition (not timed); autovacuum is off on `events_fixed`")
    L.append(f"- command: `{meta['command']}`; {o.reps} repetition(s) per measurement, engine and baseline interleaved; ratios use the best of each")
    L.append("")
    L.append("| measurement | engine | baseline (same run) | ratio | target | result |")
    L.append("|---|---|---|---|---|---|")

    def secs(x):
        return f"{x:.2f} s"

    def rate(n, x):
        return f"{n / x:,.0f} rows/s ({x:.2f} s)"

    if "sql" in res:
        r = res["sql"]
        e, b = min(r["engine"]), min(r["baseline"])
        L.append(f"| W1-sql: `sql` mode, one `INSERT … SELECT … ON CONFLICT` per day in the source database, empty target, {rows:,} rows | {secs(e)} | {secs(b)} (the whole-year statement in psql) | {e / b:.2f}× | ≤ {TARGET_SQL_RATIO:g}× | {verdict(e / b <= TARGET_SQL_RATIO)} |")
        if r["loop"]:
            lp = min(r["loop"])
            L.append(f"| W1-sql reference: the same 365 per-day statements in one psql session | {secs(e)} | {secs(lp)} (per-day loop) | {e / lp:.2f}× | – | – |")
    if "replace" in res:
        r = res["replace"]
        e, b = min(r["engine"]), min(r["baseline"])
        ratio = b / e
        L.append(f"| W1-replace: `replace` mode into the second database's empty table, {rows:,} rows | {rate(rows, e)} | {rate(rows, b)} (`psql COPY (SELECT …) TO STDOUT \\| psql COPY … FROM STDIN`) | {ratio:.2f}× | ≥ {TARGET_REPLACE_RATIO:g}× | {verdict(ratio >= TARGET_REPLACE_RATIO)} |")
    if "replace_ix" in res:
        r = res["replace_ix"]
        e, b = min(r["engine"]), min(r["baseline"])
        L.append(f"| W1-replace with an index on `events_fixed (ts)` (the window column) on both sides: the realistic table (issue 10) | {rate(rows, e)} | {rate(rows, b)} (the same pipe) | {b / e:.2f}× | ≥ {TARGET_REPLACE_IX_RATIO:g}× | {verdict(b / e >= TARGET_REPLACE_IX_RATIO)} |")
    if "upsert" in res:
        r = res["upsert"]
        e, b = min(r["first"]), min(r["baseline"])
        L.append(f"| W1-upsert: `upsert` mode into the second database's empty table, {rows:,} rows | {secs(e)} | {secs(b)} (the whole-year statement, in the second database over its copy of `events`) | {e / b:.2f}× | ≤ {TARGET_UPSERT_RATIO:g}× | {verdict(e / b <= TARGET_UPSERT_RATIO)} |")
        rr = min(r["rerun"])
        unchanged = r["rerun_summary"]["rows"]["unchanged"]
        L.append(f"| W1-rerun: the same upsert again over the correct target ({unchanged:,} of {rows:,} rows unchanged in the JSON summary) | {secs(rr)} | {secs(e)} (the engine's first run) | {rr / e:.2f}× | ≤ {TARGET_RERUN_RATIO:g}× | {verdict(rr / e <= TARGET_RERUN_RATIO)} |")
        if r["baseline_rerun"]:
            br = min(r["baseline_rerun"])
            L.append(f"| W1-rerun reference: the whole-year statement again over the correct target | {secs(rr)} | {secs(br)} | {rr / br:.2f}× | – | – |")
    if "overhead" in res:
        r = res["overhead"]
        n = r["partitions"]
        en, e1, b = min(r["engine_n"]), min(r["engine_1"]), min(r["baseline"])
        gross, net, base = en / n * 1000, (en - e1) / max(n - 1, 1) * 1000, b / n * 1000
        L.append(f"| W2: overhead per partition, {n:,} empty hourly partitions, PostgreSQL state store, net of a 1-partition run ((wall − wall₁) ÷ {n - 1:,}) | {net:.3f} ms | {base:.3f} ms (psql: {n:,} empty-window upserts in one session) | {net / base:.1f}× | ≤ {TARGET_OVERHEAD_MS:g} ms | {verdict(net <= TARGET_OVERHEAD_MS)} |")
        L.append(f"| W2: the same, gross (wall ÷ {n:,}) | {gross:.3f} ms | {base:.3f} ms | {gross / base:.1f}× | – | – |")
    if "replace" in res:
        rss5 = max(res["replace"]["rss_kb"]) / 1024
        L.append(f"| peak memory (max RSS) of the engine, W1-replace, {rows:,} rows | {rss5:.1f} MiB | – | – | < {TARGET_RSS_MIB} MiB | {verdict(rss5 < TARGET_RSS_MIB)} |")
        if "big" in res:
            big = facts["big_rows"]
            rssb = max(res["big"]["rss_kb"]) / 1024
            growth = rssb / rss5
            ok = rssb < TARGET_RSS_MIB and growth <= TARGET_RSS_GROWTH
            L.append(f"| peak memory (max RSS) of the engine, W1-replace, {big:,} rows (same shape and year) | {rssb:.1f} MiB | {rss5:.1f} MiB (at {rows:,} rows) | {growth:.2f}× | < {TARGET_RSS_MIB} MiB and ≤ {TARGET_RSS_GROWTH:.2f}× | {verdict(ok)} |")
    L.append("")
    L.append("Ratios: times = engine ÷ baseline (lower is better); W1-replace = engine rows/s ÷ pipe rows/s (higher is better); memory = larger ÷ smaller.")
    L.append("")
    L.append("### Details (PostgreSQL)")
    L.append("")
    L.append("All times in seconds: best / median of the repetitions, then every repetition in order.")
    L.append("")
    L.append("| measurement | best | median | all |")
    L.append("|---|---|---|---|")

    def row(label, values):
        if values:
            s = stats(values)
            L.append(f"| {label} | {s['best']:.3f} | {s['median']:.3f} | {', '.join(f'{x:.3f}' for x in s['all'])} |")

    def counts(label, summary):
        c = summary["rows"]
        L.append(
            f"| {label}: engine counts | read {c['read']:,}, inserted {c['inserted']:,}, updated {c['updated']:,}, "
            f"unchanged {c['unchanged']:,}, deleted {c['deleted']:,}, affected {c['affected']:,}; "
            f"partitions {summary['partitions']['done']}/{summary['partitions']['total']} | | |"
        )

    if "sql" in res:
        r = res["sql"]
        row("W1-sql: engine (wall)", r["engine"])
        row("W1-sql: engine (its own `elapsed_seconds`)", r["inner"])
        row("W1-sql: whole-year statement", r["baseline"])
        row("W1-sql: per-day loop, one psql session", r["loop"])
        counts("W1-sql", r["summary"])
    if "replace" in res:
        r = res["replace"]
        row("W1-replace: engine (wall)", r["engine"])
        row("W1-replace: engine (its own `elapsed_seconds`)", r["inner"])
        row("W1-replace: COPY pipe", r["baseline"])
        L.append(f"| W1-replace: engine peak RSS (MiB) | {min(r['rss_kb']) / 1024:.1f} (min) | | {', '.join(f'{x / 1024:.1f}' for x in r['rss_kb'])} |")
        counts("W1-replace", r["summary"])
    if "replace_ix" in res:
        r = res["replace_ix"]
        row("W1-replace, ts index: engine (wall)", r["engine"])
        row("W1-replace, ts index: engine (its own `elapsed_seconds`)", r["inner"])
        row("W1-replace, ts index: COPY pipe", r["baseline"])
    if "upsert" in res:
        r = res["upsert"]
        row("W1-upsert: engine, first run (wall)", r["first"])
        row("W1-upsert: engine, first run (its own `elapsed_seconds`)", r["first_inner"])
        row("W1-upsert: whole-year statement, empty target", r["baseline"])
        counts("W1-upsert", r["first_summary"])
        row("W1-rerun: engine (wall)", r["rerun"])
        row("W1-rerun: engine (its own `elapsed_seconds`)", r["rerun_inner"])
        row("W1-rerun: whole-year statement over the correct target", r["baseline_rerun"])
        counts("W1-rerun", r["rerun_summary"])
    if "overhead" in res:
        r = res["overhead"]
        row(f"W2: engine, {r['partitions']:,} partitions (wall)", r["engine_n"])
        row("W2: engine, 1 partition (wall: start-up, store migration, plan)", r["engine_1"])
        row(f"W2: psql, {r['partitions']:,} statements", r["baseline"])
    if "big" in res:
        r = res["big"]
        big = r["rows"]
        row(f"memory run: engine W1-replace, {big:,} rows (wall)", r["engine"])
        row(f"memory run: COPY pipe, {big:,} rows", r["baseline"])
        L.append(f"| memory run: engine rows/s at {big:,} rows | {big / min(r['engine']):,.0f} | | |")
        L.append(f"| memory run: engine peak RSS (MiB) | {max(r['rss_kb']) / 1024:.1f} | | {', '.join(f'{x / 1024:.1f}' for x in r['rss_kb'])} |")
        counts("memory run", r["summary"])
        size = (facts["big_src_size"] + facts["big_tgt_size"]) / 2**30
        fate = "dropped afterwards" if facts["big_dropped"] else "kept (--keep-dbs)"
        L.append(f"| memory run: databases `{facts['big_src']}` + `{facts['big_tgt']}` | {size:.1f} GiB, {fate}; recreated by the next run | | |")
    L.append("")
    return "\n".join(L)

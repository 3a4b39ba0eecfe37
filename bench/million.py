#!/usr/bin/env python3
"""A million partitions (issue 10, section 8): how the engine scales with the number of
partitions of a run, at 2,000, 100,000 and 1,000,000.

The demo's tables (`backfill demo --prepare-only`, --rows rows in `events`, ids from 1) and a
key-range scope `from = 1, to = 1 + N * 100, chunk = 100`: N partitions of 100 keys, the first
rows/100 of them holding rows, the rest empty. SQLite state store, upsert into the demo's
`events_fixed`. For each N, on a fresh state file:

  plan     `plan SPEC --no-estimate`: wall time and peak RSS.
  create   `run SPEC --create-only`: wall time and peak RSS of creating the run (N rows).
  budget   `run SPEC` with `budget = { partitions = 10 }` until the run pauses: the partitions
           done beyond 10 are the overshoot (target: 0; "within the partitions in flight").
  overhead `resume RUN --extend-budget partitions=B-10` (B = min(N, --budget)), until the run
           pauses again or succeeds; then SIGINT. Per-partition overhead = (last finished_at
           - first started_at) / partitions done, over the empty partitions (past the
           demo's rows) started after the resume, read from the state file. Peak RSS of the `run` process (executing, not
           creating: the run exists already).
  status   `status RUN --json` on the paused run: wall time and peak RSS (best of 3).
  serve    `serve --bind 127.0.0.1:0` on the same store (issue 12): best of 3 wall times of
           `GET /api/runs/RUN` (the status), the first page of partitions, a page at the end
           of the plan, a page of `state=pending`, `/metrics`, the heat strip, the progress
           series, the error groups and a page of audit events; then the server's peak RSS.

With `--state postgres[://URL]` the state store is a PostgreSQL schema of its own per size
(`million_<pid>_<n>`, dropped afterwards; default server postgres://postgres@127.0.0.1:5432/test),
read with `psql`; everything else is the same.

Peak RSS is the kernel's ru_maxrss of the child (os.wait4). Timings on a shared machine
drift: compare the ratios between sizes, not the absolute figures. Nothing is asserted.

Writes the "A million partitions" section of bench/RESULTS.md (between its own markers;
replaced if present, appended otherwise). Usage:
  bench/million.py [--no-build] [--binary PATH] [--sizes 2000,100000,1000000] [--budget 20000]
                   [--state postgres[://URL]]
"""

import argparse
import datetime as dt
import os
import re
import urllib.request
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BEGIN = "<!-- bench/million.py: begin -->"
END = "<!-- bench/million.py: end -->"
QUERY = (
    "SELECT id, user_id, CAST(round(amount * 100) AS INTEGER) AS amount_cents, ts, "
    "lower(note) AS note FROM events WHERE id >= :start AND id < :end"
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def spec_text(n, budget):
    return f"""name   = "million_{n}"
reason = "bench/million.py"

[source]
url   = "sqlite://source.db"
query = "{QUERY}"

[target]
url   = "sqlite://target.db"
table = "events_fixed"
key   = ["id"]
mode  = "upsert"
undo  = false   # as in the runs these figures are compared with (bench/undo.py measures it)

[scope]
key   = "id"
from  = 1
to    = {1 + n * 100}
chunk = 100

[limits]
concurrency = 4
batch_rows  = 5000
budget      = {{ partitions = {budget} }}
"""


def timed(cmd, cwd):
    """Runs `cmd` to its end: (wall seconds, peak RSS in KiB, exit code, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        text = out.read().decode()
        if code not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{text}\n{err.read().decode()}")
        return wall, rusage.ru_maxrss, code, text


PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/test"


class PgState:
    """A PostgreSQL state store in its own schema, queried with psql."""

    def __init__(self, server, schema):
        self.server, self.schema = server, schema
        sep = "&" if "?" in server else "?"
        self.url = f"{server}{sep}schema={schema}"

    def query(self, sql, args=()):
        for a in args:
            sql = sql.replace("?", "'" + str(a).replace("'", "''") + "'", 1)
        out = subprocess.run(["psql", self.server, "-At", "-F", "\t", "-c",
                              f"SET search_path TO {self.schema}; {sql}"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            if "does not exist" in out.stderr:
                return None
            raise SystemExit(f"psql failed: {out.stderr}")
        lines = [l for l in out.stdout.splitlines() if l and l != "SET"]
        if not lines:
            return None
        return tuple(None if v == "" else (int(v) if v.isdigit() else v) for v in lines[0].split("\t"))

    def drop(self):
        subprocess.run(["psql", self.server, "-q", "-c", f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"],
                       check=True, capture_output=True)


def run_row(state):
    """(run id, state, pause reason) of the only run of the state file, or None."""
    if isinstance(state, PgState):
        return state.query("SELECT id, state, pause_reason FROM runs")
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT id, state, pause_reason FROM runs").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def done_count(state, run_id, after=None, from_index=0):
    sql = "SELECT count(*), min(started_at), max(finished_at) FROM partitions WHERE run_id = ? AND state = 'done'"
    args = [run_id]
    if after:
        sql += " AND started_at > ? AND idx >= ?"
        args += [after, from_index]
    if isinstance(state, PgState):
        return state.query(sql.replace("idx >= ?", f"idx >= {int(from_index)}"), args[:2])
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchone()
    finally:
        conn.close()


class Child:
    """A child process reaped with wait4, so its peak RSS is known once it exits."""

    def __init__(self, cmd, cwd):
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.rusage = None

    def exited(self, block=False):
        if self.rusage is None:
            pid, _, rusage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
            if pid:
                self.rusage = rusage
        return self.rusage is not None


def wait_paused_or_exit(proc, state, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.exited():
            return "exited"
        row = run_row(state)
        if row and row[1] == "paused" and row[2] == "budget_exhausted":
            return "paused"
        time.sleep(0.2)
    raise SystemExit(f"the run neither paused nor ended within {limit}s")


def vm_rss(pid):
    """The current resident set of a live process, in KiB (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_time(text):
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def bench_size(binary, demo, n, budget, rows, pg=None):
    d = demo / f"n{n}"
    d.mkdir(exist_ok=True)
    for name in ("source.db", "target.db"):
        (d / name).unlink(missing_ok=True)
        os.symlink(demo / name, d / name)
    if pg:
        state = PgState(pg, f"million_{os.getpid()}_{n}")
        state.drop()
        url = state.url
    else:
        state = d / "state.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        url = f"sqlite://{state}"
    spec = d / "spec.toml"
    spec.write_text(spec_text(n, 10))
    base = [str(binary), "--state", url]
    r = {"n": n}

    wall, rss, code, _ = timed(base + ["plan", str(spec), "--no-estimate"], d)
    r["plan_s"], r["plan_kib"] = wall, rss
    wall, rss, code, _ = timed(base + ["run", str(spec), "--create-only"], d)
    r["create_s"], r["create_kib"] = wall, rss
    run_id = run_row(state)[0]
    log(f"  n={n:,}: plan {r['plan_s']:.2f}s, create {r['create_s']:.2f}s")

    t0 = time.perf_counter()
    proc = Child(base + ["run", str(spec)], d)
    if wait_paused_or_exit(proc, state, 600) != "paused":
        raise SystemExit("the budget of 10 did not pause the run")
    r["first_pause_s"] = time.perf_counter() - t0
    r["first_paused_kib"] = vm_rss(proc.proc.pid)
    r["budget10_done"] = done_count(state, run_id)[0]
    b = min(n, budget)
    resumed_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    subprocess.run(base + ["resume", run_id, "--extend-budget", f"partitions={b - 10}"],
                   cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The run process sees the extension at its next poll: wait for it to leave the pause.
    deadline = time.monotonic() + 30
    while not proc.exited() and run_row(state)[1] == "paused":
        if time.monotonic() > deadline:
            raise SystemExit("the run did not continue after --extend-budget")
        time.sleep(0.05)
    ended = wait_paused_or_exit(proc, state, 3600)
    if ended == "paused":
        r["paused_kib"] = vm_rss(proc.proc.pid)
        proc.proc.send_signal(signal.SIGINT)
    proc.exited(block=True)
    r["run_kib"] = proc.rusage.ru_maxrss
    # Empty partitions only (those past the demo's rows): the engine's own cost.
    count, first, last = done_count(state, run_id, resumed_at, rows // 100)
    r["session_done"] = count
    span = (parse_time(last) - parse_time(first)).total_seconds() if count else 0.0
    r["per_partition_ms"] = span * 1000 / max(count, 1)
    r["budget_done"] = done_count(state, run_id)[0]
    log(f"  n={n:,}: budget 10 -> {r['budget10_done']} done; {r['session_done']:,} partitions "
        f"at {r['per_partition_ms']:.3f} ms each")

    best = None
    for _ in range(3):
        wall, rss, code, _ = timed(base + ["--json", "status", run_id], d)
        if best is None or wall < best[0]:
            best = (wall, rss)
    r["status_s"], r["status_kib"] = best
    log(f"  n={n:,}: status {r['status_s'] * 1000:.0f} ms, {r['status_kib'] / 1024:.0f} MiB")
    r.update(bench_serve(base, d, run_id, n))
    log(f"  n={n:,}: serve: status {r['api_status_s'] * 1000:.0f} ms, first page "
        f"{r['api_page_s'] * 1000:.0f} ms, last page {r['api_last_page_s'] * 1000:.0f} ms, pending page "
        f"{r['api_pending_page_s'] * 1000:.0f} ms, /metrics {r['metrics_s'] * 1000:.0f} ms, "
        f"peak RSS {r['serve_kib'] / 1024:.0f} MiB")
    if pg:
        state.drop()
    return r


def bench_serve(base, d, run_id, n):
    """Times the API and /metrics of `backfill serve` on this store (best of 3 each)."""
    proc = subprocess.Popen(base + ["serve", "--bind", "127.0.0.1:0"], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr = None
    for line in proc.stderr:
        m = re.search(r"listening on http://([0-9.]+:[0-9]+)", line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        raise SystemExit(f"serve did not start (exit {proc.wait()})")

    def best(path):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{addr}{path}", timeout=60) as response:
                response.read()
            times.append(time.perf_counter() - t0)
        return min(times)

    pages = f"/api/runs/{run_id}/partitions"
    out = {
        "api_status_s": best(f"/api/runs/{run_id}"),
        "api_page_s": best(f"{pages}?limit=100"),
        "api_last_page_s": best(f"{pages}?limit=100&after={max(n - 101, 0)}"),
        "api_pending_page_s": best(f"{pages}?state=pending&limit=100"),
        "metrics_s": best("/metrics"),
        "api_heat_s": best(f"/api/runs/{run_id}/heat?bins=200"),
        "api_progress_s": best(f"/api/runs/{run_id}/progress"),
        "api_errors_s": best(f"/api/runs/{run_id}/errors"),
        "api_audit_s": best(f"/api/runs/{run_id}/audit?limit=100"),
        "api_sorted_duration_s": best(f"{pages}?limit=100&sort=duration"),
        "api_sorted_rows_s": best(f"{pages}?limit=100&sort=rows"),
        "api_checks_mismatched_s": best(f"/api/runs/{run_id}/checks?status=mismatched"),
        "api_checks_page_s": best(f"/api/runs/{run_id}/checks?limit=100"),
        "api_quarantine_s": best(f"/api/runs/{run_id}/quarantine?limit=100"),
    }
    out["serve_kib"] = vm_hwm(proc.pid)
    proc.terminate()
    proc.wait()
    return out


def vm_hwm(pid):
    """Peak resident set of a live process (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def report(results, meta):
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    begin, end = markers(meta["pg"])
    store = "PostgreSQL state store (a schema of its own per size)" if meta["pg"] else "SQLite state store"
    title = " on a PostgreSQL state store" if meta["pg"] else ""
    L = [begin, "", f"## A million partitions{title} (issue 10, section 8)", ""]
    L.append(f"Measured {meta['date']} on {meta['commit']}, {os.cpu_count()} cores, load "
             f"{meta['load']} before. `bench/million.py`: key scope of N partitions of 100 "
             "keys over the demo's tables (100,000 rows: the first 1,000 partitions hold "
             "rows, the rest are empty), " + store + ", concurrency 4. The machine was "
             "shared with other builds: read the ratios between sizes, not the absolute times.")
    L.append("")
    L.append("| | " + " | ".join(f"{r['n']:,}" for r in results) + " | target at 1M |")
    L.append("|---|" + "---:|" * len(results) + "---|")

    def row(label, f, target=""):
        L.append(f"| {label} | " + " | ".join(f(r) for r in results) + f" | {target} |")

    row("`plan --no-estimate`", lambda r: f"{r['plan_s']:.2f} s")
    row("  peak RSS of `plan` (every partition in memory)", lambda r: mib(r["plan_kib"]))
    row("create the run (`run --create-only`)", lambda r: f"{r['create_s']:.2f} s", "< 10 s")
    row("  peak RSS while creating", lambda r: mib(r["create_kib"]))
    row("per-partition overhead in a run (empty partitions)", lambda r: f"{r['per_partition_ms']:.3f} ms "
        f"(over {r['session_done']:,})", "≤ 0.5 ms, flat")
    row("peak RSS of `run` (plans the spec to check its hash, then executes)",
        lambda r: mib(r["run_kib"]))
    row("RSS of `run` executing, after 10 partitions (at the first pause)",
        lambda r: mib(r["first_paused_kib"]))
    row("RSS of `run` executing, after B partitions (at the budget's pause)",
        lambda r: mib(r["paused_kib"]) if r.get("paused_kib") else "– (ran to the end)",
        "< 100 MiB")
    row("`status --json` (best of 3)", lambda r: f"{r['status_s'] * 1000:.0f} ms", "< 300 ms")
    row("  peak RSS of `status`", lambda r: mib(r["status_kib"]), "< 50 MiB")
    row("`budget = { partitions = 10 }`: partitions done", lambda r: f"{r['budget10_done']}",
        "≤ 10 + concurrency")
    ms = lambda key: (lambda r: f"{r[key] * 1000:.0f} ms")  # noqa: E731
    row("`serve`: `GET /api/runs/RUN` (best of 3)", ms("api_status_s"), "< 300 ms")
    row("`serve`: first page of 100 partitions", ms("api_page_s"), "< 300 ms")
    row("`serve`: last page of 100 partitions (`after=N-101`)", ms("api_last_page_s"), "< 300 ms")
    row("`serve`: first page of `state=pending`", ms("api_pending_page_s"), "< 300 ms")
    row("`serve`: `GET /metrics`", ms("metrics_s"), "–")
    row("`serve`: heat strip of 200 bins (binned in the store)", ms("api_heat_s"), "< 300 ms")
    row("`serve`: progress per minute", ms("api_progress_s"), "–")
    row("`serve`: errors grouped", ms("api_errors_s"), "–")
    row("`serve`: first page of 100 audit events", ms("api_audit_s"), "–")
    row("`serve`: first page sorted by duration (a scan of the run: no index)",
        ms("api_sorted_duration_s"), "–")
    row("`serve`: first page sorted by rows", ms("api_sorted_rows_s"), "–")
    row("`serve`: mismatched checks", ms("api_checks_mismatched_s"), "–")
    row("`serve`: first page of 100 checks", ms("api_checks_page_s"), "–")
    row("`serve`: first page of quarantined rows", ms("api_quarantine_s"), "–")
    row("  peak RSS of `serve` after these", lambda r: mib(r["serve_kib"]), "< 100 MiB")
    L += ["", end]
    return "\n".join(L)


def markers(pg):
    if not pg:
        return BEGIN, END
    return BEGIN.replace("million.py", "million.py --state postgres"), END.replace("million.py", "million.py --state postgres")


def write_section(text, pg):
    begin, end = markers(pg)
    path = BENCH / "RESULTS.md"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        a, b = old.index(begin), old.index(end) + len(end)
        new = old[:a] + text + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", help="the backfill binary (default: target/release/backfill)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    p.add_argument("--sizes", default="2000,100000,1000000")
    p.add_argument("--budget", type=int, default=20000, help="partitions timed per size (default 20000)")
    p.add_argument("--rows", type=int, default=100000, help="rows of the demo's source")
    p.add_argument("--workdir", help="keep the databases here (default: a removed temp dir)")
    p.add_argument("--state", default="sqlite", help="sqlite (default) or postgres[://URL] "
                   f"(default server {PG_DEFAULT}; a schema per size, dropped afterwards)")
    args = p.parse_args()
    sys.path.insert(0, str(BENCH))
    import benchlock
    benchlock.hold("bench/million.py")
    pg = None
    if args.state.startswith("postgres"):
        pg = args.state if "://" in args.state else PG_DEFAULT
    if not args.no_build and not args.binary:
        subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], cwd=REPO, check=True)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = Path(args.binary or target_dir / "release" / "backfill").resolve()
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                 capture_output=True, text=True).stdout.strip(),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "pg": pg,
    }
    with tempfile.TemporaryDirectory(prefix="backfill-million-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        demo = work / "demo"
        subprocess.run([str(binary), "demo", "--dir", str(demo), "--rows", str(args.rows),
                        "--prepare-only"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        results = []
        for n in [int(s) for s in args.sizes.split(",")]:
            results.append(bench_size(binary, demo, n, args.budget, args.rows, pg))
    text = report(results, meta)
    print(text)
    write_section(text, pg)


if __name__ == "__main__":
    main()

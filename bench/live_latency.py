#!/usr/bin/env python3
"""Live latency (issue 5): what a backfill costs live traffic, and what the throttles save.

Live traffic is pgbench (the default TPC-B-like script, `-c 2 -R 300`, per-transaction log)
against PostgreSQL on loopback, in its own database `bench_pgbench`. The backfill is W1
(bench/w1.sql, PostgreSQL to a second PostgreSQL database, upsert, concurrency 4). Cases:

  a  pgbench alone, for --alone seconds (default 330: longer than the server's checkpoint_timeout,
     5 min, so the yardstick meets a timed checkpoint as the 6-8 minute cases do; pgbench's own
     p90 moves between 1.2 and 2.3 ms from one 30 s segment to the next, and a minute right
     after a CHECKPOINT read about 20% below the same server's p90 over 7 minutes). The
     report also gives (a)'s first 60 s, the yardstick of the runs before 2026-12-07 16:00
  b  while backfill runs W1 unthrottled
  c  with `[throttle]` adaptive (max_latency_increase = 0.10; maximum = the unthrottled rate
     measured in b, no hand tuning). By default (issue 10) the throttle WATCHES the pgbench
     database (`watch = { url = … }`), with no probe statement: pgbench's own mean time per
     statement from pg_stat_statements deltas and the sessions waiting on WAL or I/O. That
     needs `shared_preload_libraries = 'pg_stat_statements'`: when the server at --pg-url does
     not load it, the script starts a private PostgreSQL (initdb in a temporary folder, a free
     loopback port, the extension preloaded; `--no-private` refuses instead) and runs every
     case there. With --probe-sql a probe is added (issue 5's setup). The probe is a WRITE on the pgbench database, in
     autocommit, so each probe pays one commit (WAL flush), which is what hurts pgbench (a read
     probe barely sees it): by default a no-op UPDATE of pgbench's hot branch row (scale 1: one
     branch, which every pgbench transaction locks until its commit), so the probe also waits
     behind the live transactions in flight, as they wait for each other. Alternative:
     `--probe-sql "UPDATE bench_live_probe SET n = n + 1 WHERE id = 1 RETURNING n"` (that
     one-row scratch table is created): a commit without touching pgbench's rows. interval
     100 ms (a window and a baseline of 100 probes: 10 s each; fewer probes per window leave a
     p90 whose own noise, about ±20% at 40 probes, exceeds the +10% being enforced) and the
     other [throttle] keys are options (--interval, --window, ...), printed in
     the report. (c)'s "after 10 s" counts from the adaptive start (after the baseline probes,
     before which no batch runs), not from process start.
  a2 pgbench alone again right after c (--alone-after, 30 s): live latency drifts by itself
     (p90 ±10-20% from one minute to the next on the 2-core machine), so the report gives c
     against a2, and against pgbench's p90 during c's own baseline (the engine started, no
     batch yet), beside the goal's ratio against a
  d  with the best static `limits.rows_per_second` that keeps live p90 within +10% of a,
     found by bisection over short trial runs (each stopped after --trial seconds), then
     CONFIRMED over a full run: when the full run's p90 exceeds the goal, the rate is lowered
     by a quarter and the full run repeated (at most --confirm times); d is the last full run,
     and every attempt is reported.

Paired yardstick (--pause EVERY:FOR, default 50:10): (c) and (d)'s full runs are stopped
(SIGSTOP) for FOR seconds every EVERY seconds. pgbench while the engine is stopped (from 2 s
into each pause) is pgbench alone at the same minutes as the run, so the drift of live traffic
from one minute to the next (which (a), minutes earlier, cannot cancel) cancels; a run's p90
counts the transactions that ended while the engine ran, its completion the time it ran. (d)'s
full runs are judged by that paired ratio. The engine drops the watch reading that spans a
pause (a gap of 5 s or more), so the adaptive throttle does not judge seconds at rest.

Live p90/p99 are taken from pgbench's log over the backfill run after its first 10 seconds
(`after 10 s`) and over the whole run. Writes the "Live latency (issue 5)" section of
bench/RESULTS.md (between its own markers). Usage: bench/live_latency.py [--rows N] [--no-build]

Duration: about rows / (c's mean rate) + rows / (d's rate) + 4 trials + (a) + ~2 min.
"""

import argparse
import datetime as dt
import glob
import os
import shutil
import signal
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

PGBENCH_DB = "bench_pgbench"
PROBE_TABLE = "bench_live_probe"
WRITE_PROBE = "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1 RETURNING bbalance"
SCRATCH_PROBE = f"UPDATE {PROBE_TABLE} SET n = n + 1 WHERE id = 1 RETURNING n"
BEGIN = "<!-- bench/run suite live: begin -->"  # bench/run keeps the section (SUITE_ORDER)
END = "<!-- bench/run suite live: end -->"
SETTLE = 10.0  # seconds of a run left out of "after 10 s"
FIRST = 60.0  # seconds of (a) that were the whole yardstick before 2026-12-07 16:00
PAUSE_SETTLE = 2.0  # seconds of each pause left out of the paired yardstick (statements in flight)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class PrivatePg:
    """A private PostgreSQL cluster loading pg_stat_statements, in a temporary folder, on a free
    loopback port; removed by `stop`. Runs as the `postgres` OS user when the script is root."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise SystemExit("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) for a private server")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="backfill-live-pg-"))
        os.chmod(self.dir, 0o755)
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres", str(self.dir)], check=True)
        data = self.dir / "data"
        self.as_postgres([self.bin / "initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "-D", data])
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\n"
                    "shared_preload_libraries = 'pg_stat_statements'\nmax_connections = 100\n"
                    # As the machine's shared server (5432) runs, so cases compare with its history.
                    "autovacuum = off\n")
        self.as_postgres([self.bin / "pg_ctl", "-D", data, "-l", self.dir / "server.log", "start", "-w", "-t", "60"])
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"

    def as_postgres(self, cmd):
        cmd = [str(c) for c in cmd]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def stop(self):
        try:
            self.as_postgres([self.bin / "pg_ctl", "-D", self.dir / "data", "stop", "-m", "fast", "-w", "-t", "60"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def preloads_statements(pg):
    libs = pg.value("postgres", "SELECT current_setting('shared_preload_libraries')") or ""
    return "pg_stat_statements" in libs


def pgbench_bin():
    found = shutil.which("pgbench") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))), None)
    if not found:
        raise SystemExit("pgbench not found (Debian: postgresql-client, /usr/lib/postgresql/*/bin/pgbench)")
    return found


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(1, int(-(-p * len(s) // 1)))  # nearest rank
    return s[min(k, len(s)) - 1]


class Live:
    """pgbench running in the background, its per-transaction log in `d`."""

    def __init__(self, pgbench, url, d, seconds):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("pgb*"):
            f.unlink()
        cmd = [pgbench, "-n", "-c", "2", "-R", "300", "-T", str(int(seconds)), "-l",
               f"--log-prefix={d}/pgb", url]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=d)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def entries(self):
        """Every transaction of the log: (end in epoch seconds, latency in ms)."""
        out = []
        for f in self.d.glob("pgb*"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) < 6 or parts[2] == "skipped":
                    continue
                out.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]) / 1000.0))
        return out


def spec(args, src_url, tgt_url, name, rate=None, throttle=None):
    text = pg_suite.spec_text(
        name, src_url, tgt_url, 'table = "events_fixed"\nkey = ["id"]\nmode = "upsert"',
        pg_suite.YEAR_START, pg_suite.YEAR_END, "1d", 4, 5000,
    )
    if rate:
        text += f"rows_per_second = {int(rate)}\n"
    if throttle:
        text += "\n" + throttle
    path = args.work / f"{name}.toml"
    path.write_text(text)
    return path


def backfill(args, spec_path, limit=None, pause=False):
    """Runs the engine (fresh SQLite state); returns (start, end, state, pauses) in epoch
    seconds. With `limit`, interrupts it (SIGINT: a graceful pause) after `limit` seconds. With
    `pause`, stops the process (SIGSTOP) for --pause's FOR seconds every EVERY seconds, then
    continues it (SIGCONT); `pauses` lists the (stopped, continued) times."""
    args.n += 1
    state = f"sqlite://{args.work}/state-{args.n}.db"
    cmd = [str(args.binary), "--json", "--state", state, "run", str(spec_path)]
    out = open(args.work / f"engine-{args.n}.out", "wb")
    err = open(args.work / f"engine-{args.n}.err", "wb")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    pauses = []
    if pause and args.pause_for > 0 and limit is None:
        while True:
            try:
                proc.wait(timeout=args.pause_every - args.pause_for)
                break
            except subprocess.TimeoutExpired:
                stopped = time.time()
                proc.send_signal(signal.SIGSTOP)
                time.sleep(args.pause_for)
                proc.send_signal(signal.SIGCONT)
                pauses.append((stopped, time.time()))
    else:
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait()
    t1 = time.time()
    if limit is None and proc.returncode != 0:
        raise SystemExit(f"engine run failed ({proc.returncode}): {' '.join(cmd)}\n{(args.work / f'engine-{args.n}.err').read_text()}")
    return t0, t1, args.work / f"state-{args.n}.db", pauses


def quiesce(args):
    """Every case starts from the same server state: waits (up to 90 s) until no autovacuum
    worker runs (one started by the previous case or by a freshly loaded database would
    disturb the next case's live latency), vacuums pgbench's tables (autovacuum is off, so
    without it each case would start on the dead rows of every case before it: 300 updates
    a second), then writes out the dirty buffers the previous case left (`CHECKPOINT`) and
    pauses: after an unthrottled run, live traffic otherwise pays for its dirty pages
    (backends write them out) whatever the next case does."""
    for _ in range(90):
        n = args.pg.value("postgres", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
        if str(n).strip() in ("0", ""):
            break
        time.sleep(1)
    else:
        log("  (autovacuum still running after 90 s)")
    args.pg.run(PGBENCH_DB, "VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
    args.pg.run("postgres", "CHECKPOINT")
    time.sleep(3)


def adaptive_start(state):
    """Epoch seconds of the adaptive throttle's start record (the baseline is measured then)."""
    for t, cause, rate in rate_changes(state):
        if cause == "start" and rate is not None:
            return t
    return None


def paired(entries, start, t1, pauses):
    """The paired yardstick of a paused run: the latencies (ms) of the transactions that ended
    while the engine was stopped (from PAUSE_SETTLE after each stop: its statements in flight
    finish), and of those that ended while it ran (outside every pause), both after `start`
    and before `t1`."""
    def stopped(end, settle):
        return any(s + settle <= end <= c for s, c in pauses)
    alone = [ms for end, ms in entries if start <= end <= t1 and stopped(end, PAUSE_SETTLE)]
    running = [ms for end, ms in entries if start <= end <= t1 and not stopped(end, 0.0)]
    return alone, running


def measure(args, name, spec_path=None, limit=None, alone=None, origin=None, pause=False):
    """One case: pgbench started first (2 s of warm-up), then the backfill; live latencies
    over the run and after its first 10 s (from `origin(state)` when given). With `pause`, the
    engine is paused now and then (--pause) and the run is also judged against pgbench during
    its own pauses."""
    quiesce(args)
    pg_suite.reset_target(args.pg, args.tgt)
    live = Live(args.pgbench, args.pg.url(PGBENCH_DB), args.work / f"pgb-{name}", 3600)
    time.sleep(2)
    if spec_path is None:
        t0 = time.time()
        time.sleep(alone)
        t1 = time.time()
        errlog, pauses = None, []
    else:
        t0, t1, errlog, pauses = backfill(args, spec_path, limit, pause)
    time.sleep(0.5)
    live.stop()
    start = (origin(errlog) if origin else None) or t0
    entries = live.entries()
    def within(lo, hi):
        return [ms for end, ms in entries if lo <= end <= hi]
    whole = within(start, t1)
    after = within(start + SETTLE, t1) if t1 - start > SETTLE + 2 else whole
    rest = within(t0, start) if start - t0 > 2 else []
    first = within(t0, t0 + FIRST) if spec_path is None and t1 - t0 > FIRST else []
    stopped_alone, running = paired(entries, start + SETTLE, t1, pauses)
    if pauses:
        # A paused run's own latencies are those of the transactions that ended while it ran.
        after = running
        whole = paired(entries, start, t1, pauses)[1]
    paused = sum(c - s for s, c in pauses)
    r = {
        "rest_p90": percentile(rest, 0.9) if rest else None, "rest_n": len(rest),
        "name": name, "secs": t1 - t0, "n": len(after), "tps": len(whole) / max(t1 - start, 1e-9),
        "p90": percentile(after, 0.9), "p99": percentile(after, 0.99),
        "p90_all": percentile(whole, 0.9), "p99_all": percentile(whole, 0.99),
        "state": errlog, "t0": t0, "start": start,
        "first_p90": percentile(first, 0.9) if first else None,
        "pauses": len(pauses), "paused": paused, "active": t1 - t0 - paused, "pause_spans": pauses,
        "alone_p90": percentile(stopped_alone, 0.9) if stopped_alone else None, "alone_n": len(stopped_alone),
        "running_p90": percentile(running, 0.9) if running else None, "running_n": len(running),
    }
    if stopped_alone:
        r["paired"] = r["running_p90"] / r["alone_p90"]
        log(f"  {name}: paused {len(pauses)} times, {paused:.0f} s; pgbench while paused p90 {r['alone_p90']:.2f} ms "
            f"({len(stopped_alone)} tx), while running {r['running_p90']:.2f} ms ({len(running)} tx): "
            f"paired {r['paired']:.2f}×; {r['active']:.1f} s running")
    log(f"  {name}: {r['secs']:.1f} s, live p90 {r['p90']:.2f} ms p99 {r['p99']:.2f} ms after 10 s "
        f"(whole run p90 {r['p90_all']:.2f} / p99 {r['p99_all']:.2f}; {len(whole)} tx)")
    return r


def rate_changes(state):
    """The run's rate time series from its state store: (epoch seconds, cause, rate) in order."""
    import sqlite3

    if not state or not state.exists():
        return []
    conn = sqlite3.connect(state)
    rows = conn.execute("SELECT at, cause, rate FROM rate_changes ORDER BY run_id, seq").fetchall()
    conn.close()
    out = []
    for at, cause, rate in rows:
        try:
            t = dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            t = float("nan")
        out.append((t, cause, rate))
    return out


def rate_summary(changes, t0, t1, full_rate, rows, pauses=()):
    """Counts of cuts and raises, the time-weighted mean rate asked for while the engine ran
    (`pauses`, the (stopped, continued) spans, left out), the rows moved per second of that
    same time (they differ by what the throttle holds back: rest checks hold the limiter at
    1 row/s, which the rate series does not record), and the rate every 5 s."""
    steps = [(t, r) for t, c, r in changes if r is not None and t == t]
    if not steps:
        return "no adaptive rate recorded"
    cuts = sum(1 for _, c, _ in changes if c in ("latency", "live_latency", "live_transactions", "waiting", "running", "errors", "replica_lag"))
    raises = sum(1 for _, c, _ in changes if c == "recovered")
    causes = sorted({c for _, c, _ in changes})

    def ran(a, b):
        """Seconds of [a, b] the engine was not stopped."""
        return max(b - a, 0.0) - sum(max(min(b, c) - max(a, s), 0.0) for s, c in pauses)

    area, last_t, last_r = 0.0, t0, steps[0][1]
    for t, r in steps:
        t = min(max(t, t0), t1)
        area += ran(last_t, t) * last_r
        last_t, last_r = t, r
    area += ran(last_t, t1) * last_r
    running = max(ran(t0, t1), 1e-9)
    mean = area / running
    marks, i, r = [], 0, steps[0][1]
    for k in range(0, int(t1 - t0) + 1, 5):
        while i < len(steps) and steps[i][0] <= t0 + k:
            r = steps[i][1]
            i += 1
        marks.append(f"{k} s {r / full_rate:.0%}")
    return (f"{len(changes)} changes ({cuts} cuts, {raises} raises; causes {', '.join(causes)}); "
            f"time-weighted mean rate {mean:,.0f} rows/s = {mean / full_rate:.1%} of the maximum; "
            f"rows moved {rows / running:,.0f} rows/s ({rows / running / max(mean, 1e-9):.2f}× the mean asked)"
            + (f" over the {running:.1f} s it ran (pauses left out)" if pauses else "") + "; "
            f"rate (share of the maximum) every 5 s: " + ", ".join(marks))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", pg_suite.DEFAULT_URL))
    p.add_argument("--rows", type=int, default=5_000_000, help="W1 rows (default 5,000,000, the full W1: (c) then runs > 60 s)")
    p.add_argument("--trial", type=float, default=25.0, help="seconds of each bisection trial (default 25)")
    p.add_argument("--steps", type=int, default=4, help="bisection steps for case d (default 4)")
    p.add_argument("--probe-sql", default=None,
                   help=f"add a probe to the watch (issue 5's setup: `{WRITE_PROBE}`, a write in autocommit: one commit per probe)")
    p.add_argument("--no-watch", action="store_true", help="no `watch` (then --probe-sql is needed): issue 5's probe-only throttle")
    p.add_argument("--no-private", action="store_true",
                   help="never start a private server: fail when --pg-url does not preload pg_stat_statements")
    p.add_argument("--confirm", type=int, default=3, help="full runs of case d to confirm its rate (default 3)")
    p.add_argument("--interval", default="100ms", help="throttle.interval (default 100ms)")
    p.add_argument("--window", type=int, default=100,
                   help="throttle.window (default 100 probes = 10 s at 100 ms, as many as the baseline's)")
    p.add_argument("--baseline-probes", type=int, default=100, help="throttle.baseline_probes (default 100)")
    p.add_argument("--decrease-factor", type=float, default=0.5, help="throttle.decrease_factor (default 0.5)")
    p.add_argument("--min-rate-fraction", type=float, default=0.01, help="throttle.min_rate_fraction (default 0.01, the product default)")
    p.add_argument("--increase-fraction", type=float, default=0.005,
                   help="throttle.increase_fraction (default 0.005: 5%% of the maximum per second at 100 ms, the product's default pace)")
    p.add_argument("--alone-after", type=float, default=30.0,
                   help="seconds of pgbench alone again right after case c (default 30; 0: skip): how far live "
                        "latency drifted by itself meanwhile, reported beside the ratios (the yardstick stays (a))")
    p.add_argument("--alone", type=float, default=330.0,
                   help="seconds of case a, pgbench alone (default 330: its p90 is the yardstick of every ratio; "
                        "longer than checkpoint_timeout, so it meets a timed checkpoint as the long cases do)")
    p.add_argument("--pause", default="50:10", metavar="EVERY:FOR",
                   help="paired yardstick (default 50:10; 0 for none): every EVERY seconds, (c) and (d)'s full runs "
                        "are stopped (SIGSTOP) for FOR seconds; pgbench during those pauses (after their first "
                        f"{PAUSE_SETTLE:.0f} s) is pgbench alone at the same minutes as the run, which judges (d)'s "
                        "full runs; completion counts the running time only")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--binary", type=Path, default=None,
                   help="the backfill binary to measure (default: target/release/backfill of this checkout, built unless --no-build)")
    p.add_argument("--only-ac", type=float, metavar="FULL_RATE",
                   help="experiment: measure only a and c, with this maximum rate (rows/s), print, do not write RESULTS.md")
    p.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    args = p.parse_args()
    every, _, length = args.pause.partition(":")
    args.pause_every, args.pause_for = float(every), float(length or 0)
    if args.pause_for > 0 and args.pause_every <= args.pause_for:
        raise SystemExit("--pause EVERY:FOR needs EVERY > FOR (the engine must run between pauses)")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlock
    benchlock.hold('bench/live_latency.py')
    if args.no_watch and not args.probe_sql:
        raise SystemExit("--no-watch needs --probe-sql: the throttle would have no latency signal")
    args.pg = pg_suite.Pg(args.pg_url)
    private = None
    server_note = f"the server at {args.pg_url}"
    if not args.no_watch and not preloads_statements(args.pg):
        if args.no_private:
            raise SystemExit(f"{args.pg_url} does not preload pg_stat_statements (shared_preload_libraries); "
                             "drop --no-private to run on a private server")
        log("the server does not preload pg_stat_statements: starting a private PostgreSQL")
        private = PrivatePg()
        args.pg = pg_suite.Pg(private.url)
        server_note = (f"a private PostgreSQL started by the script ({private.bin.parent.name}, default settings, "
                       "`shared_preload_libraries = 'pg_stat_statements'`)")
    try:
        run_all(args, server_note)
    finally:
        if private:
            private.stop()


def run_all(args, server_note):
    args.pgbench = pgbench_bin()
    if not args.no_build and args.binary is None:
        subprocess.run(["cargo", "build", "--release", "-p", "backfill-cli"], cwd=REPO, check=True)
    args.work = Path(tempfile.mkdtemp(prefix="backfill-live-"))
    shutil.copy2(args.binary or REPO / "target" / "release" / "backfill", args.work / "backfill")
    args.binary = args.work / "backfill"
    args.n = 0
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=REPO,
                           capture_output=True, text=True).stdout.rstrip()  # keep the first line's status column
    dirty = f" (work tree; uncommitted: {', '.join(l[3:] for l in dirty.splitlines())})" if dirty else ""

    log(f"pgbench -i in {PGBENCH_DB}; W1 with {args.rows:,} rows")
    args.pg.create(PGBENCH_DB)
    subprocess.run([args.pgbench, "-i", "-q", args.pg.url(PGBENCH_DB)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not args.no_watch:
        args.pg.run(PGBENCH_DB, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    args.pg.run(PGBENCH_DB, f"DROP TABLE IF EXISTS {PROBE_TABLE}; "
                f"CREATE TABLE {PROBE_TABLE} (id int PRIMARY KEY, n bigint NOT NULL) WITH (fillfactor = 50); "
                f"INSERT INTO {PROBE_TABLE} VALUES (1, 0)")
    src = pg_suite.ensure_source(args.pg, args.rows)
    args.tgt = pg_suite.ensure_target(args.pg, args.rows, False)
    src_url, tgt_url = args.pg.url(src), args.pg.url(args.tgt)

    res = {}
    res["a"] = measure(args, "a", alone=args.alone)
    if args.only_ac:
        full_rate = args.only_ac
    else:
        res["b"] = measure(args, "b", spec(args, src_url, tgt_url, "live_b"))
        full_rate = args.rows / res["b"]["secs"]
    goal = res["a"]["p90"] * 1.10

    signals = ""
    if not args.no_watch:
        signals += f'watch = {{ url = "{args.pg.url(PGBENCH_DB)}" }}\n'
    if args.probe_sql:
        signals += f'probe = {{ url = "{args.pg.url(PGBENCH_DB)}", sql = "{args.probe_sql}" }}\n'
    throttle = f"""[throttle]
{signals}max_latency_increase = 0.10
max_rows_per_second = {int(full_rate)}
interval = "{args.interval}"
window = {args.window}
baseline_probes = {args.baseline_probes}
decrease_factor = {args.decrease_factor}
min_rate_fraction = {args.min_rate_fraction}
increase_fraction = {args.increase_fraction}
"""
    args.throttle_keys = ", ".join(line for line in throttle.splitlines()[1:]
                                   if not line.startswith(("watch", "probe")))
    res["c"] = measure(args, "c", spec(args, src_url, tgt_url, "live_c", throttle=throttle), origin=adaptive_start,
                       pause=True)
    res["c"]["changes"] = rate_changes(res["c"]["state"])
    c_summary = (f"baseline probes took {res['c']['start'] - res['c']['t0']:.1f} s of the {res['c']['secs']:.1f} s "
                 "(no batch runs meanwhile; the 10 s are counted from the adaptive start); "
                 + rate_summary(res["c"]["changes"], res["c"]["start"], res["c"]["t0"] + res["c"]["secs"], full_rate,
                                args.rows, res["c"]["pause_spans"]))
    log(f"  c: {c_summary}")
    if args.alone_after > 0:
        res["a2"] = measure(args, "a2", alone=args.alone_after)
    if args.only_ac:
        log(f"  only a and c: c p90 / a p90 = {res['c']['p90'] / res['a']['p90']:.2f}x"
            + (f", paired {res['c']['paired']:.2f}x" if res["c"].get("paired") else ""))
        return

    # d: bisection on the static rate over short trials (geometric, between the adaptive floor
    # and the full rate); lo is assumed to meet the goal (it is measured by the final run).
    lo, hi = full_rate * args.min_rate_fraction, full_rate
    trials = []
    for step in range(args.steps):
        mid = (lo * hi) ** 0.5  # geometric: the answer is a fraction of the full rate
        r = measure(args, f"d-trial-{step + 1}", spec(args, src_url, tgt_url, f"live_d{step}", rate=mid), limit=args.trial)
        ok = r["p90"] <= goal
        trials.append((mid, r["p90"], ok))
        lo, hi = (mid, hi) if ok else (lo, mid)
    # Confirm over full runs: a 25 s trial that passed can still miss over the whole run.
    best, floor = lo, full_rate * args.min_rate_fraction
    confirms = []
    for attempt in range(max(1, args.confirm)):
        r = measure(args, f"d-full-{attempt + 1}", spec(args, src_url, tgt_url, f"live_dfull{attempt}", rate=best),
                    pause=True)
        # Paused, a full run is judged against pgbench during its own pauses (the same minutes).
        ok = r["paired"] <= 1.10 if r.get("paired") else r["p90"] <= goal
        confirms.append((best, r, ok))
        if ok or best <= floor * 1.0001:
            break
        best = max(best * 0.75, floor)
    best, res["d"], d_ok = confirms[-1]
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    a, b, c, d = res["a"], res["b"], res["c"], res["d"]
    L = [
        "## Live latency (issue 5)",
        "",
        f"Generated by `bench/live_latency.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}, "
        f"binary `cargo build --release -p backfill-cli` at commit {commit}{dirty}, {os.cpu_count()} cores "
        f"(shared: other work may run), load average {load_before} before, {load_after} after; "
        f"the whole script took {(time.time() - started) / 60:.1f} min.",
        f"Live traffic: `pgbench -n -c 2 -R 300` (TPC-B-like, scale 1) on loopback. Backfill: W1 with "
        f"**{args.rows:,} rows**, PostgreSQL to "
        "PostgreSQL, upsert, concurrency 4, batch 5000. Latencies from pgbench's per-transaction "
        f"log, over the backfill run after its first 10 s (whole run in brackets; (a): {args.alone:.0f} s alone).",
        "",
        "| case | completion | live p90 | live p99 | p90 vs a | paired: p90 vs pgbench during the run's pauses |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("a", f"a. pgbench alone ({args.alone:.0f} s)"), ("b", "b. unthrottled"),
                       ("c", "c. adaptive `[throttle]`"), ("d", f"d. best static rows_per_second = {int(best):,}")):
        r = res[key]
        comp = "—" if key == "a" else f"{r['active']:.1f} s" + (f" running (+{r['paused']:.0f} s paused)" if r["pauses"] else "")
        pair = (f"{r['paired']:.2f}× ({r['alone_p90']:.2f} ms over {r['alone_n']:,} tx in {r['pauses']} pauses)"
                if r.get("paired") else "—")
        L.append(f"| {label} | {comp} | {r['p90']:.2f} ms ({r['p90_all']:.2f}) | {r['p99']:.2f} ms ({r['p99_all']:.2f}) "
                 f"| {r['p90'] / a['p90']:.2f}× | {pair} |")
    L += [
        "",
        f"- Unthrottled rate (b): {full_rate:,.0f} rows/s; the adaptive maximum is set to it. "
        + (f"Watch: `{PGBENCH_DB}` (pg_stat_statements, transaction time from pg_stat_database, wait events). " if not args.no_watch else "")
        + (f"Probe: `{args.probe_sql}` on `{PGBENCH_DB}` (autocommit: one commit per probe). " if args.probe_sql else "No probe. ")
        + f"[throttle] keys: `{args.throttle_keys}`.",
        f"- Server: {server_note}.",
        (f"- **pgbench alone ran {a['tps']:.0f} tps of its 300 with a p90 of {a['p90']:.0f} ms: it could not keep its "
         "schedule, so the machine was overloaded by other work and every ratio of this run is meaningless.**"
         if a["tps"] < 285 or a["p90"] > 50 else
         f"- pgbench alone kept its schedule ({a['tps']:.0f} tps of 300)."),
        f"- (c)/(d) completion (running time): **{c['active'] / d['active']:.2f}×** (target ≤ 1.25×); (c) p90 after 10 s vs (a): "
        f"**{c['p90'] / a['p90']:.2f}×** (target ≤ 1.10×)"
        + (f", paired **{c['paired']:.2f}×**" if c.get("paired") else "")
        + f"; (d) p90 over its full run vs (a): **{d['p90'] / a['p90']:.2f}×**"
        + (f", paired **{d['paired']:.2f}×**" if d.get("paired") else "")
        + f" ({'confirmed' if d_ok else 'NOT confirmed: no full run at or above the floor kept the goal'}"
        + (", judged paired" if d.get("paired") else "") + ").",
        *([f"- Paired yardstick (--pause {args.pause}): (c) and (d)'s full runs were stopped (SIGSTOP) for "
           f"{args.pause_for:.0f} s every {args.pause_every:.0f} s; pgbench's transactions that ended during a pause, "
           f"from {PAUSE_SETTLE:.0f} s after it began, are pgbench alone at the same minutes as the run, and the run's "
           "own p90 counts the transactions that ended while the engine ran. It cancels live traffic's drift from one "
           "minute to the next, which (a) measured minutes earlier cannot. Its biases: writes the backfill left "
           "(dirty pages, WAL) are still flushed during a pause, and the engine resumes with its batches in flight."]
          if c.get("paired") or d.get("paired") else []),
        *([f"- pgbench alone again right after (c) ({args.alone_after:.0f} s): p90 {res['a2']['p90']:.2f} ms, "
           f"{res['a2']['p90'] / a['p90']:.2f}× (a)'s: live latency's own drift over the run, for reading the ratios "
           f"(the goal stays against (a)); (c) against it: {c['p90'] / res['a2']['p90']:.2f}×."]
          if "a2" in res else []),
        *([f"- (a)'s first {FIRST:.0f} s alone (the whole yardstick before 2026-12-07 16:00): p90 "
           f"{a['first_p90']:.2f} ms, {a['first_p90'] / a['p90']:.2f}× (a)'s; (c) against it: "
           f"{c['p90'] / a['first_p90']:.2f}×, (d): {d['p90'] / a['first_p90']:.2f}×."]
          if a.get("first_p90") else []),
        *([f"- pgbench during (c)'s own baseline ({c['start'] - c['t0']:.0f} s with the engine started and no batch "
           f"running, {c['rest_n']} transactions): p90 {c['rest_p90']:.2f} ms, {c['rest_p90'] / a['p90']:.2f}× (a)'s; "
           f"(c) against it: {c['p90'] / c['rest_p90']:.2f}×."]
          if c.get("rest_p90") else []),
        f"- (d) search: {args.steps} trials of {args.trial:.0f} s, goal p90 ≤ {goal:.2f} ms: "
        + ", ".join(f"{int(m):,}/s → {q:.2f} ms {'ok' if ok else 'over'}" for m, q, ok in trials)
        + "; confirmed over full runs: "
        + ", ".join(f"{int(m):,}/s → {r['p90']:.2f} ms in {r['secs']:.1f} s {'ok' if ok else 'over'}" for m, r, ok in confirms),
        f"- Adaptive rate in (c): {c_summary}.",
        "",
    ]
    section = "\n".join(L)
    text = args.output.read_text() if args.output.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = text.split(BEGIN)[0] + BEGIN + "\n" + section + END + text.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + section + END + "\n"
    args.output.write_text(text)
    print(section)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()

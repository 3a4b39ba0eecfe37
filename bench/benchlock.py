"""One benchmark at a time on this machine.

Two benchmark runs at once skew each other's timings and, from one checkout, overwrite each
other's results and databases. Every benchmark script takes this lock first: an exclusive
`flock` on one file per machine (`$BACKFILL_BENCH_LOCK`, default
`/tmp/backfill-bench.lock`), held until the process exits (the kernel releases it even after a
crash or SIGKILL). A second run fails at once, naming the run that holds it. Scripts that a
holder starts (bench/run --suite live runs bench/live_latency.py) inherit the lock.
"""

import fcntl
import os
import sys
import time

_held = None


def hold(name):
    """Takes the machine's benchmark lock for the rest of this process, or exits 1."""
    global _held
    if os.environ.get("BACKFILL_BENCH_LOCK_HELD"):
        # Started by a benchmark script that holds the lock (bench/run --suite live|skew).
        return
    path = os.environ.get("BACKFILL_BENCH_LOCK", "/tmp/backfill-bench.lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        sys.exit(
            f"error: another benchmark is running on this machine ({holder}); "
            f"two at once would skew both and overwrite each other's results.\n"
            f"hint: wait for it to finish (the lock is {path})"
        )
    f.seek(0)
    f.truncate()
    f.write(f"{name}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held = f
    os.environ["BACKFILL_BENCH_LOCK_HELD"] = str(os.getpid())

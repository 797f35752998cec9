"""autosave: what saving every PV to SQLite costs, and how fast a relay comes back.

relayd saves every PV by default (SQLite, written every --autosave-interval seconds by
a thread off the hot path) and restores them before it serves. Two measurements:

* cost: the zmq_batch100 load (batches of 100 over 1000 scalar PVs, C monitor) on a
  relayd with autosave (the default) and on one started with --no-autosave, in turn.
  Target: autosave costs at most 10% of throughput (ratio on/off >= 0.9).
* restore: a relayd creates N PVs (100,000 full, 5,000 quick) through ZMQ, is told
  to stop (SIGTERM: it writes what is pending), and a new relayd with the same prefix
  and file is started; the figure is the time from starting it until both children
  report ready (restore happens before the CA server serves). The new relay must then
  hold N PVs, report N restored, and serve the values sent. Target: <= 3 s at 100,000.
  Baseline: a plain pcaspy server started with N static PVs, start to serving.

Without autosave in relayd (before issue 5) the scenario reports itself as skipped.
"""

from __future__ import annotations

import subprocess
import time

from bench.procs import PYTHON, REPO, RunFailure
from bench.report import Figure, Target, failed
from bench.scenarios.common import (
    MONITOR, PATTERN, Context, Load, cpu_row, create_pvs, interleave, max_pvs, status,
    stream_run, values, wait_status,
)

N = 1000
RESTORE_PATTERN = "rst%d_f1"


def has_autosave() -> bool:
    """True when ``relayd --help`` offers autosave."""
    done = subprocess.run([PYTHON, "-m", "relayd", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=30)
    return "--no-autosave" in done.stdout


def _restore(ctx: Context, n: int) -> dict:
    prefix = ctx.prefix("a")
    first = ctx.relay(prefix=prefix, args=max_pvs(n))
    try:
        create_pvs(ctx, first, RESTORE_PATTERN, n)
    finally:
        code = first.stop()
    if code != 0:
        raise RunFailure(f"relayd {prefix} exited with {code} when told to stop")
    second = ctx.relay(prefix=prefix, args=max_pvs(n))
    try:
        got = status(ctx, second, "pvs", "autosave:restored")
        last = ctx.clients.get(second, RESTORE_PATTERN % (n - 1))[RESTORE_PATTERN % (n - 1)]
        ok = got["pvs"] == n and got["autosave:restored"] == n and last == n - 1
        if not ok:
            raise RunFailure(f"after restart relayd {prefix} holds {got['pvs']} PVs, "
                             f"restored {got['autosave:restored']}, last value {last} "
                             f"(expected {n}, {n}, {n - 1})")
        return {"ready_s": second.ready_s, "first_ready_s": first.ready_s, **got}
    finally:
        second.stop()


def _plain_start(ctx: Context, n: int) -> dict:
    started = time.monotonic()
    plain = ctx.baseline("driver", n, pattern=RESTORE_PATTERN)
    try:
        return {"ready_s": time.monotonic() - started, "create_s": plain.ready["create_s"]}
    finally:
        plain.stop()


def autosave(ctx: Context) -> tuple[list[Figure], dict]:
    if not has_autosave():
        return [failed("autosave", "relayd has no autosave yet (issue 5): restore time and "
                       "autosave cost are not measured", status="skipped")], {}
    n = ctx.size(5_000, 100_000)
    updates = ctx.size(60_000, 2_000_000)
    on = ctx.relay()
    off = ctx.relay(args=["--no-autosave"])
    for relay in (on, off):
        create_pvs(ctx, relay, PATTERN, N)
    wait_status(ctx, on, "autosave:enabled", 1, timeout=10)
    load = Load(updates, 100)
    runs = interleave(ctx.reps, {
        "autosave on": lambda rep: stream_run(ctx, on, N, load, first_value=1 + rep * 1e7,
                                              accepted=True),
        "autosave off": lambda rep: stream_run(ctx, off, N, load, first_value=1 + rep * 1e7,
                                               accepted=True),
        "restore": lambda rep: _restore(ctx, n),
        "plain start": lambda rep: _plain_start(ctx, n),
    }, ctx.log)
    saved = status(ctx, on, "autosave:failures", "autosave:lastSave")
    name = "autosave"
    label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    figures = [
        Figure(name, "updates/s delivered (batch 100), autosave on", "/s", MONITOR,
               values(runs["autosave on"], "rate"), "relayd --no-autosave",
               values(runs["autosave off"], "rate"), MONITOR,
               targets=[Target(">=", 0.9, on="ratio", text="ratio >= 0.9")]),
        cpu_row(name, "delivered event, autosave on", runs["autosave on"],
                "relayd --no-autosave", runs["autosave off"]),
        Figure(name, "delivered fraction, autosave on", "", MONITOR,
               values(runs["autosave on"], "delivered"), targets=[Target(">=", 1.0, text="== 1")]),
        Figure(name, f"restart with {label} PVs restored: start to ready", "s",
               "relayd log + C get (libca)", values(runs["restore"], "ready_s"),
               f"plain pcaspy, {label} static PVs: start to serving",
               values(runs["plain start"], "ready_s"),
               targets=[Target("<=", 3.0, text="<= 3 s @100k", applies=n >= 100_000)]),
    ]
    runs["autosave status at the end"] = [saved]
    return figures, runs

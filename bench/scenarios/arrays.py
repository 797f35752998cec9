"""arrays: 10 PVs x 10,000 float64, packed arrays via ZMQ to the C monitor.

The pusher sends one packed array (msgpack bin, dtype <f8, 80 kB) per message,
round-robin over 10 PVs named ``arr<i>_f10000``; element 0 carries a sequence number so
the monitor can check it ends on the last array sent. The monitor subscribes with
count 10000 (DBR_TIME_DOUBLE) and counts events; the figure is MB/s delivered
(events x 80,000 bytes / first-to-last arrival, 1 MB = 1e6 bytes).

Baselines: the direct-post ceiling posting 10,000-element arrays from an in-process
loop the cheapest way (bench/direct_post.py: each array copied once, straight into a
reused gdd's buffer), and the pcaspy Driver via ZMQ (decode, setParam copies the array,
updatePVs). Target (issue 14): at least 0.60 of the ceiling. CPU per delivered array,
every process of each server.
"""

from __future__ import annotations

from bench.report import Figure, Target
from bench.scenarios.common import (
    CEILING, MONITOR, Context, Load, cpu_row, create_pvs, interleave, loop_run, stream_run,
    values,
)

N = 10
COUNT = 10_000
PATTERN = "arr%d_f10000"


def arrays(ctx: Context) -> tuple[list[Figure], dict]:
    messages = ctx.size(3_000, 30_000)
    driver_messages = ctx.size(1_000, 10_000)  # the Driver is slow: fewer, same rate
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N, count=COUNT)
    direct = ctx.baseline("direct", N, count=COUNT, pattern=PATTERN)
    driver = ctx.baseline("driver", N, count=COUNT, zmq=True, pattern=PATTERN)
    load = Load(messages, 1, count=COUNT)
    driver_load = Load(driver_messages, 1, count=COUNT)
    runs = interleave(ctx.reps, {
        "relayd": lambda rep: stream_run(ctx, relay, N, load, base_pattern=PATTERN,
                                         first_value=1 + rep * 1e7, accepted=True),
        "direct": lambda rep: loop_run(ctx, direct, N, messages, count=COUNT,
                                       base_pattern=PATTERN),
        "driver": lambda rep: stream_run(ctx, driver, N, driver_load, base_pattern=PATTERN,
                                         first_value=1 + rep * 1e7),
    }, ctx.log)
    mbs = values(runs["relayd"], "mb_per_s")
    name = "arrays"
    what = f"MB/s delivered ({N} x {COUNT} float64)"
    figures = [
        Figure(name, what, "MB/s", MONITOR, mbs, CEILING, values(runs["direct"], "mb_per_s"),
               MONITOR, targets=[Target(">=", 500, text=">= 500 MB/s"),
                                 Target(">=", 0.60, on="ratio", text="ratio >= 0.60")]),
        Figure(name, what, "MB/s", MONITOR, mbs, "pcaspy Driver via ZMQ",
               values(runs["driver"], "mb_per_s"), MONITOR),
        cpu_row(name, "delivered array", runs["relayd"], CEILING, runs["direct"]),
        cpu_row(name, "delivered array", runs["relayd"], "pcaspy Driver via ZMQ", runs["driver"]),
        Figure(name, "delivered fraction (events/arrays)", "", MONITOR,
               values(runs["relayd"], "delivered"), "pcaspy Driver via ZMQ",
               values(runs["driver"], "delivered"), MONITOR,
               targets=[Target(">=", 1.0, text="== 1")]),
        Figure(name, "monitor ends on last array (fraction of PVs)", "", MONITOR,
               values(runs["relayd"], "last_ok"), targets=[Target(">=", 1.0, text="== 1")]),
    ]
    return figures, runs

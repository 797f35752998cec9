"""conflation: 10 hot PVs updated faster than monitors could take every value.

The pusher sends batches of 100 updates over only 10 PVs (10 updates per PV per
message) as fast as ZeroMQ takes them. relayd posts one event per PV per batch, so the
figure is *accepted* updates per second: all updates sent, divided by the time from the
first send to the last monitor event (the last batch applied). Correctness: status:accepted
grows by every update, and the monitor's last value of each PV is the last value sent.

Baselines: the pcaspy Driver via ZMQ (setParam per update, updatePVs per message), the
direct-post server via ZMQ (one post per touched PV per message: relayd's design without
the pipe and the second process, posting the cheapest way: bench/direct_post.py), and
ZMQ+msgpack alone (decode only, no CA). CPU per accepted update, every process.
"""

from __future__ import annotations

from bench.procs import sink_start
from bench.report import Figure, Target
from bench.scenarios.common import (
    DIRECT_ZMQ, MONITOR, PATTERN, SINK, Context, Load, cpu_row, create_pvs, interleave, sink_run,
    stream_run, values,
)

N = 10
BATCH = 100


def conflation(ctx: Context) -> tuple[list[Figure], dict]:
    updates = ctx.size(300_000, 5_000_000)
    baseline_updates = ctx.size(100_000, 1_000_000)
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    driver = ctx.baseline("driver", N, zmq=True)
    direct = ctx.baseline("direct", N, zmq=True)

    def run(server, count, accepted=False):
        return lambda rep: stream_run(ctx, server, N, Load(count, BATCH), expect=False,
                                      first_value=1 + rep * 1e8, accepted=accepted)

    variants = {
        "relayd": run(relay, updates, accepted=True),
        "driver": run(driver, baseline_updates),
        "direct": run(direct, baseline_updates),
    }
    if not ctx.quick:  # the ZMQ-alone row is context, not a target: full mode only
        sink, sink_endpoint = sink_start(ctx.procs)
        variants["zmq"] = lambda rep: sink_run(ctx, sink, sink_endpoint, N, Load(updates, BATCH))
    runs = interleave(ctx.reps, variants, ctx.log)
    accepted = values(runs["relayd"], "accept_rate")
    name = "conflation"
    what = f"updates/s accepted ({N} PVs, batch {BATCH})"
    figures = [
        Figure(name, what, "/s", MONITOR, accepted, "pcaspy Driver via ZMQ",
               values(runs["driver"], "accept_rate"), MONITOR,
               targets=[Target(">=", 500e3, text=">= 500k/s")]),
        Figure(name, what, "/s", MONITOR, accepted, DIRECT_ZMQ,
               values(runs["direct"], "accept_rate"), MONITOR),
        *([Figure(name, what, "/s", MONITOR, accepted, "ZMQ+msgpack alone (no CA)",
                  values(runs["zmq"], "rate"), SINK)] if "zmq" in runs else []),
        cpu_row(name, "accepted update", runs["relayd"], DIRECT_ZMQ,
                runs["direct"], key="cpu_us_per_update"),
        cpu_row(name, "accepted update", runs["relayd"], "pcaspy Driver via ZMQ",
                runs["driver"], key="cpu_us_per_update"),
        Figure(name, "monitor ends on last value (fraction of PVs)", "", MONITOR,
               values(runs["relayd"], "last_ok"), "pcaspy Driver via ZMQ",
               values(runs["driver"], "last_ok"), MONITOR, targets=[Target(">=", 1.0, text="== 1")]),
        Figure(name, "accepted fraction (status:accepted)", "", "C get (libca)",
               values(runs["relayd"], "accepted"), targets=[Target(">=", 1.0, text="== 1")]),
    ]
    return figures, runs

"""zmq_batch100 and zmq_single: ZMQ -> CA monitor throughput, every update delivered.

A pusher process sends round-robin updates of 1000 scalar PVs (batches of 100, or one
update per message) as fast as ZeroMQ takes them; the C monitor, subscribed to all 1000,
counts events. The figure is events per second at the monitor, first to last arrival.
Every update must arrive (events == updates: the delivered fraction) and be accepted
(relayd's status:accepted grows by exactly the updates sent).

Baselines, same invocation, same monitor:
* direct-post ceiling: casPV objects posting from an in-process loop with the cheapest
  calls pcas allows (bench/direct_post.py: raw SWIG, one time stamp per round, reused
  gdds), the most the CA layer can deliver from Python; the target ratios are taken
  against it;
* direct-post via ZMQ: the same server fed by the pusher (msgpack decode, one time stamp
  per message, each touched PV posted once): relayd's work in one process, without the
  pipe and the second process;
* pcaspy Driver via ZMQ: what a user would write (msgpack decode, setParam per update,
  updatePVs per message);
* ZMQ+msgpack alone: the same pusher into a PULL socket that only decodes (no CA).

CPU per delivered event (bench/cpu.py): every relayd process together (supervisor, CA
process, ingest worker) against the ceiling's one process, the figure to steer by on a
shared machine. Targets (issue 14): batches of 100 at most 1.0x the ceiling's CPU and at
least 0.90 of its events/s; one update per message at most 1.5x and at least 0.60.
"""

from __future__ import annotations

from bench.procs import sink_start
from bench.report import Figure, Target
from bench.scenarios.common import (
    CEILING, DIRECT_ZMQ, MONITOR, PATTERN, SINK, Context, Load, cpu_row, create_pvs, interleave, loop_run,
    sink_run, stream_run, values,
)

N = 1000


def zmq_batch100(ctx: Context) -> tuple[list[Figure], dict]:
    return _throughput(ctx, "zmq_batch100", batch=100,
                       updates=ctx.size(100_000, 2_000_000),
                       driver_updates=ctx.size(50_000, 500_000),
                       targets=[Target(">=", 250e3, text=">= 250k/s"),
                                Target(">=", 0.90, on="ratio", text="ratio >= 0.90")],
                       cpu_limit=1.0)


def zmq_single(ctx: Context) -> tuple[list[Figure], dict]:
    # The naive Driver calls updatePVs (a walk over all 1000 PVs) per message: it gets
    # a shorter load so that it does not dominate the run time.
    return _throughput(ctx, "zmq_single", batch=1,
                       updates=ctx.size(60_000, 1_000_000),
                       driver_updates=ctx.size(6_000, 50_000),
                       targets=[Target(">=", 100e3, text=">= 100k msgs/s"),
                                Target(">=", 0.60, on="ratio", text="ratio >= 0.60")],
                       cpu_limit=1.5)


def _throughput(ctx: Context, name: str, batch: int, updates: int, driver_updates: int,
                targets: list[Target], cpu_limit: float) -> tuple[list[Figure], dict]:
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    direct = ctx.baseline("direct", N, zmq=True)  # posts from its loop, or fed by ZMQ
    driver = ctx.baseline("driver", N, zmq=True)
    load = Load(updates, batch)
    variants = {
        "relayd": lambda rep: stream_run(ctx, relay, N, load, first_value=1 + rep * 1e7,
                                         accepted=True),
        "direct": lambda rep: loop_run(ctx, direct, N, updates),
        "direct zmq": lambda rep: stream_run(ctx, direct, N, load, first_value=1 + rep * 1e7),
        "driver": lambda rep: stream_run(ctx, driver, N, Load(driver_updates, batch),
                                         first_value=1 + rep * 1e7),
    }
    if not ctx.quick:  # the ZMQ-alone row is context, not a target: full mode only
        sink, sink_endpoint = sink_start(ctx.procs)
        variants["zmq"] = lambda rep: sink_run(ctx, sink, sink_endpoint, N, load)
    runs = interleave(ctx.reps, variants, ctx.log)
    return _figures(name, batch, runs, targets, cpu_limit), runs


def _figures(name: str, batch: int, runs: dict, targets: list[Target],
             cpu_limit: float) -> list[Figure]:
    rates = values(runs["relayd"], "rate")
    what = f"updates/s delivered (batch {batch})"
    cpu_target = Target("<=", cpu_limit, on="ratio", text=f"ratio <= {cpu_limit:.1f}")
    return [
        Figure(name, what, "/s", MONITOR, rates, CEILING, values(runs["direct"], "rate"),
               MONITOR, targets=targets),
        Figure(name, what, "/s", MONITOR, rates, DIRECT_ZMQ, values(runs["direct zmq"], "rate"),
               MONITOR),
        Figure(name, what, "/s", MONITOR, rates, "pcaspy Driver via ZMQ",
               values(runs["driver"], "rate"), MONITOR),
        *([Figure(name, what, "/s", MONITOR, rates, "ZMQ+msgpack alone (no CA)",
                  values(runs["zmq"], "rate"), SINK)] if "zmq" in runs else []),
        cpu_row(name, "delivered event", runs["relayd"], CEILING, runs["direct"],
                targets=[cpu_target]),
        cpu_row(name, "delivered event", runs["relayd"], DIRECT_ZMQ, runs["direct zmq"]),
        cpu_row(name, "delivered event", runs["relayd"], "pcaspy Driver via ZMQ", runs["driver"]),
        Figure(name, "delivered fraction (events/updates)", "", MONITOR,
               values(runs["relayd"], "delivered"), "pcaspy Driver via ZMQ",
               values(runs["driver"], "delivered"), MONITOR,
               targets=[Target(">=", 1.0, text="== 1")]),
        Figure(name, "accepted fraction (status:accepted)", "", "C get (libca)",
               values(runs["relayd"], "accepted"), targets=[Target(">=", 1.0, text="== 1")]),
        Figure(name, "monitor ends on last value (fraction of PVs)", "", MONITOR,
               values(runs["relayd"], "last_ok"), "pcaspy Driver via ZMQ",
               values(runs["driver"], "last_ok"), MONITOR,
               targets=[Target(">=", 1.0, text="== 1")]),
    ]

"""caget_under_load: CA reads stay fast while relayd ingests as hard as it can.

The heaviest sustained ingest of the suite runs for a while: batches of 100 updates
round-robin over 1000 scalar PVs, pushed as fast as ZeroMQ takes them, with the C
monitor subscribed to all 1000 (so every update is also a posted event). Meanwhile the
C get client reads relayd's status:uptime PV every 10 ms (ca_array_get + ca_pend_io, one
round trip each) and times every read. Target: every read answered within 20 ms (CA
service never starved by ingest).

Baselines: the pcaspy Driver via ZMQ under the same load, reading one of its PVs that
the load does not touch; and relayd with no load, which shows what a read costs when
nothing competes (on 2 cores, under load the reading client also waits for a CPU). The scale scenario also reports the reads of status:pvs made
while 100,000 PVs are being created.
"""

from __future__ import annotations

import time

from bench.report import Figure, Target
from bench.scenarios.common import (
    GET, MONITOR, PATTERN, Context, create_pvs, full_pattern, interleave,
)

N = 1000
BATCH = 100
INTERVAL_MS = 10


def _run(ctx: Context, server, read_pv: str, duration: float) -> dict:
    # The monitor is there to make every update a posted event; it must not stop early
    # because the stream paused (a pause is what this scenario looks for).
    monitor, _ = ctx.clients.monitor(server, PATTERN, N, deadline_s=duration + 60,
                                     quiet_ms=500)
    pusher = ctx.clients.pusher(server.endpoint, full_pattern(server, PATTERN), N,
                                batch=BATCH, duration=duration)
    pusher.wait_line("SENDING", 60)
    time.sleep(0.3)  # let the load reach its steady state
    reads = max(30, int((duration - 0.5) * 1000 / INTERVAL_MS))
    got = ctx.clients.get_reads(server, read_pv, reads, INTERVAL_MS).result(duration + 60)
    sent = pusher.result(duration + 60)
    seen = monitor.result(duration + 120)
    latency = got["latency"]
    return {"get": got, "load_rate": seen["rate"], "events": seen["events"],
            "updates": sent["updates"], "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
            "max_ms": latency["max_ms"], "over_20ms": got["over_20ms"], "failed": got["failed"]}


def _idle(ctx: Context, server, read_pv: str, duration: float) -> dict:
    reads = int(duration * 1000 / INTERVAL_MS)
    got = ctx.clients.get_reads(server, read_pv, reads, INTERVAL_MS).result(duration + 60)
    latency = got["latency"]
    return {"get": got, "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
            "max_ms": latency["max_ms"]}


def caget_under_load(ctx: Context) -> tuple[list[Figure], dict]:
    duration = ctx.size(0.8, 10.0)
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    driver = ctx.baseline("driver", N, zmq=True)
    runs = interleave(ctx.reps, {
        "relayd": lambda rep: _run(ctx, relay, "status:uptime", duration),
        "driver": lambda rep: _run(ctx, driver, "status_f1", duration),
        "relayd idle": lambda rep: _idle(ctx, relay, "status:uptime", duration / 2),
    }, ctx.log)

    def v(variant: str, key: str) -> list[float]:
        return [run[key] for run in runs[variant]]

    name = "caget_under_load"
    base = "pcaspy Driver via ZMQ, same load"
    figures = [
        Figure(name, "read latency max (batch-100 ingest)", "ms", GET, v("relayd", "max_ms"),
               base, v("driver", "max_ms"), targets=[Target("<=", 20, text="<= 20 ms")]),
        Figure(name, "read latency p99", "ms", GET, v("relayd", "p99_ms"), base, v("driver", "p99_ms")),
        Figure(name, "read latency p50", "ms", GET, v("relayd", "p50_ms"), base, v("driver", "p50_ms")),
        Figure(name, "read latency p50", "ms", GET, v("relayd", "p50_ms"), "relayd idle (no load)",
               v("relayd idle", "p50_ms")),
        Figure(name, "reads over 20 ms (+ failed)", "", GET,
               [a + b for a, b in zip(v("relayd", "over_20ms"), v("relayd", "failed"))], base,
               [a + b for a, b in zip(v("driver", "over_20ms"), v("driver", "failed"))],
               targets=[Target("<=", 0, text="0")]),
        Figure(name, "events/s delivered during the reads", "/s", MONITOR, v("relayd", "load_rate"),
               base, v("driver", "load_rate")),
    ]
    return figures, runs

"""latency: how long an update takes from its sender to a monitoring client.

Two paths, each at 1,000 updates per second round-robin over 1000 scalar PVs, so the
servers are nearly idle and the figure is the path's own delay, not queueing:

* ZMQ push -> monitor event: the pusher sends one update per message whose value is
  time.time() at sending; the C monitor subtracts it from the arrival time (same host,
  same clock). Baselines: the direct-post server fed by ZMQ (one process: the shortest a
  Python relay could be) and ZMQ+msgpack alone (PUSH -> PULL -> decode, no CA).
* CA put -> monitor event on another client: the C put client puts its CLOCK_REALTIME
  send time (no callback, one flush per put) and the C monitor measures the same way.
  Baseline: a plain pcaspy server (SimpleServer + Driver, pcaspy's own write path).

Each run gives a distribution; the figures are the medians over runs of its p50 and p99.
"""

from __future__ import annotations

from bench.procs import sink_start
from bench.report import Figure, Target
from bench.scenarios.common import (
    MONITOR, PATTERN, PUT, SINK, Context, Load, create_pvs, interleave, sink_run, stream_run,
)

N = 1000
RATE = 1000


def _zmq_run(ctx: Context, server, updates: int) -> dict:
    out = stream_run(ctx, server, N, Load(updates, 1, rate=RATE, value="time"), latency=True)
    return _percentiles(out, out["monitor"]["latency"])


def _sink(ctx: Context, sink, endpoint: str, updates: int) -> dict:
    out = sink_run(ctx, sink, endpoint, N, Load(updates, 1, rate=RATE, value="time"))
    return _percentiles(out, out["sink"]["latency"])


def _ca_run(ctx: Context, server, puts: int) -> dict:
    monitor, _ = ctx.clients.monitor(server, PATTERN, N, latency=True, expect=puts,
                                     quiet_ms=ctx.quiet_ms)
    put = ctx.clients.put(server, PATTERN, N, puts, mode="rate", rate=RATE, value="time")
    sent = put.result(puts / RATE + 60)
    seen = monitor.result(60)
    out = {"put": sent, "monitor": {k: v for k, v in seen.items()
                                    if k not in ("last_values", "pv_events")},
           "delivered": seen["events"] / puts}
    return _percentiles(out, seen["latency"])


def _percentiles(out: dict, latency: dict) -> dict:
    out.update(p50_ms=latency["p50_ms"], p99_ms=latency["p99_ms"], max_ms=latency["max_ms"])
    return out


def latency(ctx: Context) -> tuple[list[Figure], dict]:
    updates = int(RATE * ctx.size(0.8, 10))
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    direct = ctx.baseline("direct", N, zmq=True)
    plain = ctx.baseline("driver", N, label="plain pcaspy")
    variants = {
        "relayd zmq": lambda rep: _zmq_run(ctx, relay, updates),
        "direct zmq": lambda rep: _zmq_run(ctx, direct, updates),
        "relayd ca": lambda rep: _ca_run(ctx, relay, updates),
        "plain ca": lambda rep: _ca_run(ctx, plain, updates),
    }
    if not ctx.quick:  # the ZMQ-alone row is context, not a target: full mode only
        sink, sink_endpoint = sink_start(ctx.procs, latency=True)
        variants["zmq alone"] = lambda rep: _sink(ctx, sink, sink_endpoint, updates)
    runs = interleave(ctx.reps, variants, ctx.log)

    def v(variant: str, key: str) -> list[float]:
        return [run[key] for run in runs[variant]]

    name = "latency"
    figures = [
        Figure(name, "ZMQ push -> event p50 (1k/s)", "ms", MONITOR, v("relayd zmq", "p50_ms"),
               "direct-post via ZMQ", v("direct zmq", "p50_ms"), MONITOR,
               targets=[Target("<=", 0.5, text="<= 0.5 ms"),
                        Target("<=", 1.5, on="ratio", text="ratio <= 1.5")]),
        Figure(name, "ZMQ push -> event p99 (1k/s)", "ms", MONITOR, v("relayd zmq", "p99_ms"),
               "direct-post via ZMQ", v("direct zmq", "p99_ms"), MONITOR,
               targets=[Target("<=", 1.0, text="<= 1 ms"),
                        Target("<=", 2.0, on="ratio", text="ratio <= 2")]),
        *([Figure(name, "ZMQ push -> event p50 (1k/s)", "ms", MONITOR, v("relayd zmq", "p50_ms"),
                  "ZMQ+msgpack alone (no CA)", v("zmq alone", "p50_ms"), SINK)]
          if "zmq alone" in runs else []),
        Figure(name, "ZMQ push -> event max (1k/s)", "ms", MONITOR, v("relayd zmq", "max_ms"),
               "direct-post via ZMQ", v("direct zmq", "max_ms"), MONITOR),
        Figure(name, "CA put -> event p50 (1k/s)", "ms", f"{PUT} + {MONITOR}",
               v("relayd ca", "p50_ms"), "plain pcaspy", v("plain ca", "p50_ms"),
               targets=[Target("<=", 1.10, on="ratio", text="ratio <= 1.10")]),
        Figure(name, "CA put -> event p99 (1k/s)", "ms", f"{PUT} + {MONITOR}",
               v("relayd ca", "p99_ms"), "plain pcaspy", v("plain ca", "p99_ms"),
               targets=[Target("<=", 1.10, on="ratio", text="ratio <= 1.10")]),
        Figure(name, "delivered fraction (ZMQ, CA)", "", MONITOR,
               [min(a, b) for a, b in zip(v("relayd zmq", "delivered"), v("relayd ca", "delivered"))],
               targets=[Target(">=", 1.0, text="== 1")]),
    ]
    return figures, runs

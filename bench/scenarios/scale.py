"""scale: one relay with many PVs (100,000 in full mode, 5,000 in quick mode).

Per run, on a fresh relayd (``--max-pvs`` above N + K, so that K more can be created
over CA; a refused creation fails the run, see `common.create_pvs`):

1. N scalar PVs are created through ZMQ (batches of 1000): seconds from the first send
   until status:pvs reads N (the C get client polls it every 5 ms; status PVs are
   computed when read).
2. The bench waits until autosave has written the N new PVs to its file
   (`common.wait_saved`; for 100,000 PVs ~1.5 s of the CA process's CPU): every later
   step would otherwise measure the tail of that work too, and N/10 PVs have a tenth of
   it. This, not the size of the relay, was the "slowdown with size" of CA creation.
3. RSS of the CA process (the child titled "relayd: ca-server", from /proc) once the
   PVs exist, and per PV above the RSS of the empty relay. The poller's reads of
   status:pvs during the creation are timed too (CA service while PVs are created).
4. The C connect client creates N channels and times until all are connected; the RSS
   after it has disconnected again (pcas keeps what channels allocated).
5. The C put client creates K new PVs over CA (search, connect, put with callback to K
   new names): PVs/s, and relayd's CPU per PV created (every process).

Before step 5 the bench waits until the relay is idle (`common.quiesce`): the connect
client's 100,000 channels are torn down after it exits, ~120 ms of the CA process's CPU
that a creation started at once would be charged with.

A second fresh relayd holds N/10 PVs, goes through the same steps (autosave settled, a
client connected to all of them, idle) and creates the same K over CA: creation over CA
must not slow down as the relay grows (rate at N vs rate at N/10).

Baseline: a plain pcaspy server with N static PVs (SimpleServer.createPV, timed in its
own process; its RSS; the same connect-all), and connect + put of K of its existing PVs
by the same C put client: what search + connect + put cost in the CA layer alone.
The 3 s / 250 MB / 5 s targets are for N = 100,000 and are judged only then.
"""

from __future__ import annotations

import time

from bench.procs import RunFailure, rss_bytes
from bench.report import Figure, Target
from bench.scenarios.common import (
    CONNECT, CPU, PROC, PUT, Context, cpu_figures, cpu_meter, create_pvs, interleave, max_pvs,
    quiesce, wait_saved,
)

PATTERN = "scale%d_f1"
MB = 1e6


def _settled_rss(pid: int, pause: float = 0.5) -> int:
    time.sleep(pause)
    return rss_bytes(pid)


def _create_over_ca(ctx: Context, server, tag: str, k: int) -> dict:
    meter = cpu_meter(server)
    result = ctx.clients.put(server, f"{tag}%d_f1", k, k, mode="create").result(300)
    if result["failures"] or result["exceptions"]:
        raise RunFailure(f"{server.label} {server.prefix} refused {result['failures']} of {k} "
                         f"creations over CA ({result['exceptions']} exceptions)")
    cpu = cpu_figures(server, meter, k, k)
    return {"create": result, "rate": result["rate"], "cpu_us": cpu["cpu_us_per_update"],
            "cpu_by_process": cpu["cpu_by_process"]}


def _big(ctx: Context, n: int, k: int, rep: int) -> dict:
    relay = ctx.relay("s", max_pvs(n + k))
    try:
        ca = relay.child("ca-server")
        empty = _settled_rss(ca, 0.3)
        poller: dict = {}
        create_s = create_pvs(ctx, relay, PATTERN, n, details=poller)
        saved_s = wait_saved(relay, n)
        rss = _settled_rss(ca)
        connect = _connect_all(ctx, relay, n)
        quiesce(relay)  # the connect client's channels are torn down after it exits
        created = _create_over_ca(ctx, relay, f"new{rep}x", k)
        return {"create_s": create_s, "saved_s": saved_s, "rss_empty": empty, "rss": rss,
                "kb_per_pv": (rss - empty) / n / 1e3, "connect": connect,
                "connect_s": connect["elapsed_s"], "rss_after_clients": _settled_rss(ca, 0.2),
                "ca_create": created["create"], "ca_rate": created["rate"],
                "ca_cpu_us": created["cpu_us"], "read_max_ms": poller["latency"]["max_ms"],
                "poller": poller}
    finally:
        relay.stop()


def _small(ctx: Context, n: int, k: int, rep: int) -> dict:
    relay = ctx.relay("s", max_pvs(n + k))
    try:
        create_pvs(ctx, relay, PATTERN, n // 10)
        wait_saved(relay, n // 10)
        _connect_all(ctx, relay, n // 10)
        quiesce(relay)
        created = _create_over_ca(ctx, relay, f"new{rep}x", k)
        return {"ca_create": created["create"], "ca_rate": created["rate"],
                "ca_cpu_us": created["cpu_us"]}
    finally:
        relay.stop()


def _plain(ctx: Context, n: int, k: int, rep: int) -> dict:
    plain = ctx.baseline("driver", n, pattern=PATTERN, label="plain pcaspy")
    try:
        rss = _settled_rss(plain.ready["pid"])
        connect = _connect_all(ctx, plain, n)
        rss_after_clients = _settled_rss(plain.ready["pid"], 0.2)
        # connect + put to K of its existing PVs: the CA layer's share of creating K
        existing = _create_over_ca(ctx, plain, "scale", k)
        return {"create_s": plain.ready["create_s"], "rss": rss, "connect": connect,
                "rss_after_clients": rss_after_clients,
                "connect_s": connect["elapsed_s"], "ca_create": existing["create"],
                "ca_rate": existing["rate"]}
    finally:
        plain.stop()


def _connect_all(ctx: Context, server, n: int) -> dict:
    """The C connect client's result for all n PVs; a failure if some did not connect."""
    connect = ctx.clients.connect(server, PATTERN, n)
    if not connect["complete"]:
        raise RunFailure(f"only {connect['connected']} of {n} channels connected "
                         f"within {connect['elapsed_s']:.1f} s")
    return connect


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def scale(ctx: Context) -> tuple[list[Figure], dict]:
    n = ctx.size(5_000, 100_000)
    k = ctx.size(1_000, 5_000)
    judged = n >= 100_000
    runs = interleave(ctx.reps, {
        "relayd N": lambda rep: _big(ctx, n, k, rep),
        "relayd N/10": lambda rep: _small(ctx, n, k, rep),
        "plain": lambda rep: _plain(ctx, n, k, rep),
    }, ctx.log)

    def v(variant: str, key: str, scale: float = 1.0) -> list[float]:
        return [run[key] / scale for run in runs[variant]]

    name = "scale"
    label, tenth = _count(n), _count(n // 10)
    figures = [
        Figure(name, f"create {label} PVs via ZMQ", "s", "C get (libca) + pusher",
               v("relayd N", "create_s"), "pcaspy createPV, in-process", v("plain", "create_s"),
               targets=[Target("<=", 3.0, text="<= 3 s @100k", applies=judged)]),
        Figure(name, f"CA process RSS, {label} PVs", "MB", PROC, v("relayd N", "rss", MB),
               "plain pcaspy, static PVs", v("plain", "rss", MB),
               targets=[Target("<=", 250, text="<= 250 MB @100k", applies=judged)]),
        Figure(name, "RSS per PV (above empty relay)", "kB", PROC, v("relayd N", "kb_per_pv"),
               targets=[Target("<=", 1.0, text="<= 1.0 kB @100k", applies=judged)]),
        Figure(name, f"CA process RSS after a client connected to all {label}", "MB", PROC,
               v("relayd N", "rss_after_clients", MB), "plain pcaspy, static PVs",
               v("plain", "rss_after_clients", MB),
               targets=[Target("<=", 250, text="<= 250 MB @100k", applies=judged)]),
        Figure(name, f"status read latency max while creating {label}", "ms", "C get (libca)",
               v("relayd N", "read_max_ms"), targets=[Target("<=", 20, text="<= 20 ms")]),
        Figure(name, f"connect all {label} (1 client)", "s", CONNECT, v("relayd N", "connect_s"),
               "plain pcaspy, static PVs", v("plain", "connect_s"),
               targets=[Target("<=", 5.0, text="<= 5 s @100k", applies=judged)]),
        Figure(name, f"create {k} PVs over CA, {tenth} existing", "PVs/s", PUT,
               v("relayd N/10", "ca_rate"), f"plain pcaspy: connect+put {k} existing",
               v("plain", "ca_rate"), targets=[Target(">=", 5000, text=">= 5k/s")]),
        Figure(name, f"create {k} PVs over CA, {label} existing", "PVs/s", PUT,
               v("relayd N", "ca_rate"), f"relayd, {tenth} existing", v("relayd N/10", "ca_rate"),
               targets=[Target(">=", 5000, text=">= 5k/s"),
                        Target(">=", 0.9, on="ratio", text="ratio >= 0.9")]),
        Figure(name, f"CPU per PV created over CA, {label} existing, all processes", "us", CPU,
               v("relayd N", "ca_cpu_us"), f"relayd, {tenth} existing", v("relayd N/10", "ca_cpu_us"),
               CPU),
        Figure(name, f"autosave of {label} new PVs done, after the creation", "s", "sqlite3 (file)",
               v("relayd N", "saved_s")),
    ]
    return figures, runs

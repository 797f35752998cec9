"""acks: acknowledged pushes (protocol version 2) next to fire-and-forget, same relay.

The acker (bench/acker.py) sends one update per request to relayd's ROUTER socket and
counts the verdicts: with one request in flight (each waits for the one before: the
round trip), and with a window of WINDOW in flight (the relay's own pace); both from a
bare DEALER socket, and the window once more through `relayd.client` (``ack=True``,
``put_async`` + ``flush``), and once asking for durability (each verdict waits for the
autosave commit). Its rate runs from the first send to the last verdict: every update
acknowledged is applied. The fire-and-forget figure is zmq_single's (one update per
PUSH message, counted at a C monitor) on the same relay in the same run.
"""

from __future__ import annotations

from bench.report import Figure
from bench.scenarios.common import (
    MONITOR, PATTERN, Context, Load, create_pvs, full_pattern, interleave, stream_run, values,
)

N = 1000
WINDOW = 64
ACKER = "python acker (DEALER)"
CLIENT = "relayd.client (ack=True)"


def _acked(ctx: Context, relay, updates: int, window: int, client: str = "raw",
           durable: bool = False) -> dict:
    run = ctx.clients.acker(relay.ack_endpoint, full_pattern(relay, PATTERN), N,
                            updates=updates, window=window, client=client,
                            durable=durable).result(300.0)
    return {"acker": run, "rate": run["rate"], "rtt_p50_ms": run["rtt_p50_ms"]}


def acks(ctx: Context) -> tuple[list[Figure], dict]:
    pushes = ctx.size(30_000, 500_000)
    one = ctx.size(2_000, 20_000)
    many = ctx.size(20_000, 300_000)
    relay = ctx.relay()
    create_pvs(ctx, relay, PATTERN, N)
    variants = {
        "push": lambda rep: stream_run(ctx, relay, N, Load(pushes, 1),
                                       first_value=1 + rep * 1e7),
        "ack 1": lambda rep: _acked(ctx, relay, one, 1),
        "ack window": lambda rep: _acked(ctx, relay, many, WINDOW),
        "client window": lambda rep: _acked(ctx, relay, many // 2, WINDOW, "relayd"),
        "durable window": lambda rep: _acked(ctx, relay, many // 4, WINDOW, durable=True),
        "durable 1": lambda rep: _acked(ctx, relay, one // 4, 1, durable=True),
    }
    runs = interleave(ctx.reps, variants, ctx.log)
    push = values(runs["push"], "rate")
    base = "fire-and-forget (batch 1), same relay"

    def row(figure: str, variant: str, client: str) -> Figure:
        return Figure("acks", figure, "/s", client, values(runs[variant], "rate"),
                      base, push, MONITOR)

    figures = [
        row("acknowledged updates/s, 1 in flight", "ack 1", ACKER),
        row(f"acknowledged updates/s, {WINDOW} in flight", "ack window", ACKER),
        row(f"acknowledged updates/s, {WINDOW} in flight, relayd.client", "client window",
            CLIENT),
        row(f"durable updates/s, {WINDOW} in flight", "durable window", ACKER),
        Figure("acks", "round trip p50, 1 in flight", "ms", ACKER,
               values(runs["ack 1"], "rtt_p50_ms")),
        Figure("acks", "durable round trip p50, 1 in flight", "ms", ACKER,
               values(runs["durable 1"], "rtt_p50_ms")),
    ]
    return figures, runs

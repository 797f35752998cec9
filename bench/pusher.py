"""The load generator: pushes updates over ZeroMQ, in a process of its own.

It speaks relayd's wire protocol (docs/PROTOCOL.md) with a bare PUSH socket and msgpack
rather than `relayd.client`: the client builds every update through
`protocol.encode_update` (name and value checks, a dict per update), which costs more
per update than relayd's ingest at the rates measured here, so it would measure itself.
Scalar messages are pre-encoded before the clock starts, from pre-packed pieces (one
name fragment per PV plus 9 bytes of float64), and checked once against msgpack's own
decoding. The same pusher feeds relayd and the ZMQ-fed baselines, so both get the very
same bytes.

    pusher.py --endpoint EP --pattern 'P:bench%d_f1' --n 1000 --updates U --batch B
              [--rate UPDATES_PER_S] [--duration S] [--value seq|time] [--count C]

* values: ``seq`` sends 1, 2, 3... (update k carries first_value + k), so the last
  value of each PV is known; ``time`` sends time.time() at the moment of sending (the
  latency scenarios: the C monitor subtracts it from the arrival time).
* ``--count C`` > 1 sends packed float64 arrays of C elements, element 0 the value.
* ``--start-at T`` waits, once ready to send, until the wall clock reads T (time.time()),
  so that several pushers start together (the fleet scenario).
* ``--rate`` paces messages; ``--duration`` repeats the pre-encoded messages until that
  many seconds have passed (a steady load; unpaced, what is still queued at the end is
  dropped, and "updates" counts what was handed to ZeroMQ).

Prints ``SENDING <time>`` when the first message goes out, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time

import msgpack
import zmq

CLIENT = "python pusher (raw zmq+msgpack)"
_FLOAT = struct.Struct(">Bd")
POOL_ROUNDS = 20  # a --duration run cycles through this many rounds over the PVs


def array_header(length: int) -> bytes:
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


class Encoder:
    """Builds protocol messages quickly: {"pv": name, "value": v} maps, alone or batched."""

    def __init__(self, names: list[str], count: int):
        self.names = names
        self.count = count
        # map of 2 entries, "pv", the name, "value": everything before the value's bytes
        self.heads = [b"\x82" + msgpack.packb("pv") + msgpack.packb(name) + msgpack.packb("value")
                      for name in names]
        if count > 1:
            import numpy as np  # only array runs pay for importing numpy

            self.template = np.zeros(count, dtype="<f8")
        else:
            self.template = None

    def value_bytes(self, value: float) -> bytes:
        if self.template is None:
            return _FLOAT.pack(0xCB, value)
        self.template[0] = value
        return msgpack.packb({"dtype": "<f8", "data": self.template.tobytes()})

    def update(self, index: int, value: float) -> bytes:
        return self.heads[index] + self.value_bytes(value)

    def message(self, updates: list[tuple[int, float]]) -> bytes:
        if len(updates) == 1:
            return self.update(*updates[0])
        return array_header(len(updates)) + b"".join(self.update(i, v) for i, v in updates)


def plan(index: int, n: int, total: int, batch: int, first_value: float) -> list[tuple[int, float]]:
    """Message `index` of a run: update k goes to PV k % n with value first_value + k."""
    start = index * batch
    return [(k % n, first_value + k) for k in range(start, min(start + batch, total))]


def last_values(n: int, updates: int, first_value: float) -> list[float | None]:
    """The value of the last update each PV gets from `plan` (None: it gets none)."""
    out: list[float | None] = []
    for i in range(n):
        last = i + ((updates - 1 - i) // n) * n if updates > i else None
        out.append(None if last is None else first_value + last)
    return out


def check(encoder: Encoder, message: bytes, updates: list[tuple[int, float]]) -> None:
    """The hand-built bytes decode to what msgpack would have built."""
    decoded = msgpack.unpackb(message, raw=False)
    decoded = decoded if isinstance(decoded, list) else [decoded]
    expected = [(encoder.names[i], v) for i, v in updates]
    got = [(u["pv"], u["value"] if encoder.count == 1 else
            struct.unpack_from("<d", u["value"]["data"])[0]) for u in decoded]
    if got != expected:
        raise SystemExit(f"pusher: encoder self-check failed: {got[:2]} != {expected[:2]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--pattern", required=True, help="printf pattern with one %%d")
    parser.add_argument("--n", type=int, required=True, help="number of PVs, round-robin")
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--updates", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="updates per second (0: max)")
    parser.add_argument("--duration", type=float, default=0.0)
    parser.add_argument("--value", choices=("seq", "time"), default="seq")
    parser.add_argument("--first-value", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--hwm", type=int, default=1000)
    parser.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at")
    args = parser.parse_args()

    names = [args.pattern % (args.start_index + i) for i in range(args.n)]
    encoder = Encoder(names, args.count)
    # A run of --updates sends exactly its plan, every value distinct and growing. A
    # --duration run cycles through POOL_ROUNDS rounds, so every PV's value keeps
    # changing (pcaspy's Driver posts nothing for an unchanged value).
    total = args.updates or args.n
    pool = POOL_ROUNDS * args.n * args.batch if args.duration > 0 else total
    count = -(-pool // args.batch)  # distinct messages
    sizes = [min(args.batch, pool - j * args.batch) for j in range(count)]
    lazy = args.value == "time" or args.count > 1  # built at send time
    t_encode = time.perf_counter()
    encoded = None
    if not lazy:
        encoded = [encoder.message(plan(j, args.n, pool, args.batch, args.first_value))
                   for j in range(count)]
        for j in (0, count - 1):
            check(encoder, encoded[j], plan(j, args.n, pool, args.batch, args.first_value))
    encode_s = time.perf_counter() - t_encode

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, args.hwm)
    # An unpaced --duration run is a load, not a delivery: what is still queued when the
    # time is up is dropped, so a slow server does not keep the run going while it drains.
    steady_load = args.duration > 0 and args.rate <= 0
    sock.setsockopt(zmq.LINGER, 0 if steady_load else -1)
    sock.connect(args.endpoint)
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))

    interval = args.batch / args.rate if args.rate > 0 else 0.0
    messages = updates = 0
    t_first = time.time()
    print(f"SENDING {t_first:.6f}", flush=True)
    start = time.monotonic()
    while (time.monotonic() - start < args.duration) if args.duration > 0 else updates < total:
        slot = messages % count
        if interval:
            delay = start + messages * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if encoded is not None:
            payload = encoded[slot]
        else:
            batch = plan(slot, args.n, pool, args.batch, args.first_value)
            if args.value == "time":
                now = time.time()
                batch = [(i, now) for i, _ in batch]
            payload = encoder.message(batch)
        sock.send(payload, copy=len(payload) < 65536)
        messages += 1
        updates += sizes[slot]
    t_last = time.time()
    finals = None
    if args.value == "seq" and not args.duration:
        finals = last_values(args.n, updates, args.first_value)
    sock.close()  # LINGER -1: returns once ZMQ has handed every message to the peer
    context.term()
    t_flushed = time.time()
    span = t_last - t_first
    print(json.dumps({
        "client": CLIENT, "messages": messages, "updates": updates, "batch": args.batch,
        "t_first": t_first, "t_last": t_last, "t_flushed": t_flushed,
        "send_rate": updates / span if span > 0 else None, "encode_s": encode_s,
        "last_values": finals,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

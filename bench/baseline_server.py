"""Baseline servers: what relayd's figures are compared with, each in a process of its own.

Kinds (``--kind``):

* ``driver``: the naive pcaspy way. ``SimpleServer.createPV`` of N static PVs and a
  ``Driver``; each update is ``setParam`` and each message (or in-process round) ends with
  ``updatePVs()``, as pcaspy's documentation shows. Served with ``server.process``.
  Without a feed this is also the "plain pcaspy server" that CA puts are compared with:
  pcaspy's own ``SimplePV.write`` -> ``Driver.write`` -> ``setParam`` -> ``updatePV``.
* ``direct``: the ceiling of the CA layer from Python (`bench.direct_post`): casPV
  objects of our own posting with raw SWIG calls, one time stamp per round or message,
  and gdds reused once pcas has sent them; no Driver, no Manager, no control gdd.
* ``zmq-sink``: the ceiling of ZeroMQ ingest: a PULL socket, msgpack decode, count. No CA.

Feeds: with ``--zmq-bind`` the server pulls messages in relayd's wire format (a map or an
array of maps; values floats or packed float64 arrays) and applies each message at once;
the in-process loop (stdin command ``loop U``) posts U updates as fast as it can, one
round over all N PVs between two ``cas.process(0)`` calls, so that no PV gets two events
in one processing cycle (pcas would merge them).

Talks to the harness on stdin/stdout: prints ``READY {json}`` when serving, ``DONE
{json}`` after each ``loop`` (and, for the sink, after each burst of messages that is
followed by ``--quiet-ms`` of silence); ``quit`` or EOF on stdin stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

from bench.stats import summarize_ms  # noqa: E402

MAX_UPDATES = 2000  # updates applied between two turns of the CA library (relayd's bound)
IDLE_POLL_MS = 5  # longest ZMQ wait while idle (CA requests wait at most this long)
STATUS_PV = "status_f1"  # a PV the load never touches, for read-latency probes


def stdin_commands() -> "queue.Queue[str]":
    """Lines from stdin, read by a thread so that the serving loop never blocks on them."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line.strip())
        lines.put("quit")

    threading.Thread(target=read, daemon=True).start()
    return lines


def say(tag: str, data: dict) -> None:
    print(f"{tag} {json.dumps(data)}", flush=True)


def decode(message: bytes) -> list[tuple[str, object]]:
    """(pv, value) of every update in one protocol message; packed arrays as numpy."""
    obj = msgpack.unpackb(message, raw=False)
    updates = obj if isinstance(obj, list) else [obj]
    out = []
    for update in updates:
        value = update["value"]
        if isinstance(value, dict):
            value = np.frombuffer(value["data"], dtype=value["dtype"])
        out.append((update["pv"], value))
    return out


# --- the two CA servers -------------------------------------------------------------------


class DriverServer:
    """SimpleServer + Driver over static PVs: the way pcaspy's documentation does it."""

    def __init__(self, prefix: str, names: list[str], count: int):
        from pcaspy import Driver, SimpleServer

        class EchoDriver(Driver):
            """pcaspy registers only subclasses of Driver (its metaclass skips Driver itself)."""

            def __init__(self):
                super().__init__()

        info = {"type": "float", "count": count} if count > 1 else {"type": "float"}
        pvdb = {name: dict(info) for name in names}
        pvdb[STATUS_PV] = {"type": "float"}
        self.server = SimpleServer()
        self.server.createPV(prefix + ":", pvdb)
        self.driver = EchoDriver()
        self.names = names
        self.count = count
        self.reasons = {f"{prefix}:{name}": name for name in names}
        self.process = self.server.process

    def apply(self, updates: list[tuple[str, object]]) -> None:
        for pv, value in updates:
            self.driver.setParam(self.reasons[pv], value)
        self.driver.updatePVs()

    def post_round(self, value: float) -> None:
        for name in self.names:
            self.driver.setParam(name, value if self.count == 1 else np.full(self.count, value))
        self.driver.updatePVs()


# --- serving ---------------------------------------------------------------------------------


def serve(server, commands: "queue.Queue[str]", sock: zmq.Socket | None, n: int) -> None:
    """Alternate CA service with applying ZMQ messages, at most MAX_UPDATES per turn.

    The bound matters: pcas keeps only a few events per monitor between two turns and
    merges the rest, so a longer stretch of updates would lose events, not gain speed.
    """
    while True:
        if sock is None:
            server.process(0.05)
        else:
            server.process(0.0)
            received = 0
            while received < MAX_UPDATES:
                try:
                    message = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                updates = decode(message)
                server.apply(updates)
                received += len(updates)
            if received == 0:
                sock.poll(IDLE_POLL_MS)
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        if command == "quit":
            return
        if command.startswith("loop "):
            say("DONE", run_loop(server, int(command.split()[1]), n))


def run_loop(server, updates: int, n: int) -> dict:
    """Post `updates` updates (rounds over every PV) as fast as possible."""
    rounds = max(1, updates // n)
    t_first = time.time()
    for r in range(rounds):
        server.post_round(float(r + 1))
        server.process(0.0)
    t_last = time.time()
    report = {"posted": rounds * n, "rounds": rounds, "t_first": t_first, "t_last": t_last,
              "last_value": float(rounds)}
    if hasattr(server, "gdds"):
        report["gdds"] = server.gdds()
    return report


def sink(endpoint: str, quiet_ms: int, latency: bool, commands: "queue.Queue[str]") -> None:
    """Decode and count messages; report each burst once it has been quiet for quiet_ms."""
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    say("READY", {"pid": os.getpid(), "endpoint": endpoint})
    unpackb = msgpack.unpackb
    while True:
        messages = updates = 0
        first = last = 0.0
        samples: list[float] = []
        while True:
            if not sock.poll(quiet_ms if messages else 100):
                if messages:
                    break
                try:
                    if commands.get_nowait() == "quit":
                        return
                except queue.Empty:
                    pass
                continue
            while True:
                try:
                    message = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.time()
                obj = unpackb(message, raw=False)
                batch = obj if isinstance(obj, list) else (obj,)
                if latency:
                    samples.extend(now - u["value"] for u in batch)
                if not messages:
                    first = now
                last = now
                messages += 1
                updates += len(batch)
        span = last - first
        report = {"client": "python zmq sink (PULL + msgpack)", "messages": messages,
                  "updates": updates, "first": first, "last": last, "span_s": span,
                  "rate": updates / span if span > 0 else None}
        if latency:
            report["latency"] = summarize_ms(samples)
        say("DONE", report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("driver", "direct", "zmq-sink"), required=True)
    parser.add_argument("--prefix", default="base")
    parser.add_argument("--pattern", default="bench%d_f1", help="PV base names, one %%d")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--zmq-bind")
    parser.add_argument("--quiet-ms", type=int, default=300)
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    commands = stdin_commands()

    if args.kind == "zmq-sink":
        sink(args.zmq_bind, args.quiet_ms, args.latency, commands)
        return 0

    names = [args.pattern % i for i in range(args.n)]
    t0 = time.perf_counter()
    if args.kind == "driver":
        server = DriverServer(args.prefix, names, args.count)
    else:
        from bench.direct_post import DirectServer

        server = DirectServer(args.prefix, names, args.count, STATUS_PV)
    create_s = time.perf_counter() - t0
    sock = None
    if args.zmq_bind:
        context = zmq.Context()
        sock = context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        # Little buffering: when a steady load stops, what is left in flight must drain
        # quickly even in the slow Driver baseline, or it would spill into the next run.
        # A queue of 100 messages is still far more than a server needs to never starve.
        sock.setsockopt(zmq.RCVHWM, 100)
        sock.setsockopt(zmq.RCVBUF, 1 << 16)
        sock.bind(args.zmq_bind)
    say("READY", {"pid": os.getpid(), "kind": args.kind, "pvs": args.n, "create_s": create_s,
                  "feed": "zmq" if sock else "loop"})
    serve(server, commands, sock, args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())

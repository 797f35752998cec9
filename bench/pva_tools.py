"""The pvAccess side of the bench: a bare p4p server (the PVA ceiling) and a PVA monitor.

    pva_tools.py server --pattern 'P:bench%d_f1' --n 1000 [--count C]
    pva_tools.py monitor --pattern 'P:bench%d_f1' --n 1000 [--count C] [--expect E]
                         [--until-value V] [--quiet-ms Q] [--deadline-s D]

``server``: N p4p SharedPVs (NTScalar double, or NTScalarArray double[C] with element 0
the value) served by a p4p Server; stdin ``loop U`` posts U updates, round-robin over the
N PVs, as fast as it can, each post a reused Value with the value and time stamp marked
(the cheapest post p4p offers; relayd's posts are the same deltas), and prints ``DONE
{json}``. This is the PVA ceiling, as the direct-post pcas server is CA's.

``monitor``: subscribes to the N PVs with p4p's raw client (no normative-type
unwrapping) and counts updates on pvxs's callback thread, doing no more than popping
them; prints ``READY <connect seconds>`` once every subscription has its first update,
then a JSON result like the C monitor's (events, rate first to last, bytes, each PV's
last value). It stops after `expect` events, once every PV showed `until_value`, after
`quiet_ms` without events, or `deadline_s` after subscribing.

Both run with the EPICS environment the bench gives them (loopback only).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np
from p4p import Value
from p4p.nt import NTScalar


def structure(count: int):
    code = "ad" if count > 1 else "d"
    return NTScalar.buildType(code, display=True, control=True, valueAlarm=True, form=True)


def serve(args: argparse.Namespace) -> int:
    from p4p.server import Server, StaticProvider
    from p4p.server.raw import SharedPV

    kind = structure(args.count)
    names = [args.pattern % i for i in range(args.n)]
    provider = StaticProvider("bench")
    pvs = []
    for name in names:
        pv = SharedPV()
        pv.open(Value(kind, {"value": np.zeros(args.count) if args.count > 1 else 0.0}))
        provider.add(name, pv)
        pvs.append(pv)
    server = Server(providers=[provider])
    print("READY " + json.dumps({"pvs": args.n, "conf": server.conf()}), flush=True)
    scratch = Value(kind, {})
    data = np.zeros(args.count)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "loop":
            rounds = max(1, int(command[1]) // args.n)
            t_first = time.time()
            for r in range(rounds):
                now = time.time_ns()
                seconds, nanoseconds = divmod(now, 1_000_000_000)
                for pv in pvs:
                    if args.count > 1:
                        data[0] = r + 1
                        scratch["value"] = data
                    else:
                        scratch["value"] = float(r + 1)
                    scratch["timeStamp.secondsPastEpoch"] = seconds
                    scratch["timeStamp.nanoseconds"] = nanoseconds
                    pv.post(scratch)
                    scratch.unmark()
            t_last = time.time()
            print("DONE " + json.dumps({"posted": rounds * args.n, "rounds": rounds,
                                        "t_first": t_first, "t_last": t_last,
                                        "last_value": float(rounds)}), flush=True)
    server.stop()
    return 0


class Counter:
    """Counts the updates of N subscriptions (called on pvxs's threads)."""

    def __init__(self, n: int, count: int, expect: int, until_value: float | None):
        self.lock = threading.RLock()
        self.taking = threading.Lock()  # one pop loop at a time (pvxs thread or main)
        self.events = 0
        self.first = self.last = 0.0
        self.last_values: list[float | None] = [None] * n
        self.seen = [False] * n
        self.reached = 0
        self.expect = expect
        self.until = until_value
        self.item_bytes = 8 * count
        self.done = threading.Event()

    def take(self, index: int, subscription) -> None:
        with self.taking:
            self._take(index, subscription)

    def _take(self, index: int, subscription) -> None:
        while True:
            value = subscription.pop()
            if value is None:
                return
            if isinstance(value, Exception):
                continue
            raw = value["value"]
            number = float(raw[0]) if isinstance(raw, np.ndarray) else float(raw)
            now = time.time()
            with self.lock:
                if not self.seen[index]:
                    self.seen[index] = True  # the subscription's first (current) value
                    self.last_values[index] = number
                    continue
                self.events += 1
                self.first = self.first or now
                self.last = now
                old = self.last_values[index]
                self.last_values[index] = number
                if self.until is not None and number >= self.until and (
                        old is None or old < self.until):
                    self.reached += 1
                if (self.expect and self.events >= self.expect) or (
                        self.until is not None and self.reached == len(self.seen)):
                    self.done.set()


def monitor(args: argparse.Namespace) -> int:
    from p4p.client.raw import Context

    context = Context("pva", nt=False, useenv=True)
    counter = Counter(args.n, args.count, args.expect, args.until_value)
    subscriptions = []
    started = time.time()
    for index in range(args.n):
        holder: list = []

        def notified(index: int = index, holder: list = holder) -> None:
            if holder:  # else: taken below, once the subscription is known
                counter.take(index, holder[0])

        subscription = context.monitor(args.pattern % index, notified)
        holder.append(subscription)
        counter.take(index, subscription)  # what arrived before `holder` was filled
        subscriptions.append(subscription)
    deadline = time.time() + 60
    while not all(counter.seen) and time.time() < deadline:
        time.sleep(0.005)
    if not all(counter.seen):
        print(json.dumps({"error": f"{args.n - sum(counter.seen)} PVs never connected"}))
        return 1
    print(f"READY {time.time() - started:.3f}", flush=True)
    end = time.time() + args.deadline_s
    while not counter.done.is_set() and time.time() < end:
        with counter.lock:
            quiet = counter.last and time.time() - counter.last > args.quiet_ms / 1000
        if quiet:
            break
        counter.done.wait(0.05)
    with counter.lock:
        span = counter.last - counter.first
        result = {"client": "p4p raw monitor", "events": counter.events,
                  "rate": counter.events / span if span > 0 else 0.0, "span_s": span,
                  "bytes": counter.events * counter.item_bytes, "first": counter.first,
                  "last": counter.last, "last_values": counter.last_values}
    for subscription in subscriptions:
        subscription.close()
    context.close()
    print(json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "monitor"])
    parser.add_argument("--pattern", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--until-value", type=float)
    parser.add_argument("--quiet-ms", type=int, default=2000)
    parser.add_argument("--deadline-s", type=float, default=120.0)
    args = parser.parse_args()
    return serve(args) if args.mode == "server" else monitor(args)


if __name__ == "__main__":
    sys.exit(main())

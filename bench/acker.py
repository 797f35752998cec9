"""The acknowledged load generator: requests to relayd's ROUTER socket, verdicts counted.

    acker.py --endpoint EP --pattern 'P:bench%d_f1' --n 1000 --updates U --window W
             [--client raw|relayd] [--durable]

``raw`` (the default) sends pre-encoded protocol version 2 requests (one update each,
values 1, 2, 3... round-robin over the n PVs) from a bare DEALER socket, keeping at most
W requests in flight, and reads each reply with msgpack: it measures the relay, as the
pusher does (bench/pusher.py), not a client library. ``relayd`` sends the same updates
through `relayd.client.Client(ack=True, window=W)` (`put_async`, then `flush`): what a
publisher using the shipped client gets.

Prints ``SENDING <time>`` when the first request goes out, then one JSON object: the
updates acknowledged (every one must be accepted), first send and last verdict times,
the rate between them, and the round-trip time of each request (window 1: latency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import msgpack
import zmq

CLIENT = "python acker (DEALER)"


def raw(args: argparse.Namespace, names: list[str]) -> tuple[int, float, float, list[float]]:
    frames = [msgpack.packb({"v": 2, "id": k, "durable": args.durable,
                             "updates": {"pv": names[k % args.n], "value": float(k + 1)}})
              for k in range(args.updates)]
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(args.endpoint)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    accepted = sent = 0
    t_first = time.time()
    print(f"SENDING {t_first:.6f}", flush=True)
    while accepted < args.updates:
        while sent < args.updates and len(sent_at) < args.window:
            sent_at[sent] = time.perf_counter()
            sock.send(frames[sent])
            sent += 1
        if not sock.poll(30_000):
            raise SystemExit(f"acker: no verdict for 30 s ({accepted} of {args.updates})")
        reply = msgpack.unpackb(sock.recv(), raw=False)
        rtts.append(time.perf_counter() - sent_at.pop(reply["id"]))
        if not all(result["ok"] for result in reply["results"]):
            raise SystemExit(f"acker: refused: {reply}")
        if args.durable and not reply["durable"]:
            raise SystemExit(f"acker: not durable: {reply}")
        accepted += 1
    t_last = time.time()
    sock.close()
    context.term()
    return accepted, t_first, t_last, rtts


def client(args: argparse.Namespace, names: list[str]) -> tuple[int, float, float, list[float]]:
    from relayd.client import Client

    with Client(ack=True, ack_endpoint=args.endpoint, window=args.window, timeout=30,
                durable=args.durable, linger=0) as relay:
        t_first = time.time()
        print(f"SENDING {t_first:.6f}", flush=True)
        for k in range(args.updates):
            relay.put_async(names[k % args.n], float(k + 1))
        accepted = len(relay.flush())
        t_last = time.time()
    return accepted, t_first, t_last, []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="relayd's --zmq-ack-bind")
    parser.add_argument("--pattern", required=True, help="printf pattern with one %%d")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--updates", type=int, required=True)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--client", choices=("raw", "relayd"), default="raw")
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    names = [args.pattern % i for i in range(args.n)]
    accepted, t_first, t_last, rtts = (raw if args.client == "raw" else client)(args, names)
    span = t_last - t_first
    print(json.dumps({
        "client": CLIENT if args.client == "raw" else "relayd.client (ack=True)",
        "updates": accepted, "window": args.window, "durable": args.durable,
        "t_first": t_first, "t_last": t_last, "rate": accepted / span if span > 0 else None,
        "rtt_p50_ms": statistics.median(rtts) * 1e3 if rtts else None,
        "rtt_p99_ms": sorted(rtts)[int(len(rtts) * 0.99)] * 1e3 if rtts else None,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Profile relayd's processes under one of the bench's loads, with py-spy or perf.

    python bench/profile.py zmq_batch100            # or zmq_single, conflation, arrays, ca_puts
    python bench/profile.py zmq_single --seconds 8 --native
    python bench/profile.py zmq_batch100 --perf     # native only, the process not paused

Starts relayd and the load of that scenario (the same pusher / C clients), records the
CA process and the ingest worker for --seconds, and prints each process's busiest
functions: *self* time (the frame on top of the stack) and *inclusive* time (anywhere
on the stack), as a share of samples. The collapsed-stack files are kept (path printed)
for flame graphs (e.g. ``flamegraph.pl`` or speedscope).

Three recorders:

* ``py-spy record -f raw --nonblocking`` (default): Python frames, the process is never
  stopped (a sample may then see a torn stack, rarely);
* ``--native``: py-spy with the C/C++ frames too (pcas, libca, numpy). py-spy must stop
  the process for each sample to unwind it (it refuses ``--nonblocking`` with
  ``--native``), so the process runs slower while recorded;
* ``--perf``: ``perf record --call-graph dwarf`` on a software clock (no hardware
  counters needed, as in a VM): native frames only, Python shows as the interpreter's
  own functions; the process is not paused. Needs ``perf`` (Debian: linux-perf).

Profiling slows the processes it samples: these runs are for finding where time goes,
never for the figures of run.py. py-spy and perf need rights over the processes (root,
or kernel.yama.ptrace_scope = 0 and kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.build import build  # noqa: E402
from bench.clients import Clients  # noqa: E402
from bench.procs import REPO, Epics, Procs  # noqa: E402
from bench.scenarios.common import PATTERN, Context, create_pvs, full_pattern  # noqa: E402

LOADS = {
    # name: (PVs, base pattern, array count, pusher batch) - None batch: CA puts
    "zmq_batch100": (1000, PATTERN, 1, 100),
    "zmq_single": (1000, PATTERN, 1, 1),
    "conflation": (10, PATTERN, 1, 100),
    "arrays": (10, "arr%d_f10000", 10_000, 1),
    "ca_puts": (1000, PATTERN, 1, None),
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    return found


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive shares of the busiest functions in a collapsed-stack file."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples", "  self:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in self_time.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


class Recorder:
    """One recording of one process, ending as collapsed stacks in `raw`."""

    def __init__(self, args: argparse.Namespace, pid: int, raw: Path):
        self.args = args
        self.raw = raw
        seconds = str(int(args.seconds))
        if args.perf:
            self.data = raw.with_suffix(".perf.data")
            command = [perf(), "record", "-e", "cpu-clock", "-F", str(args.rate), "-g",
                       "--call-graph", "dwarf,16384", "-p", str(pid), "-o", str(self.data),
                       "--", "sleep", seconds]
        else:
            command = [py_spy(), "record", "-p", str(pid), "-f", "raw", "-o", str(raw),
                       "-d", seconds, "-r", str(args.rate)]
            # py-spy refuses --nonblocking with --native: it must stop the process to
            # unwind native frames.
            command += ["--native"] if args.native else ["--nonblocking"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def finish(self, timeout: float) -> str:
        """Wait for the recorder; write `raw` (perf: from ``perf script``). Its stderr."""
        _, err = self.process.communicate(timeout=timeout)
        if self.args.perf and self.data.exists():
            script = subprocess.run([perf(), "script", "-i", str(self.data)], capture_output=True,
                                    text=True, timeout=timeout)
            self.raw.write_text(collapse_perf(script.stdout))
            err += script.stderr[-2000:]
        return err


def perf() -> str:
    found = shutil.which("perf")
    if not found:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    return found


def collapse_perf(script: str) -> str:
    """``perf script`` output as collapsed stacks (``root;...;leaf count`` lines).

    Each sample is a header line and then its frames, leaf first, one per line
    (``address symbol+offset (library)``), ending with a blank line.
    """
    stacks: collections.Counter[str] = collections.Counter()
    frames: list[str] = []
    for line in script.splitlines() + [""]:
        if line.startswith(("\t", " ")) and line.strip():
            parts = line.split(None, 1)
            what = parts[1] if len(parts) > 1 else parts[0]
            symbol, _, library = what.rpartition(" (")
            symbol = symbol.split("+0x")[0] or "[unknown]"
            frames.append(f"{symbol} ({Path(library.rstrip(')')).name})")
        elif not line.strip() and frames:
            stacks[";".join(reversed(frames))] += 1
            frames = []
    return "".join(f"{stack} {count}\n" for stack, count in stacks.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("load", choices=sorted(LOADS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    recorder = parser.add_mutually_exclusive_group()
    recorder.add_argument("--native", action="store_true",
                          help="py-spy with C/C++ frames (pcas); pauses the process per sample")
    recorder.add_argument("--perf", action="store_true", help="perf: native frames only")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    n, pattern, count, batch = LOADS[args.load]
    procs = Procs(Path(tempfile.mkdtemp(prefix="relayd-profile-")))
    epics = Epics()
    ctx = Context("full", 3, procs, epics, Clients(build(), procs, epics), 0, print)
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        relay = ctx.relay()
        create_pvs(ctx, relay, pattern, n, count=count)
        ctx.clients.monitor(relay, pattern, n, count=count, deadline_s=args.seconds + 60)
        if batch is None:
            ctx.clients.put(relay, pattern, n, 50_000_000, mode="nowait")
        else:
            pusher = ctx.clients.pusher(relay.endpoint, full_pattern(relay, pattern), n,
                                        batch=batch, duration=args.seconds + 3, count=count)
            pusher.wait_line("SENDING", 60)
        time.sleep(0.5)
        recorders = {}
        for role in ("ca-server", "ingest"):
            raw = args.out / f"profile-{args.load}-{role}-{stamp}.txt"
            recorders[role] = (Recorder(args, relay.child(role), raw), raw)
        for role, (recorder, raw) in recorders.items():
            err = recorder.finish(args.seconds + 120)
            print(f"== relayd: {role} under {args.load} ({raw})")
            print(summarize(raw, args.top) if raw.exists() else f"  recorder failed: {err.strip()}")
    finally:
        procs.stop_all()
        epics.close()
        shutil.rmtree(procs.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run relayd's benchmark suite: one command, a table, a JSON file.

    python bench/run.py --quick                 # CI smoke run, well under 2 minutes
    python bench/run.py --full                  # by hand: full sizes, soak included
    python bench/run.py --only zmq_batch100,latency --json /tmp/out.json
    python bench/run.py --list
    python bench/run.py --show bench/results/<file>.json [--markdown]   # table of a past run

Every figure is the median of --reps runs (at least 3) and sits beside a baseline
measured in the same invocation; see docs/BENCHMARKS.md for the method. The bench
reports, it does not judge: missed targets are shown in the table and the exit code
stays 0. It exits non-zero only when the harness itself breaks (the C clients cannot be
built, bad arguments, a bug in the bench); a scenario whose servers or clients fail is
reported as FAILED in the table and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report  # noqa: E402
from bench.build import BuildError, build  # noqa: E402
from bench.clients import Clients  # noqa: E402
from bench.procs import REPO, Epics, Procs, RunFailure  # noqa: E402
from bench.scenarios import BY_NAME, SCENARIOS  # noqa: E402
from bench.scenarios.common import Context  # noqa: E402

METHOD = (
    "Each server runs as its own process on its own loopback CA port (relayd as "
    "`python -m relayd`, baselines as bench/baseline_server.py); load comes from separate "
    "processes (bench/pusher.py: raw zmq+msgpack, pre-encoded; the C put client) and is "
    "measured by C clients built against epicscorelibs' libca (bench/c/). Each figure is "
    "the median of `reps` runs; relayd and its baselines are run in turn within each "
    "repetition (interleaved), all in this one invocation. Rates are counted at the "
    "receiving client from first to last arrival; latencies are arrival time minus a "
    "send time carried in the value (CLOCK_REALTIME, one host). Targets are reported, "
    "never asserted."
)


def machine() -> dict:
    """What the numbers were measured on: they mean little without it."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("pcaspy", "pyzmq", "msgpack", "numpy", "epicscorelibs"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "memory_bytes": mem_total,
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "kernel": platform.release(), "hostname": platform.node(), "versions": versions,
        "load_average": os.getloadavg(), "relayd_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=REPO, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "relayd", "workers"],
                               capture_output=True, text=True, cwd=REPO, timeout=10).stdout
        return commit + ("+dirty" if dirty.strip() else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="CI smoke run: small sizes, no soak (default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="full sizes, soak included (minutes)")
    parser.add_argument("--only", help="comma-separated scenario names (see --list)")
    parser.add_argument("--json", type=Path, help="results file "
                        "(default bench/results/<timestamp>.json)")
    parser.add_argument("--reps", type=int, default=3, help="runs per figure (>= 3)")
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--show", type=Path, metavar="JSON",
                        help="print the table of an earlier results file and exit")
    parser.add_argument("--markdown", action="store_true", help="with --show: a Markdown table")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep every process's log (printed path) even on success")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    if args.reps < 3:
        parser.error("--reps must be at least 3 (figures are medians of at least 3 runs)")
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    unknown = [n for n in names or () if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    args.names = names
    return args


def selected(args: argparse.Namespace):
    if args.names:
        return [BY_NAME[name] for name in args.names]
    return [s for s in SCENARIOS if s.quick or args.mode == "full"]


def show(path: Path, markdown: bool) -> int:
    """Print the table of a results file written by an earlier run."""
    document = json.loads(path.read_text())
    figures = [report.figure_from_json(f) for entry in document["scenarios"].values()
               for f in entry["figures"]]
    print(report.format_table(figures, markdown=markdown))
    machine = document["machine"]
    print(f"\n{document['mode']} run of {document['started']}, {document['reps']} runs per "
          f"figure, {document['seconds']:.0f} s; {machine['cpu_model']}, {machine['cores']} "
          f"cores; relayd {machine['relayd_commit']}")
    return 0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:18} {'quick+full' if s.quick else 'full only':11} {s.summary}")
        return 0
    if args.show:
        return show(args.show, args.markdown)
    started = dt.datetime.now()
    json_path = args.json or REPO / "bench" / "results" / f"{started:%Y%m%d-%H%M%S}.json"
    try:
        tools = build()
    except BuildError as error:
        log(f"bench: cannot build the C clients: {error}")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="relayd-bench-"))
    procs = Procs(workdir)
    epics = Epics()
    ctx = Context(args.mode, args.reps, procs, epics, Clients(tools, procs, epics),
                  args.soak_minutes, log)
    document = {
        "started": started.isoformat(timespec="seconds"), "mode": args.mode, "reps": args.reps,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "method": METHOD, "machine": machine(), "clients": {k: str(v) for k, v in tools.items()},
        "scenarios": {},
    }
    figures: list[report.Figure] = []
    harness_broken = False
    t_start = time.monotonic()
    try:
        for scenario in selected(args):
            log(f"== {scenario.name} ({args.mode})")
            t0 = time.monotonic()
            entry: dict = {"status": "ok"}
            try:
                rows, runs = scenario.run(ctx)
                entry["runs"] = runs
            except RunFailure as error:
                rows = [report.failed(scenario.name, str(error))]
                entry.update(status="failed", error=str(error))
                log(f"   FAILED: {error}")
            except Exception as error:  # a bug in the bench: report it, exit non-zero
                harness_broken = True
                text = f"bench error: {error!r}"
                rows = [report.failed(scenario.name, text)]
                entry.update(status="bench-error", error=text, traceback=traceback.format_exc())
                log(traceback.format_exc())
            finally:
                procs.stop_all()
            if any(row.status == "skipped" for row in rows):
                entry["status"] = "skipped"
            entry["seconds"] = round(time.monotonic() - t0, 1)
            entry["figures"] = [row.to_json() for row in rows]
            document["scenarios"][scenario.name] = entry
            figures.extend(rows)
            log(f"   {entry['status']} in {entry['seconds']} s")
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        harness_broken = True
    finally:
        procs.stop_all()
        epics.close()

    document["seconds"] = round(time.monotonic() - t_start, 1)
    document["machine"]["load_average_end"] = os.getloadavg()
    report.write_json(json_path, document)
    print(report.format_table(figures))
    print(f"\n{args.mode} run, {args.reps} runs per figure, {document['seconds']:.0f} s; "
          f"results: {json_path}")
    if args.keep_logs or harness_broken or any(f.status == "failed" for f in figures):
        print(f"process logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if harness_broken else 0


if __name__ == "__main__":
    sys.exit(main())

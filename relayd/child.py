"""Entry point of relayd's child processes: ``python -m relayd.child ROLE ...``.

The supervisor starts each child as a fresh interpreter with the config as JSON and the
file descriptors it inherits (its lifeline, and its end of the internal pipe). This
module does what every child does the same way: name itself in ``ps``, die with its
parent, set up logging and signals, report a boot failure as one line, then run the
role's main loop.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Sequence

from relayd import logs
from relayd.cli import StopFlag, set_title
from relayd.config import Config
from relayd.errors import BootError
from relayd.lifeline import Lifeline

# Exit code of a child that cannot boot (bad config, address in use...): the supervisor
# must stop instead of restarting it.
BOOT_FAILED = 3

TITLES = {"ca-server": "relayd: ca-server", "ingest": "relayd: ingest"}

log = logging.getLogger("relayd")


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the lifeline EOF still tells the child
    if os.getppid() != parent_pid:
        sys.exit(0)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="relayd.child")
    parser.add_argument("role", choices=sorted(TITLES))
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--pipe-fd", type=int, required=True, help="this child's pipe end")
    parser.add_argument("--pipe-writer-fd", type=int, help="the writer end (CA: backlog)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    set_title(TITLES[args.role])
    die_with_parent(args.parent_pid)
    config = Config.from_json(args.config_json)
    logs.setup(config.log_level)
    lifeline = Lifeline(socket.socket(fileno=args.lifeline_fd))
    pipe = socket.socket(fileno=args.pipe_fd)
    stop = StopFlag()
    stop.install()
    try:
        if args.role == "ca-server":
            from relayd.ca_process import run

            writer = socket.socket(fileno=args.pipe_writer_fd) if args.pipe_writer_fd else None
            run(config, pipe, writer, lifeline, stop)
        else:
            from workers.ingest import run

            run(config, pipe, lifeline, stop)
    except BootError as error:
        log.error("%s cannot start: %s", args.role, error)
        lifeline.send(fatal=str(error))
        return BOOT_FAILED
    finally:
        # The work is done: a further SIGTERM (the supervisor's, after a process-group
        # signal) must not kill the interpreter while it shuts down.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    if stop.signal is not None:
        log.info("%s stopped by %s", args.role, signal.Signals(stop.signal).name)
    return 0


def exit_now(code: int) -> None:
    """Leave without interpreter finalisation.

    By now the child has finished its work and flushed what it must. Finalisation would
    tear down modules while pcas still holds SWIG director objects whose methods it may
    call, which aborts the process instead of letting it exit with its code.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())

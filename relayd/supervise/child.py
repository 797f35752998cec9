"""What every child process does alike, from its first line to its exit code.

The supervisor starts each child as a fresh interpreter, ``python -m MODULE`` (the role's
module: `relayd.ca` for the CA server, `workers.ingest` for the ingest worker), with the
config as JSON and the file descriptors it inherits: its lifeline, and its ends of the
internal pipes (`Channel`: a worker's own up and down pipes; every worker's for the CA
server). `serve` is the one start-up every role shares: name itself in ``ps``,
die with its parent, set up logging and signals, run the role's main loop, report a
boot failure as one line with exit code BOOT_FAILED, and exit without finalisation.
The roles never import each other, and this module imports neither.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable, NoReturn, Sequence

from relayd import logs
from relayd.supervise.signals import StopFlag, set_title
from relayd.config import Config
from relayd.core.errors import BootError
from relayd.supervise.lifeline import Lifeline

# Exit code of a child that cannot boot (bad config, address in use...): the supervisor
# must stop instead of restarting it.
BOOT_FAILED = 3

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


@dataclass(frozen=True)
class Channel:
    """One worker's two internal pipes (`relayd.supervise.pipe`), as one child holds them.

    A worker holds the writer end of its up pipe and the reader end of its down pipe;
    the CA process the other two ends of every worker's pipes, and the up pipe's writer
    end too, to measure what waits in it (the backlog status PV).
    """

    role: str  # the worker's role
    up: socket.socket  # worker -> CA process: the worker's end or the CA process's
    down: socket.socket  # CA process -> worker: likewise
    up_writer: socket.socket | None = None  # the CA process only

    @classmethod
    def parse(cls, text: str) -> Channel:
        """A channel from its ``--channel`` argument, ``ROLE,UP_FD,DOWN_FD[,UP_WRITER_FD]``."""
        role, *fds = text.split(",")
        ends = [socket.socket(fileno=int(fd)) for fd in fds]
        if len(ends) not in (2, 3):
            raise ValueError(f"--channel {text!r}: ROLE,UP_FD,DOWN_FD[,UP_WRITER_FD]")
        return cls(role, *ends)

    @staticmethod
    def argument(role: str, *ends: socket.socket) -> str:
        """The ``--channel`` argument that hands `ends` (up, down[, up writer]) to a child."""
        return ",".join([role, *(str(end.fileno()) for end in ends)])


@dataclass(frozen=True)
class ChildEnv:
    """What a child is handed: its config, its channels to the others, its stop flag."""

    role: str
    config: Config
    lifeline: Lifeline
    channels: dict[str, Channel]  # by worker role: a worker's own, or every worker's
    stopping: StopFlag

    @property
    def channel(self) -> Channel:
        """A worker's own channel."""
        return self.channels[self.role]


def parse(role: str, argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"relayd: {role}")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--channel", action="append", default=[],
                        metavar="ROLE,UP_FD,DOWN_FD[,UP_WRITER_FD]",
                        help="a worker's pipe ends (see Channel); repeated by the CA server")
    return parser.parse_args(argv)


def main(role: str, run: Callable[[ChildEnv], None], argv: Sequence[str] | None = None) -> int:
    """Run `run` as the child `role`; the exit code: 0, or BOOT_FAILED."""
    args = parse(role, sys.argv[1:] if argv is None else argv)
    set_title(f"relayd: {role}")
    die_with_parent(args.parent_pid)
    config = Config.from_json(args.config_json)
    logs.setup(config.log_level)
    lifeline = Lifeline(socket.socket(fileno=args.lifeline_fd))
    channels = {channel.role: channel for channel in map(Channel.parse, args.channel)}
    stop = StopFlag()
    stop.install()
    env = ChildEnv(role, config, lifeline, channels, stop)
    try:
        run(env)
    except BootError as error:
        log.error("%s cannot start: %s", role, error)
        lifeline.send(fatal=str(error))
        return BOOT_FAILED
    finally:
        # The work is done: a further SIGTERM (the supervisor's, after a process-group
        # signal) must not kill the interpreter while it shuts down.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    if stop.signal is not None:
        log.info("%s stopped by %s", role, signal.Signals(stop.signal).name)
    return 0


def serve(role: str, run: Callable[[ChildEnv], None]) -> NoReturn:
    """The whole life of a child process: `main`, then `exit_now` with its code."""
    exit_now(main(role, run))


def exit_now(code: int) -> NoReturn:
    """Leave without interpreter finalisation.

    By now the child has finished its work and flushed what it must. Finalisation would
    tear down modules while pcas still holds SWIG director objects whose methods it may
    call, which aborts the process instead of letting it exit with its code.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


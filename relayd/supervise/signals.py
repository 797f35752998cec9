"""What every relayd process does alike with signals and its name in ``ps``.

A signal handler only records the signal (`StopFlag`); the process's own loop acts on it
at its next turn, as gunicorn's arbiter does. Doing work in a handler risks deadlock.
"""

from __future__ import annotations

import signal


class StopFlag:
    """Set by SIGINT/SIGTERM; the handler only records the signal, the loop acts on it."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)


def set_title(title: str) -> None:
    """Name this process in ``ps`` (``relayd: ca-server``), when setproctitle is there."""
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass

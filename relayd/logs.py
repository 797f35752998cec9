"""Logging set-up and rate limiting, so a misbehaving client cannot flood the log.

Loggers are hierarchical (``relayd.ca``, ``relayd.ingest``, ``relayd.supervisor``...), all
writing one line per record to stderr, where supervisord or a terminal collects them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup(level: str | int = "INFO") -> None:
    """Send every relayd record to stderr, one line each, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("relayd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False


def serving(way: str, where: Iterable[str], *notes: str) -> str:
    """The start-up line of one way in: ``serving WAY on WHERE, WHERE (NOTE; NOTE)``.

    Each process logs one such line per way in it serves, once it serves it (the CA
    process for CA, the ingest worker for ZMQ, and so on for each new way in), so that
    ``grep 'serving '`` shows every address a relay can be reached at, and how.
    """
    shown = f" ({'; '.join(notes)})" if notes else ""
    return f"serving {way} on {', '.join(where) or 'nothing'}{shown}"


class RateLimitedLog:
    """Logs at most `burst` records per key in each `period` seconds.

    What is held back is not lost from view: the next record let through for that key
    says how many similar ones were suppressed. Keys are refusal reasons, so one noisy
    client cannot hide a different problem.
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 5,
        period: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.burst = burst
        self.period = period
        self._clock = clock
        self._windows: dict[object, list] = {}  # key -> [window start, sent, suppressed]

    def log(self, level: int, key: object, msg: str, *args: object, **kwargs: object) -> bool:
        """Log unless `key` is over its budget; True if the record was emitted."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            suppressed = window[2] if window else 0
            window = self._windows[key] = [now, 0, 0]
            if suppressed:
                msg += f" ({suppressed} similar messages suppressed)"
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        self.logger.log(level, msg, *args, **kwargs)  # type: ignore[arg-type]
        return True

    def warning(self, key: object, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

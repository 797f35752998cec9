"""The ``relayd`` command: parse options, set up logging and signals, serve."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Sequence

from relayd import config as configuration
from relayd import logs

log = logging.getLogger("relayd")


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = configuration.parse(argv)
    except (ValueError, OSError) as error:
        print(f"relayd: {error}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    stop = StopFlag()
    stop.install()
    from relayd.ca_server import serve  # imports pcaspy: keep --help fast and light

    serve(config, stop)
    if stop.signal is not None:
        log.info("stopped by %s", signal.Signals(stop.signal).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

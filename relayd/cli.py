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
    if argv[:1] == ["autosave"]:
        from relayd.autosave_cli import main as autosave_main

        return autosave_main(argv[1:])
    if argv[:1] == ["keygen"]:
        from relayd.keys import keygen_main

        return keygen_main(list(argv[1:]))
    try:
        config = configuration.parse(argv)
    except (ValueError, OSError) as error:
        print(f"relayd: {error}", file=sys.stderr)
        return 2
    logs.setup(config.log_level)
    set_title("relayd: supervisor")
    from relayd.supervisor import Supervisor

    code = Supervisor(config).run()
    if code == 0:
        log.info("relayd stopped")
    else:
        log.error("relayd exits with code %d", code)
    return code


def set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())

"""The ``relayd`` command: serve (the default), or one of its tools.

``relayd [OPTIONS]`` parses the options, sets up logging and runs the supervisor, which
runs the relay's processes. ``relayd autosave ...`` and ``relayd keygen ...`` are tools
that work on files and never start a relay.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from relayd import config as configuration
from relayd import logs
from relayd.supervise.signals import set_title

log = logging.getLogger("relayd")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["autosave"]:
        from relayd.store.cli import main as autosave_main

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
    from relayd.supervise.supervisor import Supervisor

    code = Supervisor(config).run()
    if code == 0:
        log.info("relayd stopped")
    else:
        log.error("relayd exits with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``relayd`` command: serve (the default), or one of its tools.

``relayd [OPTIONS]`` parses the options, sets up logging and runs the supervisor, which
runs the relay's processes. ``relayd autosave ...`` and ``relayd keygen ...`` are tools
that work on files and never start a relay; ``relayd ls``, ``show`` and ``status`` read
a running relay through its HTTP API (`relayd.query_cli`).
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from relayd import config as configuration
from relayd import logs
from relayd.supervise.signals import set_title

log = logging.getLogger("relayd")

COMMANDS = """commands (relayd COMMAND --help says more):
  relayd ls [GLOB]           list a running relay's PVs (through its HTTP API)
  relayd show NAME           one PV in full: value, alarm, attributes, last writer
  relayd status              processes, counters, autosave state, endpoints
  relayd autosave export|import   the autosave store to and from JSON
  relayd keygen PATH_STEM    write a CurveZMQ key pair

without a command, relayd serves: the options below."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["autosave"]:
        from relayd.store.cli import main as autosave_main

        return autosave_main(argv[1:])
    if argv[:1] == ["keygen"]:
        from relayd.keys import keygen_main

        return keygen_main(list(argv[1:]))
    if argv[:1] and argv[0] in ("ls", "show", "status"):
        from relayd.query_cli import main as query_main

        return query_main(argv[0], argv[1:])
    try:
        config = configuration.parse(argv, COMMANDS)
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

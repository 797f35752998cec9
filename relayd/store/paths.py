"""Where a relay keeps its autosave file unless told. Pure: no SQLite, no I/O.

Kept apart from the store so that the configuration can name the default path without
loading the database code.
"""

from __future__ import annotations

import os


def default_path(prefix: str, environ: dict | None = None) -> str:
    """Where autosave keeps a relay's PVs unless told: one file per prefix, named by it
    as it is (a prefix holds only letters, digits, '_', '-' and ':', all fine in a file
    name), so two prefixes never share a file."""
    environ = os.environ if environ is None else environ
    state_home = environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state_home, "relayd", f"{prefix}.sqlite")

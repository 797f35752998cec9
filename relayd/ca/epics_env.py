"""The EPICS environment relayd sets for itself before the CA server starts.

The CA server library sizes its buffers from EPICS_CA_MAX_ARRAY_BYTES once, when the
server is created. The default (16 kB) would make every PV over 2,000 doubles unreadable,
and a blanket 100 MB costs ~100 MB of memory in every process, so relayd computes what
its largest allowed PV (or its PV list) needs and raises the variable to that, never
lowering a value the operator chose.
"""

from __future__ import annotations

import logging
import os
from typing import MutableMapping

from relayd.config import Config

log = logging.getLogger("relayd.ca")

# Room for the largest DBR_CTRL/DBR_TIME header in front of the array, plus slack.
HEADER_BYTES = 1024


def pvlist_capacity(config: Config) -> int:
    """Characters the pvlist PV must hold: every name at full length, plus commas."""
    return config.max_pvs * (config.max_name_length + 1)


def array_bytes_needed(config: Config) -> int:
    """EPICS_CA_MAX_ARRAY_BYTES that fits the largest PV and the PV list."""
    largest_pv = config.max_elements * 8  # float64 is the widest element
    return max(largest_pv, pvlist_capacity(config)) + HEADER_BYTES


def raise_max_array_bytes(config: Config, environ: MutableMapping[str, str] = os.environ) -> int:
    """Raise EPICS_CA_MAX_ARRAY_BYTES in `environ` if it is too small; return the value."""
    needed = array_bytes_needed(config)
    current_text = environ.get("EPICS_CA_MAX_ARRAY_BYTES", "")
    try:
        current = int(current_text)
    except ValueError:
        current = 16384  # the EPICS default
    if current >= needed:
        return current
    environ["EPICS_CA_MAX_ARRAY_BYTES"] = str(needed)
    log.info(
        "EPICS_CA_MAX_ARRAY_BYTES raised from %s to %d so that PVs of %d elements "
        "and a list of %d PV names fit",
        current_text or "the default 16384", needed, config.max_elements, config.max_pvs,
    )
    return needed

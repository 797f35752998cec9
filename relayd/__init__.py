"""relayd: an EPICS relay. Values sent by scripts become Channel Access PVs."""

__version__ = "0.1.0"

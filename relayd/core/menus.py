"""EPICS alarm status and severity codes (the values of menuAlarmStat/menuAlarmSevr).

Kept as plain ints because they travel to the CA layer as numbers on every event.
"""

from __future__ import annotations

# Severities (menuAlarmSevr)
NO_ALARM = 0
MINOR = 1
MAJOR = 2
INVALID = 3

SEVERITY_NAMES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")

# Statuses (menuAlarmStat), the ones relayd raises.
STAT_NONE = 0
STAT_HIHI = 3
STAT_HIGH = 4
STAT_LOLO = 5
STAT_LOW = 6
STAT_TIMEOUT = 10
STAT_UDF = 17

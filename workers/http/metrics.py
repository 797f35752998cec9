"""``/metrics``: the relay's status counters and gauges in the Prometheus text format.

Every numeric status PV (`relayd.core.status.STATUS_PVS`) is one sample, named as
Prometheus names things (``relayd_`` + what it counts, ``_total`` for counters, base
units in the name) with the status PV's own doc as its HELP line; families of status
PVs that differ by one word (refusals by reason, by way in; restarts by process) are one
metric with a label. A status PV this table does not know still appears, as a gauge
named after it (`metric_for`), so a counter added later is never missing. Text status
PVs (the last refusal, the last autosave error) are in ``/api/v1/status``, not here.

Besides the status PVs: the resident memory of every relayd process (the supervisor
and each child, found by their process titles in /proc) and whether the HTTP worker's
mirror is in step with the CA process.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relayd.core.errors import Reason
from relayd.core.names import Kind
from relayd.core.status import STATUS_PVS, StatusPV

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAYS = ("ca", "zmq", "http", "pva")


class MetricName(NamedTuple):
    """Where one status PV goes: metric name, counter or gauge, and its label if any."""

    name: str
    counter: bool
    label: tuple[str, str] | None = None


# Status PVs by suffix; the families by pattern below.
NAMES: dict[str, MetricName] = {
    "status:pvs": MetricName("relayd_pvs", False),
    "status:placeholders": MetricName("relayd_placeholders", False),
    "status:accepted": MetricName("relayd_accepted_updates", True),
    "status:refused": MetricName("relayd_refusals", True),
    "status:deleted": MetricName("relayd_deleted_pvs", True),
    "status:uptime": MetricName("relayd_uptime_seconds", False),
    "status:zmq:messages": MetricName("relayd_zmq_messages", True),
    "status:zmq:updates": MetricName("relayd_zmq_updates", True),
    "status:pipe:backlog": MetricName("relayd_pipe_backlog_bytes", False),
    "status:pipe:lag": MetricName("relayd_pipe_lag_seconds", False),
    "status:pipe:dropped": MetricName("relayd_pipe_dropped_chunks", True),
    "status:autosave:enabled": MetricName("relayd_autosave_enabled", False),
    "status:autosave:lastSave": MetricName("relayd_autosave_last_save_timestamp_seconds", False),
    "status:autosave:pending": MetricName("relayd_autosave_pending_changes", False),
    "status:autosave:failures": MetricName("relayd_autosave_failures", True),
    "status:autosave:restored": MetricName("relayd_autosave_restored_pvs", False),
}
_REASONS = {reason.code for reason in Reason}
_PROCESSES = {"ca": "ca-server"}


def _snake(text: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", text).replace(":", "_").lower()


def metric_for(suffix: str) -> MetricName:
    """The metric of the status PV `suffix` (``status:...``)."""
    known = NAMES.get(suffix)
    if known is not None:
        return known
    parts = suffix.split(":")
    if len(parts) == 3 and parts[1] == "refused" and parts[2] in _REASONS:
        return MetricName("relayd_refusals_by_reason", True, ("reason", parts[2]))
    if len(parts) == 3 and parts[1] in ("refused", "accepted") and parts[2] in WAYS:
        name = "relayd_refusals_by_way" if parts[1] == "refused" else "relayd_accepted_by_way"
        return MetricName(name, True, ("way", parts[2]))
    if len(parts) == 3 and parts[1] == "restarts":
        return MetricName("relayd_restarts", True, ("process", _PROCESSES.get(parts[2], parts[2])))
    return MetricName("relayd_" + _snake(":".join(parts[1:])), False)


def _help(status: StatusPV, metric: MetricName) -> str:
    if metric.label is None:
        return status.doc
    return {"reason": "refusals, by reason code",
            "way": "updates accepted or refused, by way in (ca, zmq, http, pva)",
            "process": "times the supervisor restarted each process"}[metric.label[0]]


def families(status: dict[str, Any], status_pvs=STATUS_PVS) -> list[Metric]:
    """The metric families of the status PVs' values in `status` (suffix -> value)."""
    made: dict[str, Metric] = {}
    for pv in status_pvs:
        if pv.kind is Kind.CHAR or pv.suffix not in status:
            continue
        metric = metric_for(pv.suffix)
        family = made.get(metric.name)
        if family is None:
            kind = CounterMetricFamily if metric.counter else GaugeMetricFamily
            labels = [metric.label[0]] if metric.label else None
            family = made[metric.name] = kind(metric.name, _help(pv, metric), labels=labels)
        labels = [metric.label[1]] if metric.label else []
        family.add_metric(labels, float(status[pv.suffix]))
    return list(made.values())


def relayd_processes(parent: int) -> Iterator[tuple[str, int]]:
    """(role, pid) of the supervisor `parent` and each of its children, from /proc."""
    yield "supervisor", parent
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == parent and title.startswith("relayd: "):
            yield title[len("relayd: "):].strip(), int(entry.name)


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RelayCollector:
    """A prometheus_client collector over the mirror's latest status (see `families`)."""

    def __init__(self, mirror: Any, parent: int):
        self.mirror = mirror
        self.parent = parent

    def collect(self) -> Iterator[Metric]:
        yield from families(self.mirror.status)
        memory = GaugeMetricFamily("relayd_process_resident_memory_bytes",
                                   "resident memory of each relayd process",
                                   labels=["process"])
        for role, pid in relayd_processes(self.parent):
            rss = rss_bytes(pid)
            if rss is not None:
                memory.add_metric([role], float(rss))
        yield memory
        yield GaugeMetricFamily("relayd_http_mirror_synced",
                                "1 when the HTTP worker's copy of the PVs is in step with "
                                "the CA process", value=float(self.mirror.synced))


def registry(mirror: Any, parent: int) -> CollectorRegistry:
    """A registry of the relay's metrics alone (no default process/platform collectors:
    the process metrics above cover every relayd process, not only this one)."""
    made = CollectorRegistry(auto_describe=False)
    made.register(RelayCollector(mirror, parent))  # type: ignore[arg-type]
    return made


def render(made: CollectorRegistry) -> bytes:
    return generate_latest(made)

"""Status and control PV names can never be relay PV names (relayd.status)."""

from __future__ import annotations

import pytest

from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar, Kind, NameLimits
from relayd.core.registry import Registry
from relayd.core.writes import Relay
from relayd.core.status import STATUS_PVS

PREFIXES = ["relay", "P", "lab:bl1", "x_f1", "a-b_c2", "X_F10"]
CONTROL_SUFFIXES = ["pvlist", "delpv"]
SUFFIXES = [status.suffix for status in STATUS_PVS] + CONTROL_SUFFIXES


class Holder:
    def __init__(self, state):
        self.state = state


def test_there_are_status_pvs_for_each_reason() -> None:
    suffixes = {status.suffix for status in STATUS_PVS}
    assert len(suffixes) == len(STATUS_PVS)
    for reason in Reason:
        assert f"status:refused:{reason.code}" in suffixes
    assert {"status:pvs", "status:placeholders", "status:accepted", "status:refused",
            "status:deleted", "status:lastRefusal", "status:uptime"} <= suffixes


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_status_names_are_not_relay_names(prefix: str, suffix: str) -> None:
    grammar = Grammar(prefix, NameLimits(max_name_length=1000, max_elements=10**9))
    full = f"{prefix}:{suffix}"
    assert grammar.parse(full) is None
    with pytest.raises(Refused) as info:
        grammar.spec_for(suffix)
    assert info.value.reason is Reason.BAD_NAME
    registry = Registry(grammar, Holder)
    assert registry.search(full) is False
    assert registry.attach(full) is None


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_status_names_cannot_be_put_or_deleted_through_the_relay(suffix: str) -> None:
    grammar = Grammar("relay")
    relay = Relay(grammar, Registry(grammar, Holder))
    with pytest.raises(Refused) as info:
        relay.put(suffix, 1.0, 1)
    assert info.value.reason is Reason.BAD_NAME
    with pytest.raises(Refused) as info:
        relay.delete(suffix)
    assert info.value.reason is Reason.BAD_NAME
    assert relay.registry.pvs == {}


def test_status_values_compute_from_the_relay() -> None:
    grammar = Grammar("relay")
    relay = Relay(grammar, Registry(grammar, Holder))
    relay.put("a_f1", 1.0, 1)
    relay.registry.attach("relay:w_f1")
    relay.stats.count_refusal(Refused(Reason.BAD_VALUE, "relay:a_f1: nope"), "zmq")
    by_suffix = {status.suffix: status for status in STATUS_PVS}
    assert by_suffix["status:pvs"].compute(relay, 0.0) == 1
    assert by_suffix["status:placeholders"].compute(relay, 0.0) == 1
    assert by_suffix["status:accepted"].compute(relay, 0.0) == 1.0
    assert by_suffix["status:refused"].compute(relay, 0.0) == 1.0
    assert by_suffix["status:refused:badValue"].compute(relay, 0.0) == 1.0
    assert by_suffix["status:refused:badName"].compute(relay, 0.0) == 0.0
    assert by_suffix["status:lastRefusal"].compute(relay, 0.0) == b"zmq: badValue: relay:a_f1: nope"


def test_pipe_status_pvs() -> None:
    """The internal pipe's figures, as the CA process measures them, are status PVs."""
    grammar = Grammar("relay")
    relay = Relay(grammar, Registry(grammar, Holder))
    by_suffix = {status.suffix: status for status in STATUS_PVS}
    dropped = by_suffix["status:pipe:dropped"]
    assert (dropped.kind, dropped.count) == (Kind.FLOAT, 1)
    assert dropped.compute(relay, 0.0) == 0.0
    relay.stats.pipe_dropped = 7
    relay.stats.pipe_backlog = 1234
    relay.stats.pipe_lag = 0.0025
    values = {suffix: by_suffix[f"status:pipe:{suffix}"].compute(relay, 0.0)
              for suffix in ("dropped", "backlog", "lag")}
    assert values == {"dropped": 7.0, "backlog": 1234.0, "lag": 0.0025}
    assert all(type(value) is float for value in values.values())

"""One way from a PV's state into a gdd (relayd.ca.gdd.fill), for every gdd it fills.

pcaspy's gdd objects need no running server: these tests fill them and read them back.
A monitor event is a new gdd, a plain SWIG object; a read fills a gdd pcas hands over,
a pcaspy proxy that may not have a type yet; a DBR_CTRL event fills a member of a
container. All three must carry the same value, alarm and time stamp.
"""

from __future__ import annotations

import numpy as np
import pytest
from pcaspy import cas

from relayd.ca import gdd as ca_gdd
from relayd.core import menus
from relayd.core.meta import Meta
from relayd.core.names import Kind, PVSpec
from relayd.core.pvstate import PVState

TS = 1_700_000_000_123_456_789
EPICS_SECONDS = (TS - ca_gdd.EPICS_EPOCH_NS) // ca_gdd.NS


def proxy(value: object) -> cas.gdd:
    """A pcaspy proxy around a plain SWIG gdd, to read it back with pcaspy's methods."""
    if isinstance(value, cas.gdd):
        return value
    wrapped = cas.gdd.__new__(cas.gdd)
    wrapped.this = value
    return wrapped


def read_back(value: object, spec: PVSpec) -> tuple:
    """(type, data, (status, severity), (seconds, ns)) of a gdd; `value` stays referenced
    while it is read: the plain SWIG object owns its gdd."""
    gdd = proxy(value)
    data = ca_gdd.extract(gdd, spec)
    stamp = gdd.getTimeStamp()
    data = list(data) if isinstance(data, bytes) else np.atleast_1d(data).tolist()
    return (gdd.primitiveType(), data, tuple(gdd.getStatSevr()),
            (stamp.secPastEpoch, stamp.nsec))


STATES = [
    (PVSpec("p:f_f1", Kind.FLOAT, 1, False), 21.5, [21.5]),
    (PVSpec("p:i_i1", Kind.INT, 1, False), -7, [-7]),
    (PVSpec("p:c_c1", Kind.CHAR, 1, False), b"x", [ord("x")]),
    (PVSpec("p:a_f3", Kind.FLOAT, 3, False), np.array([1.5, -2.5]), [1.5, -2.5]),
    (PVSpec("p:b_i4", Kind.INT, 4, False), np.array([1, 2, 3, 4], dtype=np.int32),
     [1, 2, 3, 4]),
    (PVSpec("p:t_c8", Kind.CHAR, 8, False), b"text", list(b"text\0")),
]


@pytest.mark.parametrize("spec, stored, data", STATES, ids=[s[0].name for s in STATES])
def test_events_and_reads_carry_the_same_value_alarm_and_time(spec: PVSpec, stored: object,
                                                              data: list) -> None:
    state = PVState(spec)
    state.put(stored, TS)
    # pcaspy's putCharDataBuffer makes a text array's type aitInt8, as it always has.
    kind = cas.aitEnumInt8 if spec.kind is Kind.CHAR and spec.count > 1 else ca_gdd.AIT[spec.kind]
    expected = (kind, data, (menus.STAT_NONE, menus.NO_ALARM), (EPICS_SECONDS, 123_456_789))

    event = ca_gdd.monitor_event(state)  # no display attributes: a value gdd alone
    assert not isinstance(event, cas.gdd)  # the plain SWIG object, no proxy
    assert read_back(event, spec) == expected

    read = cas.gdd(ca_gdd.GDD_APP_VALUE, cas.aitEnumInvalid)  # as pcas may hand it over
    ca_gdd.fill_read(read, state)
    assert read_back(read, spec) == expected

    container = ca_gdd.ctrl_event(state)  # its value member has the container's type
    assert read_back(container[ca_gdd.CTRL_VALUE[spec.kind]], spec)[1:] == expected[1:]


@pytest.mark.parametrize("spec, stored, data", STATES[:2] + STATES[3:5],
                         ids=[s[0].name for s in STATES[:2] + STATES[3:5]])
def test_an_alarm_and_a_stamp_made_once_per_batch_go_in(spec: PVSpec, stored: object,
                                                        data: list) -> None:
    state = PVState(spec, Meta(lolo=-100.0, hihi=-50.0))  # every value is above HIHI
    state.put(stored, TS)
    assert (state.status, state.severity) == (menus.STAT_HIHI, menus.MAJOR)
    stamp = ca_gdd.Stamps()(TS + 1_000)  # the batch's stamp wins over the state's time
    event = ca_gdd.monitor_event(state, stamp)  # with limits: a DBR_CTRL container
    assert read_back(event[ca_gdd.CTRL_VALUE[spec.kind]], spec)[1:] == (
        data, (menus.STAT_HIHI, menus.MAJOR), (EPICS_SECONDS, 123_457_789))


def test_a_reused_read_gdd_loses_the_alarm_it_held() -> None:
    """pcas reuses containers: NO_ALARM must be written too, not left out."""
    spec = PVSpec("p:x_f1", Kind.FLOAT, 1, False)
    read = cas.gdd(ca_gdd.GDD_APP_VALUE, cas.aitEnumInvalid)
    read.setStatSevr(menus.STAT_HIHI, menus.MAJOR)
    state = PVState(spec)
    state.put(1.0, TS)
    ca_gdd.fill_read(read, state)
    assert tuple(read.getStatSevr()) == (menus.STAT_NONE, menus.NO_ALARM) == (
        state.status, state.severity)

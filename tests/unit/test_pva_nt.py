"""relayd.pva.nt: PV states as pvAccess normative types, and puts read back. Values only."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from p4p import Value

from relayd.core import menus
from relayd.core.errors import Reason, Refused
from relayd.core.meta import STATUS_MENU, Meta
from relayd.core.names import Grammar
from relayd.core.pvstate import new_state
from relayd.pva import nt, serve
from relayd.pva.bridge import credentials, peer_host

GRAMMAR = Grammar("u")
TS = 1_700_000_000_123_456_789


def state(name, meta=Meta(), value=None, ts_ns=TS):
    pv = new_state(GRAMMAR.parse(f"u:{name}"), meta)
    if value is not None:
        pv.put(value, ts_ns)
    return pv


def put_of(name, fields_):
    """A put as a client sends it: a Value of the PV's structure, only `fields_` marked."""
    spec = GRAMMAR.parse(f"u:{name}")
    value = Value(nt.structure(nt.shape(spec)), {})
    for field, item in fields_.items():
        value[field] = item
    return value, spec


@pytest.mark.parametrize("name, code, type_id", [
    ("a_f1", "d", "epics:nt/NTScalar:1.0"),
    ("a_i1", "i", "epics:nt/NTScalar:1.0"),
    ("a_f3", "ad", "epics:nt/NTScalarArray:1.0"),
    ("a_I5", "ai", "epics:nt/NTScalarArray:1.0"),
    ("a_c1", "s", "epics:nt/NTScalar:1.0"),
    ("a_C200", "s", "epics:nt/NTScalar:1.0"),
])
def test_each_kind_of_pv_has_its_normative_type(name, code, type_id):
    value = nt.full(state(name))
    assert value.getID() == type_id
    assert value.type()["value"] == code
    numeric = code != "s"
    assert {"display", "control", "valueAlarm"} <= set(value.keys()) if numeric else (
        set(value.keys()) == {"value", "alarm", "timeStamp", "display"})


def test_an_undefined_pv_is_invalid_udf_with_no_time():
    value = nt.full(state("never_f1"))
    assert value["value"] == 0.0
    assert (value["alarm.severity"], value["alarm.status"], value["alarm.message"]) == (
        menus.INVALID, 2, "UDF")
    assert value["timeStamp.secondsPastEpoch"] == 0 and value["timeStamp.nanoseconds"] == 0


def test_value_and_source_time_stamp():
    value = nt.full(state("x_f1", value=21.5))
    assert value["value"] == 21.5
    assert value["timeStamp.secondsPastEpoch"] == TS // 10**9
    assert value["timeStamp.nanoseconds"] == TS % 10**9
    assert (value["alarm.severity"], value["alarm.message"]) == (0, "")
    array = nt.full(state("x_I4", value=np.array([1, -2], dtype=np.int32)))["value"]
    assert array.dtype == np.int32 and list(array) == [1, -2]


def test_alarm_status_classes_follow_qsrv():
    assert len(nt.PVA_STATUS) == len(STATUS_MENU)
    by_name = dict(zip(STATUS_MENU, nt.PVA_STATUS))
    assert by_name["NO_ALARM"] == 0
    assert by_name["HIHI"] == by_name["LOW"] == 1  # DEVICE
    assert by_name["TIMEOUT"] == by_name["UDF"] == 2  # DRIVER
    pv = state("hot_f1", Meta(hihi=10.0), value=11.0)
    value = nt.full(pv)
    assert (value["alarm.severity"], value["alarm.status"], value["alarm.message"]) == (
        menus.MAJOR, 1, "HIHI")
    pv.go_stale()
    nt.fill_alarm(value, pv)
    assert (value["alarm.severity"], value["alarm.message"]) == (menus.INVALID, "TIMEOUT")


def test_attributes_fill_display_control_and_value_alarm():
    meta = Meta(egu="mm", prec=3, desc="level", hopr=2.5, lopr=-1.0, drvh=9.0, drvl=1.0,
                high=5.0, hsv=menus.MAJOR, hyst=0.5)
    value = nt.full(state("n_i1", meta, value=1))
    assert value["display.units"] == "mm" and value["display.precision"] == 3
    assert value["display.description"] == "level"
    assert value["display.limitHigh"] == 2.5  # doubles even on an int PV
    assert (value["control.limitLow"], value["control.limitHigh"]) == (1.0, 9.0)
    assert value["valueAlarm.active"] is True
    assert value["valueAlarm.highWarningLimit"] == 5.0
    assert value["valueAlarm.highWarningSeverity"] == menus.MAJOR
    assert math.isnan(value["valueAlarm.highAlarmLimit"])  # not set
    assert value["valueAlarm.hysteresis"] == 0.5
    assert nt.full(state("quiet_f1"))["valueAlarm.active"] is False
    assert value["display.form.choices"][0] == "Default"


def test_every_attribute_field_is_in_the_structure_and_names_an_attribute():
    attributes = {f.name for f in fields(Meta)}
    for table, name in ((nt.META, "a_f1"), (nt.TEXT_META, "a_c5")):
        leaves = nt.leaves(nt.shape(GRAMMAR.parse(f"u:{name}")))
        for field, attribute in table:
            assert field in leaves and attribute in attributes, field


@pytest.mark.parametrize("stored, text", [
    (b"plain", "plain"),
    ("ünïcode".encode(), "ünïcode"),
    (b"\xb5m", "\xb5m"),  # not UTF-8: Latin-1, as EGU is read
    (b"", ""),
])
def test_text_is_a_string(stored, text):
    assert nt.full(state("t_c20", value=stored))["value"] == text


def test_a_full_text_pv_and_a_text_buffer():
    assert nt.full(state("t_c5", value=b"exact"))["value"] == "exact"  # no NUL room
    log = state("l_C8")
    for part in (b"abc", b"defgh", b"ij"):
        log.put(part, TS)
    assert nt.full(log)["value"] == "cdefghij"


# --- puts ---------------------------------------------------------------------------------


def test_a_value_put():
    put, spec = put_of("p_f1", {"value": 2.5})
    assert nt.read_put(put, nt.full(state("p_f1")), spec) == nt.Put(2.5, None, {})


def test_an_attribute_put_is_checked_as_a_field_put():
    put, spec = put_of("p_f1", {"display.units": "V", "valueAlarm.lowAlarmLimit": math.nan,
                                "valueAlarm.highAlarmSeverity": 1})
    result = nt.read_put(put, nt.full(state("p_f1")), spec)
    assert result.value is nt.NO_VALUE
    assert result.meta == {"egu": "V", "lolo": None, "hhsv": 1}
    put, spec = put_of("p_f1", {"display.precision": 99})
    with pytest.raises(Refused) as refused:
        nt.read_put(put, nt.full(state("p_f1")), spec)
    assert refused.value.reason is Reason.BAD_VALUE and "PREC" in refused.value.detail


def test_a_whole_structure_read_then_put_back_changes_only_what_differs():
    current = nt.full(state("w_f1", Meta(egu="A"), value=1.0))
    put = nt.full(state("w_f1", Meta(egu="A"), value=1.0))  # all marked, as a get returns
    put["value"] = 3.0
    result = nt.read_put(put, current, GRAMMAR.parse("u:w_f1"))
    assert result.value == 3.0 and result.meta["egu"] == "A"
    assert result.ts_ns == TS  # its own time stamp, put back


def test_what_the_relay_computes_cannot_be_put():
    current = nt.full(state("r_f1", value=1.0))
    put, spec = put_of("r_f1", {"value": 2.0, "alarm.severity": menus.MAJOR})
    with pytest.raises(Refused) as refused:
        nt.read_put(put, current, spec)
    assert refused.value.reason is Reason.READ_ONLY and "alarm.severity" in refused.value.detail


def test_a_source_time_stamp():
    put, spec = put_of("s_f1", {"value": 1.0, "timeStamp.secondsPastEpoch": 1_600_000_000,
                                "timeStamp.nanoseconds": 5})
    assert nt.read_put(put, nt.full(state("s_f1")), spec).ts_ns == 1_600_000_000 * 10**9 + 5
    for bad in ({"value": 1.0, "timeStamp.secondsPastEpoch": 12},
                {"value": 1.0, "timeStamp.secondsPastEpoch": 1_600_000_000,
                 "timeStamp.nanoseconds": -1},
                {"timeStamp.secondsPastEpoch": 1_600_000_000}):
        put, spec = put_of("s_f1", bad)
        with pytest.raises(Refused) as refused:
            nt.read_put(put, nt.full(state("s_f1")), spec)
        assert refused.value.reason is Reason.BAD_VALUE, bad


def test_a_put_of_nothing_is_refused():
    put, spec = put_of("e_f1", {})
    with pytest.raises(Refused) as refused:
        nt.read_put(put, nt.full(state("e_f1")), spec)
    assert refused.value.reason is Reason.BAD_VALUE and "neither" in refused.value.detail


# --- who a put is from, and the port served ------------------------------------------------


@pytest.mark.parametrize("peer, host", [
    ("10.0.0.5:40312", "10.0.0.5"),
    ("[::ffff:127.0.0.1]:5075", "127.0.0.1"),
    ("[fe80::1]:5075", "fe80::1"),
])
def test_the_host_of_a_put_is_its_peer_address(peer, host):
    assert peer_host(peer) == host


def test_credentials_are_the_account_and_its_roles_as_qsrv_names_them():
    class Op:
        def account(self):
            return "DOMAIN/alice"

        def roles(self):
            return {"ops", "dev"}

        def peer(self):
            return "192.168.1.7:1234"

    assert credentials(Op()) == (["alice", "role/dev", "role/ops"], "192.168.1.7")


def test_a_taken_port_is_named_with_the_port_served():
    assert serve.wanted_port({}) == 5075
    assert serve.wanted_port({"EPICS_PVA_SERVER_PORT": "6000"}) == 6000
    assert serve.wanted_port({"EPICS_PVA_SERVER_PORT": "6000",
                              "EPICS_PVAS_SERVER_PORT": "7000"}) == 7000
    assert serve.port_problem(5075, 5075) is None
    assert serve.interface_host("127.0.0.1:5075") == "127.0.0.1"  # pvxs adds its port
    assert serve.interface_host("0.0.0.0") == "0.0.0.0"
    assert serve.interface_host("[::1]:5075") == "[::1]"
    assert serve.interface_host("::1") == "::1"
    assert serve.port_problem(0, 41000) is None  # a random port was asked for
    problem = serve.port_problem(5075, 41000)
    assert "5075 is taken" in problem and "serving on port 41000" in problem

"""End-to-end: PV attributes as record fields, alarms, staleness and source time stamps.

Real relays, read and written through both CA clients (tests taking `client` run once
with pyepics and once with caproto) and through the ZMQ push client. The harness clients
cover values; the helpers here add what fields need: DBR_STRING puts (string fields,
enum fields by name), DBR_CTRL reads, and DBR_CTRL monitors with a chosen event mask.

Status counters reach the status PVs within about half a second when a refusal happens
in the ingest worker, so they are polled with `wait_for`.
"""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import zmq

from relayd.core import protocol
from relayd.client import Client
from tests.e2e._tools import full, status, wait_status_is
from tests.harness import DEFAULT_TIMEOUT, Event, Monitor, RelayProcess, wait_for

DBE_VALUE, DBE_LOG, DBE_ALARM, DBE_PROPERTY = 1, 2, 4, 8
NO_ALARM, MINOR, MAJOR, INVALID = 0, 1, 2, 3
STAT_NONE, STAT_HIHI, STAT_HIGH, STAT_LOLO, STAT_LOW, STAT_TIMEOUT, STAT_UDF = (
    0, 3, 4, 5, 6, 10, 17)
EPICS_EPOCH = 631_152_000

CTRL_KEYS = ("units", "precision", "upper_disp_limit", "lower_disp_limit",
             "upper_alarm_limit", "upper_warning_limit", "lower_warning_limit",
             "lower_alarm_limit", "upper_ctrl_limit", "lower_ctrl_limit")


# --- helpers: names, pushes, status ------------------------------------------------------------


def other(client, pyepics_client, caproto_client):
    """The other client, so that writer and reader are independent implementations."""
    return caproto_client if client is pyepics_client else pyepics_client


def pushed(relay: RelayProcess, *updates: tuple) -> None:
    """Send updates over ZMQ, one message each: ("put", pv, value, {kwargs}) or
    ("meta", pv, {attributes}).

    The maps are built here rather than by `Client.put`, which refuses bad attributes
    before sending: these tests need the relay's own checks to see them.
    """
    context = zmq.Context()
    publisher = context.socket(zmq.PUSH)
    publisher.setsockopt(zmq.LINGER, 5000)
    publisher.connect(relay.endpoint)
    try:
        for kind, pv, *rest in updates:
            if kind == "put":
                options = rest[1] if len(rest) > 1 else {}
                update = protocol.encode_update(pv, rest[0], ts=options.get("ts"))
                if "meta" in options:
                    update["meta"] = options["meta"]
            else:
                update = {"pv": pv, "meta": rest[0]}
            publisher.send(protocol.dumps(update))
    finally:
        publisher.close()
        context.term()


def wait_created(reader: Any, relay: RelayProcess, *bases: str) -> None:
    """Wait until pushed PVs exist (reading a field of a PV that does not exist yet would
    be refused, and counted)."""
    pvs = {full(relay, base) for base in bases}
    wait_for(lambda: pvs <= set(reader.get(full(relay, "pvlist"), as_string=True).split(",")),
             what=f"{', '.join(sorted(pvs))} created")


def last_refusal(reader: Any, relay: RelayProcess) -> str:
    return reader.get(full(relay, "status:lastRefusal"), as_string=True)


# --- helpers: fields, DBR_CTRL ----------------------------------------------------------------


def get_field(client: Any, name: str) -> Any:
    """A field's value as plain Python: str for string fields, int for enums."""
    value = client.get(name)
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def put_string(client: Any, name: str, text: str) -> bool:
    """Put `text` as a DBR_STRING, whatever the channel's type (as `caput` does for a
    string field or an enum given by name); True when the server accepted it."""
    if client.label == "caproto":
        response = client.pv(name).write([text], data_type=client.ChannelType.STRING,
                                         wait=True, timeout=DEFAULT_TIMEOUT)
        return response.status.success == 1
    dbr = client.epics.dbr
    data = (1 * dbr.string_t)()
    data[0] = ctypes.create_string_buffer(text.encode(), ctypes.sizeof(dbr.string_t))
    return client.put_dbr(name, dbr.STRING, 1, data)


def put_field(client: Any, name: str, value: Any) -> bool:
    """Put to a field in its native type; text goes as a DBR_STRING."""
    if isinstance(value, str):
        return put_string(client, name, value)
    return client.put(name, value)


def _ctrl(values: dict) -> dict:
    """The DBR_CTRL members of `values` (limits of a char PV as numbers, units as str)."""
    ctrl = {}
    for key in CTRL_KEYS:
        if key not in values or values[key] is None:
            continue
        item = values[key]
        if isinstance(item, bytes):
            item = (item.split(b"\0", 1)[0].decode() if key == "units"
                    else int.from_bytes(item, "little", signed=True))
        ctrl[key] = item.item() if isinstance(item, np.generic) else item
    return ctrl


_CTRL_PVS: dict[str, Any] = {}


def get_ctrl(client: Any, name: str) -> dict:
    """DBR_CTRL of `name`: the value, alarm and every DBR_CTRL member, by pyepics' names."""
    if client.label == "caproto":
        pv = client.pv(name)
        response = pv.read(data_type="control", timeout=DEFAULT_TIMEOUT)
        meta = response.metadata
        result = _ctrl({key: getattr(meta, key, None) for key in CTRL_KEYS})
        result.update(value=client._value(pv, response, False), severity=int(meta.severity),
                      status=int(meta.status))
        return result
    pv = _CTRL_PVS.get(name)
    if pv is None:
        pv = _CTRL_PVS[name] = client.epics.PV(name, form="ctrl", auto_monitor=False)
    assert pv.wait_for_connection(timeout=DEFAULT_TIMEOUT), f"cannot connect to {name}"
    data = pv.get_with_metadata(form="ctrl", use_monitor=False, timeout=DEFAULT_TIMEOUT)
    assert data is not None, f"DBR_CTRL get of {name} failed"
    result = _ctrl(data)
    result.update(value=data["value"], severity=data["severity"], status=data["status"])
    return result


@dataclass
class CtrlEvent(Event):
    """A DBR_CTRL monitor event: the value and alarm, and the attributes it carried."""

    ctrl: dict = field(default_factory=dict)


def subscribe(client: Any, name: str, form: str = "ctrl",
              mask: int = DBE_VALUE | DBE_ALARM) -> Monitor:
    """A DBR_CTRL (`form` "ctrl") or DBR_TIME ("time") subscription with event mask
    `mask`. (The harness' monitors take the clients' default masks, and caproto's
    includes DBE_PROPERTY.)"""
    monitor = Monitor(name)
    if client.label == "caproto":
        from caproto import SubscriptionType

        pv, = client.context.get_pvs(name)

        def on_value(sub: Any, response: Any) -> None:
            meta = response.metadata
            ctrl = _ctrl({key: getattr(meta, key, None) for key in CTRL_KEYS})
            monitor.add(CtrlEvent(client._value(pv, response, False), int(meta.severity),
                                  int(meta.status), getattr(meta, "timestamp", None),
                                  ctrl=ctrl))

        def on_connection(pv_: Any, state: str) -> None:
            if state in ("connected", "disconnected"):
                monitor.add(CtrlEvent(connected=state == "connected"))

        pv.connection_state_callback.add_callback(on_connection, run=True)
        sub = pv.subscribe(data_type="control" if form == "ctrl" else "time",
                           mask=SubscriptionType(mask))
        token = sub.add_callback(on_value)

        def close() -> None:
            try:
                sub.remove_callback(token)
                sub.clear()
            except Exception:
                pass  # see CaprotoClient.monitor

        monitor.closer = close
        monitor.keep = (pv, on_value, on_connection)  # caproto holds weak references
        return monitor

    def on_change(value=None, severity=None, status=None, timestamp=None, nelm=1,
                  **kwargs: Any) -> None:
        if isinstance(value, np.ndarray):
            value = value.copy()
        elif (nelm or 1) > 1:
            value = np.array([value])  # pyepics hands one-element arrays as scalars
        monitor.add(CtrlEvent(value, severity, status, timestamp if form == "time" else None,
                              ctrl=_ctrl(kwargs) if form == "ctrl" else {}))

    def on_connection(conn=None, **_: Any) -> None:
        monitor.add(CtrlEvent(connected=bool(conn)))

    pv = client.epics.PV(name, form=form, auto_monitor=mask, callback=on_change,
                         connection_callback=on_connection)
    monitor.closer = pv.disconnect
    return monitor


def monitor_ctrl(client: Any, name: str, mask: int = DBE_VALUE | DBE_ALARM) -> Monitor:
    return subscribe(client, name, "ctrl", mask)


def monitor_time(client: Any, name: str, mask: int = DBE_VALUE | DBE_ALARM) -> Monitor:
    return subscribe(client, name, "time", mask)


def alarm_of(event: Any) -> tuple[int, int]:
    return event.status, event.severity


# --- every field over CA ----------------------------------------------------------------------


FIELD_VALUES = {
    "EGU": "mm", "PREC": 3, "DESC": "Temperature of the cold head, stage 2.",
    "HOPR": 100.0, "LOPR": -100.0, "DRVH": 50.0, "DRVL": -50.0,
    "HIHI": 90.0, "HIGH": 80.0, "LOW": -80.0, "LOLO": -90.0,
    "HHSV": INVALID, "HSV": MAJOR, "LSV": NO_ALARM, "LLSV": MINOR,
    "HYST": 0.5, "TMO": 3600.0,
}


def test_every_writable_field_over_ca(client, pyepics_client, caproto_client, shared_relay,
                                      name):
    pv = full(shared_relay, name("every_f1"))
    reader = other(client, pyepics_client, caproto_client)
    assert client.put(pv, 1.5)
    defaults = {"EGU": "", "PREC": 0, "DESC": "", "HOPR": 0.0, "LOPR": 0.0, "DRVH": 0.0,
                "DRVL": 0.0, "HIHI": 0.0, "HIGH": 0.0, "LOW": 0.0, "LOLO": 0.0,
                "HHSV": MAJOR, "HSV": MINOR, "LSV": MINOR, "LLSV": MAJOR, "HYST": 0.0,
                "TMO": 0.0}
    assert {f: get_field(reader, f"{pv}.{f}") for f in defaults} == defaults
    for field_name, value in FIELD_VALUES.items():
        assert put_field(client, f"{pv}.{field_name}", value), field_name
    assert {f: get_field(reader, f"{pv}.{f}") for f in FIELD_VALUES} == FIELD_VALUES
    assert {f: get_field(client, f"{pv}.{f}") for f in FIELD_VALUES} == FIELD_VALUES
    assert len(FIELD_VALUES["DESC"]) == 38
    assert reader.get(pv) == 1.5  # attributes never change the value


@pytest.mark.parametrize("base, value, nelm, nord, rtyp", [
    ("scalar_f1", 2.5, 1, 1, "ai"),
    ("count_i1", 7, 1, 1, "longin"),
    ("trace_f10", [1.0, 2.0, 3.0], 10, 3, "waveform"),
    ("ints_i4", [1, 2, 3, 4], 4, 4, "waveform"),
    ("log_F5", [1.0, 2.0], 5, 2, "waveform"),
    ("text_c20", "hello", 20, 6, "waveform"),   # the text and its NUL, as caput -S
])
def test_read_only_fields(client, shared_relay, name, base, value, nelm, nord, rtyp):
    pv = full(shared_relay, name(base))
    assert client.put(pv, value)
    assert get_field(client, f"{pv}.NELM") == nelm
    assert get_field(client, f"{pv}.NORD") == nord
    assert get_field(client, f"{pv}.RTYP") == rtyp
    assert get_field(client, f"{pv}.SEVR") == NO_ALARM
    assert get_field(client, f"{pv}.STAT") == STAT_NONE


def test_read_only_fields_refuse_puts(client, start_relay):
    relay = start_relay()
    pv = full(relay, "ro_f3")
    assert client.put(pv, [1.0, 2.0])
    assert not client.put(f"{pv}.NELM", 7)
    assert not client.put(f"{pv}.NORD", 1)
    assert not put_string(client, f"{pv}.RTYP", "ao")
    assert not client.put(f"{pv}.SEVR", MAJOR)
    assert not put_string(client, f"{pv}.STAT", "HIHI")
    assert status(client, relay, "refused:readOnly") == 5
    assert status(client, relay, "refused") == 5
    assert "readOnly" in last_refusal(client, relay) and f"{pv}.STAT" in last_refusal(client,
                                                                                       relay)
    assert [get_field(client, f"{pv}.{f}") for f in ("NELM", "NORD", "RTYP", "SEVR", "STAT")
            ] == [3, 2, "waveform", NO_ALARM, STAT_NONE]
    assert list(client.get(pv)) == [1.0, 2.0]


def test_field_types_follow_epics(caproto_client, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("typed_f1"))
    assert caproto_client.put(pv, 1.0)
    types = caproto_client.ChannelType
    expected = {"EGU": types.STRING, "DESC": types.STRING, "RTYP": types.STRING,
                "PREC": types.INT, "NELM": types.LONG, "NORD": types.LONG,
                "HOPR": types.DOUBLE, "LOPR": types.DOUBLE, "DRVH": types.DOUBLE,
                "DRVL": types.DOUBLE, "HIHI": types.DOUBLE, "HIGH": types.DOUBLE,
                "LOW": types.DOUBLE, "LOLO": types.DOUBLE, "HYST": types.DOUBLE,
                "TMO": types.DOUBLE, "HHSV": types.ENUM, "HSV": types.ENUM,
                "LSV": types.ENUM, "LLSV": types.ENUM, "SEVR": types.ENUM,
                "STAT": types.ENUM, "VAL": types.DOUBLE}
    for field_name, channel_type in expected.items():
        channel = caproto_client.pv(f"{pv}.{field_name}").channel
        assert channel.native_data_type == channel_type, field_name
        assert channel.native_data_count == 1, field_name
    dbr = pyepics_client.epics.dbr
    assert pyepics_client.ca.field_type(pyepics_client.pv(f"{pv}.HHSV").chid) == dbr.ENUM
    assert pyepics_client.ca.field_type(pyepics_client.pv(f"{pv}.EGU").chid) == dbr.STRING


def test_severity_menus_over_dbr_ctrl(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("menus_f1"))
    assert caproto_client.put(pv, 1.0)
    for field_name in ("HHSV", "HSV", "LSV", "LLSV", "SEVR"):
        meta = caproto_client.pv(f"{pv}.{field_name}").read(data_type="control").metadata
        assert meta.enum_strings == (b"NO_ALARM", b"MINOR", b"MAJOR", b"INVALID"), field_name
    stat = caproto_client.pv(f"{pv}.STAT").read(data_type="control").metadata.enum_strings
    # A CA enum has at most 16 states: menuAlarmStat up to SOFT (TIMEOUT is 10).
    assert stat[:5] == (b"NO_ALARM", b"READ", b"WRITE", b"HIHI", b"HIGH")
    assert stat[10] == b"TIMEOUT" and len(stat) == 16


def test_enum_fields_by_name_and_by_index(client, shared_relay, name):
    pv = full(shared_relay, name("enums_f1"))
    assert client.put(pv, 1.0)
    for text, index in (("INVALID", 3), ("NO_ALARM", 0), ("MINOR", 1), ("MAJOR", 2)):
        assert put_string(client, f"{pv}.HHSV", text)
        assert get_field(client, f"{pv}.HHSV") == index
    for index in (3, 0, 1):
        assert client.put(f"{pv}.LLSV", index)
        assert get_field(client, f"{pv}.LLSV") == index
    # Not a state: refused, nothing changes.
    assert not put_string(client, f"{pv}.HHSV", "LOUD")
    assert not client.put(f"{pv}.LLSV", 7)
    assert get_field(client, f"{pv}.HHSV") == MAJOR
    assert get_field(client, f"{pv}.LLSV") == MINOR


def test_string_fields_hold_39_bytes(client, shared_relay, name):
    pv = full(shared_relay, name("long_f1"))
    assert client.put(pv, 1.0)
    text = "x" * 38 + "y"
    assert put_string(client, f"{pv}.DESC", text)
    assert get_field(client, f"{pv}.DESC") == text
    assert put_string(client, f"{pv}.EGU", "")
    assert get_field(client, f"{pv}.EGU") == ""


def test_bad_field_values_over_ca_are_refused(client, start_relay):
    relay = start_relay()
    pv = full(relay, "checked_f1")
    assert client.put(pv, 1.0)
    assert client.put(f"{pv}.HOPR", 10.0)
    assert not client.put(f"{pv}.HOPR", math.nan)      # display limits must be numbers
    assert not client.put(f"{pv}.DRVL", math.inf)
    assert not client.put(f"{pv}.PREC", 18)
    assert not client.put(f"{pv}.PREC", -1)
    assert not client.put(f"{pv}.HYST", -1.0)
    assert not client.put(f"{pv}.TMO", -0.5)
    assert status(client, relay, "refused:badValue") == 6
    # A state name not in the menu is refused by pcas while converting, before relayd
    # sees the put (as for values): the put fails, and relayd cannot count it.
    assert not put_string(client, f"{pv}.HHSV", "LOUD")
    assert get_field(client, f"{pv}.HHSV") == MAJOR
    assert status(client, relay, "refused") == 6
    assert "PREC" in relay.log_text() and "is outside 0..17" in relay.log_text()
    assert [get_field(client, f"{pv}.{f}") for f in ("HOPR", "DRVL", "PREC", "HYST", "TMO")
            ] == [10.0, 0.0, 0, 0.0, 0.0]


def test_text_that_is_not_utf8_is_refused_or_taken_never_an_internal_error(caproto_client,
                                                                          start_relay):
    """A DBR_STRING put of Latin-1 bytes (caproto encodes str as Latin-1 by default)."""
    relay = start_relay()
    pv = full(relay, "latin_f1")
    assert caproto_client.put(pv, 1.0)
    response = caproto_client.pv(f"{pv}.EGU").write(
        [b"\xb5m"], data_type=caproto_client.ChannelType.STRING, wait=True)
    assert "internal error" not in relay.log_text()
    if response.status.success != 1:
        assert status(caproto_client, relay, "refused:badValue") == 1
        assert get_field(caproto_client, f"{pv}.EGU") == ""


def test_nan_unsets_a_limit_over_ca(client, shared_relay, name):
    pv = full(shared_relay, name("unset_f1"))
    assert client.put(pv, 5.0)
    assert client.put(f"{pv}.HIHI", 4.0)
    assert alarm_of(client.get_meta(pv)) == (STAT_HIHI, MAJOR)
    assert client.put(f"{pv}.HIHI", math.nan)
    assert get_field(client, f"{pv}.HIHI") == 0.0           # an unset limit reads 0...
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert client.put(pv, -1.0)
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)  # ...and is not at 0


# --- every field over ZMQ ----------------------------------------------------------------------


ZMQ_META = {"egu": "K", "prec": 2, "desc": "cold head", "hopr": 300, "lopr": 4,
            "drvh": 290, "drvl": 5, "hihi": 295, "high": 280, "low": 10, "lolo": 6,
            "hhsv": "INVALID", "hsv": "major", "lsv": 0, "llsv": 1, "hyst": 0.5, "tmo": 3600}


def test_meta_with_a_value_and_alone_over_zmq(client, shared_relay, name):
    base = name("zmq_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 77.0, {"meta": ZMQ_META}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: get_field(client, f"{pv}.EGU") == "K", what="EGU set over ZMQ")
    assert {f: get_field(client, f"{pv}.{f}") for f in FIELD_VALUES} == {
        "EGU": "K", "PREC": 2, "DESC": "cold head", "HOPR": 300.0, "LOPR": 4.0,
        "DRVH": 290.0, "DRVL": 5.0, "HIHI": 295.0, "HIGH": 280.0, "LOW": 10.0, "LOLO": 6.0,
        "HHSV": INVALID, "HSV": MAJOR, "LSV": NO_ALARM, "LLSV": MINOR, "HYST": 0.5,
        "TMO": 3600.0}
    assert client.get(pv) == 77.0
    # The new limits judged the value that came with them: 77 <= LOW (10)? no; the
    # LOLO of 6? no; so no alarm. Attributes alone then change what needs changing.
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    pushed(shared_relay, ("meta", base, {"egu": "mK", "high": 50, "hihi": None,
                                         "lolo": math.nan}))
    wait_for(lambda: get_field(client, f"{pv}.EGU") == "mK", what="EGU changed alone")
    assert get_field(client, f"{pv}.HIGH") == 50.0
    assert get_field(client, f"{pv}.HIHI") == 0.0             # nil unsets a limit...
    assert get_field(client, f"{pv}.LOLO") == 0.0             # ...and so does NaN
    assert get_field(client, f"{pv}.DESC") == "cold head"   # the rest is kept
    assert alarm_of(client.get_meta(pv)) == (STAT_HIGH, MAJOR)
    assert client.get(pv) == 77.0                            # the value too


def test_meta_alone_for_a_pv_that_does_not_exist_is_refused(client, start_relay):
    relay = start_relay()
    watched = client.monitor(full(relay, "watched_f1"))      # a placeholder
    watched.wait_count(1)
    pushed(relay, ("meta", "nothing_f1", {"egu": "mm"}), ("meta", "watched_f1", {"egu": "mm"}))
    wait_status_is(client, relay, "refused:noSuchPV", 2)
    assert status(client, relay, "refused") == 2
    assert "attributes for a PV that does not exist" in last_refusal(client, relay)
    assert client.get(full(relay, "pvlist"), as_string=True) == ""
    assert alarm_of(client.get_meta(full(relay, "watched_f1"))) == (STAT_UDF, INVALID)
    # A put with attributes creates the PV with them.
    pushed(relay, ("put", "nothing_f1", 1.0, {"meta": {"egu": "mm"}}))
    wait_for(lambda: client.get(full(relay, "pvlist"), as_string=True)
             == full(relay, "nothing_f1"), what="created by a put with meta")
    assert get_field(client, full(relay, "nothing_f1.EGU")) == "mm"
    watched.close()


REFUSED_META = [
    ({"units": "K"}, "unknown attribute 'units'"),
    ({"EGU": "K"}, "unknown attribute 'EGU'"),
    ({"egu": 273}, "EGU: 273 is not text"),
    ({"egu": "x" * 40}, "EGU: longer than 39 bytes"),
    ({"hihi": "300"}, "HIHI: '300' is not a number"),
    ({"high": [1.0]}, "HIGH: [1.0] is not a number"),
    ({"hopr": None}, "HOPR: None is not a number"),
    ({"prec": 1.5}, "PREC: 1.5 is not an integer"),
    ({"hhsv": "LOUD"}, "HHSV: 'LOUD' is not one of"),
    ({"tmo": -1}, "TMO: -1 is negative"),
    ({"egu": "V", "low": "low"}, "LOW: 'low' is not a number"),  # all or nothing
]


def test_refused_meta_changes_nothing(client, start_relay):
    """Unknown keys, wrong types, limits that are not numbers, text too long: each is
    counted as badValue, with or without a value, and changes nothing."""
    relay = start_relay()
    reader = client
    pv = full(relay, "kept_f1")
    pushed(relay, ("put", "kept_f1", 1.0, {"meta": {"egu": "mm", "hihi": 10}}))
    wait_created(reader, relay, "kept_f1")
    wait_for(lambda: get_field(reader, f"{pv}.EGU") == "mm", what="first put applied")
    before = {f: get_field(reader, f"{pv}.{f}") for f in FIELD_VALUES}
    for number, (meta, detail) in enumerate(REFUSED_META, start=1):
        pushed(relay, ("put", "kept_f1", 50.0, {"meta": meta}), ("meta", "kept_f1", meta),
               ("put", "other_f1", 2.0, {"meta": meta}))
        wait_status_is(reader, relay, "refused:badValue", 3 * number)
        text = last_refusal(reader, relay)
        assert text.startswith("ZMQ update: badValue: ") and detail in text, text
    assert status(reader, relay, "refused") == 3 * len(REFUSED_META)
    assert {f: get_field(reader, f"{pv}.{f}") for f in FIELD_VALUES} == before
    assert reader.get(pv) == 1.0                             # the value was refused with it
    assert alarm_of(reader.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert reader.get(full(relay, "pvlist"), as_string=True) == pv  # nothing created


# --- DBR_CTRL -------------------------------------------------------------------------------------


CTRL_META = {"egu": "mm", "prec": 3, "hopr": 100, "lopr": -100, "drvh": 50, "drvl": -50,
             "hihi": 90, "high": 80, "low": -80, "lolo": -90}
CTRL_EXPECTED = {"units": "mm", "upper_disp_limit": 100, "lower_disp_limit": -100,
                 "upper_ctrl_limit": 50, "lower_ctrl_limit": -50, "upper_alarm_limit": 90,
                 "upper_warning_limit": 80, "lower_warning_limit": -80,
                 "lower_alarm_limit": -90}


@pytest.mark.parametrize("base, value", [
    ("ctrl_f1", 1.5), ("ctrl_i1", 2), ("ctrl_f3", [1.0, 2.0]), ("ctrl_I4", [3]),
    ("ctrl_F4", [1.0, 2.0]),
])
def test_dbr_ctrl_carries_the_attributes(client, shared_relay, name, base, value):
    """HOPR/LOPR are the display limits, DRVH/DRVL the control limits, HIHI/HIGH/LOW/LOLO
    the alarm and warning limits; PREC is there for doubles only, as in DBR_CTRL."""
    pv = full(shared_relay, name(base))
    pushed(shared_relay, ("put", name(base), value, {"meta": CTRL_META}))
    wait_created(client, shared_relay, name(base))
    ctrl = wait_for(lambda: (c := get_ctrl(client, pv))["units"] == "mm" and c,
                    what="the attributes in DBR_CTRL")
    assert {k: ctrl[k] for k in CTRL_EXPECTED} == CTRL_EXPECTED
    if "_f" in base.lower():
        assert ctrl["precision"] == 3
    else:
        assert "precision" not in ctrl
    assert np.array_equal(np.atleast_1d(ctrl["value"]), np.atleast_1d(value))
    assert (ctrl["status"], ctrl["severity"]) == (STAT_NONE, NO_ALARM)


def test_control_limits_do_not_clip_values(client, shared_relay, name):
    """DRVH/DRVL are served as control limits for display; the relay stores what is put."""
    pv = full(shared_relay, name("unclipped_f1"))
    assert client.put(pv, 0.0)
    assert client.put(f"{pv}.DRVH", 50.0)
    assert client.put(f"{pv}.DRVL", -50.0)
    assert client.put(pv, 1000.0)
    assert client.get(pv) == 1000.0
    assert client.put(pv, -1000.0)
    assert client.get(pv) == -1000.0
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)


@pytest.mark.parametrize("base", ["other_f1", "other_i1"])
def test_control_limits_in_every_dbr_ctrl_type(caproto_client, shared_relay, name, base):
    """A client may ask for DBR_CTRL in any type, not only the PV's native one."""
    pv = full(shared_relay, name(base))
    assert caproto_client.put(pv, 1)
    for field_name, value in (("HOPR", 100), ("LOPR", -100), ("DRVH", 50), ("DRVL", -50)):
        assert caproto_client.put(f"{pv}.{field_name}", float(value))
    types = caproto_client.ChannelType
    for data_type in (types.CTRL_DOUBLE, types.CTRL_FLOAT, types.CTRL_LONG, types.CTRL_INT):
        meta = caproto_client.pv(pv).read(data_type=data_type).metadata
        assert (meta.upper_disp_limit, meta.lower_disp_limit) == (100, -100), data_type
        assert (meta.upper_ctrl_limit, meta.lower_ctrl_limit) == (50, -50), data_type


@pytest.mark.parametrize("base", ["hopr_f1", "hopr_i1", "hopr_f3"])
def test_control_limits_are_hopr_lopr_while_drvh_drvl_are_unset(client, shared_relay, name,
                                                                base):
    """As the ai, longin and waveform records that RTYP names serve them (issue 11: ophyd's
    `limits` showed (0, 0) for a PV with only HOPR/LOPR set); DRVL/DRVH once DRVH > DRVL,
    in reads and in DBR_CTRL monitor events alike."""
    pv = full(shared_relay, name(base))
    pushed(shared_relay, ("put", name(base), 1 if base.endswith("1") else [1.0, 2.0],
                          {"meta": {"hopr": 100, "lopr": -100}}))
    wait_created(client, shared_relay, name(base))

    def ctrl_limits() -> tuple:
        ctrl = get_ctrl(client, pv)
        return ctrl["lower_ctrl_limit"], ctrl["upper_ctrl_limit"]

    assert wait_for(lambda: ctrl_limits() == (-100, 100) and ctrl_limits(),
                    what="HOPR/LOPR as control limits") == (-100, 100)
    monitor = monitor_ctrl(client, pv, DBE_VALUE | DBE_ALARM | DBE_PROPERTY)
    event = monitor.wait_count(1)[0]
    assert (event.ctrl["lower_ctrl_limit"], event.ctrl["upper_ctrl_limit"]) == (-100, 100)
    assert client.put(f"{pv}.DRVH", 50.0) and client.put(f"{pv}.DRVL", -50.0)
    assert ctrl_limits() == (-50, 50)
    monitor.wait_value(lambda v: True)  # the property events of the two field puts
    wait_for(lambda: any((e.ctrl.get("lower_ctrl_limit"), e.ctrl.get("upper_ctrl_limit"))
                         == (-50, 50) for e in monitor.value_events()),
             what="DRVL/DRVH in a DBR_CTRL event")
    assert client.put(f"{pv}.DRVH", 0.0) and client.put(f"{pv}.DRVL", 0.0)
    assert ctrl_limits() == (-100, 100)
    monitor.close()


def test_dbr_ctrl_of_a_pv_without_attributes_is_all_zero(client, shared_relay, name):
    pv = full(shared_relay, name("plain_f1"))
    assert client.put(pv, 3.0)
    ctrl = get_ctrl(client, pv)
    assert ctrl["units"] == "" and ctrl["precision"] == 0
    assert all(ctrl[key] == 0 for key in CTRL_EXPECTED if key != "units")


def test_dbr_ctrl_shows_the_first_7_characters_of_the_units(client, shared_relay, name):
    pv = full(shared_relay, name("units_f1"))
    assert client.put(pv, 1.0)
    assert put_string(client, f"{pv}.EGU", "millimetres of mercury")
    assert get_field(client, f"{pv}.EGU") == "millimetres of mercury"
    assert get_ctrl(client, pv)["units"] == "millime"


def test_dbr_ctrl_monitors_keep_the_attributes_on_every_value_event(client, pyepics_client,
                                                                    caproto_client,
                                                                    shared_relay, name):
    base = name("display_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 0.0, {"meta": CTRL_META}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: get_ctrl(client, pv)["units"] == "mm", what="attributes set")
    monitor = monitor_ctrl(client, pv)
    monitor.wait_count(1)
    writer = other(client, pyepics_client, caproto_client)
    for value in (1.0, 2.0, 3.0):
        assert writer.put(pv, value)
    pushed(shared_relay, ("put", base, 4.0))
    monitor.wait_value(lambda v: v == 4.0)
    events = monitor.value_events()
    assert [e.value for e in events] == [0.0, 1.0, 2.0, 3.0, 4.0]
    for event in events:
        assert {k: event.ctrl[k] for k in CTRL_EXPECTED} == CTRL_EXPECTED, event
        assert event.ctrl["precision"] == 3
    monitor.close()


# --- DBE_PROPERTY ---------------------------------------------------------------------------


def test_a_field_change_posts_a_property_event(client, pyepics_client, caproto_client,
                                               shared_relay, name):
    base = name("property_f1")
    pv = full(shared_relay, base)
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, 1.0)
    monitor = monitor_ctrl(client, pv, mask=DBE_PROPERTY)
    first = monitor.wait_count(1)[0]  # the subscription's first event
    assert first.ctrl["units"] == ""
    assert put_string(writer, f"{pv}.EGU", "mm")                        # over CA
    event = monitor.wait_count(2)[1]
    assert event.ctrl["units"] == "mm" and event.value == 1.0
    assert writer.put(f"{pv}.HOPR", 10.0)
    assert monitor.wait_count(3)[2].ctrl["upper_disp_limit"] == 10.0
    pushed(shared_relay, ("meta", base, {"lopr": -10, "prec": 2}))     # over ZMQ, alone
    event = monitor.wait_count(4)[3]
    assert (event.ctrl["lower_disp_limit"], event.ctrl["precision"]) == (-10.0, 2)
    pushed(shared_relay, ("put", base, 5.0, {"meta": {"egu": "cm"}}))   # with a value
    event = monitor.wait_count(5)[4]
    assert (event.ctrl["units"], event.value) == ("cm", 5.0)
    assert put_string(writer, f"{pv}.DESC", "not in DBR_CTRL, still an attribute")
    assert monitor.wait_count(6)[5].ctrl["units"] == "cm"
    # Values alone post no property event.
    assert writer.put(pv, 6.0)
    pushed(shared_relay, ("put", base, 7.0))
    wait_for(lambda: writer.get(pv) == 7.0, what="the last put applied")
    time.sleep(0.3)  # a property event, if one were (wrongly) posted, would be here by now
    assert len(monitor.value_events()) == 6
    monitor.close()


# --- alarms -------------------------------------------------------------------------------------


LADDER = [  # value, (status, severity) with HIHI 20 HIGH 10 LOW -10 LOLO -20, HYST 2
    (0.0, (STAT_NONE, NO_ALARM)),
    (10.0, (STAT_HIGH, MINOR)),
    (20.0, (STAT_HIHI, MAJOR)),
    (18.5, (STAT_HIHI, MAJOR)),     # within HYST of HIHI: held
    (17.5, (STAT_HIGH, MINOR)),
    (8.5, (STAT_HIGH, MINOR)),      # within HYST of HIGH: held
    (7.5, (STAT_NONE, NO_ALARM)),
    (9.0, (STAT_NONE, NO_ALARM)),   # in the band, but not coming from the alarm
    (-10.0, (STAT_LOW, MINOR)),
    (-8.5, (STAT_LOW, MINOR)),
    (-20.0, (STAT_LOLO, MAJOR)),
    (-18.5, (STAT_LOLO, MAJOR)),
    (-17.5, (STAT_LOW, MINOR)),
    (-7.5, (STAT_NONE, NO_ALARM)),
    (25.0, (STAT_HIHI, MAJOR)),
    (0.0, (STAT_NONE, NO_ALARM)),
]
LIMITS = {"HIHI": 20.0, "HIGH": 10.0, "LOW": -10.0, "LOLO": -20.0, "HYST": 2.0}


def test_alarm_transitions_read_over_ca(client, shared_relay, name):
    pv = full(shared_relay, name("ladder_f1"))
    assert client.put(pv, 0.0)
    for field_name, value in LIMITS.items():
        assert client.put(f"{pv}.{field_name}", value)
    for value, expected in LADDER:
        assert client.put(pv, value)
        assert alarm_of(client.get_meta(pv)) == expected, value
        assert (get_field(client, f"{pv}.STAT"), get_field(client, f"{pv}.SEVR")) == expected
        ctrl = get_ctrl(client, pv)
        assert (ctrl["status"], ctrl["severity"]) == expected, value


def test_alarm_transitions_in_monitor_events(client, pyepics_client, caproto_client,
                                             shared_relay, name):
    """Status and severity travel with every value event (DBR_TIME and DBR_CTRL), and a
    monitor of NAME.SEVR sees each change of severity."""
    pv = full(shared_relay, name("events_f1"))
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, -1.0)
    for field_name, value in LIMITS.items():
        assert writer.put(f"{pv}.{field_name}", value)
    timed = monitor_time(client, pv)
    ctrl = monitor_ctrl(client, pv)
    sevr = monitor_time(client, f"{pv}.SEVR")
    alarms = monitor_time(client, pv, mask=DBE_ALARM)
    for monitor in (timed, ctrl, sevr, alarms):
        monitor.wait_count(1)
    for value, _ in LADDER:
        assert writer.put(pv, value)
    expected = [(-1.0, (STAT_NONE, NO_ALARM))] + LADDER
    for monitor in (timed, ctrl):
        monitor.wait_count(len(expected))
        seen = [(e.value, alarm_of(e)) for e in monitor.value_events()]
        assert seen == expected, monitor.name
    def collapsed(severities: list) -> list[int]:
        return [int(s) for i, s in enumerate(severities) if i == 0 or s != severities[i - 1]]

    changes = collapsed([s for _, (_, s) in expected])
    wait_for(lambda: collapsed(sevr.values()) == changes,
             what=f"SEVR events {changes}: {collapsed(sevr.values())}")
    # A DBE_ALARM monitor gets an event only when status or severity changes.
    alarm_changes = [expected[0]] + [item for before, item in zip(expected, expected[1:])
                                     if item[1] != before[1]]
    wait_for(lambda: len(alarms.value_events()) >= len(alarm_changes), what="alarm events")
    assert [(e.value, alarm_of(e)) for e in alarms.value_events()] == alarm_changes
    for monitor in (timed, ctrl, sevr, alarms):
        monitor.close()


def test_alarms_over_zmq_with_hysteresis(client, shared_relay, name):
    base = name("pushed_f1")
    pv = full(shared_relay, base)
    monitor = monitor_time(client, pv)
    monitor.wait_count(1)  # a placeholder: INVALID/UDF
    with Client(shared_relay.endpoint) as publisher:
        publisher.put(base, 0.0, meta={"hihi": 20, "high": 10, "low": -10, "lolo": -20,
                                       "hyst": 2})
        monitor.wait_count(2)
        for count, (value, _) in enumerate(LADDER[1:], start=3):
            publisher.put(base, value)
            monitor.wait_count(count)  # one at a time: every event is seen
    expected = [(0.0, (STAT_UDF, INVALID))] + LADDER
    assert [(e.value, alarm_of(e)) for e in monitor.value_events()] == expected
    monitor.close()


def test_severities_over_zmq(client, shared_relay, name):
    base = name("sevr_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 5.0, {"meta": {"high": 1, "hsv": "INVALID"}}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: alarm_of(client.get_meta(pv)) == (STAT_HIGH, INVALID),
             what="HIGH with severity INVALID")
    pushed(shared_relay, ("meta", base, {"hsv": "NO_ALARM"}))   # disables the limit
    wait_for(lambda: alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM),
             what="the limit disabled by NO_ALARM")
    pushed(shared_relay, ("meta", base, {"hsv": 1}))
    wait_for(lambda: alarm_of(client.get_meta(pv)) == (STAT_HIGH, MINOR), what="MINOR")


def test_a_limit_alone_raises_alarms_with_the_default_severities(client, shared_relay, name):
    """HHSV/HSV/LSV/LLSV default to MAJOR/MINOR/MINOR/MAJOR (as pcaspy; an ai record
    defaults to NO_ALARM): setting a limit is enough."""
    for limit, value, expected in (("HIHI", 5.0, (STAT_HIHI, MAJOR)),
                                   ("HIGH", 5.0, (STAT_HIGH, MINOR)),
                                   ("LOW", -5.0, (STAT_LOW, MINOR)),
                                   ("LOLO", -5.0, (STAT_LOLO, MAJOR))):
        pv = full(shared_relay, name(f"default{limit}_f1"))
        assert client.put(pv, value)
        assert client.put(f"{pv}.{limit}", math.copysign(1.0, value))
        assert alarm_of(client.get_meta(pv)) == expected


@pytest.mark.parametrize("base, values", [
    ("new_f1", [1e300, -1e300, 0.0, math.inf, -math.inf]),
    ("new_i1", [2**31 - 1, -(2**31)]),
    ("new_f3", [[1e300, -1e300]]),
])
def test_a_new_pv_raises_no_alarm_whatever_its_value(client, shared_relay, name, base,
                                                     values):
    pv = full(shared_relay, name(base))
    for value in values:
        assert client.put(pv, value)
        assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM), value
    assert (get_field(client, f"{pv}.SEVR"), get_field(client, f"{pv}.STAT")) == (0, 0)


@pytest.mark.parametrize("base, value", [("words_c20", "zzz"), ("char_c1", "z"),
                                         ("log_C50", "line\n")])
def test_text_pvs_raise_no_limit_alarms(client, shared_relay, name, base, value):
    pv = full(shared_relay, name(base))
    pushed(shared_relay, ("put", name(base), value,
                          {"meta": {"hihi": -1, "high": -1, "low": 1e9, "lolo": 1e9}}))
    wait_created(client, shared_relay, name(base))
    wait_for(lambda: get_field(client, f"{pv}.HIHI") == -1.0, what="limits set")
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert client.put(f"{pv}.HIGH", -2.0)
    assert client.put(pv, value)
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)


def test_arrays_alarm_on_their_highest_and_lowest_element(client, shared_relay, name):
    pv = full(shared_relay, name("spread_f4"))
    pushed(shared_relay, ("put", name("spread_f4"), [0.0],
                          {"meta": {"high": 10, "low": -10}}))
    wait_created(client, shared_relay, name("spread_f4"))
    wait_for(lambda: get_field(client, f"{pv}.HIGH") == 10.0, what="limits set")
    for value, expected in (([0.0, 11.0, 1.0], (STAT_HIGH, MINOR)),
                            ([0.0, -11.0], (STAT_LOW, MINOR)),
                            ([math.nan, 5.0], (STAT_NONE, NO_ALARM)),   # NaN is ignored
                            ([-9.0, 9.0], (STAT_NONE, NO_ALARM))):
        assert client.put(pv, value)
        assert alarm_of(client.get_meta(pv)) == expected, value


def test_buffers_alarm_on_their_newest_element(client, shared_relay, name):
    pv = full(shared_relay, name("history_F10"))
    assert client.put(pv, [1.0])
    assert client.put(f"{pv}.HIHI", 100.0)
    assert client.put(pv, [500.0, 1.0])
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)  # 500 is not the newest
    assert client.put(pv, [150.0])
    assert alarm_of(client.get_meta(pv)) == (STAT_HIHI, MAJOR)
    assert list(client.get(pv)) == [1.0, 500.0, 1.0, 150.0]


# --- staleness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["", "mm"])
def test_staleness_raises_invalid_timeout_and_the_next_value_clears_it(
        client, pyepics_client, caproto_client, shared_relay, name, units):
    pv = full(shared_relay, name("stale_f1"))
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, 1.0)
    if units:  # a PV with display attributes posts DBR_CTRL events: the same must hold
        assert put_string(writer, f"{pv}.EGU", units)
    monitor = monitor_time(client, pv)
    sevr = monitor_time(client, f"{pv}.SEVR")
    alarms = monitor_time(client, pv, mask=DBE_ALARM)
    archive = monitor_time(client, pv, mask=DBE_LOG)
    assert alarm_of(monitor.wait_count(1)[0]) == (STAT_NONE, NO_ALARM)
    for each in (sevr, alarms, archive):
        each.wait_count(1)
    start = time.monotonic()
    assert writer.put(f"{pv}.TMO", 0.5)
    event = wait_for(lambda: next((e for e in monitor.value_events() if e.severity), None),
                     timeout=5, what=f"{pv} stale")
    elapsed = time.monotonic() - start
    assert alarm_of(event) == (STAT_TIMEOUT, INVALID) and event.value == 1.0
    assert event.timestamp == monitor.value_events()[0].timestamp  # the value's own time
    assert 0.4 <= elapsed < 2.0, elapsed
    assert alarm_of(client.get_meta(pv)) == (STAT_TIMEOUT, INVALID)
    assert (get_field(client, f"{pv}.SEVR"), get_field(client, f"{pv}.STAT")) == (
        INVALID, STAT_TIMEOUT)
    sevr.wait_value(lambda v: v == INVALID)
    assert alarm_of(alarms.wait_count(2)[1]) == (STAT_TIMEOUT, INVALID)  # DBE_ALARM
    assert alarm_of(archive.wait_count(2)[1]) == (STAT_TIMEOUT, INVALID)  # DBE_LOG
    assert alarm_of(client.get_meta(f"{pv}.EGU")) == (STAT_TIMEOUT, INVALID)  # fields too
    count = len(monitor.value_events())
    assert writer.put(pv, 2.0)                               # the next value clears it
    event = monitor.wait_count(count + 1)[count]
    assert (event.value, alarm_of(event)) == (2.0, (STAT_NONE, NO_ALARM))
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert alarm_of(alarms.wait_count(3)[2]) == (STAT_NONE, NO_ALARM)
    assert writer.put(f"{pv}.TMO", 0.0)                      # off before it goes stale again
    time.sleep(1.0)
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert [alarm_of(e) for e in monitor.value_events()[count:]] == [(STAT_NONE, NO_ALARM)]
    assert len(alarms.value_events()) == 3
    for each in (monitor, sevr, alarms, archive):
        each.close()


def test_staleness_over_zmq(client, shared_relay, name):
    base = name("feed_f1")
    pv = full(shared_relay, base)
    monitor = client.monitor(pv)
    monitor.wait_count(1)
    pushed(shared_relay, ("put", base, 1.0, {"meta": {"tmo": 0.5}}))
    monitor.wait_value(lambda v: v == 1.0)
    wait_for(lambda: alarm_of(monitor.value_events()[-1]) == (STAT_TIMEOUT, INVALID),
             timeout=5, what="stale")
    pushed(shared_relay, ("put", base, 2.0))
    wait_for(lambda: monitor.value_events()[-1].value == 2.0, what="the next value")
    assert alarm_of(monitor.value_events()[-1]) == (STAT_NONE, NO_ALARM)
    pushed(shared_relay, ("meta", base, {"tmo": 0}))
    wait_for(lambda: get_field(client, f"{pv}.TMO") == 0.0, what="TMO off")
    monitor.close()


def test_stale_timeout_option_applies_to_new_pvs(client, start_relay):
    relay = start_relay("--stale-timeout", "0.5")
    by_ca, by_zmq = full(relay, "ca_f1"), full(relay, "zmq_i1")
    assert client.put(by_ca, 1.0)
    pushed(relay, ("put", "zmq_i1", 1))
    wait_created(client, relay, "zmq_i1")
    for pv in (by_ca, by_zmq):
        wait_for(lambda: alarm_of(client.get_meta(pv)) == (STAT_TIMEOUT, INVALID), timeout=5,
                 what=f"{pv} stale")
        assert get_field(client, f"{pv}.TMO") == 0.5
    # TMO=0 turns it off for one PV: it is no longer stale, and stays so.
    assert client.put(f"{by_ca}.TMO", 0.0)
    assert alarm_of(client.get_meta(by_ca)) == (STAT_NONE, NO_ALARM)
    assert client.put(by_ca, 2.0)
    time.sleep(1.0)
    assert alarm_of(client.get_meta(by_ca)) == (STAT_NONE, NO_ALARM)
    assert alarm_of(client.get_meta(by_zmq)) == (STAT_TIMEOUT, INVALID)


def test_a_shorter_tmo_takes_effect_at_once(client, start_relay):
    """A TMO lowered below the --stale-timeout default counts from the last value."""
    relay = start_relay("--stale-timeout", "30")
    pv = full(relay, "quick_f1")
    assert client.put(pv, 1.0)
    assert get_field(client, f"{pv}.TMO") == 30.0
    assert client.put(f"{pv}.TMO", 0.5)
    wait_for(lambda: alarm_of(client.get_meta(pv)) == (STAT_TIMEOUT, INVALID), timeout=5,
             what="stale after the shorter TMO")


def test_without_tmo_nothing_goes_stale(client, start_relay):
    relay = start_relay()
    pv = full(relay, "calm_f1")
    assert client.put(pv, 1.0)
    assert get_field(client, f"{pv}.TMO") == 0.0
    time.sleep(1.0)
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)


# --- source time stamps -------------------------------------------------------------------------


def raw_time(client: Any, name: str) -> tuple[int, int]:
    """(seconds since the EPICS epoch, nanoseconds) of `name`'s time stamp as sent."""
    if client.label == "caproto":
        meta = client.pv(name).read(data_type="time", timeout=DEFAULT_TIMEOUT).metadata
        return int(meta.stamp.secondsSinceEpoch), int(meta.stamp.nanoSeconds)
    pv = client.pv(name)
    times = pv.get_timevars(timeout=DEFAULT_TIMEOUT)
    return int(times["posixseconds"]) - EPICS_EPOCH, int(times["nanoseconds"])


@pytest.mark.parametrize("ts, seconds, nanoseconds", [
    (1700000000.123456, 1700000000 - EPICS_EPOCH, 123_456_000),
    (1700000000.000001, 1700000000 - EPICS_EPOCH, 1000),
    (1234567890.999999, 1234567890 - EPICS_EPOCH, 999_999_000),
    (631152000, 0, 0),                                  # the EPICS epoch itself
    (2**32 - 1, 2**32 - 1 - EPICS_EPOCH, 0),            # 2106-02-07, the last CA can carry
])
def test_source_time_stamps_are_exact_to_the_microsecond(client, shared_relay, name, ts,
                                                         seconds, nanoseconds):
    base = name("stamped_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 1.0, {"ts": ts, "meta": {"egu": "s"}}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: raw_time(client, pv) == (seconds, nanoseconds),
             what=f"the time stamp of {pv}: {raw_time(client, pv)}")
    meta = client.get_meta(pv)
    assert abs(meta.timestamp - ts) < 0.5e-6
    assert get_field(client, f"{pv}.EGU") == "s"


def test_meta_alone_keeps_the_time_stamp(client, shared_relay, name):
    base = name("keepstamp_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 1.0, {"ts": 1600000000.5}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: raw_time(client, pv) == (1600000000 - EPICS_EPOCH, 500_000_000),
             what="stamped")
    with Client(shared_relay.endpoint) as publisher:  # a ts with attributes alone: no effect
        publisher.put(base, None, ts=1700000000.0, meta={"egu": "V", "high": 0.5})
    wait_for(lambda: get_field(client, f"{pv}.EGU") == "V", what="attributes set")
    assert raw_time(client, pv) == (1600000000 - EPICS_EPOCH, 500_000_000)
    assert alarm_of(client.get_meta(pv)) == (STAT_HIGH, MINOR)


def test_fields_carry_their_pvs_time_stamp(client, shared_relay, name):
    base = name("fieldstamp_f1")
    pv = full(shared_relay, base)
    pushed(shared_relay, ("put", base, 1.0, {"ts": 1500000000.25}))
    wait_created(client, shared_relay, base)
    wait_for(lambda: raw_time(client, pv) == (1500000000 - EPICS_EPOCH, 250_000_000),
             what="stamped")
    assert abs(client.get_meta(f"{pv}.EGU").timestamp - 1500000000.25) < 0.5e-6


def test_a_ca_put_is_stamped_on_arrival(client, shared_relay, name):
    pv = full(shared_relay, name("now_f1"))
    before = time.time()
    assert client.put(pv, 1.0)
    after = time.time()
    assert before - 0.01 <= client.get_meta(pv).timestamp <= after + 0.01


# --- field names -----------------------------------------------------------------------------------


def test_an_unknown_field_is_not_answered(pyepics_client, start_relay):
    relay = start_relay()
    pv = full(relay, "known_f1")
    assert pyepics_client.put(pv, 1.0)
    for field_name in ("XYZ", "egu", "EGUX", "", "VAL.EGU"):
        assert not pyepics_client.connects(f"{pv}.{field_name}", timeout=1.0), field_name
    assert status(pyepics_client, relay, "refused") == 0  # not ours: not counted


def test_a_field_of_a_pv_that_does_not_exist_is_refused(client, caproto_client, start_relay):
    relay = start_relay()
    watched = caproto_client.monitor(full(relay, "placeholder_f1"))
    watched.wait_count(1)
    assert not client.connects(full(relay, "placeholder_f1.EGU"), timeout=1.5)
    assert not client.connects(full(relay, "nothing_f1.SEVR"), timeout=1.5)
    wait_for(lambda: status(client, relay, "refused:noSuchPV") >= 2,
             what="field searches counted as noSuchPV")
    assert "field of a PV that does not exist" in relay.log_text()
    assert status(client, relay, "placeholders") == 1
    assert status(client, relay, "pvs") == 0
    # Once the PV exists, its fields answer.
    assert client.put(full(relay, "placeholder_f1"), 1.0)
    assert get_field(client, full(relay, "placeholder_f1.RTYP")) == "ai"
    watched.close()


def test_val_is_the_pv_itself(client, pyepics_client, caproto_client, shared_relay, name):
    pv = full(shared_relay, name("itself_f1"))
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, 1.0)
    assert put_string(writer, f"{pv}.EGU", "mm")
    on_val = client.monitor(f"{pv}.VAL")
    on_pv = client.monitor(pv)
    on_val.wait_value(lambda v: v == 1.0)
    assert writer.put(pv, 2.0)
    assert writer.put(f"{pv}.VAL", 3.0)
    for monitor in (on_val, on_pv):
        monitor.wait_value(lambda v: v == 3.0)
        assert monitor.values()[-3:] == [1.0, 2.0, 3.0]
    assert client.get(f"{pv}.VAL") == client.get(pv) == 3.0
    assert get_ctrl(client, f"{pv}.VAL")["units"] == "mm"
    on_val.close()
    on_pv.close()


def test_fields_disconnect_when_their_pv_is_deleted(client, pyepics_client, caproto_client,
                                                    start_relay):
    relay = start_relay()
    pv = full(relay, "doomed_f1")
    assert client.put(pv, 1.0)
    watcher = other(client, pyepics_client, caproto_client)
    monitors = [watcher.monitor(f"{pv}.{f}") for f in ("EGU", "SEVR", "VAL")]
    for monitor in monitors:
        monitor.wait_count(1)
    assert client.put(full(relay, "delpv"), pv)
    for monitor in monitors:
        wait_for(lambda: False in monitor.connection_changes(),
                 what=f"{monitor.name} disconnected")
        monitor.close()
    watcher.forget(pv)
    assert status(client, relay, "pvs") == 0


# --- relay-push --meta -----------------------------------------------------------------------------


def relay_push(*args: str) -> subprocess.CompletedProcess:
    """relay-push pushing (``--no-wait``); waiting for verdicts: tests/e2e/test_acks.py."""
    return subprocess.run([sys.executable, "-m", "relayd.client.push_cli", "--no-wait", *args],
                          capture_output=True, timeout=30)


def test_relay_push_meta_end_to_end(client, shared_relay, name):
    base = name("cli_f1")
    pv = full(shared_relay, base)
    done = relay_push("--meta", "egu=K", "--meta", "hihi=300", "--meta", "hhsv=INVALID",
                      "--meta", "desc=cold head", shared_relay.endpoint, base, "301")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    wait_created(client, shared_relay, base)
    assert get_field(client, f"{pv}.EGU") == "K"
    assert client.get(pv) == 301.0
    assert get_field(client, f"{pv}.DESC") == "cold head"
    assert alarm_of(client.get_meta(pv)) == (STAT_HIHI, INVALID)
    done = relay_push("--meta", "hihi=none", "--meta", "prec=2", shared_relay.endpoint, base)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: get_field(client, f"{pv}.PREC") == 2, what="--meta alone applied")
    assert get_field(client, f"{pv}.HIHI") == 0.0
    assert alarm_of(client.get_meta(pv)) == (STAT_NONE, NO_ALARM)
    assert client.get(pv) == 301.0

"""End-to-end: every relay PV also served over pvAccess, from real relays to real clients.

Tests taking `pva` run once with p4p (pvxs) and once with pvapy (pvAccessCPP), two
independent client implementations; CA is read and written with pyepics (libca) and, in
the mixed tests, caproto. ZMQ pushes use the relay's own client.
"""

from __future__ import annotations

import math
import os
import pwd
import signal
import socket
import time

import numpy as np
import pytest

from relayd.client import Client
from tests.e2e._tools import full, status, wait_boot_failure, wait_status, write_text
from tests.harness import wait_for

pytestmark = pytest.mark.timeout(120)

INVALID, MAJOR = 3, 2


def push(relay, *updates):
    """ZMQ puts, one message each: (base name, value)."""
    with Client(relay.endpoint) as publisher:
        for base, value in updates:
            publisher.put(base, value)


# --- the README's examples, over PVA -----------------------------------------------------


def test_readme_examples_over_pva(pva, pyepics_client, shared_relay, name):
    pvs = {
        name("temperature_lab_f1"): 21.2,
        name("runs_i1"): 7,
        name("fit_results_f4"): [23.0, 0.1, 3231.123, 1e-4],
        name("pressure_log_F100"): [1e-4],
        name("motd_c200"): "The sun is shining, go outside!",
    }
    for base, value in pvs.items():
        assert pva.put(full(shared_relay, base), value), (base, pva.last_error)
    temperature, runs, fit, pressure, motd = (full(shared_relay, b) for b in pvs)
    assert pva.get(temperature) == 21.2
    assert pva.get(runs) == 7 and isinstance(pva.get(runs), int)
    assert list(pva.get(fit)) == [23.0, 0.1, 3231.123, 1e-4]
    assert pva.put(pressure, [2e-4])  # appends, as over CA
    assert list(pva.get(pressure)) == [1e-4, 2e-4]
    assert pva.get(motd) == "The sun is shining, go outside!"
    # ... and they are the same PVs over CA
    assert pyepics_client.get(temperature) == 21.2
    assert list(pyepics_client.get(pressure)) == [1e-4, 2e-4]
    assert pyepics_client.get(motd, as_string=True) == "The sun is shining, go outside!"


def test_pushed_pvs_read_over_pva_with_their_time_stamp(pva, shared_relay, name):
    base = name("source_f1")
    with Client(shared_relay.endpoint) as publisher:
        publisher.put(base, 3.5, ts=1_700_000_000.25)
    pv = full(shared_relay, base)
    event = wait_for(lambda: (e := pva.get_meta(pv)).value == 3.5 and e, what="the push")
    assert event.timestamp == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert event.severity == 0 and event.status == ""


# --- CA and PVA on one PV ------------------------------------------------------------------


def test_pva_put_read_over_ca_and_ca_put_read_over_pva(pva, client, shared_relay, name):
    pv = full(shared_relay, name("both_f3"))
    assert pva.put(pv, [1.0, 2.0, 3.0]), pva.last_error
    assert list(client.get(pv)) == [1.0, 2.0, 3.0]
    assert client.put(pv, [4.0, 5.0])
    assert list(pva.get(pv)) == [4.0, 5.0]
    number = full(shared_relay, name("both_i1"))
    assert client.put(number, -12)
    assert pva.get(number) == -12
    assert pva.put(number, 2**31 - 1)
    assert client.get(number) == 2**31 - 1


def test_ca_and_pva_monitors_see_every_update_with_the_same_stamp(
        pva, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("watched_f1"))
    push(shared_relay, (pv, 0.0))
    wait_for(lambda: pva.get(pv) == 0.0, what="the first value")
    over_pva, over_ca = pva.monitor(pv), pyepics_client.monitor(pv)
    try:
        over_pva.wait_value(lambda v: v == 0.0)
        over_ca.wait_value(lambda v: v == 0.0)
        with Client(shared_relay.endpoint) as publisher:
            for i in range(1, 21):
                publisher.put(pv, float(i), ts=1_700_000_000 + i)
                time.sleep(0.01)
        got_pva = over_pva.wait_value(lambda v: v == 20.0)
        got_ca = over_ca.wait_value(lambda v: v == 20.0)
        assert [e.value for e in over_pva.value_events()][-20:] == [float(i) for i in
                                                                   range(1, 21)]
        assert [e.value for e in over_ca.value_events()][-20:] == [float(i) for i in
                                                                  range(1, 21)]
        assert got_pva.timestamp == pytest.approx(1_700_000_020, abs=1e-6)
        assert got_ca.timestamp == pytest.approx(got_pva.timestamp, abs=1e-6)
    finally:
        over_pva.close()
        over_ca.close()


def test_monitor_before_create_over_pva(pva, shared_relay, name):
    pv = full(shared_relay, name("later_f1"))
    monitor = pva.monitor(pv)
    try:
        first = monitor.wait_count(1)[0]
        assert first.severity == INVALID and first.status == "UDF"
        push(shared_relay, (pv, 42.0))
        event = monitor.wait_value(lambda v: v == 42.0)
        assert event.severity == 0
    finally:
        monitor.close()


def test_text_pv_is_a_string_both_ways(pva, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("note_c40"))
    assert pyepics_client.put(pv, "set over CA")
    assert pva.get(pv) == "set over CA"
    assert pva.put(pv, "ünïcode over PVA"), pva.last_error
    assert pyepics_client.get(pv, as_string=True) == "ünïcode over PVA"
    assert not pva.put(pv, "x" * 41)  # 41 bytes in a 40-byte PV
    assert "tooManyElements" in pva.last_error
    log = full(shared_relay, name("log_C12"))
    for part in ("abc", "def", "ghij"):
        assert pva.put(log, part)
    assert pva.get(log) == "abcdefghij"


def test_arrays_of_a_million_doubles(pva, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("big_f1000000"))
    data = np.random.default_rng(7).normal(size=1_000_000)
    assert pva.put(pv, data), pva.last_error
    assert np.array_equal(pva.get(pv), data)
    assert np.array_equal(pyepics_client.get(pv), data)
    assert pyepics_client.put(pv, data[::-1])
    assert np.array_equal(pva.get(pv), data[::-1])


# --- refusals, attributes, deletes -----------------------------------------------------------


def test_refusals_reach_the_pva_client_with_their_reason(pva, pyepics_client, start_relay,
                                                         name):
    relay = start_relay("--max-pvs", "2")
    before = status(pyepics_client, relay, "refused")
    assert not pva.put(full(relay, "vec_f2"), [1.0, 2.0, 3.0])
    assert "tooManyElements" in pva.last_error and "the PV holds 2" in pva.last_error
    assert pva.put(full(relay, "one_f1"), 1.0) and pva.put(full(relay, "two_f1"), 2.0)
    assert not pva.put(full(relay, "three_f1"), 3.0)
    assert "pvLimit" in pva.last_error
    wait_status(pyepics_client, relay, "pva:refused", lambda n: n == 2)
    assert status(pyepics_client, relay, "pva:accepted") == 2
    assert status(pyepics_client, relay, "refused") == before + 2
    assert status(pyepics_client, relay, "refused:pvLimit") == 1
    assert status(pyepics_client, relay, "lastRefusal").startswith("PVA put from ")


def test_attributes_over_pva_are_the_record_fields(p4p_client, pyepics_client, shared_relay,
                                                   name):
    pv = full(shared_relay, name("level_f1"))
    assert p4p_client.put(pv, 1.0)
    assert p4p_client.put(pv, {"display.units": "mm", "display.precision": 3,
                               "valueAlarm.highAlarmLimit": 10.0,
                               "control.limitHigh": 50.0})
    assert pyepics_client.get(pv + ".EGU") == "mm"
    assert pyepics_client.get(pv + ".PREC") == 3
    assert pyepics_client.get(pv + ".HIHI") == 10.0
    assert pyepics_client.get(pv + ".DRVH") == 50.0
    assert pyepics_client.put(pv + ".LOPR", -5.0)  # a field put over CA, read over PVA
    structure = p4p_client.get_raw(pv)
    assert structure["display.limitLow"] == -5.0 and structure["display.units"] == "mm"
    assert structure["valueAlarm.active"] and math.isnan(structure["valueAlarm.lowAlarmLimit"])
    monitor = p4p_client.monitor(pv)
    try:
        monitor.wait_count(1)
        assert p4p_client.put(pv, 11.0)
        event = monitor.wait_value(lambda v: v == 11.0)
        assert event.severity == MAJOR and event.status == "HIHI"
    finally:
        monitor.close()
    alarm = p4p_client.get_raw(pv)["alarm"]
    assert (alarm["severity"], alarm["status"], alarm["message"]) == (MAJOR, 1, "HIHI")
    assert pyepics_client.get_meta(pv).severity == MAJOR
    # the alarm is the relay's to compute; a bad attribute is refused like EGU over CA
    assert not p4p_client.put(pv, {"alarm.severity": 0})
    assert "readOnly" in p4p_client.last_error
    assert not p4p_client.put(pv, {"display.precision": 99})
    assert "badValue" in p4p_client.last_error and "PREC" in p4p_client.last_error
    # attributes alone never create a PV
    assert not p4p_client.put(full(shared_relay, name("absent_f1")), {"display.units": "V"})
    assert "noSuchPV" in p4p_client.last_error


def test_put_with_a_source_time_stamp(p4p_client, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("stamped_f1"))
    assert p4p_client.put(pv, {"value": 5.0, "timeStamp.secondsPastEpoch": 1_600_000_000,
                               "timeStamp.nanoseconds": 500_000_000})
    assert pyepics_client.get_meta(pv).timestamp == pytest.approx(1_600_000_000.5)
    assert not p4p_client.put(pv, {"value": 6.0, "timeStamp.secondsPastEpoch": 5})
    assert "EPICS epoch" in p4p_client.last_error


def test_deletes_disconnect_pva_clients(pva, pyepics_client, shared_relay, name):
    by_delpv, by_zmq = full(shared_relay, name("gone_f1")), full(shared_relay, name("gone_i1"))
    push(shared_relay, (by_delpv, 1.0), (by_zmq, 1))
    monitors = [pva.monitor(by_delpv), pva.monitor(by_zmq)]
    try:
        for monitor in monitors:
            monitor.wait_value(lambda v: v == 1)
        assert pyepics_client.put(full(shared_relay, "delpv"), by_delpv)
        with Client(shared_relay.endpoint) as publisher:
            publisher.delete(by_zmq)
        for monitor in monitors:
            # disconnected, then connected again: to a name that holds no PV (yet)
            def placeholder(monitor=monitor):
                changes = monitor.connection_changes()
                events = monitor.value_events()
                return (False in changes and changes[-1] is True and events
                        and (events[-1].severity, events[-1].status) == (INVALID, "UDF"))
            wait_for(placeholder, what=f"{monitor.name} reconnected to a placeholder")
    finally:
        for monitor in monitors:
            monitor.close()


def test_delete_over_pva(p4p_client, pyepics_client, shared_relay, name):
    pv = full(shared_relay, name("bye_f1"))
    push(shared_relay, (pv, 1.0))
    wait_for(lambda: p4p_client.get(pv) == 1.0, what="the PV")
    assert p4p_client.put(full(shared_relay, "delpv"), pv), p4p_client.last_error
    wait_for(lambda: pv not in pyepics_client.get(full(shared_relay, "pvlist"),
                                                  as_string=True).split(","))
    assert not p4p_client.put(full(shared_relay, "status:pvs"), 1)
    assert "readOnly" in p4p_client.last_error


def test_staleness_reaches_pva_and_ca_at_the_same_moment(p4p_client, pyepics_client,
                                                         start_relay):
    relay = start_relay("--stale-timeout", "1.0")
    pv = full(relay, "heartbeat_f1")
    push(relay, (pv, 1.0))
    over_pva, over_ca = p4p_client.monitor(pv), pyepics_client.monitor(pv)
    try:
        over_pva.wait_value(lambda v: v == 1.0)
        over_ca.wait_value(lambda v: v == 1.0)
        stale_pva = wait_for(lambda: [e for e in over_pva.value_events()
                                      if e.status == "TIMEOUT"], what="TIMEOUT over PVA")
        seen_pva = time.monotonic()
        wait_for(lambda: [e for e in over_ca.value_events() if e.status == 10],
                 what="TIMEOUT over CA")
        assert time.monotonic() - seen_pva < 0.5
        assert stale_pva[0].severity == INVALID
    finally:
        over_pva.close()
        over_ca.close()


def test_status_pvs_over_pva(p4p_client, shared_relay, name):
    push(shared_relay, (full(shared_relay, name("counted_f1")), 1.0))
    assert p4p_client.get(full(shared_relay, "status:pva:enabled")) == 1
    assert p4p_client.get(full(shared_relay, "status:pva:port")) == shared_relay.pva_port
    wait_for(lambda: p4p_client.get(full(shared_relay, "status:pvs")) >= 1)
    assert full(shared_relay, name("counted_f1")) in p4p_client.get(
        full(shared_relay, "pvlist")).split(",")


# --- the process and its environment --------------------------------------------------------


def test_monitors_survive_a_restart_of_the_ca_process(pva, pyepics_client, start_relay):
    relay = start_relay()
    pv = full(relay, "survivor_f1")
    push(relay, (pv, 1.0))
    monitor = pva.monitor(pv)
    try:
        monitor.wait_value(lambda v: v == 1.0)
        os.kill(relay.ca_pid(), signal.SIGKILL)
        wait_for(lambda: False in monitor.connection_changes(), what="a disconnect")
        wait_status(pyepics_client, relay, "restarts:ca", lambda n: n == 1, timeout=20)
        with Client(relay.endpoint) as publisher:  # restored from autosave, then updated
            publisher.put(pv, 2.0)
        monitor.wait_value(lambda v: v == 2.0, timeout=20)
        assert monitor.connection_changes()[-1] is True
    finally:
        monitor.close()


def test_pva_puts_are_saved(p4p_client, start_relay):
    relay = start_relay()
    pv = full(relay, "kept_f2")
    assert p4p_client.put(pv, [1.5, 2.5])
    assert p4p_client.put(pv, {"display.units": "V"})
    relay.restart()  # a clean stop writes every change
    assert list(p4p_client.get(pv)) == [1.5, 2.5]
    assert p4p_client.get_raw(pv)["display.units"] == "V"


def test_no_pva_serves_ca_only(p4p_client, pyepics_client, start_relay):
    relay = start_relay("--no-pva")
    push(relay, (full(relay, "only_ca_f1"), 1.0))
    wait_for(lambda: pyepics_client.get(full(relay, "only_ca_f1")) == 1.0)
    assert status(pyepics_client, relay, "pva:enabled") == 0
    assert status(pyepics_client, relay, "pva:port") == 0
    with pytest.raises(TimeoutError):
        p4p_client.get(full(relay, "only_ca_f1"), timeout=2.0)
    assert "pvAccess is off (--no-pva)" in relay.log_text()


def test_a_taken_pva_port_is_a_warning(p4p_client, pyepics_client, start_relay):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        relay = start_relay(env={"EPICS_PVAS_SERVER_PORT": str(taken)})
        served = status(pyepics_client, relay, "pva:port")
        assert served not in (0, taken)
        assert f"pvAccess TCP port {taken} is taken" in relay.log_text()
        assert f"serving on port {served}" in relay.log_text()
        assert p4p_client.put(full(relay, "found_f1"), 1.0)  # found by its search port
    finally:
        holder.close()


def test_strict_port_makes_a_taken_pva_port_a_boot_failure(start_relay):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        relay = start_relay("--strict-port", env={"EPICS_PVAS_SERVER_PORT": str(taken)},
                            wait=False, expect_exit=3)
        reason = wait_boot_failure(relay)
        assert f"pvAccess TCP port {taken} is taken" in reason, reason
        assert reason.endswith("(--strict-port)"), reason
    finally:
        holder.close()


def test_access_security_guards_pva_puts(p4p_client, pyepics_client, start_relay, tmp_path):
    user = pwd.getpwuid(os.getuid()).pw_name  # the account p4p and libca send
    acf = write_text(tmp_path / "relay.acf", f"""
UAG(writers) {{ {user} }}
HAG(here) {{ 127.0.0.1 }}
ASG(DEFAULT) {{ RULE(1, READ) }}
ASG(RELAY) {{ RULE(1, READ) RULE(1, WRITE) {{ UAG(writers) HAG(here) }} }}
ASG(DELETE) {{ RULE(1, READ) }}
""")
    relay = start_relay("--access-security", str(acf))
    assert p4p_client.put(full(relay, "allowed_f1"), 1.0), p4p_client.last_error
    assert not p4p_client.put(full(relay, "delpv"), full(relay, "allowed_f1"))
    assert "authDenied" in p4p_client.last_error
    assert pyepics_client.get(full(relay, "allowed_f1")) == 1.0
    wait_status(pyepics_client, relay, "refused:authDenied", lambda n: n == 1)
    # the same rule, judged by pcas for a CA client
    assert not pyepics_client.put(full(relay, "delpv"), full(relay, "allowed_f1"))
    assert pyepics_client.get(full(relay, "allowed_f1")) == 1.0


# --- placeholders shared by CA and PVA ------------------------------------------------------


@pytest.mark.parametrize("leaves_first", ["pva", "ca"])
def test_a_placeholder_lives_while_either_protocol_watches_it(
        leaves_first, p4p_client, caproto_client, pyepics_client, start_relay):
    relay = start_relay()
    pv = full(relay, "shared_f1")
    # caproto closes its channel with the monitor (pyepics keeps channels cached)
    over_pva, over_ca = p4p_client.monitor(pv), caproto_client.monitor(pv)
    over_pva.wait_count(1)
    over_ca.wait_count(1)
    wait_status(pyepics_client, relay, "pva:channels", lambda n: n == 1)
    staying = over_ca if leaves_first == "pva" else over_pva
    try:
        if leaves_first == "pva":
            over_pva.close()
            wait_status(pyepics_client, relay, "pva:channels", lambda n: n == 0)
        else:
            over_ca.close()
            # a CA request on the same circuit: the channel's close came before it
            assert status(caproto_client, relay, "pvs") == 0
        # still one placeholder: the object the remaining client watches
        assert status(pyepics_client, relay, "placeholders") == 1
        push(relay, (pv, 9.0))
        staying.wait_value(lambda v: v == 9.0)
    finally:
        staying.close()


def test_the_placeholder_limit_holds_over_pva(p4p_client, pyepics_client, start_relay):
    relay = start_relay("--max-placeholders", "1")
    first = p4p_client.monitor(full(relay, "first_f1"))
    try:
        first.wait_count(1)
        second = p4p_client.monitor(full(relay, "second_f1"))
        try:
            wait_status(pyepics_client, relay, "refused:placeholderLimit", lambda n: n >= 1)
            assert status(pyepics_client, relay, "placeholders") == 1
            assert second.value_events() == []
            push(relay, (full(relay, "second_f1"), 2.0))  # a PV now: no placeholder needed
            second.wait_value(lambda v: v == 2.0, timeout=20)
        finally:
            second.close()
    finally:
        first.close()


def test_an_attribute_change_over_ca_is_posted_to_pva_monitors(p4p_client, pyepics_client,
                                                               shared_relay, name):
    pv = full(shared_relay, name("units_f1"))
    push(shared_relay, (pv, 1.0))
    wait_for(lambda: p4p_client.get(pv) == 1.0, what="the PV")
    seen: list = []
    subscription = p4p_client.raw.monitor(pv, seen.append)
    try:
        wait_for(lambda: seen, what="the first update")
        assert pyepics_client.put(pv + ".HIHI", 0.5)  # the value 1.0 is now in alarm
        update = wait_for(lambda: [v for v in seen if v["valueAlarm.highAlarmLimit"] == 0.5],
                          what="the new limit over PVA")[0]
        assert "valueAlarm.highAlarmLimit" in update.changedSet()
        assert (update["alarm.severity"], update["alarm.message"]) == (MAJOR, "HIHI")
    finally:
        subscription.close()
        p4p_client.raw.disconnect(pv)


def test_delpv_over_pva_shows_the_last_name_deleted(p4p_client, start_relay):
    relay = start_relay()
    push(relay, (full(relay, "a_f1"), 1.0), (full(relay, "b_f1"), 1.0))
    wait_for(lambda: p4p_client.get(full(relay, "status:pvs")) == 2, what="two PVs")
    monitor = p4p_client.monitor(full(relay, "delpv"))
    try:
        monitor.wait_count(1)
        assert p4p_client.put(full(relay, "delpv"), "a_f1")
        monitor.wait_value(lambda v: v == "a_f1")  # posted at the next status refresh
        wait_for(lambda: p4p_client.get(full(relay, "status:pvs")) == 1, what="the delete")
    finally:
        monitor.close()

"""End-to-end: relay PVs created by CA puts, read and monitored by real CA clients.

Tests taking `client` run once with pyepics (libca) and once with caproto.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.e2e._tools import run_snippet, status
from tests.harness import wait_for

SEVR_INVALID, STAT_UDF = 3, 17


def full(relay, base: str) -> str:
    return f"{relay.prefix}:{base}"


def other(client, pyepics_client, caproto_client):
    """The other client, so that writer and reader are independent implementations."""
    return caproto_client if client is pyepics_client else pyepics_client


# --- the original README's examples ---------------------------------------------------


def test_original_readme_examples(client, shared_relay, name):
    pvs = {
        name("cupsofcoffeetoday_i1"): 2,
        name("temperature_lab_f1"): 21.2,
        name("fit_results_f4"): [23.0, 0.1, 3231.123, 1e-4],
        name("pressure_log_F100"): [1e-4],
        name("cmdline_output_c10000"): "The sun is shining, go outside!",
    }
    for base, value in pvs.items():
        assert client.put(full(shared_relay, base), value), base
    coffee, temperature, fit, pressure, output = (full(shared_relay, b) for b in pvs)
    assert client.get(coffee) == 2
    assert client.get(temperature) == 21.2
    assert list(client.get(fit)) == [23.0, 0.1, 3231.123, 1e-4]
    assert list(client.get(pressure)) == [1e-4]
    assert client.get(output, as_string=True) == "The sun is shining, go outside!"


def test_values_read_back_exactly_by_the_other_client(client, pyepics_client, caproto_client,
                                                      shared_relay, name):
    reader = other(client, pyepics_client, caproto_client)
    values = {
        name("pi_f1"): math.pi,
        name("tiny_f1"): 5e-324,
        name("big_i1"): -(2**31),
        name("vec_i3"): [2**31 - 1, -1, 0],
        name("trace_f5"): [1.0, -2.5, 1e300, -0.0, 7.0],
    }
    for base, value in values.items():
        assert client.put(full(shared_relay, base), value)
    for base, value in values.items():
        got = reader.get(full(shared_relay, base))
        assert np.array_equal(np.atleast_1d(got), np.atleast_1d(value)), base


def test_nan_and_infinity_are_stored_as_sent(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("nonfinite_f3"))
    assert caproto_client.put(pv, [math.nan, math.inf, -math.inf])
    got = caproto_client.get(pv)
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf


def test_float_put_to_int_pv_is_truncated(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("count_i1"))
    caproto_pv = caproto_client.pv(pv)
    double = caproto_client.ChannelType.DOUBLE
    for sent, stored in ((3.7, 3), (-3.7, -3), (2.5, 2)):
        response = caproto_pv.write([sent], data_type=double, wait=True)
        assert response.status.success == 1
        assert caproto_client.get(pv) == stored


# --- monitors ---------------------------------------------------------------------------


def test_monitors_see_every_put(client, pyepics_client, caproto_client, shared_relay, name):
    pv = full(shared_relay, name("rate_f1"))
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, -1.0)
    monitor = client.monitor(pv)
    monitor.wait_value(lambda v: v == -1.0)
    for i in range(40):
        assert writer.put(pv, float(i))
    events = monitor.wait_value(lambda v: v == 39.0)
    values = monitor.values()
    assert values[values.index(-1.0):] == [-1.0] + [float(i) for i in range(40)]
    assert events.severity == 0 and events.status == 0
    monitor.close()


@pytest.mark.parametrize("base, first, expect_empty", [
    ("early_f1", 4.5, 0.0),
    ("early_F10", [1.0, 2.0], []),
    ("early_c40", "first words", ""),
])
def test_monitor_before_create(client, pyepics_client, caproto_client, shared_relay, name,
                               base, first, expect_empty):
    pv = full(shared_relay, name(base))
    monitor = client.monitor(pv)
    initial = monitor.wait_count(1)[0]
    assert initial.severity == SEVR_INVALID and initial.status == STAT_UDF
    if isinstance(expect_empty, float):
        assert initial.value == expect_empty
    else:
        assert len(initial.value) == 0 or bytes(initial.value).strip(b"\0") == b""
    writer = other(client, pyepics_client, caproto_client)
    assert writer.put(pv, first)
    event = monitor.wait_count(2)[-1]
    assert event.severity == 0 and event.status == 0
    if isinstance(first, str):
        assert bytes(np.asarray(event.value, dtype=np.uint8)).split(b"\0")[0] == first.encode()
    else:
        assert np.array_equal(np.atleast_1d(event.value), np.atleast_1d(first))
    monitor.close()


def test_read_before_create_is_undefined_and_not_listed(client, shared_relay, name):
    pv = full(shared_relay, name("watched_f4"))
    meta = client.get_meta(pv)
    assert meta.severity == SEVR_INVALID and meta.status == STAT_UDF
    assert len(np.atleast_1d(meta.value)) == 0
    assert pv not in client.get(full(shared_relay, "pvlist"), as_string=True).split(",")


def test_placeholders_are_released_when_the_last_client_leaves(start_relay, caproto_client):
    relay = start_relay()
    count = f"{relay.prefix}:status:placeholders"
    names = [f"{relay.prefix}:idle{i}_f1" for i in range(3)]
    monitors = [caproto_client.monitor(n) for n in names]
    for monitor in monitors:
        monitor.wait_count(1)
    wait_for(lambda: caproto_client.get(count) == 3, what="3 placeholders")
    for monitor in monitors:
        monitor.close()
    wait_for(lambda: caproto_client.get(count) == 0, what="placeholders released")
    assert caproto_client.get(f"{relay.prefix}:status:pvs") == 0


def test_placeholders_are_capped(start_relay, caproto_client, pyepics_client):
    relay = start_relay("--max-placeholders", "2")
    first = caproto_client.monitor(f"{relay.prefix}:a_f1")
    second = caproto_client.monitor(f"{relay.prefix}:b_f1")
    first.wait_count(1)
    second.wait_count(1)
    # A third name is not answered while two are watched...
    assert not pyepics_client.connects(f"{relay.prefix}:c_f1", timeout=1.0)
    refused = f"{relay.prefix}:status:refused:placeholderLimit"
    wait_for(lambda: caproto_client.get(refused) >= 1, what="placeholder refusals counted")
    assert "placeholderLimit" in relay.log_text()
    # ...but a put to a watched name still creates it, which frees its placeholder.
    assert pyepics_client.put(f"{relay.prefix}:a_f1", 1.0)
    assert caproto_client.get(f"{relay.prefix}:status:placeholders") == 1
    assert pyepics_client.connects(f"{relay.prefix}:c_f1", timeout=5.0)
    first.close()
    second.close()


# --- arrays and buffers -----------------------------------------------------------------


def test_short_array_put_holds_exactly_those_elements(client, shared_relay, name):
    pv = full(shared_relay, name("spectrum_f10"))
    assert client.put(pv, [1.0, 2.0, 3.0])
    assert list(client.get(pv)) == [1.0, 2.0, 3.0]
    assert client.put(pv, [9.0] * 7)
    assert list(client.get(pv)) == [9.0] * 7
    assert client.put(pv, [5.0])
    assert list(client.get(pv)) == [5.0]


def test_buffer_appends_one_and_many_and_wraps(client, shared_relay, name):
    pv = full(shared_relay, name("trace_F5"))
    assert len(client.get(pv)) == 0  # a new buffer is empty, not zero-filled
    assert client.put(pv, [1.0])
    assert list(client.get(pv)) == [1.0]
    assert client.put(pv, [2.0, 3.0, 4.0])
    assert list(client.get(pv)) == [1.0, 2.0, 3.0, 4.0]
    assert client.put(pv, [5.0, 6.0])
    assert list(client.get(pv)) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert client.put(pv, [7.0, 8.0, 9.0, 10.0, 11.0])
    assert list(client.get(pv)) == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_int_buffer_appends(client, shared_relay, name):
    pv = full(shared_relay, name("counts_I3"))
    for value in (1, 2, 3, 4):
        assert client.put(pv, [value])
    assert list(client.get(pv)) == [2, 3, 4]


def test_char_buffer_is_a_log_tail(client, shared_relay, name):
    pv = full(shared_relay, name("log_C16"))
    for line in ("first\n", "second\n", "third\n"):
        assert client.put(pv, line)
    assert client.get(pv, as_string=True) == "first\nsecond\nthird\n"[-16:]


def test_monitor_of_a_buffer_sees_each_append(client, pyepics_client, caproto_client,
                                              shared_relay, name):
    pv = full(shared_relay, name("samples_F4"))
    writer = other(client, pyepics_client, caproto_client)
    monitor = client.monitor(pv)
    monitor.wait_count(1)
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert writer.put(pv, [value])
    monitor.wait_value(lambda v: list(v) == [2.0, 3.0, 4.0, 5.0])
    lengths = [len(v) for v in monitor.values()[1:]]
    assert lengths == [1, 2, 3, 4, 4]
    monitor.close()


def test_one_character_text_pv(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("flag_c1"))
    assert caproto_client.put(pv, b"x")
    assert caproto_client.get(pv, as_string=True) == "x"


def test_large_array_round_trip(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("image_f200000"))
    data = np.random.default_rng(1).normal(size=200_000)
    assert caproto_client.put(pv, data)
    assert np.array_equal(caproto_client.get(pv), data)


# --- pvlist and delpv ---------------------------------------------------------------------


def test_pvlist_lists_every_pv_in_creation_order(client, start_relay):
    relay = start_relay()
    names = [f"{relay.prefix}:n{i}_f1" for i in range(5)]
    for pv in names:
        assert client.put(pv, 1.0)
    assert client.get(f"{relay.prefix}:pvlist", as_string=True) == ",".join(names)
    assert client.get(f"{relay.prefix}:status:pvs") == 5


def test_delpv_deletes_and_disconnects(client, pyepics_client, caproto_client, start_relay):
    relay = start_relay()
    keep, gone, also_gone = (f"{relay.prefix}:{n}" for n in ("keep_f1", "gone_f1", "also_i1"))
    for pv in (keep, gone, also_gone):
        assert client.put(pv, 1)
    watcher = other(client, pyepics_client, caproto_client)
    monitor = watcher.monitor(gone)
    monitor.wait_count(1)
    assert client.put(f"{relay.prefix}:delpv", gone)                 # with the prefix
    assert client.put(f"{relay.prefix}:delpv", "also_i1")            # without it
    assert client.get(f"{relay.prefix}:pvlist", as_string=True) == keep
    wait_for(lambda: False in monitor.connection_changes(), what="monitor disconnected")
    assert client.get(f"{relay.prefix}:delpv", as_string=True) == "also_i1"
    assert client.get(f"{relay.prefix}:status:deleted") == 2
    monitor.close()


def test_delpv_of_an_unknown_name_is_refused(client, start_relay):
    relay = start_relay()
    assert not client.put(f"{relay.prefix}:delpv", "nothing_here_f1")
    assert not client.put(f"{relay.prefix}:delpv", "not a name")
    assert client.get(f"{relay.prefix}:status:refused") == 2
    assert client.get(f"{relay.prefix}:status:refused:noSuchPV") == 1
    assert client.get(f"{relay.prefix}:status:refused:badName") == 1
    last = client.get(f"{relay.prefix}:status:lastRefusal", as_string=True)
    assert "badName" in last and "not a name" in last
    assert "refused CA put" in relay.log_text()


def test_a_deleted_pv_can_be_created_again(client, start_relay):
    relay = start_relay()
    pv = f"{relay.prefix}:again_f1"
    assert client.put(pv, 1.0)
    assert client.put(f"{relay.prefix}:delpv", pv)
    client.forget(pv)  # the old channel was disconnected by the delete
    assert client.get_meta(pv).severity == SEVR_INVALID  # a placeholder again
    assert client.put(pv, 2.0)
    assert client.get(pv) == 2.0
    assert client.get(f"{relay.prefix}:pvlist", as_string=True) == pv


# --- refusals -------------------------------------------------------------------------------


def test_unconvertible_value_is_refused_and_changes_nothing(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("good_f1"))
    assert caproto_client.put(pv, 1.25)
    response = caproto_client.pv(pv).write(
        ["not a number"], data_type=caproto_client.ChannelType.STRING, wait=True)
    assert response.status.success == 0
    assert caproto_client.get(pv) == 1.25


def test_too_many_elements_is_refused_not_truncated(caproto_client, shared_relay, name):
    pv = full(shared_relay, name("pair_f2"))
    assert caproto_client.put(pv, [1.0, 2.0])
    response = caproto_client.pv(pv).write([1.0, 2.0, 3.0], wait=True, timeout=5)
    assert response.status.name == "ECA_BADCOUNT"
    assert list(caproto_client.get(pv)) == [1.0, 2.0]


def test_status_pvs_are_read_only(client, start_relay):
    relay = start_relay()
    assert not client.put(f"{relay.prefix}:status:pvs", 5)
    assert not client.put(f"{relay.prefix}:pvlist", "x_f1")
    assert client.get(f"{relay.prefix}:status:refused:readOnly") == 2
    assert client.get(f"{relay.prefix}:status:pvs") == 0


@pytest.mark.parametrize("base", [
    "zero_f0", "lead_f01", "one_F1", "one_C1", "dot.name_f1", "bad_q1", "nosuffix",
    "_f1", "sp ace_f1",
])
def test_names_outside_the_grammar_are_not_answered(pyepics_client, start_relay, base):
    relay = start_relay()
    assert not pyepics_client.connects(f"{relay.prefix}:{base}", timeout=1.0)
    assert pyepics_client.get(f"{relay.prefix}:status:refused") == 0  # not ours: not counted


def test_count_beyond_the_limit_is_refused_and_allocates_nothing(caproto_client, start_relay):
    relay = start_relay()
    before = relay.rss_kib()
    assert not caproto_client.connects(f"{relay.prefix}:huge_F999999999", timeout=1.5)
    refused = f"{relay.prefix}:status:refused:countLimit"
    wait_for(lambda: caproto_client.get(refused) >= 1, what="countLimit counted")
    assert "countLimit" in relay.log_text()
    assert relay.rss_kib() - before < 10_000
    assert caproto_client.get(f"{relay.prefix}:status:placeholders") == 0


def test_limits_are_configurable(caproto_client, start_relay):
    relay = start_relay("--max-elements", "10", "--max-name-length", "40", "--max-pvs", "2")
    assert caproto_client.connects(f"{relay.prefix}:ok_f10", timeout=5)
    assert not caproto_client.connects(f"{relay.prefix}:big_f11", timeout=1.0)
    assert not caproto_client.connects(f"{relay.prefix}:{'x' * 40}_f1", timeout=1.0)
    assert caproto_client.put(f"{relay.prefix}:a_f1", 1.0)
    assert caproto_client.put(f"{relay.prefix}:b_f1", 1.0)
    assert not caproto_client.put(f"{relay.prefix}:c_f1", 1.0)  # the third PV: pvLimit
    assert caproto_client.get(f"{relay.prefix}:status:refused:pvLimit") == 1
    assert caproto_client.get(f"{relay.prefix}:status:pvs") == 2


def test_refusals_are_logged_rate_limited(caproto_client, start_relay):
    relay = start_relay()
    for i in range(60):
        assert not caproto_client.put(f"{relay.prefix}:delpv", f"missing{i}_f1")
    assert caproto_client.get(f"{relay.prefix}:status:refused") == 60
    lines = [line for line in relay.log_text().splitlines() if "refused CA put" in line]
    assert 1 <= len(lines) <= 10


# --- two relays, process behaviour --------------------------------------------------------


def test_two_relays_side_by_side_answer_only_their_own_names(client, start_relay):
    one, two = start_relay(), start_relay()
    assert client.put(f"{one.prefix}:x_f1", 1.0)
    assert client.put(f"{two.prefix}:x_f1", 2.0)
    assert client.get(f"{one.prefix}:x_f1") == 1.0
    assert client.get(f"{two.prefix}:x_f1") == 2.0
    assert client.host(f"{one.prefix}:x_f1").endswith(f":{one.port}")
    assert client.host(f"{two.prefix}:x_f1").endswith(f":{two.port}")
    assert client.get(f"{one.prefix}:pvlist", as_string=True) == f"{one.prefix}:x_f1"
    assert client.get(f"{two.prefix}:pvlist", as_string=True) == f"{two.prefix}:x_f1"


def test_sigint_stops_cleanly(start_relay):
    import signal

    relay = start_relay()
    relay.process.send_signal(signal.SIGINT)
    assert relay.process.wait(10) == 0
    assert "SIGINT received: stopping" in relay.log_text()
    assert "relayd stopped" in relay.log_text()


def test_array_limit_is_raised_and_said(start_relay):
    relay = start_relay("--max-elements", "100000")
    assert "EPICS_CA_MAX_ARRAY_BYTES raised" in relay.log_text()


def test_pcas_conversion_quirks_documented_in_the_readme(caproto_client, shared_relay, name):
    """pcas converts CA puts before relayd sees them; the README warns of these quirks."""
    string = caproto_client.ChannelType.STRING
    double = caproto_client.ChannelType.DOUBLE
    number = full(shared_relay, name("quirk_f1"))
    assert caproto_client.pv(number).write(["abc"], data_type=string, wait=True).status.success
    assert caproto_client.get(number) == 0xABC
    integer = full(shared_relay, name("quirk_i1"))
    assert caproto_client.pv(integer).write([1e12], data_type=double, wait=True).status.success
    assert caproto_client.get(integer) == -(2**31)


def test_sample_config_file_is_accepted(caproto_client, start_relay):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "etc" / "relayd.toml"
    relay = start_relay("--config", str(sample))  # --prefix on the command line wins
    assert caproto_client.put(f"{relay.prefix}:cfg_f1", 1.0)


def test_deletes_are_logged_rate_limited(caproto_client, start_relay):
    """Issue 11: 100,000 deletes wrote 100,000 INFO lines; status:deleted counts them all."""
    relay = start_relay("--no-autosave")
    run_snippet(relay.endpoint, """
        with Client(endpoint) as r:
            r.put_many({f"n{i}_f1": 1.0 for i in range(2000)})
        with Client(endpoint) as r:
            for i in range(2000):
                r.delete(f"n{i}_f1")
        """)
    wait_for(lambda: status(caproto_client, relay, "deleted") == 2000, what="2000 deletes")
    assert relay.log_text().count(" deleted ") <= 5

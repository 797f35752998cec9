"""End-to-end: values pushed over ZeroMQ by other processes, read through real CA clients.

Every push comes from a process of its own, as a publisher's would: a Python snippet
using `relayd.client` (`push`, `start_pusher`), bare ZMQ frames from such a snippet
(its `raw`), or the `relay-push` command (`relay_push`). Tests taking `client` run once
with pyepics (libca) and once with caproto.

Status counters reach the status PVs within about half a second (the worker reports
them with its next forward or heartbeat), so counters are always polled with `wait_for`.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from tests.conftest import PORTS
from tests.e2e._tools import full, status, wait_status_is
from tests.harness import RelayProcess, free_port, unique_prefix, wait_for

SEVR_INVALID, STAT_UDF = 3, 17

# Prepended to every snippet that `push` and `start_pusher` run. The endpoint is argv[1];
# further arguments follow it.
PREAMBLE = '''\
import array, itertools, math, sys, time
import msgpack, numpy as np, zmq
from relayd.client import Client

endpoint = sys.argv[1]


def raw(*messages):
    """Send each bytes object as one message from a bare PUSH socket, then flush."""
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for message in messages:
        sock.send(message)
    sock.close()
    context.term()


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)

'''


# --- helpers -------------------------------------------------------------------------------


def _snippet(relay: RelayProcess, body: str, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-c", PREAMBLE + textwrap.dedent(body), relay.endpoint, *args]


def push(relay: RelayProcess, body: str, *args: str) -> str:
    """Run `body` (after PREAMBLE) in a new Python process; return what it printed."""
    done = subprocess.run(_snippet(relay, body, args), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"the pusher failed ({done.returncode}):\n{done.stderr}"
    return done.stdout


def start_pusher(relay: RelayProcess, body: str, *args: str) -> subprocess.Popen:
    """Run `body` in a background Python process; the caller must `stop_pusher` it."""
    return subprocess.Popen(_snippet(relay, body, args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_pusher(process: subprocess.Popen) -> tuple[str, str]:
    """Tell a pusher to finish (EOF on its stdin), or kill it; return its output."""
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def relay_push(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """relay-push pushing (``--no-wait``); waiting for verdicts: tests/e2e/test_acks.py."""
    return subprocess.run([sys.executable, "-m", "relayd.client.push_cli", "--no-wait", *args],
                          input=input,
                          capture_output=True, timeout=30)


def listed(reader: Any, relay: RelayProcess) -> list[str]:
    text = reader.get(full(relay, "pvlist"), as_string=True)
    return text.split(",") if text else []


def wait_listed(reader: Any, relay: RelayProcess, *pvs: str) -> None:
    wait_for(lambda: set(pvs) <= set(listed(reader, relay)),
             what=f"{', '.join(pvs)} in the pvlist of {relay.prefix}")


def is_running(pid: int, title: str) -> bool:
    """True while `pid` is a live (not zombie) process titled `title`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and cmdline.rstrip(b"\0").decode(errors="replace") == title


# --- values of every kind -------------------------------------------------------------------


def test_scalars_of_each_dtype(client, shared_relay, name):
    values = {
        name("temperature_f1"): 21.2,
        name("tiny_f1"): 5e-324,
        name("whole_f1"): 3,            # an int to an f PV
        name("cups_i1"): -(2**31),
        name("truncated_i1"): -3.7,     # a float to an i PV: truncated toward zero
        name("motd_c40"): "The sun is shining, go outside!",
        name("flag_c1"): "x",
    }
    expected = dict(values, **{name("truncated_i1"): -3})
    push(shared_relay, f"""
        with Client(endpoint) as relay:
            for pv, value in {values!r}.items():
                relay.put(pv, value)
    """)
    wait_listed(client, shared_relay, *(full(shared_relay, pv) for pv in values))
    for pv, value in expected.items():
        if isinstance(value, str):
            assert client.get(full(shared_relay, pv), as_string=True) == value, pv
        else:
            assert client.get(full(shared_relay, pv)) == value, pv


def test_arrays_of_each_dtype(client, shared_relay, name):
    values = {
        name("fit_f4"): [23.0, 0.1, 3231.123, 1e-4],
        name("short_f10"): [1.0, 2.0, 3.0],          # fewer than the count: exactly those
        name("extremes_i3"): [2**31 - 1, -(2**31), 0],
        name("from_floats_i2"): [3.7, -3.7],
        name("bytes_c10"): [104, 105, 33],            # byte values are text
    }
    push(shared_relay, f"""
        with Client(endpoint) as relay:
            for pv, value in {values!r}.items():
                relay.put(pv, value)
            relay.put({name("bin_c8")!r}, b"bin\\x00ignored")  # text ends at a NUL
    """)
    wait_listed(client, shared_relay,
                *(full(shared_relay, pv) for pv in [*values, name("bin_c8")]))
    assert list(client.get(full(shared_relay, name("fit_f4")))) == [23.0, 0.1, 3231.123, 1e-4]
    assert list(client.get(full(shared_relay, name("short_f10")))) == [1.0, 2.0, 3.0]
    assert list(client.get(full(shared_relay, name("extremes_i3")))) == [2**31 - 1, -(2**31), 0]
    assert list(client.get(full(shared_relay, name("from_floats_i2")))) == [3, -3]
    assert client.get(full(shared_relay, name("bytes_c10")), as_string=True) == "hi!"
    assert client.get(full(shared_relay, name("bin_c8")), as_string=True) == "bin"


def test_packed_numpy_arrays_read_back_exactly(client, shared_relay, name, tmp_path):
    spectrum = np.random.default_rng(7).normal(size=100_000)
    spectrum[:4] = [math.pi, -0.0, 1e300, 5e-324]
    np.save(tmp_path / "spectrum.npy", spectrum)
    pvs = {
        "spectrum": name("spectrum_f100000"),
        "int32": name("counts_i5"),
        "int64": name("wide_i3"),
        "uint8": name("bytes_i4"),
        "float32": name("single_f3"),
        "bigendian": name("big_f4"),
        "buffer": name("ring_I4"),
    }
    push(shared_relay, f"""
        pvs = {pvs!r}
        with Client(endpoint) as relay:
            relay.put(pvs["spectrum"], np.load(sys.argv[2]))
            relay.put(pvs["int32"], np.array([1, -2, 3, -4, 2**31 - 1], dtype=np.int32))
            relay.put(pvs["int64"], np.array([-(2**31), 0, 2**31 - 1], dtype=np.int64))
            relay.put(pvs["uint8"], np.array([0, 1, 128, 255], dtype=np.uint8))
            relay.put(pvs["float32"], np.array([0.5, -1.25, 3e38], dtype=np.float32))
            relay.put(pvs["bigendian"], np.array([1.5, -2.5, 1e-300, 7.0], dtype=">f8"))
            relay.put(pvs["buffer"], np.array([1, 2, 3], dtype=np.int16))
            relay.put(pvs["buffer"], np.array([4, 5], dtype=np.int16))
    """, str(tmp_path / "spectrum.npy"))
    wait_listed(client, shared_relay, *(full(shared_relay, pv) for pv in pvs.values()))
    got = client.get(full(shared_relay, pvs["spectrum"]))
    assert len(got) == 100_000 and np.array_equal(got, spectrum)
    assert np.signbit(got[1])  # -0.0 kept: the bytes are the sender's bytes
    assert list(client.get(full(shared_relay, pvs["int32"]))) == [1, -2, 3, -4, 2**31 - 1]
    assert list(client.get(full(shared_relay, pvs["int64"]))) == [-(2**31), 0, 2**31 - 1]
    assert list(client.get(full(shared_relay, pvs["uint8"]))) == [0, 1, 128, 255]
    assert list(client.get(full(shared_relay, pvs["float32"]))) == [0.5, -1.25,
                                                                    float(np.float32(3e38))]
    assert list(client.get(full(shared_relay, pvs["bigendian"]))) == [1.5, -2.5, 1e-300, 7.0]
    assert list(client.get(full(shared_relay, pvs["buffer"]))) == [2, 3, 4, 5]


def test_array_module_arrays_are_sent_packed(client, shared_relay, name):
    pvs = [name("doubles_f4"), name("ints_i3"), name("shorts_I5"), name("floats_f2"),
           name("text_c10")]
    output = push(shared_relay, f"""
        from relayd.core import protocol
        doubles, ints, shorts, floats, text = {pvs!r}
        values = {{
            doubles: array.array("d", [23.0, 0.1, 3231.123, 1e-4]),
            ints: array.array("i", [7, -7, 2**31 - 1]),
            shorts: array.array("h", [1, 2, 3]),
            floats: array.array("f", [0.25, -8.5]),
            text: array.array("B", b"hello"),
        }}
        # The client sends these as packed arrays, not as msgpack arrays of numbers:
        print([type(protocol.encode_update(pv, v)["value"]).__name__ for pv, v in values.items()])
        with Client(endpoint) as relay:
            for pv, value in values.items():
                relay.put(pv, value)
            relay.put(shorts, array.array("h", [4, 5, 6]))  # a buffer: appends, wraps
    """)
    assert output.strip() == str(["dict"] * 5)
    wait_listed(client, shared_relay, *(full(shared_relay, pv) for pv in pvs))
    doubles, ints, shorts, floats, text = (full(shared_relay, pv) for pv in pvs)
    assert list(client.get(doubles)) == [23.0, 0.1, 3231.123, 1e-4]
    assert list(client.get(ints)) == [7, -7, 2**31 - 1]
    assert list(client.get(shorts)) == [2, 3, 4, 5, 6]
    assert list(client.get(floats)) == [0.25, -8.5]
    assert client.get(text, as_string=True) == "hello"


def test_a_packed_array_sent_by_hand_is_decoded(caproto_client, shared_relay, name):
    """The packed form of docs/PROTOCOL.md, built without the client: big-endian int32."""
    pv = name("manual_i4")
    push(shared_relay, f"""
        data = np.array([1, -1, 65536, -(2**31)], dtype=">i4").tobytes()
        raw(pack({{"pv": {pv!r}, "value": {{"dtype": ">i4", "data": data}}}}))
    """)
    wait_listed(caproto_client, shared_relay, full(shared_relay, pv))
    assert list(caproto_client.get(full(shared_relay, pv))) == [1, -1, 65536, -(2**31)]


# --- buffers ---------------------------------------------------------------------------------


def test_buffers_append_and_wrap(client, shared_relay, name):
    floats, ints, text = name("trace_F5"), name("counts_I3"), name("log_C16")
    steps = [
        ({floats: [1.0], ints: [1], text: "first\n"},
         {floats: [1.0], ints: [1], text: "first\n"}),
        ({floats: [2.0, 3.0, 4.0], ints: [2, 3], text: "second\n"},
         {floats: [1.0, 2.0, 3.0, 4.0], ints: [1, 2, 3], text: "first\nsecond\n"}),
        ({floats: [5.0, 6.0], ints: [4], text: "third\n"},
         {floats: [2.0, 3.0, 4.0, 5.0, 6.0], ints: [2, 3, 4],
          text: "first\nsecond\nthird\n"[-16:]}),
        ({floats: [7.0, 8.0, 9.0, 10.0, 11.0], ints: [5, 6, 7], text: "x" * 16},
         {floats: [7.0, 8.0, 9.0, 10.0, 11.0], ints: [5, 6, 7], text: "x" * 16}),
    ]
    for sent, expected in steps:
        push(shared_relay, f"""
            with Client(endpoint) as relay:
                for pv, value in {sent!r}.items():
                    relay.put(pv, value)
        """)
        wait_for(lambda: list(client.get(full(shared_relay, floats))) == expected[floats],
                 what=f"{floats} == {expected[floats]}")
        wait_for(lambda: list(client.get(full(shared_relay, ints))) == expected[ints],
                 what=f"{ints} == {expected[ints]}")
        wait_for(lambda: client.get(full(shared_relay, text), as_string=True) == expected[text],
                 what=f"{text} == {expected[text]!r}")


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_pv_and_disconnects_its_monitor(client, start_relay):
    relay = start_relay()
    keep, gone = full(relay, "keep_f1"), full(relay, "gone_f1")
    push(relay, f"""
        with Client(endpoint) as relay:
            relay.put({keep!r}, 1.0)
            relay.put("gone_f1", 2.0)
    """)
    wait_listed(client, relay, keep, gone)
    monitor = client.monitor(gone)
    monitor.wait_value(lambda v: v == 2.0)
    push(relay, "with Client(endpoint) as relay: relay.delete('gone_f1')")
    wait_for(lambda: listed(client, relay) == [keep], what="gone_f1 removed from the pvlist")
    wait_for(lambda: False in monitor.connection_changes(), what="the monitor disconnected")
    assert monitor.connection_changes()[:2] == [True, False]
    assert client.get(keep) == 1.0
    wait_status_is(client, relay, "deleted", 1)
    assert status(client, relay, "refused") == 0
    monitor.close()


# --- time stamps -----------------------------------------------------------------------------


def test_source_time_stamps_reach_ca(client, shared_relay, name):
    stamped = {
        name("stamped_f1"): (21.5, 1700000000.123456),
        name("whole_second_i1"): (7, 1600000000),
        name("stamped_F4"): ([1.0, 2.0], 1650000000.000001),
        name("stamped_c20"): ("stamped text", 1234567890.5),
        name("epoch_f1"): (1.0, 631152000),   # the first EPICS time stamp
    }
    plain = name("relay_clock_f1")
    before = time.time()
    push(shared_relay, f"""
        with Client(endpoint) as relay:
            for pv, (value, ts) in {stamped!r}.items():
                relay.put(pv, value, ts=ts)
            relay.put({plain!r}, 3.0)
    """)
    wait_listed(client, shared_relay, *(full(shared_relay, pv) for pv in [*stamped, plain]))
    after = time.time()
    for pv, (value, ts) in stamped.items():
        meta = client.get_meta(full(shared_relay, pv))
        assert abs(meta.timestamp - ts) < 0.5e-6, (pv, meta.timestamp, ts)
        assert meta.severity == 0 and meta.status == 0
    meta = client.get_meta(full(shared_relay, plain))
    assert before - 0.01 <= meta.timestamp <= after + 0.01  # stamped by the relay on arrival


# --- batches ---------------------------------------------------------------------------------


def test_a_batch_applies_every_update(client, start_relay):
    relay = start_relay()
    values = {"a_f1": 1.5, "b_i1": -2, "c_c20": "batched", "d_f3": [1.0, 2.0, 3.0],
              "e_F4": [9.0]}
    push(relay, f"""
        with Client(endpoint) as relay:
            relay.put("old_f1", 0.0)
            relay.put_many({values!r})
            with relay.batch() as batch:
                batch.put("e_F4", [10.0, 11.0])
                batch.delete("old_f1")
                batch.put("f_i1", 6)
    """)
    names = [full(relay, pv) for pv in [*values, "f_i1"]]
    wait_for(lambda: listed(client, relay) == names, what=f"pvlist == {names}")
    assert client.get(full(relay, "a_f1")) == 1.5
    assert client.get(full(relay, "b_i1")) == -2
    assert client.get(full(relay, "c_c20"), as_string=True) == "batched"
    assert list(client.get(full(relay, "d_f3"))) == [1.0, 2.0, 3.0]
    assert list(client.get(full(relay, "e_F4"))) == [9.0, 10.0, 11.0]
    assert client.get(full(relay, "f_i1")) == 6
    wait_status_is(client, relay, "zmq:messages", 3)
    wait_status_is(client, relay, "zmq:updates", 9)
    assert status(client, relay, "accepted") == 8 and status(client, relay, "deleted") == 1


def test_batch_conflates_plain_pvs_but_buffers_get_every_element(client, shared_relay, name):
    plain, buffer = full(shared_relay, name("conflated_f1")), full(shared_relay, name("kept_F10"))
    push(shared_relay,
         f"with Client(endpoint) as r: r.put_many({{{plain!r}: 0.0, {buffer!r}: [0.0]}})")
    wait_listed(client, shared_relay, plain, buffer)
    plain_events, buffer_events = client.monitor(plain), client.monitor(buffer)
    plain_events.wait_value(lambda v: v == 0.0)
    buffer_events.wait_value(lambda v: list(v) == [0.0])

    push(shared_relay, f"""
        with Client(endpoint) as r:
            with r.batch() as batch:
                for i in range(1, 6):
                    batch.put({plain!r}, float(i))
                batch.put({buffer!r}, [1.0])
                batch.put({buffer!r}, [2.0, 3.0])
                batch.put({buffer!r}, [4.0])
    """)
    plain_events.wait_value(lambda v: v == 5.0)
    buffer_events.wait_value(lambda v: list(v) == [0.0, 1.0, 2.0, 3.0, 4.0])
    # The same puts as separate messages: one event each. Everything the batch posted
    # reached the clients before these (one CA circuit keeps order).
    push(shared_relay, f"""
        with Client(endpoint) as r:
            for i in range(6, 9):
                r.put({plain!r}, float(i))
            r.put({buffer!r}, [5.0])
    """)
    plain_events.wait_value(lambda v: v == 8.0)
    buffer_events.wait_value(lambda v: len(v) == 6)
    assert plain_events.values() == [0.0, 5.0, 6.0, 7.0, 8.0]
    assert [list(v) for v in buffer_events.values()] == [
        [0.0], [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    assert plain_events.connection_changes() == [True]
    plain_events.close()
    buffer_events.close()


def test_monitor_before_create_then_a_push_creates_it(client, shared_relay, name):
    pv = full(shared_relay, name("early_f1"))
    monitor = client.monitor(pv)
    initial = monitor.wait_count(1)[0]
    assert initial.severity == SEVR_INVALID and initial.status == STAT_UDF
    assert pv not in listed(client, shared_relay)
    push(shared_relay, f"with Client(endpoint) as r: r.put({pv!r}, 4.5)")
    event = monitor.wait_value(lambda v: v == 4.5)
    assert event.severity == 0 and event.status == 0
    assert pv in listed(client, shared_relay)
    monitor.close()


# --- refusals --------------------------------------------------------------------------------

GOOD = {"good_f1": 1.5, "good_i1": 7, "good_f3": [1.0, 2.0, 3.0], "good_c20": "keep me"}

# (id, snippet sending one bad message, reason, text expected in status:lastRefusal)
BAD_MESSAGES = [
    ("garbage", "raw(b'\\xc1 not msgpack at all')", "malformed", "not msgpack"),
    ("truncated", "raw(pack({'pv': 'good_f1', 'value': 2.5})[:-3])", "malformed",
     "not msgpack"),
    ("trailing-bytes", "raw(pack({'pv': 'good_f1', 'value': 2.5}) + b'x')", "malformed",
     "trailing bytes after the msgpack object"),
    ("top-level-int", "raw(pack(42))", "malformed", "a msgpack int where a map"),
    ("top-level-str", "raw(pack('good_f1'))", "malformed", "a msgpack str where a map"),
    ("unknown-key", "raw(pack({'pv': 'good_f1', 'valeu': 2.5}))", "malformed",
     "unknown key 'valeu'"),
    ("text-to-f", "with Client(endpoint) as r: r.put('good_f1', 'abc')", "badValue",
     "text 'abc' sent to a numeric PV"),
    ("nan-to-i", "with Client(endpoint) as r: r.put('good_i1', float('nan'))", "badValue",
     "nan cannot be stored in an int32 PV"),
    ("list-too-long", "with Client(endpoint) as r: r.put('good_f3', [9.0, 9.0, 9.0, 9.0])",
     "tooManyElements", "4 elements, the PV holds 3"),
    ("text-too-long", "with Client(endpoint) as r: r.put('good_c20', 'x' * 21)",
     "tooManyElements", "21 elements, the PV holds 20"),
    ("bad-suffix", "with Client(endpoint) as r: r.put('good_q1', 2.5)", "badName",
     "'good_q1' is not <prefix>:<name>_<dtype><count>"),
    ("buffer-of-one", "with Client(endpoint) as r: r.put('good_F1', [2.5])", "badName",
     "'good_F1' is not"),
    ("dot-in-name", "with Client(endpoint) as r: r.put('good.x_f1', 2.5)", "badName",
     "'good.x_f1' is not"),
    ("delete-unknown", "with Client(endpoint) as r: r.delete('never_f1')", "noSuchPV",
     "never_f1"),
    # Issue 11: a packed signed-byte array with negative values wrapped to 0..255.
    ("packed-int8-to-c", "raw(pack({'pv': 'good_c20', 'value': "
     "{'dtype': '|i1', 'data': bytes([104, 255])}}))", "badValue",
     "a byte value outside 0..255"),
    ("other-relays-name", "with Client(endpoint) as r: r.put('other:x_f1', 2.5)",
     "wrongPrefix", "'other:x_f1' looks like a PV of a relay with prefix 'other'"),
]


@pytest.mark.parametrize("snippet, reason, text", [case[1:] for case in BAD_MESSAGES],
                         ids=[case[0] for case in BAD_MESSAGES])
def test_refused_message_is_counted_and_changes_nothing(caproto_client, start_relay,
                                                        snippet, reason, text):
    relay = start_relay()
    reader = caproto_client
    push(relay, f"with Client(endpoint) as r: r.put_many({GOOD!r})")
    good = [full(relay, pv) for pv in GOOD]
    wait_listed(reader, relay, *good)
    pids = relay.child_pids()

    push(relay, snippet)
    wait_status_is(reader, relay, f"refused:{reason}", 1)
    assert status(reader, relay, "refused") == 1
    last = reader.get(full(relay, "status:lastRefusal"), as_string=True)
    assert last.startswith(f"ZMQ update: {reason}: ") and text in last, last
    assert f"refused ZMQ update: {reason}: " in relay.log_text()

    # Nothing stored changed, nothing was created, nothing crashed.
    assert listed(reader, relay) == good
    assert reader.get(full(relay, "good_f1")) == 1.5
    assert reader.get(full(relay, "good_i1")) == 7
    assert list(reader.get(full(relay, "good_f3"))) == [1.0, 2.0, 3.0]
    assert reader.get(full(relay, "good_c20"), as_string=True) == "keep me"
    push(relay, "with Client(endpoint) as r: r.put('after_f1', 2.5)")
    wait_for(lambda: reader.get(full(relay, "after_f1")) == 2.5, what="a later push applied")
    assert relay.child_pids() == pids
    assert status(reader, relay, "restarts:ingest") == 0
    assert status(reader, relay, "restarts:ca") == 0
    assert status(reader, relay, "refused") == 1


def test_a_name_under_another_prefix_is_refused_not_nested(caproto_client, start_relay):
    """PROTOCOL.md: `pv` may omit the prefix, and names may contain ':'. A name meant for
    another relay (as many ':' parts before its last as our prefix has) used to become a
    PV of this one, silently (issue 11); it is refused as wrongPrefix, and the same name
    spelled out with our prefix is ours."""
    relay = start_relay()
    push(relay, "with Client(endpoint) as r: r.put('otherrelay:temp_f1', 1.0)")
    wait_status_is(caproto_client, relay, "refused:wrongPrefix", 1)
    push(relay, f"with Client(endpoint) as r: r.put('{relay.prefix}:otherrelay:temp_f1', 2.0)")
    wait_listed(caproto_client, relay, full(relay, "otherrelay:temp_f1"))
    assert listed(caproto_client, relay) == [full(relay, "otherrelay:temp_f1")]
    assert status(caproto_client, relay, "refused") == 1


def test_one_bad_update_in_a_batch_does_not_discard_the_good_ones(client, start_relay):
    relay = start_relay()
    push(relay, """
        raw(pack([
            {"pv": "a_f1", "value": 1.0},
            {"pv": "bad_q1", "value": 1.0},            # badName
            {"pv": "b_i1", "value": 2},
            {"pv": "c_f1", "value": "text"},           # badValue
            {"pv": "d_f1", "valeu": 3.0},              # malformed: update #4
            {"pv": "e_c10", "value": "ok"},
            {"pv": "f_f2", "value": [1.0, 2.0, 3.0]},  # tooManyElements
            "not an update",                           # malformed: update #7
        ]))
    """)
    wait_status_is(client, relay, "refused", 5)
    assert listed(client, relay) == [full(relay, pv) for pv in ("a_f1", "b_i1", "e_c10")]
    assert client.get(full(relay, "a_f1")) == 1.0
    assert client.get(full(relay, "b_i1")) == 2
    assert client.get(full(relay, "e_c10"), as_string=True) == "ok"
    for reason, count in (("badName", 1), ("badValue", 1), ("malformed", 2),
                          ("tooManyElements", 1)):
        assert status(client, relay, f"refused:{reason}") == count, reason
    assert status(client, relay, "zmq:messages") == 1
    assert status(client, relay, "zmq:updates") == 8
    assert status(client, relay, "accepted") == 3
    log = relay.log_text()
    assert "update #4: unknown key 'valeu'" in log
    assert "update #7: a msgpack str where a map was expected" in log
    assert "update #1: 'bad_q1' is not" in log
    assert "update #3: " in log and "update #6: " in log
    last = client.get(full(relay, "status:lastRefusal"), as_string=True)
    assert last.startswith("ZMQ update: ") and "update #7" in last  # the last one sent


def test_an_oversize_message_is_dropped_by_zmq_and_the_relay_keeps_working(caproto_client,
                                                                           start_relay):
    relay = start_relay("--zmq-max-message-size", "1000")
    reader = caproto_client
    push(relay, "with Client(endpoint) as r: r.put('before_f1', 1.0)")
    wait_listed(reader, relay, full(relay, "before_f1"))
    pids = relay.child_pids()
    output = push(relay, """
        try:                                   # the client refuses to send it...
            Client(endpoint, max_message_size=1000).put("big_f500", [1.0] * 300)
        except ValueError as error:
            print("client refused:", error)
        with Client(endpoint, max_message_size=None) as r:   # ...unless told not to check
            r.put("big_f500", [1.0] * 300)
    """)
    assert "client refused: a message of 2" in output
    push(relay, "with Client(endpoint) as r: r.put('after_f1', 2.0)")
    wait_listed(reader, relay, full(relay, "after_f1"))
    assert listed(reader, relay) == [full(relay, "before_f1"), full(relay, "after_f1")]
    assert reader.get(full(relay, "after_f1")) == 2.0
    # ZeroMQ dropped it before relayd saw it: not received, not counted as a refusal.
    wait_status_is(reader, relay, "zmq:messages", 2)
    assert status(reader, relay, "refused") == 0
    assert relay.child_pids() == pids


# --- relay-push ------------------------------------------------------------------------------


def test_relay_push_puts_scalars_arrays_and_text(client, shared_relay, name):
    commands = {
        name("temp_f1"): ["21.5"],
        name("cups_i1"): ["0x2a"],
        name("fit_f4"): ["23.0,0.1,3231.123,1e-4"],
        name("counts_i3"): ["1", "2", "3"],
        name("motd_c100"): ["The", "sun", "is", "shining,", "go", "outside!"],
        name("negative_f2"): ["--", "-1e-3", "-2"],
    }
    for pv, words in commands.items():
        done = relay_push(shared_relay.endpoint, pv, *words)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), pv
    wait_listed(client, shared_relay, *(full(shared_relay, pv) for pv in commands))
    temp, cups, fit, counts, motd, negative = (full(shared_relay, pv) for pv in commands)
    assert client.get(temp) == 21.5
    assert client.get(cups) == 42
    assert list(client.get(fit)) == [23.0, 0.1, 3231.123, 1e-4]
    assert list(client.get(counts)) == [1, 2, 3]
    assert client.get(motd, as_string=True) == "The sun is shining, go outside!"
    assert list(client.get(negative)) == [-1e-3, -2.0]


def test_relay_push_delete_and_time_stamp(caproto_client, start_relay):
    relay = start_relay()
    pv = full(relay, "temp_f1")
    assert relay_push("--ts", "1700000000.25", relay.endpoint, pv, "3.5").returncode == 0
    wait_listed(caproto_client, relay, pv)
    assert abs(caproto_client.get_meta(pv).timestamp - 1700000000.25) < 0.5e-6
    assert relay_push("--delete", relay.endpoint, "temp_f1").returncode == 0
    wait_for(lambda: listed(caproto_client, relay) == [], what="temp_f1 deleted")
    wait_status_is(caproto_client, relay, "deleted", 1)


def test_relay_push_lines_appends_in_order(client, shared_relay, name):
    log, tail = full(shared_relay, name("build_log_C200")), full(shared_relay, name("tail_C20"))
    lines = b"first\nsecond\nthird line, longer\n"
    assert relay_push("--lines", shared_relay.endpoint, log, input=lines).returncode == 0
    assert relay_push("--lines", shared_relay.endpoint, tail,
                      input=b"alpha\nbravo\ncharlie\ndelta\n").returncode == 0
    wait_listed(client, shared_relay, log, tail)
    assert client.get(log, as_string=True) == lines.decode()
    assert client.get(tail, as_string=True) == "alpha\nbravo\ncharlie\ndelta\n"[-20:]


def test_relay_push_exit_codes(caproto_client, start_relay):
    relay = start_relay()
    usage_errors = [
        [relay.endpoint, "x_q1", "1"],              # not a relay name
        [relay.endpoint, "x_f1", "abc"],            # not a float
        [relay.endpoint, "x_i1", "3.7"],            # not an int
        [relay.endpoint, "x_f2", "1,2,3"],          # more values than the count
        [relay.endpoint, "x_c4", "too long"],       # more text than the count
        [relay.endpoint, "x_f1"],                   # no value
        ["--delete", relay.endpoint, "x_f1", "1"],  # a delete takes no value
        ["--lines", relay.endpoint, "x_c10"],       # --lines needs a C buffer
        ["--ts", "0", relay.endpoint, "x_f1", "1"],  # before the EPICS epoch
    ]
    for args in usage_errors:
        done = relay_push(*args)
        assert done.returncode == 2, (args, done)
        assert done.stderr.startswith(b"relay-push: ") and done.stderr.count(b"\n") == 1, done
    done = relay_push("--bogus", relay.endpoint, "x_f1", "1")  # argparse: usage, then why
    assert done.returncode == 2 and b"unrecognized arguments: --bogus" in done.stderr
    nobody = f"tcp://127.0.0.1:{free_port((socket.SOCK_STREAM,))}"
    done = relay_push("--timeout", "0.5", nobody, "x_f1", "1")
    assert done.returncode == 1, done
    assert done.stderr.count(b"\n") == 1 and nobody.encode() in done.stderr
    assert relay_push(relay.endpoint, "x_f1", "1").returncode == 0
    wait_listed(caproto_client, relay, full(relay, "x_f1"))
    # Only the good command sent anything.
    wait_status_is(caproto_client, relay, "zmq:messages", 1)
    assert status(caproto_client, relay, "refused") == 0


# --- child processes: crashes and restarts ---------------------------------------------------

COUNTER = """
    # Push an increasing counter every ~10 ms until stdin closes (or 60 s pass).
    import threading
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    with Client(endpoint, send_timeout=30) as relay:
        for i in itertools.count(1):
            relay.put(sys.argv[2], i)
            if done.wait(0.01) or i > 6000:
                break
    print(i)
"""


def test_ingest_worker_killed_is_restarted_and_monitors_stay_connected(client, start_relay):
    relay = start_relay()
    counter = full(relay, "counter_i1")
    pusher = start_pusher(relay, COUNTER, "counter_i1")
    try:
        wait_listed(client, relay, counter)
        monitor = client.monitor(counter)
        monitor.wait_value(lambda v: v > 5)
        old = relay.child_pids()
        os.kill(old["ingest"], signal.SIGKILL)
        new = wait_for(lambda: (pids := relay.child_pids()).get("ingest") not in
                       (None, old["ingest"]) and pids, what="a new ingest worker")
        assert new["ca-server"] == old["ca-server"]
        wait_status_is(client, relay, "restarts:ingest", 1)
        relay.wait_log("ingest ready (pid %d)" % new["ingest"])
        after_restart = client.get(counter)
        wait_for(lambda: client.get(counter) > after_restart + 20,
                 what="the counter increasing after the restart")
        monitor.wait_value(lambda v: v > after_restart + 20)
    finally:
        output, errors = stop_pusher(pusher)
    assert pusher.returncode == 0, errors
    assert "ingest was killed by SIGKILL; restarting" in relay.log_text()
    assert status(client, relay, "restarts:ca") == 0
    values = monitor.values()
    assert values == sorted(values), "the counter went backwards"
    assert monitor.connection_changes() == [True]  # never disconnected
    monitor.close()


def test_ca_process_killed_is_restarted_and_pyepics_reconnects(pyepics_client, start_relay):
    relay = start_relay()
    pv = full(relay, "value_f1")
    push(relay, f"with Client(endpoint) as r: r.put({pv!r}, 1.0)")
    wait_listed(pyepics_client, relay, pv)
    monitor = pyepics_client.monitor(pv)
    monitor.wait_value(lambda v: v == 1.0)
    old = relay.child_pids()
    os.kill(old["ca-server"], signal.SIGKILL)
    new = wait_for(lambda: (pids := relay.child_pids()).get("ca-server") not in
                   (None, old["ca-server"]) and pids, what="a new CA process")
    assert new["ingest"] == old["ingest"]
    relay.wait_log("ca-server ready (pid %d)" % new["ca-server"])
    wait_status_is(pyepics_client, relay, "restarts:ca", 1)
    assert status(pyepics_client, relay, "restarts:ingest") == 0
    # The new CA process restored the PV from autosave; a push updates it.
    push(relay, f"with Client(endpoint) as r: r.put({pv!r}, 2.0)")
    wait_listed(pyepics_client, relay, pv)
    monitor.wait_value(lambda v: v == 2.0, timeout=20)
    changes = monitor.connection_changes()
    assert changes[:2] == [True, False] and changes[-1] is True, changes
    assert "ca-server was killed by SIGKILL; restarting" in relay.log_text()
    monitor.close()


def _own_relay(session_dir: Path, *args: str) -> RelayProcess:
    """A relay outside `start_relay`, for tests where it must not exit with 0."""
    return RelayProcess(unique_prefix(), PORTS.take(), session_dir, list(args))


def _kill_leftovers(pids: dict[str, int]) -> None:
    for role, pid in pids.items():
        if is_running(pid, f"relayd: {role}"):
            os.kill(pid, signal.SIGKILL)


def test_supervisor_killed_takes_its_children_with_it(session_dir):
    relay = _own_relay(session_dir)
    children: dict[str, int] = {}
    try:
        relay.start()
        children = relay.child_pids()
        assert set(children) == {"ca-server", "ingest", "http"}
        os.kill(relay.pid, signal.SIGKILL)
        assert relay.process.wait(10) == -signal.SIGKILL
        wait_for(lambda: not any(is_running(pid, f"relayd: {role}")
                                 for role, pid in children.items()),
                 timeout=5, what="the children exiting after the supervisor's death")
        # Nothing holds the ZMQ endpoint any more: it can be bound again at once.
        context = zmq.Context()
        sock = context.socket(zmq.PULL)
        try:
            sock.bind(relay.endpoint)
        finally:
            sock.close(0)
            context.term()
        # Nor the HTTP port.
        with socket.socket() as http:
            http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            http.bind(("127.0.0.1", relay.http_port))
    finally:
        if relay.process is not None and relay.process.poll() is None:
            relay.process.kill()
            relay.process.wait()
        _kill_leftovers(children)
        PORTS.give_back(relay.port)


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`, whatever they are called."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def test_processes_are_titled_in_ps(start_relay):
    relay = start_relay()
    pids = [relay.pid, *children_of(relay.pid)]
    titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()
              for pid in pids}
    assert sorted(titles.values()) == ["relayd: ca-server", "relayd: http", "relayd: ingest",
                                       "relayd: supervisor"], titles
    assert titles[relay.pid] == "relayd: supervisor"
    if shutil.which("ps"):  # ps may be missing from a minimal image
        ps = subprocess.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids))],
                            capture_output=True, text=True)
        shown = {int(line.split(None, 1)[0]): line.split(None, 1)[1].strip()
                 for line in ps.stdout.splitlines()}
        assert shown == titles


# --- boot failures ---------------------------------------------------------------------------


def _boot_failure(session_dir: Path, endpoint: str) -> RelayProcess:
    """Start a relay binding `endpoint`; check it gives up with exit code 3, quickly."""
    relay = _own_relay(session_dir, "--zmq-bind", endpoint)
    try:
        started = time.monotonic()
        relay.start(wait=False)
        try:
            code = relay.process.wait(15)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.process.wait()
            raise AssertionError(f"relayd did not give up:\n{relay.log_text()}")
        assert code == 3, relay.log_text()
        assert time.monotonic() - started < 10
    finally:
        PORTS.give_back(relay.port)
    log = relay.log_text()
    reasons = [line for line in log.splitlines() if "relayd cannot start" in line]
    assert len(reasons) == 1 and endpoint in reasons[0], log
    assert "restarting" not in log, log
    return relay


def test_zmq_endpoint_in_use_is_a_boot_failure(start_relay, session_dir, caproto_client):
    first = start_relay()
    second = _boot_failure(session_dir, first.endpoint)
    assert "Address already in use" in second.log_text()
    # The running relay is not disturbed.
    push(first, "with Client(endpoint) as r: r.put('still_f1', 1.0)")
    wait_listed(caproto_client, first, full(first, "still_f1"))


@pytest.mark.parametrize("endpoint", ["tcp://256.1.1.1:1", "tcp://127.0.0.1:notaport"])
def test_invalid_zmq_endpoint_is_a_boot_failure(session_dir, endpoint):
    _boot_failure(session_dir, endpoint)


# --- heavy ingest --------------------------------------------------------------------------

FLOOD = """
    # Batches of 1000 updates as fast as possible: at least 50, then until stdin closes.
    import threading
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    names = [f"flood{i}_f1" for i in range(1000)]
    with Client(endpoint, send_timeout=30, queue_size=100) as relay:
        for batch in itertools.count():
            relay.put_many([(pv, float(batch)) for pv in names])
            if batch >= 49 and done.is_set() or batch >= 2000:
                break
    print(batch + 1)
"""


def test_status_pvs_answer_while_a_pusher_floods(pyepics_client, start_relay):
    relay = start_relay()
    updates = full(relay, "status:zmq:updates")
    pusher = start_pusher(relay, FLOOD)
    seen = []
    try:
        wait_for(lambda: pyepics_client.get(updates) > 0, what="the flood arriving")
        for _ in range(3):
            seen.append(pyepics_client.get(updates))          # an open channel
            fresh = subprocess.run(                           # a new client: search, read
                [sys.executable, "-m", "caproto.commandline.get", "--no-repeater",
                 "--timeout", "5", full(relay, "status:uptime")],
                capture_output=True, text=True, timeout=30)
            assert fresh.returncode == 0, fresh.stderr
            assert full(relay, "status:uptime") in fresh.stdout
    finally:
        output, errors = stop_pusher(pusher)
    assert pusher.returncode == 0, errors
    batches = int(output)
    assert batches >= 50
    assert any(0 < count < batches * 1000 for count in seen), "no read during the flood"
    wait_for(lambda: pyepics_client.get(updates) == batches * 1000, timeout=30,
             what=f"all {batches * 1000} updates received")
    wait_for(lambda: pyepics_client.get(full(relay, "flood999_f1")) == batches - 1,
             timeout=30, what="the last batch applied")
    assert pyepics_client.get(full(relay, "status:accepted")) == batches * 1000
    assert pyepics_client.get(full(relay, "status:refused")) == 0

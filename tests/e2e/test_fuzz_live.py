"""End-to-end fuzzing: thousands of random and malformed inputs against a live relay.

First a set of good PVs of every kind (scalars, arrays, buffers, text, with attributes)
is made and recorded exactly: value bytes, time stamp, alarm, control metadata and
fields. Then, from a seeded generator:

* 5000 ZMQ messages from one PUSH socket: random bytes, msgpack headers declaring
  huge lengths, random msgpack structures, update-like maps with random keys and values,
  bad names (beyond the limits, outside the grammar), and updates aimed at the good PVs
  that must each be refused whole: a wrong value type, too many elements, bad packed
  arrays, or a good value spoilt by bad attributes, a bad time stamp, an unknown key, an
  unknown version or a bad op;
* 2000 CA writes with caproto: random types and counts to random names, too
  many elements and unparsable text to the good PVs, bad values to their fields, writes
  to the status PVs, junk to delpv, and connections to names beyond the limits.

Then every good PV must hold exactly what it held (no monitor event was even posted),
the relay must still answer and accept new work, no child may have restarted, nothing
may have been refused as an internal error, and the refusal counters must have moved.

Set RELAYD_FUZZ_SEED to explore other seeds; the default keeps the test deterministic.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Callable

import msgpack
import numpy as np
import pytest
import zmq

from relayd.client import Client
from tests.e2e._tools import full, listed, status, wait_listed, wait_status
from tests.harness import wait_for

SEED = int(os.environ.get("RELAYD_FUZZ_SEED", "20240607"))
ZMQ_MESSAGES = 5000
CA_WRITES = 2000

MAX_ELEMENTS = 1000
MAX_NAME_LENGTH = 50  # caproto itself refuses to search for names of 60 or more
MAX_PVS = 400

# The good PVs: base name -> (value as pushed, attributes). Every name starts with
# "good"; random names never contain a "g", so they can never hit one by chance.
GOOD: dict[str, tuple[Any, dict]] = {
    "good_f1": (21.25, {"egu": "degC", "prec": 3, "hihi": 80.0, "desc": "temperature"}),
    "good_i1": (-7, {"egu": "cups", "hyst": 0.5}),
    "good_c1": ("x", {}),
    "good_f8": (np.array([1.5, -0.0, 1e300, 5e-324, math.pi, -2.5, math.inf, math.nan]),
                {"egu": "V", "lolo": -1.0, "tmo": 0.0}),
    "good_i6": ([2**31 - 1, -(2**31), 0, 1, -1, 42], {"desc": "ints"}),
    "good_c40": ("The sun is shining, go outside!", {"desc": "motd"}),
    "goodbuf_F6": ([1.0, 2.0, 3.0], {"egu": "mm"}),
    "goodbuf_I5": ([10, 20], {}),
    "goodbuf_C20": ("first line\n", {}),
    "goodpk_f500": (np.random.default_rng(SEED).normal(size=500), {"prec": 5}),
}
BUFFER_APPENDS = {"goodbuf_F6": [4.0, 5.0, 6.0, 7.0], "goodbuf_I5": [30, 40, 50, 60],
                  "goodbuf_C20": "second line\n"}
FIELDS = ("EGU", "PREC", "DESC", "HOPR", "LOPR", "DRVH", "DRVL", "HIHI", "HIGH", "LOW",
          "LOLO", "HHSV", "HSV", "LSV", "LLSV", "HYST", "TMO", "NELM", "NORD", "RTYP",
          "SEVR", "STAT")

JUNK_ALPHABET = "abcdefhijklmnopqrstuvwxyz0123456789_-:"  # no "g"
NOT_A_NUMBER = "hjkmopqrstuvwyz!?#@"  # neither decimal, hexadecimal, inf nor nan


def spec(base: str) -> tuple[str, int, bool]:
    """(kind letter, count, buffer) of a base name."""
    suffix = base.rsplit("_", 1)[1]
    return suffix[0].lower(), int(suffix[1:]), suffix[0].isupper()


# --- recording the good PVs ---------------------------------------------------------------


def record(ca, name: str) -> dict:
    """Everything a client can see of PV `name`, exactly."""
    pv = ca.pv(name)
    timed = pv.read(data_type="time", timeout=5)
    control = pv.read(data_type="control", timeout=5)
    value = np.asarray(timed.data)
    meta = control.metadata
    return {
        "value": (value.dtype.str, value.shape, value.tobytes()),
        "time": (timed.metadata.timestamp, int(timed.metadata.status),
                 int(timed.metadata.severity)),
        "control": {field: _plain(getattr(meta, field)) for field, _ in meta._fields_},
        "fields": {field: _plain(ca.get(f"{name}.{field}")) for field in FIELDS},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if hasattr(value, "_length_"):  # ctypes arrays (units)
        return bytes(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


# --- random inputs --------------------------------------------------------------------------


class Fuzzer:
    """Seeded generators of junk for one relay."""

    def __init__(self, rng: random.Random, prefix: str):
        self.rng = rng
        self.prefix = prefix

    def text(self, alphabet: str = JUNK_ALPHABET, low: int = 1, high: int = 12) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(low, high)))

    def name(self) -> str:
        """A random name: mostly of the grammar, some beyond a limit or outside it."""
        rng = self.rng
        base = self.text()
        dtype = rng.choice("ffiicFICq")
        count = rng.choice(["1", "1", "2", "3", "10", "100", "1000", "0", "01", "1001",
                            "99999999999999", ""])
        name = f"{base}_{dtype}{count}"
        roll = rng.random()
        if roll < 0.3:
            name = f"{self.prefix}:{name}"
        elif roll < 0.35:
            name = f"other:{name}"
        elif roll < 0.42:
            name = "n" * rng.randint(MAX_NAME_LENGTH, 300) + "_f1"   # nameTooLong
        elif roll < 0.47:
            name = rng.choice(["", " ", "a.b_f1", "sp ace_f1", "_f1", "x_f", "\0_f1",
                               "é_f1", f"{self.prefix}:", "status:pvs", "delpv"])
        return name

    def obj(self, depth: int = 0) -> Any:
        """A random msgpack-able object, nested up to three levels."""
        rng = self.rng
        kinds = ["nil", "bool", "int", "float", "str", "bin", "ext"]
        if depth < 3:
            kinds += ["list", "map", "list", "map"]
        kind = rng.choice(kinds)
        if kind == "nil":
            return None
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "int":
            return rng.choice([0, 1, -1, 255, 256, 2**31 - 1, 2**31, -(2**31) - 1,
                               2**63 - 1, -(2**63), 2**64 - 1, rng.randint(-10**9, 10**9)])
        if kind == "float":
            return rng.choice([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324,
                               rng.uniform(-1e6, 1e6)])
        if kind == "str":
            return "".join(rng.choice("ab:_\0é€😀 .\n") for _ in range(rng.randint(0, 20)))
        if kind == "bin":
            return rng.randbytes(rng.randint(0, 40))
        if kind == "ext":
            return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 9)))
        if kind == "list":
            return [self.obj(depth + 1) for _ in range(rng.randint(0, 6))]
        keys = ["pv", "value", "op", "ts", "meta", "v", "dtype", "data", "egu", "prec",
                self.text()]
        return {rng.choice(keys): self.obj(depth + 1) for _ in range(rng.randint(0, 5))}

    def update(self) -> dict:
        """An update-like map for a random name (junk names only)."""
        rng = self.rng
        update: dict[str, Any] = {"pv": self.name() if rng.random() < 0.9 else self.obj()}
        roll = rng.random()
        if roll < 0.5:
            update["value"] = self.obj()
        elif roll < 0.7:
            update["value"] = rng.choice([1.0, 2, "text", [1.0, 2.0], [1, 2, 3], b"bin"])
        elif roll < 0.8:
            update["op"] = rng.choice(["delete", "put", "DELETE", "", None, 1])
        elif roll < 0.9:
            dtype = rng.choice(["<f8", ">f4", "|u1", "<i8", "<f2", "|b1", "O", "<c16", 1])
            update["value"] = {"dtype": dtype, "data": rng.randbytes(rng.randint(0, 33))}
        for key in ("ts", "meta", "v", self.text(low=1, high=4)):
            if rng.random() < 0.15:
                update[key] = self.obj(2)
        return update

    # -- aimed at the good PVs: each of these must be refused whole --------------------------

    def spoilt_update(self, base: str) -> dict:
        rng = self.rng
        kind, count, buffer = spec(base)
        pv = rng.choice([base, f"{self.prefix}:{base}"])
        roll = rng.random()
        if roll < 0.5:
            return {"pv": pv, "value": self.bad_value(kind, count)}
        good = {"f": [1.0], "i": [1], "c": "ok"}[kind] if count > 1 or buffer else \
            {"f": 1.0, "i": 1, "c": "k"}[kind]
        update = {"pv": pv, "value": good}
        spoilers: list[Callable[[], None]] = [
            lambda: update.update(meta=rng.choice(BAD_META)),
            lambda: update.update(ts=rng.choice(BAD_TS)),
            lambda: update.update({rng.choice(["valeu", "TS", "PV", "Value", "x"]): 1}),
            lambda: update.update(v=rng.choice([0, 2, "1", 1.0, None, [1]])),
            lambda: update.update(op=rng.choice(["delete", "remove", "PUT", "", 0])),
            lambda: (update.pop("value"), update.update(meta=rng.choice(BAD_META))),
        ]
        rng.choice(spoilers)()
        return update

    def bad_value(self, kind: str, count: int) -> Any:
        rng = self.rng
        too_many = rng.randint(count + 1, count + 5)
        if kind == "c":
            choices = [
                1, -1.5, None, True, {"a": 1}, [1.5], [256], [-1], ["a"], [[65]],
                "y" * too_many, b"z" * too_many, list(range(65, 65 + too_many)),
                {"dtype": "<f8", "data": bytes(8)},
                {"dtype": "|u1", "data": b"w" * too_many},
                msgpack.ExtType(3, b"x"),
            ]
        else:
            choices = [
                "text", "1.5", b"bytes", None, {"a": 1}, [[1.0, 2.0]], ["x"], [None],
                [float(i) for i in range(too_many)],
                {"dtype": "<f8", "data": bytes(8 * too_many)},
                {"dtype": ">i4", "data": bytes(4 * too_many)},
                {"dtype": "<f2", "data": b"\0\0"},
                {"dtype": "|b1", "data": b"\1"},
                {"dtype": "<f8", "data": b"\0" * 7},
                {"dtype": "<f8", "data": "not bin"},
                {"dtype": "<f8", "data": bytes(8), "extra": 1},
                {"data": bytes(8)},
                msgpack.ExtType(7, b"x"), msgpack.Timestamp(1, 0),
            ]
            if count == 1:
                choices.append([])  # "no value"
            if kind == "i":
                choices += [math.nan, math.inf, 2**31, -(2**31) - 1, 1e20, [2**40],
                            [math.nan]]
        return rng.choice(choices)


BAD_META = [
    {"prec": 99}, {"prec": -1}, {"prec": 1.5}, {"prec": "3"}, {"egu": "x" * 40},
    {"egu": 5}, {"desc": b"\xff" * 50}, {"hyst": -1.0}, {"tmo": -5}, {"hihi": "high"},
    {"hihi": math.inf}, {"hopr": math.nan}, {"hhsv": 9}, {"hhsv": "LOUD"}, {"lsv": -1},
    {"nelm": 5}, {"NORD": 1}, {"bogus": 1}, {"EGU": "mm"}, [1, 2], "egu", 3,
]
BAD_TS = [0, -1.0, math.nan, math.inf, -math.inf, 2**40, 631151999, "now", [1], True,
          b"\0" * 8, {"s": 1}]


def raw_junk(rng: random.Random) -> bytes:
    """Bytes that are not a usable message: random, truncated, or lying about lengths."""
    roll = rng.random()
    if roll < 0.4:
        return rng.randbytes(rng.randint(0, 200))
    if roll < 0.6:  # headers declaring huge lengths, followed by little or nothing
        head = rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                           b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                           b"\xc9\x7f\xff\xff\xff\x01", b"\xdc\xff\xff",
                           b"\x91" * 2000, b"\x81\xa2pv" * 600])
        return head + rng.randbytes(rng.randint(0, 16))
    good = msgpack.packb({"pv": "junk_f1", "value": 1.0})
    if roll < 0.8:  # truncated, or with trailing bytes
        return good[: rng.randint(0, len(good) - 1)] + (
            b"" if rng.random() < 0.5 else good)
    return msgpack.packb({1: 2, "pv": "junk_f1"}, use_bin_type=True)  # non-str key


# --- the test -------------------------------------------------------------------------------


# caproto warns when it casts a huge double to float32 for a DBR_FLOAT write: that is junk.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_random_and_malformed_input_changes_no_good_pv(caproto_client, start_relay):
    started = time.monotonic()
    relay = start_relay("--max-elements", str(MAX_ELEMENTS),
                        "--max-name-length", str(MAX_NAME_LENGTH),
                        "--max-pvs", str(MAX_PVS), "--status-interval", "0.2")
    ca = caproto_client
    rng = random.Random(SEED)
    fuzz = Fuzzer(rng, relay.prefix)

    # 1. The good PVs, made by both paths, with attributes; buffers appended to.
    with Client(relay.endpoint) as pusher:
        for base, (value, meta) in GOOD.items():
            if base != "good_c40":
                pusher.put(base, value, meta=meta or None)
        for base, more in BUFFER_APPENDS.items():
            pusher.put(base, more)
    good_names = [full(relay, base) for base in GOOD]
    text_pv = full(relay, "good_c40")
    assert ca.put(text_pv, GOOD["good_c40"][0])                       # by CA
    assert ca.put(f"{text_pv}.DESC", GOOD["good_c40"][1]["desc"])
    wait_listed(ca, relay, *good_names)
    pushes = len(GOOD) - 1 + len(BUFFER_APPENDS)
    wait_for(lambda: status(ca, relay, "zmq:messages") == pushes, what="every push received")
    wait_for(lambda: status(ca, relay, "accepted") == pushes + 2, what="every push applied")
    before = {name: record(ca, name) for name in good_names}
    assert np.array_equal(ca.get(full(relay, "goodbuf_F6")), [2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    monitors = {name: ca.monitor(name) for name in good_names}
    for monitor in monitors.values():
        monitor.wait_count(1)
    pids = relay.child_pids()
    messages_before = status(ca, relay, "zmq:messages")

    # 2. Thousands of ZMQ messages.
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.connect(relay.endpoint)
    sent = 0
    try:
        for _ in range(ZMQ_MESSAGES):
            roll = rng.random()
            if roll < 0.2:
                message = raw_junk(rng)
            elif roll < 0.35:
                message = msgpack.packb(fuzz.obj(), use_bin_type=rng.random() < 0.8)
            elif roll < 0.6:
                message = msgpack.packb(fuzz.update(), use_bin_type=True)
            elif roll < 0.85:
                message = msgpack.packb(fuzz.spoilt_update(rng.choice(list(GOOD))),
                                        use_bin_type=True)
            else:  # a batch mixing everything
                batch = []
                for _ in range(rng.randint(0, 30)):
                    pick = rng.random()
                    batch.append(fuzz.spoilt_update(rng.choice(list(GOOD))) if pick < 0.5
                                 else fuzz.update() if pick < 0.9 else fuzz.obj(1))
                message = msgpack.packb(batch, use_bin_type=True)
            sock.send(message)
            sent += 1
    finally:
        sock.close()
        context.term()

    # 3. Thousands of CA writes, from a context of our own (deletes disconnect channels).
    from caproto import ChannelType
    from caproto.threading.client import Context

    ca_context = Context()
    outcomes = {"accepted": 0, "refused": 0}
    try:
        _ca_fuzz(ca_context, ChannelType, relay, fuzz, good_names, outcomes)
    finally:
        ca_context.disconnect()

    # 4. Everything sent was received (all but the CA refusals pcas makes itself).
    wait_status(ca, relay, "zmq:messages", lambda n: n == messages_before + sent, timeout=30)
    time.sleep(0.5)  # the last forwards' updates are applied within a cycle
    for name in good_names:
        assert record(ca, name) == before[name], f"{name} changed"
    for name, monitor in monitors.items():
        assert len(monitor.value_events()) == 1, f"{name} posted {monitor.values()[1:]}"
        assert monitor.connection_changes() == [True]
        monitor.close()
    assert set(good_names) <= set(listed(ca, relay))

    # The relay still answers, takes new work, and no part of it fell over.
    assert status(ca, relay, "uptime") > 0
    assert relay.child_pids() == pids
    assert status(ca, relay, "restarts:ca") == 0 and status(ca, relay, "restarts:ingest") == 0
    assert status(ca, relay, "refused:internal") == 0, status(ca, relay, "lastRefusal")
    log = relay.log_text()
    assert "Traceback" not in log and "internal error" not in log
    for reason in ("malformed", "badName", "badValue", "tooManyElements", "countLimit",
                   "nameTooLong", "readOnly", "noSuchPV"):
        assert status(ca, relay, f"refused:{reason}") > 0, reason
    assert outcomes["refused"] > CA_WRITES // 2 and outcomes["accepted"] > 0, outcomes
    with Client(relay.endpoint) as pusher:
        pusher.delete("good_i1")
        pusher.put("after_f1", 1.0)
    wait_listed(ca, relay, full(relay, "after_f1"))
    assert full(relay, "good_i1") not in listed(ca, relay)
    assert time.monotonic() - started < 60


def _ca_fuzz(context, ChannelType, relay, fuzz: Fuzzer, good_names: list[str],
             outcomes: dict) -> None:
    rng = fuzz.rng
    prefix = relay.prefix

    def write(pv, data, data_type) -> None:
        try:
            response = pv.write(data, data_type=data_type, wait=True, timeout=3)
            ok = response.status.success == 1
        except Exception:  # refused in the client library, or a bad request
            ok = False
        outcomes["accepted" if ok else "refused"] += 1

    # Names of the grammar, within the limits (they connect as placeholders).
    junk = {f"{prefix}:{fuzz.text()}_{rng.choice('fFiIcC')}{rng.choice([2, 3, 10, 100])}"
            for _ in range(30)}
    junk |= {f"{prefix}:{fuzz.text()}_{rng.choice('fic')}1" for _ in range(10)}
    control = [f"{prefix}:{suffix}" for suffix in (
        "status:pvs", "status:refused", "status:lastRefusal", "pvlist", "status:uptime")]
    fields = [f"{name}.{field}" for name in good_names for field in FIELDS
              if field not in ("EGU", "DESC")]
    names = sorted(junk) + control + good_names + fields + [f"{prefix}:delpv"]
    pvs = dict(zip(names, context.get_pvs(*names, timeout=5)))
    for pv in pvs.values():
        pv.wait_for_connection(timeout=10)

    # Names beyond the limits are never answered.
    beyond = [f"{prefix}:{fuzz.text()}_f{rng.randint(MAX_ELEMENTS + 1, 10**9)}"
              for _ in range(5)]
    beyond += [f"{prefix}:{'m' * (MAX_NAME_LENGTH + i - len(prefix) - 3)}_f1" for i in range(5)]
    far = context.get_pvs(*beyond, timeout=1)
    number_types = [ChannelType.DOUBLE, ChannelType.LONG, ChannelType.INT,
                    ChannelType.FLOAT, ChannelType.ENUM]

    def numbers(n: int) -> list:
        return [rng.choice([0.0, 1.0, -1.0, 7.0, 255.0, 2.0**31, -(2.0**31), 3.7, -1e300,
                            math.nan, math.inf]) for _ in range(n)]

    for _ in range(CA_WRITES):
        roll = rng.random()
        if roll < 0.3:  # anything to a junk name
            pv = pvs[rng.choice(sorted(junk))]
            count = rng.randint(1, pv.channel.native_data_count + 3)
            kind = rng.choice(["number", "string", "char"])
            if kind == "number":
                data_type = rng.choice(number_types)
                if data_type in (ChannelType.DOUBLE, ChannelType.FLOAT):
                    data = numbers(count)
                else:
                    data = [rng.choice([0, 1, -1, 7, 255, 32767, -32768]) for _ in range(count)]
            elif kind == "string":
                data_type = ChannelType.STRING
                data = [fuzz.text(JUNK_ALPHABET + "0123456789.e+-", 0, 39).encode()
                        for _ in range(min(count, 4))]
            else:
                data_type = ChannelType.CHAR
                data = [rng.randint(0, 255) for _ in range(count)]
            write(pv, data, data_type)
        elif roll < 0.55:  # a good PV: too many elements, or text that is not a number
            name = rng.choice(good_names)
            pv = pvs[name]
            native = pv.channel.native_data_count
            kind, _, _ = spec(name.rsplit(":", 1)[1])
            if kind != "c" and rng.random() < 0.4:
                text = fuzz.text(NOT_A_NUMBER, 1, 20).encode()
                write(pv, [text], ChannelType.STRING)
            else:
                count = native + rng.randint(1, 4)
                data_type = rng.choice([ChannelType.DOUBLE, ChannelType.LONG, ChannelType.CHAR])
                write(pv, [1] * count if data_type != ChannelType.DOUBLE else [1.5] * count,
                      data_type)
        elif roll < 0.8:  # a field of a good PV: a value it must refuse
            name = rng.choice(fields)
            field = name.rsplit(".", 1)[1]
            write(pvs[name], *_bad_field_value(rng, field, ChannelType))
        elif roll < 0.9:  # a status PV
            pv = pvs[rng.choice(control)]
            data_type = rng.choice(number_types + [ChannelType.STRING, ChannelType.CHAR])
            data = [b"5"] if data_type == ChannelType.STRING else [5]
            write(pv, data, data_type)
        else:  # junk to delpv (never a good name: junk has no "g")
            target = rng.choice([fuzz.text(), fuzz.name(), f"{prefix}:{fuzz.text()}_f1",
                                 rng.choice(sorted(junk)), " ", ""])
            if "g" in target:
                target = "nothing_f1"
            write(pvs[f"{prefix}:delpv"], target.encode()[:MAX_NAME_LENGTH - 1] + b"\0",
                  ChannelType.CHAR)
    assert not any(pv.connected for pv in far), "a name beyond the limits was answered"


def _bad_field_value(rng: random.Random, field: str, ChannelType) -> tuple[list, Any]:
    """A write that field `field` must refuse: out of range, not finite, or read-only."""
    if field == "PREC":
        return [rng.choice([18, 99, 30000, -1, -30000])], ChannelType.INT
    if field in ("HYST", "TMO"):
        return [rng.choice([-1e-3, -1.0, -1e6, -math.inf, math.nan])], ChannelType.DOUBLE
    if field in ("HIHI", "HIGH", "LOW", "LOLO"):
        return [rng.choice([math.inf, -math.inf])], ChannelType.DOUBLE
    if field in ("HOPR", "LOPR", "DRVH", "DRVL"):
        return [rng.choice([math.inf, -math.inf, math.nan])], ChannelType.DOUBLE
    if field in ("HHSV", "HSV", "LSV", "LLSV"):
        if rng.random() < 0.5:
            return [rng.choice([b"LOUD", b"MAJORX", b"4"])], ChannelType.STRING
        return [rng.choice([4, 5, 100, 32767])], rng.choice([ChannelType.ENUM,
                                                            ChannelType.INT])
    # NELM, NORD, RTYP, SEVR, STAT: read-only, whatever is written.
    if field == "RTYP":
        return [b"calc"], ChannelType.STRING
    return [rng.choice([0, 1, 2, 3])], rng.choice([ChannelType.LONG, ChannelType.ENUM,
                                                   ChannelType.DOUBLE])

"""The ingest worker's pure part (workers.ingest.validate.Ingest, is_local) and Stats.merge_worker."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.errors import Reason
from relayd.core.names import Grammar, NameLimits
from relayd.core.intake import Intake
from relayd.core.ops import Batch, Op, PipeOp
from relayd.supervise.messages import Forward, decode, encode
from relayd.core.protocol import dumps, encode_update
from relayd.core.stats import Stats
from relayd.core.values import convert
from relayd.keys import is_local
from workers.ingest.validate import Ingest

PREFIX = "pfx"
ARRIVAL = 1_234_567_890_123_456_789
TS = 1_700_000_000.123456


def make(cache_size: int = 1000) -> Ingest:
    grammar = Grammar(PREFIX, NameLimits(max_name_length=40, max_elements=1000))
    return Ingest(Intake(grammar, cache_size))


def travel(ops: list[PipeOp], counters: dict | None = None) -> list:
    """`ops` as the CA process gets them: one batch of one forward, through the pipe's
    encoding."""
    forward = Forward(1, 2, [Batch(ops, "zmq", "zmq")], counters or {})
    return decode(encode(forward)).batches[0][0]


def expected_value(name: str, raw: object) -> object:
    """What relayd.core.values.convert stores for `raw` sent to `name` (raw as decoded)."""
    grammar = Grammar(PREFIX, NameLimits(max_name_length=40, max_elements=1000))
    return convert(grammar.spec_for(name), raw)


def same(a: object, b: object) -> bool:
    """Equal values of the same type (arrays: same dtype and elements)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


# --- accepted updates -----------------------------------------------------------------------


@pytest.mark.parametrize("name, raw", [
    ("x_f1", 21.5),
    ("x_f1", 3),
    ("x_f1", True),
    ("x_f1", -math.inf),
    ("x_i1", 2.9),
    ("x_i1", -2.9),
    ("x_i1", 7),
    ("x_i1", [5]),
    ("x_c10", "héllo"),
    ("x_c10", b"ab\x00cd"),
    ("x_c10", [104, 105]),
    ("x_f4", [1, 2.5, 3]),
    ("x_i4", [1.9, -1.9, 3]),
    ("x_F5", [1.0, 2.0]),
    ("x_I3", [4]),
    ("x_f3", np.array([1.5, 2.5], dtype=">f4")),
    ("x_i3", np.array([1, 2, 3], dtype=np.uint16)),
    ("x_c5", np.frombuffer(b"abc", dtype=np.uint8)),
])
def test_accepted_update_becomes_put_op(name: str, raw: object) -> None:
    ingest = make()
    message = dumps(encode_update(name, raw, ts=TS))
    ops = ingest.handle(message, ARRIVAL)
    assert len(ops) == 1
    op = ops[0]
    assert type(op) is PipeOp and op.op is Op.PUT
    assert (op.name, op.ts_ns, op.meta) == (f"{PREFIX}:{name}", 1_700_000_000_123_456_000, None)
    # The value is what convert makes of the value as it came off the wire.
    decoded_raw = msgpack.unpackb(message, raw=False)["value"]
    if isinstance(decoded_raw, dict):
        decoded_raw = np.frombuffer(decoded_raw["data"], dtype=decoded_raw["dtype"])
    assert same(op.value, expected_value(name, decoded_raw)), (op.value, raw)


def test_conversions_spelled_out() -> None:
    ingest = make()
    batch = [encode_update(n, v) for n, v in [
        ("a_i1", 2.9), ("b_i1", -2.9), ("c_c8", "text"), ("d_c8", "é"), ("e_f1", 4),
        ("f_f3", [1, 2]), ("g_i2", [1.5, -1.5]),
    ]]
    ops = ingest.handle(dumps(batch), ARRIVAL)
    values = [op.value for op in ops]
    assert values[:5] == [2, -2, b"text", "é".encode(), 4.0]
    assert [type(v) for v in values[:5]] == [int, int, bytes, bytes, float]
    assert values[5].dtype == np.float64 and values[5].tolist() == [1.0, 2.0]
    assert values[6].dtype == np.int32 and values[6].tolist() == [1, -1]


def test_ops_travel_through_the_pipe() -> None:
    ingest = make()
    batch = [encode_update("a_F4", np.arange(3.0)), encode_update("b_I3", [1, 2]),
             encode_update("c_c8", "hi"), encode_update("d_f1", 1.5),
             encode_update("e_i1", 9), encode_update("f_f1", op="delete")]
    ops = ingest.handle(dumps(batch), ARRIVAL)
    assert len(ops) == 6
    for got, sent in zip(travel(ops, ingest.take_counters()), ops):
        assert all(same(g, s) or g == s for g, s in zip(got, sent)), (got, sent)


@pytest.mark.parametrize("name", ["x_f1", f"{PREFIX}:x_f1"])
def test_names_with_and_without_prefix_qualify(name: str) -> None:
    ops = make().handle(dumps(encode_update(name, 1.0)), ARRIVAL)
    assert ops == [PipeOp(Op.PUT, f"{PREFIX}:x_f1", 1.0, ARRIVAL, None)]


def test_name_with_colons_is_qualified_under_our_prefix() -> None:
    ops = make().handle(dumps(encode_update("other:x_f1", 1.0)), ARRIVAL)
    assert ops == [PipeOp(Op.PUT, f"{PREFIX}:other:x_f1", 1.0, ARRIVAL, None)]


@pytest.mark.parametrize("ts, ts_ns", [
    (1_700_000_000.123456, 1_700_000_000_123_456_000),
    (1_700_000_000, 1_700_000_000_000_000_000),
    (1_700_000_000.5, 1_700_000_000_500_000_000),
    (1_700_000_000.1234567, 1_700_000_000_123_457_000),  # rounded to the microsecond
    (1_700_000_000.0000004, 1_700_000_000_000_000_000),
    (631_152_000, 631_152_000_000_000_000),
])
def test_ts_becomes_ns_rounded_to_the_microsecond(ts: float, ts_ns: int) -> None:
    ops = make().handle(dumps(encode_update("x_f1", 1.0, ts=ts)), ARRIVAL)
    assert ops[0][3] == ts_ns
    assert type(ops[0][3]) is int


def test_no_ts_is_arrival_time() -> None:
    ingest = make()
    assert ingest.handle(dumps(encode_update("x_f1", 1.0)), ARRIVAL)[0][3] == ARRIVAL
    nil_ts = dumps({"pv": "x_f1", "value": 1.0, "ts": None})
    assert ingest.handle(nil_ts, ARRIVAL + 5)[0][3] == ARRIVAL + 5


def test_delete_ops() -> None:
    ingest = make()
    batch = [encode_update("x_f1", op="delete"), encode_update(f"{PREFIX}:y_C10", op="delete"),
             {"pv": "z_i1", "op": "delete", "ts": TS}]
    assert ingest.handle(dumps(batch), ARRIVAL) == [
        PipeOp(Op.DELETE, f"{PREFIX}:x_f1", None, 0, None),
        PipeOp(Op.DELETE, f"{PREFIX}:y_C10", None, 0, None),
        PipeOp(Op.DELETE, f"{PREFIX}:z_i1", None, 0, None),
    ]


def test_counters_of_good_messages() -> None:
    ingest = make()
    ingest.handle(dumps(encode_update("x_f1", 1.0)), ARRIVAL)
    ingest.handle(dumps([encode_update("x_f1", 2.0), encode_update("y_i1", 2)]), ARRIVAL)
    ingest.handle(dumps([]), ARRIVAL)
    assert ingest.take_counters() == {"messages": 3, "updates": 3}
    assert ingest.take_counters() == {}


# --- meta --------------------------------------------------------------------------------------


def test_meta_with_a_value_is_checked_and_travels_with_the_put() -> None:
    ops = make().handle(dumps(encode_update("x_f1", 1.5, ts=TS, meta={
        "egu": "K", "hihi": 300, "hhsv": "invalid", "low": None, "prec": 2.0})), ARRIVAL)
    assert ops == [PipeOp(Op.PUT, f"{PREFIX}:x_f1", 1.5, 1_700_000_000_123_456_000,
                    {"egu": "K", "hihi": 300.0, "hhsv": 3, "low": None, "prec": 2})]


def test_meta_alone_is_a_meta_op() -> None:
    ops = make().handle(dumps(encode_update("x_f1", meta={"egu": "K", "tmo": 5}, ts=TS)),
                        ARRIVAL)
    assert ops == [PipeOp(Op.META, f"{PREFIX}:x_f1", None, 0, {"egu": "K", "tmo": 5.0})]


def test_meta_names_are_checked_like_any_name() -> None:
    ingest = make()
    batch = [encode_update("nope", meta={"egu": "K"}), encode_update("x_f9999", meta={}),
             encode_update(f"{PREFIX}:y_i1", meta={"hopr": 1})]
    assert ingest.handle(dumps(batch), ARRIVAL) == [PipeOp(Op.META, f"{PREFIX}:y_i1", None, 0,
                                                     {"hopr": 1.0})]
    assert ingest.take_counters()["refused"] == {"badName": 1, "countLimit": 1}


@pytest.mark.parametrize("meta, detail", [
    ({"bogus": 1}, "unknown attribute 'bogus'"),
    ({"EGU": "K"}, "unknown attribute 'EGU'"),
    ({"egu": 5}, "EGU: 5 is not text"),
    ({"egu": "x" * 40}, "EGU: longer than 39 bytes"),
    ({"hihi": "high"}, "HIHI: 'high' is not a number"),
    ({"hopr": None}, "HOPR: None is not a number"),
    ({"prec": 18}, "PREC: 18 is outside 0..17"),
    ({"hhsv": "LOUD"}, "HHSV: 'LOUD' is not one of"),
    ({"tmo": -1}, "TMO: -1 is negative"),
    ({"egu": "K", "hyst": "wide"}, "HYST: 'wide' is not a number"),  # all or nothing
])
@pytest.mark.parametrize("with_value", [True, False])
def test_refused_meta_is_bad_value_and_sends_nothing(meta: dict, detail: str,
                                                     with_value: bool) -> None:
    ingest = make()
    update = encode_update("x_f1", 1.0 if with_value else None, meta=meta)
    assert ingest.handle(dumps(update), ARRIVAL) == []
    counters = ingest.take_counters()
    assert counters["refused"] == {"badValue": 1}
    assert counters["last_refusal"].startswith("ZMQ update: badValue: ")
    assert detail in counters["last_refusal"]


def test_refused_meta_in_a_batch_keeps_the_rest() -> None:
    ingest = make()
    batch = [encode_update("a_f1", 1.0, meta={"egu": "V"}),
             encode_update("b_f1", 2.0, meta={"egu": 5}),      # the value goes with it
             encode_update("c_f1", meta={"unit": "V"}),
             encode_update("d_f1", 4.0)]
    ops = ingest.handle(dumps(batch), ARRIVAL)
    assert ops == [PipeOp(Op.PUT, f"{PREFIX}:a_f1", 1.0, ARRIVAL, {"egu": "V"}),
                   PipeOp(Op.PUT, f"{PREFIX}:d_f1", 4.0, ARRIVAL, None)]
    counters = ingest.take_counters()
    assert counters["refused"] == {"badValue": 2}
    assert counters["last_refusal"].startswith("ZMQ update: badValue: update #2: ")


def test_meta_ops_travel_through_the_pipe() -> None:
    ingest = make()
    batch = [encode_update("a_f1", 1.5, meta={"egu": "V", "hihi": None}),
             encode_update("a_f1", meta={"hhsv": "MINOR", "desc": "é"}),
             encode_update("a_f1", op="delete")]
    ops = ingest.handle(dumps(batch), ARRIVAL)
    assert [tuple(op) for op in travel(ops)] == ops


# --- refusals --------------------------------------------------------------------------------


REFUSALS = [
    ("badName", encode_update("nope", 1.0)),
    ("badName", encode_update("x_q1", 1.0)),
    ("badName", encode_update("x_F1", 1.0)),  # a buffer needs count >= 2
    ("nameTooLong", encode_update("a" * 40 + "_f1", 1.0)),
    ("countLimit", encode_update("x_f1001", 1.0)),
    ("badValue", encode_update("x_f1", "1.0")),
    ("badValue", encode_update("x_i1", 2**40)),
    ("badValue", encode_update("x_i1", math.nan)),
    ("badValue", encode_update("x_c4", 12)),
    ("tooManyElements", encode_update("x_f2", [1, 2, 3])),
    ("tooManyElements", encode_update("x_c4", "hello")),
    ("malformed", {"pv": "x_f1", "value": 1.0, "bogus": 1}),
    ("malformed", {"pv": "x_f1"}),
    ("malformed", {"pv": 5, "value": 1}),
]


@pytest.mark.parametrize("code, update", REFUSALS)
def test_each_refusal_is_counted_by_reason(code: str, update: dict) -> None:
    ingest = make()
    assert ingest.handle(dumps(update), ARRIVAL, source="test source") == []
    counters = ingest.take_counters()
    assert counters["messages"] == 1
    assert counters["updates"] == 1
    assert counters["refused"] == {code: 1}
    assert counters["last_refusal"].startswith(f"test source: {code}: ")
    assert ingest.take_counters() == {}  # reset


def test_refusals_add_up_by_reason() -> None:
    ingest = make()
    batch = [update for _, update in REFUSALS]
    assert ingest.handle(dumps(batch), ARRIVAL) == []
    counters = ingest.take_counters()
    expected: dict[str, int] = {}
    for code, _ in REFUSALS:
        expected[code] = expected.get(code, 0) + 1
    assert counters["refused"] == expected
    assert counters["updates"] == len(REFUSALS)
    assert set(expected) <= {reason.code for reason in Reason}


def test_last_refusal_text() -> None:
    ingest = make()
    ingest.handle(dumps(encode_update("x_f1", "text")), ARRIVAL)
    counters = ingest.take_counters()
    assert counters["last_refusal"].startswith(f"ZMQ update: badValue: {PREFIX}:x_f1: ")
    assert "'text'" in counters["last_refusal"]
    ingest.handle(dumps(encode_update("nope", 1)), ARRIVAL)
    assert "'nope'" in ingest.take_counters()["last_refusal"]


def test_one_bad_update_keeps_the_good_ones() -> None:
    ingest = make()
    batch = [encode_update("a_f1", 1.0), encode_update("nope", 2.0),
             {"pv": "b_f1", "value": 3.0, "bogus": 1}, encode_update("c_i1", 4.7),
             encode_update("d_f2", [1, 2, 3]), encode_update("e_f1", op="delete")]
    assert ingest.handle(dumps(batch), ARRIVAL) == [
        PipeOp(Op.PUT, f"{PREFIX}:a_f1", 1.0, ARRIVAL, None),
        PipeOp(Op.PUT, f"{PREFIX}:c_i1", 4, ARRIVAL, None),
        PipeOp(Op.DELETE, f"{PREFIX}:e_f1", None, 0, None),
    ]
    counters = ingest.take_counters()
    assert counters["messages"] == 1 and counters["updates"] == 6
    assert counters["refused"] == {"badName": 1, "malformed": 1, "tooManyElements": 1}


@pytest.mark.parametrize("message", [
    b"", b"\xc1", b"not msgpack at all", msgpack.packb(42), msgpack.packb("text"),
    msgpack.packb({"pv": "x_f1", "value": 1}) + b"\x00",
])
def test_malformed_message(message: bytes) -> None:
    ingest = make()
    assert ingest.handle(message, ARRIVAL) == []
    counters = ingest.take_counters()
    assert counters["messages"] == 1
    assert counters["refused"] == {"malformed": 1}
    assert counters.get("updates", 0) == 0
    assert counters["last_refusal"].startswith("ZMQ update: malformed: ")


UPDATE_KEYS = st.sampled_from(["pv", "op", "value", "ts", "v", "meta", "x"])
NAMES = st.one_of(st.sampled_from(["x_f1", "x_i1", "x_c4", "x_F3", "x_I2", "x_f2",
                                   f"{PREFIX}:y_i3", "bad", ""]), st.text(max_size=20))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.floats(),
                    st.text(max_size=10), st.binary(max_size=10))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
UPDATES = st.one_of(
    st.fixed_dictionaries({"pv": NAMES, "value": VALUES}),
    st.fixed_dictionaries({"pv": NAMES, "op": st.sampled_from(["put", "delete", "x"])}),
    st.dictionaries(UPDATE_KEYS, st.one_of(NAMES, VALUES), max_size=5),
    VALUES,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(UPDATES, st.lists(UPDATES, max_size=5)))
def test_anything_a_client_sends_is_handled_without_raising(obj: object) -> None:
    ingest = make()
    try:
        message = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    ops = ingest.handle(message, ARRIVAL)
    counters = ingest.take_counters()
    refused = sum(counters.get("refused", {}).values())
    if isinstance(obj, list):
        assert len(ops) + refused == len(obj)
    else:
        assert len(ops) + refused == 1
    travel(ops, counters)  # every accepted op can travel


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_are_handled_without_raising(message: bytes) -> None:
    ingest = make()
    ops = ingest.handle(message, ARRIVAL)
    travel(ops, ingest.take_counters())


# --- is_local ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True),
    ("tcp://127.0.0.1", True),
    ("tcp://127.1.2.3:5555", True),
    ("tcp://localhost:5555", True),
    ("tcp://localhost", True),
    ("tcp://[::1]:5555", True),
    ("ipc:///tmp/relayd.sock", True),
    ("ipc://@abstract", True),
    ("inproc://relayd", True),
    ("tcp://0.0.0.0:5555", False),
    ("tcp://0.0.0.0", False),
    ("tcp://*:5555", False),
    ("tcp://192.168.1.5:5555", False),
    ("tcp://192.168.1.5", False),
    ("tcp://[::]:5555", False),
    ("tcp://eth0:5555", False),
])
def test_is_local(endpoint: str, local: bool) -> None:
    assert is_local(endpoint) is local


# --- Stats.merge_worker -------------------------------------------------------------------------


def test_merge_worker_adds_counters() -> None:
    stats = Stats()
    stats.merge_worker({"messages": 3, "updates": 7,
                        "refused": {"badName": 2, "malformed": 1},
                        "last_refusal": "ZMQ update: malformed: x"})
    stats.merge_worker({"messages": 1, "updates": 1, "refused": {"badName": 1}})
    assert stats.zmq_messages == 4
    assert stats.zmq_updates == 8
    assert stats.by_reason[Reason.BAD_NAME] == 3
    assert stats.by_reason[Reason.MALFORMED] == 1
    assert stats.refused == 4
    assert stats.last_refusal == "ZMQ update: malformed: x"  # kept when none is sent
    assert stats.accepted == 0  # counted by the CA process when it applies


def test_merge_worker_ignores_unknown_codes_and_keys() -> None:
    stats = Stats()
    stats.merge_worker({"messages": 2, "refused": {"noSuchReason": 5, "badValue": 1},
                        "future_key": 99, "last_refusal": "ZMQ update: badValue: v"})
    assert stats.zmq_messages == 2
    assert stats.zmq_updates == 0
    assert stats.refused == 1
    assert dict(stats.by_reason) == {Reason.BAD_VALUE: 1}
    assert stats.last_refusal == "ZMQ update: badValue: v"


def test_merge_worker_empty() -> None:
    stats = Stats()
    stats.last_refusal = "CA put: readOnly: x"
    stats.merge_worker({})
    stats.merge_worker({"last_refusal": ""})
    assert (stats.zmq_messages, stats.zmq_updates, stats.refused) == (0, 0, 0)
    assert not stats.by_reason
    assert stats.last_refusal == "CA put: readOnly: x"


def test_merge_what_the_worker_takes() -> None:
    ingest = make()
    ingest.handle(dumps([encode_update("x_f1", 1.0), encode_update("nope", 1.0),
                         encode_update("x_f2", [1, 2, 3])]), ARRIVAL)
    ingest.handle(b"\xc1", ARRIVAL)
    stats = Stats()
    stats.merge_worker(ingest.take_counters())
    assert (stats.zmq_messages, stats.zmq_updates, stats.refused) == (2, 3, 3)
    assert dict(stats.by_reason) == {Reason.BAD_NAME: 1, Reason.TOO_MANY_ELEMENTS: 1,
                                     Reason.MALFORMED: 1}
    assert stats.last_refusal.startswith("ZMQ update: malformed: ")


def test_name_cache_changes_nothing() -> None:
    """Parsed names are cached; results are the same however full the cache is."""
    ingest = make(cache_size=2)
    names = ["a_f1", f"{PREFIX}:a_f1", "b_i1", "c_f1", "a_f1", "b_i1"]
    for _ in range(3):
        ops = ingest.handle(dumps([encode_update(n, 1) for n in names]), ARRIVAL)
        assert [op[1] for op in ops] == [f"{PREFIX}:{n.split(':')[-1]}" for n in names]
        assert [op.value for op in ops] == [1.0, 1.0, 1, 1.0, 1.0, 1]
    for _ in range(3):  # refused names are refused every time
        assert ingest.handle(dumps(encode_update("nope", 1)), ARRIVAL) == []
        assert ingest.handle(dumps(encode_update("x_f9999", 1)), ARRIVAL) == []
    assert ingest.take_counters()["refused"] == {"badName": 3, "countLimit": 3}


@settings(max_examples=300, deadline=None)
@given(st.integers(631_152_000 * 10**6, 2**31 * 10**6))
def test_ts_in_microseconds_survives_the_float(us: int) -> None:
    """A time stamp sent as the float nearest to a whole microsecond comes back exact."""
    ops = make().handle(dumps(encode_update("x_f1", 1.0, ts=us / 1e6)), ARRIVAL)
    assert ops[0][3] == us * 1000

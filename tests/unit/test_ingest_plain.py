"""The ingest worker's shortcut for plain numeric messages (`workers.ingest.validate.decode_plain`).

Whatever it accepts it must decode exactly as `protocol.decode` does (same updates, same
types, same order, same batch flag); everything else it must leave to `protocol.decode`
(None), so that every refusal keeps its wording.
"""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core import protocol
from relayd.core.errors import Refused
from relayd.core.protocol import dumps, encode_update
from workers.ingest.validate import decode_plain

MAX = protocol.MAX_UPDATES


def raw_map(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map with exactly these entries, duplicates included."""
    return bytes([0x80 | len(pairs)]) + b"".join(
        msgpack.packb(key) + msgpack.packb(value) for key, value in pairs)


def same(left: object, right: object) -> bool:
    """Equal, with the same types, NaN equal to NaN."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)  # type: ignore[arg-type]
    if isinstance(left, tuple):
        return len(left) == len(right) and all(map(same, left, right))  # type: ignore
    return left == right


def assert_as_decode(message: bytes, max_updates: int = MAX) -> bool:
    """decode_plain(message) is None or what protocol.decode gives; True if it took it."""
    plain = decode_plain(message, max_updates)
    if plain is None:
        return False
    decoded = protocol.decode(message, max_updates)
    assert plain.batch is decoded.batch
    assert plain.refused == [] and decoded.refused == []
    assert len(plain.updates) == len(decoded.updates)
    for ours, theirs in zip(plain.updates, decoded.updates):
        assert type(ours) is protocol.Update
        assert same(tuple(ours), tuple(theirs)), (ours, theirs)
    return True


@pytest.mark.parametrize("message", [
    msgpack.packb({"pv": "p:a_f1", "value": 1.5}),
    msgpack.packb({"value": 2, "pv": "p:a_i1"}),
    msgpack.packb([{"pv": f"p:a{i}_f1", "value": float(i)} for i in range(100)]),
    msgpack.packb([{"pv": "p:a_f1", "value": v} for v in (0, -1, 2**63, 2**64 - 1, -2**63,
                                                           math.nan, math.inf, -0.0)]),
    msgpack.packb([{"pv": "p:a_f1", "value": 1}] * 20),  # array 16
    msgpack.packb([{"pv": "p:a_f1", "value": 1}] * 70_000),  # array 32
    dumps(encode_update("p:a_f1", 3.25)),  # what relayd.client sends
    dumps([encode_update(f"p:b{i}_f1", i) for i in range(5)]),
    bytes([0x82]) + msgpack.packb("pv") + msgpack.packb("p:a_f1") + msgpack.packb("value")
    + b"\xca" + struct.pack(">f", 0.1),  # a float 32
])
def test_plain_messages_take_the_shortcut_and_decode_as_decode_does(message):
    assert assert_as_decode(message)


@pytest.mark.parametrize("message", [
    b"",
    b"\xc1",
    msgpack.packb([]),
    msgpack.packb({"pv": "p:a_f1", "value": True}),  # a bool is decode's to judge
    msgpack.packb({"pv": "p:a_f1", "value": "text"}),
    msgpack.packb({"pv": "p:a_f1", "value": [1.0, 2.0]}),
    msgpack.packb({"pv": "p:a_f1", "value": None}),
    msgpack.packb({"pv": "p:a_f1", "value": 1.0, "ts": 1.7e9}),
    msgpack.packb({"pv": "p:a_f1", "meta": {"egu": "mm"}}),
    msgpack.packb({"pv": b"p:a_f1", "value": 1.0}),
    msgpack.packb({"pv": "p:a_f1", "op": "delete"}),
    msgpack.packb({"pv": "p:a_f1", "value": 1.0}) + b"\x00",  # bytes after the message
    msgpack.packb([{"pv": "p:a_f1", "value": 1.0}, {"pv": "p:b_f1", "value": "x"}]),
    msgpack.packb([{"pv": "p:a_f1", "value": 1.0}, 5]),
    msgpack.packb([[1, 2]]),
    msgpack.packb(5),
    raw_map([("pv", "p:a_f1"), ("pv", "p:b_f1")]),  # no value
    raw_map([("pv", "p:a_f1"), ("value", 1), ("pv", "p:b_f1")]),  # a key twice
    raw_map([("pv", "p:a_f1"), ("value", 1), ("value", 2.5)]),
    raw_map([(1, "p:a_f1"), ("value", 1.0)]),  # a key that is not a str
    dumps(encode_update("p:a_f3", [1.0, 2.0, 3.0])),
])
def test_anything_else_is_left_to_decode(message):
    assert decode_plain(message, MAX) is None


def test_a_batch_beyond_the_limit_is_left_to_decode_which_refuses_it():
    message = msgpack.packb([{"pv": "p:a_f1", "value": 1.0}] * 11)
    assert decode_plain(message, 10) is None
    assert decode_plain(message, 11) is not None


_keys = st.sampled_from(["pv", "value", "ts", "meta", "op", "v", "x"])
_values = st.one_of(st.floats(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                    st.booleans(), st.none(), st.text(max_size=5), st.binary(max_size=5),
                    st.lists(st.floats(), max_size=3))
_update = st.one_of(
    st.fixed_dictionaries({"pv": st.text(max_size=8), "value": _values}),
    st.dictionaries(_keys, _values, max_size=4),
    _values,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_update, st.lists(_update, max_size=6)), st.binary(max_size=2))
def test_any_message_decodes_as_decode_or_is_left_to_it(body, tail):
    message = msgpack.packb(body) + tail
    try:
        protocol.decode(message)
    except Refused:
        assert decode_plain(message, MAX) is None
        return
    assert_as_decode(message)

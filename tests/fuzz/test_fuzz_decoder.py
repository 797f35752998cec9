"""Fuzzing the message decoder and the ingest worker's validation (hypothesis).

The target (`tests.fuzz.targets.check`) runs `relayd.core.protocol.decode` and
`workers.ingest.validate.Ingest.handle` on one message and asserts that nothing but `Refused`
escapes and that every accepted op is a well-formed 5-tuple. Inputs: arbitrary bytes,
arbitrary msgpack structures (``st.recursive``), update-shaped maps and batches whose
every field may be wrong, and valid messages with bytes flipped, cut or appended.

Short mode (the default, in CI): the "ci" profile, a few hundred derandomized examples
per target, a few seconds::

    python -m pytest tests/fuzz

Long mode, by hand: the "long" profile, 200,000 random examples per target, no
deadline (tests/fuzz must be on the command line, so that its conftest registers the
profiles before pytest reads the option)::

    python -m pytest tests/fuzz --hypothesis-profile=long -x

Coverage-guided, with atheris if installed (not a relayd dependency)::

    python -m tests.fuzz.atheris_decoder -max_total_time=600

A failure prints the falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import math
import subprocess
import sys

import msgpack
from hypothesis import given, strategies as st

from relayd.core.protocol import DTYPES
from tests.fuzz import targets
from tests.fuzz.profiles import fuzz_settings

# --- strategies ---------------------------------------------------------------------------

INTS = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 255, 256, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
                     2**53, 2**63 - 1, -(2**63), 2**64 - 1]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 5e-324, 1e308, math.nan, math.inf, -math.inf, 631152000.0, 4294967295.0,
     4294967296.0, 1700000000.5])
TEXT = st.text(max_size=24) | st.sampled_from(["", "\0", "é", "😀", "put", "delete"])
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, st.binary(max_size=48),
                    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))
KEYS = st.sampled_from(["pv", "value", "op", "ts", "meta", "v", "dtype", "data", "egu",
                        "prec", "hihi", "desc", "tmo", "hhsv", "nelm"]) | TEXT

# Arbitrary msgpack structures (what a confused or hostile publisher might send).
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=24,
)

NAMES = st.one_of(
    st.builds(
        "{}{}_{}{}".format,
        st.sampled_from(["", "fz:", "other:", "fz:fz:"]),
        st.text("abcxyz019_-:.", min_size=0, max_size=12),
        st.sampled_from(list("fficcFICq") + [""]),
        st.sampled_from(["1", "2", "3", "10", "1000", "1001", "0", "01", "", "-1",
                         "99999999999999999999"]) | st.integers(0, 5000).map(str),
    ),
    st.text(max_size=80),
    st.just("n" * 70 + "_f1"),
)
PACKED = st.fixed_dictionaries({
    "dtype": st.sampled_from(list(DTYPES) + ["<f2", "|b1", "O", "<c16", "<U4", "", "f8"])
    | SCALARS,
    "data": st.binary(max_size=80) | SCALARS,
})
VALUES = st.one_of(
    SCALARS, PACKED,
    st.lists(INTS | FLOATS | st.booleans(), max_size=12),
    st.lists(st.integers(0, 255), max_size=12),
    STRUCTURES,
)
META = st.dictionaries(KEYS, SCALARS, max_size=4) | STRUCTURES
UPDATES = st.fixed_dictionaries(
    {"pv": NAMES | SCALARS},
    optional={
        "value": VALUES,
        "op": st.sampled_from(["put", "delete", "PUT", "", "remove"]) | SCALARS,
        "ts": FLOATS | INTS | SCALARS,
        "meta": META,
        "v": st.sampled_from([1, 0, 2, 1.0, "1", None]),
        "valeu": SCALARS,
    },
)
MESSAGES = st.one_of(UPDATES, st.lists(UPDATES | STRUCTURES, max_size=12))


def pack(obj: object, bin_type: bool = True) -> bytes:
    return msgpack.packb(obj, use_bin_type=bin_type)


# --- the targets ------------------------------------------------------------------------------


@fuzz_settings()
@given(st.binary(max_size=1024))
def test_arbitrary_bytes(data):
    targets.check(data)


@fuzz_settings()
@given(STRUCTURES, st.booleans())
def test_arbitrary_msgpack_structures(obj, bin_type):
    targets.check(pack(obj, bin_type))


@fuzz_settings()
@given(MESSAGES)
def test_update_shaped_messages_with_wrong_fields(message):
    targets.check(pack(message))


@fuzz_settings()
@given(MESSAGES, st.data())
def test_valid_looking_messages_flipped_cut_or_extended(message, data):
    raw = bytearray(pack(message))
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        edit = data.draw(st.sampled_from(["flip", "cut", "append", "insert"]), label="edit")
        at = data.draw(st.integers(0, max(0, len(raw) - 1)), label="at")
        if edit == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif edit == "cut":
            del raw[at:]
        elif edit == "append":
            raw += data.draw(st.binary(min_size=1, max_size=16), label="tail")
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
    targets.check(bytes(raw))


def test_the_atheris_entry_point_runs_or_says_why_not():
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_decoder", "-runs=2000"],
                          capture_output=True, text=True, timeout=300)
    try:
        import atheris  # noqa: F401
    except ImportError:
        assert done.returncode == 0, done.stderr
        assert "atheris is not installed" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]

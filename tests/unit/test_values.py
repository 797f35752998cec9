"""What each dtype accepts and the form it is stored in (relayd.core.values.convert)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar, PVSpec
from relayd.core.packed import unpack_array
from relayd.core.values import INT32_MAX, INT32_MIN, convert

G = Grammar("P")


def spec(suffix: str) -> PVSpec:
    result = G.parse(f"P:v_{suffix}")
    assert result is not None
    return result


def refused(suffix: str, raw: object) -> Reason:
    with pytest.raises(Refused) as info:
        convert(spec(suffix), raw)
    return info.value.reason


def test_int32_constants() -> None:
    assert INT32_MIN == -2147483648
    assert INT32_MAX == 2147483647


# --- f scalar -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (1.5, 1.5),
        (-0.25, -0.25),
        (3, 3.0),
        (-7, -7.0),
        (0, 0.0),
        (True, 1.0),
        (False, 0.0),
        (2**53, 9007199254740992.0),
        (np.float64(2.5), 2.5),
        (np.float32(0.5), 0.5),
        (np.int64(-4), -4.0),
        (np.int32(12), 12.0),
        (np.uint8(200), 200.0),
        (np.bool_(True), 1.0),
        ([4.25], 4.25),
        ((6,), 6.0),
        (np.array([1.75]), 1.75),
        (np.array(8.5), 8.5),
        (1e308, 1e308),
    ],
)
def test_float_scalar_accepts(raw: object, expected: float) -> None:
    value = convert(spec("f1"), raw)
    assert type(value) is float
    assert value == expected


def test_float_scalar_keeps_nan_and_infinities() -> None:
    assert math.isnan(convert(spec("f1"), float("nan")))
    assert convert(spec("f1"), float("inf")) == math.inf
    assert convert(spec("f1"), float("-inf")) == -math.inf
    assert math.isnan(convert(spec("f1"), np.float64("nan")))
    assert convert(spec("f1"), [float("-inf")]) == -math.inf


@pytest.mark.parametrize(
    "raw", ["1.0", "", "nan", b"1", bytearray(b"1"), None, {}, {"v": 1}, 1 + 2j, [1, "a"],
            ["1"], [[1.0]], object(), 10**400, [10**400]]
)
def test_float_scalar_refuses_bad_values(raw: object) -> None:
    assert refused("f1", raw) is Reason.BAD_VALUE


def test_float_scalar_refuses_empty_and_longer_sequences() -> None:
    assert refused("f1", []) is Reason.BAD_VALUE
    assert refused("f1", np.array([])) is Reason.BAD_VALUE
    assert refused("f1", [1.0, 2.0]) is Reason.TOO_MANY_ELEMENTS
    assert refused("f1", np.zeros(3)) is Reason.TOO_MANY_ELEMENTS


# --- i scalar -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (3.7, 3),
        (-3.7, -3),
        (3.2, 3),
        (-0.9, 0),
        (0.9, 0),
        (5.0, 5),
        (42, 42),
        (-42, -42),
        (True, 1),
        (False, 0),
        (INT32_MAX, INT32_MAX),
        (INT32_MIN, INT32_MIN),
        (2147483647.9, INT32_MAX),
        (-2147483648.9, INT32_MIN),
        (np.int64(7), 7),
        (np.uint32(9), 9),
        (np.float32(3.7), 3),
        (np.float64(-3.7), -3),
        ([9], 9),
        ([-9.99], -9),
        (np.array([INT32_MIN], dtype=np.int64), INT32_MIN),
    ],
)
def test_int_scalar_accepts(raw: object, expected: int) -> None:
    value = convert(spec("i1"), raw)
    assert type(value) is int
    assert value == expected


@pytest.mark.parametrize(
    "raw",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        np.float64("nan"),
        [float("nan")],
        INT32_MAX + 1,
        INT32_MIN - 1,
        2147483648.0,
        -2147483649.0,
        np.int64(2**40),
        np.uint64(2**64 - 1),
        10**400,
        [2**31],
        "3",
        b"3",
        None,
        1j,
        {"a": 1},
        [[1]],
    ],
)
def test_int_scalar_refuses(raw: object) -> None:
    assert refused("i1", raw) is Reason.BAD_VALUE


def test_int_scalar_refuses_many_elements() -> None:
    assert refused("i1", [1, 2]) is Reason.TOO_MANY_ELEMENTS
    assert refused("i1", []) is Reason.BAD_VALUE


# --- c (text) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("hello", b"hello"),
        ("", b""),
        ("h\u00e9", b"h\xc3\xa9"),
        ("\u20ac", b"\xe2\x82\xac"),
        (b"hi", b"hi"),
        (bytearray(b"hi"), b"hi"),
        (memoryview(b"hi"), b"hi"),
        ([104, 105], b"hi"),
        ((104, 105), b"hi"),
        ([], b""),
        ([0xFF, 0], b"\xff"),
        (np.array([104, 105], dtype=np.uint8), b"hi"),
        (np.array([104, 105, 0, 120], dtype=np.uint8), b"hi"),
        ("ab\0cd", b"ab"),
        (b"ab\0cd", b"ab"),
        (b"\0abc", b""),
        ("abcdefgh", b"abcdefgh"),            # exactly the count
        (b"abcdefgh\0", b"abcdefgh"),         # count plus a terminator
        (b"abcdefgh\0ignored after NUL", b"abcdefgh"),
    ],
)
def test_text_accepts(raw: object, expected: bytes) -> None:
    value = convert(spec("c8"), raw)
    assert type(value) is bytes
    assert value == expected


@pytest.mark.parametrize("raw", ["abcdefghi", b"abcdefghi", [65] * 9, "\u00e9" * 5])
def test_text_refuses_more_bytes_than_count(raw: object) -> None:
    assert refused("c8", raw) is Reason.TOO_MANY_ELEMENTS


def test_text_count_is_in_utf8_bytes() -> None:
    assert convert(spec("c2"), "\u00e9") == b"\xc3\xa9"
    assert refused("c2", "\u20ac") is Reason.TOO_MANY_ELEMENTS


@pytest.mark.parametrize(
    "raw",
    [5, 1.5, None, True, [256], [-1], [1.0], [True], ["a"], {"a": 1},
     np.array([1.0, 2.0]), np.array([[65]], dtype=np.uint8), np.array([True]),
     np.array([65.0], dtype=np.float32)],
)
def test_text_refuses_non_text(raw: object) -> None:
    assert refused("c8", raw) is Reason.BAD_VALUE


# The same byte values get the same verdict whatever carries them: a list, or a packed
# array of any integer dtype (issue 11: packed |i1 with negative values wrapped to 0..255).
BYTE_DTYPES = ["|i1", "|u1", "<i2", ">i2", "<i4", ">u4", "<i8", "<u8"]


def packed(values: list[int], dtype: str) -> np.ndarray:
    """`values` as the relay reads a packed array: a read-only view of received bytes."""
    return unpack_array({"dtype": dtype, "data": np.array(values, dtype=dtype).tobytes()})


@pytest.mark.parametrize("dtype", BYTE_DTYPES)
@pytest.mark.parametrize("suffix", ["c8", "C8"])
def test_text_takes_byte_values_packed_as_any_integer_dtype(dtype: str, suffix: str) -> None:
    assert convert(spec(suffix), packed([104, 105], dtype)) == b"hi"
    assert convert(spec(suffix), packed([104, 105], dtype)) == convert(spec(suffix), [104, 105])
    if dtype != "|i1":  # 255 is not an int8
        assert convert(spec(suffix), packed([255, 0, 65], dtype)) == b"\xff"


@pytest.mark.parametrize("dtype", [d for d in BYTE_DTYPES if d[1] == "i"])
@pytest.mark.parametrize("suffix", ["c8", "C8"])
def test_text_refuses_negative_byte_values_however_packed(dtype: str, suffix: str) -> None:
    assert refused(suffix, [104, -1]) is Reason.BAD_VALUE
    with pytest.raises(Refused) as info:
        convert(spec(suffix), packed([104, -1], dtype))
    assert info.value.reason is Reason.BAD_VALUE
    assert "0..255" in info.value.detail


@pytest.mark.parametrize("dtype", [d for d in BYTE_DTYPES if d[2:] != "1"])
def test_text_refuses_byte_values_above_255_however_packed(dtype: str) -> None:
    assert refused("c8", [104, 256]) is Reason.BAD_VALUE
    with pytest.raises(Refused) as info:
        convert(spec("c8"), packed([104, 256], dtype))
    assert info.value.reason is Reason.BAD_VALUE


@pytest.mark.parametrize("suffix", ["f1", "i1", "f4", "i4", "F4", "c8"])
@pytest.mark.parametrize("raw", [10**400, 10**5000, [10**5000], [1, 10**400]],
                         ids=["1e400", "1e5000", "[1e5000]", "[1, 1e400]"])
def test_huge_ints_are_refused_with_a_short_text(suffix: str, raw: object) -> None:
    with pytest.raises(Refused) as info:
        convert(spec(suffix), raw)
    assert info.value.reason is Reason.BAD_VALUE
    assert len(info.value.detail) < 120


def test_text_buffer_uses_the_same_rules() -> None:
    assert convert(spec("C4"), "ab\0c") == b"ab"
    assert refused("C4", "abcde") is Reason.TOO_MANY_ELEMENTS
    assert refused("C4", 3) is Reason.BAD_VALUE


def test_text_with_lone_surrogate_is_refused() -> None:
    # A str that is not encodable as UTF-8 is not text that can be stored: `convert`
    # promises to return the stored form or raise Refused, nothing else.
    assert refused("c8", "a\ud800") is Reason.BAD_VALUE


# --- arrays and buffers -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["f4", "F4"])
def test_float_array_accepts_up_to_count(suffix: str) -> None:
    for raw, expected in [
        ([1.5, 2.5], [1.5, 2.5]),
        ([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),
        ([], []),
        ((True, False), [1.0, 0.0]),
        (7, [7.0]),
        (7.5, [7.5]),
        (np.array([1, 2], dtype=np.int16), [1.0, 2.0]),
        (np.array([0.5], dtype=np.float32), [0.5]),
        ([float("nan"), float("inf")], [float("nan"), float("inf")]),
    ]:
        value = convert(spec(suffix), raw)
        assert isinstance(value, np.ndarray)
        assert value.dtype == np.float64
        assert value.ndim == 1
        np.testing.assert_array_equal(value, np.array(expected, dtype=np.float64))


@pytest.mark.parametrize("suffix", ["i4", "I4"])
def test_int_array_accepts_up_to_count(suffix: str) -> None:
    for raw, expected in [
        ([1, -2], [1, -2]),
        ([3.7, -3.7, 0.5, -0.5], [3, -3, 0, 0]),
        ([INT32_MIN, INT32_MAX], [INT32_MIN, INT32_MAX]),
        ([2147483647.5, -2147483648.5], [INT32_MAX, INT32_MIN]),
        ([], []),
        ([True, False], [1, 0]),
        (5, [5]),
        (np.array([1, 2, 3], dtype=np.int64), [1, 2, 3]),
        (np.array([1, 2], dtype=np.uint64), [1, 2]),
    ]:
        value = convert(spec(suffix), raw)
        assert isinstance(value, np.ndarray)
        assert value.dtype == np.int32
        assert value.ndim == 1
        np.testing.assert_array_equal(value, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize("suffix", ["f3", "F3", "i3", "I3"])
def test_array_refuses_more_than_count(suffix: str) -> None:
    assert refused(suffix, [1, 2, 3, 4]) is Reason.TOO_MANY_ELEMENTS
    assert refused(suffix, np.zeros(100)) is Reason.TOO_MANY_ELEMENTS


@pytest.mark.parametrize("suffix", ["f3", "F3", "i3", "I3"])
def test_array_refuses_two_dimensions_and_text(suffix: str) -> None:
    for raw in ([[1, 2], [3, 4]], [[1]], np.zeros((1, 2)), "123", b"\1\2", ["1", "2"],
                [1, "2"], None, {"a": 1}, [None], [1, [2]], [1j]):
        assert refused(suffix, raw) is Reason.BAD_VALUE, raw


@pytest.mark.parametrize("suffix", ["i3", "I3"])
def test_int_array_refuses_nan_inf_and_out_of_range(suffix: str) -> None:
    for raw in ([1.0, float("nan")], [float("inf")], [float("-inf")], [INT32_MAX + 1],
                [INT32_MIN - 1], [2147483648.0], np.array([2**63], dtype=np.uint64)):
        assert refused(suffix, raw) is Reason.BAD_VALUE, raw


@pytest.mark.parametrize(
    "suffix, source",
    [
        ("f4", np.array([1.0, 2.0, 3.0], dtype=np.float64)),
        ("F4", np.array([1.0, 2.0, 3.0], dtype=np.float64)),
        ("i4", np.array([1, 2, 3], dtype=np.int32)),
        ("I4", np.array([1, 2, 3], dtype=np.int32)),
        ("i4", np.array([1.0, 2.0, 3.0], dtype=np.float64)),
        ("f4", np.array([1, 2, 3], dtype=np.int32)),
    ],
)
def test_result_never_aliases_the_input(suffix: str, source: np.ndarray) -> None:
    value = convert(spec(suffix), source)
    assert not np.shares_memory(value, source)
    source[:] = 99
    np.testing.assert_array_equal(value, [1, 2, 3])


def test_convert_does_not_mutate_its_input() -> None:
    source = np.array([1.9, -1.9])
    convert(spec("i2"), source)
    np.testing.assert_array_equal(source, [1.9, -1.9])
    listed = [1.9, -1.9]
    convert(spec("i2"), listed)
    assert listed == [1.9, -1.9]
    data = bytearray(b"ab\0c")
    assert convert(spec("c4"), data) == b"ab"
    assert data == bytearray(b"ab\0c")


def test_refusal_detail_names_the_pv() -> None:
    with pytest.raises(Refused) as info:
        convert(spec("f2"), [1, 2, 3])
    assert info.value.detail.startswith("P:v_f2: ")
    assert "3 elements" in info.value.detail


# --- properties ---------------------------------------------------------------------------

COUNT = 16


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=COUNT),
    st.sampled_from(["f16", "F16"]),
)
def test_property_float_lists(values: list[float], suffix: str) -> None:
    result = convert(spec(suffix), values)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, np.array(values, dtype=np.float64))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=INT32_MIN, max_value=INT32_MAX), max_size=COUNT),
    st.sampled_from(["i16", "I16"]),
)
def test_property_int_lists(values: list[int], suffix: str) -> None:
    result = convert(spec(suffix), values)
    assert result.dtype == np.int32
    assert result.tolist() == values


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-3e9, max_value=3e9))
def test_property_int_scalar_truncates_toward_zero(value: float) -> None:
    expected = math.trunc(value)
    if INT32_MIN <= expected <= INT32_MAX:
        assert convert(spec("i1"), value) == expected
    else:
        assert refused("i1", value) is Reason.BAD_VALUE


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2 * COUNT))
def test_property_bytes_text(data: bytes) -> None:
    text = data.split(b"\0", 1)[0]
    if len(text) <= COUNT:
        assert convert(spec("c16"), data) == text
        assert convert(spec("c16"), list(data)) == text
    else:
        assert refused("c16", data) is Reason.TOO_MANY_ELEMENTS


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**31 - 4, max_value=2**31 + 4),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.complex_numbers(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.sampled_from([np.float64("nan"), np.int64(2**40), np.uint8(7), np.bool_(False)]),
)
JUNK = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
        st.lists(st.text(max_size=5), max_size=5),
        st.lists(st.integers(min_value=0, max_value=255), max_size=20),
    ),
    max_leaves=20,
)
SUFFIXES = ["f1", "i1", "c1", "c8", "f4", "i4", "F4", "I4", "C4"]


@settings(max_examples=500, deadline=None)
@given(JUNK, st.sampled_from(SUFFIXES))
def test_property_junk_is_stored_or_refused(raw: object, suffix: str) -> None:
    pv = spec(suffix)
    try:
        value = convert(pv, raw)
    except Refused as refusal:
        assert refusal.reason in (Reason.BAD_VALUE, Reason.TOO_MANY_ELEMENTS)
        return
    if pv.kind.value == "c":
        assert type(value) is bytes and len(value) <= pv.count and b"\0" not in value
    elif pv.is_scalar:
        assert type(value) is (float if pv.kind.value == "f" else int)
    else:
        assert isinstance(value, np.ndarray) and value.ndim == 1
        assert value.dtype == (np.float64 if pv.kind.value == "f" else np.int32)
        assert value.size <= pv.count

"""The PV name grammar ``<prefix>:<name>_<dtype><count>`` (relayd.names)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayd.core.errors import Reason, Refused
from relayd.core.names import Grammar, Kind, NameLimits, PVSpec, validate_prefix

PREFIX = "P"
G = Grammar(PREFIX)

NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:-"


# --- kinds, counts and buffers ------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, kind, count, buffer",
    [
        ("f1", Kind.FLOAT, 1, False),
        ("i1", Kind.INT, 1, False),
        ("c1", Kind.CHAR, 1, False),
        ("f10", Kind.FLOAT, 10, False),
        ("i100", Kind.INT, 100, False),
        ("c40", Kind.CHAR, 40, False),
        ("F2", Kind.FLOAT, 2, True),
        ("I3", Kind.INT, 3, True),
        ("C256", Kind.CHAR, 256, True),
        ("f1000000", Kind.FLOAT, 1_000_000, False),
        ("F1000000", Kind.FLOAT, 1_000_000, True),
    ],
)
def test_parse_each_dtype(suffix: str, kind: Kind, count: int, buffer: bool) -> None:
    full = f"P:temp_{suffix}"
    assert G.parse(full) == PVSpec(full, kind, count, buffer)


@pytest.mark.parametrize(
    "base",
    ["x", "X", "0", "a-b", "a:b:c", "a_b", "_", "-", ":", "x_f1", "x_f1_i2", "a_F"],
)
def test_base_name_alphabet(base: str) -> None:
    full = f"P:{base}_i7"
    assert G.parse(full) == PVSpec(full, Kind.INT, 7, False)


def test_last_suffix_is_the_one_that_counts() -> None:
    spec = G.parse("P:a_c5_F3")
    assert spec == PVSpec("P:a_c5_F3", Kind.FLOAT, 3, True)


@pytest.mark.parametrize(
    "full",
    [
        "P:x_f0",       # count 0
        "P:x_i0",
        "P:x_c0",
        "P:x_F0",
        "P:x_f01",      # leading zero
        "P:x_i007",
        "P:x_C00",
        "P:x_F1",       # a buffer of one element
        "P:x_I1",
        "P:x_C1",
        "P:x_f",        # no count
        "P:x_",
        "P:x",
        "P:",
        "P:_f1",        # empty base name
        "P:x_d1",       # unknown dtype
        "P:x_s1",
        "P:x_ff1",
        "P:x_f1a",
        "P:x_f-1",
        "P:x_f+1",
        "P:x_f 1",
        "P:x f1",
        "P:xf1",
        "P:x_f1 ",
        " P:x_f1",
        "P:x_f1\n",
        "P:x y_f1",
        "P:é_f1",
        "P:x_f١",       # a non-ASCII digit
        "P:x/y_f1",
    ],
)
def test_not_of_the_grammar_is_none(full: str) -> None:
    assert G.parse(full) is None


@pytest.mark.parametrize(
    "full",
    ["P:x.y_f1", "P:x_f1.EGU", "P:x_f1.VAL", "P:.x_f1", "P:x._f1", "P:x_f.1", "P:x_f1."],
)
def test_dot_is_never_part_of_a_name(full: str) -> None:
    assert G.parse(full) is None


@pytest.mark.parametrize(
    "full",
    ["Q:x_f1", "x_f1", "PP:x_f1", "p:x_f1", "PQ:x_f1", "P_x_f1", "Px_f1", ":P:x_f1", "P"],
)
def test_not_under_the_prefix_is_none(full: str) -> None:
    assert G.parse(full) is None


def test_prefix_with_colons() -> None:
    g = Grammar("lab:bl1")
    assert g.parse("lab:bl1:x_f2") == PVSpec("lab:bl1:x_f2", Kind.FLOAT, 2, False)
    assert g.parse("lab:x_f2") is None
    assert g.parse("lab:bl12:x_f2") is None


def test_spec_properties() -> None:
    assert G.parse("P:x_f1").is_scalar is True
    assert G.parse("P:x_i1").is_scalar is True
    assert G.parse("P:x_c1").is_scalar is False
    assert G.parse("P:x_f2").is_scalar is False
    assert G.parse("P:x_F2").is_scalar is False
    assert G.parse("P:x_f3").nbytes == 24
    assert G.parse("P:x_i3").nbytes == 12
    assert G.parse("P:x_c3").nbytes == 3
    assert G.parse("P:x_C5").nbytes == 5
    assert [k.itemsize for k in (Kind.FLOAT, Kind.INT, Kind.CHAR)] == [8, 4, 1]


# --- limits -------------------------------------------------------------------------------


def test_name_length_limit_boundary() -> None:
    g = Grammar(PREFIX, NameLimits(max_name_length=20, max_elements=1000))
    at_limit = "P:" + "a" * 15 + "_f1"
    assert len(at_limit) == 20
    assert g.parse(at_limit) == PVSpec(at_limit, Kind.FLOAT, 1, False)
    over = "P:" + "a" * 16 + "_f1"
    with pytest.raises(Refused) as info:
        g.parse(over)
    assert info.value.reason is Reason.NAME_TOO_LONG


def test_default_name_length_limit_is_128() -> None:
    at_limit = "P:" + "n" * (128 - 2 - 3) + "_i1"
    assert len(at_limit) == 128
    assert G.parse(at_limit) is not None
    with pytest.raises(Refused) as info:
        G.parse("P:" + "n" * (129 - 2 - 3) + "_i1")
    assert info.value.reason is Reason.NAME_TOO_LONG


def test_too_long_but_not_ours_is_none() -> None:
    assert G.parse("P:" + "a" * 500) is None
    assert G.parse("Q:" + "a" * 500 + "_f1") is None
    assert G.parse("P:" + "a" * 500 + ".VAL_f1") is None


def test_count_limit_boundary() -> None:
    g = Grammar(PREFIX, NameLimits(max_name_length=128, max_elements=10))
    assert g.parse("P:x_f10") == PVSpec("P:x_f10", Kind.FLOAT, 10, False)
    assert g.parse("P:x_C10") == PVSpec("P:x_C10", Kind.CHAR, 10, True)
    for full in ("P:x_f11", "P:x_i11", "P:x_c11", "P:x_F11", "P:x_C100"):
        with pytest.raises(Refused) as info:
            g.parse(full)
        assert info.value.reason is Reason.COUNT_LIMIT, full


@pytest.mark.parametrize(
    "full",
    [
        "P:x_F999999999",
        "P:x_f999999999",
        "P:x_f1000001",
        "P:x_i" + "9" * 12,
        "P:x_c" + "9" * 13,
        "P:x_F" + "1" * 60,
    ],
)
def test_huge_counts_are_refused_not_ignored(full: str) -> None:
    with pytest.raises(Refused) as info:
        G.parse(full)
    assert info.value.reason is Reason.COUNT_LIMIT
    assert info.value.detail.startswith(full)


def test_too_long_and_too_many_elements_reports_too_long() -> None:
    full = "P:" + "a" * 200 + "_f99999999"
    with pytest.raises(Refused) as info:
        G.parse(full)
    assert info.value.reason is Reason.NAME_TOO_LONG


def test_refused_message_carries_the_code() -> None:
    with pytest.raises(Refused) as info:
        G.parse("P:x_f2000000")
    assert str(info.value).startswith("countLimit: ")
    assert info.value.reason.code == "countLimit"


# --- qualify and spec_for -----------------------------------------------------------------


def test_qualify() -> None:
    assert G.qualify("x_f1") == "P:x_f1"
    assert G.qualify("P:x_f1") == "P:x_f1"
    assert G.qualify("Q:x_f1") == "P:Q:x_f1"
    assert G.qualify("PP:x_f1") == "P:PP:x_f1"
    assert G.qualify("") == "P:"


@pytest.mark.parametrize("prefix, name, other", [
    ("5trap:relay", "other:prefix:x_f1", "other:prefix"),
    ("5trap:relay", "6trap:relay:x_f1", "6trap:relay"),
    ("5trap:relay", "5trap:relay2:x_f1", "5trap:relay2"),
    ("5trap:relay", "a:b:c:x_f1", "a:b"),
    ("P", "Q:x_f1", "Q"),
    ("P", "PP:x_f1", "PP"),
    ("a:b:c", "d:e:f:x_f1", "d:e:f"),
])
def test_a_name_shaped_like_another_relays_full_name_is_wrong_prefix(prefix: str, name: str,
                                                                      other: str) -> None:
    grammar = Grammar(prefix)
    assert grammar.foreign(name) == other
    with pytest.raises(Refused) as info:
        grammar.spec_for(name)
    assert info.value.reason is Reason.WRONG_PREFIX
    assert info.value.detail == (
        f"{name!r} looks like a PV of a relay with prefix {other!r}, not {prefix!r}; "
        f"to mean this relay's PV, send {prefix + ':' + name!r}")
    assert grammar.spec_for(f"{prefix}:{name}").name == f"{prefix}:{name}"  # spelled out


@pytest.mark.parametrize("prefix, name", [
    ("5trap:relay", "x_f1"), ("5trap:relay", "motor:x_f1"), ("5trap:relay", "5trap:relay:x_f1"),
    ("5trap:relay", "5trap:relay:other:prefix:x_f1"), ("P", "x_f1"), ("P", "P:Q:x_f1"),
    ("a:b:c", "d:e:x_f1"),
])
def test_names_that_cannot_be_another_relays_are_qualified(prefix: str, name: str) -> None:
    grammar = Grammar(prefix)
    assert grammar.foreign(name) is None
    assert grammar.spec_for(name).name == grammar.qualify(name)


def test_a_bad_name_is_bad_name_even_when_shaped_like_another_relays() -> None:
    with pytest.raises(Refused) as info:
        Grammar("5trap:relay").spec_for("other:prefix:x")
    assert info.value.reason is Reason.BAD_NAME


def test_spec_for_with_and_without_prefix() -> None:
    expected = PVSpec("P:x_F4", Kind.FLOAT, 4, True)
    assert G.spec_for("x_F4") == expected
    assert G.spec_for("P:x_F4") == expected


@pytest.mark.parametrize(
    "name", ["", "x", "x_f0", "x_F1", "x.VAL_f1", "x_f1.VAL", "x_f01", "P:", "x_q1", " x_f1"]
)
def test_spec_for_refuses_bad_name(name: str) -> None:
    with pytest.raises(Refused) as info:
        G.spec_for(name)
    assert info.value.reason is Reason.BAD_NAME
    assert repr(name) in info.value.detail


def test_spec_for_passes_limit_refusals_through() -> None:
    with pytest.raises(Refused) as info:
        G.spec_for("x_f1000001")
    assert info.value.reason is Reason.COUNT_LIMIT
    with pytest.raises(Refused) as info:
        G.spec_for("a" * 200 + "_f1")
    assert info.value.reason is Reason.NAME_TOO_LONG


# --- prefixes -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["relay", "P", "a:b", "lab-1:bl_2", "0", "x_f1"])
def test_valid_prefix(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix
    assert Grammar(prefix).prefix == prefix


@pytest.mark.parametrize(
    "prefix", ["", "relay:", "a b", "a.b", "a/b", "é", "relay\n", " relay", ":"]
)
def test_invalid_prefix(prefix: str) -> None:
    with pytest.raises(ValueError):
        validate_prefix(prefix)
    with pytest.raises(ValueError):
        Grammar(prefix)


def test_trailing_colon_prefix_message() -> None:
    with pytest.raises(ValueError, match="trailing ':'"):
        validate_prefix("relay:")


# --- properties ---------------------------------------------------------------------------

LIMITS = NameLimits(max_name_length=128, max_elements=1_000_000)


@st.composite
def valid_names(draw: st.DrawFn) -> tuple[str, str, Kind, int, bool]:
    prefix = draw(st.text(NAME_CHARS, min_size=1, max_size=10).filter(lambda p: p[-1] != ":"))
    dtype = draw(st.sampled_from("ficFIC"))
    buffer = dtype.isupper()
    count = draw(st.integers(min_value=2 if buffer else 1, max_value=LIMITS.max_elements))
    room = LIMITS.max_name_length - len(prefix) - 1 - 2 - len(str(count))
    base = draw(st.text(NAME_CHARS, min_size=1, max_size=min(room, 60)))
    full = f"{prefix}:{base}_{dtype}{count}"
    return prefix, full, Kind(dtype.lower()), count, buffer


@settings(max_examples=300, deadline=None)
@given(valid_names())
def test_property_valid_names_parse_back(case: tuple[str, str, Kind, int, bool]) -> None:
    prefix, full, kind, count, buffer = case
    grammar = Grammar(prefix, LIMITS)
    spec = grammar.parse(full)
    assert spec == PVSpec(full, kind, count, buffer)
    assert grammar.spec_for(full) == spec
    base_with_suffix = full[len(prefix) + 1:]
    if base_with_suffix.startswith(prefix + ":"):  # qualify() sees it as full
        return
    if base_with_suffix.count(":") < prefix.count(":") + 1:
        assert grammar.spec_for(base_with_suffix) == spec
    else:  # shaped like another relay's full name: never silently nested
        with pytest.raises(Refused) as info:
            grammar.spec_for(base_with_suffix)
        assert info.value.reason is Reason.WRONG_PREFIX


def _parse_outcome(grammar: Grammar, text: str) -> None:
    try:
        result = grammar.parse(text)
    except Refused as refused:
        assert refused.reason in (Reason.NAME_TOO_LONG, Reason.COUNT_LIMIT)
        return
    assert result is None or isinstance(result, PVSpec)
    if result is not None:
        assert result.name == text
        assert "." not in text
        assert text.startswith(grammar.prefix + ":")
        assert 1 <= result.count <= grammar.limits.max_elements
        assert len(text) <= grammar.limits.max_name_length


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_property_arbitrary_text_never_crashes(text: str) -> None:
    _parse_outcome(G, text)
    _parse_outcome(G, "P:" + text)


@settings(max_examples=300, deadline=None)
@given(st.text(NAME_CHARS + "ficFIC0123456789._ ", max_size=40))
def test_property_grammar_like_text_never_crashes(text: str) -> None:
    grammar = Grammar(PREFIX, NameLimits(max_name_length=30, max_elements=500))
    _parse_outcome(grammar, "P:" + text)
    _parse_outcome(grammar, "P:" + text + "_f1")
    try:
        spec = grammar.spec_for(text)
    except Refused as refused:
        assert refused.reason in (Reason.BAD_NAME, Reason.NAME_TOO_LONG, Reason.COUNT_LIMIT,
                                  Reason.WRONG_PREFIX)
        if refused.reason is Reason.WRONG_PREFIX:
            assert grammar.foreign(text) is not None
    else:
        assert spec.name == grammar.qualify(text)
        assert grammar.foreign(text) is None

"""The intake every worker shares (relayd.core.intake), values only: what an update
becomes, and the name cache bounded by what the relay can hold (issue 11)."""

from __future__ import annotations

import pytest

from relayd.core.errors import Reason, Refused
from relayd.core.intake import Intake
from relayd.core.names import Grammar, NameLimits
from relayd.core.ops import Op, PipeOp
from relayd.core.protocol import NO_VALUE, Update

PREFIX = "ik"
GRAMMAR = Grammar(PREFIX, NameLimits(max_name_length=40, max_elements=100))
ARRIVAL = 1_700_000_000_000_000_000


def update(pv: str, value: object = 1.0, op: str = "put", ts: float | None = None,
           meta: dict | None = None) -> Update:
    return Update(pv, op, value, ts, 0, meta)


def test_an_update_becomes_its_pipe_op() -> None:
    intake = Intake(GRAMMAR, 10)
    assert intake.prepare(update("a_f1", 2), ARRIVAL) == PipeOp(
        Op.PUT, f"{PREFIX}:a_f1", 2.0, ARRIVAL, None)
    assert intake.prepare(update(f"{PREFIX}:a_i1", 2.9, ts=1_700_000_001.5), ARRIVAL) == \
        PipeOp(Op.PUT, f"{PREFIX}:a_i1", 2, 1_700_000_001_500_000_000, None)
    assert intake.prepare(update("a_f1", None, op="delete"), ARRIVAL) == PipeOp(
        Op.DELETE, f"{PREFIX}:a_f1", None, 0, None)
    assert intake.prepare(update("a_f1", NO_VALUE, meta={"egu": "V"}), ARRIVAL) == PipeOp(
        Op.META, f"{PREFIX}:a_f1", None, 0, {"egu": "V"})
    assert intake.prepare(update("a_c4", "ab", meta={"desc": "d"}), ARRIVAL) == PipeOp(
        Op.PUT, f"{PREFIX}:a_c4", b"ab", ARRIVAL, {"desc": "d"})


@pytest.mark.parametrize("bad, reason", [
    (update("nope"), Reason.BAD_NAME),
    (update("x" * 40 + "_f1"), Reason.NAME_TOO_LONG),
    (update("a_f101"), Reason.COUNT_LIMIT),
    (update("a_f1", "text"), Reason.BAD_VALUE),
    (update("a_f2", [1.0, 2.0, 3.0]), Reason.TOO_MANY_ELEMENTS),
    (update("a_f1", 1.0, meta={"units": "V"}), Reason.BAD_VALUE),
])
def test_what_is_refused_is_refused_with_its_reason(bad: Update, reason: Reason) -> None:
    with pytest.raises(Refused) as refused:
        Intake(GRAMMAR, 10).prepare(bad, ARRIVAL)
    assert refused.value.reason is reason


def test_the_name_cache_never_holds_more_than_the_relay_can() -> None:
    """Issue 11: a sender of endless new names the CA process refuses beyond --max-pvs
    grew the worker's cache to 200,000 names (~160 MB). It holds at most the relay's PVs
    and placeholders now."""
    intake = Intake.bounded(GRAMMAR, max_pvs=10, max_placeholders=5)
    assert intake.cache_size == 15
    for i in range(1000):
        intake.prepare(update(f"n{i}_f1"), ARRIVAL)
        assert len(intake) <= 15
    assert len(intake) == (1000 - 1) % 15 + 1  # full, then started over


def test_the_cache_changes_no_result() -> None:
    small, large = Intake(GRAMMAR, 2), Intake(GRAMMAR, 100)
    names = ["a_f1", f"{PREFIX}:a_f1", "b_i1", "c_c4", "a_f1", "b_i1", "nope", "a_f1"]
    for _ in range(3):
        for name in names:
            outcomes = []
            for intake in (small, large):
                try:
                    outcomes.append(intake.prepare(update(name, 1), ARRIVAL))
                except Refused as refused:
                    outcomes.append(refused.reason)
            assert outcomes[0] == outcomes[1]
    assert len(large) == 4  # refused names are never cached


def test_a_cache_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        Intake(GRAMMAR, 0)

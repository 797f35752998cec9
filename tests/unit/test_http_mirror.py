"""The HTTP worker's mirror of the relay's PVs (workers.http.mirror), with values only."""

from __future__ import annotations

import pytest

from relayd.core.feed import FeedChunk, Row
from workers.http.mirror import MIN_SPAN, ORDER_REFRESH, RATE_STEP, Entry, Mirror, matcher


def row(name: str, value=1.0, severity=0, updates=1, ts_ns=1, writer="zmq 127.0.0.1",
        elements=1) -> list:
    """A row as it comes off the pipe: a plain list in Row's field order."""
    return list(Row(name, value, elements, severity, 0, ts_ns, None, writer, updates))


def synced(prefix: str, rows: list, now: float = 0.0) -> Mirror:
    mirror = Mirror(prefix)
    mirror.begin_sync()
    mirror.apply(FeedChunk(rows, [], {"status:pvs": len(rows)}, 7, True), now)
    return mirror


def names(entries) -> list[str]:
    return [entry.row.name for entry in entries]


def test_a_sync_fills_the_mirror_and_drops_what_it_does_not_list() -> None:
    mirror = synced("p", [row("p:a_f1"), row("p:b_f1")])
    assert mirror.synced and len(mirror) == 2
    assert mirror.status == {"status:pvs": 2}
    mirror.forget()
    assert not mirror.synced
    mirror.begin_sync()
    mirror.apply(FeedChunk([row("p:b_f1", 2.0)], [], None, 8, False), 1.0)
    mirror.apply(FeedChunk([row("p:c_f1")], [], None), 1.5)  # a change during the sync
    assert not mirror.synced and len(mirror) == 3  # nothing dropped before the last chunk
    mirror.apply(FeedChunk([], [], None, 8, True), 2.0)
    assert mirror.synced
    assert sorted(mirror.entries) == ["p:b_f1", "p:c_f1"]
    assert mirror.entries["p:b_f1"].row.value == 2.0


def test_feeds_update_and_delete_and_bump_the_versions() -> None:
    mirror = synced("p", [row("p:a_f1")])
    version, names_version = mirror.version, mirror.names_version
    mirror.apply(FeedChunk([row("p:a_f1", 5.0)], []), 1.0)
    assert mirror.version == version + 1 and mirror.names_version == names_version
    assert mirror.get("a_f1").row.value == 5.0  # found with or without the prefix
    mirror.apply(FeedChunk([], ["p:a_f1"]), 2.0)
    assert mirror.get("p:a_f1") is None and mirror.names_version == names_version + 1


def test_pages_follow_name_order_with_a_cursor_and_a_glob() -> None:
    mirror = synced("p", [row(f"p:n{i:03d}_f1") for i in range(250)]
                    + [row("p:temp_a_f1"), row("p:temp_b_i1")])
    first, after = mirror.page(limit=100)
    assert names(first)[:2] == ["p:n000_f1", "p:n001_f1"] and len(first) == 100
    assert after == "p:n099_f1"
    second, after = mirror.page(limit=100, after=after)
    assert names(second)[0] == "p:n100_f1"
    third, after = mirror.page(limit=100, after=after)
    assert len(third) == 52 and after is None
    exact, after = mirror.page(limit=2, after="n247_f1")  # the cursor without the prefix
    assert names(exact) == ["p:n248_f1", "p:n249_f1"] and after == "p:n249_f1"
    assert mirror.page(limit=2, after=after) == ([mirror.entries["p:temp_a_f1"],
                                                  mirror.entries["p:temp_b_i1"]], None)
    temps, after = mirror.page("temp*")
    assert names(temps) == ["p:temp_a_f1", "p:temp_b_i1"] and after is None
    assert names(mirror.page("p:temp*_i1")[0]) == ["p:temp_b_i1"]
    assert mirror.count("temp*") == 2 and mirror.count() == 252
    assert mirror.page("nothing*") == ([], None)


def test_a_glob_is_a_whole_name_match_and_case_sensitive() -> None:
    test = matcher("temp?_f1", "p")
    assert test("p:temp1_f1") and not test("p:temp12_f1") and not test("p:TEMP1_f1")
    assert matcher("*", "p") is None and matcher("", "p") is None


def test_views_sort_by_any_column_and_keep_the_rows_current() -> None:
    mirror = synced("p", [row("p:a_f1", 3.0, severity=2), row("p:b_f1", 1.0),
                          row("p:c_f1", 2.0, severity=1)])
    entries, total = mirror.view(None, "value", False, 0, 10, 0.0)
    assert names(entries) == ["p:b_f1", "p:c_f1", "p:a_f1"] and total == 3
    entries, _ = mirror.view(None, "severity", True, 0, 2, 0.0)
    assert names(entries) == ["p:a_f1", "p:c_f1"]
    entries, _ = mirror.view(None, "name", True, 1, 10, 0.0)
    assert names(entries) == ["p:b_f1", "p:a_f1"]
    # The order is reused for ORDER_REFRESH; the rows in it are always the latest.
    mirror.apply(FeedChunk([row("p:b_f1", 9.0)], []), 0.1)
    entries, _ = mirror.view(None, "value", False, 0, 10, 0.1)
    assert names(entries) == ["p:b_f1", "p:c_f1", "p:a_f1"]
    assert entries[0].row.value == 9.0
    entries, _ = mirror.view(None, "value", False, 0, 10, 0.1 + ORDER_REFRESH)
    assert names(entries) == ["p:c_f1", "p:a_f1", "p:b_f1"]


def test_sorting_mixed_values_never_compares_text_with_numbers() -> None:
    mirror = synced("p", [row("p:t_c9", "text", elements=4), row("p:x_f1", 2.0),
                          row("p:u_f3", None, elements=0), row("p:y_f3", [1.0, 2.0], elements=2),
                          row("p:z_f1", "NaN")])
    entries, _ = mirror.view(None, "value", False, 0, 10, 0.0)
    assert names(entries)[:2] == ["p:y_f3", "p:x_f1"]


def test_a_new_name_invalidates_a_filtered_order() -> None:
    mirror = synced("p", [row("p:a1_f1")])
    assert mirror.count("a*") == 1
    mirror.apply(FeedChunk([row("p:a2_f1")], []), 1.0)
    assert mirror.count("a*") == 2


def test_the_rate_counts_about_the_last_minute() -> None:
    entry = Entry(Row(*row("p:a_f1", updates=1000)), 0.0)
    assert entry.per_minute(0.0) == 0.0  # counts from the first sight, not from CA start
    for second in range(1, 121):  # 10 updates a second for two minutes
        entry.update(Row(*row("p:a_f1", updates=1000 + 10 * second)), float(second))
    assert entry.per_minute(120.0) == pytest.approx(600, rel=0.05)
    assert entry.per_minute(120.0 + 2 * RATE_STEP) == 0.0  # quiet for two steps
    entry.update(Row(*row("p:a_f1", updates=2201)), 500.0)  # one update after long quiet
    assert entry.per_minute(500.0) <= 60.0 / MIN_SPAN


def test_a_restarted_ca_process_starts_the_counts_over() -> None:
    entry = Entry(Row(*row("p:a_f1", updates=5000)), 0.0)
    entry.update(Row(*row("p:a_f1", updates=3)), 10.0)
    assert entry.per_minute(12.0) >= 0


def test_paging_100000_pvs_gives_the_first_page_and_the_next_name() -> None:
    # How fast: bench/scenarios/http_paging.py measures it; a test asserts no speed.
    mirror = synced("p", [row(f"p:pv{i:06d}_f1") for i in range(100_000)])
    first, after = mirror.page(limit=100)
    assert len(first) == 100 and after == "p:pv000099_f1"
    matching, _ = mirror.page("pv0999*", limit=100)
    assert len(matching) == 100

"""The HTTP worker's copy of the relay's PVs, kept from the CA process's change feed.

Every read the worker serves (the PV list, the page's table, /metrics, status) is
answered from here, so that a browser or a scraper never costs the CA loop anything. The
CA process sends the rows of the PVs touched since its last feed (`relayd.core.feed`);
`Mirror.apply` takes them in. No I/O: tested with values alone.

What is kept per PV is the feed's row (arrays cut to a preview) and two marks of its
update count for the rate: (time, count) at the start of the current and the previous
RATE_STEP-second step, so "updates in the last minute" is counted over the last one to
two steps (scaled to a minute), in four numbers per PV whatever its rate.

Queries:

* `page`: names in order after a name, matching a glob, for the API's paging (a cursor
  that stays right while PVs come and go);
* `view`: any sort order, an offset, for the web page; a sort by anything but the name
  is re-done at most every ORDER_REFRESH seconds (it costs tens of milliseconds at
  100,000 PVs), the rows in it are always current.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from relayd.core.feed import FeedChunk, Row

RATE_STEP = 30.0  # seconds per step of the rate's count marks
MIN_SPAN = 5.0  # seconds a rate is counted over at least (a first update is not 60/min)
ORDER_REFRESH = 1.0  # seconds a sort order (other than by name) is reused
PAGE_LIMIT = 100  # rows of a page unless asked
MAX_LIMIT = 5000  # most rows of one page


class Entry:
    """One PV in the mirror: its latest row and the marks of its rate."""

    __slots__ = ("row", "seen", "mark_t", "mark_n", "prev_t", "prev_n", "changed")

    def __init__(self, row: Row, now: float):
        self.row = row
        self.seen = 0  # sync generation it was last seen in
        self.mark_t = self.prev_t = now
        self.mark_n = self.prev_n = row.updates
        self.changed = 0  # mirror version of its last change

    def update(self, row: Row, now: float) -> None:
        since = now - self.mark_t
        if row.updates < self.row.updates or since >= 2 * RATE_STEP:
            # The CA process restarted (its counts start over), or the PV was quiet for
            # two steps: count from here.
            self.mark_t = self.prev_t = now
            self.mark_n = self.prev_n = min(self.row.updates, row.updates)
        elif since >= RATE_STEP:
            self.prev_t, self.prev_n = self.mark_t, self.mark_n
            self.mark_t, self.mark_n = now, self.row.updates
        self.row = row

    def per_minute(self, now: float) -> float:
        """Updates in about the last minute: counted over the last one to two RATE_STEPs
        (over at least MIN_SPAN seconds), scaled to a minute."""
        if now - self.mark_t >= 2 * RATE_STEP:
            return 0.0  # nothing since two steps ago
        span = max(now - self.prev_t, MIN_SPAN)
        return (self.row.updates - self.prev_n) * 60.0 / span


def qualify(pattern: str, prefix: str) -> str:
    """A glob as the API takes it: a pattern not starting with the prefix is under it."""
    head = prefix + ":"
    return pattern if pattern.startswith(head) else head + pattern


def matcher(pattern: str | None, prefix: str) -> Callable[[str], Any] | None:
    """A test for full names matching the glob `pattern` (case-sensitive); None: all."""
    if not pattern or pattern == "*":
        return None
    return re.compile(fnmatch.translate(qualify(pattern, prefix))).match


# The sort keys the page offers: name, or one of these taken from an entry.
def _value_key(entry: Entry) -> tuple:
    value = entry.row.value
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


SORT_KEYS: dict[str, Callable[[Entry], Any]] = {
    "value": _value_key,
    "severity": lambda entry: entry.row.severity,
    "time": lambda entry: entry.row.ts_ns,
    "writer": lambda entry: entry.row.writer,
    "updates": lambda entry: entry.row.updates,
}


@dataclass
class Mirror:
    """The PVs the relay holds, as the feed last described them."""

    prefix: str
    entries: dict[str, Entry] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)  # status PV suffix -> value
    version: int = 0  # bumps on every change
    names_version: int = 0  # bumps when a name comes or goes
    synced: bool = False  # a full sync has completed
    _sorted: list[str] = field(default_factory=list)
    _sorted_version: int = -1
    _generation: int = 0  # of the sync under way
    _cache: dict[tuple, tuple] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name) or self.entries.get(qualify(name, self.prefix))

    # --- taking in the feed -------------------------------------------------------------

    def apply(self, chunk: FeedChunk, now: float) -> None:
        """Take in one feed message (see `relayd.core.feed.FeedChunk`)."""
        self.version += 1
        version = self.version
        generation = self._generation
        entries = self.entries
        created = False
        for item in chunk.rows:
            row = Row(*item)
            entry = entries.get(row.name)
            if entry is None:
                entry = entries[row.name] = Entry(row, now)
                created = True
            else:
                entry.update(row, now)
            entry.changed = version
            entry.seen = generation
        for name in chunk.deleted:
            created |= entries.pop(name, None) is not None
        if chunk.status is not None:
            self.status = dict(chunk.status)
        if chunk.final:
            created |= self._sweep(generation)
        if created:
            self.names_version += 1

    def begin_sync(self) -> None:
        """A full sync starts: PVs it does not list are dropped at its final chunk."""
        self._generation += 1

    def _sweep(self, generation: int) -> bool:
        gone = [name for name, entry in self.entries.items() if entry.seen != generation]
        for name in gone:
            del self.entries[name]
        self.synced = True
        return bool(gone)

    def forget(self) -> None:
        """The CA process is gone or out of touch: nothing known is current any more."""
        self.synced = False

    # --- queries ---------------------------------------------------------------------------

    def sorted_names(self) -> list[str]:
        """Every name in order; sorted again only after a name came or went."""
        if self._sorted_version != self.names_version:
            self._sorted = sorted(self.entries)
            self._sorted_version = self.names_version
        return self._sorted

    def page(self, match: str | None = None, limit: int = PAGE_LIMIT,
             after: str | None = None) -> tuple[list[Entry], str | None]:
        """Up to `limit` PVs in name order after `after`, matching the glob `match`;
        and the name to ask for the next page after (None: this was the last page)."""
        names = self.sorted_names()
        start = bisect.bisect_right(names, qualify(after, self.prefix)) if after else 0
        test = matcher(match, self.prefix)
        if test is None:
            found = [self.entries[name] for name in names[start:start + limit + 1]]
        else:
            found = []
            for index in range(start, len(names)):
                if test(names[index]):
                    found.append(self.entries[names[index]])
                    if len(found) > limit:
                        break
        if len(found) > limit:
            return found[:limit], found[limit - 1].row.name
        return found, None

    def count(self, match: str | None = None) -> int:
        """How many PVs match the glob `match`."""
        return len(self._matching(match))

    def _matching(self, match: str | None) -> list[str]:
        test = matcher(match, self.prefix)
        if test is None:
            return self.sorted_names()
        key = ("match", match)
        cached = self._cache.get(key)
        if cached is not None and cached[0] == self.names_version:
            return cached[2]
        names = [name for name in self.sorted_names() if test(name)]
        self._cache[key] = (self.names_version, 0.0, names)
        return names

    def view(self, match: str | None, sort: str, descending: bool, offset: int,
             limit: int, now: float) -> tuple[list[Entry], int]:
        """The rows of one page of the web page's table, and how many match in all."""
        names = self._matching(match)
        if sort in SORT_KEYS:
            names = self._ordered(match, names, sort, descending, now)
        elif descending:
            names = names[::-1]
        window = names[max(0, offset):max(0, offset) + limit]
        return [self.entries[name] for name in window if name in self.entries], len(names)

    def _ordered(self, match: str | None, names: list[str], sort: str, descending: bool,
                 now: float) -> list[str]:
        key = ("sort", match, sort, descending)
        cached = self._cache.get(key)
        if (cached is not None and cached[0] == self.names_version
                and now - cached[1] < ORDER_REFRESH):
            return cached[2]
        by = SORT_KEYS[sort]
        entries = self.entries
        ordered = sorted(names, key=lambda name: by(entries[name]), reverse=descending)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = (self.names_version, now, ordered)
        return ordered

    def severities(self) -> dict[int, int]:
        """How many PVs are in each alarm severity."""
        counts: dict[int, int] = {}
        for entry in self.entries.values():
            severity = entry.row.severity
            counts[severity] = counts.get(severity, 0) + 1
        return counts


def rows_of(entries: Iterable[Entry]) -> list[Row]:
    return [entry.row for entry in entries]

"""A fixed-capacity, right-appending buffer over a numpy array. Pure.

Appending must not cost O(capacity) per put, or a 1,000,000-element time trace fed one
sample at a time would move megabytes per sample. And the CA layer needs the live
elements as one contiguous slice, to copy them out in one go.

The buffer keeps its capacity plus a slack (`slack`: 1/16 of the capacity, at least 64
elements, at most the capacity itself) and slides: new elements go on the right, and
only when they no longer fit are the live elements that stay moved back to the start.
After such a move at least the slack is free again, so a move of at most `capacity`
elements happens at most once per put and once per slack elements appended: amortised,
at most capacity / slack + 1 (17 for large buffers) elements moved per element
appended, O(1). Memory: capacity + 1/16 (a buffer of 1,000 float64 keeps 1,064); small
buffers, whose per-PV overhead dwarfs their data, keep twice their capacity.
"""

from __future__ import annotations

import numpy as np

SLACK_MIN = 64  # elements: below this a move would come every few appends
SLACK_DIVISOR = 16  # the slack of a large buffer, as a fraction of its capacity


def slack(capacity: int) -> int:
    """Elements kept beyond `capacity` so that moves are rare (see the module doc)."""
    return min(capacity, max(SLACK_MIN, capacity // SLACK_DIVISOR))


class Ring:
    """The last `capacity` elements appended, oldest first."""

    __slots__ = ("capacity", "_data", "_start", "_end")

    def __init__(self, capacity: int, dtype: np.dtype):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._data = np.empty(capacity + slack(capacity), dtype=dtype)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def storage(self) -> int:
        """Elements the buffer keeps memory for (capacity plus slack)."""
        return len(self._data)

    def view(self) -> np.ndarray:
        """The live elements, oldest first (a view: copy it to keep it)."""
        return self._data[self._start:self._end]

    def clear(self) -> None:
        self._start = self._end = 0

    def extend(self, values: np.ndarray) -> None:
        """Append `values` on the right; the oldest elements beyond capacity drop off."""
        n = len(values)
        cap = self.capacity
        if n >= cap:
            self._data[:cap] = values[n - cap:]
            self._start, self._end = 0, cap
            return
        if self._end + n > len(self._data):
            # Keep the newest elements that stay; the regions may overlap, which numpy
            # copies correctly (as memmove would).
            keep = min(self._end - self._start, cap - n)
            self._data[:keep] = self._data[self._end - keep:self._end]
            self._start, self._end = 0, keep
        self._data[self._end:self._end + n] = values
        self._end += n
        if self._end - self._start > cap:
            self._start = self._end - cap

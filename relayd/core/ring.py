"""A fixed-capacity, right-appending buffer over a numpy array. Pure.

Appending must not cost O(capacity) per put, or a 1,000,000-element time trace fed one
sample at a time would move megabytes per sample. The buffer keeps twice its capacity
and slides: new elements go on the right, and only when the right end is reached are
the live elements (at most `capacity`) moved back to the start. That is amortised O(1)
per element, and the live elements are always one contiguous slice, which is what the
CA layer needs to copy them out.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """The last `capacity` elements appended, oldest first."""

    __slots__ = ("capacity", "_data", "_start", "_end")

    def __init__(self, capacity: int, dtype: np.dtype):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._data = np.empty(2 * capacity, dtype=dtype)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

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
            keep = min(self._end - self._start, cap - n)
            self._data[:keep] = self._data[self._end - keep:self._end]
            self._start, self._end = 0, keep
        self._data[self._end:self._end + n] = values
        self._end += n
        if self._end - self._start > cap:
            self._start = self._end - cap

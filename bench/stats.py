"""Medians and percentiles: the only statistics the bench reports.

A figure is the median of its runs, never the mean or the best: on a shared 2-core
machine one run can be disturbed by another process, and the median of three ignores one
such run without hiding a systematic change. Percentiles interpolate linearly between
closest ranks (numpy's default), the same rule the C clients use.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def median(values: Iterable[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    kept = sorted(v for v in values if v is not None and math.isfinite(v))
    if not kept:
        return math.nan
    middle = len(kept) // 2
    if len(kept) % 2:
        return kept[middle]
    return (kept[middle - 1] + kept[middle]) / 2


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of values already sorted; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = q / 100 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize_ms(samples_s: Iterable[float]) -> dict:
    """p50/p90/p99/p99.9/min/max of samples in seconds, reported in milliseconds."""
    ordered = sorted(samples_s)
    out = {"n": len(ordered)}
    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)):
        out[name] = percentile(ordered, q) * 1e3
    out["min_ms"] = ordered[0] * 1e3 if ordered else math.nan
    out["max_ms"] = ordered[-1] * 1e3 if ordered else math.nan
    return out

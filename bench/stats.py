"""Small statistics for the benchmark: percentiles, ratios and rates."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0 to 100) with linear interpolation.

    This is the "linear" method of numpy.percentile. Raises ValueError for an
    empty sequence or a ``q`` outside 0 to 100.
    """
    if not values:
        raise ValueError("percentile needs at least one value; got none.")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q!r} is outside 0 to 100.")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    weight = position - low
    return ordered[low] * (1 - weight) + ordered[high] * weight


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or None when either is unknown or 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rate(count: float | None, seconds: float | None) -> float | None:
    """Return ``count`` per second, or None when it cannot be computed."""
    return ratio(count, seconds)

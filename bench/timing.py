"""How long each phase of a run took, and what the full run would take.

Each phase records its wall time and ``extra_s``, the time the full run
would add to it. That is the part that grows with the measured sets (such as
the timed CSV run), times how much larger the full run's sets are, minus one. The rest
of a phase (process start-up, model loading, conversion) is taken to cost
the same in either run, and a full run adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Phase:
    """One phase of a run; ``scaled_s`` and ``factor`` are set inside it."""

    name: str
    seconds: float = 0.0
    extra_s: float = 0.0

    def scale(self, seconds: float, factor: float) -> None:
        """Mark ``seconds`` of this phase as ``factor`` times longer when full.

        A negative ``seconds`` (a noisy difference of two timings) counts as 0.
        """
        self.extra_s += max(0.0, seconds) * (factor - 1)


@contextmanager
def phase(results: dict[str, Any], name: str) -> Iterator[Phase]:
    """Time the block and append it to ``results["phases"]``."""
    current = Phase(name)
    started = time.monotonic()
    try:
        yield current
    finally:
        current.seconds = time.monotonic() - started
        results.setdefault("phases", []).append(asdict(current))


def estimate_full_seconds(duration_s: float, phases: list[dict[str, Any]]) -> float:
    """Return the estimated wall time of the full run.

    ``duration_s`` is this run's wall time, and ``phases`` its recorded
    phases; time outside every phase counts as fixed.
    """
    return duration_s + sum(row["extra_s"] for row in phases)

"""In-process throughput of one loaded model at a forced output length.

Random-weight models never emit EOS on their own, so outputs would run to
whatever limit each engine applies. ``measure_throughput`` instead forces
every output to exactly ``new_tokens`` tokens (minimum = maximum), through
the same ``core.translator.generate_batch`` that the workers run, so engines
and precisions are compared on equal work. Load the model with
``core.models.load_checkpoint`` after setting ``ENGINE``, ``PRECISION``,
``DEVICE`` and ``NUM_BEAMS``; the measurement reads the same settings.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from core.config import Settings, get_settings
from core.models import LoadedModel
from core.translator import generate_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    """Target tokens per second of one engine, precision and batch size.

    ``seconds`` is the wall time of each timed run over all texts, and
    ``cpu_seconds`` is the CPU time of this process, all its threads
    together, during each run. On a machine shared with other work, CPU time varies
    less than wall time, but it also counts threads that spin while waiting.
    """

    engine: str
    precision: str
    device: str
    num_beams: int
    batch_size: int
    texts: int
    new_tokens: int
    seconds: tuple[float, ...]
    cpu_seconds: tuple[float, ...]

    @property
    def target_tokens(self) -> int:
        """Output tokens of one run, EOS included."""
        return self.texts * self.new_tokens

    @property
    def median_tokens_per_second(self) -> float:
        """Target tokens per second of the median run."""
        return self.target_tokens / statistics.median(self.seconds)

    @property
    def median_tokens_per_cpu_second(self) -> float:
        """Target tokens per CPU second of the run with the median CPU time."""
        return self.target_tokens / statistics.median(self.cpu_seconds)


def measure_throughput(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int,
    new_tokens: int,
    runs: int = 3,
    settings: Settings | None = None,
) -> Throughput:
    """Translate ``texts`` ``runs`` times in batches and time each run.

    One untimed batch runs first, so lazy initialisation is not measured.
    Tokenisation and decoding are inside the timed region, scoring is not.
    Raises RuntimeError when an engine does not produce exactly
    ``new_tokens`` tokens for an input, because the numbers would then
    compare unequal work.
    """
    if not texts or batch_size < 1 or new_tokens < 1 or runs < 1:
        raise ValueError(
            f"measure_throughput needs texts, batch_size >= 1, new_tokens >= 1 "
            f"and runs >= 1; got {len(texts)} texts, batch_size={batch_size}, "
            f"new_tokens={new_tokens}, runs={runs}."
        )
    settings = settings or get_settings()
    batches = [
        list(texts[start : start + batch_size])
        for start in range(0, len(texts), batch_size)
    ]

    _run_batch(loaded, batches[0], new_tokens, settings)
    seconds = []
    cpu_seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        cpu_started = time.process_time()
        for batch in batches:
            _run_batch(loaded, batch, new_tokens, settings)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)

    result = Throughput(
        engine=loaded.engine,
        precision=loaded.precision,
        device=loaded.device,
        num_beams=settings.num_beams,
        batch_size=batch_size,
        texts=len(texts),
        new_tokens=new_tokens,
        seconds=tuple(seconds),
        cpu_seconds=tuple(cpu_seconds),
    )
    logger.info(
        "%s %s on %s, beams %d, batch %d: %.0f target tokens/s (median of %d)",
        result.engine,
        result.precision,
        result.device,
        result.num_beams,
        batch_size,
        result.median_tokens_per_second,
        runs,
    )
    return result


def _run_batch(
    loaded: LoadedModel, batch: list[str], new_tokens: int, settings: Settings
) -> None:
    outputs = generate_batch(
        loaded, batch, new_tokens, settings, scored=False, min_tokens=new_tokens
    )
    lengths = sorted({output.generated_tokens for output in outputs})
    if lengths != [new_tokens]:
        raise RuntimeError(
            f"{loaded.engine} generated outputs of {lengths} tokens instead of "
            f"exactly {new_tokens}, so the forced length did not hold."
        )

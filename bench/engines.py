"""In-process throughput of one loaded model at a forced output length.

Random-weight models never emit EOS on their own, so outputs would run to
whatever limit each engine applies. With ``BENCH_FORCED_OUTPUT_TOKENS=true``
the translator makes every engine generate exactly its token limit (the
input's length bucket), and ``measure_throughput`` runs the same
``core.translator.translate_texts_scored`` that the workers run, so engines and
precisions are compared on equal work. Load the model with
``core.models.load_model`` after setting ``ENGINE``, ``PRECISION``,
``DEVICE`` and ``NUM_BEAMS``; the measurement reads the same settings.

``count_generated_tokens`` counts, for either engine, the tokens that
``core.translator.generate_batch`` returns, and checks that each output has
exactly the forced length.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core import translator
from core.config import get_settings
from core.models import LoadedModel
from core.translator import (
    forced_output_tokens,
    length_bucket,
    translate_texts_scored,
)

logger = logging.getLogger(__name__)

# Texts translated before the clock starts, so one-time costs (first
# allocation, thread pool start, lazy engine set-up) are not measured.
WARMUP_TEXTS = 2


def forced_length(input_tokens: int, max_positions: int) -> int:
    """Return the benchmark output length of an input of ``input_tokens``.

    This is the rule ``BENCH_FORCED_OUTPUT_TOKENS`` applies in
    ``core.translator``: the input's token count, end-of-sentence token
    included, rounded up to a multiple of 8, within the position limit.
    """
    return min(max_positions, length_bucket(input_tokens))


@dataclass
class TokenCount:
    """Generated tokens and outputs seen by ``count_generated_tokens``."""

    tokens: int = 0
    outputs: int = 0


@contextmanager
def count_generated_tokens() -> Iterator[TokenCount]:
    """Count the output tokens of every ``generate_batch`` call in the block.

    Works for every engine, because the translator calls
    ``core.translator.generate_batch`` for each batch. Raises RuntimeError
    when a call with a minimum length returns an output of another length
    than its maximum, because the forced length did not hold.
    """
    count = TokenCount()
    generate_batch = translator.generate_batch

    def counting(
        loaded: LoadedModel,
        texts: Sequence[str],
        max_tokens: int,
        *args: Any,
        **kw: Any,
    ) -> list[translator.GeneratedOutput]:
        outputs = generate_batch(loaded, texts, max_tokens, *args, **kw)
        lengths = sorted({output.generated_tokens for output in outputs})
        if kw.get("min_tokens") == max_tokens and lengths != [max_tokens]:
            raise RuntimeError(
                f"{loaded.engine} generated outputs of {lengths} tokens instead "
                f"of exactly {max_tokens}, so the forced length did not hold."
            )
        count.tokens += sum(output.generated_tokens for output in outputs)
        count.outputs += len(outputs)
        return outputs

    translator.generate_batch = counting  # type: ignore[assignment]
    try:
        yield count
    finally:
        translator.generate_batch = generate_batch  # type: ignore[assignment]


@dataclass(frozen=True)
class Throughput:
    """Target tokens per second of one engine and precision.

    ``target_tokens`` are the tokens generated in one run over all texts,
    counted from the engine's outputs. ``seconds`` is the wall time of each
    timed run, and ``cpu_seconds`` is the CPU time of this process, all its
    threads together, during each run. On a machine shared with other work,
    CPU time varies less than wall time, but it also counts threads that spin
    while waiting.
    """

    engine: str
    precision: str
    device: str
    num_beams: int
    texts: int
    target_tokens: int
    seconds: tuple[float, ...]
    cpu_seconds: tuple[float, ...]

    @property
    def median_tokens_per_second(self) -> float:
        """Target tokens per second of the median run."""
        return self.target_tokens / statistics.median(self.seconds)

    @property
    def median_tokens_per_cpu_second(self) -> float:
        """Target tokens per CPU second of the run with the median CPU time."""
        return self.target_tokens / statistics.median(self.cpu_seconds)


def csv_tasks(texts: Sequence[str], chunk_size: int) -> list[list[str]]:
    """Split ``texts`` into the tasks the CSV command sends for them.

    The command sends the rows of each sorting window shortest first, in
    chunks of ``chunk_size`` rows, one task per chunk.
    """
    from app_batch_celery import sort_window, split_chunks, submission_order

    window = sort_window(chunk_size)
    tasks = []
    for start in range(0, len(texts), window):
        rows = list(texts[start : start + window])
        for positions in split_chunks(rows, submission_order(rows), chunk_size):
            tasks.append([rows[position] for position in positions])
    return tasks


def measure_throughput(
    loaded: LoadedModel, texts: Sequence[str], *, runs: int = 3, chunk_size: int = 0
) -> Throughput:
    """Translate all ``texts`` in one translator call ``runs`` times.

    The translator splits, sorts and batches every text at once, as a worker
    does with one task's texts, and scores every output, as a worker does.
    With ``chunk_size``, the texts are translated in one call per task of the
    CSV command instead (see ``csv_tasks``).
    Batch sizes come from ``MAX_BATCH_SIZE`` and ``BATCH_TOKEN_BUDGET``.
    Tokenisation, decoding and scoring are inside the timed region. Raises
    ValueError unless ``BENCH_FORCED_OUTPUT_TOKENS`` is on, and RuntimeError
    when an engine does not hold the forced length.
    """
    settings = get_settings()
    if not texts or runs < 1:
        raise ValueError(
            f"measure_throughput needs texts and runs >= 1; got {len(texts)} "
            f"texts and runs={runs}."
        )
    if not forced_output_tokens(settings):
        raise ValueError(
            "measure_throughput needs BENCH_FORCED_OUTPUT_TOKENS=true, so that "
            "every engine generates the same number of tokens; it is off."
        )

    translate_texts_scored(loaded, list(texts[:WARMUP_TEXTS]), loaded.source)
    calls = csv_tasks(texts, chunk_size) if chunk_size else [list(texts)]
    seconds = []
    cpu_seconds = []
    counted = []
    for _ in range(runs):
        with count_generated_tokens() as count:
            started = time.perf_counter()
            cpu_started = time.process_time()
            for call in calls:
                translate_texts_scored(loaded, call, loaded.source)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
        counted.append(count.tokens)
    if len(set(counted)) != 1:
        raise RuntimeError(f"The runs generated different token counts: {counted}.")

    result = Throughput(
        engine=loaded.engine,
        precision=loaded.precision,
        device=loaded.device,
        num_beams=settings.num_beams,
        texts=len(texts),
        target_tokens=counted[0],
        seconds=tuple(seconds),
        cpu_seconds=tuple(cpu_seconds),
    )
    logger.info(
        "%s %s on %s, beams %d: %.0f target tokens/s (median of %d)",
        result.engine,
        result.precision,
        result.device,
        result.num_beams,
        result.median_tokens_per_second,
        runs,
    )
    return result

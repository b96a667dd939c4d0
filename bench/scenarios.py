"""The measurements taken against running stacks.

``one_process_stack`` starts a stack with one worker process for every queue
(``INTERACTIVE_WORKERS=0``, ``WORKER_CONCURRENCY=1``) and measures the cold
and warm CSV runs, the API latencies and the memory of every process.
``default_layout_stack`` starts one with the defaults of
``start_services.sh`` (a bulk worker and an interactive worker) and measures
the cold CSV run, the memory, and single requests while a CSV job runs.
Both add their rows to the run's results.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import service
from bench.memory import MemoryUsage
from bench.stats import percentile, rate
from bench.timing import Phase
from tests.helpers import wait_for

logger = logging.getLogger(__name__)

ONE_PROCESS = "1 worker process"
DEFAULT_LAYOUT = "default layout"
CSV_ONE_ROW = f"service CSV cold, {ONE_PROCESS}"
CSV_DEFAULT_ROW = f"service CSV cold, {DEFAULT_LAYOUT}"
# Settings of the stack with one worker process for every queue; the default
# layout gets none, so start_services.sh applies its own defaults.
ONE_PROCESS_SETTINGS = {"INTERACTIVE_WORKERS": "0", "WORKER_CONCURRENCY": "1"}
# Rows of the CSV that loads the model in the bulk worker before any timing.
WARMUP_ROWS = 4
BATCH_TEXTS = 1000
MISS_CLIENTS = 8
JOB_START_TIMEOUT = 600.0
# The sets of uncached requests, which dominate the latency measurements.
MISS_SIZES = ("miss_requests", "miss_requests_8", "micro", "micro")
# Sentences drawn per micro-batching request, to pick ones of median length.
MICRO_POOL_FACTOR = 8


@dataclass
class Context:
    """Inputs and results shared by every measurement of one run."""

    results: dict[str, Any]
    sizes: dict[str, int]
    work_dir: Path
    model_dir: Path
    measured: list[str]
    reserve: list[str]
    target_tokens: int
    corpus_csv: Path
    uncached: Iterator[str]

    @property
    def chunk_size(self) -> int:
        """Rows per task of the timed CSV runs."""
        return self.sizes["csv_chunk"]

    def factor(self, *keys: str) -> float:
        """Return how much larger the full run's sets of ``keys`` are."""
        full = self.results["full_sizes"]
        return sum(full[key] for key in keys) / sum(self.sizes[key] for key in keys)

    def take(self, count: int) -> list[str]:
        """Return ``count`` sentences that no request has sent yet."""
        return list(itertools.islice(self.uncached, count))

    def stack(self, label: str, folder: str, layout: dict[str, str]) -> service.Stack:
        settings = {**self.results["settings"], **layout}
        return service.Stack(
            label, self.work_dir / "stacks" / folder, self.model_dir, settings
        )

    def warm(self, stack: service.Stack, processes: int) -> None:
        """Load the model in every worker process of the stack."""
        rows = self.take(WARMUP_ROWS)
        warmup_csv = self.work_dir / "csv" / f"warmup-{stack.base.name}.csv"
        service.write_csv(warmup_csv, rows)
        service.run_cli(stack, warmup_csv, warmup_csv.with_suffix(".out.csv"), 2)
        service.warm_workers(stack, processes, self.uncached)

    def csv_row(self, name: str, layout: str, run: service.CliRun) -> None:
        self.results["throughput"].append(
            {
                "name": name,
                "settings": f"{layout}, --chunk-size {self.sizes['csv_chunk']}",
                "texts": len(self.measured),
                "target_tokens": self.target_tokens,
                "seconds": run.seconds,
                "tokens_per_s": rate(self.target_tokens, run.seconds),
                "ceiling": self.results["row_names"].get("default_ceiling", ""),
            }
        )


def one_process_stack(context: Context, current: Phase) -> str:
    """Measure CSV runs, latencies and memory with one worker process.

    ``current`` learns which parts grow in the full run.
    """
    label = ONE_PROCESS
    csv_dir = context.work_dir / "csv"
    with context.stack(label, "one", ONE_PROCESS_SETTINGS) as stack:
        context.warm(stack, 1)
        logger.info("Stack %s: cold CSV run of %d rows", label, len(context.measured))
        cold = service.run_cli(
            stack, context.corpus_csv, csv_dir / "out-cold.csv", context.chunk_size
        )
        context.csv_row(CSV_ONE_ROW, _layout_text(ONE_PROCESS_SETTINGS), cold)
        context.results["cli_memory"] = {
            "stack": label,
            **asdict(cold.peak or MemoryUsage(0, 0, 0)),
            "torch": cold.imports_torch,
        }

        logger.info("Stack %s: warm CSV run", label)
        warm = service.run_cli(
            stack, context.corpus_csv, csv_dir / "out-warm.csv", context.chunk_size
        )
        context.results["warm"] = {
            "rows": len(context.measured),
            "cold_s": cold.seconds,
            "warm_s": warm.seconds,
        }
        # The warm run is mostly the command's start-up, which the cold run
        # pays too, so only the rest grows with the number of rows.
        current.scale(cold.seconds - warm.seconds, context.factor("sentences"))
        record_memory(context.results, stack, label)
        started = time.monotonic()
        measure_latency(context, stack)
        current.scale(time.monotonic() - started, context.factor(*MISS_SIZES))
    return label


def default_layout_stack(context: Context, processes: int, current: Phase) -> str:
    """Measure the cold CSV run, memory and interactive priority by default.

    ``processes`` is the number of worker processes that the default layout
    starts, all of which load the model before the timed run. ``current``
    learns which parts grow in the full run.
    """
    label = DEFAULT_LAYOUT
    with context.stack(label, "default", {}) as stack:
        context.warm(stack, processes)
        logger.info("Stack %s: cold CSV run of %d rows", label, len(context.measured))
        cold = service.run_cli(
            stack,
            context.corpus_csv,
            context.work_dir / "csv" / "out-default.csv",
            context.chunk_size,
        )
        context.csv_row(CSV_DEFAULT_ROW, "start_services.sh defaults", cold)
        start_up = context.results["warm"]["warm_s"]
        current.scale(cold.seconds - start_up, context.factor("sentences"))
        record_memory(context.results, stack, label)
        started = time.monotonic()
        measure_interactive(context, stack)
        current.scale(time.monotonic() - started, context.factor("interactive"))
    return label


def _layout_text(layout: dict[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in layout.items())


def record_memory(results: dict[str, Any], stack: service.Stack, label: str) -> None:
    """Add the memory of every process of the stack to the results."""
    for row in service.stack_memory(stack):
        results["memory"].append(
            {
                "stack": label,
                "service": row.service,
                "role": row.role,
                "pid": row.pid,
                **asdict(row.usage),
                "torch": row.imports_torch,
            }
        )
    results["memory_stack"] = results.get("memory_stack") or label


def latency_row(
    name: str, label: str, latencies: list[float], clients: int
) -> dict[str, Any]:
    """Summarise request latencies, in seconds, as p50 and p95 in ms."""
    return {
        "name": name,
        "label": label,
        "requests": len(latencies),
        "clients": clients,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
    }


def measure_latency(context: Context, stack: service.Stack) -> None:
    """Time cache hits, misses, cached batches and concurrent misses."""
    sizes = context.sizes
    rows = context.results["latency"]

    def call(text: str) -> service.Response:
        return service.translate(stack, text)

    cached = list(
        itertools.islice(itertools.cycle(context.measured), sizes["cached_requests"])
    )
    latencies, _ = service.time_requests(call, cached, 1)
    rows.append(
        latency_row("translate_cached", "/api/translate, cache hits", latencies, 1)
    )

    misses = context.take(sizes["miss_requests"])
    latencies, _ = service.time_requests(call, misses, 1)
    rows.append(latency_row("translate_miss_1", "/api/translate, misses", latencies, 1))

    misses = context.take(sizes["miss_requests_8"])
    latencies, _ = service.time_requests(call, misses, MISS_CLIENTS)
    rows.append(
        latency_row(
            "translate_miss_8", "/api/translate, misses", latencies, MISS_CLIENTS
        )
    )

    batch = list(itertools.islice(itertools.cycle(context.measured), BATCH_TEXTS))
    latencies = [
        service.translate_batch(stack, batch).seconds
        for _ in range(sizes["batch_repeats"])
    ]
    rows.append(
        latency_row("batch_cached", "/api/batch, 1,000 cached texts", latencies, 1)
    )

    # The same misses twice: all at once, then one at a time after the cache
    # is cleared, so both passes translate every text.
    pool = context.take(sizes["micro"] * MICRO_POOL_FACTOR)
    texts = median_length_window(pool, sizes["micro"])
    _, concurrent_s = service.time_requests(call, texts, len(texts))
    service.clear_cache(stack)
    _, sequential_s = service.time_requests(call, texts, 1)
    context.results["micro_batching"] = {
        "requests": sizes["micro"],
        "concurrent_s": concurrent_s,
        "sequential_s": sequential_s,
    }


def median_length_window(pool: list[str], count: int) -> list[str]:
    """Return the ``count`` sentences of ``pool`` nearest its median length.

    Sentences of similar length fall into one length bucket of the
    translator, so a batch of them needs little padding.
    """
    if len(pool) < count:
        raise ValueError(
            f"median_length_window needs {count} sentences; got {len(pool)}."
        )
    ordered = sorted(pool, key=len)
    start = max(0, len(ordered) // 2 - count // 2)
    return ordered[start : start + count]


def measure_interactive(context: Context, stack: service.Stack) -> None:
    """Time uncached single requests while a 1,000-row CSV job runs."""
    sizes = context.sizes
    rows = [
        f"Part {index}: {sentence}"
        for index, sentence in zip(
            range(1, sizes["bulk_rows"] + 1),
            itertools.cycle(context.reserve),
            strict=False,
        )
    ]
    bulk_csv = context.work_dir / "csv" / "bulk.csv"
    service.write_csv(bulk_csv, rows)
    job_id = service.submit_csv_async(
        stack,
        bulk_csv,
        context.work_dir / "csv" / "out-bulk.csv",
        "--chunk-size",
        str(sizes["bulk_chunk"]),
    )
    try:
        wait_for(
            lambda: job_status(stack, job_id) == "processing",
            JOB_START_TIMEOUT,
            interval=0.5,
            description=f"CSV job {job_id} to start processing",
        )
        latencies, _ = service.time_requests(
            lambda text: service.translate(stack, text),
            context.take(sizes["interactive"]),
            1,
        )
        context.results["latency"].append(
            latency_row(
                "interactive_during_bulk",
                "/api/translate, misses during a 1,000-row CSV job",
                latencies,
                1,
            )
        )
    finally:
        service.cancel_job(stack, job_id)


def job_status(stack: service.Stack, job_id: str) -> str:
    """Return the status the API reports for a job."""
    body = service.request_json("GET", f"{stack.api}/api/task/{job_id}").body
    return str(body.get("status"))

"""The benchmark page: goals, tables, method and machine, plus a chart.

``render_markdown`` turns the results that ``bench/run.py`` collects (plain
JSON-compatible dicts) into ``BENCHMARKS.md``. ``evaluate_goals`` compares
them with the project's performance goals, and ``write_chart`` draws target
tokens per second by configuration with matplotlib's Agg backend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import ratio

logger = logging.getLogger(__name__)

BYTES_PER_KIB = 1024
BYTES_PER_MB = 1_000_000


@dataclass(frozen=True)
class Goal:
    """One performance goal and how the run measured against it."""

    goal: str
    measured: str
    met: bool | None
    note: str = ""


def mb(kib: float) -> float:
    """Convert KiB to MB (10^6 bytes)."""
    return kib * BYTES_PER_KIB / BYTES_PER_MB


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}x"


def _goal_ratio(value: float | None) -> str:
    # Three significant digits, so 0.897 does not print as a passing 0.90.
    return "n/a" if value is None else f"{value:.3g}x"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return a Markdown table; ``|`` inside a cell is escaped."""
    lines = [_row(header), _row(["---"] * len(header))]
    for cells in rows:
        lines.append(_row([str(cell).replace("|", "\\|") for cell in cells]))
    return "\n".join(lines)


def throughput_row(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Return the throughput row called ``name``, unless it was skipped."""
    for row in results.get("throughput", []):
        if row["name"] == name and not row.get("skipped"):
            return dict(row)
    return None


def _rate(row: dict[str, Any] | None) -> float | None:
    return None if row is None else row.get("tokens_per_s")


def _latency(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    for row in results.get("latency", []):
        if row["name"] == name:
            return dict(row)
    return None


def _check(value: float | None, passes: bool) -> bool | None:
    return None if value is None else passes


def evaluate_goals(results: dict[str, Any]) -> list[Goal]:
    """Compare the results with every goal; ``met`` is None when not measured."""
    names = results.get("row_names", {})
    naive = _rate(throughput_row(results, names.get("naive", "")))
    transformers = _rate(throughput_row(results, names.get("transformers", "")))
    ceiling = _rate(throughput_row(results, names.get("default_ceiling", "")))
    one_process = _rate(throughput_row(results, names.get("csv_one", "")))
    default = _rate(throughput_row(results, names.get("csv_default", "")))
    engine = results.get("default_engine") or {}
    default_name = f"{engine.get('engine', 'n/a')} {engine.get('precision', '')}"
    goals = []

    chunk = results.get("sizes", {}).get("csv_chunk", "CHUNK_SIZE")
    chunked = _rate(throughput_row(results, names.get("default_chunked", "")))
    value = ratio(one_process, ceiling)
    goals.append(
        Goal(
            "cold CSV (1 worker process) >= 0.9x the in-process ceiling of the "
            "same engine and precision",
            _goal_ratio(value),
            _check(value, value is not None and value >= 0.9),
            "Translated in-process in the CSV command's tasks (rows sorted by "
            f"length per window, {chunk} per task), the same texts reach "
            f"{_goal_ratio(ratio(chunked, ceiling))} of the one-call ceiling, "
            "because a task's batches are smaller than those of one call over "
            f"the whole corpus. The service reaches "
            f"{_goal_ratio(ratio(one_process, chunked))} of that chunked rate: "
            "the rest goes to Celery round trips, the pipeline's cache writes, "
            "the command's start-up and the other processes of the stack.",
        )
    )
    value = ratio(default, naive)
    goals.append(
        Goal(
            "default config >= 10x the naive baseline",
            _goal_ratio(value),
            _check(value, value is not None and value >= 10),
            f"The default engine is {default_name}. Its batched ceiling, "
            "which also rescores every output for its score (one more "
            f"forward pass), is {_goal_ratio(ratio(ceiling, naive))} the "
            "naive rate here, and the CSV path loses more to its chunks "
            "(see the first goal).",
        )
    )
    value = ratio(default, transformers)
    goals.append(
        Goal(
            "default config >= 2.5x the transformers fp32 batched ceiling",
            _goal_ratio(value),
            _check(value, value is not None and value >= 2.5),
            f"The default engine is {default_name}; its in-process ceiling is "
            f"{_goal_ratio(ratio(ceiling, transformers))} the transformers "
            "fp32 ceiling here, so the service can pass only if the CSV path "
            "keeps close to its own ceiling.",
        )
    )
    warm = results.get("warm") or {}
    value = ratio(warm.get("cold_s"), warm.get("warm_s"))
    goals.append(
        Goal(
            "warm CSV rerun >= 50x faster than cold",
            _goal_ratio(value),
            _check(value, value is not None and value >= 50),
            "The warm run still pays the command's start-up (Python imports, "
            "Redis connection, two passes over the file), which a small "
            "corpus cannot amortise.",
        )
    )
    goals += _latency_goals(results)
    goals += _memory_goals(results)
    return goals


def _latency_goals(results: dict[str, Any]) -> list[Goal]:
    goals = []
    batch = _latency(results, "batch_cached")
    value = None if batch is None else batch["p50_ms"]
    goals.append(
        Goal(
            "/api/batch with 1,000 cached texts < 100 ms (p50)",
            f"{_fmt(value)} ms",
            _check(value, value is not None and value < 100),
            "Every text costs a cache key (SHA-256 over the settings and the "
            "text), a lookup and JSON encoding in one gunicorn thread.",
        )
    )

    hits = _latency(results, "translate_cached")
    value = None if hits is None else hits["p50_ms"]
    goals.append(
        Goal(
            "cached /api/translate p50 < 5 ms",
            f"{_fmt(value)} ms",
            _check(value, value is not None and value < 5),
            "Request parsing, validation, the cache key and the lookup run in "
            "Python per request.",
        )
    )

    micro = results.get("micro_batching") or {}
    value = ratio(micro.get("sequential_s"), micro.get("concurrent_s"))
    goals.append(
        Goal(
            "micro-batching: concurrent single misses >= 4x faster than sequential",
            _goal_ratio(value),
            _check(value, value is not None and value >= 4),
            "The requests reach the worker over a longer time than its "
            "collection windows, so the misses form more than one batch (the "
            "worker log lists each batch). On few CPU cores a batch of a few "
            "texts with beam search costs only a few times less per text than "
            "one text alone, and every request keeps its own task and HTTP "
            "round trip.",
        )
    )

    bulk = _latency(results, "interactive_during_bulk")
    value = None if bulk is None else bulk["p95_ms"] / 1000
    goals.append(
        Goal(
            "uncached /api/translate p95 < 2 s while a CSV job runs",
            f"{_fmt(value, 2)} s",
            _check(value, value is not None and value < 2),
            "The interactive worker is free for single requests, but it shares "
            "the CPU cores with the bulk worker's running chunks, so each "
            "request is translated at a fraction of the machine's speed.",
        )
    )
    return goals


def _memory_goals(results: dict[str, Any]) -> list[Goal]:
    goals = []
    front = [
        row
        for row in results.get("memory", [])
        if row["stack"] == results.get("memory_stack") and row["service"] == "api"
    ]
    cli = results.get("cli_memory")
    if cli:
        front.append(cli)
    if front:
        largest = max(mb(row["rss_kib"]) for row in front)
        torch = any(row.get("torch") for row in front)
        passes = largest < 120 and not torch
        measured = (
            f"{largest:,.1f} MB max RSS, torch {'mapped' if torch else 'not mapped'}"
        )
    else:
        passes, measured = None, "n/a"
    goals.append(
        Goal(
            "API and CLI < 120 MB RSS each, without torch",
            measured,
            passes,
            "The front ends import more than the request path needs.",
        )
    )
    worker = results.get("worker_pss") or {}
    value = ratio(worker.get("pss_b_kib"), worker.get("pss_a_kib"))
    children = worker.get("children_b", 2)
    goals.append(
        Goal(
            f"workers of the default layout ({children} processes) <= 1.3x "
            "the PSS of 1 worker process",
            _goal_ratio(value),
            _check(value, value is not None and value <= 1.3),
            "The default layout runs two Celery workers, each a parent and a "
            "child, and each child loads its own copy of the model: "
            f"{_child_uss(results)} MB of private memory (USS) per child. "
            "CTranslate2 translators cannot be shared across a fork, so one "
            "copy for both would need one process running CTranslate2's "
            "inter_threads, without the prefork pool's per-child recycling, "
            "time limits and isolation of a crashed child.",
        )
    )
    return goals


def _child_uss(results: dict[str, Any]) -> str:
    """Return the mean USS, in MB, of the worker children of the last stack."""
    stacks = [row["stack"] for row in results.get("memory", [])]
    children = [
        row["uss_kib"]
        for row in results.get("memory", [])
        if stacks
        and row["stack"] == stacks[-1]
        and row["service"] in ("worker", "interactive")
        and row["role"] == "celery child"
    ]
    if not children:
        return "n/a"
    return f"{mb(sum(children) / len(children)):,.0f}"


def render_markdown(results: dict[str, Any], chart_name: str | None) -> str:
    """Return the text of ``BENCHMARKS.md`` for a run's results."""
    parts = ["# Benchmarks", ""]
    parts += _intro(results)
    parts += _goals_section(evaluate_goals(results))
    parts += _throughput_section(results, chart_name)
    parts += _cache_section(results)
    parts += _latency_section(results)
    parts += _memory_section(results)
    parts += _method_section(results)
    parts += _machine_section(results)
    return "\n".join(parts).rstrip() + "\n"


def _intro(results: dict[str, Any]) -> list[str]:
    lines = []
    if results.get("quick"):
        sizes = results["sizes"]
        lines += [
            f"> **Quick run** (`--quick`): smaller sets than the full run: "
            f"{sizes['sentences']:,} corpus sentences instead of "
            f"{results['full_sizes']['sentences']:,}, a naive subset of "
            f"{sizes['naive']:,} instead of {results['full_sizes']['naive']:,}, "
            f"CSV tasks of {sizes['csv_chunk']} rows instead of "
            f"{results['full_sizes']['csv_chunk']}, and fewer requests per "
            "latency measurement (see Method). "
            "Small sets favour fixed costs such as start-up, so the ratios "
            "are rough.",
            "",
        ]
    estimate = results.get("full_estimate_s")
    if results.get("quick") and estimate:
        lines += [
            f"Estimated duration of the full run on this machine: about "
            f"{estimate / 60:,.0f} minutes (this run's phases, with the parts "
            "that grow with the sets scaled to the full sizes).",
            "",
        ]
    if results.get("shared_machine"):
        lines += [
            "> **Shared machine**: other work ran on this machine during the "
            "run, so every number is noisy and absolute rates are low. Rerun "
            "on an idle machine before relying on a number; ratios between "
            "rows of one run hold better.",
            "",
        ]
    load = results["machine"]["load_average"][0]
    cores = results["machine"]["cores"]
    if cores and load > cores:
        lines += [
            f"> The 1-minute load average was {load} at the start on "
            f"{cores} cores: other processes competed for the CPU during this "
            "run, so absolute numbers are low and noisy. Ratios between rows "
            "hold better, because every row ran under that load.",
            "",
        ]
    lines += [
        f"Produced by `{results['command']}` on {results['date']} in "
        f"{results['duration_s'] / 60:,.1f} minutes. Every measurement below "
        "comes from that one run, side by side, so the ratios compare numbers "
        "taken under the same machine load. Rerun the command to reproduce "
        "the page; it starts and stops everything it needs on 127.0.0.1.",
        "",
    ]
    return lines


def _goals_section(goals: list[Goal]) -> list[str]:
    rows = []
    for goal in goals:
        met = {True: "met", False: "**not met**", None: "not measured"}[goal.met]
        rows.append([goal.goal, goal.measured, met, "" if goal.met else goal.note])
    return [
        "## Goals",
        "",
        table(["goal", "measured", "result", "gap: likely cause"], rows),
        "",
    ]


def _throughput_section(results: dict[str, Any], chart_name: str | None) -> list[str]:
    names = results.get("row_names", {})
    naive = _rate(throughput_row(results, names.get("naive", "")))
    rows = []
    for row in results.get("throughput", []):
        if row.get("skipped"):
            rows.append(
                [row["name"], row["settings"], "skipped: " + row["skipped"]] + [""] * 5
            )
            continue
        ceiling = throughput_row(results, row.get("ceiling", ""))
        rows.append(
            [
                row["name"],
                row["settings"],
                f"{row['texts']:,}",
                f"{row['target_tokens']:,}",
                _fmt(row["seconds"]),
                _fmt(row["tokens_per_s"]),
                _fmt_ratio(ratio(row["tokens_per_s"], naive)),
                _fmt_ratio(ratio(row["tokens_per_s"], _rate(ceiling))),
            ]
        )
    lines = ["## Throughput", ""]
    if chart_name:
        lines += [f"![Target tokens per second by configuration]({chart_name})", ""]
    lines += [
        table(
            [
                "configuration",
                "settings",
                "texts",
                "target tokens",
                "seconds",
                "target tokens/s",
                "vs naive",
                "vs ceiling",
            ],
            rows,
        ),
        "",
        "Target tokens are the output tokens the model generates, counted per "
        "distinct sentence piece; every engine generates exactly the same "
        "number for the same text (see Method). The naive baseline runs on a "
        'subset, so compare it per target token. "vs ceiling" divides a '
        "service row by the in-process ceiling of the same engine and "
        "settings.",
        "",
    ]
    return lines


def _cache_section(results: dict[str, Any]) -> list[str]:
    warm = results.get("warm")
    if not warm:
        return []
    return [
        "## Cache",
        "",
        table(
            ["CSV run", "rows", "seconds"],
            [
                ["cold cache", f"{warm['rows']:,}", _fmt(warm["cold_s"], 2)],
                [
                    "warm cache (same file again)",
                    f"{warm['rows']:,}",
                    _fmt(warm["warm_s"], 2),
                ],
            ],
        ),
        "",
        f"Cold / warm: {_fmt_ratio(ratio(warm['cold_s'], warm['warm_s']))}. "
        "Both times are the wall time of the whole command, start-up included.",
        "",
    ]


def _latency_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            row["label"],
            f"{row['requests']:,}",
            row["clients"],
            _fmt(row["p50_ms"]),
            _fmt(row["p95_ms"]),
        ]
        for row in results.get("latency", [])
    ]
    lines = [
        "## Latency",
        "",
        table(["measurement", "requests", "clients", "p50 ms", "p95 ms"], rows),
        "",
    ]
    micro = results.get("micro_batching")
    if micro:
        speedup = ratio(micro["sequential_s"], micro["concurrent_s"])
        lines += [
            f"Micro-batching: {micro['requests']} single-sentence misses of "
            f"similar length sent at once took {_fmt(micro['concurrent_s'], 2)} "
            "s; the same texts sent one at a time after clearing the cache "
            f"took {_fmt(micro['sequential_s'], 2)} s "
            f"(ratio {_fmt_ratio(speedup)}).",
            "",
        ]
    return lines


def _memory_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for row in results.get("memory", []):
        rows.append(
            _memory_cells(row["stack"], f"{row['service']}: {row['role']}", row)
        )
    cli = results.get("cli_memory")
    if cli:
        rows.append(
            _memory_cells(cli["stack"], "CSV command (peak while running)", cli)
        )
    lines = [
        "## Memory",
        "",
        table(
            ["stack", "process", "RSS MB", "PSS MB", "USS MB", "maps libtorch"], rows
        ),
        "",
        "Read from `/proc/<pid>/smaps_rollup` after the workers loaded the "
        "model; USS is Private_Clean + Private_Dirty. MB is 10^6 bytes. The "
        "UI has served no browser session, and the CSV command row is the peak "
        "of samples taken every 0.25 s during the cold run.",
        "",
    ]
    worker = results.get("worker_pss")
    if worker:
        lines += [
            "Worker PSS (Celery parents and children): "
            f"{mb(worker['pss_a_kib']):,.1f} MB with {worker['children_a']} "
            f"worker process, {mb(worker['pss_b_kib']):,.1f} MB with "
            f"{worker['children_b']} worker processes in the "
            f"{worker.get('stack_b', 'second stack')}: "
            f"{_fmt_ratio(ratio(worker['pss_b_kib'], worker['pss_a_kib']))}.",
            "",
        ]
    return lines


def _memory_cells(stack: str, label: str, row: dict[str, Any]) -> list[object]:
    torch = {True: "yes", False: "no", None: "n/a"}[row.get("torch")]
    return [
        stack,
        label,
        _fmt(mb(row["rss_kib"])),
        _fmt(mb(row["pss_kib"])),
        _fmt(mb(row["uss_kib"])),
        torch,
    ]


def _method_section(results: dict[str, Any]) -> list[str]:
    corpus = results["corpus"]
    sizes = results["sizes"]
    settings = results["settings"]
    lines = [
        "## Method",
        "",
        f"- Command: `{results['command']}`.",
        f"- Model: a random-weight checkpoint with the exact shape of "
        "Helsinki-NLP/opus-mt-en-de (MarianConfig d_model 512, 6 encoder and "
        "6 decoder layers, 8 heads, feed-forward 2048, 58,101 shared "
        "vocabulary entries, static sinusoidal positions, 512 positions), "
        f"built offline by `bench/model.py` with seed {results['seed']} and "
        "cached under `var/bench/models`.",
        f"- Corpus: {corpus['sentences']:,} English sentences from the "
        "docstrings of Python's standard library (`bench/corpus.py`, digest "
        f"`{corpus['digest']}`), in a fixed order; the naive baseline uses "
        f"{sizes['naive']:,} of them, evenly spaced. Uncached requests use "
        "other sentences of the same source.",
        "- Output length: random weights never stop on their own, so "
        "`BENCH_FORCED_OUTPUT_TOKENS=true` makes every engine generate "
        "exactly the input's token count (end-of-sentence token included) "
        "rounded up to a multiple of 8 tokens for each sentence piece.",
        "- Ceilings run in a fresh process per engine and precision (`ENGINE` "
        "and `PRECISION` set; `auto` resolved as a worker resolves it), load "
        "the model, translate a few sentences to warm up, then time one "
        "`translate_texts_scored` call (`bench/engines.py`). The default "
        f"engine's ceiling translates all {corpus['sentences']:,} sentences; "
        f"the others translate {sizes.get('other_ceilings', corpus['sentences']):,} "
        "of them, evenly spaced. Every engine's generated tokens are counted "
        "from its outputs and checked against the forced length.",
        "- Stacks are started by `./start_services.sh` with a private "
        "`RUN_DIR`, Redis and cache on free ports of 127.0.0.1 and stopped by "
        '`./stop_services.sh`: "1 worker process" with '
        "`INTERACTIVE_WORKERS=0 WORKER_CONCURRENCY=1` (one worker for every "
        'queue), "default layout" with the script\'s defaults (a bulk worker '
        "and an interactive worker). Before timing, a small CSV file and "
        "uncached requests make every worker process load the model. CSV "
        "times are the wall time of `app_batch_celery.py` from start to exit. "
        "The latency rows come from the first stack, the request during a CSV "
        "job from the default layout.",
        f"- Latency sizes: {sizes['cached_requests']} cached requests, "
        f"{sizes['miss_requests']} misses from 1 client, "
        f"{sizes['miss_requests_8']} misses from 8 clients, "
        f"{sizes['batch_repeats']} `/api/batch` calls of 1,000 cached texts "
        f"({sizes['batch_distinct']:,} distinct), {sizes['micro']} "
        "micro-batching misses (sent at once, then one at a time), and "
        f"{sizes['interactive']} interactive requests during a 1,000-row "
        f"CSV job sent with `--chunk-size {sizes['bulk_chunk']}`.",
        "",
        "Settings given to every stack and ceiling on top of the product defaults:",
        "",
        table(["variable", "value"], sorted(settings.items())),
        "",
    ]
    return lines


def _machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    packages = ", ".join(
        f"{name} {version}"
        for name, version in machine["packages"].items()
        if version is not None
    )
    return [
        "## Machine",
        "",
        table(
            ["item", "value"],
            [
                ["CPU", machine["cpu"]],
                ["cores", machine["cores"]],
                ["memory", f"{machine['memory_gib']} GiB"],
                ["OS", f"{machine['os']}, kernel {machine['kernel']}"],
                ["Python", machine["python"]],
                ["packages", packages],
                [
                    "load average at start / end",
                    f"{machine['load_average']} / {results.get('load_average_end')}",
                ],
            ],
        ),
        "",
    ]


def write_chart(results: dict[str, Any], path: Path) -> bool:
    """Draw target tokens/s of every measured configuration as a bar chart.

    Returns False, writing nothing, when no configuration was measured.
    """
    rows = [
        row
        for row in results.get("throughput", [])
        if not row.get("skipped") and row.get("tokens_per_s")
    ]
    if not rows:
        return False

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [row["name"] for row in rows]
    values = [row["tokens_per_s"] for row in rows]
    figure, axes = pyplot.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    bars = axes.barh(labels, values, color="#4c72b0")
    axes.invert_yaxis()
    axes.bar_label(bars, labels=[f"{value:,.1f}" for value in values], padding=3)
    axes.set_xlabel("target tokens per second (higher is better)")
    title = "Throughput by configuration"
    if results.get("quick"):
        title += " (quick run, smaller sets)"
    axes.set_title(title)
    axes.margins(x=0.15)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True

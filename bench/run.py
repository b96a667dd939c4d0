"""Run the whole benchmark and write BENCHMARKS.md and its chart.

Usage, from the repository root with the project's virtual environment::

    python bench/run.py            # the full run: 3,000 sentences
    python bench/run.py --quick    # smaller sets: 48 sentences, fewer requests
    python bench/run.py --torch-threads 1 --shared-machine   # a busy machine

Every server binds 127.0.0.1 on a free port, and every process the run
starts is stopped on the way out, after an error or Ctrl-C too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on the path instead of the root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime
import importlib.util
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from bench import service
from bench.ceiling import expected_target_tokens, run_measurement
from bench.corpus import build_corpus, corpus_digest
from bench.machine import describe_machine, load_average
from bench.model import build_bench_model
from bench.report import render_markdown, write_chart
from bench.scenarios import (
    BATCH_TEXTS,
    CSV_DEFAULT_ROW,
    CSV_ONE_ROW,
    DEFAULT_LAYOUT,
    ONE_PROCESS,
    Context,
    default_layout_stack,
    one_process_stack,
)
from bench.stats import rate
from bench.timing import estimate_full_seconds, phase
from core.config import PROJECT_ROOT
from tests.helpers import SERVICE_ENV_VARS

logger = logging.getLogger("bench.run")

# The cold CSV runs translate all "sentences", and so does the ceiling of the
# default engine, because the goal compares them. The other ceilings are
# compared per token, so they translate "other_ceilings" of them, evenly spaced.
# csv_chunk is the CSV command's --chunk-size in the timed runs. The full run
# uses the CHUNK_SIZE default of 64; the quick run uses 12, so that its 48
# rows still make several tasks for two worker processes to share.
FULL_SIZES = {
    "sentences": 3000,
    "other_ceilings": 1000,
    "csv_chunk": 64,
    "naive": 100,
    "cached_requests": 200,
    "miss_requests": 20,
    "miss_requests_8": 40,
    "batch_repeats": 10,
    "micro": 16,
    "interactive": 10,
    "bulk_chunk": 64,
    "bulk_rows": 1000,
}
QUICK_SIZES = {
    "sentences": 48,
    "other_ceilings": 48,
    "csv_chunk": 12,
    "naive": 6,
    "cached_requests": 50,
    "miss_requests": 3,
    "miss_requests_8": 8,
    "batch_repeats": 3,
    "micro": 8,
    "interactive": 3,
    "bulk_chunk": 8,
    "bulk_rows": 1000,
}
# Engine and precision pairs measured as in-process ceilings, through the
# ENGINE and PRECISION settings. A pair this checkout cannot run is skipped.
ENGINE_CONFIGS = (
    ("transformers", "fp32"),
    ("transformers", "int8"),
    ("ctranslate2", "fp32"),
    ("ctranslate2", "int8"),
)
# start_services.sh's default INTERACTIVE_WORKERS, a setting of that script
# only: one interactive worker process beside the bulk worker.
DEFAULT_INTERACTIVE_WORKERS = 1
SEED = 0
MODEL = "opus-mt-en-de"
NAIVE_ROW = "naive: transformers, 1 text per generate"


# Packages of requirements-dev.txt, not requirements.txt, that the benchmark
# imports: matplotlib draws the chart.
DEV_PACKAGES = ("matplotlib",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement, then write the page, the chart and the JSON."""
    parser = argparse.ArgumentParser(
        description="Measure throughput, latency and memory; write BENCHMARKS.md."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="use smaller sets (48 sentences, fewer requests); marked on the page",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=PROJECT_ROOT / "BENCHMARKS.md",
        help="Markdown page to write (default BENCHMARKS.md at the root)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=PROJECT_ROOT / "var" / "bench",
        help="folder for the model, stacks and logs (default var/bench)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        metavar="N",
        help="TORCH_THREADS for every worker and ceiling (default 0, torch's own "
        "default); 1 avoids oversubscribing a machine that other jobs share",
    )
    parser.add_argument(
        "--shared-machine",
        action="store_true",
        help="mark the page as measured while other work ran on this machine, "
        "so its numbers are noisy",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the page and chart from the results.json "
        "of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.torch_threads < 0:
        parser.error(f"--torch-threads {args.torch_threads} is negative; use 0 or more")
    # Checked before measuring, so a missing package cannot end a long run.
    missing = [name for name in DEV_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(
            f"{', '.join(missing)} is not installed. Install the development "
            "requirements with: .venv/bin/pip install -r requirements-dev.txt"
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _interrupt)

    command = "python bench/run.py" + (" --quick" if args.quick else "")
    if args.torch_threads:
        command += f" --torch-threads {args.torch_threads}"
    if args.shared_machine:
        command += " --shared-machine"
    settings = {**service.BENCH_SETTINGS, "TORCH_THREADS": str(args.torch_threads)}
    if args.from_results:
        results = json.loads(args.from_results.read_text())
    else:
        started = time.monotonic()
        try:
            results = run(args.quick, args.work_dir.resolve(), command, settings)
        except KeyboardInterrupt:
            logger.error("Interrupted; every started process was stopped.")
            return 130
        results["shared_machine"] = args.shared_machine
        results["duration_s"] = time.monotonic() - started
        results["full_estimate_s"] = estimate_full_seconds(
            results["duration_s"], results["phases"]
        )
        results["load_average_end"] = load_average()
        results_path = args.work_dir / "results.json"
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    chart = args.output.parent / "bench" / "throughput.png"
    chart_name = None
    if write_chart(results, chart):
        chart_name = os.path.relpath(chart, args.output.parent)
    args.output.write_text(render_markdown(results, chart_name))
    print(f"Wrote {args.output}" + (f" and {chart}" if chart_name else ""))
    if results["quick"]:
        print("This was a quick run with smaller sets; the page says so.")
    if results.get("full_estimate_s"):
        print(
            f"This run took {results['duration_s'] / 60:.1f} min; the full run "
            f"would take about {results['full_estimate_s'] / 60:.0f} min here "
            "(an estimate from this run's phases)."
        )
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(
    quick: bool, work_dir: Path, command: str, settings: dict[str, str]
) -> dict[str, Any]:
    """Collect every measurement into one JSON-compatible dict.

    ``settings`` are the environment variables every stack and ceiling gets
    on top of the product defaults.
    """
    sizes = QUICK_SIZES if quick else FULL_SIZES
    corpus_all = build_corpus(FULL_SIZES["sentences"])
    measured = evenly_spaced(corpus_all, sizes["sentences"])
    chosen = set(measured)
    reserve = [sentence for sentence in corpus_all if sentence not in chosen]
    model_dir = build_bench_model(work_dir / "models", corpus_all, seed=SEED).parent
    env = _base_env(model_dir, settings)
    # Ceilings keep their CTranslate2 conversions beside the benchmark model.
    env["CT2_CACHE_DIR"] = str(work_dir / "ct2-models")
    for folder in ("logs", "csv"):
        (work_dir / folder).mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {
        "quick": quick,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": SEED,
        "machine": describe_machine(),
        "sizes": {**sizes, "batch_distinct": min(BATCH_TEXTS, len(measured))},
        "full_sizes": FULL_SIZES,
        "settings": settings,
        "corpus": {"sentences": len(measured), "digest": corpus_digest(measured)},
        "row_names": {"naive": NAIVE_ROW, "csv_one": CSV_ONE_ROW},
        "throughput": [],
        "latency": [],
        "memory": [],
    }

    with phase(results, "naive baseline") as current:
        naive_texts = evenly_spaced(measured, sizes["naive"])
        naive = run_measurement(
            {
                "kind": "naive",
                "texts": naive_texts,
                "model_dir": str(model_dir / MODEL),
            },
            env,
            work_dir / "logs" / "naive.log",
        )
        current.scale(naive["seconds"], FULL_SIZES["naive"] / sizes["naive"])
    results["throughput"].append(
        _throughput(NAIVE_ROW, "num_beams=4, batch of 1, no cache", naive)
    )
    _run_ceilings(results, env, measured, sizes, work_dir / "logs")

    context = Context(
        results=results,
        sizes=sizes,
        work_dir=work_dir,
        model_dir=model_dir,
        measured=measured,
        reserve=reserve,
        target_tokens=_corpus_target_tokens(model_dir, measured),
        corpus_csv=work_dir / "csv" / "corpus.csv",
        uncached=iter(reserve),
    )
    service.write_csv(context.corpus_csv, measured)
    with phase(results, f"stack: {ONE_PROCESS}") as current:
        one = one_process_stack(context, current)
    processes = _default_worker_processes(env)
    with phase(results, f"stack: {DEFAULT_LAYOUT}") as current:
        default = default_layout_stack(context, processes, current)

    pss = {
        label: sum(
            row["pss_kib"]
            for row in results["memory"]
            if row["stack"] == label and row["service"] in service.WORKER_SERVICES
        )
        for label in (one, default)
    }
    results["worker_pss"] = {
        "children_a": 1,
        "pss_a_kib": pss[one],
        "children_b": processes,
        "pss_b_kib": pss[default],
        "stack_b": default,
    }
    results["row_names"]["csv_default"] = CSV_DEFAULT_ROW
    return results


def evenly_spaced(items: Sequence[str], count: int) -> list[str]:
    """Return ``count`` items spread evenly over ``items``, in order."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def _base_env(model_dir: Path, settings: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SERVICE_ENV_VARS
    }
    env.update(settings)
    env.update(
        {
            "MODEL_DIR": str(model_dir),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


def _throughput(name: str, settings: str, result: dict[str, Any]) -> dict[str, Any]:
    if result.get("skipped"):
        return {"name": name, "settings": settings, "skipped": result["skipped"]}
    if result["target_tokens"] != result["expected_target_tokens"]:
        logger.warning(
            "%s generated %s target tokens, but the forced length gives %s",
            name,
            result["target_tokens"],
            result["expected_target_tokens"],
        )
    return {
        "name": name,
        "settings": settings,
        "texts": result["texts"],
        "target_tokens": result["target_tokens"],
        "seconds": result["seconds"],
        "tokens_per_s": rate(result["target_tokens"], result["seconds"]),
    }


def _run_ceilings(
    results: dict[str, Any],
    env: dict[str, str],
    texts: list[str],
    sizes: dict[str, int],
    logs: Path,
) -> None:
    default = _default_engine(env)
    names = results["row_names"]
    configs = list(ENGINE_CONFIGS)
    if default not in configs:
        configs.append(default)
    subset = evenly_spaced(texts, sizes["other_ceilings"])
    for engine, precision in configs:
        name = f"ceiling: {engine} {precision}"
        chosen, key = (
            (texts, "sentences")
            if (engine, precision) == default
            else (
                subset,
                "other_ceilings",
            )
        )
        result = _measure_in_process(
            results,
            name,
            {"kind": "engine", "texts": chosen},
            dict(env, ENGINE=engine, PRECISION=precision),
            logs / f"ceiling-{engine}-{precision}.log",
            FULL_SIZES[key] / sizes[key],
        )
        settings = f"ENGINE={engine} PRECISION={precision}, one call, all texts"
        if (engine, precision) == default:
            settings += " (the default)"
        results["throughput"].append(_throughput(name, settings, result))
        if (engine, precision) == ("transformers", "fp32"):
            names["transformers"] = name
        if (engine, precision) == default:
            names["default_ceiling"] = name
    _run_chunked_ceiling(results, env, texts, sizes, logs, default)
    results["default_engine"] = {"engine": default[0], "precision": default[1]}


def _measure_in_process(
    results: dict[str, Any],
    name: str,
    spec: dict[str, Any],
    env: dict[str, str],
    log: Path,
    full_scale: float,
) -> dict[str, Any]:
    """Run one ``bench.ceiling`` measurement as a timed phase and return it.

    ``full_scale`` is how many times more texts the full run measures, for
    the estimate of its duration.
    """
    logger.info("Measuring the in-process %s on %d texts", name, len(spec["texts"]))
    with phase(results, name) as current:
        result = run_measurement(spec, env, log)
        if not result.get("skipped"):
            current.scale(result["seconds"], full_scale)
    return result


def _run_chunked_ceiling(
    results: dict[str, Any],
    env: dict[str, str],
    texts: list[str],
    sizes: dict[str, int],
    logs: Path,
    default: tuple[str, str],
) -> None:
    """Measure the default engine in-process on the tasks of the CSV command.

    This row against the one-call ceiling gives the cost of splitting the
    texts into tasks. The CSV service rows against this row give the cost of
    the service itself.
    """
    engine, precision = default
    name = f"ceiling: {engine} {precision}, CSV tasks"
    chunk = sizes["csv_chunk"]
    result = _measure_in_process(
        results,
        name,
        {"kind": "engine", "texts": texts, "csv_chunk": chunk},
        dict(env, ENGINE=engine, PRECISION=precision),
        logs / f"ceiling-{engine}-{precision}-tasks.log",
        FULL_SIZES["sentences"] / sizes["sentences"],
    )
    settings = (
        f"ENGINE={engine} PRECISION={precision}, one call per task of "
        f"{chunk} rows as the CSV command sends them"
    )
    row = _throughput(name, settings, result)
    row["ceiling"] = results["row_names"]["default_ceiling"]
    results["throughput"].append(row)
    results["row_names"]["default_chunked"] = name


def _default_engine(env: dict[str, str]) -> tuple[str, str]:
    """Return the default engine of this checkout and the precision it runs at.

    ``PRECISION=auto`` is resolved for this machine, as a worker resolves it.
    """
    clean = {k: v for k, v in env.items() if k not in ("ENGINE", "PRECISION")}
    resolved = "__import__('core.models', fromlist=['_'])._resolve_device(s)[1]"
    engine, precision = _settings_values(clean, f"s.engine, {resolved}").split()
    return engine, precision


def _default_worker_processes(env: dict[str, str]) -> int:
    """Return the worker processes that start_services.sh starts by default.

    The bulk worker has WORKER_CONCURRENCY children and the interactive
    worker INTERACTIVE_WORKERS (default 1), the same defaults as the script.
    """
    clean = {
        k: v
        for k, v in env.items()
        if k not in ("WORKER_CONCURRENCY", "INTERACTIVE_WORKERS")
    }
    return int(_settings_values(clean, "s.worker_concurrency")) + (
        DEFAULT_INTERACTIVE_WORKERS
    )


def _settings_values(env: dict[str, str], expression: str) -> str:
    """Return ``expression`` over the settings ``s`` read in a fresh process.

    A fresh process reads ``env`` exactly as a worker would.
    """
    code = (
        "from core.config import load_settings; "
        f"s = load_settings(); print({expression})"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _corpus_target_tokens(model_dir: Path, texts: list[str]) -> int:
    from transformers import MarianTokenizer

    tokenizer = MarianTokenizer.from_pretrained(model_dir / MODEL)
    return expected_target_tokens(tokenizer, texts)


if __name__ == "__main__":
    raise SystemExit(main())

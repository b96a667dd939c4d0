"""In-process throughput: the naive baseline and the engine ceilings.

Each measurement runs in a fresh process (``python -m bench.ceiling SPEC``)
so one engine's threads, allocations and caches never affect the next. The
process reads its settings from the environment, like a worker, and writes
one JSON object to stdout.

- ``naive``: transformers alone, one ``generate`` call per text, beam 4, no
  cache and no batching, each output forced to the benchmark length.
- ``engine``: ``bench.engines.measure_throughput``, the project's own
  translator (what the workers call) translating the whole corpus in one
  call, so it sorts and batches every sentence at once, with the engine and
  precision that ``ENGINE`` and ``PRECISION`` select.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.engines import WARMUP_TEXTS, forced_length
from core.config import PROJECT_ROOT

logger = logging.getLogger(__name__)

NUM_BEAMS_NAIVE = 4
MEASUREMENT_TIMEOUT = 7200.0


def expected_target_tokens(tokenizer: Any, texts: Sequence[str]) -> int:
    """Count the output tokens the translator generates for ``texts``.

    The texts are split into pieces as ``core.translator`` splits them, each
    distinct piece is counted once, and each gets ``forced_length`` tokens.
    """
    from core.segmentation import split_text
    from core.translator import EOS_MARGIN

    max_positions = int(tokenizer.model_max_length)
    limit = max_positions - EOS_MARGIN

    def count_tokens(text: str) -> int:
        return len(tokenizer.tokenize(text))

    pieces: dict[str, None] = {}
    for text in texts:
        for segment in split_text(text, "en", count_tokens, limit):
            if segment.translate:
                pieces.setdefault(segment.text, None)
    lengths = [len(ids) for ids in tokenizer(list(pieces))["input_ids"]]
    return sum(forced_length(length, max_positions) for length in lengths)


def measure_naive(model_dir: Path, texts: Sequence[str]) -> dict[str, Any]:
    """Translate each text with its own ``generate`` call and time it all."""
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    from core.config import get_settings

    # The same thread count as the workers, from TORCH_THREADS.
    if get_settings().torch_threads > 0:
        torch.set_num_threads(get_settings().torch_threads)
    started = time.perf_counter()
    tokenizer = MarianTokenizer.from_pretrained(model_dir)
    model = MarianMTModel.from_pretrained(model_dir).eval()
    load_seconds = time.perf_counter() - started
    max_positions = int(model.config.max_position_embeddings)

    def translate(text: str) -> int:
        inputs = tokenizer([text], return_tensors="pt")
        length = forced_length(inputs["input_ids"].shape[1], max_positions)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                num_beams=NUM_BEAMS_NAIVE,
                max_new_tokens=length,
                min_new_tokens=length,
            )
        tokenizer.batch_decode(output, skip_special_tokens=True)
        # The first position is the decoder start token, not an output token.
        return int(output.shape[1]) - 1

    for text in texts[:WARMUP_TEXTS]:
        translate(text)
    started = time.perf_counter()
    tokens = sum(translate(text) for text in texts)
    seconds = time.perf_counter() - started
    return {
        "kind": "naive",
        "texts": len(texts),
        "seconds": seconds,
        "target_tokens": tokens,
        "expected_target_tokens": expected_target_tokens(tokenizer, texts),
        "load_seconds": load_seconds,
        "torch_threads": torch.get_num_threads(),
        "num_beams": NUM_BEAMS_NAIVE,
    }


def unavailable_reason(engine: str) -> str | None:
    """Return why this checkout cannot run ``engine`` here, or None.

    The settings are read from this process's environment, as a worker
    reads them, so a value the checkout rejects is reported, not raised.
    """
    from core.config import ConfigError, load_settings

    if engine == "ctranslate2" and importlib.util.find_spec("ctranslate2") is None:
        return "ctranslate2 is not installed"
    try:
        load_settings()
    except ConfigError as error:
        return f"this checkout rejects the settings: {error}"
    return None


def measure_engine(
    texts: Sequence[str], engine: str, chunk_size: int = 0
) -> dict[str, Any]:
    """Time the project's translator over all texts in one batched call.

    With ``chunk_size``, time one call per task that the CSV command sends
    with ``--chunk-size`` of that many rows.

    Returns ``{"skipped": reason}`` when ``unavailable_reason`` gives one or
    the engine cannot run the precision on this device.
    """
    reason = unavailable_reason(engine)
    if reason is not None:
        return {"kind": "engine", "skipped": reason}

    from bench.engines import measure_throughput
    from core import models
    from core.config import get_settings
    from core.errors import ModelNotAvailable

    settings = get_settings()
    started = time.perf_counter()
    try:
        loaded = models.load_model("en", "de")
    except ModelNotAvailable as error:
        return {"kind": "engine", "skipped": str(error)}
    load_seconds = time.perf_counter() - started
    result = measure_throughput(loaded, texts, runs=1, chunk_size=chunk_size)
    return {
        "kind": "engine",
        "texts": len(texts),
        "seconds": result.seconds[0],
        "cpu_seconds": result.cpu_seconds[0],
        "target_tokens": result.target_tokens,
        "expected_target_tokens": expected_target_tokens(loaded.tokenizer, texts),
        "load_seconds": load_seconds,
        "engine": loaded.engine,
        "device": loaded.device,
        "precision": loaded.precision,
        "num_beams": settings.num_beams,
        "torch_threads": settings.torch_threads,
    }


def run_measurement(
    spec: dict[str, Any], env: dict[str, str], log: Path
) -> dict[str, Any]:
    """Run one measurement in a fresh ``python -m bench.ceiling`` process.

    ``spec`` is the JSON that ``main`` reads; the process's log goes to
    ``log``. The process is killed if it is still running on the way out.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        spec_path = Path(handle.name)
    try:
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.ceiling", str(spec_path)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            try:
                output, _ = process.communicate(timeout=MEASUREMENT_TIMEOUT)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        spec_path.unlink()
    if process.returncode != 0:
        raise RuntimeError(
            f"bench.ceiling failed with status {process.returncode}; see {log}."
        )
    return dict(json.loads(output.strip().splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one measurement described by a JSON file and print its result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="JSON file: kind, texts, model_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    spec = json.loads(args.spec.read_text())
    texts = list(spec["texts"])
    if spec["kind"] == "naive":
        result = measure_naive(Path(spec["model_dir"]), texts)
    elif spec["kind"] == "engine":
        result = measure_engine(
            texts, os.environ.get("ENGINE", ""), int(spec.get("csv_chunk", 0))
        )
    else:
        parser.error(f"spec kind {spec['kind']!r} is unknown; use naive or engine")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

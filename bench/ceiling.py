"""In-process throughput: the naive baseline and the engine ceilings.

Each measurement runs in a fresh process (``python -m bench.ceiling SPEC``)
so one engine's threads, allocations and caches never affect the next. The
process reads its settings from the environment, like a worker, and writes
one JSON object to stdout.

- ``naive``: transformers alone, one ``generate`` call per text, beam 4, no
  cache and no batching, each output forced to the benchmark length.
- ``engine``: the project's own code (``core.models.load_model`` and
  ``core.translator.translate_texts_scored``, which the workers call)
  translating the whole corpus in one call, so it sorts and batches every
  sentence at once.
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

from core.config import PROJECT_ROOT

logger = logging.getLogger(__name__)

NUM_BEAMS_NAIVE = 4
# Texts translated before the clock starts, so one-time costs (first
# allocation, thread pool start) are not measured.
WARMUP_TEXTS = 2
MEASUREMENT_TIMEOUT = 7200.0


def forced_length(input_tokens: int, max_positions: int) -> int:
    """Return the benchmark output length of an input of ``input_tokens``.

    This is the rule ``BENCH_FORCED_OUTPUT_TOKENS`` applies in
    ``core.translator``: the input's token count, end-of-sentence token
    included, rounded up to a multiple of 8, within the position limit.
    """
    from core.translator import length_bucket

    return min(max_positions, length_bucket(input_tokens))


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


def unavailable_reason(engine: str, compute_type: str) -> str | None:
    """Return why this checkout cannot run an engine and precision, or None.

    ``engine`` and ``compute_type`` are the values of ``ENGINE`` and
    ``COMPUTE_TYPE`` in this process's environment, empty when unset.
    """
    from core.config import ConfigError, load_settings

    if engine == "ctranslate2" and importlib.util.find_spec("ctranslate2") is None:
        return "ctranslate2 is not installed"
    try:
        settings = load_settings()
    except ConfigError as error:
        return f"this checkout rejects the settings: {error}"
    if compute_type not in ("", "float32") and not hasattr(settings, "compute_type"):
        return "COMPUTE_TYPE is not a setting of this checkout"
    return None


def measure_engine(
    texts: Sequence[str], engine: str, compute_type: str
) -> dict[str, Any]:
    """Translate all texts in one batched call of the project's translator.

    Returns ``{"skipped": reason}`` when ``unavailable_reason`` gives one.
    """
    reason = unavailable_reason(engine, compute_type)
    if reason is not None:
        return {"kind": "engine", "skipped": reason}

    from core import models
    from core.config import get_settings
    from core.translator import translate_texts_scored

    settings = get_settings()
    started = time.perf_counter()
    loaded = models.load_model("en", "de")
    load_seconds = time.perf_counter() - started
    counter = _count_generated_tokens(loaded)

    translate_texts_scored(loaded, list(texts[:WARMUP_TEXTS]), "en")
    counter["tokens"] = 0
    started = time.perf_counter()
    translate_texts_scored(loaded, list(texts), "en")
    seconds = time.perf_counter() - started

    result = {
        "kind": "engine",
        "texts": len(texts),
        "seconds": seconds,
        "target_tokens": counter["tokens"] if counter["wrapped"] else None,
        "expected_target_tokens": expected_target_tokens(loaded.tokenizer, texts),
        "load_seconds": load_seconds,
        "engine": settings.engine,
        "compute_type": getattr(settings, "compute_type", None),
        "device": loaded.device,
        "precision": loaded.precision,
        "num_beams": settings.num_beams,
        "torch_threads": _torch_threads(),
    }
    return result


def _count_generated_tokens(loaded: Any) -> dict[str, int]:
    """Wrap the model's ``generate`` to count the output tokens it returns.

    Only a transformers model has ``generate``; for other engines the count
    stays unset and the report uses the expected count instead.
    """
    counter = {"tokens": 0, "wrapped": 0}
    generate = getattr(loaded.model, "generate", None)
    if generate is None:
        return counter

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        sequences = generate(*args, **kwargs)
        counter["tokens"] += int(sequences.shape[0]) * (int(sequences.shape[1]) - 1)
        return sequences

    loaded.model.generate = counting_generate
    counter["wrapped"] = 1
    return counter


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return int(torch.get_num_threads())


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
            texts, os.environ.get("ENGINE", ""), os.environ.get("COMPUTE_TYPE", "")
        )
    else:
        parser.error(f"spec kind {spec['kind']!r} is unknown; use naive or engine")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

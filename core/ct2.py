"""The CTranslate2 engine: converted-model cache, loading and generation.

A MarianMT checkpoint is converted with CTranslate2's transformers converter
once per checkpoint fingerprint, file modification times and quantization,
into a folder under ``CT2_CACHE_DIR``. The converter runs in a child process
(``python -m core.ct2``), because it loads torch, which the translating
process never needs. It writes to a staging folder, which is renamed into
place, so processes converting the same checkpoint at
once never read a half-written model. A ``ctranslate2.Translator`` must be
created in the process that uses it, because its thread pools do not survive
a fork. ctranslate2 is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import PROJECT_ROOT, Settings
from core.errors import ModelNotAvailable

logger = logging.getLogger(__name__)

CT2_CACHE_FOLDER = "ct2-models"
# An opus-mt conversion takes seconds; this only stops a hung converter.
CONVERT_TIMEOUT = 600
# Written last into a converted folder. A folder without it is incomplete.
STAMP_NAME = "conversion.json"
# The compute type that CTranslate2 uses for each PRECISION value, and the
# quantization that the converted files are stored in for it.
COMPUTE_TYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": "int8",
    "int8_fp16": "int8_float16",
}


@dataclass(frozen=True)
class Ct2Model:
    """A loaded CTranslate2 translator with the decoding rules of its checkpoint.

    ``forced_eos`` mirrors transformers' ``forced_eos_token_id``: when the
    output reaches its token limit, the last token is replaced by EOS.
    """

    translator: Any
    folder: Path
    eos_token: str
    forced_eos: bool


@dataclass(frozen=True)
class Ct2Output:
    """One generated output: its token ids and, when scored, their log-probability.

    ``generated_tokens`` counts the output tokens including a final EOS.
    ``scored_tokens`` is 0 when the output was not scored.
    """

    token_ids: list[int]
    generated_tokens: int
    log_probability: float
    scored_tokens: int


def cache_root(settings: Settings) -> Path:
    """Return ``CT2_CACHE_DIR``, by default ``ct2-models`` beside ``CACHE_DIR``."""
    if settings.ct2_cache_dir is not None:
        return settings.ct2_cache_dir
    return settings.cache_dir.parent / CT2_CACHE_FOLDER


def converted_folder(
    root: Path, checkpoint: Path, name: str, fingerprint: str, quantization: str
) -> Path:
    """Return the folder of one checkpoint's conversion to one quantization.

    The checkpoint fingerprint hashes only ``config.json`` and the names and
    sizes of the other files, so the name also carries a digest of the
    files' modification times: weights replaced by others of the same size
    then get a new conversion.
    """
    digest = _files_digest(checkpoint)
    return root / f"{name}-{fingerprint}-{digest}-{quantization}"


def _files_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(checkpoint.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:8]


def convert_checkpoint(
    checkpoint: Path,
    name: str,
    fingerprint: str,
    quantization: str,
    root: Path,
) -> Path:
    """Return the converted model folder of a checkpoint, converting it if missing.

    A complete folder for the same checkpoint files and quantization is
    reused. Otherwise the checkpoint is converted into a staging folder
    beside the target and renamed into place. When another process renamed
    its own conversion first, that one is kept and this one is deleted.
    """
    folder = converted_folder(root, checkpoint, name, fingerprint, quantization)
    stamp = {"folder": folder.name, "quantization": quantization}
    if _is_complete(folder, stamp):
        logger.debug("Reusing converted model %s", folder)
        return folder

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    started = time.perf_counter()
    try:
        _run_converter(checkpoint, staging / "model", quantization)
        (staging / "model" / STAMP_NAME).write_text(json.dumps(stamp) + "\n")
        _move_into_place(staging / "model", folder, stamp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "Converted %s (%s) to CTranslate2 %s at %s in %.1f s",
        name,
        fingerprint,
        quantization,
        folder,
        time.perf_counter() - started,
    )
    return folder


def _is_complete(folder: Path, stamp: dict[str, str]) -> bool:
    try:
        written = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return bool(written == stamp and (folder / "model.bin").is_file())


def _run_converter(checkpoint: Path, output: Path, quantization: str) -> None:
    """Convert in a child process, so torch never loads into the worker.

    The converter reads the checkpoint with transformers and torch, which
    cost a process about 330 MB that the translating process never needs.
    """
    command = [
        sys.executable,
        "-m",
        "core.ct2",
        str(checkpoint),
        str(output),
        quantization,
    ]
    try:
        subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT,
        )
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise ModelNotAvailable(
            f"Converting {str(checkpoint)!r} to CTranslate2 failed: {detail[0]} "
            "Check the checkpoint with 'python -m core.models verify', or set "
            "ENGINE=transformers."
        ) from None
    except subprocess.TimeoutExpired:
        raise ModelNotAvailable(
            f"Converting {str(checkpoint)!r} to CTranslate2 took over "
            f"{CONVERT_TIMEOUT} s and was stopped. Retry, or set ENGINE=transformers."
        ) from None


def _convert_here(checkpoint: Path, output: Path, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # The converter loads the checkpoint and its tokenizer with transformers,
    # and copies the target vocabulary from the tokenizer.
    converter = TransformersConverter(str(checkpoint), low_cpu_mem_usage=True)
    converter.convert(str(output), quantization=quantization, force=True)


def _move_into_place(staged: Path, folder: Path, stamp: dict[str, str]) -> None:
    if folder.exists() and not _is_complete(folder, stamp):
        # A folder without a matching stamp was not written by this function,
        # which renames only complete folders. Readers ignore it, so it goes.
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(staged, folder)
    except OSError:
        if not _is_complete(folder, stamp):
            raise
        logger.debug("Another process converted %s first, so its copy is kept", folder)


def cuda_available() -> bool:
    """Return True when CTranslate2 finds a CUDA device.

    This initialises CUDA in the calling process, so only a process that
    will not fork afterwards may call it.
    """
    import ctranslate2

    return bool(ctranslate2.get_cuda_device_count() > 0)


def load_translator(
    folder: Path,
    device: str,
    compute_type: str,
    threads: int,
    forced_eos: bool,
) -> Ct2Model:
    """Create a translator for a converted folder in this process.

    ``threads`` is the number of threads of one translation, 0 for
    CTranslate2's default.
    """
    import ctranslate2

    translator = ctranslate2.Translator(
        str(folder),
        device=device,
        compute_type=compute_type,
        inter_threads=1,
        intra_threads=threads,
    )
    config = json.loads((folder / "config.json").read_text())
    return Ct2Model(translator, folder, str(config["eos_token"]), forced_eos)


def generate(
    model: Ct2Model,
    tokenizer: Any,
    source_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    num_beams: int,
    no_repeat_ngram_size: int,
    repetition_penalty: float,
    scored: bool,
) -> list[Ct2Output]:
    """Generate one output per source and optionally score each one.

    ``source_ids`` are the tokenizer's ids, ending with EOS. Token limits
    count the EOS, as transformers' ``max_new_tokens`` does. Scores are
    teacher-forced log-probabilities from ``score_batch``, so decoding
    penalties do not change them.
    """
    sources = [tokenizer.convert_ids_to_tokens(list(ids)) for ids in source_ids]
    # With a forced EOS, transformers generates max_new_tokens - 1 tokens of
    # its own and then EOS, so the decoder stops one step early here.
    # NOTE: with beam search, hypotheses that end with EOS before the limit
    # are ranked differently than in transformers, so the outputs can differ.
    limit = max_new_tokens - 1 if model.forced_eos else max_new_tokens
    if limit < 1:
        hypotheses = [[model.eos_token] for _ in sources]
    else:
        results = model.translator.translate_batch(
            sources,
            beam_size=num_beams,
            max_decoding_length=limit,
            min_decoding_length=min(min_new_tokens, limit),
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            return_end_token=True,
        )
        hypotheses = [_with_end(result.hypotheses[0], model) for result in results]

    sums = [0.0] * len(hypotheses)
    counts = [0] * len(hypotheses)
    if scored:
        sums, counts = _score(model, sources, hypotheses)
    return [
        Ct2Output(
            token_ids=list(tokenizer.convert_tokens_to_ids(tokens)),
            generated_tokens=len(tokens),
            log_probability=total,
            scored_tokens=count,
        )
        for tokens, total, count in zip(hypotheses, sums, counts, strict=True)
    ]


def _with_end(tokens: list[str], model: Ct2Model) -> list[str]:
    if model.forced_eos and tokens[-1:] != [model.eos_token]:
        return [*tokens, model.eos_token]
    return list(tokens)


def _score(
    model: Ct2Model, sources: list[list[str]], hypotheses: list[list[str]]
) -> tuple[list[float], list[int]]:
    """Sum the log-probability of each output's tokens up to its first EOS."""
    targets = []
    ends = []
    for tokens in hypotheses:
        ended = model.eos_token in tokens
        # score_batch appends EOS to every target and scores it too.
        cut = tokens.index(model.eos_token) if ended else len(tokens)
        targets.append(tokens[:cut])
        ends.append(ended)
    results = model.translator.score_batch(sources, targets)

    sums = []
    counts = []
    for result, ended in zip(results, ends, strict=True):
        log_probs = list(result.log_probs)
        if not ended:
            # An output cut at its limit without EOS is scored without it.
            log_probs = log_probs[:-1]
        sums.append(float(sum(log_probs)))
        counts.append(len(log_probs))
    return sums, counts


if __name__ == "__main__":
    # python -m core.ct2 CHECKPOINT OUTPUT QUANTIZATION, run by _run_converter.
    _convert_here(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

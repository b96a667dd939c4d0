"""Model registry: served pairs, checkpoint lookup, fingerprints and loading.

Checkpoints are Helsinki-NLP opus-mt MarianMT folders named
``opus-mt-SRC-TGT``, found under ``MODEL_DIR`` or in the Hugging Face cache.
Multi-target checkpoints in ``MODEL_DIR`` (``opus-mt-en-ROMANCE``,
``opus-mt-en-mul``, ``opus-mt-tc-big-en-romance``) serve one pair per
``>>xx<<`` target token in their vocabulary. A pair with no checkpoint may
still be served through English in two hops (see ``resolve_route``).
Importing this module stays light: torch, transformers and huggingface_hub
are imported inside the functions that need them, so the API and command-line
processes can resolve pairs without loading any of them.

Run ``python -m core.models --help`` to list, download, verify or remove
checkpoints.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

from core.config import DEFAULT_PAIRS, Settings, get_settings
from core.errors import ModelNotAvailable, ServiceError, UnsupportedLanguagePair
from core.languages import base_language, match_pair, normalize_code, parse_pair

logger = logging.getLogger(__name__)

_process_broken = False
# Set in Celery worker children: a broken load ends the process, with this
# status, before the task can record a failure, so that
# task_reject_on_worker_lost hands the task to a fresh child.
exit_on_broken_load = False
EXIT_BROKEN_LOAD = 70

HUB_ORGANIZATION = "Helsinki-NLP"
CHECKPOINT_PREFIX = "opus-mt-"

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
# MarianConfig's default, for a config.json that leaves the field out.
DEFAULT_MAX_POSITIONS = 1024
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")
REQUIRED_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")

# Files of an opus-mt hub repository that MarianTokenizer and MarianMTModel
# read. Many of the repositories also contain TensorFlow and Rust weights,
# which are not downloaded.
DOWNLOAD_PATTERNS = (
    "config.json",
    "generation_config.json",
    "source.spm",
    "target.spm",
    "vocab.json",
    "target_vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

PIVOT_LANGUAGE = "en"

# A folder named opus-mt-SRC-ANYTHING, where a Tatoeba-Challenge size tag such
# as tc-big- may come first: opus-mt-en-ROMANCE, opus-mt-tc-big-en-romance.
_GROUP_FOLDER = re.compile(
    r"^opus-mt-(?:tc-(?:big|base|small|tiny)-)?"
    r"(?P<source>[A-Za-z]{2,3}(?:_[A-Za-z]{2})?)-(?P<rest>.+)$"
)
# A target language token of a multi-target vocabulary: >>es<<, >>pt_br<<.
_TARGET_TOKEN = re.compile(r"^>>(?P<code>\w+)<<$")

# Values that huggingface_hub reads as true in boolean environment variables.
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}

Pair = tuple[str, str]

on_model_change: list[Callable[[list[str]], None]] = []
"""Callbacks run with ``loaded_models()`` after every load and unload."""


# Names and locations.


def checkpoint_name(source: str, target: str) -> str:
    """Return the folder name of a pair: ``opus-mt-en-es``, ``opus-mt-pt_BR-en``."""
    return f"{CHECKPOINT_PREFIX}{source.replace('-', '_')}-{target.replace('-', '_')}"


def hub_id(source: str, target: str) -> str:
    """Return the Hugging Face repository id, ``Helsinki-NLP/opus-mt-en-es``."""
    return f"{HUB_ORGANIZATION}/{checkpoint_name(source, target)}"


@dataclass(frozen=True)
class CheckpointRef:
    """The checkpoint that serves one language pair.

    ``path`` is None for a checkpoint that is not on disk, which loading
    downloads or rejects. ``target_token`` is the ``>>xx<<`` token that a
    multi-target checkpoint needs in front of every input, else None.
    """

    name: str
    source: str
    target: str
    path: Path | None
    target_token: str | None = None


def served_pairs(settings: Settings | None = None) -> list[Pair]:
    """Return the sorted pairs this deployment serves.

    ``LANGUAGE_PAIRS`` wins when set. Otherwise a set ``MODEL_DIR`` serves the
    ``opus-mt-SRC-TGT`` folders in it that contain ``config.json``, and each
    target token of its multi-target folders. Without either, the pairs in
    ``core.config.DEFAULT_PAIRS`` are served.
    """
    settings = settings or get_settings()
    if settings.language_pairs is not None:
        return sorted({parse_pair(name) for name in settings.language_pairs})
    if settings.model_dir is not None:
        return sorted(_model_dir_checkpoints(settings.model_dir))
    return sorted({parse_pair(name) for name in DEFAULT_PAIRS})


_vocab_lock = threading.Lock()
_target_tokens: dict[tuple[str, int, int], dict[str, str]] = {}


def checkpoint_targets(path: Path) -> list[str]:
    """Return the sorted target codes of the ``>>xx<<`` tokens in ``vocab.json``.

    Codes are normalised (``>>pt_br<<`` gives ``pt-BR``, ``>>fra<<`` gives
    ``fr``). Tokens whose code ``normalize_code`` rejects, such as
    ``>>zho_Hans<<``, are skipped. A checkpoint without target tokens returns
    an empty list.
    """
    return sorted(_target_token_map(path))


def _target_token_map(path: Path) -> dict[str, str]:
    """Map each normalised target code of a checkpoint to its token."""
    vocab_path = path / "vocab.json"
    try:
        stat = vocab_path.stat()
    except OSError:
        return {}
    key = (str(vocab_path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _vocab_lock:
        cached = _target_tokens.get(key)
    if cached is not None:
        return cached

    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("Skipping target tokens of %s: unreadable vocab.json", path)
        return {}
    tokens: dict[str, str] = {}
    # Lower ids first, so of two tokens with the same code the earlier wins.
    for token in sorted(vocab, key=lambda item: vocab[item]):
        match = _TARGET_TOKEN.match(token)
        if match is None:
            continue
        try:
            code = normalize_code(match.group("code"), "target token")
        except ServiceError:
            continue
        tokens.setdefault(code, token)

    with _vocab_lock:
        _target_tokens[key] = tokens
    return tokens


# Every request resolves its route through the MODEL_DIR listing, so a scan is
# reused until the folder's mtime changes (a checkpoint added or removed) or
# this many seconds pass (files changed inside an existing checkpoint).
MODEL_DIR_RESCAN_SECONDS = 5.0
_scan_lock = threading.Lock()
_scans: dict[Path, tuple[float, int, dict[Pair, CheckpointRef]]] = {}


def _model_dir_checkpoints(model_dir: Path) -> dict[Pair, CheckpointRef]:
    """Map every pair the folders in ``model_dir`` serve to its checkpoint.

    A direct ``opus-mt-SRC-TGT`` folder wins over a multi-target folder for
    the same pair. Of several multi-target folders, the first by name wins.
    """
    try:
        mtime = model_dir.stat().st_mtime_ns
    except OSError:
        mtime = -1
    now = time.monotonic()
    with _scan_lock:
        cached = _scans.get(model_dir)
    if cached is not None:
        scanned_at, scanned_mtime, checkpoints = cached
        if scanned_mtime == mtime and now - scanned_at < MODEL_DIR_RESCAN_SECONDS:
            return dict(checkpoints)
    checkpoints = _scan_model_dir(model_dir)
    with _scan_lock:
        _scans[model_dir] = (now, mtime, checkpoints)
    return dict(checkpoints)


def _scan_model_dir(model_dir: Path) -> dict[Pair, CheckpointRef]:
    if not model_dir.is_dir():
        logger.debug(
            "MODEL_DIR %s is not a directory, so no pairs are served", model_dir
        )
        return {}

    direct: dict[Pair, CheckpointRef] = {}
    grouped: dict[Pair, CheckpointRef] = {}
    for folder in sorted(model_dir.iterdir()):
        if not folder.name.startswith(CHECKPOINT_PREFIX):
            continue
        if not (folder / "config.json").is_file():
            continue
        tokens = _target_token_map(folder)
        pair = _direct_pair(folder.name)
        if pair is not None:
            direct[pair] = CheckpointRef(
                folder.name, *pair, folder, tokens.get(pair[1])
            )
            continue
        for pair, token in _group_pairs(folder.name, tokens).items():
            grouped.setdefault(pair, CheckpointRef(folder.name, *pair, folder, token))
    return {**grouped, **direct}


def _direct_pair(folder_name: str) -> Pair | None:
    try:
        return parse_pair(folder_name.removeprefix(CHECKPOINT_PREFIX))
    except ServiceError:
        return None


def _group_pairs(folder_name: str, tokens: dict[str, str]) -> dict[Pair, str | None]:
    """Return the pairs of an ``opus-mt-SRC-ANYTHING`` folder with their tokens.

    A folder with target tokens serves one pair per token. A folder without
    them, such as ``opus-mt-tc-big-en-fr``, serves its one pair when the part
    after the source is a language code.
    """
    match = _GROUP_FOLDER.match(folder_name)
    if match is None:
        logger.debug("Skipping %s: the name is not opus-mt-SRC-TGT", folder_name)
        return {}
    try:
        source = normalize_code(match.group("source"), "source_lang")
    except ServiceError:
        return {}
    if tokens:
        return {(source, target): token for target, token in tokens.items()}
    try:
        target = normalize_code(match.group("rest"), "target_lang")
    except ServiceError:
        logger.debug("Skipping %s: no target tokens in vocab.json", folder_name)
        return {}
    return {(source, target): None}


def find_checkpoint(
    source: str, target: str, settings: Settings | None = None
) -> CheckpointRef | None:
    """Return the local checkpoint that serves a pair, or None.

    The order is ``MODEL_DIR/opus-mt-SRC-TGT``, then that checkpoint in the
    Hugging Face cache, then a multi-target folder in ``MODEL_DIR`` whose
    vocabulary has the target token.
    """
    settings = settings or get_settings()
    in_model_dir: dict[Pair, CheckpointRef] = {}
    if settings.model_dir is not None:
        in_model_dir = _model_dir_checkpoints(settings.model_dir)
    return _find_in(in_model_dir, source, target)


def _find_in(
    in_model_dir: dict[Pair, CheckpointRef], source: str, target: str
) -> CheckpointRef | None:
    name = checkpoint_name(source, target)
    ref = in_model_dir.get((source, target))
    if ref is not None and ref.name == name:
        return ref
    snapshot = _cached_snapshot(source, target)
    if snapshot is not None:
        return CheckpointRef(name, source, target, snapshot)
    return ref


def _ref_or_download(
    in_model_dir: dict[Pair, CheckpointRef], source: str, target: str
) -> CheckpointRef:
    """Return the local checkpoint of a pair, else a reference to download."""
    ref = _find_in(in_model_dir, source, target)
    if ref is not None:
        return ref
    return CheckpointRef(checkpoint_name(source, target), source, target, None)


def _settings_checkpoints(settings: Settings) -> dict[Pair, CheckpointRef]:
    if settings.model_dir is None:
        return {}
    return _model_dir_checkpoints(settings.model_dir)


def resolve_pair(source_lang: object, target_lang: object) -> Pair:
    """Validate request codes and return the served pair that handles them.

    Raises ``InvalidRequest`` naming the field for a malformed code and
    ``UnsupportedLanguagePair`` when no served pair matches.
    """
    source = normalize_code(source_lang, "source_lang")
    target = normalize_code(target_lang, "target_lang")
    try:
        return match_pair(source, target, served_pairs())
    except UnsupportedLanguagePair as error:
        hint = _multi_target_hint(source, target)
        if not hint:
            raise
        raise UnsupportedLanguagePair(f"{error.message} {hint}") from None


def _multi_target_hint(source: str, target: str) -> str:
    """Name the multi-target checkpoints for ``source`` and their targets."""
    settings = get_settings()
    if settings.model_dir is None:
        return ""
    targets: dict[str, set[str]] = {}
    for (ref_source, ref_target), ref in _settings_checkpoints(settings).items():
        if ref.target_token is None:
            continue
        if base_language(ref_source) == base_language(source):
            targets.setdefault(ref.name, set()).add(ref_target)
    sentences = [
        f"{name} serves {source} to {', '.join(sorted(codes))}, but not {target}."
        for name, codes in sorted(targets.items())
    ]
    return " ".join(sentences)


def resolve_route(source_lang: object, target_lang: object) -> list[CheckpointRef]:
    """Return the checkpoints that translate a request, in the order to run them.

    One checkpoint when a served pair matches, directly or through a
    multi-target checkpoint. Otherwise two, ``source`` to English and English
    to ``target``, when both pairs are served. Raises ``InvalidRequest`` for a
    malformed code and ``UnsupportedLanguagePair`` when no route exists.
    """
    source = normalize_code(source_lang, "source_lang")
    target = normalize_code(target_lang, "target_lang")
    settings = get_settings()
    served = served_pairs(settings)
    in_model_dir = _settings_checkpoints(settings)
    try:
        pair = match_pair(source, target, served)
    except UnsupportedLanguagePair as error:
        hops = _pivot_pairs(source, target, served)
        if hops is None:
            hint = _multi_target_hint(source, target)
            message = (
                f"{error.message} No route through {PIVOT_LANGUAGE!r} exists "
                f"either, because it needs both {source}-{PIVOT_LANGUAGE} and "
                f"{PIVOT_LANGUAGE}-{target}."
            )
            raise UnsupportedLanguagePair(f"{message} {hint}".strip()) from None
        return [_ref_or_download(in_model_dir, *hop) for hop in hops]
    return [_ref_or_download(in_model_dir, *pair)]


def _pivot_pairs(source: str, target: str, served: list[Pair]) -> list[Pair] | None:
    if PIVOT_LANGUAGE in (base_language(source), base_language(target)):
        return None
    if base_language(source) == base_language(target):
        return None
    try:
        first = match_pair(source, PIVOT_LANGUAGE, served)
        second = match_pair(PIVOT_LANGUAGE, target, served)
    except UnsupportedLanguagePair:
        return None
    return [first, second]


def served_routes(
    settings: Settings | None = None, only: set[Pair] | None = None
) -> list[dict[str, Any]]:
    """Return every served route for ``/api/languages``, sorted by pair.

    Each route is ``{source_lang, target_lang, models, pivot}``: ``models``
    lists the checkpoint names in the order they run, and ``pivot`` is
    ``"en"`` for a route through English, else None. ``only`` limits the
    routes to those that its pairs complete, pivots included.
    """
    settings = settings or get_settings()
    served = served_pairs(settings)
    if only is not None:
        served = [pair for pair in served if pair in only]
    in_model_dir = _settings_checkpoints(settings)
    names = {pair: _ref_or_download(in_model_dir, *pair).name for pair in served}
    routes: dict[Pair, dict[str, Any]] = {
        pair: _route(pair, [names[pair]], None) for pair in served
    }

    into_pivot = [s for s, t in served if t == PIVOT_LANGUAGE]
    from_pivot = [t for s, t in served if s == PIVOT_LANGUAGE]
    for source in into_pivot:
        for target in from_pivot:
            if source == target or (source, target) in routes:
                continue
            models = [
                names[(source, PIVOT_LANGUAGE)],
                names[(PIVOT_LANGUAGE, target)],
            ]
            routes[(source, target)] = _route((source, target), models, PIVOT_LANGUAGE)
    return [routes[pair] for pair in sorted(routes)]


def _route(pair: Pair, models: list[str], pivot: str | None) -> dict[str, Any]:
    return {
        "source_lang": pair[0],
        "target_lang": pair[1],
        "models": models,
        "pivot": pivot,
    }


def local_checkpoint(
    source: str, target: str, settings: Settings | None = None
) -> Path | None:
    """Return the folder of a checkpoint that is already on disk, or None.

    ``MODEL_DIR/opus-mt-SRC-TGT`` is preferred. Otherwise the snapshot that
    ``refs/main`` points to in the Hugging Face cache is used, if a previous
    download left one there.
    """
    settings = settings or get_settings()
    if settings.model_dir is not None:
        folder = settings.model_dir / checkpoint_name(source, target)
        if (folder / "config.json").is_file():
            return folder
    return _cached_snapshot(source, target)


def _hub_cache_dir() -> Path:
    # Same precedence as huggingface_hub 2.4 constants.py, read without
    # importing huggingface_hub.
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg_cache).expanduser() / "huggingface" / "hub"


def _cached_snapshot(source: str, target: str) -> Path | None:
    repo_folder = "models--" + hub_id(source, target).replace("/", "--")
    repo_cache = _hub_cache_dir() / repo_folder
    try:
        revision = (repo_cache / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo_cache / "snapshots" / revision
    if revision and (snapshot / "config.json").is_file():
        return snapshot
    return None


def hub_offline() -> bool:
    """Return True when ``HF_HUB_OFFLINE`` forbids network access to the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


def model_not_available(source: str, target: str) -> ModelNotAvailable:
    """Build the error for a pair whose checkpoint is not on disk."""
    settings = get_settings()
    name = checkpoint_name(source, target)
    if settings.model_dir is not None:
        looked_in = f"No checkpoint was found at {settings.model_dir / name}"
    else:
        looked_in = (
            f"MODEL_DIR is unset and {name} is not in the Hugging Face cache "
            f"at {_hub_cache_dir()}"
        )
    return ModelNotAvailable(
        f"The model for {source}-{target} is not available. {looked_in}. "
        f"Its hub id is {hub_id(source, target)}. To fix this, set MODEL_DIR to a "
        f"folder containing {name}/, or run 'python -m core.models download "
        f"{source} {target}' on a machine with network access, or set "
        "AUTO_DOWNLOAD_MODELS=true."
    )


# Fingerprints.

_fingerprint_lock = threading.Lock()
_fingerprints: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def _fingerprint_files(path: Path) -> list[Path]:
    names = {"config.json", *TOKENIZER_FILES}
    files = [path / name for name in names if (path / name).is_file()]
    for pattern in WEIGHT_PATTERNS:
        files.extend(file for file in path.glob(pattern) if file.is_file())
    return sorted(set(files), key=lambda file: file.name)


def checkpoint_fingerprint(path: Path) -> str:
    """Return 16 hex characters that identify a checkpoint's content.

    The hash covers the bytes of ``config.json`` and the names and sizes of
    the weight and tokenizer files, so it is cheap and needs no model load.
    Results are memoized by path and file modification times.
    """
    files = _fingerprint_files(path)
    stats = tuple(
        (file.name, file.stat().st_mtime_ns, file.stat().st_size) for file in files
    )
    key = (str(path.resolve()), stats)
    with _fingerprint_lock:
        cached = _fingerprints.get(key)
    if cached is not None:
        return cached

    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for name, _mtime, size in stats:
        if name != "config.json":
            digest.update(f"\n{name}\t{size}".encode())
    fingerprint = digest.hexdigest()[:16]

    with _fingerprint_lock:
        _fingerprints[key] = fingerprint
    return fingerprint


def fingerprint_for_pair(source: str, target: str) -> str | None:
    """Return the fingerprint of the local checkpoint that serves a pair, or None.

    Pairs served by one multi-target checkpoint share its fingerprint, and
    the cache key distinguishes them by the target language.
    """
    ref = find_checkpoint(source, target)
    if ref is None or ref.path is None:
        return None
    return checkpoint_fingerprint(ref.path)


# Loading.


@dataclass
class LoadedModel:
    """A checkpoint in memory, ready for generation."""

    name: str
    source: str
    target: str
    path: Path
    fingerprint: str
    model: Any
    tokenizer: Any
    device: str
    precision: str
    max_input_tokens: int
    target_token: str | None = None
    """The ``>>xx<<`` token put before every input of a multi-target model."""
    engine: str = "transformers"
    """``transformers`` (``model`` is a MarianMTModel) or ``ctranslate2``
    (``model`` is a ``core.ct2.Ct2Model``)."""


_registry_lock = threading.Lock()
_load_lock = threading.Lock()
_loaded: OrderedDict[str, LoadedModel] = OrderedDict()
_torch_threads_set = False


def loaded_models() -> list[str]:
    """Return the names of the models in memory, most recently used last."""
    with _registry_lock:
        return list(_loaded)


def load_model(source: str, target: str) -> LoadedModel:
    """Return the model that serves a pair, loading it on first use.

    The checkpoint is the one ``find_checkpoint`` returns, else the direct
    ``opus-mt-SRC-TGT`` one, which is downloaded or rejected as described in
    ``load_checkpoint``.
    """
    ref = find_checkpoint(source, target)
    if ref is None:
        ref = CheckpointRef(checkpoint_name(source, target), source, target, None)
    return load_checkpoint(ref)


def load_checkpoint(ref: CheckpointRef) -> LoadedModel:
    """Return the model of a checkpoint, loading it on first use.

    Models are kept by checkpoint name, so the pairs of one multi-target
    checkpoint share one model in memory. For such a pair the returned
    ``LoadedModel`` is a copy that carries the pair's languages and target
    token around the shared model and tokenizer. At most
    ``MAX_LOADED_MODELS`` models stay in memory, and the least recently used
    one is unloaded before another is loaded. Concurrent requests for the
    same checkpoint load it once. Raises ``ModelNotAvailable`` without any
    network access when ``ref.path`` is None, the checkpoint is not on disk,
    and downloads are off or ``HF_HUB_OFFLINE`` is set.
    """
    loaded = _touch(ref.name)
    if loaded is not None:
        return _for_pair(loaded, ref)

    with _load_lock:
        loaded = _touch(ref.name)
        if loaded is not None:
            return _for_pair(loaded, ref)
        loaded = _load_new(ref)
    _notify()
    return _for_pair(loaded, ref)


def _load_new(ref: CheckpointRef) -> LoadedModel:
    path = ref.path
    if path is None:
        path = _checkpoint_or_download(ref.source, ref.target)
    _evict_for(get_settings().max_loaded_models - 1)
    try:
        loaded = _load_from_disk(ref.name, ref.source, ref.target, path)
    except (ImportError, SoftTimeLimitExceeded) as error:
        # An import cut short leaves half-initialised modules behind, and
        # every later load in this process would fail on them.
        global _process_broken
        _process_broken = True
        if exit_on_broken_load:
            logger.error(
                "Loading %s was interrupted (%s) in process %d; exiting so that "
                "the worker starts a fresh process and redelivers the task",
                ref.name,
                type(error).__name__,
                os.getpid(),
            )
            os._exit(EXIT_BROKEN_LOAD)
        raise ModelNotAvailable(
            f"Loading {ref.name} was interrupted ({type(error).__name__}: "
            f"{error}), so this worker process will be replaced. If this "
            "repeats, raise TASK_TIME_LIMIT."
        ) from error
    loaded.target_token = ref.target_token
    with _registry_lock:
        _loaded[ref.name] = loaded
    return loaded


def process_broken() -> bool:
    """Return True once a model load was cut short in this process."""
    return _process_broken


def _for_pair(loaded: LoadedModel, ref: CheckpointRef) -> LoadedModel:
    same_pair = (loaded.source, loaded.target) == (ref.source, ref.target)
    if same_pair and loaded.target_token == ref.target_token:
        return loaded
    return replace(
        loaded, source=ref.source, target=ref.target, target_token=ref.target_token
    )


def unload_all() -> None:
    """Unload every model and free its memory."""
    with _load_lock:
        _evict_for(0)


def _touch(name: str) -> LoadedModel | None:
    with _registry_lock:
        loaded = _loaded.get(name)
        if loaded is not None:
            _loaded.move_to_end(name)
        return loaded


def _evict_for(keep: int) -> None:
    """Unload least recently used models until at most ``keep`` remain."""
    evicted = []
    with _registry_lock:
        while len(_loaded) > max(keep, 0):
            evicted.append(_loaded.popitem(last=False)[1])
    if not evicted:
        return

    started = time.perf_counter()
    names = [loaded.name for loaded in evicted]
    on_cuda = any(loaded.device == "cuda" for loaded in evicted)
    # Other threads may still use an evicted LoadedModel, so its memory is
    # freed only once they drop it.
    del evicted
    gc.collect()
    if on_cuda:
        import torch

        torch.cuda.empty_cache()
    logger.info(
        "Unloaded models %s in %.2f s",
        ", ".join(names),
        time.perf_counter() - started,
    )
    _notify()


def _notify() -> None:
    names = loaded_models()
    for hook in list(on_model_change):
        try:
            hook(names)
        except Exception:
            logger.exception("Model change hook %r failed", hook)


def _checkpoint_or_download(source: str, target: str) -> Path:
    settings = get_settings()
    path = local_checkpoint(source, target, settings)
    if path is not None:
        return path
    if not settings.auto_download_models or hub_offline():
        raise model_not_available(source, target)

    destination = None
    if settings.model_dir is not None:
        destination = settings.model_dir / checkpoint_name(source, target)
    logger.info(
        "Downloading %s because AUTO_DOWNLOAD_MODELS is on", hub_id(source, target)
    )
    return download_checkpoint(source, target, destination)


def download_checkpoint(source: str, target: str, destination: Path | None) -> Path:
    """Download the files Marian needs for a pair and return their folder.

    With ``destination`` unset the files go to the Hugging Face cache.
    Safetensors weights are preferred, and ``pytorch_model.bin`` is fetched
    only for repositories that have no ``model.safetensors``.
    """
    from huggingface_hub import snapshot_download

    # NOTE: the tests run without network, so this call has not been run
    # against the real hub. Only the offline rejection is tested.
    repo = hub_id(source, target)
    started = time.perf_counter()
    folder = Path(
        snapshot_download(
            repo,
            local_dir=destination,
            allow_patterns=[*DOWNLOAD_PATTERNS, "model.safetensors"],
        )
    )
    if not (folder / "model.safetensors").is_file():
        folder = Path(
            snapshot_download(
                repo, local_dir=destination, allow_patterns=["pytorch_model.bin"]
            )
        )
    logger.info(
        "Downloaded %s to %s in %.1f s", repo, folder, time.perf_counter() - started
    )
    return folder


def _resolve_device(settings: Settings) -> tuple[str, str]:
    """Return the device and the precision that the settings' engine runs at.

    ``PRECISION=auto`` is fp16 on CUDA for both engines. On CPU it is int8
    for CTranslate2, the fastest setting in the README's measurements, and
    fp32 for transformers, whose int8 output drifts further from fp32.
    """
    device = settings.device
    if device == "auto":
        device = "cuda" if _cuda_available(settings.engine) else "cpu"
    elif device == "cuda" and not _cuda_available(settings.engine):
        raise ModelNotAvailable(
            f"DEVICE=cuda, but the {settings.engine} engine finds no CUDA device. "
            "Set DEVICE=cpu or DEVICE=auto, or run on a machine with a GPU and a "
            "CUDA build of torch (transformers) or of ctranslate2."
        )

    precision = settings.precision
    if precision == "auto":
        if device == "cuda":
            precision = "fp16"
        else:
            precision = "int8" if settings.engine == "ctranslate2" else "fp32"
    _check_precision(settings.engine, device, precision)
    return device, precision


def _cuda_available(engine: str) -> bool:
    if engine == "ctranslate2":
        from core import ct2

        return ct2.cuda_available()
    import torch

    return bool(torch.cuda.is_available())


# Precisions that each engine runs on each device. transformers quantizes
# only on CPU, and ctranslate2 4.8.5 lists no float16 compute type for CPU.
_SUPPORTED_PRECISIONS = {
    ("transformers", "cpu"): ("fp32", "fp16", "int8"),
    ("transformers", "cuda"): ("fp32", "fp16"),
    ("ctranslate2", "cpu"): ("fp32", "int8"),
    ("ctranslate2", "cuda"): ("fp32", "fp16", "int8", "int8_fp16"),
}


def _check_precision(engine: str, device: str, precision: str) -> None:
    supported = _SUPPORTED_PRECISIONS[(engine, device)]
    if precision not in supported:
        raise ModelNotAvailable(
            f"PRECISION={precision} is not supported by ENGINE={engine} on "
            f"{device}. Use one of {', '.join(supported)}, or auto."
        )


def _set_torch_threads(settings: Settings) -> None:
    global _torch_threads_set
    if _torch_threads_set or settings.torch_threads <= 0:
        return
    import torch

    torch.set_num_threads(settings.torch_threads)
    _torch_threads_set = True
    logger.info("Set torch to %d threads", settings.torch_threads)


def _load_tokenizer(path: Path) -> Any:
    from transformers import MarianTokenizer

    # MarianTokenizer warns on every load when sacremoses is missing, and then
    # skips Moses punctuation normalisation. _warn_missing_sacremoses logs
    # that once per process instead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        return MarianTokenizer.from_pretrained(path)


def _load_from_disk(name: str, source: str, target: str, path: Path) -> LoadedModel:
    from transformers.utils import logging as transformers_logging

    # Loading progress bars would fill the worker log on every model load.
    transformers_logging.disable_progress_bar()
    settings = get_settings()
    _set_torch_threads(settings)
    device, precision = _resolve_device(settings)
    _warn_missing_sacremoses()

    started = time.perf_counter()
    tokenizer = _load_tokenizer(path)
    fingerprint = checkpoint_fingerprint(path)
    if settings.engine == "ctranslate2":
        model, max_positions = _load_ctranslate2(
            name, path, fingerprint, device, precision, settings
        )
    else:
        model = _load_transformers(path, device, precision)
        max_positions = int(model.config.max_position_embeddings)

    max_input_tokens = min(int(tokenizer.model_max_length), max_positions)
    loaded = LoadedModel(
        name=name,
        source=source,
        target=target,
        path=path,
        fingerprint=fingerprint,
        model=model,
        tokenizer=tokenizer,
        device=device,
        precision=precision,
        max_input_tokens=max_input_tokens,
        engine=settings.engine,
    )
    logger.info(
        "Loaded model %s (%s) from %s with %s on %s as %s in %.2f s",
        name,
        loaded.fingerprint,
        path,
        settings.engine,
        device,
        precision,
        time.perf_counter() - started,
    )
    return loaded


def _load_transformers(path: Path, device: str, precision: str) -> Any:
    import torch
    from transformers import MarianMTModel

    dtype = torch.float16 if precision == "fp16" else torch.float32
    model: Any = MarianMTModel.from_pretrained(path, dtype=dtype)
    model.to(device)
    model.eval()
    if precision == "int8":
        model = _quantize_linear_layers(model)
    # Every generate call passes max_new_tokens. When the checkpoint also sets
    # max_length (512 in opus-mt), transformers 5.25 logs a warning per call.
    model.generation_config.max_length = None
    return model


def _quantize_linear_layers(model: Any) -> Any:
    """Return the model with int8 weights in every Linear layer.

    Activations are quantized per batch at run time. Embeddings and layer
    norms stay float32.
    """
    import torch

    # NOTE: torch 2.13 deprecates the quantized tensor types that
    # quantize_dynamic creates and warns on every call; torchao replaces them.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor", category=UserWarning
        )
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8
        )


def _load_ctranslate2(
    name: str,
    path: Path,
    fingerprint: str,
    device: str,
    precision: str,
    settings: Settings,
) -> tuple[Any, int]:
    """Load a checkpoint with CTranslate2, converting it first if needed.

    The configuration files are read as JSON: transformers' config classes
    import torch, which this engine does not need.
    """
    from core import ct2

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    generation_path = path / "generation_config.json"
    if generation_path.is_file():
        generation = json.loads(generation_path.read_text(encoding="utf-8"))
    else:
        generation = config
    compute_type = ct2.COMPUTE_TYPES[precision]
    folder = ct2.convert_checkpoint(
        path, name, fingerprint, compute_type, ct2.cache_root(settings)
    )
    model = ct2.load_translator(
        folder,
        device,
        compute_type,
        settings.torch_threads,
        forced_eos=generation.get("forced_eos_token_id") is not None,
    )
    return model, int(config.get("max_position_embeddings", DEFAULT_MAX_POSITIONS))


_sacremoses_checked = False


def _warn_missing_sacremoses() -> None:
    global _sacremoses_checked
    if _sacremoses_checked:
        return
    _sacremoses_checked = True
    if importlib.util.find_spec("sacremoses") is None:
        logger.warning(
            "sacremoses is not installed, so MarianTokenizer skips Moses "
            "punctuation normalisation. Install sacremoses to match the "
            "preprocessing the opus-mt models were trained with."
        )


# Command line.


def _folder_size(path: Path) -> int:
    # stat() follows the symbolic links of Hugging Face cache snapshots.
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _command_list(args: argparse.Namespace) -> int:
    for source, target in served_pairs():
        ref = find_checkpoint(source, target)
        path = ref.path if ref is not None else None
        if path is None:
            print(f"{source}-{target}\tmissing\t-\t-")
        else:
            print(
                f"{source}-{target}\tlocal\t{path}\t{_format_size(_folder_size(path))}"
            )
    return 0


def _command_download(args: argparse.Namespace) -> int:
    source = normalize_code(args.source, "source_lang")
    target = normalize_code(args.target, "target_lang")
    if hub_offline():
        print(
            "Download rejected: HF_HUB_OFFLINE is set, so the hub is not contacted. "
            "Unset it, or copy the checkpoint folder into MODEL_DIR.",
            file=sys.stderr,
        )
        return 2
    base = args.dest or get_settings().model_dir
    if base is None:
        print(
            "No destination: pass --dest DIR or set MODEL_DIR to the folder "
            "that should contain the checkpoint.",
            file=sys.stderr,
        )
        return 2

    destination = Path(base) / checkpoint_name(source, target)
    try:
        folder = download_checkpoint(source, target, destination)
    except Exception as error:
        print(
            f"Download of {hub_id(source, target)} failed: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    print(f"{hub_id(source, target)} -> {folder}")
    return 0


def _verify_checkpoint(source: str, target: str) -> bool:
    from transformers import MarianConfig

    ref = find_checkpoint(source, target)
    path = ref.path if ref is not None else None
    if path is None:
        print(f"{source}-{target}\tFAILED\t{model_not_available(source, target)}")
        return False

    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    has_weights = any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS)
    if not has_weights:
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        print(f"{source}-{target}\tFAILED\t{path} is missing {', '.join(missing)}")
        return False

    try:
        _load_tokenizer(path)
        MarianConfig.from_pretrained(path)
    except Exception as error:
        print(f"{source}-{target}\tFAILED\t{path}: {type(error).__name__}: {error}")
        return False
    print(f"{source}-{target}\tok\t{path}\t{checkpoint_fingerprint(path)}")
    return True


def _command_verify(args: argparse.Namespace) -> int:
    if (args.source is None) != (args.target is None):
        print("verify takes both SRC and TGT, or neither.", file=sys.stderr)
        return 2
    if args.source is not None:
        pairs = [
            (
                normalize_code(args.source, "source_lang"),
                normalize_code(args.target, "target_lang"),
            )
        ]
    else:
        pairs = served_pairs()
    results = [_verify_checkpoint(source, target) for source, target in pairs]
    return 0 if all(results) else 1


def _command_remove(args: argparse.Namespace) -> int:
    source = normalize_code(args.source, "source_lang")
    target = normalize_code(args.target, "target_lang")
    model_dir = get_settings().model_dir
    if model_dir is None:
        print("MODEL_DIR is unset, so there is nothing to remove.", file=sys.stderr)
        return 2

    folder = model_dir / checkpoint_name(source, target)
    if not (folder / "config.json").is_file():
        print(f"No checkpoint found at {folder}.", file=sys.stderr)
        return 1
    shutil.rmtree(folder)
    print(f"Removed {folder}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core.models",
        description="Manage the opus-mt checkpoints under MODEL_DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="show served pairs and local copies")
    listing.set_defaults(handler=_command_list)

    download = commands.add_parser("download", help="download a pair from the hub")
    download.add_argument("source", help="source language code, such as en")
    download.add_argument("target", help="target language code, such as es")
    download.add_argument(
        "--dest", type=Path, help="folder to put opus-mt-SRC-TGT in (default MODEL_DIR)"
    )
    download.set_defaults(handler=_command_download)

    verify = commands.add_parser("verify", help="check local checkpoints load")
    verify.add_argument("source", nargs="?", help="source language code")
    verify.add_argument("target", nargs="?", help="target language code")
    verify.set_defaults(handler=_command_verify)

    remove = commands.add_parser("remove", help="delete a pair from MODEL_DIR")
    remove.add_argument("source", help="source language code")
    remove.add_argument("target", help="target language code")
    remove.set_defaults(handler=_command_remove)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status: 0, 1 failed, 2 usage."""
    args = _build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ServiceError as error:
        print(error.message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    raise SystemExit(main())

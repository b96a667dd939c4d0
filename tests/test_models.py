"""Tests of core.models: pair registry, checkpoint lookup, fingerprints, loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import core.models
from core.config import DEFAULT_PAIRS, PROJECT_ROOT, Settings, reset_settings
from core.errors import InvalidRequest, ModelNotAvailable, UnsupportedLanguagePair
from core.models import (
    CheckpointRef,
    checkpoint_fingerprint,
    checkpoint_name,
    checkpoint_targets,
    find_checkpoint,
    fingerprint_for_pair,
    hub_id,
    load_model,
    loaded_models,
    local_checkpoint,
    main,
    on_model_change,
    resolve_pair,
    resolve_route,
    served_pairs,
    served_routes,
    unload_all,
)
from tests.make_tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.unit,
    # MarianTokenizer warns on every load when sacremoses is not installed.
    pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses"),
]

MODEL_ENV_VARS = (
    "MODEL_DIR",
    "LANGUAGE_PAIRS",
    "AUTO_DOWNLOAD_MODELS",
    "MAX_LOADED_MODELS",
    "DEVICE",
    "PRECISION",
    "TORCH_THREADS",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
)


@pytest.fixture(autouse=True)
def isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pytest.MonkeyPatch]:
    """Clear model settings, point the hub cache at an empty folder, go offline."""
    for name in MODEL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The registry tests inspect the transformers model; tests/test_engines.py
    # covers loading with CTranslate2.
    monkeypatch.setenv("ENGINE", "transformers")
    reset_settings()
    unload_all()
    yield monkeypatch
    unload_all()
    reset_settings()


def use_env(monkeypatch: pytest.MonkeyPatch, **values: str | Path) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    reset_settings()


def make_fake_checkpoint(folder: Path, target_tokens: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "marian"}')
    if target_tokens:
        tokens = ["</s>", "<unk>", *target_tokens, "▁the", "<pad>"]
        vocab = {token: index for index, token in enumerate(tokens)}
        (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "core.models", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=full_env,
        timeout=120,
        check=False,
    )


# Names.


def test_checkpoint_name_and_hub_id() -> None:
    assert checkpoint_name("en", "es") == "opus-mt-en-es"
    assert hub_id("en", "es") == "Helsinki-NLP/opus-mt-en-es"


def test_region_written_with_underscore() -> None:
    assert checkpoint_name("pt-BR", "en") == "opus-mt-pt_BR-en"
    assert hub_id("en", "pt-BR") == "Helsinki-NLP/opus-mt-en-pt_BR"


# Served pairs.


def test_served_pairs_from_language_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, LANGUAGE_PAIRS="es-en, EN-de,en-es,es-en")

    assert served_pairs() == [("en", "de"), ("en", "es"), ("es", "en")]


def test_language_pairs_win_over_model_dir(tiny_model_dir: Path) -> None:
    settings = Settings(model_dir=tiny_model_dir, language_pairs=("fr-en",))

    assert served_pairs(settings) == [("fr", "en")]


def test_served_pairs_discovered_in_model_dir(tmp_path: Path) -> None:
    make_fake_checkpoint(tmp_path / "opus-mt-en-es")
    make_fake_checkpoint(tmp_path / "opus-mt-pt_BR-en")
    make_fake_checkpoint(tmp_path / "opus-mt-en-ROMANCE")
    (tmp_path / "opus-mt-fr-en").mkdir()
    make_fake_checkpoint(tmp_path / "notes")

    pairs = served_pairs(Settings(model_dir=tmp_path))

    assert pairs == [("en", "es"), ("pt-BR", "en")]


def test_served_pairs_default() -> None:
    expected = sorted(tuple(pair.split("-")) for pair in DEFAULT_PAIRS)

    assert served_pairs() == expected


def test_served_pairs_missing_model_dir(tmp_path: Path) -> None:
    assert served_pairs(Settings(model_dir=tmp_path / "absent")) == []


# Request validation.


def test_resolve_pair_normalizes(monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, LANGUAGE_PAIRS="en-es")

    assert resolve_pair(" EN ", "es") == ("en", "es")
    assert resolve_pair("en-US", "es") == ("en", "es")


def test_resolve_pair_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    use_env(monkeypatch, LANGUAGE_PAIRS="en-es")

    with pytest.raises(UnsupportedLanguagePair) as caught:
        resolve_pair("en", "ja")

    assert "en-ja" in caught.value.message
    assert "en-es" in caught.value.message


@pytest.mark.parametrize(
    ("source", "target", "field"),
    [
        ("english", "es", "source_lang"),
        ("en", 7, "target_lang"),
        (None, "es", "source_lang"),
    ],
)
def test_resolve_pair_invalid_code(source: object, target: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_pair(source, target)

    assert repr(field) in caught.value.message


# Local checkpoints.


def test_local_checkpoint_in_model_dir(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir)

    assert local_checkpoint("en", "es") == tiny_model_dir / "opus-mt-en-es"
    assert local_checkpoint("en", "nl") is None


def write_hub_cache(cache: Path, repo_folder: str, revision: str) -> Path:
    snapshot = make_fake_checkpoint(cache / repo_folder / "snapshots" / revision)
    (cache / repo_folder / "refs").mkdir()
    (cache / repo_folder / "refs" / "main").write_text(revision)
    return snapshot


def test_local_checkpoint_in_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    snapshot = write_hub_cache(tmp_path, "models--Helsinki-NLP--opus-mt-en-fr", "a1b2")
    use_env(monkeypatch, HF_HUB_CACHE=tmp_path)

    assert local_checkpoint("en", "fr") == snapshot
    assert local_checkpoint("fr", "en") is None


def test_local_checkpoint_under_hf_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    snapshot = write_hub_cache(cache, "models--Helsinki-NLP--opus-mt-de-en", "c3d4")
    monkeypatch.delenv("HF_HUB_CACHE")
    use_env(monkeypatch, HF_HOME=tmp_path)

    assert local_checkpoint("de", "en") == snapshot


def test_model_dir_preferred_over_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    write_hub_cache(tmp_path, "models--Helsinki-NLP--opus-mt-en-es", "e5f6")
    use_env(monkeypatch, HF_HUB_CACHE=tmp_path, MODEL_DIR=tiny_model_dir)

    assert local_checkpoint("en", "es") == tiny_model_dir / "opus-mt-en-es"


# Fingerprints.


def test_fingerprint_stable_across_copies(tmp_path: Path, tiny_model_dir: Path) -> None:
    original = tiny_model_dir / "opus-mt-en-es"
    copy = shutil.copytree(original, tmp_path / "opus-mt-en-es")

    fingerprint = checkpoint_fingerprint(copy)

    assert len(fingerprint) == 16
    assert int(fingerprint, 16) >= 0
    assert checkpoint_fingerprint(copy) == fingerprint
    assert checkpoint_fingerprint(original) == fingerprint


def test_fingerprint_changes_with_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = shutil.copytree(tiny_model_dir / "opus-mt-en-es", tmp_path / "copy")
    before = checkpoint_fingerprint(copy)

    with (copy / "model.safetensors").open("ab") as weights:
        weights.write(b"\0")

    assert checkpoint_fingerprint(copy) != before


def test_fingerprint_changes_with_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = shutil.copytree(tiny_model_dir / "opus-mt-en-es", tmp_path / "copy")
    before = checkpoint_fingerprint(copy)

    config = json.loads((copy / "config.json").read_text())
    config["dropout"] = 0.25
    (copy / "config.json").write_text(json.dumps(config))

    assert checkpoint_fingerprint(copy) != before


def test_fingerprint_for_pair(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir)
    expected = checkpoint_fingerprint(tiny_model_dir / "opus-mt-en-de")

    assert fingerprint_for_pair("en", "de") == expected
    assert fingerprint_for_pair("en", "es") != expected
    assert fingerprint_for_pair("en", "nl") is None


# Loading.


def test_load_model_eval_and_reused(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir)

    loaded = load_model("en", "es")
    again = load_model("en", "es")

    assert again is loaded
    assert loaded.model.training is False
    assert loaded.name == "opus-mt-en-es"
    assert loaded.path == tiny_model_dir / "opus-mt-en-es"
    assert loaded.fingerprint == checkpoint_fingerprint(loaded.path)
    assert loaded.device == "cpu"
    assert loaded.precision == "fp32"
    assert loaded.max_input_tokens == 512
    assert loaded.model.generation_config.max_length is None
    assert loaded_models() == ["opus-mt-en-es"]


def test_lru_unloads_oldest(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir, MAX_LOADED_MODELS="2")

    first = load_model("en", "es")
    load_model("es", "en")
    load_model("en", "es")
    load_model("en", "de")

    assert loaded_models() == ["opus-mt-en-es", "opus-mt-en-de"]
    assert load_model("en", "es") is first


def test_hooks_see_loads_and_unloads(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir, MAX_LOADED_MODELS="1")
    seen: list[list[str]] = []
    on_model_change.append(seen.append)
    try:
        load_model("en", "es")
        load_model("es", "en")
        unload_all()
    finally:
        on_model_change.remove(seen.append)

    assert seen == [["opus-mt-en-es"], [], ["opus-mt-es-en"], []]


def test_concurrent_requests_load_once(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tiny_model_dir)
    original = core.models._load_from_disk
    calls: list[str] = []

    def slow_load(*args: object) -> core.models.LoadedModel:
        calls.append(str(args[0]))
        time.sleep(0.2)
        return original(*args)

    monkeypatch.setattr(core.models, "_load_from_disk", slow_load)
    results: list[core.models.LoadedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_model("en", "de")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert calls == ["opus-mt-en-de"]
    assert len(results) == 4
    assert all(result is results[0] for result in results)


def test_missing_checkpoint_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    started = time.perf_counter()
    with pytest.raises(ModelNotAvailable) as caught:
        load_model("en", "fr")
    elapsed = time.perf_counter() - started
    message = caught.value.message

    assert elapsed < 1.0
    assert "en-fr" in message
    assert str(tmp_path / "opus-mt-en-fr") in message
    assert "Helsinki-NLP/opus-mt-en-fr" in message
    assert "python -m core.models download en fr" in message
    assert "AUTO_DOWNLOAD_MODELS=true" in message
    assert loaded_models() == []


def test_missing_message_without_model_dir() -> None:
    with pytest.raises(ModelNotAvailable) as caught:
        load_model("en", "fr")

    assert "MODEL_DIR is unset" in caught.value.message
    assert "opus-mt-en-fr" in caught.value.message


def test_offline_blocks_auto_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=tmp_path, AUTO_DOWNLOAD_MODELS="true")
    downloads: list[tuple[str, str]] = []
    monkeypatch.setattr(
        core.models,
        "download_checkpoint",
        lambda source, target, destination: downloads.append((source, target)),
    )

    with pytest.raises(ModelNotAvailable):
        load_model("en", "es")

    assert downloads == []


def test_auto_download_then_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    use_env(monkeypatch, MODEL_DIR=tmp_path, AUTO_DOWNLOAD_MODELS="true")
    destinations: list[Path | None] = []

    def fake_download(source: str, target: str, destination: Path | None) -> Path:
        # Stands in for snapshot_download, so the test never reaches the network.
        destinations.append(destination)
        assert destination is not None
        shutil.copytree(tiny_model_dir / checkpoint_name(source, target), destination)
        return destination

    monkeypatch.setattr(core.models, "download_checkpoint", fake_download)

    loaded = load_model("en", "es")

    assert destinations == [tmp_path / "opus-mt-en-es"]
    assert loaded.path == tmp_path / "opus-mt-en-es"
    assert loaded_models() == ["opus-mt-en-es"]


def test_import_stays_light() -> None:
    code = (
        "import json, sys\n"
        "import core.models, core.segmentation, core.translator\n"
        "heavy = ('torch', 'transformers', 'huggingface_hub')\n"
        "print(json.dumps([name for name in heavy if name in sys.modules]))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# Command line.


def test_cli_list(tiny_model_dir: Path) -> None:
    result = run_cli(
        "list",
        env={"MODEL_DIR": str(tiny_model_dir), "LANGUAGE_PAIRS": "en-es,en-nl"},
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]

    assert result.returncode == 0, result.stderr
    assert [row[:3] for row in rows] == [
        ["en-es", "local", str(tiny_model_dir / "opus-mt-en-es")],
        ["en-nl", "missing", "-"],
    ]
    assert rows[0][3].endswith("KiB")


def test_cli_verify(tiny_model_dir: Path) -> None:
    fingerprint = checkpoint_fingerprint(tiny_model_dir / "opus-mt-en-es")

    result = run_cli(
        "verify",
        env={"MODEL_DIR": str(tiny_model_dir), "LANGUAGE_PAIRS": "en-es,en-nl"},
    )
    lines = result.stdout.splitlines()

    assert result.returncode == 1
    assert lines[0].split("\t") == [
        "en-es",
        "ok",
        str(tiny_model_dir / "opus-mt-en-es"),
        fingerprint,
    ]
    assert lines[1].startswith("en-nl\tFAILED\t")


def test_cli_download_refused_offline(tmp_path: Path) -> None:
    result = run_cli(
        "download",
        "en",
        "fr",
        "--dest",
        str(tmp_path),
        env={"HF_HUB_OFFLINE": "1"},
    )

    assert result.returncode == 2
    assert "HF_HUB_OFFLINE" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_download_needs_destination(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    status = main(["download", "en", "fr"])

    assert status == 2
    assert "MODEL_DIR" in capsys.readouterr().err


def test_cli_verify_reports_missing_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = shutil.copytree(tiny_model_dir / "opus-mt-en-es", tmp_path / "opus-mt-en-es")
    (copy / "source.spm").unlink()
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    status = main(["verify", "en", "es"])

    assert status == 1
    assert "missing source.spm" in capsys.readouterr().out


def test_cli_remove(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_fake_checkpoint(tmp_path / "opus-mt-en-es")
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    first = main(["remove", "en", "es"])
    second = main(["remove", "en", "es"])

    assert first == 0
    assert not folder.exists()
    assert second == 1
    assert "No checkpoint found" in capsys.readouterr().err


def test_cli_rejects_invalid_code(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["verify", "english", "es"])

    assert status == 2
    assert "source_lang" in capsys.readouterr().err


# Multi-target checkpoints and routes.


def test_checkpoint_targets_normalized(tmp_path: Path) -> None:
    tokens = (">>es<<", ">>pt_br<<", ">>fra<<", ">>zho_Hans<<", ">>es_AR<<", ">>x<<")
    folder = make_fake_checkpoint(tmp_path / "opus-mt-en-ROMANCE", tokens)

    assert checkpoint_targets(folder) == ["es", "es-AR", "fr", "pt-BR"]
    assert checkpoint_targets(make_fake_checkpoint(tmp_path / "plain")) == []


def test_multi_target_pairs_discovered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    romance = make_fake_checkpoint(
        tmp_path / "opus-mt-en-ROMANCE", (">>es<<", ">>fr<<", ">>it<<")
    )
    make_fake_checkpoint(tmp_path / "opus-mt-en-es")
    make_fake_checkpoint(tmp_path / "opus-mt-tc-big-en-romance", (">>ro<<", ">>fr<<"))
    make_fake_checkpoint(tmp_path / "opus-mt-tc-big-de-nl")
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    direct = find_checkpoint("en", "es")
    grouped = find_checkpoint("en", "fr")

    assert served_pairs() == [
        ("de", "nl"),
        ("en", "es"),
        ("en", "fr"),
        ("en", "it"),
        ("en", "ro"),
    ]
    assert direct == CheckpointRef(
        "opus-mt-en-es", "en", "es", tmp_path / "opus-mt-en-es", None
    )
    assert grouped == CheckpointRef("opus-mt-en-ROMANCE", "en", "fr", romance, ">>fr<<")
    assert find_checkpoint("en", "ro") is not None
    assert find_checkpoint("en", "ro").target_token == ">>ro<<"  # type: ignore[union-attr]
    assert find_checkpoint("de", "nl").target_token is None  # type: ignore[union-attr]
    assert find_checkpoint("en", "pt") is None
    assert fingerprint_for_pair("en", "it") == checkpoint_fingerprint(romance)


def test_unsupported_target_names_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_fake_checkpoint(tmp_path / "opus-mt-en-ROMANCE", (">>es<<", ">>fr<<"))
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    with pytest.raises(UnsupportedLanguagePair) as caught:
        resolve_pair("en", "de")

    assert "en-de" in caught.value.message
    assert "opus-mt-en-ROMANCE serves en to es, fr, but not de." in caught.value.message


def test_multi_target_shares_one_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    build_tiny_model(tmp_path, "en", "ROMANCE", target_tokens=["es", "fr"])
    use_env(monkeypatch, MODEL_DIR=tmp_path)

    spanish = load_model("en", "es")
    french = load_model("en", "fr")

    assert loaded_models() == ["opus-mt-en-ROMANCE"]
    assert spanish.model is french.model
    assert (spanish.target, spanish.target_token) == ("es", ">>es<<")
    assert (french.target, french.target_token) == ("fr", ">>fr<<")
    assert load_model("en", "es").target_token == ">>es<<"


@pytest.fixture(scope="module")
def pivot_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("pivot-models")
    build_tiny_model(model_dir, "de", "en")
    build_tiny_model(model_dir, "en", "fr")
    return model_dir


def test_resolve_route_hops(
    monkeypatch: pytest.MonkeyPatch, pivot_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=pivot_model_dir)

    two_hops = resolve_route("de", "FR")
    one_hop = resolve_route("de-AT", "en")

    assert [(ref.name, ref.source, ref.target) for ref in two_hops] == [
        ("opus-mt-de-en", "de", "en"),
        ("opus-mt-en-fr", "en", "fr"),
    ]
    assert two_hops[0].path == pivot_model_dir / "opus-mt-de-en"
    assert [ref.name for ref in one_hop] == ["opus-mt-de-en"]
    with pytest.raises(UnsupportedLanguagePair) as caught:
        resolve_route("fr", "de")
    assert "de-en, en-fr" in caught.value.message


def test_served_routes_include_pivot(
    monkeypatch: pytest.MonkeyPatch, pivot_model_dir: Path
) -> None:
    use_env(monkeypatch, MODEL_DIR=pivot_model_dir)

    assert served_routes() == [
        {
            "source_lang": "de",
            "target_lang": "en",
            "models": ["opus-mt-de-en"],
            "pivot": None,
        },
        {
            "source_lang": "de",
            "target_lang": "fr",
            "models": ["opus-mt-de-en", "opus-mt-en-fr"],
            "pivot": "en",
        },
        {
            "source_lang": "en",
            "target_lang": "fr",
            "models": ["opus-mt-en-fr"],
            "pivot": None,
        },
    ]


def test_model_dir_scan_reused_until_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import core.models as models_module

    scans: list[Path] = []
    real_scan = models_module._scan_model_dir

    def counting_scan(model_dir: Path) -> dict:
        scans.append(model_dir)
        return real_scan(model_dir)

    monkeypatch.setattr(models_module, "_scan_model_dir", counting_scan)
    (tmp_path / "opus-mt-en-es").mkdir()
    (tmp_path / "opus-mt-en-es" / "config.json").write_text("{}")
    first = models_module._model_dir_checkpoints(tmp_path)
    second = models_module._model_dir_checkpoints(tmp_path)
    assert set(first) == {("en", "es")}
    assert second == first
    assert len(scans) == 1

    (tmp_path / "opus-mt-es-en").mkdir()
    (tmp_path / "opus-mt-es-en" / "config.json").write_text("{}")
    # Coarse file-system clocks can give both mkdirs the same mtime.
    stat = tmp_path.stat()
    os.utime(tmp_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = models_module._model_dir_checkpoints(tmp_path)
    assert set(third) == {("en", "es"), ("es", "en")}
    assert len(scans) == 2

    monkeypatch.setattr(models_module, "MODEL_DIR_RESCAN_SECONDS", 0.0)
    models_module._model_dir_checkpoints(tmp_path)
    assert len(scans) == 3


BROKEN_LOAD = """
import sys
from core import models

def interrupted(*args, **kwargs):
    raise ImportError("partially initialized module")

models._load_from_disk = interrupted
models.exit_on_broken_load = {exit_flag}
try:
    models.load_model("en", "es")
except Exception as error:
    print(type(error).__name__, models.process_broken())
    print(error)
"""


@pytest.mark.unit
@pytest.mark.parametrize("exit_flag", [False, True])
def test_interrupted_load_breaks_process(
    clean_env: pytest.MonkeyPatch, tiny_model_dir: Path, exit_flag: bool
) -> None:
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_LOAD.format(exit_flag=exit_flag)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if exit_flag:
        # A worker child ends itself, so Celery redelivers its task.
        assert result.returncode == core.models.EXIT_BROKEN_LOAD, result.stderr
        assert "exiting so that the worker starts a fresh process" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        first, message = result.stdout.splitlines()[:2]
        assert first == "ModelNotAvailable True"
        assert "will be replaced" in message

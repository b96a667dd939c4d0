"""Tests of tests/make_tiny_model.py, the builder of tiny opus-mt checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from core.models import checkpoint_name
from tests.make_tiny_model import STAMP_NAME, build_tiny_model

pytestmark = [
    pytest.mark.unit,
    # MarianTokenizer warns on every load when sacremoses is not installed.
    pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses"),
]

HUB_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "source.spm",
    "target.spm",
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep transformers from contacting the hub while loading local folders."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_layout_matches_hub(tiny_model_dir: Path) -> None:
    folder = tiny_model_dir / "opus-mt-en-es"

    assert folder.name == checkpoint_name("en", "es")
    for name in HUB_FILES:
        assert (folder / name).is_file(), name


def test_special_token_ids_follow_marian(tiny_model_dir: Path) -> None:
    folder = tiny_model_dir / "opus-mt-en-es"
    vocab = read_json(folder / "vocab.json")
    config = read_json(folder / "config.json")
    generation = read_json(folder / "generation_config.json")
    pad_id = len(vocab) - 1

    assert vocab["</s>"] == 0
    assert vocab["<unk>"] == 1
    assert vocab["<pad>"] == pad_id
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert 200 <= len(vocab) <= 600
    assert config["vocab_size"] == len(vocab)
    assert config["pad_token_id"] == pad_id
    assert config["decoder_start_token_id"] == pad_id
    assert config["eos_token_id"] == 0
    assert config["max_position_embeddings"] == 512
    assert generation["bad_words_ids"] == [[pad_id]]
    assert generation["decoder_start_token_id"] == pad_id


def test_loads_and_generates(tiny_model_dir: Path) -> None:
    from transformers import MarianMTModel, MarianTokenizer

    folder = tiny_model_dir / "opus-mt-en-de"
    tokenizer = MarianTokenizer.from_pretrained(folder)
    model = MarianMTModel.from_pretrained(folder).eval()

    inputs = tokenizer(["The train leaves at seven."], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, num_beams=1)
    text = tokenizer.batch_decode(output, skip_special_tokens=True)[0]

    assert inputs["input_ids"][0, -1].item() == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    assert output.shape[1] <= 1 + 5
    assert isinstance(text, str)
    assert text.strip() != ""


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", "en", "fr", seed=3)
    second = build_tiny_model(tmp_path / "b", "en", "fr", seed=3)

    assert file_bytes(first) == file_bytes(second)


def test_other_seed_other_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", "de", "en", seed=0)
    second = build_tiny_model(tmp_path / "b", "de", "en", seed=1)

    first_weights = (first / "model.safetensors").read_bytes()
    second_weights = (second / "model.safetensors").read_bytes()
    assert first_weights != second_weights


def test_target_tokens_in_vocab(tmp_path: Path) -> None:
    from transformers import MarianTokenizer

    folder = build_tiny_model(tmp_path, "en", "fr", target_tokens=["es", "fr"])
    tokenizer = MarianTokenizer.from_pretrained(folder)
    ids = tokenizer([">>es<< Good morning."])["input_ids"][0]

    assert tokenizer.supported_language_codes == [">>es<<", ">>fr<<"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(">>es<<")
    assert ids[0] != tokenizer.unk_token_id


def test_init_std_scales_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    default = build_tiny_model(tmp_path / "a", "en", "es")
    large = build_tiny_model(tmp_path / "b", "en", "es", init_std=1.0)

    default_weight = load_file(default / "model.safetensors")["model.shared.weight"]
    large_weight = load_file(large / "model.safetensors")["model.shared.weight"]
    assert read_json(large / "config.json")["init_std"] == 1.0
    assert large_weight.std().item() > 10 * default_weight.std().item()


def test_existing_folder_reused(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, "es", "en")
    weights = folder / "model.safetensors"
    first_mtime = weights.stat().st_mtime_ns
    first_bytes = weights.read_bytes()

    build_tiny_model(tmp_path, "es", "en")
    reused_mtime = weights.stat().st_mtime_ns
    build_tiny_model(tmp_path, "es", "en", seed=5)

    assert reused_mtime == first_mtime
    assert read_json(folder / STAMP_NAME)["seed"] == 5
    assert weights.read_bytes() != first_bytes
    assert sorted(path.name for path in tmp_path.iterdir()) == ["opus-mt-es-en"]


def test_region_tag_in_folder_name(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, "pt-BR", "en")

    assert folder.name == "opus-mt-pt_BR-en"
    assert read_json(folder / "tokenizer_config.json")["source_lang"] == "pt-BR"


def test_command_line_writes_folder(tmp_path: Path) -> None:
    script = PROJECT_ROOT / "tests" / "make_tiny_model.py"

    command = [sys.executable, str(script), str(tmp_path), "en", "de"]
    options = ["--seed", "2", "--init-std", "0.5", "--target-tokens", "es,fr"]

    result = subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    folder = tmp_path / "opus-mt-en-de"
    stamp = read_json(folder / STAMP_NAME)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(folder)
    assert (folder / "model.safetensors").is_file()
    assert stamp["seed"] == 2
    assert stamp["init_std"] == 0.5
    assert stamp["target_tokens"] == ["es", "fr"]


def test_vocab_filled_to_shape_size() -> None:
    from tests.make_tiny_model import _joint_vocab, _train_sentencepiece, corpus_for

    spm = _train_sentencepiece(corpus_for("en"), seed=0)
    vocab = _joint_vocab(spm, spm, ["es"], vocab_size=1000)

    assert len(vocab) == 1000
    assert vocab["</s>"] == 0
    assert vocab[">>es<<"] == 2
    assert vocab["<pad>"] == 999
    assert "<fill-0>" in vocab


def test_unknown_shape_names_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown model shape 'huge'\. Use one of"):
        build_tiny_model(tmp_path, "en", "es", shape="huge")

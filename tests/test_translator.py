"""Tests of core.translator with real tiny MarianMT checkpoints."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings, get_settings, reset_settings
from core.models import LoadedModel, load_model, unload_all
from core.segmentation import join_segments, split_text
from core.translator import (
    LENGTH_BUCKET,
    NO_REPEAT_NGRAM_SIZE,
    REPETITION_PENALTY,
    generation_settings,
    length_bucket,
    max_new_tokens,
    plan_batches,
    translate_texts,
)
from tests.make_tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.unit,
    # MarianTokenizer warns on every load when sacremoses is not installed.
    pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses"),
]

SETTING_ENV_VARS = (
    "LANGUAGE_PAIRS",
    "MAX_LOADED_MODELS",
    "DEVICE",
    "PRECISION",
    "NUM_BEAMS",
    "BATCH_TOKEN_BUDGET",
    "MAX_BATCH_SIZE",
    "MAX_NEW_TOKENS_RATIO",
    "MAX_NEW_TOKENS_EXTRA",
)

SENTENCES = (
    "The morning train to the coast leaves at seven.",
    "Please send me the report before noon.",
    "Why did the shop raise its prices in June?",
    "It was cold.",
    "The students asked many questions after the lecture, and nobody knew "
    "where the old key had been hidden.",
)


SHORT_TEXTS = (
    "It was cold.",
    "Hello there.",
    "Which bus?",
    "Good morning.",
    "Thank you.",
    "The cat sat.",
    "Send it now!",
)


@pytest.fixture(scope="module")
def varied_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR whose en-es weights are large enough that outputs differ.

    With the default 0.02 initialisation a tiny model writes the same tokens
    for every input, which would hide pieces swapped between texts.
    """
    model_dir = tmp_path_factory.mktemp("varied-models")
    build_tiny_model(model_dir, "en", "es", init_std=0.2)
    return model_dir


@pytest.fixture(autouse=True)
def fast_generation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Use greedy search and short outputs so every test runs in seconds."""
    for name in SETTING_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # These tests inspect the transformers model; tests/test_engines.py
    # compares CTranslate2 with it.
    monkeypatch.setenv("ENGINE", "transformers")
    monkeypatch.setenv("NUM_BEAMS", "1")
    monkeypatch.setenv("MAX_NEW_TOKENS_RATIO", "0.2")
    monkeypatch.setenv("MAX_NEW_TOKENS_EXTRA", "3")
    reset_settings()
    unload_all()
    yield
    unload_all()
    reset_settings()


def use_model(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, **values: str
) -> LoadedModel:
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return load_model("en", "es")


class GenerateSpy:
    """Wraps a real model's generate and records the arguments of each call."""

    def __init__(self, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        self._generate = loaded.model.generate
        monkeypatch.setattr(loaded.model, "generate", self)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self._generate(**kwargs)

    def rows(self) -> list[tuple[int, ...]]:
        """Return the unpadded input ids of every generated item, in call order."""
        rows = []
        for call in self.calls:
            for ids, mask in zip(
                call["input_ids"], call["attention_mask"], strict=True
            ):
                rows.append(tuple(int(token) for token in ids[mask.bool()]))
        return rows


def input_lengths(call: dict[str, Any]) -> list[int]:
    return [int(length) for length in call["attention_mask"].sum(dim=1)]


def token_ids(loaded: LoadedModel, text: str) -> tuple[int, ...]:
    return tuple(loaded.tokenizer(text)["input_ids"])


def test_one_output_per_input_in_order(
    monkeypatch: pytest.MonkeyPatch, varied_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, varied_model_dir)
    texts = list(SHORT_TEXTS)

    together = translate_texts(loaded, texts, "en")
    alone = [translate_texts(loaded, [text], "en")[0] for text in texts]

    assert len(together) == len(texts)
    assert together == alone
    assert len(set(together)) > 3


def test_blank_texts_skip_model(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, tiny_model_dir)
    spy = GenerateSpy(loaded, monkeypatch)
    texts = ["", "   ", "\n\t\r\n", "12.5", "Q-7", " A4 ", "---", "3 + 4 = 7."]

    assert translate_texts(loaded, texts, "en") == texts
    assert translate_texts(loaded, [], "en") == []
    assert spy.calls == []


def test_blank_texts_keep_position(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, tiny_model_dir)
    spy = GenerateSpy(loaded, monkeypatch)

    outputs = translate_texts(loaded, ["", "It was cold.", "  "], "en")

    assert outputs[0] == ""
    assert outputs[2] == "  "
    assert outputs[1].strip() != ""
    assert spy.rows() == [token_ids(loaded, "It was cold.")]


def test_generate_arguments_explicit(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    loaded = use_model(
        monkeypatch, tiny_model_dir, BATCH_TOKEN_BUDGET="64", MAX_BATCH_SIZE="3"
    )
    spy = GenerateSpy(loaded, monkeypatch)
    settings = get_settings()
    texts = [" ".join(SENTENCES[: count + 1]) for count in range(len(SENTENCES))]

    translate_texts(loaded, [*texts, *SENTENCES], "en")

    assert len(spy.calls) > 1
    for call in spy.calls:
        lengths = input_lengths(call)
        longest = max(lengths)
        bucket = length_bucket(longest)
        expected_new = min(
            loaded.max_input_tokens,
            math.ceil(bucket * settings.max_new_tokens_ratio)
            + settings.max_new_tokens_extra,
        )
        assert {length_bucket(length) for length in lengths} == {bucket}
        assert call["max_new_tokens"] == expected_new
        assert call["num_beams"] == 1
        assert call["no_repeat_ngram_size"] == NO_REPEAT_NGRAM_SIZE
        assert call["repetition_penalty"] == REPETITION_PENALTY
        assert call["input_ids"].shape[1] == longest
        assert longest <= loaded.max_input_tokens
        assert len(lengths) <= 3
        assert len(lengths) == 1 or len(lengths) * longest <= 64


def test_batches_sorted_by_length(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    loaded = use_model(
        monkeypatch, tiny_model_dir, BATCH_TOKEN_BUDGET="100", MAX_BATCH_SIZE="2"
    )
    spy = GenerateSpy(loaded, monkeypatch)

    translate_texts(loaded, list(SENTENCES), "en")

    batch_lengths = [input_lengths(call) for call in spy.calls]
    flat = [length for lengths in batch_lengths for length in lengths]
    assert flat == sorted(flat, reverse=True)
    assert len(flat) == len(SENTENCES)
    assert all(len(lengths) <= 2 for lengths in batch_lengths)


def test_identical_pieces_generated_once(
    monkeypatch: pytest.MonkeyPatch, varied_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, varied_model_dir)
    spy = GenerateSpy(loaded, monkeypatch)
    repeated = "It was cold. Please send me the report before noon."

    outputs = translate_texts(loaded, [repeated, "It was cold.", repeated], "en")

    expected_rows = {
        token_ids(loaded, "It was cold."),
        token_ids(loaded, "Please send me the report before noon."),
    }
    assert len(spy.rows()) == 2
    assert set(spy.rows()) == expected_rows
    assert outputs[0] == outputs[2]
    assert outputs[0].startswith(outputs[1] + " ")


def test_long_text_matches_pieces(
    monkeypatch: pytest.MonkeyPatch, varied_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, varied_model_dir)
    limit = loaded.max_input_tokens - 1

    def count_tokens(text: str) -> int:
        return len(loaded.tokenizer.tokenize(text))

    paragraph = " ".join(SENTENCES)
    # One sentence of lower-case clauses with no full stop, far over the limit.
    run_on = ", ".join(sentence.rstrip(".?").lower() for sentence in SENTENCES * 12)
    text = f"  {paragraph}\r\n\r\n{run_on}\n\n\n{paragraph}\n"
    segments = split_text(text, "en", count_tokens, limit)
    pieces = [segment.text for segment in segments if segment.translate]
    alone = {piece: translate_texts(loaded, [piece], "en")[0] for piece in pieces}
    expected = join_segments(segments, [alone[piece] for piece in pieces])

    spy = GenerateSpy(loaded, monkeypatch)
    translated = translate_texts(loaded, [text], "en")[0]

    assert count_tokens(run_on) > 2 * limit
    assert len(pieces) >= 2 * len(SENTENCES) + 3
    assert all(count_tokens(piece) <= limit for piece in pieces)
    assert len(spy.rows()) == len(set(pieces))
    assert all(len(row) <= loaded.max_input_tokens for row in spy.rows())
    assert translated.startswith("  ")
    assert translated.count("\r\n\r\n") == 1
    assert translated.count("\n\n\n") == 1
    assert translated.endswith("\n")
    assert translated == expected


def test_plan_batches_respects_budget() -> None:
    lengths = [5, 40, 12, 40, 3, 30, 600]

    batches = plan_batches(lengths, token_budget=100, max_batch_size=3)

    # 600 is over the budget; 40 and 40 share a bucket; 30, 12 and 5 do not;
    # 5 and 3 share the first bucket.
    assert LENGTH_BUCKET == 8
    assert batches == [[6], [1, 3], [5], [2], [0, 4]]


def test_max_new_tokens_capped(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    loaded = use_model(monkeypatch, tiny_model_dir)
    settings = Settings(max_new_tokens_ratio=1.5, max_new_tokens_extra=10)

    assert max_new_tokens(loaded, 10, settings) == 34
    assert max_new_tokens(loaded, 16, settings) == 34
    assert max_new_tokens(loaded, 17, settings) == 46
    assert max_new_tokens(loaded, 500, settings) == loaded.max_input_tokens


def test_generation_settings_follow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUM_BEAMS", "6")
    monkeypatch.setenv("MAX_NEW_TOKENS_RATIO", "2.5")
    monkeypatch.setenv("MAX_NEW_TOKENS_EXTRA", "7")
    reset_settings()

    assert generation_settings() == {
        "num_beams": 6,
        "max_new_tokens_ratio": 2.5,
        "max_new_tokens_extra": 7,
        "length_bucket": LENGTH_BUCKET,
        "no_repeat_ngram_size": NO_REPEAT_NGRAM_SIZE,
        "repetition_penalty": REPETITION_PENALTY,
    }

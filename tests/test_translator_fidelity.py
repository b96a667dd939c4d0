"""Tests of batch invariance, scores and target tokens in core.translator."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import translator
from core.config import reset_settings
from core.models import LoadedModel, load_model, unload_all
from core.translator import (
    score_sequences,
    strip_target_tokens,
    translate_texts,
    translate_texts_scored,
    with_target_token,
)
from tests.make_tiny_model import CORPORA, build_tiny_model

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

# With weights this large, the gap between the best and the second token of a
# greedy step was at least 1e-3 in log-probability (median 0.84) on these
# texts, far above the 1e-6 that padding changes in the logits.
LARGE_INIT_STD = 0.5

# Short and long texts, so the shuffled batches mix length buckets.
VARIED_TEXTS = (
    *CORPORA["en"][:24],
    "Yes.",
    "Thank you very much.",
    "Where is it?",
    "The students asked many questions after the lecture, and nobody knew "
    "where the old key had been hidden, so the library stayed closed.",
    "Heavy rain is expected in the north this weekend, and the roads near "
    "the coast may be closed until Monday morning.",
    "Go.",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR with a large-weight en-es and a multi-target en-ROMANCE."""
    folder = tmp_path_factory.mktemp("fidelity-models")
    build_tiny_model(folder, "en", "es", init_std=LARGE_INIT_STD)
    build_tiny_model(
        folder, "en", "ROMANCE", init_std=LARGE_INIT_STD, target_tokens=["es", "fr"]
    )
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the tiny models gain nothing from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fast_generation(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> Iterator[None]:
    """Use greedy search, short outputs and the module's MODEL_DIR."""
    for name in SETTING_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
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


def use_settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings()


class GenerateSpy:
    """Wraps a real model's generate and records each call and its output."""

    def __init__(self, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self.original = loaded.model.generate
        monkeypatch.setattr(loaded.model, "generate", self)

    def __call__(self, **kwargs: Any) -> Any:
        output = self.original(**kwargs)
        self.calls.append((kwargs, output))
        return output


@pytest.mark.parametrize("num_beams", ["1", "4"])
def test_batch_invariance(monkeypatch: pytest.MonkeyPatch, num_beams: str) -> None:
    use_settings(monkeypatch, NUM_BEAMS=num_beams)
    loaded = load_model("en", "es")
    texts = list(VARIED_TEXTS)
    alone = [translate_texts(loaded, [text], "en")[0] for text in texts]

    for seed, batch_size in ((1, "64"), (2, "5")):
        use_settings(monkeypatch, MAX_BATCH_SIZE=batch_size)
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        together = translate_texts(loaded, [texts[index] for index in order], "en")

        for position, index in enumerate(order):
            assert together[position] == alone[index], texts[index]
    assert len(set(alone)) > len(texts) // 2


def forced_scores(
    loaded: LoadedModel, kwargs: dict[str, Any], sequences: Any
) -> list[float]:
    """Recompute each row's score by teacher forcing its output tokens."""
    import torch

    eos = loaded.model.generation_config.eos_token_id
    with torch.inference_mode():
        logits = loaded.model(
            input_ids=kwargs["input_ids"],
            attention_mask=kwargs["attention_mask"],
            decoder_input_ids=sequences[:, :-1],
        ).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    chosen = log_probs.gather(-1, sequences[:, 1:, None])[..., 0]
    scores = []
    for row in range(sequences.shape[0]):
        tokens = sequences[row, 1:].tolist()
        count = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        scores.append(math.exp(float(chosen[row, :count].mean())))
    return scores


def transition_scores(
    loaded: LoadedModel, spy: GenerateSpy, kwargs: dict[str, Any], sequences: Any
) -> list[float]:
    """Score each row from the logits that generate keeps for every step."""
    import torch

    # generate repeats encoder_outputs for beam search inside the recorded
    # object, so the encoder runs again from input_ids.
    kwargs = {key: value for key, value in kwargs.items() if key != "encoder_outputs"}
    with torch.inference_mode():
        output = spy.original(
            **kwargs, output_logits=True, return_dict_in_generate=True
        )
        transition = loaded.model.compute_transition_scores(
            output.sequences,
            output.logits,
            getattr(output, "beam_indices", None),
            normalize_logits=True,
        )
    assert torch.equal(output.sequences, sequences)
    eos = loaded.model.generation_config.eos_token_id
    scores = []
    for row in range(sequences.shape[0]):
        tokens = sequences[row, 1:].tolist()
        count = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        scores.append(math.exp(float(transition[row, :count].mean())))
    return scores


@pytest.mark.parametrize("num_beams", ["1", "4"])
def test_score_matches_forward_pass(
    monkeypatch: pytest.MonkeyPatch, num_beams: str
) -> None:
    use_settings(monkeypatch, NUM_BEAMS=num_beams, MAX_NEW_TOKENS_RATIO="0.5")
    loaded = load_model("en", "es")
    texts = list(CORPORA["en"][:6])
    spy = GenerateSpy(loaded, monkeypatch)

    results = translate_texts_scored(loaded, texts, "en")

    expected: dict[str, float] = {}
    for kwargs, sequences in spy.calls:
        inputs = loaded.tokenizer.batch_decode(
            kwargs["input_ids"], skip_special_tokens=True
        )
        scores = forced_scores(loaded, kwargs, sequences)
        expected.update(zip(inputs, scores, strict=True))
        from_logits = transition_scores(loaded, spy, kwargs, sequences)
        assert scores == pytest.approx(from_logits, abs=1e-4)
    for text, result in zip(texts, results, strict=True):
        assert result.score is not None
        assert 0.0 < result.score <= 1.0
        assert result.score == pytest.approx(expected[text], abs=1e-4)
    unscored = translate_texts(loaded, texts, "en")
    assert [result.text for result in results] == unscored


@pytest.mark.parametrize("num_beams", ["1", "4"])
def test_generate_keeps_no_logits(
    monkeypatch: pytest.MonkeyPatch, num_beams: str
) -> None:
    use_settings(monkeypatch, NUM_BEAMS=num_beams)
    loaded = load_model("en", "es")
    spy = GenerateSpy(loaded, monkeypatch)

    translate_texts_scored(loaded, list(CORPORA["en"][:4]), "en")

    assert spy.calls
    for kwargs, sequences in spy.calls:
        assert kwargs.get("output_logits") is not True
        assert kwargs.get("output_scores") is not True
        assert kwargs.get("return_dict_in_generate") is not True
        assert sequences.ndim == 2
    assert loaded.model.generation_config.output_logits is not True
    assert loaded.model.generation_config.output_scores is not True


def test_unscored_skips_rescoring(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("en", "es")
    calls: list[int] = []

    def counting_score_sequences(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return score_sequences(*args, **kwargs)

    monkeypatch.setattr(translator, "score_sequences", counting_score_sequences)

    translate_texts(loaded, list(CORPORA["en"][:4]), "en")
    assert calls == []
    translate_texts_scored(loaded, list(CORPORA["en"][:4]), "en")
    assert calls


class ForwardSpy:
    """Wraps a real model's forward and records each batch's row count."""

    def __init__(self, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[int] = []
        self.original = loaded.model.forward
        monkeypatch.setattr(loaded.model, "forward", self)

    def __call__(self, **kwargs: Any) -> Any:
        self.rows.append(int(kwargs["decoder_input_ids"].shape[0]))
        return self.original(**kwargs)


def generate_batch(loaded: LoadedModel, texts: list[str]) -> tuple[Any, Any]:
    """Return a batch's tokenized inputs and the sequences generated for it."""
    import torch

    inputs = loaded.tokenizer(texts, return_tensors="pt", padding="longest")
    with torch.inference_mode():
        sequences = loaded.model.generate(**inputs, max_new_tokens=12, num_beams=1)
    return inputs, sequences


def test_rescoring_chunks_within_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("en", "es")
    inputs, sequences = generate_batch(loaded, list(CORPORA["en"][:5]))
    steps = sequences.shape[1] - 1
    vocab_size = loaded.model.get_output_embeddings().weight.shape[0]
    row_bytes = steps * vocab_size * 4
    whole_sums, whole_counts = score_sequences(
        loaded, inputs["attention_mask"], sequences, input_ids=inputs["input_ids"]
    )

    bound = 2 * row_bytes + row_bytes // 2
    monkeypatch.setattr(translator, "RESCORE_MAX_LOGIT_BYTES", bound)
    spy = ForwardSpy(loaded, monkeypatch)
    sums, counts = score_sequences(
        loaded, inputs["attention_mask"], sequences, input_ids=inputs["input_ids"]
    )

    assert spy.rows == [2, 2, 1]
    assert all(rows * row_bytes <= bound for rows in spy.rows)
    assert counts == whole_counts
    assert sums == pytest.approx(whole_sums, abs=1e-4)


def test_rescoring_takes_one_row_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("en", "es")
    inputs, sequences = generate_batch(loaded, list(CORPORA["en"][:3]))
    monkeypatch.setattr(translator, "RESCORE_MAX_LOGIT_BYTES", 1)
    spy = ForwardSpy(loaded, monkeypatch)

    score_sequences(
        loaded, inputs["attention_mask"], sequences, input_ids=inputs["input_ids"]
    )

    assert spy.rows == [1, 1, 1]


@pytest.mark.parametrize("num_beams", ["1", "4"])
def test_scores_same_in_small_chunks(
    monkeypatch: pytest.MonkeyPatch, num_beams: str
) -> None:
    use_settings(monkeypatch, NUM_BEAMS=num_beams, MAX_NEW_TOKENS_RATIO="0.5")
    loaded = load_model("en", "es")
    texts = list(VARIED_TEXTS[:10])
    whole = translate_texts_scored(loaded, texts, "en")

    monkeypatch.setattr(translator, "RESCORE_MAX_LOGIT_BYTES", 1)
    chunked = translate_texts_scored(loaded, texts, "en")

    for whole_result, chunked_result in zip(whole, chunked, strict=True):
        assert chunked_result.text == whole_result.text
        assert whole_result.score is not None
        assert chunked_result.score == pytest.approx(whole_result.score, abs=1e-4)


def test_rescoring_stops_at_first_eos() -> None:
    import torch

    loaded = load_model("en", "es")
    config = loaded.model.generation_config
    start, eos, pad = (
        config.decoder_start_token_id,
        config.eos_token_id,
        config.pad_token_id,
    )
    words = [
        token
        for token in range(loaded.model.get_output_embeddings().weight.shape[0])
        if token not in {start, eos, pad}
    ]
    a, b, c = words[5:8]
    sequences = torch.tensor(
        [
            [start, a, b, eos, c, a],
            [start, a, b, eos, pad, pad],
            [start, a, b, c, a, b],
            [start, eos, a, eos, b, c],
        ]
    )
    inputs = loaded.tokenizer(["It was cold."] * 4, return_tensors="pt")

    sums, counts = score_sequences(
        loaded, inputs["attention_mask"], sequences, input_ids=inputs["input_ids"]
    )

    with torch.inference_mode():
        logits = loaded.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=sequences[:, :-1],
        ).logits
    chosen = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, sequences[:, 1:, None]
    )[..., 0]
    assert counts == [3, 3, 5, 1]
    assert sums[0] == pytest.approx(float(chosen[0, :3].sum()), abs=1e-4)
    assert sums[1] == pytest.approx(sums[0], abs=1e-4)
    assert sums[2] == pytest.approx(float(chosen[2].sum()), abs=1e-4)
    assert sums[3] == pytest.approx(float(chosen[3, 0]), abs=1e-4)
    # The tokens after the first EOS have a probability of their own, which
    # would change the sum if they counted.
    assert float(chosen[0, 3:].sum()) != pytest.approx(0.0, abs=1e-3)


def test_scores_of_repeats_and_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("en", "es")
    first, second = CORPORA["en"][0], CORPORA["en"][3]
    texts = [first, "", "12.5 / Q-7", first, f"{first} {second}", second]

    results = translate_texts_scored(loaded, texts, "en")
    scores = [result.score for result in results]

    assert [result.text for result in results[1:3]] == ["", "12.5 / Q-7"]
    assert scores[1] is None
    assert scores[2] is None
    assert scores[0] == scores[3]
    assert scores[0] is not None and scores[5] is not None
    assert scores[4] is not None
    assert min(scores[0], scores[5]) <= scores[4] <= max(scores[0], scores[5])
    assert results[4].text == f"{results[0].text} {results[5].text}"


def test_target_token_once_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("en", "es")
    romance = load_model("en", "fr")
    texts = ["Good morning. How are you?", ">>fr<< Good night.", "It was cold."]
    spy = GenerateSpy(romance, monkeypatch)
    token_ids = {
        romance.tokenizer.convert_tokens_to_ids(token) for token in (">>es<<", ">>fr<<")
    }
    es_id = romance.tokenizer.convert_tokens_to_ids(">>es<<")
    fr_id = romance.tokenizer.convert_tokens_to_ids(">>fr<<")

    results = translate_texts_scored(romance, texts, "en", target_token=">>es<<")

    rows = []
    for kwargs, _output in spy.calls:
        for ids, mask in zip(
            kwargs["input_ids"], kwargs["attention_mask"], strict=True
        ):
            rows.append([int(token) for token in ids[mask.bool()]])
    assert loaded.target_token is None
    assert romance.name == "opus-mt-en-ROMANCE"
    assert romance.target_token == ">>fr<<"
    assert len(rows) == 4
    # The requested token leads every row exactly once; a ">>fr<<" typed by
    # the user is plain text and never becomes the French token.
    assert all(row[0] == es_id for row in rows)
    assert all(sum(token in token_ids for token in row) == 1 for row in rows)
    assert all(fr_id not in row for row in rows)
    assert all(">>" not in result.text for result in results)


def test_multi_target_default_token(monkeypatch: pytest.MonkeyPatch) -> None:
    romance = load_model("en", "fr")
    spy = GenerateSpy(romance, monkeypatch)
    fr_id = romance.tokenizer.convert_tokens_to_ids(">>fr<<")

    translate_texts(romance, ["It was cold."], "en")

    kwargs, _output = spy.calls[0]
    assert int(kwargs["input_ids"][0, 0]) == fr_id


def test_target_token_helpers() -> None:
    assert with_target_token("Hello.", ">>es<<") == ">>es<< Hello."
    assert with_target_token(">>fr<< Hello.", ">>es<<") == ">>es<< >>fr<< Hello."
    assert with_target_token("Hello.", None) == "Hello."
    assert strip_target_tokens(">>es<< Hola.") == "Hola."
    assert strip_target_tokens("Hola >>fr<< mundo >>es<<") == "Hola mundo"
    assert strip_target_tokens("a >> b << c") == "a >> b << c"

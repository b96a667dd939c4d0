"""Batched translation of texts with a loaded MarianMT model.

Texts are split into sentences that fit the model's input limit, identical
pieces are translated once, and pieces of similar token length share a batch
so little padding is computed. Each piece's output limit depends only on its
own length bucket, and a batch contains pieces of one bucket, so a text
translates to the same tokens alone and inside any batch. torch is imported
only inside the functions that run the model, so importing this module stays
light.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.config import Settings, get_settings
from core.models import LoadedModel
from core.segmentation import Segment, join_segments, split_text

logger = logging.getLogger(__name__)

# Marian appends one EOS token to every input, and the splitter counts the
# tokens of the text alone.
EOS_MARGIN = 1

# Input lengths are rounded up to a multiple of this many tokens before the
# output limit is computed, and a batch contains inputs of one rounded length.
LENGTH_BUCKET = 8

# Defaults for the settings of the same names. An n-gram of this many output
# tokens is never generated twice, which ends loops such as "la la la ...".
# NOTE: this also blocks a legitimate repeat of 8 tokens within one sentence,
# such as a long name or number written twice; set 0 to turn it off.
NO_REPEAT_NGRAM_SIZE = 8
# 1.0 is off. transformers divides the logit of every token already in the
# output by this value, which also penalises the articles, punctuation and
# digits that a correct translation repeats.
REPETITION_PENALTY = 1.0

# A batch is rescored in chunks of rows whose float32 logits, rows × output
# length × vocabulary size × 4 bytes, stay within this many bytes. Peak memory
# is about twice this, because log_softmax writes a tensor of the same size.
RESCORE_MAX_LOGIT_BYTES = 256 * 1024 * 1024

_TARGET_TOKEN = re.compile(r">>\w+<<")


@dataclass(frozen=True)
class ScoredTranslation:
    """A translation with the model's confidence in it.

    ``score`` is the exponent of the mean log-probability per generated
    token, in (0, 1], or None for a text that never reached the model.
    """

    text: str
    score: float | None


@dataclass(frozen=True)
class _PieceOutput:
    text: str
    log_probability: float
    tokens: int


def generation_settings(settings: Settings | None = None) -> dict[str, Any]:
    """Return the generation settings that change the output for a given input."""
    settings = settings or get_settings()
    result: dict[str, Any] = {
        "num_beams": settings.num_beams,
        "max_new_tokens_ratio": settings.max_new_tokens_ratio,
        "max_new_tokens_extra": settings.max_new_tokens_extra,
        "length_bucket": LENGTH_BUCKET,
        "no_repeat_ngram_size": no_repeat_ngram_size(settings),
        "repetition_penalty": repetition_penalty(settings),
    }
    if forced_output_tokens(settings):
        result["forced_output_tokens"] = True
    return result


def no_repeat_ngram_size(settings: Settings) -> int:
    """Return ``NO_REPEAT_NGRAM_SIZE`` from the settings, else the default."""
    return int(getattr(settings, "no_repeat_ngram_size", NO_REPEAT_NGRAM_SIZE))


def forced_output_tokens(settings: Settings) -> bool:
    """Return ``BENCH_FORCED_OUTPUT_TOKENS`` from the settings, else False."""
    return bool(getattr(settings, "bench_forced_output_tokens", False))


def repetition_penalty(settings: Settings) -> float:
    """Return ``REPETITION_PENALTY`` from the settings, else the default."""
    return float(getattr(settings, "repetition_penalty", REPETITION_PENALTY))


def translate_texts(
    loaded: LoadedModel, texts: Sequence[str], source_lang: str
) -> list[str]:
    """Translate each text and return the outputs in input order.

    Empty texts and texts without words are returned unchanged without
    reaching the model. Line breaks and the whitespace between sentences are
    kept as they are in the input.
    """
    results = _translate(loaded, texts, source_lang, None, scored=False)
    return [result.text for result in results]


def translate_texts_scored(
    loaded: LoadedModel,
    texts: Sequence[str],
    source_lang: str,
    target_token: str | None = None,
) -> list[ScoredTranslation]:
    """Translate each text and score it, in input order.

    ``target_token`` (such as ``>>es<<``) is put before every piece that does
    not start with one; it defaults to ``loaded.target_token``. The score of
    a text of several pieces is the exponent of the mean log-probability
    over all their generated tokens, so longer pieces weigh more.
    """
    return _translate(loaded, texts, source_lang, target_token, scored=True)


def _translate(
    loaded: LoadedModel,
    texts: Sequence[str],
    source_lang: str,
    target_token: str | None,
    scored: bool,
) -> list[ScoredTranslation]:
    settings = get_settings()
    token = target_token if target_token is not None else loaded.target_token
    limit = loaded.max_input_tokens - EOS_MARGIN - (1 if token else 0)

    def count_tokens(text: str) -> int:
        return len(loaded.tokenizer.tokenize(text))

    plans: dict[int, list[Segment]] = {}
    for index, text in enumerate(texts):
        if text.strip():
            plans[index] = split_text(text, source_lang, count_tokens, limit)

    pieces = list(
        dict.fromkeys(
            segment.text
            for segments in plans.values()
            for segment in segments
            if segment.translate
        )
    )
    translated = _translate_pieces(loaded, pieces, token, settings, scored)

    results = [ScoredTranslation(text, None) for text in texts]
    for index, segments in plans.items():
        outputs = [
            translated[segment.text] for segment in segments if segment.translate
        ]
        text = join_segments(segments, [output.text for output in outputs])
        results[index] = ScoredTranslation(text, _combined_score(outputs, scored))
    return results


def _combined_score(outputs: list[_PieceOutput], scored: bool) -> float | None:
    tokens = sum(output.tokens for output in outputs)
    if not scored or tokens == 0:
        return None
    log_probability = sum(output.log_probability for output in outputs)
    return math.exp(log_probability / tokens)


def with_target_token(piece: str, target_token: str | None) -> str:
    """Put ``target_token`` before ``piece``.

    The requested token always comes first, so a ``>>xx<<`` that the user
    typed at the start of the text is read by the tokenizer as plain text and
    cannot change the target language.
    """
    if target_token is None:
        return piece
    return f"{target_token} {piece}"


def strip_target_tokens(text: str) -> str:
    """Remove every ``>>xx<<`` token from a decoded output."""
    if ">>" not in text:
        return text
    parts = [part.strip() for part in _TARGET_TOKEN.split(text)]
    return " ".join(part for part in parts if part)


def _translate_pieces(
    loaded: LoadedModel,
    pieces: list[str],
    target_token: str | None,
    settings: Settings,
    scored: bool,
) -> dict[str, _PieceOutput]:
    """Translate distinct pieces and return a mapping from piece to output."""
    if not pieces:
        return {}

    started = time.perf_counter()
    inputs = [with_target_token(piece, target_token) for piece in pieces]
    lengths = [len(ids) for ids in loaded.tokenizer(inputs)["input_ids"]]
    batches = plan_batches(
        lengths, settings.batch_token_budget, settings.max_batch_size
    )
    translated: dict[str, _PieceOutput] = {}
    for batch in batches:
        bucket = length_bucket(lengths[batch[0]])
        outputs = _generate(
            loaded, [inputs[index] for index in batch], bucket, settings, scored
        )
        for index, output in zip(batch, outputs, strict=True):
            translated[pieces[index]] = output

    logger.debug(
        "Translated %d pieces in %d batches with %s in %.3f s",
        len(pieces),
        len(batches),
        loaded.name,
        time.perf_counter() - started,
    )
    return translated


def length_bucket(input_tokens: int) -> int:
    """Round an input length up to a multiple of ``LENGTH_BUCKET``."""
    return max(1, math.ceil(input_tokens / LENGTH_BUCKET)) * LENGTH_BUCKET


def plan_batches(
    lengths: Sequence[int], token_budget: int, max_batch_size: int
) -> list[list[int]]:
    """Group item indices into batches, longest items first.

    All items of a batch share one ``length_bucket``. A batch contains at most
    ``max_batch_size`` items, and its item count times its longest length
    stays within ``token_budget``. An item longer than the budget gets a
    batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Items come longest first, so the first item sets the padded length.
        longest = lengths[current[0]] if current else lengths[index]
        full = len(current) >= max_batch_size
        over_budget = (len(current) + 1) * longest > token_budget
        new_bucket = bool(current) and length_bucket(lengths[index]) != length_bucket(
            longest
        )
        if current and (full or over_budget or new_bucket):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def max_new_tokens(loaded: LoadedModel, input_tokens: int, settings: Settings) -> int:
    """Return the output token limit for an input of ``input_tokens`` tokens.

    The limit grows with the input's ``length_bucket``, so it is the same for
    every input of one batch, and never passes the model's position limit,
    which opus-mt checkpoints share between encoder and decoder. With
    ``BENCH_FORCED_OUTPUT_TOKENS`` the limit is the length bucket itself, and
    ``_generate`` makes it the exact output length.
    """
    if forced_output_tokens(settings):
        return min(loaded.max_input_tokens, length_bucket(input_tokens))
    from_input = (
        math.ceil(length_bucket(input_tokens) * settings.max_new_tokens_ratio)
        + settings.max_new_tokens_extra
    )
    return min(loaded.max_input_tokens, from_input)


def _generate(
    loaded: LoadedModel,
    texts: list[str],
    bucket: int,
    settings: Settings,
    scored: bool,
) -> list[_PieceOutput]:
    started = time.perf_counter()
    limit = max_new_tokens(loaded, bucket, settings)
    # Benchmarks only: random weights never emit EOS on their own, so every
    # engine is held to exactly the limit.
    minimum = limit if forced_output_tokens(settings) else 0
    outputs = generate_batch(
        loaded, texts, limit, settings, scored=scored, min_tokens=minimum
    )
    logger.debug(
        "Generated a batch of %d pieces, bucket of %d tokens, with %s in %.3f s",
        len(texts),
        bucket,
        loaded.engine,
        time.perf_counter() - started,
    )
    return [
        _PieceOutput(
            strip_target_tokens(output.text), output.log_probability, output.tokens
        )
        for output in outputs
    ]


@dataclass(frozen=True)
class GeneratedOutput:
    """The output of one input of ``generate_batch``.

    ``text`` is decoded without special tokens but may still contain a
    ``>>xx<<`` token. ``generated_tokens`` counts the output tokens, a final
    EOS included. ``log_probability`` sums the teacher-forced log-probability
    of the ``tokens`` tokens that a score counts, both 0 when not scored.
    """

    text: str
    generated_tokens: int
    log_probability: float
    tokens: int


def generate_batch(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_tokens: int,
    settings: Settings,
    *,
    scored: bool,
    min_tokens: int = 0,
) -> list[GeneratedOutput]:
    """Generate one output per input text with the engine that loaded the model.

    ``max_tokens`` and ``min_tokens`` bound the output tokens, EOS included.
    Beam size and repetition rules come from ``settings``. Outputs come in
    input order.
    """
    if loaded.engine == "ctranslate2":
        return _generate_ctranslate2(
            loaded, texts, max_tokens, min_tokens, settings, scored
        )
    return _generate_transformers(
        loaded, texts, max_tokens, min_tokens, settings, scored
    )


def _generate_transformers(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_tokens: int,
    min_tokens: int,
    settings: Settings,
    scored: bool,
) -> list[GeneratedOutput]:
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    inputs = loaded.tokenizer(
        list(texts), return_tensors="pt", padding="longest", truncation=False
    ).to(loaded.device)
    # min_new_tokens is passed only when set, so the default call to generate
    # keeps its arguments.
    minimum = {"min_new_tokens": min_tokens} if min_tokens > 0 else {}
    with torch.inference_mode():
        # The encoder runs once here, so rescoring can reuse its output.
        encoder_states = loaded.model.get_encoder()(
            **inputs, return_dict=True
        ).last_hidden_state
        # generate repeats the encoder output for beam search inside the object
        # it receives, so it gets an object of its own.
        sequences = loaded.model.generate(
            **inputs,
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
            max_new_tokens=max_tokens,
            num_beams=settings.num_beams,
            no_repeat_ngram_size=no_repeat_ngram_size(settings),
            repetition_penalty=repetition_penalty(settings),
            **minimum,
        )
        decoded = loaded.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        generated = _generated_counts(loaded, sequences)
        if scored:
            sums, counts = score_sequences(
                loaded,
                inputs["attention_mask"],
                sequences,
                encoder_states=encoder_states,
            )
        else:
            sums, counts = [0.0] * len(texts), [0] * len(texts)
    return [
        GeneratedOutput(text, length, total, count)
        for text, length, total, count in zip(
            decoded, generated, sums, counts, strict=True
        )
    ]


def _generated_counts(loaded: LoadedModel, sequences: Any) -> list[int]:
    """Count each row's tokens after the decoder start, pads excluded."""
    labels = sequences[:, 1:]
    pad = loaded.model.generation_config.pad_token_id
    if pad is None:
        return [int(labels.shape[1])] * int(labels.shape[0])
    return [int(value) for value in (labels != pad).sum(dim=1)]


def _generate_ctranslate2(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_tokens: int,
    min_tokens: int,
    settings: Settings,
    scored: bool,
) -> list[GeneratedOutput]:
    from core import ct2

    source_ids = loaded.tokenizer(list(texts), truncation=False)["input_ids"]
    outputs = ct2.generate(
        loaded.model,
        loaded.tokenizer,
        source_ids,
        max_new_tokens=max_tokens,
        min_new_tokens=min_tokens,
        num_beams=settings.num_beams,
        no_repeat_ngram_size=no_repeat_ngram_size(settings),
        repetition_penalty=repetition_penalty(settings),
        scored=scored,
    )
    decoded = loaded.tokenizer.batch_decode(
        [output.token_ids for output in outputs], skip_special_tokens=True
    )
    return [
        GeneratedOutput(
            text, output.generated_tokens, output.log_probability, output.scored_tokens
        )
        for text, output in zip(decoded, outputs, strict=True)
    ]


def score_sequences(
    loaded: LoadedModel,
    attention_mask: Any,
    sequences: Any,
    *,
    input_ids: Any = None,
    encoder_states: Any = None,
) -> tuple[list[float], list[int]]:
    """Sum the log-probability of each row's output tokens, and count them.

    ``sequences`` are generate's outputs, which start with the decoder start
    token. A teacher-forced forward pass returns the model's own probability
    of each token, before any logits processor of generate changed it. The
    tokens up to and including the first EOS count, and pad tokens never
    count. The encoder runs on ``input_ids`` unless ``encoder_states``, its
    last hidden state for these rows, is given.
    """
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    model = loaded.model
    with torch.inference_mode():
        if encoder_states is None:
            encoder_states = model.get_encoder()(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True
            ).last_hidden_state
        decoder_input_ids = sequences[:, :-1]
        labels = sequences[:, 1:]
        mask = _counted_tokens(loaded, labels)
        # out_features, because a dynamically quantized Linear has no
        # weight tensor attribute.
        chunk_rows = rescore_chunk_rows(
            labels.shape[1], model.get_output_embeddings().out_features
        )

        sums = []
        for start in range(0, labels.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = model(
                attention_mask=attention_mask[rows],
                encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states[rows]),
                decoder_input_ids=decoder_input_ids[rows],
                use_cache=False,
            ).logits
            # Each chunk's logits are freed before the next chunk's forward pass.
            log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            chosen = log_probs.gather(-1, labels[rows, :, None]).squeeze(-1)
            del log_probs
            sums.append(torch.where(mask[rows], chosen, 0.0).sum(dim=1))

        totals = torch.cat(sums) if sums else torch.zeros(0)
        counts = mask.sum(dim=1)
    return [float(value) for value in totals], [int(value) for value in counts]


def rescore_chunk_rows(steps: int, vocab_size: int) -> int:
    """Return how many rows one rescoring forward pass may take.

    The float32 logits of a chunk, rows × steps × vocab_size × 4 bytes, stay
    within ``RESCORE_MAX_LOGIT_BYTES``, except that a chunk always takes at
    least one row.
    """
    row_bytes = max(1, steps * vocab_size * 4)
    return max(1, RESCORE_MAX_LOGIT_BYTES // row_bytes)


def _counted_tokens(loaded: LoadedModel, labels: Any) -> Any:
    """Return a boolean mask of the output tokens that a score counts."""
    import torch

    config = loaded.model.generation_config
    eos = config.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos])
    is_eos = torch.isin(labels, eos_ids.to(labels.device))
    # A position counts when no EOS came before it, the first EOS included.
    before_eos = torch.cumsum(is_eos, dim=1) - is_eos.long() == 0
    if config.pad_token_id is None:
        return before_eos
    return before_eos & (labels != config.pad_token_id)

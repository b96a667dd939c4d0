"""Batched translation of texts with a loaded MarianMT model.

Texts are split into sentences that fit the model's input limit, identical
pieces are translated once, and pieces of similar token length share a batch
so little padding is computed. torch is imported only inside the functions
that run the model, so importing this module stays light.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from core.config import Settings, get_settings
from core.models import LoadedModel
from core.segmentation import Segment, join_segments, split_text

logger = logging.getLogger(__name__)

# Marian appends one EOS token to every input, and the splitter counts the
# tokens of the text alone.
EOS_MARGIN = 1


def generation_settings(settings: Settings | None = None) -> dict[str, Any]:
    """Return the generation settings that change the output for a given input."""
    settings = settings or get_settings()
    return {
        "num_beams": settings.num_beams,
        "max_new_tokens_ratio": settings.max_new_tokens_ratio,
        "max_new_tokens_extra": settings.max_new_tokens_extra,
    }


def translate_texts(
    loaded: LoadedModel, texts: Sequence[str], source_lang: str
) -> list[str]:
    """Translate each text and return the outputs in input order.

    Empty and whitespace-only texts are returned unchanged without reaching
    the model. Line breaks and the whitespace between sentences are kept as
    they are in the input.
    """
    settings = get_settings()
    limit = loaded.max_input_tokens - EOS_MARGIN

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
    translated = _translate_pieces(loaded, pieces, settings)

    results = list(texts)
    for index, segments in plans.items():
        outputs = [
            translated[segment.text] for segment in segments if segment.translate
        ]
        results[index] = join_segments(segments, outputs)
    return results


def _translate_pieces(
    loaded: LoadedModel, pieces: list[str], settings: Settings
) -> dict[str, str]:
    """Translate distinct pieces and return a mapping from piece to output."""
    if not pieces:
        return {}

    started = time.perf_counter()
    lengths = [len(ids) for ids in loaded.tokenizer(pieces)["input_ids"]]
    batches = plan_batches(
        lengths, settings.batch_token_budget, settings.max_batch_size
    )
    translated: dict[str, str] = {}
    for batch in batches:
        texts = [pieces[index] for index in batch]
        longest = max(lengths[index] for index in batch)
        outputs = _generate(loaded, texts, longest, settings)
        translated.update(zip(texts, outputs, strict=True))

    logger.debug(
        "Translated %d pieces in %d batches with %s in %.3f s",
        len(pieces),
        len(batches),
        loaded.name,
        time.perf_counter() - started,
    )
    return translated


def plan_batches(
    lengths: Sequence[int], token_budget: int, max_batch_size: int
) -> list[list[int]]:
    """Group item indices into batches, longest items first.

    A batch contains at most ``max_batch_size`` items, and its item count times
    its longest length stays within ``token_budget``. An item longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Items come longest first, so the first item sets the padded length.
        longest = lengths[current[0]] if current else lengths[index]
        full = len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * longest > token_budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def max_new_tokens(loaded: LoadedModel, longest_input: int, settings: Settings) -> int:
    """Return the output token limit for a batch whose longest input is given.

    The limit grows with the input, and never passes the model's position
    limit, which opus-mt checkpoints share between encoder and decoder.
    """
    # NOTE: the limit follows the longest input of the batch, so an output
    # that reaches it without an EOS token can be longer in a batch than when
    # its input is translated alone.
    from_input = (
        math.ceil(longest_input * settings.max_new_tokens_ratio)
        + settings.max_new_tokens_extra
    )
    return min(loaded.max_input_tokens, from_input)


def _generate(
    loaded: LoadedModel, texts: list[str], longest: int, settings: Settings
) -> list[str]:
    import torch

    started = time.perf_counter()
    inputs = loaded.tokenizer(
        texts, return_tensors="pt", padding="longest", truncation=False
    ).to(loaded.device)
    with torch.inference_mode():
        output_ids = loaded.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens(loaded, longest, settings),
            num_beams=settings.num_beams,
        )
    outputs = loaded.tokenizer.batch_decode(output_ids, skip_special_tokens=True)
    logger.debug(
        "Generated a batch of %d pieces, %d tokens long, in %.3f s",
        len(texts),
        longest,
        time.perf_counter() - started,
    )
    return list(outputs)

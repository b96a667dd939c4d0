"""Split text into model-sized pieces and join their translations back.

Every character of the input lands in exactly one ``Segment``. Line breaks,
blank lines, the whitespace around sentences and pieces without words (numbers,
punctuation, codes such as ``Q-7``) become untranslated segments, so
``"".join(segment.text for segment in split_text(...))`` is the input.
Sentences come from ``sentencex``; a sentence that is still over the token
limit is cut at whitespace, then after punctuation, then between characters.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sentencex

logger = logging.getLogger(__name__)

# The line boundaries of str.splitlines, kept verbatim between pieces.
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_WHITESPACE_RUN = re.compile(r"\s+")
# A piece needs this many consecutive Unicode letters to reach the model.
MIN_LETTER_RUN = 2


@dataclass(frozen=True)
class Segment:
    """A piece of the input: sent to the model when ``translate`` is True.

    Translated segments have no leading or trailing whitespace and contain a
    run of two or more letters. Untranslated ones (line breaks, spaces between
    sentences, numbers and codes) are copied to the output verbatim.
    """

    text: str
    translate: bool


def has_letters(text: str) -> bool:
    """Return True when ``text`` contains a run of two or more Unicode letters.

    Pieces without one, such as ``12.5``, ``A4``, ``Q-7`` or ``---``, have
    nothing to translate and are copied to the output instead.
    """
    run = 0
    for character in text:
        # Unicode letters only (categories L*): numeric symbols such as
        # "①", "½" or "Ⅻ" do not count, although \w matches them.
        if unicodedata.category(character).startswith("L"):
            run += 1
            if run >= MIN_LETTER_RUN:
                return True
        else:
            run = 0
    return False


def split_text(
    text: str,
    source_lang: str,
    count_tokens: Callable[[str], int],
    max_tokens: int,
) -> list[Segment]:
    """Split ``text`` into segments whose translated pieces fit ``max_tokens``.

    ``count_tokens`` returns the model's token count of a piece.
    Joining all segment texts gives back ``text`` exactly. A single character
    that alone counts more than ``max_tokens`` is still kept as one piece.
    A piece without a run of two letters (see ``has_letters``) is marked
    ``translate=False``.
    """
    language = source_lang.replace("_", "-").split("-", 1)[0].lower()
    segments: list[Segment] = []
    position = 0
    for line_break in _LINE_BREAK.finditer(text):
        _split_line(text[position : line_break.start()], language, segments)
        segments.append(Segment(line_break.group(), translate=False))
        position = line_break.end()
    _split_line(text[position:], language, segments)

    result: list[Segment] = []
    for segment in segments:
        if segment.translate and count_tokens(segment.text) > max_tokens:
            pieces = _split_oversized(segment.text, count_tokens, max_tokens)
            for piece in pieces:
                _append_trimmed(piece, result)
        else:
            result.append(segment)

    result = [
        segment if has_letters(segment.text) else Segment(segment.text, False)
        for segment in result
    ]
    return _merge_untranslated(result)


def join_segments(segments: Sequence[Segment], translations: Sequence[str]) -> str:
    """Rebuild a text, replacing translated segments with ``translations`` in order.

    Raises ``ValueError`` when the number of translations differs from the
    number of translated segments.
    """
    expected = sum(1 for segment in segments if segment.translate)
    if len(translations) != expected:
        raise ValueError(
            f"join_segments got {len(translations)} translations for "
            f"{expected} translated segments; pass one per translated segment."
        )
    replacements = iter(translations)
    parts = [
        next(replacements) if segment.translate else segment.text
        for segment in segments
    ]
    return "".join(parts)


def _split_line(line: str, language: str, segments: list[Segment]) -> None:
    """Append the sentences of one line, with the whitespace around them."""
    if not line:
        return
    position = 0
    for sentence in _sentences(line, language):
        core = sentence.strip()
        if not core:
            continue
        start = line.find(core, position)
        if start < 0:
            # The splitter changed the text, so the rest of the line is kept
            # as one sentence.
            break
        _append_trimmed(line[position : start + len(core)], segments)
        position = start + len(core)
    _append_trimmed(line[position:], segments)


def _sentences(line: str, language: str) -> list[str]:
    try:
        return list(sentencex.segment(language, line))
    except Exception:
        # sentencex documents no exception types, so any failure falls back
        # to treating the line as one sentence.
        logger.warning(
            "sentencex failed on a line of %d characters for language %r, "
            "so the line is kept as one sentence",
            len(line),
            language,
            exc_info=True,
        )
        return [line]


def _append_trimmed(piece: str, segments: list[Segment]) -> None:
    """Append ``piece`` as leading whitespace, content and trailing whitespace."""
    core = piece.strip()
    if not core:
        if piece:
            segments.append(Segment(piece, translate=False))
        return
    start = piece.index(core)
    end = start + len(core)
    if start:
        segments.append(Segment(piece[:start], translate=False))
    segments.append(Segment(core, translate=True))
    if end < len(piece):
        segments.append(Segment(piece[end:], translate=False))


def _merge_untranslated(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for segment in segments:
        if merged and not segment.translate and not merged[-1].translate:
            merged[-1] = Segment(merged[-1].text + segment.text, translate=False)
        else:
            merged.append(segment)
    return merged


def _whitespace_cuts(text: str) -> list[int]:
    return [match.start() for match in _WHITESPACE_RUN.finditer(text)]


def _punctuation_cuts(text: str) -> list[int]:
    return [
        index + 1
        for index, char in enumerate(text[:-1])
        if unicodedata.category(char).startswith("P")
    ]


def _character_cuts(text: str) -> list[int]:
    # Cutting before a combining mark would separate it from its base letter.
    return [
        index
        for index in range(1, len(text))
        if not unicodedata.category(text[index]).startswith("M")
    ]


_CUT_FINDERS = (_whitespace_cuts, _punctuation_cuts, _character_cuts)


def _split_oversized(
    text: str,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    level: int = 0,
) -> list[str]:
    """Cut ``text`` into consecutive pieces of at most ``max_tokens`` each.

    Cut points come from ``_CUT_FINDERS[level]``. A stretch between two cut
    points that is still too long is cut with the next finder.
    """

    def fits(piece: str) -> bool:
        return count_tokens(piece.strip()) <= max_tokens

    last_level = level == len(_CUT_FINDERS) - 1
    cuts = _CUT_FINDERS[level](text)
    pieces: list[str] = []
    start = 0
    while not fits(text[start:]):
        candidates = [cut for cut in cuts if cut > start]
        cut = _last_fitting_cut(text, start, candidates, fits)
        if cut is None:
            end = candidates[0] if candidates else len(text)
            if last_level:
                # A single character over the limit is kept whole.
                pieces.append(text[start:end])
            else:
                pieces.extend(
                    _split_oversized(
                        text[start:end], count_tokens, max_tokens, level + 1
                    )
                )
            start = end
            if start == len(text):
                return pieces
            continue
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _last_fitting_cut(
    text: str, start: int, candidates: list[int], fits: Callable[[str], bool]
) -> int | None:
    """Binary-search the furthest cut whose piece from ``start`` fits.

    Token counts grow with the prefix length almost everywhere, so the search
    finds the longest piece in practice. Every returned cut is checked.
    """
    low, high = 0, len(candidates) - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        if fits(text[start : candidates[middle]]):
            best = candidates[middle]
            low = middle + 1
        else:
            high = middle - 1
    return best

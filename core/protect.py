"""Keep URLs, e-mail addresses, numbers with units and user terms out of the model.

``mask`` replaces each protected span of a source text with a placeholder token
and records what belongs there. After translation, ``unmask`` puts the original
text (or the glossary target) back and lists every placeholder that the model
dropped or mangled beyond recognition, so the caller can report it.
``validate_options`` checks the ``do_not_translate`` and ``glossary`` request
fields, and ``options_key`` gives their canonical form for the cache key.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

MAX_OPTION_ENTRIES = 200
MAX_TERM_CHARS = 200

# NOTE: whether opus-mt models copy this placeholder format through unchanged
# has not been tested on real weights. A placeholder is MARKER + index + MARKER,
# such as "ZQX0ZQX". It uses only ASCII capitals and digits, because
# Latin-script sentencepiece vocabularies contain those pieces, and MT models
# are expected to copy unknown capitalised codes and digits through. Brackets,
# "<x>" tags or rare Unicode symbols risk becoming <unk> or being translated as
# punctuation. The closing marker keeps a digit that follows the placeholder
# out of its index. The letter sequences were chosen because they are not
# words. If the input already contains something that reads as a placeholder,
# the next marker is tried.
_MARKERS = ("ZQX", "QJZ", "XJQ", "JZQX")

# Horizontal whitespace, NBSP and ideographic space included, that a model may
# insert inside a placeholder. Line breaks never join a placeholder.
_GAP = r"[^\S\r\n]*"

_PRIORITY = {"glossary": 0, "term": 1, "url": 2, "email": 3, "number": 4}


@dataclass(frozen=True)
class Span:
    """A protected span: its placeholder, source text and restored text.

    ``replacement`` is ``original`` except for glossary spans, where it is the
    target term. ``kind`` is one of url, email, number, term or glossary.
    """

    placeholder: str
    original: str
    replacement: str
    kind: str


@dataclass(frozen=True)
class Masked:
    """A source text with protected spans replaced by placeholders.

    ``spans[i]`` belongs to the placeholder with index ``i``. ``marker`` is the
    letter sequence around each index, or empty when nothing was masked.
    """

    text: str
    spans: list[Span]
    marker: str = ""


@dataclass(frozen=True)
class Unmasked:
    """A translation with placeholders restored.

    ``unrestored`` has one ``{"kind": ..., "text": original}`` entry per span
    whose placeholder is missing from the translation.
    """

    text: str
    unrestored: list[dict[str, str]]


class _Candidate(NamedTuple):
    start: int
    end: int
    kind: str
    replacement: str | None  # None keeps the original text


def _build_unit_pattern(units: Sequence[str]) -> str:
    alternatives = []
    for unit in sorted(set(units), key=len, reverse=True):
        # A unit ending in a letter must end the word, so "5 m" matches but the
        # "m" of "5 minutes" does not. "%" or "€" may touch the next word.
        boundary = r"(?!\w)" if re.match(r"\w", unit[-1]) else ""
        alternatives.append(re.escape(unit) + boundary)
    return "(?:" + "|".join(alternatives) + ")"


_CURRENCY_SYMBOLS = "$€£¥₹₽₩₺₪₫฿₴₦¢"
_CURRENCY_CODES = (
    "USD EUR GBP JPY CNY CHF CAD AUD NZD INR RUB BRL MXN SEK NOK DKK PLN CZK "
    "HUF TRY KRW ZAR SGD HKD"
).split()

# "in" (inch) and "a" (are) are left out, because "put 5 in the box" and
# "3 a day" are far more common. Times such as "5 pm" have their own pattern.
_UNITS = (
    "km m cm mm µm μm nm mi ft yd km² m² cm² mm² ft² m³ cm³ "
    "kg g mg µg μg t lb lbs oz "
    "l L ml mL cl dl gal "
    "s ms µs μs ns min h hr hrs "
    "Hz kHz MHz GHz THz "
    "B kB KB MB GB TB PB KiB MiB GiB TiB bit bits kbit Mbit Gbit "
    "bps kbps Kbps Mbps Gbps kb/s Mb/s MB/s GB/s "
    "W mW kW MW GW Wh kWh MWh GWh J kJ MJ cal kcal V mV kV A mA mAh Ah Ω kΩ MΩ "
    "°C °F ° K Pa kPa hPa MPa bar mbar psi atm "
    "km/h m/s mph rpm fps % ‰ px pt em rem dpi ppi "
    "zł Kč kr Ft"
).split()

_NUMBER = r"(?:\d{1,3}(?:[,.\u00a0\u202f\u2009]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?)"
_SIGN = r"[-+−±]?"
_UNIT_SPACE = r"[ \u00a0\u202f]?"
_START = r"(?<![\w.,])"

_NUMBER_PATTERNS = [
    # ISO dates with an optional time, then day/month/year with . or /.
    _START + r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?(?![\w:])",
    _START + r"\d{1,2}[./]\d{1,2}[./]\d{2,4}(?![\w/]|\.\w)",
    # Times such as 12:30, 9:05:10 and 5 pm.
    _START + r"\d{1,2}:\d{2}(?::\d{2})?(?:\s?(?:[AaPp]\.[Mm]\.|[AaPp][Mm](?!\w)))?",
    _START + r"\d{1,2}\s?(?:[ap]\.m\.|[AaPp][Mm](?!\w))",
    # Versions: v2.1 and v2.1.3-rc1, or at least three dotted numbers.
    r"(?<![\w.])[vV]\d+(?:\.\d+)+(?:[-+][0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?(?!\w|\.\w)",
    _START + r"\d+\.\d+\.\d+(?:\.\d+)*(?!\w|\.\w)",
    # A currency symbol or code before the amount, with k/M/bn suffixes.
    _START
    + r"(?:(?:US|A|C|NZ|HK|R)?["
    + _CURRENCY_SYMBOLS
    + r"]|(?:"
    + "|".join(_CURRENCY_CODES)
    + r")[ \u00a0])"
    + r"\s?"
    + _SIGN
    + _NUMBER
    + r"(?:(?:k|K|M|bn)(?!\w))?",
    # A number followed by a unit, a currency symbol or a currency code.
    _START
    + _SIGN
    + _NUMBER
    + _UNIT_SPACE
    + _build_unit_pattern([*_UNITS, *_CURRENCY_SYMBOLS, *_CURRENCY_CODES]),
]
_NUMBER_RES = [re.compile(pattern) for pattern in _NUMBER_PATTERNS]

_URL = re.compile(
    r"(?:(?<![\w+.-])(?:https?|ftp)://|(?<![\w.@/-])www\.)[^\s<>\"]+", re.IGNORECASE
)
_URL_PREFIX = re.compile(r"(?:(?:https?|ftp)://|www\.)", re.IGNORECASE)
_URL_TRAILING = ".,;:!?'\"…。，、！？"
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])"
)


def _trim_url(url: str) -> str:
    """Strip sentence punctuation and unbalanced closing brackets from the end."""
    unclosed = {
        ")": url.count(")") - url.count("("),
        "]": url.count("]") - url.count("["),
    }
    end = len(url)
    while end > 0:
        last = url[end - 1]
        if last in _URL_TRAILING:
            end -= 1
        elif unclosed.get(last, 0) > 0:
            unclosed[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


def _iter_urls(text: str) -> Iterator[_Candidate]:
    for match in _URL.finditer(text):
        url = _trim_url(match.group())
        prefix = _URL_PREFIX.match(url)
        if prefix is None or len(url) == prefix.end():
            continue
        yield _Candidate(match.start(), match.start() + len(url), "url", None)


def _iter_auto(text: str) -> Iterator[_Candidate]:
    """Yield URLs, e-mail addresses and numbers with units, overlaps included."""
    yield from _iter_urls(text)
    for match in _EMAIL.finditer(text):
        yield _Candidate(match.start(), match.end(), "email", None)
    for pattern in _NUMBER_RES:
        for match in pattern.finditer(text):
            yield _Candidate(match.start(), match.end(), "number", None)


@functools.lru_cache(maxsize=1024)
def _term_pattern(term: str, ignore_case: bool) -> re.Pattern[str]:
    """Compile a whole-word pattern for a term.

    The word boundary applies only at an end of the term that is a word
    character, so "C++" still matches before a space.
    """
    prefix = r"(?<!\w)" if re.match(r"\w", term[0]) else ""
    suffix = r"(?!\w)" if re.match(r"\w", term[-1]) else ""
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile(prefix + re.escape(term) + suffix, flags)


def _iter_terms(
    text: str,
    do_not_translate: Sequence[str],
    glossary: Mapping[str, str],
    glossary_ignore_case: bool,
) -> Iterator[_Candidate]:
    for source_term, target_term in glossary.items():
        if not source_term:
            continue
        for match in _term_pattern(source_term, glossary_ignore_case).finditer(text):
            yield _Candidate(match.start(), match.end(), "glossary", target_term)
    for term in do_not_translate:
        if not term:
            continue
        for match in _term_pattern(term, False).finditer(text):
            yield _Candidate(match.start(), match.end(), "term", None)


def _select(candidates: Iterator[_Candidate]) -> list[_Candidate]:
    """Keep the longest candidates that do not overlap, in text order.

    Ties go to the earlier start, then to glossary, term, url, email and number
    in that order.
    """
    ordered = sorted(
        (c for c in candidates if c.end > c.start),
        key=lambda c: (c.start - c.end, c.start, _PRIORITY[c.kind]),
    )
    chosen: list[_Candidate] = []
    starts: list[int] = []
    for candidate in ordered:
        position = bisect.bisect_right(starts, candidate.start)
        if position > 0 and chosen[position - 1].end > candidate.start:
            continue
        if position < len(chosen) and chosen[position].start < candidate.end:
            continue
        chosen.insert(position, candidate)
        starts.insert(position, candidate.start)
    return chosen


def _letter_class(letter: str) -> str:
    """Match an ASCII capital in either case, half-width or full-width."""
    offset = ord(letter) - ord("A")
    return f"[{letter}{letter.lower()}{chr(0xFF21 + offset)}{chr(0xFF41 + offset)}]"


@functools.lru_cache(maxsize=len(_MARKERS))
def _placeholder_pattern(marker: str) -> re.Pattern[str]:
    """Compile the tolerant pattern that finds placeholders of ``marker``.

    It accepts spaces inside the token, any letter case, full-width letters,
    and any Unicode decimal digits in the index, because models produce all
    of these variants when copying an unknown token.
    """
    letters = _GAP.join(_letter_class(letter) for letter in marker)
    return re.compile(rf"{letters}{_GAP}(\d{{1,9}}){_GAP}{letters}")


def _apply(text: str, chosen: list[_Candidate], marker: str) -> Masked | None:
    """Replace the chosen spans with placeholders of ``marker``.

    Returns None when the placeholder pattern would find anything in the
    masked text other than exactly these placeholders, so that ``unmask``
    with an identity translation always gives back ``text``.
    """
    pieces: list[str] = []
    spans: list[Span] = []
    expected: list[tuple[int, int]] = []
    position = 0
    length = 0
    for index, candidate in enumerate(chosen):
        before = text[position : candidate.start]
        original = text[candidate.start : candidate.end]
        placeholder = f"{marker}{index}{marker}"
        replacement = (
            original if candidate.replacement is None else candidate.replacement
        )

        pieces.append(before)
        length += len(before)
        pieces.append(placeholder)
        expected.append((length, length + len(placeholder)))
        length += len(placeholder)
        spans.append(Span(placeholder, original, replacement, candidate.kind))
        position = candidate.end
    pieces.append(text[position:])
    masked_text = "".join(pieces)

    found = [m.span() for m in _placeholder_pattern(marker).finditer(masked_text)]
    if found != expected:
        return None
    return Masked(masked_text, spans, marker)


def mask(
    text: str,
    do_not_translate: Sequence[str] = (),
    glossary: Mapping[str, str] | None = None,
    *,
    glossary_ignore_case: bool = False,
) -> Masked:
    """Replace protected spans of ``text`` with placeholders.

    Protected spans are URLs, e-mail addresses, numbers with a unit or
    currency, dates, times, versions, ``do_not_translate`` terms and
    ``glossary`` source terms. Terms match case-sensitively and as whole words.
    Where candidates overlap, the longest wins. Plain numbers without a unit
    are not masked, because models copy them well and they carry grammatical
    number ("1 file" against "3 files") that the model needs to see.

    When every marker collides with text already in the input, the text is
    returned unmasked, and ``unmask`` then returns the translation unchanged.
    """
    if isinstance(do_not_translate, str):
        raise TypeError(
            f"do_not_translate must be a sequence of terms, not the string "
            f"{do_not_translate!r}. Wrap a single term in a list."
        )
    candidates = _iter_terms(
        text, do_not_translate, glossary or {}, glossary_ignore_case
    )
    chosen = _select(itertools.chain(candidates, _iter_auto(text)))
    if not chosen:
        return Masked(text, [])

    for marker in _MARKERS:
        masked = _apply(text, chosen, marker)
        if masked is not None:
            return masked
    logger.debug(
        "Left %d protected spans unmasked: every placeholder marker collides "
        "with the input text",
        len(chosen),
    )
    return Masked(text, [])


def without_placeholders(masked: Masked) -> str:
    """Return the masked text with its placeholders removed.

    What is left is what the model would have to translate; a text made only
    of protected spans leaves no words and can skip the model.
    """
    if not masked.spans:
        return masked.text
    return _placeholder_pattern(masked.marker).sub(" ", masked.text)


def unmask(translated: str, masked: Masked) -> Unmasked:
    """Put the replacement of each span back in place of its placeholder.

    A placeholder that appears more than once is restored each time. Spans
    whose placeholder is missing, or too mangled to match, are listed in
    ``unrestored`` and their text is absent from the result. Whitespace that
    the model put around a placeholder is kept as the model wrote it.
    """
    if not masked.spans:
        return Unmasked(translated, [])

    spans = masked.spans
    restored: set[int] = set()

    def restore(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(spans):
            return match.group()
        restored.add(index)
        return spans[index].replacement

    text = _placeholder_pattern(masked.marker).sub(restore, translated)
    unrestored = [
        {"kind": span.kind, "text": span.original}
        for index, span in enumerate(spans)
        if index not in restored
    ]
    if unrestored:
        logger.debug(
            "The translation lost %d of %d placeholders", len(unrestored), len(spans)
        )
    return Unmasked(text, unrestored)


def has_protected(
    text: str,
    do_not_translate: Sequence[str] = (),
    glossary: Mapping[str, str] | None = None,
) -> bool:
    """Return True when ``text`` contains a span that ``mask`` protects.

    The search stops at the first span, so a worker can skip masking cheaply.
    ``glossary`` terms are matched case-sensitively here.
    """
    candidates = itertools.chain(
        _iter_terms(text, do_not_translate, glossary or {}, False), _iter_auto(text)
    )
    return any(candidate.end > candidate.start for candidate in candidates)


def options_key(
    do_not_translate: Sequence[str] = (),
    glossary: Mapping[str, str] | None = None,
    *,
    glossary_ignore_case: bool = False,
) -> dict[str, Any]:
    """Return the options in a canonical, JSON-serialisable form for cache keys.

    Terms are sorted and deduplicated and the glossary is sorted by source
    term. Empty options are left out, so a request without options and one
    with empty lists produce the same key, ``{}``.
    """
    key: dict[str, Any] = {}
    if do_not_translate:
        key["do_not_translate"] = sorted(set(do_not_translate))
    if glossary:
        key["glossary"] = {source: glossary[source] for source in sorted(glossary)}
        if glossary_ignore_case:
            key["glossary_ignore_case"] = True
    return key


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_term(field: str, term: object, label: str) -> str:
    if not isinstance(term, str):
        raise ValueError(
            f"{field} contains {_preview(term)} of type {type(term).__name__}. "
            f"Each {label} must be a string."
        )
    try:
        term.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{field} contains a {label} with a lone UTF-16 surrogate, which is "
            "not valid Unicode. Send the terms as valid UTF-8."
        ) from None
    if not term.strip():
        raise ValueError(
            f"{field} contains an empty {label} {term!r}. "
            "Remove it or fill in the term."
        )
    if len(term) > MAX_TERM_CHARS:
        raise ValueError(
            f"{field} contains a {label} of {len(term)} characters, "
            f"{_preview(term)}. Shorten it to at most {MAX_TERM_CHARS} characters."
        )
    return term


def validate_options(
    do_not_translate: object = None, glossary: object = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Check the ``do_not_translate`` and ``glossary`` request fields.

    None stands for an absent field. Returns the terms, deduplicated in their
    original order, and the glossary as a plain dict.

    Raises ValueError, naming the field and the fix, for a wrong type, an
    empty term, more than ``MAX_OPTION_ENTRIES`` entries, a term over
    ``MAX_TERM_CHARS`` characters, or a term present in both fields.
    """
    if do_not_translate is None:
        do_not_translate = []
    if glossary is None:
        glossary = {}

    if not isinstance(do_not_translate, list | tuple):
        raise ValueError(
            f"do_not_translate must be a list of strings, got "
            f"{type(do_not_translate).__name__} {_preview(do_not_translate)}. "
            'Send a JSON array such as ["ACME", "Kubernetes"].'
        )
    if len(do_not_translate) > MAX_OPTION_ENTRIES:
        raise ValueError(
            f"do_not_translate has {len(do_not_translate)} terms. "
            f"Send at most {MAX_OPTION_ENTRIES}."
        )
    terms = [_check_term("do_not_translate", term, "term") for term in do_not_translate]

    if not isinstance(glossary, dict):
        raise ValueError(
            f"glossary must be an object mapping source terms to target terms, got "
            f"{type(glossary).__name__} {_preview(glossary)}. "
            'Send a JSON object such as {"cloud": "nube"}.'
        )
    if len(glossary) > MAX_OPTION_ENTRIES:
        raise ValueError(
            f"glossary has {len(glossary)} entries. Send at most {MAX_OPTION_ENTRIES}."
        )
    checked: dict[str, str] = {}
    for source_term, target_term in glossary.items():
        source = _check_term("glossary", source_term, "source term")
        checked[source] = _check_term("glossary", target_term, "target term")

    both = sorted(set(terms) & set(checked))
    if both:
        raise ValueError(
            f"The term {both[0]!r} is in both do_not_translate and glossary. "
            "Keep it in one of the two fields."
        )
    return tuple(dict.fromkeys(terms)), checked

"""Language codes: validation, normalisation and display names.

Codes are ISO 639-1 (``en``, ``es``), accepted in any case, with an optional
region (``pt-BR``) that is kept only where a served checkpoint distinguishes
it. Names come from ``langcodes`` and its ``language-data`` package.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import langcodes

from core.errors import InvalidRequest, UnsupportedLanguagePair

_CODE_PATTERN = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z]{2}|[-_][0-9]{3})?$")

Pair = tuple[str, str]


def normalize_code(code: object, field: str = "language") -> str:
    """Return ``code`` in canonical form (``en``, ``pt-BR``).

    Raises ``InvalidRequest`` naming ``field`` when the value is not a string
    or not a valid language tag.
    """
    if not isinstance(code, str):
        raise InvalidRequest(
            f"Field {field!r} must be a language code string such as 'en', "
            f"got {type(code).__name__} {code!r}."
        )
    value = code.strip()
    if not _CODE_PATTERN.match(value):
        raise InvalidRequest(
            f"Field {field!r} has the invalid language code {code!r}. "
            "Use an ISO 639-1 code such as 'en' or 'pt-BR'."
        )
    tag = langcodes.standardize_tag(value.replace("_", "-"))
    if not langcodes.tag_is_valid(tag):
        raise InvalidRequest(
            f"Field {field!r} has the unknown language code {code!r}. "
            "Use an ISO 639-1 code such as 'en' or 'pt-BR'."
        )
    return tag


def base_language(code: str) -> str:
    """Return the language part of a tag: ``pt`` for ``pt-BR``."""
    return code.split("-", 1)[0].lower()


@functools.lru_cache(maxsize=512)
def language_name(code: str) -> str:
    """Return the English display name of a code, such as ``Spanish``."""
    try:
        return str(langcodes.Language.get(code).display_name())
    except (LookupError, ValueError):
        return code


def parse_pair(text: str) -> Pair:
    """Split ``en-es`` or ``pt_BR-en`` style pair names into two codes."""
    source, separator, target = text.partition("-")
    if not separator:
        raise InvalidRequest(
            f"Language pair {text!r} has no '-'. Write it as SOURCE-TARGET, "
            "for example 'en-es'."
        )
    return normalize_code(source, "source_lang"), normalize_code(target, "target_lang")


def match_pair(source: str, target: str, served: Iterable[Pair]) -> Pair:
    """Return the served pair for a request, preferring an exact region match.

    ``en-US`` to ``es`` falls back to the ``en-es`` checkpoint when no
    checkpoint names the region. Raises ``UnsupportedLanguagePair`` naming the
    pair and listing what is served.
    """
    served_list = list(served)
    if (source, target) in served_list:
        return source, target

    candidates = [
        (source, target),
        (base_language(source), target),
        (source, base_language(target)),
        (base_language(source), base_language(target)),
    ]
    served_lower = {(s.lower(), t.lower()): (s, t) for s, t in served_list}
    for candidate_source, candidate_target in candidates:
        key = (candidate_source.lower(), candidate_target.lower())
        if key in served_lower:
            return served_lower[key]

    listing = ", ".join(f"{s}-{t}" for s, t in sorted(served_list)) or "none"
    raise UnsupportedLanguagePair(
        f"The language pair {source}-{target} is not served by this deployment. "
        f"Served pairs: {listing}. Pick one of them, or add a checkpoint for "
        "the pair to MODEL_DIR and LANGUAGE_PAIRS."
    )

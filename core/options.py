"""Request options that change a translation, validated once for every front end.

``format`` is ``text`` (default) or ``html``; ``do_not_translate`` is a list of
terms kept verbatim; ``glossary`` maps a source term to the target term that
must appear instead. All three are part of the cache key, in the canonical
form of ``TranslationOptions.key()``. ``cache: false`` keeps the texts and
their translations out of every cache tier and deletes the job's stored
result once it has been read; it is not part of the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import protect
from core.errors import InvalidRequest

FORMATS = ("text", "html")


@dataclass(frozen=True)
class TranslationOptions:
    """The validated options of one request."""

    format: str = "text"
    do_not_translate: tuple[str, ...] = ()
    glossary: Mapping[str, str] = field(default_factory=dict)
    cache: bool = True

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> TranslationOptions:
        """Validate the option fields of a request body; unknown fields are ignored.

        Raises ``InvalidRequest`` naming the field and the fix.
        """
        text_format = body.get("format", "text")
        if text_format is None:
            text_format = "text"
        if not isinstance(text_format, str) or text_format.lower() not in FORMATS:
            raise InvalidRequest(
                f"Field 'format' must be 'text' or 'html', got {text_format!r}."
            )
        try:
            terms, glossary = protect.validate_options(
                body.get("do_not_translate"), body.get("glossary")
            )
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        use_cache = body.get("cache", True)
        if not isinstance(use_cache, bool):
            raise InvalidRequest(
                f"Field 'cache' must be true or false, got {use_cache!r}. Send "
                "false to keep the texts out of the cache."
            )
        return cls(text_format.lower(), terms, glossary, use_cache)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TranslationOptions:
        """Rebuild options sent to a worker by ``to_dict``."""
        data = data or {}
        return cls(
            format=str(data.get("format", "text")),
            do_not_translate=tuple(data.get("do_not_translate", ())),
            glossary=dict(data.get("glossary", {})),
            cache=data.get("cache", True) is not False,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form sent with a task."""
        return {
            "format": self.format,
            "do_not_translate": list(self.do_not_translate),
            "glossary": dict(self.glossary),
            "cache": self.cache,
        }

    @property
    def has_terms(self) -> bool:
        """True when the request names terms to keep or replace."""
        return bool(self.do_not_translate or self.glossary)

    def key(self) -> dict[str, Any]:
        """Return the canonical form for cache keys; ``{}`` for the defaults."""
        key = protect.options_key(self.do_not_translate, self.glossary)
        if self.format != "text":
            key["format"] = self.format
        return key

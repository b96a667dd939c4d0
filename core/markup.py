"""Translate the text nodes of an HTML document and keep all markup verbatim.

``extract`` splits a document into markup, copied as written, and text nodes,
offered for translation in ``Document.texts``. ``Document.render`` puts the
translations back. Every character of the input belongs to exactly one part, so
rendering the unchanged texts gives back the input byte for byte, malformed
HTML included. A worker can collect the texts of many documents and translate
them in one batch. Attribute values such as ``alt`` and ``title`` are not
translated.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Document", "extract", "translate_html", "translate_html_batch"]

# The contents of these elements are kept verbatim, with their descendants.
SKIPPED_ELEMENTS = frozenset(
    {"code", "pre", "script", "style", "textarea", "kbd", "samp", "var"}
)

# The contents of these raw text elements are parsed for neither tags nor entities.
_RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes"})
# The contents of these escapable raw text elements have entities decoded, but
# are not parsed for tags.
_ESCAPABLE_RAW_TEXT = frozenset({"textarea", "title"})
_VOID = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link",
        "meta", "param", "source", "track", "wbr",
    }
)  # fmt: skip
# A start tag of one of these closes an open element of the same name directly
# above it, as in "<li>one<li>two" or "<p>one<p>two".
_SELF_NESTING_CLOSED = frozenset({"p", "li", "dt", "dd", "option", "tr", "td", "th"})

_HTML_SPACE = " \t\n\r\f"
_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_ATTRIBUTE = re.compile(
    r"""([^\s"'>/=][^\s"'>/=]*)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]*))?"""
)
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
# Spellings of a no-break space that count as edge whitespace of a text node.
_SPACE_ENTITIES = ("&nbsp;", "&#160;", "&#xa0;", "&#xA0;", "&#Xa0;", "&#XA0;")
_ESCAPES = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}


@dataclass(frozen=True)
class _TextNode:
    """A translatable text node, split into edge whitespace and the core."""

    leading: str
    core: str
    trailing: str
    text: str  # the unescaped core, as offered for translation
    # Each character that the source spelled as a named or numeric reference,
    # mapped to that spelling, so a translation writes it the same way.
    spellings: dict[str, str]

    def render(self, translation: str) -> str:
        if translation == self.text:
            return self.leading + self.core + self.trailing
        table = {**_ESCAPES, **{ord(ch): ref for ch, ref in self.spellings.items()}}
        return self.leading + translation.translate(table) + self.trailing


@dataclass
class Document:
    """An HTML document split into verbatim markup and translatable text.

    ``texts`` contains the unescaped core of each translatable text node, without
    its leading and trailing whitespace, in document order.
    """

    texts: list[str] = field(default_factory=list)
    _parts: list[str | _TextNode] = field(default_factory=list, repr=False)

    def render(self, translations: Sequence[str]) -> str:
        """Rebuild the document with ``translations[i]`` in place of ``texts[i]``.

        A translation equal to its source text is written back exactly as the
        source spelled it. A changed one is escaped: ``&``, ``<`` and ``>``
        become references, and characters that the source wrote as references
        are written with the same reference.
        """
        if len(translations) != len(self.texts):
            raise ValueError(
                f"render() got {len(translations)} translations for "
                f"{len(self.texts)} texts. Pass one translation per entry of "
                "Document.texts, in the same order."
            )

        pieces: list[str] = []
        index = 0
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            pieces.append(part.render(translations[index]))
            index += 1
        return "".join(pieces)


@dataclass(frozen=True)
class _OpenElement:
    name: str
    skipped: bool


def _scan_tag_end(source: str, position: int) -> int:
    """Return the index after the ``>`` that closes a tag, or the end of input.

    A quote opens a quoted value only right after ``=``, as in HTML5, so a
    ``>`` inside a quoted attribute value does not end the tag. A tag still
    open at the end of input runs to the end, as in HTML5, where browsers drop
    it. This also keeps parsing linear, because no ``<`` is scanned twice.
    """
    length = len(source)
    while position < length:
        char = source[position]
        if char == ">":
            return position + 1
        position += 1
        if char != "=":
            continue
        while position < length and source[position] in _HTML_SPACE:
            position += 1
        if position < length and source[position] in "\"'":
            closing = source.find(source[position], position + 1)
            if closing < 0:
                return length
            position = closing + 1
    return length


def _find_or_end(source: str, needle: str, start: int) -> int:
    """Return the index after ``needle``, or the end of ``source`` without it."""
    found = source.find(needle, start)
    return len(source) if found < 0 else found + len(needle)


def _comment_end(source: str, start: int) -> int:
    """Return the end of the comment at ``start``, the end of input if unclosed."""
    if source.startswith("<!-->", start):
        return start + 5
    if source.startswith("<!--->", start):
        return start + 6
    ends = []
    for closing in ("-->", "--!>"):
        found = source.find(closing, start + 4)
        if found >= 0:
            ends.append(found + len(closing))
    return min(ends, default=len(source))


def _attributes(source: str) -> dict[str, str]:
    """Parse the attributes of a tag body, the first of duplicate names winning."""
    attributes: dict[str, str] = {}
    for match in _ATTRIBUTE.finditer(source):
        name = match.group(1).lower()
        value = match.group(2) or ""
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        attributes.setdefault(name, html_lib.unescape(value))
    return attributes


def _opts_out(attributes: dict[str, str]) -> bool:
    """Return True for translate="no" or a "notranslate" class."""
    if attributes.get("translate", "").strip().lower() == "no":
        return True
    return "notranslate" in attributes.get("class", "").split()


@functools.lru_cache(maxsize=32)
def _closing_tag(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{re.escape(name)}(?=[\t\n\f\r />])", re.IGNORECASE)


def _split_edges(raw: str) -> tuple[str, str, str]:
    """Split a raw text node into leading whitespace, core and trailing whitespace.

    Whitespace here is any Unicode whitespace or a no-break space reference.
    """
    start = 0
    end = len(raw)
    while start < end:
        if raw[start].isspace():
            start += 1
            continue
        entity = next((e for e in _SPACE_ENTITIES if raw.startswith(e, start)), None)
        if entity is None:
            break
        start += len(entity)
    while end > start:
        if raw[end - 1].isspace():
            end -= 1
            continue
        entity = next((e for e in _SPACE_ENTITIES if raw.endswith(e, start, end)), None)
        if entity is None:
            break
        end -= len(entity)
    return raw[:start], raw[start:end], raw[end:]


class _Extractor:
    """Walk the source once, keeping a stack of open elements for skipping."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.document = Document()
        self.stack: list[_OpenElement] = []
        # Open elements per name, so a stray end tag is rejected without a
        # walk down a deep stack.
        self.open_counts: Counter[str] = Counter()

    @property
    def skipping(self) -> bool:
        return bool(self.stack) and self.stack[-1].skipped

    def run(self) -> Document:
        source = self.source
        text_start = 0
        position = 0
        while True:
            position = source.find("<", position)
            if position < 0:
                break
            end = self._markup_end(position)
            if end is None:
                position += 1
                continue

            self._add_text(text_start, position)
            self.document._parts.append(source[position:end])
            text_start = position = self._after_markup(position, end)
        self._add_text(text_start, len(source))
        return self.document

    def _markup_end(self, start: int) -> int | None:
        """Return the end of the markup at ``start``, or None when ``<`` is text.

        Unclosed tags, comments, CDATA sections, declarations and processing
        instructions run to the end of the input.
        """
        source = self.source
        following = source[start + 1 : start + 2]
        if source.startswith("<!--", start):
            return _comment_end(source, start)
        if source.startswith("<![CDATA[", start):
            return _find_or_end(source, "]]>", start + 9)
        if following in ("!", "?"):
            return _find_or_end(source, ">", start + 2)
        if following == "/":
            after_slash = source[start + 2 : start + 3]
            if after_slash == ">":
                return start + 3
            if not after_slash.isascii() or not after_slash.isalpha():
                # "</" before a non-letter starts a bogus comment in HTML5.
                return _find_or_end(source, ">", start + 2)
            return _scan_tag_end(source, start + 2)
        if following.isascii() and following.isalpha():
            return _scan_tag_end(source, start + 1)
        return None

    def _after_markup(self, start: int, end: int) -> int:
        """Update the element stack for a tag and return where text resumes."""
        source = self.source
        if source.startswith("</", start):
            name_match = _TAG_NAME.match(source, start + 2)
            if name_match is not None:
                self._close(name_match.group().lower())
            return end
        name_match = _TAG_NAME.match(source, start + 1)
        if name_match is None:
            return end

        name = name_match.group().lower()
        attributes = _attributes(source[name_match.end() : end - 1])
        skipped = self.skipping or name in SKIPPED_ELEMENTS or _opts_out(attributes)
        self_closing = source[start : end - 1].endswith("/")
        if name in _RAW_TEXT or name in _ESCAPABLE_RAW_TEXT or name == "plaintext":
            self._open(name, skipped)
            return self._raw_text(name, end)
        if name not in _VOID and not self_closing:
            self._open(name, skipped)
        return end

    def _open(self, name: str, skipped: bool) -> None:
        if name in _SELF_NESTING_CLOSED and self.stack and self.stack[-1].name == name:
            self.stack.pop()
            self.open_counts[name] -= 1
        self.stack.append(_OpenElement(name, skipped))
        self.open_counts[name] += 1

    def _close(self, name: str) -> None:
        """Pop the innermost open ``name`` and every element inside it.

        An end tag without a matching open element changes nothing.
        """
        if self.open_counts[name] == 0:
            return
        while self.stack:
            closed = self.stack.pop()
            self.open_counts[closed.name] -= 1
            if closed.name == name:
                return

    def _raw_text(self, name: str, start: int) -> int:
        """Add the contents of a raw text element and return where they end."""
        match = None
        if name != "plaintext":
            match = _closing_tag(name).search(self.source, start)
        end = len(self.source) if match is None else match.start()
        if name in _ESCAPABLE_RAW_TEXT:
            self._add_text(start, end)
        elif end > start:
            self.document._parts.append(self.source[start:end])
        return end

    def _add_text(self, start: int, end: int) -> None:
        raw = self.source[start:end]
        if not raw:
            return
        leading, core, trailing = _split_edges(raw)
        text = html_lib.unescape(core)
        # A node without letters, such as "|", "©" or "2024", has nothing to
        # translate, and models tend to garble such input.
        if self.skipping or not any(char.isalpha() for char in text):
            self.document._parts.append(raw)
            return

        spellings: dict[str, str] = {}
        for match in _ENTITY.finditer(core):
            decoded = html_lib.unescape(match.group())
            # A translation writes ASCII letters and digits plainly, so one
            # "&#97;" in the source does not turn every "a" into a reference.
            if len(decoded) == 1 and not (decoded.isascii() and decoded.isalnum()):
                spellings.setdefault(decoded, match.group())
        node = _TextNode(leading, core, trailing, text, spellings)
        self.document._parts.append(node)
        self.document.texts.append(text)


def extract(html: str) -> Document:
    """Split ``html`` into verbatim markup and translatable text nodes.

    Text inside code, pre, script, style, textarea, kbd, samp and var
    elements, and inside any element with ``translate="no"`` or the class
    ``notranslate``, is kept verbatim together with all its descendants.
    Whitespace-only nodes and nodes without letters are also kept verbatim.
    """
    return _Extractor(html).run()


def translate_html(html: str, translate: Callable[[list[str]], list[str]]) -> str:
    """Translate the text nodes of ``html`` with one call to ``translate``.

    ``translate`` takes a batch of plain texts and returns one translation
    per text, in order. It is not called when there is nothing to translate.
    """
    return translate_html_batch([html], translate)[0]


def translate_html_batch(
    documents: Sequence[str], translate: Callable[[list[str]], list[str]]
) -> list[str]:
    """Translate the text nodes of several documents in one batch."""
    extracted = [extract(document) for document in documents]
    texts = [text for document in extracted for text in document.texts]
    if not texts:
        return list(documents)

    translations = translate(texts)
    if len(translations) != len(texts):
        raise ValueError(
            f"translate() returned {len(translations)} translations for "
            f"{len(texts)} texts. It must return one translation per text."
        )

    rendered = []
    position = 0
    for document in extracted:
        count = len(document.texts)
        rendered.append(document.render(translations[position : position + count]))
        position += count
    return rendered

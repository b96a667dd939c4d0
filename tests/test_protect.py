"""Tests of placeholder masking for URLs, numbers, terms and glossaries."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.protect import (
    MAX_OPTION_ENTRIES,
    MAX_TERM_CHARS,
    has_protected,
    mask,
    options_key,
    unmask,
    validate_options,
)

pytestmark = pytest.mark.unit


def upper(text: str) -> str:
    return text.upper()


def originals(text: str) -> list[tuple[str, str]]:
    masked = mask(text)
    return [(span.kind, span.original) for span in masked.spans]


ROUND_TRIP_TEXTS = [
    "Visit https://example.com/path?q=1&r=2#frag today.",
    "See https://en.wikipedia.org/wiki/Python_(programming_language).",
    "Open (http://example.com/a) or ftp://files.example.org/pub/file.tar.gz!",
    "Go to www.example.co.uk, then click.",
    "Write to jane.doe+news@mail.example.com or ops@example.io?",
    "It weighs 5 kg, or 5kg, or 12.5 lb.",
    "A 3.5GHz CPU with 16 GB RAM and a 1,000 W supply.",
    "Save 10 % or 15% now.",
    "It costs $20, 20 €, €5.99, £1,234.50, US$3 or 1.000,50 €.",
    "Price: EUR 20 or 30 USD.",
    "Meet at 12:30, 9:05:10 or 5 pm.",
    "Released on 2024-05-01 and 01/05/2024 and 1.5.2024.",
    "Upgrade from v2.1.3 to v3.0.0-rc1 or 1.2.3.",
    "It is -5 °C outside and 70 °F inside.",
    "Drive at 100 km/h for 2 h.",
    "Nothing here to protect.",
    "",
    "ZQX0ZQX is not ours but 5 kg is.",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_identity(text: str) -> None:
    masked = mask(text)
    result = unmask(masked.text, masked)
    assert result.text == text
    assert result.unrestored == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("See https://example.com.", [("url", "https://example.com")]),
        ("(see http://x.org/a_(b))", [("url", "http://x.org/a_(b)")]),
        ("(see http://x.org/a)", [("url", "http://x.org/a")]),
        ("Really? www.example.com!", [("url", "www.example.com")]),
        ("ftp://host/file, then", [("url", "ftp://host/file")]),
        ("mail a.b@c.example.org.", [("email", "a.b@c.example.org")]),
        ("5 kg", [("number", "5 kg")]),
        ("3.5GHz", [("number", "3.5GHz")]),
        ("10 %", [("number", "10 %")]),
        ("$20", [("number", "$20")]),
        ("20 €", [("number", "20 €")]),
        ("$5k budget", [("number", "$5k")]),
        ("at 12:30.", [("number", "12:30")]),
        ("on 2024-05-01.", [("number", "2024-05-01")]),
        ("use v2.1.3.", [("number", "v2.1.3")]),
        ("1,000,000 km away", [("number", "1,000,000 km")]),
        ("5-10 kg", [("number", "10 kg")]),
    ],
)
def test_detected_spans(text: str, expected: list[tuple[str, str]]) -> None:
    assert originals(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I waited 5 minutes.",
        "Put 5 in the box.",
        "There are 3 files and 42 users.",
        "The value is 3.5 exactly.",
        "Version 2 is out.",
        "http:// alone",
        "user@localhost",
        "abc5kg",
    ],
)
def test_not_protected(text: str) -> None:
    assert mask(text).spans == []
    assert mask(text).text == text
    assert has_protected(text) is False


def test_has_protected() -> None:
    assert has_protected("Call me at 12:30.")
    assert has_protected("see www.example.com")
    assert has_protected("we love ACME", do_not_translate=["ACME"])
    assert has_protected("the cloud", glossary={"cloud": "nube"})
    assert not has_protected("the clouds", glossary={"cloud": "nube"})


def test_glossary_replaced_with_target() -> None:
    masked = mask("The cloud is big.", glossary={"cloud": "nube"})
    result = unmask(upper(masked.text), masked)
    assert result.text == "THE nube IS BIG."
    assert result.unrestored == []
    assert [span.kind for span in masked.spans] == ["glossary"]
    assert masked.spans[0].replacement == "nube"


def test_glossary_whole_word_case_sensitive() -> None:
    glossary = {"cloud": "nube"}
    assert mask("clouds and Cloud and cloudy", glossary=glossary).spans == []
    masked = mask("Cloud here", glossary=glossary, glossary_ignore_case=True)
    assert [span.original for span in masked.spans] == ["Cloud"]
    assert unmask(masked.text, masked).text == "nube here"


def test_do_not_translate_kept() -> None:
    masked = mask("Use ACME tools, not acme.", do_not_translate=["ACME", "tools"])
    result = unmask(upper(masked.text), masked)
    assert result.text == "USE ACME tools, NOT ACME."
    assert [span.kind for span in masked.spans] == ["term", "term"]


def test_term_with_symbol_edges() -> None:
    masked = mask("I like C++ and C#.", do_not_translate=["C++", "C#"])
    assert [span.original for span in masked.spans] == ["C++", "C#"]
    assert mask("ABC++", do_not_translate=["C++"]).spans == []


def test_overlapping_terms_longest_wins() -> None:
    glossary = {
        "machine learning": "aprendizaje automático",
        "learning rate": "tasa de aprendizaje",
    }
    masked = mask("A machine learning rate.", glossary=glossary)
    assert [span.original for span in masked.spans] == ["machine learning"]
    assert unmask(masked.text, masked).text == "A aprendizaje automático rate."


def test_overlapping_same_start_longest_wins() -> None:
    masked = mask(
        "New York City", do_not_translate=["New"], glossary={"New York": "Nueva York"}
    )
    assert [span.kind for span in masked.spans] == ["glossary"]
    assert unmask(masked.text, masked).text == "Nueva York City"


def test_url_wins_over_term_inside() -> None:
    masked = mask("see https://acme.com/ACME now", do_not_translate=["ACME"])
    assert [span.kind for span in masked.spans] == ["url"]


def test_dropped_placeholder_unrestored() -> None:
    masked = mask("Visit https://example.com and pay $20.")
    dropped = masked.text.replace(masked.spans[0].placeholder, "")
    result = unmask(dropped, masked)
    assert result.unrestored == [{"kind": "url", "text": "https://example.com"}]
    assert "$20" in result.text


def test_every_placeholder_dropped() -> None:
    masked = mask("5 kg", do_not_translate=["kg"])
    result = unmask("nothing left", masked)
    assert result.text == "nothing left"
    assert result.unrestored == [{"kind": "number", "text": "5 kg"}]


def mangled_variants(marker: str) -> list[str]:
    fullwidth = "".join(chr(ord(letter) - ord("A") + 0xFF21) for letter in marker)
    return [
        f"{marker.lower()}0{marker.lower()}",
        f"{marker} 0 {marker}",
        f"{marker}0 {marker}",
        " ".join(f"{marker}0{marker}"),
        f"{marker}\u00a00\u00a0{marker}",
        f"{marker}０{marker}",
        f"{fullwidth}０{fullwidth}",
        f"{marker.capitalize()}0{marker.capitalize()}",
    ]


@pytest.mark.parametrize("variant", range(len(mangled_variants("ZQX"))))
def test_mangled_placeholder_restored(variant: int) -> None:
    masked = mask("It weighs 5 kg.")
    translated = f"Pesa {mangled_variants(masked.marker)[variant]}."
    result = unmask(translated, masked)
    assert result.text == "Pesa 5 kg."
    assert result.unrestored == []


def test_duplicated_placeholder_restored() -> None:
    masked = mask("Pay $20 now.")
    placeholder = masked.spans[0].placeholder
    result = unmask(f"{placeholder}, yes {placeholder}!", masked)
    assert result.text == "$20, yes $20!"
    assert result.unrestored == []


def test_unknown_index_left_alone() -> None:
    masked = mask("Pay $20 now.")
    stray = f"{masked.marker}7{masked.marker}"
    result = unmask(f"{masked.spans[0].placeholder} {stray}", masked)
    assert result.text == f"$20 {stray}"


def test_repeated_span_gets_own_placeholders() -> None:
    masked = mask("5 kg and 5 kg")
    assert len(masked.spans) == 2
    result = unmask(masked.spans[1].placeholder, masked)
    assert result.unrestored == [{"kind": "number", "text": "5 kg"}]


@pytest.mark.parametrize(
    "text",
    [
        "ZQX0ZQX costs 5 kg",
        "zqx 1 zqx and 5 kg",
        "ZQX 12 then 5 kg",
        "5 kg then ZQX",
        "ＺＱＸ１ＺＱＸ 5 kg",
        "ZQX0ZQX QJZ0QJZ XJQ0XJQ JZQX0JZQX 5 kg",
    ],
)
def test_placeholder_like_input_round_trips(text: str) -> None:
    masked = mask(text)
    result = unmask(masked.text, masked)
    assert result.text == text
    assert result.unrestored == []


def test_colliding_marker_switches() -> None:
    masked = mask("ZQX0ZQX costs 5 kg")
    assert masked.marker not in ("", "ZQX")
    assert len(masked.spans) == 1


def test_all_markers_colliding_leaves_text_unmasked() -> None:
    text = "ZQX0ZQX QJZ0QJZ XJQ0XJQ JZQX0JZQX 5 kg"
    masked = mask(text)
    assert masked.text == text
    assert masked.spans == []
    assert unmask(upper(text), masked).text == upper(text)


def test_mask_rejects_string_terms() -> None:
    with pytest.raises(TypeError, match="Wrap a single term in a list"):
        mask("ACME", do_not_translate="ACME")


def test_options_key_canonical() -> None:
    first = options_key(["b", "a", "b"], {"y": "2", "x": "1"})
    second = options_key(("a", "b"), {"x": "1", "y": "2"})
    assert first == second
    assert first == {"do_not_translate": ["a", "b"], "glossary": {"x": "1", "y": "2"}}
    assert list(first["glossary"]) == ["x", "y"]
    assert json.dumps(first) == json.dumps(second)


def test_options_key_empty() -> None:
    assert options_key() == {}
    assert options_key([], {}) == {}
    assert options_key([], {"a": "b"}, glossary_ignore_case=True) == {
        "glossary": {"a": "b"},
        "glossary_ignore_case": True,
    }


def test_validate_options_accepts() -> None:
    terms, glossary = validate_options(["ACME", "ACME", "Kubernetes"], {"a": "b"})
    assert terms == ("ACME", "Kubernetes")
    assert glossary == {"a": "b"}
    assert validate_options(None, None) == ((), {})


@pytest.mark.parametrize(
    ("do_not_translate", "glossary", "message"),
    [
        ("ACME", None, "do_not_translate must be a list of strings"),
        ({"ACME": 1}, None, "do_not_translate must be a list of strings"),
        (["ACME", 3], None, "do_not_translate contains 3 of type int"),
        (["", "x"], None, "do_not_translate contains an empty term"),
        (["  "], None, "do_not_translate contains an empty term"),
        (["x" * (MAX_TERM_CHARS + 1)], None, "do_not_translate contains a term of 201"),
        (
            [str(i) for i in range(MAX_OPTION_ENTRIES + 1)],
            None,
            "do_not_translate has 201",
        ),
        (None, ["a"], "glossary must be an object"),
        (None, "a=b", "glossary must be an object"),
        (None, {"a": 1}, "glossary contains 1 of type int"),
        (None, {"": "b"}, "glossary contains an empty source term"),
        (None, {"a": ""}, "glossary contains an empty target term"),
        (None, {"a": "b" * (MAX_TERM_CHARS + 1)}, "glossary contains a target term of"),
        (
            None,
            {str(i): "x" for i in range(MAX_OPTION_ENTRIES + 1)},
            "glossary has 201",
        ),
        (["a"], {"a": "b"}, "in both do_not_translate and glossary"),
    ],
)
def test_validate_options_errors(
    do_not_translate: object, glossary: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_options(do_not_translate, glossary)


def test_validate_options_limits_inclusive() -> None:
    terms = [f"t{i}" for i in range(MAX_OPTION_ENTRIES)]
    assert len(validate_options(terms, None)[0]) == MAX_OPTION_ENTRIES
    assert validate_options(["x" * MAX_TERM_CHARS], None)[0] == ("x" * MAX_TERM_CHARS,)


# Characters that form placeholders, units, URLs and the gaps between them.
PROTECT_CHARS = list("ZQXJzqxj0123456789０１ＺＱ .,:/-@$€%°kgmhGHzwvW()\u00a0\n")
PROTECT_SNIPPETS = ["https://", "www.", "kg", "ZQX", "QJZ", "XJQ", "JZQX", "a@b.io"]
PROTECT_ALPHABET = st.sampled_from([*PROTECT_CHARS, *PROTECT_SNIPPETS, "5 kg"])


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_round_trip_any_text(text: str) -> None:
    masked = mask(text)
    result = unmask(masked.text, masked)
    assert result.text == text
    assert result.unrestored == []


@given(st.lists(PROTECT_ALPHABET, max_size=40).map("".join), st.data())
@settings(max_examples=500, deadline=None)
def test_round_trip_placeholder_heavy_text(text: str, data: st.DataObject) -> None:
    terms = data.draw(
        st.lists(st.sampled_from(["kg", "ZQX", "Q", "5", "."]), max_size=3)
    )
    masked = mask(text, do_not_translate=terms)
    result = unmask(masked.text, masked)
    assert result.text == text
    assert result.unrestored == []

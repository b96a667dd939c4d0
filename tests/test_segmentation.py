"""Tests of core.segmentation: sentence splitting and lossless rejoining."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.segmentation import Segment, has_letters, join_segments, split_text

pytestmark = pytest.mark.unit


def count_words(text: str) -> int:
    return len(text.split())


def texts_of(segments: list[Segment]) -> list[str]:
    return [segment.text for segment in segments]


HARD_CASES = [
    (
        "en",
        "Dr. Smith arrived. He paid 3.50 dollars.",
        ["Dr. Smith arrived.", " ", "He paid 3.50 dollars."],
    ),
    (
        "en",
        "Wait... what happened? Nothing.",
        ["Wait... what happened?", " ", "Nothing."],
    ),
    (
        "en",
        "The price rose 2.5% in Q3... Analysts were surprised!",
        ["The price rose 2.5% in Q3...", " ", "Analysts were surprised!"],
    ),
    (
        "en",
        'She said "Stop." Then she left.',
        ['She said "Stop."', " ", "Then she left."],
    ),
    (
        "en",
        "See https://example.com/a.b?x=1 for details. Thanks.",
        ["See https://example.com/a.b?x=1 for details.", " ", "Thanks."],
    ),
    (
        "en",
        "Email me at a.b@example.org. Bye.",
        ["Email me at a.b@example.org.", " ", "Bye."],
    ),
    (
        "en",
        "Mr. and Mrs. Jones left at 5 p.m. today. It rained.",
        ["Mr. and Mrs. Jones left at 5 p.m. today.", " ", "It rained."],
    ),
    (
        "en",
        "Bring fruit, e.g. apples. Then rest.",
        ["Bring fruit, e.g. apples.", " ", "Then rest."],
    ),
    ("en", "First line.\r\nSecond line.", ["First line.", "\r\n", "Second line."]),
    ("en", "Line one\rLine two", ["Line one", "\r", "Line two"]),
    ("en", "One.\n\n\nTwo.", ["One.", "\n\n\n", "Two."]),
    ("en", "  Hello there.  ", ["  ", "Hello there.", "  "]),
    ("en", "\n \t\n", ["\n \t\n"]),
    ("en", "", []),
    ("es", "¿Qué tal? Muy bien.", ["¿Qué tal?", " ", "Muy bien."]),
    (
        "de",
        "Am 3. Mai kam er an. Dann ging er.",
        ["Am 3. Mai kam er an.", " ", "Dann ging er."],
    ),
    (
        "fr",
        "« Bonjour ! » dit-il. Puis il partit.",
        ["« Bonjour ! » dit-il.", " ", "Puis il partit."],
    ),
    ("pt-BR", "Olá. Tudo bem?", ["Olá.", " ", "Tudo bem?"]),
    ("en", "Dr. Smith is here. Ok.", ["Dr. Smith is here.", " ", "Ok."]),
    ("en", "Try e.g. this one. Ok.", ["Try e.g. this one.", " ", "Ok."]),
    ("en", "The U.S. policy changed. Why?", ["The U.S. policy changed.", " ", "Why?"]),
    ("en", "It costs 3.50 now. Good.", ["It costs 3.50 now.", " ", "Good."]),
    ("en", "Wait... what? Yes.", ["Wait... what?", " ", "Yes."]),
    ("en", 'He said "Stop." Then left.', ['He said "Stop."', " ", "Then left."]),
    (
        "en",
        "see https://example.com/a.b?x=1. Next",
        ["see https://example.com/a.b?x=1.", " ", "Next"],
    ),
    ("en", "\r\n\r\nHi.\r\n", ["\r\n\r\n", "Hi.", "\r\n"]),
    ("en", "\tHi there. \n", ["\t", "Hi there.", " \n"]),
]


@pytest.mark.parametrize(("language", "text", "expected"), HARD_CASES)
def test_split_hard_cases(language: str, text: str, expected: list[str]) -> None:
    segments = split_text(text, language, count_words, max_tokens=100)

    assert texts_of(segments) == expected
    assert "".join(texts_of(segments)) == text
    for segment in segments:
        assert segment.translate == (segment.text.strip() != "")


def test_whitespace_between_sentences_not_translated() -> None:
    segments = split_text("Good day.  See you.\n", "en", count_words, max_tokens=100)

    assert segments == [
        Segment("Good day.", translate=True),
        Segment("  ", translate=False),
        Segment("See you.", translate=True),
        Segment("\n", translate=False),
    ]


def test_join_replaces_translated_in_order() -> None:
    segments = split_text("One. Two.\n\nThree.", "en", count_words, max_tokens=100)

    joined = join_segments(segments, ["Uno.", "Dos.", "Tres."])

    assert joined == "Uno. Dos.\n\nTres."


def test_join_rejects_wrong_translation_count() -> None:
    segments = split_text("One. Two.", "en", count_words, max_tokens=100)

    with pytest.raises(ValueError, match="1 translations for 2"):
        join_segments(segments, ["Uno."])


def test_long_sentence_split_at_whitespace() -> None:
    words = [f"word{index}" for index in range(100)]
    text = "  " + " ".join(words) + "\n"

    segments = split_text(text, "en", count_words, max_tokens=7)
    translated = [segment.text for segment in segments if segment.translate]

    assert "".join(texts_of(segments)) == text
    assert all(count_words(piece) <= 7 for piece in translated)
    assert " ".join(translated).split() == words
    assert len(translated) == 15


def test_long_word_split_after_punctuation() -> None:
    text = "alpha,beta,gamma;delta"

    segments = split_text(text, "en", len, max_tokens=11)

    assert texts_of(segments) == ["alpha,beta,", "gamma;delta"]


def test_unbroken_text_split_between_characters() -> None:
    text = "x" * 25

    segments = split_text(text, "en", len, max_tokens=10)

    assert texts_of(segments) == ["x" * 10, "x" * 10, "x" * 5]
    assert all(segment.translate for segment in segments)


def test_combining_mark_stays_with_letter() -> None:
    text = "e\u0301" * 6

    segments = split_text(text, "en", len, max_tokens=3)

    assert "".join(texts_of(segments)) == text
    assert all(not segment.text.startswith("\u0301") for segment in segments)


def test_character_over_limit_kept_whole() -> None:
    def count_heavy_e(text: str) -> int:
        return 5 * text.count("é")

    segments = split_text("abécd", "en", count_heavy_e, max_tokens=3)

    assert texts_of(segments) == ["ab", "é", "cd"]
    assert [segment.translate for segment in segments] == [True, False, True]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12.5", False),
        ("A4", False),
        ("Q-7", False),
        ("---", False),
        ("x_y", False),
        ("I.", False),
        ("OK", True),
        ("Hi!", True),
        ("Ünïcode", True),
        ("日本", True),
        ("кот", True),
        ("3 km", True),
    ],
)
def test_has_letters(text: str, expected: bool) -> None:
    assert has_letters(text) is expected


def test_pieces_without_letters_untranslated() -> None:
    text = "Total: 12.5 kg. 3.50 / A4. --- Q-7\nDone."

    segments = split_text(text, "en", count_words, max_tokens=100)

    assert [segment.text for segment in segments if segment.translate] == [
        "Total: 12.5 kg.",
        "Done.",
    ]
    assert "".join(texts_of(segments)) == text


def is_one_character(text: str) -> bool:
    """Return True for a base character followed only by combining marks."""
    return all(unicodedata.combining(char) for char in text[1:])


TEXT_ALPHABET = st.sampled_from(
    [*"abcXYZ éü0129.,;:!?…'\"«»()-/@%", " ", "  ", "\t", "\n", "\r\n", "\r"]
)


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(TEXT_ALPHABET | st.text(max_size=6), max_size=40),
    max_tokens=st.integers(min_value=1, max_value=12),
)
def test_join_own_texts_is_identity(pieces: list[str], max_tokens: int) -> None:
    text = "".join(pieces)

    segments = split_text(text, "en", len, max_tokens)
    translated = [segment.text for segment in segments if segment.translate]

    assert "".join(texts_of(segments)) == text
    assert join_segments(segments, translated) == text
    for segment in segments:
        if segment.translate:
            assert segment.text == segment.text.strip()
            assert has_letters(segment.text)
            assert len(segment.text) <= max_tokens or is_one_character(segment.text)
        else:
            assert segment.text != ""


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0b", "\x0c", "\x85"])
def test_unicode_line_separators_kept(separator: str) -> None:
    text = f"First sentence here{separator}second sentence here"
    segments = split_text(text, "en", lambda piece: len(piece.split()), 50)
    assert "".join(segment.text for segment in segments) == text
    assert any(
        segment.text == separator and not segment.translate for segment in segments
    )


@pytest.mark.parametrize("text", ["①②", "½¼", "ⅫⅫ", "²³", "12:30", "A4"])
def test_numeric_symbols_are_not_letters(text: str) -> None:
    assert has_letters(text) is False

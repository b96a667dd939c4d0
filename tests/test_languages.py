"""Tests of language code handling."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest, UnsupportedLanguagePair
from core.languages import language_name, match_pair, normalize_code, parse_pair

pytestmark = pytest.mark.unit

SERVED = [("en", "es"), ("es", "en"), ("en", "pt-BR")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("en", "en"),
        ("EN", "en"),
        (" es ", "es"),
        ("pt-br", "pt-BR"),
        ("pt_BR", "pt-BR"),
    ],
)
def test_normalize_code(raw: str, expected: str) -> None:
    assert normalize_code(raw) == expected


@pytest.mark.parametrize("raw", ["", "english", "e", "12", "en-", "xx", "en--us"])
def test_invalid_codes_name_field(raw: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        normalize_code(raw, "source_lang")
    assert "'source_lang'" in raised.value.message
    assert repr(raw) in raised.value.message


@pytest.mark.parametrize("raw", [None, 5, ["en"], {"code": "en"}])
def test_non_string_codes(raw: object) -> None:
    with pytest.raises(InvalidRequest, match="'target_lang' must be a language code"):
        normalize_code(raw, "target_lang")


def test_language_names_from_package() -> None:
    assert language_name("es") == "Spanish"
    assert language_name("de") == "German"
    assert language_name("pt-BR") == "Portuguese (Brazil)"


def test_match_exact_and_region_fallback() -> None:
    assert match_pair("en", "es", SERVED) == ("en", "es")
    assert match_pair("en-US", "es", SERVED) == ("en", "es")
    assert match_pair("en", "pt-BR", SERVED) == ("en", "pt-BR")


def test_unsupported_pair_names_pair_and_served() -> None:
    with pytest.raises(UnsupportedLanguagePair) as raised:
        match_pair("de", "fr", SERVED)
    assert "de-fr" in raised.value.message
    assert "en-es" in raised.value.message
    assert raised.value.status == 400


def test_parse_pair() -> None:
    assert parse_pair("EN-es") == ("en", "es")
    with pytest.raises(InvalidRequest, match="SOURCE-TARGET"):
        parse_pair("enes")

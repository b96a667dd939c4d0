"""Tests of request option validation and their cache-key form."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from core.options import TranslationOptions

pytestmark = pytest.mark.unit


def test_defaults_have_empty_key() -> None:
    options = TranslationOptions.from_request({})
    assert options.format == "text"
    assert options.key() == {}
    assert options.has_terms is False
    assert TranslationOptions.from_request({"format": None}).key() == {}


def test_key_is_canonical() -> None:
    first = TranslationOptions.from_request(
        {
            "format": "HTML",
            "do_not_translate": ["b", "a"],
            "glossary": {"y": "1", "x": "2"},
        }
    )
    second = TranslationOptions.from_request(
        {
            "format": "html",
            "do_not_translate": ["a", "b"],
            "glossary": {"x": "2", "y": "1"},
        }
    )
    assert first.key() == second.key()
    assert first.key()["format"] == "html"
    assert first.has_terms is True


def test_round_trip_through_task_payload() -> None:
    options = TranslationOptions.from_request(
        {"format": "html", "do_not_translate": ["Acme"], "glossary": {"cat": "gato"}}
    )
    rebuilt = TranslationOptions.from_dict(options.to_dict())
    assert rebuilt == options
    assert rebuilt.key() == options.key()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"format": "markdown"}, "'format' must be 'text' or 'html'"),
        ({"format": 3}, "'format' must be 'text' or 'html'"),
        ({"do_not_translate": "Acme"}, "do_not_translate must be a list"),
        ({"do_not_translate": [1]}, "do_not_translate"),
        ({"glossary": ["cat"]}, "glossary"),
        ({"glossary": {"cat": 5}}, "glossary"),
        ({"glossary": {"": "x"}}, "glossary"),
    ],
)
def test_invalid_options_name_field(body: dict, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        TranslationOptions.from_request(body)
    assert fragment in raised.value.message


@pytest.mark.parametrize(
    "body",
    [{"glossary": {"cloud": "\ud800"}}, {"do_not_translate": ["\udfff"]}],
)
def test_lone_surrogate_terms_rejected(body: dict) -> None:
    with pytest.raises(InvalidRequest, match="surrogate"):
        TranslationOptions.from_request(body)

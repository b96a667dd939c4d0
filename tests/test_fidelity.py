"""Translation fidelity through the API and a live worker.

Tiny random-weight checkpoints cannot judge translation quality, so these
tests check the mechanisms exactly: routes, markup, protected spans, language
detection, scores and passthrough.
"""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from typing import Any

import pytest
from flask.testing import FlaskClient

from core import dispatch

pytestmark = pytest.mark.integration


@pytest.fixture
def client(live_stack: dict[str, str]) -> FlaskClient:
    import api_server

    return api_server.create_app().test_client()


def unique(text: str) -> str:
    """Make a text unique per test run, so no cache tier can serve it."""
    return f"{text} {time.time_ns() % 100_000_000} gives"


def translate(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/translate", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def forbid_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise AssertionError("this request must not reach a worker")

    monkeypatch.setattr(dispatch, "send", fail)


class TagSequence(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.tags: list[tuple[str, str, tuple[tuple[str, str | None], ...]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(("start", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.tags.append(("end", tag, ()))


def tag_sequence(
    html: str,
) -> list[tuple[str, str, tuple[tuple[str, str | None], ...]]]:
    parser = TagSequence()
    parser.feed(html)
    parser.close()
    return parser.tags


def test_pivot_equals_two_hops(client: FlaskClient) -> None:
    text = unique("Guten Morgen, wie geht es dir")
    pivot = translate(client, text=text, source_lang="de", target_lang="fr")
    assert pivot["pivot"] == "en"
    assert pivot["models"] == ["opus-mt-de-en", "opus-mt-en-fr"]
    assert pivot["model"] == "opus-mt-en-fr"

    first = translate(client, text=text, source_lang="de", target_lang="en")
    assert first["cached"] is True, "the de-en hop was not cached"
    second = translate(
        client, text=first["translation"], source_lang="en", target_lang="fr"
    )
    assert second["cached"] is True, "the en-fr hop was not cached"
    assert pivot["translation"] == second["translation"]

    again = translate(client, text=text, source_lang="de", target_lang="fr")
    assert again["cached"] is True
    assert again["translation"] == pivot["translation"]


def test_multi_target_checkpoint(client: FlaskClient) -> None:
    item = translate(
        client, text=unique("Good evening"), source_lang="en", target_lang="it"
    )
    assert item["model"] == "opus-mt-en-ROMANCE"
    assert ">>" not in item["translation"]
    assert "<<" not in item["translation"]


def test_unsupported_multi_target_names_targets(client: FlaskClient) -> None:
    response = client.post(
        "/api/translate",
        json={"text": "Hello", "source_lang": "en", "target_lang": "ro"},
    )
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert "opus-mt-en-ROMANCE" in message
    for target in ("es", "fr", "it", "pt"):
        assert target in message


def test_html_keeps_tag_sequence(client: FlaskClient) -> None:
    html = (
        '<p class="intro">Hello <b>dear</b> friend, '
        '<a href="https://example.com/x?a=1">read this</a>.</p>'
        "<pre>keep   this</pre><code>x = 1</code>"
        '<span translate="no">Brand Name</span><br>'
        f"<p>Second paragraph {time.time_ns()}</p>"
    )
    item = translate(
        client, text=html, source_lang="en", target_lang="es", format="html"
    )
    output = item["translation"]
    assert tag_sequence(output) == tag_sequence(html)
    assert "<pre>keep   this</pre>" in output
    assert "<code>x = 1</code>" in output
    assert '<span translate="no">Brand Name</span>' in output


def test_plain_format_is_the_default_key(client: FlaskClient) -> None:
    text = unique("A sentence for formats")
    plain = translate(client, text=text, source_lang="en", target_lang="es")
    explicit = translate(
        client, text=text, source_lang="en", target_lang="es", format="text"
    )
    assert explicit["cached"] is True
    html = translate(
        client, text=text, source_lang="en", target_lang="es", format="html"
    )
    assert html["cached"] is False
    assert plain["translation"] == explicit["translation"]


def test_protected_spans_restored_or_reported(client: FlaskClient) -> None:
    text = unique(
        "Write to team@example.com or visit https://example.com/docs, it weighs 5 kg"
    )
    item = translate(client, text=text, source_lang="en", target_lang="es")
    unrestored = {entry["text"] for entry in item.get("unrestored", [])}
    for span in ("team@example.com", "https://example.com/docs", "5 kg"):
        assert span in item["translation"] or span in unrestored, span


def test_glossary_and_terms_are_options(client: FlaskClient) -> None:
    text = unique("The Acme widget works with Kubernetes")
    options = {"glossary": {"widget": "artilugio"}, "do_not_translate": ["Kubernetes"]}
    plain = translate(client, text=text, source_lang="en", target_lang="es")
    with_terms = translate(
        client, text=text, source_lang="en", target_lang="es", **options
    )
    assert plain["cached"] is False
    assert with_terms["cached"] is False, "options must be part of the cache key"
    unrestored = {entry["text"] for entry in with_terms.get("unrestored", [])}
    assert "artilugio" in with_terms["translation"] or "widget" in unrestored
    assert "Kubernetes" in with_terms["translation"] or "Kubernetes" in unrestored
    again = translate(client, text=text, source_lang="en", target_lang="es", **options)
    assert again["cached"] is True
    assert again["translation"] == with_terms["translation"]


def test_glossary_through_pivot(client: FlaskClient) -> None:
    text = unique("Der Hund schläft")
    item = translate(
        client,
        text=text,
        source_lang="de",
        target_lang="fr",
        glossary={"Hund": "chien"},
    )
    assert item["pivot"] == "en"
    unrestored = {entry["text"] for entry in item.get("unrestored", [])}
    assert "chien" in item["translation"] or "Hund" in unrestored


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"format": "markdown"}, "'format' must be 'text' or 'html'"),
        ({"glossary": ["a"]}, "glossary"),
        ({"do_not_translate": "Acme"}, "do_not_translate"),
        ({"glossary": {"a": 5}}, "glossary"),
    ],
)
def test_option_errors_are_400(
    client: FlaskClient, body: dict[str, Any], fragment: str
) -> None:
    response = client.post(
        "/api/translate",
        json={"text": "Hello", "source_lang": "en", "target_lang": "es", **body},
    )
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]


def test_unknown_fields_are_ignored(client: FlaskClient) -> None:
    response = client.post(
        "/api/translate",
        json={
            "text": unique("Extra fields"),
            "source_lang": "en",
            "target_lang": "es",
            "client_version": 3,
            "alternatives": 2,
        },
    )
    assert response.status_code == 200


def test_auto_detection_groups_by_language(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamp = time.time_ns() % 100_000_000
    texts = [
        f"The weather is very nice today and we are going to the beach {stamp}",
        f"Hoy hace muy buen tiempo y vamos a ir a la playa con mis amigos {stamp}",
        f"I would like to order a coffee and a piece of cake please {stamp}",
        f"Me gustaría pedir un café y un trozo de pastel por favor {stamp}",
    ]
    response = client.post(
        "/api/batch", json={"texts": texts, "source_lang": "auto", "target_lang": "de"}
    )
    assert response.status_code == 200, response.get_json()
    items = response.get_json()["items"]
    assert [item["detected_source_lang"] for item in items] == ["en", "es", "en", "es"]
    for item in items:
        assert 0 < item["detection_confidence"] <= 1
    assert items[0]["model"] == "opus-mt-en-de"
    assert items[1]["pivot"] == "en"
    assert items[1]["models"] == ["opus-mt-es-en", "opus-mt-en-de"]

    forbid_workers(monkeypatch)
    again = client.post(
        "/api/batch", json={"texts": texts, "source_lang": "auto", "target_lang": "de"}
    ).get_json()["items"]
    assert all(item["cached"] for item in again)
    assert [item["translation"] for item in again] == [
        item["translation"] for item in items
    ]
    assert [item["detected_source_lang"] for item in again] == ["en", "es", "en", "es"]


def test_auto_text_in_target_language_is_unchanged(client: FlaskClient) -> None:
    text = (
        f"Ich möchte bitte einen Kaffee und ein Stück Kuchen bestellen {time.time_ns()}"
    )
    item = translate(client, text=text, source_lang="auto", target_lang="de")
    assert item["detected_source_lang"] == "de"
    assert item["translation"] == text
    assert item["model"] is None


def test_auto_with_unserved_target_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/api/translate",
        json={"text": "Hello", "source_lang": "auto", "target_lang": "ja"},
    )
    assert response.status_code == 400
    assert "'ja'" in response.get_json()["error"]


def test_score_kept_by_cache(client: FlaskClient) -> None:
    text = unique("A sentence with a score")
    first = translate(client, text=text, source_lang="en", target_lang="es")
    assert 0 < first["score"] <= 1
    second = translate(client, text=text, source_lang="en", target_lang="es")
    assert second["cached"] is True
    assert second["score"] == first["score"]


def test_batch_items_carry_scores(client: FlaskClient) -> None:
    texts = [unique("First line"), "", unique("Second line")]
    body = client.post(
        "/api/batch", json={"texts": texts, "source_lang": "en", "target_lang": "es"}
    ).get_json()
    scores = [item["score"] for item in body["items"]]
    assert scores[1] is None
    assert 0 < scores[0] <= 1
    assert 0 < scores[2] <= 1


@pytest.mark.parametrize("text", ["Q-7", "A4", "12.5", "---", "  42  ", "(3) + [4]"])
def test_no_letters_pass_through_without_worker(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    forbid_workers(monkeypatch)
    item = translate(client, text=text, source_lang="en", target_lang="es")
    assert item["translation"] == text
    assert item["model"] is None
    assert item["score"] is None


def test_long_text_keeps_line_breaks(client: FlaskClient) -> None:
    paragraph = " ".join(f"Sentence number {index} is here." for index in range(60))
    text = f"  {paragraph}\r\n\r\n{paragraph}\n\n\n{unique('Last line')}  "
    item = translate(client, text=text, source_lang="en", target_lang="es")
    output = item["translation"]
    assert output.startswith("  ")
    assert output.endswith("  ")
    assert output.count("\r\n\r\n") == 1
    assert output.count("\n\n\n") == 1
    assert re.sub(r"[^\r\n]", "", output) == re.sub(r"[^\r\n]", "", text)


def test_user_token_cannot_change_target(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = translate(
        client, text=unique(">>fr<< Hello world"), source_lang="en", target_lang="it"
    )
    assert item["model"] == "opus-mt-en-ROMANCE"
    assert ">>" not in item["translation"]


def test_auto_reports_unserved_language(client: FlaskClient) -> None:
    texts = [
        "Oggi il tempo è molto bello e andiamo al mare con i nostri amici italiani",
        "Aujourd'hui il fait très beau et nous allons à la plage avec nos amis",
    ]
    response = client.post(
        "/api/batch", json={"texts": texts, "source_lang": "auto", "target_lang": "es"}
    )
    assert response.status_code == 200, response.get_json()
    items = response.get_json()["items"]
    assert [item["detected_source_lang"] for item in items] == ["it", "fr"]
    for item, text in zip(items, texts, strict=True):
        assert item["translation"] == text
        assert item["model"] is None
        assert "error" in item


def test_auto_html_detects_text_not_markup(client: FlaskClient) -> None:
    html = (
        '<div class="container main-content"><span class="highlight" '
        'title="Click here for more information">Hola amigos, ¿cómo estáis hoy? '
        "Vamos a la playa esta tarde</span></div>"
    )
    item = translate(
        client, text=html, source_lang="auto", target_lang="es", format="html"
    )
    assert item["detected_source_lang"] == "es"
    assert item["translation"] == html


def test_same_language_pair_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/api/translate",
        json={"text": "Hola amigo", "source_lang": "es", "target_lang": "es"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com/path?q=1",
        "john@example.com",
        "5 kg",
        "https://a.io\nhttps://b.io",
    ],
)
def test_only_protected_spans_skip_model(client: FlaskClient, text: str) -> None:
    item = translate(client, text=text, source_lang="en", target_lang="es")
    assert item["translation"] == text
    assert item["model"] is None
    assert "unrestored" not in item


def test_html_without_text_names_no_model(client: FlaskClient) -> None:
    html = f"<div>12</div><code>hello world {time.time_ns()}</code>"
    item = translate(
        client, text=html, source_lang="en", target_lang="es", format="html"
    )
    assert item["translation"] == html
    assert item["model"] is None
    assert item["models"] == []


def test_pivot_scores_are_positive(client: FlaskClient) -> None:
    item = translate(
        client,
        text=f"<p>{unique('Guten Abend')}</p>",
        source_lang="de",
        target_lang="fr",
        format="html",
    )
    assert item["pivot"] == "en"
    assert 0 < item["score"] <= 1

"""Tests of the OpenAPI description and the pages that serve it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from flask import Flask

import api_docs
from core.config import reset_settings
from tests.helpers import free_port

IGNORED_METHODS = {"HEAD", "OPTIONS"}
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "array": list,
    "object": dict,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
    "null": type(None),
}
EXTERNAL_URL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture
def app(clean_env: pytest.MonkeyPatch, tiny_model_dir: Any) -> Iterator[Flask]:
    """The API with no Redis server, which the spec routes do not need."""
    clean_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    clean_env.setenv("MODEL_DIR", str(tiny_model_dir))
    clean_env.setenv("REDIS_TIMEOUT", "0.2")
    reset_settings()
    import api_server

    yield api_server.create_app()


def spec() -> dict[str, Any]:
    with api_docs.SPEC_PATH.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def app_operations(app: Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in (rule.methods or set()) - IGNORED_METHODS:
            operations.add((api_docs.openapi_path(rule.rule), method))
    return operations


def spec_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in api_docs.HTTP_METHODS
    }


def check_example(document: dict[str, Any], schema: Any, value: Any, at: str) -> None:
    """Check the required fields, enums and JSON types of ``value``.

    This is a small subset of JSON Schema, enough for the spec's examples.
    """
    schema = api_docs.resolve(document, schema)
    for part in schema.get("allOf", []):
        check_example(document, part, value, at)
    if "oneOf" in schema:
        kinds = [api_docs.resolve(document, part) for part in schema["oneOf"]]
        assert any(
            part.get("const", value) == value
            and isinstance(value, _python_type(part.get("type", "string")))
            for part in kinds
        ), f"{at}: {value!r} matches no alternative"
        return
    if "type" in schema:
        expected = _python_type(schema["type"])
        assert isinstance(value, expected), f"{at}: {value!r} is not {schema['type']}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{at}: required field {name!r} is missing"
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                check_example(document, prop, value[name], f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check_example(document, schema["items"], item, f"{at}[{index}]")


def _python_type(kind: str | list[str]) -> tuple[type, ...]:
    kinds = [kind] if isinstance(kind, str) else kind
    found: list[type] = []
    for name in kinds:
        python = JSON_TYPES[name]
        found.extend(python if isinstance(python, tuple) else (python,))
    return tuple(found)


@pytest.mark.unit
def test_spec_parses_as_openapi_31() -> None:
    document = spec()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"]
    assert document["paths"]


@pytest.mark.unit
def test_every_route_is_in_spec(app: Flask) -> None:
    missing = app_operations(app) - spec_operations(spec())
    assert not missing, f"routes missing from openapi.yaml: {sorted(missing)}"


@pytest.mark.unit
def test_every_spec_operation_is_routed(app: Flask) -> None:
    extra = spec_operations(spec()) - app_operations(app)
    assert not extra, f"openapi.yaml operations without a route: {sorted(extra)}"


@pytest.mark.unit
def test_local_refs_resolve() -> None:
    document = spec()
    text = yaml.safe_dump(document)
    for ref in set(re.findall(r"\$ref: '?(#/[^'\s]+)", text)):
        target = api_docs.resolve(document, {"$ref": ref})
        assert isinstance(target, dict), ref


@pytest.mark.unit
def test_error_shape_documented() -> None:
    error = spec()["components"]["schemas"]["Error"]
    assert error["required"] == ["success", "error", "code"]
    assert error["properties"]["success"] == {"const": False}


@pytest.mark.unit
def test_item_fields_documented() -> None:
    item = spec()["components"]["schemas"]["TranslationItem"]["properties"]
    for field in (
        "translation",
        "cached",
        "cache_tier",
        "model",
        "models",
        "score",
        "pivot",
        "detected_source_lang",
        "detection_confidence",
        "unrestored",
        "error",
    ):
        assert field in item, field


@pytest.mark.unit
def test_request_examples_match_schemas() -> None:
    document = spec()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in api_docs.HTTP_METHODS:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            media = content.get("application/json", {})
            for name, example in media.get("examples", {}).items():
                at = f"{method.upper()} {path} example {name!r}"
                check_example(document, media["schema"], example["value"], at)
                checked += 1
    assert checked >= 5


@pytest.mark.unit
def test_example_check_catches_missing_field() -> None:
    document = spec()
    schema = {"$ref": "#/components/schemas/TranslateRequest"}
    with pytest.raises(AssertionError, match="'target_lang' is missing"):
        check_example(document, schema, {"text": "Hi", "source_lang": "en"}, "body")


@pytest.mark.unit
def test_openapi_json_served(app: Flask) -> None:
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == spec()


@pytest.mark.unit
def test_docs_page_lists_every_path(app: Flask) -> None:
    response = app.test_client().get("/api/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for path in spec()["paths"]:
        assert f">{path}<" in html, path


@pytest.mark.unit
def test_docs_page_has_no_external_assets(app: Flask) -> None:
    html = app.test_client().get("/api/docs").get_data(as_text=True)
    assert not EXTERNAL_URL.search(html)
    assert "<script" not in html.lower()
    assert "@import" not in html


@pytest.mark.unit
def test_docs_page_shows_fields_and_statuses(app: Flask) -> None:
    html = app.test_client().get("/api/docs").get_data(as_text=True)
    for fragment in ("do_not_translate", "glossary", "detected_source_lang", "504"):
        assert fragment in html, fragment

"""The OpenAPI description of the service, as JSON and as an HTML page.

``openapi.yaml`` beside this module is the single source. ``GET
/api/openapi.json`` returns it as JSON, and ``GET /api/docs`` renders it on
the server into one HTML page. The page has inline CSS, no scripts and no
assets from other hosts, so it works on a host without internet access.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Flask, Response, jsonify, render_template_string

SPEC_PATH = Path(__file__).resolve().parent / "openapi.yaml"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
FLASK_PARAMETER = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")

api_docs = Blueprint("api_docs", __name__)


@functools.cache
def load_spec() -> dict[str, Any]:
    """Read ``openapi.yaml`` once per process and return it as a dict."""
    with SPEC_PATH.open(encoding="utf-8") as file:
        spec = yaml.safe_load(file)
    if not isinstance(spec, dict) or "paths" not in spec:
        raise ValueError(f"{SPEC_PATH} is not an OpenAPI document with 'paths'.")
    return spec


def openapi_path(rule: str) -> str:
    """Convert a Flask rule such as ``/api/task/<task_id>`` to OpenAPI's form."""
    return FLASK_PARAMETER.sub(r"{\1}", rule)


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` (``#/components/...``) until a plain object remains."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_fields(spec: dict[str, Any], schema: Any) -> list[dict[str, Any]]:
    """List the properties of an object schema, merging ``allOf`` parts."""
    schema = resolve(spec, schema)
    if not isinstance(schema, dict):
        return []
    fields: list[dict[str, Any]] = []
    for part in schema.get("allOf", []):
        fields.extend(schema_fields(spec, part))
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        prop = resolve(spec, prop)
        fields.append(
            {
                "name": name,
                "type": describe_type(spec, prop),
                "required": name in required,
                "description": prop.get("description", ""),
            }
        )
    return fields


def describe_type(spec: dict[str, Any], schema: Any) -> str:
    """Return a short type label such as ``string`` or ``array of string``."""
    schema = resolve(spec, schema)
    if not isinstance(schema, dict):
        return ""
    if "const" in schema:
        return repr(schema["const"]).replace("'", '"')
    if "enum" in schema:
        return " | ".join(str(value) for value in schema["enum"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in schema:
            return " or ".join(describe_type(spec, part) for part in schema[combiner])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        return f"array of {describe_type(spec, schema.get('items', {}))}"
    return str(kind)


def _media_fields(spec: dict[str, Any], content: dict[str, Any]) -> list[dict]:
    media = next(iter(content.values()), {}) if content else {}
    return schema_fields(spec, media.get("schema"))


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten the spec into one entry per path and method, for the HTML page."""
    entries = []
    for path, item in spec["paths"].items():
        shared_parameters = item.get("parameters", [])
        for method in HTTP_METHODS:
            if method not in item:
                continue
            operation = item[method]
            parameters = [
                resolve(spec, parameter)
                for parameter in shared_parameters + operation.get("parameters", [])
            ]
            body = resolve(spec, operation.get("requestBody", {}))
            responses = []
            for status, response in operation.get("responses", {}).items():
                response = resolve(spec, response)
                responses.append(
                    {
                        "status": status,
                        "description": response.get("description", ""),
                        "media": list(response.get("content", {})),
                        "fields": _media_fields(spec, response.get("content", {})),
                    }
                )
            entries.append(
                {
                    "anchor": f"{method}-{re.sub(r'[^A-Za-z0-9]+', '-', path)}",
                    "method": method.upper(),
                    "path": path,
                    "tag": (operation.get("tags") or ["other"])[0],
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": [
                        {
                            "name": parameter["name"],
                            "in": parameter["in"],
                            "required": parameter.get("required", False),
                            "type": describe_type(spec, parameter.get("schema")),
                            "description": parameter.get("description", ""),
                        }
                        for parameter in parameters
                    ],
                    "body_media": list(body.get("content", {})),
                    "body_fields": _media_fields(spec, body.get("content", {})),
                    "responses": responses,
                }
            )
    return entries


DOCS_TEMPLATE = """{% macro field_table(fields) %}
<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>
{% for f in fields %}
<tr><td><code>{{ f.name }}</code>{% if f.required %}
<span class="required">required</span>{% endif %}</td><td>{{ f.type }}</td>
<td class="description">{{ f.description }}</td></tr>
{% endfor %}
</table>
{% endmacro -%}
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ info.title }} API</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem;
       padding: 1rem 1.5rem; color: #1d1d1f; }
code, .path { font-family: ui-monospace, monospace; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2.5rem; }
.operation { border: 1px solid #ddd; border-radius: 6px; margin: 1rem 0;
             padding: 0.5rem 1rem; }
.method { display: inline-block; min-width: 4.5rem; font-weight: bold; }
.get { color: #0a6c2f; } .post { color: #0b4fa8; } .delete { color: #a4161a; }
table { border-collapse: collapse; width: 100%; margin: 0.5rem 0; }
th, td { border: 1px solid #e2e2e2; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f5f5f5; }
.required { color: #a4161a; font-size: 0.85em; }
.description { white-space: pre-line; }
nav li { list-style: none; }
</style>
</head>
<body>
<h1>{{ info.title }} <small>{{ info.version }}</small></h1>
<p class="description">{{ info.description }}</p>
<p>Machine-readable description: <a href="/api/openapi.json">/api/openapi.json</a>
(OpenAPI {{ version }}).</p>
<nav><ul>
{% for op in operations %}
<li><a href="#{{ op.anchor }}"><span class="method">{{ op.method }}</span>
<span class="path">{{ op.path }}</span></a> {{ op.summary }}</li>
{% endfor %}
</ul></nav>
{% for tag, group in operations | groupby("tag") %}
<h2>{{ tag }}</h2>
{% for op in group %}
<section class="operation" id="{{ op.anchor }}">
<h3><span class="method {{ op.method | lower }}">{{ op.method }}</span>
<span class="path">{{ op.path }}</span></h3>
<p>{{ op.summary }}</p>
{% if op.description %}<p class="description">{{ op.description }}</p>{% endif %}
{% if op.parameters %}
<h4>Parameters</h4>
<table><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>
{% for p in op.parameters %}
<tr><td><code>{{ p.name }}</code>{% if p.required %}
<span class="required">required</span>{% endif %}</td><td>{{ p.in }}</td>
<td>{{ p.type }}</td><td class="description">{{ p.description }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% if op.body_media %}
<h4>Request body ({{ op.body_media | join(", ") }})</h4>
{{ field_table(op.body_fields) }}
{% endif %}
<h4>Responses</h4>
<table><tr><th>Status</th><th>Description</th></tr>
{% for r in op.responses %}
<tr><td>{{ r.status }}</td><td><span class="description">{{ r.description }}</span>
{% if r.media %}<br><code>{{ r.media | join(", ") }}</code>{% endif %}
{% if r.fields %}{{ field_table(r.fields) }}{% endif %}</td></tr>
{% endfor %}
</table>
</section>
{% endfor %}
{% endfor %}
</body>
</html>
"""


@api_docs.get("/api/openapi.json")
def openapi_json() -> Response:
    return jsonify(load_spec())


@api_docs.get("/api/docs")
def docs_page() -> Response:
    spec = load_spec()
    html = render_template_string(
        DOCS_TEMPLATE,
        info=spec["info"],
        version=spec["openapi"],
        operations=operations(spec),
    )
    return Response(html, mimetype="text/html")


def register_api_docs(app: Flask) -> None:
    """Attach ``/api/openapi.json`` and ``/api/docs`` to ``app``."""
    app.register_blueprint(api_docs)

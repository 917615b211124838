"""MkDocs hook (mkdocs.yml `hooks:`): the site's API reference page, `reference.md`, written
at build time from the committed schema, `openapi/openapi.json`, so that it can never drift
from the API (a test holds the schema equal to the app's). Offline, no plugin: every
endpoint with its parameters, body fields and answers, then every schema with its fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "reference.md"
SCHEMA = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"
REF_PREFIX = "#/components/schemas/"


def on_files(files: Files, config: Any) -> Files:
    openapi = json.loads(SCHEMA.read_text(encoding="utf-8"))
    files.append(File.generated(config, PAGE, content=reference_page(openapi)))
    return files


def reference_page(openapi: dict[str, Any]) -> str:
    lines = [
        "# API reference",
        "",
        f"Every endpoint of LatentMix {openapi['info']['version']}, written from the committed",
        "schema, `openapi/openapi.json`, when this site is built. The [API guide](api.md) shows",
        "them by example; a running server serves the same schema at `/openapi.json` with",
        "interactive forms at `/docs` (Swagger UI) and `/redoc`. Errors are problem details",
        "([`Problem`](#schema-Problem)) whose `detail` names what is wrong.",
        "",
        "## Endpoints",
        "",
    ]
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            lines += endpoint(method.upper(), path, operation)
    lines += ["## Schemas", ""]
    for name, schema in openapi["components"]["schemas"].items():
        lines += [f"### `{name}` {{#schema-{name}}}", "", *paragraph(schema.get("description"))]
        lines += fields_table(schema)
    return "\n".join(lines) + "\n"


def endpoint(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### `{method} {path}`", "", *paragraph(operation.get("description"))]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | description |", "|---|---|---|---|"]
        lines += [
            f"| `{p['name']}`{required_mark(p.get('required'))} | {p['in']} "
            f"| {type_of(p.get('schema', {}))} | {cell(p.get('description'))} |"
            for p in parameters
        ]
        lines.append("")
    for media, content in operation.get("requestBody", {}).get("content", {}).items():
        lines += [f"Body, `{media}`: {type_of(content.get('schema', {}))}", ""]
    answers = operation.get("responses", {})
    successes = {status: answer for status, answer in answers.items() if status < "400"}
    errors = [status for status in answers if status >= "400"]
    lines += ["| answer | meaning | body |", "|---|---|---|"]
    lines += [
        f"| {status} | {cell(answer.get('description'))} | {body(answer)} |"
        for status, answer in successes.items()
    ]
    if errors:
        lines.append(f"| {', '.join(errors)} | an error | {body(answers[errors[-1]])} |")
    return [*lines, ""]


def body(answer: dict[str, Any]) -> str:
    """The answer's schemas, else its media types (an image, a file)."""
    content = answer.get("content", {})
    schemas = [type_of(c["schema"]) for c in content.values() if c.get("schema")]
    return ", ".join(dict.fromkeys(schemas)) or ", ".join(f"`{media}`" for media in content)


def fields_table(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    if not properties:
        return [f"Type: {type_of(schema)}", ""]
    required = set(schema.get("required", []))
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in properties.items():
        default = f"`{json.dumps(field['default'])}`" if "default" in field else ""
        lines.append(
            f"| `{name}`{required_mark(name in required)} | {type_of(field)} | {default} "
            f"| {cell(field.get('description'))} |"
        )
    return [*lines, ""]


def type_of(schema: dict[str, Any]) -> str:
    """A short, linked description of a JSON schema: `JobPublic`, array of number >= 0, ..."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF_PREFIX)
        return f"[`{name}`](#schema-{name})"
    if "anyOf" in schema or "oneOf" in schema:
        options = [type_of(s) for s in schema.get("anyOf", schema.get("oneOf", []))]
        return " or ".join(dict.fromkeys(options))
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    bounds = [
        f"{symbol} {schema[key]}"
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in schema
    ]
    if schema.get("contentMediaType"):
        kind = "file"
    return f"{kind} {', '.join(bounds)}" if bounds else kind


def required_mark(required: bool | None) -> str:
    return " (required)" if required else ""


def paragraph(text: str | None) -> list[str]:
    return [text.strip(), ""] if text else []


def cell(text: str | None) -> str:
    """Text fit for one table cell: one line, pipes escaped."""
    return " ".join((text or "").split()).replace("|", "\\|")

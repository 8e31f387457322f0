"""Validate JSON response bodies against the OpenAPI document (test helper).

Why: the schema in vmcontroller.apispec is a promise to API clients; tests of
the real handlers call ``check`` on every body they receive, so a renamed,
missing, extra or mistyped field fails a test instead of surprising a guest
script.

OpenAPI 3.0 schemas are not quite JSON Schema, so each response schema is
translated before jsonschema sees it:

* ``$ref`` is resolved against the spec (inlined);
* ``nullable: true`` becomes a type list with ``"null"``;
* an object that lists ``properties`` and says nothing about
  ``additionalProperties`` gets ``additionalProperties: false``, so an
  undocumented field is an error (the schemas mark documented fields
  ``required``, so a missing one is an error too);
* ``format: date-time`` is checked with ``datetime.fromisoformat`` (ISO 8601
  as Python writes it), not RFC 3339's stricter rule.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import jsonschema

Check = Callable[[str, str, int, Any], None]

# Keywords that only annotate in OpenAPI and mean nothing to jsonschema.
_OPENAPI_ONLY = {
    "nullable",
    "example",
    "examples",
    "discriminator",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "deprecated",
}


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise AssertionError(f"only local $refs are supported, got {ref!r}")
    node: Any = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise AssertionError(f"$ref {ref!r} does not resolve")
        node = node[part]
    return node


def _deref(spec: dict[str, Any], node: Any) -> Any:
    """Follow $ref chains (a $ref may point at another $ref)."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise AssertionError(f"$ref cycle at {ref!r}")
        seen.add(ref)
        node = _resolve(spec, ref)
    return node


def to_json_schema(spec: dict[str, Any], schema: Any, _stack: tuple[str, ...] = ()) -> Any:
    """Translate one OpenAPI 3.0 schema object into strict JSON Schema."""
    if isinstance(schema, list):
        return [to_json_schema(spec, item, _stack) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in _stack:
            raise AssertionError(f"recursive schema at {ref!r} not supported")
        return to_json_schema(spec, _resolve(spec, ref), _stack + (ref,))

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _OPENAPI_ONLY:
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(spec, sub, _stack) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(spec, value, _stack)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(spec, sub, _stack) for sub in value]
        else:
            out[key] = value

    if schema.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.datetime.fromisoformat(value)
        return True

    return checker


def response_schema(spec: dict[str, Any], path_template: str, method: str, status: int) -> Any:
    """The JSON schema (translated) of one documented response."""
    where = f"{method.upper()} {path_template} {status}"
    path_item = spec.get("paths", {}).get(path_template)
    if path_item is None:
        raise AssertionError(f"{where}: path not documented")
    operation = path_item.get(method.lower())
    if operation is None:
        raise AssertionError(f"{where}: method not documented for this path")
    responses = operation.get("responses", {})
    response = responses.get(str(status), responses.get("default"))
    if response is None:
        raise AssertionError(
            f"{where}: status not documented (documented: {', '.join(sorted(responses))})"
        )
    response = _deref(spec, response)
    media = response.get("content", {}).get("application/json")
    if media is None or "schema" not in media:
        raise AssertionError(f"{where}: no application/json schema")
    return to_json_schema(spec, media["schema"])


def response_validator(spec: dict[str, Any]) -> Check:
    """Return ``check(path_template, method, status, body)``.

    ``check`` raises AssertionError naming the operation, the failing field
    and the body when ``body`` (already decoded JSON) does not match what
    the spec documents for that operation and status.
    """
    checker = _format_checker()

    def check(path_template: str, method: str, status: int, body: Any) -> None:
        schema = response_schema(spec, path_template, method, status)
        validator = jsonschema.Draft7Validator(schema, format_checker=checker)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [
                f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in errors
            ]
            raise AssertionError(
                f"{method.upper()} {path_template} {status}: body does not "
                f"match the OpenAPI schema:\n" + "\n".join(lines) + f"\nbody: {body!r}"
            )

    return check

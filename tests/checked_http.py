"""HTTP clients for tests that check every answer against the OpenAPI document.

The README promises that every response the tests see is validated against
the schema. Tests that need a raw client (browser headers, a forged Host,
HEAD, a real server) use these instead of a bare ``requests`` call or a bare
Flask test client, so the promise holds for them too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jsonschema
import requests
from flask.testing import FlaskClient
from openapi_check import to_json_schema

from vmcontroller.vocab import API_PREFIX

Check = Callable[[str, str, int, Any], None]


def path_template(spec: dict, path: str) -> str | None:
    """The documented path template that matches ``path``, or None."""
    path = path.split("?", 1)[0]
    # A literal segment wins over a parameter (/snapshot/create, not /snapshot/{name}).
    for template in sorted(spec.get("paths", {}), key=lambda t: t.count("{")):
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", template)
        )
        if re.fullmatch(pattern, path):
            return template
    return None


def check_answer(
    spec: dict,
    check: Check,
    method: str,
    path: str,
    status: int,
    content_type: str,
    body: Callable[[], Any],
) -> None:
    """One answer against the document: its operation's schema for that status, or, where
    no operation is documented (unknown path, wrong method), the Error schema."""
    method = method.lower()
    if method in ("head", "options"):
        return  # no body: HEAD mirrors a GET checked where it is called; a CORS preflight
        #         answers in headers only (tests/test_api_edges.py checks them)
    if not (path.startswith(API_PREFIX) or path == "/"):
        return  # the documentation and its assets (/docs, /openapi.json...): no operations
    assert content_type.split(";")[0].strip() == "application/json", (
        f"{method.upper()} {path} {status}: an API answer that is not JSON ({content_type})"
    )
    decoded = body()
    template = path_template(spec, path)
    if template is not None and method in spec["paths"][template]:
        check(template, method, status, decoded)
    else:
        assert status >= 400, (method, path, status, decoded)
        jsonschema.validate(decoded, to_json_schema(spec, {"$ref": "#/components/schemas/Error"}))


class CheckedFlaskClient(FlaskClient):
    """Flask's test client; every answer is checked (``app.test_client_class = ...``)."""

    def __init__(self, *args: Any, spec: dict, check: Check, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spec = spec
        self._check = check

    def open(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        response = super().open(*args, **kwargs)
        request = response.request
        check_answer(
            self._spec,
            self._check,
            request.method,
            request.path,
            response.status_code,
            response.content_type or "",
            response.get_json,
        )
        return response


def checked_client(app, spec: dict, check: Check) -> CheckedFlaskClient:
    """Without a cookie jar: the API sets no cookie, and Werkzeug 2.2's jar (Debian 12's)
    rebuilds each request's URL from its Host header, which fails on the malformed
    hosts (``[::1``) that the forged-Host tests send for the controller to refuse."""
    app.test_client_class = CheckedFlaskClient
    return app.test_client(spec=spec, check=check, use_cookies=False)


def checked_session(spec: dict, check: Check) -> requests.Session:
    """A requests session whose every answer is checked before the test sees it."""
    session = requests.Session()

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        from urllib.parse import urlsplit

        check_answer(
            spec,
            check,
            response.request.method or "GET",
            urlsplit(response.request.url).path,
            response.status_code,
            response.headers.get("Content-Type", ""),
            response.json,
        )

    session.hooks["response"].append(hook)
    return session

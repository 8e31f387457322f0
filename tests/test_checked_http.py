"""The checking clients of checked_http.py fail on an answer the document does not allow."""

from __future__ import annotations

import pytest
from checked_http import checked_client, path_template
from flask import Flask, jsonify


def test_path_templates_prefer_literal_segments(openapi):
    assert path_template(openapi, "/api/v1/snapshot/create") == "/api/v1/snapshot/create"
    assert path_template(openapi, "/api/v1/snapshot/x1") == "/api/v1/snapshot/{snapshot_name}"
    assert path_template(openapi, "/api/v1/nothing") is None


def test_an_undocumented_body_status_or_content_type_fails_the_test(openapi, check_response):
    app = Flask(__name__)
    app.add_url_rule("/api/v1/status", "status", lambda: jsonify({"vm_name": 1}))
    app.add_url_rule("/api/v1/heartbeat/status", "hb", lambda: ("plain text", 200))
    app.add_url_rule("/api/v1/nothing", "nothing", lambda: jsonify({"detail": "x"}))
    client = checked_client(app, openapi, check_response)
    with pytest.raises(AssertionError, match="does not match the OpenAPI schema"):
        client.get("/api/v1/status")
    with pytest.raises(AssertionError, match="not JSON"):
        client.get("/api/v1/heartbeat/status")
    with pytest.raises(AssertionError):
        client.get("/api/v1/nothing")  # an undocumented path answering 200
    assert client.head("/api/v1/status").status_code == 200  # no body to check

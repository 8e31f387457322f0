"""The response validator used by the API tests, tested on its own.

It must catch what a client would trip over (a wrong type, a missing or an
extra field) and accept the examples of the API reference.
"""

from __future__ import annotations

import copy

import pytest
from openapi_check import response_validator, to_json_schema

from vmcontroller.apispec import build_openapi

HEARTBEAT = {
    "enabled": True,
    "last_heartbeat": "2025-12-09T10:30:45.123456",
    "seconds_since_last": 2.5,
    "is_healthy": True,
    "timeout": 10,
}

# The examples of api-reference.md: (path, method, status, body).
REFERENCE_EXAMPLES = [
    (
        "/",
        "get",
        200,
        {
            "message": "Exhibition VM Controller API",
            "details": {"version": "1.3.0", "documentation": "/docs", "status": "/api/v1/status"},
        },
    ),
    (
        "/api/v1/status",
        "get",
        200,
        {
            "vm_name": "eden-garden-vm",
            "vm_state": "running",
            "vm_is_running": True,
            "snapshot_name": "ready",
            "snapshot_exists": True,
            "heartbeat": HEARTBEAT,
            "auto_revert_enabled": True,
        },
    ),
    ("/api/v1/heartbeat/status", "get", 200, HEARTBEAT),
    (
        "/api/v1/heartbeat",
        "get",
        200,
        {
            "message": "Heartbeat received",
            "details": {
                "enabled": True,
                "last_heartbeat": "2025-12-09T10:30:47.654321",
                "seconds_since_last": 0.0,
                "is_healthy": True,
                "timeout": 10,
            },
        },
    ),
    (
        "/api/v1/vm/start",
        "post",
        200,
        {"message": "VM 'eden-garden-vm' started successfully", "details": None},
    ),
    (
        "/api/v1/vm/stop",
        "get",
        200,
        {"message": "VM 'eden-garden-vm' stopped successfully", "details": None},
    ),
    (
        "/api/v1/vm/restart",
        "post",
        200,
        {"message": "VM 'eden-garden-vm' restarted successfully", "details": None},
    ),
    (
        "/api/v1/snapshots",
        "get",
        200,
        {
            "vm_name": "eden-garden-vm",
            "snapshots": ["ready", "backup-2025-12-01", "test-configuration"],
        },
    ),
    (
        "/api/v1/snapshot/create",
        "get",
        200,
        {
            "message": "Snapshot 'ready' created successfully for VM 'eden-garden-vm'",
            "details": None,
        },
    ),
    (
        "/api/v1/snapshot/{snapshot_name}",
        "delete",
        200,
        {"message": "Snapshot 'backup-2025-12-01' deleted successfully", "details": None},
    ),
    (
        "/api/v1/snapshot/delete/{snapshot_name}",
        "get",
        200,
        {"message": "Snapshot 'backup-2025-12-01' deleted successfully", "details": None},
    ),
    (
        "/api/v1/revert/enable",
        "post",
        200,
        {"message": "Automatic revert enabled", "details": None},
    ),
    (
        "/api/v1/revert/disable",
        "post",
        200,
        {
            "message": "Automatic revert disabled - manual intervention required on failures",
            "details": None,
        },
    ),
    (
        "/api/v1/snapshot/create",
        "post",
        400,
        {"detail": "Invalid parameter: snapshot_name cannot be empty"},
    ),
    ("/api/v1/vm/start", "get", 500, {"detail": "Error starting VM: Failed to revert snapshot"}),
    ("/api/v1/status", "get", 503, {"detail": "VM manager not initialized"}),
]


@pytest.fixture(scope="module")
def spec():
    return build_openapi("1.3.0")


@pytest.fixture(scope="module")
def check(spec):
    return response_validator(spec)


@pytest.mark.parametrize("path, method, status, body", REFERENCE_EXAMPLES)
def test_accepts_the_api_reference_examples(check, path, method, status, body):
    check(path, method, status, body)


def test_accepts_a_heartbeat_status_before_the_first_heartbeat(check):
    check(
        "/api/v1/heartbeat/status",
        "GET",
        200,
        dict(HEARTBEAT, last_heartbeat=None, seconds_since_last=None, is_healthy=False),
    )


def test_message_details_may_be_an_object(check):
    check("/api/v1/vm/start", "post", 200, {"message": "ok", "details": {"reverted": False}})


def test_rejects_a_wrong_type(check):
    body = dict(HEARTBEAT, is_healthy="yes")
    with pytest.raises(
        AssertionError,
        match=r"at is_healthy: 'yes' is not "
        r"of type 'boolean'",
    ):
        check("/api/v1/heartbeat/status", "get", 200, body)


def test_rejects_null_where_not_nullable(check):
    with pytest.raises(AssertionError, match="at timeout"):
        check("/api/v1/heartbeat/status", "get", 200, dict(HEARTBEAT, timeout=None))


def test_rejects_a_missing_field(check):
    body = {k: v for k, v in HEARTBEAT.items() if k != "timeout"}
    with pytest.raises(AssertionError, match="'timeout' is a required"):
        check("/api/v1/heartbeat/status", "get", 200, body)


def test_rejects_an_extra_field(check):
    body = dict(HEARTBEAT, uptime=3)
    with pytest.raises(AssertionError, match=r"'uptime' was unexpected"):
        check("/api/v1/heartbeat/status", "get", 200, body)


def test_rejects_an_extra_field_in_a_nested_ref(check):
    body = copy.deepcopy(REFERENCE_EXAMPLES[1][3])
    body["heartbeat"]["extra"] = 1
    with pytest.raises(AssertionError, match="at heartbeat"):
        check("/api/v1/status", "get", 200, body)


def test_rejects_a_bad_timestamp(check):
    with pytest.raises(AssertionError, match="date-time"):
        check("/api/v1/heartbeat/status", "get", 200, dict(HEARTBEAT, last_heartbeat="yesterday"))


def test_rejects_an_error_body_without_detail(check):
    with pytest.raises(AssertionError, match="'detail' is a required"):
        check("/api/v1/status", "get", 503, {"message": "not ready"})


def test_message_names_operation_and_status(check):
    with pytest.raises(AssertionError) as info:
        check("/api/v1/heartbeat/status", "get", 200, {})
    assert str(info.value).startswith("GET /api/v1/heartbeat/status 200:")


@pytest.mark.parametrize(
    "path, method, status, match",
    [
        ("/nope", "get", 200, "path not documented"),
        ("/api/v1/status", "post", 200, "method not documented"),
        ("/api/v1/status", "get", 404, "status not documented"),
    ],
)
def test_undocumented_responses_fail(check, path, method, status, match):
    with pytest.raises(AssertionError, match=match):
        check(path, method, status, {})


def test_nullable_becomes_a_type_list(spec):
    schema = to_json_schema(spec, {"$ref": "#/components/schemas/Message"})
    assert schema["properties"]["details"]["type"] == ["object", "null"]
    assert schema["properties"]["details"]["additionalProperties"] is True
    assert schema["additionalProperties"] is False
    assert "nullable" not in schema["properties"]["details"]


def _examples(media):
    if "example" in media:
        yield media["example"]
    for example in media.get("examples", {}).values():
        yield example["value"]


def test_every_example_in_the_spec_matches_its_schema(spec, check):
    """The examples shown in /docs and /redoc are valid responses."""
    count = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    response = spec["components"]["responses"][name]
                content = response["content"]
                if "application/json" not in content:
                    # Prometheus' text format, the event stream, the screen: not JSON.
                    assert list(content) in (
                        ["text/plain; version=0.0.4"],
                        ["text/event-stream"],
                        ["image/png"],
                    ), (path, status)
                    continue
                for body in _examples(content["application/json"]):
                    check(path, method, int(status), body)
                    count += 1
    assert count >= 40

"""Offline docs: /docs, /redoc and /openapi.json on a bare Flask app.

Exhibition PCs have no internet, so these tests insist that every script,
stylesheet, image and CSS resource the pages load is served by the app
itself, and that the schema served is exactly the hand-written one.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from flask import Flask, jsonify
from openapi_spec_validator import validate as validate_openapi

import vmcontroller
from vmcontroller.apispec import build_openapi
from vmcontroller.docs import init_docs
from vmcontroller.names import NAME_MAX_LENGTH, NAME_PATTERN

VERSION = "1.3.0"
PAGES = ["/docs", "/redoc"]
ASSET_TAGS = {"script", "link", "img"}
CSS_URL_RE = re.compile(
    r"""@import\s+(?:url\(\s*)?['"]?([^'")\s;]+)|url\(\s*(['"]?)(.*?)\2\s*\)""",
    re.IGNORECASE | re.DOTALL,
)

# The contract (api-reference.md), as (path, method) pairs.
CONTRACT = {
    ("/", "get"),
    ("/api/v1/status", "get"),
    ("/api/v1/heartbeat", "get"),
    ("/api/v1/heartbeat", "post"),
    ("/api/v1/heartbeat/status", "get"),
    ("/api/v1/vm/start", "get"),
    ("/api/v1/vm/start", "post"),
    ("/api/v1/vm/stop", "get"),
    ("/api/v1/vm/stop", "post"),
    ("/api/v1/vm/restart", "get"),
    ("/api/v1/vm/restart", "post"),
    ("/api/v1/snapshots", "get"),
    ("/api/v1/snapshot/create", "get"),
    ("/api/v1/snapshot/create", "post"),
    ("/api/v1/snapshot/{snapshot_name}", "delete"),
    ("/api/v1/snapshot/delete/{snapshot_name}", "get"),
    ("/api/v1/revert/enable", "get"),
    ("/api/v1/revert/enable", "post"),
    ("/api/v1/revert/disable", "get"),
    ("/api/v1/revert/disable", "post"),
    # Beyond the API reference: guest requests and history (issue 3).
    ("/api/v1/revert/request", "get"),
    ("/api/v1/revert/request", "post"),
    ("/api/v1/idle/reset", "get"),
    ("/api/v1/idle/reset", "post"),
    ("/api/v1/events", "get"),
    # The availability report (issue 14).
    ("/api/v1/report", "get"),
    # Prometheus' scrape target (issue 14).
    ("/metrics", "get"),
    # Server-Sent Events for dashboards (issue 14).
    ("/api/v1/events/stream", "get"),
    # The screen as the screen watcher sees it (issue 16).
    ("/api/v1/screen/latest", "get"),
    ("/api/v1/screen/{event_id}", "get"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TAGS = {
    "Status",
    "Heartbeat",
    "VM control",
    "Snapshots",
    "Auto-revert",
    "Guest requests",
    "History",
    "Screen",
}


class _Assets(HTMLParser):
    """Collects the attributes of script/link/img tags and <style> text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.metas: list[dict[str, str]] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attributes = {k: (v or "") for k, v in attrs}
        if tag in ASSET_TAGS:
            self.tags.append((tag, attributes))
        elif tag == "meta":
            self.metas.append(attributes)
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _parse(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    parser.close()
    return parser


def _asset_urls(parsed: _Assets) -> list[str]:
    urls = []
    for _tag, attrs in parsed.tags:
        for name in ("src", "href"):
            if name in attrs:
                urls.append(attrs[name])
    return urls


def _css_urls(css: str) -> list[str]:
    urls = []
    for match in CSS_URL_RE.finditer(css):
        urls.append(match.group(1) or match.group(3))
    return urls


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and url.startswith("/")


@pytest.fixture
def spec():
    return build_openapi(VERSION)


@pytest.fixture
def app(spec):
    app = Flask(__name__)
    app.config["TESTING"] = True
    init_docs(app, spec)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


# ------------------------------------------------------------------ pages


def test_swagger_ui_is_served_at_docs(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in page
    assert 'url: "/openapi.json"' in page
    # no online validator badge
    assert "validatorUrl: null" in page
    assert "validator.swagger.io" not in page
    # flasgger's stock head.html links Google Fonts; ours must win
    assert "fonts.googleapis" not in page
    # flasgger writes its OAuth settings into the page's script with Python's str()
    # (0.9.7 does; Debian 12's 0.9.5 has no OAuth set-up): a None there is a script error.
    assert not re.search(r"=\s*None\b", page)
    if "auth_config" in page:
        assert "let auth_config = {};" in page


def test_redoc_is_served_at_redoc_and_reads_openapi_json(client):
    response = client.get("/redoc")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    parsed = _parse(response.get_data(as_text=True))
    scripts = [
        attrs.get("src") for tag, attrs in parsed.tags if tag == "script" and attrs.get("src")
    ]
    assert scripts == ["/redoc/assets/redoc.standalone.js"]
    page = response.get_data(as_text=True)
    assert 'data-spec-url="/openapi.json"' in page
    assert "Redoc.init(" in page


@pytest.mark.parametrize("page", PAGES)
def test_page_assets_are_local_and_served(client, page):
    response = client.get(page)
    assert response.status_code == 200
    parsed = _parse(response.get_data(as_text=True))
    urls = _asset_urls(parsed)
    assert urls, f"{page} loads no assets?"
    for tag, attrs in parsed.tags:
        for name, value in attrs.items():
            assert "http://" not in value and "https://" not in value, (
                f"{page}: <{tag} {name}={value!r}> points outside the app"
            )
    for url in urls:
        assert _is_local(url), f"{page}: asset {url!r} is not a local path"
        asset = client.get(url)
        assert asset.status_code == 200, f"{page}: {url} -> {asset.status}"
        asset.close()


@pytest.mark.parametrize("page", PAGES)
def test_css_loads_nothing_from_elsewhere(client, page):
    parsed = _parse(client.get(page).get_data(as_text=True))
    sheets = [("<style>", css) for css in parsed.styles]
    for tag, attrs in parsed.tags:
        if tag == "link" and "stylesheet" in attrs.get("rel", "").split():
            href = attrs["href"]
            sheets.append((href, client.get(href).get_data(as_text=True)))
    if page == "/docs":
        assert "/flasgger_static/swagger-ui.css" in [n for n, _ in sheets]
    checked = 0
    for name, css in sheets:
        for url in _css_urls(css):
            checked += 1
            if url.startswith("data:"):
                continue
            assert not re.match(r"(?i)^(https?:)?//", url), (
                f"{page}: {name} loads {url!r} from elsewhere"
            )
            target = urljoin(name if name.startswith("/") else page, url)
            assert client.get(target).status_code == 200, (
                f"{page}: {name} refers to {url!r}, which is not served"
            )
    if page == "/docs":
        assert checked > 0, "the url() scan found nothing in swagger-ui.css"


@pytest.mark.parametrize("page", PAGES)
def test_pages_forbid_other_origins(client, page):
    """The CSP also stops ReDoc's sidebar logo from loading from a CDN."""
    parsed = _parse(client.get(page).get_data(as_text=True))
    policies = [
        m["content"]
        for m in parsed.metas
        if m.get("http-equiv", "").lower() == "content-security-policy"
    ]
    assert len(policies) == 1
    directives = dict(
        (d.split()[0], d.split()[1:])
        for d in (part.strip() for part in policies[0].split(";"))
        if d
    )
    for name in ("default-src", "img-src", "font-src", "style-src", "script-src", "connect-src"):
        assert name in directives
        for source in directives[name]:
            assert source.startswith("'") or source in ("data:", "blob:"), (
                f"{page}: {name} allows {source}"
            )


def test_redoc_bundle_and_licence_are_shipped():
    folder = Path(vmcontroller.__file__).parent / "static" / "redoc"
    bundle = (folder / "redoc.standalone.js").read_text(encoding="utf-8")
    assert len(bundle) > 100_000
    assert "fonts.googleapis" not in bundle
    assert "MIT" in (folder / "LICENSE").read_text(encoding="utf-8")
    assert (folder / "VERSION").read_text().startswith("redoc 2.")


def test_unknown_docs_subpath_is_404(client):
    assert client.get("/redoc/assets/nope.js").status_code == 404


# ------------------------------------------------------------------ schema


def test_openapi_json_is_exactly_the_spec(client, spec):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    served = response.get_json()
    assert served == spec
    assert served["openapi"] == "3.0.3"
    assert "swagger" not in served
    assert "definitions" not in served
    assert served["info"]["version"] == VERSION
    assert served["info"]["title"] == "Exhibition VM Controller API"


def test_spec_passes_structural_validation(spec):
    validate_openapi(spec)


def test_spec_documents_exactly_the_contract(spec):
    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == CONTRACT


def _operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_every_operation_has_id_summary_and_one_known_tag(spec):
    ids = []
    for path, method, operation in _operations(spec):
        where = f"{method.upper()} {path}"
        assert operation.get("operationId"), where
        assert operation.get("summary"), where
        assert operation.get("description"), where
        assert len(operation.get("tags", [])) == 1, where
        assert operation["tags"][0] in TAGS, where
        ids.append(operation["operationId"])
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    assert {t["name"] for t in spec["tags"]} == TAGS


def test_every_response_has_a_json_example(spec):
    for path, method, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[1]
                response = spec["components"]["responses"][name]
            content = response["content"]
            if path == "/metrics" and status == "200":  # Prometheus' text format, not JSON
                assert set(content) == {"text/plain; version=0.0.4"}
                content = {"application/json": content["text/plain; version=0.0.4"]}
            if path == "/api/v1/events/stream" and status == "200":  # Server-Sent Events
                assert set(content) == {"text/event-stream"}
                content = {"application/json": content["text/event-stream"]}
            if path.startswith("/api/v1/screen/") and status == "200":  # a PNG
                assert set(content) == {"image/png"}
                content = {"application/json": content["image/png"]}
            media = content["application/json"]
            assert "example" in media or "examples" in media, (
                f"{method.upper()} {path} {status} has no example"
            )
            if not status.startswith("2"):
                assert media["schema"] == {"$ref": "#/components/schemas/Error"}


def test_documented_errors_per_operation(spec):
    def statuses(path, method):
        return set(spec["paths"][path][method]["responses"])

    gate = {"400", "401", "413", "414", "431"}  # every /api operation passes the security gate
    changes = gate | {"403"}  # and what changes state refuses cross-site calls
    reads = gate | {"403"}  # and what reveals state refuses the guest token
    assert statuses("/api/v1/status", "get") == {"200", "500", "503"} | reads
    assert statuses("/api/v1/vm/restart", "post") == {"200", "409", "500", "503"} | changes
    assert statuses("/api/v1/vm/start", "get") == {"200", "500", "503"} | changes
    assert statuses("/api/v1/snapshot/create", "post") == {"200", "400", "500", "503"} | changes
    assert (
        statuses("/api/v1/snapshot/{snapshot_name}", "delete")
        == {"200", "400", "404", "500", "503"} | changes
    )
    assert (
        statuses("/api/v1/snapshot/delete/{snapshot_name}", "get")
        == {"200", "400", "404", "500", "503"} | changes
    )
    assert statuses("/api/v1/revert/disable", "get") == {"200", "503"} | changes
    assert statuses("/api/v1/heartbeat", "get") == {"200", "503"} | changes
    assert statuses("/", "get") == {"200", "400"}  # a foreign Host is refused there too
    assert statuses("/metrics", "get") == {"200"} | reads  # outside /api, guarded like status
    assert statuses("/api/v1/events/stream", "get") == {"200", "400", "503"} | reads
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            bad_request = operation["responses"]["400"]
            if "$ref" in bad_request:
                bad_request = spec["components"]["responses"][bad_request["$ref"].split("/")[-1]]
            assert "Host header" in bad_request["description"], (path, method)
    assert "404" in spec["info"]["description"]
    assert "405" in spec["info"]["description"]


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_ref_resolves(spec):
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/")
        node = spec
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_component_is_used(spec):
    refs = set(_refs(spec))
    # Security schemes are referenced by name in `security`, not by $ref.
    for requirement in spec["security"]:
        refs.update(f"#/components/securitySchemes/{name}" for name in requirement)
    for kind, items in spec["components"].items():
        for name in items:
            assert f"#/components/{kind}/{name}" in refs, (
                f"components/{kind}/{name} is never referenced"
            )


def test_snapshot_name_rule_is_documented_once_and_reused(spec):
    rule = spec["components"]["schemas"]["SnapshotName"]
    assert rule["pattern"] == NAME_PATTERN
    assert rule["maxLength"] == NAME_MAX_LENGTH
    assert rule["minLength"] == 1
    params = spec["components"]["parameters"]
    name_ref = {"$ref": "#/components/schemas/SnapshotName"}
    assert params["SnapshotNameQuery"]["schema"] == name_ref
    assert params["SnapshotNameQuery"]["in"] == "query"
    assert params["SnapshotNamePath"]["schema"] == name_ref
    assert params["SnapshotNamePath"]["in"] == "path"
    text = repr(spec)
    assert text.count(NAME_PATTERN.replace("\\", "\\\\")) == 1


def test_snapshot_create_post_accepts_form_fields(spec):
    body_ref = spec["paths"]["/api/v1/snapshot/create"]["post"]["requestBody"]
    body = spec["components"]["requestBodies"][body_ref["$ref"].rsplit("/")[-1]]
    assert set(body["content"]) == {
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json",
    }
    assert body["required"] is False


def test_build_openapi_returns_independent_documents():
    first = build_openapi("1.0.0")
    first["paths"]["/"]["get"]["summary"] = "changed"
    first["components"]["schemas"]["HeartbeatStatus"]["example"]["timeout"] = 1
    second = build_openapi("2.0.0")
    assert second["paths"]["/"]["get"]["summary"] != "changed"
    assert second["components"]["schemas"]["HeartbeatStatus"]["example"]["timeout"] == 10
    assert second["info"]["version"] == "2.0.0"


# ------------------------------------------------------- app integration


def test_two_apps_serve_their_own_spec():
    apps = []
    for version in ("1.0.0", "2.0.0"):
        app = Flask(__name__)
        init_docs(app, build_openapi(version))
        apps.append(app)
    versions = [a.test_client().get("/openapi.json").get_json()["info"]["version"] for a in apps]
    assert versions == ["1.0.0", "2.0.0"]


def test_spec_is_served_unchanged_in_debug_mode(spec):
    """In debug mode flasgger rebuilds the document on every request."""
    app = Flask(__name__)
    app.debug = True
    init_docs(app, spec)
    client = app.test_client()
    assert client.get("/openapi.json").get_json() == spec
    assert client.get("/openapi.json").get_json() == spec


def test_later_changes_to_spec_are_not_served(spec, client):
    spec["info"]["title"] = "changed"
    assert client.get("/openapi.json").get_json()["info"]["title"] != "changed"


def test_app_json_error_handlers_still_answer(spec):
    app = Flask(__name__)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _json_error(error):
        return jsonify(detail=error.name), error.code

    init_docs(app, spec)
    client = app.test_client()
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.get_json() == {"detail": "Not Found"}
    wrong_method = client.post("/docs")
    assert wrong_method.status_code == 405
    assert wrong_method.get_json() == {"detail": "Method Not Allowed"}
    assert client.get("/openapi.json").status_code == 200


def test_app_templates_still_take_precedence(tmp_path, spec):
    """The app may still override our pages from its own template folder."""
    (tmp_path / "redoc.html").write_text("app's own {{ spec_url }}")
    app = Flask(__name__, template_folder=str(tmp_path))
    init_docs(app, spec)
    assert app.test_client().get("/redoc").get_data(as_text=True) == ("app's own /openapi.json")


# ------------------------------------------------------- the docs cost nothing until asked for

LAZY_DOCS_CHECK = """
import sys
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.monitor import Monitor
from vmcontroller.store import Store
from vmcontroller.vm import Domain
from vmcontroller.virsh import VirshRunner

config = build_config({"vm_name": "art"})
monitor = Monitor(Domain(VirshRunner("test:///default", 5), "art", "ready"), config,
                  Store(":memory:"))
client = create_app(monitor, "1.0", None).test_client()
assert client.get("/").status_code == 200
heavy = {"flasgger", "jsonschema", "vmcontroller.apispec"}
print(sorted(heavy & set(sys.modules)))
assert client.get("/docs").status_code == 200
assert client.get("/openapi.json").get_json()["info"]["version"] == "1.0"
print(sorted(heavy & set(sys.modules)))
"""


def test_the_docs_stack_is_imported_only_when_the_docs_are_first_asked_for():
    """flasgger and jsonschema cost a long-running controller ~5 MiB it rarely uses."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", LAZY_DOCS_CHECK], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()
    assert before == "[]", f"imported before any docs request: {before}"
    assert after == "['flasgger', 'jsonschema', 'vmcontroller.apispec']", after


def test_a_docs_path_answers_in_json_like_the_api():
    from fake_virsh import FakeRunner

    from vmcontroller.app import create_app
    from vmcontroller.config import build_config
    from vmcontroller.monitor import Monitor
    from vmcontroller.store import Store
    from vmcontroller.vm import Domain

    monitor = Monitor(
        Domain(FakeRunner(), "art", "ready"), build_config({"vm_name": "art"}), Store(":memory:")
    )
    client = create_app(monitor, VERSION).test_client()
    missing = client.get("/docs/no-such-page")
    assert missing.status_code == 404 and missing.get_json() == {"detail": "Not Found"}
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    wrong = client.post("/openapi.json")
    assert wrong.status_code == 405 and wrong.get_json() == {"detail": "Method Not Allowed"}

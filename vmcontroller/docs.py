"""Offline API documentation: Swagger UI at /docs, ReDoc at /redoc, the
schema at /openapi.json.

Exhibition PCs have no internet, so every script, stylesheet, font and image
of these pages must come from this app:

* flasgger serves Swagger UI 3 and its assets from its own blueprint; its
  ``flasgger/head.html`` links Google Fonts, so this package ships a
  replacement (``templates/flasgger/head.html``) and the validator badge,
  which would call validator.swagger.io, is switched off;
* flasgger has no ReDoc, so ReDoc's standalone bundle is a static file of this
  package (``static/redoc/``, written by ``scripts/fetch-redoc.sh``);
* both pages carry a Content-Security-Policy (``templates/offline_csp.html``)
  that lets the browser load nothing from another origin, which also stops
  ReDoc's sidebar from requesting its logo from a CDN.

The schema is the hand-written document of :mod:`vmcontroller.apispec`,
served as it is at flasgger's schema endpoint by a view of this module:
flasgger's own document builder (rule scanning switched off here) adds
defaults of its own that differ between its releases.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, render_template, url_for

from .wsgi import Environ, StartResponse, WsgiApp, request_path

DOCS_ROUTE = "/docs"
REDOC_ROUTE = "/redoc"
SPEC_ROUTE = "/openapi.json"
REDOC_ASSETS_ROUTE = "/redoc/assets"

DOCS_BLUEPRINT = "docs"
"""Our blueprint: the /redoc page, ReDoc's bundle and the template override."""

FLASGGER_BLUEPRINT = "flasgger"
SPEC_ENDPOINT = "openapi"
"""flasgger's endpoint for the schema, i.e. ``flasgger.openapi``."""

_SANS = (
    '-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, '
    '"Helvetica Neue", Arial, "Noto Sans", "Liberation Sans", '
    '"DejaVu Sans", sans-serif'
)
_MONO = (
    'ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", "Courier New", monospace'
)


def _flasgger_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Configuration for flasgger, built fresh for each app.

    flasgger never builds a document of its own here: :func:`init_docs` puts
    our view at its schema endpoint. ``openapi`` still tells its Swagger UI page
    which kind of document it shows.
    """
    return {
        "headers": [],
        "specs": [
            {
                "endpoint": SPEC_ENDPOINT,
                "route": SPEC_ROUTE,
            }
        ],
        "openapi": spec["openapi"],
        "title": spec["info"]["title"],
        "uiversion": 3,
        "swagger_ui": True,
        "specs_route": DOCS_ROUTE,
        "static_url_path": "/flasgger_static",
        # flasgger 0.9.7's template renders this with Python's str() (0.9.5's
        # has no OAuth set-up); without it the page would contain
        # `let auth_config = None;`, a JS error.
        "auth": {},
        # No online validator badge (validator.swagger.io).
        "ui_params": {"validatorUrl": None},
    }


def _redoc_options() -> dict[str, Any]:
    """ReDoc options: the system's fonts, never a web font from elsewhere."""
    return {
        "theme": {
            "typography": {
                "fontFamily": _SANS,
                "headings": {"fontFamily": _SANS},
                "code": {"fontFamily": _MONO},
            },
        },
        "expandResponses": "200",
    }


def _docs_blueprint(title: str) -> Blueprint:
    """The /redoc page and its assets, plus our template folder.

    The blueprint's template folder holds ``flasgger/head.html``; Flask
    searches the app's own template folder first, then blueprint folders in
    registration order, so registering this blueprint before flasgger's
    makes our head.html win without touching the app's jinja loader.
    """
    bp = Blueprint(
        DOCS_BLUEPRINT,
        __name__,
        template_folder="templates",
        static_folder="static/redoc",
        static_url_path=REDOC_ASSETS_ROUTE,
    )

    @bp.get(REDOC_ROUTE)
    def redoc() -> str:
        return render_template(
            "redoc.html",
            title=title,
            spec_url=url_for(f"{FLASGGER_BLUEPRINT}.{SPEC_ENDPOINT}"),
            redoc_js_url=url_for(f"{DOCS_BLUEPRINT}.static", filename="redoc.standalone.js"),
            favicon_url=url_for(f"{FLASGGER_BLUEPRINT}.static", filename="favicon-32x32.png"),
            redoc_options=_redoc_options(),
        )

    return bp


#: What the docs pages may load: nothing from another origin (an exhibition PC
#: has no internet, and this also keeps ReDoc's sidebar from fetching its logo
#: from a CDN). 'unsafe-inline'/'unsafe-eval' are needed by the inline start-up
#: scripts and the bundles; blob: by ReDoc's search worker. Sent as a header
#: (with frame-ancestors, which a <meta> cannot carry) and as a <meta>, so a
#: saved copy of the page keeps it.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "child-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'"
)


def init_docs(app: Flask, spec: dict[str, Any]) -> None:
    """Serve ``spec`` at /openapi.json, Swagger UI at /docs, ReDoc at /redoc.

    Call once per app, before the first request. Registers two blueprints,
    ``docs`` (/redoc, /redoc/assets/...) then ``flasgger`` (/docs,
    /openapi.json, /flasgger_static/..., /oauth2-redirect.html), and makes
    /openapi.json serve ``spec`` whatever flasgger's release. It sets no
    Flask config key and registers no error handler, so the app's own JSON
    error handlers stay in charge. ``spec`` is copied: changing it later
    does not change what is served.
    """
    from flasgger import Swagger  # here: only an app that serves the docs pays for it

    app.context_processor(lambda: {"docs_csp": DOCS_CSP})
    app.register_blueprint(_docs_blueprint(spec["info"]["title"]))
    Swagger(app, config=_flasgger_config(spec), template=copy.deepcopy(spec), merge=False)
    document = copy.deepcopy(spec)

    def openapi() -> Response:
        """The schema as given. flasgger builds what it serves from defaults of its
        own overlaid by the template, and its releases differ in the defaults they
        leave: 0.9.5 (Debian 12's) adds a Swagger 2 ``"definitions": {}``, which an
        OpenAPI 3 document must not have."""
        return jsonify(document)

    app.view_functions[f"{FLASGGER_BLUEPRINT}.{SPEC_ENDPOINT}"] = openapi


#: The paths the docs app answers (init_docs' routes); every other path is the API's.
DOCS_APP_PREFIXES = (
    DOCS_ROUTE,
    REDOC_ROUTE,
    SPEC_ROUTE,
    "/flasgger_static/",
    "/oauth2-redirect.html",
)


class LazyDocs:
    """WSGI: the docs pages are an app of their own, built on the first request for them.

    flasgger and what it pulls in (jsonschema and its kin) take about 5 MiB of a
    controller that otherwise needs 35; the gallery PC's controller runs for
    months and its docs are opened perhaps once, by the technician who sets it up.
    """

    def __init__(self, api: WsgiApp, build: Callable[[], Flask]):
        self._api = api
        self._build = build
        self._docs: Flask | None = None
        self._lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not request_path(environ).startswith(DOCS_APP_PREFIXES):
            return self._api(environ, start_response)
        docs = self._docs
        if docs is None:
            with self._lock:
                if self._docs is None:
                    self._docs = self._build()
                docs = self._docs
        return docs(environ, start_response)

"""Only staff change the exhibition, whatever the guest or the network sends.

The guest is untrusted: it runs decades-old software, often a browser
showing old web pages, on the same network as the API. This module is the
one gate every request passes, before any route runs:

- tokens: ``api_token`` guards everything that changes or reveals state
  (the API and ``/metrics``);
  ``guest_token`` guards what the guest calls (heartbeat, revert request,
  idle reset), which also accept the staff token; the guest token elsewhere
  is answered 403 (known, not enough), any other token 401. A token is accepted as
  ``Authorization: Bearer ...`` or, for GET-only clients such as AutoIt, as
  a ``token`` query parameter. Comparison is constant-time.
- cross-site requests: a request a browser marks as coming from another site
  (``Sec-Fetch-Site``, or an ``Origin`` that is not the controller's own)
  cannot change anything, token or not: an ``<img>`` tag in a page the
  guest's browser opens must not delete the ready snapshot. HEAD is judged
  like GET: Flask answers it by running the GET view.
- the Host header must name this controller (an IP address, ``localhost``,
  the machine's names, ``allowed_hosts``): DNS rebinding points an attacker's
  name at this machine, and then the attacker's page is same-origin to the
  browser, so only the Host header still tells the request apart.
- limits: bodies over 64 KiB, over-long query strings (413/414).
- headers: nosniff everywhere; the docs pages and the dashboard may not be
  framed, and the dashboard may load and call nothing but this controller.
With no token configured the API behaves as the API reference says.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask

from .dashboard import UI_CSP
from .docs import DOCS_CSP
from .loglines import printable
from .vocab import GUEST_PATHS, MAX_BODY, MAX_QUERY, READ_ONLY_PATHS, UI_PREFIX
from .wsgi import (
    Environ,
    StartResponse,
    WsgiApp,
    content_length,
    json_answer,
    request_method,
    request_path,
)

log = logging.getLogger(__name__)

REALM = "exhibition-vm-controller"

#: Never guarded: the landing document and the documentation.
OPEN_PREFIXES = (
    "/docs",
    "/redoc",
    "/openapi.json",
    "/flasgger_static/",
    "/apidocs",
    "/oauth2-redirect.html",
)
DOCS_PREFIXES = ("/docs", "/redoc", "/apidocs", "/oauth2-redirect.html")


@dataclass(frozen=True)
class SecuritySettings:
    api_token: str | None = None
    guest_token: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    #: Host names accepted in the Host header beyond IP addresses, localhost
    #: and the machine's own names (the allowed_hosts setting, api_host).
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)


#: A Host header: a bracketed IPv6 address or a name/IPv4 address, then an optional port.
_HOST_HEADER = re.compile(r"(\[[^\[\]]*\]|[^\[\]:]*)(?::[0-9]{1,5})?", re.ASCII)
HOSTS_KEY = "allowed_hosts"


def normal_host_name(name: str) -> str:
    """The form names are compared in: DNS ignores case and a final dot."""
    return name.lower().removesuffix(".")


def machine_host_names() -> frozenset[str]:
    """The names this machine answers to by itself. getfqdn() may ask the resolver,
    so it is called once, when the app is built, never per request."""
    return frozenset(
        normal_host_name(n) for n in ("localhost", socket.gethostname(), socket.getfqdn()) if n
    )


def host_is_ours(header: str, names: frozenset[str]) -> bool:
    """Whether a Host header names this controller.

    Any IP address is accepted: a rebinding attack always carries the attacker's
    DNS name, and a guest reaches the host by address (10.0.2.2, 192.168.122.1).
    """
    match = _HOST_HEADER.fullmatch(header)
    if match is None:
        return False
    host = match.group(1)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return bool(host) and normal_host_name(host) in names


def guarded(path: str) -> bool:
    """Whether tokens and the cross-site rule apply: the API, and what reveals state
    outside it (/metrics); the landing document and the docs stay open."""
    return path.startswith("/api/") or path in READ_ONLY_PATHS


def _matches(given: str | None, *tokens: str | None) -> bool:
    """Constant-time comparison against every configured token (no early exit)."""
    if not given:
        return False
    ok = False
    for token in tokens:
        if token:
            ok |= hmac.compare_digest(given.encode(), token.encode())
    return ok


def _presented_token(environ: Environ) -> str | None:
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    query = environ.get("QUERY_STRING", "")
    if "token" not in query:  # the parse below only for the requests that may carry one
        return None
    raw = query.encode("latin-1").decode("utf-8", "replace")
    for name, value in parse_qsl(raw, keep_blank_values=True, errors="replace"):
        if name == "token":
            return value or None  # the first one, as Flask's request.args.get gives it
    return None


def cross_site_reason(
    origin: str | None, fetch_site: str | None, host: str | None, cors_origins: Iterable[str]
) -> str | None:
    """Why a browser marked this request as coming from another site, or None.

    ``host`` is the Host header the client addressed us by, port included: a page
    of the controller's own (the docs) sends that as its Origin.
    """
    allowed = set(cors_origins)
    own = {f"http://{host}", f"https://{host}"} if host else set()
    if origin is not None and origin not in own and origin not in allowed:
        return f"Origin {origin!r} is not this controller's own"
    if fetch_site in ("cross-site", "same-site") and (origin is None or origin not in allowed):
        return f"the browser marked it Sec-Fetch-Site: {fetch_site}"
    return None


def _shown(value: str, limit: int = 200) -> str:
    """A header value quoted for a message: escaped by repr, and not 16 KiB long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


class SecurityGate:
    """WSGI middleware in front of the Flask app: the one gate every request passes.

    It works on the WSGI environ, not through Flask's hooks: a heartbeat passes
    it in a few microseconds, and no route can run before it (the routes stay
    unaware of it).
    """

    def __init__(self, app: WsgiApp, settings: SecuritySettings):
        self._app = app
        self._settings = settings
        self._cors = frozenset(settings.cors_origins)
        host_names = machine_host_names() | {normal_host_name(n) for n in settings.allowed_hosts}
        # Every request asks; the answers for the few Host values clients send are
        # kept (bounded, so that a client inventing names cannot grow it).
        self._ours = functools.lru_cache(maxsize=128)(
            functools.partial(host_is_ours, names=host_names)
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = request_path(environ)
        extra = self._headers(environ, path)
        refusal = self.judge(environ, path)
        if refusal is not None:
            return json_answer(
                environ,
                start_response,
                refusal.status,
                {"detail": refusal.detail},
                (*refusal.headers, *extra),
            )

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.extend(extra)
            return start_response(status, headers, exc_info)

        return self._app(environ, start)

    def judge(self, environ: Environ, path: str) -> Refusal | None:
        """None when the request may reach the routes, else why not (logged here)."""
        method = request_method(environ)
        host = environ.get("HTTP_HOST")
        # No Host at all: an HTTP/1.0 tool, never a browser (browsers always send it).
        if host is not None and not self._ours(host):
            log.warning("refused a request for host %s: %s %r", _shown(host, 100), method, path)
            return Refusal(
                400,
                f"Host {_shown(host)} is not a name of this controller: a "
                f"page may have pointed its own name at this machine (DNS "
                f"rebinding). To reach the controller under this name, add "
                f"it to {HOSTS_KEY} in the configuration.",
            )
        length = content_length(environ)
        if length is not None and length > MAX_BODY:
            return Refusal(413, f"Request body too large: at most {MAX_BODY} bytes (got {length})")
        if len(environ.get("QUERY_STRING", "")) > MAX_QUERY:
            return Refusal(414, f"Query string too long: at most {MAX_QUERY} bytes")
        if path == "/" or path.startswith(OPEN_PREFIXES) or not guarded(path):
            return None
        if method == "OPTIONS":
            return None  # CORS preflight: answered by Flask, changes nothing
        # HEAD runs the GET view (only the body is dropped), so it is judged as GET.
        if path not in READ_ONLY_PATHS:
            why = cross_site_reason(
                environ.get("HTTP_ORIGIN"), environ.get("HTTP_SEC_FETCH_SITE"), host, self._cors
            )
            if why is not None:
                log.warning(
                    "refused a cross-site %s %s: %s", printable(method), printable(path), why
                )
                return Refusal(
                    403,
                    f"Cross-site request refused: {why}. Staff tools must "
                    f"call the API directly, not from another site's page.",
                )
        settings = self._settings
        needed: tuple[str | None, ...]
        if path in GUEST_PATHS:
            needed = (settings.guest_token, settings.api_token) if settings.guest_token else ()
        else:
            needed = (settings.api_token,) if settings.api_token else ()
        presented = _presented_token(environ)
        if needed and not _matches(presented, *needed):
            if path not in GUEST_PATHS and _matches(presented, settings.guest_token):
                # A valid token, not the staff's: the dashboard tells its user why
                # nothing is shown rather than asking again for a token.
                return Refusal(
                    403,
                    "Forbidden: this is the guest's token, it only sends heartbeats "
                    "and revert requests; this endpoint needs the staff token",
                )
            which = "guest or staff token" if path in GUEST_PATHS else "staff token"
            return Refusal(
                401,
                f"Unauthorized: this endpoint needs the {which}, as "
                f"'Authorization: Bearer <token>' or '?token=<token>'",
                (("WWW-Authenticate", f'Bearer realm="{REALM}"'),),
            )
        return None

    def _headers(self, environ: Environ, path: str) -> list[tuple[str, str]]:
        """What every answer carries, refusals included."""
        headers = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
        if path.startswith(DOCS_PREFIXES):
            headers += [
                ("Content-Security-Policy", DOCS_CSP + "; frame-ancestors 'none'"),
                ("X-Frame-Options", "DENY"),
            ]
        elif path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
            headers += [("Content-Security-Policy", UI_CSP), ("X-Frame-Options", "DENY")]
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin in self._cors:
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin"),
                ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                ("Access-Control-Allow-Methods", "GET, POST, DELETE"),
            ]
        return headers


def init_security(app: Flask, settings: SecuritySettings) -> None:
    """Put the gate in front of ``app``'s routes (Flask's own wsgi_app stays behind it)."""
    app.wsgi_app = SecurityGate(app.wsgi_app, settings)  # type: ignore[method-assign]

"""Only staff change the exhibition, whatever the guest or the network sends.

The guest is untrusted: it runs decades-old software, often a browser
showing old web pages, on the same network as the API. This module is the
one gate every request passes, before any route runs:

- tokens: ``api_token`` guards everything that changes or reveals state;
  ``guest_token`` guards what the guest calls (heartbeat, revert request,
  idle reset), which also accept the staff token. A token is accepted as
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
- headers: nosniff everywhere; the docs pages may not be framed.
With no token configured the API behaves as the API reference says.
"""
from __future__ import annotations

import hmac
import functools
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Iterable

from flask import Flask, Response, jsonify, request

from .docs import DOCS_CSP
from .loglines import printable
from .vocab import API_PREFIX, MAX_BODY, MAX_QUERY

log = logging.getLogger(__name__)

REALM = "exhibition-vm-controller"

#: Called by the guest: open to the guest token (and the staff token).
GUEST_PATHS = frozenset(API_PREFIX + p for p in ("/heartbeat", "/revert/request", "/idle/reset"))
#: Read-only API paths: a cross-site page cannot read their answers (no CORS), so
#: they are not refused for being cross-site; they still need the staff token.
READ_ONLY_PATHS = frozenset(API_PREFIX + p for p in ("/status", "/heartbeat/status",
                                                      "/snapshots", "/events"))
#: Never guarded: the landing document and the documentation.
OPEN_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/flasgger_static/", "/apidocs",
                 "/oauth2-redirect.html")
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
    return frozenset(normal_host_name(n) for n in ("localhost", socket.gethostname(),
                                                   socket.getfqdn()) if n)


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


def _matches(given: str | None, *tokens: str | None) -> bool:
    """Constant-time comparison against every configured token (no early exit)."""
    if not given:
        return False
    ok = False
    for token in tokens:
        if token:
            ok |= hmac.compare_digest(given.encode(), token.encode())
    return ok


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.args.get("token") or None


def _own_origins() -> set[str]:
    host = request.host  # as the client addressed us, port included
    return {f"http://{host}", f"https://{host}"}


def cross_site_reason(cors_origins: Iterable[str]) -> str | None:
    """Why a browser marked this request as coming from another site, or None."""
    origin = request.headers.get("Origin")
    allowed = set(cors_origins)
    if origin is not None and origin not in _own_origins() and origin not in allowed:
        return f"Origin {origin!r} is not this controller's own"
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site in ("cross-site", "same-site") and (origin is None or origin not in allowed):
        return f"the browser marked it Sec-Fetch-Site: {fetch_site}"
    return None


def _shown(value: str, limit: int = 200) -> str:
    """A header value quoted for a message: escaped by repr, and not 16 KiB long."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _refuse(status: int, detail: str, **headers: str) -> Response:
    response = jsonify({"detail": detail})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def init_security(app: Flask, settings: SecuritySettings) -> None:
    """Register the gate on ``app``; its routes stay unaware of it."""
    cors = settings.cors_origins
    host_names = machine_host_names() | {normal_host_name(n) for n in settings.allowed_hosts}
    # Every request asks; the answers for the few Host values clients send are kept
    # (bounded, so that a client inventing names cannot grow it).
    ours = functools.lru_cache(maxsize=128)(functools.partial(host_is_ours, names=host_names))

    @app.before_request
    def _gate() -> Response | None:
        path = request.path
        host = request.environ.get("HTTP_HOST")
        # No Host at all: an HTTP/1.0 tool, never a browser (browsers always send it).
        if host is not None and not ours(host):
            log.warning("refused a request for host %s: %s %r", _shown(host, 100),
                        request.method, path)
            return _refuse(400, f"Host {_shown(host)} is not a name of this controller: a "
                                f"page may have pointed its own name at this machine (DNS "
                                f"rebinding). To reach the controller under this name, add it "
                                f"to {HOSTS_KEY} in the configuration.")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _refuse(413, f"Request body too large: at most {MAX_BODY} bytes "
                                f"(got {request.content_length})")
        if len(request.query_string) > MAX_QUERY:
            return _refuse(414, f"Query string too long: at most {MAX_QUERY} bytes")
        if path == "/" or path.startswith(OPEN_PREFIXES) or not path.startswith("/api/"):
            return None
        if request.method == "OPTIONS":
            return None  # CORS preflight: answered below, changes nothing
        # HEAD runs the GET view (only the body is dropped), so it is judged as GET.
        if path not in READ_ONLY_PATHS:
            why = cross_site_reason(cors)
            if why is not None:
                log.warning("refused a cross-site %s %s: %s", printable(request.method),
                            printable(path), why)
                return _refuse(403, f"Cross-site request refused: {why}. Staff tools must call "
                                    f"the API directly, not from another site's page.")
        if path in GUEST_PATHS:
            needed = (settings.guest_token, settings.api_token) if settings.guest_token else ()
        else:
            needed = (settings.api_token,) if settings.api_token else ()
        if needed and not _matches(_presented_token(), *needed):
            which = "guest or staff token" if path in GUEST_PATHS else "staff token"
            return _refuse(401, f"Unauthorized: this endpoint needs the {which}, as "
                                f"'Authorization: Bearer <token>' or '?token=<token>'",
                           WWW_Authenticate=f'Bearer realm="{REALM}"')
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.path.startswith(DOCS_PREFIXES):
            response.headers["Content-Security-Policy"] = DOCS_CSP + "; frame-ancestors 'none'"
            response.headers["X-Frame-Options"] = "DENY"
        origin = request.headers.get("Origin")
        if origin and origin in cors:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
        return response

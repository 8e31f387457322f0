"""A small client for the controller's REST API, on the standard library only.

Admin scripts use it through ``vmcontroller status``, ``restart`` and the
other verbs of the command line. It turns every outcome into one of three
cases the command line maps to its exit status: an answer (a dict), the API
refusing or failing (``ApiError``: status and the API's ``detail``), or no
controller to talk to (``Unreachable``: refused, unknown host, no answer in
time). Proxy variables are ignored: the controller is on this PC or on the
exhibition network, never behind a web proxy.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from . import __version__
from .vocab import API_PREFIX

API = API_PREFIX
DEFAULT_TIMEOUT = 120.0  # a restart answers once the VM runs again, which may take a while


class ClientError(Exception):
    """Anything that kept a request from getting a usable answer."""


class ApiError(ClientError):
    """The controller answered with an error status: its ``detail`` says why."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail


class Unreachable(ClientError):
    """No answer from the controller: nothing listens, the host is unknown, or it is silent."""


def base_url_for(host: str, port: int) -> str:
    """The URL a client on this machine uses for a controller listening on host:port.

    A wildcard address (0.0.0.0, ::) means "every interface", which a client
    reaches through the loopback address.
    """
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    host = host.strip("[]")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def check_base_url(url: str) -> str:
    """Validate a base URL (http or https, a host, no query); return it without a trailing '/'."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL such as http://127.0.0.1:8000, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the URL must not carry a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    return url.rstrip("/")


class Client:
    """Calls one controller; every method returns the decoded JSON answer."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = check_base_url(base_url)
        self.token = token or None
        self.timeout = timeout
        # No proxy handler: an http_proxy meant for apt must not reroute 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ------------------------------------------------------------ transport

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    ) -> Any:
        """Send one request; return the JSON body of a 2xx answer or raise a ClientError."""
        url = self.base_url + path
        if params:
            items = params.items() if isinstance(params, Mapping) else params
            query = [(k, str(v)) for k, v in items if v is not None]
            if query:
                url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": f"vmcontroller/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            url, method=method, headers=headers, data=b"" if method in ("POST", "PUT") else None
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise ApiError(exc.code, _detail(exc.code, exc.read())) from None
        except urllib.error.URLError as exc:
            raise Unreachable(self._why(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self._why(exc)) from None
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(
                status, f"the answer from {self.base_url} is not JSON: {_snippet(body)}"
            ) from None

    def _why(self, reason: Any) -> str:
        where = self.base_url
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"no answer from {where} within {self.timeout:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot connect to {where}: connection refused (is the controller running?)"
        if isinstance(reason, socket.gaierror):
            return f"cannot resolve the host of {where}: {reason.strerror or reason}"
        if isinstance(reason, http.client.RemoteDisconnected):
            return f"{where} closed the connection without answering"
        if isinstance(reason, http.client.HTTPException):
            # Something answered, but not a web server (--url names another service's port).
            return f"{where} answered, but not in HTTP: {_snippet(str(reason).encode())}"
        return f"cannot reach {where}: {getattr(reason, 'strerror', None) or reason}"

    # ------------------------------------------------------------ the API

    def status(self) -> dict:
        return self.request("GET", f"{API}/status")

    def heartbeat(self) -> dict:
        return self.request("POST", f"{API}/heartbeat")

    def start(self) -> dict:
        return self.request("POST", f"{API}/vm/start")

    def stop(self) -> dict:
        return self.request("POST", f"{API}/vm/stop")

    def restart(self) -> dict:
        return self.request("POST", f"{API}/vm/restart")

    def snapshots(self) -> dict:
        return self.request("GET", f"{API}/snapshots")

    def create_snapshot(self, name: str | None = None) -> dict:
        return self.request("POST", f"{API}/snapshot/create", {"snapshot_name": name})

    def delete_snapshot(self, name: str) -> dict:
        return self.request("DELETE", f"{API}/snapshot/{urllib.parse.quote(name, safe='')}")

    def set_auto_revert(self, enabled: bool) -> dict:
        return self.request("POST", f"{API}/revert/{'enable' if enabled else 'disable'}")

    def events(
        self, limit: int | None = None, since: str | None = None, triggers: Iterable[str] = ()
    ) -> dict:
        params: list[tuple[str, Any]] = [("limit", limit), ("since", since)]
        params += [("trigger", t) for t in triggers]
        return self.request("GET", f"{API}/events", params)

    def report(self, since: str | None = None, until: str | None = None) -> dict:
        return self.request("GET", f"{API}/report", [("since", since), ("until", until)])


def _detail(status: int, body: bytes) -> str:
    """The API's ``detail`` from an error body, or what the body says if it is not ours."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return data["detail"]
    return f"HTTP {status} without an API error body: {_snippet(body)}"


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty)")

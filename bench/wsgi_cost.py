"""The web layer's own work per request, without HTTP: ``python -m bench.wsgi_cost --bodies FILE``.

The controller's Flask app (middleware, routes, JSON errors, all of it) is built over
a stub of its Controls protocol that answers the bodies the running controller gave,
and called as a WSGI app in this process, alternating round by round with the bare
app of the limit row (bench/bare_app.py) on the same bodies. What the two differ by is
the controller's own work per request in the web layer, free of the sockets, of
waitress's threads and of the machine's other load that make the HTTP figures noisy:
the fastest round of each is reported. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.bare_app import create_bare_app, read_bodies

HEARTBEAT = "/api/v1/heartbeat"
STATUS = "/api/v1/status"


class _Started:
    reverted = True


class AnsweringControls:
    """The Controls protocol, answering what the real controller answered (nothing else
    is called by the two routes measured)."""

    def __init__(self, bodies: dict[str, Any]):
        self._heartbeat = bodies[HEARTBEAT]["details"]
        self._status = bodies[STATUS]
        self.vm_name = self._status["vm_name"]
        self.snapshot_name = self._status["snapshot_name"]

    def heartbeat(self, progress: str | None = None) -> dict[str, Any]:
        """The same answer whatever progress value the request carries."""
        return self._heartbeat

    def status(self) -> dict[str, Any]:
        return self._status

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the web-layer benchmark does not call {name}")


def environ(path: str) -> dict[str, Any]:
    """What waitress hands the app for ``GET path`` from wrk on loopback."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def per_request_us(app: Any, path: str, n: int) -> float:
    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        pass

    began = time.perf_counter()
    for _ in range(n):
        b"".join(app(environ(path), start_response))
    return (time.perf_counter() - began) / n * 1e6


def measure(bodies: dict[str, bytes], rounds: int = 7, n: int = 2000) -> dict[str, Any]:
    from vmcontroller import __version__
    from vmcontroller.app import create_app

    parsed = {path: json.loads(body) for path, body in bodies.items()}
    apps = {
        "controller": create_app(AnsweringControls(parsed), __version__),
        "bare": create_bare_app(bodies),
    }
    result: dict[str, Any] = {"rounds": rounds, "requests_per_round": n}
    for path in (HEARTBEAT, STATUS):
        for app in apps.values():  # warm up: first requests build caches
            per_request_us(app, path, 200)
        times: dict[str, list[float]] = {name: [] for name in apps}
        for k in range(rounds):
            order = list(apps) if k % 2 == 0 else list(reversed(apps))
            for name in order:
                times[name].append(per_request_us(apps[name], path, n))
        result[path] = {name: round(min(values), 2) for name, values in times.items()}
        result[path]["all_rounds_us"] = {
            name: [round(v, 1) for v in values] for name, values in times.items()
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(read_bodies(args.bodies), args.rounds, args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

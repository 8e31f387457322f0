"""The limit row of the benchmark: a bare Flask app on waitress that answers
``GET /api/v1/heartbeat`` and ``GET /api/v1/status`` with the JSON the controller gave.

Run as ``python -m bench.bare_app --port P --bodies FILE`` (FILE: a JSON object of path
to the body the controller answered). It does what the smallest Flask app serving that
JSON does, ``jsonify`` of the parsed document (key order kept, as the controller's), and
nothing more: no request hooks, no security headers or checks, no logging; waitress keeps
its default settings except host and port. Whatever the controller spends
beyond this app's time is its own work and its own set-up of the stack, which is what the
ratio controller / bare in ``scripts/bench`` measures.

Once listening it prints one JSON line on stdout: the effective port and the waitress
settings (``describe_server``), which the benchmark records next to the controller's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def describe_server(server: Any) -> dict[str, Any]:
    """What a waitress server was built with: waitress and Flask versions, the server and
    channel classes, and every adjustment waitress knows (its defaults where not set), so
    that two servers' set-ups can be compared from the benchmark's JSON."""
    from waitress.adjustments import Adjustments

    def plain(adj: Any) -> dict[str, Any]:
        found = {}
        for name, _ in Adjustments._params:
            if name not in ("sockets", "listen"):
                value = getattr(adj, name, None)
                found[name] = sorted(value) if isinstance(value, (set, frozenset)) else value
        return found

    settings = plain(server.adj)
    defaults = plain(Adjustments())
    changed = sorted(
        name
        for name in settings
        if name not in ("host", "port") and settings[name] != defaults[name]
    )
    settings["listen"] = [f"{addr[0]}:{addr[1]}" for *_, addr in server.adj.listen]
    channel = getattr(server, "channel_class", None)
    return {
        "waitress": metadata.version("waitress"),
        "flask": metadata.version("flask"),
        "server_class": type(server).__name__,
        "channel_class": None
        if channel is None
        else f"{channel.__module__}.{channel.__qualname__}",
        "settings": settings,
        "not_default": changed,
    }


def create_bare_app(bodies: dict[str, bytes]) -> Any:
    """A Flask app with one GET route per body, answering its JSON through jsonify."""
    from flask import Flask

    app = Flask("bare")
    app.json.sort_keys = False  # the controller's order, so the bytes are the same
    for path, body in bodies.items():
        app.add_url_rule(
            path, endpoint=path, view_func=_answering(json.loads(body)), methods=["GET"]
        )
    return app


def _answering(document: Any) -> Any:
    from flask import jsonify

    return lambda: jsonify(document)


def read_bodies(path: Path) -> dict[str, bytes]:
    """The bodies file the benchmark wrote: path -> body as text (UTF-8 JSON)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {route: text.encode("utf-8") for route, text in raw.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--bodies", type=Path, required=True, help="JSON object: URL path -> the body to answer"
    )
    args = parser.parse_args(argv)
    # No log record at all: waitress would otherwise warn of its queue depth under load,
    # and nothing else here has anything to say.
    logging.disable(logging.CRITICAL)
    from waitress import create_server

    server = create_server(create_bare_app(read_bodies(args.bodies)), host=HOST, port=args.port)
    print(json.dumps({"port": int(server.effective_port), **describe_server(server)}), flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

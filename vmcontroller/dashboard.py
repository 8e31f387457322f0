"""The staff's dashboard at /ui/: one page, one script, one style sheet, all of this package.

A technician walking through the gallery opens it on a phone; a conservator
keeps it open on a desktop. It needs no internet (the exhibition PC has
none) and no build step, so the script is plain JavaScript written for this
page and the files are served as they are. The page holds nothing secret: it
is open like the docs, and every answer it shows comes from the API, under
the API's own rules (tokens, the cross-site gate). Its Content-Security-Policy
lets it load and call nothing but this controller, and run no inline script.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, render_template, send_from_directory

from .vocab import API_PREFIX, OUTCOMES, TRIGGERS, UI_PREFIX

ASSETS_DIR = Path(__file__).parent / "static" / "ui"
#: The files the page loads, besides itself.
ASSETS = ("dashboard.js", "dashboard.css")

#: Only this controller, no inline script or style, no framing: a page in the
#: guest's browser must not be able to show the buttons under its own. Images from
#: blob: too: a screenshot needs the token, so the page fetches it and shows it from
#: memory (an object URL) rather than by a link.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def dashboard_blueprint() -> Blueprint:
    """``/ui/`` and its two files; the trigger and outcome words come from the vocabulary,
    so the history's filters list what the controller records."""
    bp = Blueprint("dashboard", __name__, template_folder="static/ui")

    @bp.get(f"{UI_PREFIX}/")
    def page() -> Response:
        html = render_template("index.html", api=API_PREFIX, triggers=TRIGGERS, outcomes=OUTCOMES)
        response = Response(html, content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @bp.get(f"{UI_PREFIX}/<name>")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            abort(404)
        # no-cache: an upgraded controller's page never runs last version's script.
        response = send_from_directory(ASSETS_DIR, name, max_age=0)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return bp

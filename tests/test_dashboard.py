"""The staff's dashboard at /ui/: its files and headers, then the page itself in a real
headless Chromium (Debian's, driven by playwright-python) against controllers on real VMs.

The browser is started with a fresh profile and no network services of its own; every
request it makes is logged and must go to the controller on 127.0.0.1. Screenshots of
the desktop and the phone layout are kept as PNGs in ARTEFACTS/dashboard (ARTEFACTS: the
variable VMCTL_TEST_ARTEFACTS, else vmctl-test-artefacts in the temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fake_virsh import FakeRunner
from libvirt_env import free_port, virsh, wait_until

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.dashboard import ASSETS
from vmcontroller.monitor import Monitor
from vmcontroller.security import SecuritySettings
from vmcontroller.store import Store
from vmcontroller.vm import Domain
from vmcontroller.vocab import OUTCOMES, SUCCEEDED, TRIGGERS, VM_CRASHED, VM_STOPPED

ARTEFACTS = (
    Path(
        os.environ.get("VMCTL_TEST_ARTEFACTS", Path(tempfile.gettempdir()) / "vmctl-test-artefacts")
    )
    / "dashboard"
)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STAFF = "staff-token-0123456789abcdef"
GUEST = "guest-token-0123456789abcdef"
QUIET = {"heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 60}
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


# ------------------------------------------------------------------ the files, over Flask


@pytest.fixture
def make_client():
    monitors: list[Monitor] = []

    def make(**security: Any):
        runner = FakeRunner()
        config = build_config({"vm_name": runner.domain, **QUIET})
        monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        monitor.start()
        assert monitor.wait_initialised(5)
        monitors.append(monitor)
        return create_app(monitor, __version__, SecuritySettings(**security)).test_client()

    yield make
    for monitor in monitors:
        monitor.stop()


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_the_page_is_open_loads_only_its_own_files_and_may_run_nothing_inline(make_client):
    client = make_client(api_token=STAFF, guest_token=GUEST)
    page = client.get("/ui/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert rule in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # Screenshots are fetched with the token and shown through object URLs (blob:).
    assert "img-src 'self' blob:;" in csp
    assert "frame-ancestors 'none'" in csp and page.headers["X-Frame-Options"] == "DENY"
    parsed = Tags()
    parsed.feed(page.get_data(as_text=True))
    assert parsed.script_text == "", "no inline script"
    assert not [t for t, a in parsed.tags if "style" in a or any(k.startswith("on") for k in a)]
    loaded = sorted(
        a.get("src") or a.get("href") or "" for t, a in parsed.tags if t in ("script", "link")
    )
    assert loaded == sorted(ASSETS), "relative names of the package's own files"
    # The history's filters offer the words the controller records.
    options = {a["value"] for t, a in parsed.tags if t == "option"}
    assert options == {"", *TRIGGERS, *OUTCOMES}
    for name in ASSETS:
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200 and asset.headers["Cache-Control"] == "no-cache"
        assert "Content-Security-Policy" in asset.headers
    assert client.get("/ui/index.html").status_code == 404
    assert client.get("/ui/../app.py").status_code == 404
    assert client.get("/ui").status_code in (301, 308)


def test_the_guest_token_is_known_but_not_enough_outside_the_guests_endpoints(make_client):
    """The dashboard tells a guest token (403) from a wrong one (401)."""
    client = make_client(api_token=STAFF, guest_token=GUEST)
    answer = client.get("/api/v1/status", headers={"Authorization": f"Bearer {GUEST}"})
    assert answer.status_code == 403
    assert "only sends heartbeats" in answer.get_json()["detail"]
    assert client.get(f"/api/v1/vm/stop?token={GUEST}").status_code == 403
    wrong = client.get("/api/v1/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (
        client.get("/api/v1/heartbeat", headers={"Authorization": f"Bearer {GUEST}"}).status_code
        == 200
    )


# ------------------------------------------------------------------ in Chromium


class Browser:
    """One headless Chromium with a fresh profile, and the log of every request it made."""

    def __init__(self, context: Any):
        self.context = context
        self.requests: list[Any] = []
        #: Script errors and what the Content-Security-Policy blocked: none expected.
        self.errors: list[str] = []
        context.on("request", lambda request: self.requests.append(request))

    def open(self, url: str, viewport: dict[str, int] = DESKTOP) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text and self.errors.append(message.text)
            ),
        )
        page.set_viewport_size(viewport)
        page.goto(url)
        return page

    def hosts(self) -> set[str | None]:
        """Where the requests went; a blob: URL (a picture the page fetched) by its origin."""
        return {urlsplit(r.url.removeprefix("blob:")).hostname for r in self.requests}


@pytest.fixture
def browser(tmp_path) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "run scripts/setup-test-tools.sh (Debian's chromium)"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield Browser(context)
        finally:
            context.close()


def screenshot(page: Any, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def bar_width(page: Any) -> float:
    return page.evaluate("document.getElementById('hb-fill').getBoundingClientRect().width")


def visible(page: Any, selector: str) -> bool:
    return page.locator(selector).is_visible()


def natural_size(page: Any, selector: str) -> tuple[int, int] | None:
    """The picture an <img> shows, in its own pixels; None while it shows none."""
    size = page.evaluate(
        "(s) => { const i = document.querySelector(s);"
        " return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null; }",
        selector,
    )
    return tuple(size) if size else None


#: A checksum of a rectangle of the picture an <img> shows (drawn on a canvas).
PIXELS = """([selector, x, y, w, h]) => {
  const img = document.querySelector(selector);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  let sum = 0;
  for (const v of g.getImageData(x, y, w, h).data) sum = (sum * 31 + v) | 0;
  return sum;
}"""


def signed_in(page: Any) -> Any:
    page.wait_for_selector("#login", state="visible")
    page.fill("#token", STAFF)
    page.click("#login-form button")
    page.wait_for_selector("#board", state="visible")
    return page


def held(rule: Any) -> float:
    """The seconds a screen rule's line in the panel says it has held."""
    found = re.search(r"holding ([0-9.]+) s", rule.text_content() or "")
    return float(found.group(1)) if found else 0.0


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.mark.libvirt
def test_the_dashboard_shows_a_real_exhibit_and_its_stop_button_stops_it(
    libvirt, guest_build, browser, tmp_path
):
    from guest_env import GuestDomain, start_exhibit

    port = free_port()
    vm = GuestDomain("ui", guest_build.path, port, hb_timeout=2).define()
    controller = None
    try:
        controller = start_exhibit(vm, tmp_path / "state.db", 10.0, 10.0)
        page = browser.open(f"http://127.0.0.1:{port}/ui/")
        page.wait_for_selector("#board", state="visible")
        assert page.text_content("#vm-name") == vm.name
        assert page.text_content("#vm-state") == "running"
        assert "always open" in page.text_content("#schedule"), "no schedule configured"
        assert page.text_content("#notifications") == "none configured"
        wait_until(lambda: "present" in page.text_content("#snapshot"), 30, 0.1, "the snapshot")
        wait_until(lambda: "ready" in page.text_content("#snapshot-list"), 30, 0.1, "the list")
        # The bar moves by itself between heartbeats: two reads of its width differ.
        first = bar_width(page)
        wait_until(lambda: bar_width(page) != first, 10, 0.05, "the heartbeat bar to move")
        wait_until(lambda: page.locator("#history-table tbody tr[data-id]").count() > 0, 30)
        screenshot(page, "desktop")

        phone = browser.open(f"http://127.0.0.1:{port}/ui/", PHONE)
        phone.wait_for_selector("#board", state="visible")
        wait_until(lambda: "ready" in phone.text_content("#snapshot-list"), 30, 0.1, "the list")
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, "no horizontal scroll on a phone"
        screenshot(phone, "phone")
        phone.close()

        # Live: the stream is read, and the report drawn.
        wait_until(lambda: page.text_content("#live") == "live", 30, 0.1, "the stream")
        wait_until(lambda: page.locator("#plot svg").count() == 1, 30, 0.1, "the plot")
        assert page.locator("#plot rect.avail").count() >= 1, "today was monitored"

        # The VM destroyed behind the controller's back: the revert shows up in the
        # table without a reload, first started, then succeeded.
        page.evaluate("window.__samePage = true")
        virsh("destroy", "--domain", vm.name)
        revert = page.locator(
            "#history-table tbody tr", has_text=re.compile(f"({VM_STOPPED}|{VM_CRASHED})")
        ).filter(has_text="revert")
        wait_until(
            lambda: revert.count() >= 1 and SUCCEEDED in (revert.first.text_content() or ""),
            120,
            0.2,
            "the revert in the history table",
        )
        assert page.evaluate("window.__samePage === true"), "no reload"
        wait_until(lambda: vm.state() == "running", 60, 0.2, "the VM back")
        # Status events bring the rest: the VM running again, the last recovery.
        wait_until(lambda: page.text_content("#vm-state") == "running", 30, 0.1, "running")
        wait_until(lambda: VM_STOPPED in page.text_content("#last-recovery"), 30, 0.1, "recovery")
        screenshot(page, "desktop-after-revert")

        # Stop asks first; cancelled, nothing happens.
        page.click("[data-action=stop]")
        page.wait_for_selector("#confirm", state="visible")
        page.click("#confirm-cancel")
        assert vm.state() == "running"
        page.click("[data-action=stop]")
        page.click("#confirm-ok")
        wait_until(lambda: vm.state() == "shut off", 60, 0.2, "the VM to stop")
        wait_until(lambda: "stopped" in page.text_content("#notice"), 30, 0.1, "the answer")
        wait_until(lambda: "yes" in page.text_content("#staff-stop"), 30, 0.1, "staff-stop")
        assert virsh("domstate", "--domain", vm.name).strip() == "shut off"
        screenshot(page, "desktop-stopped")
        assert browser.hosts() == {"127.0.0.1"}, [r.url for r in browser.requests]
        assert browser.errors == []
    finally:
        if controller is not None:
            controller.stop()
        vm.remove()


@pytest.mark.libvirt
def test_with_tokens_the_page_asks_for_the_staff_token_and_a_guest_token_shows_nothing(
    start_controller, browser
):
    controller, _ = start_controller(api_token=STAFF, guest_token=GUEST, **QUIET)
    url = f"http://127.0.0.1:{controller.port}/ui/"
    page = browser.open(url)
    page.wait_for_selector("#login", state="visible")
    assert not visible(page, "#board")

    page.fill("#token", "not-the-token")
    page.click("#login-form button")
    wait_until(lambda: "not accepted" in page.text_content("#notice"), 30, 0.1, "a refusal")
    assert visible(page, "#login") and not visible(page, "#board")

    page.fill("#token", STAFF)
    page.click("#login-form button")
    page.wait_for_selector("#board", state="visible")
    wait_until(lambda: page.text_content("#vm-state") == "running", 30, 0.1, "the status")
    # Kept for the session: a reload does not ask again.
    page.reload()
    page.wait_for_selector("#board", state="visible")
    api_calls = [r for r in browser.requests if "/api/" in r.url]
    assert api_calls and all(STAFF not in r.url for r in browser.requests)
    assert all(r.headers.get("authorization") == f"Bearer {STAFF}" for r in api_calls[-2:])
    screenshot(page, "desktop-token")
    page.close()

    # A guest token in a fresh tab: a message, no board, no button, and only reads.
    guest = browser.context.new_page()
    guest.goto(url)
    guest.wait_for_selector("#login", state="visible")
    seen = len(browser.requests)
    guest.fill("#token", GUEST)
    guest.click("#login-form button")
    guest.wait_for_selector("#guest", state="visible")
    assert "only sends heartbeats" in guest.text_content("#guest")
    assert not visible(guest, "#board") and not visible(guest, "#login")
    assert [b for b in guest.locator("button").all() if b.is_visible()] == []
    after = browser.requests[seen:]
    assert after and all(r.method == "GET" for r in after)
    assert {urlsplit(r.url).path for r in after} <= {"/api/v1/status"}
    screenshot(guest, "desktop-guest-token")
    assert browser.hosts() == {"127.0.0.1"}
    assert re.fullmatch("running", virsh("domstate", "--domain", controller.config.vm_name).strip())


def report_days(count: int = 30) -> list[dict[str, Any]]:
    """Days as GET /api/v1/report gives them (contract of issue 14): the first unmonitored."""
    days = []
    for i in range(count):
        share = None if i == 0 else (1.0 if i % 5 else 0.75)
        days.append(
            {
                "date": f"2026-05-{i + 1:02d}",
                "healthy_seconds": 0.0 if share is None else 86400 * share,
                "unhealthy_seconds": 0.0 if share is None else 86400 * (1 - share),
                "staff_seconds": 0.0,
                "unmonitored_seconds": 86400.0 if share is None else 0.0,
                "healthy_share": share,
                "recoveries": {} if share in (None, 1.0) else {"heartbeat_timeout": 2},
                "recoveries_total": 0 if share in (None, 1.0) else 2,
                "longest_outage_seconds": 0.0 if share in (None, 1.0) else 600.0,
            }
        )
    return days


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


@pytest.mark.libvirt
def test_the_page_reads_the_stream_and_the_report_as_the_contract_says(start_controller, browser):
    """The stream's and the report's answers are given by the browser's request routing
    (as the contract of issue 14 words them): the page parses the events, keeps history
    rows by id, resumes with Last-Event-ID, and draws the report's days."""
    controller, api = start_controller(**QUIET)
    base = f"http://127.0.0.1:{controller.port}"
    # The screen watched (README, Watching the screen) but not judged now, one rule of
    # each verdict, and the heartbeats' progress stalling.
    verdict = {"kind": "frozen", "since": None, "held_seconds": 0.0, "failing": False}
    screen = {
        "interval": 2.0,
        "judged": False,
        "last_screenshot": "2026-05-30T12:00:01+00:00",
        "size": [720, 400],
        "error": "no screens to take screenshot from",
        "rules": [
            {**verdict, "rule": "moves", "holding": False, "detail": "changed"},
            {**verdict, "rule": "still", "holding": True, "held_seconds": 2.5, "detail": "2.5 s"},
            {
                **verdict,
                "rule": "black",
                "kind": "black",
                "holding": True,
                "failing": True,
                "held_seconds": 9.0,
                "detail": "dark for 9 s",
            },
        ],
    }
    progress = {
        "value": "frame 42",
        "changed_at": "2026-05-30T11:59:57+00:00",
        "seconds_unchanged": 3.0,
        "timeout": 60.0,
    }
    beat = {**api.get("/api/v1/heartbeat/status"), "progress": progress}
    status = {**api.get("/api/v1/status"), "screen": screen, "heartbeat": beat}
    row = {
        "id": 99999,
        "time": "2026-05-30T12:00:00+00:00",
        "vm": status["vm_name"],
        "trigger": "vm_crashed",
        "action": "revert",
        "reason": "the VM crashed",
        "outcome": "started",
        "duration": None,
        "error": None,
        "count": 1,
        "screenshot": None,
    }
    frozen = {
        **row,
        "id": 99998,
        "trigger": "screen",
        "reason": "screen rule 'still' (frozen)",
        "outcome": "succeeded",
        "screenshot": "/api/v1/screen/99998",
    }
    # After the reconnection: the museum closed, and the e-mail channel failing.
    closed = {
        **status,
        "schedule": {
            "state": "closed",
            "why": "outside opening hours",
            "since": "2026-05-30T18:00:00+02:00",
            "next_state": "open",
            "next_change": "2026-06-02T10:00:00+02:00",
            "enforcing": False,
            "at_opening": "revert",
            "at_closing": "stop",
        },
        "notifications": {
            "channels": {
                "email": {"last_delivery": None, "last_error": "connection refused", "queued": 1}
            },
            "queued": 1,
            "ping": None,
        },
    }
    streams: list[dict[str, str]] = []

    def stream(route: Any) -> None:
        streams.append(route.request.headers)
        if len(streams) == 1:
            body = "retry: 200\n\n" + sse("status", status) + sse("heartbeat", beat)
            body += ": keep-alive\n\n" + sse("history", frozen, 6) + sse("history", row, 7)
        else:
            body = sse("status", closed) + sse(
                "history", {**row, "outcome": "succeeded", "duration": 4.2}, 8
            )
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    days = report_days()
    report = {
        "vm": status["vm_name"],
        "since": days[0]["date"],
        "until": days[-1]["date"],
        "days": days,
        "total": {"healthy_share": 0.9875, "recoveries_total": 12, "longest_outage_seconds": 600.0},
    }
    browser.context.route(f"{base}/api/v1/events/stream", stream)
    browser.context.route(f"{base}/api/v1/report", lambda route: route.fulfill(json=report))
    pictures = {"latest": png((720, 400), (0, 0, 170)), "99998": png((720, 400), (170, 0, 0))}
    browser.context.route(
        f"{base}/api/v1/screen/*",
        lambda route: route.fulfill(
            body=pictures[route.request.url.rsplit("/", 1)[1]],
            headers={"Content-Type": "image/png", "X-Screenshot-Time": "2026-05-30T12:00:01"},
        ),
    )
    page = browser.open(f"{base}/ui/")
    page.wait_for_selector("#board", state="visible")
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    try:
        # Playwright's sync API runs route handlers only while it is called: ask the page.
        wait_until(lambda: page.evaluate("1") and len(streams) >= 2, 30, 0.1, "a reconnection")
    except AssertionError as exc:
        seen = [f"{r.method} {r.url}" for r in browser.requests]
        live = page.text_content("#live")
        raise AssertionError(f"{exc}: {len(streams)} streams, {live}; {seen}; {logged}") from None
    assert "last-event-id" not in streams[0]
    assert streams[1]["last-event-id"] == "7"
    assert all(h["authorization"] == "Bearer x" for h in streams if "authorization" in h)
    crash = page.locator("#history-table tr[data-id='99999']")
    wait_until(lambda: "succeeded" in (crash.text_content() or ""), 30, 0.1, "the row's update")
    assert crash.count() == 1, "one row per id, replaced"
    assert "4.2 s" in crash.text_content()
    # The status after the reconnection: the schedule and the notifications, both warned.
    wait_until(lambda: "closed" in page.text_content("#schedule"), 30, 0.1, "the schedule")
    assert "not watched" in page.text_content("#schedule")
    assert page.get_attribute("#schedule", "class") == "warn"
    notes = page.text_content("#notifications")
    assert "email: failing (connection refused)" in notes and "1 waiting" in notes, notes
    assert page.get_attribute("#notifications", "class") == "warn"

    wait_until(lambda: page.locator("#plot svg").count() == 1, 30, 0.1, "the plot")
    assert page.locator("#plot rect.avail").count() == 29
    assert page.locator("#plot rect.nodata").count() == 1
    assert page.locator("#plot circle.rec-dot").count() == 30
    assert "98.75% healthy" in page.text_content("#report-total")
    assert "12 recoveries" in page.text_content("#report-total")

    # The screen panel: the picture, why nothing is acted on, each rule's verdict.
    wait_until(lambda: natural_size(page, "#screen-img") == (720, 400), 30, 0.1, "the picture")
    assert visible(page, "#screen-judged") and "not judged now" in page.text_content("#screen")
    assert "no screens to take screenshot from" in page.text_content("#screen-error")
    assert "720 x 400 pixels" in page.text_content("#screen-time")
    # Read at once: each status event draws the list anew.
    lines = page.evaluate(
        """[...document.querySelectorAll("#screen-rules li")].map((li) => [li.className,
        li.querySelector(".verdict").textContent, getComputedStyle(li).borderLeftColor,
        li.textContent])"""
    )
    assert [line[:3] for line in lines] == [
        ["ok", "ok", "rgb(31, 138, 76)"],
        ["holding", "holding 2.5 s", "rgb(184, 110, 0)"],  # amber
        ["failing", "FAILING", "rgb(192, 53, 43)"],  # red
    ]
    assert "black (black)" in lines[2][3] and "dark for 9 s" in lines[2][3]
    # The heartbeat's progress, counting on between events.
    assert visible(page, "#progress") and "frame 42" in page.text_content("#progress")
    assert "(revert after 60 s)" in page.text_content("#progress")
    unchanged = re.compile(r"unchanged for ([0-9.]+) s")
    # (The routed stream ends and is read again every 200 ms, each time from 3.0 s.)
    wait_until(
        lambda: float(unchanged.search(page.text_content("#progress")).group(1)) > 3.05,
        10,
        0.1,
        "the progress's age to count on",
    )
    # A screen recovery's row opens its screenshot in an overlay.
    shot = page.locator("#history-table tr[data-id='99998'] button.shot")
    assert page.locator("#history-table button.shot").count() == 1
    shot.click()
    wait_until(lambda: natural_size(page, "#picture-img") == (720, 400), 30, 0.1, "the overlay")
    red = page.evaluate(PIXELS, ["#picture-img", 0, 0, 1, 1])
    assert red != page.evaluate(PIXELS, ["#screen-img", 0, 0, 1, 1]), "its own picture"
    screenshot(page, "desktop-screenshot-overlay")
    page.keyboard.press("Escape")
    page.wait_for_selector("#picture", state="hidden")

    page.select_option("#filter-trigger", "vm_crashed")
    shown = page.locator("#history-table tbody tr")
    assert shown.count() == 1 and shown.first.get_attribute("data-id") == "99999"
    page.select_option("#filter-trigger", "")
    page.select_option("#filter-outcome", "failed")
    assert page.locator("#history-table tbody tr[data-id]").count() == 0
    screenshot(page, "desktop-report")
    assert browser.hosts() == {"127.0.0.1"}
    assert browser.errors == []


@pytest.mark.libvirt
def test_the_screen_panel_shows_the_vms_moving_screen_and_a_recoverys_screenshot(
    libvirt, guest_build, browser, tmp_path
):
    """The test guest with a screen, behind a staff token: the panel shows the screen as
    it moves, the frozen artwork's revert gets a screenshot button in the history, and
    every picture is fetched with the token in the header, never in a URL."""
    import requests
    from guest_env import (
        SCREEN,
        SCREEN_ARTWORK,
        SCREEN_CLOCK,
        SCREEN_MODE_KERNEL_ARGS,
        SCREEN_SIZE,
        GuestDomain,
    )

    from vmcontroller.server import Controller
    from vmcontroller.vocab import SCREEN as SCREEN_TRIGGER

    port = free_port()
    vm = GuestDomain(
        "uiscreen", guest_build.path, port, devices=SCREEN, kernel_args=SCREEN_MODE_KERNEL_ARGS
    ).define()
    artwork = {"name": "artwork", "kind": "frozen", "seconds": 4, "mask": [list(SCREEN_CLOCK)]}
    controller = Controller(
        build_config(
            {
                "vm_name": vm.name,
                "api_host": "127.0.0.1",
                "api_port": port,
                "api_token": STAFF,
                "heartbeat_timeout": 5,
                "vm_startup_heartbeat_delay": 5,
                "heartbeat_check_interval": 0.5,
                "auto_revert_enabled": False,
                "state_path": str(tmp_path / "state.db"),
                "screen": {"interval": 0.5, "rules": [artwork]},
            }
        )
    )
    base = f"http://127.0.0.1:{port}"
    console: list[str] = []
    try:
        # guest_env.start_exhibit's order of work, with the staff token.
        controller.start()
        assert controller.monitor.wait_initialised(60)
        vm.start()
        wait_until(lambda: sum(b.ok for b in vm.beats()) >= 2, 120, message="heartbeats")
        for path in ("/api/v1/snapshot/create", "/api/v1/revert/enable"):
            answer = requests.post(
                base + path, headers={"Authorization": f"Bearer {STAFF}"}, timeout=60
            )
            assert answer.status_code == 200, answer.text

        page = signed_in(browser.open(f"{base}/ui/"))
        page.on("console", lambda m: m.type == "error" and console.append(m.text))
        page.wait_for_selector("#screen", state="visible")
        wait_until(lambda: natural_size(page, "#screen-img") == SCREEN_SIZE, 30, 0.1, "the screen")
        rule = page.locator("#screen-rules li[data-rule=artwork]")
        assert "artwork (frozen)" in (rule.text_content() or "")
        wait_until(lambda: not visible(page, "#screen-judged"), 30, 0.1, "judged")
        # The artwork moves: the picture's artwork region differs from one fetch to another.
        region = ["#screen-img", *SCREEN_ARTWORK]
        first = page.evaluate(PIXELS, region)
        wait_until(lambda: page.evaluate(PIXELS, region) != first, 30, 0.2, "a newer picture")
        assert "taken " in page.text_content("#screen-time")
        wait_until(lambda: rule.get_attribute("class") == "ok", 30, 0.1, "the rule ok")
        screenshot(page, "desktop-screen")

        phone = signed_in(browser.open(f"{base}/ui/", PHONE))
        phone.wait_for_selector("#screen", state="visible")
        wait_until(lambda: natural_size(phone, "#screen-img") == SCREEN_SIZE, 30, 0.1, "phone")
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, "no horizontal scroll on a phone"
        screenshot(phone, "phone-screen")
        phone.close()

        vm.screen_key("f")  # the artwork stops; the clock and the heartbeats go on
        # Frames 0.5 s apart, the artwork moving once a second: it holds for 0.5 s at
        # times while it moves, for longer only once it stops.
        wait_until(lambda: held(rule) >= 2, 15, 0.1, "the frozen artwork held")
        assert rule.get_attribute("class") == "holding"
        screenshot(page, "desktop-screen-holding")
        shot = page.locator(f"#history-table tbody tr:has-text('{SCREEN_TRIGGER}') button.shot")
        wait_until(lambda: shot.count() >= 1, 30, 0.1, "the revert's screenshot button")
        shot.first.click()
        page.wait_for_selector("#picture", state="visible")
        wait_until(lambda: natural_size(page, "#picture-img") == SCREEN_SIZE, 30, 0.1, "shown")
        assert "screen rule 'artwork' (frozen)" in page.text_content("#picture-title")
        screenshot(page, "desktop-screen-recovery")
        page.click("#picture-close")
        page.wait_for_selector("#picture", state="hidden")
        assert page.get_attribute("#picture-img", "src") is None, "its object URL let go"

        # The page asked for the latest screenshot at most every 2 s, as status events said.
        latest = [r for r in browser.requests if r.url.endswith("/api/v1/screen/latest")]
        assert len(latest) >= 2
        page_starts = sorted(r.timing["startTime"] for r in latest if r.frame.page == page)
        assert all(b - a >= 1900 for a, b in zip(page_starts, page_starts[1:])), page_starts
        pictures = [r for r in browser.requests if "/api/v1/screen/" in r.url]
        assert all(r.headers.get("authorization") == f"Bearer {STAFF}" for r in pictures)
        assert all(STAFF not in r.url for r in browser.requests), "the token in a URL"
        assert browser.hosts() == {"127.0.0.1"}
        assert browser.errors == [] and console == []
    finally:
        controller.stop()
        vm.remove()

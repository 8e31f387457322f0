"""Prometheus metrics: what /metrics says, who may read it, and a real Prometheus reading it.

Unit tests of the collector against a stub monitor and of the history listener;
then /metrics of an app over a Monitor on the fake virsh (values after real
heartbeats and a restart, the security gate, the log level); the shipped alert
rules under `promtool test rules` and the Grafana dashboard against the names
the controller exports; last, Debian's Prometheus scraping a controller that
keeps a real VM with the heartbeat guest, queried through its HTTP API.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from fake_virsh import FakeRunner
from libvirt_env import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.errors import NotInitialised
from vmcontroller.metrics import DURATION_BUCKETS, ControllerMetrics, StateCollector
from vmcontroller.monitor import Monitor
from vmcontroller.security import SecuritySettings
from vmcontroller.statewriter import HistoryChange, StateWriter
from vmcontroller.store import Store
from vmcontroller.vm import Domain
from vmcontroller.vocab import GUARD_STATES, OUTCOMES, STARTED, TRIGGERS

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "etc" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "etc" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "etc" / "grafana" / "exhibition-vm-controller.json"
STAFF = "staff-token-0123456789abcdef"
QUIET = {"heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 60}
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


class StubSource:
    """What the collector reads of a Monitor, set by hand."""

    vm_name = "eden-garden-vm"
    snapshot_name = "ready"

    def __init__(self, **status: Any):
        self.heartbeats_received = 0
        self.initialised = True
        self._status = {
            "vm_state": "running",
            "heartbeat": {"seconds_since_last": 0.25, "timeout": 30},
            "auto_revert_enabled": True,
            "stopped_by_staff": False,
            "recovery": {"guard": {"state": "ok"}},
            **status,
        }

    def status(self) -> dict[str, Any]:
        if not self.initialised:
            raise NotInitialised("VM manager not initialized")
        return self._status


def scrape_stub(source: StubSource) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(StateCollector(source, "9.9.9"))
    return generate_latest(registry).decode()


# ------------------------------------------------------------------ the collector


def test_the_collector_reads_the_monitor_at_scrape_time_with_types_and_labels():
    source = StubSource()
    source.heartbeats_received = 41
    text = scrape_stub(source)
    found = families(text)
    assert found["vmcontroller_heartbeats_received"].type == "counter"
    assert found["vmcontroller_heartbeat_age_seconds"].type == "gauge"
    assert found["vmcontroller_info"].type == "gauge"  # an info metric, in the 0.0.4 format
    values = samples(text)
    assert values[("vmcontroller_heartbeats_received_total", ())] == 41
    assert values[("vmcontroller_heartbeat_age_seconds", ())] == 0.25
    assert values[("vmcontroller_heartbeat_timeout_seconds", ())] == 30
    assert values[("vmcontroller_vm_up", ())] == 1
    assert values[("vmcontroller_libvirt_up", ())] == 1
    assert values[("vmcontroller_maintenance", ())] == 0
    assert values[("vmcontroller_stopped_by_staff", ())] == 0
    assert values[("vmcontroller_open", ())] == 1  # no schedule: always open
    info = (("snapshot_name", "ready"), ("version", "9.9.9"), ("vm_name", "eden-garden-vm"))
    assert values[("vmcontroller_info", info)] == 1
    states = {k[1][0][1]: v for k, v in values.items() if k[0] == "vmcontroller_vm_state"}
    assert states == {
        "running": 1,
        "paused": 0,
        "shut off": 0,
        "crashed": 0,
        "not found": 0,
        "unknown": 0,
    }
    guard = {k[1][0][1]: v for k, v in values.items() if k[0] == "vmcontroller_guard_state"}
    assert guard == {"ok": 1, "backoff": 0, "failed": 0} and set(guard) == set(GUARD_STATES)

    # Read again at the next scrape, not kept from the first.
    source.heartbeats_received = 42
    source._status.update(
        vm_state="in shutdown",
        auto_revert_enabled=False,
        stopped_by_staff=True,
        recovery={"guard": {"state": "failed"}},
        schedule={"state": "closed"},
    )
    values = samples(scrape_stub(source))
    assert values[("vmcontroller_heartbeats_received_total", ())] == 42
    assert values[("vmcontroller_vm_up", ())] == 0
    assert values[("vmcontroller_vm_state", (("state", "in shutdown"),))] == 1
    assert values[("vmcontroller_vm_state", (("state", "running"),))] == 0
    assert values[("vmcontroller_maintenance", ())] == 1
    assert values[("vmcontroller_stopped_by_staff", ())] == 1
    assert values[("vmcontroller_open", ())] == 0
    assert values[("vmcontroller_guard_state", (("state", "failed"),))] == 1
    assert values[("vmcontroller_guard_state", (("state", "ok"),))] == 0


def test_unknown_state_means_libvirt_did_not_answer_and_no_heartbeat_means_no_age():
    source = StubSource(vm_state="unknown", heartbeat={"seconds_since_last": None, "timeout": 5})
    values = samples(scrape_stub(source))
    assert values[("vmcontroller_libvirt_up", ())] == 0
    assert values[("vmcontroller_vm_state", (("state", "unknown"),))] == 1
    assert not [k for k in values if k[0] == "vmcontroller_heartbeat_age_seconds"]


def test_a_controller_still_starting_claims_no_state():
    source = StubSource()
    source.initialised = False
    names = {k[0] for k in samples(scrape_stub(source))}
    assert names == {"vmcontroller_info", "vmcontroller_heartbeats_received_total"}


# ------------------------------------------------------------------ events


def recoveries(metrics: ControllerMetrics) -> dict[tuple[str, str], float]:
    from prometheus_client import generate_latest

    return {
        (dict(k[1])["trigger"], dict(k[1])["outcome"]): v
        for k, v in samples(generate_latest(metrics.registry).decode()).items()
        if k[0] == "vmcontroller_recoveries_total"
    }


def test_recoveries_are_counted_by_trigger_and_outcome_and_timed_from_the_history():
    from prometheus_client import generate_latest

    metrics = ControllerMetrics(StubSource(), "9.9.9")
    before = recoveries(metrics)
    # Every trigger and outcome is there from the start, at 0.
    assert set(before) == {(t, o) for t in TRIGGERS for o in OUTCOMES if o != STARTED}
    assert set(before.values()) == {0}
    for change in [
        HistoryChange("vm", "heartbeat_timeout", "revert", STARTED, None, "silent"),
        HistoryChange("vm", "heartbeat_timeout", "revert", "succeeded", 1.5, "silent"),
        HistoryChange("vm", "vm_crashed", "revert", "failed", 400.0, "crash", "libvirt"),
        HistoryChange("vm", "guest_request", "revert", "refused", None, "asked"),
        HistoryChange("vm", "api", "stop", "succeeded", 0.2, "staff"),  # not a recovery
        HistoryChange("vm", "api", "start", "succeeded", 3.0, "staff"),
    ]:
        metrics.on_history(change)
    after = recoveries(metrics)
    changed = {k: v for k, v in after.items() if v}
    assert changed == {
        ("heartbeat_timeout", "succeeded"): 1,
        ("vm_crashed", "failed"): 1,
        ("guest_request", "refused"): 1,
        ("api", "succeeded"): 1,
    }
    values = samples(generate_latest(metrics.registry).decode())
    assert values[("vmcontroller_recovery_duration_seconds_count", ())] == 3
    assert values[("vmcontroller_recovery_duration_seconds_sum", ())] == 404.5
    buckets = {
        dict(k[1])["le"]: v
        for k, v in values.items()
        if k[0] == "vmcontroller_recovery_duration_seconds_bucket"
    }
    assert buckets["0.5"] == 0 and buckets["2.0"] == 1 and buckets["5.0"] == 2
    assert buckets["300.0"] == 2 and buckets["+Inf"] == 3
    assert DURATION_BUCKETS[0] == 0.5 and DURATION_BUCKETS[-1] == 300
    # The process' own figures ride along.
    assert ("process_cpu_seconds_total", ()) in values
    assert any(k[0] == "python_info" for k in values)


def test_every_history_change_reaches_the_listeners_and_a_failing_one_is_only_logged(caplog):
    writer = StateWriter(Store(":memory:"))
    heard: list[HistoryChange] = []

    def broken(change: HistoryChange) -> None:
        raise RuntimeError("listener bug")

    writer.add_listener(broken)
    writer.add_listener(heard.append)
    with caplog.at_level(logging.ERROR, logger="vmcontroller.statewriter"):
        event_id = writer.begin("vm", "api", "revert", "staff")
        writer.finish(event_id, "succeeded", 2.5)
        writer.record("vm", "heartbeat_timeout", "revert", "silent", "skipped")
        writer.record_coalesced("vm", "guest_request", "revert", "asked", "refused", "maint")
    assert heard == [
        HistoryChange("vm", "api", "revert", STARTED, None, "staff"),
        HistoryChange("vm", "api", "revert", "succeeded", 2.5, "staff"),
        HistoryChange("vm", "heartbeat_timeout", "revert", "skipped", None, "silent"),
        HistoryChange("vm", "guest_request", "revert", "refused", None, "asked", "maint"),
    ]
    assert len([r for r in caplog.records if r.exc_info and "listener" in r.getMessage()]) == 4
    writer.start()
    assert writer.flush(5)
    assert [e.outcome for e in writer.events(wait=5)] == ["refused", "skipped", "succeeded"]
    writer.close()


# ------------------------------------------------------------------ /metrics over a Monitor


@pytest.fixture
def make_app():
    monitors: list[Monitor] = []

    def make(**security: Any):
        runner = FakeRunner()
        config = build_config({"vm_name": runner.domain, **QUIET})
        monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        metrics = ControllerMetrics(monitor, __version__)
        monitor.add_history_listener(metrics.on_history)
        monitor.start()
        assert monitor.wait_initialised(5)
        monitors.append(monitor)
        app = create_app(monitor, __version__, SecuritySettings(**security), metrics.registry)
        return app.test_client(), monitor

    yield make
    for monitor in monitors:
        monitor.stop()


def test_metrics_follow_heartbeats_and_a_restart_through_the_api(make_app):
    client, monitor = make_app()
    for _ in range(3):
        assert client.get("/api/v1/heartbeat").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT_FORMAT
    values = samples(response.get_data(as_text=True))
    assert values[("vmcontroller_heartbeats_received_total", ())] == 3
    assert 0 <= values[("vmcontroller_heartbeat_age_seconds", ())] < 60
    assert values[("vmcontroller_vm_up", ())] == 1
    assert values[("vmcontroller_libvirt_up", ())] == 1
    assert (
        values[("vmcontroller_recoveries_total", (("outcome", "succeeded"), ("trigger", "api")))]
        == 0
    )

    # The controller's own clean start from the snapshot (the fake VM was running,
    # with no record of being healthy) was heard too.
    startup = (("outcome", "succeeded"), ("trigger", "startup"))
    assert values[("vmcontroller_recoveries_total", startup)] == 1
    assert values[("vmcontroller_recovery_duration_seconds_count", ())] == 1

    assert client.post("/api/v1/vm/restart").status_code == 200
    assert client.post("/api/v1/revert/disable").status_code == 200
    values = samples(client.get("/metrics").get_data(as_text=True))
    assert (
        values[("vmcontroller_recoveries_total", (("outcome", "succeeded"), ("trigger", "api")))]
        == 1
    )
    assert values[("vmcontroller_recovery_duration_seconds_count", ())] == 2
    assert values[("vmcontroller_maintenance", ())] == 1
    assert monitor.heartbeats_received == 3


def test_metrics_are_guarded_like_status(make_app, caplog):
    client, _ = make_app(api_token=STAFF)
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.json["detail"].startswith("Unauthorized: this endpoint needs the staff token")
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="exhibition-vm-controller"'
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {STAFF}"})
    assert ok.status_code == 200 and "vmcontroller_vm_up" in ok.get_data(as_text=True)
    assert client.get(f"/metrics?token={STAFF}").status_code == 200
    # The Host rule applies here as everywhere (DNS rebinding).
    foreign = client.get(
        "/metrics", headers={"Authorization": f"Bearer {STAFF}", "Host": "evil.example"}
    )
    assert foreign.status_code == 400
    # A successful scrape is routine: DEBUG, like status; a refusal is INFO.
    with caplog.at_level(logging.DEBUG, logger="vmcontroller.requests"):
        client.get("/metrics", headers={"Authorization": f"Bearer {STAFF}"})
        client.get("/metrics")
    levels = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "vmcontroller.requests"
    ]
    assert [level for level, _ in levels] == [logging.DEBUG, logging.INFO], levels


def test_without_a_token_metrics_are_open_as_status_is(make_app):
    client, _ = make_app()
    assert client.get("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405


# ------------------------------------------------------------------ rules and dashboard


def exported_names(make_app) -> set[str]:
    """Every sample name /metrics gives once a heartbeat came and something was recovered."""
    client, _ = make_app()
    client.get("/api/v1/heartbeat")
    client.post("/api/v1/vm/restart")
    return {k[0] for k in samples(client.get("/metrics").get_data(as_text=True))}


def names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: ours and Prometheus' own ``up``."""
    return set(re.findall(r"\b(vmcontroller_[a-z_]+|up)\b(?!\s*\()", expr))


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: run scripts/setup-test-tools.sh (Debian's prometheus)"
    return found


def test_the_alert_rules_pass_their_promtool_tests_and_read_only_exported_metrics(make_app):
    tool = promtool()
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    import yaml

    exported = exported_names(make_app) | {"up"}
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"ArtworkDown", "ArtworkRecoveryLoop", "ControllerDown"}
    for rule in rules:
        assert names_in(rule["expr"]) and names_in(rule["expr"]) <= exported, rule


def test_the_grafana_dashboard_is_one_row_per_artwork_reading_only_exported_metrics(make_app):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "instance" in variables["instance"]["definition"]
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["repeat"] for r in rows] == ["instance"]
    exported = exported_names(make_app) | {"up"}
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 8
    for expr in queries:
        assert names_in(expr) and names_in(expr) <= exported, expr
        assert "$instance" in expr, expr  # every panel follows its row's artwork
    assert names_in(variables["instance"]["definition"]) <= exported


# ------------------------------------------------------------------ a real Prometheus


@pytest.mark.libvirt
def test_a_real_prometheus_scrapes_a_controller_on_a_real_vm(libvirt, guest_build, tmp_path):
    from guest_env import GuestDomain, start_exhibit

    binary = Path("/usr/bin/prometheus")
    assert binary.exists(), "run scripts/setup-test-tools.sh (Debian's prometheus)"
    port = free_port()
    vm = GuestDomain("prom", guest_build.path, port, hb_timeout=2).define()
    controller = None
    prometheus = None
    prom_port = free_port()
    log_path = tmp_path / "prometheus.log"
    try:
        controller = start_exhibit(vm, tmp_path / "state.db", 10.0, 10.0)
        target = f"127.0.0.1:{port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: exhibition-vm-controller\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        with log_path.open("w") as log:
            prometheus = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        api = f"http://127.0.0.1:{prom_port}/api/v1/query"
        found: list[dict] = []

        def heartbeat_age_seen() -> bool:
            assert prometheus is not None and prometheus.poll() is None, log_path.read_text()
            try:
                answer = requests.get(
                    api,
                    params={"query": f'vmcontroller_heartbeat_age_seconds{{instance="{target}"}}'},
                    timeout=5,
                ).json()
            except requests.RequestException:
                return False
            found[:] = answer.get("data", {}).get("result", [])
            return bool(found)

        wait_until(heartbeat_age_seen, 90, 0.5, "Prometheus to return the heartbeat age")
        (series,) = found
        assert series["metric"]["job"] == "exhibition-vm-controller"
        assert 0 <= float(series["value"][1]) < 10  # the guest heartbeats every second
        up = requests.get(api, params={"query": f'up{{instance="{target}"}}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(15)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait(5)
        if controller is not None:
            controller.stop()
        vm.remove()

"""The controller's state and history in Prometheus' terms, for a fleet of artworks.

A museum with a dozen artworks on several PCs wants one place that says all is
well and alerts when it is not: Prometheus scrapes ``/metrics`` of each
controller. Names start with ``vmcontroller_``, the name of the package and of
its command, so a metric found in a dashboard leads to the program that
exports it (``exhibition_`` would say less: a museum runs other exhibition
software).

Two kinds of figures, two ways in. What the monitor knows now (VM state,
heartbeat age, guard, flags) is read at scrape time by ``StateCollector``:
nothing is kept up to date between scrapes, and the heartbeat path pays one
integer increment (``Monitor.heartbeats_received``), no lock of
prometheus_client's. What happened (recoveries, their durations) is counted
as it happens, from the history's listener (``StateWriter.add_listener``).

Each controller has its own ``CollectorRegistry``, never the module-level
default one: two controllers in one process (tests) must not share figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .decide import UNKNOWN
from .errors import NotInitialised
from .statewriter import HistoryChange
from .vm import CRASHED, NOT_FOUND, PAUSED, RUNNING, SHUT_OFF
from .vocab import (
    GUARD_STATES,
    OUTCOMES,
    RECOVERY_ACTIONS,
    SCHEDULE_OPEN_STATE,
    STARTED,
    TRIGGERS,
)

PREFIX = "vmcontroller"
#: The VM's states always exported (0 or 1), so that a query sees each one from the start;
#: a state libvirt reports beyond these ("in shutdown", "pmsuspended") is added when seen.
VM_STATES = (RUNNING, PAUSED, SHUT_OFF, CRASHED, NOT_FOUND, UNKNOWN)
#: From half a second (a revert of a small guest) to five minutes (a large disk on a slow one).
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0)


class MetricsSource(Protocol):
    """What the collector reads of the monitor at scrape time."""

    @property
    def vm_name(self) -> str: ...

    @property
    def snapshot_name(self) -> str: ...

    @property
    def heartbeats_received(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def _flag(suffix: str, documentation: str, value: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(_name(suffix), documentation, value=1.0 if value else 0.0)


def _enum(suffix: str, documentation: str, known: Iterable[str], current: str) -> Metric:
    """One series per state, 1 for the current one: ``max by (state)`` and alerts on a
    state read plainly, and a state that was never current is there as 0."""
    family = GaugeMetricFamily(_name(suffix), documentation, labels=["state"])
    states = list(known)
    if current not in states:
        states.append(current)
    for state in states:
        family.add_metric([state], 1.0 if state == current else 0.0)
    return family


class StateCollector(Collector):
    """Reads the monitor once per scrape (one status() call, one lock taken briefly)."""

    def __init__(self, source: MetricsSource, version: str):
        self._source = source
        self._version = version

    def collect(self) -> Iterator[Metric]:
        source = self._source
        yield InfoMetricFamily(
            PREFIX,
            "The controller's version, the VM it keeps and its reference snapshot.",
            value={
                "version": self._version,
                "vm_name": source.vm_name,
                "snapshot_name": source.snapshot_name,
            },
        )
        yield CounterMetricFamily(
            _name("heartbeats_received"),
            "Heartbeats received from the guest since the controller started.",
            value=source.heartbeats_received,
        )
        try:
            status = source.status()
        except NotInitialised:
            return  # still starting: the state is not known yet, so none is claimed
        heartbeat = status["heartbeat"]
        if heartbeat["seconds_since_last"] is not None:
            yield GaugeMetricFamily(
                _name("heartbeat_age_seconds"),
                "Seconds since the last heartbeat from the guest (absent until the first).",
                value=heartbeat["seconds_since_last"],
            )
        yield GaugeMetricFamily(
            _name("heartbeat_timeout_seconds"),
            "Silence after which the controller reverts the VM (heartbeat_timeout).",
            value=heartbeat["timeout"],
        )
        state = status["vm_state"]
        yield _flag("vm_up", "1 if the VM is running.", state == RUNNING)
        yield _enum(
            "vm_state",
            "The VM's state as libvirt reports it: 1 for the current one.",
            VM_STATES,
            state,
        )
        yield _flag(
            "libvirt_up",
            "1 if libvirt answered the controller's last look at the VM.",
            state != UNKNOWN,
        )
        yield _enum(
            "guard_state",
            "The restart-loop guard's state: 1 for the current one.",
            GUARD_STATES,
            status["recovery"]["guard"]["state"],
        )
        yield _flag(
            "maintenance",
            "1 in maintenance mode (automatic revert disabled).",
            not status["auto_revert_enabled"],
        )
        yield _flag(
            "stopped_by_staff",
            "1 if staff stopped the VM; it stays stopped until started again.",
            status["stopped_by_staff"],
        )
        plan = status.get("schedule")
        yield _flag(
            "open",
            "1 while the museum is open by its schedule (always 1 without one).",
            plan is None or plan["state"] == SCHEDULE_OPEN_STATE,
        )


class ControllerMetrics:
    """One controller's registry: its state collector, the counters fed by its history,
    and the process' own figures (CPU, memory, open files, Python version)."""

    def __init__(self, source: MetricsSource, version: str):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(StateCollector(source, version))
        self._recoveries = Counter(
            _name("recoveries"),
            "Reverts and starts of the VM, by trigger and outcome (refusals and skips "
            "included; a guest's repeated refused request counts each time).",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            _name("recovery_duration_seconds"),
            "How long a revert or start of the VM took, successful or failed.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        for trigger in TRIGGERS:  # every series from the start, so rate() sees the first one
            for outcome in OUTCOMES:
                if outcome != STARTED:
                    self._recoveries.labels(trigger, outcome)

    def on_history(self, change: HistoryChange) -> None:
        """A history listener: count what recovery did, time how long it took."""
        if change.action not in RECOVERY_ACTIONS or change.outcome == STARTED:
            return
        self._recoveries.labels(change.trigger, change.outcome).inc()
        if change.duration is not None:
            self._duration.observe(change.duration)

"""Pure helpers of the benchmark: statistics, the summary, targets, comparison, the table.

Nothing here starts a process or touches libvirt, so tests/test_bench.py runs it in
milliseconds. A *figure* is a dict: ``section`` (a-j), ``label``, ``unit``, ``method``
(how it was measured, in words) and either sample statistics (``n``, ``median``,
``p95``, ``p99``, ...) or a single ``value``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The limit row: the controller against a bare Flask app on waitress, per endpoint and
#: number of keep-alive connections, in the same run (benchmark section e).
LIMIT_ENDPOINTS = ("heartbeat", "status")
LIMIT_LEVELS = (1, 8, 32)
#: The share of the bare app's figures the controller is to reach.
LIMIT_SHARE = 0.9


def limit_key(endpoint: str, measure: str, clients: int) -> str:
    """Summary key (and figure name) of one ratio controller / bare app: measure is
    ``rps`` (requests per second, higher is better) or ``p99`` (latency, lower is better)."""
    return f"{endpoint}_{measure}_ratio_c{clients}"


LIMIT_KEYS = tuple(
    limit_key(e, m, n) for e in LIMIT_ENDPOINTS for n in LIMIT_LEVELS for m in ("rps", "p99")
)

#: The flat ``summary`` object of the JSON: exactly these keys, in these units.
SUMMARY_KEYS = (
    "status_p50_ms",
    "heartbeat_p50_ms",
    "detect_deadline_ms",
    "detect_destroy_ms",
    "detect_suspend_ms",
    "recovery_event_ratio",
    "heartbeat_p99_mixed_ms",
    "heartbeat_p99_ms",
    "heartbeat_p99_streams_ms",
    "heartbeat_rps_c32",
    *LIMIT_KEYS,
    "concurrent_restart_reverts",
    "idle_cpu_percent",
    "virsh_per_minute",
    "rss_mib",
    "event_stream_rss_mib",
    "log_bytes_per_day",
    "screen_cpu_share_pct",
    "screen_judge_1024_ms",
    "screen_cpu_share_1024_pct",
    "screen_detect_s",
)

#: Where each summary number comes from: (figure name, field of that figure).
SUMMARY_SOURCES: dict[str, tuple[str, str]] = {
    "status_p50_ms": ("api_status", "median"),
    "heartbeat_p50_ms": ("api_heartbeat", "median"),
    "detect_deadline_ms": ("detect_deadline", "median"),
    "detect_destroy_ms": ("detect_destroy", "median"),
    "detect_suspend_ms": ("detect_suspend", "median"),
    "recovery_event_ratio": ("recovery_event_ratio", "value"),
    "heartbeat_p99_mixed_ms": ("mixed_heartbeat", "p99"),
    "heartbeat_p99_ms": ("streams_none_heartbeat", "p99"),
    "heartbeat_p99_streams_ms": ("streams_idle_heartbeat", "p99"),
    "heartbeat_rps_c32": ("throughput_c32", "value"),
    **{key: (key, "value") for key in LIMIT_KEYS},
    "concurrent_restart_reverts": ("concurrent_reverts", "max"),
    "idle_cpu_percent": ("idle_cpu", "value"),
    "virsh_per_minute": ("idle_virsh", "value"),
    "rss_mib": ("rss", "value"),
    "event_stream_rss_mib": ("event_stream_rss", "value"),
    "log_bytes_per_day": ("idle_log", "value"),
    "screen_cpu_share_pct": ("screen_cpu_share", "value"),
    "screen_judge_1024_ms": ("screen_judge_1024", "median"),
    "screen_cpu_share_1024_pct": ("screen_cpu_share_1024", "value"),
    "screen_detect_s": ("screen_detect", "max"),
}


def _limit_label(key: str) -> str:
    endpoint, measure, _, level = key.split("_")
    what = "req/s" if measure == "rps" else "p99"
    plural = "" if level[1:] == "1" else "s"
    return f"{endpoint} {what}, {level[1:]} connection{plural}, / bare app"


#: How each summary number reads in the README's table.
SUMMARY_LABELS = {
    "status_p50_ms": "``GET /api/v1/status``, p50",
    "heartbeat_p50_ms": "``GET /api/v1/heartbeat``, p50",
    "detect_deadline_ms": "heartbeat deadline to revert start",
    "detect_destroy_ms": "``virsh destroy`` to revert start",
    "detect_suspend_ms": "pause + timeout to revert start",
    "recovery_event_ratio": "failure to running / raw revert to running",
    "heartbeat_p99_mixed_ms": "heartbeat p99, mixed load",
    "heartbeat_p99_ms": "heartbeat p99, 50 Hz, no event stream",
    "heartbeat_p99_streams_ms": "heartbeat p99, 50 Hz, 200 event streams that never read",
    "heartbeat_rps_c32": "heartbeats per second, 32 clients",
    **{key: _limit_label(key) for key in LIMIT_KEYS},
    "concurrent_restart_reverts": "reverts for 20 simultaneous restarts",
    "idle_cpu_percent": "idle CPU (share of one core)",
    "virsh_per_minute": "virsh processes per minute, idle",
    "rss_mib": "resident memory (VmRSS)",
    "event_stream_rss_mib": "``virsh event --loop`` child, VmRSS",
    "log_bytes_per_day": "INFO log per day of heartbeats",
    "screen_cpu_share_pct": "screen watching, 720x400 every 2 s (share of one core)",
    "screen_judge_1024_ms": "decode + judge a 1024x768 frame",
    "screen_cpu_share_1024_pct": "screen watching, 1024x768 every 2 s (computed)",
    "screen_detect_s": "frozen screen to revert start, slowest",
}

#: Summary keys for which a larger number is better (all others: smaller is better).
HIGHER_IS_BETTER = frozenset({"heartbeat_rps_c32", *(key for key in LIMIT_KEYS if "_rps_" in key)})

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """What one summary number must reach: at most ``limit`` (smaller is better) or, with
    ``at_least``, at least ``limit`` (larger is better). The limit itself is met."""

    key: str
    text: str
    limit: float
    at_least: bool = False

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.limit if self.at_least else value <= self.limit

    def bound(self, unit: str) -> str:
        return f"{'>=' if self.at_least else '<='} {fmt(self.limit, unit)}"


def _limit_targets() -> tuple[Target, ...]:
    found = []
    for key in LIMIT_KEYS:
        endpoint, measure, _, level = key.split("_")
        n = f"{level[1:]} connection" + ("" if level == "c1" else "s")
        if measure == "rps":
            found.append(
                Target(
                    key,
                    f"{endpoint} req/s at {n} >= {LIMIT_SHARE:g}x the bare app",
                    LIMIT_SHARE,
                    at_least=True,
                )
            )
        else:
            found.append(
                Target(
                    key,
                    f"{endpoint} p99 at {n} <= 1/{LIMIT_SHARE:g}x the bare app's",
                    1 / LIMIT_SHARE,
                )
            )
    return tuple(found)


TARGETS: tuple[Target, ...] = (
    Target("status_p50_ms", "GET /api/v1/status p50 <= 2 ms", 2.0),
    Target("detect_deadline_ms", "heartbeat deadline to revert start <= 20 ms (median)", 20.0),
    Target("detect_destroy_ms", "virsh destroy event to revert start <= 100 ms (median)", 100.0),
    Target(
        "recovery_event_ratio",
        "failure -> VM running <= 1.05x raw virsh snapshot-revert "
        "-> running (worst trigger, median of pairs)",
        1.05,
    ),
    Target("heartbeat_p99_mixed_ms", "heartbeat p99 under the mixed load <= 20 ms", 20.0),
    Target("heartbeat_p99_streams_ms", "heartbeat p99 with 200 idle event streams <= 20 ms", 20.0),
    *_limit_targets(),
    Target("concurrent_restart_reverts", "20 simultaneous restarts cause <= 2 reverts", 2.0),
    Target("idle_cpu_percent", "idle CPU <= 0.3 % of one core", 0.3),
    Target("virsh_per_minute", "virsh processes at steady state <= 1 per minute", 1.0),
    Target("rss_mib", "controller resident memory <= 40 MiB", 40.0),
    Target("log_bytes_per_day", "INFO log <= 1 MiB per day of heartbeats", float(MIB)),
    Target(
        "screen_cpu_share_1024_pct",
        "screen watching at 1024x768, one screenshot every 2 s <= 1 % of one core",
        1.0,
    ),
    Target(
        "screen_detect_s",
        "frozen screen -> revert start <= frozen seconds + interval, 12 s (slowest)",
        12.0,
    ),
)

UNITS = {
    "status_p50_ms": "ms",
    "heartbeat_p50_ms": "ms",
    "detect_deadline_ms": "ms",
    "detect_destroy_ms": "ms",
    "detect_suspend_ms": "ms",
    "recovery_event_ratio": "x",
    "heartbeat_p99_mixed_ms": "ms",
    "heartbeat_p99_ms": "ms",
    "heartbeat_p99_streams_ms": "ms",
    "heartbeat_rps_c32": "req/s",
    **{key: "x" for key in LIMIT_KEYS},
    "concurrent_restart_reverts": "reverts",
    "idle_cpu_percent": "%",
    "virsh_per_minute": "/min",
    "rss_mib": "MiB",
    "event_stream_rss_mib": "MiB",
    "log_bytes_per_day": "B",
    "screen_cpu_share_pct": "%",
    "screen_judge_1024_ms": "ms",
    "screen_cpu_share_1024_pct": "%",
    "screen_detect_s": "s",
}


# ---------------------------------------------------------------- statistics


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-th percentile (0-100), interpolated linearly between the closest ranks
    (numpy's default method); None for no values."""
    data = sorted(values)
    if not data:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    rank = (len(data) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, median, p95, p99, min, max and mean of the samples (None for each when empty)."""
    data = list(values)
    if not data:
        return {
            "n": 0,
            "median": None,
            "p95": None,
            "p99": None,
            "min": None,
            "max": None,
            "mean": None,
        }
    return {
        "n": len(data),
        "median": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "min": min(data),
        "max": max(data),
        "mean": sum(data) / len(data),
    }


def sampled(
    section: str,
    label: str,
    unit: str,
    samples: Sequence[float],
    method: str,
    keep_samples: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A figure made of samples: their statistics, the method and (optionally) the samples."""
    fig: dict[str, Any] = {
        "section": section,
        "label": label,
        "unit": unit,
        **describe(samples),
        "method": method,
        **extra,
    }
    if keep_samples:
        fig["samples"] = [round(s, 4) for s in samples]
    return fig


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """The middle half (p25, p75) and the extremes of the samples: how far one pair may
    stray from the median."""
    data = list(values)
    return {
        "p25": percentile(data, 25),
        "p75": percentile(data, 75),
        "min": min(data) if data else None,
        "max": max(data) if data else None,
    }


def scalar(
    section: str, label: str, unit: str, value: float | None, method: str, **extra: Any
) -> dict[str, Any]:
    """A figure that is one number (a ratio, a rate, a count)."""
    return {
        "section": section,
        "label": label,
        "unit": unit,
        "value": value,
        "method": method,
        **extra,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# ---------------------------------------------------------------- summary and targets


def build_summary(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The flat summary: exactly SUMMARY_KEYS; None where the figure is missing."""
    summary: dict[str, float | None] = {}
    for key in SUMMARY_KEYS:
        name, field = SUMMARY_SOURCES[key]
        value = figures.get(name, {}).get(field)
        summary[key] = None if value is None else round(float(value), 4)
    return summary


def evaluate_targets(summary: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each target with the measured value and met (True), not met (False) or unknown (None)."""
    rows = []
    for target in TARGETS:
        value = summary.get(target.key)
        rows.append(
            {
                "key": target.key,
                "target": target.text,
                "limit": target.limit,
                "at_least": target.at_least,
                "value": value,
                "met": target.met(value),
            }
        )
    return rows


def compare(
    current: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    tolerance: float = 0.05,
) -> list[dict[str, Any]]:
    """current / baseline for each summary key, and whether that is better or worse
    (beyond ``tolerance``) given the direction in which the figure improves."""
    rows = []
    for key in SUMMARY_KEYS:
        now, then = current.get(key), baseline.get(key)
        r = ratio(now, then)
        if r is None:
            verdict = (
                "n/a"
                if now is None or then is None
                else (
                    "same"
                    if now == then
                    else ("worse" if (now > then) != (key in HIGHER_IS_BETTER) else "better")
                )
            )
        elif abs(r - 1) <= tolerance:
            verdict = "same"
        else:
            verdict = "better" if (r > 1) == (key in HIGHER_IS_BETTER) else "worse"
        rows.append({"key": key, "baseline": then, "current": now, "ratio": r, "verdict": verdict})
    return rows


# ---------------------------------------------------------------- text


def fmt(value: float | None, unit: str) -> str:
    """A number with its unit, at a precision fit for reading."""
    if value is None:
        return "-"
    if unit == "ms":
        return (
            f"{value:.3f} ms"
            if abs(value) < 1
            else (f"{value:.2f} ms" if abs(value) < 10 else f"{value:.1f} ms")
        )
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "%":
        return f"{value:.3f} %"
    if unit == "B":
        if abs(value) >= MIB:
            return f"{value / MIB:.2f} MiB"
        if abs(value) >= 1024:
            return f"{value / 1024:.1f} KiB"
        return f"{value:.0f} B"
    if unit in ("MB", "MiB"):  # MB in baselines from before MiB
        return f"{value:.1f} {unit}"
    if unit in ("req/s", "/min", "s"):
        return f"{value:.1f} {unit}" if unit != "/min" else f"{value:.2f}/min"
    if unit == "reverts":
        return f"{value:.0f} revert" + ("" if value == 1 else "s")
    if float(value).is_integer():
        return f"{value:.0f} {unit}".strip()
    return f"{value:.2f} {unit}".strip()


SECTIONS = {
    "a": "a. raw libvirt floor (virsh alone, same run)",
    "b": "b. detection: failure to the start of the revert",
    "c": "c. recovery: the failure to the VM running again, against libvirt's own revert",
    "d": "d. API latency, sequential",
    "e": "e. throughput: the controller against the limit row (a bare Flask app on waitress)",
    "f": "f. mixed load",
    "g": "g. 20 simultaneous POST /api/v1/vm/restart",
    "h": "h. idle cost (one VM, 1 Hz heartbeat)",
    "i": "i. heartbeats with event streams open that never read",
    "j": "j. screen liveness (the test guest's 720x400 screen, one screenshot every 2 s)",
}

_TARGET_OF_FIGURE = {SUMMARY_SOURCES[t.key][0]: t for t in TARGETS}


def _figure_row(name: str, fig: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    unit = fig.get("unit", "")
    if "value" in fig:
        cells = [fig["label"], "", fmt(fig["value"], unit), "", ""]
    else:
        cells = [
            fig["label"],
            str(fig.get("n", "")),
            fmt(fig.get("median"), unit),
            fmt(fig.get("p95"), unit),
            fmt(fig.get("p99"), unit),
        ]
    target = ""
    if name in _TARGET_OF_FIGURE:
        goal = _TARGET_OF_FIGURE[name]
        met = goal.met(summary.get(goal.key))
        verdict = "?" if met is None else ("met" if met else "NOT MET")
        target = f"{goal.bound(UNITS[goal.key])}: {verdict}"
    cells.append(target)
    return cells


def _grid(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]


def format_table(result: Mapping[str, Any], methods: bool = True) -> str:
    """The printed report: machine, then each section's figures with their targets and,
    under each figure, how it was measured."""
    figures: Mapping[str, Mapping[str, Any]] = result.get("figures", {})
    summary = result.get("summary", {})
    out: list[str] = []
    machine = result.get("machine", {})
    load = result.get("load_average", {})
    out.append(
        f"Exhibition VM Controller benchmark ({result.get('mode', '?')} mode), "
        f"{result.get('started', '?')}, took {result.get('duration_s', 0):.0f} s"
    )
    if machine:
        out.append(
            f"machine: {machine.get('cores')} cores, {machine.get('cpu_model')}, "
            f"libvirt {machine.get('libvirt')}, QEMU {machine.get('qemu')}, "
            f"Linux {machine.get('kernel')}, Python {machine.get('python')}"
        )
    if load:
        out.append(
            "load average (1/5/15 min): "
            + "; ".join(f"{k} {' '.join(f'{x:.2f}' for x in v)}" for k, v in load.items())
        )
    header = ["figure", "n", "median/value", "p95", "p99", "target"]
    for section, title in SECTIONS.items():
        names = [n for n, f in figures.items() if f.get("section") == section]
        if not names:
            continue
        out.append("")
        out.append(title)
        rows = [_figure_row(n, figures[n], summary) for n in names]
        lines = _grid(rows, header)
        out.extend("  " + ln for ln in lines[:2])
        # Figures measured the same way in a row share one "how:" line, printed after them.
        for i, (name, ln) in enumerate(zip(names, lines[2:])):
            out.append("  " + ln)
            method = figures[name].get("method")
            following = figures[names[i + 1]].get("method") if i + 1 < len(names) else None
            if methods and method and method != following:
                out.append("      how: " + method)
    targets = evaluate_targets(summary)
    missed = [t for t in targets if t["met"] is False]
    out.append("")
    out.append(
        f"targets: {sum(1 for t in targets if t['met'])} of {len(targets)} met"
        + (
            ": not met: "
            + "; ".join(
                f"{t['target']} (measured {fmt(t['value'], UNITS[t['key']])})" for t in missed
            )
            if missed
            else ""
        )
    )
    return "\n".join(out)


def format_compare(rows: Sequence[Mapping[str, Any]], baseline_label: str) -> str:
    lines = [f"compared with {baseline_label} (ratio = this run / baseline)"]
    table = [
        [
            r["key"],
            fmt(r["baseline"], UNITS[r["key"]]),
            fmt(r["current"], UNITS[r["key"]]),
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
            r["verdict"],
        ]
        for r in rows
    ]
    header = ["summary key", "baseline", "this run", "ratio", ""]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for cells in [header, ["-" * w for w in widths], *table]:
        lines.append(
            "  "
            + "  ".join(
                c.rjust(w) if 0 < i < 4 else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()
        )
    return "\n".join(lines)


def format_rst(result: Mapping[str, Any]) -> str:
    """The summary as the README's reStructuredText table, with the machine it ran on."""
    goals = {t.key: t for t in TARGETS}
    rows = []
    for key in SUMMARY_KEYS:
        value = result["summary"].get(key)
        goal = goals.get(key)
        target = "" if goal is None else goal.bound(UNITS[key])
        met = "" if goal is None or value is None else ("met" if goal.met(value) else "**not met**")
        rows.append([SUMMARY_LABELS[key], fmt(value, UNITS[key]), target, met])
    header = ["figure", "measured", "target", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    machine = result.get("machine", {})
    load = result.get("load_average", {})
    started = str(result.get("started", "?"))[:10]
    intro = (
        f"{result.get('mode', '?').capitalize()} run of {started}, "
        f"{result.get('duration_s', 0) / 60:.1f} minutes, on {machine.get('cores')} cores "
        f"({machine.get('cpu_model')}), libvirt {machine.get('libvirt')}, "
        f"QEMU {machine.get('qemu')} (``type='qemu'``, TCG), libvirtd under "
        f"{machine.get('libvirtd_under', '?')}, Python {machine.get('python')}; load "
        f"average {' / '.join(f'{x:.2f}' for x in load.get('start', []))} at the start "
        f"(a machine shared with other test runs):"
    )
    return "\n".join(
        [textwrap.fill(intro, 78), "", rule, line(header), rule, *[line(r) for r in rows], rule]
    )

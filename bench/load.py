"""HTTP load for the benchmark: keep-alive clients, a paced client, wrk, and a bounded
Python load generator for machines without wrk.

Run as ``python -m bench.load --port P --path /api/v1/heartbeat --clients 8 --duration 5``
it is the fallback load generator: it prints one JSON object and exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"


class Client:
    """One keep-alive HTTP/1.1 connection to the controller; reconnects after an error."""

    def __init__(self, port: int, timeout: float = 60):
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def connect(self) -> None:
        self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        self._conn.connect()

    def request(self, method: str, path: str) -> tuple[int, float, bytes]:
        """(status or 0 on a connection error, seconds from sending to the last byte, body)."""
        started = time.perf_counter()
        try:
            if self._conn is None:
                self.connect()
            assert self._conn is not None
            self._conn.request(method, path)
            response = self._conn.getresponse()
            body = response.read()
            took = time.perf_counter() - started
            if response.will_close:
                self.close()
            return response.status, took, body
        except (OSError, http.client.HTTPException):
            took = time.perf_counter() - started
            self.close()
            return 0, took, b""

    def json(self, method: str, path: str) -> tuple[int, Any]:
        status, _, body = self.request(method, path)
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sequential(
    port: int, method: str, path: str, count: int, warmup: int = 50
) -> tuple[list[float], int]:
    """Latencies in ms of ``count`` back-to-back requests on one connection, and errors."""
    client = Client(port)
    for _ in range(warmup):
        client.request(method, path)
    latencies, errors = [], 0
    for _ in range(count):
        status, took, _ = client.request(method, path)
        latencies.append(took * 1000)
        errors += status != 200
    client.close()
    return latencies, errors


class Paced(threading.Thread):
    """Sends one request every 1/rate s (never a burst to catch up) until stopped; records
    each request's latency (send to answer) and its lateness against the schedule."""

    def __init__(
        self,
        port: int,
        path: str,
        rate: float,
        method: str = "GET",
        on_answer: Callable[[int, bytes], None] | None = None,
    ):
        super().__init__(name=f"paced {path}", daemon=True)
        self.client = Client(port, timeout=30)
        self.path = path
        self.method = method
        self.interval = 1.0 / rate
        self.on_answer = on_answer
        self.latencies: list[float] = []  # ms, send to answer
        self.from_schedule: list[float] = []  # ms, scheduled send to answer
        self.errors = 0
        self._halt = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()

    def set_rate(self, rate: float) -> None:
        self.interval = 1.0 / rate

    def pause(self) -> None:
        """Stop sending; returns once no request is in flight."""
        self._paused.set()
        with self._lock:
            pass

    def resume(self) -> None:
        self._paused.clear()

    def reset(self) -> None:
        with self._lock:
            self.latencies, self.from_schedule, self.errors = [], [], 0

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.client.close()

    def run(self) -> None:
        scheduled = time.perf_counter()
        while not self._halt.is_set():
            now = time.perf_counter()
            if scheduled > now:
                self._halt.wait(scheduled - now)
                continue
            if self._paused.is_set():
                scheduled = time.perf_counter() + self.interval
                self._halt.wait(0.01)
                continue
            with self._lock:
                if self._paused.is_set():
                    continue
                status, took, body = self.client.request(self.method, self.path)
                done = time.perf_counter()
                self.latencies.append(took * 1000)
                self.from_schedule.append((done - scheduled) * 1000)
                if status != 200:
                    self.errors += 1
                if self.on_answer is not None:
                    self.on_answer(status, body)
            scheduled = max(scheduled + self.interval, done)


# ---------------------------------------------------------------- wrk

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of ``wrk --latency`` output: requests, req/s, latency percentiles in ms,
    socket errors and non-2xx answers."""
    result: dict[str, Any] = {}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    if not m:
        raise ValueError("no request count in wrk output")
    result["requests"] = int(m.group(1))
    result["duration_s"] = _ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    result["rps"] = float(m.group(1)) if m else None
    percentiles = {}
    for pct, value in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)", output, re.M):
        percentiles[f"p{pct}_ms"] = _ms(value)
    result.update(percentiles)
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if m:
        result["mean_ms"] = _ms(m.group(1))
        result["max_ms"] = _ms(m.group(3))
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors = dict(zip(errors, map(int, m.groups())))
    result["socket_errors"] = errors
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(m.group(1)) if m else 0
    result["errors"] = sum(errors.values()) + result["non_2xx"]
    return result


def wrk_available() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    proc = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk (\S+)", proc.stdout + proc.stderr)
    return m.group(1) if m else "?"


def wrk_argv(port: int, path: str, clients: int, duration: float) -> list[str]:
    threads = max(1, min(clients, 2))
    return [
        "wrk",
        f"-t{threads}",
        f"-c{clients}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        f"http://{HOST}:{port}{path}",
    ]


# ---------------------------------------------------------------- Python fallback


def closed_loop(port: int, path: str, clients: int, duration: float) -> dict[str, Any]:
    """``clients`` threads, each sending its next request when the last one is answered,
    for ``duration`` seconds. Bounded: at most 64 clients and 600 s."""
    clients, duration = max(1, min(clients, 64)), max(0.5, min(duration, 600))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    start = threading.Event()
    end_at = [0.0]

    def worker() -> None:
        client = Client(port, timeout=10)
        mine, bad = [], 0
        start.wait()
        while time.perf_counter() < end_at[0]:
            status, took, _ = client.request("GET", path)
            mine.append(took * 1000)
            bad += status != 200
        client.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    end_at[0] = began + duration
    start.set()
    for t in threads:
        t.join(duration + 30)
    took = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else None
        )

    return {
        "requests": len(latencies),
        "duration_s": took,
        "rps": len(latencies) / took,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] if latencies else None,
        "errors": errors[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(closed_loop(args.port, args.path, args.clients, args.duration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What goes into a log line, and how often: escaping and the repeat limiter."""

from __future__ import annotations

import logging

import pytest

from vmcontroller.loglines import RepeatLimiter, printable
from vmcontroller.vocab import REPEAT_INTERVAL


@pytest.mark.parametrize(
    "text, logged",
    [
        ("/api/v1/status", "/api/v1/status"),
        ("/x\n2026-01-01 INFO forged", "/x\\n2026-01-01 INFO forged"),
        ("/x\r\t\x00\x1b[31m\x7f", "/x\\r\\t\\x00\\x1b[31m\\x7f"),
        ("/\u2028\u2029\u202e\x85", "/\\u2028\\u2029\\u202e\\x85"),
        ("/back\\slash", "/back\\\\slash"),  # an escape cannot be forged either
        ("/café ☕ 名前", "/café ☕ 名前"),  # printable text stays readable
        ("/\udcff", "/\\udcff"),
    ],
)
def test_printable_escapes_what_could_break_or_forge_a_line(text, logged):
    assert printable(text) == logged
    assert printable(text).isprintable()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# (seconds since the start, key, expected (due, suppressed)), interval 60 s
TABLE = [
    (0, "a", (True, 0)),  # first of its kind: logged
    (1, "a", (False, 1)),  # within the interval: suppressed, counted
    (2, "a", (False, 2)),
    (2, "b", (True, 0)),  # another key has its own interval
    (59.9, "a", (False, 3)),
    (60, "a", (True, 3)),  # due again; the line can say "3 more like it"
    (61, "a", (False, 1)),
    (62, "b", (True, 0)),  # b was never suppressed
    (500, "a", (True, 1)),  # long after: due, with the one left over
    (500, "a", (False, 1)),
]


def test_repeat_limiter_table():
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock)
    start = clock.now
    for at, key, expected in TABLE:
        clock.now = start + at
        assert limiter.due(key) == expected, (at, key)


def test_repeat_limiter_keys_are_causes_of_any_shape():
    clock = Clock()
    limiter = RepeatLimiter(clock=clock)
    assert limiter.interval == REPEAT_INTERVAL
    cause = ("guest_request", "automatic revert is disabled (maintenance)")
    assert limiter.due(cause) == (True, 0)
    assert limiter.due(cause) == (False, 1)
    assert limiter.due(("idle_reset", cause[1])) == (True, 0)


def test_repeat_limiter_memory_is_bounded():
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock, max_keys=10)
    for i in range(1000):
        clock.now += 0.001
        assert limiter.due(i) == (True, 0)
        assert len(limiter) <= 10
    # The newest keys are still remembered.
    assert limiter.due(999) == (False, 1)


def test_a_step_of_the_clock_backwards_does_not_silence_a_key():
    """The limiter takes a monotonic clock; should someone pass a wall clock that
    steps back, a key is silenced for at most one interval, not for the step."""
    clock = Clock()
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.due("a") == (True, 0)
    clock.now -= 365 * 86400
    assert limiter.due("a") == (True, 0)


def test_printable_keeps_a_record_on_one_line(caplog):
    log = logging.getLogger("vmcontroller.test")
    with caplog.at_level(logging.INFO, logger="vmcontroller.test"):
        log.info("path %s", printable("/a\nINFO forged"))
    [record] = caplog.records
    assert "\n" not in logging.Formatter("%(message)s").format(record)

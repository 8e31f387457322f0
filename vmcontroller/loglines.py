"""What request-supplied text may put in a log line, and how often a line may repeat.

The log is read by people and by journald, one record per line: a path with
``%0A`` in it must not start a line that looks like the controller's own, and
a guest script that repeats a refused request every second must not bury the
lines that matter. A leaf module: the app and the monitor both use it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from .vocab import REPEAT_INTERVAL

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with everything str.isprintable() refuses written as an escape.

    That covers line breaks of every kind (including U+2028 and NEL), terminal
    escapes and bidirectional overrides; the backslash is escaped too, so an
    escape in the log always stands for one the request really held.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


class RepeatLimiter:
    """Says whether a line about ``key`` is due: at most once per ``interval`` per key.

    ``due(key)`` returns ``(True, n)`` when the line should be written, ``n`` being
    how many were suppressed since the last one (for "and n more like it"), and
    ``(False, n)`` otherwise, ``n`` counting this one. The clock is monotonic;
    memory is bounded by ``max_keys`` (the oldest key is forgotten first).
    Thread-safe: requests arrive on the server's worker threads.
    """

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ):
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [when its last line was written, how many were suppressed since]
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def due(self, key: Hashable) -> tuple[bool, int]:
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            # A last line "in the future" means the clock went back: do not stay silent.
            if entry is None or not entry[0] <= now < entry[0] + self.interval:
                suppressed = 0 if entry is None else int(entry[1])
                self._seen[key] = [now, 0]
                self._seen.move_to_end(key)
                while len(self._seen) > self._max_keys:
                    self._seen.popitem(last=False)
                return True, suppressed
            entry[1] += 1
            return False, int(entry[1])

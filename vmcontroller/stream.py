"""Server-Sent Events: what changed in the controller, pushed to dashboards.

One hub per controller does all the looking, on a thread of its own, so that
the heartbeat path pays nothing for any number of listeners: once a second it
reads the monitor (status, heartbeat status, the heartbeat counter) and sends
``status`` when anything but the heartbeat's age changed and ``heartbeat``
when heartbeats arrived; when the history's listener rings, it reads the
newest rows back from the store and sends those that are new or changed,
exactly as ``GET /api/v1/events`` shows them.

Each client has a bounded queue the hub appends to without ever waiting: a
client whose queue fills, or that leaves too many bytes unsent on its
connection, is cut off and resumes with ``Last-Event-ID``. A history event's
``id:`` is a resume cursor: the smallest id of a row that may still change
(an action still 'started', a row young enough to count repeats), or the
row's own id; replaying every row from the cursor on loses nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import NotInitialised, StateFileError
from .vocab import REPEAT_INTERVAL, STARTED

log = logging.getLogger(__name__)

#: Milliseconds an EventSource waits before reconnecting (the stream's first line).
RETRY_MS = 3000
#: A comment is sent after this many seconds of silence, so proxies keep the connection.
KEEP_ALIVE = 15.0
#: Events waiting for one client; a client that lets more pile up is cut off.
CLIENT_QUEUE = 256
#: Bytes a client may leave unsent on its connection before it is cut off.
UNSENT_MAX = 256 * 1024
#: History rows replayed at most on a reconnect (the newest ones).
REPLAY_MAX = 1000
#: How often the hub reads the monitor: status and heartbeats are at most this late.
TICK = 1.0
#: One look's events reach the clients spread over up to this many seconds, a client's
#: thread woken after another's: 200 stream threads woken at once fight over the GIL
#: and held a heartbeat's answer up by 30 ms at p99 (scripts/bench, phase i.).
FAN_OUT_SPREAD = 0.25
#: ... but never slower than this between two clients, so a few clients hear at once.
FAN_OUT_GAP_MAX = 0.002
#: A row this young may still count repeats (Store.record_coalesced); a margin for the
#: time between the row's creation and its write.
CHANGEABLE_FOR = REPEAT_INTERVAL + 5.0
#: Heartbeat fields that change with every heartbeat or every second: not a status change.
AGE_FIELDS = ("last_heartbeat", "seconds_since_last")
_NOT_YET = (NotInitialised, StateFileError)


class Row(Protocol):
    """A history row as the store gives it (store.Event)."""

    @property
    def id(self) -> int: ...

    @property
    def time(self) -> float: ...

    @property
    def outcome(self) -> str: ...

    def as_json(self) -> dict[str, Any]: ...


class StreamSource(Protocol):
    """What the hub reads of the monitor."""

    @property
    def heartbeats_received(self) -> int: ...

    def status(self) -> dict[str, Any]: ...

    def heartbeat_status(self) -> dict[str, Any]: ...

    def history(
        self, limit: int = 100, since: float | None = None, triggers: Iterable[str] = ()
    ) -> Sequence[Row]: ...


@dataclass(frozen=True)
class Snapshot:
    """One look at the monitor by the hub."""

    status: dict[str, Any]
    heartbeat: dict[str, Any]
    heartbeats: int


def without_age(status: dict[str, Any]) -> dict[str, Any]:
    """The status with the heartbeat's age left out: what a status event is sent for."""
    heartbeat = {k: v for k, v in status.get("heartbeat", {}).items() if k not in AGE_FIELDS}
    return {**status, "heartbeat": heartbeat}


def what_to_send(previous: Snapshot | None, current: Snapshot) -> list[str]:
    """The events one look calls for: ``status`` when something other than the
    heartbeat's age changed, ``heartbeat`` when heartbeats arrived since the last look."""
    names = []
    if previous is None or without_age(previous.status) != without_age(current.status):
        names.append("status")
    if previous is not None and current.heartbeats != previous.heartbeats:
        names.append("heartbeat")
    return names


def may_change(row: Row, now: float) -> bool:
    """Whether this row can still change: an action not over, or a row that may count repeats
    (a clock set back makes rows look young: they stay watched, never lost)."""
    return row.outcome == STARTED or row.time > now - CHANGEABLE_FOR


def resume_floor(rows: Iterable[Row], now: float) -> int | None:
    """The smallest id among rows that may still change, None when none may."""
    return min((row.id for row in rows if may_change(row, now)), default=None)


def cursor(row_id: int, floor: int | None) -> int:
    """The ``id:`` of a history event: replaying from it brings back every row that may
    have changed since, this one included."""
    return row_id if floor is None else min(row_id, floor)


def fan_out_gap(clients: int, spread: float = FAN_OUT_SPREAD) -> float:
    """Seconds between waking one client's thread and the next's."""
    if clients <= 1:
        return 0.0
    return min(spread / clients, FAN_OUT_GAP_MAX)


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One event in the text/event-stream format (compact JSON: one data line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def history_events(rows: Sequence[Row], since_id: int, now: float) -> list[bytes]:
    """``history`` events for the rows (newest first, as the store gives them) whose id is at
    least ``since_id``, oldest first: a reconnecting client's replay."""
    floor = resume_floor(rows, now)
    return [
        sse("history", row.as_json(), cursor(row.id, floor))
        for row in reversed(rows)
        if row.id >= since_id
    ]


class StreamFull(Exception):
    """As many streams as ``api_stream_clients`` are open already."""


class Subscription:
    """One client's queue: the hub appends without waiting, the client's thread takes."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._cond = threading.Condition()
        self._items: deque[bytes] = deque()
        #: Why the stream must end (None while it goes on).
        self.ended: str | None = None

    def offer(self, chunk: bytes) -> None:
        with self._cond:
            if self.ended is not None:
                return
            if len(self._items) >= self._capacity:
                self._items.clear()
                self.ended = f"it let {self._capacity} events pile up unread"
            else:
                self._items.append(chunk)
            self._cond.notify_all()

    def end(self, why: str) -> None:
        with self._cond:
            if self.ended is None:
                self.ended = why
            self._cond.notify_all()

    def take(self, timeout: float) -> list[bytes]:
        """What is queued, waiting up to ``timeout`` for something (empty when nothing came)."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self.ended is not None, timeout)
            items = list(self._items)
            self._items.clear()
            return items


class StreamBody:
    """A WSGI body that gives its client's place back however it ends: run out, closed by
    waitress when the client left, or never started at all (a HEAD, an error upstream)."""

    def __init__(self, hub: Hub, client: Subscription, chunks: Iterator[bytes]):
        self._hub = hub
        self._client = client
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._client.end("the client left")
        self._hub.unsubscribe(self._client)
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Hub:
    """The one reader of the monitor for every stream of a controller."""

    def __init__(
        self,
        source: StreamSource,
        max_clients: int,
        keep_alive: float = KEEP_ALIVE,
        queue_size: int = CLIENT_QUEUE,
        unsent_max: int = UNSENT_MAX,
        tick: float = TICK,
        clock: Callable[[], float] = time.time,
        on_clients: Callable[[int], None] | None = None,
    ):
        """``on_clients`` hears the number of open streams after each change: the server
        sizes waitress's worker pool with it, since each stream holds a worker."""
        self.source = source
        self.max_clients = max_clients
        self.keep_alive = keep_alive
        self.queue_size = queue_size
        self.unsent_max = unsent_max
        self.tick = tick
        self._clock = clock
        self._on_clients = on_clients
        self._lock = threading.Lock()
        self._clients: set[Subscription] = set()
        self._history_rang = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Only the hub's thread touches these.
        self._previous: Snapshot | None = None
        self._top_id: int | None = None  # the newest row seen; None before the first read
        self._watched: dict[int, dict[str, Any]] = {}  # rows that may change: id -> as sent

    # ------------------------------------------------------------ life

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="event-stream-hub", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End every stream (their threads are waitress's, needed back to shut down)."""
        self._stop.set()
        self._history_rang.set()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.end("the controller is stopping")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def on_history(self, change: object) -> None:
        """A history listener: only rings the hub, which reads the rows on its own thread."""
        self._history_rang.set()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    # ------------------------------------------------------------ clients

    def subscribe(self) -> Subscription:
        """A queue for one more client; StreamFull past ``max_clients`` or once stopping."""
        with self._lock:
            if self._stop.is_set():  # its threads are needed back to shut down
                raise StreamFull("The controller is stopping: try again later")
            if len(self._clients) >= self.max_clients:
                raise StreamFull(
                    f"Too many event streams: at most {self.max_clients} at once "
                    f"(api_stream_clients); try again later"
                )
            client = Subscription(self.queue_size)
            self._clients.add(client)
            self._tell_clients()
        self._history_rang.set()  # a hub idle for want of clients looks again
        return client

    def unsubscribe(self, client: Subscription) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.discard(client)
                self._tell_clients()

    def _tell_clients(self) -> None:
        if self._on_clients is not None:
            self._on_clients(len(self._clients))

    def publish(self, chunks: list[bytes]) -> None:
        """Hand every client these events, one client after another (``fan_out_gap``)."""
        if not chunks:
            return
        chunk = b"".join(chunks)
        with self._lock:
            clients = list(self._clients)
        gap = fan_out_gap(len(clients))
        for i, client in enumerate(clients):
            if i and gap:
                self._stop.wait(gap)
            client.offer(chunk)

    def opening(self, last_event_id: int | None) -> bytes:
        """What a new stream starts with: the retry delay, the status, the replay if resuming.
        Raises what status() raises (not initialised: 503)."""
        parts = [f"retry: {RETRY_MS}\n\n".encode(), sse("status", self.source.status())]
        if last_event_id is not None:
            rows = self.source.history(limit=REPLAY_MAX)
            parts += history_events(rows, last_event_id, self._clock())
        return b"".join(parts)

    def events(self, client: Subscription, opening: bytes, unsent: Callable[[], int]) -> StreamBody:
        """The body of one stream, served by the waitress thread that holds it until the
        client leaves (waitress raises on the next write), is cut off, or the hub stops."""
        return StreamBody(self, client, self._chunks(client, opening, unsent))

    def _chunks(
        self, client: Subscription, opening: bytes, unsent: Callable[[], int]
    ) -> Iterator[bytes]:
        yield opening
        while client.ended is None:
            if unsent() > self.unsent_max:
                client.end(f"it left more than {self.unsent_max} bytes unread")
                break
            items = client.take(self.keep_alive)
            if client.ended is not None:
                break
            yield b"".join(items) if items else b": keep-alive\n\n"
        log.info("an event stream was cut off: %s", client.ended)

    # ------------------------------------------------------------ the hub's thread

    def _run(self) -> None:
        next_look = 0.0
        while not self._stop.is_set():
            chunks: list[bytes] = []
            if self._history_rang.is_set() or self._top_id is None:
                self._history_rang.clear()
                chunks += self._guarded(self._read_history)
                # A burst of changes (a guest's repeated requests) is read once a pause.
                self._stop.wait(min(self.tick, 0.2))
            if not self.clients:
                # Nobody listens: no look at the monitor (idle CPU); the history is still
                # followed on each ring, so that a resume cursor stays exact.
                self._previous = None
                self._history_rang.wait()
                continue
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + self.tick
                chunks += self._guarded(self._look)
            self.publish(chunks)
            self._history_rang.wait(max(0.0, next_look - time.monotonic()))

    @staticmethod
    def _guarded(read: Callable[[], list[bytes]]) -> list[bytes]:
        """A bug in one kind of read must stop neither the other nor the streams' only source."""
        try:
            return read()
        except Exception:
            log.exception("the event stream hub failed to read the controller")
            return []

    def _look(self) -> list[bytes]:
        """Read the monitor once: the events for what changed."""
        try:
            current = Snapshot(
                self.source.status(),
                self.source.heartbeat_status(),
                self.source.heartbeats_received,
            )
        except _NOT_YET:  # still starting, or the status cannot be read: next tick
            return []
        names = what_to_send(self._previous, current)
        self._previous = current
        return [sse(n, current.status if n == "status" else current.heartbeat) for n in names]

    def _read_history(self) -> list[bytes]:
        """The history events for rows new or changed since the last read."""
        try:
            rows = self.source.history(limit=REPLAY_MAX)
        except _NOT_YET:  # still starting, or the file unreadable: at the next ring
            return []
        now = self._clock()
        first = self._top_id is None
        top = self._top_id or 0
        sent: list[bytes] = []
        changed = [
            (row, shown)
            for row in reversed(rows)
            if (row.id > top or row.id in self._watched)
            and (shown := row.as_json()) != self._watched.get(row.id)
        ]
        watched = {row.id: row.as_json() for row in rows if may_change(row, now)}
        floor = min(watched, default=None)
        if not first:
            sent = [sse("history", shown, cursor(row.id, floor)) for row, shown in changed]
        self._watched = watched
        self._top_id = max([top, *(row.id for row in rows)])
        return sent

"""Build the controller from a Config and run it: threads, waitress, signals.

Startup order matters: the HTTP server listens first (answering 503 until
the monitor has initialised), the event stream starts before the monitor's
first look at the VM so no lifecycle event falls between the two.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import json
import logging
import os
import signal
import struct
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask, WSGITask

from . import __version__
from .app import create_app
from .config import Config, as_dict, masked
from .liveness import HttpProbe, probe_host
from .metrics import ControllerMetrics
from .monitor import MAX_SLEEP, Monitor, longest_locked_operation
from .notify import Notifier, stale_limit
from .outbox import Courier, Outbox
from .screenwatch import ScreenShelf, ScreenWatcher
from .security import SecuritySettings
from .senders import channels, ping
from .store import Store
from .stream import Hub
from .virsh import EventStream, VirshRunner, VirshSession
from .vm import Domain
from .vocab import MAX_BODY, MAX_HEADER_BLOCK, UNSENT_KEY

log = logging.getLogger(__name__)

#: Connections waitress accepts beyond the event streams (its own default).
CONNECTION_LIMIT = 100

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr, where journald picks it up; keep waitress's per-request noise out."""
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT, force=True)
    # waitress warns once per queued request when all threads are busy; under a
    # burst of heartbeats that is a line per request for no actionable reason.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class _JsonErrorTask(ErrorTask):
    """What waitress itself refuses (a header block too large, a malformed
    request) is answered in the API's JSON error shape too."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps({"detail": f"{error.reason}: {error.body}"}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(
            [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")]
        )
        # Hang up after this answer, and say so, as waitress's own ErrorTask does
        # (its set_close_on_finish() is newer than Debian 12's waitress 2.1.2).
        self.response_headers.append(("Connection", "close"))
        self.close_on_finish = True
        self.content_length = len(body)
        self.write(body)


class _HeadClosesTask(WSGITask):
    """A HEAD answer says ``Connection: close`` and closes. waitress 2.1.2 (Debian 12's)
    hangs up after every HEAD answer without saying so (no body was sent for its
    Content-Length), and a client that reuses the connection meets a reset.

    It also tells the app how many bytes of its answer the client has not taken yet
    (``UNSENT_KEY``), so that an event stream ends when its client stops reading, long
    before waitress's own limit (a write blocks the thread at 16 MB unsent)."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        channel = self.channel
        environ[UNSENT_KEY] = lambda: unsent_bytes(channel)
        return environ

    def execute(self) -> None:
        if self.request.command == "HEAD":
            self.response_headers.append(("Connection", "close"))
            self.close_on_finish = True
        super().execute()


def unsent_bytes(channel: HTTPChannel) -> int:
    """What waitress holds for the client plus what the kernel holds (sent but not
    acknowledged, or not sent yet): on loopback the kernel's send buffer grows to
    megabytes, and a client that never reads would fill it long before waitress's."""
    held = int(channel.total_outbufs_len)
    try:
        raw = fcntl.ioctl(channel.socket.fileno(), termios.TIOCOUTQ, bytes(4))
    except (OSError, ValueError):  # closed meanwhile: the next write says so
        return held
    return held + int(struct.unpack("i", raw)[0])


class _JsonErrorChannel(HTTPChannel):
    task_class = _HeadClosesTask
    error_task_class = _JsonErrorTask


def _listens_beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: assume it is reachable from elsewhere


class Controller:
    """Everything one running controller owns, wired together."""

    def __init__(self, config: Config):
        self.config = config
        self.runner = VirshRunner(
            config.libvirt_uri, config.virsh_timeout, long_timeout=config.virsh_long_timeout
        )
        self.domain = Domain(self.runner, config.vm_name, config.snapshot_name)
        self.store = Store(
            config.state_path, config.history_max_age_days, config.history_max_events
        )
        self.monitor = Monitor(self.domain, config, self.store)
        self.events = EventStream(
            self.runner,
            config.vm_name,
            self.monitor.on_lifecycle_event,
            self.monitor.on_events_connection,
        )
        # Notifications and the dead man's switch (alerts.py, outbox.py, senders.py).
        self.courier = Courier(
            Outbox(self.monitor.store, channels(config)),
            self.monitor.take_alerts,
            ping=ping(config),
            ping_interval=config.ping_interval,
            ping_wanted=self.monitor.ping_wanted,
        )
        self.monitor.set_notification_status(self.courier.status)
        # Screen liveness (screen.py, screenwatch.py): only when the config asks for it.
        self.screen: ScreenWatcher | None = None
        shelf: ScreenShelf | None = None
        if config.screen is not None:
            shelf = ScreenShelf(
                Path(config.state_path).parent / "screens",
                config.screen.keep,
                int(config.screen.keep_mib * 1024 * 1024),
            )
            # One virsh for all the screenshots: starting one each time would cost 1 % of
            # a core by itself (virsh.VirshSession).
            self.screen_session = VirshSession(config.libvirt_uri, config.virsh_timeout)
            self.screen = ScreenWatcher(
                config.screen,
                functools.partial(self.screen_session.screenshot, config.vm_name),
                self.monitor.screen_watch,
                self.monitor.screen_failed,
                shelf,
            )
            self.monitor.keep_evidence = shelf.keep
            self.monitor.set_screen_status(self.screen.status)
        self.metrics = ControllerMetrics(self.monitor, __version__)
        self.monitor.add_history_listener(self.metrics.on_history)
        self.hub = Hub(
            self.monitor,
            config.api_stream_clients,
            # Each event stream holds a waitress worker for its life: the pool grows by
            # one per open stream, so that api_threads stay free for heartbeats and
            # staff, and threads (memory) are spent only on streams that exist.
            on_clients=lambda streams: self.http.task_dispatcher.set_thread_count(
                config.api_threads + streams
            ),
        )
        self.monitor.add_history_listener(self.hub.on_history)
        self.app = create_app(
            self.monitor,
            __version__,
            SecuritySettings(
                api_token=config.api_token,
                guest_token=config.guest_token,
                cors_origins=config.cors_origins or (),
                # A name the controller is told to listen on is one of its own.
                allowed_hosts=(*(config.allowed_hosts or ()), config.api_host),
            ),
            metrics=self.metrics.registry,
            stream=self.hub,
            screens=shelf,
        )
        self.http: BaseWSGIServer | MultiSocketServer = create_server(
            self.app,
            host=config.api_host,
            port=config.api_port,
            threads=config.api_threads,  # and one more per event stream (the hub's on_clients)
            connection_limit=CONNECTION_LIMIT + config.api_stream_clients,
            ident="",
            channel_timeout=int(max(1, config.api_channel_timeout)),
            # waitress looks for idle channels only this often (default 30 s)
            cleanup_interval=int(max(1, min(30, config.api_channel_timeout / 2))),
            clear_untrusted_proxy_headers=True,
            max_request_header_size=MAX_HEADER_BLOCK,
            # Bodies up to this reach the app, which refuses anything over
            # MAX_BODY with a JSON 413; waitress refuses larger ones itself.
            max_request_body_size=16 * MAX_BODY,
        )
        servers = (
            self.http.map.values() if isinstance(self.http, MultiSocketServer) else [self.http]
        )
        for server in servers:
            if isinstance(server, BaseWSGIServer):
                server.channel_class = _JsonErrorChannel
        self._http_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        # systemd (Type=notify, WatchdogSec): a no-op unless $NOTIFY_SOCKET is set.
        self.notifier = Notifier.from_environ(
            self.monitor, stale_limit(longest_locked_operation(config), MAX_SLEEP)
        )
        # Only under systemd's watchdog: is the HTTP server still serving? (liveness.py)
        self.probe: HttpProbe | None = None
        if self.notifier.interval is not None:
            self.probe = HttpProbe(
                probe_host(config.api_host),
                lambda: self.port,
                interval=min(max(1.0, self.notifier.interval), 15.0),
                timeout=5.0,
            )
            self.notifier.checks.append(self.probe.problem)

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config when it says 0, as tests do)."""
        server = self.http
        # Several sockets when api_host resolves to several addresses (Debian's usual
        # localhost: 127.0.0.1 and ::1); the test machine maps each name to one address.
        if isinstance(server, MultiSocketServer):  # pragma: no cover: one address per name here
            return int(server.effective_listen[0][1])
        return int(server.effective_port)

    def start(self) -> None:
        """Start serving and monitoring in background threads."""
        if self.config.api_reload:
            log.warning(
                "api_reload is ignored: waitress has no code reloader (it was a "
                "development option of the original server)"
            )
        log.info(
            "Exhibition VM Controller %s: VM %r, snapshot %r, libvirt %s, API on %s:%d",
            __version__,
            self.config.vm_name,
            self.config.snapshot_name,
            self.config.libvirt_uri,
            self.config.api_host,
            self.port,
        )
        log.debug("effective configuration: %s", masked(as_dict(self.config)))
        if self.config.api_token is None and _listens_beyond_loopback(self.config.api_host):
            log.warning(
                "no api_token is set and the API listens on %s, beyond this machine: "
                "anyone who can reach it (the guest included) can stop the VM or "
                "delete snapshots; see README.rst, Security",
                self.config.api_host,
            )
        self._http_thread = threading.Thread(target=self._serve_http, name="http", daemon=True)
        self._http_thread.start()
        self.events.start()
        self.monitor.start()
        self.courier.start()
        self.hub.start()
        if self.screen is not None:
            self.screen.start()
        if self.probe is not None:
            self.probe.start()
        self.notifier.start(
            f"serving on {self.config.api_host}:{self.port}, VM {self.config.vm_name!r}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, then stop the threads. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down")
        self.notifier.stopping()
        if self.probe is not None:
            self.probe.stop()
        self.courier.stop()
        if self.screen is not None:
            self.screen.stop()
            self.screen_session.close()
        self.hub.stop()  # the streams give their threads back before waitress waits for them
        self._close_http()
        self.monitor.stop(timeout)
        self.events.stop()
        if self._http_thread is not None:
            self._http_thread.join(timeout)
        self.monitor.close()

    def supervise(self) -> None:
        """Restart a thread that died; called every few seconds from the main thread."""
        self.monitor.ensure_thread()
        self.events.ensure_thread()
        self.courier.start()
        self.hub.start()
        if self.screen is not None:
            self.screen.start()

    def _close_http(self) -> None:
        """Stop accepting, let the workers finish the requests they hold (waitress
        bounds that wait), then close every connection.

        The sockets are closed by waitress's own loop thread (through its
        trigger): closed from here while that thread sits in select(), they make
        select() fail with EBADF; and the trigger must outlive the workers,
        which pull it to hand their answers to the loop.
        """
        server = self.http
        multi = isinstance(server, MultiSocketServer)
        connections = server.map if multi else server._map  # listener(s), channels, trigger
        listeners = [s for s in list(connections.values()) if isinstance(s, BaseWSGIServer)]
        dispatcher = server.task_dispatcher
        loop = self._http_thread
        looping = loop is not None and loop.is_alive() and bool(listeners)

        def in_loop(action: Callable[[], None]) -> None:
            if looping:
                done = threading.Event()

                def run() -> None:
                    try:
                        action()
                    finally:
                        done.set()

                listeners[0].trigger.pull_trigger(run)
                done.wait(5)
            else:
                action()

        def stop_accepting() -> None:
            for listener in listeners:
                wasyncore.dispatcher.close(listener)  # the listening socket, not the trigger

        in_loop(stop_accepting)
        dispatcher.shutdown(cancel_pending=True, timeout=5)
        in_loop(lambda: wasyncore.close_all(connections))  # an empty map ends the loop
        if loop is not None:
            loop.join(5)

    def _serve_http(self) -> None:
        try:
            self.http.run()
        # waitress's loop handles its channels' errors itself: only a bug in waitress ends
        # run() by raising. Kept so that the death is logged; liveness.py's probe then
        # withholds systemd's pings (test_notify kills the loop another way to prove that).
        except Exception:  # pragma: no cover: only a bug in waitress gets here
            log.exception("the HTTP server stopped unexpectedly")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT; used by `vmcontroller serve`."""
        stopped = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            # Tested by test_recovery.py::test_a_second_signal_exits_at_once, but os._exit
            # skips coverage's save at exit: that process never records these lines.
            if stopped.is_set():  # pragma: no cover: run by a test, unrecordable after os._exit
                log.warning("received %s again: exiting at once", name)
                os._exit(128 + signum)
            log.info(
                "received %s: finishing the operation under way, then exiting "
                "(send it again to exit at once)",
                name,
            )
            stopped.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not stopped.wait(2.0):
            self.supervise()
        # Bounded: waitress waits at most 5 s for busy workers, the monitor 4 s.
        self.stop(timeout=4.0)

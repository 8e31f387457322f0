"""The virsh command runner: the only code in the package that starts processes.

Every call runs ``virsh -c URI`` with ``LC_ALL=C`` (so messages can be
parsed) and a timeout (a hung libvirtd must never hang the controller).
Failures become typed errors that carry virsh's own message, because that
message is what an admin needs to read in the API's ``detail``.
Names always travel behind explicit options (``--domain``, ``--snapshotname``):
a positional name starting with '-' would be read by virsh as an option.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .errors import LibvirtFailure, SnapshotUnknown

log = logging.getLogger(__name__)


class VirshError(LibvirtFailure):
    """virsh failed; ``message`` is virsh's own text without the 'error: ' prefixes."""

    def __init__(self, message: str, command: Sequence[str] = (), returncode: int | None = None):
        super().__init__(message)
        self.message = message
        self.command = tuple(command)
        self.returncode = returncode


class DomainNotFound(VirshError):
    """The configured domain is not defined in libvirt."""


class SnapshotNotFound(VirshError, SnapshotUnknown):
    """No snapshot of that name exists for the domain."""


class NotRunning(VirshError):
    """The operation needs a running domain."""


class VirshTimeout(VirshError):
    """virsh did not finish within the timeout; libvirtd is probably hung."""


class LibvirtUnreachable(VirshError):
    """virsh could not connect to libvirtd at all."""


class RevertRisky(VirshError):
    """libvirt refused a snapshot revert unless forced (VIR_ERR_SNAPSHOT_REVERT_RISKY).

    libvirt 9.0 no longer raises this for a changed definition (a revert then
    respawns QEMU from the snapshot's own definition); older libvirts did, with
    their ABI check's message ("Target domain ... does not match source ...").
    """


class ManagedSaveConflict(RevertRisky):
    """The snapshot holds no memory while a managed save image (a host shutdown's saved
    memory) exists; libvirt wants that image removed first."""


class SnapshotLacksDefinition(RevertRisky):
    """The snapshot has no copy of the domain's definition; libvirt 9.0 refuses to revert
    to it even with --force."""


# Most specific first: "failed to connect" must win over the generic fall-through.
_ERROR_PATTERNS: tuple[tuple[re.Pattern[str], type[VirshError]], ...] = (
    (
        re.compile(
            r"failed to connect to the hypervisor|Failed to connect socket|"
            r"no connection driver available|Cannot recv data|End of file while reading",
            re.I,
        ),
        LibvirtUnreachable,
    ),
    (
        re.compile(
            r"revert requires force: snapshot without memory state, removal of existing "
            r"managed saved? state",
            re.I,
        ),
        ManagedSaveConflict,
    ),
    (
        re.compile(r"revert requires force: snapshot '.*' lacks domain '.*' rollback info", re.I),
        SnapshotLacksDefinition,
    ),
    (re.compile(r"revert requires force", re.I), RevertRisky),
    (
        re.compile(
            r"snapshot not found|no domain snapshot with matching name|"
            r"has no current snapshot",
            re.I,
        ),
        SnapshotNotFound,
    ),
    (
        re.compile(r"failed to get domain|Domain not found|no domain with matching", re.I),
        DomainNotFound,
    ),
    (re.compile(r"domain is not running", re.I), NotRunning),
)


def classify_error(
    stderr: str, command: Sequence[str] = (), returncode: int | None = None
) -> VirshError:
    """Turn virsh's stderr into the matching typed error."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    message = (
        "; ".join(re.sub(r"^error:\s*", "", ln) for ln in lines)
        or f"virsh exited with status {returncode} and no message"
    )
    for pattern, cls in _ERROR_PATTERNS:
        if pattern.search(stderr):
            return cls(message, command, returncode)
    return VirshError(message, command, returncode)


# ---------------------------------------------------------------- parsers


def parse_domstate(output: str) -> str:
    """``virsh domstate`` prints the state alone on its first non-blank line."""
    for line in output.splitlines():
        if line.strip():
            return line.strip()
    raise VirshError(f"virsh domstate printed no state: {output!r}")


def parse_name_list(output: str) -> list[str]:
    """``snapshot-list --name`` and ``list --name`` print one name per line."""
    return [line.strip() for line in output.splitlines() if line.strip()]


@dataclass(frozen=True)
class LifecycleEvent:
    """One line of ``virsh event --loop --timestamp --event lifecycle``."""

    timestamp: datetime | None
    domain: str
    event: str  # Started, Stopped, Suspended, Resumed, Defined, Undefined, Shutdown, Crashed, ...
    detail: str  # Booted, Destroyed, Snapshot, Paused, "Finished after host request", ...


_EVENT_RE = re.compile(
    r"^(?:(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4}): )?"
    r"event 'lifecycle' for domain '(?P<domain>.*)': (?P<event>\S+)(?: (?P<detail>.*))?$"
)


def parse_event_line(line: str) -> LifecycleEvent | None:
    """Parse one event line; anything else (blank, other events) gives None."""
    m = _EVENT_RE.match(line.strip())
    if not m:
        return None
    ts = None
    if m.group("ts"):
        try:
            ts = datetime.strptime(m.group("ts"), "%Y-%m-%d %H:%M:%S.%f%z")
        except ValueError:
            try:
                ts = datetime.strptime(m.group("ts"), "%Y-%m-%d %H:%M:%S%z")
            except ValueError:
                ts = None
    return LifecycleEvent(
        ts, m.group("domain"), m.group("event"), (m.group("detail") or "").strip()
    )


def parse_virt_types(capabilities: str, arch: str = "x86_64") -> set[str]:
    """The ``<domain type=...>`` of each hvm ``<guest>`` for ``arch`` in ``virsh capabilities``."""
    try:
        root = ET.fromstring(capabilities)
    except ET.ParseError as exc:
        raise VirshError(f"virsh capabilities printed no readable XML: {exc}") from None
    types: set[str] = set()
    for guest in root.iter("guest"):
        arch_el = guest.find("arch")
        if guest.findtext("os_type") != "hvm" or arch_el is None or arch_el.get("name") != arch:
            continue
        types.update(d.get("type", "") for d in arch_el.iter("domain"))
    types.discard("")
    return types


# ---------------------------------------------------------------- runner

#: Where screenshots pass through on their way from virsh to the controller (memory).
SCRATCH_DIR = "/dev/shm"

#: Commands that copy or restore the guest's memory and disk state: they may
#: take minutes for a large VM on a slow disk, and get ``long_timeout``.
LONG_COMMANDS = frozenset({"snapshot-create-as", "snapshot-revert", "snapshot-delete"})


def _capture(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command to its end with no input, its output as text in the C locale (the
    parsers read English messages). Raises subprocess.TimeoutExpired or OSError."""
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=VirshRunner._env(),
        check=False,
    )


class VirshRunner:
    """Runs virsh for one libvirt URI. Thread-safe: it holds no per-call state."""

    def __init__(
        self,
        uri: str = "qemu:///system",
        timeout: float = 30.0,
        binary: str = "virsh",
        long_timeout: float | None = None,
    ):
        self.uri = uri
        self.timeout = timeout
        self.long_timeout = max(timeout, long_timeout or timeout)
        self.binary = binary

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [self.binary, "-q", "-c", self.uri, *args]

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env["LC_ALL"] = "C"
        env.pop("LANGUAGE", None)
        return env

    def run(self, *args: str) -> str:
        """Run one virsh command and return its stdout, or raise a typed VirshError."""
        argv = self._argv(args)
        limit = self.long_timeout if args[0] in LONG_COMMANDS else self.timeout
        started = time.monotonic()
        try:
            proc = _capture(argv, limit)
        except subprocess.TimeoutExpired:
            raise VirshTimeout(
                f"virsh {args[0].split()[0]} did not answer within {limit:g} s (is libvirtd hung?)",
                argv,
            ) from None
        except OSError as exc:
            raise LibvirtUnreachable(f"cannot run {self.binary!r}: {exc.strerror}", argv) from None
        log.debug(
            "virsh %s -> %d in %.3f s", " ".join(args), proc.returncode, time.monotonic() - started
        )
        if proc.returncode != 0:
            raise classify_error(proc.stderr or proc.stdout, argv, proc.returncode)
        return proc.stdout

    # Thin wrappers: one place that knows each command's options.

    def domstate(self, domain: str) -> str:
        return parse_domstate(self.run("domstate", "--domain", domain))

    def start(self, domain: str) -> None:
        self.run("start", "--domain", domain)

    def resume(self, domain: str) -> None:
        self.run("resume", "--domain", domain)

    def suspend(self, domain: str) -> None:
        self.run("suspend", "--domain", domain)

    def managedsave_remove(self, domain: str) -> None:
        self.run("managedsave-remove", "--domain", domain)

    def destroy(self, domain: str) -> None:
        self.run("destroy", "--domain", domain)

    def state_and_snapshots(self, domain: str) -> tuple[str, list[str]]:
        """The domain's state and snapshot names from one virsh process.

        The safety poll needs both; virsh runs ';'-separated commands from a
        single argument, which halves the processes an idle controller starts.
        The domain name has passed the name rule, so it cannot break the line.
        """
        output = self.run(f"domstate --domain {domain}; snapshot-list --domain {domain} --name")
        return parse_domstate(output), parse_name_list(output)[1:]

    def snapshot_list(self, domain: str) -> list[str]:
        return parse_name_list(self.run("snapshot-list", "--domain", domain, "--name"))

    def snapshot_create(self, domain: str, name: str) -> None:
        self.run("snapshot-create-as", "--domain", domain, "--name", name, "--atomic")

    def snapshot_delete(self, domain: str, name: str) -> None:
        """Delete one snapshot; its children are re-parented, never deleted."""
        self.run("snapshot-delete", "--domain", domain, "--snapshotname", name)

    def snapshot_revert(
        self, domain: str, name: str, *, paused: bool = False, force: bool = False
    ) -> None:
        """Revert and leave the domain running (or paused), whatever state the snapshot recorded.

        ``force`` overrides libvirt's refusal of a risky revert (RevertRisky).
        """
        self.run(
            "snapshot-revert",
            "--domain",
            domain,
            "--snapshotname",
            name,
            "--paused" if paused else "--running",
            *(("--force",) if force else ()),
        )

    def screenshot(self, domain: str) -> bytes:
        """The domain's screen as libvirt hands it over (PNG with this QEMU, whatever the
        file's name), through a private scratch file that is gone when this returns.

        virsh writes the image itself; the scratch folder is in memory (/dev/shm) where
        there is one, so that a screenshot every few seconds for months writes nothing
        to the exhibition PC's disk.
        """
        scratch = SCRATCH_DIR if os.access(SCRATCH_DIR, os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="vmctl-screen-", dir=scratch) as folder:
            path = os.path.join(folder, "screen.png")
            self.run("screenshot", "--domain", domain, "--file", path)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:  # virsh said yes but wrote nothing: libvirt's fault
                raise VirshError(f"virsh screenshot wrote no image: {exc.strerror}") from None

    def domain_exists(self, domain: str) -> bool:
        """Whether libvirt knows a domain of that name (running or not)."""
        try:
            self.run("domstate", "--domain", domain)
        except DomainNotFound:
            return False
        return True

    def define(self, xml: str) -> None:
        """Define (or redefine) a domain from its XML.

        virsh reads the file itself and sends its text to libvirtd, so a private
        temporary file is enough, whoever libvirtd runs as.
        """
        with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="vmctl-define-") as f:
            f.write(xml)
            f.flush()
            self.run("define", "--file", f.name)

    def autostart(self, domain: str) -> None:
        self.run("autostart", "--domain", domain)

    def undefine(self, domain: str) -> None:
        """Forget a domain's definition, its snapshots' metadata and any managed save."""
        self.run("undefine", "--domain", domain, "--snapshots-metadata", "--managed-save")

    def virt_types(self, arch: str = "x86_64") -> set[str]:
        """The domain types (qemu, kvm) libvirt can run for hvm guests of ``arch``.

        'kvm' is listed only when libvirtd can open /dev/kvm, which is the
        question: the user running this may not be allowed to, libvirtd may.
        """
        return parse_virt_types(self.run("capabilities"), arch)

    def event_argv(self) -> list[str]:
        return self._argv(["event", "--loop", "--timestamp", "--event", "lifecycle"])


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None  # None: killed at the timeout
    output: str  # stdout and stderr, trimmed for the log


class VirshSession:
    """One virsh process that takes screenshot after screenshot.

    Starting virsh costs about 20 ms of CPU (loading libvirt, connecting): at one
    screenshot every 2 s that alone is 1 % of a core, for months. So the screen
    watcher keeps one virsh reading commands from a pipe. After each command it is
    asked to ``echo --err`` a marker: stderr is unbuffered, so everything before the
    marker is that command's complaint, if any. Anything unexpected (a timeout, virsh
    gone, libvirtd restarted under it) ends the process; the next call starts a new one.
    Thread-safe: one command at a time.
    """

    def __init__(self, uri: str = "qemu:///system", timeout: float = 30.0, binary: str = "virsh"):
        self.uri = uri
        self.timeout = timeout
        self.binary = binary
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._scratch: str | None = None  # a private folder for its files, in memory
        self._count = 0

    @property
    def pid(self) -> int | None:
        """The process now serving (None: none; the next call starts one)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def screenshot(self, domain: str) -> bytes:
        """As VirshRunner.screenshot, without starting a process each time. The domain name
        has passed the name rule, so it cannot break the command line."""
        with self._lock:
            proc, folder = self._started()
            self._count += 1
            mark = f"vmctl-done-{self._count}"
            path = os.path.join(folder, "screen.png")
            argv = [self.binary, "screenshot", "--domain", domain, "--file", path]
            complaint = self._ask(proc, f"screenshot --domain {domain} --file {path}", mark, argv)
            try:
                if complaint:
                    raise classify_error(complaint, argv, None)
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:  # virsh said nothing, yet wrote nothing
                raise VirshError(f"virsh screenshot wrote no image: {exc.strerror}", argv) from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def close(self) -> None:
        with self._lock:
            self._end()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    def _started(self) -> tuple[subprocess.Popen[bytes], str]:
        if self._scratch is None:
            scratch = SCRATCH_DIR if os.access(SCRATCH_DIR, os.W_OK) else None
            self._scratch = tempfile.mkdtemp(prefix=f"vmctl-screen-{os.getpid()}-", dir=scratch)
        if self._proc is None:
            argv = [self.binary, "-q", "-c", self.uri]
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=VirshRunner._env(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise LibvirtUnreachable(
                    f"cannot run {self.binary!r}: {exc.strerror}", argv
                ) from None
        return self._proc, self._scratch

    def _ask(self, proc: subprocess.Popen[bytes], command: str, mark: str, argv: list[str]) -> str:
        """Send one command and read its stderr up to the marker; the complaint, if any."""
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(f"{command}\necho --err {mark}\n".encode())
            proc.stdin.flush()
        except OSError:  # virsh is gone: what it said last is why
            said = self._rest(proc)
            self._end()
            raise classify_error(said or "virsh ended", argv, proc.returncode) from None
        seen = b""
        deadline = time.monotonic() + self.timeout
        fd = proc.stderr.fileno()
        while (end := seen.find(mark.encode() + b"\n")) < 0:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                self._end()
                raise VirshTimeout(
                    f"virsh screenshot did not answer within {self.timeout:g} s "
                    "(is libvirtd hung?)",
                    argv,
                )
            chunk = os.read(fd, 65536)
            if not chunk:  # virsh ended
                self._end()
                raise classify_error(seen.decode(errors="replace") or "virsh ended", argv, None)
            seen += chunk
        before = seen[:end].decode(errors="replace")
        return before[: before.rfind("\n") + 1].strip()  # the marker's own line left out

    def _rest(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stderr is not None
        try:
            if select.select([proc.stderr.fileno()], [], [], 0.5)[0]:
                return os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
        except OSError:  # pragma: no cover: closed meanwhile
            pass
        return ""

    def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_group(proc)
        for stream in (proc.stdin, proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_REAP_WAIT)


def run_command(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None = None, limit: int = 2000
) -> CommandResult:
    """Run a site's own command (post_revert_command) with a timeout; never raises for it.

    It lives here because this module is the one place that starts processes.
    The command gets a process group of its own so that, at the timeout, a shell
    script's children die with it instead of living on (and piling up) as orphans.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(127, f"cannot run {argv[0]!r}: {exc.strerror}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        try:
            out, _ = proc.communicate(timeout=_REAP_WAIT)
        except subprocess.TimeoutExpired:  # a child left the group and holds the pipe
            out = exc.stdout or b""
        return CommandResult(None, _text(out)[-limit:])
    return CommandResult(proc.returncode, _text(out)[-limit:])


#: How long to wait for the output of a command whose group was just killed.
_REAP_WAIT = 5.0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    # Untestable: the group lives as long as its leader is unreaped, and only this
    # thread reaps it, so no test can make it vanish; kept so that a reaper elsewhere
    # (a host program that ignores SIGCHLD) cannot make run_command raise.
    except ProcessLookupError:  # pragma: no cover: see the reason above
        pass


def _text(out: bytes | None) -> str:
    """The command's output as text (it runs without text=True: a hook may print anything)."""
    return (out or b"").decode(errors="replace").strip()


# ---------------------------------------------------------------- qemu-img
# Disk images are read and converted by qemu-img, a process like virsh: it lives here.


class QemuImgError(LibvirtFailure):
    """qemu-img failed; ``message`` is its own text."""


class ImageUnreadable(QemuImgError):
    """qemu-img cannot open the image: missing, not permitted, damaged, or an extent missing."""


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info --output=json`` says of an image."""

    format: str  # qemu-img's name: raw, qcow2, vmdk, vdi, vpc (VHD), vhdx, ...
    virtual_size: int  # bytes the guest sees
    actual_size: int | None  # bytes the file takes on the host's disk
    backing_file: str | None


def parse_image_info(output: str) -> ImageInfo:
    """Parse ``qemu-img info --output=json``."""
    try:
        data = json.loads(output)
        return ImageInfo(
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data["actual-size"]) if "actual-size" in data else None,
            backing_file=data.get("full-backing-filename") or data.get("backing-filename"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise QemuImgError(f"qemu-img info printed no readable JSON: {exc}") from None


_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def parse_progress(chunk: bytes) -> float | None:
    """The last percentage in a piece of ``qemu-img convert -p`` output ("    (42.00/100%)\\r")."""
    found = _PROGRESS_RE.findall(chunk)
    return float(found[-1]) if found else None


def _qemu_img_message(stderr: str, returncode: int | None) -> str:
    lines = [re.sub(r"^qemu-img:\s*", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    return "; ".join(lines) or f"qemu-img exited with status {returncode} and no message"


def image_info(path: str, timeout: float = 60.0, binary: str = "qemu-img") -> ImageInfo:
    """The format and sizes of a disk image, as qemu-img detects them (it reads the headers)."""
    argv = [binary, "info", "--output=json", "--", path]
    try:
        proc = _capture(argv, timeout)
    except subprocess.TimeoutExpired:
        raise ImageUnreadable(f"qemu-img info did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise QemuImgError(f"cannot run {binary!r}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise ImageUnreadable(_qemu_img_message(proc.stderr, proc.returncode))
    return parse_image_info(proc.stdout)


#: A conversion copies the whole disk: hours for a large image on a USB 2 stick.
CONVERT_TIMEOUT = 6 * 3600.0


def convert_image(
    source: str,
    source_format: str,
    target: str,
    on_progress: Callable[[float], None] | None = None,
    timeout: float = CONVERT_TIMEOUT,
    binary: str = "qemu-img",
) -> None:
    """Convert ``source`` to a new qcow2 ``target``, reporting the percentage done.

    The format is given (-f) rather than probed again: qemu-img refuses to
    write sector 0 of an image it only guessed was raw. On a timeout, an
    interrupt or any failure qemu-img is killed; removing the partial target
    is the caller's job (it knows whether the file was its own).
    """
    argv = [binary, "convert", "-p", "-f", source_format, "-O", "qcow2", "--", source, target]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=VirshRunner._env(),
        )
    except OSError as exc:
        raise QemuImgError(f"cannot run {binary!r}: {exc.strerror}") from None
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        last: float | None = None
        # -p rewrites one line with '\r'; read what comes, as it comes.
        while chunk := os.read(proc.stdout.fileno(), 4096):
            percent = parse_progress(chunk)
            if percent is not None and percent != last and on_progress is not None:
                last = percent
                on_progress(percent)
        stderr = proc.stderr.read().decode(errors="replace")
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    if returncode != 0:
        if timed_out.is_set():
            raise QemuImgError(f"qemu-img convert did not finish within {timeout:g} s")
        raise QemuImgError(_qemu_img_message(stderr, returncode))


class EventStream:
    """Follows ``virsh event --loop`` in a daemon thread and hands events to a callback.

    All domains' events are read and filtered by name, so the stream works
    even while the domain is not (yet) defined. When virsh exits (libvirtd
    restarted or down) the stream reconnects with a growing delay, and
    ``connected`` tells the monitor to fall back on polling meanwhile.
    """

    def __init__(
        self,
        runner: VirshRunner,
        domain: str,
        on_event: Callable[[LifecycleEvent], None],
        on_connection_change: Callable[[bool], None] | None = None,
        max_backoff: float = 10.0,
        stable_after: float = 30.0,
    ):
        self._runner = runner
        self._domain = domain
        self._on_event = on_event
        self._on_connection_change = on_connection_change or (lambda up: None)
        self._max_backoff = max_backoff
        #: A stream that ran this long was healthy: its end restarts the back-off.
        self._stable_after = stable_after
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._proc_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.connected = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"virsh-events-{self._domain}", daemon=True
        )
        self._thread.start()

    def ensure_thread(self) -> bool:
        """Restart the reader thread if it died. Returns False if it had to."""
        if self._thread is None or self._thread.is_alive() or self._stop.is_set():
            return True
        log.error("the lifecycle event thread died; starting a new one")
        self.start()
        return False

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._on_connection_change(up)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._follow_once()
            except Exception:  # the stream must outlive any surprise; the poll covers the gap
                log.exception("lifecycle event stream failed")
            self._set_connected(False)
            if self._stop.is_set():
                break
            if time.monotonic() - started > self._stable_after:
                delay = 0.5
            log.warning("lifecycle event stream ended; reconnecting in %.1f s", delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self._max_backoff)

    def _follow_once(self) -> None:
        proc = subprocess.Popen(
            self._runner.event_argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            env=VirshRunner._env(),
        )
        with self._proc_lock:
            self._proc = proc
        if self._stop.is_set():
            proc.terminate()
        try:
            # virsh prints nothing until an event comes; it is connected once it has
            # not failed straight away (a refused connection exits at once).
            try:
                proc.wait(timeout=0.3)
            except subprocess.TimeoutExpired:
                self._set_connected(True)
            assert proc.stdout is not None
            for line in proc.stdout:
                self._set_connected(True)
                event = parse_event_line(line)
                if event is not None and event.domain == self._domain:
                    self._on_event(event)
            proc.wait()
            if proc.returncode and not self._stop.is_set():
                err = proc.stderr.read() if proc.stderr else ""
                log.warning(
                    "virsh event exited with status %s: %s",
                    proc.returncode,
                    classify_error(err, returncode=proc.returncode).message,
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
            with self._proc_lock:
                self._proc = None

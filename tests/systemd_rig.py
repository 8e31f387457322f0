"""An exhibition PC for tests: Debian 12 booted with systemd as PID 1 in systemd-nspawn.

The packaged service is only proven where it runs: under a real systemd, over a
libvirtd that systemd started, installed the way a museum installs it. This module
gives the tests such a machine (../shared/notes/systemd.md says what was checked
here):

- scripts/build-rootfs.sh builds a minimal Debian 12 once, kept in the cache folder
  (VMCTL_RIG_DIR, default /var/cache/exhibition-vm-controller) until the script
  changes; each test module boots a copy of it, so nothing leaks between modules.
- By default the machine has no network but its own loopback (``--private-network``):
  what the package needs must come from the USB bundle that scripts/offline-bundle
  makes, as in a gallery without internet. Host folders are mounted read-only
  (``binds``): the bundle at /media/usb, the test guest's kernel and initramfs, the
  repository's scripts.
- Commands run inside with nsenter, in a clean environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from libvirt_env import wait_until

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VMCTL_RIG_DIR", "/var/cache/exhibition-vm-controller"))
ROOTFS = CACHE / "rootfs"
BUNDLE = CACHE / "offline-bundle"
WORK = Path("/var/tmp")  # a copy of the rootfs per machine; /tmp may be a small tmpfs
USB = "/media/usb"
GUEST = "/srv/test-guest"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# nspawn exits with 133 when the machine inside asks for a reboot.
REBOOT_STATUS = 133


def _script(*args: str, timeout: float) -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def build_rootfs() -> Path:
    """The cached Debian 12 root file system (built on the first call of a fresh machine)."""
    _script("build-rootfs.sh", str(ROOTFS), timeout=900)
    return ROOTFS / "root"


def offline_bundle(deb: Path, into: Path) -> Path:
    """The USB bundle for this .deb and the gallery screen's packages, in ``into``.

    The packages downloaded are kept in the cache (BUNDLE) between runs; each
    bundle starts as hard links to them, so that a refresh downloads only what is
    new and two test runs never write into each other's bundle (offline-bundle
    replaces files rather than writing into them).
    """
    if BUNDLE.is_dir():
        subprocess.run(["cp", "-al", str(BUNDLE), str(into)], check=True)
    _script("offline-bundle", "--with-display", str(into), str(deb), timeout=1200)
    BUNDLE.mkdir(parents=True, exist_ok=True)
    fresh = [str(p) for p in into.glob("*.deb") if not (BUNDLE / p.name).exists()]
    if fresh:
        subprocess.run(["cp", "-l", *fresh, str(BUNDLE)], check=True)
    return into


class Machine:
    """One booted copy of the rootfs. Not thread-safe; one test module drives it."""

    def __init__(
        self, label: str, binds: Sequence[tuple[Path, str]] = (), private_network: bool = True
    ):
        self.name = f"vmctl-{label}-{uuid.uuid4().hex[:6]}"
        self.home = WORK / self.name
        self.root = self.home / "root"
        self.console = self.home / "nspawn.log"
        self.binds = list(binds)
        # Without a network of its own the machine shares the host's, and reaches its mirror.
        self.private_network = private_network
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() when systemd-nspawn last started it

    def create(self) -> Machine:
        self.home.mkdir(parents=True)
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(build_rootfs()), str(self.root)], check=True
        )
        return self

    # -- power ------------------------------------------------------------------

    def boot(self, timeout: float = 120) -> None:
        """Start systemd in the container and wait until it says the boot is over."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [
            "systemd-nspawn",
            "--directory",
            str(self.root),
            "--boot",
            "--register=no",  # the host has no system bus (notes/systemd.md)
            "--keep-unit",
            "--console=passive",
            f"--machine={self.name}",
        ]
        if self.private_network:
            cmd.append("--private-network")
        for _, inside in self.binds:
            (self.root / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        cmd += [f"--bind-ro={outside}:{inside}" for outside, inside in self.binds]
        self.started_at = time.monotonic()
        with self.console.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout

        def booted() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.log()}")
            if self._leader() is None:
                return False
            state = self.sh(
                "systemctl is-system-running --wait",
                check=False,
                timeout=max(1, deadline - time.monotonic()),
            ).stdout.strip()
            return state in ("running", "degraded")

        wait_until(booted, timeout, message=f"{self.name} to finish booting")

    def log(self) -> str:
        return self.console.read_text(errors="replace")[-3000:]

    def _leader(self) -> int | None:
        """The container's PID 1 as the host sees it: the child of systemd-nspawn."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        pids = children.split()
        return int(pids[0]) if pids else None

    def poweroff(self, timeout: float = 180) -> int:
        """``systemctl poweroff`` inside; returns systemd-nspawn's exit status."""
        return self._halt("poweroff", timeout)

    def reboot(self, timeout: float = 180) -> None:
        """``systemctl reboot`` inside: nspawn exits (status 133), and starts the same root again."""
        status = self._halt("reboot", timeout)
        assert status == REBOOT_STATUS, f"nspawn exited {status} after a reboot: {self.log()}"
        self.boot()

    def _halt(self, verb: str, timeout: float) -> int:
        assert self.proc is not None
        self.sh(f"systemctl {verb} --no-block")
        return self.proc.wait(timeout)

    def remove(self) -> None:
        """Kill what is left of the machine and delete its copy of the rootfs."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.poweroff(timeout=120)
            except (subprocess.SubprocessError, RuntimeError, AssertionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        shutil.rmtree(self.home, ignore_errors=True)

    # -- commands inside ------------------------------------------------------------

    def sh(
        self,
        script: str,
        *,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script as root inside, with nothing of the host's environment."""
        leader = self._leader()
        if leader is None:
            raise RuntimeError(f"{self.name} is not running: {self.log()}")
        clean = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb", **(env or {})}
        cmd = ["nsenter", "--target", str(leader), "--all", "env", "-i"]
        cmd += [f"{k}={v}" for k, v in clean.items()]
        proc = subprocess.run(
            [*cmd, "sh", "-c", script], capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {script!r} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
            )
        return proc

    def path(self, inside: str) -> Path:
        """A file of the machine, read from the host (also while it is powered off)."""
        return self.root / inside.lstrip("/")

    def unit(self, name: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {name} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

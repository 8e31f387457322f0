"""Section j. of the benchmark: what watching the screen costs, and how soon a frozen
screen is reverted.

It runs on the project's test guest (tests/guest_env.py: a tiny Linux whose VGA text
screen shows a ticking clock and a moving picture, frozen by a key) with a controller
in this process (guest_env.start_exhibit), because the CPU of a watcher thread can
only be told apart from the rest of a controller from inside its process: CPU seconds
of this process, its reaped children and its long-lived virsh (which takes every
screenshot) over spans with the watcher running and spans with it stopped, alternated.

The guest's screen is 720x400 (VGA text mode: its cloud kernel has no VESA or DRM
framebuffer driver, so it cannot show 1024x768). What 1024x768 costs is therefore
computed, from parts each measured here: the CPU per screenshot of the watcher's
long-lived virsh (virsh.VirshSession) and the controller's side of it (both as measured
on the guest, unscaled) plus decoding and judging an artwork-like 1024x768 PNG drawn
with Pillow (``artwork_png``).
"""

from __future__ import annotations

import io
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import probes, stats

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 2.0
#: The frozen rule of the detection: the target is these seconds plus one interval.
FROZEN_SECONDS = 10.0
SCREEN_1024 = (1024, 768)
#: Where the 1024x768 frame's rules look (as a technician would set them for a
#: full-screen artwork with a taskbar clock): the clock, the artwork, a dialog's box.
CLOCK_1024 = (944, 740, 80, 28)
ARTWORK_1024 = (0, 0, 1024, 736)
DIALOG_1024 = (197, 296, 630, 176)


def _tests_on_path() -> None:
    """tests/guest_env.py builds and runs the test guest; the benchmark reuses it."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def cpu_self_children() -> float:
    """CPU seconds (user + system) of this process and of its children it has reaped."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        used = resource.getrusage(who)
        total += used.ru_utime + used.ru_stime
    return total


def cpu_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (QEMU) from /proc/PID/stat, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / probes.CLK_TCK


def qemu_pid(domain: str) -> int | None:
    """The VM's QEMU process, from libvirt's pid file (readable as root)."""
    try:
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- pictures


def artwork_png(size: tuple[int, int] = SCREEN_1024, step: int = 0) -> bytes:
    """A frame of an artwork-like screen as a PNG: a gradient sky, shapes, lines and text,
    neither noise (which no artwork is and which PNG cannot compress) nor flat (which
    costs nothing to decode). ``step`` moves the shapes, as successive frames would."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):  # a vertical gradient, dusk blue to orange
        t = y / max(1, height - 1)
        draw.line(
            [(0, y), (width, y)],
            fill=(int(30 + 200 * t), int(40 + 90 * t), int(120 - 80 * t)),
        )
    for i in range(24):  # drifting circles and boxes of many colours
        x = (i * 131 + step * 17) % width
        y = (i * 71 + step * 5) % height
        r = 12 + (i * 7) % 60
        colour = ((i * 53) % 256, (i * 97 + 40) % 256, (i * 31 + 90) % 256)
        if i % 3:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
        else:
            draw.rectangle([x, y, x + 2 * r, y + r], fill=colour)
    for i in range(12):  # a few long lines across
        draw.line(
            [(0, (i * 59 + step * 3) % height), (width, (i * 83 + 200) % height)],
            fill=(240, 240, 200),
            width=2,
        )
    font = ImageFont.load_default()
    for row in range(6):
        draw.text(
            (40, 40 + row * 90),
            f"Gallery 3, room {row + 1}: the artwork, frame {step + row}",
            fill=(255, 255, 255),
            font=font,
        )
    cx, cy, cw, ch = CLOCK_1024 if size == SCREEN_1024 else (width - 80, height - 28, 80, 28)
    draw.rectangle([cx, cy, cx + cw, cy + ch], fill=(20, 20, 60))
    draw.text((cx + 8, cy + 8), f"12:{step % 60:02d}", fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def dialog_png(size: tuple[int, int]) -> bytes:
    """A reference for a looks_like rule: an error box (grey, a title bar, a line of
    text), as a technician would cut one from a captured screen."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, (192, 192, 192))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, size[0] - 1, 18], fill=(0, 0, 128))
    draw.text((6, 4), "Error", fill=(255, 255, 255), font=ImageFont.load_default())
    draw.text((20, 50), "The program has stopped working.", fill=(0, 0, 0))
    draw.rectangle([0, 0, size[0] - 1, size[1] - 1], outline=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def rules(
    clock: Sequence[int], artwork: Sequence[int], dialog: Sequence[int], reference: Path
) -> list[dict[str, Any]]:
    """The three rules whose cost is measured: the artwork must move (the clock masked),
    its area must not go black, and a known error dialog must not show."""
    return [
        {"name": "artwork", "kind": "frozen", "seconds": FROZEN_SECONDS, "mask": [list(clock)]},
        {"name": "blank", "kind": "black", "seconds": 10, "regions": [list(artwork)]},
        {
            "name": "error-dialog",
            "kind": "looks_like",
            "seconds": 2,
            "image": str(reference),
            "at": list(dialog[:2]),
        },
    ]


def judge_cost(pngs: Sequence[bytes], raw_rules: list[dict[str, Any]], rounds: int) -> list[float]:
    """CPU ms of this thread to decode and judge each frame, as the watcher does it (a
    fresh Judge, the frames in turn, so the frozen rule compares each with the last)."""
    from vmcontroller.screen import Judge, decode, load_references, parse_screen

    config = parse_screen({"interval": INTERVAL, "rules": raw_rules}, Path("/"))
    judge = Judge(config, load_references(config))
    judge.reset(0.0)
    costs = []
    now = 0.0
    for _ in range(rounds):
        for png in pngs:
            now += INTERVAL
            began = time.thread_time()
            judge.look(decode(png), now)
            costs.append((time.thread_time() - began) * 1000)
    return costs


def unscaled_virsh(screenshot_ms: float, domstate_ms: float, bytes_per_shot: float) -> str:
    """Why the virsh child's CPU per screenshot is carried to 1024x768 as is: most of it is
    virsh starting and connecting, which a call that moves no picture pays too."""
    share = 0.0 if screenshot_ms <= 0 else min(1.0, domstate_ms / screenshot_ms)
    return (
        f"the virsh child's CPU per screenshot is carried over unscaled: a `virsh domstate` "
        f"child, which moves no picture, costs {domstate_ms:.1f} ms of CPU against "
        f"{screenshot_ms:.1f} ms for a screenshot of {bytes_per_shot / 1024:.0f} KiB "
        f"({share * 100:.0f} %): the child's cost is its start and connection, not the bytes "
        f"(the PNG is encoded by QEMU, not virsh)"
    )


# ---------------------------------------------------------------- the phase


@dataclass(frozen=True)
class ScreenPlan:
    span_s: float  # one span with the watcher, and one without, per pair
    pairs: int
    shots: int  # screenshots timed one by one for the per-screenshot figures
    detect: int  # frozen-screen detections


@dataclass
class _Span:
    watching: bool
    seconds: float
    cpu: float  # this process + reaped children
    children: float  # reaped children only (the virsh processes)
    qemu: float | None
    frames: int


class ScreenPhase:
    """The test guest with a screen, a controller in this process watching it, and the
    measurements; ``cleanup`` registers what undoes each step (the caller runs them)."""

    def __init__(
        self,
        plan: ScreenPlan,
        work: Path,
        cleanup: Callable[[str, Callable[[], Any]], None],
        say: Callable[[str], None],
    ):
        self.plan = plan
        self.work = work
        self.cleanup = cleanup
        self.say = say
        self.figures: dict[str, dict[str, Any]] = {}
        self.detail: dict[str, Any] = {}

    # ------------------------------------------------------------ set-up

    def start(self) -> None:
        _tests_on_path()
        import guest_env  # noqa: PLC0415 (tests/ on the path only now)
        from libvirt_env import free_port  # noqa: PLC0415

        self.guest_env = guest_env
        self.say("building the test guest (at once when up to date)")
        build = guest_env.build_guest()
        vm = guest_env.GuestDomain(
            "screen",
            build.path,
            free_port(),
            devices=guest_env.SCREEN,
            kernel_args=guest_env.SCREEN_MODE_KERNEL_ARGS,
        )
        # The benchmark's own name, so that it is known as the benchmark's VM.
        vm.name = f"{probes.PREFIX}screen-{vm.name.rsplit('-', 1)[-1]}"
        vm.disk = probes.IMAGES / f"{vm.name}.qcow2"
        vm.console = probes.IMAGES / f"{vm.name}.console.log"
        self.vm = vm
        self.cleanup(f"remove VM {vm.name}", vm.remove)
        self.say(f"creating VM {vm.name} (the test guest, with a screen)")
        vm.define()
        reference = self.work / "dialog.png"
        x, y, w, h = guest_env.SCREEN_ERROR_BOX
        reference.write_bytes(dialog_png((w, h)))
        self.rules = rules(guest_env.SCREEN_CLOCK, guest_env.SCREEN_ARTWORK, (x, y), reference)
        self.reference = reference
        self.controller = guest_env.start_exhibit(
            vm,
            self.work / "screen-state.db",
            5.0,
            5.0,
            extra={
                "libvirt_uri": probes.URI,
                "screen": {"interval": INTERVAL, "rules": self.rules},
            },
        )
        self.cleanup("stop the screen phase's controller", self.controller.stop)
        self.base = f"http://127.0.0.1:{vm.port}"
        self.wait_judged(moving=True)
        self.detail["vm"] = vm.name
        self.detail["rules"] = self.rules

    def _get(self, path: str) -> Any:
        import requests

        answer = requests.get(self.base + path, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def wait_judged(self, moving: bool = False, timeout: float = 90) -> None:
        """Until the screen is judged (grace over, a screenshot taken); with ``moving``,
        also until the artwork is seen moving."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self._get("/api/v1/status")["screen"]
            verdicts = {v["rule"]: v for v in screen["rules"]}
            art = verdicts.get("artwork")
            if (
                screen["judged"]
                and screen["last_screenshot"]
                and (not moving or (art is not None and not art["holding"]))
            ):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the screen was not judged {'moving ' if moving else ''}in time")

    def screen_rows(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/events?trigger=screen&limit=50")["events"]

    # ------------------------------------------------------------ CPU

    def _span(self, watching: bool) -> _Span:
        watcher = self.controller.screen
        assert watcher is not None
        if watching:
            watcher.start()
        pid = qemu_pid(self.vm.name)
        frames0, cpu0, kids0 = watcher.frames, cpu_self_children(), cpu_children()
        session0 = self._session_cpu()
        qemu0 = proc_cpu(pid) if pid else None
        began = time.monotonic()
        time.sleep(self.plan.span_s)
        took = time.monotonic() - began
        session1 = self._session_cpu()
        cpu1 = cpu_self_children() + session1 - session0
        kids1 = cpu_children() + session1 - session0
        qemu1 = proc_cpu(pid) if pid else None
        frames = watcher.frames - frames0
        if watching:
            watcher.stop()
        return _Span(
            watching,
            took,
            cpu1 - cpu0,
            kids1 - kids0,
            None if qemu0 is None or qemu1 is None else qemu1 - qemu0,
            frames,
        )

    def _session_cpu(self) -> float:
        """CPU so far of the controller's long-lived virsh (virsh.VirshSession): a child
        that is never reaped while it serves, so getrusage cannot see it; /proc can."""
        pid = self.controller.screen_session.pid
        try:
            return proc_cpu(pid) if pid else 0.0
        except OSError:  # it ended between the two reads: its CPU is then reaped
            return 0.0

    def cpu(self) -> None:
        watcher = self.controller.screen
        assert watcher is not None
        watcher.stop()
        time.sleep(1)  # settle: no screenshot under way
        spans = []
        for pair in range(self.plan.pairs):  # which goes first alternates
            for watching in (True, False) if pair % 2 == 0 else (False, True):
                spans.append(self._span(watching))
        on = [s for s in spans if s.watching]
        off = [s for s in spans if not s.watching]
        on_s, off_s = sum(s.seconds for s in on), sum(s.seconds for s in off)
        frames = sum(s.frames for s in on)
        rate_on, rate_off = sum(s.cpu for s in on) / on_s, sum(s.cpu for s in off) / off_s
        share = (rate_on - rate_off) * 100
        qemu_on = [s.qemu for s in on if s.qemu is not None]
        qemu_off = [s.qemu for s in off if s.qemu is not None]
        qemu_share = (
            (sum(qemu_on) / on_s - sum(qemu_off) / off_s) * 100
            if len(qemu_on) == len(on) and len(qemu_off) == len(off)
            else None
        )
        kids_share = (
            sum(s.children for s in on) / on_s - sum(s.children for s in off) / off_s
        ) * 100
        self.share_measured = share
        self.detail["cpu_spans"] = [
            {
                "watching": s.watching,
                "seconds": round(s.seconds, 2),
                "cpu_s": round(s.cpu, 4),
                "children_cpu_s": round(s.children, 4),
                "qemu_cpu_s": None if s.qemu is None else round(s.qemu, 3),
                "frames": s.frames,
            }
            for s in spans
        ]
        how = (
            f"a controller in the benchmark's process (as tests/guest_env.start_exhibit makes "
            f"one) watches the test guest's 720x400 screen at interval {INTERVAL:g} s with "
            f"three rules (frozen with the clock masked, black on the artwork, looks_like on "
            f"the dialog's box); CPU seconds of this process, its reaped children "
            f"(getrusage RUSAGE_SELF + RUSAGE_CHILDREN) and its long-lived virsh "
            f"(/proc/PID/stat of the watcher's VirshSession) per second "
            f"over {len(on)} span(s) of {self.plan.span_s:g} s with the watcher ({frames} "
            f"screenshots) minus the same over {len(off)} span(s) without it, alternated; "
            f"as a share of one core"
        )
        self.fig(
            "screen_cpu_share",
            stats.scalar(
                "j",
                "screen watching, controller + its virsh, 720x400 every 2 s",
                "%",
                share,
                how,
                frames=frames,
                with_cpu_s_per_s=round(rate_on, 6),
                without_cpu_s_per_s=round(rate_off, 6),
                virsh_children_share_pct=round(kids_share, 4),
            ),
        )
        self.fig(
            "screen_qemu_share",
            stats.scalar(
                "j",
                "  and QEMU's own extra CPU for encoding the PNGs (not the controller's)",
                "%",
                qemu_share,
                "utime+stime of the VM's QEMU process (/proc/PID/stat, PID from libvirt's pid "
                "file) per second over the same spans, with minus without: QEMU draws and "
                "encodes the PNG of each screenshot; that CPU is not the controller's, but the "
                "PC pays it; resolution "
                f"1/{probes.CLK_TCK} s, and the guest's own work in TCG is in both spans",
                qemu_cpu_ms_per_screenshot=(
                    None
                    if qemu_share is None or not frames
                    else round(qemu_share / 100 * on_s / frames * 1000, 2)
                ),
            ),
        )

    # ------------------------------------------------------------ per screenshot

    def per_screenshot(self) -> None:
        """Screenshots one by one (the watcher stopped): the virsh child's CPU, the
        controller's side of it, and a virsh call that moves no picture to compare."""
        from vmcontroller.virsh import VirshRunner, VirshSession

        runner = VirshRunner(probes.URI)
        shots: list[bytes] = []
        child, parent, wall, plain = [], [], [], []
        for i in range(self.plan.shots + 2):
            kids, mine, began = cpu_children(), time.thread_time(), time.perf_counter()
            png = runner.screenshot(self.vm.name)
            took = time.perf_counter() - began
            spent, spent_kids = time.thread_time() - mine, cpu_children() - kids
            kids = cpu_children()
            runner.run("domstate", "--domain", self.vm.name)
            idle_kids = cpu_children() - kids
            if i < 2:  # warm-up
                continue
            shots.append(png)
            child.append(spent_kids * 1000)
            parent.append(spent * 1000)
            wall.append(took * 1000)
            plain.append(idle_kids * 1000)
            time.sleep(0.3)
        self.shots = shots
        size = statistics.mean(len(p) for p in shots)
        self.png_bytes = size
        self.fig(
            "screen_virsh_cpu",
            stats.sampled(
                "j",
                f"one virsh per screenshot (not used: for comparison), CPU of the child "
                f"(720x400 PNG, {size / 1024:.0f} KiB)",
                "ms",
                child,
                "getrusage(RUSAGE_CHILDREN) around each `virsh screenshot` run through "
                "VirshRunner.screenshot, the watcher stopped; ru_utime+ru_stime of the reaped "
                "child",
                domstate_cpu_ms=stats.describe(plain),
                wall_ms=stats.describe(wall),
            ),
        )
        self.oneshot_ms = statistics.mean(child)
        session = VirshSession(probes.URI)
        try:
            for _ in range(2):  # warm-up: the process starts and connects
                session.screenshot(self.vm.name)
            assert session.pid is not None
            virsh0, mine = proc_cpu(session.pid), time.thread_time()
            for _ in range(self.plan.shots):
                session.screenshot(self.vm.name)
            self.parent_ms = (time.thread_time() - mine) / self.plan.shots * 1000
            self.virsh_ms = (proc_cpu(session.pid) - virsh0) / self.plan.shots * 1000
        finally:
            session.close()
        self.fig(
            "screen_session_cpu",
            stats.scalar(
                "j",
                "the watcher's long-lived virsh, CPU per screenshot",
                "ms",
                self.virsh_ms,
                f"utime+stime of a VirshSession's process (/proc/PID/stat, resolution "
                f"1/{probes.CLK_TCK} s) over {self.plan.shots} screenshots taken one after "
                f"another, divided by their number (two before, to start it, not counted)",
            ),
        )
        self.fig(
            "screen_shot_parent_cpu",
            stats.scalar(
                "j",
                "  the controller's side of it (write the command, wait, read the file)",
                "ms",
                self.parent_ms,
                "CPU time of the calling thread (time.thread_time) over the same screenshots, "
                "divided by their number",
            ),
        )
        self.fig(
            "screen_judge",
            stats.sampled(
                "j",
                "decode + judge per frame, 720x400 (the guest's screenshots)",
                "ms",
                judge_cost(shots, self.rules, rounds=3),
                "CPU time of this thread (time.thread_time) to decode each screenshot taken "
                "above (Pillow) and judge it with the three rules, as the watcher does, each "
                "frame in turn, three rounds",
            ),
        )

    def at_1024(self) -> None:
        """Decode + judge of an artwork-like 1024x768 PNG, and the share it makes."""
        frames = [artwork_png(SCREEN_1024, step) for step in range(6)]
        reference = self.work / "dialog-1024.png"
        reference.write_bytes(dialog_png(DIALOG_1024[2:]))
        costs = judge_cost(
            frames, rules(CLOCK_1024, ARTWORK_1024, DIALOG_1024, reference), rounds=5
        )
        judge_ms = statistics.median(costs)
        size = statistics.mean(len(f) for f in frames)
        self.fig(
            "screen_judge_1024",
            stats.sampled(
                "j",
                f"decode + judge per frame, 1024x768 (a drawn artwork, {size / 1024:.0f} KiB PNG)",
                "ms",
                costs,
                "as above, on six 1024x768 PNGs drawn with Pillow (a gradient, moving shapes, "
                "lines, text, a clock box: neither noise nor flat) with the same three rules "
                "placed for that screen; five rounds",
                png_bytes=round(size),
            ),
        )
        why = (
            "the long-lived virsh's CPU per screenshot is carried over unscaled: what it does "
            "for each is one call to libvirtd and writing the PNG that QEMU encoded (QEMU's "
            "CPU is not in it, see above); the one-virsh-per-screenshot way it replaced, for "
            "comparison: "
            + unscaled_virsh(
                self.oneshot_ms,
                self.figures["screen_virsh_cpu"]["domstate_cpu_ms"]["mean"],
                self.png_bytes,
            )
        )
        per_shot = self.virsh_ms + self.parent_ms + judge_ms
        self.fig(
            "screen_cpu_share_1024",
            stats.scalar(
                "j",
                "screen watching at 1024x768 every 2 s (computed)",
                "%",
                per_shot / (INTERVAL * 1000) * 100,
                f"computed, not measured on a 1024x768 guest (the test guest shows only "
                f"720x400: VGA text, its kernel has no VESA or DRM framebuffer): (the "
                f"long-lived virsh's CPU per screenshot {self.virsh_ms:.1f} ms + the "
                f"controller's side of it "
                f"{self.parent_ms:.1f} ms, both as measured at 720x400 + decode and judge at "
                f"1024x768 {judge_ms:.1f} ms, median) / {INTERVAL:g} s; {why}. QEMU's "
                f"encoding is not in it (see above).",
                virsh_ms=round(self.virsh_ms, 3),
                parent_ms=round(self.parent_ms, 3),
                judge_ms=round(judge_ms, 3),
                png_size_ratio=round(size / self.png_bytes, 2),
                virsh_scaled=False,
            ),
        )

    # ------------------------------------------------------------ detection

    def detection(self) -> None:
        watcher = self.controller.screen
        assert watcher is not None
        watcher.start()
        samples, bad = [], []
        for _ in range(self.plan.detect):
            self.wait_judged(moving=True)
            seen = {row["id"] for row in self.screen_rows()}
            pressed = time.time()
            self.vm.screen_key("f")
            sent = time.time() - pressed
            deadline = time.monotonic() + FROZEN_SECONDS + 4 * INTERVAL + 30
            row = None
            while row is None and time.monotonic() < deadline:
                time.sleep(0.5)
                fresh = [r for r in self.screen_rows() if r["id"] not in seen]
                row = min(fresh, key=lambda r: r["id"]) if fresh else None
            if row is None:
                raise RuntimeError("no screen revert after freezing the guest's screen")
            began = datetime.fromisoformat(row["time"]).timestamp()
            samples.append(began - pressed)
            while row["outcome"] == "started" and time.monotonic() < deadline:
                time.sleep(0.5)
                row = next(r for r in self.screen_rows() if r["id"] == row["id"])
            if row["outcome"] != "succeeded":
                bad.append(row)
            self.detail.setdefault("detect_send_key_s", []).append(round(sent, 3))
        target = FROZEN_SECONDS + INTERVAL
        low, mid, high = min(samples), statistics.median(samples), max(samples)
        self.fig(
            "screen_detect",
            stats.sampled(
                "j",
                f"frozen screen -> revert start (min {low:.1f}, median {mid:.1f}, max "
                f"{high:.1f} s; rule {FROZEN_SECONDS:g} s + interval {INTERVAL:g} s = "
                f"{target:g} s)",
                "s",
                samples,
                f"the benchmark freezes the guest's artwork (`virsh send-key` of 'f', the "
                f"clock keeps ticking and is masked); from the wall clock when it started "
                f"send-key to the time the controller records for the revert (its history "
                f"row of trigger screen); interval {INTERVAL:g} s, frozen rule "
                f"{FROZEN_SECONDS:g} s; the reverted guest moves again before the next sample; "
                f"the summary takes the slowest",
                failed=bad,
                target_s=target,
            ),
        )

    def fig(self, name: str, figure: dict[str, Any]) -> None:
        self.figures[name] = figure

    def run(self) -> None:
        self.start()
        self.cpu()
        self.per_screenshot()
        self.at_1024()
        self.detection()

"""Screen liveness: rules that judge the guest's screenshots, as pure functions of the
decoded frames and the caller's clock.

A heartbeat proves that the guest's script runs, not that the artwork works: a projector
crashed behind an error dialog, a movie stuck on a frame or a black screen after a driver
fault all keep the script sending. The rules here say, frame by frame, whether such a
condition holds and for how long; the screen watcher takes the screenshots and the monitor
turns a failing rule into a recovery.

No clock, no I/O but reading the reference images when asked (``load_references``): the
caller passes ``now`` (its monotonic time), so every rule can be tested with made-up times.
Pillow does the pixel work in C (crop, difference, extrema, histograms); nothing here loops
over pixels in Python, so judging a 1024x768 frame costs milliseconds. Pillow is imported
inside the functions that need it: ``config.py`` imports ``parse_screen`` and a controller
without screen rules never loads it.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .vocab import RULE_BLACK, RULE_FROZEN, RULE_KINDS, RULE_LOOKS_LIKE, RULE_UNIFORM

if TYPE_CHECKING:
    from PIL import Image  # type: ignore[import-untyped]

#: A region is "dark" for a black rule when no channel of any of its pixels exceeds this
#: (of 255): a black screen shown through a scaler or a dimmed backlight is rarely 0,0,0,
#: while the darkest artwork colours people call "black" stay well below it.
BLACK_LEVEL = 48
#: The default tolerance of each kind (see Rule.tolerance for its unit).
DEFAULT_TOLERANCE = {RULE_FROZEN: 0.0, RULE_UNIFORM: 8.0, RULE_BLACK: 8.0, RULE_LOOKS_LIKE: 3.0}
FAIL_IF_CHOICES = ("match", "differ")
#: The formats a screenshot or a reference may be in: what ``virsh screenshot`` writes
#: (PNG on current libvirt and QEMU, PPM on older ones), whatever the file's name.
IMAGE_FORMATS = ("PNG", "PPM")
#: A rule's name appears in logs, history, metrics labels and file names: kept plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCREEN_KEYS = ("interval", "rules", "keep", "keep_mib")
_RULE_KEYS = ("kind", "name", "seconds", "regions", "mask", "tolerance", "image", "at", "fail_if")
#: The keys each kind takes (besides kind and name).
_KIND_KEYS = {
    RULE_FROZEN: ("seconds", "regions", "mask", "tolerance"),
    RULE_UNIFORM: ("seconds", "regions", "tolerance"),
    RULE_BLACK: ("seconds", "regions", "tolerance"),
    RULE_LOOKS_LIKE: ("seconds", "image", "at", "tolerance", "fail_if"),
}


class ScreenError(ValueError):
    """A problem in the ``screen:`` mapping: ``key`` names where it is (``rules[1].seconds``),
    the message the value and what is expected, on one line (config.py reports it as is)."""

    def __init__(self, key: str, value: object, expected: str):
        where = f"screen.{key}" if key else "screen"  # "" is the mapping itself
        super().__init__(f"{where}={value!r} is invalid: expected {expected}")
        self.key = key


class BadImage(ValueError):
    """A screenshot or a reference image that cannot be decoded; one line, for a log."""


# ------------------------------------------------------------------ the configuration


@dataclass(frozen=True)
class Rect:
    """A rectangle in the guest's pixels; written ``[x, y, width, height]`` in the config."""

    x: int
    y: int
    width: int
    height: int

    def box(self) -> tuple[int, int, int, int]:
        """Left, top, right, bottom: Pillow's form."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)

    def __str__(self) -> str:
        return f"{self.x},{self.y} {self.width}x{self.height}"


@dataclass(frozen=True)
class Rule:
    """One screen rule. The meaning of ``tolerance`` depends on the kind: frozen, the
    largest per-channel difference (0-255) still "unchanged"; uniform and black, the largest
    spread per channel within a region; looks_like, the largest mean absolute difference, in
    percent of full scale."""

    name: str
    kind: str
    seconds: float
    regions: tuple[Rect, ...] = ()  # empty: the whole screen (frozen, uniform, black)
    mask: tuple[Rect, ...] = ()  # frozen only: ignored rectangles (a clock, a cursor)
    tolerance: float = 0.0
    image: Path | None = None  # looks_like: the reference image
    at: tuple[int, int] = (0, 0)  # looks_like: where the reference's top-left corner lies
    fail_if: str = "match"  # looks_like: "match" or "differ"

    def as_config(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "seconds": self.seconds}
        if self.kind == RULE_LOOKS_LIKE:
            data["image"] = str(self.image)
            data["at"] = list(self.at)
            data["fail_if"] = self.fail_if
        else:
            data["regions"] = [[r.x, r.y, r.width, r.height] for r in self.regions]
        if self.kind == RULE_FROZEN:
            data["mask"] = [[r.x, r.y, r.width, r.height] for r in self.mask]
        data["tolerance"] = self.tolerance
        return data


@dataclass(frozen=True)
class ScreenConfig:
    """What the screen watcher does: how often it looks, the rules, what it keeps."""

    interval: float = 2.0  # seconds between screenshots
    rules: tuple[Rule, ...] = ()
    keep: int = 20  # screenshots that caused a recovery kept on disk
    keep_mib: float = 50.0  # and at most this many MiB of them

    def as_config(self) -> dict[str, Any]:
        """The configuration as plain data (check-config, logs)."""
        return {
            "interval": self.interval,
            "rules": [rule.as_config() for rule in self.rules],
            "keep": self.keep,
            "keep_mib": self.keep_mib,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(
    key: str, value: object, low: float, low_ok: bool, high: float | None, what: str
) -> float:
    """``value`` as a float within its bounds, or a ScreenError that says them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        number = float(value)
        above = number >= low if low_ok else number > low
        if above and (high is None or number <= high):
            return number
    bounds = f"{'>=' if low_ok else '>'} {low:g}"
    if high is not None:
        bounds = f"from {low:g} to {high:g}"
    raise ScreenError(key, value, f"{what} {bounds}")


def _rect(key: str, value: object) -> Rect:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(_is_int(v) for v in value)
        and value[0] >= 0
        and value[1] >= 0
        and value[2] > 0
        and value[3] > 0
    ):
        return Rect(*value)
    raise ScreenError(
        key,
        value,
        "a rectangle [x, y, width, height] in the guest's pixels (whole numbers; x, y >= 0, "
        "width, height > 0)",
    )


def _rects(key: str, value: object) -> tuple[Rect, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ScreenError(key, value, "a list of rectangles [x, y, width, height]")
    return tuple(_rect(f"{key}[{i}]", item) for i, item in enumerate(value))


def _rule(index: int, raw: object, base_dir: Path) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise ScreenError(where, raw, "a mapping with kind and the kind's keys")
    kind = raw.get("kind")
    if kind not in RULE_KINDS:
        raise ScreenError(f"{where}.kind", kind, "one of " + ", ".join(RULE_KINDS))
    for key in raw:
        if key not in _RULE_KEYS:
            raise ScreenError(
                f"{where}.{key}", raw[key], "one of the keys " + ", ".join(_RULE_KEYS)
            )
        if key not in ("kind", "name", *_KIND_KEYS[kind]):
            owners = [k for k in RULE_KINDS if key in _KIND_KEYS[k]]
            raise ScreenError(
                f"{where}.{key}",
                raw[key],
                f"no {key} on a {kind} rule ({key} is for {' and '.join(owners)} rules only)",
            )
    name = raw.get("name", f"{kind}-{index + 1}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ScreenError(
            f"{where}.name",
            name,
            "a name of letters, digits, '.', '_' and '-' (at most 64, starting with a letter "
            "or digit)",
        )
    looks_like = kind == RULE_LOOKS_LIKE
    if "seconds" not in raw and not looks_like:
        raise ScreenError(f"{where}.seconds", None, "a number of seconds > 0")
    seconds = _number(
        f"{where}.seconds", raw.get("seconds", 0.0), 0.0, looks_like, None, "a number of seconds"
    )
    high = 100.0 if looks_like else 255.0
    unit = "a difference in percent" if looks_like else "a per-channel difference (of 255)"
    tolerance = _number(
        f"{where}.tolerance",
        raw.get("tolerance", DEFAULT_TOLERANCE[kind]),
        0.0,
        True,
        high,
        unit,
    )
    if not looks_like:
        return Rule(
            name=name,
            kind=kind,
            seconds=seconds,
            regions=_rects(f"{where}.regions", raw.get("regions")),
            mask=_rects(f"{where}.mask", raw.get("mask")),
            tolerance=tolerance,
        )
    image = raw.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ScreenError(
            f"{where}.image",
            image,
            "the file name of a reference PNG (relative to the config file's folder)",
        )
    at = raw.get("at", [0, 0])
    if not (
        isinstance(at, (list, tuple)) and len(at) == 2 and all(_is_int(v) and v >= 0 for v in at)
    ):
        raise ScreenError(f"{where}.at", at, "a corner [x, y] in the guest's pixels (>= 0)")
    fail_if = raw.get("fail_if", FAIL_IF_CHOICES[0])
    if fail_if not in FAIL_IF_CHOICES:
        raise ScreenError(f"{where}.fail_if", fail_if, "one of " + ", ".join(FAIL_IF_CHOICES))
    return Rule(
        name=name,
        kind=kind,
        seconds=seconds,
        tolerance=tolerance,
        image=base_dir / Path(image).expanduser(),
        at=(at[0], at[1]),
        fail_if=fail_if,
    )


def parse_screen(raw: object, base_dir: Path) -> ScreenConfig:
    """The config's ``screen:`` mapping as a ScreenConfig. Pure: reference images are only
    named here (relative names resolved against ``base_dir``, the config file's folder) and
    read by ``load_references``."""
    if not isinstance(raw, Mapping):
        raise ScreenError("", raw, "a mapping with the keys " + ", ".join(_SCREEN_KEYS))
    for key in raw:
        if key not in _SCREEN_KEYS:
            raise ScreenError(str(key), raw[key], "one of the keys " + ", ".join(_SCREEN_KEYS))
    interval = _number(
        "interval", raw.get("interval", 2.0), 0.0, False, None, "a number of seconds"
    )
    keep = raw.get("keep", 20)
    if not _is_int(keep) or keep < 1:
        raise ScreenError("keep", keep, "a whole number of screenshots >= 1")
    keep_mib = _number("keep_mib", raw.get("keep_mib", 50.0), 0.0, False, None, "a number of MiB")
    items = raw.get("rules")
    if not isinstance(items, list) or not items:
        raise ScreenError(
            "rules",
            items,
            "a non-empty list of rules (mappings with kind: " + ", ".join(RULE_KINDS) + ")",
        )
    rules = [_rule(i, item, base_dir) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ScreenError(
                f"rules[{i}].name",
                rule.name,
                f"a name no other rule has (rules[{seen[rule.name]}] is also called that)",
            )
        seen[rule.name] = i
    return ScreenConfig(interval=interval, rules=tuple(rules), keep=keep, keep_mib=keep_mib)


# ------------------------------------------------------------------ images


class Frame:
    """One decoded screenshot, in RGB."""

    def __init__(self, image: Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        self.image = image
        self.size: tuple[int, int] = image.size


def _open(data: bytes | Path, what: str) -> Image.Image:
    """An RGB image with its pixels loaded, or BadImage naming ``what``."""
    from PIL import Image, UnidentifiedImageError

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as opened:
            opened.load()
            return opened if opened.mode == "RGB" else opened.convert("RGB")
    except UnidentifiedImageError:
        raise BadImage(f"{what} is not a {' or '.join(IMAGE_FORMATS)} image") from None
    except FileNotFoundError:
        raise BadImage(f"{what} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BadImage(f"{what} cannot be read: {reason}") from None


def decode(png: bytes) -> Frame:
    """A screenshot as written by ``virsh screenshot``, decoded; BadImage if it is not a
    PNG (or PPM) or is cut short."""
    return Frame(_open(png, f"the screenshot ({len(png)} bytes)"))


def load_references(config: ScreenConfig) -> dict[str, Image.Image]:
    """The looks_like rules' reference images by rule name, read once at start so a missing
    file is reported then, not at the first screenshot."""
    found = {}
    for rule in config.rules:
        if rule.kind == RULE_LOOKS_LIKE and rule.image is not None:
            found[rule.name] = _open(
                rule.image, f"screen rule {rule.name!r}: the reference image {rule.image}"
            )
    return found


# ------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Verdict:
    """What one rule sees in one frame."""

    rule: str
    kind: str
    holding: bool  # the rule's condition holds in this frame
    since: float | None  # since when it holds, in the caller's clock (None: it does not)
    failing: bool  # it has held for at least the rule's seconds (counted from the last reset)
    detail: str  # in words, for a technician
    held: float = 0.0  # the seconds counted toward the limit (0 when not holding)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "kind": self.kind,
            "holding": self.holding,
            "since": self.since,
            "held_seconds": round(self.held, 3),
            "failing": self.failing,
            "detail": self.detail,
        }


def _clip(rect: Rect, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The part of ``rect`` on a screen of ``size``, as a box; None if there is none."""
    left, top, right, bottom = rect.box()
    right, bottom = min(right, size[0]), min(bottom, size[1])
    if left >= right or top >= bottom:
        return None
    return (left, top, right, bottom)


def _samples(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[tuple[int, int], ...]:
    """Per-channel (lowest, highest) over a 4x4 grid of pixels of ``box``: a lower bound of
    the region's spread for the price of sixteen pixels."""
    left, top, right, bottom = box
    pixels = [
        image.getpixel(
            (left + (right - left) * (2 * i + 1) // 8, top + (bottom - top) * (2 * j + 1) // 8)
        )
        for i in range(4)
        for j in range(4)
    ]
    return tuple((min(channel), max(channel)) for channel in zip(*pixels))


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclass
class _State:
    """A rule's memory between frames: small on purpose (a digest, not a frame, when the
    frozen rule has no tolerance)."""

    since: float | None = None  # uniform, black, looks_like: when the condition began
    changed_at: float | None = None  # frozen: when the current content first appeared
    size: tuple[int, int] | None = None  # frozen: the previous frame's size
    digest: bytes | None = None  # frozen, tolerance 0: a checksum of the watched area
    crops: list[Image.Image] = field(default_factory=list)  # frozen, tolerance > 0


class Judge:
    """Applies the rules to successive frames and remembers, per rule, since when each
    condition holds."""

    def __init__(self, config: ScreenConfig, references: Mapping[str, Image.Image]):
        self.config = config
        self._references = {
            name: image if image.mode == "RGB" else image.convert("RGB")
            for name, image in references.items()
        }
        self._states = {rule.name: _State() for rule in config.rules}
        self._reset_at: float | None = None

    def reset(self, now: float) -> None:
        """The VM was (re)started or enforcement began: every condition counts from ``now``,
        and a frozen rule takes the next frame as its new baseline."""
        self._reset_at = now
        for state in self._states.values():
            state.changed_at, state.size, state.digest, state.crops = None, None, None, []

    def look(self, frame: Frame, now: float) -> list[Verdict]:
        """One verdict per rule, in the config's order."""
        verdicts = []
        for rule in self.config.rules:
            state = self._states[rule.name]
            if rule.kind == RULE_FROZEN:
                verdicts.append(self._frozen(rule, state, frame, now))
            elif rule.kind == RULE_LOOKS_LIKE:
                verdicts.append(self._looks_like(rule, state, frame, now))
            else:
                verdicts.append(self._uniform(rule, state, frame, now))
        return verdicts

    # ------------------------------------------------------------ helpers

    def _verdict(self, rule: Rule, since: float | None, now: float, seen: str) -> Verdict:
        """A verdict from when the condition began (None: it does not hold); ``seen`` is
        what holds, completed with for how long."""
        if since is None:
            return Verdict(rule.name, rule.kind, False, None, False, seen)
        start = since if self._reset_at is None else max(since, self._reset_at)
        held = max(0.0, now - start)
        failing = held >= rule.seconds
        detail = f"{seen} for {held:.1f} s (limit {_seconds(rule.seconds)})"
        return Verdict(rule.name, rule.kind, True, since, failing, detail, held)

    def _outside(self, rule: Rule, size: tuple[int, int]) -> str | None:
        """Words for the first region wholly outside the screen, None if all are on it."""
        for number, rect in enumerate(rule.regions, start=1):
            if _clip(rect, size) is None:
                return f"region {number} ({rect}) outside the {size[0]}x{size[1]} screen"
        return None

    def _boxes(self, rule: Rule, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The watched boxes, clipped to the screen (the whole screen when none are set)."""
        if not rule.regions:
            return [(0, 0, size[0], size[1])]
        return [box for box in (_clip(rect, size) for rect in rule.regions) if box is not None]

    # ------------------------------------------------------------ frozen

    def _watched(self, rule: Rule, frame: Frame) -> list[Image.Image]:
        """The watched areas of a frame, masks painted black, each a small image."""
        crops = []
        hidden = [m for m in (_clip(rect, frame.size) for rect in rule.mask) if m]
        for box in self._boxes(rule, frame.size):
            covering = [
                (max(m[0], box[0]), max(m[1], box[1]), min(m[2], box[2]), min(m[3], box[3]))
                for m in hidden
            ]
            covering = [c for c in covering if c[0] < c[2] and c[1] < c[3]]
            whole = box == (0, 0, *frame.size)
            if whole and not covering:
                crops.append(frame.image)  # read only: no copy needed
                continue
            crop = frame.image.crop(box)
            for c in covering:
                crop.paste((0, 0, 0), (c[0] - box[0], c[1] - box[1], c[2] - box[0], c[3] - box[1]))
            crops.append(crop)
        return crops

    def _frozen(self, rule: Rule, state: _State, frame: Frame, now: float) -> Verdict:
        outside = self._outside(rule, frame.size)
        if outside is not None:
            state.changed_at, state.size, state.digest, state.crops = None, None, None, []
            return self._verdict(rule, None, now, outside)
        crops = self._watched(rule, frame)
        what = "the screen" if not rule.regions else "the watched regions"
        if rule.mask:
            what += " (masks aside)"
        previous_size = state.size
        changed: str | None = None
        if rule.tolerance > 0:
            from PIL import ImageChops

            if previous_size == frame.size and state.crops:
                worst = 0
                for before, after in zip(state.crops, crops):
                    extrema = ImageChops.difference(before, after).getextrema()
                    worst = max(worst, *(high for _, high in extrema))
                if worst > rule.tolerance:
                    changed = (
                        f"{what} changed since the last screenshot (difference up to {worst}, "
                        f"tolerance {rule.tolerance:g})"
                    )
            state.crops = [c.copy() if c is frame.image else c for c in crops]
        else:
            # CRC-32: a change goes unseen only if its checksum collides (one in four
            # billion), and a false "frozen" would need that on every frame of the rule's
            # seconds; a cryptographic digest costs three to six times as much per frame.
            checksum = 0
            for crop in crops:
                checksum = zlib.crc32(crop.tobytes(), checksum)
            digest = checksum.to_bytes(4, "big")
            if previous_size == frame.size and state.digest != digest:
                changed = f"{what} changed since the last screenshot"
            state.digest = digest
        state.size = frame.size
        if previous_size is None:
            state.changed_at = now
            return self._verdict(
                rule, None, now, f"first screenshot to compare with: {what} taken as the baseline"
            )
        if previous_size != frame.size:
            changed = (
                f"the screen changed from {previous_size[0]}x{previous_size[1]} to "
                f"{frame.size[0]}x{frame.size[1]}"
            )
        if changed is not None:
            state.changed_at = now
            return self._verdict(rule, None, now, changed)
        return self._verdict(rule, state.changed_at, now, f"{what} unchanged")

    # ------------------------------------------------------------ uniform and black

    def _uniform(self, rule: Rule, state: _State, frame: Frame, now: float) -> Verdict:
        outside = self._outside(rule, frame.size)
        if outside is not None:
            state.since = None
            return self._verdict(rule, None, now, outside)
        black = rule.kind == RULE_BLACK
        seen = []
        for number, box in enumerate(self._boxes(rule, frame.size), start=1):
            name = (
                f"the screen ({frame.size[0]}x{frame.size[1]})"
                if not rule.regions
                else f"region {number} ({rule.regions[number - 1]})"
            )
            # A few pixels first: on a lively screen they already differ (or one is
            # bright), which settles the rule without reading the whole region.
            samples = _samples(frame.image, box)
            why = self._not_uniform(rule, name, samples, "at least ")
            if why is None:
                image = frame.image if box == (0, 0, *frame.size) else frame.image.crop(box)
                extrema = image.getextrema()
                why = self._not_uniform(rule, name, extrema, "")
            if why is not None:
                state.since = None
                return self._verdict(rule, None, now, why)
            colour = "rgb({},{},{})".format(*((low + high) // 2 for low, high in extrema))
            seen.append(f"{name} is one {'dark ' if black else ''}colour {colour}")
        if state.since is None:
            state.since = now
        return self._verdict(rule, state.since, now, ", ".join(seen))

    def _not_uniform(
        self, rule: Rule, name: str, extrema: tuple[tuple[int, int], ...], bound: str
    ) -> str | None:
        """Why per-channel (lowest, highest) values break a uniform or black rule; None if
        they do not. ``bound`` is "at least " when they come from samples."""
        spread = max(high - low for low, high in extrema)
        if spread > rule.tolerance:
            return (
                f"{name} has several colours (spread {bound}{spread}, tolerance {rule.tolerance:g})"
            )
        brightest = max(high for _, high in extrema)
        if rule.kind == RULE_BLACK and brightest > BLACK_LEVEL:
            return f"{name} is not dark (a channel at {brightest}, black is at most {BLACK_LEVEL})"
        return None

    # ------------------------------------------------------------ looks like

    def _looks_like(self, rule: Rule, state: _State, frame: Frame, now: float) -> Verdict:
        from PIL import ImageChops, ImageStat

        reference = self._references.get(rule.name)
        label = rule.image.name if rule.image is not None else rule.name
        if reference is None:
            state.since = None
            return self._verdict(rule, None, now, f"no reference image loaded for {label}")
        width, height = reference.size
        box = (rule.at[0], rule.at[1], rule.at[0] + width, rule.at[1] + height)
        if box[2] > frame.size[0] or box[3] > frame.size[1]:
            state.since = None
            return self._verdict(
                rule,
                None,
                now,
                f"{label} at ({rule.at[0]},{rule.at[1]}) {width}x{height} is outside the "
                f"{frame.size[0]}x{frame.size[1]} screen",
            )
        area = frame.image.crop(box)
        means = ImageStat.Stat(ImageChops.difference(area, reference)).mean
        percent = sum(means) / len(means) / 255 * 100
        matches = percent <= rule.tolerance
        numbers = f"difference {percent:.1f} % (tolerance {rule.tolerance:g} %)"
        if rule.fail_if == "match":
            holding = matches
            seen = f"{'looks' if matches else 'does not look'} like {label}: {numbers}"
        else:
            holding = not matches
            seen = f"{'looks' if matches else 'no longer looks'} like {label}: {numbers}"
        if not holding:
            state.since = None
            return self._verdict(rule, None, now, seen)
        if state.since is None:
            state.since = now
        return self._verdict(rule, state.since, now, seen)

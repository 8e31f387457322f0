"""Screen liveness rules (screen.py) over images drawn with Pillow, with made-up times.

Pure and fast: no libvirt, no clock. The screens are 720x400, the size of the BIOS text
screen that ``virsh screenshot`` returns for the test guest (../shared/notes/display.md).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from vmcontroller.screen import (
    BLACK_LEVEL,
    BadImage,
    Frame,
    Judge,
    Rect,
    Rule,
    ScreenConfig,
    ScreenError,
    decode,
    load_references,
    parse_screen,
)

SIZE = (720, 400)
BASE = Path("/etc/exhibition-vm-controller")


def screen(colour=(20, 40, 160), size=SIZE, clock: str | None = None, dot: int | None = None):
    """A screen of one colour with a white box (the artwork), an optional clock text in the
    top-right corner and an optional moving dot in the bottom-left."""
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle((100, 100, 300, 250), fill=(255, 255, 255))
    if clock is not None:
        draw.text((620, 10), clock, fill=(255, 255, 0))
    if dot is not None:
        draw.ellipse((10 + dot, 350, 30 + dot, 370), fill=(255, 0, 0))
    return Frame(image)


def judge(*rules: dict, references=None) -> Judge:
    config = parse_screen({"rules": list(rules)}, BASE)
    return Judge(config, references or {})


def verdict(j: Judge, frame: Frame, now: float):
    (only,) = j.look(frame, now)
    return only


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------ frozen


def test_frozen_holds_on_an_unchanged_screen_and_fails_after_its_seconds():
    j = judge({"kind": "frozen", "seconds": 10})
    first = verdict(j, screen(), 100.0)
    assert not first.holding and "baseline" in first.detail
    v = verdict(j, screen(), 102.0)
    assert (v.holding, v.since, v.failing) == (True, 100.0, False)
    assert v.detail == "the screen unchanged for 2.0 s (limit 10 s)"
    v = verdict(j, screen(), 110.0)
    assert (v.holding, v.since, v.failing, v.held) == (True, 100.0, True, 10.0)


def test_frozen_does_not_hold_on_a_moving_screen_and_counts_from_the_last_change():
    j = judge({"kind": "frozen", "seconds": 10})
    for t in range(5):
        v = verdict(j, screen(dot=t * 5), 100.0 + 2 * t)
        assert not v.holding and not v.failing
    assert v.detail == "the screen changed since the last screenshot"
    v = verdict(j, screen(dot=20), 110.0)  # the dot stopped at the frame of 108
    assert (v.holding, v.since, v.failing) == (True, 108.0, False)
    assert verdict(j, screen(dot=20), 118.0).failing


def test_a_mask_over_a_changing_clock_makes_frozen_hold_without_it_it_does_not():
    clock = [0, 0, 720, 400]
    masked = judge(
        {"kind": "frozen", "seconds": 4, "regions": [clock], "mask": [[600, 0, 120, 40]]}
    )
    bare = judge({"kind": "frozen", "seconds": 4, "regions": [clock]})
    for t in range(4):
        frame, now = screen(clock=f"10:0{t}"), 100.0 + 2 * t
        with_mask, without = verdict(masked, frame, now), verdict(bare, frame, now)
        assert not without.holding
    assert with_mask.holding and with_mask.failing and with_mask.since == 100.0
    assert "masks aside" in with_mask.detail


def test_frozen_watches_only_its_regions():
    j = judge({"kind": "frozen", "seconds": 4, "regions": [[100, 100, 200, 150]]})
    for t in range(4):
        v = verdict(j, screen(dot=t * 10), 100.0 + 2 * t)  # the dot is outside the region
    assert v.holding and v.failing
    assert v.detail.startswith("the watched regions unchanged")


def test_frozen_with_a_tolerance_ignores_small_noise_but_not_a_change():
    j = judge({"kind": "frozen", "seconds": 4, "tolerance": 6})
    verdict(j, screen((20, 40, 160)), 100.0)
    assert verdict(j, screen((24, 40, 155)), 102.0).holding  # 5 at most: noise
    v = verdict(j, screen((40, 40, 160)), 104.0)
    assert not v.holding and "difference up to 16, tolerance 6" in v.detail
    v = verdict(j, screen((40, 40, 160)), 106.0)
    assert v.holding and v.since == 104.0


def test_a_change_of_resolution_is_a_change():
    j = judge({"kind": "frozen", "seconds": 4})
    verdict(j, screen(), 100.0)
    assert verdict(j, screen(), 102.0).holding
    v = verdict(j, screen(size=(1024, 768)), 104.0)
    assert not v.holding and v.detail == "the screen changed from 720x400 to 1024x768"
    v = verdict(j, screen(size=(1024, 768)), 106.0)
    assert v.holding and v.since == 104.0


def test_reset_makes_the_next_frame_a_new_baseline_and_counts_from_then():
    j = judge({"kind": "frozen", "seconds": 10})
    verdict(j, screen(), 100.0)
    assert verdict(j, screen(), 109.0).holding
    j.reset(109.5)  # the VM was reverted
    v = verdict(j, screen(), 111.0)
    assert not v.holding and "baseline" in v.detail
    v = verdict(j, screen(), 120.0)
    assert (v.since, v.failing) == (111.0, False)
    assert verdict(j, screen(), 121.0).failing


def test_a_region_outside_the_screen_never_holds_and_one_partly_outside_is_clipped():
    outside = judge({"kind": "frozen", "seconds": 1, "regions": [[0, 0, 10, 10], [800, 0, 50, 50]]})
    for t in range(3):
        v = verdict(outside, screen(), 100.0 + 2 * t)
        assert not v.holding and not v.failing
    assert v.detail == "region 2 (800,0 50x50) outside the 720x400 screen"
    partly = judge({"kind": "black", "seconds": 1, "regions": [[700, 380, 500, 500]]})
    v = verdict(partly, Frame(Image.new("RGB", SIZE)), 100.0)
    assert v.holding and "region 1 (700,380 500x500) is one dark colour rgb(0,0,0)" in v.detail


# ------------------------------------------------------------------ uniform and black


def test_uniform_holds_on_one_colour_within_its_tolerance_and_counts_across_frames():
    j = judge({"kind": "uniform", "seconds": 5})
    blue = Frame(Image.new("RGB", SIZE, (0, 0, 200)))
    v = verdict(j, blue, 100.0)
    assert (v.holding, v.since, v.failing) == (True, 100.0, False)
    assert v.detail == "the screen (720x400) is one colour rgb(0,0,200) for 0.0 s (limit 5 s)"
    noisy = Image.new("RGB", SIZE, (0, 0, 200))
    noisy.paste((6, 0, 194), (0, 0, 10, 10))
    assert verdict(j, Frame(noisy), 103.0).since == 100.0  # a spread of 6 <= 8
    assert verdict(j, blue, 105.0).failing
    v = verdict(j, screen(), 106.0)
    assert not v.holding and not v.failing and v.since is None
    assert "has several colours (spread at least 235, tolerance 8)" in v.detail
    assert verdict(j, blue, 107.0).since == 107.0


def test_uniform_needs_every_region_to_be_one_colour():
    j = judge({"kind": "uniform", "seconds": 1, "regions": [[120, 120, 50, 50], [0, 0, 50, 50]]})
    v = verdict(j, screen(), 100.0)
    assert v.holding
    assert v.detail.startswith(
        "region 1 (120,120 50x50) is one colour rgb(255,255,255), "
        "region 2 (0,0 50x50) is one colour rgb(20,40,160)"
    )
    j = judge(
        {"kind": "uniform", "seconds": 1, "regions": [[120, 120, 50, 50], [250, 200, 100, 100]]}
    )
    v = verdict(j, screen(), 100.0)
    assert not v.holding and v.detail.startswith("region 2 (250,200 100x100) has several colours")


def test_black_holds_on_a_dark_screen_and_not_on_a_bright_uniform_one():
    j = judge({"kind": "black", "seconds": 3})
    dark = Frame(Image.new("RGB", SIZE, (BLACK_LEVEL, 10, 0)))
    assert verdict(j, dark, 100.0).holding
    assert verdict(j, dark, 103.0).failing
    grey = Frame(Image.new("RGB", SIZE, (BLACK_LEVEL + 1, 10, 0)))
    v = verdict(j, grey, 104.0)
    assert not v.holding
    assert v.detail == (
        f"the screen (720x400) is not dark (a channel at {BLACK_LEVEL + 1}, black is at most "
        f"{BLACK_LEVEL})"
    )
    # One bright spot that none of the sampled pixels sees is found all the same.
    spot = Image.new("RGB", SIZE)
    spot.paste((0, 0, 8), (401, 251, 403, 253))
    assert verdict(judge({"kind": "black", "seconds": 3}), Frame(spot), 100.0).holding
    spot.paste((0, 0, 9), (401, 251, 403, 253))
    v = verdict(judge({"kind": "black", "seconds": 3}), Frame(spot), 100.0)
    assert not v.holding and v.detail.endswith("(spread 9, tolerance 8)")
    spot.paste((60, 60, 60), (0, 0, 720, 400))
    spot.paste((0, 0, 0), (0, 0, 1, 1))
    v = verdict(judge({"kind": "uniform", "seconds": 3}), Frame(spot), 100.0)
    assert not v.holding and v.detail.endswith("(spread 60, tolerance 8)")


def test_reset_counts_a_lasting_black_screen_from_the_reset():
    j = judge({"kind": "black", "seconds": 10})
    dark = Frame(Image.new("RGB", SIZE))
    assert verdict(j, dark, 100.0).holding
    j.reset(108.0)
    v = verdict(j, dark, 112.0)
    assert (v.since, v.held, v.failing) == (100.0, 4.0, False)
    assert verdict(j, dark, 118.0).failing


# ------------------------------------------------------------------ looks like


def error_dialog(base: Frame, at=(200, 120)) -> Frame:
    image = base.image.copy()
    draw = ImageDraw.Draw(image)
    x, y = at
    draw.rectangle((x, y, x + 299, y + 119), fill=(192, 192, 192), outline=(0, 0, 0))
    draw.text((x + 20, y + 40), "Flash Player has crashed", fill=(0, 0, 0))
    return Frame(image)


def test_looks_like_matches_an_error_dialog_within_its_tolerance():
    dialog = error_dialog(screen()).image.crop((200, 120, 500, 240))
    rule = {"kind": "looks_like", "name": "crash", "image": "error.png", "at": [200, 120]}
    j = judge(rule, references={"crash": dialog})
    v = verdict(j, screen(), 100.0)
    assert not v.holding and v.detail.startswith("does not look like error.png: difference")
    v = verdict(j, error_dialog(screen()), 102.0)
    assert v.holding and v.failing  # seconds 0: at the first screenshot
    assert v.detail == (
        "looks like error.png: difference 0.0 % (tolerance 3 %) for 0.0 s (limit 0 s)"
    )
    # A slightly different rendering (another background colour around the text) still matches.
    shifted = error_dialog(screen((30, 50, 150)))
    assert verdict(j, shifted, 104.0).holding
    strict = judge({**rule, "tolerance": 0}, references={"crash": dialog.convert("RGBA")})
    noisy = error_dialog(screen()).image
    noisy.paste((200, 192, 192), (210, 130, 260, 140))
    assert not verdict(strict, Frame(noisy), 100.0).holding


def test_looks_like_differ_holds_once_the_artworks_frame_is_gone():
    frame = screen().image.crop((100, 100, 301, 251))
    rule = {"kind": "looks_like", "name": "frame", "image": "frame.png", "at": [100, 100]}
    j = judge({**rule, "fail_if": "differ", "seconds": 4}, references={"frame": frame})
    v = verdict(j, screen(dot=5), 100.0)  # the artwork, its dot moving
    assert not v.holding and v.detail.startswith("looks like frame.png: difference 0.0 %")
    desktop = Frame(Image.new("RGB", SIZE, (0, 120, 120)))
    v = verdict(j, desktop, 102.0)
    assert v.holding and not v.failing and v.detail.startswith("no longer looks like frame.png")
    assert verdict(j, desktop, 106.0).failing


def test_looks_like_outside_the_screen_does_not_hold_whichever_it_fails_on():
    reference = Image.new("RGB", (200, 100))
    for fail_if in ("match", "differ"):
        rule = {"kind": "looks_like", "name": "r", "image": "r.png", "at": [600, 350]}
        j = judge({**rule, "fail_if": fail_if}, references={"r": reference})
        v = verdict(j, Frame(Image.new("RGB", SIZE)), 100.0)
        assert not v.holding
        assert v.detail == "r.png at (600,350) 200x100 is outside the 720x400 screen"


def test_rules_are_judged_in_config_order_and_serialised():
    j = judge(
        {"kind": "black", "seconds": 2, "name": "dark"},
        {"kind": "frozen", "seconds": 2},
    )
    verdicts = j.look(Frame(Image.new("RGB", SIZE)), 100.0)
    assert [v.rule for v in verdicts] == ["dark", "frozen-2"]
    assert verdicts[0].as_json() == {
        "rule": "dark",
        "kind": "black",
        "holding": True,
        "since": 100.0,
        "held_seconds": 0.0,
        "failing": False,
        "detail": "the screen (720x400) is one dark colour rgb(0,0,0) for 0.0 s (limit 2 s)",
    }


# ------------------------------------------------------------------ images


def test_decode_reads_a_png_and_turns_it_into_rgb():
    image = Image.new("RGBA", (64, 32), (1, 2, 3, 128))
    frame = decode(png(image))
    assert frame.size == (64, 32) and frame.image.mode == "RGB"
    assert frame.image.getpixel((5, 5)) == (1, 2, 3)
    ppm = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(ppm, format="PPM")  # older libvirt writes PPM
    assert decode(ppm.getvalue()).image.getpixel((0, 0)) == (9, 9, 9)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "is not a PNG or PPM image"),
        (b"no screens to take screenshot from", "is not a PNG or PPM image"),
        (png(Image.effect_noise((256, 256), 60).convert("RGB"))[:2000], "cannot be read"),
    ],
)
def test_decode_refuses_garbage_and_truncated_data_in_one_line(data, words):
    with pytest.raises(BadImage) as caught:
        decode(data)
    message = str(caught.value)
    assert words in message and "\n" not in message
    assert message.startswith(f"the screenshot ({len(data)} bytes)")


def test_decode_refuses_a_jpeg():
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="JPEG")
    with pytest.raises(BadImage, match="not a PNG or PPM image"):
        decode(out.getvalue())


def test_load_references_reads_each_looks_like_rule_and_names_a_missing_file(tmp_path):
    Image.new("RGBA", (30, 20), (5, 6, 7, 255)).save(tmp_path / "error.png")
    raw = {
        "rules": [
            {"kind": "frozen", "seconds": 30},
            {"kind": "looks_like", "name": "crash", "image": "error.png"},
        ]
    }
    references = load_references(parse_screen(raw, tmp_path))
    assert list(references) == ["crash"]
    assert references["crash"].mode == "RGB" and references["crash"].size == (30, 20)
    raw["rules"][1]["image"] = "gone.png"
    with pytest.raises(BadImage) as caught:
        load_references(parse_screen(raw, tmp_path))
    assert str(caught.value) == (
        f"screen rule 'crash': the reference image {tmp_path / 'gone.png'} does not exist"
    )
    (tmp_path / "notes.png").write_text("not an image")
    raw["rules"][1]["image"] = "notes.png"
    with pytest.raises(BadImage, match=r"^screen rule 'crash': .*notes.png is not a PNG"):
        load_references(parse_screen(raw, tmp_path))


# ------------------------------------------------------------------ the config


def test_parse_screen_fills_defaults_and_resolves_images_against_the_config_folder():
    config = parse_screen(
        {
            "rules": [
                {"kind": "frozen", "seconds": 30, "mask": [[600, 0, 120, 40]]},
                {"kind": "black", "seconds": 20, "regions": [[0, 0, 720, 400]]},
                {"kind": "looks_like", "image": "refs/error.png"},
                {"kind": "looks_like", "name": "art", "image": "/srv/frame.png", "at": [4, 5]},
            ]
        },
        BASE,
    )
    assert (config.interval, config.keep, config.keep_mib) == (2.0, 20, 50.0)
    frozen, black, error, art = config.rules
    assert frozen == Rule("frozen-1", "frozen", 30.0, mask=(Rect(600, 0, 120, 40),))
    assert black == Rule("black-2", "black", 20.0, regions=(Rect(0, 0, 720, 400),), tolerance=8.0)
    assert error == Rule(
        "looks_like-3", "looks_like", 0.0, tolerance=3.0, image=BASE / "refs/error.png"
    )
    assert (art.image, art.at, art.fail_if) == (Path("/srv/frame.png"), (4, 5), "match")
    data = config.as_config()
    assert data["rules"][0] == {
        "name": "frozen-1",
        "kind": "frozen",
        "seconds": 30.0,
        "regions": [],
        "mask": [[600, 0, 120, 40]],
        "tolerance": 0.0,
    }
    assert data["rules"][2] == {
        "name": "looks_like-3",
        "kind": "looks_like",
        "seconds": 0.0,
        "image": str(BASE / "refs/error.png"),
        "at": [0, 0],
        "fail_if": "match",
        "tolerance": 3.0,
    }
    assert parse_screen(data, BASE) == config  # what check-config shows reads back
    assert ScreenConfig().rules == ()


FROZEN = {"kind": "frozen", "seconds": 30}


@pytest.mark.parametrize(
    "raw, message",
    [
        ("yes", "screen='yes' is invalid: expected a mapping with the keys interval, rules"),
        ({"rules": [FROZEN], "intervall": 2}, "screen.intervall=2 is invalid: expected one of"),
        (
            {"rules": [FROZEN], "interval": 0},
            "screen.interval=0 is invalid: expected a number of seconds > 0",
        ),
        ({"rules": [FROZEN], "interval": True}, "screen.interval=True is invalid"),
        ({"rules": [FROZEN], "interval": float("nan")}, "screen.interval=nan is invalid"),
        ({"rules": [FROZEN], "keep": 0}, "screen.keep=0 is invalid: expected a whole number"),
        ({"rules": [FROZEN], "keep": 2.5}, "screen.keep=2.5 is invalid"),
        (
            {"rules": [FROZEN], "keep_mib": -1},
            "screen.keep_mib=-1 is invalid: expected a number of MiB > 0",
        ),
        ({}, "screen.rules=None is invalid: expected a non-empty list of rules"),
        ({"rules": []}, "screen.rules=[] is invalid"),
        ({"rules": ["frozen"]}, "screen.rules[0]='frozen' is invalid: expected a mapping"),
        (
            {"rules": [FROZEN, {"kind": "still"}]},
            "screen.rules[1].kind='still' is invalid: expected one of frozen, uniform, black, looks_like",
        ),
        (
            {"rules": [FROZEN, {**FROZEN, "seconds": -3}]},
            "screen.rules[1].seconds=-3 is invalid: expected a number of seconds > 0",
        ),
        (
            {"rules": [{"kind": "black"}]},
            "screen.rules[0].seconds=None is invalid: expected a number of seconds > 0",
        ),
        (
            {"rules": [{"kind": "uniform", "seconds": "10"}]},
            "screen.rules[0].seconds='10' is invalid",
        ),
        (
            {"rules": [{"kind": "looks_like", "image": "e.png", "seconds": -1}]},
            "screen.rules[0].seconds=-1 is invalid: expected a number of seconds >= 0",
        ),
        (
            {"rules": [{**FROZEN, "colour": 1}]},
            "screen.rules[0].colour=1 is invalid: expected one of the keys kind, name",
        ),
        (
            {"rules": [{"kind": "uniform", "seconds": 5, "mask": [[0, 0, 1, 1]]}]},
            "screen.rules[0].mask=[[0, 0, 1, 1]] is invalid: expected no mask on a uniform rule (mask is for frozen rules only)",
        ),
        (
            {"rules": [{"kind": "looks_like", "image": "e.png", "regions": []}]},
            "screen.rules[0].regions=[] is invalid: expected no regions on a looks_like rule (regions is for frozen and uniform and black rules only)",
        ),
        (
            {"rules": [{**FROZEN, "fail_if": "match"}]},
            "screen.rules[0].fail_if='match' is invalid: expected no fail_if on a frozen rule",
        ),
        (
            {"rules": [{**FROZEN, "regions": [[0, 0, 10, 10], [0, -1, 10, 10]]}]},
            "screen.rules[0].regions[1]=[0, -1, 10, 10] is invalid: expected a rectangle [x, y, width, height]",
        ),
        (
            {"rules": [{**FROZEN, "regions": [[0, 0, 0, 10]]}]},
            "screen.rules[0].regions[0]=[0, 0, 0, 10] is invalid",
        ),
        (
            {"rules": [{**FROZEN, "regions": [[0, 0, 10]]}]},
            "screen.rules[0].regions[0]=[0, 0, 10] is invalid",
        ),
        (
            {"rules": [{**FROZEN, "regions": [[0, 0, 1.5, 10]]}]},
            "screen.rules[0].regions[0]=[0, 0, 1.5, 10] is invalid",
        ),
        (
            {"rules": [{**FROZEN, "regions": [0, 0, 10, 10]}]},
            "screen.rules[0].regions[0]=0 is invalid",
        ),
        (
            {"rules": [{**FROZEN, "mask": "clock"}]},
            "screen.rules[0].mask='clock' is invalid: expected a list of rectangles",
        ),
        (
            {"rules": [{**FROZEN, "tolerance": 256}]},
            "screen.rules[0].tolerance=256 is invalid: expected a per-channel difference (of 255) from 0 to 255",
        ),
        (
            {"rules": [{"kind": "looks_like", "image": "e.png", "tolerance": 101}]},
            "screen.rules[0].tolerance=101 is invalid: expected a difference in percent from 0 to 100",
        ),
        (
            {"rules": [{"kind": "looks_like"}]},
            "screen.rules[0].image=None is invalid: expected the file name of a reference PNG",
        ),
        (
            {"rules": [{"kind": "looks_like", "image": "e.png", "at": [1, -1]}]},
            "screen.rules[0].at=[1, -1] is invalid: expected a corner [x, y]",
        ),
        (
            {"rules": [{"kind": "looks_like", "image": "e.png", "fail_if": "gone"}]},
            "screen.rules[0].fail_if='gone' is invalid: expected one of match, differ",
        ),
        (
            {"rules": [{**FROZEN, "name": "two words"}]},
            "screen.rules[0].name='two words' is invalid: expected a name of letters",
        ),
        (
            {"rules": [{**FROZEN, "name": "frozen-2"}, FROZEN]},
            "screen.rules[1].name='frozen-2' is invalid: expected a name no other rule has (rules[0] is also called that)",
        ),
    ],
)
def test_parse_screen_reports_each_problem_in_one_line_naming_the_nested_key(raw, message):
    with pytest.raises(ScreenError) as caught:
        parse_screen(raw, BASE)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text
    assert isinstance(caught.value, ValueError)
    assert caught.value.key == text.split("=", 1)[0].removeprefix("screen").removeprefix(".")


def test_importing_the_module_does_not_load_pillow():
    """config.py imports parse_screen: a controller without screen rules never pays for
    Pillow."""
    code = "import sys, vmcontroller.screen; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""`vmcontroller screen capture` and `screen test` with a stand-in virsh on PATH that
"takes" a screenshot by copying a PNG the test chose (the real VM: test_screen_real.py).
What each says when something is wrong, in one line, with its exit status."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import yaml
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: autouse)
from PIL import Image

VM = "artwork"


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def virsh(tmp_path, monkeypatch):
    """A virsh whose screenshot copies $SCREEN_SOURCE to --file (or fails: $SCREEN_FAIL)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "virsh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ -n "$SCREEN_FAIL" ]; then echo "error: $SCREEN_FAIL" >&2; exit 1; fi\n'
        'while [ $# -gt 0 ]; do [ "$1" = --file ] && cp "$SCREEN_SOURCE" "$2"; shift; done\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    source = tmp_path / "screen-now.png"
    source.write_bytes(png((0, 0, 0)))
    monkeypatch.setenv("SCREEN_SOURCE", str(source))
    return source


def config(tmp_path: Path, screen: dict | None = None) -> str:
    path = tmp_path / "config.yaml"
    data: dict = {"vm_name": VM}
    if screen is not None:
        data["screen"] = screen
    path.write_text(yaml.safe_dump(data))
    return str(path)


BLACK = {"interval": 0.1, "rules": [{"name": "blank", "kind": "black", "seconds": 0.2}]}


def test_capture_saves_the_screen_under_a_default_name(virsh, tmp_path):
    done = invoke("screen", "capture", "--config", config(tmp_path))
    assert done.exit_code == 0, shown(done)
    [saved] = Path.cwd().glob(f"{VM}-*.png")
    assert saved.read_bytes() == virsh.read_bytes()
    assert f"saved {saved.name}: 64x48 pixels" in done.stdout


@pytest.mark.parametrize(
    "fail, source, output, says",
    [
        ("failed to get domain 'artwork'", None, None, "cannot take the screen of VM 'artwork'"),
        ("", b"not a png", None, "libvirt's screenshot is not an image"),
        ("", None, "missing/dir/shot.png", "cannot write missing/dir/shot.png"),
    ],
    ids=["virsh fails", "not an image", "cannot write"],
)
def test_capture_says_what_went_wrong(virsh, tmp_path, monkeypatch, fail, source, output, says):
    monkeypatch.setenv("SCREEN_FAIL", fail)
    if source is not None:
        virsh.write_bytes(source)
    args = ["screen", "capture", "--config", config(tmp_path)]
    done = invoke(*args, *(["-o", output] if output else []))
    assert done.exit_code == 1, shown(done)
    assert says in done.stderr and done.stderr.count("\n") == 1


def test_test_watches_the_live_screen_for_the_longest_rule_and_says_it_would_revert(
    virsh, tmp_path
):
    done = invoke("screen", "test", "--config", config(tmp_path, BLACK))
    assert done.exit_code == 1, shown(done)
    assert done.stdout.count("after ") >= 3  # 0.2 s + one interval of 0.1 s
    assert "blank (black): FAILS" in done.stdout
    assert done.stdout.rstrip().endswith("would revert: rule blank")


def test_test_on_saved_images_passes_when_no_rule_fails(virsh, tmp_path):
    shot = tmp_path / "lit.png"
    shot.write_bytes(png((250, 250, 250)))
    done = invoke("screen", "test", "--config", config(tmp_path, BLACK), "--image", str(shot))
    assert done.exit_code == 0, shown(done)
    assert "blank (black): ok" in done.stdout and "no rule fails: no revert" in done.stdout


@pytest.mark.parametrize(
    "rules_text, image, says",
    [
        (None, None, "no screen: section in the configuration"),
        ("missing", None, "cannot read"),
        ("screen: [unclosed", None, "is not YAML"),
        ("screen: {rules: [{kind: melted, seconds: 1}]}", None, "screen.rules[0].kind"),
        ("screen: {rules: [{kind: black, seconds: 1}]}", "garbage", "rules.png: "),
        ("screen: {rules: [{kind: black, seconds: 1}]}", "missing", "cannot read"),
    ],
    ids=["no rules", "no file", "not yaml", "bad rule", "bad image", "no image"],
)
def test_test_says_what_is_wrong_with_its_input(virsh, tmp_path, rules_text, image, says):
    args = ["screen", "test", "--config", config(tmp_path)]
    if rules_text is not None:
        rules = tmp_path / "rules.yaml"
        if rules_text != "missing":
            rules.write_text(rules_text)
        args.append(str(rules))
    if image is not None:
        picture = tmp_path / "rules.png"
        if image == "garbage":
            picture.write_bytes(b"garbage")
        args += ["--image", str(picture)]
    done = invoke(*args)
    assert done.exit_code == 2, shown(done)
    assert says in done.stderr and done.stderr.count("\n") == 1


def test_test_of_a_live_screen_that_is_not_an_image_fails(virsh, tmp_path):
    virsh.write_bytes(b"garbage")
    done = invoke("screen", "test", "--config", config(tmp_path, BLACK), "--watch", "0")
    assert done.exit_code == 1, shown(done)
    assert "libvirt's screenshot is not an image" in done.stderr

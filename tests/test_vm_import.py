"""`vmcontroller vm import`: from an artist's disk image to a libvirt domain.

The profile and template logic is tested as pure functions; the import itself
against the machine's real libvirt and qemu-img, with the project's test guest's
disk converted to raw and vmdk by the test. Every domain is a vmctl-test-* one,
removed afterwards; every disk goes to a temporary images folder.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_invoke import invoke, shown
from libvirt_env import PREFIX, free_port, virsh, wait_until

from vmcontroller import virsh as virsh_module
from vmcontroller import vmimport
from vmcontroller.virsh import ImageInfo, VirshError

REPO = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO / "etc" / "vm-profiles"

#: What each shipped profile must give its guest: disk bus, NIC model, video, sound, machine.
HARDWARE = {
    "winxp": ("ide", "rtl8139", "cirrus", "ac97", "pc"),
    "win2000": ("ide", "rtl8139", "cirrus", "sb16", "pc"),
    "win98": ("ide", "pcnet", "cirrus", "sb16", "pc"),
    "win7": ("sata", "e1000", "vga", "ich6", "q35"),
    "linux": ("virtio", "virtio", "vga", "ac97", "pc"),
}


def spec(**kwargs) -> vmimport.DomainSpec:
    return vmimport.DomainSpec(**{"name": "artwork", "disk": Path("/images/a.qcow2"), **kwargs})


def fill(profile: str, **kwargs) -> ET.Element:
    template = vmimport.load_template(PROFILES_DIR / f"{profile}.xml")
    return vmimport.fill_template(template, spec(**kwargs))


# ---------------------------------------------------------------- profiles, without libvirt


def test_the_shipped_profiles_are_the_documented_ones():
    assert sorted(vmimport.find_profiles([PROFILES_DIR])) == sorted(HARDWARE)
    readme = (REPO / "README.rst").read_text()
    for profile in HARDWARE:
        assert f"``{profile}``" in readme, profile


@pytest.mark.parametrize("profile", sorted(HARDWARE))
def test_each_profile_gives_its_guest_the_hardware_it_has_drivers_for(profile):
    bus, nic, video, sound, machine = HARDWARE[profile]
    domain = fill(profile)
    assert domain.get("type") == "qemu"
    assert domain.findtext("name") == "artwork"
    assert domain.find("uuid") is None
    disks = domain.findall("devices/disk[@device='disk']")
    assert len(disks) == 1
    assert disks[0].find("target").get("bus") == bus
    assert disks[0].find("source").attrib == {"file": "/images/a.qcow2"}
    assert disks[0].find("driver").get("type") == "qcow2"
    assert domain.find("devices/interface").get("type") == "user"
    assert domain.find("devices/interface/model").get("type") == nic
    assert domain.find("devices/input[@type='tablet']").get("bus") == "usb"
    assert domain.find("devices/video/model").get("type") == video
    assert domain.find("devices/sound").get("model") == sound
    assert domain.find("os/type").get("machine") == machine
    for graphics in domain.findall("devices/graphics"):
        assert graphics.get("listen") == "127.0.0.1"


def test_the_default_network_kvm_memory_and_a_kernel_are_set_in_the_xml():
    domain = fill(
        "linux",
        network="default",
        domain_type="kvm",
        memory_mib=128,
        kernel="/k/vmlinuz",
        initrd="/k/initrd.gz",
        cmdline="console=ttyS0",
    )
    interface = domain.find("devices/interface")
    assert interface.get("type") == "network"
    assert interface.find("source").attrib == {"network": "default"}
    assert interface.find("model").get("type") == "virtio"  # the template's model stays
    assert domain.get("type") == "kvm"
    assert domain.find("memory").attrib == {"unit": "MiB"} and domain.findtext("memory") == "128"
    assert domain.findtext("currentMemory") == "128"
    assert [domain.findtext(f"os/{t}") for t in ("kernel", "initrd", "cmdline")] == [
        "/k/vmlinuz",
        "/k/initrd.gz",
        "console=ttyS0",
    ]


def test_a_template_listening_beyond_the_loopback_is_brought_back_to_it():
    template = ET.fromstring(
        "<domain><name>x</name><os><type>hvm</type></os><devices>"
        "<disk device='disk'><target dev='hda' bus='ide'/></disk>"
        "<interface type='network'><source network='lan'/><model type='e1000'/></interface>"
        "<graphics type='spice' listen='0.0.0.0'><listen type='network' network='lan'/></graphics>"
        "<video><model type='qxl'/></video></devices></domain>"
    )
    domain = vmimport.fill_template(template, spec())
    graphics = domain.find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.1"
    assert graphics.find("listen").attrib == {"type": "address", "address": "127.0.0.1"}
    assert domain.find("devices/interface").get("type") == "user"
    assert domain.find("devices/interface/source") is None
    assert template.find("devices/graphics").get("listen") == "0.0.0.0"  # a copy was filled


@pytest.mark.parametrize(
    "devices, complaint",
    [
        ("<interface type='user'/><graphics type='vnc'/><video/>", "exactly one <disk"),
        (
            "<disk device='disk'/><disk device='disk'/><interface type='user'/>"
            "<graphics type='vnc'/><video/>",
            "exactly one <disk",
        ),
        ("<disk device='disk'/><graphics type='vnc'/><video/>", "exactly one <interface>"),
        ("<disk device='disk'/><interface type='user'/><graphics type='vnc'/>", "needs a <graph"),
        ("<disk device='disk'/><interface type='user'/><video/>", "needs a <graphics>"),
    ],
)
def test_a_template_without_one_disk_one_nic_or_a_screen_is_refused(devices, complaint):
    template = ET.fromstring(f"<domain><os/><devices>{devices}</devices></domain>")
    with pytest.raises(vmimport.ImportRefused, match=complaint):
        vmimport.fill_template(template, spec())


def test_an_unknown_profile_names_the_known_ones():
    with pytest.raises(vmimport.ImportRefused) as info:
        vmimport.template_for("win95", [PROFILES_DIR])
    assert "unknown profile 'win95'" in str(info.value)
    assert "linux, win2000, win7, win98, winxp" in str(info.value)


def test_an_earlier_folder_overrides_the_checkouts_template(tmp_path):
    (tmp_path / "winxp.xml").write_text("<domain/>")
    (tmp_path / "dos.xml").write_text("<domain/>")
    found = vmimport.find_profiles([tmp_path, PROFILES_DIR, tmp_path / "missing"])
    assert found["winxp"] == tmp_path / "winxp.xml"
    assert found["dos"] == tmp_path / "dos.xml"
    assert found["win7"] == PROFILES_DIR / "win7.xml"


def test_formats_an_import_takes_and_refuses():
    def info(fmt: str) -> ImageInfo:
        return ImageInfo(fmt, 1 << 20, None, None)

    for fmt in ("raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"):
        assert vmimport.check_format(Path("disk.img"), info(fmt)) == fmt
    with pytest.raises(vmimport.ImportRefused, match="'dmg' image, which vm import does not take"):
        vmimport.check_format(Path("disk.dmg"), info("dmg"))
    # A .vmdk that qemu-img reads as raw has lost its header: refused, not imported as raw.
    with pytest.raises(vmimport.ImportRefused, match="named .VMDK but qemu-img finds no vmdk"):
        vmimport.check_format(Path("disk.VMDK"), info("raw"))
    assert vmimport.check_format(Path("disk.dd"), info("raw")) == "raw"


def test_kvm_is_chosen_only_when_libvirt_can_use_it():
    assert vmimport.choose_domain_type("auto", {"qemu", "kvm"}) == "kvm"
    assert vmimport.choose_domain_type("auto", {"qemu"}) == "qemu"
    assert vmimport.choose_domain_type("qemu", {"qemu", "kvm"}) == "qemu"
    with pytest.raises(vmimport.ImportRefused, match="cannot run domain type 'kvm'"):
        vmimport.choose_domain_type("kvm", {"qemu"})


def test_the_virsh_module_parses_qemu_img_and_capabilities():
    info = virsh_module.parse_image_info(
        '{"virtual-size": 16777216, "filename": "d.vmdk", "format": "vmdk", "actual-size": 4096}'
    )
    assert info == ImageInfo("vmdk", 16777216, 4096, None)
    with pytest.raises(virsh_module.QemuImgError):
        virsh_module.parse_image_info("not json")
    assert virsh_module.parse_progress(b"    (0.00/100%)\r    (42.50/100%)\r") == 42.5
    assert virsh_module.parse_progress(b"") is None
    caps = (
        "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>"
        "<domain type='qemu'/><domain type='kvm'/></arch></guest>"
        "<guest><os_type>hvm</os_type><arch name='i686'><domain type='xen'/></arch></guest>"
        "</capabilities>"
    )
    assert virsh_module.parse_virt_types(caps) == {"qemu", "kvm"}


class FakeRunner:
    """Records the virsh calls of an import; fails the one it is told to."""

    def __init__(self, fail: str | None = None, exists: bool = False):
        self.fail = fail
        self.exists = exists
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail:
            raise VirshError(f"{name} failed on purpose")

    def domain_exists(self, domain: str) -> bool:
        self._call("domain_exists")
        return self.exists

    def define(self, xml: str) -> None:
        self._call("define")

    def autostart(self, domain: str) -> None:
        self._call("autostart")

    def undefine(self, domain: str) -> None:
        self._call("undefine")

    def virt_types(self, arch: str = "x86_64") -> set[str]:
        return {"qemu"}


def fake_import(
    tmp_path: Path, runner: FakeRunner, convert=None, on_note=None
) -> vmimport.Imported:
    image = tmp_path / "source.img"
    image.write_bytes(b"\0" * 510 + b"\x55\xaa")

    def fake_convert(source, fmt, target, on_progress):
        Path(target).write_bytes(b"converted")
        on_progress(100.0)

    request = vmimport.ImportRequest(
        image=image,
        name="artwork",
        profile="winxp",
        images_dir=tmp_path,
        template_dirs=[PROFILES_DIR],
    )
    return vmimport.import_image(
        request,
        runner,
        on_progress=lambda p: None,
        inspect=lambda path: ImageInfo("raw", 512, 512, None),
        convert=convert or fake_convert,
        **({"on_note": on_note} if on_note else {}),
    )


@pytest.mark.parametrize(
    "fail, undone",
    [
        ("define", ["domain_exists", "define"]),
        ("autostart", ["domain_exists", "define", "autostart", "undefine"]),
    ],
)
def test_a_failing_step_undoes_the_earlier_ones(tmp_path, fail, undone):
    runner = FakeRunner(fail=fail)
    with pytest.raises(VirshError, match="failed on purpose"):
        fake_import(tmp_path, runner)
    assert runner.calls == undone
    assert not (tmp_path / "artwork.qcow2").exists()


def test_an_interrupted_conversion_leaves_no_file(tmp_path):
    def interrupted(source, fmt, target, on_progress):
        Path(target).write_bytes(b"half")
        raise KeyboardInterrupt

    runner = FakeRunner()
    with pytest.raises(KeyboardInterrupt):
        fake_import(tmp_path, runner, interrupted)
    assert runner.calls == ["domain_exists"]
    assert not (tmp_path / "artwork.qcow2").exists()


def test_an_existing_domain_is_refused_before_anything_is_converted(tmp_path):
    runner = FakeRunner(exists=True)
    with pytest.raises(vmimport.ImportRefused, match="a domain named 'artwork' exists"):
        fake_import(tmp_path, runner, convert=lambda *a: pytest.fail("converted"))
    assert not (tmp_path / "artwork.qcow2").exists()


def test_an_undefine_that_fails_while_undoing_is_said_and_the_first_error_kept(tmp_path):
    """The user learns that a domain may be left over, and why the import failed first."""
    runner = FakeRunner(fail="autostart")
    runner.undefine = lambda domain: (_ for _ in ()).throw(VirshError("libvirtd went away"))
    notes: list[str] = []
    with pytest.raises(VirshError, match="autostart failed on purpose"):
        fake_import(tmp_path, runner, on_note=notes.append)
    assert notes == ["could not undefine 'artwork' again: libvirtd went away"]
    assert not (tmp_path / "artwork.qcow2").exists()


def test_an_unknown_network_or_domain_type_is_refused_before_anything_is_done(tmp_path):
    """The CLI offers only the known ones; the module refuses others itself, naming the known."""
    with pytest.raises(
        vmimport.ImportRefused, match=r"unknown network 'bridge' \(known: user, default\)"
    ):
        vmimport.fill_template(
            vmimport.load_template(PROFILES_DIR / "winxp.xml"), spec(network="bridge")
        )
    runner = FakeRunner()
    request = vmimport.ImportRequest(
        image=tmp_path / "a.img",
        name="artwork",
        profile="winxp",
        images_dir=tmp_path,
        domain_type="xen",
        template_dirs=[PROFILES_DIR],
    )
    with pytest.raises(
        vmimport.ImportRefused, match=r"unknown domain type 'xen' \(known: auto, kvm, qemu\)"
    ):
        vmimport.import_image(request, runner)
    assert runner.calls == [] and list(tmp_path.iterdir()) == []


def test_a_uuid_in_a_template_is_dropped_so_that_each_import_gets_its_own():
    """A template made from `virsh dumpxml` carries that domain's uuid: libvirt would
    redefine that domain instead of defining a new one."""
    template = vmimport.load_template(PROFILES_DIR / "winxp.xml")
    ET.SubElement(template, "uuid").text = "0d4c0f5e-1b59-4c39-a3a4-6c1f0e1a2b3c"
    domain = vmimport.fill_template(template, spec())
    assert domain.find("uuid") is None
    assert template.find("uuid") is not None  # the template itself is left as it was


def test_a_raw_image_named_the_qemu_img_way_is_imported_without_a_false_warning(tmp_path):
    """qemu-img takes 'file:PATH'; the first sector cannot be read as a path then, and
    what cannot be read must not be reported as a disk without a partition table."""
    image = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1M"], check=True)
    with image.open("r+b") as f:
        f.seek(510)
        f.write(b"\x55\xaa")
    images = tmp_path / "images"
    images.mkdir()
    notes: list[str] = []
    request = vmimport.ImportRequest(
        image=Path(f"file:{image}"),
        name="artwork",
        profile="winxp",
        images_dir=images,
        template_dirs=[PROFILES_DIR],
    )
    done = vmimport.import_image(request, FakeRunner(), on_note=notes.append)
    assert notes == []
    assert done.source_format == "raw"
    assert vmimport.virsh.image_info(str(images / "artwork.qcow2")).format == "qcow2"


def cli_refused(result, message: str) -> None:
    assert result.exit_code == 2, shown(result)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[-1], result.stderr
    assert "Traceback" not in shown(result)


def test_a_template_that_is_missing_malformed_or_no_domain_is_refused_with_its_path(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(b"\0" * 1024)
    images = tmp_path / "images"
    images.mkdir()
    malformed = tmp_path / "malformed.xml"
    malformed.write_text("<domain><devices></domain>")
    network = tmp_path / "network.xml"
    network.write_text("<network><name>lan</name></network>")
    for template, message in [
        (
            tmp_path / "missing.xml",
            f"cannot read template {tmp_path / 'missing.xml'}: No such file",
        ),
        (malformed, f"template {malformed} is not well-formed XML: mismatched tag"),
        (network, f"template {network} is not a libvirt <domain> (root <network>)"),
    ]:
        result = vm_import(image, "artwork", images, "--template", str(template))
        cli_refused(result, message)
    assert list(images.iterdir()) == []


def test_an_import_without_profile_or_template_is_a_usage_error(tmp_path):
    result = vm_import(tmp_path / "a.img", "artwork", tmp_path)
    assert result.exit_code == 2, shown(result)
    assert "give --profile (or --template)" in result.stderr


def test_a_missing_images_folder_is_refused_not_created(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(b"\0" * 1024)
    missing = tmp_path / "no-such-folder"
    result = vm_import(image, "artwork", missing, "--profile", "winxp")
    cli_refused(result, f"images folder {missing} does not exist")
    assert not missing.exists()


# ---------------------------------------------------------------- real libvirt and qemu-img


@pytest.fixture
def names(libvirt) -> Iterator[list[str]]:
    """vmctl-test-* names for imports; whatever got defined under them is removed after."""
    made: list[str] = []
    yield made
    for name in made:
        virsh("destroy", "--domain", name, check=False)
        virsh("undefine", "--domain", name, "--snapshots-metadata", "--managed-save", check=False)


def new_name(names: list[str], label: str) -> str:
    name = f"{PREFIX}import-{label}-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


@pytest.fixture(scope="module")
def guest_disk(tmp_path_factory) -> Path:
    """The test guest's disk, as GuestDomain makes it: an empty 16 MiB qcow2."""
    path = tmp_path_factory.mktemp("guest") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def artist_image(guest_disk: Path, folder: Path, fmt: str) -> Path:
    """The guest's disk as the artist brings it: a dd (raw) or a VMware disk."""
    path = folder / f"artwork.{'img' if fmt == 'raw' else fmt}"
    subprocess.run(["qemu-img", "convert", "-q", "-O", fmt, str(guest_disk), str(path)], check=True)
    return path


def vm_import(image: Path, name: str, images: Path, *options: str):
    return invoke("vm", "import", str(image), "--name", name, "--images-dir", str(images), *options)


def defined(name: str) -> bool:
    return name in virsh("list", "--all", "--name").split()


def assert_nothing_left(name: str, images: Path, before: set[Path]) -> None:
    assert not defined(name)
    assert set(images.iterdir()) == before


@pytest.mark.parametrize(
    "fmt, profile", [("raw", "winxp"), ("vmdk", "win98"), ("raw", "win2000"), ("vmdk", "win7")]
)
def test_an_image_is_imported_as_a_domain_with_the_profiles_hardware(
    names, guest_disk, tmp_path, fmt, profile
):
    image = artist_image(guest_disk, tmp_path, fmt)
    images = tmp_path / "images"
    images.mkdir()
    name = new_name(names, profile)
    result = vm_import(image, name, images, "--profile", profile, "--domain-type", "qemu")
    assert result.exit_code == 0, shown(result)
    # The user sees the conversion's progress, what was made and what to do next.
    assert f"converting {image.name}: 100 %" in result.stderr
    assert f"Imported {name}: {fmt} image converted to {images / name}.qcow2" in result.stdout
    assert "Next:" in result.stdout and f"vm_name: {name}" in result.stdout
    assert "vmcontroller ready" in result.stdout
    if fmt == "raw":  # the empty test disk has no partition table: said, not refused
        assert "no partition table" in result.stderr

    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(images / f"{name}.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"format": "qcow2"' in info and '"virtual-size": 16777216' in info

    bus, nic, video, sound, _ = HARDWARE[profile]
    domain = ET.fromstring(virsh("dumpxml", "--domain", name, "--inactive"))
    assert domain.get("type") == "qemu"
    (disk,) = domain.findall("devices/disk[@device='disk']")
    assert disk.find("target").get("bus") == bus
    assert disk.find("source").get("file") == str(images / f"{name}.qcow2")
    assert domain.find("devices/interface").get("type") == "user"
    assert domain.find("devices/interface/model").get("type") == nic
    assert domain.find("devices/input[@type='tablet']").get("bus") == "usb"
    assert domain.find("devices/video/model").get("type") == video
    assert domain.find("devices/sound").get("model") == sound
    assert domain.find("devices/graphics").get("listen") == "127.0.0.1"
    # The sound reaches the gallery screen's viewer through SPICE (VNC carries none).
    assert domain.find("devices/graphics").get("type") == "spice"
    audio = domain.find("devices/sound/audio").get("id")
    assert domain.find(f"devices/audio[@id='{audio}']").get("type") == "spice"
    assert "Autostart:      enable" in virsh("dominfo", "--domain", name)
    # QEMU takes this hardware: the domain starts (no OS on the disk: the BIOS idles).
    virsh("start", "--domain", name)
    assert virsh("domstate", "--domain", name).strip() == "running"
    virsh("destroy", "--domain", name)


class Heartbeats(ThreadingHTTPServer):
    """The controller as the guest sees it at 10.0.2.2:PORT: counts heartbeats."""

    def __init__(self, port: int):
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/api/v1/heartbeat"):
                    outer.count += 1
                body = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


def test_an_imported_linux_guest_starts_and_heartbeats(names, guest_build, guest_disk, tmp_path):
    """The test guest boots from kernel and initrd, not from its disk: passed through."""
    image = artist_image(guest_disk, tmp_path, "vmdk")
    images = tmp_path / "images"
    images.mkdir()
    port = free_port()
    server = Heartbeats(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        name = new_name(names, "linux")
        result = vm_import(
            image,
            name,
            images,
            "--profile",
            "linux",
            "--domain-type",
            "qemu",
            "--memory",
            "128",
            "--kernel",
            str(guest_build.path / "vmlinuz"),
            "--initrd",
            str(guest_build.path / "initrd.gz"),
            "--cmdline",
            f"console=ttyS0 quiet ipv6.disable=1 hb_url=http://10.0.2.2:{port} hb_interval=1",
        )
        assert result.exit_code == 0, shown(result)
        assert "http://10.0.2.2:8000" in result.stdout
        virsh("start", "--domain", name)
        wait_until(lambda: server.count >= 2, 120, message="two heartbeats from the guest")
    finally:
        server.shutdown()
        server.server_close()


def test_refusals_say_why_in_one_line_and_leave_nothing(names, guest_disk, tmp_path):
    image = artist_image(guest_disk, tmp_path, "vmdk")
    images = tmp_path / "images"
    images.mkdir()
    name = new_name(names, "refused")
    first = vm_import(image, name, images, "--profile", "winxp", "--domain-type", "qemu")
    assert first.exit_code == 0, shown(first)
    before = set(images.iterdir())

    def refused(result, message: str, status: int = 2) -> None:
        assert result.exit_code == status, shown(result)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in shown(result)

    # The name exists as a domain (its disk elsewhere): refused before converting.
    other = tmp_path / "other"
    other.mkdir()
    refused(
        vm_import(image, name, other, "--profile", "winxp", "--domain-type", "qemu"),
        f"a domain named '{name}' exists",
    )
    assert list(other.iterdir()) == []

    # The target file exists: refused, the file untouched.
    second = new_name(names, "target")
    taken = images / f"{second}.qcow2"
    taken.write_bytes(b"somebody's disk")
    before.add(taken)
    refused(
        vm_import(image, second, images, "--profile", "winxp"),
        f"{taken} exists",
    )
    assert taken.read_bytes() == b"somebody's disk"
    assert_nothing_left(second, images, before)

    # Unreadable images: missing, a damaged vmdk, a vmdk whose data file is gone.
    third = new_name(names, "unreadable")
    refused(
        vm_import(tmp_path / "missing.vmdk", third, images, "--profile", "winxp"),
        f"cannot read image {tmp_path / 'missing.vmdk'}",
    )
    damaged = tmp_path / "damaged.vmdk"
    damaged.write_bytes(b"\0" * 4096)
    refused(
        vm_import(damaged, third, images, "--profile", "winxp"),
        "named .vmdk but qemu-img finds no vmdk header",
    )
    descriptor = tmp_path / "split.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat"]
        + [str(descriptor), "1M"],
        check=True,
    )
    (tmp_path / "split-flat.vmdk").unlink()
    refused(
        vm_import(descriptor, third, images, "--profile", "winxp"),
        f"cannot read image {descriptor}",
    )

    # An invalid name, an unknown profile.
    refused(
        vm_import(image, "-rf", images, "--profile", "winxp"),
        "--name must start with an ASCII letter or digit",
    )
    refused(vm_import(image, third, images, "--profile", "amiga"), "unknown profile 'amiga'")
    assert_nothing_left(third, images, before)


def test_a_failing_define_leaves_no_disk_and_no_domain(names, guest_disk, tmp_path):
    """libvirt refuses the template's hardware at define time: exit 1, libvirt's message,
    the converted qcow2 removed, no domain."""
    image = artist_image(guest_disk, tmp_path, "raw")
    images = tmp_path / "images"
    images.mkdir()
    template = tmp_path / "broken.xml"
    template.write_text(
        (PROFILES_DIR / "winxp.xml").read_text().replace("model='ac97'", "model='gravis'")
    )
    name = new_name(names, "define")
    result = vm_import(image, name, images, "--template", str(template), "--domain-type", "qemu")
    assert result.exit_code == 1, shown(result)
    assert "import failed, nothing kept:" in result.stderr
    assert "gravis" in result.stderr
    assert "Traceback" not in shown(result)
    assert "converting artwork.img: 100 %" in result.stderr  # it got as far as defining
    assert_nothing_left(name, images, set())


def test_print_xml_shows_the_domain_and_does_nothing(names, guest_disk, tmp_path):
    image = artist_image(guest_disk, tmp_path, "vmdk")
    name = new_name(names, "print")
    result = vm_import(
        image, name, tmp_path, "--profile", "win7", "--domain-type", "qemu", "--print-xml"
    )
    assert result.exit_code == 0, shown(result)
    domain = ET.fromstring(result.stdout)
    assert domain.findtext("name") == name
    assert domain.find("devices/disk/source").get("file") == str(tmp_path / f"{name}.qcow2")
    assert not defined(name)
    assert not (tmp_path / f"{name}.qcow2").exists()


def test_print_xml_with_the_automatic_type_shows_what_libvirt_can_run(names, guest_disk, tmp_path):
    name = new_name(names, "auto")
    result = vm_import(guest_disk, name, tmp_path, "--profile", "linux", "--print-xml")
    assert result.exit_code == 0, shown(result)
    kvm = "<domain type='kvm'" in virsh("capabilities")
    assert ET.fromstring(result.stdout).get("type") == ("kvm" if kvm else "qemu")
    assert not defined(name) and list(tmp_path.iterdir()) == []


def test_a_disk_name_taken_by_a_dangling_link_is_refused_and_the_link_kept(
    names, guest_disk, tmp_path
):
    """A symbolic link to nowhere does not exist for a path check, but the claim of the
    name must not follow it: that would create (then convert into) the file it points to."""
    images = tmp_path / "images"
    images.mkdir()
    name = new_name(names, "link")
    link = images / f"{name}.qcow2"
    pointed = tmp_path / "elsewhere.qcow2"
    link.symlink_to(pointed)
    result = vm_import(guest_disk, name, images, "--profile", "linux", "--domain-type", "qemu")
    cli_refused(result, f"{link} exists: choose another --name or remove it")
    assert link.is_symlink() and not pointed.exists()
    assert not defined(name)


def test_an_images_folder_that_cannot_be_written_is_refused_with_the_reason(names, guest_disk):
    """/sys/kernel refuses new files even to root (the tests may run as root, for whom
    permission bits are no obstacle)."""
    name = new_name(names, "unwritable")
    result = vm_import(
        guest_disk, name, Path("/sys/kernel"), "--profile", "linux", "--domain-type", "qemu"
    )
    cli_refused(result, f"cannot write to /sys/kernel/{name}.qcow2: Permission denied")
    assert not defined(name)


def test_progress_on_a_terminal_is_one_line_rewritten_in_place(monkeypatch):
    """On a terminal the percentage overwrites itself, and the line is ended once."""
    import os
    import pty
    import sys

    from vmcontroller.cli import _Progress

    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        progress = _Progress("artwork.vmdk")
        for percent in (0.0, 42.5, 100.0):
            progress(percent)
        progress.end()
        progress.end()  # a second end (the failure path's, then the normal one) adds nothing
        terminal.flush()
    chunks = []
    while True:  # until the closed terminal's end (EIO on Linux)
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    shown_text = b"".join(chunks).decode()
    assert shown_text.replace("\r\n", "\n") == (
        "\rconverting artwork.vmdk:   0.0 %"
        "\rconverting artwork.vmdk:  42.5 %"
        "\rconverting artwork.vmdk: 100.0 %\n"
    )

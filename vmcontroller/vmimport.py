"""From an artist's disk image to a libvirt domain: profiles, templates and the import's steps.

A conservator arrives with a VirtualBox, VMware or dd image of an old PC. The
hardware the guest can run on is a matter of the drivers its Windows or Linux
has, so it lives in a domain template per profile (etc/vm-profiles/*.xml) that
a person can read and adjust, not in code. This module finds the template,
fills in what belongs to this one import (name, disk, network, domain type) by
setting elements of the parsed XML, and runs the steps in an order that leaves
nothing behind when one fails: every check before the long conversion, then
convert, define, autostart, undoing what was done if a later step fails.

Everything but :func:`import_image` is a pure function of its arguments; the
processes (qemu-img, virsh) are the virsh module's, passed in.
"""

from __future__ import annotations

import copy
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import virsh
from .names import InvalidName, validate_name

#: qemu-img's format names that an import takes, and what people call them.
SUPPORTED_FORMATS = {
    "raw": "raw (a dd of the disk)",
    "qcow2": "qcow2 (QEMU)",
    "vmdk": "vmdk (VMware)",
    "vdi": "vdi (VirtualBox)",
    "vpc": "vhd (Virtual PC, Hyper-V)",
    "vhdx": "vhdx (Hyper-V)",
}

#: A file named like this but read by qemu-img as raw has a damaged or missing header:
#: importing its bytes as a raw disk would give a VM that never boots.
EXTENSION_FORMATS = {
    ".qcow2": "qcow2",
    ".vmdk": "vmdk",
    ".vdi": "vdi",
    ".vhd": "vpc",
    ".vhdx": "vhdx",
}

DEFAULT_IMAGES_DIR = Path("/var/lib/libvirt/images")
#: Where the Debian package installs the templates (conffiles) ...
SYSTEM_TEMPLATES = Path("/etc/exhibition-vm-controller/vm-profiles")
#: ... and where they are in a checkout, for `vm import` run from one.
CHECKOUT_TEMPLATES = Path(__file__).resolve().parent.parent / "etc" / "vm-profiles"

NETWORKS = ("user", "default")
DOMAIN_TYPES = ("auto", "kvm", "qemu")
#: The address the guest reaches the host at, per network (QEMU user-mode; libvirt's default).
HOST_FROM_GUEST = {"user": "10.0.2.2", "default": "192.168.122.1"}
LOOPBACK = "127.0.0.1"


class ImportRefused(Exception):
    """The input cannot be imported (exit status 2): the message says why and what to do."""


# ---------------------------------------------------------------- templates and profiles


def template_dirs() -> list[Path]:
    """Where profiles are looked for, first match wins: the installed conffiles, then a checkout."""
    return [SYSTEM_TEMPLATES, CHECKOUT_TEMPLATES]


def find_profiles(dirs: list[Path]) -> dict[str, Path]:
    """Every profile (template file name without .xml) in ``dirs``; earlier folders win."""
    found: dict[str, Path] = {}
    for folder in dirs:
        for path in sorted(folder.glob("*.xml")) if folder.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


def template_for(profile: str, dirs: list[Path]) -> Path:
    profiles = find_profiles(dirs)
    if profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        where = ", ".join(str(d) for d in dirs)
        raise ImportRefused(f"unknown profile {profile!r} (known: {known}; looked in {where})")
    return profiles[profile]


def load_template(path: Path) -> ET.Element:
    """Parse a template; a missing or malformed one is the user's to fix (exit 2)."""
    try:
        return ET.parse(path).getroot()
    except OSError as exc:
        raise ImportRefused(f"cannot read template {path}: {exc.strerror or exc}") from None
    except ET.ParseError as exc:
        raise ImportRefused(f"template {path} is not well-formed XML: {exc}") from None


@dataclass(frozen=True)
class DomainSpec:
    """What one import puts into a template."""

    name: str
    disk: Path
    network: str = "user"  # one of NETWORKS
    domain_type: str = "qemu"  # kvm or qemu
    memory_mib: int | None = None  # None: the template's
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


def _one(parent: ET.Element, path: str, what: str, source: str) -> ET.Element:
    found = parent.findall(path)
    if len(found) != 1:
        raise ImportRefused(f"template {source} must have exactly one {what} (found {len(found)})")
    return found[0]


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag)


def fill_template(template: ET.Element, spec: DomainSpec, source: str = "template") -> ET.Element:
    """A copy of ``template`` with this import's name, disk, network, type and options set.

    Checks that the template gives the guest a screen (graphics and video) and
    keeps every graphics listener on the loopback: the exhibition PC may sit
    on the museum's network, and its screen is nobody else's business.
    """
    if template.tag != "domain":
        raise ImportRefused(f"template {source} is not a libvirt <domain> (root <{template.tag}>)")
    root = copy.deepcopy(template)
    root.set("type", spec.domain_type)
    _child(root, "name").text = spec.name
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    if spec.memory_mib is not None:
        current = root.find("currentMemory")  # optional; if there, it must not exceed memory
        for element in (_child(root, "memory"), current):
            if element is not None:
                element.attrib = {"unit": "MiB"}
                element.text = str(spec.memory_mib)

    devices = _one(root, "devices", "<devices>", source)
    disk = _one(devices, "disk[@device='disk']", "<disk device='disk'>", source)
    disk.set("type", "file")
    driver = _child(disk, "driver")
    driver.set("name", "qemu")
    driver.set("type", "qcow2")
    disk_source = _child(disk, "source")
    disk_source.attrib = {"file": str(spec.disk)}

    interface = _one(devices, "interface", "<interface>", source)
    for old in interface.findall("source"):
        interface.remove(old)
    if spec.network == "user":
        interface.set("type", "user")
    elif spec.network == "default":
        interface.set("type", "network")
        new_source = ET.Element("source", {"network": "default"})
        interface.insert(0, new_source)
    else:
        raise ImportRefused(f"unknown network {spec.network!r} (known: {', '.join(NETWORKS)})")

    graphics = devices.findall("graphics")
    if not graphics or devices.find("video") is None:
        raise ImportRefused(
            f"template {source} needs a <graphics> and a <video> device: "
            "the gallery screen and screenshots need a screen"
        )
    for element in graphics:
        element.set("listen", LOOPBACK)
        for listen in element.findall("listen"):
            listen.attrib = {"type": "address", "address": LOOPBACK}

    os_element = _one(root, "os", "<os>", source)
    for tag, value in (("kernel", spec.kernel), ("initrd", spec.initrd), ("cmdline", spec.cmdline)):
        if value is not None:
            _child(os_element, tag).text = value
    return root


def summary(domain: ET.Element) -> dict[str, str]:
    """The hardware a person wants to see after an import, read from the domain XML."""
    devices = _one(domain, "devices", "<devices>", "domain")  # fill_template made sure of one

    def attr(path: str, name: str) -> str:
        element = devices.find(path)
        return (element.get(name) if element is not None else None) or "none"

    os_type = domain.find("os/type")
    inputs = [f"{i.get('type')} ({i.get('bus')})" for i in devices.findall("input")]
    graphics = [f"{g.get('type')} on {g.get('listen')}" for g in devices.findall("graphics")]
    memory = domain.find("memory")
    return {
        "type": domain.get("type", "?"),
        "machine": os_type.get("machine", "?") if os_type is not None else "?",
        "memory": f"{memory.text} {memory.get('unit', 'KiB')}" if memory is not None else "?",
        "disk": f"{attr('disk/target', 'bus')} ({attr('disk/target', 'dev')})",
        "network": f"{attr('interface', 'type')}, NIC {attr('interface/model', 'type')}",
        "video": attr("video/model", "type"),
        "sound": attr("sound", "model"),
        "input": ", ".join(inputs) or "none",
        "graphics": ", ".join(graphics),
    }


def to_xml(domain: ET.Element) -> str:
    return ET.tostring(domain, encoding="unicode") + "\n"


# ---------------------------------------------------------------- checks


def check_format(image: Path, info: virsh.ImageInfo) -> str:
    """The image's format if an import takes it; else why not."""
    if info.format not in SUPPORTED_FORMATS:
        known = ", ".join(SUPPORTED_FORMATS.values())
        raise ImportRefused(
            f"{image} is a {info.format!r} image, which vm import does not take (it takes {known})"
        )
    expected = EXTENSION_FORMATS.get(image.suffix.lower())
    if expected and info.format == "raw":
        raise ImportRefused(
            f"{image} is named {image.suffix} but qemu-img finds no {expected} header in it "
            "(damaged, or a part of a split image?)"
        )
    return info.format


def has_boot_signature(first_sector: bytes) -> bool:
    """An MBR (or GPT's protective MBR) ends its first sector with 55 AA."""
    return len(first_sector) >= 512 and first_sector[510:512] == b"\x55\xaa"


def choose_domain_type(requested: str, available: set[str]) -> str:
    """KVM when asked or when libvirt can use it; else QEMU's emulation (TCG)."""
    if requested == "auto":
        return "kvm" if "kvm" in available else "qemu"
    if requested not in available:
        raise ImportRefused(
            f"libvirt cannot run domain type {requested!r} here "
            f"(it can: {', '.join(sorted(available)) or 'none'})"
        )
    return requested


def next_steps(name: str, network: str, port: int = 8000) -> str:
    """What the person does after the import, in order, as commands to copy."""
    url = f"http://{HOST_FROM_GUEST[network]}:{port}"
    return "\n".join(
        [
            "Next:",
            f"  1. start it and look at its screen: virsh start --domain {name}; "
            f"virt-viewer --connect qemu:///system {name}",
            f"  2. in the guest, install the heartbeat script (scripts/guest/) pointed at {url}",
            f"  3. name it in the configuration (vm_name: {name}) and start the controller",
            "  4. with the artwork running and heartbeating, take the reference snapshot: "
            "vmcontroller ready",
            "     (or: vmcontroller revert disable; vmcontroller snapshot create ready; "
            "vmcontroller revert enable)",
        ]
    )


# ---------------------------------------------------------------- the import


class Runner(Protocol):
    """The virsh calls an import makes (virsh.VirshRunner; a recording fake in tests)."""

    def domain_exists(self, domain: str) -> bool: ...
    def define(self, xml: str) -> None: ...
    def autostart(self, domain: str) -> None: ...
    def undefine(self, domain: str) -> None: ...
    def virt_types(self, arch: str = "x86_64") -> set[str]: ...


@dataclass(frozen=True)
class ImportRequest:
    image: Path
    name: str
    profile: str
    images_dir: Path = DEFAULT_IMAGES_DIR
    network: str = "user"
    domain_type: str = "auto"  # one of DOMAIN_TYPES
    memory_mib: int | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    template: Path | None = None  # instead of the profile's
    template_dirs: list[Path] = field(default_factory=template_dirs)


@dataclass(frozen=True)
class Imported:
    name: str
    disk: Path
    source_format: str
    template: Path
    xml: str
    hardware: dict[str, str]


def plan(request: ImportRequest, domain_type: str) -> tuple[Path, Path, ET.Element]:
    """The target disk, the template and the filled domain, before anything is done."""
    try:
        validate_name(request.name, "--name")
    except InvalidName as exc:
        raise ImportRefused(str(exc)) from None
    template = request.template or template_for(request.profile, request.template_dirs)
    disk = request.images_dir.resolve() / f"{request.name}.qcow2"
    spec = DomainSpec(
        name=request.name,
        disk=disk,
        network=request.network,
        domain_type=domain_type,
        memory_mib=request.memory_mib,
        kernel=request.kernel,
        initrd=request.initrd,
        cmdline=request.cmdline,
    )
    return disk, template, fill_template(load_template(template), spec, str(template))


def import_image(
    request: ImportRequest,
    runner: Runner,
    on_progress: Callable[[float], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    inspect: Callable[[str], virsh.ImageInfo] = virsh.image_info,
    convert: Callable[..., None] = virsh.convert_image,
) -> Imported:
    """Check everything, convert the image, define the domain and turn autostart on.

    Raises ImportRefused for input the user must change (nothing was done),
    LibvirtFailure when qemu-img or libvirt fail (whatever was done is undone:
    the qcow2 removed, the domain undefined).
    """
    note = on_note or (lambda text: None)
    # Checks first, cheapest first: a refusal must not cost a conversion.
    requested = request.domain_type
    if requested not in DOMAIN_TYPES:
        raise ImportRefused(f"unknown domain type {requested!r} (known: {', '.join(DOMAIN_TYPES)})")
    disk, template, domain = plan(request, "qemu")
    if not request.images_dir.is_dir():
        raise ImportRefused(f"images folder {request.images_dir} does not exist")
    if disk.exists():
        raise ImportRefused(f"{disk} exists: choose another --name or remove it")
    if runner.domain_exists(request.name):
        raise ImportRefused(f"a domain named {request.name!r} exists: choose another --name")
    try:
        info = inspect(str(request.image))
    except virsh.ImageUnreadable as exc:
        raise ImportRefused(f"cannot read image {request.image}: {exc.message}") from None
    source_format = check_format(request.image, info)
    if source_format == "raw" and not _raw_looks_like_a_disk(request.image):
        note(
            f"warning: {request.image} has no partition table (no boot signature in its first "
            "sector); importing it anyway"
        )
    domain.set("type", choose_domain_type(requested, runner.virt_types()))
    xml = to_xml(domain)

    claimed = False
    defined = False
    try:
        # Claim the name in the folder, so that nobody else's file is ever overwritten
        # or removed; qemu-img then writes over the empty file.
        try:
            os.close(os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise ImportRefused(f"{disk} exists: choose another --name or remove it") from None
        except OSError as exc:
            raise ImportRefused(f"cannot write to {disk}: {exc.strerror}") from None
        claimed = True
        convert(str(request.image), source_format, str(disk), on_progress)
        runner.define(xml)
        defined = True
        runner.autostart(request.name)
    except BaseException:
        if defined:
            try:
                runner.undefine(request.name)
            except virsh.VirshError as exc:
                note(f"could not undefine {request.name!r} again: {exc.message}")
        if claimed:
            disk.unlink(missing_ok=True)
        raise
    return Imported(request.name, disk, source_format, template, xml, summary(domain))


def _raw_looks_like_a_disk(image: Path) -> bool:
    """False only when the first sector was read and has no boot signature: a name that
    qemu-img reads but the file system does not (``file:PATH``) is no evidence of either."""
    try:
        with image.open("rb") as f:
            return has_boot_signature(f.read(512))
    except OSError:
        return True

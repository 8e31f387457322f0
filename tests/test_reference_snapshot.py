"""The reference snapshot stays usable: reverts libvirt refuses, and replacing it.

Issue 9, points 3 and 4. Everything that involves libvirt runs on a real
libvirtd with real QEMU domains (type='qemu'); what happened is read from
libvirt itself (domstate, dominfo, the live title, snapshot-list, lifecycle
events recorded by an independent ``virsh event``). The fake runner only
covers refusals that libvirt 9.0 cannot be made to produce here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_virsh import FakeRunner
from libvirt_env import URI, EventRecorder, TestDomain, virsh, wait_until

from vmcontroller.virsh import RevertRisky, SnapshotLacksDefinition, VirshError, VirshRunner
from vmcontroller.vm import Domain, RevertNeedsStaff, RevertResult

real_libvirt = pytest.mark.libvirt

SPARE = "ready~replacing"


@pytest.fixture
def make_domain(libvirt) -> Iterator:
    made: list[TestDomain] = []

    def make(label: str, **kwargs) -> TestDomain:
        vm = TestDomain(label)
        made.append(vm)
        return vm.create(**kwargs)

    yield make
    for vm in made:
        vm.remove()
        extra_disk(vm).unlink(missing_ok=True)


def extra_disk(vm: TestDomain) -> Path:
    return vm.disk.with_name(vm.disk.stem + "-extra.qcow2")


def controller_domain(vm: TestDomain) -> Domain:
    """A Domain as a freshly started controller builds it (its own runner, no memory)."""
    return Domain(VirshRunner(URI, timeout=60), vm.name, "ready")


def title(vm: TestDomain) -> str:
    """The running definition's title: a marker of which snapshot the VM came from."""
    return virsh("desc", "--domain", vm.name, "--title").strip()


def set_title(vm: TestDomain, text: str) -> None:
    virsh("desc", "--domain", vm.name, "--live", "--title", "--new-desc", text)


def dominfo(vm: TestDomain, field: str) -> str:
    for line in virsh("dominfo", "--domain", vm.name).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    raise AssertionError(f"dominfo has no {field!r}")


# ---------------------------------------------------------------- point 3: refused reverts


def change_definition(vm: TestDomain) -> None:
    """What staff do after taking 'ready': more memory, a second vCPU, a second disk."""
    virsh("setmaxmem", "--domain", vm.name, "--size", "128M", "--config")
    virsh("setmem", "--domain", vm.name, "--size", "128M", "--config")
    virsh("setvcpus", "--domain", vm.name, "--count", "2", "--config", "--maximum")
    virsh("setvcpus", "--domain", vm.name, "--count", "2", "--config")
    extra = extra_disk(vm)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(extra), "16M"], check=True)
    virsh(
        "attach-disk",
        "--domain",
        vm.name,
        "--source",
        str(extra),
        "--target",
        "hdb",
        "--subdriver",
        "qcow2",
        "--config",
    )


@real_libvirt
@pytest.mark.parametrize("vm_state", ["running on the new definition", "shut off"])
def test_a_definition_changed_after_the_snapshot_reverts_to_the_snapshots_definition(
    make_domain, vm_state
):
    """libvirt 9.0 never refuses these: a revert respawns QEMU from the snapshot's own
    definition and writes that definition back, undoing staff's change (README says so)."""
    vm = make_domain("defchange")
    change_definition(vm)
    virsh("destroy", "--domain", vm.name)
    if vm_state != "shut off":
        virsh("start", "--domain", vm.name)
        assert dominfo(vm, "Max memory") == "131072 KiB"
    result = controller_domain(vm).revert_and_start()
    assert result == RevertResult(forced=False, note=None)
    assert vm.state() == "running"
    assert dominfo(vm, "Max memory") == "65536 KiB"
    inactive = virsh("dumpxml", "--domain", vm.name, "--inactive")
    assert "<memory unit='KiB'>65536</memory>" in inactive and "hdb" not in inactive


@real_libvirt
def test_a_ready_taken_while_shut_off_recovers_a_running_vm(make_domain):
    vm = make_domain("offready", start=False, snapshot=None)
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    virsh("start", "--domain", vm.name)
    result = controller_domain(vm).revert_and_start()
    assert result == RevertResult(forced=False, note=None)
    assert vm.state() == "running"


@real_libvirt
def test_a_stale_managed_save_is_removed_and_the_revert_is_recorded_as_forced(make_domain):
    """libvirt refuses to revert to a snapshot without memory while a managed save image
    (a host shutdown's saved memory) exists; that image belongs to a state recovery
    discards, and left in place a later plain start would resume it over the reverted disk."""
    vm = make_domain("msave", start=False, snapshot=None)
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    virsh("start", "--domain", vm.name)
    virsh("managedsave", "--domain", vm.name)
    assert dominfo(vm, "Managed save") == "yes"
    refusal = subprocess.run(
        [
            "virsh",
            "-c",
            URI,
            "snapshot-revert",
            "--domain",
            vm.name,
            "--snapshotname",
            "ready",
            "--running",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert refusal.returncode == 1 and "revert requires force" in refusal.stderr

    result = controller_domain(vm).revert_and_start()
    assert result.forced
    assert (
        "revert requires force: snapshot without memory state, removal of existing managed "
        "saved state strongly recommended to avoid corruption" in result.note
    )
    assert "managed save" in result.note
    assert vm.state() == "running"
    assert dominfo(vm, "Managed save") == "no"


# libvirt 9.0's refusals that cannot be produced here (see tests/test_virsh.py for where
# each message comes from): the fake runner raises them as classify_error types them.
NO_DEFINITION = "revert requires force: snapshot 'ready' lacks domain 'art' rollback info"
ABI_CHANGE = "revert requires force: Target domain max memory 131072 does not match source 65536"


def test_a_refusal_that_force_overrides_is_retried_with_force_and_recorded():
    runner = FakeRunner()
    runner.fail("snapshot-revert", RevertRisky(ABI_CHANGE))
    result = Domain(runner, "art", "ready").revert_and_start()
    assert result.forced and "does not match source 65536" in result.note
    reverts = [c for c in runner.calls if c[0] == "snapshot-revert"]
    assert ["--force" in c for c in reverts] == [False, True]


def test_a_snapshot_without_definition_stops_and_tells_staff_what_to_do():
    runner = FakeRunner()
    runner.fail("snapshot-revert", SnapshotLacksDefinition(NO_DEFINITION))
    with pytest.raises(RevertNeedsStaff) as caught:
        Domain(runner, "art", "ready").revert_and_start()
    message = str(caught.value)
    assert "lacks domain 'art' rollback info" in message
    assert "/api/v1/snapshot/create" in message and "ready" in message
    assert runner.count("snapshot-revert") == 1, "forcing cannot help: libvirt refuses it too"


def test_a_second_refusal_after_force_stops_and_tells_staff():
    runner = FakeRunner()
    runner.fail("snapshot-revert", RevertRisky(ABI_CHANGE))
    runner.fail("snapshot-revert", RevertRisky("revert requires force: something new"))
    with pytest.raises(RevertNeedsStaff) as caught:
        Domain(runner, "art", "ready").revert_and_start()
    assert "something new" in str(caught.value)


# ---------------------------------------------------------------- point 4: replacing 'ready'


@real_libvirt
def test_replacing_a_snapshot_pauses_a_running_guest_once(make_domain):
    vm = make_domain("pauses")
    events = EventRecorder(vm.name)
    try:
        assert controller_domain(vm).create_snapshot("ready") is True
        assert events.wait_for("Resumed Unpaused", 1, 30)
        assert vm.state() == "running"
        assert events.count("Suspended Paused") == 1
        assert vm.snapshots() == ["ready"]
    finally:
        events.close()


@real_libvirt
def test_replacing_a_snapshot_of_a_paused_guest_leaves_it_paused(make_domain):
    vm = make_domain("paused")
    virsh("suspend", "--domain", vm.name)
    assert controller_domain(vm).create_snapshot("ready") is True
    assert vm.state() == "paused" and vm.snapshots() == ["ready"]


def test_a_spare_stands_in_for_its_missing_snapshot_until_replaced_or_deleted():
    runner = FakeRunner(snapshots=("backup", SPARE))
    domain = Domain(runner, "art", "ready")
    assert domain.snapshots() == ["backup", "ready"]
    assert domain.revert_and_start().note.startswith("snapshot 'ready' was missing")
    assert domain.create_snapshot("ready") is True
    assert runner.snapshots == ["backup", "ready"]
    runner.snapshots.append(SPARE)  # a leftover next to a complete 'ready' is hidden...
    runner.parents[SPARE] = None
    assert domain.snapshots() == ["backup", "ready"]
    domain.delete_snapshot("ready")  # ...and goes first when 'ready' is deleted
    deletes = [c[2] for c in runner.calls if c[0] == "snapshot-delete"]
    assert deletes[-2:] == [SPARE, "ready"] and runner.snapshots == ["backup"]


#: The commands a replace of 'ready' on a running VM runs that change anything, in order,
#: with the state a revert must land in when the controller is killed right after each.
REPLACE_STEPS = [
    ("suspend", "old"),  # only paused: 'ready' untouched
    (f"snapshot-create-as {SPARE}", "old"),  # 'ready' old and complete, spare is stale
    ("snapshot-delete ready", "new"),  # the spare stands in for 'ready'
    ("snapshot-create-as ready", "new"),  # both hold the new state
    (f"snapshot-delete {SPARE}", "new"),  # done but for the resume
    ("resume", "new"),
]

#: What repair_reference() does after a kill at each step (None: nothing to repair).
REPAIR = {2: "deleted", 3: "recreated", 4: "deleted"}


@pytest.fixture
def killing_virsh(tmp_path) -> Path:
    """A virsh in front of the real one that kill -9s its caller after the Nth change."""
    real = shutil.which("virsh")
    assert real, "virsh not on PATH"
    wrapper = tmp_path / "bin" / "virsh"
    wrapper.parent.mkdir()
    wrapper.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        {real} "$@"
        rc=$?
        for arg in "$@"; do
            case $arg in
                suspend|resume|snapshot-create-as|snapshot-delete|snapshot-revert)
                    shift 4   # -q -c URI COMMAND
                    echo "$arg $*" >> "$VIRSH_CHANGES"
                    n=$(wc -l < "$VIRSH_CHANGES")
                    [ "$n" -eq "$KILL_AFTER" ] && kill -9 $PPID
                    break ;;
            esac
        done
        exit $rc
        """)
    )
    wrapper.chmod(0o755)
    return wrapper.parent


REPLACE = textwrap.dedent("""\
    import sys
    from vmcontroller.virsh import VirshRunner
    from vmcontroller.vm import Domain
    Domain(VirshRunner(sys.argv[1], timeout=60), sys.argv[2], "ready").create_snapshot("ready")
    """)


def run_replace(vm: TestDomain, bin_dir: Path, log: Path, kill_after: int) -> int:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIRSH_CHANGES": str(log),
        "KILL_AFTER": str(kill_after),
    }
    return subprocess.run(
        [sys.executable, "-c", REPLACE, URI, vm.name], env=env, timeout=120
    ).returncode


def changes(log: Path) -> list[str]:
    """The logged changing commands, without their --domain/--name options' noise."""
    result = []
    for line in log.read_text().splitlines():
        words = line.split()
        names = [w for prev, w in zip(words, words[1:]) if prev in ("--name", "--snapshotname")]
        result.append(" ".join([words[0], *names]))
    return result


@real_libvirt
def test_an_uninterrupted_replace_runs_exactly_the_listed_steps(
    make_domain, killing_virsh, tmp_path
):
    vm = make_domain("steps")
    log = tmp_path / "changes"
    log.touch()
    assert run_replace(vm, killing_virsh, log, kill_after=0) == 0
    assert changes(log) == [step for step, _ in REPLACE_STEPS]


@real_libvirt
@pytest.mark.parametrize("kill_after", range(1, len(REPLACE_STEPS) + 1))
def test_kill_9_at_each_step_of_a_replace_leaves_a_usable_reference(
    make_domain, killing_virsh, tmp_path, kill_after
):
    step, intended = REPLACE_STEPS[kill_after - 1]
    vm = make_domain("kill", snapshot=None)
    set_title(vm, "old")
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    set_title(vm, "new")
    log = tmp_path / "changes"
    log.touch()

    assert run_replace(vm, killing_virsh, log, kill_after) == -9
    assert changes(log)[-1] == step

    # A fresh controller that does not repair (it adopts a running VM) still has a 'ready'.
    fresh = controller_domain(vm)
    assert "ready" in fresh.snapshots() and not any("~" in s for s in fresh.snapshots())
    fresh.revert_and_start()
    assert vm.state() == "running" and title(vm) == intended

    # The start-up repair leaves libvirt with exactly 'ready', in the intended state.
    events = EventRecorder(vm.name)
    try:
        repair = controller_domain(vm).repair_reference()
        if repair is not None and repair.reverted:
            assert events.wait_for("Resumed Unpaused", 1, 30)
        suspended = sum(1 for _, e in events.events if e.startswith("Suspended"))
    finally:
        events.close()
    if kill_after in REPAIR:
        assert repair is not None and REPAIR[kill_after] in repair.message
        assert repair.reverted == (REPAIR[kill_after] == "recreated")
        assert suspended <= (1 if repair.reverted else 0)
    else:
        assert repair is None
    assert vm.snapshots() == ["ready"]
    assert vm.state() == "running" and title(vm) == intended
    assert controller_domain(vm).revert_and_start() == RevertResult(forced=False, note=None)
    wait_until(lambda: vm.state() == "running", 30, message="VM running")
    assert title(vm) == intended


# ---------------------------------------------------------------- replace and delete: edge cases


@real_libvirt
def test_replacing_a_snapshot_next_to_a_stale_spare_deletes_the_spare_first(make_domain):
    """A spare left beside a complete 'ready' (a replace killed after saving it) is stale:
    the next replace drops it and leaves exactly the new 'ready'."""
    vm = make_domain("stale", snapshot=None)
    set_title(vm, "old")
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    virsh("snapshot-create-as", "--domain", vm.name, "--name", SPARE, "--atomic")
    set_title(vm, "new")
    assert controller_domain(vm).create_snapshot("ready") is True
    assert vm.snapshots() == ["ready"] and vm.state() == "running"
    controller_domain(vm).revert_and_start()
    assert title(vm) == "new"


class FailingRunner(VirshRunner):
    """The real runner, but the commands named in ``fail`` raise as libvirt would."""

    def __init__(self, *fail: str):
        super().__init__(URI, timeout=60)
        self.fail = set(fail)

    def snapshot_create(self, domain: str, name: str) -> None:
        if f"snapshot-create-as {name}" in self.fail:
            raise VirshError("operation failed: no space left on device")
        super().snapshot_create(domain, name)

    def resume(self, domain: str) -> None:
        if "resume" in self.fail:
            raise VirshError("Timed out during operation: cannot acquire state change lock")
        super().resume(domain)


@real_libvirt
def test_a_replace_that_fails_after_deleting_the_old_snapshot_keeps_the_new_state_as_ready(
    make_domain,
):
    """The failed step's message says where the new state is; the guest runs again, and
    'ready' (its spare standing in) reverts to the state staff asked to keep."""
    vm = make_domain("failnew", snapshot=None)
    set_title(vm, "old")
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    set_title(vm, "new")
    domain = Domain(FailingRunner("snapshot-create-as ready"), vm.name, "ready")
    with pytest.raises(VirshError) as caught:
        domain.create_snapshot("ready")
    assert str(caught.value) == (
        "operation failed: no space left on device (the new state is "
        f"kept as snapshot {SPARE!r}, which stands in for 'ready')"
    )
    assert vm.state() == "running", "the guest paused for the replace runs again"
    assert vm.snapshots() == [SPARE] and controller_domain(vm).snapshots() == ["ready"]
    set_title(vm, "drifted")
    controller_domain(vm).revert_and_start()
    assert vm.state() == "running" and title(vm) == "new"


@real_libvirt
def test_a_guest_that_cannot_be_resumed_after_a_failed_replace_is_logged_as_paused(
    make_domain, caplog
):
    """The snapshot's failure is what staff get; the failed resume is logged, not lost."""
    vm = make_domain("noresume", snapshot=None)
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready", "--atomic")
    domain = Domain(FailingRunner("snapshot-create-as ready", "resume"), vm.name, "ready")
    with (
        caplog.at_level("ERROR", logger="vmcontroller.vm"),
        pytest.raises(VirshError, match="no space left on device"),
    ):
        domain.create_snapshot("ready")
    assert vm.state() == "paused"
    assert (
        f"VM {vm.name!r} stays paused: resuming it after a failed snapshot failed: "
        "Timed out during operation: cannot acquire state change lock" in caplog.text
    )


@real_libvirt
def test_deleting_a_snapshot_that_only_its_spare_stands_in_for_deletes_the_spare(make_domain):
    vm = make_domain("delspare", snapshot=None)
    virsh("snapshot-create-as", "--domain", vm.name, "--name", SPARE, "--atomic")
    domain = controller_domain(vm)
    assert domain.snapshots() == ["ready"]
    domain.delete_snapshot("ready")
    assert vm.snapshots() == [] and domain.snapshots() == []

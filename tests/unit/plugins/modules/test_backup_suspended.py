"""A suspended VM through backup and restore: its memory image is kept as Xen Orchestra keeps it (a full
VHD beside the disks, named after the image), never leaked on the pool, and restored suspended."""

import pytest
from backup_checks import backed_up, backups_of, metadata, qemu_img_raw, remote_disk_hashes
from module_runner import run_module

MiB = 1 << 20


def backup_args(sim, remote, tmp_path, **extra):
    return {
        "hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path), "job": "nightly",
        "remotes": [f"file://{remote}"], "progress_dir": str(tmp_path / "progress"), "names": ["tiny-run"],
        **extra,
    }  # fmt: skip


def backup(sim, remote, tmp_path, **extra):
    return backed_up(backup_args(sim, remote, tmp_path, **extra))


def listed(remote, backup_id, **extra):
    """The entry backup_info gives for ``backup_id``."""
    rc, result = run_module("backup_info", {"remote": f"file://{remote}", **extra})
    assert rc == 0, result
    (entry,) = [b for b in result["backups"] if b["id"] == backup_id]
    return entry


def suspend_images(sim):
    """Every memory image on the pool: {VDI uuid: is a snapshot}."""
    with sim.xapi() as x:
        return {r["uuid"]: r["is_a_snapshot"] for r in x.VDI.get_all_records().values() if r["type"] == "suspend"}


@pytest.fixture
def suspended(tiny, tmp_path):
    """tiny-run, suspended, and an empty remote."""
    with tiny.xapi() as x:
        x.VM.suspend(x.VM.get_by_name_label("tiny-run")[0])
    remote = tmp_path / "remote"
    remote.mkdir()
    return tiny, remote


def test_incremental_backups_keep_the_memory_image_and_leak_none(suspended, tmp_path):
    sim, remote = suspended
    first = backup(sim, remote, tmp_path, retention=1)
    first_md = metadata(remote, first["backup_id"])
    first_image = first_md["vdis"][first_md["vmSnapshot"]["suspend_VDI"]]["uuid"]
    second = backup(sim, remote, tmp_path, retention=1)

    assert second["mode"] == "incremental", second  # the disks: the memory image is always whole
    md = metadata(remote, second["backup_id"])
    image_ref = md["vmSnapshot"]["suspend_VDI"]
    image = md["vdis"][image_ref]
    assert image["type"] == "suspend" and "$snapshot_of$uuid" not in image
    assert md["isVhdDifferencing"][image_ref] is False and not any(v["VDI"] == image_ref for v in md["vbds"].values())
    assert md["vhds"][image_ref] == f"vdis/{md['jobId']}/{image['uuid']}/{second['backup_id'][-21:-5]}.vhd"
    # What the remote holds is the image of the snapshot (still on the pool: it is the next base).
    hashes = remote_disk_hashes(remote, second["backup_id"])
    assert hashes == {v["uuid"]: sim.sha256(v["uuid"]) for v in md["vdis"].values()} and image["uuid"] in hashes
    qemu_img_raw(remote / "xo-vm-backups" / second["uuid"] / md["vhds"][image_ref], tmp_path / "image.raw")
    # The first backup (and its image's folder) went with retention 1; the pool keeps the live VM's image
    # and that of the one snapshot left, the base: the first snapshot's image went with it.
    assert backups_of(remote, second["uuid"]) == [second["backup_id"]]
    assert not (remote / "xo-vm-backups" / second["uuid"] / "vdis" / md["jobId"] / first_image).exists()
    images = suspend_images(sim)
    assert sorted(images.values()) == [False, True] and image["uuid"] in images and first_image not in images
    entry = listed(remote, second["backup_id"], verify=True)
    assert entry["with_memory"] is True and entry["verified"] is True, entry


def test_a_suspended_backup_restores_suspended_and_resumes(suspended, tmp_path):
    sim, remote = suspended
    vm = backup(sim, remote, tmp_path)
    md = metadata(remote, vm["backup_id"])
    image = md["vdis"][md["vmSnapshot"]["suspend_VDI"]]
    restore = {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path),
               "remote": f"file://{remote}", "backup": vm["backup_id"], "sr": "Local storage"}  # fmt: skip

    run = run_module("restore", {**restore, "name": "back"})
    assert run.rc == 0, run
    with sim.xapi() as x:
        (ref,) = x.VM.get_by_name_label("back")
        assert x.VM.get_power_state(ref) == "Suspended"
        restored_image = x.VDI.get_record(x.VM.get_suspend_VDI(ref))
        assert restored_image["type"] == "suspend"
        assert sim.sha256(restored_image["uuid"]) == sim.sha256(image["uuid"])

    run = run_module("restore", {**restore, "name": "back", "start": True})  # the same restore, now started
    assert run.rc == 0 and run.result["changed"] is True, run
    with sim.xapi() as x:
        assert x.VM.get_power_state(ref) == "Running"
        assert x.VM.get_suspend_VDI(ref) == "OpaqueRef:NULL"


def test_a_full_backup_of_a_suspended_vm_leaks_no_memory_image(suspended, tmp_path):
    sim, remote = suspended
    before = suspend_images(sim)
    vm = backup(sim, remote, tmp_path, mode="full", compression="none")
    # XAPI's /export leaves the memory out: the XVA restores halted, as with Xen Orchestra.
    assert metadata(remote, vm["backup_id"])["mode"] == "full"
    assert listed(remote, vm["backup_id"])["with_memory"] is False
    assert suspend_images(sim) == before, "the snapshot's memory image went with the snapshot"


def test_the_health_check_resumes_a_vm_restored_suspended_and_leaves_nothing(suspended, tmp_path):
    sim, remote = suspended
    before = suspend_images(sim)
    vm = backup(sim, remote, tmp_path, health_check={"sr": "Local storage", "timeout": 5})
    assert vm["health_check"]["status"] == "success", vm["health_check"]
    with sim.xapi() as x:
        names = [r["name_label"] for r in x.VM.get_all_records().values() if not r["is_a_snapshot"]]
    assert sorted(n for n in names if not n.startswith("Control domain")) == ["tiny-01", "tiny-run"]
    # The live VM's image, and the kept snapshot's (the next base): the restored VM's went with it.
    after = suspend_images(sim)
    assert set(before) < set(after) and sorted(after.values()) == [False, True], after


def test_check_mode_counts_the_memory_image_in_an_incremental_estimate(suspended, tmp_path):
    sim, remote = suspended
    plans = {}
    for mode in ("full", "incremental"):
        rc, plan = run_module("backup", {**backup_args(sim, remote, tmp_path, mode=mode), "_ansible_check_mode": True})
        assert rc == 0, plan
        plans[mode] = plan["vms"][0]["estimated_bytes"]
    # The image holds a little over 3 MiB of "memory": two 2 MiB blocks on the simulated SR.
    assert plans["incremental"] - plans["full"] == 4 * MiB, plans


def test_a_health_check_that_waits_for_the_guest_script_boots_the_vm_afresh(tiny, tmp_path):
    """Resumed, a guest carries on and runs nothing at boot: a check waiting for its boot-time script
    (the xo-backup-health-check-xenstore tag) must boot it instead."""
    with tiny.xapi() as x:
        ref = x.VM.get_by_name_label("tiny-run")[0]
        x.VM.add_tags(ref, "xo-backup-health-check-xenstore")
        x.VM.suspend(ref)
    remote = tmp_path / "remote"
    remote.mkdir()
    vm = backup(tiny, remote, tmp_path, health_check={"sr": "Local storage", "timeout": 5})
    assert vm["health_check"]["status"] == "success", vm["health_check"]
    assert vm["health_check"]["waited_for_xenstore"] is True

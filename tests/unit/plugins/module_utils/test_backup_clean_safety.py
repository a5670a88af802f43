"""Retention and clean-up on damaged or flaky remotes: a valid backup is never deleted, the one a run
just wrote least of all, and snapshots are counted per schedule."""

import json
import os
import time
from pathlib import Path

import pytest
from backup_checks import backed_up, backups_of, metadata, remote_disk_hashes
from module_runner import run_module
from test_backup_retention import live_disks, module_args

from ansible_collections.xapi.proxy.plugins.module_utils._backup_clean import RetentionRefused, clean
from ansible_collections.xapi.proxy.plugins.module_utils._storage import LockLostError, StorageError, open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._xo_cache import decode_cache

MiB = 1 << 20


def backup(sim, remote, tmp_path, **extra):
    return backed_up(module_args(sim, remote, tmp_path, **extra))


def backups_with_writes(sim, tmp_path, count, **extra):
    """A remote with ``count`` backups of tiny-01 (retention 5), a guest write on disk 0 before each."""
    remote = tmp_path / "remote"
    remote.mkdir()
    disks = live_disks(sim)
    ids = []
    for run in range(count):
        sim.write(disks["0"], os.urandom(100_000), offset=run * MiB)
        ids.append(backup(sim, remote, tmp_path, compression="none", retention=5, **extra)["backup_id"])
    return remote, ids


def disk_ref(md, live_uuid):
    """The VDI ref a backup's metadata uses for the live disk ``live_uuid``."""
    (ref,) = [ref for ref, vdi in md["vdis"].items() if vdi["$snapshot_of$uuid"] == live_uuid]
    return ref


def disk_vhd(remote, backup_id, live_uuid):
    """Remote path of the VHD that ``backup_id`` holds for the live disk ``live_uuid``."""
    md = metadata(remote, backup_id)
    return remote / Path(backup_id).parent / md["vhds"][disk_ref(md, live_uuid)]


def failing_reads(storage, bad_path):
    """``storage`` whose reads of ``bad_path`` fail as a timed-out NFS or S3 read does."""

    class Flaky(type(storage)):
        def read_bytes(self, path, *args, **kwargs):
            if path == bad_path:
                raise StorageError(f"cannot read {path}: Input/output error", path)
            return super().read_bytes(path, *args, **kwargs)

    flaky = Flaky.__new__(Flaky)
    flaky.__dict__.update(storage.__dict__)
    return flaky


def two_incrementals(sim, tmp_path):
    """A remote with two incremental backups of tiny-01 (retention 5), a guest write on disk 0 between."""
    remote = tmp_path / "remote"
    remote.mkdir()
    disks = live_disks(sim)
    first = backup(sim, remote, tmp_path, retention=5)
    sim.write(disks["0"], os.urandom(300_000), offset=5 * MiB)
    return remote, disks, first, backup(sim, remote, tmp_path, retention=5)


def remote_files(remote):
    return sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())


def test_a_base_missing_an_ancestor_makes_that_disk_full_and_the_backup_stays(tiny, tmp_path):
    remote, disks, first, second = two_incrementals(tiny, tmp_path)
    disk_vhd(remote, first["backup_id"], disks["0"]).unlink()  # the full under disk 0's chain is lost
    tiny.write(disks["0"], os.urandom(300_000), offset=9 * MiB)

    vm = backup(tiny, remote, tmp_path, retention=5)

    assert "its base, or a VHD it depends on, is missing" in vm["reason"], vm["reason"]
    assert vm["mode"] == "incremental"  # disk 1's chain was intact: only disk 0 went full
    # By Xen Orchestra's rules the two older backups are broken now and go; disk 1's chain is merged
    # into the new backup, which is all that is left, complete.
    (retention,) = vm["retention"].values()
    assert sorted(retention["removed"]) == sorted([first["backup_id"], second["backup_id"]])
    assert backups_of(remote, vm["uuid"]) == [vm["backup_id"]]
    md = metadata(remote, vm["backup_id"])
    snapshot_data = {v["uuid"]: tiny.sha256(v["uuid"]) for v in md["vdis"].values()}
    assert remote_disk_hashes(remote, vm["backup_id"]) == snapshot_data


def test_retention_refuses_to_delete_the_backup_just_written(tiny, tmp_path):
    remote, disks, _, newest = two_incrementals(tiny, tmp_path)
    disk_vhd(remote, newest["backup_id"], disks["1"]).unlink()  # whatever broke it: the plan now drops it
    before = remote_files(remote)

    with pytest.raises(RetentionRefused, match="would delete the backup this run just wrote"):
        clean(open_remote(f"file://{remote}"), newest["uuid"], keep=newest["backup_id"])
    assert remote_files(remote) == before
    # Without that protection, this clean-up would have deleted it (what a later run does, by XO's rules).
    assert newest["backup_id"] in clean(open_remote(f"file://{remote}"), newest["uuid"])["removed"]


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_metadata_read_error_aborts_the_clean_up_and_deletes_nothing(tiny, tmp_path, mode):
    remote, ids = backups_with_writes(tiny, tmp_path, 3, mode=mode)
    vm_uuid = metadata(remote, ids[0])["vm"]["uuid"]
    before = remote_files(remote)

    for bad in (ids[1], ids[2]):
        with pytest.raises(StorageError, match="Input/output error"):
            clean(failing_reads(open_remote(f"file://{remote}"), bad), vm_uuid)
        assert remote_files(remote) == before
    assert sorted(backups_of(remote, vm_uuid)) == ids


def test_a_merge_state_without_a_chain_is_planned_again_from_the_vhds(tiny, tmp_path):
    remote, disks, first, _ = two_incrementals(tiny, tmp_path)
    parent = disk_vhd(remote, first["backup_id"], disks["0"])
    state = parent.parent / f".{parent.name}.merge.json"
    state.write_text("")  # cut short by a kill, as a non-atomic writer can leave it

    rc, result = run_module("backup", module_args(tiny, remote, tmp_path, retention=1))

    assert rc == 0, result.get("msg")
    (vm,) = result["vms"]
    (retention,) = vm["retention"].values()
    assert any("names no chain; planned again from the VHDs" in w for w in retention["warnings"]), retention
    assert retention["merged"], "the first backup's VHDs were merged into the next one's"
    assert backups_of(remote, vm["uuid"]) == [vm["backup_id"]]
    assert not list(remote.rglob(".*.merge.json"))
    assert remote_disk_hashes(remote, vm["backup_id"]) == {
        v["uuid"]: tiny.sha256(v["uuid"]) for v in metadata(remote, vm["backup_id"])["vdis"].values()
    }


def test_snapshot_retention_counts_each_schedule_apart(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    for _ in range(2):
        backup(tiny, remote, tmp_path, mode="full", schedule="weekly", snapshot_retention=2)
    vm = backup(tiny, remote, tmp_path, mode="full", schedule="daily", snapshot_retention=0)
    with tiny.xapi() as x:
        ref = x.VM.get_by_uuid(vm["uuid"])
        schedules = sorted(x.VM.get_other_config(s).get("xo:backup:schedule", "") for s in x.VM.get_snapshots(ref))
    # The weekly pair stays; the daily run (snapshot_retention 0) removed only its own snapshot.
    assert len(schedules) == 2 and schedules[0] == schedules[1] != "", schedules


def test_check_mode_sees_a_base_missing_on_one_remote_as_the_run_does(tiny, tmp_path):
    first, second = tmp_path / "r1", tmp_path / "r2"
    first.mkdir()
    second.mkdir()
    both = {"remotes": [f"file://{first}", f"file://{second}"]}
    backup(tiny, first, tmp_path, **both)
    for path in (second / "xo-vm-backups").rglob("*.vhd"):
        path.unlink()  # the second remote lost its VHDs (or is new): no base there
    tiny.write(live_disks(tiny)["0"], os.urandom(100_000), offset=MiB)

    rc, plan = run_module("backup", {**module_args(tiny, first, tmp_path, **both), "_ansible_check_mode": True})
    assert rc == 0, plan.get("msg")
    vm = backup(tiny, first, tmp_path, **both)

    (planned,) = plan["vms"]
    assert (planned["mode"], planned["reason"]) == (vm["mode"], vm["reason"]) == ("full", vm["reason"])
    assert vm["reason"].count("is missing on file://" + str(second)) == 2, vm["reason"]


def test_a_failed_stat_of_an_xva_aborts_the_clean_up_and_deletes_nothing(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    ids = [backup(tiny, remote, tmp_path, mode="full", compression="none", retention=5)["backup_id"] for _ in range(2)]
    vm_uuid = metadata(remote, ids[0])["vm"]["uuid"]
    xva = metadata(remote, ids[0])["xva"]
    storage = open_remote(f"file://{remote}")

    class Flaky(type(storage)):
        def stat(self, path, *args, **kwargs):
            if path.endswith(xva.lstrip("./")):
                raise StorageError(f"cannot stat {path}: timed out", path)
            return super().stat(path, *args, **kwargs)

    flaky = Flaky.__new__(Flaky)
    flaky.__dict__.update(storage.__dict__)
    before = remote_files(remote)
    with pytest.raises(StorageError, match="timed out"):
        clean(flaky, vm_uuid)
    assert remote_files(remote) == before


def test_the_backup_refuses_a_remote_encrypted_by_xen_orchestra_and_touches_nothing(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    vm_uuid = backup(tiny, remote, tmp_path, mode="full", compression="none")["uuid"]
    # What XO leaves on a remote with an encryption key: encryption.json, and metadata we cannot read.
    (remote / "encryption.json").write_text('{"algorithm":"aes-256-gcm"}')
    encrypted = remote / "xo-vm-backups" / vm_uuid / "20240101T000000Z.json"
    encrypted.write_bytes(os.urandom(300))
    before = remote_files(remote)

    rc, result = run_module("backup", module_args(tiny, remote, tmp_path, mode="full", compression="none"))

    assert rc == 1 and "Traceback" not in str(result), result
    (vm,) = result["vms"]
    assert vm["status"] == "failure" and "encrypted remotes are not supported" in vm["error"], vm
    assert remote_files(remote) == before


@pytest.mark.parametrize(
    "settings",
    [{"retention": 1}, {"retention": 1, "long_term_retention": {"daily": 2}}],
    ids=["merges", "same-day-long-term"],
)
def test_check_mode_plans_the_retention_the_run_then_applies(tiny, tmp_path, settings):
    """The plan counts the backup the run is about to write: with retention 1 the previous backup goes and
    its deltas merge into the new one; a second backup of the day takes the day's long-term slot."""
    remote = tmp_path / "remote"
    remote.mkdir()
    first = backup(tiny, remote, tmp_path, **settings)
    tiny.write(live_disks(tiny)["0"], os.urandom(100_000), offset=MiB)

    rc, plan = run_module("backup", {**module_args(tiny, remote, tmp_path, **settings), "_ansible_check_mode": True})
    assert rc == 0, plan.get("msg")
    vm = backup(tiny, remote, tmp_path, **settings)

    if Path(first["backup_id"]).name[:8] != Path(vm["backup_id"]).name[:8]:  # UTC dates, the job's timezone
        pytest.skip("midnight passed between the two backups: the second one starts a new day")
    (planned,) = plan["vms"][0]["retention"].values()
    (done,) = vm["retention"].values()
    assert planned["remove"] == done["removed"] == [first["backup_id"]]
    # Merged into the new backup's VHDs: same chains, the new one named by the plan's clock.
    assert [len(m["chain"]) for m in planned["merge"]] == [len(m["chain"]) for m in done["merged"]] == [2, 2]
    assert [m["chain"][0] for m in planned["merge"]] == [m["chain"][0] for m in done["merged"]]


def taken_over(storage, vm_uuid):
    """The VM's lock, held by us, then taken over as a holder that judged it stale does (removed, made
    again): returns our lock once its refresher has noticed."""
    held = storage.lock(f"xo-vm-backups/{vm_uuid}", stale=0.4)
    storage.delete_tree(held.path)
    storage.mkdir(held.path)
    deadline = time.monotonic() + 10
    while not held.lost:
        assert time.monotonic() < deadline, "the refresher never noticed the lock was taken over"
        time.sleep(0.05)
    return held


def test_a_clean_up_whose_lock_was_taken_over_deletes_nothing(tiny, tmp_path):
    remote, _, first, second = two_incrementals(tiny, tmp_path)
    # A file being written under a temporary name: the new holder's, as far as this run can tell.
    temp = remote / "xo-vm-backups" / second["uuid"] / f".{int(time.time() * 1000)}.20200101T000000Z.json"
    temp.write_text("{")
    storage = open_remote(f"file://{remote}")
    held = taken_over(storage, second["uuid"])
    before = remote_files(remote)

    with pytest.raises(LockLostError, match="was taken over by another process") as info:
        clean(storage, second["uuid"], delete=[first["backup_id"]], lock=held)

    assert f"stopped before deleting xo-vm-backups/{second['uuid']}/{temp.name}" in str(info.value), info.value
    assert remote_files(remote) == before
    held.release()
    assert storage.exists(held.path), "the new holder's lock stays"


def test_a_merge_stops_when_its_lock_is_taken_over_and_the_next_run_finishes_it(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    disks = live_disks(tiny)
    first = backup(tiny, remote, tmp_path, retention=5)
    for i in range(12):  # twelve 2 MiB blocks in the second backup's delta of disk 0
        tiny.write(disks["0"], os.urandom(4096), offset=i * 4 * MiB)
    second = backup(tiny, remote, tmp_path, retention=5)
    vm_uuid = second["uuid"]
    storage = open_remote(f"file://{remote}")
    held = storage.lock(f"xo-vm-backups/{vm_uuid}", stale=0.4)
    lock_dir = remote / held.path
    merged = []

    def take_over(done, total):
        merged.append((done, total))
        if len(merged) == 1:  # the remote stalls past the lock's staleness; another process takes the lock
            lock_dir.rmdir()
            lock_dir.mkdir()
            deadline = time.monotonic() + 10
            while not held.lost and time.monotonic() < deadline:
                time.sleep(0.05)

    with pytest.raises(LockLostError, match="was taken over by another process"):
        clean(storage, vm_uuid, delete=[first["backup_id"]], lock=held, on_progress=take_over)
    held.release()

    # Not one more block once the loss was known; the first backup's metadata went first (XO's order),
    # its VHDs are still there, and the merge is left for the next run to resume.
    assert len(merged) == 1 and merged[0][1] >= 12, merged
    assert backups_of(remote, vm_uuid) == [second["backup_id"]]
    assert list(remote.rglob(".*.merge.json")), "the stopped merge left its state for the next run"
    lock_dir.rmdir()  # the other holder is done
    rc, result = run_module("backup", module_args(tiny, remote, tmp_path, retention=1))
    assert rc == 0, result.get("msg")
    (vm,) = result["vms"]
    (retention,) = vm["retention"].values()
    assert retention["removed"] == [second["backup_id"]] and retention["merged"], retention
    assert backups_of(remote, vm_uuid) == [vm["backup_id"]]
    assert not list(remote.rglob(".*.merge.json"))
    vdis = metadata(remote, vm["backup_id"])["vdis"].values()
    assert remote_disk_hashes(remote, vm["backup_id"]) == {v["uuid"]: tiny.sha256(v["uuid"]) for v in vdis}


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_metadata_of_an_unknown_shape_is_never_deleted_by_retention(tiny, tmp_path, mode):
    """Another Xen Orchestra version may write metadata without a key we expect: its backup stays usable."""
    remote, ids = backups_with_writes(tiny, tmp_path, 2, mode=mode)
    odd = remote / ids[1]
    md = metadata(remote, ids[1])
    del md["version"]
    odd.write_text(json.dumps(md))
    before = {path: (remote / path).read_bytes() for path in remote_files(remote) if path.startswith(ids[1][:-5])}
    hashes = remote_disk_hashes(remote, ids[1])

    vm = backup(tiny, remote, tmp_path, mode=mode, compression="none", retention=1)

    (retention,) = vm["retention"].values()
    assert retention["removed"] == [ids[0]], retention
    assert any(w.startswith(f"{ids[1]}: backup metadata of a shape this collection does not know") for w in
               retention["warnings"]), retention  # fmt: skip
    assert sorted(backups_of(remote, vm["uuid"])) == sorted([ids[1], vm["backup_id"]])
    assert {path: (remote / path).read_bytes() for path in before} == before  # its XVA and checksum, untouched
    assert remote_disk_hashes(remote, ids[1]) == hashes  # its disks (and their ancestors) restorable as before
    # And Xen Orchestra, which lists from cache.json.gz, still lists it.
    cache = decode_cache((remote / "xo-vm-backups" / vm["uuid"] / "cache.json.gz").read_bytes())
    assert sorted(cache) == sorted([ids[1], vm["backup_id"]])


def test_a_remote_that_failed_on_one_disk_does_not_send_the_next_disk_full(tiny, tmp_path):
    from fs_helpers import tmpfs  # noqa: PLC0415

    good = tmp_path / "good"
    good.mkdir()
    with tmpfs(tmp_path / "small", "64m") as small:
        both = {"remotes": [f"file://{good}", f"file://{small}"]}
        first = backup(tiny, good, tmp_path, **both)
        first_disk, second_disk = sorted(live_disks(tiny).values())  # the order a backup takes them in
        disk_vhd(small, first["backup_id"], second_disk).unlink()  # the small remote lost the second's base
        stat = os.statvfs(small)
        (small / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - MiB))  # 1 MiB left
        tiny.write(first_disk, os.urandom(4 * MiB), offset=MiB)  # the first disk's delta cannot fit

        rc, result = run_module("backup", module_args(tiny, good, tmp_path, **both))

    assert rc == 1, result
    (vm,) = result["vms"]
    assert f"file://{small}: writing" in vm["error"] and "No space left" in vm["error"], vm["error"]
    # The small remote failed on the first disk: its missing base for the second one decides nothing.
    assert vm["mode"] == "incremental" and "missing" not in (vm.get("reason") or ""), vm
    md = metadata(good, vm["backup_id"])
    assert md["isVhdDifferencing"][disk_ref(md, second_disk)] is True
    assert remote_disk_hashes(good, vm["backup_id"]) == {v["uuid"]: tiny.sha256(v["uuid"]) for v in md["vdis"].values()}

"""Retention over many runs: chains stay restorable while old deltas are merged away."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from backup_checks import backups_of, metadata, remote_disk_hashes
from module_runner import COLLECTIONS, run_module

from ansible_collections.xapi.proxy.plugins.module_utils._backup_job import BackupJob
from ansible_collections.xapi.proxy.plugins.module_utils._backup_spec import JobSpec
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import parse_xapi_url
from xapisim.pytest_plugin import HERE

TINY = HERE / "labs" / "tiny.yml"
MiB = 1 << 20
DAY = 86400
MONDAY = 1767571200  # 2026-01-05T00:00:00Z, a Monday


def module_args(sim, remote, tmp_path, **extra):
    return {
        "hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path), "job": "nightly",
        "remotes": [f"file://{remote}"], "progress_dir": str(tmp_path / "progress"), "names": ["tiny-01"],
        **extra,
    }  # fmt: skip


def live_disks(sim):
    with sim.xapi() as x:
        vm = x.VM.get_by_name_label("tiny-01")[0]
        return {
            x.VBD.get_userdevice(v): x.VDI.get_uuid(x.VBD.get_VDI(v))
            for v in x.VM.get_VBDs(vm)
            if x.VBD.get_type(v) == "Disk"
        }


def snapshot_hashes(sim, md):
    return {v["uuid"]: sim.sha256(v["uuid"]) for v in md["vdis"].values()}


def guest_writes(sim, disks, run):
    # Several 2 MiB blocks per run so that merges move real data.
    sim.write(disks["0"], os.urandom(5 * MiB), offset=(run % 9) * 6 * MiB + 1234)
    sim.write(disks["1"], bytes([run % 256]) * 100_000, offset=(run % 20) * 2 * MiB)


def test_retention_keeps_chains_restorable_over_eleven_runs(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    disks = live_disks(tiny)
    expected = {}
    merged_runs = 0
    for run in range(11):
        if run:
            guest_writes(tiny, disks, run)
        rc, result = run_module("backup", module_args(tiny, remote, tmp_path, retention=3))
        assert rc == 0, result.get("msg") if result else result
        (vm,) = result["vms"]
        md = metadata(remote, vm["backup_id"])
        expected[vm["backup_id"]] = snapshot_hashes(tiny, md)
        retention = next(iter(vm["retention"].values()))
        merged_runs += bool(retention["merged"])
        kept = backups_of(remote, vm["uuid"])
        assert len(kept) == min(run + 1, 3)
        for backup_id in kept:
            assert remote_disk_hashes(remote, backup_id) == expected[backup_id], f"run {run}: {backup_id}"
        # One VHD per kept backup and disk: merged deltas leave nothing behind.
        assert len(list(remote.rglob("*.vhd"))) == 2 * len(kept)
        assert not list(remote.rglob(".*.merge.json"))
    assert merged_runs == 8, "every run after the third merges the oldest delta into its child"


def test_long_term_retention_keeps_the_newest_of_each_week(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    params = {
        "job": "weekly-keep", "schedule": "default", "mode": "incremental", "retention": 2,
        "long_term_retention": {"weekly": 2, "timezone": "UTC"}, "full_interval": 0, "compression": "zstd",
        "concurrency": 1, "vm_timeout": 0, "snapshot_retention": 0, "max_merged_per_run": 0,
        "remotes": [f"file://{remote}"], "names": ["tiny-01"], "remotes_dir": str(tmp_path / "none"),
    }  # fmt: skip
    spec = JobSpec(params)
    options = ConnectionOptions(parse_xapi_url(tiny.url), tiny.username, tiny.password, ca_path=tiny.ca_path)
    disks = live_disks(tiny)
    expected, day = {}, [0]
    for d in range(10):  # Monday of week 2 through Wednesday of week 3
        day[0] = d
        if d:
            guest_writes(tiny, disks, d)
        job = BackupJob(spec, params, options, clock=lambda: MONDAY + day[0] * DAY + 3600)
        with XapiClient(options) as client:
            result = job.run(client, str(tmp_path / "progress"))
        (vm,) = result["vms"]
        assert vm["status"] == "success", vm
        expected[vm["backup_id"]] = snapshot_hashes(tiny, metadata(remote, vm["backup_id"]))
        assert metadata(remote, vm["backup_id"])["tags"] == [f"weekly=2026-{2 + d // 7:02d}"]
    kept = backups_of(remote, vm["uuid"])
    days = sorted((metadata(remote, b)["timestamp"] // 1000 - MONDAY) // DAY for b in kept)
    # The newest two (days 8, 9), plus the newest of the previous ISO week (day 6).
    assert days == [6, 8, 9]
    for backup_id in kept:
        assert remote_disk_hashes(remote, backup_id) == expected[backup_id]


KILL_DURING_MERGE = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {collections!r})
    from ansible_collections.xapi.proxy.plugins.module_utils._backup_clean import clean
    from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
    done = []
    def progress(merged, total):
        done.append(merged)
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill, in the middle of the merge
    storage = open_remote({url!r})
    lock = storage.lock("xo-vm-backups/" + {vm!r})
    clean(storage, {vm!r}, delete=[{victim!r}], on_progress=progress)
    print("merge finished without being killed")
    """
)


def test_merge_killed_midway_is_finished_by_the_next_run(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    disks = live_disks(tiny)
    expected = {}
    for run in range(3):
        if run:
            guest_writes(tiny, disks, run)
            tiny.write(disks["0"], os.urandom(8 * MiB), offset=40 * MiB)  # more blocks to merge
        rc, result = run_module("backup", module_args(tiny, remote, tmp_path, retention=5))
        assert rc == 0, result.get("msg") if result else result
        vm = result["vms"][0]
        expected[vm["backup_id"]] = snapshot_hashes(tiny, metadata(remote, vm["backup_id"]))
    oldest = sorted(expected)[0]
    script = KILL_DURING_MERGE.format(collections=str(COLLECTIONS), url=f"file://{remote}", vm=vm["uuid"],
                                      victim=oldest)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    states = list(remote.rglob(".*.merge.json"))
    assert states, "the merge saved its resume state before it was killed"
    assert not (remote / oldest).exists(), "retention removed the metadata before merging"
    # The next run resumes the merge under its own lock, then backs up as usual.
    tiny.write(disks["1"], b"after the kill" * 1000, offset=7 * MiB)
    rc, result = run_module("backup", module_args(tiny, remote, tmp_path, retention=5))
    assert rc == 0, result
    expected.pop(oldest)
    expected[result["vms"][0]["backup_id"]] = snapshot_hashes(tiny, metadata(remote, result["vms"][0]["backup_id"]))
    assert not list(remote.rglob(".*.merge.json"))
    assert sorted(backups_of(remote, vm["uuid"])) == sorted(expected)
    for backup_id, hashes in expected.items():
        assert remote_disk_hashes(remote, backup_id) == hashes, backup_id
    assert Path(remote).exists()


class Killed(BaseException):
    """The process dying at that point: nothing in the engine may catch it."""


def killed_after(storage, n):
    """``storage`` whose ``n``-th change (rename, delete, delete_tree, write) kills the process; n=None counts."""
    calls = {"count": 0}

    class Dying(type(storage)):
        pass

    def dies(orig):
        def change(self, *args, **kwargs):
            calls["count"] += 1
            if n is not None and calls["count"] > n:
                raise Killed
            return orig(self, *args, **kwargs)

        return change

    for name in ("rename", "delete", "delete_tree", "write_bytes"):
        setattr(Dying, name, dies(getattr(type(storage), name)))
    dying = Dying.__new__(Dying)
    dying.__dict__.update(storage.__dict__)
    return dying, calls


@pytest.mark.parametrize("layout", ["?useVhdDirectory=true", ""], ids=["vhd-directories", "vhd-files"])
def test_a_merge_killed_at_any_step_is_finished_by_the_next_run(tiny, tmp_path, layout):
    """Every change a merge and its cleanup make is a point where the proxy can die; the next run must
    finish the merge and every kept backup must still hold exactly what it held."""
    from ansible_collections.xapi.proxy.plugins.module_utils._backup_clean import clean  # noqa: PLC0415
    from ansible_collections.xapi.proxy.plugins.module_utils._backup_verify import verify_backup  # noqa: PLC0415
    from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote  # noqa: PLC0415

    built = tmp_path / "built"
    built.mkdir()
    args = module_args(tiny, built, tmp_path, remotes=[f"file://{built}{layout}"], retention=10)
    disks = live_disks(tiny)
    for run in range(3):
        guest_writes(tiny, disks, run)
        rc, result = run_module("backup", args)
        assert rc == 0, result.get("msg")
    vm_uuid = result["vms"][0]["uuid"]
    ids = sorted(backups_of(built, vm_uuid))
    assert all(v.endswith(".alias.vhd") == bool(layout) for v in metadata(built, ids[-1])["vhds"].values())
    expected = {bid: remote_disk_hashes(built, bid) for bid in ids[1:]}

    def fresh():
        remote = tmp_path / "remote"
        subprocess.run(["rm", "-rf", str(remote)], check=True)
        subprocess.run(["cp", "-a", str(built), str(remote)], check=True)
        return remote, open_remote(f"file://{remote}{layout}")

    remote, storage = fresh()
    counting, calls = killed_after(storage, None)
    assert clean(counting, vm_uuid, delete=[ids[0]])["merged"]
    steps = calls["count"]
    # What a merge that was never interrupted leaves in the metadata (XO's post-merge size and kind).
    merged = {bid: {k: metadata(remote, bid)[k] for k in ("size", "isVhdDifferencing")} for bid in ids[1:]}
    assert steps > 10
    for n in range(steps):
        remote, storage = fresh()
        dying, _ = killed_after(storage, n)
        try:
            clean(dying, vm_uuid, delete=[ids[0]])
        except Killed:
            pass
        else:
            raise AssertionError(f"step {n} of {steps} was not reached")
        clean(storage, vm_uuid, delete=[ids[0]])  # the next run, whose retention drops the same backup
        assert sorted(backups_of(remote, vm_uuid)) == ids[1:], f"killed at step {n}"
        for bid in ids[1:]:
            assert remote_disk_hashes(remote, bid) == expected[bid], f"killed at step {n}: {bid} changed"
            assert verify_backup(storage, bid) == [], f"killed at step {n}"
            got = {k: metadata(remote, bid)[k] for k in merged[bid]}
            assert got == merged[bid], f"killed at step {n}: {bid}'s metadata"
        for folder in {posixpath_dir(v) for v in metadata(remote, ids[-1])["vhds"].values()}:
            names = os.listdir(remote / "xo-vm-backups" / vm_uuid / folder)
            assert not [n for n in names if n.endswith(".merge.json")], f"killed at step {n}: {names}"
            assert sum(n.endswith(".vhd") for n in names) == 2, f"killed at step {n}: {names}"
            if layout:
                data = os.listdir(remote / "xo-vm-backups" / vm_uuid / folder / "data")
                assert len(data) == 2, f"killed at step {n}: {data}"


def posixpath_dir(rel):
    return rel.rsplit("/", 1)[0]

"""The backup module through its real entry point, against the simulator over HTTPS."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_checks import backups_of, metadata, qemu_img_raw, remote_disk_hashes, xva_img_check
from module_runner import ROOT, module_env, run_module

from ansible_collections.xapi.proxy.plugins.module_utils._xo_checksum import ALGORITHM_IDS, choose_algorithm
from xapisim.pytest_plugin import HERE

TINY = HERE / "labs" / "tiny.yml"
MiB = 1 << 20


@pytest.fixture
def remote(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    return root


def args(sim, remote, tmp_path, **extra):
    base = {
        "hostname": sim.url,
        "password": sim.password,
        "ca_path": str(sim.ca_path),
        "job": "nightly",
        "remotes": [f"file://{remote}"],
        "progress_dir": str(tmp_path / "progress"),
        "names": ["tiny-01"],
    }
    base.update(extra)
    return base


def vm_disks(sim, name):
    """{userdevice: (live VDI uuid)} of a VM."""
    with sim.xapi() as x:
        vm = x.VM.get_by_name_label(name)[0]
        out = {}
        for vbd in x.VM.get_VBDs(vm):
            rec = x.VBD.get_record(vbd)
            if rec["type"] == "Disk":
                out[rec["userdevice"]] = x.VDI.get_uuid(rec["VDI"])
        return out


def snapshot_hashes(sim, backup_md):
    """sha256 of each snapshot VDI the metadata names, as the simulator holds it now."""
    if backup_md["mode"] == "full":
        uuids = [rec["uuid"] for rec in _snapshot_vdis(sim, backup_md["vmSnapshot"]["uuid"]).values()]
    else:
        uuids = [v["uuid"] for v in backup_md["vdis"].values()]
    return {u: sim.sha256(u) for u in uuids}


def _snapshot_vdis(sim, snap_uuid):
    with sim.xapi() as x:
        snap = x.VM.get_by_uuid(snap_uuid)
        out = {}
        for vbd in x.VM.get_VBDs(snap):
            rec = x.VBD.get_record(vbd)
            if rec["type"] == "Disk":
                out[rec["userdevice"]] = x.VDI.get_record(rec["VDI"])
        return out


def test_incremental_chain_restores_every_point(tiny, remote, tmp_path):
    disks = vm_disks(tiny, "tiny-01")
    expected = {}
    for run in range(4):
        if run:
            tiny.write(disks["0"], os.urandom(300_000), offset=run * 5 * MiB + 4096)
            tiny.write(disks["1"], bytes([run]) * 70_000, offset=(run % 3) * 2 * MiB)
        rc, result = run_module("backup", args(tiny, remote, tmp_path))
        assert rc == 0, result
        (vm,) = result["vms"]
        assert vm["status"] == "success" and vm["backup_id"]
        assert vm["mode"] == ("full" if run == 0 else "incremental")
        assert "checksum" not in vm, "VHDs have no .checksum file"
        md = metadata(remote, vm["backup_id"])
        assert md["mode"] == "delta" and set(md["isVhdDifferencing"].values()) == {run > 0}
        expected[vm["backup_id"]] = snapshot_hashes(tiny, md)  # the newest snapshot is kept as the base
        if run:
            # One 2 MiB block changed per disk: the delta carries those two blocks and the VHD headers.
            assert 4 * MiB < vm["bytes_read"] < 4 * MiB + 64 * 1024, "an incremental reads only changed blocks"
    # Every point of the chain restores to the disks as they were at its snapshot.
    for backup_id, hashes in expected.items():
        assert remote_disk_hashes(remote, backup_id) == hashes, backup_id


@pytest.mark.parametrize(("checksum", "tool", "number"), [("md5", "md5sum", "1"), ("sha256", "sha256sum", "5")])
def test_full_backups_are_xvas_that_xva_img_unpacks(tiny, remote, tmp_path, checksum, tool, number):
    rc, result = run_module(
        "backup",
        args(tiny, remote, tmp_path, mode="full", compression="none", snapshot_retention=1, checksum=checksum),
    )
    assert rc == 0, result
    (vm,) = result["vms"]
    assert vm["checksum"] == checksum
    md = metadata(remote, vm["backup_id"])
    assert md["mode"] == "full" and md["xva"].startswith("./") and md["xva"].endswith(".xva")
    vm_dir = remote / Path(vm["backup_id"]).parent
    xva = vm_dir / md["xva"]
    assert md["size"] == xva.stat().st_size
    # The checksum file is the stored bytes' hash as coreutils computes it, under XO's algorithm id.
    digest = subprocess.run([tool, str(xva)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert (vm_dir / (md["xva"][2:] + ".checksum")).read_text() == f"${number}$${digest}"
    hashes = snapshot_hashes(tiny, md)
    assert remote_disk_hashes(remote, vm["backup_id"]) == hashes
    raws = xva_img_check(xva, tmp_path / "xva")
    from backup_checks import _hash_file  # noqa: PLC0415

    assert sorted(_hash_file(p, p.stat().st_size) for p in raws.values()) == sorted(hashes.values())
    # backup_info and restore check it against that file, whichever algorithm wrote it.
    rc, info = run_module("backup_info", {"remote": f"file://{remote}", "verify": True, "vm": "tiny-01"})
    assert rc == 0 and [(b["verified"], b["problems"]) for b in info["backups"]] == [(True, [])], info
    conn = {k: v for k, v in args(tiny, remote, tmp_path).items() if k in ("hostname", "password", "ca_path")}
    rc, restored = run_module("restore", {**conn, "remote": f"file://{remote}", "backup": vm["backup_id"],
                                          "name": "restored", "sr": "Local storage"})  # fmt: skip
    assert rc == 0 and restored["checksum"] == "verified", restored
    with tiny.xapi() as x:
        new = x.VM.get_by_uuid(restored["vm"]["uuid"])
        disks = [x.VDI.get_uuid(x.VBD.get_VDI(v)) for v in x.VM.get_VBDs(new) if x.VBD.get_type(v) == "Disk"]
    assert sorted(tiny.sha256(u) for u in disks) == sorted(hashes.values())


def test_zstd_full_backup_is_stored_compressed(tiny, remote, tmp_path):
    rc, result = run_module("backup", args(tiny, remote, tmp_path, mode="full", snapshot_retention=1))
    assert rc == 0, result
    (vm,) = result["vms"]
    md = metadata(remote, vm["backup_id"])
    xva = remote / Path(vm["backup_id"]).parent / md["xva"]
    assert xva.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert remote_disk_hashes(remote, vm["backup_id"]) == snapshot_hashes(tiny, md)
    # The default checksum (auto) is the algorithm this host's CPU calls for, over the stored bytes.
    algorithm = choose_algorithm("auto")
    assert vm["checksum"] == algorithm
    digest = hashlib.new(algorithm, xva.read_bytes()).hexdigest()
    assert (xva.parent / (xva.name + ".checksum")).read_text() == f"${ALGORITHM_IDS[algorithm]}$${digest}"


def test_vhds_convert_with_qemu_img(tiny, remote, tmp_path):
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0, result
    md = metadata(remote, result["vms"][0]["backup_id"])
    vm_dir = remote / Path(result["vms"][0]["backup_id"]).parent
    hashes = remote_disk_hashes(remote, result["vms"][0]["backup_id"])
    from backup_checks import _hash_file  # noqa: PLC0415

    for ref, rel in md["vhds"].items():
        out = tmp_path / f"{ref[-8:]}.raw"
        qemu_img_raw(vm_dir / rel, out)
        assert _hash_file(out, int(md["vdis"][ref]["virtual_size"])) == hashes[md["vdis"][ref]["uuid"]]


def test_check_mode_plans_without_touching_anything(tiny, remote, tmp_path):
    rc, result = run_module("backup", {**args(tiny, remote, tmp_path), "_ansible_check_mode": True})
    assert rc == 0, result
    assert result["changed"] is False
    (vm,) = result["vms"]
    assert vm["mode"] == "full" and "no exported snapshot" in vm["reason"]
    assert vm["estimated_bytes"] > 0
    assert list(remote.iterdir()) == []
    with tiny.xapi() as x:
        assert x.VM.get_snapshots(x.VM.get_by_name_label("tiny-01")[0]) == []


def test_second_run_of_a_running_job_is_refused(tiny, remote, tmp_path):
    tiny.fault(path="/export_raw_vdi", action="throttle", rate=2 * MiB, count=10)
    cmd_args = args(tiny, remote, tmp_path)
    first = _start_module(cmd_args, tmp_path)
    try:
        _wait_for(lambda: (tmp_path / "progress").exists() and any((tmp_path / "progress").glob("*.lock")))
        rc, result = run_module("backup", cmd_args)
        assert rc != 0
        assert "already running" in result["msg"]
    finally:
        first.kill()
        first.wait()


def _start_module(module_args, tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "plugins/modules/backup.py"), str(args_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=module_env(),
        cwd=tmp_path,
    )


def _wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_killed_run_leaves_no_complete_looking_backup(tiny, remote, tmp_path):
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0, result
    first = result["vms"][0]["backup_id"]
    first_hashes = remote_disk_hashes(remote, first)
    disks = vm_disks(tiny, "tiny-01")
    tiny.write(disks["0"], os.urandom(6 * MiB), offset=10 * MiB)
    tiny.fault(path="/export_raw_vdi", action="throttle", rate=1 * MiB, count=10)
    proc = _start_module(args(tiny, remote, tmp_path), tmp_path)
    vm_dir = remote / "xo-vm-backups"
    _wait_for(lambda: any(p.name.startswith(".") for p in vm_dir.rglob("*.vhd")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert backups_of(remote, metadata(remote, first)["vm"]["uuid"]) == [first]
    assert remote_disk_hashes(remote, first) == first_hashes
    # The next run cleans the leftovers (temporary files, the unexported snapshot) and works.
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0, result
    assert not any(p.name.startswith(".") for p in vm_dir.rglob("*") if p.is_file() and "lock" not in p.name)
    with tiny.xapi() as x:
        snaps = x.VM.get_snapshots(x.VM.get_by_name_label("tiny-01")[0])
        assert len(snaps) == 1, "the killed run's snapshot must not leak"
    md = metadata(remote, result["vms"][0]["backup_id"])
    assert remote_disk_hashes(remote, result["vms"][0]["backup_id"]) == snapshot_hashes(tiny, md)


def test_a_run_whose_lock_is_taken_over_stops_writing_and_publishes_nothing(tiny, remote, tmp_path):
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0, result
    first = result["vms"][0]["backup_id"]
    first_hashes = remote_disk_hashes(remote, first)
    vm_uuid = result["vms"][0]["uuid"]
    for disk in vm_disks(tiny, "tiny-01").values():
        tiny.write(disk, os.urandom(8 * MiB), offset=10 * MiB)
    # Whichever disk goes first takes over 8 s: past the lock's first refresh, 5 s in.
    tiny.fault(path="/export_raw_vdi", action="throttle", rate=1 * MiB)
    proc = _start_module(args(tiny, remote, tmp_path), tmp_path)
    lock = remote / "xo-vm-backups" / f"{vm_uuid}.lock"
    _wait_for(lock.is_dir)
    # The remote stalled past the lock's staleness and another process (XO, another controller) took it.
    lock.rmdir()
    lock.mkdir()
    out, _ = proc.communicate(timeout=120)

    result = json.loads(out)
    assert proc.returncode == 1, result
    (vm,) = result["vms"]
    assert vm["status"] == "failure" and "was taken over by another process" in vm["error"], vm
    assert backups_of(remote, vm_uuid) == [first]
    assert remote_disk_hashes(remote, first) == first_hashes
    assert lock.is_dir(), "the new holder's lock is not removed"
    # Stopped at once, not at the end of the stream: under 8 MiB written after the lock went.
    assert vm["bytes_written"] < 8 * MiB, vm
    lock.rmdir()  # the other holder finished
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0, result
    assert not [p for p in remote.rglob("*") if p.name.startswith(".") and p.is_file()], "leftovers cleaned"


def test_cut_stream_fails_the_vm_and_keeps_previous_backups(tiny, remote, tmp_path):
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc == 0
    first = result["vms"][0]["backup_id"]
    disks = vm_disks(tiny, "tiny-01")
    tiny.write(disks["0"], os.urandom(4 * MiB), offset=20 * MiB)
    tiny.fault(path="/export_raw_vdi", action="cut", after_bytes=MiB, count=2)  # whichever disk goes first
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc != 0
    (vm,) = result["vms"]
    assert vm["status"] == "failure" and "export of disk" in vm["error"]
    assert "1 of 1 VM backups failed" in result["msg"]
    assert backups_of(remote, vm["uuid"]) == [first]
    assert not [p for p in remote.rglob("*.vhd") if p.name.startswith(".")], "temporary files are removed"
    with tiny.xapi() as x:
        assert len(x.VM.get_snapshots(x.VM.get_by_name_label("tiny-01")[0])) == 1


def test_cut_full_export_fails_the_vm_and_reports_no_checksum(tiny, remote, tmp_path):
    full = {"mode": "full", "compression": "none", "checksum": "sha256"}
    rc, result = run_module("backup", args(tiny, remote, tmp_path, **full))
    assert rc == 0, result
    first = result["vms"][0]["backup_id"]
    tiny.fault(path="/export", action="cut", after_bytes=3 * MiB)
    rc, result = run_module("backup", args(tiny, remote, tmp_path, **full))
    assert rc != 0
    (vm,) = result["vms"]
    assert vm["status"] == "failure" and "export of VM" in vm["error"], vm
    assert "checksum" not in vm, "no .xva.checksum was written, so none is reported"
    assert backups_of(remote, vm["uuid"]) == [first]
    vm_dir = remote / Path(first).parent
    assert sorted(p.name for p in vm_dir.iterdir() if p.suffix == ".xva") == [Path(first).stem + ".xva"]
    assert not [p for p in remote.rglob("*") if p.name.startswith(".")], "temporary files are removed"


def test_task_failure_is_reported_with_the_xapi_error(tiny, remote, tmp_path):
    tiny.fault(
        method="VM.snapshot", action="fail_task", error=["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
    )
    rc, result = run_module("backup", args(tiny, remote, tmp_path))
    assert rc != 0
    (vm,) = result["vms"]
    assert "snapshot" in vm["error"].lower() and "space" in vm["error"].lower()
    assert list(remote.rglob("*.json")) == []


def test_one_failed_vm_does_not_stop_the_others(tiny, remote, tmp_path):
    tiny.fault(path="/export_raw_vdi", action="cut", after_bytes=0, count=1)  # the first VM's first disk
    rc, result = run_module("backup", args(tiny, remote, tmp_path, names=["tiny-01", "tiny-run"], concurrency=1))
    assert rc != 0
    statuses = sorted(v["status"] for v in result["vms"])
    assert statuses == ["failure", "success"]
    assert result["totals"]["failed"] == 1 and result["totals"]["succeeded"] == 1


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"remotes": ["ftp://example.org/x"]}, "ftp"),
        ({"remotes": ["file:///srv/../etc"]}, ".."),
        ({"remotes": ["file://relative/path"]}, "file"),
        ({"remotes": ["no-such-registered-remote"]}, "no remote named"),
        ({"remotes": []}, "at least one remote"),
        ({"query": "[?name_label=="}, "query"),
        ({"retention": 0}, "retention"),
        ({"full_interval": -1}, "full_interval"),
        ({"concurrency": -2}, "concurrency"),
        ({"vm_timeout": -5}, "vm_timeout"),
        ({"snapshot_retention": -1}, "snapshot_retention"),
        ({"long_term_retention": {"daily": 3, "timezone": "Mars/Olympus"}}, "timezone"),
        ({"long_term_retention": {"weekly": -1}}, "weekly"),
        ({"power_states": ["sleeping"]}, "sleeping"),
        ({"job": "  "}, "job"),
        ({"mode": "differential"}, "mode"),
        ({"checksum": "sha1"}, "checksum"),
    ],
)
def test_bad_input_fails_cleanly(demo_sim, remote, tmp_path, extra, needle):
    run = run_module("backup", {**args(demo_sim, remote, tmp_path), **extra})
    assert run.rc != 0 and run.result is not None, run.stderr
    assert needle in run.result["msg"], run.result["msg"]
    assert "Traceback" not in run.output


def test_secrets_never_appear_in_output(tiny, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    run = run_module(
        "backup",
        {
            **args(tiny, remote, tmp_path),
            "remote_username": "u",
            "remote_password": "remote-s3cret-value",
            "_ansible_verbosity": 4,
            "_ansible_debug": True,
        },
    )
    assert run.rc == 0, run.result
    for secret in (tiny.password, "remote-s3cret-value"):
        assert secret not in run.output
    bad = run_module("backup", {**args(tiny, remote, tmp_path), "password": "wrong-password-xyz"})
    assert bad.rc != 0 and "wrong-password-xyz" not in bad.output


def test_remote_full_is_a_clear_error(tiny, tmp_path):
    from fs_helpers import tmpfs  # noqa: PLC0415

    with tmpfs(tmp_path / "small", "4m") as small:
        run = run_module("backup", args(tiny, small, tmp_path))
        assert run.rc != 0
        (vm,) = run.result["vms"]
        assert "full" in vm["error"].lower() or "space" in vm["error"].lower(), vm["error"]
        assert not list(Path(small).rglob("*.json"))


def test_demo_lab_by_tag_skips_no_bak_vms_and_nobak_disks(sim, tmp_path):
    """The demo lab itself: select by tag, two runs with a guest write, restorable content."""
    remote = tmp_path / "remote"
    remote.mkdir()
    base = {**args(sim, remote, tmp_path), "tags": ["web", "test"]}
    base.pop("names")
    rc, result = run_module("backup", base)
    assert rc == 0, result
    assert [v["name"] for v in result["vms"]] == ["web-01"], "test-01 carries xo:no-bak"
    web = result["vms"][0]
    md = metadata(remote, web["backup_id"])
    assert [v["name_label"] for v in md["vdis"].values()] == ["web-01 root"], "the [NOBAK] disk is left out"
    disks = vm_disks(sim, "web-01")
    sim.write(disks["0"], os.urandom(3 * MiB), offset=1500 * MiB)
    rc, result = run_module("backup", base)
    assert rc == 0, result
    second = result["vms"][0]
    assert second["mode"] == "incremental"
    # The newest snapshot is kept as the next base: what the remote holds must hash like it.
    newest = metadata(remote, second["backup_id"])
    assert remote_disk_hashes(remote, second["backup_id"]) == snapshot_hashes(sim, newest)


def test_unreachable_remote_is_a_clear_error_before_any_snapshot(tiny, tmp_path):
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    run = run_module(
        "backup",
        {**args(tiny, tmp_path / "unused", tmp_path), "remotes": [f"s3+http://key:secret@127.0.0.1:{port}/bucket"]},
    )
    assert run.rc != 0
    (vm,) = run.result["vms"]
    assert "127.0.0.1" in vm["error"] and "secret" not in run.output
    with tiny.xapi() as x:
        assert x.VM.get_snapshots(x.VM.get_by_name_label("tiny-01")[0]) == []


def test_health_check_after_backup_passes_then_fails_on_an_unbootable_disk(tiny, remote, tmp_path):
    check = {"health_check": {"sr": "Local storage", "timeout": 5}}
    rc, result = run_module("backup", args(tiny, remote, tmp_path, **check))
    assert rc == 0, result.get("msg")
    assert result["vms"][0]["health_check"]["status"] == "success"
    disks = vm_disks(tiny, "tiny-01")
    tiny.write(disks["0"], bytes(MiB), offset=0)  # the boot sector is gone: the guest never comes up
    rc, result = run_module("backup", args(tiny, remote, tmp_path, **check))
    assert rc != 0
    (vm,) = result["vms"]
    assert vm["backup_id"] and "health check failed" in vm["error"]
    with tiny.xapi() as x:
        names = [r["name_label"] for r in x.VM.get_all_records().values() if not r["is_a_snapshot"]]
    assert sorted(n for n in names if not n.startswith("Control domain")) == ["tiny-01", "tiny-run"]

"""backup, backup_info and restore unchanged over every remote kind: SMB (real Samba) and S3 (rclone)."""

import os

import pytest
from module_runner import run_module

from xapisim.pytest_plugin import HERE

TINY = HERE / "labs" / "tiny.yml"
MiB = 1 << 20


@pytest.fixture(params=["smb", "s3"])
def remote_url(request):
    return request.getfixturevalue("new_smb_url" if request.param == "smb" else "new_s3_url")


def test_backup_verify_and_restore_over_the_remote(sim_factory, remote_url, tmp_path):
    sim = sim_factory(lab=TINY)
    conn = {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path)}
    job = {**conn, "job": "nightly", "names": ["tiny-01"], "remotes": [remote_url],
           "progress_dir": str(tmp_path / "progress")}  # fmt: skip
    rc, first = run_module("backup", job)
    assert rc == 0, first.get("msg")
    with sim.xapi() as x:
        vm = x.VM.get_by_name_label("tiny-01")[0]
        root = next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(vm) if x.VBD.get_userdevice(v) == "0")
        sim.write(x.VDI.get_uuid(root), os.urandom(3 * MiB), offset=30 * MiB)
    rc, second = run_module("backup", job)
    assert rc == 0, second.get("msg")
    assert second["vms"][0]["mode"] == "incremental"
    backup_id = second["vms"][0]["backup_id"]
    # Every file checks out, and the listing shows the chain (newest VHD first, the full last).
    rc, info = run_module("backup_info", {"remote": remote_url, "verify": True, "vm": "tiny-01"})
    assert rc == 0, info.get("msg")
    assert [b["id"] for b in info["backups"]][-1] == backup_id
    assert all(b["verified"] and not b["problems"] for b in info["backups"])
    # The newest point restores to exactly what its snapshot holds.
    rc, restored = run_module(
        "restore", {**conn, "remote": remote_url, "backup": backup_id, "name": "back", "sr": "Local storage"}
    )
    assert rc == 0, restored.get("msg")
    with sim.xapi() as x:
        new = x.VM.get_by_uuid(restored["vm"]["uuid"])
        got = sorted(sim.sha256(x.VDI.get_uuid(x.VBD.get_VDI(v))) for v in x.VM.get_VBDs(new))
        snap = x.VM.get_snapshots(vm)[0]
        want = sorted(sim.sha256(x.VDI.get_uuid(x.VBD.get_VDI(v))) for v in x.VM.get_VBDs(snap))
    assert got == want
    secret = remote_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    for result in (first, second, info, restored):
        assert secret not in str(result)


def test_retention_on_s3_keeps_chains_instead_of_merging(tiny, new_s3_url, tmp_path):
    job = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path), "job": "s3-keep",
           "names": ["tiny-01"], "remotes": [new_s3_url], "retention": 2,
           "progress_dir": str(tmp_path / "progress")}  # fmt: skip
    with tiny.xapi() as x:
        vm = x.VM.get_by_name_label("tiny-01")[0]
        root = x.VDI.get_uuid(next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(vm) if x.VBD.get_userdevice(v) == "0"))
    for run in range(4):
        tiny.write(root, os.urandom(MiB), offset=run * 4 * MiB)
        rc, result = run_module("backup", job)
        assert rc == 0, result.get("msg")
    retention = next(iter(result["vms"][0]["retention"].values()))
    assert retention["removed"] and not retention["merged"]
    assert any("kept as parents" in w for w in retention["warnings"])
    rc, info = run_module("backup_info", {"remote": new_s3_url, "verify": True, "vm": "tiny-01"})
    assert rc == 0, info.get("msg")
    assert len(info["backups"]) == 2 and all(not b["problems"] for b in info["backups"])

"""backup, backup_info and restore unchanged over every remote kind: SMB (real Samba) and S3 (rclone)."""

import json
import os

import brotli
import pytest
from module_runner import run_module

from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
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


def test_incrementals_on_s3_are_vhd_directories_merged_by_moving_blocks(tiny, new_s3_url, tmp_path):
    """XO's S3 layout: one brotli object per block behind <ts>.alias.vhd; retention merges by moving objects."""
    job = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path), "job": "s3-chain",
           "names": ["tiny-01"], "remotes": [new_s3_url], "retention": 2,
           "progress_dir": str(tmp_path / "progress")}  # fmt: skip
    conn = {k: job[k] for k in ("hostname", "password", "ca_path")}
    with tiny.xapi() as x:
        vm = x.VM.get_by_name_label("tiny-01")[0]
        disks = {x.VBD.get_userdevice(v): x.VDI.get_uuid(x.VBD.get_VDI(v)) for v in x.VM.get_VBDs(vm)
                 if x.VBD.get_type(v) == "Disk"}  # fmt: skip
    storage = open_remote(new_s3_url)
    at_backup, objects_before, second_alias = {}, {}, None
    for run in range(4):
        tiny.write(disks["0"], os.urandom(MiB), offset=run * 4 * MiB)
        if run == 2:  # the run whose retention merges run 0 into run 1: remember run 1's objects
            objects_before = block_objects(storage, folder_of(second_alias))
        rc, result = run_module("backup", job)
        assert rc == 0, result.get("msg")
        vm_result = result["vms"][0]
        at_backup[vm_result["backup_id"]] = {p: tiny.sha256(u) for p, u in disks.items()}
        md = json.loads(storage.read_bytes(vm_result["backup_id"]))
        aliases = sorted(md["vhds"].values())
        assert all(a.endswith(".alias.vhd") for a in aliases), aliases
        if run == 1:
            ref = next(r for r, v in md["vdis"].items() if v["$snapshot_of$uuid"] == disks["0"])  # the written disk
            second_alias = f"xo-vm-backups/{md['vm']['uuid']}/{md['vhds'][ref]}"
            directory = folder_of(second_alias)
            assert storage.read_bytes(second_alias).decode() == "data/" + second_alias.rsplit("/", 1)[1].replace(
                ".alias.vhd", ".vhd"
            )
            assert json.loads(storage.read_bytes(f"{directory}/chunk-filters.json")) == ["brotli"]
            blobs = block_objects(storage, directory)
            assert blobs and all(len(brotli.decompress(b)) == 512 + 2 * MiB for b in blobs.values())
        if run == 2:
            retention = next(iter(vm_result["retention"].values()))
            assert retention["removed"] and retention["merged"] and not retention["warnings"]
            # run 1's disk now lives in run 0's directory (alias renamed), holding run 1's objects unchanged
            merged_dir = alias_target(storage, second_alias)
            assert merged_dir != folder_of(second_alias) and not storage.exists(folder_of(second_alias))
            merged = block_objects(storage, merged_dir)
            assert objects_before and all(merged[k] == v for k, v in objects_before.items())
    rc, info = run_module("backup_info", {"remote": new_s3_url, "verify": True, "vm": "tiny-01"})
    assert rc == 0, info.get("msg")
    assert len(info["backups"]) == 2 and all(b["verified"] and not b["problems"] for b in info["backups"])
    # no orphan: each disk folder holds as many VHD directories as aliases
    for folder in {a.rsplit("/", 1)[0] for a in aliases}:
        vdi_dir = f"xo-vm-backups/{md['vm']['uuid']}/{folder}"
        names = storage.list(vdi_dir)
        assert len(storage.list(f"{vdi_dir}/data")) == sum(n.endswith(".alias.vhd") for n in names) == 2
    for backup in info["backups"]:  # both kept points restore exactly
        rc, restored = run_module("restore", {**conn, "remote": new_s3_url, "backup": backup["id"],
                                              "name": backup["id"], "sr": "Local storage"})  # fmt: skip
        assert rc == 0, restored.get("msg")
        with tiny.xapi() as x:
            new = x.VM.get_by_uuid(restored["vm"]["uuid"])
            got = {x.VBD.get_userdevice(v): tiny.sha256(x.VDI.get_uuid(x.VBD.get_VDI(v))) for v in x.VM.get_VBDs(new)
                   if x.VBD.get_type(v) == "Disk"}  # fmt: skip
        assert got == at_backup[backup["id"]]
    storage.close()


def folder_of(alias):
    folder, name = alias.rsplit("/", 1)
    return f"{folder}/data/{name.replace('.alias.vhd', '.vhd')}"


def alias_target(storage, alias):
    return f"{alias.rsplit('/', 1)[0]}/{storage.read_bytes(alias).decode()}"


def block_objects(storage, directory):
    out = {}
    for group in storage.list(f"{directory}/blocks", missing_ok=True):
        for name in storage.list(f"{directory}/blocks/{group}"):
            out[f"{group}/{name}"] = storage.read_bytes(f"{directory}/blocks/{group}/{name}")
    return out


@pytest.fixture(params=["smb", "file-vhd-directory"])
def merge_remote(request, tmp_path):
    if request.param == "smb":
        return request.getfixturevalue("new_smb_url")
    root = tmp_path / "remote"
    root.mkdir()
    return f"file://{root}?useVhdDirectory=true"


def test_retention_merges_and_every_kept_point_restores(tiny, merge_remote, tmp_path):
    """In-place VHD merges over SMB; block-moving merges of VHD directories on a local folder."""
    conn = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path)}
    job = {**conn, "job": "merge", "names": ["tiny-01"], "remotes": [merge_remote], "retention": 2,
           "progress_dir": str(tmp_path / "progress")}  # fmt: skip
    with tiny.xapi() as x:
        vm = x.VM.get_by_name_label("tiny-01")[0]
        disks = {x.VBD.get_userdevice(v): x.VDI.get_uuid(x.VBD.get_VDI(v)) for v in x.VM.get_VBDs(vm)
                 if x.VBD.get_type(v) == "Disk"}  # fmt: skip
    at_backup, merged = {}, 0
    for run in range(5):
        tiny.write(disks[str(run % 2)], os.urandom(MiB), offset=run * 3 * MiB)
        rc, result = run_module("backup", job)
        assert rc == 0, result.get("msg")
        vm_result = result["vms"][0]
        at_backup[vm_result["backup_id"]] = {p: tiny.sha256(u) for p, u in disks.items()}
        retention = next(iter(vm_result["retention"].values()))
        assert not retention["warnings"]
        merged += len(retention["merged"])
    assert merged >= 3  # runs 3-5 each fold the oldest delta into its child
    vhds = json.loads(open_remote(merge_remote).read_bytes(vm_result["backup_id"]))["vhds"].values()
    assert all(v.endswith(".alias.vhd") == merge_remote.startswith("file:") for v in vhds), vhds
    rc, info = run_module("backup_info", {"remote": merge_remote, "verify": True, "vm": "tiny-01"})
    assert rc == 0, info.get("msg")
    assert len(info["backups"]) == 2 and all(b["verified"] and not b["problems"] for b in info["backups"])
    for backup in info["backups"]:
        rc, restored = run_module("restore", {**conn, "remote": merge_remote, "backup": backup["id"],
                                              "name": backup["id"], "sr": "Local storage"})  # fmt: skip
        assert rc == 0, restored.get("msg")
        with tiny.xapi() as x:
            new = x.VM.get_by_uuid(restored["vm"]["uuid"])
            got = {x.VBD.get_userdevice(v): tiny.sha256(x.VDI.get_uuid(x.VBD.get_VDI(v))) for v in x.VM.get_VBDs(new)
                   if x.VBD.get_type(v) == "Disk"}  # fmt: skip
        assert got == at_backup[backup["id"]]


def test_s3_over_https_with_a_private_ca(tiny, rclone_s3_tls, tmp_path):
    """remote_ca_path trusts the object store's own CA; without it the failure says what to do."""
    url = rclone_s3_tls.url(prefix=f"ca-{os.getpid()}")
    job = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path), "job": "tls",
           "names": ["tiny-01"], "remotes": [url], "progress_dir": str(tmp_path / "progress")}  # fmt: skip
    rc, result = run_module("backup", job)
    assert rc != 0 and "TLS verification failed" in result["msg"] and "remote_ca_path" in result["msg"]
    rc, result = run_module("backup", {**job, "remote_ca_path": str(tmp_path / "nowhere.pem")})
    assert rc != 0 and "remote_ca_path" in result["msg"] and "not a readable file" in result["msg"]
    assert "Traceback" not in str(result)
    rc, result = run_module("backup", {**job, "remote_ca_path": str(rclone_s3_tls.ca_path)})
    assert rc == 0, result.get("msg")
    rc, info = run_module("backup_info", {"remote": url, "remote_ca_path": str(rclone_s3_tls.ca_path),
                                          "verify": True})  # fmt: skip
    assert rc == 0, info.get("msg")
    assert [b["id"] for b in info["backups"]] == [result["vms"][0]["backup_id"]] and not info["backups"][0]["problems"]


def test_switching_use_vhd_directory_starts_a_new_chain_and_keeps_the_old_one(tiny, tmp_path):
    """A base of the other layout is not reused (XO's isMergeableParent): a full starts the new chain, and
    while both layouts sit in the VM folder old deltas are kept rather than merged across layouts."""
    root = tmp_path / "remote"
    root.mkdir()
    conn = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path)}
    job = {**conn, "job": "switch", "names": ["tiny-01"], "retention": 3, "progress_dir": str(tmp_path / "p")}
    modes = []
    for url in [f"file://{root}"] * 2 + [f"file://{root}?useVhdDirectory=true"] * 2:
        rc, result = run_module("backup", {**job, "remotes": [url]})
        assert rc == 0, result.get("msg")
        vm = result["vms"][0]
        md = json.loads((root / vm["backup_id"]).read_text())
        modes.append((vm["mode"], all(v.endswith(".alias.vhd") for v in md["vhds"].values())))
    assert modes == [("full", False), ("incremental", False), ("full", True), ("incremental", True)]
    retention = next(iter(vm["retention"].values()))
    assert not retention["merged"] and any("useVhdDirectory was switched" in w for w in retention["warnings"])
    rc, info = run_module("backup_info", {"remote": f"file://{root}", "verify": True, "vm": "tiny-01"})
    assert rc == 0 and len(info["backups"]) == 3 and all(not b["problems"] for b in info["backups"]), info

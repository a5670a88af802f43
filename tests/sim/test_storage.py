"""Disk storage: sparse and shared between snapshots, SR space accounting, state across restarts."""

import os
import signal

import pytest
from simhelpers import disk_vdis, failure

MiB = 1 << 20


def allocated_bytes(path):
    """Bytes the state directory really occupies on disk (sparse files count their blocks only)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def new_vdi(x, size, sr=None, name="big"):
    sr = sr or x.pool.get_default_SR(x.pool.get_all()[0])
    return x.VDI.create(
        {
            "name_label": name,
            "SR": sr,
            "virtual_size": str(size),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        }
    )


def test_sparse_disk_and_snapshots_share_blocks(sim, x):
    vdi = new_vdi(x, 32 << 30)
    uuid = x.VDI.get_uuid(vdi)
    start = allocated_bytes(sim.state_dir)
    chunk = os.urandom(4 * MiB)
    for i in range(25):  # 100 MiB spread over the disk
        sim.write(uuid, chunk, offset=i * (1 << 30))
    written = allocated_bytes(sim.state_dir) - start
    assert 100 * MiB <= written < 112 * MiB, f"32 GiB disk with 100 MiB written costs {written / MiB:.0f} MiB"
    sr = x.VDI.get_SR(vdi)
    assert int(x.SR.get_physical_utilisation(sr)) >= 100 * MiB
    snap = x.VDI.snapshot(vdi)
    after_snapshot = allocated_bytes(sim.state_dir)
    assert after_snapshot - start - written < 2 * MiB, "a snapshot must not copy data"
    sim.write(uuid, b"x" * 4096, offset=5 * (1 << 30) + 12345)
    grown = allocated_bytes(sim.state_dir) - after_snapshot
    assert grown <= 2 * MiB + 512 * 1024, "copy-on-write is per 2 MiB block (plus maps and the database)"
    assert x.VDI.get_is_a_snapshot(snap)


def test_state_survives_a_restart(sim, x):
    web = x.VM.get_by_name_label("web-01")[0]
    root = disk_vdis(x, web)["0"]
    uuid = x.VDI.get_uuid(root)
    sim.write(uuid, b"persist me" * 100, offset=7 * MiB)
    snap = x.VM.snapshot(web, "kept")
    x.VM.add_to_other_config(web, "xo:test", "1")
    digest = sim.sha256(uuid)
    snap_digest = sim.sha256(x.VDI.get_uuid(disk_vdis(x, snap)["0"]))
    sim.restart(signal.SIGKILL)  # no chance to flush on the way out
    with sim.xapi() as y:
        assert y.VM.get_other_config(web)["xo:test"] == "1"
        assert y.VM.get_name_label(snap) == "kept"
        assert y.VM.get_power_state(web) == "Running"
        assert sim.sha256(y.VDI.get_uuid(disk_vdis(y, snap)["0"])) == snap_digest
    assert sim.sha256(uuid) == digest


@pytest.fixture
def small_srs(sim_factory, tmp_path):
    lab = tmp_path / "small.yml"
    lab.write_text("""
hosts: [{name: h1, address: 127.0.0.1, master: true}]
srs:
  - {name: thin, type: ext, size: 64MiB, default: true}
  - {name: thick, type: lvm, size: 64MiB}
users: [{name: root, password: xapisim-demo, role: pool-admin}]
vms:
  - {name: vm1, disks: [{size: 16MiB, sr: thin, seed: [{offset: 0, random: 8MiB}]}]}
""")
    return sim_factory(lab=lab, name="small")


def test_full_srs_fail_with_the_backend_error(small_srs):
    sim = small_srs
    with sim.xapi() as x:
        thick = x.SR.get_by_name_label("thick")[0]
        new_vdi(x, 48 * MiB, thick)
        assert failure(new_vdi, x, 32 * MiB, thick) == ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
        thin = x.SR.get_by_name_label("thin")[0]
        big = new_vdi(x, 1 << 30, thin)  # thin SRs overcommit...
        r = sim.http("PUT", f"/_sim/vdi/{x.VDI.get_uuid(big)}/data", params={"offset": 0}, data=os.urandom(60 * MiB))
        assert r.status_code == 507  # ...and fail when the guest writes more than fits
        assert int(x.SR.get_physical_utilisation(thin)) <= 64 * MiB

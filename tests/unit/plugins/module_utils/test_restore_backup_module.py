"""True round trips: backups written by our own ``backup`` module, restored by ``restore``.

Both modules run as Ansible runs them (subprocesses); the disks of every restored point must hash equal
to the VM's disks right after that backup ran (tiny-01 is halted, so nothing else writes to them).
"""

import time

import pytest
from module_runner import run_module
from xo_fixtures import REMOTE_KINDS, connect, make_remote

MIB = 1 << 20


@pytest.fixture(params=REMOTE_KINDS[:2])  # file and SMB: every kind the backup module writes VHD files to
def remote(request, tmp_path):
    r = make_remote(request.param, tmp_path, request)
    yield r
    r.close()


@pytest.fixture
def client(tiny):
    c = connect(tiny)
    yield c
    c.logout()


def connection(sim):
    return {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path)}


def disks(client, vm_ref):
    out = {}
    for vbd in client.call("VBD.get_all_records_where", f'field "VM"="{vm_ref}"').values():
        if vbd["type"] == "Disk" and vbd["VDI"] != "OpaqueRef:NULL":
            out[vbd["userdevice"]] = client.call("VDI.get_uuid", vbd["VDI"])
    return out


def backup(sim, remote, tmp_path, mode):
    # backups are named by the second they start: never two in the same second
    time.sleep(1.0 - time.time() % 1.0)
    run = run_module("backup", {**connection(sim), "job": "nightly", "mode": mode, "remotes": [remote.url],
                                "names": ["tiny-01"], "progress_dir": str(tmp_path / "progress")})  # fmt: skip
    assert run.rc == 0, run
    (vm,) = run.result["vms"]
    return vm["backup_id"]


def test_full_and_incremental_backups_of_our_module_restore(tiny, client, remote, tmp_path):
    vm = client.call("VM.get_by_name_label", "tiny-01")[0]
    live = disks(client, vm)
    points = []
    for i, mode in enumerate(["full", "incremental", "incremental", "incremental", "incremental"]):
        bid = backup(tiny, remote, tmp_path, mode)
        points.append((bid, {p: tiny.sha256(u) for p, u in live.items()}))
        tiny.write(live[str(i % 2)], bytes([i + 1]) * (MIB + 4096), (7 * i + 1) * MIB)
    modes = [remote.storage.read_json(bid)["mode"] for bid, _ in points]
    assert modes == ["full", "delta", "delta", "delta", "delta"]
    assert len({tuple(sorted(h.items())) for _, h in points}) == 5
    for n, (bid, hashes) in enumerate(points):
        run = run_module("restore", {**connection(tiny), "remote": remote.url, "backup": bid, "sr": "Local storage"})
        assert run.rc == 0, run
        assert run.result["changed"] is True and run.result["backup"]["id"] == bid
        restored = client.call("VM.get_by_uuid", run.result["vm"]["uuid"])
        got = {p: tiny.sha256(u) for p, u in disks(client, restored).items()}
        assert got == hashes, f"point {n} ({bid}) differs"
        if n == 0:
            assert run.result["checksum"] == "verified"

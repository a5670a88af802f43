"""The HTTP transfer handlers, checked against independent tools (xva-img, qemu-img)."""

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import requests
import zstandard
from simhelpers import disk_vdis, download, sha256_file, wait_task, xva_img_export

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_read import VhdStreamReader
from xapisim import xva

NULL = "OpaqueRef:NULL"
TINY = Path(xva.__file__).with_name("labs") / "tiny.yml"


@pytest.fixture
def sim(sim_factory):
    """The small lab: these tests move whole disks through several tools."""
    return sim_factory(lab=TINY)


def vm_by_name(x, name):
    return x.VM.get_by_name_label(name)[0]


def snapshot_of(x, name):
    return x.VM.snapshot(vm_by_name(x, name), f"{name}-export")


def tar_members(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [(m.name, m.size, m.mode) for m in tf.getmembers()], tf


def test_xva_export_matches_xva_img_and_the_disks(sim, x, tmp_path):
    snap = snapshot_of(x, "tiny-01")
    vdis = disk_vdis(x, snap)
    r, data = download(sim, "/export", {"ref": snap})
    assert r.status_code == 200 and r.raw.version == 10  # xapi answers HTTP/1.0, length by EOF
    assert "Content-Length" not in r.headers and r.headers["task-id"].startswith("OpaqueRef:")
    assert wait_task(x, r.headers["task-id"])["status"] == "success"
    assert data[257:262] != b"ustar" and data[-1024:] == bytes(1024) and len(data) % 512 == 0
    members, _ = tar_members(data)
    names = [m[0] for m in members]
    assert names[0] == "ova.xml"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        header = xva.parse_ova_xml(tf.extractfile("ova.xml").read())
    assert header["version"]["export_vsn"] == "2"
    classes = [o["class"] for o in header["objects"]]
    assert classes.index("VM") < classes.index("VBD") < classes.index("VDI") < classes.index("SR")
    vm_obj = next(o for o in header["objects"] if o["class"] == "VM")["snapshot"]
    assert vm_obj["is_a_snapshot"] is False and vm_obj["snapshot_of"] == NULL and vm_obj["is_a_template"] is True
    vdi_ids = {o["snapshot"]["uuid"]: o["id"] for o in header["objects"] if o["class"] == "VDI"}
    assert all(i.startswith("Ref:") for i in vdi_ids.values())
    # Chunks: counter names, a checksum after each, zero chunks skipped but first and last kept.
    root_id = vdi_ids[x.VDI.get_uuid(vdis["0"])]
    chunks = [n for n in names if n.startswith(root_id + "/") and "." not in n.split("/")[1]]
    assert chunks[0] == f"{root_id}/00000000" and chunks[-1] == f"{root_id}/00000063"
    assert len(chunks) == 3 + 5 + 1, "all-zero chunks are left out, but the last one is kept"
    data_id = vdi_ids[x.VDI.get_uuid(vdis["1"])]
    sizes = {n: s for n, s, _ in members if n.startswith(data_id + "/") and "." not in n.split("/")[1]}
    assert list(sizes) == [f"{data_id}/00000000", f"{data_id}/00000039", f"{data_id}/00000040", f"{data_id}/00000041"]
    assert sizes[f"{data_id}/00000041"] == 8192, "the last chunk holds size mod 1 MiB"
    for n in chunks:
        assert names[names.index(n) + 1] == n + ".xxhash"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(tmp_path / "xva", filter="data")
    for dev, vdi in vdis.items():
        out = tmp_path / f"disk{dev}.raw"
        xva_img_export(tmp_path / "xva", vdi_ids[x.VDI.get_uuid(vdi)], out)
        assert sha256_file(out) == sim.sha256(x.VDI.get_uuid(vdi))


@pytest.mark.parametrize(
    ("query", "magic"), [("gzip", b"\x1f\x8b"), ("true", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd")]
)
def test_compressed_exports(sim, x, query, magic):
    snap = snapshot_of(x, "tiny-01")
    _, plain = download(sim, "/export", {"ref": snap})
    _, packed = download(sim, "/export", {"ref": snap, "use_compression": query})
    assert packed.startswith(magic) and len(packed) < len(plain)
    if magic == b"\x1f\x8b":
        import gzip  # noqa: PLC0415

        unpacked = gzip.decompress(packed)
    else:
        unpacked = zstandard.ZstdDecompressor().decompressobj().decompress(packed)
    strip = lambda d: [m for m in tar_members(d)[0] if m[0] != "ova.xml"]  # noqa: E731 - ova.xml has per-export ids
    assert [(n.split("/")[1], s) for n, s, _ in strip(unpacked)] == [(n.split("/")[1], s) for n, s, _ in strip(plain)]


def test_export_of_running_vm_is_refused(sim, x):
    web = vm_by_name(x, "tiny-run")
    task = x.task.create("export", "")
    r, body = download(sim, "/export", {"ref": web, "task_id": task})
    assert r.status_code == 500 and "VM_BAD_POWER_STATE" in body.decode()
    assert r.headers["task-id"] == task
    rec = wait_task(x, task)
    assert rec["status"] == "failure" and rec["error_info"] == [
        "VM_BAD_POWER_STATE",
        web,
        "halted, suspended",
        "running",
    ]


def test_raw_and_vhd_exports_agree_with_qemu_img(sim, x, tmp_path):
    snap = snapshot_of(x, "tiny-01")
    vdi = disk_vdis(x, snap)["0"]
    digest = sim.sha256(x.VDI.get_uuid(vdi))
    size = int(x.VDI.get_virtual_size(vdi))
    r, _ = download(sim, "/export_raw_vdi", {"vdi": vdi, "format": "raw"}, tmp_path / "d.raw")
    assert r.headers["content-type"] == "application/octet-stream"
    assert sha256_file(tmp_path / "d.raw") == digest
    r, _ = download(sim, "/export_raw_vdi", {"vdi": x.VDI.get_uuid(vdi), "format": "vhd"}, tmp_path / "d.vhd")
    assert r.headers["content-type"] == "application/vhd"
    assert (tmp_path / "d.vhd").stat().st_size < 12 << 20, "only allocated blocks are sent"
    # xapi's footer says creator "caml": qemu must be told to trust current_size over CHS geometry.
    # (qemu-img has no consistency check for vpc; info and a full conversion are what it offers.)
    opts = f"driver=vpc,force_size_calc=current_size,file.filename={tmp_path / 'd.vhd'}"
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "--image-opts", opts], capture_output=True, text=True, check=True
    )
    assert json.loads(info.stdout)["virtual-size"] == size
    subprocess.run(["qemu-img", "convert", "-O", "raw", "--image-opts", opts, tmp_path / "q.raw"], check=True)
    assert (tmp_path / "q.raw").stat().st_size == size
    assert sha256_file(tmp_path / "q.raw") == digest


def test_delta_vhd_carries_exactly_the_changed_blocks(sim, x, tmp_path):
    db = vm_by_name(x, "tiny-01")
    s1 = x.VM.snapshot(db, "d1")
    live = disk_vdis(x, db)["1"]
    sim.write(x.VDI.get_uuid(live), b"\xaa" * 5000, offset=(2 << 20) * 7 + 10)
    sim.write(x.VDI.get_uuid(live), b"\xbb" * (3 << 20), offset=(2 << 20) * 16)
    sim.write(x.VDI.get_uuid(live), b"\xcc" * 100, offset=42999808 - 100)
    s2 = x.VM.snapshot(db, "d2")
    base, new = disk_vdis(x, s1)["1"], disk_vdis(x, s2)["1"]
    _, raw = download(sim, "/export_raw_vdi", {"vdi": base, "format": "raw"}, tmp_path / "base.raw")
    _, delta = download(sim, "/export_raw_vdi", {"vdi": new, "format": "vhd", "base": base})
    footer = delta[:512]
    assert footer[:8] == b"conectix" and int.from_bytes(footer[60:64], "big") == 4  # differencing
    header = delta[512:1536]
    assert header[40:56] != bytes(16) and header[64:66] != b"\0\0"  # parent uuid and unicode name set
    # The collection's own stream reader applies the delta onto the base, as a restore would.
    reader = VhdStreamReader(io.BytesIO(delta), "delta")
    assert reader.is_differencing
    touched = set()
    size = int(x.VDI.get_virtual_size(new))
    with open(tmp_path / "base.raw", "r+b") as fh:
        for index, data in reader.blocks():
            touched.add(index)
            fh.seek(index * reader.block_size)
            fh.write(data[: max(0, size - index * reader.block_size)])
    assert touched == {7, 16, 17, 20}
    assert sha256_file(tmp_path / "base.raw") == sim.sha256(x.VDI.get_uuid(new))


def test_xva_round_trip_through_import(sim, x, tmp_path):
    test = vm_by_name(x, "tiny-01")
    before = x.VM.get_record(test)
    digest = sim.sha256(x.VDI.get_uuid(disk_vdis(x, test)["0"]))
    download(sim, "/export", {"ref": test, "use_compression": "zstd"}, tmp_path / "t.xva")
    session = sim.session()._session
    task = x.task.create("import", "")
    with open(tmp_path / "t.xva", "rb") as fh:
        r = sim.http("PUT", "/import", params={"session_id": session, "task_id": task, "restore": "true"}, data=fh)
    assert r.status_code == 200 and r.headers["task-id"] == task
    rec = wait_task(x, task)
    assert rec["status"] == "success", rec["error_info"]
    (new,) = _refs(rec["result"])
    after = x.VM.get_record(new)
    for field in ("name_label", "memory_static_max", "VCPUs_max", "tags", "HVM_boot_policy"):
        assert after[field] == before[field], field
    assert after["power_state"] == "Halted" and after["uuid"] != before["uuid"]
    assert sim.sha256(x.VDI.get_uuid(disk_vdis(x, new)["0"])) == digest
    macs = lambda vm: sorted(x.VIF.get_MAC(v) for v in x.VM.get_VIFs(vm))  # noqa: E731
    assert macs(new) == macs(test)


def _refs(result):
    import re  # noqa: PLC0415

    return re.findall(r"OpaqueRef:[0-9a-f-]+", result)


def _import(sim, x, data, **params):
    """PUT an XVA; xapi may drop the connection while the body is still being sent when it fails."""
    task = x.task.create("import", "")
    try:
        r = sim.http(
            "PUT", "/import", params={"session_id": sim.session()._session, "task_id": task, **params}, data=data
        )
    except requests.exceptions.ConnectionError:
        r = None
    return r, wait_task(x, task)


def test_import_refuses_chunked_transfer(sim, x, tmp_path):
    r, rec = _import(sim, x, iter([b"x" * 512]))
    assert r.status_code == 403
    assert rec["error_info"] == ["IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"]


def test_bad_xvas_fail_cleanly_and_leave_nothing(sim, x):
    test = vm_by_name(x, "tiny-01")
    _, data = download(sim, "/export", {"ref": test})
    vms_before, vdis_before = len(x.VM.get_all()), len(x.VDI.get_all())
    last_header = data.rfind(b"/00000041\0") // 512 * 512  # the data disk's mandatory last chunk
    _, rec = _import(sim, x, data[:last_header] + bytes(1024))
    assert rec["status"] == "failure" and rec["error_info"][0] in ("IMPORT_ERROR", "IMPORT_ERROR_PREMATURE_EOF")
    corrupted = bytearray(data)
    first_chunk = data.index(b"00000000\0") + 512 - data.index(b"00000000\0") % 512
    corrupted[first_chunk + 600] ^= 0xFF
    _, rec = _import(sim, x, bytes(corrupted))
    assert rec["error_info"] == ["IMPORT_ERROR_SOME_CHECKSUMS_FAILED"]
    assert (len(x.VM.get_all()), len(x.VDI.get_all())) == (vms_before, vdis_before)


def test_import_raw_vdi_raw_and_vhd(sim, x, tmp_path):
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    source = disk_vdis(x, snapshot_of(x, "tiny-01"))["0"]
    size = x.VDI.get_virtual_size(source)
    digest = sim.sha256(x.VDI.get_uuid(source))
    session = sim.session()._session
    for fmt in ("vhd", "raw"):
        _, body = download(sim, "/export_raw_vdi", {"vdi": source, "format": fmt}, tmp_path / f"s.{fmt}")
        target = x.VDI.create(
            {
                "name_label": f"restore-{fmt}",
                "SR": sr,
                "virtual_size": size,
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            }
        )
        task = x.task.create("import_raw_vdi", "")
        with open(tmp_path / f"s.{fmt}", "rb") as fh:
            r = sim.http(
                "PUT",
                "/import_raw_vdi",
                params={"session_id": session, "vdi": target, "format": fmt, "task_id": task},
                data=fh,
            )
        assert r.status_code == 200
        rec = wait_task(x, task)
        assert rec["status"] == "success", rec["error_info"]
        assert rec["result"] == f"<value>{target}</value>"
        assert sim.sha256(x.VDI.get_uuid(target)) == digest


def test_http_auth_variants_and_rbac(sim, x):
    test = vm_by_name(x, "tiny-01")
    vdi = disk_vdis(x, test)["0"]
    session = sim.session()._session
    base = {"vdi": vdi, "format": "vhd"}
    assert sim.http("GET", "/export_raw_vdi", params=base, cookies={"session_id": session}).status_code == 200
    assert sim.http("GET", "/export_raw_vdi", params=base, auth=(sim.username, sim.password)).status_code == 200
    task = x.task.create("unauth", "")
    r = sim.http("GET", "/export_raw_vdi", params={**base, "session_id": "OpaqueRef:bogus", "task_id": task})
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    assert x.task.get_status(task) == "pending", "the early credential check does not fail the task"
    assert sim.http("GET", "/export_raw_vdi", params=base, auth=(sim.username, "wrong")).status_code == 401
    ro = sim.session(sim.ro_username, sim.ro_password)._session
    task = x.task.create("denied", "")
    r = sim.http("GET", "/export_raw_vdi", params={**base, "session_id": ro, "task_id": task})
    assert r.status_code == 403
    assert wait_task(x, task)["error_info"][:2] == ["RBAC_PERMISSION_DENIED", "http/get_export_raw_vdi"]
    r, _ = download(sim, "/export_raw_vdi", {"vdi": vdi, "format": "qcow3"})
    assert r.status_code == 404
    assert wait_task(x, r.headers["task-id"])["error_info"] == ["INTERNAL_ERROR", "Unknown format qcow3"]


def test_fault_cut_stream_fails_the_task(sim, x):
    snap = snapshot_of(x, "tiny-01")
    sim.fault(path="/export", action="cut", after_bytes=3 << 20)
    r = sim.http("GET", "/export", params={"session_id": sim.session()._session, "ref": snap}, stream=True)
    got = 0
    with pytest.raises(requests.exceptions.RequestException):
        for chunk in r.iter_content(1 << 16):
            got += len(chunk)
        raise requests.exceptions.ChunkedEncodingError("stream ended at EOF")  # an EOF-delimited body just ends
    assert got <= 3 << 20
    assert wait_task(x, r.headers["task-id"])["status"] == "failure"
    # Only the next request was armed.
    _, full = download(sim, "/export", {"ref": snap})
    assert len(full) > 3 << 20


def test_fault_fail_task_before_headers(sim, x):
    snap = snapshot_of(x, "tiny-01")
    sim.fault(path="/export", action="fail_task", error=["VDI_IO_ERROR", "Device I/O errors"])
    r, body = download(sim, "/export", {"ref": snap})
    assert r.status_code == 500 and b"VDI_IO_ERROR" in body
    assert wait_task(x, r.headers["task-id"])["error_info"] == ["VDI_IO_ERROR", "Device I/O errors"]


def test_fault_throttle_limits_the_rate(sim, x):
    vdi = disk_vdis(x, snapshot_of(x, "tiny-01"))["0"]
    sim.fault(path="/export_raw_vdi", action="throttle", rate=8 << 20)
    started = time.monotonic()
    _, body = download(sim, "/export_raw_vdi", {"vdi": vdi, "format": "vhd"})
    elapsed = time.monotonic() - started
    assert len(body) > 4 << 20
    assert elapsed >= 0.7 * len(body) / (8 << 20), f"{len(body)} bytes in {elapsed:.2f}s is faster than the throttle"


def test_fault_stall_pauses_the_stream_once_and_loses_nothing(sim, x):
    vdi = disk_vdis(x, snapshot_of(x, "tiny-01"))["0"]
    _, expected = download(sim, "/export_raw_vdi", {"vdi": vdi, "format": "raw"})
    sim.fault(path="/export_raw_vdi", action="stall", after_bytes=3 << 20, seconds=1.5)
    r = sim.http("GET", "/export_raw_vdi", params={"session_id": sim.session()._session, "vdi": vdi, "format": "raw"},
                 stream=True)  # fmt: skip
    body, pause = bytearray(), 0.0
    last = time.monotonic()
    for chunk in r.iter_content(1 << 16):
        now = time.monotonic()
        if len(body) >= 2 << 20:  # the gap falls after the first 3 MiB, none before
            pause = max(pause, now - last)
        else:
            assert now - last < 1.0
        body += chunk
        last = now
    assert body == expected
    assert pause >= 1.2, f"the longest gap after 2 MiB was {pause:.2f}s"
    assert wait_task(x, r.headers["task-id"])["status"] == "success"

"""Streaming exports and imports through the simulator, including cut streams and failed tasks."""

import hashlib
import io

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import XapiConnectionError
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_http import ExportStream, TransferError, put_stream
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import parse_xapi_url
from xapisim.pytest_plugin import HERE

TINY = HERE / "labs" / "tiny.yml"


@pytest.fixture
def client(tiny):
    opts = ConnectionOptions(parse_xapi_url(tiny.url), tiny.username, tiny.password, ca_path=tiny.ca_path)
    with XapiClient(opts) as c:
        yield c


def snapshot_disk(client, vm_name="tiny-01"):
    vm = client.call("VM.get_by_name_label", vm_name)[0]
    snap = client.call("VM.snapshot", vm, "http-test")
    for vbd in client.call("VM.get_VBDs", snap):
        if client.call("VBD.get_userdevice", vbd) == "0":
            return snap, client.call("VBD.get_VDI", vbd)
    raise AssertionError("no disk 0")


def read_all(stream):
    h = hashlib.sha256()
    while True:
        data = stream.read(1 << 20)
        if not data:
            return h.hexdigest(), stream.bytes
        h.update(data)


def test_raw_export_streams_the_whole_disk(tiny, client):
    _, vdi = snapshot_disk(client)
    with ExportStream(client, "/export_raw_vdi", "export of tiny-01 disk 0", vdi=vdi, format="raw") as s:
        digest, n = read_all(s)
    assert n == 64 << 20
    assert digest == tiny.sha256(client.call("VDI.get_uuid", vdi))
    assert client.call("task.get_all") == [], "transfer tasks are destroyed afterwards"


def test_cut_stream_is_an_error_not_a_short_backup(tiny, client):
    snap, _ = snapshot_disk(client)
    tiny.fault(path="/export", action="cut", after_bytes=2 << 20)
    with ExportStream(client, "/export", "export of tiny-01", ref=snap) as s, pytest.raises(TransferError) as e:
        read_all(s)
    assert e.value.bytes_done <= 2 << 20
    assert "export of tiny-01" in str(e.value)
    assert client.session_id not in str(e.value)


def test_refused_export_names_the_xapi_error(client):
    vm = client.call("VM.get_by_name_label", "tiny-run")[0]
    with pytest.raises(TransferError) as e:
        ExportStream(client, "/export", "export of tiny-run", ref=vm).open()
    assert e.value.code == "VM_BAD_POWER_STATE"
    assert client.call("task.get_all") == []


def test_put_stream_imports_with_a_content_length(tiny, client):
    snap, vdi = snapshot_disk(client)
    with ExportStream(client, "/export_raw_vdi", "export", vdi=vdi, format="vhd") as s:
        buf = io.BytesIO()
        while chunk := s.read():
            buf.write(chunk)
    sr = client.call("VDI.get_SR", vdi)
    target = client.call(
        "VDI.create",
        {
            "name_label": "t",
            "SR": sr,
            "virtual_size": str(64 << 20),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        },
    )
    buf.seek(0)
    result = put_stream(client, "/import_raw_vdi", buf, len(buf.getvalue()), "import", vdi=target, format="vhd")
    assert result == target
    assert tiny.sha256(client.call("VDI.get_uuid", target)) == tiny.sha256(client.call("VDI.get_uuid", vdi))


def test_failed_import_task_is_reported(tiny, client):
    _, vdi = snapshot_disk(client)
    tiny.fault(path="/import_raw_vdi", action="fail_task", error=["VDI_IO_ERROR", "Device I/O errors"])
    with pytest.raises(TransferError) as e:
        put_stream(client, "/import_raw_vdi", io.BytesIO(bytes(4096)), 4096, "import of a test disk", vdi=vdi)
    assert e.value.code == "VDI_IO_ERROR"


def test_readinto_fills_reused_buffers_with_the_same_bytes(tiny, client):
    _, vdi = snapshot_disk(client)
    buf = memoryview(bytearray(3 << 20))  # not a divisor of the disk size: the last piece is short
    h, total = hashlib.sha256(), 0
    with ExportStream(client, "/export_raw_vdi", "export of tiny-01 disk 0", vdi=vdi, format="raw") as s:
        while n := s.readinto(buf):
            h.update(buf[:n])
            total += n
        assert s.readinto(buf) == 0 and s.read() == b"", "the end stays the end"
    assert total == s.bytes == 64 << 20
    assert h.hexdigest() == tiny.sha256(client.call("VDI.get_uuid", vdi))
    assert client.call("task.get_all") == []


def test_cut_stream_is_an_error_with_readinto_too(tiny, client):
    snap, _ = snapshot_disk(client)
    tiny.fault(path="/export", action="cut", after_bytes=2 << 20)
    buf = memoryview(bytearray(1 << 20))
    with ExportStream(client, "/export", "export of tiny-01", ref=snap) as s, pytest.raises(TransferError) as e:
        while s.readinto(buf):
            pass
    assert e.value.bytes_done <= 2 << 20
    assert client.session_id not in str(e.value)


def test_reads_of_every_size_in_any_order_give_the_exact_stream(tiny, client):
    """Large ``readinto`` calls read the socket directly, past http.client's buffer: mixing them with
    small ones and with ``read`` loses or repeats no byte."""
    _, vdi = snapshot_disk(client)
    h, sizes = hashlib.sha256(), []
    with ExportStream(client, "/export_raw_vdi", "export of tiny-01 disk 0", vdi=vdi, format="raw") as s:
        small = memoryview(bytearray(1000))  # smaller than http.client's buffer: read through it
        n = s.readinto(small)
        h.update(small[:n])
        assert s._sock is None
        big = memoryview(bytearray(3 << 20))
        for step in range(1000):
            if step % 3 == 2:
                data = s.read(100_000 + step)
                n = len(data)
                h.update(data)
            else:
                n = s.readinto(big)
                h.update(big[:n])
            if not n:
                break
            sizes.append(n)
        assert s._sock is not None, "the large reads went to the socket directly"
    assert s.bytes == 64 << 20 and len(sizes) > 20
    assert h.hexdigest() == tiny.sha256(client.call("VDI.get_uuid", vdi))


def test_a_stalled_export_times_out_with_a_clear_error(tiny):
    opts = ConnectionOptions(parse_xapi_url(tiny.url), tiny.username, tiny.password, ca_path=tiny.ca_path, timeout=1)
    with XapiClient(opts) as c:
        snap, _ = snapshot_disk(c)
        tiny.fault(path="/export", action="stall", after_bytes=8 << 20, seconds=20)
        buf = memoryview(bytearray(2 << 20))
        with ExportStream(c, "/export", "export of tiny-01", ref=snap) as s, pytest.raises(XapiConnectionError) as e:
            while s.readinto(buf):
                assert s._sock is not None  # the stall hits the direct reads
    assert "export of tiny-01 failed after" in str(e.value), e.value
    assert "the connection broke: TimeoutError" in str(e.value), e.value
    assert 0 < e.value.bytes_done <= 8 << 20


def test_readinto_over_plain_http(sim_factory):
    sim = sim_factory(lab=TINY, tls=False)
    opts = ConnectionOptions(parse_xapi_url(sim.url), sim.username, sim.password)
    with XapiClient(opts) as c:
        _, vdi = snapshot_disk(c)
        buf = memoryview(bytearray(3 << 20))
        h = hashlib.sha256()
        with ExportStream(c, "/export_raw_vdi", "export of tiny-01 disk 0", vdi=vdi, format="raw") as s:
            while n := s.readinto(buf):
                h.update(buf[:n])
            assert s._sock is not None
        assert s.bytes == 64 << 20
        assert h.hexdigest() == sim.sha256(c.call("VDI.get_uuid", vdi))

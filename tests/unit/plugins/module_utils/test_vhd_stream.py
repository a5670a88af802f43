"""Streaming VHD: the XO-style writer (checked with qemu-img) and the XAPI-stream parser."""

import hashlib
import io
import json
import struct
import subprocess
import tracemalloc
import uuid

import pytest
from vhd_support import (
    BS,
    MiB,
    assert_qemu_check_clean,
    needs_qemu,
    qemu_raw,
    qemu_virtual_size,
    random_disk,
    xapi_stream,
)

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdChecksumError,
    VhdFormatError,
    VhdTruncatedError,
    VhdUnsupportedError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    Footer,
    Header,
    chs_geometry,
    parse_bat,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_read import VhdStreamReader
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import IterReader, VhdWriter


class Trickle(io.RawIOBase):
    """Non-seekable reader that returns at most ``piece`` bytes per read, like a socket."""

    def __init__(self, data, piece=7000):
        self._data = memoryview(data)
        self._pos = 0
        self._piece = piece

    def readable(self):
        return True

    def read(self, n=-1):
        n = self._piece if n is None or n < 0 else min(n, self._piece)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


# -- writer -------------------------------------------------------------------------------------------


@needs_qemu
@pytest.mark.parametrize(("size", "seed"), [(7 * BS + 12345 * 512, 1), (16 * MiB, 2), (3 * BS, 3)])
def test_written_dynamic_vhd_reads_back_with_qemu(tmp_path, size, seed):
    blocks, raw = random_disk(size, seed)
    path = tmp_path / "full.vhd"
    uid = uuid.uuid4()
    writer = VhdWriter(size, sorted(blocks), uuid=uid)
    with open(path, "wb") as out:
        written = writer.write_to(out, (blocks[i] for i in sorted(blocks)))
    assert written == writer.size == path.stat().st_size
    assert qemu_raw(path, tmp_path) == raw
    assert qemu_virtual_size(path) == size
    assert_qemu_check_clean(path)
    # plain `-f vpc` sizes the disk from the CHS geometry for this creator: check our geometry
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", "vpc", str(path)], check=True, capture_output=True, text=True
    )
    cyl, heads, spt = chs_geometry(size)
    assert json.loads(info.stdout)["virtual-size"] == cyl * heads * spt * 512


def test_writer_layout_is_what_xo_writes(tmp_path):
    size = 5 * BS
    blocks = {1: b"\x11" * BS, 3: b"\x33" * BS}
    parent = uuid.uuid4()
    writer = VhdWriter(
        size,
        [1, 3],
        uuid="9d2f0000-0000-4000-8000-000000000001",
        parent_uuid=parent,
        parent_name="20240617T020003Z.vhd",
        timestamp=42,
    )
    data = b"".join(writer.iter_chunks([(1, blocks[1]), (3, blocks[3])]))
    assert len(data) == writer.size == 512 + 1024 + 512 + 2 * (512 + BS) + 512
    footer = Footer.parse(data[:512])
    assert data[-512:] == data[:512]
    assert footer.disk_type == 4 and footer.creator_application == b"xo  " and footer.timestamp == 42
    assert footer.uuid_str == "9d2f0000-0000-4000-8000-000000000001"
    header = Header.parse(data[512:1536])
    assert header.table_offset == 1536 and header.max_table_entries == 5
    assert header.parent_uuid == parent.bytes and header.parent_name == "20240617T020003Z.vhd"
    assert not any(loc.used for loc in header.locators)
    bat = parse_bat(data[1536:2048], 5)
    assert list(bat) == [0xFFFFFFFF, 4, 0xFFFFFFFF, 4 + 4097, 0xFFFFFFFF]
    assert data[2048 : 2048 + 512] == b"\xff" * 512
    assert data[2560 : 2560 + BS] == blocks[1]


def test_writer_refuses_inconsistent_block_data():
    writer = VhdWriter(4 * BS, [0, 2])
    with pytest.raises(VhdFormatError, match="ended after 1 of 2"):
        b"".join(writer.iter_chunks([bytes(BS)]))
    with pytest.raises(VhdFormatError, match="block 3 supplied where block 2"):
        b"".join(writer.iter_chunks([(0, bytes(BS)), (3, bytes(BS))]))
    with pytest.raises(VhdFormatError, match="expected 2097152"):
        b"".join(writer.iter_chunks([bytes(BS), bytes(10)]))
    with pytest.raises(ValueError, match="listed twice"):
        VhdWriter(4 * BS, [1, 1])
    with pytest.raises(ValueError, match="outside"):
        VhdWriter(4 * BS, [4])


def test_short_last_block_is_padded(tmp_path):
    size = BS + 4096
    writer = VhdWriter(size, [1])
    stream = writer.reader([b"\x7f" * 4096])
    reader = VhdStreamReader(stream)
    ((index, data),) = list(reader.blocks())
    assert index == 1 and data == b"\x7f" * 4096 + bytes(BS - 4096)


# -- parser on XAPI-layout streams ------------------------------------------------------------------


def test_parse_xapi_layout_stream():
    size = 6 * BS + 512
    blocks, _ = random_disk(size, 11, density=0.7)
    stream = xapi_stream(size, blocks)
    assert stream[1536:2048] == bytes(512)  # the zero sector vhd-tool leaves before the BAT
    reader = VhdStreamReader(Trickle(stream), "export_raw_vdi")
    assert reader.header.table_offset == 2048 and reader.virtual_size == size
    assert reader.footer.creator_application == b"caml" and not reader.is_differencing
    assert reader.block_order == sorted(blocks)
    got = list(reader.blocks())
    assert dict(got) == blocks and [i for i, _ in got] == sorted(blocks)
    assert reader.trailing_footer.to_bytes() == reader.footer.to_bytes()
    assert reader.position == len(stream)


def test_parse_blocks_out_of_order_with_padding_and_odd_table_offset():
    size = 8 * BS
    blocks, _ = random_disk(size, 12, density=1.0)
    order = [5, 0, 7, 2, 1, 6, 3, 4]
    stream = xapi_stream(size, blocks, order=order, table_offset=4096, gap_sectors=3)
    reader = VhdStreamReader(Trickle(stream, 100_000))
    assert reader.block_order == order
    got = list(reader.blocks())
    assert [i for i, _ in got] == order
    assert dict(got) == blocks


def test_parse_differencing_stream_exposes_parent():
    base = uuid.uuid4()
    blocks = {2: b"\x01" * BS}
    stream = xapi_stream(4 * BS, blocks, parent=(base, "/var/run/sr-mount/x/base.vhd"))
    reader = VhdStreamReader(io.BytesIO(stream))
    assert reader.is_differencing and reader.header.parent_uuid == base.bytes
    assert reader.header.parent_name == "/var/run/sr-mount/x/base.vhd"
    assert reader.header.locators[0].platform_code == b"MacX"
    assert list(reader.blocks()) == [(2, b"\x01" * BS)]


@pytest.mark.parametrize(
    ("cut", "what"),
    [
        (300, "footer copy"),
        (900, "dynamic header"),
        (1800, "padding before the BAT"),
        (2050, "BAT"),
        (2560 + 100, "sector bitmap of block 1"),
        (2560 + 512 + 5000, "data of block 1"),
        (-1, "trailing footer"),
        (-512, "trailing footer"),
    ],
)
def test_truncated_stream_is_detected(cut, what):
    blocks = {1: b"\x02" * BS, 3: b"\x03" * BS}
    stream = xapi_stream(4 * BS, blocks)
    with pytest.raises(VhdTruncatedError, match=what):
        reader = VhdStreamReader(Trickle(stream[:cut]))
        list(reader.blocks())


def test_stream_corruption_is_reported():
    stream = bytearray(xapi_stream(2 * BS, {0: b"\x05" * BS}))
    bad = bytes(stream)
    bad = bad[:-10] + b"XXXXXXXXXX"
    with pytest.raises(VhdChecksumError):
        list(VhdStreamReader(io.BytesIO(bad)).blocks())
    with pytest.raises(VhdFormatError, match="HTTP response"):
        VhdStreamReader(io.BytesIO(b"HTTP/1.1 500 Internal Error\r\n" + bytes(600)))
    # a BAT entry pointing back into the BAT cannot be read from a stream
    stream[2048:2052] = struct.pack(">I", 4)
    with pytest.raises(VhdFormatError, match="BAT entry 0"):
        VhdStreamReader(io.BytesIO(bytes(stream)))


def test_partial_bitmaps():
    size = 2 * BS
    stream = bytearray(xapi_stream(size, {0: b"\x09" * BS}))
    bitmap_at = 2048 + 512
    stream[bitmap_at : bitmap_at + 512] = b"\x80" + bytes(511)  # only sector 0 present
    # dynamic: sectors not in the bitmap read as zeros
    ((_, data),) = list(VhdStreamReader(io.BytesIO(bytes(stream))).blocks())
    assert data == b"\x09" * 512 + bytes(BS - 512)
    # raw access gives the bitmap and the stored bytes unchanged
    ((_, bitmap, raw),) = list(VhdStreamReader(io.BytesIO(bytes(stream))).blocks(with_bitmap=True))
    assert bitmap[:1] == b"\x80" and raw == b"\x09" * BS
    diff = bytearray(xapi_stream(size, {0: b"\x09" * BS}, parent=(uuid.uuid4(), "p.vhd")))
    diff[bitmap_at : bitmap_at + 512] = b"\x80" + bytes(511)
    with pytest.raises(VhdUnsupportedError, match="partial sector bitmap"):
        list(VhdStreamReader(io.BytesIO(bytes(diff))).blocks())


def test_xapi_stream_to_xo_vhd(tmp_path):
    """The backup path: parse XAPI's stream and re-emit XO's VHD without buffering the disk."""
    size = 10 * BS
    blocks, raw = random_disk(size, 21, density=0.6)
    reader = VhdStreamReader(Trickle(xapi_stream(size, blocks, order=sorted(blocks, reverse=True))))
    writer = VhdWriter(reader.virtual_size, reader.block_order, uuid=uuid.uuid4(), block_size=reader.block_size)
    out = io.BytesIO()
    assert writer.write_to(out, reader.blocks()) == writer.size == len(out.getvalue())
    again = VhdStreamReader(io.BytesIO(out.getvalue()))
    assert dict(again.blocks()) == blocks


# -- memory ----------------------------------------------------------------------------------------


def test_streaming_a_1gib_disk_uses_bounded_memory():
    """Writer -> parser on a 1 GiB sparse disk (256 blocks, 512 MiB of data) stays far below 32 MiB."""
    size = 2**30
    present = list(range(0, size // BS, 2))

    def block(index):
        return struct.pack(">I", index) * (BS // 4)

    tracemalloc.start()
    try:
        writer = VhdWriter(size, present, uuid=uuid.uuid4())
        reader = VhdStreamReader(writer.reader(block(i) for i in present))
        digest = hashlib.sha256()
        seen = []
        for index, data in reader.blocks():
            seen.append(index)
            digest.update(data[:64])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == present
    expected = hashlib.sha256(b"".join(block(i)[:64] for i in present)).hexdigest()
    assert digest.hexdigest() == expected
    assert reader.position == writer.size
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_iter_reader_is_a_file():
    reader = IterReader([b"abc", b"", b"defgh"], size=8)
    assert reader.read(2) == b"ab" and reader.read(5) == b"c"
    buf = bytearray(4)
    assert reader.readinto(buf) == 4 and bytes(buf) == b"defg"
    assert reader.read() == b"h" and reader.read(3) == b""

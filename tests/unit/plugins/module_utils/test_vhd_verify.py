"""check_vhd finds deliberately corrupted VHDs and stays quiet on healthy ones."""

import io
import struct
import uuid

import pytest
from vhd_support import BS, random_disk, write_vhd, xapi_stream

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import vhd_checksum
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_verify import check_vhd, check_vhd_file

SIZE = 5 * BS
BAT_AT = 1536  # XO layout: footer, header, BAT


@pytest.fixture
def good(tmp_path):
    blocks, _ = random_disk(SIZE, 3, density=1.0)
    ids = uuid.uuid4(), uuid.uuid4()
    parent, child = tmp_path / "parent.vhd", tmp_path / "child.vhd"
    write_vhd(parent, SIZE, blocks, uuid=ids[0])
    write_vhd(child, SIZE, {1: blocks[1]}, uuid=ids[1], parent=(ids[0], "parent.vhd"))
    return parent, child


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def problems_of(path):
    found = check_vhd_file(str(path))
    assert all(p.startswith(str(path)) for p in found)
    return " | ".join(found)


def test_healthy_files_have_no_problems(good):
    parent, child = good
    assert check_vhd_file(str(parent)) == []
    assert check_vhd_file(str(child)) == []
    # XAPI's layout (BAT at 2048, locator 0 at the zero sector) is healthy too
    stream = xapi_stream(SIZE, {0: bytes(BS), 3: bytes(BS)}, parent=(uuid.uuid4(), "/x/base.vhd"))
    assert check_vhd(io.BytesIO(stream), "xapi.vhd") == []


def test_trailing_footer_checksum(good):
    parent, _ = good
    size = parent.stat().st_size
    corrupt(parent, size - 512 + 200, b"\x01")
    report = problems_of(parent)
    assert "trailing footer" in report and "checksum" in report and str(size - 512) in report


def test_footer_copy_cookie(good):
    parent, _ = good
    corrupt(parent, 0, b"nothere!")
    report = problems_of(parent)
    assert "footer copy" in report and "cookie" in report


def test_copy_differs_from_trailing_footer_with_valid_checksums(good):
    parent, _ = good
    raw = bytearray(parent.read_bytes()[:512])
    raw[24:28] = struct.pack(">I", 99)  # another timestamp, checksum fixed up
    raw[64:68] = struct.pack(">I", vhd_checksum(raw, 64))
    corrupt(parent, 0, bytes(raw))
    assert "differs from the trailing footer" in problems_of(parent)


def test_header_checksum(good):
    parent, _ = good
    corrupt(parent, 512 + 900, b"\x42")
    assert "dynamic header" in problems_of(parent)


def test_bat_entry_past_end_of_file(good):
    parent, _ = good
    corrupt(parent, BAT_AT + 4 * 2, struct.pack(">I", 10**6))
    report = problems_of(parent)
    assert "BAT entry 2" in report and "past the data area" in report


def test_overlapping_bat_entries(good):
    parent, _ = good
    first = struct.unpack(">I", parent.read_bytes()[BAT_AT : BAT_AT + 4])[0]
    corrupt(parent, BAT_AT + 4 * 3, struct.pack(">I", first + 8))
    assert "block 3" in problems_of(parent) and "overlaps block 0" in problems_of(parent)


def test_bat_entry_inside_the_bat(good):
    parent, _ = good
    corrupt(parent, BAT_AT + 4 * 4, struct.pack(">I", BAT_AT // 512))
    assert "overlaps" in problems_of(parent)


def test_truncated_file(good):
    parent, _ = good
    data = parent.read_bytes()
    parent.write_bytes(data[: len(data) - BS])
    report = problems_of(parent)
    assert "trailing footer" in report and "past the data area" in report


def test_too_few_bat_entries(good):
    parent, _ = good
    header = bytearray(parent.read_bytes()[512:1536])
    header[28:32] = struct.pack(">I", 2)
    header[36:40] = struct.pack(">I", vhd_checksum(header, 36))
    corrupt(parent, 512, bytes(header))
    assert "2 entries, 5 are needed" in problems_of(parent)


def test_missing_parent(good):
    parent, child = good
    parent.unlink()
    assert "parent 'parent.vhd' not found" in problems_of(child)
    assert check_vhd_file(str(child), check_parent=False) == []


def test_parent_uuid_mismatch(good):
    parent, child = good
    write_vhd(parent, SIZE, {0: bytes(BS)}, uuid=uuid.uuid4())
    assert "does not match" in problems_of(child)


def test_not_a_vhd_at_all(tmp_path):
    path = tmp_path / "junk.vhd"
    path.write_bytes(b"hello")
    assert "too small" in problems_of(path)
    path.write_bytes(bytes(4096))
    report = problems_of(path)
    assert "footer copy" in report and "trailing footer" in report


def test_many_bad_entries_are_summarised(good):
    parent, _ = good
    corrupt(parent, BAT_AT, struct.pack(">I", 10**6) * 5)
    blocks = 5
    assert len([p for p in check_vhd_file(str(parent)) if "BAT entry" in p]) == blocks

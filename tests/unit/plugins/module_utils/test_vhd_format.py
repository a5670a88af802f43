"""VHD structures: footer, header, BAT, checksums, geometry, sector bitmaps."""

import struct
import uuid

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _vhd_bitmap as bm
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdChecksumError,
    VhdError,
    VhdFormatError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    BAT_UNUSED,
    DISK_TYPE_DIFFERENCING,
    VHD_EPOCH,
    Footer,
    Header,
    ParentLocator,
    bat_bytes,
    bitmap_bytes,
    build_bat,
    chs_geometry,
    encode_parent_name,
    make_footer,
    parse_bat,
    vhd_checksum,
    vhd_timestamp,
)


def test_footer_layout_and_checksum():
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    raw = make_footer(10 * 2**30, 3, uid, timestamp=1234).to_bytes()
    assert len(raw) == 512
    assert raw[:8] == b"conectix"
    assert struct.unpack_from(">IIQI", raw, 8) == (2, 0x00010000, 512, 1234)
    assert raw[28:32] == b"xo  " and raw[36:40] == b"Wi2k"
    assert struct.unpack_from(">QQ", raw, 40) == (10 * 2**30, 10 * 2**30)
    assert struct.unpack_from(">I", raw, 60)[0] == 3
    assert raw[68:84] == uid.bytes
    # ones' complement of the byte sum with the checksum field zeroed
    zeroed = raw[:64] + b"\0" * 4 + raw[68:]
    assert struct.unpack_from(">I", raw, 64)[0] == (~sum(zeroed)) & 0xFFFFFFFF
    parsed = Footer.parse(raw)
    assert parsed.uuid_str == str(uid)
    assert parsed.to_bytes() == raw


def test_footer_keeps_unknown_bytes_on_round_trip():
    raw = bytearray(make_footer(2**20, 3).to_bytes())
    raw[85] = 1  # XO's "hidden" byte, in the reserved area
    raw[64:68] = struct.pack(">I", vhd_checksum(raw, 64))
    assert Footer.parse(bytes(raw)).to_bytes() == bytes(raw)


@pytest.mark.parametrize(
    ("offset", "value", "error", "text"),
    [(0, b"c0nectix", VhdFormatError, "cookie"), (100, b"\x01", VhdChecksumError, "checksum")],
)
def test_footer_errors_name_the_problem_and_place(offset, value, error, text):
    raw = bytearray(make_footer(2**20, 3).to_bytes())
    raw[offset : offset + len(value)] = value
    with pytest.raises(error) as info:
        Footer.parse(bytes(raw), "disk.vhd", 4096)
    message = str(info.value)
    assert text in message and "4096" in message and "disk.vhd" in message
    assert isinstance(info.value, VhdError)
    Footer.parse(bytes(raw), verify=False)  # still readable on demand, e.g. for diagnostics


def test_header_parent_fields_round_trip():
    parent = uuid.uuid4()
    header = Header(table_offset=1536, max_table_entries=10, parent_uuid=parent.bytes, parent_timestamp=77)
    header.parent_unicode_name = encode_parent_name("20240617T020003Z.vhd")
    header.locators[0] = ParentLocator(b"MacX", 512, 30, 0, 1536)
    raw = header.to_bytes()
    assert len(raw) == 1024 and raw[:8] == b"cxsparse"
    assert struct.unpack_from(">QQIII", raw, 8) == (2**64 - 1, 1536, 0x00010000, 10, 2 * 2**20)
    assert raw[64 : 64 + 40] == "20240617T020003Z.vhd".encode("utf-16-be")
    back = Header.parse(raw)
    assert back.parent_name == "20240617T020003Z.vhd"
    assert back.parent_uuid_str == str(parent)
    assert back.parent_timestamp == 77
    assert back.locators[0].platform_code == b"MacX" and back.locators[0].data_offset == 1536
    assert back.to_bytes() == raw
    raw = bytearray(raw)
    raw[600] ^= 1
    with pytest.raises(VhdChecksumError, match="dynamic header checksum"):
        Header.parse(bytes(raw), "x.vhd", 512)


def test_parent_name_too_long_is_refused():
    with pytest.raises(ValueError, match="UTF-16"):
        encode_parent_name("x" * 257)
    assert len(encode_parent_name("é" * 256)) == 512


def test_bat_round_trip_and_padding():
    bat = [3, BAT_UNUSED, 4100, BAT_UNUSED, 9]
    raw = build_bat(bat)
    assert len(raw) == bat_bytes(5) == 512
    assert raw[:20] == b"".join(struct.pack(">I", v) for v in bat)
    assert raw[20:] == b"\xff" * (512 - 20)
    assert list(parse_bat(raw, 5)) == bat
    assert bat_bytes(129) == 1024


@pytest.mark.parametrize(
    ("size", "chs"),
    [
        (2**20, (30, 4, 17)),  # 2048 sectors: 17 sectors/track, at least 4 heads
        (2**30, (2080, 16, 63)),  # too many cylinders at 17 and 31 sectors/track
        (40 * 2**30, (20560, 16, 255)),
        (4 * 2**40, (65535, 16, 255)),  # clamped to the largest CHS disk
    ],
)
def test_chs_geometry_follows_the_specification(size, chs):
    assert chs_geometry(size) == chs


def test_timestamps_count_from_2000():
    assert vhd_timestamp(VHD_EPOCH + 5) == 5
    assert vhd_timestamp(0) == 0  # clamped, never negative


def test_bitmap_masks_and_runs():
    block = 2 * 2**20
    assert bitmap_bytes(block) == 512 and bitmap_bytes(4096) == 512
    bitmap = bytearray(512)
    bitmap[0] = 0b1100_0000  # sectors 0 and 1
    bitmap[1] = 0b0000_0001  # sector 15
    bitmap[511] = 0xFF  # sectors 4088..4095
    mask = bm.bitmap_to_mask(bytes(bitmap), block)
    assert bm.mask_runs(mask, block) == [(0, 2), (15, 16), (4088, 4096)]
    assert bm.mask_to_bitmap(mask, block) == bytes(bitmap)
    assert bm.bitmap_to_mask(bm.full_bitmap(block), block) == bm.full_mask(block)
    data = bytes(range(256)) * (block // 256)
    kept = bm.keep_runs(data, [(15, 16)], block)
    assert kept[15 * 512 : 16 * 512] == data[15 * 512 : 16 * 512]
    assert kept.count(0) == block - 512 + data[15 * 512 : 16 * 512].count(0)


def test_small_block_bitmap_ignores_padding_bits():
    # 4 KiB blocks have 8 sectors: one bitmap byte, padded to a sector
    assert bm.bitmap_to_mask(b"\xff" + b"\xaa" * 511, 4096) == 0xFF
    assert bm.mask_to_bitmap(0b1000_0001, 4096)[:2] == b"\x81\x00"


def test_differencing_footer_flag():
    assert make_footer(2**20, DISK_TYPE_DIFFERENCING).is_differencing

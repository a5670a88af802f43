"""Helpers shared by the VHD tests (this module holds no tests).

Fixtures are built from first principles: random sparse disk content, XAPI-layout streams
assembled by hand from the structures, and qemu-img as an independent reader.
"""

import json
import os
import random
import shutil
import struct
import subprocess

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import mask_to_bitmap
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    BAT_UNUSED,
    DEFAULT_BLOCK_SIZE,
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    SECTOR_SIZE,
    Header,
    ParentLocator,
    bitmap_bytes,
    build_bat,
    encode_parent_name,
    make_footer,
    uuid_bytes,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter

MiB = 1024 * 1024
BS = DEFAULT_BLOCK_SIZE

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (Debian qemu-utils) not installed")


def random_block(rng, block_size=BS, fill=0.5):
    """A block with random data in some sector runs and zeros elsewhere."""
    data = bytearray(block_size)
    sectors = block_size // SECTOR_SIZE
    for _ in range(4):
        start = rng.randrange(sectors)
        length = rng.randrange(1, max(2, int(sectors * fill / 4)))
        end = min(sectors, start + length)
        data[start * SECTOR_SIZE : end * SECTOR_SIZE] = rng.randbytes((end - start) * SECTOR_SIZE)
    return bytes(data)


def random_disk(size, seed, density=0.5, block_size=BS):
    """({index: block data}, raw content) for a sparse disk of ``size`` bytes."""
    rng = random.Random(seed)
    count = -(-size // block_size)
    blocks = {}
    raw = bytearray(size)
    for index in range(count):
        if rng.random() < density:
            data = bytearray(random_block(rng, block_size))
            end = min(size, (index + 1) * block_size)
            data[end - index * block_size :] = bytes(block_size - (end - index * block_size))
            blocks[index] = bytes(data)
            raw[index * block_size : end] = data[: end - index * block_size]
    return blocks, bytes(raw)


def write_vhd(path, size, blocks, uuid=None, parent=None, masks=None, block_size=BS):
    """Write an XO-style VHD with VhdWriter; ``parent`` = (uuid, name) makes it differencing.

    ``masks`` {index: sector mask} then patches those blocks' bitmaps in place (bitmaps are not
    checksummed), to build differencing disks that only hold some sectors of a block.
    """
    order = sorted(blocks)
    kwargs = {}
    if parent is not None:
        kwargs = {"parent_uuid": parent[0], "parent_name": parent[1]}
    writer = VhdWriter(size, order, uuid=uuid, block_size=block_size, **kwargs)
    with open(path, "wb") as out:
        assert writer.write_to(out, (blocks[i] for i in order)) == writer.size
    if masks:
        first = 512 + 1024 + len(build_bat([0] * writer.entries))
        span = bitmap_bytes(block_size) + block_size
        with open(path, "r+b") as out:
            for index, mask in masks.items():
                out.seek(first + order.index(index) * span)
                out.write(mask_to_bitmap(mask, block_size))
    return writer


def xapi_stream(size, blocks, order=None, parent=None, table_offset=2048, gap_sectors=0, block_size=BS, uid=None):
    """A VHD stream laid out as XAPI's vhd-tool sends it, built by hand from the structures.

    footer copy, header at 512 (table_offset 2048 by default), a zero sector at 1536 (where
    locator 0 points for a differencing stream), BAT, then blocks in ``order`` (default
    ascending) separated by ``gap_sectors`` of padding, then the footer. ``parent`` = (uuid, path).
    """
    order = sorted(blocks) if order is None else order
    entries = -(-size // block_size)
    disk_type = DISK_TYPE_DIFFERENCING if parent else DISK_TYPE_DYNAMIC
    footer = make_footer(size, disk_type, uid, timestamp=0, creator=b"caml", host_os=b"\0\0\0\0").to_bytes()
    header = Header(table_offset=table_offset, max_table_entries=entries, block_size=block_size)
    if parent:
        header.parent_uuid = uuid_bytes(parent[0])
        header.parent_unicode_name = encode_parent_name(parent[1])
        locator = ("file://" + parent[1]).encode()
        header.locators[0] = ParentLocator(b"MacX", SECTOR_SIZE, len(locator), 0, 1536)
    bat = [BAT_UNUSED] * entries
    bat_raw_len = len(build_bat(bat))
    position = table_offset + bat_raw_len
    span = bitmap_bytes(block_size) + block_size
    for index in order:
        position += gap_sectors * SECTOR_SIZE
        bat[index] = position // SECTOR_SIZE
        position += span
    out = bytearray(footer + header.to_bytes() + bytes(SECTOR_SIZE))
    out += bytes(table_offset - len(out))
    out += build_bat(bat)
    bitmap = b"\xff" * bitmap_bytes(block_size)
    for index in order:
        out += bytes(gap_sectors * SECTOR_SIZE)
        out += bitmap + blocks[index]
    out += footer
    return bytes(out)


def qemu_raw(path, tmp_path):
    """The disk content as qemu-img reads it.

    qemu sizes a VHD from its CHS geometry unless the creator is one it knows to use
    current_size; 'xo  ' is not one of them, so force current_size as Xen Orchestra and XAPI do.
    """
    out = tmp_path / (os.path.basename(str(path)) + ".qemu.raw")
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "--image-opts",
            f"driver=vpc,force_size_calc=current_size,file.filename={path}",
            "-O",
            "raw",
            str(out),
        ],
        check=True,
    )
    data = out.read_bytes()
    out.unlink()
    return data


def qemu_virtual_size(path):
    info = subprocess.run(
        [
            "qemu-img",
            "info",
            "--output=json",
            "--image-opts",
            f"driver=vpc,force_size_calc=current_size,file.filename={path}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(info.stdout)["virtual-size"]


def qemu_check(path):
    """(returncode, output) of ``qemu-img check -f vpc``; qemu's vpc driver has no check (rc 63)."""
    proc = subprocess.run(["qemu-img", "check", "-f", "vpc", str(path)], check=False, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def assert_qemu_check_clean(path):
    code, output = qemu_check(path)
    if code == 63 and "does not support checks" in output:
        return  # qemu 7.x: the vpc driver implements no check; conversion tests cover readability
    assert code == 0, output


def pack_u32(value):
    return struct.pack(">I", value)

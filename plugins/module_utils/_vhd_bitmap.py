"""Sector bitmaps of VHD blocks.

Each allocated block starts with a bitmap holding one bit per sector, most significant bit first
(sector ``s`` is ``bitmap[s >> 3] & (0x80 >> (s & 7))``). A set bit means the block holds that
sector; a clear bit means "not here": zeros for a dynamic disk, the parent's data for a
differencing disk. Bitmaps are handled as Python ints (sector 0 = highest bit) because the
set operations a chain read or a merge needs are then single C-level operations.
"""

from __future__ import annotations

import re

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import SECTOR_SIZE, bitmap_bytes

_RUN = re.compile(r"1+")


def sectors_per_block(block_size):
    return block_size // SECTOR_SIZE


def full_mask(block_size):
    return (1 << sectors_per_block(block_size)) - 1


def full_bitmap(block_size):
    """The all-ones bitmap XAPI and Xen Orchestra write in front of every block."""
    return b"\xff" * bitmap_bytes(block_size)


def bitmap_to_mask(bitmap, block_size):
    """Int whose bit ``sectors-1-s`` is sector ``s``'s bit; padding bits past the block are dropped."""
    sectors = sectors_per_block(block_size)
    used = -(-sectors // 8)
    return int.from_bytes(bytes(bitmap[:used]), "big") >> (used * 8 - sectors)


def mask_to_bitmap(mask, block_size):
    """On-disk bitmap for ``mask`` (padding sectors of the bitmap area stay zero)."""
    if mask == full_mask(block_size):
        return full_bitmap(block_size)
    sectors = sectors_per_block(block_size)
    used = -(-sectors // 8)
    raw = (mask << (used * 8 - sectors)).to_bytes(used, "big")
    return raw + b"\0" * (bitmap_bytes(block_size) - used)


def mask_runs(mask, block_size):
    """[(first_sector, end_sector)] of the runs of set bits, in ascending order."""
    sectors = sectors_per_block(block_size)
    return [m.span() for m in _RUN.finditer(format(mask, f"0{sectors}b"))]


def copy_runs(dst, src, runs):
    """Copy the sectors of ``runs`` from ``src`` into the bytearray ``dst`` (same block layout)."""
    for start, end in runs:
        dst[start * SECTOR_SIZE : end * SECTOR_SIZE] = src[start * SECTOR_SIZE : end * SECTOR_SIZE]


def keep_runs(data, runs, block_size):
    """``data`` with every sector outside ``runs`` zeroed."""
    out = bytearray(block_size)
    copy_runs(out, data, runs)
    return out

"""VHD as xapi's vhd-tool streams it (``/export_raw_vdi?format=vhd``) and as ``/import_raw_vdi`` reads it.

Layout written (xapi-protocol.md §5): footer copy at 0, dynamic header at 512 (table offset 2048),
one zero sector at 1536 (where parent locator 0 points; its data is not written), the BAT at 2048
padded to a sector with 0xFFFFFFFF, then every included block as a full 0xFF sector bitmap plus
2 MiB of data in ascending order, then the footer. All integers are big-endian.
"""

import struct
import time
import uuid

from .storage import BLOCK

SECTOR = 512
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
DYNAMIC, DIFFERENCING = 3, 4
UNUSED = 0xFFFFFFFF
BITMAP = b"\xff" * SECTOR


class VhdError(Exception):
    pass


def _checksum(buf):
    return (~sum(buf)) & 0xFFFFFFFF


def geometry(size):
    """CHS geometry as the VHD specification (appendix) computes it."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = sectors // spt
    else:
        spt = 17
        cyl_heads = sectors // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = sectors // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = sectors // spt
    return cyl_heads // heads, heads, spt


def footer(size, disk_type, uid=None):
    cyl, heads, spt = geometry(size)
    buf = bytearray(
        struct.pack(
            ">8sIIQI4sI4sQQHBBII16sB427x",
            b"conectix",
            2,
            0x00010000,
            SECTOR,  # data offset: the dynamic header
            0,
            b"caml",
            0x00010000,
            b"\0\0\0\0",
            size,
            size,
            cyl,
            heads,
            spt,
            disk_type,
            0,
            (uid or uuid.uuid4()).bytes,
            0,
        )
    )
    struct.pack_into(">I", buf, 64, _checksum(buf))
    return bytes(buf)


def header(size, parent=None):
    """``parent`` = (footer uid bytes, mtime seconds since 1970, path) for a differencing disk."""
    entries = (size + BLOCK - 1) // BLOCK
    buf = bytearray(1024)
    struct.pack_into(">8sQQIIII", buf, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, 2048, 0x00010000, entries, BLOCK, 0)
    if parent is not None:
        uid, mtime, path = parent
        buf[40:56] = uid
        struct.pack_into(">I", buf, 56, max(0, int(mtime) - VHD_EPOCH))
        name = path.encode("utf-16-be")[:512]
        buf[64 : 64 + len(name)] = name
        locator = ("file://" + path).encode("utf-8")
        # Locator 0: MacX, one sector of space at 1536 (the sector vhd-tool leaves zeroed).
        struct.pack_into(">4sIIIQ", buf, 576, b"MacX", SECTOR, len(locator), 0, 1536)
    struct.pack_into(">I", buf, 36, _checksum(buf))
    return bytes(buf)


def stream(size, blocks, read_block, parent=None):
    """Yield the VHD stream for ``blocks`` (sorted indexes) whose data ``read_block(i)`` returns."""
    entries = (size + BLOCK - 1) // BLOCK
    bat_bytes = ((entries * 4 + SECTOR - 1) // SECTOR) * SECTOR
    foot = footer(size, DIFFERENCING if parent else DYNAMIC)
    yield foot
    yield header(size, parent)
    yield bytes(SECTOR)
    bat = bytearray(b"\xff" * bat_bytes)
    sector = (2048 + bat_bytes) // SECTOR
    for b in blocks:
        struct.pack_into(">I", bat, b * 4, sector)
        sector += (SECTOR + BLOCK) // SECTOR
    yield bytes(bat)
    for b in blocks:
        yield BITMAP
        yield read_block(b)
    yield foot


def timestamp_now():
    return int(time.time())


class Reader:
    """Sequential parse of a VHD body (no seeking), as ``/import_raw_vdi?format=vhd`` consumes it."""

    def __init__(self, read_exact):
        self.read_exact = read_exact
        self.pos = 0

    def _read(self, n):
        data = self.read_exact(n)
        if len(data) != n:
            raise VhdError("premature end of VHD stream")
        self.pos += n
        return data

    def _skip_to(self, offset):
        if offset < self.pos:
            raise VhdError(f"VHD structure at {offset} lies before the stream position {self.pos}")
        while self.pos < offset:
            self._read(min(offset - self.pos, 1 << 20))

    def blocks(self):
        """Yield (virtual offset, bytes) runs of sectors present in the VHD."""
        foot = self._read(SECTOR)
        if foot[:8] != b"conectix":
            raise VhdError("not a VHD: footer cookie missing")
        data_offset, size, disk_type = (
            struct.unpack_from(">Q", foot, 16)[0],
            struct.unpack_from(">Q", foot, 48)[0],
            struct.unpack_from(">I", foot, 60)[0],
        )
        self.size = size
        if disk_type not in (DYNAMIC, DIFFERENCING):
            raise VhdError(f"unsupported VHD disk type {disk_type}")
        self._skip_to(data_offset)
        hdr = self._read(1024)
        if hdr[:8] != b"cxsparse":
            raise VhdError("not a dynamic VHD: header cookie missing")
        table_offset, _, entries, block_size = struct.unpack_from(">QIII", hdr, 16)
        self._skip_to(table_offset)
        bat = struct.unpack(f">{entries}I", self._read(entries * 4))
        bitmap_len = ((block_size // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
        order = sorted((s, i) for i, s in enumerate(bat) if s != UNUSED)
        for sector, index in order:
            self._skip_to(sector * SECTOR)
            bitmap = self._read(bitmap_len)
            data = self._read(block_size)
            base = index * block_size
            run_start = None
            for s in range(block_size // SECTOR + 1):
                bit = s < block_size // SECTOR and bitmap[s >> 3] & (0x80 >> (s & 7))
                if bit and run_start is None:
                    run_start = s
                elif not bit and run_start is not None:
                    start = base + run_start * SECTOR
                    # The last block may extend past the disk's end; those bytes are not part of it.
                    end = min(base + s * SECTOR, size)
                    if end > start:
                        yield start, data[run_start * SECTOR : run_start * SECTOR + end - start]
                    run_start = None

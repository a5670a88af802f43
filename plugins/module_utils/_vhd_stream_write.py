"""Emit the VHD Xen Orchestra writes (xo-backups.md §1 "VHDs that XO writes"), as a stream.

Layout: footer, header (table_offset 1536, no parent locators), BAT, then the present blocks each
as a full 0xFF sector bitmap plus the data, then the footer again. Because the block list is
known before the data (the XAPI stream's BAT gives it), the BAT and the exact output size are
computed up front; the data then flows through one block at a time.
"""

from __future__ import annotations

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import full_bitmap
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import VhdFormatError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    DEFAULT_BLOCK_SIZE,
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR_SIZE,
    XO_CREATOR,
    Header,
    VhdIdentity,
    bat_bytes,
    block_count,
    build_bat,
    check_block_size,
    empty_bat,
    encode_parent_name,
    make_footer,
    uuid_bytes,
)


class VhdWriter(VhdIdentity):
    """Plan and emit one dynamic (type 3) or differencing (type 4) VHD.

    ``block_indexes`` lists the blocks that will be written, in the order their data will come
    (usually ascending; any order is valid VHD). ``uuid`` becomes the footer uuid (XO: the snapshot
    VDI uuid). Giving ``parent_uuid`` makes a differencing disk whose header names the parent by
    ``parent_name`` (XO: the parent file name relative to the child) and ``parent_timestamp``
    (VHD seconds). ``timestamp`` is in VHD seconds (since 2000-01-01 UTC), default now.
    """

    def __init__(
        self,
        virtual_size,
        block_indexes,
        uuid=None,
        parent_uuid=None,
        parent_name="",
        parent_timestamp=0,
        block_size=DEFAULT_BLOCK_SIZE,
        timestamp=None,
        creator=XO_CREATOR,
    ):
        check_block_size(block_size)
        if virtual_size <= 0:
            raise ValueError(f"virtual size must be positive, got {virtual_size}")
        self.block_size = block_size  # virtual_size, uuid and the parent's come from the footer and header
        self.entries = block_count(virtual_size, block_size)
        self.block_indexes = list(block_indexes)
        disk_type = DISK_TYPE_DIFFERENCING if parent_uuid is not None else DISK_TYPE_DYNAMIC
        self.footer = make_footer(virtual_size, disk_type, uuid, timestamp, creator)
        self.header = Header(
            table_offset=FOOTER_SIZE + HEADER_SIZE, max_table_entries=self.entries, block_size=block_size
        )
        if parent_uuid is not None:
            self.header.parent_uuid = uuid_bytes(parent_uuid)
            self.header.parent_unicode_name = encode_parent_name(parent_name or "")
            self.header.parent_timestamp = parent_timestamp

        bat = empty_bat(self.entries)
        self._bitmap = full_bitmap(block_size)
        self._span = len(self._bitmap) + block_size
        first = FOOTER_SIZE + HEADER_SIZE + bat_bytes(self.entries)
        sector = first // SECTOR_SIZE
        for index in self.block_indexes:
            if not 0 <= index < self.entries:
                raise ValueError(f"block index {index} outside 0..{self.entries - 1} for {virtual_size} bytes")
            if bat[index] != 0xFFFFFFFF:
                raise ValueError(f"block index {index} listed twice")
            bat[index] = sector
            sector += self._span // SECTOR_SIZE
        self._bat = build_bat(bat)
        self.size = first + len(self.block_indexes) * self._span + FOOTER_SIZE

    def prologue(self):
        """Footer copy, header and BAT: the bytes before the first block."""
        return self.footer.to_bytes() + self.header.to_bytes() + self._bat

    def block(self, index, data):
        """The bytes of planned block ``index``: its full bitmap, then the data (the last block zero padded)."""
        if len(data) != self.block_size:
            if len(data) > self.block_size or index != self.entries - 1:
                raise VhdFormatError(f"block {index} has {len(data)} bytes, expected {self.block_size}")
            data = bytes(data) + b"\0" * (self.block_size - len(data))
        return self._bitmap, data

    def epilogue(self):
        return self.footer.to_bytes()

    def iter_chunks(self, blocks):
        """Yield the VHD as byte strings; ``blocks`` yields each block's data, or (index, data) pairs,
        in the order of ``block_indexes``. Only the last virtual block may be shorter (zero padded)."""
        yield self.prologue()
        expected = iter(self.block_indexes)
        count = 0
        for item in blocks:
            index = next(expected, None)
            if index is None:
                raise VhdFormatError(f"more blocks supplied than the {len(self.block_indexes)} planned")
            if isinstance(item, tuple):
                got, data = item
                if got != index:
                    raise VhdFormatError(f"block {got} supplied where block {index} was planned (#{count})")
            else:
                data = item
            yield from self.block(index, data)
            count += 1
        if count != len(self.block_indexes):
            raise VhdFormatError(f"block data ended after {count} of {len(self.block_indexes)} planned blocks")
        yield self.epilogue()

    def write_to(self, out, blocks):
        """Write the whole VHD to ``out`` (anything with ``write``); returns the bytes written (== size)."""
        written = 0
        for chunk in self.iter_chunks(blocks):
            out.write(chunk)
            written += len(chunk)
        return written

    def reader(self, blocks):
        """A file-like object (``read(n)``) over the VHD bytes, e.g. for an HTTP PUT body."""
        return IterReader(self.iter_chunks(blocks), self.size)


class IterReader:
    """Read-only file-like view of an iterator of byte strings (bounded by the largest item)."""

    def __init__(self, chunks, size=None):
        self._chunks = iter(chunks)
        self._buf = b""
        self._pos = 0  # offset into _buf
        self.size = size
        self.position = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            rest = [self._buf[self._pos :], *self._chunks]
            self._buf, self._pos = b"", 0
            data = b"".join(rest)
            self.position += len(data)
            return data
        while len(self._buf) - self._pos == 0:
            nxt = next(self._chunks, None)
            if nxt is None:
                return b""
            self._buf, self._pos = nxt, 0
        data = self._buf[self._pos : self._pos + n]
        self._pos += len(data)
        self.position += len(data)
        return bytes(data)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self):
        close = getattr(self._chunks, "close", None)
        if close:
            close()

"""Random-access reading of one dynamic or differencing VHD file.

The file is anything with ``read(n)`` and ``seek(offset[, whence])`` (plus ``write`` for merges),
so a storage backend can hand over a ranged reader instead of a local file. The footer copy at
offset 0 is preferred: it is what a merge rewrites last, while the trailing footer is
overwritten whenever a block is appended.
"""

from __future__ import annotations

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import bitmap_to_mask, full_mask
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdFormatError,
    VhdTruncatedError,
    VhdUnsupportedError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    BAT_UNUSED,
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR_SIZE,
    Footer,
    Header,
    VhdIdentity,
    bat_bytes,
    bitmap_bytes,
    check_block_size,
    parse_bat,
    round_up,
)


def file_size(fileobj):
    end = fileobj.seek(0, 2)
    return fileobj.tell() if end is None else end


def read_at(fileobj, offset, size, source, what, position=None):
    """Exactly ``size`` bytes at ``offset`` (None: where the file is, ``position`` for messages),
    or VhdTruncatedError naming ``what``."""
    if offset is not None:
        fileobj.seek(offset)
    else:
        offset = position
    data = fileobj.read(size)
    if len(data) < size:
        pieces = [data]
        got = len(data)
        while got < size:
            piece = fileobj.read(size - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        data = b"".join(pieces)
    if len(data) != size:
        raise VhdTruncatedError(f"file ends inside the {what}: got {len(data)} of {size} bytes", source, offset)
    return data


class VhdFile(VhdIdentity):
    """One VHD file opened for random access; ``name`` is used in messages and to find the parent."""

    def __init__(self, fileobj, name="<vhd>", size=None):
        self.file = fileobj
        self.name = name
        self.size = file_size(fileobj) if size is None else size
        if self.size < FOOTER_SIZE:
            raise VhdTruncatedError(f"file is {self.size} bytes, smaller than a VHD footer", name, 0)
        self.footer = self._read_footer()
        if self.footer.disk_type == DISK_TYPE_FIXED:
            raise VhdUnsupportedError("fixed VHDs are not supported", name)
        if self.footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
            raise VhdFormatError(f"unknown disk type {self.footer.disk_type}", name, 60)
        header_at = self.footer.data_offset
        self.header = Header.parse(read_at(fileobj, header_at, HEADER_SIZE, name, "dynamic header"), name, header_at)
        check_block_size(self.header.block_size, name, header_at + 32)
        self.block_size = self.header.block_size
        self.bitmap_size = bitmap_bytes(self.block_size)
        entries = self.header.max_table_entries
        self.bat = parse_bat(read_at(fileobj, self.header.table_offset, entries * 4, name, "BAT"), entries)

    def _read_footer(self):
        """Footer copy at 0, else the trailing footer; the first error is raised if both are bad."""
        try:
            return Footer.parse(read_at(self.file, 0, FOOTER_SIZE, self.name, "footer copy"), self.name, 0)
        except VhdFormatError as first:
            try:
                end = self.size - FOOTER_SIZE
                return Footer.parse(read_at(self.file, end, FOOTER_SIZE, self.name, "footer"), self.name, end)
            except VhdFormatError:
                raise first from None

    @property
    def block_span(self):
        """Bytes one allocated block takes in the file (bitmap + data)."""
        return self.bitmap_size + self.block_size

    # -- blocks -----------------------------------------------------------------------------------
    def has_block(self, index):
        return index < len(self.bat) and self.bat[index] != BAT_UNUSED

    def allocated_blocks(self):
        """Indexes of allocated blocks, ascending."""
        return [i for i, sector in enumerate(self.bat) if sector != BAT_UNUSED]

    def block_offset(self, index):
        return self.bat[index] * SECTOR_SIZE

    def read_block_raw(self, index):
        """(bitmap bytes, data bytes) of an allocated block, or None when the BAT has no entry."""
        if not self.has_block(index):
            return None
        offset = self.block_offset(index)
        bitmap = read_at(self.file, offset, self.bitmap_size, self.name, f"sector bitmap of block {index}")
        # read right after the bitmap: no second seek, and no 2 MiB slice copy of one big read
        data = read_at(self.file, None, self.block_size, self.name, f"data of block {index}", offset + self.bitmap_size)
        return bitmap, data

    def read_block_mask(self, index):
        """(sector mask, data) of an allocated block, else None; see _vhd_bitmap for masks."""
        raw = self.read_block_raw(index)
        if raw is None:
            return None
        bitmap, data = raw
        return bitmap_to_mask(bitmap, self.block_size), data

    def data_end(self):
        """First byte after every structure the file references (header, BAT, locators, blocks).

        New blocks are appended here. It is derived from the metadata, not from the file size,
        so a block half-written by an interrupted merge is simply overwritten on the next run.
        """
        end = max(FOOTER_SIZE, self.footer.data_offset + HEADER_SIZE)
        end = max(end, self.header.table_offset + bat_bytes(self.header.max_table_entries))
        for loc in self.header.locators:
            if loc.used and loc.data_offset:
                end = max(end, loc.data_offset + loc.space_bytes())
        for sector in self.bat:
            if sector != BAT_UNUSED:
                end = max(end, sector * SECTOR_SIZE + self.block_span)
        return round_up(end, SECTOR_SIZE)

    def full_mask(self):
        return full_mask(self.block_size)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_vhd(path, mode="rb"):
    """Open a local VHD file (``mode`` 'r+b' for merges)."""
    fileobj = open(path, mode)  # noqa: SIM115 - owned by the returned VhdFile
    try:
        return VhdFile(fileobj, path)
    except BaseException:
        fileobj.close()
        raise

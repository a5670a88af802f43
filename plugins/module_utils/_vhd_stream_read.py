"""Sequential parse of a dynamic or differencing VHD stream, as ``GET /export_raw_vdi?format=vhd`` sends it.

XAPI's layout (xapi-protocol.md §5): footer copy, header at 512, a zero sector, the BAT at 2048,
then each block (512 B bitmap + data) in ascending order, then the footer. Nothing here relies on
those offsets: the reader follows ``data_offset`` and ``table_offset`` forward, visits blocks in
the order of their sector offsets (whatever their index) and skips any padding in between. It
never seeks and holds at most one block in memory.
"""

from __future__ import annotations

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import (
    bitmap_to_mask,
    full_mask,
    keep_runs,
    mask_runs,
)
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
    bitmap_bytes,
    check_block_size,
    parse_bat,
)

_SKIP_PIECE = 1024 * 1024


def read_exact(fileobj, size):
    """Read ``size`` bytes, looping over short reads; fewer bytes are returned only at end of file."""
    data = fileobj.read(size)
    if data is None:
        data = b""
    if len(data) >= size or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < size:
        piece = fileobj.read(size - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


class VhdStreamReader(VhdIdentity):
    """Parse a VHD from a non-seekable file-like object (anything with ``read(n)``).

    The constructor reads the footer copy, the dynamic header and the BAT; ``blocks()`` then
    yields the blocks in stream order and finally checks the trailing footer.
    """

    def __init__(self, fileobj, name="VHD stream"):
        self._file = fileobj
        self.name = name
        self.position = 0
        self.trailing_footer = None
        self.trailing_padding = 0  # bytes between the last block and the trailing footer
        self._started = False

        self._footer_raw = self._read(FOOTER_SIZE, "footer copy")
        if self._footer_raw[:5] == b"HTTP/":
            raise VhdFormatError("stream starts with an HTTP response instead of a VHD footer", name, 0)
        self.footer = Footer.parse(self._footer_raw, name, 0)
        if self.footer.disk_type == DISK_TYPE_FIXED:
            raise VhdUnsupportedError("fixed VHD streams are not supported (no header, BAT or blocks)", name, 0)
        if self.footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
            raise VhdFormatError(f"unknown disk type {self.footer.disk_type}", name, 60)

        self._skip_to(self.footer.data_offset, "dynamic header")
        header_at = self.position
        self.header = Header.parse(self._read(HEADER_SIZE, "dynamic header"), name, header_at)
        check_block_size(self.header.block_size, name, header_at + 32)
        self.block_size = self.header.block_size
        self._bitmap_size = bitmap_bytes(self.block_size)

        entries = self.header.max_table_entries
        self._skip_to(self.header.table_offset, "BAT")
        bat_at = self.position
        self.bat = parse_bat(self._read(entries * 4, "BAT"), entries)

        # Blocks come in the order of their offsets; validate that order now so that a bad BAT
        # fails before any data is consumed.
        self._order = sorted((sector, index) for index, sector in enumerate(self.bat) if sector != BAT_UNUSED)
        end = self.position
        span = self._bitmap_size + self.block_size
        for sector, index in self._order:
            if sector * SECTOR_SIZE < end:
                raise VhdFormatError(
                    f"BAT entry {index} points at sector {sector}, inside the preceding data (ends at byte {end})",
                    name,
                    bat_at + 4 * index,
                )
            end = sector * SECTOR_SIZE + span
        self.block_order = [index for _, index in self._order]

    # -- properties the engine needs (the rest come from VhdIdentity) -----------------------------
    @property
    def disk_type(self):
        return self.footer.disk_type

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, size, what):
        data = read_exact(self._file, size)
        if len(data) != size:
            raise VhdTruncatedError(
                f"stream ended inside the {what}: got {len(data)} of {size} bytes", self.name, self.position
            )
        self.position += size
        return data

    def _skip_to(self, offset, what):
        if offset < self.position:
            raise VhdFormatError(
                f"the {what} is at byte {offset}, before the current stream position {self.position}",
                self.name,
                offset,
            )
        while self.position < offset:
            self._read(min(offset - self.position, _SKIP_PIECE), f"padding before the {what}")

    def blocks(self, with_bitmap=False):
        """Yield ``(block_index, data)`` in stream order, then check the trailing footer.

        ``data`` is the block's content, ``block_size`` bytes. Sectors whose bitmap bit is clear
        read as zeros on a dynamic disk; on a differencing disk they belong to the parent, which
        plain ``(index, data)`` cannot express, so a partial bitmap there raises
        VhdUnsupportedError. With ``with_bitmap=True`` the raw ``(index, bitmap, data)`` is
        yielded instead and nothing is interpreted.
        """
        if self._started:
            raise RuntimeError("VhdStreamReader.blocks() can run only once: the stream is sequential")
        self._started = True
        full = full_mask(self.block_size)
        for sector, index in self._order:
            self._skip_to(sector * SECTOR_SIZE, f"block {index}")
            bitmap = self._read(self._bitmap_size, f"sector bitmap of block {index}")
            data = self._read(self.block_size, f"data of block {index}")
            if with_bitmap:
                yield index, bitmap, data
                continue
            mask = bitmap_to_mask(bitmap, self.block_size)
            if mask != full:
                if self.is_differencing:
                    raise VhdUnsupportedError(
                        f"block {index} of a differencing stream has a partial sector bitmap; "
                        "read it with blocks(with_bitmap=True)",
                        self.name,
                        sector * SECTOR_SIZE,
                    )
                data = bytes(keep_runs(data, mask_runs(mask, self.block_size), self.block_size))
            yield index, data
        self._read_trailing_footer()

    def _read_trailing_footer(self):
        # The footer is the last 512 bytes before end of stream; keep only a bounded tail.
        start = self.position
        tail = b""
        while True:
            piece = self._file.read(_SKIP_PIECE)
            if not piece:
                break
            tail = (tail + piece)[-FOOTER_SIZE:]
            self.position += len(piece)
        if self.position - start < FOOTER_SIZE:
            raise VhdTruncatedError(
                f"stream ended {self.position - start} bytes after the last block, before the trailing footer",
                self.name,
                self.position,
            )
        footer_at = self.position - FOOTER_SIZE
        self.trailing_footer = Footer.parse(tail, self.name, footer_at)
        self.trailing_padding = footer_at - start
        if tail != self._footer_raw:
            raise VhdFormatError("trailing footer differs from the footer copy at offset 0", self.name, footer_at)

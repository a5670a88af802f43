"""Full consistency check of one VHD file, reporting every problem found instead of raising.

Used by ``backup_info`` with ``verify: true``: cookies, checksums, header fields, footer copy ==
trailing footer, BAT entries inside the file and not overlapping each other or the metadata,
and, when an opener is given, the link to the parent (exists, uuid matches).
"""

from __future__ import annotations

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import parent_path
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import VhdError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import VhdFile, file_size, read_at
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    BAT_UNUSED,
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    NO_OFFSET,
    SECTOR_SIZE,
    Footer,
    Header,
    bat_bytes,
    bitmap_bytes,
    block_count,
    parse_bat,
    uuid_str,
)

MAX_LISTED = 20  # per kind of repeated problem (bad BAT entries, overlaps)


class _Report:
    def __init__(self, name):
        self.name = name
        self.problems = []
        self._counts = {}

    def add(self, message, offset=None, kind=None):
        if kind is not None:
            count = self._counts.get(kind, 0) + 1
            self._counts[kind] = count
            if count > MAX_LISTED:
                return
        where = f" (offset {offset})" if offset is not None else ""
        self.problems.append(f"{self.name}: {message}{where}")

    def finish(self):
        for kind, count in self._counts.items():
            if count > MAX_LISTED:
                self.problems.append(f"{self.name}: ... and {count - MAX_LISTED} more {kind} problems")
        return self.problems


def _footer_at(fileobj, offset, name, what, report):
    try:
        raw = read_at(fileobj, offset, FOOTER_SIZE, name, what)
        return raw, Footer.parse(raw, name, offset)
    except VhdError as exc:
        report.add(f"{what}: {exc.message}", offset)
        return None, None


def check_vhd(fileobj, name="<vhd>", size=None, parent_opener=None):
    """List the problems of the VHD in ``fileobj`` (empty list: healthy).

    ``parent_opener(path)`` (optional) opens the parent of a differencing disk, whose path is the
    header's parent name relative to ``name``; it may raise FileNotFoundError.
    """
    report = _Report(name)
    size = file_size(fileobj) if size is None else size
    if size < FOOTER_SIZE + HEADER_SIZE + FOOTER_SIZE:
        report.add(f"file is {size} bytes, too small for a dynamic VHD")
        if size < FOOTER_SIZE:
            return report.finish()
    if size % SECTOR_SIZE:
        report.add(f"file size {size} is not a multiple of {SECTOR_SIZE}")

    end_raw, trailing = _footer_at(fileobj, size - FOOTER_SIZE, name, "trailing footer", report)
    copy_raw, copy = _footer_at(fileobj, 0, name, "footer copy", report)
    if end_raw is not None and copy_raw is not None and end_raw != copy_raw:
        report.add("footer copy at offset 0 differs from the trailing footer")
    footer = copy or trailing
    if footer is None:
        return report.finish()
    if footer.version != FORMAT_VERSION:
        report.add(f"footer file format version 0x{footer.version:08x}, expected 0x{FORMAT_VERSION:08x}", 12)
    if footer.disk_type == DISK_TYPE_FIXED:
        report.add("fixed VHDs are not supported")
        return report.finish()
    if footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
        report.add(f"unknown disk type {footer.disk_type}", 60)
        return report.finish()
    if footer.current_size <= 0:
        report.add(f"virtual size {footer.current_size} is not positive", 48)

    data_end = size - FOOTER_SIZE
    header_at = footer.data_offset
    if header_at < FOOTER_SIZE or header_at + HEADER_SIZE > data_end:
        report.add(f"footer data_offset {header_at} does not point inside the file", 16)
        return report.finish()
    try:
        header = Header.parse(read_at(fileobj, header_at, HEADER_SIZE, name, "dynamic header"), name, header_at)
    except VhdError as exc:
        report.add(f"dynamic header: {exc.message}", header_at)
        return report.finish()
    _check_header(report, footer, header, header_at, data_end)

    regions = [(0, FOOTER_SIZE, "footer copy"), (header_at, header_at + HEADER_SIZE, "dynamic header")]
    entries = header.max_table_entries
    table_end = header.table_offset + bat_bytes(entries)
    block_size = header.block_size
    if table_end > data_end:
        report.add(f"BAT ({entries} entries at {header.table_offset}) extends past the data area", header.table_offset)
        return report.finish()
    regions.append((header.table_offset, table_end, "BAT"))
    for slot, loc in enumerate(header.locators):
        if loc.used and loc.data_length:
            loc_end = loc.data_offset + loc.space_bytes()
            if loc.data_offset < FOOTER_SIZE or loc_end > data_end:
                report.add(f"parent locator {slot} data [{loc.data_offset}, {loc_end}) lies outside the data area")
            else:
                regions.append((loc.data_offset, loc_end, f"parent locator {slot} data"))

    if block_size >= SECTOR_SIZE and not block_size & (block_size - 1):
        bat = parse_bat(read_at(fileobj, header.table_offset, entries * 4, name, "BAT"), entries)
        span = bitmap_bytes(block_size) + block_size
        for index, sector in enumerate(bat):
            if sector == BAT_UNUSED:
                continue
            start = sector * SECTOR_SIZE
            if start + span > data_end:
                report.add(
                    f"BAT entry {index} (sector {sector}) points past the data area ending at {data_end}",
                    header.table_offset + 4 * index,
                    kind="BAT entry",
                )
            else:
                regions.append((start, start + span, f"block {index}"))
    _check_overlaps(report, regions)

    if footer.disk_type == DISK_TYPE_DIFFERENCING and parent_opener is not None and header.parent_name:
        _check_parent(report, name, header, parent_opener)
    return report.finish()


def _check_header(report, footer, header, header_at, data_end):
    if header.data_offset != NO_OFFSET:
        report.add(f"header data_offset is 0x{header.data_offset:x}, expected 0x{NO_OFFSET:x}", header_at + 8)
    if header.version != FORMAT_VERSION:
        report.add(f"header version 0x{header.version:08x}, expected 0x{FORMAT_VERSION:08x}", header_at + 24)
    block_size = header.block_size
    if block_size < SECTOR_SIZE or block_size & (block_size - 1):
        report.add(f"block size {block_size} is not a power of two of at least 512", header_at + 32)
    else:
        needed = block_count(footer.current_size, block_size)
        if header.max_table_entries < needed:
            report.add(
                f"BAT has {header.max_table_entries} entries, {needed} are needed for {footer.current_size} bytes",
                header_at + 28,
            )
    if header.table_offset % SECTOR_SIZE:
        report.add(f"BAT offset {header.table_offset} is not sector aligned", header_at + 16)
    if footer.disk_type == DISK_TYPE_DIFFERENCING:
        if header.parent_uuid == bytes(16):
            report.add("differencing disk without a parent uuid", header_at + 40)
        if not header.parent_name:
            report.add("differencing disk without a parent name", header_at + 64)


def _check_overlaps(report, regions):
    regions.sort()
    for (a_start, a_end, a_what), (b_start, _b_end, b_what) in zip(regions, regions[1:]):
        if b_start < a_end:
            report.add(f"{b_what} at {b_start} overlaps {a_what} [{a_start}, {a_end})", b_start, kind="overlap")


def _check_parent(report, name, header, parent_opener):
    path = parent_path(name, header.parent_name)
    try:
        fileobj = parent_opener(path)
    except FileNotFoundError:
        report.add(f"parent {header.parent_name!r} not found at {path!r}")
        return
    try:
        parent = VhdFile(fileobj, path)
    except VhdError as exc:
        report.add(f"parent {path!r} cannot be read: {exc}")
        fileobj.close()
        return
    with parent:
        if parent.uuid != header.parent_uuid:
            report.add(
                f"parent uuid {uuid_str(header.parent_uuid)} does not match {path!r} (uuid {uuid_str(parent.uuid)})"
            )


def _open_local(path):
    return open(path, "rb")  # noqa: SIM115 - closed by the caller


def check_vhd_file(path, check_parent=True):
    """check_vhd on a local file; the parent is looked up next to it when ``check_parent``."""
    with open(path, "rb") as fileobj:
        return check_vhd(fileobj, path, parent_opener=_open_local if check_parent else None)

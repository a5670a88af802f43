"""VHD on-disk structures: footer, dynamic header, parent locators, BAT, checksums, geometry.

Facts from the VHD specification and from what XAPI (vhd-tool) and Xen Orchestra write
(reference notes xapi-protocol.md §5, xo-backups.md §1). All integers are big-endian.
Parsing keeps every byte (reserved areas included) so that re-emitting a parsed structure after
changing a few fields alters nothing else; only the checksum is recomputed.
"""

from __future__ import annotations

import struct
import sys
import time
import uuid as uuidlib
from array import array
from dataclasses import dataclass, field, replace

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdChecksumError,
    VhdFormatError,
)

SECTOR_SIZE = 512
FOOTER_SIZE = 512
HEADER_SIZE = 1024
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
BAT_UNUSED = 0xFFFFFFFF
NO_OFFSET = 0xFFFFFFFFFFFFFFFF  # header data_offset, and footer data_offset of fixed disks

DISK_TYPE_FIXED = 2
DISK_TYPE_DYNAMIC = 3
DISK_TYPE_DIFFERENCING = 4
DISK_TYPE_NAMES = {DISK_TYPE_FIXED: "fixed", DISK_TYPE_DYNAMIC: "dynamic", DISK_TYPE_DIFFERENCING: "differencing"}

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FORMAT_VERSION = 0x00010000
FEATURES_RESERVED = 2  # "reserved" feature bit, always set
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix timestamp
XO_CREATOR = b"xo  "
HOST_OS_WINDOWS = b"Wi2k"  # what Xen Orchestra writes; XAPI writes 4 zero bytes
PARENT_NAME_SIZE = 512
LOCATOR_COUNT = 8
MAX_CHS_SECTORS = 65535 * 16 * 255

# Field order and struct formats of the footer and the header (everything but the locators and the
# trailing reserved area of the header); the dataclasses below use the same names.
_FOOTER_FIELDS = (
    "cookie", "features", "version", "data_offset", "timestamp", "creator_application", "creator_version",
    "creator_host_os", "original_size", "current_size", "cylinders", "heads", "sectors_per_track", "disk_type",
    "checksum", "uuid", "saved_state", "reserved",
)  # fmt: skip
_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427s")
_FOOTER_CHECKSUM_AT = 64
_HEADER_FIELDS = (
    "cookie", "data_offset", "table_offset", "version", "max_table_entries", "block_size", "checksum",
    "parent_uuid", "parent_timestamp", "reserved1", "parent_unicode_name",
)  # fmt: skip
_HEADER = struct.Struct(">8sQQIIII16sII512s")
_LOCATOR = struct.Struct(">4sIIIQ")
_HEADER_CHECKSUM_AT = 36
_LOCATORS_AT = 576
_HEADER_TAIL_AT = _LOCATORS_AT + LOCATOR_COUNT * _LOCATOR.size  # 768

assert _FOOTER.size == FOOTER_SIZE
assert _HEADER_TAIL_AT + 256 == HEADER_SIZE


def vhd_checksum(buf, checksum_at):
    """Ones' complement of the byte sum of ``buf`` with its 4-byte checksum field taken as zero."""
    total = sum(buf) - sum(buf[checksum_at : checksum_at + 4])
    return ~total & 0xFFFFFFFF


def round_up(value, multiple):
    return -(-value // multiple) * multiple


def uuid_bytes(value=None):
    """16 raw bytes from a uuid.UUID, a uuid string or 16 bytes; None makes a random one."""
    if value is None:
        return uuidlib.uuid4().bytes
    if isinstance(value, uuidlib.UUID):
        return value.bytes
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 16:
            raise ValueError(f"a raw uuid is 16 bytes, got {len(value)}")
        return bytes(value)
    return uuidlib.UUID(str(value)).bytes


def uuid_str(raw):
    return str(uuidlib.UUID(bytes=bytes(raw)))


def vhd_timestamp(unix_seconds=None):
    """VHD timestamps count seconds since 2000-01-01 UTC (clamped to the field's range)."""
    if unix_seconds is None:
        unix_seconds = time.time()
    return min(max(int(unix_seconds) - VHD_EPOCH, 0), 0xFFFFFFFF)


def unix_time(vhd_seconds):
    return vhd_seconds + VHD_EPOCH


def chs_geometry(size):
    """(cylinders, heads, sectors per track) for ``size`` bytes, per the VHD specification appendix."""
    total = min(size // SECTOR_SIZE, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def _check_cookie(buf, cookie, what, source, offset):
    if len(buf) < len(cookie) or bytes(buf[: len(cookie)]) != cookie:
        raise VhdFormatError(f"bad {what} cookie {bytes(buf[:8])!r}, expected {cookie!r}", source, offset)


@dataclass
class Footer:
    """The 512-byte hard disk footer (the copy at offset 0 of dynamic disks is identical)."""

    current_size: int = 0
    disk_type: int = DISK_TYPE_DYNAMIC
    uuid: bytes = b"\0" * 16
    timestamp: int = 0
    original_size: int = 0
    geometry: tuple = (0, 0, 0)
    data_offset: int = FOOTER_SIZE
    creator_application: bytes = XO_CREATOR
    creator_version: int = 0
    creator_host_os: bytes = HOST_OS_WINDOWS
    features: int = FEATURES_RESERVED
    version: int = FORMAT_VERSION
    saved_state: int = 0
    reserved: bytes = b"\0" * 427
    cookie: bytes = FOOTER_COOKIE
    checksum: int = 0  # as stored when parsed; to_bytes() always writes the right one

    @classmethod
    def parse(cls, buf, source=None, offset=0, verify=True):
        """Parse 512 bytes; with ``verify`` a bad cookie or checksum raises VhdFormatError/VhdChecksumError."""
        if len(buf) < FOOTER_SIZE:
            raise VhdFormatError(f"footer needs {FOOTER_SIZE} bytes, got {len(buf)}", source, offset)
        buf = bytes(buf[:FOOTER_SIZE])
        if verify:
            _check_cookie(buf, FOOTER_COOKIE, "footer", source, offset)
        fields = dict(zip(_FOOTER_FIELDS, _FOOTER.unpack(buf)))
        if verify:
            expected = vhd_checksum(buf, _FOOTER_CHECKSUM_AT)
            if fields["checksum"] != expected:
                raise VhdChecksumError(
                    f"bad footer checksum 0x{fields['checksum']:08x}, content sums to 0x{expected:08x}", source, offset
                )
        fields["geometry"] = (fields.pop("cylinders"), fields.pop("heads"), fields.pop("sectors_per_track"))
        return cls(**fields)

    def to_bytes(self):
        values = dict(vars(self), checksum=0)
        values["cylinders"], values["heads"], values["sectors_per_track"] = self.geometry
        buf = bytearray(_FOOTER.pack(*(values[name] for name in _FOOTER_FIELDS)))
        struct.pack_into(">I", buf, _FOOTER_CHECKSUM_AT, vhd_checksum(buf, _FOOTER_CHECKSUM_AT))
        return bytes(buf)

    @property
    def uuid_str(self):
        return uuid_str(self.uuid)

    @property
    def is_differencing(self):
        return self.disk_type == DISK_TYPE_DIFFERENCING

    def replace(self, **changes):
        return replace(self, **changes)


@dataclass
class ParentLocator:
    """One of the 8 parent locator entries of the dynamic header (platform code 0 = unused)."""

    platform_code: bytes = b"\0\0\0\0"
    data_space: int = 0  # sectors per the specification; some writers store bytes
    data_length: int = 0
    reserved: int = 0
    data_offset: int = 0

    @property
    def used(self):
        return self.platform_code != b"\0\0\0\0"

    def space_bytes(self):
        """Bytes reserved at data_offset. The specification says sectors, but blktap and vhd-tool store
        bytes; a sector-multiple value that covers data_length is therefore taken as bytes."""
        if self.data_space % SECTOR_SIZE == 0 and self.data_space >= self.data_length:
            return self.data_space
        return self.data_space * SECTOR_SIZE


def _empty_locators():
    return [ParentLocator() for _ in range(LOCATOR_COUNT)]


@dataclass
class Header:
    """The 1024-byte dynamic disk header."""

    table_offset: int = FOOTER_SIZE + HEADER_SIZE
    max_table_entries: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    parent_uuid: bytes = b"\0" * 16
    parent_timestamp: int = 0
    parent_unicode_name: bytes = b"\0" * PARENT_NAME_SIZE
    locators: list = field(default_factory=_empty_locators)
    data_offset: int = NO_OFFSET
    version: int = FORMAT_VERSION
    reserved1: int = 0
    reserved2: bytes = b"\0" * 256
    cookie: bytes = HEADER_COOKIE
    checksum: int = 0

    @classmethod
    def parse(cls, buf, source=None, offset=None, verify=True):
        if len(buf) < HEADER_SIZE:
            raise VhdFormatError(f"dynamic header needs {HEADER_SIZE} bytes, got {len(buf)}", source, offset)
        buf = bytes(buf[:HEADER_SIZE])
        if verify:
            _check_cookie(buf, HEADER_COOKIE, "dynamic header", source, offset)
        fields = dict(zip(_HEADER_FIELDS, _HEADER.unpack_from(buf)))
        if verify:
            expected = vhd_checksum(buf, _HEADER_CHECKSUM_AT)
            if fields["checksum"] != expected:
                raise VhdChecksumError(
                    f"bad dynamic header checksum 0x{fields['checksum']:08x}, content sums to 0x{expected:08x}",
                    source,
                    offset,
                )
        fields["locators"] = [
            ParentLocator(*_LOCATOR.unpack_from(buf, _LOCATORS_AT + i * _LOCATOR.size)) for i in range(LOCATOR_COUNT)
        ]
        fields["reserved2"] = buf[_HEADER_TAIL_AT:]
        return cls(**fields)

    def to_bytes(self):
        values = dict(vars(self), checksum=0)
        buf = bytearray(HEADER_SIZE)
        _HEADER.pack_into(buf, 0, *(values[name] for name in _HEADER_FIELDS))
        for i, loc in enumerate(self.locators):
            _LOCATOR.pack_into(
                buf, _LOCATORS_AT + i * _LOCATOR.size,
                loc.platform_code, loc.data_space, loc.data_length, loc.reserved, loc.data_offset,
            )  # fmt: skip
        buf[_HEADER_TAIL_AT:] = self.reserved2
        struct.pack_into(">I", buf, _HEADER_CHECKSUM_AT, vhd_checksum(buf, _HEADER_CHECKSUM_AT))
        return bytes(buf)

    @property
    def parent_name(self):
        """parent_unicode_name decoded (UTF-16BE, up to the first NUL code unit)."""
        raw = self.parent_unicode_name
        for i in range(0, len(raw) - 1, 2):
            if raw[i] == 0 and raw[i + 1] == 0:
                raw = raw[:i]
                break
        return raw.decode("utf-16-be", errors="replace")

    @property
    def parent_uuid_str(self):
        return uuid_str(self.parent_uuid)

    def replace(self, **changes):
        return replace(self, **changes)


def encode_parent_name(name):
    """UTF-16BE parent_unicode_name field (512 bytes, NUL padded)."""
    raw = name.encode("utf-16-be")
    if len(raw) > PARENT_NAME_SIZE:
        raise ValueError(f"parent name {name!r} needs {len(raw)} bytes in UTF-16, the field holds {PARENT_NAME_SIZE}")
    return raw + b"\0" * (PARENT_NAME_SIZE - len(raw))


def make_footer(size, disk_type, uuid=None, timestamp=None, creator=XO_CREATOR, host_os=HOST_OS_WINDOWS):
    """A footer for a new dynamic/differencing disk of ``size`` bytes (timestamp: VHD seconds)."""
    return Footer(
        current_size=size,
        original_size=size,
        disk_type=disk_type,
        uuid=uuid_bytes(uuid),
        timestamp=vhd_timestamp() if timestamp is None else timestamp,
        geometry=chs_geometry(size),
        creator_application=creator,
        creator_host_os=host_os,
    )


def block_count(size, block_size):
    """BAT entries needed to cover ``size`` bytes."""
    return -(-size // block_size)


def bat_bytes(entries):
    """Bytes the BAT occupies on disk: 4 per entry, padded to a sector."""
    return round_up(entries * 4, SECTOR_SIZE)


def bitmap_bytes(block_size):
    """Size of a block's sector bitmap: one bit per sector, padded to a sector."""
    return round_up(-(-(block_size // SECTOR_SIZE) // 8), SECTOR_SIZE)


def parse_bat(buf, entries):
    """BAT entries (sector offsets, BAT_UNUSED when absent) as a compact array of unsigned 32-bit ints."""
    bat = array("I")
    if bat.itemsize != 4:  # pragma: no cover - only on exotic platforms
        bat = array("L")
    bat.frombytes(bytes(buf[: entries * 4]))
    if sys.byteorder == "little":
        bat.byteswap()
    return bat


def build_bat(bat, entries=None):
    """On-disk bytes of ``bat`` (a sequence of ints), padded with BAT_UNUSED to a sector."""
    entries = len(bat) if entries is None else entries
    out = array(parse_bat(b"", 0).typecode, bat[:entries])
    if sys.byteorder == "little":
        out.byteswap()
    raw = out.tobytes()
    return raw + b"\xff" * (bat_bytes(entries) - len(raw))


def empty_bat(entries):
    return array(parse_bat(b"", 0).typecode, [BAT_UNUSED]) * entries


def check_block_size(block_size, source=None, offset=None):
    if block_size < SECTOR_SIZE or block_size & (block_size - 1):
        raise VhdFormatError(f"block size {block_size} is not a power of two of at least 512", source, offset)


class VhdIdentity:
    """What a chain asks of a member beyond its blocks, read from its ``footer``, ``header`` and ``block_size``."""

    @property
    def virtual_size(self):
        return self.footer.current_size

    @property
    def uuid(self):
        return self.footer.uuid

    @property
    def is_differencing(self):
        return self.footer.disk_type == DISK_TYPE_DIFFERENCING

    @property
    def parent_uuid(self):
        return self.header.parent_uuid

    @property
    def parent_name(self):
        return self.header.parent_name

    @property
    def blocks_needed(self):
        """BAT entries that cover the virtual size."""
        return block_count(self.virtual_size, self.block_size)

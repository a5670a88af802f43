"""Write XVA archives the way XAPI and Xen Orchestra do (xapi-protocol.md §4).

``ova.xml`` first, then for each VDI (sorted by id string, as XAPI does) its 1 MiB chunks named by
counter, each followed by its checksum entry. All-zero chunks are left out except the first and
the last; the last holds ``size mod 1 MiB`` bytes when that is not zero. The archive ends with two
zero blocks and no record padding, then the whole tar is optionally gzip- or zstd-compressed.
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.xapi.proxy.plugins.module_utils._xva_codec import Compressor
from ansible_collections.xapi.proxy.plugins.module_utils._xva_hash import XXHASH, checksum_text
from ansible_collections.xapi.proxy.plugins.module_utils._xva_ovaxml import OVA_XML, build_ova_xml
from ansible_collections.xapi.proxy.plugins.module_utils._xva_read import CHUNK_SIZE
from ansible_collections.xapi.proxy.plugins.module_utils._xva_tar import END_OF_ARCHIVE, read_exact, tar_entry

XvaDisk = namedtuple("XvaDisk", "vdi_id virtual_size fileobj")
XvaDisk.__doc__ = """A disk to archive: its ova.xml id (``Ref:N``), size, and a binary file read sequentially."""

_ZERO_CHUNK = bytes(CHUNK_SIZE)


def iter_disk_entries(disk, checksum=XXHASH):
    """Tar bytes of one VDI's chunk and checksum entries (one chunk in memory)."""
    size = disk.virtual_size
    count = -(-size // CHUNK_SIZE)
    for counter in range(count):
        length = min(CHUNK_SIZE, size - counter * CHUNK_SIZE)
        data = read_exact(disk.fileobj, length)
        if len(data) != length:
            raise ValueError(
                f"disk {disk.vdi_id}: source ends at {counter * CHUNK_SIZE + len(data)} bytes, "
                f"before its virtual size {size}"
            )
        if 0 < counter < count - 1 and data == _ZERO_CHUNK:
            continue
        name = f"{disk.vdi_id}/{counter:08d}"
        yield tar_entry(name, data)
        yield tar_entry(f"{name}.{checksum}", checksum_text(checksum, data).encode("ascii"))


def iter_xva(header, disks, checksum=XXHASH):
    """Uncompressed tar bytes of an XVA; ``header`` is an ova.xml dict (or ready bytes)."""
    ova = header if isinstance(header, (bytes, bytearray)) else build_ova_xml(header)
    yield tar_entry(OVA_XML, ova)
    for disk in sorted((XvaDisk(*d) for d in disks), key=lambda d: d.vdi_id):
        yield from iter_disk_entries(disk, checksum)
    yield END_OF_ARCHIVE


def write_xva(out, header, disks, compression=None, checksum=XXHASH, level=None):
    """Write an XVA to ``out``; ``disks`` are XvaDisk (or (vdi_id, size, fileobj)) tuples.

    ``compression``: None, 'gzip' or 'zstd' (zstd needs the zstandard package). Returns the
    number of bytes written to ``out``.
    """
    compressor = Compressor(compression, level)
    written = 0
    for piece in iter_xva(header, disks, checksum):
        data = compressor.compress(piece)
        if data:
            out.write(data)
            written += len(data)
    tail = compressor.flush()
    if tail:
        out.write(tail)
        written += len(tail)
    return written

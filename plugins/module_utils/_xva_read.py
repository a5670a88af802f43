"""Read and check XVA archives as a stream (xapi-protocol.md §4, xo-backups.md §2 "cleanVm").

Entries: ``ova.xml`` first, then per VDI ``Ref:N/00000000`` chunks of 1 MiB, each directly followed
by ``Ref:N/00000000.xxhash`` (or legacy ``.checksum``). The number is a counter: chunk ``i`` holds
bytes ``i × 1 MiB`` onwards and missing numbers are zeros. The last chunk is always present (it is
what tells XAPI's import the disk is complete) and is shorter when the size is not a multiple.
"""

from __future__ import annotations

import re
from collections import namedtuple

from ansible_collections.xapi.proxy.plugins.module_utils._xva_codec import (
    GZIP,
    ZSTD,
    detect_compression,
    open_decompressed,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_errors import (
    XvaChecksumError,
    XvaDependencyError,
    XvaError,
    XvaFormatError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_hash import (
    CHECKSUM_KINDS,
    checksum_matches,
    checksum_text,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_ovaxml import OVA_XML, parse_ova_xml, vdi_sizes
from ansible_collections.xapi.proxy.plugins.module_utils._xva_tar import TAR_BLOCK, TarStreamReader

CHUNK_SIZE = 1024 * 1024
_CHUNK_NAME = re.compile(r"^(?P<vdi>.+)/(?P<counter>[0-9]+)$")
_ZERO_CHUNK = bytes(CHUNK_SIZE)

XvaChunk = namedtuple("XvaChunk", "vdi_id counter data checksum_kind offset")
XvaChunk.__doc__ = """One disk chunk: VDI id (``Ref:N``), counter, data, 'xxhash'/'checksum'/None, tar offset."""


class XvaReader:
    """Sequential reader of a plain, gzip or zstd XVA from any object with ``read(n)``.

    ``read_header()`` returns the parsed ova.xml; ``chunks()`` then yields XvaChunk in archive
    order, each after its checksum entry was checked. Problems raise XvaFormatError /
    XvaChecksumError, unless ``on_problem(kind, message, offset)`` is given: it is then called and
    reading goes on where that makes sense (kinds: 'checksum', 'order', 'entry', 'size').
    """

    def __init__(self, fileobj, name="XVA", verify_checksums=True, require_checksums=True, on_problem=None):
        self.name = name
        self.verify_checksums = verify_checksums
        self.require_checksums = require_checksums
        self._on_problem = on_problem
        self.compression, stream = open_decompressed(fileobj, name)
        self.tar = TarStreamReader(stream, name)
        self._entries = self.tar.entries()
        self.header = None
        self._started = False

    def _problem(self, kind, message, offset=None):
        if self._on_problem is not None:
            self._on_problem(kind, message, offset)
            return
        error = XvaChecksumError if kind == "checksum" else XvaFormatError
        raise error(message, self.name, offset)

    def read_header(self):
        """Parse the first entry, which must be ova.xml; the dict is also kept as ``header``."""
        if self.header is None:
            first = next(self._entries, None)
            if first is None:
                raise XvaFormatError("archive holds no entries", self.name, 0)
            entry, data = first
            if entry.name != OVA_XML:
                raise XvaFormatError(f"first entry is {entry.name!r}, expected {OVA_XML!r}", self.name, entry.offset)
            try:
                self.header = parse_ova_xml(data)
            except XvaFormatError as exc:
                raise XvaFormatError(exc.message, self.name, entry.offset) from None
        return self.header

    def chunks(self):
        """Yield XvaChunk in archive order (reads ova.xml first if not done); runs once."""
        if self._started:
            raise RuntimeError("XvaReader.chunks() can run only once: the archive is read sequentially")
        self._started = True
        self.read_header()
        last_counter = {}
        pending, pending_name = None, None  # a data entry waiting for its checksum entry
        for entry, data in self._entries:
            base, dot, ext = entry.name.rpartition(".")
            if dot and ext in CHECKSUM_KINDS and "/" in base:
                if pending is None or pending_name != base:
                    self._problem(
                        "order", f"checksum entry {entry.name!r} does not follow its data entry", entry.offset
                    )
                    continue
                if self.verify_checksums and not checksum_matches(ext, pending.data, data):
                    stored = data.decode("ascii", errors="replace").strip()
                    self._problem(
                        "checksum",
                        f"chunk {base!r}: stored {ext} {stored!r}, data gives {checksum_text(ext, pending.data)!r}",
                        pending.offset,
                    )
                yield pending._replace(checksum_kind=ext)
                pending = None
                continue
            if pending is not None:
                yield self._unchecked(pending, pending_name)
                pending = None
            match = _CHUNK_NAME.match(entry.name)
            if not match:
                self._problem("entry", f"unexpected tar entry {entry.name!r}", entry.offset)
                continue
            vdi_id, counter = match.group("vdi"), int(match.group("counter"))
            previous = last_counter.get(vdi_id)
            if previous is not None and counter <= previous:
                self._problem("order", f"chunk {entry.name!r} comes after counter {previous}", entry.offset)
            last_counter[vdi_id] = max(counter, previous or 0)
            if len(data) > CHUNK_SIZE:
                self._problem("size", f"chunk {entry.name!r} has {len(data)} bytes, more than 1 MiB", entry.offset)
            pending, pending_name = XvaChunk(vdi_id, counter, data, None, entry.offset), entry.name
        if pending is not None:
            yield self._unchecked(pending, pending_name)

    def _unchecked(self, chunk, name):
        if self.require_checksums:
            self._problem("checksum", f"chunk {name!r} has no .xxhash or .checksum entry", chunk.offset)
        return chunk


def extract_xva(fileobj, open_output, name="XVA", verify_checksums=True):
    """Write each VDI's content to a sparse file; returns the ova.xml header dict.

    ``open_output(vdi_id, vdi_record)`` returns a writable, seekable binary file (or None to skip
    that VDI); it is closed here, truncated/extended to the VDI's virtual size. Chunk ``i`` goes at
    ``i × 1 MiB``, gaps and all-zero chunks are left as holes, data past virtual_size is dropped.
    """
    reader = XvaReader(fileobj, name, verify_checksums)
    header = reader.read_header()
    records = {obj["id"]: obj["snapshot"] for obj in header["objects"] if obj.get("class") == "VDI"}
    sizes = vdi_sizes(header)
    outputs = {}  # vdi id -> [file or None, size, extent]
    try:
        for chunk in reader.chunks():
            slot = outputs.get(chunk.vdi_id)
            if slot is None:
                slot = outputs[chunk.vdi_id] = [
                    open_output(chunk.vdi_id, records.get(chunk.vdi_id)),
                    sizes.get(chunk.vdi_id),
                    0,
                ]
            out, size, _ = slot
            if out is None:
                continue
            offset = chunk.counter * CHUNK_SIZE
            data = chunk.data if size is None else chunk.data[: max(0, size - offset)]
            slot[2] = max(slot[2], offset + len(data))
            if data and data != _ZERO_CHUNK[: len(data)]:
                out.seek(offset)
                out.write(data)
    finally:
        for out, size, extent in outputs.values():
            if out is not None:
                out.truncate(extent if size is None else size)
                out.close()
    return header


def verify_xva(fileobj, name="XVA", verify_checksums=True):
    """List the problems of an XVA (empty list: healthy); reads it once, never raises for content.

    Checks: compression stream, tar headers and end blocks, ova.xml, chunk names/order/sizes,
    checksum entries and values, first and last chunk of every VDI that has data.
    """
    problems = []

    def on_problem(kind, message, offset):
        where = f" (offset {offset})" if offset is not None else ""
        problems.append(f"{name}: {message}{where}")

    try:
        reader = XvaReader(fileobj, name, verify_checksums, on_problem=on_problem)
        header = reader.read_header()
        try:
            sizes = vdi_sizes(header)
        except XvaFormatError as exc:
            on_problem("entry", exc.message, None)
            sizes = {}
        counters = {}
        for chunk in reader.chunks():
            size = sizes.get(chunk.vdi_id)
            if size is None and chunk.vdi_id not in counters:
                on_problem("entry", f"chunks for {chunk.vdi_id!r}, which ova.xml does not list as a VDI", None)
            counters.setdefault(chunk.vdi_id, set()).add(chunk.counter)
            if size is None:
                continue
            last = max(-(-size // CHUNK_SIZE) - 1, 0)
            if chunk.counter > last:
                on_problem(
                    "size", f"chunk {chunk.vdi_id}/{chunk.counter:08d} lies past the VDI's {size} bytes", chunk.offset
                )
                continue
            expected = size - last * CHUNK_SIZE if chunk.counter == last else CHUNK_SIZE
            if len(chunk.data) not in (0, expected):  # 0: XAPI's keep-alive dummy chunk
                on_problem(
                    "size",
                    f"chunk {chunk.vdi_id}/{chunk.counter:08d} has {len(chunk.data)} bytes, expected {expected}",
                    chunk.offset,
                )
        for vdi_id, seen in sorted(counters.items()):
            size = sizes.get(vdi_id)
            if not size:
                continue
            last = -(-size // CHUNK_SIZE) - 1
            if last not in seen:
                on_problem("entry", f"VDI {vdi_id}: last chunk {last:08d} is missing (XAPI's import needs it)", None)
            if 0 not in seen:
                on_problem("entry", f"VDI {vdi_id}: first chunk 00000000 is missing", None)
        tar = reader.tar
        if tar.end_zero_blocks < 2:
            on_problem("entry", "archive ends with a single zero block instead of two", tar.position)
        if tar.trailing_nonzero:
            on_problem(
                "entry", f"{tar.trailing_bytes} bytes after the end of the archive are not all zero", tar.position
            )
        elif (tar.position + tar.trailing_bytes) % TAR_BLOCK:
            on_problem("entry", "tar size is not a multiple of 512", tar.position)
    except XvaDependencyError as exc:
        problems.append(f"{name}: cannot be verified: {exc.message}")
    except XvaError as exc:
        problems.append(f"{name}: {exc}")
    return problems


def _size_and_ends(target):
    """(size, first 4 bytes, last 1024 bytes) of a path or a seekable binary file."""
    if isinstance(target, (str, bytes)) or hasattr(target, "__fspath__"):
        with open(target, "rb") as fileobj:
            return _size_and_ends(fileobj)
    size = target.seek(0, 2)
    size = target.tell() if size is None else size
    target.seek(0)
    head = target.read(4)
    target.seek(max(size - 2 * TAR_BLOCK, 0))
    tail = target.read(2 * TAR_BLOCK)
    return size, head, tail


def xva_quick_check(target, expected_size=None):
    """Xen Orchestra's cheap ``isValidXva`` test as a list of problems (path or seekable file).

    Size at least 20 bytes and equal to ``expected_size`` (the metadata ``size``) when given; then
    either a gzip/zstd magic, or a tar whose size is a multiple of 512 ending with 1024 zero bytes.
    """
    size, head, tail = _size_and_ends(target)
    problems = []
    if size < 20:
        problems.append(f"XVA is {size} bytes, less than 20")
        return problems
    if expected_size is not None and size != expected_size:
        problems.append(f"XVA is {size} bytes, metadata says {expected_size}")
    if detect_compression(head) in (GZIP, ZSTD):
        return problems
    if size % TAR_BLOCK:
        problems.append(f"uncompressed XVA size {size} is not a multiple of 512")
    if len(tail) < 2 * TAR_BLOCK or tail.count(0) != len(tail):
        problems.append("uncompressed XVA does not end with two zero blocks")
    return problems


def is_valid_xva(target, expected_size=None):
    """True when xva_quick_check finds nothing (what cleanVm uses to keep or flag a full backup)."""
    return not xva_quick_check(target, expected_size)

"""Streaming tar, as XVA archives use it (xapi-protocol.md §4 "Tar container").

XAPI writes V7 headers (typeflag NUL, no ustar magic, mode 0400, mtime 0) and ends the archive
with two zero blocks and no record padding. The reader also accepts ustar/GNU/pax headers, as
written by other tools, since only names, sizes and data matter here.
"""

from __future__ import annotations

from ansible_collections.xapi.proxy.plugins.module_utils._xva_errors import XvaFormatError, XvaTruncatedError

TAR_BLOCK = 512
END_OF_ARCHIVE = bytes(2 * TAR_BLOCK)
MAX_ENTRY_SIZE = 64 * 1024 * 1024  # XVA entries are at most 1 MiB chunks; anything larger is not an XVA
_ZERO_BLOCK = bytes(TAR_BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_DRAIN_PIECE = 1024 * 1024


def read_exact(fileobj, size):
    """Read ``size`` bytes, looping over short reads; fewer only at end of file."""
    data = fileobj.read(size) or b""
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


def padding(size):
    return b"\0" * (-size % TAR_BLOCK)


def build_tar_header(name, size, mode=0o400, mtime=0):
    """A V7 header as ocaml-tar writes it for XAPI (typeflag NUL, no magic)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar entry name {name!r} is longer than 100 bytes")
    block = bytearray(TAR_BLOCK)
    block[0 : len(raw)] = raw
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"%07o\0" % 0
    block[116:124] = b"%07o\0" % 0
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % mtime
    block[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_entry(name, data, mode=0o400, mtime=0):
    """Header + data + padding of one regular file entry."""
    return build_tar_header(name, len(data), mode, mtime) + bytes(data) + padding(len(data))


def _octal(field, what, source, offset):
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise XvaFormatError(
            f"tar header {what} field {bytes(field)!r} is not an octal number", source, offset
        ) from None


class TarEntry:
    __slots__ = ("name", "size", "typeflag", "mode", "mtime", "offset")

    def __init__(self, name, size, typeflag, mode, mtime, offset):
        self.name = name
        self.size = size
        self.typeflag = typeflag
        self.mode = mode
        self.mtime = mtime
        self.offset = offset  # of the header block in the (uncompressed) tar

    @property
    def is_file(self):
        return self.typeflag in _REGULAR

    def __repr__(self):
        return f"TarEntry({self.name!r}, size={self.size}, offset={self.offset})"


def parse_tar_header(block, source=None, offset=None):
    """TarEntry from a 512-byte header, None for a zero block; XvaFormatError if it is not a header."""
    if block == _ZERO_BLOCK:
        return None
    stored = _octal(block[148:156], "checksum", source, offset)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - sum(2 * b for b in block if b > 127)  # some old writers summed signed chars
    if stored not in (unsigned, signed):
        raise XvaFormatError(f"bad tar header checksum {stored}, header sums to {unsigned}", source, offset)
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return TarEntry(
        name.decode("utf-8", errors="replace"),
        _octal(block[124:136], "size", source, offset),
        block[156:157],
        _octal(block[100:108], "mode", source, offset),
        _octal(block[136:148], "mtime", source, offset),
        offset,
    )


def _pax_path(data):
    """The ``path`` record of a pax extended header, if any."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", errors="replace")
        pos += max(length, 1)
    return None


class TarStreamReader:
    """Iterate ``(TarEntry, data)`` of regular files from a sequential stream; one entry in memory.

    After the iteration: ``end_zero_blocks`` (2 for a proper end, 1 if the second is missing),
    ``trailing_bytes`` after them and ``trailing_nonzero`` if any of those is not zero, and
    ``position``, the uncompressed size consumed.
    """

    def __init__(self, fileobj, source="XVA", max_entry_size=MAX_ENTRY_SIZE):
        self.file = fileobj
        self.source = source
        self.max_entry_size = max_entry_size
        self.position = 0
        self.end_zero_blocks = 0
        self.trailing_bytes = 0
        self.trailing_nonzero = False

    def _read(self, size, what):
        data = read_exact(self.file, size)
        if len(data) != size:
            raise XvaTruncatedError(
                f"archive ends inside {what}: got {len(data)} of {size} bytes", self.source, self.position
            )
        self.position += size
        return data

    def entries(self):
        long_name = None
        while True:
            block = read_exact(self.file, TAR_BLOCK)
            if not block:
                raise XvaTruncatedError(
                    "archive ends without the two zero blocks that close a tar", self.source, self.position
                )
            if len(block) != TAR_BLOCK:
                raise XvaTruncatedError(
                    f"archive ends inside a tar header ({len(block)} of {TAR_BLOCK} bytes)", self.source, self.position
                )
            header_at = self.position
            self.position += TAR_BLOCK
            entry = parse_tar_header(block, self.source, header_at)
            if entry is None:
                self._read_end()
                return
            if entry.size > self.max_entry_size:
                raise XvaFormatError(
                    f"tar entry {entry.name!r} is {entry.size} bytes, too large for an XVA", self.source, header_at
                )
            data = self._read(entry.size, f"the data of {entry.name!r}")
            self._read(-entry.size % TAR_BLOCK, f"the padding of {entry.name!r}")
            if entry.typeflag == b"L":  # GNU long name for the next entry
                long_name = data.split(b"\0", 1)[0].decode("utf-8", errors="replace")
                continue
            if entry.typeflag == b"x":
                long_name = _pax_path(data) or long_name
                continue
            if entry.typeflag == b"g" or not entry.is_file:
                continue
            if long_name is not None:
                entry.name, long_name = long_name, None
            yield entry, data

    def _read_end(self):
        self.end_zero_blocks = 1
        second = read_exact(self.file, TAR_BLOCK)
        if not second:
            return
        if second == _ZERO_BLOCK[: len(second)] and len(second) == TAR_BLOCK:
            self.end_zero_blocks = 2
            self.position += TAR_BLOCK
        else:
            self.trailing_bytes += len(second)
            self.trailing_nonzero = self.trailing_nonzero or second.count(0) != len(second)
        while True:  # record padding written by some tars; bounded memory
            piece = self.file.read(_DRAIN_PIECE)
            if not piece:
                break
            self.trailing_bytes += len(piece)
            self.trailing_nonzero = self.trailing_nonzero or piece.count(0) != len(piece)

"""XVA as xapi's ``/export`` writes it and ``/import`` reads it (xapi-protocol.md §4).

A V7 tar (no ustar magic): ``ova.xml`` first, then per VDI, in lexicographic order of its ``Ref:N``
id, 1 MiB chunks named by a counter, each followed by its ``.xxhash`` (XXH64 seed 0, upper-case
hex). All-zero chunks are left out except the first and the last.
"""

import gzip
import hashlib
import xmlrpc.client
import zlib

import xxhash

from . import wire

CHUNK = 1024 * 1024
TAR_BLOCK = 512
ZERO_CHUNK = bytes(CHUNK)


def tar_header(name, size, mode=0o400, mtime=0):
    buf = bytearray(TAR_BLOCK)
    raw = name.encode()
    buf[0 : len(raw)] = raw
    buf[100:108] = b"%07o\0" % mode
    buf[108:116] = b"%07o\0" % 0
    buf[116:124] = b"%07o\0" % 0
    buf[124:136] = b"%011o\0" % size
    buf[136:148] = b"%011o\0" % mtime
    buf[148:156] = b" " * 8
    buf[156:157] = b"\0"
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def tar_entry(name, data, mode=0o400, mtime=0):
    pad = (-len(data)) % TAR_BLOCK
    return tar_header(name, len(data), mode, mtime) + data + bytes(pad)


def parse_tar_header(block):
    if block == bytes(TAR_BLOCK):
        return None
    stored = block[148:156]
    check = sum(block[:148]) + 8 * 32 + sum(block[156:])
    try:
        if int(stored.strip(b"\0 ") or b"0", 8) != check:
            raise ValueError
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise ValueError("not a tar header") from None
    name = block[:100].split(b"\0", 1)[0].decode()
    return name, size


def is_tar_header(block):
    try:
        return parse_tar_header(block) is not None
    except ValueError:
        return False


def ova_xml(header):
    return wire.value(header).encode()


def parse_ova_xml(data):
    text = data.decode()
    if text.startswith("<?xml"):
        text = text[text.index("?>") + 2 :]
    doc = f'<?xml version="1.0"?><methodResponse><params><param>{text}</param></params></methodResponse>'
    (value,), _ = xmlrpc.client.loads(doc)
    return value


def disk_entries(prefix, size, allocated, read_chunk):
    """Yield tar bytes of one VDI's chunks; ``allocated(i)`` says whether chunk i may hold data."""
    count = (size + CHUNK - 1) // CHUNK
    for i in range(count):
        first, last = i == 0, i == count - 1
        length = size - i * CHUNK if last and size % CHUNK else CHUNK
        if not allocated(i) and not (first or last):
            continue
        data = read_chunk(i, length) if allocated(i) else ZERO_CHUNK[:length]
        if not (first or last) and data == ZERO_CHUNK[:length]:
            continue
        name = f"{prefix}/{i:08d}"
        # Header and data as separate pieces: no 1 MiB copy per chunk just to glue them.
        yield tar_header(name, len(data))
        yield data
        if len(data) % TAR_BLOCK:
            yield bytes(TAR_BLOCK - len(data) % TAR_BLOCK)
        yield tar_entry(name + ".xxhash", format(xxhash.xxh64(data).intdigest(), "016X").encode())


class Compressor:
    """The whole tar compressed as ``use_compression`` asks (gzip or zstd), or passed through."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "gzip":
            self.obj = zlib.compressobj(1, zlib.DEFLATED, 31)
        elif kind == "zstd":
            import zstandard  # noqa: PLC0415 - only needed for zstd exports

            # Every core, as xapi's zstd does: the simulator must not be a benchmark's bottleneck.
            self.obj = zstandard.ZstdCompressor(level=3, threads=-1).compressobj()
        else:
            self.obj = None

    def feed(self, data):
        return self.obj.compress(data) if self.obj else data

    def finish(self):
        return self.obj.flush() if self.obj else b""


class Decompressor:
    """Detect the format from the first block as xapi does: tar header, zstd magic, else gzip."""

    def __init__(self, first):
        if is_tar_header(first[:TAR_BLOCK]):
            self.obj = None
        elif first[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard  # noqa: PLC0415

            self.obj = zstandard.ZstdDecompressor().decompressobj()
        else:
            self.obj = zlib.decompressobj(31)

    def feed(self, data):
        if self.obj is None:
            return data
        try:
            return self.obj.decompress(data)
        except (zlib.error, gzip.BadGzipFile, Exception) as e:  # zstandard raises its own ZstdError
            raise ValueError(f"decompression failed: {e}") from None


def verify_checksum(kind, data, text):
    if kind == "xxhash":
        return format(xxhash.xxh64(data).intdigest(), "016X") == text.strip().upper()
    return hashlib.sha1(data).hexdigest() == text.strip().lower()  # noqa: S324 - the legacy format is SHA-1

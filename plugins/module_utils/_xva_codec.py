"""Compression of whole XVA archives: none, gzip (stdlib) or zstd (optional package).

``GET /export?use_compression=true|zstd`` compresses the whole tar, and Xen Orchestra stores it
as is. The format is recognised from the first bytes (gzip 1f 8b, zstd 28 b5 2f fd, else tar).
zstd needs the ``zstandard`` package (or Python 3.14's ``compression.zstd``); it is imported only
when a zstd archive is met, and its absence raises XvaDependencyError saying what to install.
"""

from __future__ import annotations

import gzip
import zlib

from ansible_collections.xapi.proxy.plugins.module_utils._xva_errors import (
    XvaDependencyError,
    XvaFormatError,
    XvaTruncatedError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_tar import read_exact

GZIP = "gzip"
ZSTD = "zstd"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSIONS = (None, GZIP, ZSTD)


def detect_compression(head):
    """'gzip', 'zstd' or None (plain tar) from the first 4 bytes."""
    if head[:2] == GZIP_MAGIC:
        return GZIP
    if head[:4] == ZSTD_MAGIC:
        return ZSTD
    return None


def zstd_module():
    """(flavour, module): the ``zstandard`` package, else the 3.14 stdlib; XvaDependencyError if neither."""
    try:
        import zstandard  # noqa: PLC0415 - optional dependency, imported on first use

        return "zstandard", zstandard
    except ImportError:
        pass
    try:
        from compression import zstd  # noqa: PLC0415 - Python >= 3.14 only

        return "stdlib", zstd
    except ImportError:
        raise XvaDependencyError(
            "zstd-compressed XVA: install the 'zstandard' Python package on this host (pip install zstandard)"
        ) from None


class _Prefixed:
    """Give back bytes already read for detection before the rest of the stream."""

    def __init__(self, prefix, fileobj):
        self._prefix = prefix
        self._file = fileobj

    def readable(self):
        return True

    def read(self, size=-1):
        if self._prefix:
            if size is None or size < 0:
                data, self._prefix = self._prefix + (self._file.read() or b""), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._file.read(size)

    def close(self):
        pass


class _Decompressed:
    """Uniform ``read(n)`` over a decompressor that turns codec errors into Xva errors."""

    def __init__(self, reader, kind, source, errors):
        self._reader = reader
        self.kind = kind
        self._source = source
        self._errors = errors

    def read(self, size=-1):
        try:
            return self._reader.read(size)
        except EOFError as exc:
            raise XvaTruncatedError(f"{self.kind} stream ends early: {exc}", self._source) from None
        except self._errors as exc:
            raise XvaFormatError(f"corrupt {self.kind} stream: {exc}", self._source) from None


def open_decompressed(fileobj, source="XVA"):
    """(kind, reader): ``reader.read(n)`` yields the tar bytes of a plain, gzip or zstd archive."""
    head = read_exact(fileobj, 4)
    kind = detect_compression(head)
    raw = _Prefixed(head, fileobj)
    if kind is None:
        return None, raw
    if kind == GZIP:
        return kind, _Decompressed(gzip.GzipFile(fileobj=raw, mode="rb"), kind, source, (gzip.BadGzipFile, zlib.error))
    flavour, module = zstd_module()
    if flavour == "zstandard":
        reader = module.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        reader = module.ZstdFile(raw, mode="rb")
    return kind, _Decompressed(reader, kind, source, (module.ZstdError,))


class Compressor:
    """Streaming compressor for ``kind`` (None, 'gzip', 'zstd'): ``compress(data)`` then ``flush()``."""

    def __init__(self, kind, level=None):
        if kind not in COMPRESSIONS:
            raise ValueError(f"unknown XVA compression {kind!r}; use one of {COMPRESSIONS}")
        self.kind = kind
        self._obj = None
        if kind == GZIP:
            self._obj = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
        elif kind == ZSTD:
            flavour, module = zstd_module()
            level = 3 if level is None else level
            if flavour == "zstandard":
                self._obj = module.ZstdCompressor(level=level).compressobj()
            else:
                self._obj = module.ZstdCompressor(level)

    def compress(self, data):
        return self._obj.compress(data) if self._obj else data

    def flush(self):
        return self._obj.flush() if self._obj else b""

"""VHD directories: Xen Orchestra's one-object-per-block VHD layout, read from any storage backend.

A VHD directory (xo-backups.md §1 "VHD directory") holds ``footer`` (512 B), ``header`` (1024 B),
``bat`` (one bit per block, most significant bit first), an optional ``chunk-filters.json``
(``["brotli"]`` or ``["gzip"]``; absent means uncompressed) and ``blocks/<id // 1000>/<id % 1000>``,
each block object being the sector bitmap plus the block's data, compressed as one unit. Backups
reference it through an alias file ``<ts>.alias.vhd`` whose text is ``data/<ts>.vhd``.

:class:`VhdDirectory` offers the reading interface of ``VhdFile`` so that ``VhdChain`` mixes both
kinds freely; :func:`remote_vhd_opener` gives ``open_vhd_chain`` an opener that follows aliases.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.xapi.proxy.plugins.module_utils._storage import NotFoundError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import bitmap_to_mask
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdFormatError,
    VhdUnsupportedError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    FOOTER_SIZE,
    HEADER_SIZE,
    Footer,
    Header,
    VhdIdentity,
    bitmap_bytes,
    check_block_size,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import resolve_alias

try:
    import brotli

    HAS_BROTLI = True
    _BROTLI_ERROR = brotli.error
except ImportError:  # only needed for directories Xen Orchestra (or this collection) compressed with it
    brotli = None
    HAS_BROTLI = False
    _BROTLI_ERROR = OSError

ALIAS_SUFFIX = ".alias.vhd"
CHUNK_FILTERS = "chunk-filters.json"
DEFAULT_COMPRESSION = "brotli"  # what Xen Orchestra writes, and the only kind its merges accept
MAX_ALIAS_BYTES = 4096
PREFETCH_DEPTH = 4  # blocks read ahead per chain: 4 round trips overlap, about 20 MiB held at most


def is_alias(path):
    return path.endswith(ALIAS_SUFFIX)


def block_path(directory, index):
    """``blocks/<index // 1000>/<index % 1000>``: Xen Orchestra spreads blocks over folders of 1000."""
    return f"{directory}/blocks/{index // 1000}/{index % 1000}"


def bat_bit(bat, index):
    return index >> 3 < len(bat) and bool(bat[index >> 3] & (0x80 >> (index & 7)))


def set_bat_bit(bat, index):
    bat[index >> 3] |= 0x80 >> (index & 7)


def bat_indexes(bat, entries):
    """Indexes whose bit is set, ascending, below ``entries``."""
    out = []
    for byte_index, byte in enumerate(bat):
        if byte:
            base = byte_index << 3
            out.extend(base + bit for bit in range(8) if byte & (0x80 >> bit) and base + bit < entries)
    return out


# -- per-block compression --------------------------------------------------------------------
class BlockCodec:
    """Compression of one block object; ``filters`` is the content of ``chunk-filters.json``."""

    def __init__(self, filters, source="<vhd directory>"):
        if filters is None:
            filters = []
        if not isinstance(filters, list) or len(filters) > 1 or not all(isinstance(f, str) for f in filters):
            raise VhdUnsupportedError(f"{CHUNK_FILTERS} holds {filters!r}, not a list of one filter name", source)
        self.name = filters[0] if filters else "none"
        if self.name not in ("none", "brotli", "gzip"):
            raise VhdUnsupportedError(f"block compression {self.name!r} is not supported (brotli, gzip, none)", source)
        if self.name == "brotli" and not HAS_BROTLI:
            raise VhdUnsupportedError(
                "its blocks are brotli-compressed and the Python package brotli is missing on this host: "
                "install it (pip install brotli, or the python3-brotli package)",
                source,
            )
        self.filters = [] if self.name == "none" else [self.name]

    def compress(self, data):
        if self.name == "brotli":
            return brotli.compress(bytes(data), quality=0)  # Xen Orchestra's BROTLI_MIN_QUALITY
        if self.name == "gzip":
            return gzip.compress(bytes(data), compresslevel=1, mtime=0)  # Z_BEST_SPEED
        return data

    def decompress(self, data, source):
        if self.name == "none":
            return data
        try:
            return brotli.decompress(data) if self.name == "brotli" else gzip.decompress(data)
        except (_BROTLI_ERROR, OSError, EOFError, zlib.error) as e:
            raise VhdFormatError(f"block object does not decompress with {self.name}: {e}", source) from None


# -- reading ----------------------------------------------------------------------------------
def read_alias(storage, alias_path):
    """Remote path of the VHD directory an alias names (NotFoundError when the alias is missing)."""
    raw = storage.read_bytes(alias_path, limit=MAX_ALIAS_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VhdFormatError("alias is not UTF-8 text naming a VHD directory", alias_path) from None
    try:
        return resolve_alias(alias_path, text)
    except ValueError as e:
        raise VhdFormatError(str(e), alias_path) from None


class VhdDirectory(VhdIdentity):
    """One VHD directory opened for reading. ``name`` is the alias path (what chains link by)."""

    def __init__(self, storage, directory, name=None):
        self.storage = storage
        self.directory = directory
        self.name = name or directory
        self.footer = Footer.parse(self._small("footer", FOOTER_SIZE), f"{directory}/footer", 0)
        if self.footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
            raise VhdUnsupportedError(f"disk type {self.footer.disk_type} is not dynamic or differencing", self.name)
        self.header = Header.parse(self._small("header", HEADER_SIZE), f"{directory}/header", 0)
        check_block_size(self.header.block_size, f"{directory}/header", 32)
        self.block_size = self.header.block_size
        self.bitmap_size = bitmap_bytes(self.block_size)
        self.entries = self.header.max_table_entries
        self.bat = bytearray(self._small("bat", -(-self.entries // 8)))
        self.codec = BlockCodec(self._filters(), self.name)
        self._pool, self._queue, self._ahead = None, deque(), iter(())

    def _small(self, leaf, size):
        path = f"{self.directory}/{leaf}"
        try:
            data = self.storage.read_bytes(path)
        except NotFoundError:
            raise VhdFormatError(f"{leaf} is missing: not a complete VHD directory", path) from None
        if len(data) < size:
            raise VhdFormatError(f"{leaf} has {len(data)} bytes, {size} are needed", path)
        return data

    def _filters(self):
        path = f"{self.directory}/{CHUNK_FILTERS}"
        try:
            return json.loads(self.storage.read_bytes(path, limit=MAX_ALIAS_BYTES).decode("utf-8"))
        except NotFoundError:
            return []
        except ValueError:
            raise VhdFormatError(f"{CHUNK_FILTERS} is not JSON", path) from None

    # -- blocks -----------------------------------------------------------------------------------
    def has_block(self, index):
        return index < self.entries and bat_bit(self.bat, index)

    def allocated_blocks(self):
        return bat_indexes(self.bat, self.entries)

    def block_path(self, index):
        return block_path(self.directory, index)

    def prefetch(self, indexes, depth=PREFETCH_DEPTH):
        """Fetch the blocks ``indexes`` (ascending) ahead of their reads, ``depth`` at a time.

        An object store answers each block after a round trip; reading a chain one block after the
        other would wait on every one. Reads of other blocks still work and skip what they pass.
        """
        self.close()
        if self.storage.url.type == "smb" or depth < 1:
            return  # one SMB session, ordered requests: no concurrent reads
        self._ahead = iter(i for i in indexes if self.has_block(i))
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="xapi-proxy-read")
        self._queue = deque()
        for _ in range(depth):
            self._fetch_next()

    def _fetch_next(self):
        index = next(self._ahead, None)
        if index is not None:
            self._queue.append((index, self._pool.submit(self._load, index)))

    def read_block_raw(self, index):
        """(bitmap bytes, data bytes) of an allocated block, or None when the BAT has no bit for it."""
        if not self.has_block(index):
            return None
        while self._queue and self._queue[0][0] < index:
            self._queue.popleft()[1].cancel()  # the chain did not need it (a newer member held it whole)
            self._fetch_next()
        if self._queue and self._queue[0][0] == index:
            future = self._queue.popleft()[1]
            self._fetch_next()
            return future.result()
        return self._load(index)

    def _load(self, index):
        path = self.block_path(index)
        try:
            stored = self.storage.read_bytes(path)
        except NotFoundError:
            raise VhdFormatError(f"block {index} is listed in the BAT but its object is missing", path) from None
        raw = self.codec.decompress(stored, path)
        expected = self.bitmap_size + self.block_size
        if len(raw) != expected:
            raise VhdFormatError(f"block object holds {len(raw)} bytes, a block is {expected}", path)
        view = memoryview(raw)
        return bytes(view[: self.bitmap_size]), bytes(view[self.bitmap_size :])

    def read_block_mask(self, index):
        raw = self.read_block_raw(index)
        if raw is None:
            return None
        bitmap, data = raw
        return bitmap_to_mask(bitmap, self.block_size), data

    def close(self):
        if self._pool is not None:
            for _, future in self._queue:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool, self._queue = None, deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_alias(storage, alias_path):
    """The VHD directory an alias names, named after the alias (NotFoundError when either is missing)."""
    return VhdDirectory(storage, read_alias(storage, alias_path), name=alias_path)


def remote_vhd_opener(storage):
    """An opener for ``open_vhd_chain``: aliases give VhdDirectory objects, other paths readable streams."""

    def opener(path):
        # NotFoundError is a FileNotFoundError: a missing alias reads as a missing chain member.
        return open_alias(storage, path) if is_alias(path) else storage.open_read(path)

    return opener


def alias_path_of(directory):
    """``…/data/<ts>.vhd`` → ``…/<ts>.alias.vhd`` (where the alias of a VHD directory lives)."""
    parent, base = posixpath.split(directory)
    if posixpath.basename(parent) != "data" or not base.endswith(".vhd"):
        raise ValueError(f"{directory!r} is not a VHD directory under data/")
    return posixpath.join(posixpath.dirname(parent), base[: -len(".vhd")] + ALIAS_SUFFIX)

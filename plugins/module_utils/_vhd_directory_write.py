"""Write a VHD directory (Xen Orchestra's layout, see ``_vhd_directory``) block by block.

Blocks go out as they arrive, compressed one by one and uploaded by a few worker threads (object
stores reward parallel requests; XO uses 16). The BAT, header and footer follow once every block is
stored, and the alias ``<ts>.alias.vhd`` comes last: until it exists nothing refers to the
directory, so a run killed half way leaves only an unnamed ``data/<ts>.vhd/`` that the next clean-up
removes, never a VHD that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.xapi.proxy.plugins.module_utils._storage import AlreadyExistsError, NotFoundError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory import (
    ALIAS_SUFFIX,
    CHUNK_FILTERS,
    DEFAULT_COMPRESSION,
    BlockCodec,
    block_path,
    read_alias,
    set_bat_bit,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import VhdError, VhdFormatError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import DEFAULT_BLOCK_SIZE
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import alias_content, alias_data_path

# Uploads in flight per remote kind (XO uses 16; 8 keeps memory well under 100 MiB). SMB stays
# serial: one session, ordered requests.
BLOCK_WRITERS = {"s3": 8, "file": 4, "nfs": 4}


def uses_vhd_directory(storage):
    """XO's rule: S3 remotes always store VHD directories, others only with ``useVhdDirectory=true``."""
    url = storage.url
    return url.type == "s3" or url.options.get("useVhdDirectory") is True


class VhdDirectoryWriter:
    """One new VHD directory at ``alias_path`` (``…/<ts>.alias.vhd``); feed ``block()`` then ``commit()``.

    The identity arguments are those of :class:`VhdWriter` (``parent_name``: the parent alias or VHD
    file name, relative to this one's folder). ``bytes_written`` counts stored (compressed) bytes.
    """

    def __init__(
        self,
        storage,
        alias_path,
        virtual_size,
        uuid=None,
        parent_uuid=None,
        parent_name="",
        parent_timestamp=0,
        block_size=DEFAULT_BLOCK_SIZE,
        compression=DEFAULT_COMPRESSION,
        timestamp=None,
        workers=None,
    ):
        if storage.exists(alias_path):
            raise AlreadyExistsError(f"{alias_path} already exists on {storage.display}", alias_path)
        self.storage = storage
        self.alias_path = alias_path
        self.directory = alias_data_path(alias_path)
        self.codec = BlockCodec([] if compression in (None, "none") else [compression], alias_path)
        self.plan = VhdWriter(
            virtual_size,
            [],
            uuid=uuid,
            parent_uuid=parent_uuid,
            parent_name=parent_name,
            parent_timestamp=parent_timestamp,
            block_size=block_size,
            timestamp=timestamp,
        )
        self.block_size = block_size
        self.bat = bytearray(-(-self.plan.entries // 8))
        self.bytes_written = 0
        self.blocks = 0
        self._lock = threading.Lock()
        workers = workers or BLOCK_WRITERS.get(storage.url.type, 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xapi-proxy-block")
        self._pending = deque()
        self._window = workers  # blocks held in memory at most: bounded, whatever the disk size
        if storage.exists(self.directory):
            self._clear_leftover()

    def _clear_leftover(self):
        """A directory of this name without an alias is a killed run's leftover: its blocks would mix with
        the new ones. One an alias names (after a merge, ``T2.alias.vhd`` holds ``data/T1.vhd``) is live."""
        folder = posixpath.dirname(self.alias_path)
        for name in self.storage.list(folder, missing_ok=True):
            if name.endswith(ALIAS_SUFFIX):
                with contextlib.suppress(VhdError, NotFoundError):
                    if read_alias(self.storage, f"{folder}/{name}") == self.directory:
                        raise AlreadyExistsError(
                            f"{self.directory} already holds the disk of {folder}/{name} on {self.storage.display}",
                            self.directory,
                        )
        self.storage.delete_tree(self.directory, missing_ok=True)

    @property
    def uuid(self):
        return self.plan.uuid

    @property
    def is_differencing(self):
        return self.plan.is_differencing

    def block(self, index, data):
        """Store block ``index`` (its data; only the disk's last block may be short)."""
        if not 0 <= index < self.plan.entries:
            raise VhdFormatError(f"block {index} lies outside the disk's {self.plan.entries} blocks", self.alias_path)
        bitmap, data = self.plan.block(index, data)
        set_bat_bit(self.bat, index)
        self.blocks += 1
        while len(self._pending) >= self._window:
            self._pending.popleft().result()  # re-raises the first failed upload
        self._pending.append(self._pool.submit(self._store, index, bitmap, data))

    def _store(self, index, bitmap, data):
        payload = self.codec.compress(bitmap + data)
        self.storage.write_bytes(block_path(self.directory, index), payload)
        with self._lock:
            self.bytes_written += len(payload)

    def _drain(self):
        while self._pending:
            self._pending.popleft().result()

    def commit(self):
        """Wait for every block, write the tables, then the alias; returns the bytes stored."""
        try:
            self._drain()
        finally:
            self._pool.shutdown(wait=True)
        footer = self.plan.footer.to_bytes()
        tables = [("bat", bytes(self.bat)), ("header", self.plan.header.to_bytes()), ("footer", footer)]
        if self.codec.filters:
            tables.insert(0, (CHUNK_FILTERS, json.dumps(self.codec.filters).encode()))
        for leaf, data in tables:
            self.storage.write_bytes(f"{self.directory}/{leaf}", data)
            self.bytes_written += len(data)
        alias = alias_content(self.alias_path).encode()
        self.storage.write_bytes(self.alias_path, alias, overwrite=False)
        self.bytes_written += len(alias)
        return self.bytes_written

    def abort(self):
        """Stop, and remove what was stored (the alias was never written)."""
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        with contextlib.suppress(Exception):
            self.storage.delete_tree(self.directory, missing_ok=True)

"""The remotes one VM's backup is written to, and the files it writes there.

One XAPI stream is read once and fanned out to every remote. A remote that fails (full, cut off)
is aborted and reported on its own; the others carry on. Every file goes to a temporary name and
becomes visible only once complete; the metadata JSON is written last, so a backup that is not
whole never looks like one.
"""

from __future__ import annotations

import contextlib
import time

from ._storage import LOCK_STALE_SECONDS, LockedError, StorageError, check_held
from ._vhd_directory import DEFAULT_COMPRESSION, is_alias, open_alias
from ._vhd_directory_write import VhdDirectoryWriter, uses_vhd_directory
from ._vhd_errors import VhdError
from ._vhd_file import VhdFile
from ._vhd_format import FOOTER_SIZE, Footer, uuid_str
from ._vhd_stream_write import VhdWriter
from ._xo_cache import update_cache
from ._xo_clean_plan import resolve_parent
from ._xo_layout import (
    metadata_path,
    vdis_dir,
    vhd_path,
    vhd_relative_path,
    vm_backup_dir,
    xva_checksum_path,
    xva_path,
)
from ._xo_metadata import dump_metadata
from ._xva_read import xva_quick_check

# A stale lock (its holder died) is taken over after LOCK_STALE_SECONDS: wait a little longer.
LOCK_WAIT = LOCK_STALE_SECONDS + 5


class TargetError(Exception):
    """A remote could not take this backup; the message names the remote and the step."""


class Target:
    """One remote for one VM: its lock, its in-progress files, and its outcome."""

    def __init__(self, storage, vm_uuid):
        self.storage = storage
        self.vm_uuid = vm_uuid
        self.label = storage.display
        self.lock = None
        self.error = None
        self.bytes_written = 0
        self.backup_id = None

    @property
    def ok(self):
        return self.error is None

    def fail(self, step, exc):
        if self.error is None:
            self.error = f"{self.label}: {step} failed: {exc}"

    def acquire(self, wait=LOCK_WAIT, clock=time.monotonic):
        """Lock the VM's directory; a lock left by a killed run goes stale and is taken over, so wait
        that long before reporting the VM as busy."""
        deadline = clock() + wait
        while True:
            try:
                self.lock = self.storage.lock(vm_backup_dir(self.vm_uuid))
                return
            except LockedError as e:
                if clock() >= deadline:
                    self.fail("locking the VM's backup directory", e)
                    return
                time.sleep(0.5)
            except StorageError as e:
                self.fail("locking the VM's backup directory", e)
                return

    def release(self):
        if self.lock is not None:
            with contextlib.suppress(Exception):
                self.lock.release()
            self.lock = None

    # -- incremental bases -------------------------------------------------------------------------
    def find_base_vhd(self, job_id, live_vdi_uuid, base_vdi_uuid):
        """See :func:`find_base_vhd`, on this target's remote."""
        return find_base_vhd(self.storage, self.vm_uuid, job_id, live_vdi_uuid, base_vdi_uuid)

    # -- metadata -----------------------------------------------------------------------------------
    def write_metadata(self, when, metadata):
        """Write ``<ts>.json`` last and record it in the cache; returns the backup id."""
        path = metadata_path(self.vm_uuid, when)
        check_held(self.lock, f"writing {path}")  # a backup is published only under our own lock
        self.storage.write_bytes(path, dump_metadata(metadata))
        self.backup_id = path
        with contextlib.suppress(StorageError):  # the cache is an optimisation XO rebuilds itself
            update_cache(self.storage, self.vm_uuid, add={path: metadata})
        return path


def find_base_vhd(storage, vm_uuid, job_id, live_vdi_uuid, base_vdi_uuid):
    """``(name, timestamp)`` of the VHD in ``vdis/<job>/<vdi>/`` whose footer uuid is the base snapshot's
    VDI, or None: XO's ``checkBaseVdis``, a base counts only if its data is on this remote.
    """
    directory = vdis_dir(vm_uuid, job_id, live_vdi_uuid)
    try:
        names = storage.list(directory, missing_ok=True)
    except StorageError:
        return None
    # XO's isMergeableParent: on a VHD-directory remote only a directory compressed as XO writes them
    # can be a base (a VHD file left from before the switch, in either direction, means a full).
    directories = uses_vhd_directory(storage)
    for name in sorted((n for n in names if n.endswith(".vhd") and not n.startswith(".")), reverse=True):
        if is_alias(name) != directories:
            continue
        try:
            footer = _footer(storage, f"{directory}/{name}")
        except (StorageError, VhdError, OSError):
            continue
        if uuid_str(footer.uuid) == base_vdi_uuid:
            # A delta on a base whose own ancestors are gone could never be restored, and the
            # retention that follows would delete it with them: then a full it is.
            return (name, footer.timestamp) if _chain_intact(storage, f"{directory}/{name}") else None
    return None


def _chain_intact(storage, path):
    """Whether the VHD at ``path`` and each of its ancestors, up to its full, open on ``storage``."""
    seen = set()
    while path not in seen:
        seen.add(path)
        try:
            if is_alias(path):
                vhd = open_alias(storage, path)
            else:
                with storage.open_read(path) as fh:
                    vhd = VhdFile(fh, path, fh.size)
        except (StorageError, VhdError, OSError):
            return False
        if not vhd.is_differencing:
            return True
        path = resolve_parent(path, vhd.parent_name)
        if path is None:
            return False
    return False  # a parent loop


def _footer(storage, path):
    if is_alias(path):
        vhd = open_alias(storage, path)
        if vhd.codec.name != DEFAULT_COMPRESSION:
            raise VhdError(f"blocks compressed with {vhd.codec.name}, not {DEFAULT_COMPRESSION}", path)
        return vhd.footer
    with storage.open_read(path) as fh:
        return Footer.parse(fh.pread(0, FOOTER_SIZE), path, 0)


class XvaSink:
    """``<ts>.xva`` being written to one target; the hash for ``<ts>.xva.checksum`` is computed once
    for all targets by the caller (they all store the same bytes)."""

    def __init__(self, target, when):
        self.target = target
        self.when = when
        self.written = 0
        self.stream = target.storage.open_write(xva_path(target.vm_uuid, when), overwrite=False)

    def write(self, data):
        self.stream.write(data)
        self.written += len(data)
        self.target.bytes_written += len(data)

    def commit(self, checksum, compressed):
        self.stream.commit()
        path = xva_path(self.target.vm_uuid, self.when)
        size = self.target.storage.stat(path).size
        if size != self.written or size != checksum.size:
            raise TargetError(f"{path} holds {size} bytes but {self.written} were written")
        if not compressed:
            with self.target.storage.open_read(path) as fh:
                problems = xva_quick_check(fh, size)
            if problems:
                raise TargetError(f"{path} is not a complete XVA: {'; '.join(problems)}")
        self.target.storage.write_bytes(xva_checksum_path(self.target.vm_uuid, self.when), checksum.text.encode())
        return size

    def abort(self):
        with contextlib.suppress(Exception):
            self.stream.abort()


class VhdSink:
    """One disk's ``vdis/<job>/<vdi>/<ts>.vhd`` being written to one target, in XO's VHD layout."""

    def __init__(self, target, job_id, live_vdi_uuid, when, reader, snap_vdi_uuid, parent):
        self.target = target
        self.relative = vhd_relative_path(job_id, live_vdi_uuid, when)
        self.path = vhd_path(target.vm_uuid, job_id, live_vdi_uuid, when)
        # parent: (file name relative to this VHD, its VHD timestamp, the base snapshot VDI uuid)
        parent_name, parent_ts, parent_uuid = parent if parent else ("", 0, None)
        blocks = [i for i in reader.block_order if i * reader.block_size < reader.virtual_size]
        self.writer = VhdWriter(
            reader.virtual_size,
            blocks,
            uuid=snap_vdi_uuid,
            parent_uuid=parent_uuid,
            parent_name=parent_name,
            parent_timestamp=parent_ts,
            block_size=reader.block_size,
        )
        self.differencing = parent is not None
        self.stream = target.storage.open_write(self.path, overwrite=False)
        self._write(self.writer.prologue())

    def _write(self, data):
        self.stream.write(data)
        self.target.bytes_written += len(data)

    def block(self, index, data):
        for piece in self.writer.block(index, data):
            self._write(piece)

    def commit(self):
        self._write(self.writer.epilogue())
        self.stream.commit()
        size = self.target.storage.stat(self.path).size
        if size != self.writer.size:
            raise TargetError(f"{self.path} holds {size} bytes, expected {self.writer.size}")
        return size

    def abort(self):
        with contextlib.suppress(Exception):
            self.stream.abort()


class VhdDirectorySink:
    """One disk written as a VHD directory (S3 remotes, ``useVhdDirectory=true``): ``<ts>.alias.vhd``
    naming ``data/<ts>.vhd/``, one compressed object per block, the alias last."""

    def __init__(self, target, job_id, live_vdi_uuid, when, reader, snap_vdi_uuid, parent):
        self.target = target
        self.relative = vhd_relative_path(job_id, live_vdi_uuid, when, vhd_directory=True)
        self.path = vhd_path(target.vm_uuid, job_id, live_vdi_uuid, when, vhd_directory=True)
        parent_name, parent_ts, parent_uuid = parent if parent else ("", 0, None)
        self.differencing = parent is not None
        self.writer = VhdDirectoryWriter(
            target.storage,
            self.path,
            reader.virtual_size,
            uuid=snap_vdi_uuid,
            parent_uuid=parent_uuid,
            parent_name=parent_name,
            parent_timestamp=parent_ts,
            block_size=reader.block_size,
        )

    def block(self, index, data):
        self.writer.block(index, data)

    def commit(self):
        size = self.writer.commit()
        self.target.bytes_written += size
        return size

    def abort(self):
        with contextlib.suppress(Exception):
            self.writer.abort()


def disk_sink(target, *args):
    """The sink for one disk on ``target``: a VHD file, or a VHD directory where XO would write one."""
    kind = VhdDirectorySink if uses_vhd_directory(target.storage) else VhdSink
    return kind(target, *args)

"""XO-compatible directory lock for file-like remotes (local, mounted NFS or SMB).

XO locks ``xo-vm-backups/<vmUuid>`` with ``proper-lockfile``: the lock is the empty directory
``<path>.lock``, created with ``mkdir`` (atomic even over NFS), kept fresh by touching its mtime every
``stale / 2`` seconds, and considered abandoned once its mtime is older than ``stale`` (10 s by default).
We do the same, so an XO holder and ours exclude each other. The directory stays empty because
proper-lockfile removes it with ``rmdir``.

The few filesystem calls go through a :class:`LockOps` (the local one by default) so a remote reached
without a mount (SMB through smbprotocol) shares this logic by passing its own.

Clock note (as in XO): staleness compares the holder's clock, written with ``utime``, to ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    DIR_MODE,
    LockedError,
    StorageError,
    StorageLock,
    error_from_os,
)


class LockOps:
    """Filesystem calls of the lock, on local (or mounted) paths.

    Another implementation must raise ``FileExistsError`` / ``FileNotFoundError`` (or subclasses) for those
    conditions and ``OSError`` otherwise; a :class:`StorageError` is passed on unchanged.
    """

    def mkdir(self, path: str) -> None:
        os.mkdir(path, DIR_MODE)

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime

    def touch(self, path: str, when: float) -> None:
        os.utime(path, (when, when))

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)


LOCAL = LockOps()


def _storage_error(err: OSError, action: str, rel_path: str, remote: str) -> StorageError:
    return err if isinstance(err, StorageError) else error_from_os(err, action, rel_path, remote)


class DirLock(StorageLock):
    """A held ``<path>.lock`` directory with a background refresher thread."""

    def __init__(
        self, abs_path: str, rel_path: str, stale: float, refresh: Optional[float] = None, ops: LockOps = LOCAL
    ):
        self.path = rel_path
        self._abs = abs_path
        self._ops = ops
        self._refresh = refresh if refresh is not None else stale / 2
        self._stop = threading.Event()
        self._lost = False
        self._mtime = self._touch()
        self._thread = threading.Thread(target=self._run, name=f"lock-refresh {rel_path}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost

    def _touch(self) -> float:
        self._ops.touch(self._abs, time.time())
        # remember what the filesystem stored (its timestamp precision may be coarse)
        return self._ops.mtime(self._abs)

    def _run(self):
        while not self._stop.wait(self._refresh):
            try:
                if self._ops.mtime(self._abs) != self._mtime:
                    self._lost = True  # someone judged us stale and took the lock over
                    return
                self._mtime = self._touch()
            except FileNotFoundError:
                self._lost = True
                return
            except OSError:
                continue  # transient remote trouble: retry; if it lasts the lock goes stale, as in XO

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if not self._lost:
            with contextlib.suppress(FileNotFoundError):
                self._ops.rmdir(self._abs)


def acquire_dir_lock(
    abs_path: str,
    rel_path: str,
    remote: str,
    *,
    stale: float,
    what: str,
    refresh: Optional[float] = None,
    ops: LockOps = LOCAL,
) -> DirLock:
    """Create ``abs_path`` (the ``.lock`` directory) or fail fast with :class:`LockedError`."""
    for attempt in range(2):
        try:
            ops.mkdir(abs_path)
        except FileExistsError:
            try:
                mtime = ops.mtime(abs_path)
            except FileNotFoundError:
                continue  # released between our mkdir and stat: try once more
            except OSError as err:
                raise _storage_error(err, "check lock", rel_path, remote) from err
            age = time.time() - mtime
            if age <= stale or attempt == 1:
                raise LockedError(_held_message(what, rel_path, remote, mtime, age, stale), rel_path) from None
            _remove_stale(abs_path, stale, ops)
            continue
        except OSError as err:
            raise _storage_error(err, "create lock", rel_path, remote) from err
        try:
            return DirLock(abs_path, rel_path, stale, refresh, ops)
        except OSError as err:
            with contextlib.suppress(OSError):
                ops.rmdir(abs_path)  # ours, but unusable: do not leave it to block others for `stale` seconds
            raise _storage_error(err, "refresh lock", rel_path, remote) from err
    raise LockedError(f"{what} is already running on this remote (lock {rel_path} on {remote} was just taken).")


def _remove_stale(abs_path: str, stale: float, ops: LockOps) -> None:
    # Move it aside first, then check it really is the stale one: another process may have replaced it
    # with a fresh lock between our stat and now; in that case put theirs back.
    aside = f"{abs_path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        ops.rename(abs_path, aside)
    except FileNotFoundError:
        return
    if time.time() - ops.mtime(aside) <= stale:
        try:
            ops.rename(aside, abs_path)
            return
        except OSError:
            pass  # a third process holds it now; the fresh one we moved is lost either way
    try:
        ops.rmdir(aside)
    except OSError:
        ops.rmtree(aside)


def _held_message(what, rel_path, remote, mtime, age, stale):
    since = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{what} is already running on this remote (lock {rel_path} on {remote} held since at least {since} UTC, "
        f"last refreshed {max(age, 0):.0f} s ago); wait for it to finish: the lock is taken over automatically "
        f"once it has not been refreshed for {stale:g} s."
    )

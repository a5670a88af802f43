"""XO-compatible directory lock for file-like remotes (local, mounted NFS or SMB).

XO locks ``xo-vm-backups/<vmUuid>`` with ``proper-lockfile``: the lock is the empty directory
``<path>.lock``, created with ``mkdir`` (atomic even over NFS), kept fresh by touching its mtime every
``stale / 2`` seconds, and considered abandoned once its mtime is older than ``stale`` (10 s by default).
We do the same, so an XO holder and ours exclude each other. The directory stays empty because
proper-lockfile removes it with ``rmdir``.

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
    StorageLock,
    error_from_os,
)


class DirLock(StorageLock):
    """A held ``<path>.lock`` directory with a background refresher thread."""

    def __init__(self, abs_path: str, rel_path: str, stale: float, refresh: Optional[float] = None):
        self.path = rel_path
        self._abs = abs_path
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
        now = time.time()
        os.utime(self._abs, (now, now))
        # remember what the filesystem stored (its timestamp precision may be coarse)
        return os.stat(self._abs).st_mtime

    def _run(self):
        while not self._stop.wait(self._refresh):
            try:
                if os.stat(self._abs).st_mtime != self._mtime:
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
                os.rmdir(self._abs)


def acquire_dir_lock(
    abs_path: str, rel_path: str, remote: str, *, stale: float, what: str, refresh: Optional[float] = None
) -> DirLock:
    """Create ``abs_path`` (the ``.lock`` directory) or fail fast with :class:`LockedError`."""
    for attempt in range(2):
        try:
            os.mkdir(abs_path, DIR_MODE)
        except FileExistsError:
            try:
                mtime = os.stat(abs_path).st_mtime
            except FileNotFoundError:
                continue  # released between our mkdir and stat: try once more
            except OSError as err:
                raise error_from_os(err, "check lock", rel_path, remote) from err
            age = time.time() - mtime
            if age <= stale or attempt == 1:
                raise LockedError(_held_message(what, rel_path, remote, mtime, age, stale), rel_path) from None
            _remove_stale(abs_path, stale)
            continue
        except OSError as err:
            raise error_from_os(err, "create lock", rel_path, remote) from err
        try:
            return DirLock(abs_path, rel_path, stale, refresh)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.rmdir(abs_path)  # ours, but unusable: do not leave it to block others for `stale` seconds
            raise error_from_os(err, "refresh lock", rel_path, remote) from err
    raise LockedError(f"{what} is already running on this remote (lock {rel_path} on {remote} was just taken).")


def _remove_stale(abs_path: str, stale: float) -> None:
    # Move it aside first, then check it really is the stale one: another process may have replaced it
    # with a fresh lock between our stat and now; in that case put theirs back.
    aside = f"{abs_path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(abs_path, aside)
    except FileNotFoundError:
        return
    if time.time() - os.stat(aside).st_mtime <= stale:
        try:
            os.rename(aside, abs_path)
            return
        except OSError:
            pass  # a third process holds it now; the fresh one we moved is lost either way
    try:
        os.rmdir(aside)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)


def _held_message(what, rel_path, remote, mtime, age, stale):
    since = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{what} is already running on this remote (lock {rel_path} on {remote} held since at least {since} UTC, "
        f"last refreshed {max(age, 0):.0f} s ago); wait for it to finish: the lock is taken over automatically "
        f"once it has not been refreshed for {stale:g} s."
    )

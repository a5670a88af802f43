"""``file://`` remotes: a local directory, which is also what a mounted NFS or SMB share looks like."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import stat as stat_mod
import struct
import sys
import time
from typing import List, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import RemoteUrl
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    DIR_MODE,
    LOCK_STALE_SECONDS,
    AlreadyExistsError,
    NotFoundError,
    NotSupportedError,
    ReadStream,
    StatResult,
    Storage,
    StorageError,
    StorageLock,
    WriteStream,
    error_from_os,
    normalize_path,
    temp_name,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_lock import acquire_dir_lock

WRITE_BUFFER = 1024 * 1024
# Write-behind: every WRITE_BEHIND bytes, the kernel is told to write the new stretch out, and the stretch
# before it, once on disk, leaves the page cache. A long stream then never piles up gigabytes of dirty
# pages that the final fsync would have to flush at once, nor evicts the proxy's useful cache, and the
# page cache reuses the same few pages (much cheaper than growing it, especially in a VM).
WRITE_BEHIND = 16 << 20
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4
# errors that mean "this filesystem cannot do it": write-behind is then just skipped
_NO_SYNC_FILE_RANGE = {errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}
_sync_file_range = None
# Direct I/O: large page-aligned writes (a backup's pipeline buffers) skip the page cache altogether on
# local filesystems known to handle it well (the kernel then copies nothing: about a core-second less
# per 4 GiB). Everything else, and any write that is not aligned, goes through the page cache.
DIRECT_ALIGN = 4096
DIRECT_MIN = 1 << 20
_DIRECT_FILESYSTEMS = {0xEF53: "ext2/3/4", 0x58465342: "xfs"}  # statfs f_type magic numbers
_libc = None
# link() is how we publish without replacing; these mean "this filesystem cannot link" (CIFS, some NFS).
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


class FileStorage(Storage):
    """A remote rooted at ``url.path`` on the proxy's filesystem."""

    def __init__(self, url: RemoteUrl, *, create_root: bool = False):
        super().__init__(url)
        if url.type != "file":
            raise NotSupportedError(f"FileStorage cannot open {url.redacted()}: it only handles file:// remotes.")
        self.root = url.path
        try:
            if not os.path.isdir(self.root) and create_root:
                self._makedirs(self.root)
            st = os.stat(self.root)
        except FileNotFoundError:
            raise NotFoundError(
                f"remote directory {self.root} does not exist: create it (or mount the share there) first.", None
            ) from None
        except OSError as err:
            raise error_from_os(err, "open", None, self.display) from err
        if not stat_mod.S_ISDIR(st.st_mode):
            raise StorageError(f"remote {self.display} is not a directory: point the URL at a directory.")

    # -- helpers ----------------------------------------------------------------------------
    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _fail(self, err: OSError, action: str, rel: Optional[str]):
        return error_from_os(err, action, rel, self.display)

    def _makedirs(self, abs_dir: str) -> None:
        # os.makedirs applies the mode to the leaf only; XO's dirMode applies to every level it creates
        missing = []
        while not os.path.isdir(abs_dir):
            missing.append(abs_dir)
            parent = os.path.dirname(abs_dir)
            if parent == abs_dir:
                break
            abs_dir = parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise

    # -- contract ---------------------------------------------------------------------------
    def open_write(self, path: str, *, overwrite: bool = True) -> WriteStream:
        rel = normalize_path(path)
        final = self._abs(rel)
        directory, base = os.path.split(final)
        if not overwrite and os.path.lexists(final):  # fail before streaming; commit checks again atomically
            raise AlreadyExistsError(f"cannot write {rel} on {self.display}: it already exists.", rel)
        try:
            self._makedirs(directory)
        except OSError as err:
            raise self._fail(err, "create the directory of", rel) from err
        now = int(time.time() * 1000)
        while True:
            tmp = os.path.join(directory, temp_name(base, now))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
                break
            except FileExistsError:
                now += 1  # two writers in the same millisecond
            except OSError as err:
                raise self._fail(err, "write", rel) from err
        return _FileWriteStream(self, rel, final, tmp, fd, overwrite)

    def open_read(self, path: str) -> ReadStream:
        rel = normalize_path(path)
        try:
            fd = os.open(self._abs(rel), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise self._fail(err, "read", rel) from err
        return _FileReadStream(self, rel, fd)

    def rename(self, src: str, dst: str) -> None:
        rsrc, rdst = normalize_path(src), normalize_path(dst)
        try:
            self._makedirs(os.path.dirname(self._abs(rdst)))
            os.rename(self._abs(rsrc), self._abs(rdst))
        except OSError as err:
            raise self._fail(err, f"rename {rsrc} to", rdst) from err
        _fsync_dir(os.path.dirname(self._abs(rdst)))
        if os.path.dirname(rsrc) != os.path.dirname(rdst):
            _fsync_dir(os.path.dirname(self._abs(rsrc)))

    def list(self, path: str = "", *, missing_ok: bool = False) -> List[str]:
        rel = normalize_path(path, allow_root=True)
        try:
            return sorted(os.listdir(self._abs(rel)))
        except FileNotFoundError:
            if missing_ok:
                return []
            raise NotFoundError(f"cannot list {rel or '/'} on {self.display}: it does not exist.", rel) from None
        except NotADirectoryError:
            raise StorageError(f"cannot list {rel} on {self.display}: it is a file, not a directory.", rel) from None
        except OSError as err:
            raise self._fail(err, "list", rel) from err

    def stat(self, path: str) -> StatResult:
        rel = normalize_path(path, allow_root=True)
        try:
            st = os.stat(self._abs(rel))
        except OSError as err:
            raise self._fail(err, "stat", rel) from err
        return StatResult(size=st.st_size, is_dir=stat_mod.S_ISDIR(st.st_mode), mtime=st.st_mtime)

    def delete(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        try:
            os.unlink(self._abs(rel))
        except FileNotFoundError:
            if not missing_ok:
                raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel) from None
        except IsADirectoryError:
            raise StorageError(
                f"cannot delete {rel} on {self.display}: it is a directory (use delete_tree).", rel
            ) from None
        except OSError as err:
            if err.errno == errno.EPERM and os.path.isdir(self._abs(rel)):
                raise StorageError(
                    f"cannot delete {rel} on {self.display}: it is a directory (use delete_tree).", rel
                ) from None
            raise self._fail(err, "delete", rel) from err
        _fsync_dir(os.path.dirname(self._abs(rel)))

    def delete_tree(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        target = self._abs(rel)
        try:
            if os.path.islink(target) or not os.path.isdir(target):
                os.unlink(target)
            else:
                shutil.rmtree(target)
        except FileNotFoundError:
            if not missing_ok:
                raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel) from None
        except OSError as err:
            raise self._fail(err, "delete", rel) from err

    def mkdir(self, path: str, *, exist_ok: bool = True) -> None:
        rel = normalize_path(path)
        target = self._abs(rel)
        if os.path.isdir(target) and not exist_ok:
            raise AlreadyExistsError(f"cannot create {rel} on {self.display}: it already exists.", rel)
        try:
            self._makedirs(target)
        except OSError as err:
            raise self._fail(err, "create directory", rel) from err

    def open_update(self, path: str):
        rel = normalize_path(path)
        try:
            return open(self._abs(rel), "r+b")  # noqa: SIM115 - returned to the caller
        except OSError as err:
            raise self._fail(err, "update", rel) from err

    def local_path(self, path: str) -> Optional[str]:
        return self._abs(normalize_path(path, allow_root=True))

    def lock(self, path: str, *, stale: float = LOCK_STALE_SECONDS, what: str = "a backup of this VM") -> StorageLock:
        rel = normalize_path(path) + ".lock"
        target = self._abs(rel)
        try:
            self._makedirs(os.path.dirname(target))
        except OSError as err:
            raise self._fail(err, "create the directory of", rel) from err
        return acquire_dir_lock(target, rel, self.display, stale=stale, what=what)


def _load_libc():
    global _libc  # noqa: PLW0603 - loaded once, lazily
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _direct_io_ok(path: str) -> bool:
    """True when ``path`` is on a local filesystem where O_DIRECT writes are used (see DIRECT_ALIGN)."""
    libc = _load_libc()
    if not libc or not hasattr(os, "O_DIRECT"):
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a C long) comes first
    try:
        if libc.statfs(os.fsencode(path), buf) != 0:
            return False
    except AttributeError:
        return False
    return struct.unpack_from("l", buf.raw)[0] in _DIRECT_FILESYSTEMS


def _address(data) -> Optional[int]:
    """Memory address of a writable buffer, None for read-only ones (bytes)."""
    try:
        ref = ctypes.c_char.from_buffer(data)
    except (TypeError, ValueError):
        return None
    try:
        return ctypes.addressof(ref)
    finally:
        del ref


def _load_sync_file_range():
    """libc's ``sync_file_range`` (Linux), or False where there is none. Loaded once."""
    global _sync_file_range  # noqa: PLW0603 - looked up once, lazily
    if _sync_file_range is None:
        _sync_file_range = False
        libc = _load_libc()
        if libc:
            try:
                func = libc.sync_file_range
            except AttributeError:
                return False
            func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            func.restype = ctypes.c_int
            _sync_file_range = func
    return _sync_file_range


def _fsync_dir(path: str) -> None:
    # Makes a rename/unlink durable. Some filesystems (CIFS, old NFS) refuse fsync on directories.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


class _FileWriteStream(WriteStream):
    def __init__(self, storage: FileStorage, rel: str, final: str, tmp: str, fd: int, overwrite: bool):
        self.path = rel
        self.bytes_written = 0
        self._storage = storage
        self._final = final
        self._tmp = tmp
        self._overwrite = overwrite
        self._raw = io.FileIO(fd, "wb", closefd=True)
        self._out = io.BufferedWriter(self._raw, WRITE_BUFFER)
        self._state = "open"
        self._sfr = _load_sync_file_range()
        self._started = 0  # write-out started for the bytes before this offset
        self._dropped = 0  # the bytes before this offset are on disk and out of the page cache
        self._direct_ok = _direct_io_ok(os.path.dirname(tmp))
        self._direct_fd = None  # a second descriptor of the temporary, with O_DIRECT, once needed

    @property
    def temp_path(self) -> str:
        """Remote-relative name of the temporary file (for diagnostics and tests)."""
        return os.path.relpath(self._tmp, self._storage.root)

    def _check_open(self):
        if self._state != "open":
            raise StorageError(f"cannot write {self.path}: the stream is already {self._state}.", self.path)

    def write(self, data) -> int:
        self._check_open()
        try:
            n = self._write_direct(data) if self._direct_ok else 0
            if n < len(data):
                n += self._out.write(memoryview(data)[n:] if n else data)
        except OSError as err:
            self.abort()
            raise self._storage._fail(err, "write", self.path) from err
        self.bytes_written += n
        if self._sfr and self.bytes_written - self._started >= WRITE_BEHIND:
            self._write_behind()
        return n

    def _write_direct(self, data) -> int:
        """Write what can go around the page cache (aligned and large); return how much that was."""
        size = len(data)
        if size < DIRECT_MIN or size % DIRECT_ALIGN or self.bytes_written % DIRECT_ALIGN:
            return 0
        address = _address(data)
        if address is None or address % DIRECT_ALIGN:
            return 0
        self._out.flush()  # the page cache's part comes first, then this one right after it
        if self._direct_fd is None:
            try:
                self._direct_fd = os.open(self._tmp, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._direct_ok = False
                return 0
        try:
            n = os.pwrite(self._direct_fd, data, self.bytes_written)
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: alignment refused after all; the page cache will do
                raise
            self._close_direct()
            self._direct_ok = False
            return 0
        self._out.seek(self.bytes_written + n)
        return n

    def _close_direct(self):
        if self._direct_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._direct_fd)
            self._direct_fd = None

    def _write_behind(self):
        """Start writing out the new stretch; wait for the previous one and drop it from the page cache.

        Only a hint for the kernel: commit() still fsyncs the whole file. But an error it reports is a
        write error (the kernel would not report it again to fsync on this descriptor).
        """
        fd, end = self._raw.fileno(), self.bytes_written  # bytes still in self._out are simply not covered
        err = 0
        if self._sfr(fd, self._started, end - self._started, _SFR_WRITE) != 0:
            err = ctypes.get_errno()
        elif self._started > self._dropped:
            length = self._started - self._dropped
            if self._sfr(fd, self._dropped, length, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER) != 0:
                err = ctypes.get_errno()
            else:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, self._dropped, length, os.POSIX_FADV_DONTNEED)
                self._dropped = self._started
        self._started = end
        if err in _NO_SYNC_FILE_RANGE:
            self._sfr = None
        elif err:
            self.abort()
            raise self._storage._fail(OSError(err, os.strerror(err)), "write", self.path)

    def commit(self) -> None:
        self._check_open()
        try:
            self._out.flush()
            os.fsync(self._raw.fileno())  # the inode's data, whichever descriptor wrote it
            self._close_direct()
            self._out.close()
            if self._overwrite:
                os.rename(self._tmp, self._final)
            else:
                self._publish_exclusive()
        except AlreadyExistsError:  # already worded; it is an OSError too, so catch it first
            self.abort()
            raise
        except OSError as err:
            self.abort()
            raise self._storage._fail(err, "write", self.path) from err
        self._state = "committed"
        _fsync_dir(os.path.dirname(self._final))

    def _publish_exclusive(self):
        try:
            os.link(self._tmp, self._final)  # fails if the final name exists: no window where it is replaced
        except FileExistsError:
            raise AlreadyExistsError(
                f"cannot write {self.path} on {self._storage.display}: it already exists.", self.path
            ) from None
        except OSError as err:
            if err.errno not in _NO_LINK:
                raise
            if os.path.lexists(self._final):  # best effort where hard links are unavailable
                raise AlreadyExistsError(
                    f"cannot write {self.path} on {self._storage.display}: it already exists.", self.path
                ) from None
            os.rename(self._tmp, self._final)
            return
        os.unlink(self._tmp)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._close_direct()
        with contextlib.suppress(OSError):  # flushing the rest may fail (ENOSPC): the temporary goes anyway
            self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


class _FileReadStream(ReadStream):
    def __init__(self, storage: FileStorage, rel: str, fd: int):
        super().__init__()
        self.path = rel
        self._storage = storage
        self._fd = fd
        try:
            self.size = os.fstat(fd).st_size
        except OSError as err:
            os.close(fd)
            raise storage._fail(err, "read", rel) from err

    def fileno(self):
        return self._fd

    def readinto(self, buffer) -> int:
        try:
            if hasattr(os, "preadv"):
                n = os.preadv(self._fd, [buffer], self._pos)
            else:
                data = os.pread(self._fd, len(buffer), self._pos)
                n = len(data)
                buffer[:n] = data
        except OSError as err:
            raise self._storage._fail(err, "read", self.path) from err
        self._pos += n
        return n

    def pread(self, offset: int, length: int) -> bytes:
        out = []
        while length > 0:
            try:
                chunk = os.pread(self._fd, length, offset)
            except OSError as err:
                raise self._storage._fail(err, "read", self.path) from err
            if not chunk:
                break
            out.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(out)

    def close(self):
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()

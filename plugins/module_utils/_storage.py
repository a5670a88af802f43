"""The storage contract every backup remote implements: file, NFS, SMB and S3.

Paths are relative to the remote root, ``/``-separated (``xo-vm-backups/<vm>/<ts>.json``); a leading
``/`` is tolerated, ``..`` is refused. The backup engine only talks to :class:`Storage`, so adding a
remote kind is one new subclass plus one entry in :data:`_BACKENDS`.

Errors raised by backends are the small :class:`StorageError` hierarchy below; each message names the
remote (redacted), the path and what the operator can do.
"""

from __future__ import annotations

import abc
import errno
import io
import json
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Union

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import Credentials, RemoteUrl, parse

DIR_MODE = 0o700  # XO's [backups] dirMode
LOCK_STALE_SECONDS = 10.0  # proper-lockfile's default, which XO uses: compatible with XO holders
SMALL_FILE_LIMIT = 64 * 1024 * 1024  # read_bytes() refuses more: small files only (JSON, aliases)


# -- errors -----------------------------------------------------------------------------------
class StorageError(OSError):
    """Base class; ``path`` is the remote-relative path involved (may be None).

    An ``OSError`` (with ``errno`` when known) so generic code keeps working: ``NotFoundError`` is
    also a ``FileNotFoundError``, ``PermissionDeniedError`` a ``PermissionError``.
    """

    def __init__(self, message: str, path: Optional[str] = None, os_errno: Optional[int] = None):
        super().__init__(message)  # one argument: OSError keeps it as the message
        self.path = path
        self.filename = path
        self.errno = os_errno

    def __str__(self):
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.args[0], self.path, self.errno))


class NotFoundError(StorageError, FileNotFoundError):
    """The file or directory does not exist."""


class AlreadyExistsError(StorageError, FileExistsError):
    """The target exists and the operation must not replace it."""


class PermissionDeniedError(StorageError, PermissionError):
    """The proxy may not read or write there (including a read-only remote)."""


class RemoteFullError(StorageError):
    """No space or quota left on the remote."""


class UnreachableError(StorageError):
    """The remote did not answer (NFS/SMB server gone, stale handle, network down, timeout)."""


class AuthenticationError(StorageError):
    """The remote refused the credentials."""


class LockedError(StorageError):
    """Another process holds the lock."""


class LockLostError(StorageError):
    """A lock this process held was taken over (judged stale, or removed) while it worked."""


def check_held(lock, step):
    """Raise :class:`LockLostError` if ``lock`` (a :class:`StorageLock`, or None for none) was lost.

    Called before every step that changes what another holder would see, so that a run whose lock was
    taken over (its remote stalled for longer than the lock's staleness) stops before it deletes, merges
    or publishes anything the new holder is working on.
    """
    if lock is not None and lock.lost:
        raise LockLostError(
            f"the lock {lock.path} was taken over by another process while this run held it (the remote did not "
            f"answer for longer than the lock's staleness, or someone removed it); stopped before {step}. "
            "Nothing half-done looks complete: the next run finishes or cleans up.",
            lock.path,
        )


class NotSupportedError(StorageError):
    """The remote kind or operation is not available."""


_UNREACHABLE = {
    errno.ESTALE, errno.ENOTCONN, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH,
    errno.ENETDOWN, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
}  # fmt: skip


def error_from_os(err: OSError, action: str, path: Optional[str], remote: str) -> StorageError:
    """Map an ``OSError`` raised while doing ``action`` on ``path`` to the hierarchy."""
    code = err.errno
    what = f"cannot {action} {path or '/'} on {remote}"
    reason = err.strerror or str(err)
    if code == errno.ENOENT:
        return NotFoundError(f"{what}: it does not exist.", path, code)
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        return AlreadyExistsError(f"{what}: the target already exists.", path, code)
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDeniedError(
            f"{what}: permission denied ({reason}); give the proxy's user read/write access to the remote.", path, code
        )
    if code == errno.EROFS:
        return PermissionDeniedError(f"{what}: the remote is mounted read-only; remount it read-write.", path, code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return RemoteFullError(
            f"{what}: the remote is full ({reason}); free space on it or lower the retention.", path, code
        )
    if code in _UNREACHABLE:
        return UnreachableError(
            f"{what}: the remote is unreachable ({reason}); check the server, the network and the mount.", path, code
        )
    return StorageError(f"{what}: {reason}.", path, code)


# -- streams ----------------------------------------------------------------------------------
class WriteStream(abc.ABC):
    """A file being written. Visible under its final name only after :meth:`commit`.

    Use it as a context manager: a clean exit commits, an exception aborts (the temporary is removed).
    """

    path: str
    bytes_written: int = 0

    @abc.abstractmethod
    def write(self, data) -> int:
        """Append ``data`` (bytes-like); returns its length."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Flush to stable storage and publish under the final name (atomically)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written; idempotent, never raises for a missing temporary."""

    def writable(self) -> bool:
        return True

    def flush(self) -> None:  # noqa: B027 - deliberately a no-op hook
        """Data reaches the remote on commit; nothing to do for callers such as gzip/tarfile."""

    def tell(self) -> int:
        return self.bytes_written

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


class ReadStream(io.RawIOBase):
    """A readable, seekable binary stream with its ``size`` and positional :meth:`pread`.

    Subclasses implement ``readinto`` (at the current position) and may override :meth:`pread`;
    S3 will serve both with ranged GETs.
    """

    size: int = 0
    path: str = ""

    def __init__(self):
        super().__init__()
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``, without moving the stream position."""
        saved = self._pos
        try:
            self._pos = offset
            out = bytearray()
            while len(out) < length:
                chunk = self.read(length - len(out))
                if not chunk:
                    break
                out += chunk
            return bytes(out)
        finally:
            self._pos = saved


@dataclass(frozen=True)
class StatResult:
    size: int
    is_dir: bool
    mtime: float  # seconds since the epoch


class StorageLock(abc.ABC):
    """An exclusive lock; release it (or leave the ``with`` block) when the work is done."""

    path: str

    @property
    @abc.abstractmethod
    def lost(self) -> bool:
        """True when the lock was taken away (removed or stolen as stale) while held."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock back; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


# -- the contract -----------------------------------------------------------------------------
class Storage(abc.ABC):
    """One backup remote. Every method takes remote-relative paths."""

    def __init__(self, url: RemoteUrl):
        self.url = url

    @property
    def display(self) -> str:
        """The remote's redacted URL, for messages."""
        return self.url.redacted()

    # primitives every backend implements
    @abc.abstractmethod
    def open_write(self, path: str, *, overwrite: bool = True) -> WriteStream:
        """Start writing ``path`` through a temporary ``.<ms>.<basename>``; parents are created (0o700)."""

    @abc.abstractmethod
    def open_read(self, path: str) -> ReadStream:
        """Open ``path`` for streaming and random-access reads."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically move a file or directory; an existing file at ``dst`` is replaced."""

    @abc.abstractmethod
    def list(self, path: str = "", *, missing_ok: bool = False) -> List[str]:
        """Sorted entry names of directory ``path`` (files and sub-directories)."""

    @abc.abstractmethod
    def stat(self, path: str) -> StatResult:
        """Size, kind and modification time of ``path``."""

    @abc.abstractmethod
    def delete(self, path: str, *, missing_ok: bool = True) -> None:
        """Remove one file."""

    @abc.abstractmethod
    def delete_tree(self, path: str, *, missing_ok: bool = True) -> None:
        """Remove a directory and everything below it (or a single file)."""

    @abc.abstractmethod
    def mkdir(self, path: str, *, exist_ok: bool = True) -> None:
        """Create ``path`` and missing parents with mode 0o700."""

    @abc.abstractmethod
    def lock(self, path: str, *, stale: float = LOCK_STALE_SECONDS, what: str = "a backup of this VM") -> StorageLock:
        """Take ``<path>.lock`` now or raise :class:`LockedError` ("<what> is already running …")."""

    def open_update(self, path: str) -> BinaryIO:
        """Open an existing file for in-place random-access read/write (VHD-file merges).

        Not atomic: callers keep their own resume state (``.merge.json``). Remotes without in-place
        writes (S3, which always uses VHD directories) raise :class:`NotSupportedError`.
        """
        raise NotSupportedError(f"cannot update {path} in place on {self.display}: this remote does not support it.")

    def local_path(self, path: str) -> Optional[str]:
        """The proxy-local filesystem path of ``path`` when the remote is one (XO's ``getRealPath``), else None."""
        return None

    def close(self) -> None:  # noqa: B027 - deliberately a no-op hook
        """Release connections or mounts; the default has none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # helpers built on the primitives
    def size(self, path: str) -> int:
        return self.stat(path).size

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def read_bytes(self, path: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        """Whole content of a small file."""
        with self.open_read(path) as f:
            if f.size > limit:
                raise StorageError(
                    f"cannot read {path} on {self.display} as a small file: it has {f.size} bytes (limit {limit}).",
                    path,
                )
            return f.pread(0, f.size)

    def write_bytes(self, path: str, data: bytes, *, overwrite: bool = True) -> None:
        """Replace ``path`` with ``data`` atomically."""
        with self.open_write(path, overwrite=overwrite) as out:
            out.write(data)

    def read_json(self, path: str) -> Any:
        data = self.read_bytes(path)
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError as err:
            raise StorageError(f"{path} on {self.display} is not valid JSON: {err}.", path) from None

    def write_json(self, path: str, value: Any, *, overwrite: bool = True) -> None:
        """Write compact JSON (as XO's ``JSON.stringify``) atomically."""
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self.write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


# -- paths ------------------------------------------------------------------------------------
def normalize_path(path: str, *, allow_root: bool = False) -> str:
    """Canonical remote-relative path; refuses ``..`` and NUL so nothing escapes the remote root."""
    if not isinstance(path, str):
        raise TypeError(f"remote path must be a string, not {type(path).__name__}")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    for part in parts:
        if part == ".." or "\0" in part:
            raise ValueError(f"remote path {path!r} contains '..' or NUL: use a path inside the remote.")
    if not parts and not allow_root:
        raise ValueError("an empty remote path names the remote root, which cannot be used here.")
    return "/".join(parts)


def temp_name(basename: str, now_ms: Optional[int] = None) -> str:
    """``.<Date.now()>.<basename>``: XO's temporary name, hidden from listings that skip dot-files."""
    return f".{int(time.time() * 1000) if now_ms is None else now_ms}.{basename}"


# -- factory ----------------------------------------------------------------------------------
def _load_file():
    # imported on demand: backends import this module, and later ones need optional libraries
    from ansible_collections.xapi.proxy.plugins.module_utils._storage_file import FileStorage  # noqa: PLC0415

    return FileStorage


def _load_nfs():
    from ansible_collections.xapi.proxy.plugins.module_utils._storage_nfs import NfsStorage  # noqa: PLC0415

    return NfsStorage


def _load_smb():
    from ansible_collections.xapi.proxy.plugins.module_utils._storage_smb import SmbStorage  # noqa: PLC0415

    return SmbStorage


def _load_s3():
    from ansible_collections.xapi.proxy.plugins.module_utils._storage_s3 import S3Storage  # noqa: PLC0415

    return S3Storage


# scheme -> loader returning the Storage subclass; later backends plug in here.
_BACKENDS: Dict[str, Callable[[], type]] = {"file": _load_file, "nfs": _load_nfs, "smb": _load_smb, "s3": _load_s3}


def open_remote(
    url: Union[str, RemoteUrl],
    credentials: Optional[Union[Credentials, Dict[str, str]]] = None,
    **options: Any,
) -> Storage:
    """Open the remote at ``url``. ``credentials`` (object or ``{username, password}``) override the URL's."""
    remote = parse(url) if isinstance(url, str) else url
    if isinstance(credentials, dict):
        credentials = Credentials(credentials.get("username", ""), credentials.get("password", ""))
    if credentials is not None:
        remote = remote.with_credentials(credentials)
    loader = _BACKENDS.get(remote.type)
    if loader is None:
        raise NotSupportedError(f"cannot open {remote.redacted()}: {remote.type} remotes are not supported.")
    return loader()(remote, **options)

"""The SMB backend's error mapping, streams and lock calls (see ``_storage_smb``).

Every smbprotocol failure becomes an ``OSError`` whose errno says what happened (so the file backend's
wording and classes apply: ENOSPC is RemoteFullError, EACCES PermissionDeniedError…), or a worded
AuthenticationError / NotFoundError for a refused login or a missing share.
"""

from __future__ import annotations

import contextlib
import errno
import io
import threading
from typing import Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    ReadStream,
    StorageError,
    WriteStream,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_lock import LockOps

try:
    import smbclient
    from smbprotocol.exceptions import SMBAuthenticationError, SMBConnectionClosed, SMBException
    from smbprotocol.header import NtStatus

    _NAMES = {v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_") and isinstance(v, int)}
except ImportError:  # _storage_smb reports it when an SMB remote is opened
    smbclient = None
    _NAMES = {}

WRITE_BUFFER = 1024 * 1024
READ_CHUNK = 1024 * 1024
SHARE_ALL = "rwd"  # let other handles read, write, rename and delete: what a POSIX client expects
DELETE = 0x00010000  # access mask bits (MS-SMB2 2.2.13.1)
READ_ATTRIBUTES = 0x00000080

# NTSTATUS codes (MS-ERREF) -> errno, so messages and classes match the file backend's.
_ERRNO = {
    0xC000000F: errno.ENOENT,  # NO_SUCH_FILE
    0xC0000034: errno.ENOENT,  # OBJECT_NAME_NOT_FOUND
    0xC000003A: errno.ENOENT,  # OBJECT_PATH_NOT_FOUND
    0xC0000225: errno.ENOENT,  # NOT_FOUND
    0xC0000056: errno.ENOENT,  # DELETE_PENDING: being deleted
    0xC0000035: errno.EEXIST,  # OBJECT_NAME_COLLISION
    0xC0000101: errno.ENOTEMPTY,  # DIRECTORY_NOT_EMPTY
    0xC0000022: errno.EACCES,  # ACCESS_DENIED
    0xC0000061: errno.EACCES,  # PRIVILEGE_NOT_HELD
    0xC0000121: errno.EACCES,  # CANNOT_DELETE
    0xC00000A2: errno.EROFS,  # MEDIA_WRITE_PROTECTED
    0xC000007F: errno.ENOSPC,  # DISK_FULL
    0xC0000044: errno.EDQUOT,  # QUOTA_EXCEEDED
    0xC00000BA: errno.EISDIR,  # FILE_IS_A_DIRECTORY
    0xC0000103: errno.ENOTDIR,  # NOT_A_DIRECTORY
    0xC0000043: errno.EBUSY,  # SHARING_VIOLATION
    0xC00000B5: errno.ETIMEDOUT,  # IO_TIMEOUT
    0xC00000C9: errno.ECONNRESET,  # NETWORK_NAME_DELETED
    0xC0000203: errno.ECONNRESET,  # USER_SESSION_DELETED
    0xC000020C: errno.ECONNRESET,  # CONNECTION_DISCONNECTED
    0xC000020D: errno.ECONNRESET,  # CONNECTION_RESET
    0xC000035C: errno.ECONNRESET,  # NETWORK_SESSION_EXPIRED
    0xC00000BE: errno.EHOSTUNREACH,  # BAD_NETWORK_PATH
    0xC000023C: errno.ENETUNREACH,  # NETWORK_UNREACHABLE
    0xC000023D: errno.EHOSTUNREACH,  # HOST_UNREACHABLE
    0xC0000466: errno.EHOSTDOWN,  # SERVER_UNAVAILABLE
}
_AUTH = {
    0xC000006D: "LOGON_FAILURE",
    0xC000006A: "WRONG_PASSWORD",
    0xC0000064: "NO_SUCH_USER",
    0xC000006E: "ACCOUNT_RESTRICTION",
    0xC0000071: "PASSWORD_EXPIRED",
    0xC0000072: "ACCOUNT_DISABLED",
    0xC0000193: "ACCOUNT_EXPIRED",
    0xC0000224: "PASSWORD_MUST_CHANGE",
    0xC0000234: "ACCOUNT_LOCKED_OUT",
}
_BAD_NETWORK_NAME = 0xC00000CC
_DELETE = 0x00010000  # access mask bits (MS-SMB2 2.2.13.1)
_READ_ATTRIBUTES = 0x00000080


def _status(err: BaseException) -> Optional[int]:
    # SMBOSError carries .ntstatus, SMBResponseException .status
    for attr in ("ntstatus", "status"):
        value = getattr(err, attr, None)
        if isinstance(value, int):
            return value
    return None


def status_name(status: int) -> str:
    """``STATUS_ACCESS_DENIED`` for the codes smbprotocol knows, the number otherwise."""
    return _NAMES.get(status) or f"NTSTATUS 0x{status:08X}"


def auth_error(storage, detail: str) -> AuthenticationError:
    creds = storage.url.credentials
    if creds is None:
        return AuthenticationError(
            f"cannot open {storage.display}: the remote URL has no user name and this proxy has no Kerberos "
            f"ticket for {storage.server} ({detail}); write user:password@ before the domain in the remote URL."
        )
    return AuthenticationError(
        f"cannot open {storage.display}: the SMB server {storage.server} refused the credentials of user "
        f"{creds.username} in domain {storage.url.domain} ({detail}); check the user name, password and domain "
        "in the remote URL."
    )


def as_os_error(err: BaseException, storage) -> OSError:
    """An ``OSError`` whose errno (and so subclass) says what happened, or a worded StorageError."""
    if isinstance(err, StorageError):
        return err
    status = _status(err)
    if status in _AUTH:
        return auth_error(storage, f"STATUS_{_AUTH[status]}")
    if status == _BAD_NETWORK_NAME:
        return NotFoundError(
            f"cannot open {storage.display}: share {storage.url.share} does not exist on SMB server "
            f"{storage.server}; check the share name in the remote URL."
        )
    if status is not None and status in _ERRNO:
        return OSError(_ERRNO[status], f"{status_name(status)} from the SMB server")
    if isinstance(err, SMBAuthenticationError):
        return auth_error(storage, str(err))
    cause = err.__cause__
    if isinstance(err, ValueError) and isinstance(cause, OSError):  # smbprotocol's "Failed to connect"
        code = cause.errno if cause.errno is not None else errno.ETIMEDOUT
        return OSError(code, f"cannot connect to {storage.server}:{storage.port}: {cause.strerror or cause}")
    if isinstance(err, (TimeoutError, ConnectionError)):
        return OSError(errno.ETIMEDOUT if isinstance(err, TimeoutError) else errno.ECONNRESET, str(err))
    if isinstance(err, SMBConnectionClosed):
        return OSError(errno.ECONNRESET, "the SMB connection was closed")
    if isinstance(err, SMBException) and str(err).startswith("Connection timeout"):  # no answer in time
        return OSError(errno.ETIMEDOUT, f"{storage.server}:{storage.port} did not answer in time")
    if isinstance(err, SMBException):
        detail = status_name(status) if status is not None else type(err).__name__
        return OSError(errno.EIO, f"the SMB server answered {detail}")
    if isinstance(err, OSError):
        return err  # socket errors keep their errno
    raise err  # a programming error, not a remote failure


class SmbLockOps(LockOps):
    """XO's lock directory through SMB calls (same errors as the local ones)."""

    def __init__(self, storage):
        self._s = storage

    def mkdir(self, path):
        self._s._call(smbclient.mkdir, path)

    def mtime(self, path):
        return self._s._call(smbclient.stat, path).st_mtime

    def touch(self, path, when):
        self._s._call(smbclient.utime, path, times=(when, when))

    def rename(self, src, dst):
        self._s._call(smbclient.rename, src, dst)

    def rmdir(self, path):
        self._s._call(smbclient.rmdir, path)

    def rmtree(self, path):
        with contextlib.suppress(OSError):  # best effort, as shutil.rmtree(ignore_errors=True)
            self._s._remove_tree(path)


class SmbWriteStream(WriteStream):
    def __init__(self, storage, rel: str, tmp: str, raw, overwrite: bool):
        self.path = rel
        self.temp_path = tmp  # remote-relative name of the temporary (diagnostics and tests)
        self.bytes_written = 0
        self._storage = storage
        self._raw = raw
        self._buf = bytearray()
        self._overwrite = overwrite
        self._state = "open"

    def _check_open(self):
        if self._state != "open":
            raise StorageError(f"cannot write {self.path}: the stream is already {self._state}.", self.path)

    def _send(self, data) -> None:
        view = memoryview(data)
        while view:  # one SMB WRITE may take less than asked (negotiated size, credits)
            view = view[_raw_call(self._storage, self._raw.write, view) :]

    def write(self, data) -> int:
        self._check_open()
        data = memoryview(data).cast("B")
        try:
            if len(self._buf) + len(data) < WRITE_BUFFER:
                self._buf += data
            else:
                if self._buf:
                    self._send(self._buf)
                    self._buf = bytearray()
                self._send(data)
        except OSError as err:
            self.abort()
            raise self._storage._fail(err, "write", self.path) from None
        self.bytes_written += len(data)
        return len(data)

    def commit(self) -> None:
        self._check_open()
        s = self._storage
        try:
            if self._buf:
                self._send(self._buf)
                self._buf = bytearray()
            _raw_call(s, self._raw.flush)  # SMB2 FLUSH: on stable storage before it is published
            _raw_call(s, self._raw.close)
            if self._overwrite:
                s._replace(s._unc(self.temp_path), s._unc(self.path))
            else:
                s._call(smbclient.rename, s._unc(self.temp_path), s._unc(self.path))  # fails if it exists
        except FileExistsError:
            self.abort()
            raise AlreadyExistsError(
                f"cannot write {self.path} on {s.display}: it already exists.", self.path
            ) from None
        except OSError as err:
            self.abort()
            raise s._fail(err, "write", self.path) from None
        self._state = "committed"

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf = bytearray()
        s = self._storage
        with contextlib.suppress(OSError):
            _raw_call(s, self._raw.close)
        with contextlib.suppress(OSError):  # gone already, or the server is: nothing more to do
            s._call(smbclient.remove, s._unc(self.temp_path))


def _raw_call(storage, func, *args):
    try:
        return func(*args)
    except Exception as err:  # noqa: BLE001
        raise as_os_error(err, storage) from None


class SmbReadStream(ReadStream):
    def __init__(self, storage, rel: str, raw):
        super().__init__()
        self.path = rel
        self._storage = storage
        self._raw = raw
        self._io_lock = threading.Lock()  # the raw handle has one offset: pread and read take turns
        self.size = raw.fd.end_of_file

    def _read_at(self, offset: int, buffer) -> int:
        with self._io_lock:
            try:
                self._raw.seek(offset)
                return _raw_call(self._storage, self._raw.readinto, buffer)
            except OSError as err:
                raise self._storage._fail(err, "read", self.path) from None

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = self._read_at(self._pos, view) if len(view) and self._pos < self.size else 0
        self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytearray()
        while self._pos < self.size:
            chunk = self.pread(self._pos, min(READ_CHUNK, self.size - self._pos))
            if not chunk:
                break
            out += chunk
            self._pos += len(chunk)
        return bytes(out)

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        out = bytearray(length)
        view = memoryview(out)
        done = 0
        while done < length:
            n = self._read_at(offset + done, view[done:])
            if not n:
                break
            done += n
        view.release()
        del out[done:]
        return bytes(out)

    def close(self):
        if not self.closed:
            try:
                with contextlib.suppress(OSError):
                    _raw_call(self._storage, self._raw.close)
            finally:
                super().close()


class SmbUpdateRaw(io.RawIOBase):
    """The raw side of :meth:`SmbStorage.open_update`, with errors mapped like every other call."""

    def __init__(self, storage, rel: str, raw):
        super().__init__()
        self._storage = storage
        self._rel = rel
        self._raw = raw

    def _do(self, action, func, *args):
        try:
            return _raw_call(self._storage, func, *args)
        except OSError as err:
            raise self._storage._fail(err, action, self._rel) from None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        return self._do("read", self._raw.readinto, buffer)

    def write(self, data):
        return self._do("update", self._raw.write, data)

    def seek(self, offset, whence=io.SEEK_SET):
        return self._raw.seek(offset, whence)

    def tell(self):
        return self._raw.tell()

    def truncate(self, size=None):
        return self._do("update", self._raw.truncate, self.tell() if size is None else size)

    def flush(self):
        if not self.closed and not self._raw.closed:
            self._do("update", self._raw.flush)

    def close(self):
        if not self.closed:
            try:
                self.flush()
                self._do("update", self._raw.close)
            finally:
                super().close()

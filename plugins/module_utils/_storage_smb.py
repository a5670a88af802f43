"""``smb://`` remotes in user space: SMB 2/3 through the ``smbprotocol`` package, no kernel mount, no root.

URL (XO's grammar, see ``_remote_url``): ``smb://user:password@DOMAIN\\\\host\\share\\0sub\\dir``. The server
may carry a port (``host:4450``); XO's URLs have none and SMB's is 445. The user logs in as
``DOMAIN\\user`` with NTLM (Kerberos when no credentials are given, as smbprotocol does).

Same semantics as a ``file://`` remote on a CIFS mount, which is what XO uses:

- writes go to XO's hidden temporary ``.<ms>.<name>`` and are renamed over the final name on commit
  (SMB's rename with ``ReplaceIfExists``; without it for ``overwrite=False``, which fails atomically when
  the name exists);
- the lock is XO's ``<path>.lock`` directory kept fresh through its mtime (``_storage_lock``), so an XO
  proxy on a CIFS mount of the same share and this backend exclude each other;
- ``open_update`` gives a buffered random-access file (VHD-file merges);
- files are opened sharing read, write and delete. SMB servers still refuse to *replace* a file that
  another client has open, so a commit or rename over a file being read waits for the reader to close it
  (``busy_timeout``), rather than publish through a moment where the name is missing;
- a connection the server drops is opened again, and the request that was cut is sent once more.

Directory modes (XO's 0o700) are left to the server: SMB has no Unix modes. ``local_path`` is None.
Each :class:`SmbStorage` has its own connection; :meth:`close` ends it.
"""

from __future__ import annotations

import errno
import io
import stat as stat_mod
import time
from typing import List, Optional, Tuple

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import RemoteUrl
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
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
from ansible_collections.xapi.proxy.plugins.module_utils._storage_smb_io import (
    DELETE,
    READ_ATTRIBUTES,
    SHARE_ALL,
    WRITE_BUFFER,
    SmbLockOps,
    SmbReadStream,
    SmbUpdateRaw,
    SmbWriteStream,
    as_os_error,
)

try:
    import smbclient
    from smbprotocol.tree import TreeConnect
except ImportError:  # reported when an SMB remote is opened, not when the collection is imported
    smbclient = None


def split_server(host: str, port: Optional[int] = None) -> Tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` too) -> (host, port); an explicit ``port`` wins, 445 otherwise."""
    name, found = host, None
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            found = int(rest[1:])
    elif host.count(":") == 1:
        head, _, tail = host.partition(":")
        if tail.isdigit():
            name, found = head, int(tail)
    return name, port or found or 445


class SmbStorage(Storage):
    """A remote rooted at ``url.path`` inside share ``url.share`` of SMB server ``url.host``.

    Options: ``port`` (overrides the URL's), ``timeout`` (seconds to connect), ``encrypt`` (True forces
    SMB 3 encryption; None lets the server decide), ``create_root`` (create the sub-folder if missing),
    ``busy_timeout`` (seconds a commit or rename waits for readers of the file it replaces).
    """

    def __init__(
        self,
        url: RemoteUrl,
        *,
        port: Optional[int] = None,
        timeout: float = 30.0,
        encrypt: Optional[bool] = None,
        create_root: bool = False,
        busy_timeout: float = 30.0,
    ):
        super().__init__(url)
        self.busy_timeout = busy_timeout
        self.reconnects = 0  # connections the server dropped and we opened again
        if url.type != "smb":
            raise NotSupportedError(f"SmbStorage cannot open {url.redacted()}: it only handles smb:// remotes.")
        if smbclient is None:
            raise NotSupportedError(
                f"cannot open {self.display}: SMB remotes need the Python package smbprotocol on the proxy "
                "(pip install smbprotocol)."
            )
        self.server, self.port = split_server(url.host or "", port)
        creds = url.credentials
        self.username = f"{url.domain}\\{creds.username}" if creds and url.domain else (creds and creds.username)
        self._share = f"\\\\{self.server}\\{url.share}"
        self._root_parts = [p for p in url.path.split("/") if p]
        self._cache: dict = {}  # our own connection pool: never shared with other credentials
        self._kw = {
            "username": self.username,
            "password": creds.password if creds else None,
            "port": self.port,
            "connection_timeout": timeout,
            "connection_cache": self._cache,
            "encrypt": encrypt,
        }
        self._lock_ops = SmbLockOps(self)
        self._connect()
        try:
            self._check_root(create_root)
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        return f"SmbStorage({self.display!r})"

    # -- connection and errors --------------------------------------------------------------
    def _connect(self):
        try:
            session = smbclient.register_session(
                self.server,
                **{k: v for k, v in self._kw.items() if k in ("username", "password", "port", "encrypt")},
                connection_timeout=self._kw["connection_timeout"],
                connection_cache=self._cache,
            )
            tree = TreeConnect(session, self._share)
            tree.connect()  # fails with BAD_NETWORK_NAME for a missing share, unlike a path open
            tree.disconnect()
        except Exception as err:  # noqa: BLE001 - every failure is mapped to a worded StorageError
            self.close()
            raise self._fail(err, "connect to", None) from None

    def _check_root(self, create_root):
        if not self._root_parts:
            return
        try:
            st = self._call(smbclient.stat, self._unc(""))
        except FileNotFoundError:
            if not create_root:
                raise NotFoundError(
                    f"remote folder {'/'.join(self._root_parts)} does not exist in share {self.url.share} on "
                    f"{self.display}: create it first.",
                    None,
                ) from None
            self._makedirs("", "create the remote folder", "/")
            return
        except OSError as err:
            raise self._fail(err, "open", None) from None
        if not stat_mod.S_ISDIR(st.st_mode):
            raise StorageError(f"remote {self.display} is not a directory: point the URL at a directory.")

    def _unc(self, rel: str) -> str:
        return "\\".join([self._share, *self._root_parts, *[p for p in rel.split("/") if p]])

    def _rel(self, unc: str) -> str:
        skip = len(self._share) + 1 + sum(len(p) + 1 for p in self._root_parts)
        return unc[skip:].replace("\\", "/")

    def _call(self, func, *args, **kwargs):
        """Run an smbclient call; SMB failures become OSError/StorageError with errno where one fits.

        A connection the server dropped (restart, idle timeout, crash of its worker) is opened again for
        one more try: every smbclient call opens its own handle by path, so it can be repeated.
        """
        for attempt in (0, 1):
            try:
                return func(*args, **kwargs, **self._kw)
            except Exception as err:  # noqa: BLE001
                mapped = as_os_error(err, self)
                if attempt or getattr(mapped, "errno", None) != errno.ECONNRESET:
                    raise mapped from None
                self.reconnects += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, err: BaseException, action: str, rel: Optional[str]) -> StorageError:
        if isinstance(err, StorageError):
            return err
        err = as_os_error(err, self)
        if isinstance(err, StorageError):
            return err
        return error_from_os(err, action, rel, self.display)

    # -- helpers ----------------------------------------------------------------------------
    def _ensure_dir(self, parts: List[str], action: str, origin: str) -> None:
        """Create the directory ``share\\<parts>`` and its missing parents (one stat when it exists)."""
        if not parts:
            return  # the share itself
        unc = "\\".join([self._share, *parts])
        try:
            st = self._call(smbclient.stat, unc)
        except FileNotFoundError:
            self._ensure_dir(parts[:-1], action, origin)
            try:
                self._call(smbclient.mkdir, unc)
            except FileExistsError:
                pass  # created meanwhile by another writer
            except OSError as err:
                raise self._fail(err, action, origin) from None
            return
        except OSError as err:
            raise self._fail(err, action, origin) from None
        if not stat_mod.S_ISDIR(st.st_mode):
            shown = "/".join(parts[len(self._root_parts) :]) or "/"
            raise StorageError(f"cannot {action} {origin} on {self.display}: {shown} is a file.", origin)

    def _makedirs(self, rel: str, action: str, origin: Optional[str] = None) -> None:
        self._ensure_dir(
            [*self._root_parts, *[p for p in rel.split("/") if p]], action, rel if origin is None else origin
        )

    def _stat(self, rel: str, action: str):
        try:
            return self._call(smbclient.stat, self._unc(rel))
        except OSError as err:
            raise self._fail(err, action, rel) from None

    def _replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst``, waiting while ``dst`` is open elsewhere.

        SMB servers (Windows, and Samba like it) refuse to replace a file another handle has open, with
        ACCESS_DENIED, however that handle shares it. Readers are short (metadata) or rare (restores), so
        wait for the gap between two opens rather than publish through a moment where ``dst`` is missing.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.002
        while True:
            reconnects = self.reconnects
            try:
                self._call(smbclient.replace, src, dst)
                return
            except FileNotFoundError:
                # the connection dropped after the server renamed, and the retry found no source
                if self.reconnects == reconnects or not self._exists_unc(dst) or self._exists_unc(src):
                    raise
                return
            except PermissionError:
                if not self._may_delete(dst):
                    raise
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"cannot replace {self._rel(dst)} on {self.display}: another client has kept it open for "
                        f"{self.busy_timeout:g} s, and SMB servers do not replace an open file; retry when it is "
                        "done with it.",
                        self._rel(dst),
                        errno.EBUSY,
                    ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _exists_unc(self, unc: str) -> bool:
        try:
            self._call(smbclient.stat, unc)
        except FileNotFoundError:
            return False
        return True

    def _may_delete(self, unc: str) -> bool:
        """Whether we have the right to delete ``unc`` (so a refused replace means: it is open elsewhere).

        The probe shares everything, so it never disturbs the readers it waits for.
        """
        try:
            handle = self._call(smbclient.open_file, unc, mode="rb", buffering=0, share_access=SHARE_ALL,
                                desired_access=DELETE | READ_ATTRIBUTES)  # fmt: skip
        except FileNotFoundError:
            return True  # gone meanwhile: the next attempt will tell
        except OSError:
            return False
        handle.close()
        return True

    def _remove_tree(self, unc: str) -> None:
        # depth first: SMB removes only empty directories
        for entry in self._call(_scan, unc):
            child = f"{unc}\\{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                self._remove_tree(child)
            else:
                self._call(smbclient.remove, child)
        self._call(smbclient.rmdir, unc)

    # -- contract ---------------------------------------------------------------------------
    def open_write(self, path: str, *, overwrite: bool = True) -> WriteStream:
        rel = normalize_path(path)
        if not overwrite and self.exists(rel):  # fail before streaming; commit checks again atomically
            raise AlreadyExistsError(f"cannot write {rel} on {self.display}: it already exists.", rel)
        directory, _, base = rel.rpartition("/")
        self._makedirs(directory, "create the directory of", rel)
        now = int(time.time() * 1000)
        while True:
            tmp = f"{directory}/{temp_name(base, now)}" if directory else temp_name(base, now)
            try:
                raw = self._call(smbclient.open_file, self._unc(tmp), mode="xb", buffering=0, share_access=SHARE_ALL)
                break
            except FileExistsError:
                now += 1  # two writers in the same millisecond
            except OSError as err:
                raise self._fail(err, "write", rel) from None
        return SmbWriteStream(self, rel, tmp, raw, overwrite)

    def open_read(self, path: str) -> ReadStream:
        rel = normalize_path(path)
        try:
            raw = self._call(smbclient.open_file, self._unc(rel), mode="rb", buffering=0, share_access=SHARE_ALL)
        except OSError as err:
            raise self._fail(err, "read", rel) from None
        return SmbReadStream(self, rel, raw)

    def rename(self, src: str, dst: str) -> None:
        rsrc, rdst = normalize_path(src), normalize_path(dst)
        self._stat(rsrc, f"rename {rsrc} to")  # a missing source is reported as such, not as its target
        self._makedirs(rdst.rpartition("/")[0], f"rename {rsrc} to")
        try:
            self._replace(self._unc(rsrc), self._unc(rdst))
        except OSError as err:
            raise self._fail(err, f"rename {rsrc} to", rdst) from None

    def list(self, path: str = "", *, missing_ok: bool = False) -> List[str]:
        rel = normalize_path(path, allow_root=True)
        try:
            return sorted(self._call(smbclient.listdir, self._unc(rel)))
        except FileNotFoundError:
            if missing_ok:
                return []
            raise NotFoundError(f"cannot list {rel or '/'} on {self.display}: it does not exist.", rel) from None
        except NotADirectoryError:
            raise StorageError(f"cannot list {rel} on {self.display}: it is a file, not a directory.", rel) from None
        except OSError as err:
            raise self._fail(err, "list", rel) from None

    def stat(self, path: str) -> StatResult:
        rel = normalize_path(path, allow_root=True)
        st = self._stat(rel, "stat")
        return StatResult(size=st.st_size, is_dir=stat_mod.S_ISDIR(st.st_mode), mtime=st.st_mtime)

    def delete(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        try:
            self._call(smbclient.remove, self._unc(rel))
        except FileNotFoundError:
            if not missing_ok:
                raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel) from None
        except IsADirectoryError:
            raise StorageError(
                f"cannot delete {rel} on {self.display}: it is a directory (use delete_tree).", rel
            ) from None
        except OSError as err:
            raise self._fail(err, "delete", rel) from None

    def delete_tree(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        try:
            st = self._call(smbclient.stat, self._unc(rel))
            if stat_mod.S_ISDIR(st.st_mode):
                self._remove_tree(self._unc(rel))
            else:
                self._call(smbclient.remove, self._unc(rel))
        except FileNotFoundError:
            if not missing_ok:
                raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel) from None
        except OSError as err:
            raise self._fail(err, "delete", rel) from None

    def mkdir(self, path: str, *, exist_ok: bool = True) -> None:
        rel = normalize_path(path)
        if not exist_ok and self.exists(rel):
            raise AlreadyExistsError(f"cannot create {rel} on {self.display}: it already exists.", rel)
        self._makedirs(rel, "create directory")

    def open_update(self, path: str):
        rel = normalize_path(path)
        try:
            raw = self._call(smbclient.open_file, self._unc(rel), mode="r+b", buffering=0, share_access=SHARE_ALL)
        except OSError as err:
            raise self._fail(err, "update", rel) from None
        return io.BufferedRandom(SmbUpdateRaw(self, rel, raw), WRITE_BUFFER)

    def lock(self, path: str, *, stale: float = LOCK_STALE_SECONDS, what: str = "a backup of this VM") -> StorageLock:
        rel = normalize_path(path) + ".lock"
        self._makedirs(rel.rpartition("/")[0], "create the directory of", rel)
        return acquire_dir_lock(self._unc(rel), rel, self.display, stale=stale, what=what, ops=self._lock_ops)

    def close(self) -> None:
        cache, self._cache = self._cache, {}
        self._kw["connection_cache"] = self._cache
        smbclient.reset_connection_cache(fail_on_error=False, connection_cache=cache)


def _scan(unc, **kwargs):
    return list(smbclient.scandir(unc, **kwargs))  # the listing happens while iterating: inside _call

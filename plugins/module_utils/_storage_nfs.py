"""``nfs://host[:port]:/export`` remotes: the kernel's NFS client mounts the export, then it is a file remote.

As XO does (``@xen-orchestra/fs`` ``nfs.js`` + ``_mount.js``) the command is
``mount -o <options> -t nfs host:/export <mounts_dir>/<id>`` where the options are ``port=<port>`` when
the URL has one, then the remote's own ``mount_options`` (XO's remote ``options`` field, e.g.
``vers=3,nolock``); with neither, ``-o`` is left out and mount.nfs picks its defaults (XO dropped its
``vers=3`` default in 2021). ``use_sudo`` prefixes ``sudo``, as XO's ``useSudo``.

The mount point is ``<mounts_dir>/<hash of host, port, export and options>`` (``/run/xapi-proxy/mounts``
by default), so every process opening the same remote shares one mount: an existing mount there is
reused. While a storage is open it keeps a descriptor on the mount point, so another instance's unmount
fails as busy and is skipped (XO's "keeper" file). :meth:`NfsStorage.close` unmounts unless the remote
was opened with ``persistent=True`` (a remote registered as persistent on the proxy).

Everything else (atomic writes, XO's lock directory, ``open_update``, ``local_path``) is
:class:`FileStorage` on the mount point.

Tested on a machine whose kernel has no NFS client: the mount command line, the reuse of an existing
mount, the keeper, unmounting and ``persistent`` are exercised with a stand-in ``mount`` that bind-mounts
a local directory (real mounts, real umount); failures of the real ``mount`` binary (no mount.nfs
helper, no kernel NFS, not root) are exercised for real; the wording of mount.nfs' own failures (server
refusing, unreachable, missing export) is exercised with its messages replayed by the stand-in. A real
NFS server was not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import subprocess
from dataclasses import replace
from typing import List, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import RemoteUrl
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    DIR_MODE,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    StorageError,
    UnreachableError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_file import FileStorage

DEFAULT_MOUNTS_DIR = "/run/xapi-proxy/mounts"
HELPER_DIRS = ("/sbin", "/usr/sbin", "/usr/local/sbin")  # where mount(8) looks for mount.nfs
MOUNT_TIMEOUT = 120.0  # mount.nfs retries for 2 minutes in the foreground before giving up

# mount / mount.nfs messages (LANG=C) -> what the operator should do
_UNREACHABLE = ("connection refused", "timed out", "no route to host", "network is unreachable",
                "host is down", "unable to connect", "connection reset", "name or service not known",
                "failed to resolve")  # fmt: skip
_DENIED = ("access denied by server", "permission denied", "operation not permitted")
_MISSING = ("no such file or directory", "not exported", "does not exist")
_NOT_ROOT = ("must be superuser", "only root can")
_NO_HELPER = ("unknown filesystem type", "helper program")  # what mount(8) says without mount.nfs
_NO_KERNEL = ("unknown filesystem type", "no such device")  # ... and without the kernel's NFS client


def mount_point_for(url: RemoteUrl, mounts_dir: str, options: str) -> str:
    ident = f"{url.host}\0{url.port or ''}\0{url.path}\0{options}"
    return os.path.join(mounts_dir, hashlib.sha256(ident.encode()).hexdigest()[:16])


def mount_options_for(url: RemoteUrl, extra: Optional[str]) -> str:
    """XO's option string: ``port=<port>`` first when the URL has a port, then the remote's options."""
    parts = [f"port={url.port}"] if url.port else []
    if extra:
        parts.append(extra.strip(","))
    return ",".join(parts)


def mount_command(url: RemoteUrl, target: str, options: str, use_sudo: bool = False) -> List[str]:
    # -o before -t: the order FreeBSD needs too, as XO writes it
    return [*(["sudo"] if use_sudo else []), "mount", *(["-o", options] if options else []), "-t", "nfs",
            f"{url.host}:{url.path}", target]  # fmt: skip


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mount point, from /proc/self/mountinfo (field 5, octal-escaped)."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == real:
                    return True
    except FileNotFoundError:
        return os.path.ismount(real)
    return False


def _unescape(text: str) -> str:
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in text else text


def nfs_helper_installed() -> bool:
    return any(os.access(os.path.join(d, "mount.nfs"), os.X_OK) for d in HELPER_DIRS)


class NfsStorage(FileStorage):
    """An NFS export mounted on the proxy, used as a file remote.

    Options: ``mounts_dir``, ``mount_options`` (comma-separated, as for ``mount -o``), ``persistent``
    (keep mounted after :meth:`close`), ``use_sudo``, ``timeout`` (seconds for mount), ``create_root``.
    """

    def __init__(
        self,
        url: RemoteUrl,
        *,
        mounts_dir: str = DEFAULT_MOUNTS_DIR,
        mount_options: Optional[str] = None,
        persistent: bool = False,
        use_sudo: bool = False,
        timeout: float = MOUNT_TIMEOUT,
        create_root: bool = False,
    ):
        if url.type != "nfs":
            raise NotSupportedError(f"NfsStorage cannot open {url.redacted()}: it only handles nfs:// remotes.")
        self.nfs_url = url
        self.persistent = persistent
        self.use_sudo = use_sudo
        self.options = mount_options_for(url, mount_options)
        self.mount_point = mount_point_for(url, mounts_dir, self.options)
        self._keeper: Optional[int] = None
        self.mounted_here = False  # whether this instance ran mount (False: reused an existing mount)
        self._mount(mounts_dir, timeout)
        try:
            super().__init__(replace(url, type="file", path=self.mount_point, host=None, port=None),
                             create_root=create_root)  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.url = url  # messages name the NFS remote, not the mount point

    @property
    def export(self) -> str:
        return f"{self.nfs_url.host}:{self.nfs_url.path}"

    def __repr__(self):
        return f"NfsStorage({self.url.redacted()!r} on {self.mount_point})"

    # -- mounting ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _guard(self):
        """Serialise mount/keeper and unmount between the processes using this mount point."""
        try:
            fd = os.open(f"{self.mount_point}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as err:
            raise self._error(f"cannot create the mount point ({err.strerror or err})", err.errno) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _mount(self, mounts_dir: str, timeout: float) -> None:
        try:
            os.makedirs(mounts_dir, DIR_MODE, exist_ok=True)
            os.makedirs(self.mount_point, DIR_MODE, exist_ok=True)
        except OSError as err:
            raise self._error(f"cannot create the mount point ({err.strerror or err})", err.errno) from None
        with self._guard():
            if not is_mounted(self.mount_point):
                self._run_mount(timeout)
                self.mounted_here = True
                if not is_mounted(self.mount_point):  # never write to the proxy's own disk by mistake
                    raise self._error("mount succeeded but nothing is mounted there", None)
            self._keeper = os.open(self.mount_point, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def _run_mount(self, timeout: float) -> None:
        command = mount_command(self.nfs_url, self.mount_point, self.options, self.use_sudo)
        env = dict(os.environ, LANG="C", LC_ALL="C")  # messages we can read
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except FileNotFoundError:
            raise NotSupportedError(
                f"cannot mount NFS export {self.export}: {command[0]} was not found on this proxy; install it "
                "(util-linux's mount, or sudo)."
            ) from None
        except subprocess.TimeoutExpired:
            raise UnreachableError(
                f"cannot mount NFS export {self.export} on {self.mount_point}: mount did not finish within "
                f"{timeout:g} s; check that the NFS server answers (firewall, rpcbind, the port).",
                None,
                errno.ETIMEDOUT,
            ) from None
        if done.returncode != 0:
            raise self._mount_error(" ".join(line.strip() for line in done.stderr.strip().splitlines()))

    def _mount_error(self, stderr: str) -> StorageError:
        text = stderr.lower()
        said = f"mount said: {stderr or '(nothing)'}"
        where = f"cannot mount NFS export {self.export} on {self.mount_point}"
        if any(s in text for s in _NO_HELPER) and not nfs_helper_installed():
            return NotSupportedError(
                f"{where}: the NFS client is not installed on this proxy; install nfs-common (Debian, Ubuntu) "
                f"or nfs-utils (RHEL, Fedora). {said}"
            )
        if any(s in text for s in _NO_KERNEL):
            return NotSupportedError(
                f"{where}: this proxy's kernel has no NFS client (load it with modprobe nfs, or use a kernel "
                f"with NFS support). {said}"
            )
        if any(s in text for s in _NOT_ROOT):
            return PermissionDeniedError(
                f"{where}: mounting needs root; run the proxy's tasks as root (become) or set use_sudo. {said}"
            )
        if any(s in text for s in _DENIED):
            return PermissionDeniedError(
                f"{where}: the server refused; export it to this proxy's address with read/write access. {said}",
                None,
                errno.EACCES,
            )
        if any(s in text for s in _UNREACHABLE):
            return UnreachableError(
                f"{where}: the server is unreachable; check its name, the network and the port. {said}",
                None,
                errno.EHOSTUNREACH,
            )
        if any(s in text for s in _MISSING):
            return NotFoundError(
                f"{where}: the server has no such export; check the path after the colon. {said}", None, errno.ENOENT
            )
        return StorageError(f"{where}: {said}")

    def _error(self, reason: str, code: Optional[int]) -> StorageError:
        return StorageError(f"cannot mount NFS export {self.export} on {self.mount_point}: {reason}.", None, code)

    def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is None:
            return
        os.close(keeper)
        if self.persistent:
            return
        prefix = ["sudo"] if self.use_sudo else []
        # busy (another storage or process still uses the mount) or already unmounted: nothing to do
        with contextlib.suppress(OSError, subprocess.SubprocessError), self._guard():
            subprocess.run([*prefix, "umount", self.mount_point], capture_output=True, timeout=60, check=False,
                           env=dict(os.environ, LANG="C", LC_ALL="C"))  # fmt: skip

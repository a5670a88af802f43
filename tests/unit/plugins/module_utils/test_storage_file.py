"""``file://`` specifics: read-only mounts, directory modes, XO lock interplay, error mapping.

Full disks and permission denials are checked for every backend in test_storage_contract.py.
"""

import errno
import hashlib
import mmap
import os
import shutil
import stat
import subprocess
import time

import pytest
from fs_helpers import tmpfs

from ansible_collections.xapi.proxy.plugins.module_utils import _storage_file
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AlreadyExistsError,
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    RemoteFullError,
    StorageError,
    UnreachableError,
    error_from_os,
    open_remote,
)

MiB = 1024 * 1024


def test_read_only_remote_is_permission_denied(tmp_path):
    with tmpfs(tmp_path / "ro") as mnt:
        with open_remote(f"file://{mnt}") as store:
            store.write_bytes("kept.json", b"1")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with open_remote(f"file://{mnt}") as store:
            with pytest.raises(PermissionDeniedError, match="the remote is mounted read-only; remount it read-write"):
                store.write_bytes("new.json", b"1")
            with pytest.raises(PermissionDeniedError, match="read-only"):
                store.delete("kept.json")
            assert store.read_bytes("kept.json") == b"1"


def test_directories_are_created_with_xo_dir_mode(tmp_path):
    old = os.umask(0o022)
    try:
        with open_remote(f"file://{tmp_path}") as store:
            store.write_bytes("xo-vm-backups/vm/vdis/job/vdi/20240618T020003Z.vhd", b"v")
            store.mkdir("xo-vm-backups/other/deep")
            store.lock("xo-vm-backups/third/x").release()
        for rel in ("xo-vm-backups", "xo-vm-backups/vm", "xo-vm-backups/vm/vdis/job/vdi", "xo-vm-backups/other/deep",
                    "xo-vm-backups/third"):  # fmt: skip
            assert stat.S_IMODE(os.stat(tmp_path / rel).st_mode) == 0o700, rel
    finally:
        os.umask(old)


def test_xo_held_lock_blocks_us_and_an_abandoned_one_is_taken_over(tmp_path):
    lock_dir = tmp_path / "xo-vm-backups" / "vm.lock"
    lock_dir.mkdir(parents=True)  # what proper-lockfile leaves: an empty directory, mtime refreshed
    with open_remote(f"file://{tmp_path}") as store:
        with pytest.raises(LockedError, match="already running"):
            store.lock("xo-vm-backups/vm")
        old = time.time() - 30  # XO died 30 s ago; proper-lockfile's stale limit is 10 s
        os.utime(lock_dir, (old, old))
        with store.lock("xo-vm-backups/vm") as held:
            assert os.stat(lock_dir).st_mtime > old + 20
            assert not held.lost
        assert not lock_dir.exists()


def test_local_path_and_in_place_update(tmp_path):
    with open_remote(f"file://{tmp_path}") as store:
        store.write_bytes("v/parent.vhd", b"0123456789")
        assert store.local_path("v/parent.vhd") == f"{tmp_path}/v/parent.vhd"
        assert store.local_path("") == str(tmp_path)
        with store.open_update("v/parent.vhd") as f:
            f.seek(4)
            f.write(b"AB")
            f.seek(0, os.SEEK_END)
            f.write(b"!")
        assert store.read_bytes("v/parent.vhd") == b"0123AB6789!"
        with pytest.raises(NotFoundError):
            store.open_update("v/missing.vhd")


ERRNO_CASES = [
    (errno.ENOENT, NotFoundError, "it does not exist."),
    (errno.EEXIST, AlreadyExistsError, "the target already exists."),
    (errno.ENOTEMPTY, AlreadyExistsError, "the target already exists."),
    (errno.EACCES, PermissionDeniedError, "permission denied"),
    (errno.EPERM, PermissionDeniedError, "permission denied"),
    (errno.EROFS, PermissionDeniedError, "mounted read-only"),
    (errno.ENOSPC, RemoteFullError, "the remote is full"),
    (errno.EDQUOT, RemoteFullError, "the remote is full"),
    (errno.ESTALE, UnreachableError, "the remote is unreachable"),
    (errno.ETIMEDOUT, UnreachableError, "check the server, the network and the mount"),
    (errno.EHOSTDOWN, UnreachableError, "unreachable"),
    (errno.ENOTCONN, UnreachableError, "unreachable"),
    (errno.EIO, StorageError, "Input/output error."),
]


@pytest.mark.parametrize(("code", "kind", "text"), ERRNO_CASES, ids=[errno.errorcode[c] for c, _, _ in ERRNO_CASES])
def test_os_errors_map_to_the_hierarchy(code, kind, text):
    err = error_from_os(OSError(code, os.strerror(code)), "write", "xo-vm-backups/vm/a.xva", "file:///srv")
    assert type(err) is kind
    assert isinstance(err, OSError) and err.errno == code and err.path == "xo-vm-backups/vm/a.xva"
    assert str(err).startswith("cannot write xo-vm-backups/vm/a.xva on file:///srv: ")
    assert text in str(err)


def _resident(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[0])


@pytest.mark.skipif(not shutil.which("fincore"), reason="fincore (util-linux) is not installed")
def test_long_writes_leave_the_page_cache_behind_them(tmp_path):
    """Write-behind: a long stream keeps only its last stretches in the page cache; the bytes are exact."""
    piece = os.urandom(3 * MiB + 1234)  # odd sizes: stretches do not line up with writes
    digest = hashlib.sha256()
    with open_remote(f"file://{tmp_path}") as store:
        out = store.open_write("big.xva")
        for _ in range(40):  # about 120 MiB
            out.write(memoryview(piece))
            digest.update(piece)
        resident = _resident(tmp_path / out.temp_path)
        assert resident <= 3 * _storage_file.WRITE_BEHIND + 4 * MiB, resident
        out.commit()
    with open(tmp_path / "big.xva", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()


def test_writes_without_sync_file_range_still_work(tmp_path, monkeypatch):
    monkeypatch.setattr(_storage_file, "_sync_file_range", False)  # not Linux, or no such call in libc
    with open_remote(f"file://{tmp_path}") as store:
        out = store.open_write("big.xva")
        for i in range(20):
            out.write(bytes([i]) * (2 * MiB))
        out.commit()
    assert (tmp_path / "big.xva").read_bytes() == b"".join(bytes([i]) * (2 * MiB) for i in range(20))


@pytest.mark.skipif(not shutil.which("fincore"), reason="fincore (util-linux) is not installed")
def test_large_aligned_pieces_go_around_the_page_cache(tmp_path):
    """A backup's pipeline buffers (page-aligned, 4 MiB) are written with O_DIRECT; the rest is cached."""
    if not _storage_file._direct_io_ok(str(tmp_path)):
        pytest.skip("the temporary directory is not on ext4 or xfs")
    buf = mmap.mmap(-1, 4 * MiB)
    buf.write(os.urandom(4 * MiB))
    view = memoryview(buf)
    expected = hashlib.sha256()
    with open_remote(f"file://{tmp_path}") as store:
        out = store.open_write("d.xva")
        for data in [b"head" * 1024, *[view] * 8, view[:5000], view[: 2 * MiB], view]:
            out.write(data)  # bytes, aligned pieces, a small one, then pieces at unaligned offsets
            expected.update(data)
        assert _resident(tmp_path / out.temp_path) < 12 * MiB, "the 32 MiB of aligned pieces were not cached"
        out.commit()
    with open(tmp_path / "d.xva", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == expected.hexdigest()
    assert (tmp_path / "d.xva").stat().st_size == 4096 + 9 * 4 * MiB + 5000 + 2 * MiB

"""``nfs://`` specifics (contract: test_storage_contract.py).

This machine's kernel has no NFS client, so (see the docstring of ``_storage_nfs``):
- mounting, reuse, the keeper, unmounting and ``persistent`` run for real with ``fake_nfs``: ``mount``
  in PATH is a stand-in that records its arguments and bind-mounts a local export (tests/servers.py);
- the real ``mount`` binary is run where its failures can happen here: no mount.nfs helper, no NFS in
  the kernel, not root;
- mount.nfs' own failures (server refusing, unreachable, no such export) are its messages replayed by
  the stand-in.
"""

import os
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _storage_nfs
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    StorageError,
    UnreachableError,
    open_remote,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_nfs import NfsStorage, is_mounted


def kernel_has_nfs():
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] in ("nfs", "nfs4") for line in f if line.strip())


def test_mount_command_follows_xo(fake_nfs):
    export = fake_nfs.new_export()
    mounts = str(fake_nfs.mounts_dir)
    with open_remote(f"nfs://nas.example:2049:/{export.name}", mounts_dir=mounts, mount_options="vers=3,nolock") as a:
        assert isinstance(a, NfsStorage) and a.mounted_here
        assert a.mount_point.startswith(mounts + "/") and stat.S_IMODE(os.stat(mounts).st_mode) == 0o755
    with open_remote(f"nfs://nas.example:/{export.name}", mounts_dir=mounts) as b:
        assert b.mount_point != a.mount_point  # another port and options: another mount
    assert fake_nfs.calls() == [
        ["-o", "port=2049,vers=3,nolock", "-t", "nfs", f"nas.example:/{export.name}", a.mount_point],
        ["-t", "nfs", f"nas.example:/{export.name}", b.mount_point],  # nothing to pass: no -o at all
    ]


def test_data_goes_to_the_export_and_the_mount_goes_away_after_close(fake_nfs):
    export = fake_nfs.new_export()
    with open_remote(f"nfs://nas.example:/{export.name}", mounts_dir=str(fake_nfs.mounts_dir)) as store:
        assert is_mounted(store.mount_point)
        store.write_bytes("xo-vm-backups/vm/a.json", b"{}")
        assert store.local_path("xo-vm-backups/vm/a.json") == f"{store.mount_point}/xo-vm-backups/vm/a.json"
        with store.open_update("xo-vm-backups/vm/a.json") as f:
            f.write(b"[]")
        assert store.display == f"nfs://nas.example:/{export.name}"
    assert (export / "xo-vm-backups" / "vm" / "a.json").read_bytes() == b"[]"
    assert not is_mounted(store.mount_point) and fake_nfs.mounted() == []


def test_persistent_mount_stays_and_is_reused(fake_nfs):
    url = f"nfs://nas.example:/{fake_nfs.new_export().name}"
    options = {"mounts_dir": str(fake_nfs.mounts_dir)}
    with open_remote(url, persistent=True, **options) as first:
        first.write_bytes("f", b"1")
    assert is_mounted(first.mount_point)
    with open_remote(url, **options) as second:
        assert not second.mounted_here and second.read_bytes("f") == b"1"
    assert len(fake_nfs.calls()) == 1  # mounted once
    assert not is_mounted(first.mount_point)  # the non-persistent one unmounted it


def test_storages_sharing_a_mount_keep_it_until_the_last_closes(fake_nfs):
    url = f"nfs://nas.example:/{fake_nfs.new_export().name}"
    options = {"mounts_dir": str(fake_nfs.mounts_dir)}
    a = open_remote(url, **options)
    b = open_remote(url, **options)
    assert a.mount_point == b.mount_point and len(fake_nfs.calls()) == 1
    a.close()  # its unmount fails as busy: b holds the mount
    assert is_mounted(b.mount_point)
    b.write_bytes("still", b"there")
    b.close()
    assert not is_mounted(b.mount_point)


def test_use_sudo_prefixes_mount_and_umount(fake_nfs):
    log = fake_nfs.base / "sudo.log"
    sudo = fake_nfs.bin / "sudo"
    sudo.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec "$@"\n')
    sudo.chmod(0o755)
    export = fake_nfs.new_export()
    with open_remote(f"nfs://nas.example:/{export.name}", mounts_dir=str(fake_nfs.mounts_dir), use_sudo=True) as s:
        point = s.mount_point
    assert log.read_text().splitlines() == [f"mount -t nfs nas.example:/{export.name} {point}", f"umount {point}"]


@pytest.mark.parametrize(
    ("said", "kind", "advice"),
    [
        ("mount.nfs: access denied by server while mounting nas.example:/export", PermissionDeniedError,
         "the server refused; export it to this proxy's address with read/write access."),
        ("mount.nfs: Connection refused", UnreachableError, "the server is unreachable; check its name, the network"),
        ("mount.nfs: Connection timed out", UnreachableError, "the server is unreachable"),
        ("mount.nfs: Failed to resolve server nas.example: Name or service not known", UnreachableError,
         "the server is unreachable"),
        ("mount.nfs: mounting nas.example:/export failed, reason given by server: No such file or directory",
         NotFoundError, "the server has no such export; check the path after the colon."),
        ("mount.nfs: an incorrect mount option was specified", StorageError, "mount said: mount.nfs: an incorrect"),
    ],
)  # fmt: skip
def test_mount_nfs_failures_name_the_export_and_quote_mount(fake_nfs, monkeypatch, said, kind, advice):
    monkeypatch.setenv("FAKE_NFS_STDERR", said)
    with pytest.raises(kind) as info:
        open_remote("nfs://nas.example:/export", mounts_dir=str(fake_nfs.mounts_dir))
    assert type(info.value) is kind
    message = str(info.value)
    assert message.startswith("cannot mount NFS export nas.example:/export on ")
    assert advice in message and message.endswith(f"mount said: {said}")


def test_a_hung_mount_times_out(fake_nfs, monkeypatch):
    monkeypatch.setenv("FAKE_NFS_SLEEP", "10")
    t0 = time.monotonic()
    with pytest.raises(UnreachableError, match="mount did not finish within 0.5 s; check that the NFS server answers"):
        open_remote("nfs://nas.example:/export", mounts_dir=str(fake_nfs.mounts_dir), timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_a_mount_that_mounts_nothing_is_refused(fake_nfs, monkeypatch):
    monkeypatch.setenv("FAKE_NFS_NOOP", "1")  # mount exits 0: writing on would fill the proxy's own disk
    with pytest.raises(StorageError, match="mount succeeded but nothing is mounted there"):
        open_remote("nfs://nas.example:/export", mounts_dir=str(fake_nfs.mounts_dir))


# -- the real mount binary --------------------------------------------------------------------
@pytest.fixture
def real_mount(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mount(8) refuses NFS to non-root users before looking any further")
    if kernel_has_nfs():
        pytest.skip("this kernel has an NFS client: a real mount would try the network")
    done = subprocess.run(["mount", "--version"], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("no mount(8)")
    return tmp_path / "mounts"


def test_without_mount_nfs_the_message_says_to_install_nfs_common(real_mount, monkeypatch, tmp_path):
    monkeypatch.setattr(_storage_nfs, "HELPER_DIRS", (str(tmp_path / "no-helpers"),))
    with pytest.raises(NotSupportedError) as info:
        open_remote("nfs://nas.example:/export", mounts_dir=str(real_mount))
    message = str(info.value)
    assert message.startswith(f"cannot mount NFS export nas.example:/export on {real_mount}/")
    assert "the NFS client is not installed on this proxy; install nfs-common (Debian, Ubuntu)" in message
    assert "mount said: mount: " in message and "unknown filesystem type 'nfs'" in message  # mount's own words
    assert not any(is_mounted(str(p)) for p in real_mount.iterdir())


def test_with_mount_nfs_but_no_kernel_client_the_message_says_so(real_mount, monkeypatch, tmp_path):
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "mount.nfs").write_text("#!/bin/sh\nexit 1\n")  # only our check looks here; mount(8) does not
    (helpers / "mount.nfs").chmod(0o755)
    monkeypatch.setattr(_storage_nfs, "HELPER_DIRS", (str(helpers),))
    with pytest.raises(NotSupportedError, match="this proxy's kernel has no NFS client \\(load it with modprobe nfs"):
        open_remote("nfs://nas.example:/export", mounts_dir=str(real_mount))


def test_mounting_as_a_normal_user_says_root_is_needed(real_mount, monkeypatch, tmp_path):
    setpriv, mount = shutil.which("setpriv"), shutil.which("mount")
    if setpriv is None:
        pytest.skip("no setpriv(1) to run mount(8) as an unprivileged user")
    wrapper = tmp_path / "bin" / "mount"  # the real mount(8), run by uid 65534 (mount checks the real uid)
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 --clear-groups {mount} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    base = tempfile.mkdtemp(prefix="xapi-proxy-nfs-user-")  # a mount point that user can reach, unlike tmp_path
    try:
        os.chmod(base, 0o755)  # noqa: S103
        with pytest.raises(PermissionDeniedError) as info:
            open_remote("nfs://nas.example:/export", mounts_dir=base)
    finally:
        shutil.rmtree(base)
    assert str(info.value).startswith(f"cannot mount NFS export nas.example:/export on {base}/")
    assert "mounting needs root; run the proxy's tasks as root (become) or set use_sudo." in str(info.value)
    assert "mount said: mount: " in str(info.value) and "must be superuser to use mount" in str(info.value)


def test_no_mount_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NotSupportedError, match="mount was not found on this proxy; install it"):
        open_remote("nfs://nas.example:/export", mounts_dir=str(tmp_path / "m"))

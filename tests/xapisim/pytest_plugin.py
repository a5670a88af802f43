"""Pytest fixtures that run the simulator as a real process on loopback.

Tests talk to it over HTTP(S) with the real ``XenAPI`` SDK and ``requests``; nothing is patched.
"""

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
DEMO_LAB = HERE / "labs" / "demo.yml"
TINY_LAB = HERE / "labs" / "tiny.yml"
DEMO_ADMIN = ("root", "xapisim-demo")
DEMO_READ_ONLY = ("auditor", "xapisim-audit")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimHandle:
    """A running simulator: its URLs, CA file and the ``/_sim/`` test hooks."""

    def __init__(self, lab, state_dir, tls=True, port=None, extra_args=()):
        self.lab = Path(lab)
        self.state_dir = Path(state_dir)
        self.tls = tls
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self._log = None
        self.ca_path = None
        self.username, self.password = DEMO_ADMIN
        self.ro_username, self.ro_password = DEMO_READ_ONLY
        self.log_path = self.state_dir.parent / (self.state_dir.name + ".log")

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def member_url(self):
        return f"{self.scheme}://127.0.0.2:{self.port}"

    def start(self, timeout=30):
        cmd = [
            sys.executable,
            "-m",
            "xapisim",
            "--lab",
            str(self.lab),
            "--state",
            str(self.state_dir),
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        if self.tls:
            cmd.append("--tls")
        env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env)
        try:
            self._wait_ready(timeout)
        except RuntimeError:
            self.stop(signal.SIGKILL)
            raise
        return self

    def _wait_ready(self, timeout):
        """Read the simulator's announcements until ``ready``; a silent or hung start fails at ``timeout``."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # read raw with select(): a blocking readline could wait forever
        pending = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"simulator not ready after {timeout} s: {self.log_tail()}")
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"simulator exited early (rc={self.proc.wait()}): {self.log_tail()}")
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode().strip()
                if line.startswith("xapisim: tls certificate "):
                    self.ca_path = line.split(" ", 3)[3]
                if line == "xapisim: ready":
                    return

    def log_tail(self, lines=5):
        """The end of the simulator's log, so a failed start says why in the test report itself."""
        if self._log is not None:
            self._log.flush()
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return " | ".join(tail) or f"nothing in {self.log_path}"

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None

    def restart(self, sig=signal.SIGTERM):
        self.stop(sig)
        return self.start()

    # -- SDK and HTTP helpers ------------------------------------------------------------------
    @property
    def verify(self):
        return self.ca_path if self.tls else False

    def session(self, username=None, password=None, url=None):
        """A logged-in ``XenAPI.Session`` that validates the simulator's certificate."""
        import ssl  # noqa: PLC0415
        import xmlrpc.client  # noqa: PLC0415

        import XenAPI  # noqa: PLC0415

        transport = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca_path)
            transport = xmlrpc.client.SafeTransport(context=ctx)
        s = XenAPI.Session(url or self.url, transport=transport)
        s.login_with_password(username or self.username, password or self.password, "1.0", "xapisim-tests")
        return s

    @contextlib.contextmanager
    def xapi(self, username=None, password=None):
        s = self.session(username, password)
        try:
            yield s.xenapi
        finally:
            with contextlib.suppress(Exception):
                s.xenapi.session.logout()

    def http(self, method, path, **kwargs):
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", 60)
        return requests.request(method, self.url + path, **kwargs)  # noqa: S113 - set just above

    def write(self, vdi_uuid, data, offset=0):
        """Write ``data`` into a VDI as its guest would (copy-on-write against snapshots)."""
        r = self.http("PUT", f"/_sim/vdi/{vdi_uuid}/data?offset={int(offset)}", data=data)
        r.raise_for_status()

    def sha256(self, vdi_uuid):
        r = self.http("GET", f"/_sim/vdi/{vdi_uuid}/sha256")
        r.raise_for_status()
        return r.text.strip()

    def fault(self, **spec):
        """Arm a fault, e.g. ``fault(path="/export", action="cut", after_bytes=1 << 20)``."""
        r = self.http("POST", "/_sim/faults", data=json.dumps(spec))
        r.raise_for_status()
        return r.json()

    def query(self, **params):
        return urllib.parse.urlencode(params)


@pytest.fixture
def sim_factory(tmp_path):
    started = []

    def make(lab=DEMO_LAB, tls=True, name="sim", extra_args=()):
        handle = SimHandle(lab, tmp_path / name, tls=tls, extra_args=extra_args).start()
        started.append(handle)
        return handle

    yield make
    for handle in started:
        handle.stop()


@pytest.fixture
def tiny(sim_factory):
    """A fresh small lab (``labs/tiny.yml``): tiny-01 halted with two small disks, tiny-run running."""
    return sim_factory(lab=TINY_LAB)


@pytest.fixture
def sim(sim_factory):
    """A fresh demo lab over HTTPS, private to the test."""
    return sim_factory()


@pytest.fixture(scope="session")
def demo_sim(tmp_path_factory):
    """One demo lab shared by read-only tests (do not change its state)."""
    handle = SimHandle(DEMO_LAB, tmp_path_factory.mktemp("demo") / "state").start()
    yield handle
    handle.stop()

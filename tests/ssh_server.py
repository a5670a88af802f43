"""A real OpenSSH server on loopback for playbook tests: key-only, private configuration, its own keys.

``sshd -D -e -f <config> -p <port>`` runs as a child in its own session, with a host key and an
authorized client key generated under a temporary directory, on 127.0.0.1 and a free port. Only
public-key authentication is accepted. Needs root (sshd changes user after authentication) and the
Debian package ``openssh-server``; the ``ssh_server`` fixture skips with the reason otherwise.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from servers import free_port, stop, wait_for_port

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"  # Debian's sshd refuses to start without its privilege separation directory


class SshServer:
    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="xapi-proxy-sshd-"))
        self.port = free_port()
        self.host_key = self.base / "ssh_host_ed25519_key"
        self.client_key = self.base / "id_ed25519"
        self.authorized_keys = self.base / "authorized_keys"
        self.config = self.base / "sshd_config"
        self.log = self.base / "sshd.log"
        self.proc = None

    def _keygen(self, path, comment):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)

    def start(self):
        self._keygen(self.host_key, "xapi-proxy-test-host")
        self._keygen(self.client_key, "xapi-proxy-test-client")
        shutil.copy(self.client_key.with_suffix(".pub"), self.authorized_keys)
        self.authorized_keys.chmod(0o600)
        self.config.write_text(
            f"""ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.base / "sshd.pid"}
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel INFO
"""
        )
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, self.proc, self.log)
        return self

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.base, ignore_errors=True)

    def ssh(self, *command):
        """Run a command over SSH with the client key (a check that the server takes the key)."""
        return subprocess.run(
            ["ssh", "-i", str(self.client_key), "-p", str(self.port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
             "root@127.0.0.1", *command],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip


@pytest.fixture(scope="session")
def ssh_server():
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH is not installed (Debian package openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd runs as root")
    server = SshServer()
    try:
        yield server.start()
    finally:
        server.stop()

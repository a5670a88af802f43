"""A running job's progress file and its run lock, on the host that runs the backup.

The progress file lets ``backup_info`` (or an operator) see the current VM, bytes done and an ETA
while a long job runs under Ansible ``async``; the lock makes a second run of the same job refuse
cleanly instead of racing the first one for snapshots and files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time

DEFAULT_DIR = "~/.ansible/xapi_proxy/jobs"
WRITE_EVERY = 1.0


class JobRunningError(RuntimeError):
    """Another run of the same job holds the lock on this host."""


def job_dir(directory):
    path = os.path.expanduser(directory or DEFAULT_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class JobLock:
    """An exclusive ``flock`` on ``<dir>/<job_id>.lock``; released when the process ends, however it ends."""

    def __init__(self, directory, job_id, job_name):
        self.path = os.path.join(job_dir(directory), f"{job_id}.lock")
        self.job_name = job_name
        self.fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.read(fd, 200).decode().strip()
            os.close(fd)
            raise JobRunningError(
                f"backup job {self.job_name!r} is already running on this host"
                + (f" ({holder})" if holder else "")
                + "; wait for it to finish (backup_info shows its progress) or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
        return False


class Progress:
    """Thread-safe progress of one job run, written atomically at most every second."""

    def __init__(self, directory, job_id, job_name, total_vms, total_bytes=0, clock=time.time):
        self.path = os.path.join(job_dir(directory), f"{job_id}.progress.json")
        self.lock = threading.Lock()
        self.clock = clock
        self.state = {
            "job": job_name,
            "job_id": job_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "status": "running",
            "started": clock(),
            "updated": clock(),
            "vms_total": total_vms,
            "vms_done": 0,
            "current_vms": {},
            "bytes_done": 0,
            "bytes_total": total_bytes,
        }
        self._written = 0.0
        self._write(force=True)

    def vm_started(self, uuid, name):
        with self.lock:
            self.state["current_vms"][uuid] = {"name": name, "bytes_done": 0, "phase": "starting"}
        self._write()

    def vm_phase(self, uuid, phase):
        with self.lock:
            if uuid in self.state["current_vms"]:
                self.state["current_vms"][uuid]["phase"] = phase
        self._write()

    def add_bytes(self, uuid, n):
        with self.lock:
            self.state["bytes_done"] += n
            vm = self.state["current_vms"].get(uuid)
            if vm is not None:
                vm["bytes_done"] += n
        self._write()

    def vm_done(self, uuid):
        with self.lock:
            self.state["current_vms"].pop(uuid, None)
            self.state["vms_done"] += 1
        self._write(force=True)

    def finish(self, status):
        with self.lock:
            self.state["status"] = status
            self.state["current_vms"] = {}
        self._write(force=True)

    def _write(self, force=False):
        now = self.clock()
        with self.lock:
            if not force and now - self._written < WRITE_EVERY:
                return
            self._written = now
            self.state["updated"] = now
            payload = json.dumps(self.state)
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            os.replace(tmp, self.path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_progress(directory, job_id=None, now=None):
    """Progress records of jobs on this host (one job with ``job_id``), with ETA and liveness."""
    path = os.path.expanduser(directory or DEFAULT_DIR)
    if not os.path.isdir(path):
        return []
    now = time.time() if now is None else now
    out = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".progress.json") or (job_id and name != f"{job_id}.progress.json"):
            continue
        try:
            with open(os.path.join(path, name)) as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            continue
        if record.get("status") == "running" and not _alive(int(record.get("pid", 0))):
            record["status"] = "interrupted"  # the process died without finishing
        elapsed = max(0.0, now - record.get("started", now))
        done, total = record.get("bytes_done", 0), record.get("bytes_total", 0)
        record["elapsed"] = round(elapsed, 1)
        record["eta"] = None
        if record["status"] == "running" and done and total > done and elapsed > 0:
            record["eta"] = round((total - done) / (done / elapsed), 1)
        record["current_vms"] = [{"uuid": u, **v} for u, v in record.get("current_vms", {}).items()]
        out.append(record)
    return out

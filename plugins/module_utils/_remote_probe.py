"""Probe a remote through the storage contract: a write/read/delete test and a speed benchmark.

Probe files live at the remote's root under a name no backup uses (``xapi-proxy-probe-<hex>``), and
are removed whatever happens; backup data is never read, listed or touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid

from ._storage import StorageError

PROBE_PREFIX = "xapi-proxy-probe-"
TEST_SIZE = 64 * 1024
PIECE = 1 << 20


def _probe_name():
    return f"{PROBE_PREFIX}{uuid.uuid4().hex}"


def test(storage, redact=str):
    """Write a small random file, read it back, compare, delete: ``{success, step, error, duration}``."""
    name = _probe_name()
    data = os.urandom(TEST_SIZE)
    start = time.monotonic()
    step = "write"
    try:
        storage.write_bytes(name, data)
        step = "read"
        back = storage.read_bytes(name)
        step = "compare"
        if back != data:
            raise StorageError(
                f"the {TEST_SIZE} bytes read back differ from those written ({len(back)} bytes came back)", name
            )
        step = "delete"
        storage.delete(name, missing_ok=False)
        if storage.exists(name):
            raise StorageError(f"{name} is still listed after being deleted", name)
    except (StorageError, OSError) as e:
        _cleanup(storage, name)
        return {
            "success": False,
            "step": step,
            "error": redact(str(e)),
            "duration": round(time.monotonic() - start, 3),
        }
    return {"success": True, "step": None, "error": None, "duration": round(time.monotonic() - start, 3)}


def benchmark(storage, size_mib):
    """Write then read ``size_mib`` MiB in 1 MiB pieces; rates in bytes per second."""
    name = _probe_name()
    piece = os.urandom(PIECE)
    total = size_mib * PIECE
    try:
        start = time.monotonic()
        with storage.open_write(name) as out:
            for _ in range(size_mib):
                out.write(piece)
        write_seconds = max(time.monotonic() - start, 1e-6)
        digest = hashlib.sha256()
        start = time.monotonic()
        got = 0
        with storage.open_read(name) as src:
            while True:
                chunk = src.read(PIECE)
                if not chunk:
                    break
                digest.update(chunk)
                got += len(chunk)
        read_seconds = max(time.monotonic() - start, 1e-6)
    finally:
        _cleanup(storage, name)
    expected = hashlib.sha256()
    for _ in range(size_mib):
        expected.update(piece)
    if got != total or digest.hexdigest() != expected.hexdigest():
        raise StorageError(f"the benchmark read back {got} bytes that differ from the {total} written", name)
    return {
        "size": total,
        "write_seconds": round(write_seconds, 3),
        "read_seconds": round(read_seconds, 3),
        "write_rate": int(total / write_seconds),
        "read_rate": int(total / read_seconds),
    }


def _cleanup(storage, name):
    with contextlib.suppress(Exception):
        storage.delete(name, missing_ok=True)

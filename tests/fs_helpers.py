"""Filesystem helpers for tests that need a real, small filesystem to fill."""

import contextlib
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(where, size="1m"):
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                              capture_output=True, text=True, check=False)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no mount(8) on this machine, so no small filesystem can be filled")
    if done.returncode != 0:
        pytest.skip(f"mounting a {size} tmpfs was refused ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)

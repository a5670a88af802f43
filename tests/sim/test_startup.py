"""The simulator refuses to start with a clear reason, and the test harness shows that reason."""

import os
import time

import pytest
from fs_helpers import tmpfs

from xapisim.pytest_plugin import DEMO_LAB, SimHandle


def failed_start(lab, state_dir, log_path=None):
    handle = SimHandle(lab, state_dir)
    handle.log_path = log_path or handle.log_path
    with pytest.raises(RuntimeError) as e:
        handle.start()
    handle.stop()
    return str(e.value)


def test_a_lab_without_hosts_is_a_bad_lab_file(tmp_path):
    lab = tmp_path / "lab.yml"
    lab.write_text("pool: {name_label: empty}\n")
    message = failed_start(lab, tmp_path / "state")
    assert "exited early (rc=2)" in message
    assert f"bad lab file {lab}" in message and "a lab needs at least 'hosts'" in message


def test_a_missing_lab_file_is_named(tmp_path):
    message = failed_start(tmp_path / "nowhere.yml", tmp_path / "state")
    assert f"cannot build the lab from {tmp_path / 'nowhere.yml'}" in message
    assert "No such file or directory" in message


def test_a_full_disk_while_building_says_so(tmp_path):
    # The demo lab writes ~70 MB of disks; a 1 MiB filesystem fills while it is built. The log
    # lies outside it, or the simulator could not even say why.
    with tmpfs(tmp_path / "small") as small:
        message = failed_start(DEMO_LAB, small / "state", tmp_path / "sim.log")
    assert f"cannot build the lab from {DEMO_LAB} in {small / 'state'}" in message
    assert "No space left on device" in message


def test_a_start_that_hangs_fails_at_the_timeout_and_is_killed(tmp_path):
    # A FIFO as the lab file: the simulator blocks opening it (no writer), silent, before "ready".
    lab = tmp_path / "lab.yml"
    os.mkfifo(lab)
    handle = SimHandle(lab, tmp_path / "state")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"simulator not ready after 2 s"):
        handle.start(timeout=2)
    assert time.monotonic() - started < 15
    assert handle.proc is None, "the hung simulator was stopped, not left behind"

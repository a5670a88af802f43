"""Health checks: a good backup boots and passes, an unbootable one fails with a clear message.

The simulator's guest reports PV drivers when its boot disk's first MiB is not all zeros, and, when
the VM carries the tag ``xo-backup-health-check-xenstore``, writes ``success`` (or ``failure`` when the
boot sector holds ``XAPISIM-HEALTH-FAIL``) to ``vm-data/xo-backup-health-check``.
"""

import dataclasses

import pytest
from xo_fixtures import REMOTE_KINDS, XoJob, full_backup_on_a_lost_network, make_remote, pool_objects

from ansible_collections.xapi.proxy.plugins.module_utils._health_check import (
    HEALTH_CHECK_TAG,
    XENSTORE_KEY,
    XENSTORE_TAG,
    health_check,
)

MIB = 1 << 20


# Round trips (test_restore.py) run on every remote kind; what is checked here does not depend on it.
@pytest.fixture(params=REMOTE_KINDS[:1])
def remote(request, tmp_path):
    r = make_remote(request.param, tmp_path, request)
    yield r
    r.close()


@pytest.fixture
def job(tiny, remote):
    with XoJob(tiny, remote) as j:
        yield j


class Recorder:
    """The XAPI client, with every call it forwards written down (to see what the check did)."""

    def __init__(self, client):
        self._client = client
        self.calls = []

    def call(self, method, *args, **kwargs):
        self.calls.append((method, args))
        return self._client.call(method, *args, **kwargs)

    def methods(self):
        return [m for m, _ in self.calls]

    def __getattr__(self, name):
        return getattr(self._client, name)


def sr_ref(job):
    return job.call("SR.get_by_name_label", "Local storage")[0]


def check(job, fixture, timeout=10, wait_xenstore=None):
    recorder = Recorder(job.client)
    before = pool_objects(job.client)
    result = health_check(recorder, job.storage, fixture.id, sr_ref(job), timeout, wait_xenstore)
    assert pool_objects(job.client) == before, "the checked VM and its disks are destroyed"
    assert result["cleaned_up"] is True
    return result, recorder


@pytest.mark.parametrize("mode", ["full", "delta"])
def test_a_good_backup_passes(job, mode):
    fixture = job.full("tiny-01") if mode == "full" else job.delta("tiny-01")
    result, recorder = check(job, fixture)
    assert result["status"] == "success", result["message"]
    assert result["message"].startswith(f"Backup {fixture.id} of 'tiny-01' is healthy")
    assert (result["backup_id"], result["vm_name"], result["waited_for_xenstore"]) == (fixture.id, "tiny-01", False)
    assert set(result["durations"]) == {"restore", "start", "guest_metrics", "total"}
    methods = recorder.methods()
    assert "VIF.create" not in methods, "checked VMs get no network"
    if mode == "full":
        assert methods.count("VIF.destroy") == len(fixture.macs)  # the XVA's VIFs are removed after the import
    assert methods.index("Async.VM.start") < methods.index("VM.destroy")
    if mode == "full":
        tags = next(args[1] for m, args in recorder.calls if m == "VM.set_tags")
    else:
        tags = next(args[0]["tags"] for m, args in recorder.calls if m == "VM.create")
    assert HEALTH_CHECK_TAG in tags


def test_an_unbootable_backup_fails_clearly(job):
    job.guest_write("tiny-01", 0, bytes(MIB), 0)  # no boot sector: the guest never comes up
    fixture = job.delta("tiny-01")
    result, _ = check(job, fixture, timeout=1)
    assert result["status"] == "failure"
    assert result["message"] == (
        f"Health check of backup {fixture.id} failed: the restored VM started but its guest never reported PV "
        "drivers (guest metrics); the backup may not boot, or its guest tools do not run, within 1 seconds."
    )
    assert "guest_metrics" not in result["durations"] and result["durations"]["start"] < 1


def test_the_guest_script_verdict_is_awaited_when_the_vm_asks_for_it(job):
    job.call("VM.add_tags", job.vm_ref("tiny-01"), XENSTORE_TAG)
    good = job.delta("tiny-01")
    result, recorder = check(job, good)
    assert (result["status"], result["waited_for_xenstore"], result["xenstore"]) == ("success", True, "success")
    assert "its health check script reported success" in result["message"]
    planned = [args[1] for m, args in recorder.calls if m == "VM.set_xenstore_data"]
    assert planned and planned[0][XENSTORE_KEY] == "planned"  # set before the start, as XO does
    job.guest_write("tiny-01", 0, b"XAPISIM-HEALTH-FAIL", 1024)
    bad = job.delta("tiny-01")
    result, _ = check(job, bad)
    assert (result["status"], result["xenstore"]) == ("failure", "failure")
    assert result["message"] == (
        f"Health check of backup {bad.id} failed: the guest's health check script reported failure."
    )
    result, _ = check(job, bad, wait_xenstore=False)  # told not to wait: the boot alone passes
    assert result["status"] == "success" and result["xenstore"] is None


def test_waiting_for_a_script_the_guest_does_not_run_times_out(job):
    fixture = job.delta("tiny-01")  # no xenstore tag: the simulated guest writes nothing
    result, _ = check(job, fixture, timeout=1, wait_xenstore=True)
    assert result["status"] == "failure"
    assert f"did not write success or failure to {XENSTORE_KEY} within 1 seconds" in result["message"]


def test_a_network_the_import_creates_goes_with_the_checked_vm(job):
    fixture = full_backup_on_a_lost_network(job)  # XAPI's import creates it again, for a VIF the check then removes
    networks = set(job.call("network.get_all"))
    result, _ = check(job, fixture)
    assert result["status"] == "success", result["message"]
    assert set(job.call("network.get_all")) == networks


def test_a_restore_that_fails_is_a_failed_check_and_leaves_nothing(job, remote):
    fixture = job.delta("tiny-01")
    remote.storage.delete(fixture.disks["1"].vhd)
    result, recorder = check(job, fixture)
    assert result["status"] == "failure" and "VM.create" not in recorder.methods()
    assert result["message"].startswith(f"Health check of backup {fixture.id} failed: Disk 'tiny-01 data'")
    assert fixture.disks["1"].vhd in result["message"]


def test_bad_timeout_and_unknown_backup(job):
    fixture = job.delta("tiny-01")
    result, recorder = check(job, fixture, timeout=0)
    assert result["status"] == "failure" and "positive number of seconds" in result["message"]
    assert recorder.methods() == []
    result, _ = check(job, dataclasses.replace(fixture, id=fixture.id.replace("20240618", "20240617")))
    assert result["status"] == "failure" and "No backup" in result["message"]

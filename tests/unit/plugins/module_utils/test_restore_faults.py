"""Restores that fail: cut streams, failed tasks, full SRs, broken chains, damaged XVAs.

Each must say why in one message and leave nothing behind in the pool (no VM, VDI, VBD or VIF that
was not there before).
"""

import time

import pytest
from xo_fixtures import REMOTE_KINDS, XoJob, full_backup_on_a_lost_network, make_remote, pool_objects, tiny_lab_with

from ansible_collections.xapi.proxy.plugins.module_utils._restore import restore_backup
from ansible_collections.xapi.proxy.plugins.module_utils._restore_errors import (
    ChecksumMismatchError,
    InsufficientSpaceError,
    RestoreError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._restore_select import load_backup
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory import open_alias
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import XapiError

MIB = 1 << 20
SR_FULL = ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]


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


def restore(job, fixture, **kwargs):
    kwargs.setdefault("sr", "Local storage")
    return restore_backup(job.client, job.storage, load_backup(job.storage, fixture.id), **kwargs)


def failed_restore(job, fixture, error=RestoreError, **kwargs):
    """Run a restore that must fail; return the error once the pool is back as it was."""
    before = pool_objects(job.client)
    with pytest.raises(error) as info:
        restore(job, fixture, **kwargs)
    assert_pool_unchanged(job, before)
    assert job.client.session_id not in str(info.value)
    return info.value


def assert_pool_unchanged(job, before, wait=5.0):
    # XAPI discards a failed import in the background of the failed task: allow it a moment.
    deadline = time.monotonic() + wait
    while pool_objects(job.client) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    after = pool_objects(job.client)
    assert after == before, {cls: after[cls] - before[cls] for cls in after}


# -- transfers --------------------------------------------------------------------------------------
def test_cut_disk_import_removes_the_vm_and_its_disks(tiny, job):
    fixture = job.delta("tiny-01")
    tiny.fault(path="/import_raw_vdi", action="cut", after_bytes=3 * MIB)
    e = failed_restore(job, fixture)
    assert "Import of disk 'tiny-01 root' (position 0) failed" in str(e)
    assert "Everything it had created was removed" in str(e)
    assert e.code == "VDI_IO_ERROR"


def test_failed_disk_import_task(tiny, job):
    fixture = job.delta("tiny-01")
    tiny.fault(path="/import_raw_vdi", action="fail_task", error=["VDI_IO_ERROR", "Device I/O errors"])
    e = failed_restore(job, fixture)
    assert e.code == "VDI_IO_ERROR" and "Device I/O errors" in str(e)


def test_sr_full_during_a_disk_import(tiny, job):
    fixture = job.delta("tiny-01")
    tiny.fault(path="/import_raw_vdi", action="fail_task", error=SR_FULL)
    e = failed_restore(job, fixture)
    assert e.code == "SR_BACKEND_FAILURE_44" and "is full" in str(e)


def test_failed_xva_import_task(tiny, job):
    fixture = job.full("tiny-01")
    tiny.fault(path="/import", action="fail_task", error=SR_FULL)
    e = failed_restore(job, fixture)
    assert e.code == "SR_BACKEND_FAILURE_44" and "XAPI discards an import that does not complete" in str(e)


def test_cut_xva_import(tiny, job):
    fixture = job.full("tiny-01", compression=None)
    tiny.fault(path="/import", action="cut", after_bytes=4 * MIB)
    before = pool_objects(job.client)
    with pytest.raises(RestoreError) as e:
        restore(job, fixture)
    assert e.value.code == "IMPORT_ERROR_PREMATURE_EOF" and "Import to SR 'Local storage' failed" in str(e.value)
    leftovers = {cls: pool_objects(job.client)[cls] - before[cls] for cls in before}
    assert not any(leftovers.values()), f"a cut import must leave nothing behind: {leftovers}"


class FailingClient:
    """The real client, except that ``method`` fails (a pool refusing one step after the import)."""

    def __init__(self, client, method):
        self._client = client
        self._method = method

    def call(self, method, *args, **kwargs):
        if method == self._method:
            raise XapiError(f"{method} refused by the test", "INTERNAL_ERROR", ["test"])
        return self._client.call(method, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_restore_failing_after_the_import_leaves_no_network_behind(job):
    fixture = full_backup_on_a_lost_network(job)
    networks = set(job.call("network.get_all"))
    client = FailingClient(job.client, "VM.set_tags")
    with pytest.raises(RestoreError) as e:
        restore_backup(client, job.storage, load_backup(job.storage, fixture.id), sr="Local storage")
    assert "Everything it had created was removed" in str(e.value)
    assert set(job.call("network.get_all")) == networks


# -- space ------------------------------------------------------------------------------------------
@pytest.fixture
def small_sr_job(sim_factory, tmp_path, remote):
    # tiny-01's disks hold 14 MiB of data (7 allocated 2 MiB blocks); this SR has 8 MiB.
    lab = tiny_lab_with(tmp_path, srs=[{"name": "Small SR", "type": "ext", "size": "8MiB"}])
    sim = sim_factory(lab=lab)
    with XoJob(sim, remote) as j:
        yield j


@pytest.mark.parametrize("mode", ["full", "delta"])
@pytest.mark.parametrize("check_mode", [False, True])
def test_a_small_sr_is_refused_before_anything_is_created(small_sr_job, mode, check_mode):
    job = small_sr_job
    fixture = job.full("tiny-01", compression=None) if mode == "full" else job.delta("tiny-01")
    e = failed_restore(job, fixture, InsufficientSpaceError, sr="Small SR", check_mode=check_mode)
    assert "SR 'Small SR' has 8.0 MiB free but the restore needs" in str(e) and "Nothing was created" in str(e)


def test_a_disk_sent_to_a_small_sr_is_refused_too(small_sr_job):
    job = small_sr_job
    fixture = job.delta("tiny-01")
    failed_restore(job, fixture, InsufficientSpaceError, disk_srs={"0": "Small SR"})  # disk 0: 10 MiB
    outcome = restore(job, fixture, disk_srs={"1": "Small SR"})  # disk 1: 4 MiB fits
    assert outcome.changed


# -- broken backups -----------------------------------------------------------------------------------
def test_missing_vhd_in_a_chain_names_the_file(job, remote):
    points = [job.delta("tiny-01") for _ in range(3)]
    missing = points[1].disks["1"].vhd
    remote.storage.delete(missing)
    e = failed_restore(job, points[2])
    assert missing in str(e) and "tiny-01 data" in str(e) and "chain is broken" in str(e)
    restore(job, points[0])  # older points do not need it


def test_missing_newest_vhd_names_the_file(job, remote):
    fixture = job.delta("tiny-01")
    remote.storage.delete(fixture.disks["0"].vhd)
    e = failed_restore(job, fixture)
    assert f"its VHD {fixture.disks['0'].vhd} is missing" in str(e)


@pytest.fixture
def s3_job(tiny, request, tmp_path):
    r = make_remote("s3", tmp_path, request)  # XO's S3 incrementals: VHD directories behind aliases
    with XoJob(tiny, r) as j:
        yield j
    r.close()


def test_vhd_directory_missing_block_object_or_parent_alias_is_named(s3_job):
    storage = s3_job.storage
    points = [s3_job.delta("tiny-01") for _ in range(2)]
    parent_alias, child_alias = points[0].disks["0"].vhd, points[1].disks["0"].vhd
    parent, child = open_alias(storage, parent_alias), open_alias(storage, child_alias)
    index = next(i for i in parent.allocated_blocks() if not child.has_block(i))  # read from the parent
    storage.delete(parent.block_path(index))
    e = failed_restore(s3_job, points[1])
    assert f"block {index} is listed in the BAT but its object is missing" in str(e)
    assert parent.block_path(index) in str(e) and "tiny-01 root" in str(e)
    storage.delete(parent_alias)
    e = failed_restore(s3_job, points[1])
    assert parent_alias in str(e) and "chain is broken" in str(e)


def test_missing_xva_is_reported(job, remote):
    fixture = job.full("tiny-01")
    remote.storage.delete(fixture.files[0])
    e = failed_restore(job, fixture)
    assert f"XVA {fixture.files[0]} is missing" in str(e)


@pytest.mark.parametrize(("checksum", "wrong"), [("md5", b"$1$$" + b"0" * 32), ("sha256", b"$5$$" + b"0" * 64)])
def test_wrong_checksum_file_is_refused_unless_forced(job, remote, checksum, wrong):
    fixture = job.full("tiny-01", checksum=checksum)
    remote.storage.write_bytes(fixture.files[1], wrong)
    e = failed_restore(job, fixture, ChecksumMismatchError)
    assert "does not match its checksum file" in str(e) and "force=true" in str(e)
    warnings = []
    outcome = restore(job, fixture, force=True, warn=warnings.append)
    assert outcome.changed and outcome.checksum == "mismatch (forced)"
    assert warnings and "restored anyway" in warnings[0]
    assert job.sim.sha256(
        job.call("VDI.get_uuid", job.call("VBD.get_VDI", sorted(job.call("VM.get_VBDs", outcome.vm_ref))[0]))
    ) in {d.sha256 for d in fixture.disks.values()}


@pytest.mark.parametrize(("checksum", "name"), [("md5", "MD5"), ("sha256", "SHA-256"), ("sha512", "SHA-512")])
def test_damaged_ova_xml_is_stopped_before_xapi_completes_it(job, remote, checksum, name):
    # XAPI checks each disk chunk, but nothing checks ova.xml: a damaged VM record would import as is.
    fixture = job.full("tiny-01", compression=None, checksum=checksum)
    path = remote.path(fixture.files[0])
    data = path.read_bytes()
    head = data[:65536]
    assert head.count(b"<name>name_label</name><value>tiny-01<") == 1
    path.write_bytes(head.replace(b"<value>tiny-01<", b"<value>tiny-02<") + data[65536:])
    e = failed_restore(job, fixture, ChecksumMismatchError)
    assert f"does not match its checksum file ({name} " in str(e) and "The upload was stopped before its end" in str(e)


def test_damaged_disk_data_is_refused(job, remote):
    fixture = job.full("tiny-01", compression=None)
    path = remote.path(fixture.files[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # XAPI's chunk check may see it first; either way nothing is kept
    path.write_bytes(bytes(data))
    e = failed_restore(job, fixture)
    assert "IMPORT_ERROR_SOME_CHECKSUMS_FAILED" in str(e) or "does not match its checksum file" in str(e)


def test_damaged_checksum_file_and_wrong_size(job, remote):
    fixture = job.full("tiny-01", compression=None)
    remote.storage.write_bytes(fixture.files[1], b"not a checksum")
    e = failed_restore(job, fixture, ChecksumMismatchError)
    assert "is not a valid checksum file" in str(e)
    remote.storage.delete(fixture.files[1])
    path = remote.path(fixture.files[0])
    path.write_bytes(path.read_bytes() + bytes(512))  # one more zero block: still a valid XVA, wrong size
    e = failed_restore(job, fixture, ChecksumMismatchError)
    assert f"has {fixture.metadata['size'] + 512} bytes but the backup's metadata says" in str(e)
    outcome = restore(job, fixture, force=True)
    assert outcome.checksum == "absent" and outcome.changed


def test_check_mode_refuses_what_the_restore_refuses(job, remote):
    fixture = job.full("tiny-01", compression=None)
    remote.storage.write_bytes(fixture.files[1], b"not a checksum")
    e = failed_restore(job, fixture, ChecksumMismatchError, check_mode=True)
    assert "is not a valid checksum file" in str(e)
    assert restore(job, fixture, check_mode=True, force=True).changed
    remote.storage.delete(fixture.files[1])
    path = remote.path(fixture.files[0])
    path.write_bytes(path.read_bytes()[: fixture.metadata["size"] // 2])
    e = failed_restore(job, fixture, ChecksumMismatchError, check_mode=True)
    assert f"has {fixture.metadata['size'] // 2} bytes but the backup's metadata says" in str(e)
    assert restore(job, fixture, check_mode=True, force=True).changed


def test_a_vm_that_cannot_start_is_kept_and_started_by_the_next_run(tiny, job):
    fixture = job.delta("tiny-01")
    tiny.fault(method="VM.start", action="fail_task", error=["HOST_NOT_ENOUGH_FREE_MEMORY", "1073741824", "0"])
    with pytest.raises(RestoreError) as e:
        restore(job, fixture, start=True)
    assert "which is kept, but it could not be started" in str(e.value)
    assert e.value.code == "HOST_NOT_ENOUGH_FREE_MEMORY"
    (vm,) = job.call("VM.get_by_name_label", fixture.default_name)
    assert job.call("VM.get_power_state", vm) == "Halted"
    planned = restore(job, fixture, start=True, check_mode=True)
    assert (planned.changed, planned.already_restored, planned.vm["power_state"]) == (True, True, "Running")
    assert job.call("VM.get_power_state", vm) == "Halted"
    again = restore(job, fixture, start=True)
    assert (again.changed, again.already_restored, again.vm_ref) == (True, True, vm)
    assert job.call("VM.get_power_state", vm) == "Running"
    assert restore(job, fixture, start=True).changed is False

"""Names, dates, paths and ids of XO's remote layout."""

from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _xo_layout as L

VM = "b1940dd2-7b1c-4b9d-8e2f-1c3a5e7f9a0b"
JOB = "4c9a7e1b-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
VDI = "9d2f1e3c-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
TS = 1718676003123  # 2024-06-18T02:00:03.123Z


def test_filename_date():
    assert L.format_filename_date(TS) == "20240618T020003Z"
    assert (
        L.format_filename_date(datetime(2024, 6, 18, 4, 0, 3, tzinfo=timezone(timedelta(hours=2))))
        == "20240618T020003Z"
    )
    assert L.format_filename_date(datetime(2024, 6, 18, 2, 0, 3)) == "20240618T020003Z"  # naive means UTC
    assert L.parse_filename_date("20240618T020003Z") == datetime(2024, 6, 18, 2, 0, 3, tzinfo=timezone.utc)
    for bad in ("20240618T020003", "2024-06-18T02:00:03Z", "20241318T020003Z", None):
        with pytest.raises(ValueError, match="is not a date of the form 20240618T020003Z"):
            L.parse_filename_date(bad)


def test_backup_datetime():
    assert L.format_backup_datetime(TS) == "20240618T02:00:03Z"
    assert L.parse_backup_datetime("20240618T02:00:03Z") == datetime(2024, 6, 18, 2, 0, 3, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="20240618T02:00:03Z"):
        L.parse_backup_datetime("20240618T020003Z")


def test_milliseconds_are_exact():
    assert L.to_ms(datetime(2024, 6, 18, 2, 0, 3, 123000, tzinfo=timezone.utc)) == TS
    assert L.to_datetime(TS) == datetime(2024, 6, 18, 2, 0, 3, 123000, tzinfo=timezone.utc)
    assert L.to_ms(L.to_datetime(1718676003999)) == 1718676003999
    with pytest.raises(TypeError):
        L.to_datetime("1718676003123")
    with pytest.raises(TypeError):
        L.to_datetime(True)


def test_paths():
    vm_dir = f"xo-vm-backups/{VM}"
    assert L.vm_backup_dir(VM) == vm_dir
    assert L.vm_lock_dir(VM) == f"{vm_dir}.lock"
    assert L.metadata_path(VM, TS) == f"{vm_dir}/20240618T020003Z.json"
    assert L.xva_path(VM, TS) == f"{vm_dir}/20240618T020003Z.xva"
    assert L.xva_checksum_path(VM, TS) == f"{vm_dir}/20240618T020003Z.xva.checksum"
    assert L.cache_path(VM) == f"{vm_dir}/cache.json.gz"
    assert L.vhd_relative_path(JOB, VDI, TS) == f"vdis/{JOB}/{VDI}/20240618T020003Z.vhd"
    assert L.vhd_relative_path(JOB, VDI, TS, vhd_directory=True) == f"vdis/{JOB}/{VDI}/20240618T020003Z.alias.vhd"
    alias = L.vhd_path(VM, JOB, VDI, TS, vhd_directory=True)
    assert alias == f"{vm_dir}/vdis/{JOB}/{VDI}/20240618T020003Z.alias.vhd"
    assert L.alias_data_path(alias) == f"{vm_dir}/vdis/{JOB}/{VDI}/data/20240618T020003Z.vhd"
    assert L.alias_content(alias) == "data/20240618T020003Z.vhd"
    assert L.resolve_alias(alias, "data/20240618T020003Z.vhd\n") == L.alias_data_path(alias)
    with pytest.raises(ValueError, match="points outside the remote"):
        L.resolve_alias("a.alias.vhd", "../../etc")
    with pytest.raises(ValueError, match="not an alias"):
        L.alias_data_path(f"{vm_dir}/x.vhd")
    assert L.vdis_dir(VM) == f"{vm_dir}/vdis"
    assert L.vdis_dir(VM, JOB, VDI) == f"{vm_dir}/vdis/{JOB}/{VDI}"
    parent = L.vhd_path(VM, JOB, VDI, TS)
    assert L.merge_state_path(parent) == f"{vm_dir}/vdis/{JOB}/{VDI}/.20240618T020003Z.vhd.merge.json"
    assert L.clean_vm_queue_path(TS, "k3x9") == "xo-vm-backups/.queue/clean-vm/20240618T020003Z-k3x9"


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b", "a\\b", "x\0y", None])
def test_path_segments_are_checked(bad):
    with pytest.raises(ValueError, match="is not a valid"):
        L.vm_backup_dir(bad)
    with pytest.raises(ValueError, match="is not a valid"):
        L.vhd_relative_path(JOB, bad, TS)


def test_names():
    assert L.is_temp_name(".1718676003123.20240618T020003Z.xva")
    assert not L.is_temp_name(".20240618T020003Z.vhd.merge.json")
    assert L.is_metadata_name("20240618T020003Z.json")
    assert not L.is_metadata_name(".1718676003123.20240618T020003Z.json")
    assert not L.is_metadata_name("cache.json.gz")


def test_backup_ids():
    bid = f"xo-vm-backups/{VM}/20240618T020003Z.json"
    assert L.backup_id(VM, TS) == bid
    assert L.parse_backup_id(bid) == (VM, "20240618T020003Z")
    assert L.parse_backup_id("/" + bid) == (VM, "20240618T020003Z")  # XO's _filename
    assert L.parse_backup_id(f"remote-1//{bid}") == (VM, "20240618T020003Z")  # XO's id
    assert L.xo_backup_id("remote-1", bid) == f"remote-1//{bid}"
    assert L.normalize_backup_id(f"remote-1//{bid}") == bid
    assert L.cache_key(bid) == "/" + bid
    for bad in ("xo-vm-backups/../20240618T020003Z.json", f"xo-vm-backups/{VM}/latest.json", "nope", None):
        with pytest.raises(ValueError, match="is not a backup id"):
            L.parse_backup_id(bad)


def test_stable_ids():
    # These values are a compatibility promise: jobs keep their id (and their delta chains) across releases.
    assert L.job_id_from_name("nightly") == "1847e990-e114-58d6-831d-6cda558a19ce"
    assert L.job_id_from_name("nightly") == L.job_id_from_name("nightly")
    assert L.job_id_from_name("nightly") != L.job_id_from_name("Nightly")
    job = L.job_id_from_name("nightly")
    assert L.is_uuid(job) and L.is_uuid(L.schedule_id_from_name(job, "daily"))
    assert L.schedule_id_from_name(job, "daily") != L.schedule_id_from_name(L.job_id_from_name("weekly"), "daily")
    with pytest.raises(ValueError, match="non-empty name"):
        L.job_id_from_name(" ")
    with pytest.raises(ValueError, match="non-empty name"):
        L.schedule_id_from_name(job, "")

"""Which backup a restore picks, how ``at`` is read, how VIFs find networks and SR space is judged.

No simulator here: backups are metadata files on a real file remote, pools are plain records.
"""

from datetime import datetime, timezone

import pytest
from xo_fixtures import REMOTE_KINDS, make_remote

from ansible_collections.xapi.proxy.plugins.module_utils._restore_errors import (
    BackupNotFoundError,
    InsufficientSpaceError,
    RestoreInputError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._restore_plan import (
    DiskPlan,
    PoolView,
    RestorePlan,
    check_space,
    map_vif_network,
)
from ansible_collections.xapi.proxy.plugins.module_utils._restore_select import (
    find_backup,
    load_backup,
    parse_at,
    select_backup,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import backup_id, to_ms
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import build_full_metadata, dump_metadata

WEB = "11111111-1111-4111-8111-111111111111"
WEB_TWIN = "22222222-2222-4222-8222-222222222222"
DB = "33333333-3333-4333-8333-333333333333"
DAY = 86_400_000
T0 = to_ms(datetime(2024, 6, 18, 2, 0, 3, 123000, tzinfo=timezone.utc))


@pytest.fixture(params=REMOTE_KINDS)
def remote(request, tmp_path):
    r = make_remote(request.param, tmp_path, request)
    yield r
    r.close()


def put(remote, vm_uuid, name, ts):
    md = build_full_metadata(job_id="job", schedule_id="sched", timestamp=ts, vm={"uuid": vm_uuid, "name_label": name},
                             vm_snapshot=None, size=100)  # fmt: skip
    bid = backup_id(vm_uuid, ts)
    remote.storage.write_bytes(bid, dump_metadata(md))
    return bid


# -- at ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("latest", None),
        ("LATEST", None),
        ("20240618T020003Z", T0 - 123 + 999),  # file names drop the milliseconds: the whole second counts
        ("2024-06-18T02:00:03.123Z", T0),
        ("2024-06-18T04:00:03.123+02:00", T0),
        ("2024-06-18 02:00:03.123", T0),  # no offset: UTC
        ("2024-06-18", to_ms(datetime(2024, 6, 19, tzinfo=timezone.utc)) - 1),  # the end of that day
        ("20240618", to_ms(datetime(2024, 6, 19, tzinfo=timezone.utc)) - 1),  # the same day, compact
        ("1718676003123", T0),
        # Backups are dated to the millisecond: a time without them covers the whole second (minute, hour)
        ("2024-06-18T02:00:03Z", T0 - 123 + 999),
        ("2024-06-18 04:00:03+02:00", T0 - 123 + 999),
        ("2024-06-18T02:00Z", T0 - 3123 + 59_999),
        ("2024-06-18T02:00:03.1Z", T0 - 23),  # any fraction up to microseconds, the same on every Python
    ],
)
def test_at_forms(text, expected):
    assert parse_at(text) == expected


def test_at_to_the_second_picks_the_backup_of_that_second(remote):
    bid = put(remote, WEB, "web", T0)
    assert select_backup(remote.storage, vm="web", at="2024-06-18T02:00:03Z").id == bid
    assert select_backup(remote.storage, vm="web", at="20240618").id == bid


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-13-45", "18/06/2024", "2024-06-18T25:00", "12", "20240618T0200Z", "2024-06-18T02:00+2"]
)
def test_at_nonsense_is_refused_with_the_accepted_forms(text):
    with pytest.raises(RestoreInputError) as e:
        parse_at(text)
    assert repr(text) in str(e.value) and "20240618T020003Z" in str(e.value) and "ISO 8601" in str(e.value)


# -- picking a backup ------------------------------------------------------------------------------
def test_newest_backup_not_after_at(remote):
    ids = [put(remote, WEB, "web", T0 + i * DAY) for i in range(4)]
    put(remote, DB, "db", T0 + 10 * DAY)
    assert find_backup(remote.storage, WEB).id == ids[3]
    assert find_backup(remote.storage, "web").id == ids[3]
    assert find_backup(remote.storage, "web", T0 + 2 * DAY).id == ids[2]  # exactly at: included
    assert find_backup(remote.storage, "web", T0 + 2 * DAY - 1).id == ids[1]
    assert select_backup(remote.storage, vm="web", at="2024-06-19").id == ids[1]  # the whole day of June 19th
    assert select_backup(remote.storage, vm=WEB, at="20240620T020003Z").id == ids[2]


def test_nothing_before_at_names_the_oldest(remote):
    put(remote, WEB, "web", T0)
    with pytest.raises(BackupNotFoundError) as e:
        find_backup(remote.storage, "web", T0 - DAY)
    assert "at or before 2024-06-17T02:00:03.123Z" in str(e.value)
    assert "oldest is from 2024-06-18T02:00:03.123Z (20240618T020003Z)" in str(e.value)
    with pytest.raises(BackupNotFoundError) as e:  # to the second, both would read 20240618T020003Z
        find_backup(remote.storage, "web", T0 - 1)
    assert "at or before 2024-06-18T02:00:03.122Z; the oldest is from 2024-06-18T02:00:03.123Z" in str(e.value)


def test_unreadable_metadata_of_the_vm_is_warned_about(remote):
    older = put(remote, WEB, "web", T0)
    damaged = put(remote, WEB, "web", T0 + DAY)
    remote.storage.write_bytes(damaged, remote.storage.read_bytes(damaged)[:50])
    remote.storage.write_bytes(backup_id(DB, T0), b"{")  # another VM's: not this restore's concern
    put(remote, DB, "db", T0 + DAY)
    for vm in ("web", WEB):
        warnings = []
        assert select_backup(remote.storage, vm=vm, warn=warnings.append).id == older
        assert len(warnings) == 1 and damaged in warnings[0] and older in warnings[0], warnings


def test_unknown_vm_lists_what_is_there(remote):
    put(remote, WEB, "web", T0)
    put(remote, DB, "db", T0)
    with pytest.raises(BackupNotFoundError) as e:
        find_backup(remote.storage, "mail")
    assert "No backup of VM 'mail'" in str(e.value) and "db, web" in str(e.value)
    with pytest.raises(BackupNotFoundError):
        find_backup(remote.storage, "44444444-4444-4444-8444-444444444444")


def test_a_name_two_vms_had_needs_a_uuid(remote):
    put(remote, WEB, "web", T0)
    put(remote, WEB_TWIN, "web", T0 + DAY)
    with pytest.raises(RestoreInputError) as e:
        find_backup(remote.storage, "web")
    assert WEB in str(e.value) and WEB_TWIN in str(e.value) and "UUID" in str(e.value)
    assert find_backup(remote.storage, WEB_TWIN).vm_uuid == WEB_TWIN


def test_backup_ids_in_every_spelling(remote):
    bid = put(remote, WEB, "web", T0)
    for spelling in (bid, "/" + bid, f"remote-id//{bid}"):
        got = load_backup(remote.storage, spelling)
        assert (got.id, got.vm_name, got.timestamp) == (bid, "web", T0)


def test_missing_or_malformed_ids(remote):
    put(remote, WEB, "web", T0)
    with pytest.raises(RestoreInputError) as e:
        load_backup(remote.storage, "web-01.json")
    assert "is not a backup id" in str(e.value)
    with pytest.raises(BackupNotFoundError) as e:
        load_backup(remote.storage, backup_id(WEB, T0 + DAY))
    assert "has 1 backup(s), the newest dated 20240618T020003Z" in str(e.value)
    remote.storage.write_bytes(backup_id(DB, T0), b'{"mode": "full"}')
    with pytest.raises(Exception) as e:
        load_backup(remote.storage, backup_id(DB, T0))
    assert "metadata is invalid" in str(e.value)


# -- networks ------------------------------------------------------------------------------------
def pool_view(networks, pifs, master="OpaqueRef:host-a"):
    view = PoolView(client=None)
    view._networks, view._pifs, view._pool = networks, pifs, {"master": master}
    return view


def net(uuid, name, pifs):
    return {"uuid": uuid, "name_label": name, "PIFs": pifs, "MTU": "1500"}


def pif(network, vlan, host="OpaqueRef:host-a", management=False):
    return {"network": network, "VLAN": str(vlan), "host": host, "management": management}


@pytest.fixture
def pool():
    networks = {
        "OpaqueRef:n-mgmt": net("aaaaaaaa-0000-4000-8000-000000000001", "Pool-wide network", ["OpaqueRef:p1"]),
        "OpaqueRef:n-v20": net("aaaaaaaa-0000-4000-8000-000000000020", "storage", ["OpaqueRef:p20"]),
        "OpaqueRef:n-v20b": net("aaaaaaaa-0000-4000-8000-000000000021", "backup", ["OpaqueRef:p21"]),
        "OpaqueRef:n-v30": net("aaaaaaaa-0000-4000-8000-000000000030", "dmz", ["OpaqueRef:p30"]),
        "OpaqueRef:n-priv": net("aaaaaaaa-0000-4000-8000-000000000099", "dmz", []),  # private: no PIF
        "OpaqueRef:n-eth1": net("aaaaaaaa-0000-4000-8000-000000000002", "eth1 net", ["OpaqueRef:p2"]),
    }
    pifs = {
        "OpaqueRef:p1": pif("OpaqueRef:n-mgmt", -1, management=True),
        "OpaqueRef:p1b": pif("OpaqueRef:n-eth1", -1, host="OpaqueRef:host-b", management=True),
        "OpaqueRef:p2": pif("OpaqueRef:n-eth1", -1),
        "OpaqueRef:p20": pif("OpaqueRef:n-v20", 20),
        "OpaqueRef:p21": pif("OpaqueRef:n-v20b", 20),
        "OpaqueRef:p30": pif("OpaqueRef:n-v30", 30),
    }
    return pool_view(networks, pifs)


def vif(uuid=None, name=None, vlan=-1):
    return {"device": "0", "$network$uuid": uuid, "$network$name_label": name, "$network$VLAN": vlan}


def test_vif_goes_to_the_network_with_the_same_uuid_first(pool):
    assert map_vif_network(vif("aaaaaaaa-0000-4000-8000-000000000021", "whatever", 99), pool) == (
        "OpaqueRef:n-v20b",
        "uuid",
    )


def test_then_to_the_same_name_on_the_same_vlan(pool):
    assert map_vif_network(vif("gone", "backup", 20), pool) == ("OpaqueRef:n-v20b", "name")
    # 'dmz' exists on VLAN 30 and as a private network: the VLAN decides, the PIF-less one is never picked
    assert map_vif_network(vif("gone", "dmz", 30), pool) == ("OpaqueRef:n-v30", "name")
    assert map_vif_network(vif("gone", "dmz", -1), pool) == ("OpaqueRef:n-mgmt", "default")


def test_then_to_another_network_of_a_tagged_vlan(pool):
    assert map_vif_network(vif("gone", "renamed", 20), pool) == ("OpaqueRef:n-v20b", "vlan")  # first by name


def test_else_to_the_master_management_network(pool):
    assert map_vif_network(vif("gone", "renamed", 77), pool) == ("OpaqueRef:n-mgmt", "default")
    assert map_vif_network(vif("gone", "renamed", -1), pool) == ("OpaqueRef:n-mgmt", "default")
    # XO metadata of a network without PIF has no $network$VLAN at all
    assert map_vif_network({"device": "0", "$network$name_label": "eth1 net"}, pool) == ("OpaqueRef:n-eth1", "name")


def test_default_network_is_the_masters_management_one_even_when_another_host_lists_first(pool):
    pool._pifs = {"OpaqueRef:p1b": pool.pifs["OpaqueRef:p1b"], **pool.pifs}
    assert pool.default_network() == "OpaqueRef:n-mgmt"


# -- space --------------------------------------------------------------------------------------
class _Backup:
    mode = "delta"
    metadata = {"vm": {}}


def space_plan(pool, disks, mode="delta", xva_size=0):
    backup = _Backup()
    backup.mode = mode
    return RestorePlan(backup, "x", "OpaqueRef:sr", disks, [], xva_size, [], pool=pool)


def disk(ref, virtual, data, sr="OpaqueRef:sr"):
    return DiskPlan(ref, {}, "0", ref, virtual, sr, data=data)


@pytest.mark.parametrize(
    ("sr_type", "size", "used", "allocated", "fits"),
    [
        ("ext", 100 << 20, 80 << 20, 10 << 30, True),  # thin: 20 MiB free, 16 MiB of data
        ("ext", 100 << 20, 90 << 20, 0, False),  # thin: 10 MiB free
        ("lvm", 10 << 30, 0, 9 << 30, False),  # thick: the 2 GiB of virtual size must fit, not the data
        ("lvm", 10 << 30, 9 << 30, 7 << 30, True),
    ],
)
def test_space_is_judged_thin_or_thick(sr_type, size, used, allocated, fits):
    pool = PoolView(client=None)
    pool._srs = {"OpaqueRef:sr": {"uuid": "u", "name_label": "SR1", "type": sr_type, "physical_size": str(size),
                                  "physical_utilisation": str(used), "virtual_allocation": str(allocated)}}  # fmt: skip
    plan = space_plan(pool, [disk("a", 1 << 30, 10 << 20), disk("b", 1 << 30, 6 << 20), disk("c", 1 << 40, 1, None)])
    if fits:
        (row,) = check_space(pool, plan)
        assert row["needed"] == ((2 << 30) if sr_type == "lvm" else (16 << 20))
    else:
        with pytest.raises(InsufficientSpaceError) as e:
            check_space(pool, plan)
        assert "SR 'SR1' has" in str(e.value) and "Nothing was created" in str(e.value)

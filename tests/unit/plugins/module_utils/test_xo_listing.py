"""cache.json.gz and the listing of backups on a real (file) remote, ours and XO-written alike."""

import gzip
import json

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._xo_cache import (
    decode_cache,
    encode_cache,
    read_cache,
    update_cache,
    write_cache,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import (
    backup_id,
    cache_path,
    vhd_relative_path,
    xva_path,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_listing import list_backups, list_vm_backups, list_vm_uuids
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    MetadataError,
    build_delta_metadata,
    build_full_metadata,
    dump_metadata,
)

VM1 = "11111111-1111-4111-8111-111111111111"
VM2 = "22222222-2222-4222-8222-222222222222"
JOB = "4c9a7e1b-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
SCHED = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
LIVE_VDI = "9d2f1e3c-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
T0 = 1718676003123  # 2024-06-18T02:00:03.123Z
DAY = 86_400_000


def full(vm, ts, size=4096):
    return build_full_metadata(job_id=JOB, schedule_id=SCHED, timestamp=ts, vm={"uuid": vm, "name_label": "web"},
                               vm_snapshot={"uuid": "snap"}, size=size, tags=["daily=2024-06-18"])  # fmt: skip


def delta(vm, ts, differencing=True):
    vhd = vhd_relative_path(JOB, LIVE_VDI, ts)
    return build_delta_metadata(
        job_id=JOB, schedule_id=SCHED, timestamp=ts, vm={"uuid": vm, "name_label": "db"}, vm_snapshot={"uuid": "s"},
        vdis={"OpaqueRef:a1": {"uuid": "snapvdi", "$snapshot_of$uuid": LIVE_VDI, "$SR$uuid": "sr"}},
        vbds={"OpaqueRef:b1": {"VDI": "OpaqueRef:a1", "userdevice": "0"}}, vifs={}, vhds={"OpaqueRef:a1": vhd},
        is_vhd_differencing={"OpaqueRef:a1": differencing}, size=777,
    )  # fmt: skip


def xo_written(vm, ts):
    # As XO's IncrementalRemoteWriter leaves it: its own key order, XO-only extras, no tags.
    md = delta(vm, ts)
    del md["tags"]
    return {"vm": md.pop("vm"), "mode": "delta", "xoExtra": {"from": "xo"}, **md}


@pytest.fixture
def store(tmp_path):
    with open_remote(f"file://{tmp_path}") as s:
        yield s


def put(store, vm, ts, md):
    store.write_bytes(backup_id(vm, ts), dump_metadata(md))
    return backup_id(vm, ts)


def populate(store):
    put(store, VM1, T0, full(VM1, T0))
    store.write_bytes(xva_path(VM1, T0), b"x" * 4096)
    put(store, VM1, T0 + DAY, full(VM1, T0 + DAY))
    put(store, VM2, T0, delta(VM2, T0, differencing=False))
    put(store, VM2, T0 + DAY, xo_written(VM2, T0 + DAY))
    store.mkdir(f"xo-vm-backups/{VM1}.lock")  # a running backup's lock
    store.write_bytes("xo-vm-backups/.queue/clean-vm/20240618T020003Z-abc", VM1.encode())
    store.write_bytes(f"xo-vm-backups/{VM2}/.1718676003123.20240620T020003Z.json", b"{half")  # a temporary


def test_cache_round_trip_in_xo_format(store):
    bid = backup_id(VM1, T0)
    data = encode_cache({bid: full(VM1, T0)})
    raw = json.loads(gzip.decompress(data))
    key = "/" + bid
    assert list(raw) == [key]
    assert raw[key]["_filename"] == key and raw[key]["id"] == key
    assert {k: v for k, v in raw[key].items() if k not in ("_filename", "id")} == full(VM1, T0)
    assert decode_cache(data) == {bid: full(VM1, T0)}
    assert gzip.compress(json.dumps(raw).encode(), mtime=0)[:4] == data[:4]  # plain gzip, no timestamp
    assert read_cache(store, VM1) is None
    write_cache(store, VM1, {bid: full(VM1, T0)})
    assert read_cache(store, VM1) == {bid: full(VM1, T0)}


def test_cache_written_by_xo_is_read(store):
    bid = backup_id(VM2, T0)
    key = "/" + bid
    xo_cache = {key: {**xo_written(VM2, T0), "_filename": key, "id": key}}
    store.write_bytes(cache_path(VM2), gzip.compress(json.dumps(xo_cache).encode()))
    assert read_cache(store, VM2) == {bid: xo_written(VM2, T0)}


@pytest.mark.parametrize(
    ("content", "message"),
    # gzip headers carry the time: name the cases by the expected message so xdist workers agree.
    ids=lambda v: v if isinstance(v, str) else "cache",
    argvalues=[
        (b"not gzip", "not a gzip-compressed JSON cache"),
        (gzip.compress(b"[1]"), "must be a JSON object"),
        (gzip.compress(b'{"/elsewhere/x.json": {}}'), "is not a backup metadata path"),
        (gzip.compress(b'{"/xo-vm-backups/v/20240618T020003Z.json": [1]}'), "is not a JSON object"),
    ],
)
def test_unusable_cache_is_ignored(store, content, message):
    with pytest.raises(MetadataError, match=message):
        decode_cache(content)
    store.write_bytes(cache_path(VM1), content)
    assert read_cache(store, VM1) is None  # XO regenerates it in that case


def test_update_cache_adds_removes_and_regenerates(store):
    a = put(store, VM1, T0, full(VM1, T0))
    b = put(store, VM1, T0 + DAY, full(VM1, T0 + DAY))
    assert set(update_cache(store, VM1)) == {a, b}  # no cache yet: rebuilt from the metadata files
    c = put(store, VM1, T0 + 2 * DAY, full(VM1, T0 + 2 * DAY))
    update_cache(store, VM1, add={c: full(VM1, T0 + 2 * DAY)}, remove=["/" + a])
    assert set(read_cache(store, VM1)) == {b, c}
    store.write_bytes(cache_path(VM1), b"garbage")
    assert set(update_cache(store, VM1, remove=[b])) == {a, c}


def test_listing_every_vm(store):
    populate(store)
    assert list_vm_uuids(store) == [VM1, VM2]
    listing = list_backups(store)
    assert listing.warnings == []
    assert sorted(listing.backups) == [VM1, VM2]
    first, second = listing.backups[VM1]
    assert first.to_dict() == {
        "id": f"xo-vm-backups/{VM1}/20240618T020003Z.json",
        "vm_uuid": VM1,
        "vm_name": "web",
        "timestamp": T0,
        "date": "2024-06-18T02:00:03.123Z",
        "mode": "full",
        "size": 4096,
        "job_id": JOB,
        "schedule_id": SCHED,
        "tags": ["daily=2024-06-18"],
        "with_memory": False,
        "xva": f"xo-vm-backups/{VM1}/20240618T020003Z.xva",
    }
    assert second.date == "2024-06-19T02:00:03.123Z"
    ours, xo = listing.backups[VM2]
    assert ours.mode == xo.mode == "delta"
    assert ours.vhds == {"OpaqueRef:a1": f"xo-vm-backups/{VM2}/vdis/{JOB}/{LIVE_VDI}/20240618T020003Z.vhd"}
    assert xo.vhds == {"OpaqueRef:a1": f"xo-vm-backups/{VM2}/vdis/{JOB}/{LIVE_VDI}/20240619T020003Z.vhd"}
    assert ours.differencing == {"OpaqueRef:a1": False} and xo.differencing == {"OpaqueRef:a1": True}
    assert xo.tags == [] and xo.metadata["xoExtra"] == {"from": "xo"}
    assert "xva" not in xo.to_dict() and xo.to_dict()["vhds"] == xo.vhds
    assert [b.id for b in listing.all()] == [first.id, ours.id, second.id, xo.id]


def test_listing_one_vm_and_absent_vm(store):
    populate(store)
    only = list_backups(store, VM2)
    assert list(only.backups) == [VM2] and len(only.backups[VM2]) == 2
    assert list_backups(store, "33333333-3333-4333-8333-333333333333").backups == {
        "33333333-3333-4333-8333-333333333333": []
    }
    with open_remote(f"file://{store.root}/xo-vm-backups/{VM1}") as elsewhere:  # a remote without backups
        assert list_backups(elsewhere).backups == {}


def test_invalid_metadata_is_reported_not_fatal(store):
    populate(store)
    store.write_bytes(f"xo-vm-backups/{VM1}/20240620T020003Z.json", b'{"mode": "full"}')
    store.write_bytes(f"xo-vm-backups/{VM1}/20240621T020003Z.json", b"{truncated")
    warnings = []
    found = list_vm_backups(store, VM1, warnings=warnings)
    assert len(found) == 2
    assert len(warnings) == 2
    warnings.sort()
    assert warnings[0].startswith(f"xo-vm-backups/{VM1}/20240620T020003Z.json: missing key 'timestamp'")
    assert warnings[1].startswith(f"xo-vm-backups/{VM1}/20240621T020003Z.json: not valid JSON")


def test_metadata_of_an_unknown_shape_stays_in_the_cache_and_is_reported(store):
    """Xen Orchestra lists backups from the cache: an entry we cannot read (another XO version's) stays in it
    when we rewrite it, and our listing reports it instead of dropping the whole cache."""
    populate(store)
    odd = {**full(VM1, T0 + 5 * DAY), "scheduleId": 7}
    odd_id = put(store, VM1, T0 + 5 * DAY, odd)
    assert set(update_cache(store, VM1)) == {backup_id(VM1, T0), backup_id(VM1, T0 + DAY), odd_id}
    assert decode_cache(store.read_bytes(cache_path(VM1)))[odd_id] == odd
    c = put(store, VM1, T0 + 6 * DAY, full(VM1, T0 + 6 * DAY))
    update_cache(store, VM1, add={c: full(VM1, T0 + 6 * DAY)})
    assert odd_id in read_cache(store, VM1)
    warnings = []
    assert [b.id for b in list_vm_backups(store, VM1, warnings=warnings)] == [backup_id(VM1, T0),
                                                                             backup_id(VM1, T0 + DAY), c]  # fmt: skip
    assert len(warnings) == 1 and warnings[0].startswith(f"{odd_id}: key 'scheduleId' must be"), warnings


def test_cache_is_used_only_when_it_covers_the_metadata_files(store):
    populate(store)
    bids = [backup_id(VM1, T0), backup_id(VM1, T0 + DAY)]
    stale = {bid: {**full(VM1, T0 + i * DAY), "size": 1} for i, bid in enumerate(bids)}
    write_cache(store, VM1, stale)
    assert [b.size for b in list_vm_backups(store, VM1)] == [1, 1]  # served from the cache, as XO does
    assert [b.size for b in list_vm_backups(store, VM1, use_cache=False)] == [4096, 4096]
    put(store, VM1, T0 + 2 * DAY, full(VM1, T0 + 2 * DAY))  # written by someone who did not update the cache
    assert [b.size for b in list_vm_backups(store, VM1)] == [4096, 4096, 4096]
    assert store.read_bytes(cache_path(VM1)) == encode_cache(stale)  # listing never writes

"""Backup snapshots tagged as Xen Orchestra tags them, against the simulator over HTTPS.

The tags are set with as few round trips as XAPI allows; what the pool holds afterwards and what the
engine keeps in memory (used later for the metadata and the next base) must agree.
"""

import pytest
from xo_fixtures import connect

from ansible_collections.xapi.proxy.plugins.module_utils import _backup_snapshots as snapshots
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import XapiError

JOB, SCHEDULE = "5f0c3d52-5a9e-4a3e-9b53-0d6c2a6f1e11", "0e1b9bde-7a55-4c36-9e0f-8b7e3c58f2d2"


class Counting:
    """Our XAPI client, with the methods it was asked to call written down."""

    def __init__(self, client):
        self.client = client
        self.calls = []

    def call(self, method, *args, **kwargs):
        self.calls.append(method)
        return self.client.call(method, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
def client(tiny):
    c = connect(tiny)
    yield Counting(c)
    c.logout()


def disk_vdis(client, vm_ref):
    vdis = []
    for vbd in client.call("VM.get_VBDs", vm_ref):
        rec = client.call("VBD.get_record", vbd)
        if rec["type"] == "Disk":
            vdis.append(rec["VDI"])
    return vdis


def take(client, vm_ref):
    vm = client.call("VM.get_record", vm_ref)
    return snapshots.take(client, vm_ref, vm, JOB, SCHEDULE, "nightly", [], timeout=60, now=1795000000)


def test_a_snapshot_is_tagged_as_xo_does_over_keys_inherited_from_the_vm(client):
    """A VM restored from a backup (or cloned from a backup snapshot) carries ``xo:backup:*`` keys; its
    snapshots inherit them, and XAPI refuses to add a key that exists: they must be replaced."""
    vm_ref = client.call("VM.get_by_name_label", "tiny-01")[0]
    vm_uuid = client.call("VM.get_uuid", vm_ref)
    stale = {
        snapshots.K_JOB: "another-job",
        snapshots.K_EXPORTED: "true",
        snapshots.K_CHAIN: "4",
        snapshots.K_DATETIME: "20200101T00:00:00Z",
    }
    for key, value in stale.items():
        client.call("VM.add_to_other_config", vm_ref, key, value)
        for vdi in disk_vdis(client, vm_ref):
            client.call("VDI.add_to_other_config", vdi, key, value)
    client.calls.clear()

    snap = take(client, vm_ref)

    # The keys read as inherited are removed first (2 on the VM, 2 per disk), the export marks dropped
    # (2 each): no add is refused and retried.
    assert client.calls.count("VM.add_to_other_config") == 5
    assert client.calls.count("VM.remove_from_other_config") == 4
    assert client.calls.count("VDI.add_to_other_config") == 12
    assert client.calls.count("VDI.remove_from_other_config") == 8
    on_pool = client.call("VM.get_record", snap.ref)
    expected = {
        snapshots.K_DATETIME: "20261118T11:06:40Z",
        snapshots.K_JOB: JOB,
        snapshots.K_SCHEDULE: SCHEDULE,
        snapshots.K_VM: vm_uuid,
        snapshots.K_QCOW2_FIX: "true",
    }
    assert {k: on_pool["other_config"].get(k) for k in expected} == expected
    # The inherited export marks describe another snapshot: until this one is exported, it must not look
    # exported (a killed run would otherwise leave it as the next incremental base).
    assert snapshots.K_EXPORTED not in on_pool["other_config"]
    assert snapshots.K_CHAIN not in on_pool["other_config"]
    assert on_pool["name_label"] == "[XO Backup nightly] tiny-01"
    assert on_pool["name_description"] == "Backup snapshot of tiny-01 (20261118T11:06:40Z)"
    assert on_pool["is_a_template"] is False
    # The VM's migration is blocked while it is backed up; its snapshot, exported and restored, must not be.
    assert client.call("VM.get_blocked_operations", vm_ref) == dict.fromkeys(
        snapshots.MIGRATE_OPS, snapshots.MIGRATE_REASON
    )
    assert on_pool["blocked_operations"] == {}
    assert snap.record == on_pool  # what the metadata's vmSnapshot and the next base are built from
    assert len(snap.disks) == 2
    for disk in snap.disks.values():
        vdi_record = client.call("VDI.get_record", disk["ref"])
        vdi_config = vdi_record["other_config"]
        assert {k: vdi_config.get(k) for k in expected} == expected
        assert vdi_config[snapshots.K_CONTENT] == disk["record"]["uuid"]
        assert snapshots.K_EXPORTED not in vdi_config
        assert disk["record"] == vdi_record

    snapshots.mark_exported(client, snap, 3)
    on_pool = client.call("VM.get_other_config", snap.ref)
    assert (on_pool[snapshots.K_EXPORTED], on_pool[snapshots.K_CHAIN]) == ("true", "3")
    assert snap.record["other_config"] == on_pool
    for disk in snap.disks.values():
        assert disk["record"]["other_config"] == client.call("VDI.get_other_config", disk["ref"])


def test_a_fresh_snapshot_takes_one_call_per_key(client):
    vm_ref = client.call("VM.get_by_name_label", "tiny-01")[0]
    client.calls.clear()
    snap = take(client, vm_ref)
    # After the snapshot task: one read of the snapshot and its disks, the migration block it copied from
    # its VM lifted, then 5 keys on the VM, its name, and 6 keys on each of its 2 disks, each one add (XO's
    # way removes each key first: 17 calls more).
    calls = client.calls
    after_task = calls[calls.index("VM.get_record", calls.index("Async.VM.snapshot")) :]
    assert after_task == [
        "VM.get_record",
        *["VBD.get_record", "VDI.get_record", "VDI.get_uuid"] * 2,
        *["VM.remove_from_blocked_operations"] * 2,
        *["VM.add_to_other_config"] * 5,
        "VM.set_name_label",
        "VM.set_name_description",
        "VM.set_is_a_template",
        *["VDI.add_to_other_config"] * 12,
    ]
    client.calls.clear()
    snapshots.mark_exported(client, snap, 0)
    assert sorted(client.calls) == ["VDI.add_to_other_config"] * 4 + ["VM.add_to_other_config"] * 2


def test_a_key_added_since_the_map_was_read_is_replaced(client):
    """The map the engine holds may be stale: XAPI's refusal (MAP_DUPLICATE_KEY) is the signal. (The
    refusal's message also looks the VM's name up, outside the client calls counted here.)"""
    vm_ref = client.call("VM.get_by_name_label", "tiny-01")[0]
    client.call("VM.add_to_other_config", vm_ref, "xo:backup:job", "behind-our-back")
    current = {}
    client.calls.clear()
    snapshots._set_key(client, "VM", vm_ref, current, "xo:backup:job", JOB)
    assert client.calls == ["VM.add_to_other_config", "VM.remove_from_other_config", "VM.add_to_other_config"]
    assert client.call("VM.get_other_config", vm_ref)["xo:backup:job"] == JOB
    assert current == {"xo:backup:job": JOB}


def test_other_failures_are_not_mistaken_for_an_existing_key(client):
    with pytest.raises(XapiError) as e:
        snapshots._set_key(client, "VM", "OpaqueRef:gone", {}, "xo:backup:job", JOB)
    assert e.value.code == "HANDLE_INVALID"
    assert client.calls == ["VM.add_to_other_config"]

"""Backup snapshots on the pool, named and tagged exactly as Xen Orchestra does.

Keeping XO's ``other_config`` keys means a pool moved from XO to this collection (or back) keeps
its incremental bases: each side finds the other's snapshots (xo-backups.md §2-§3).
"""

from __future__ import annotations

import contextlib
import time

from ._xapi_errors import XapiError
from ._xapi_tasks import run_async

NULL_REF = "OpaqueRef:NULL"
TEMP_NAME = "xo-backup-temp-snapshot-name"
K_DATETIME = "xo:backup:datetime"
K_JOB = "xo:backup:job"
K_SCHEDULE = "xo:backup:schedule"
K_VM = "xo:backup:vm"
K_EXPORTED = "xo:backup:exported"
K_CHAIN = "xo:backup:deltaChainLength"
K_CONTENT = "xo:backup:contentKey"
K_QCOW2_FIX = "xo:backup:includeNonNbdQcow2Fix"
K_COPY_OF = "xo:copy_of"
BACKUP_KEYS = (K_DATETIME, K_JOB, K_SCHEDULE, K_VM, K_EXPORTED, K_CHAIN, K_QCOW2_FIX)
MIGRATE_OPS = ("pool_migrate", "migrate_send")
MIGRATE_REASON = "VM backup in progress"


def snapshot_datetime(ts):
    """``xo:backup:datetime`` for a POSIX timestamp: ``%Y%m%dT%H:%M:%SZ`` in UTC."""
    return time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(ts))


def snapshot_name(job_name, vm_name):
    return f"[XO Backup {job_name}] {vm_name}"


class Snapshot:
    """One backup snapshot: the snapshot VM and its disk VDIs keyed by the live VDI they copy, and the
    memory image (``suspend``: {"ref", "record"}) when the VM was suspended."""

    def __init__(self, ref, record, disks, suspend=None):
        self.ref = ref
        self.record = record
        self.disks = disks  # live VDI uuid -> {"ref", "record", "vbd"}
        self.suspend = suspend

    @property
    def uuid(self):
        return self.record["uuid"]

    @property
    def datetime(self):
        return self.record["other_config"].get(K_DATETIME, "")


def _disks(client, snap_ref, snap_record):
    disks = {}
    for vbd in snap_record["VBDs"]:
        vbd_rec = client.call("VBD.get_record", vbd)
        if vbd_rec["type"] != "Disk" or vbd_rec["VDI"] == NULL_REF:
            continue
        vdi_rec = client.call("VDI.get_record", vbd_rec["VDI"])
        live = vdi_rec.get("snapshot_of")
        live_uuid = None
        if live and live != NULL_REF:
            with contextlib.suppress(XapiError):  # the live disk may have been destroyed since
                live_uuid = client.call("VDI.get_uuid", live)
        disks[live_uuid or vdi_rec["uuid"]] = {"ref": vbd_rec["VDI"], "record": vdi_rec, "vbd": vbd_rec, "vbd_ref": vbd}
    return disks


def load(client, snap_ref):
    record = client.call("VM.get_record", snap_ref)
    image, suspend = record.get("suspend_VDI") or NULL_REF, None
    if image != NULL_REF:
        with contextlib.suppress(XapiError):  # gone (a base's image nobody needs): the disks are what counts
            suspend = {"ref": image, "record": client.call("VDI.get_record", image)}
    return Snapshot(snap_ref, record, _disks(client, snap_ref, record), suspend)


def take(client, vm_ref, vm_record, job, schedule_id, job_name, ignore_vdis, timeout, now=None):
    """Snapshot ``vm_ref`` leaving out ``ignore_vdis`` ([NOBAK] disks), then tag it as XO does."""
    now = time.time() if now is None else now
    stamp = snapshot_datetime(now)
    _block_migration(client, vm_ref)
    ref = run_async(client, "VM.snapshot", vm_ref, TEMP_NAME, list(ignore_vdis), timeout=timeout)
    try:
        # Read first: the maps the snapshot inherited say which keys need removing before they are set.
        snap = load(client, ref)
        _drop_inherited_marks(client, snap)  # before our job's keys: never our job's and "exported" at once
        _drop_inherited_block(client, snap)
        keys = {K_DATETIME: stamp, K_JOB: job, K_SCHEDULE: schedule_id, K_VM: vm_record["uuid"], K_QCOW2_FIX: "true"}
        for key, value in keys.items():
            _set_key(client, "VM", ref, snap.record["other_config"], key, value)
        names = {
            "name_label": snapshot_name(job_name, vm_record["name_label"]),
            "name_description": f"Backup snapshot of {vm_record['name_label']} ({stamp})",
            "is_a_template": False,
        }
        for field, value in names.items():
            client.call(f"VM.set_{field}", ref, value)
        snap.record.update(names)
        for disk in snap.disks.values():
            for key, value in {**keys, K_CONTENT: disk["record"]["uuid"]}.items():
                _set_key(client, "VDI", disk["ref"], disk["record"]["other_config"], key, value)
        return snap
    except BaseException:
        with contextlib.suppress(XapiError):
            destroy(client, ref)
        raise


def _drop_inherited_marks(client, snap):
    """Remove export marks the snapshot copied from its VM (say, a VM cloned from a backup snapshot):
    they describe another snapshot's export. Left in place, a run killed before the transfer ends would
    leave a snapshot that looks exported, kept as the next incremental base."""
    objects = [("VM", snap.ref, snap.record["other_config"])]
    objects += [("VDI", d["ref"], d["record"]["other_config"]) for d in snap.disks.values()]
    for cls, ref, current in objects:
        for key in (K_EXPORTED, K_CHAIN):
            if key in current:
                client.call(f"{cls}.remove_from_other_config", ref, key)
                del current[key]


def _drop_inherited_block(client, snap):
    """Unblock migration on the snapshot: it copied the block this run put on its VM, and an XVA export
    of it would carry the block into every VM restored from it."""
    blocked = snap.record.get("blocked_operations") or {}
    for op in MIGRATE_OPS:
        if blocked.get(op) == MIGRATE_REASON:
            client.call("VM.remove_from_blocked_operations", snap.ref, op)
            del blocked[op]


def _set_key(client, cls, ref, current, key, value):
    """Set ``key`` in the object's ``other_config``, whose content was last read as ``current`` (updated).

    ``add_to_other_config`` refuses a key that exists, so XO removes each key before adding it: two
    round trips per key. Most keys are new on a fresh snapshot; they take one, and a key that appeared
    since ``current`` was read is caught by XAPI's refusal and handled the long way.
    """
    if key in current:
        with contextlib.suppress(XapiError):
            client.call(f"{cls}.remove_from_other_config", ref, key)
        client.call(f"{cls}.add_to_other_config", ref, key, value)
    else:
        try:
            client.call(f"{cls}.add_to_other_config", ref, key, value)
        except XapiError as e:
            if e.code != "MAP_DUPLICATE_KEY":
                raise
            client.call(f"{cls}.remove_from_other_config", ref, key)
            client.call(f"{cls}.add_to_other_config", ref, key, value)
    current[key] = value


def _block_migration(client, vm_ref):
    # A VM moving to another host mid-export would make xapi answer for it from elsewhere.
    for op in MIGRATE_OPS:
        with contextlib.suppress(XapiError):
            client.call("VM.add_to_blocked_operations", vm_ref, op, MIGRATE_REASON)


def unblock_migration(client, vm_ref):
    blocked = client.call("VM.get_blocked_operations", vm_ref)
    for op in MIGRATE_OPS:
        if blocked.get(op) == MIGRATE_REASON:
            with contextlib.suppress(XapiError):
                client.call("VM.remove_from_blocked_operations", vm_ref, op)


def mark_exported(client, snap, chain_length):
    """After a complete transfer: the snapshot may now serve as the next incremental base."""
    values = {K_EXPORTED: "true", K_CHAIN: str(chain_length)}
    for key, value in values.items():
        _set_key(client, "VM", snap.ref, snap.record["other_config"], key, value)
        for disk in snap.disks.values():
            _set_key(client, "VDI", disk["ref"], disk["record"]["other_config"], key, value)


def destroy(client, snap_ref):
    """Destroy a snapshot VM and the VDIs only it uses (as XO's ``VM_destroy(deleteDisks)``)."""
    record = client.call("VM.get_record", snap_ref)
    vdis = []
    for vbd in record["VBDs"]:
        with contextlib.suppress(XapiError):
            vbd_rec = client.call("VBD.get_record", vbd)
            if vbd_rec["type"] == "Disk" and vbd_rec["VDI"] != NULL_REF:
                vdis.append(vbd_rec["VDI"])
    image = record.get("suspend_VDI") or NULL_REF
    if image != NULL_REF:
        vdis.append(image)  # the snapshot of a suspended VM has its own memory image: VM.destroy leaves it
    client.call("VM.destroy", snap_ref)
    for vdi in vdis:
        with contextlib.suppress(XapiError):
            if not client.call("VDI.get_VBDs", vdi):
                client.call("VDI.destroy", vdi)


def job_snapshots(client, vm_record, job):
    """This job's snapshots of the VM, oldest first (by ``xo:backup:datetime``)."""
    out = []
    for ref in vm_record["snapshots"]:
        with contextlib.suppress(XapiError):
            rec = client.call("VM.get_record", ref)
            if rec["other_config"].get(K_JOB) == job:
                out.append((ref, rec))
    out.sort(key=lambda item: item[1]["other_config"].get(K_DATETIME, ""))
    return out


def leftovers(client, vm_record):
    """Snapshots an interrupted run left under the temporary name."""
    found = []
    for ref in vm_record["snapshots"]:
        with contextlib.suppress(XapiError):
            if client.call("VM.get_name_label", ref) == TEMP_NAME:
                found.append(ref)
    return found


def base_snapshot(client, vm_record, job):
    """The newest exported snapshot of this job: the incremental base candidate (or ``None``)."""
    live_vdis = set()
    for vbd in vm_record["VBDs"]:
        with contextlib.suppress(XapiError):
            vdi = client.call("VBD.get_VDI", vbd)
            if vdi != NULL_REF:
                live_vdis.add(vdi)
    for ref, rec in reversed(job_snapshots(client, vm_record, job)):
        oc = rec["other_config"]
        if oc.get(K_EXPORTED) != "true" or K_COPY_OF in oc:
            continue
        snap = load(client, ref)
        if any(d["record"].get("snapshot_of") in live_vdis for d in snap.disks.values()):
            return snap
    return None


def to_remove(snapshots, retention, schedule, keep=()):
    """Refs of ``schedule``'s snapshots beyond its newest ``retention``, sparing ``keep``.

    ``snapshots`` are ``(ref, record)`` oldest first, as :func:`job_snapshots` returns them. As in Xen
    Orchestra, each schedule keeps as many snapshots as its own settings say: a run knows only its own
    schedule's count, so it leaves the other schedules' snapshots to their runs.
    """
    mine = [ref for ref, rec in snapshots if rec["other_config"].get(K_SCHEDULE) == schedule]
    return [r for r in mine[: max(0, len(mine) - retention)] if r not in keep]

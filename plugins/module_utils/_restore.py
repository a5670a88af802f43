"""Restore a VM backup (ours or Xen Orchestra's) into a pool, as Xen Orchestra's restore does (xo-backups.md §4).

* Full backups: the stored XVA goes to ``PUT /import?sr_id=…`` byte for byte (compressed or not) with a
  Content-Length, straight from the remote; its hash is checked on the way against ``.xva.checksum`` and
  the upload is aborted before its last piece when it does not match, so XAPI never completes a damaged
  import.
* Incremental backups: the VM is created from the metadata with ``start`` blocked, the VDIs and VBDs
  from their records, each disk's VHD chain is sent flattened to ``PUT /import_raw_vdi?format=vhd``,
  VIFs are mapped to networks (see ``_restore_plan.map_vif_network``), VTPMs recreated; then the VM is
  unblocked.
* Afterwards: named ``"<name> (<timestamp>)"`` unless told otherwise, tagged ``restored from backup``,
  described with its source, Xen Orchestra's backup keys removed.

Whatever fails, the VM, VBDs, VIFs and VDIs created so far are removed and the error says why. A
restored VM records the backup it came from in ``other_config``, which makes a second restore of the
same backup under the same name a no-op unless forced.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from datetime import datetime, timezone

from ._backup_pipeline import BufferPool, WriterThread
from ._backup_snapshots import MIGRATE_REASON
from ._restore_errors import ChecksumMismatchError, RestoreError, RestoreInputError, VmStartError
from ._restore_plan import NULL_REF, check_xva_size, plan_restore, read_xva_checksum
from ._storage import StorageError
from ._vhd_errors import VhdError
from ._xapi_errors import XapiError
from ._xapi_http import READ_SIZE, put_stream
from ._xapi_tasks import run_async
from ._xo_checksum import XvaChecksum
from ._xo_layout import format_filename_date

RESTORED_TAG = "restored from backup"
# Which backup a VM was restored from (the backup id); how a second restore of it is recognised.
RESTORED_FROM_KEY = "xapi.proxy:restored_from"
COPY_OF_KEY = "xo:copy_of"
BACKUP_KEY_PREFIX = "xo:backup:"
BASE_DELTA_KEYS = ("xo:base_delta", "xo:base_delta_vdi")
IMPORTING = "[Importing…] "
IMPORT_BLOCK = "Importing…"
START_TIMEOUT = 600
# Reasons a backup blocks migration with (ours, Xen Orchestra's): a snapshot, and so its XVA or metadata, may
# carry them, but they are about the backup, not the VM, so the restored VM must not keep them.
BACKUP_BLOCK_REASONS = frozenset((MIGRATE_REASON, "VM migration is blocked during backup"))
# Keys xapi's VM.set_bios_strings accepts; empty values are left out, as xapi refuses them.
BIOS_STRINGS_KEYS = frozenset(
    (
        "bios-vendor", "bios-version", "system-manufacturer", "system-product-name", "system-version",
        "system-serial-number", "enclosure-asset-tag", "baseboard-manufacturer", "baseboard-product-name",
        "baseboard-version", "baseboard-serial-number", "baseboard-asset-tag", "baseboard-location-in-chassis",
    )
)  # fmt: skip

# VM.create's constructor fields (xapi's datamodel) and what a record lacking one gets.
_VM_REQUIRED = {
    "user_version": "1",
    "is_a_template": False,
    "affinity": NULL_REF,
    "memory_static_max": None,
    "memory_dynamic_max": None,
    "memory_dynamic_min": None,
    "memory_static_min": None,
    "VCPUs_params": {},
    "VCPUs_max": "1",
    "VCPUs_at_startup": "1",
    "actions_after_shutdown": "destroy",
    "actions_after_reboot": "restart",
    "actions_after_crash": "restart",
    "PV_bootloader": "",
    "PV_kernel": "",
    "PV_ramdisk": "",
    "PV_args": "",
    "PV_bootloader_args": "",
    "PV_legacy_args": "",
    "HVM_boot_policy": "",
    "HVM_boot_params": {},
    "platform": {},
    "PCI_bus": "",
    "other_config": {},
    "recommendations": "",
}
_VM_OPTIONAL = (
    "name_description", "xenstore_data", "ha_restart_priority", "tags", "start_delay", "shutdown_delay",
    "order", "version", "generation_id", "hardware_platform_version", "has_vendor_device", "reference_label",
    "domain_type", "NVRAM", "actions_after_softreboot",
)  # fmt: skip
# Only a VM created Suspended needs these.
_VM_SUSPENDED = ("last_booted_record", "last_boot_CPU_flags")


def _wire(value):
    """int64 as decimal text (Python's XML-RPC cannot send ints above 2^31); everything else as is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return str(value)


def _other_config(record):
    return {str(k): str(v) for k, v in (record.get("other_config") or {}).items()}


def _without_backup_blocks(blocked):
    return {str(op): str(why) for op, why in (blocked or {}).items() if why not in BACKUP_BLOCK_REASONS}


def _without_backup_keys(config):
    return {k: v for k, v in config.items() if not k.startswith(BACKUP_KEY_PREFIX) and k not in BASE_DELTA_KEYS}


# -- checksum-verified XVA stream -------------------------------------------------------------
class VerifiedReader:
    """The stored XVA in pieces for the upload, hashed on the way and checked before its last piece.

    With ``expected`` (a :class:`Checksum`) and ``force`` false, a mismatch raises
    :class:`ChecksumMismatchError` instead of giving the final piece, so the upload is cut short
    and XAPI discards the import. ``mismatch`` tells afterwards whether the digest differed.

    Three threads share the work: a helper reads the file into a few reused buffers (``depth``
    pieces of ``piece`` bytes: memory stays flat whatever the size), another hashes each piece, and
    the caller sends it (:meth:`pieces` hands out views of the buffers, no copy) while it is being
    hashed; only the last piece waits for the digest. hashlib and TLS release the GIL for large
    buffers, so the check costs CPU time but little wall time. Call :meth:`close` when done (or when
    the upload failed).
    """

    _EOF = object()

    def __init__(self, stream, size, expected=None, force=False, name="XVA", piece=READ_SIZE, depth=6):
        self.stream = stream
        self.size = size
        self.expected = expected
        self.force = force
        self.name = name
        self.piece = piece
        self.done = 0  # bytes handed to the caller
        self.mismatch = False
        self._hash = XvaChecksum(expected.algorithm) if expected is not None else None
        self._pool = BufferPool(depth, piece)
        self._hasher = WriterThread(depth, "xapi-proxy-hash") if expected is not None else None
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = None
        self._pending = b""
        self._chunks = None

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _acquire(self, users):
        while not self._stop.is_set():
            got = self._pool.acquire(users, timeout=0.2)
            if got is not None:
                return got
        return None

    def _fill(self, view):
        """Read into all of ``view`` (the file gives it in one go, other remotes may not)."""
        got = 0
        while got < len(view):
            n = self.stream.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def _produce(self):
        read = 0
        users = 1 if self._hasher is None else 2
        try:
            while read < self.size:
                piece = self._acquire(users)
                if piece is None:
                    return
                n = self._fill(piece.view[: min(self.piece, self.size - read)])
                if not n:
                    raise RestoreError(
                        f"{self.name} ended after {read} of its {self.size} bytes while being sent; the remote "
                        "file changed or is truncated."
                    )
                data = piece.view[:n]
                if self._hasher is not None:
                    self._hasher.submit(lambda d=data: self._hash.update(d), piece.release)
                read += n
                if not self._put((piece, data)):
                    return
            self._put(self._EOF)
        except BaseException as e:  # handed to the sending thread, which raises it
            self._put(e)

    def _check(self):
        """Before the last piece goes: wait for the hashing of every piece, compare the digest."""
        if self._hasher is None:
            return
        self._hasher.close()
        actual = self._hash.result
        if actual != self.expected:
            self.mismatch = True
            if not self.force:
                raise ChecksumMismatchError(
                    f"{self.name} does not match its checksum file ({actual.label}, expected "
                    f"{self.expected.hexdigest}): the backup is damaged. The upload was stopped before its end, so "
                    "XAPI discarded it. Set force=true to restore it anyway."
                )

    def pieces(self):
        """The XVA's bytes as views of the reused buffers: each is valid until the next one is asked for."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="xva-reader", daemon=True)
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is self._EOF:
                self._queue.put(item)  # later calls see the end too
                return
            if isinstance(item, BaseException):
                raise item
            piece, data = item
            if self.done + len(data) == self.size:
                self._check()
            self.done += len(data)
            try:
                yield data
            finally:
                piece.release()

    def read(self, n=READ_SIZE):
        """Up to ``n`` bytes as ``bytes`` (a copy; :meth:`pieces` avoids it)."""
        if self._chunks is None:
            self._chunks = self.pieces()
        if not self._pending:
            data = next(self._chunks, None)
            if data is None:
                return b""
            self._pending = bytes(data)
        n = len(self._pending) if n is None or n < 0 else n
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def close(self):
        """Stop the helper threads (the reader may be waiting for a buffer or for room in the queue)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._hasher is not None:
            self._hasher.close()


# -- outcome ------------------------------------------------------------------------------------
class RestoreOutcome:
    """What a restore did (or, in check mode, would do); :meth:`to_dict` is the module result."""

    def __init__(self, backup, plan=None):
        self.backup = backup
        self.plan = plan
        self.vm_ref = None
        self.vm = None
        self.changed = False
        self.already_restored = False
        self.bytes_transferred = 0
        self.checksum = "not applicable"
        self.warnings = []
        self.duration = 0.0

    def to_dict(self):
        b = self.backup
        out = {
            "changed": self.changed,
            "backup": {
                "id": b.id,
                "vm_uuid": b.vm_uuid,
                "vm_name": b.vm_name,
                "timestamp": b.timestamp,
                "date": b.date,
                "mode": b.mode,
                "size": b.size,
            },
            "vm": self.vm,
            "already_restored": self.already_restored,
            "bytes_transferred": self.bytes_transferred,
            "checksum": self.checksum,
            "duration": round(self.duration, 3),
        }
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        return out


def vm_summary(client, ref, record=None):
    rec = record or client.call("VM.get_record", ref)
    return {"uuid": rec.get("uuid"), "name_label": rec.get("name_label"), "power_state": rec.get("power_state")}


def find_restored(client, name, backup_id):
    """``(ref, record)`` of a VM named ``name`` restored from ``backup_id``, or ``None``."""
    for ref in client.call("VM.get_by_name_label", name):
        rec = client.call("VM.get_record", ref)
        if rec.get("is_a_snapshot") or rec.get("is_a_template"):
            continue
        if (rec.get("other_config") or {}).get(RESTORED_FROM_KEY) == backup_id:
            return ref, rec
    return None


def leftover_imports(client, name, backup_id):
    """UUIDs of ``[Importing…] <name>`` VMs restored from ``backup_id``: what a restore that was killed
    (Ansible's async timeout sends SIGKILL) left behind, or one that is running right now."""
    found = []
    for ref in client.call("VM.get_by_name_label", IMPORTING + name):
        rec = client.call("VM.get_record", ref)
        if rec.get("is_a_snapshot") or rec.get("is_a_template"):
            continue
        if (rec.get("other_config") or {}).get(RESTORED_FROM_KEY) == backup_id:
            found.append(rec.get("uuid"))
    return sorted(found)


# -- cleanup ------------------------------------------------------------------------------------
class Created:
    """Objects a restore created, removed again by :meth:`undo` when it fails."""

    def __init__(self, client):
        self.client = client
        self.vm = None
        self.vdis = []
        # Networks XAPI's import created for the imported VM's VIFs (it creates those the pool lacks). They
        # go once no VIF uses them any more: mapped elsewhere, or the VM destroyed (a health check, a failure).
        self.new_networks = set()

    def add_vm_disks(self, vm_ref):
        """Track the VDIs of an imported VM (found through its VBDs)."""
        for vbd in self.client.call("VBD.get_all_records_where", f'field "VM"="{vm_ref}"').values():
            if vbd.get("type") == "Disk" and vbd.get("VDI", NULL_REF) != NULL_REF and vbd["VDI"] not in self.vdis:
                self.vdis.append(vbd["VDI"])

    def undo(self):
        """Remove everything tracked; returns the problems met (each one sentence), empty when all went."""
        problems = []
        call = self.client.call
        if self.vm is not None:
            try:
                if call("VM.get_power_state", self.vm) != "Halted":
                    call("VM.hard_shutdown", self.vm)
                call("VM.destroy", self.vm)  # its VBDs, VIFs and VTPMs go with it
            except XapiError as e:
                problems.append(f"the VM could not be removed ({e})")
        for vdi in self.vdis:
            try:
                call("VDI.destroy", vdi)
            except XapiError as e:
                if e.code != "HANDLE_INVALID":
                    problems.append(f"VDI {vdi} could not be removed ({e})")
        self.vm, self.vdis = None, []
        return problems + self.drop_new_networks()

    def note_new_networks(self, vm_ref, before):
        """Remember which networks of the imported VM's VIFs were not in ``before`` (refs before the import).

        Only the imported VM's own: a network that appeared meanwhile for anything else is not ours to remove.
        """
        if before is None:
            return
        try:
            vifs = self.client.call("VIF.get_all_records_where", f'field "VM"="{vm_ref}"')
        except XapiError:
            return
        self.new_networks |= {rec.get("network") for rec in vifs.values()} - set(before) - {None, NULL_REF}

    def drop_new_networks(self):
        """Destroy the noted networks that no VIF or PIF uses; returns the problems met (never raises)."""
        problems = []
        for ref in sorted(self.new_networks):
            try:
                rec = self.client.call("network.get_record", ref)
                if rec.get("VIFs") or rec.get("PIFs"):
                    continue  # in use: kept, and looked at again if the VM is removed after all
                self.client.call("network.destroy", ref)
            except XapiError as e:
                if e.code != "HANDLE_INVALID":
                    problems.append(f"network {ref} could not be removed ({e})")
                    continue
            self.new_networks.discard(ref)
        return problems


def destroy_vm(client, vm_ref):
    """Shut down and destroy a VM and the disks only it uses; returns the problems met."""
    created = Created(client)
    created.vm = vm_ref
    created.add_vm_disks(vm_ref)
    with contextlib.suppress(XapiError):  # a VM still suspended: its memory image has no VBD
        image = client.call("VM.get_suspend_VDI", vm_ref)
        if image != NULL_REF:
            created.vdis.append(image)
    return created.undo()


# -- the restore --------------------------------------------------------------------------------
class Restore:
    """Execute a :class:`RestorePlan` (see :func:`restore_backup`)."""

    def __init__(self, client, storage, plan, *, remote_label, tags=(), start=False, force=False, warn=None):
        self.client = client
        self.storage = storage
        self.plan = plan
        self.backup = plan.backup
        self.remote_label = remote_label
        self.tags = list(tags)
        self.start = start
        self.force = force
        self.created = Created(client)
        self.outcome = RestoreOutcome(self.backup, plan)
        self._warn = warn

    def warn(self, text):
        self.outcome.warnings.append(text)
        if self._warn is not None:
            self._warn(text)

    def call(self, method, *args, sr=None):
        return self.client.call(method, *args, sr=sr)

    def run(self):
        started = time.monotonic()
        try:
            if self.plan.mode == "full":
                self._full()
            else:
                self._delta()
        except BaseException as e:
            self._fail(e)
        self.created = Created(self.client)  # restored: nothing to undo any more
        self.outcome.changed = True
        if self.start:
            try:
                start_vm(self.client, self.outcome.vm_ref, self.plan.name, self.backup.id)
            except VmStartError as e:
                self.outcome.vm = vm_summary(self.client, self.outcome.vm_ref)
                self.outcome.duration = time.monotonic() - started
                e.outcome = self.outcome.to_dict()
                raise
        self.outcome.vm = vm_summary(self.client, self.outcome.vm_ref)
        self.outcome.duration = time.monotonic() - started
        return self.outcome

    def _fail(self, error):
        problems = self.created.undo()
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, now let it go
            raise error
        detail = str(error) if isinstance(error, (XapiError, StorageError)) else f"{type(error).__name__}: {error}"
        if problems:
            tail = " Could not clean up: " + "; ".join(problems) + ". Remove those objects by hand."
        elif self.plan.mode == "full" and self.outcome.vm_ref is None:
            tail = " XAPI discards an import that does not complete, so nothing was kept."
        else:
            tail = " Everything it had created was removed."
        cls = type(error) if isinstance(error, RestoreError) else RestoreError
        text = f"Restore of backup {self.backup.id} failed: {detail.rstrip('.')}.{tail}"
        raise cls(text, getattr(error, "code", None), getattr(error, "params", None) or ()) from None

    # -- full --------------------------------------------------------------------------------
    def _expected_checksum(self):
        expected, status, warning = read_xva_checksum(self.storage, self.backup, self.force)
        if status is not None:
            self.outcome.checksum = status
        if warning:
            self.warn(warning)
        return expected

    def _full(self):
        backup, plan = self.backup, self.plan
        expected = self._expected_checksum()
        with self.storage.open_read(backup.xva) as stream:
            size = stream.size
            warning = check_xva_size(backup, size, self.force)
            if warning:
                self.warn(warning)
            source = VerifiedReader(stream, size, expected, self.force, backup.xva)
            sr_name = plan.pool.sr_summary(plan.sr_ref)["name_label"]
            try:
                networks_before = self.call("network.get_all")
            except XapiError:
                networks_before = None  # then no network is removed afterwards
            try:
                refs = put_stream(self.client, "/import", source, size, f"Import to SR {sr_name!r}", sr_id=plan.sr_ref)
            finally:
                source.close()
            self.outcome.bytes_transferred = source.done
        if expected is not None:
            self.outcome.checksum = "mismatch (forced)" if source.mismatch else "verified"
            if source.mismatch:
                self.warn(f"{backup.xva} does not match its checksum file; it was restored anyway (force).")
        refs = refs if isinstance(refs, list) else [refs] if refs else []
        if not refs:
            raise RestoreError("XAPI's import reported no VM")
        self.outcome.vm_ref = vm_ref = refs[0]
        self.created.vm = vm_ref
        self.created.add_vm_disks(vm_ref)
        self.created.note_new_networks(vm_ref, networks_before)
        if len(refs) > 1:
            self.warn(f"The XVA held {len(refs)} VMs; only the first one was set up as the restored VM.")
        record = self.call("VM.get_record", vm_ref)
        if record.get("is_a_template"):
            # An XVA of a snapshot imports as a template (xapi keeps is_a_template); a restore wants a VM.
            self.call("VM.set_is_a_template", vm_ref, False)
        config = _without_backup_keys(_other_config(record))
        config[RESTORED_FROM_KEY] = backup.id
        self.call("VM.set_other_config", vm_ref, config)
        self.call("VM.set_name_label", vm_ref, plan.name)
        self.call("VM.set_name_description", vm_ref, self._description())
        self.call("VM.set_tags", vm_ref, self._tags(record.get("tags") or []))
        blocked = record.get("blocked_operations") or {}
        for op in sorted(set(blocked) - set(_without_backup_blocks(blocked))):
            self.call("VM.remove_from_blocked_operations", vm_ref, op)
        self._fix_imported_vifs(vm_ref)
        # Networks made for VIFs that were then mapped elsewhere or dropped (network_map, health checks).
        for problem in self.created.drop_new_networks():
            self.warn(f"The restore left a network XAPI's import created: {problem}.")

    def _fix_imported_vifs(self, vm_ref):
        """Make the imported VIFs what the plan says: MACs kept or renewed, networks mapped, or none."""
        plan = self.plan
        if plan.xva_header is None and not plan.no_network:
            return
        wanted = {v.device: v for v in plan.vifs}
        for ref, rec in self.call("VIF.get_all_records_where", f'field "VM"="{vm_ref}"').items():
            want = wanted.get(rec.get("device"))
            if want is None:
                self.call("VIF.destroy", ref)
                continue
            network = want.network_ref if want.mapped_by == "network_map" else rec["network"]
            original = want.record.get("MAC", "")
            mac_ok = rec.get("MAC") != original if not want.mac else rec.get("MAC") == want.mac
            if network == rec["network"] and mac_ok:
                continue
            self.call("VIF.destroy", ref)
            self.call("VIF.create", self._vif_record(rec, vm_ref, network, want.mac))

    # -- incremental -------------------------------------------------------------------------
    def _delta(self):
        plan, backup = self.plan, self.backup
        md = backup.metadata
        vm_rec = md.get("vm") or {}
        suspend = plan.suspend if plan.suspend is not None and plan.suspend.sr_ref else None
        suspend_vdi = self._create_vdi(suspend) if suspend is not None else None
        self.outcome.vm_ref = vm_ref = self.call("VM.create", self._vm_record(vm_rec, suspend_vdi))
        self.created.vm = vm_ref
        bios = {k: v for k, v in (vm_rec.get("bios_strings") or {}).items() if v and k in BIOS_STRINGS_KEYS}
        if bios:
            try:
                self.call("VM.set_bios_strings", vm_ref, bios)
            except XapiError as e:
                if e.code != "MESSAGE_METHOD_UNKNOWN":
                    raise
        new = {}
        for disk in plan.disks:
            if disk.sr_ref is None:
                continue
            new[disk.ref] = vdi = self._create_vdi(disk)
            for vbd in disk.vbds:
                self.call("VBD.create", self._vbd_record(vbd, vm_ref, vdi))
        if suspend_vdi is not None:
            new[suspend.ref] = suspend_vdi
        for disk in [*plan.disks, *([suspend] if suspend else [])]:
            if disk.ref in new:
                self._import_disk(disk, new[disk.ref])
        networks = plan.pool.networks
        for vif in plan.vifs:
            mtu = vif.record.get("MTU") or networks.get(vif.network_ref, {}).get("MTU") or 1500
            rec = {**vif.record, "MTU": mtu}
            self.call("VIF.create", self._vif_record(rec, vm_ref, vif.network_ref, vif.mac))
        for contents in md.get("vtpms") or []:
            vtpm = self.call("VTPM.create", vm_ref, False)
            self.call("VTPM.set_contents", vtpm, contents)
        # Unblock: the VM keeps the blocked operations it had when it was backed up, but not the backup's own.
        self.call("VM.set_blocked_operations", vm_ref, _without_backup_blocks(vm_rec.get("blocked_operations")))
        self.call("VM.set_name_label", vm_ref, plan.name)
        if vm_rec.get("ha_always_run"):
            try:
                self.call("VM.set_ha_always_run", vm_ref, True)
            except XapiError as e:
                self.warn(f"The restored VM could not be set to always run under HA: {e}")

    def _vm_record(self, rec, suspend_vdi):
        out = {}
        for key, default in _VM_REQUIRED.items():
            value = rec.get(key, default)
            if value is None:  # memory: fall back on the static maximum, as xapi requires one
                value = rec.get("memory_static_max", 1 << 30)
            out[key] = _wire(value)
        for key in _VM_OPTIONAL:
            if key in rec:
                out[key] = _wire(rec[key])
        shadow = rec.get("HVM_shadow_multiplier")
        if shadow not in (None, 1, 1.0, "1", "1."):
            out["HVM_shadow_multiplier"] = float(shadow)
        out["affinity"] = NULL_REF  # a host of the source pool means nothing here
        out["is_a_template"] = False
        out["ha_always_run"] = False
        out["name_label"] = IMPORTING + self.plan.name
        out["name_description"] = self._description()
        out["tags"] = self._tags(rec.get("tags") or [])
        out["blocked_operations"] = {
            **_without_backup_blocks(rec.get("blocked_operations")), "start": IMPORT_BLOCK, "start_on": IMPORT_BLOCK
        }  # fmt: skip
        config = _without_backup_keys(_other_config(rec))
        # As Xen Orchestra: xapi makes a new seed, so the copy's generated MACs differ from the source's.
        config.pop("mac_seed", None)
        config[COPY_OF_KEY] = rec.get("uuid", "")
        config[RESTORED_FROM_KEY] = self.backup.id
        out["other_config"] = config
        if suspend_vdi is not None:
            snap = self.backup.metadata.get("vmSnapshot") or {}
            out["power_state"] = "Suspended"
            out["suspend_VDI"] = suspend_vdi
            for key in _VM_SUSPENDED:
                if key in snap:
                    out[key] = _wire(snap[key])
        return out

    def _create_vdi(self, disk):
        rec = disk.record
        config = {k: v for k, v in _other_config(rec).items() if k not in BASE_DELTA_KEYS}
        config[COPY_OF_KEY] = rec.get("uuid", "")
        values = {
            "name_label": rec.get("name_label", ""),
            "name_description": rec.get("name_description", ""),
            "SR": disk.sr_ref,
            "virtual_size": str(disk.virtual_size),
            "type": rec.get("type") or "user",
            "sharable": bool(rec.get("sharable", False)),
            "read_only": bool(rec.get("read_only", False)),
            "other_config": config,
            "xenstore_data": dict(rec.get("xenstore_data") or {}),
            "tags": list(rec.get("tags") or []),
            "sm_config": {},
        }
        vdi = self.call("VDI.create", values, sr=disk.sr_ref)
        self.created.vdis.append(vdi)
        return vdi

    @staticmethod
    def _vbd_record(rec, vm_ref, vdi_ref):
        values = {
            "VM": vm_ref,
            "VDI": vdi_ref,
            "userdevice": str(rec.get("userdevice", "autodetect")),
            "bootable": bool(rec.get("bootable", False)),
            "mode": rec.get("mode") or "RW",
            "type": "Disk",
            "unpluggable": bool(rec.get("unpluggable", False)),
            "empty": False,
            "other_config": dict(rec.get("other_config") or {}),
            "qos_algorithm_type": rec.get("qos_algorithm_type", ""),
            "qos_algorithm_params": dict(rec.get("qos_algorithm_params") or {}),
            "device": "",
            "currently_attached": False,
        }
        return values

    @staticmethod
    def _vif_record(rec, vm_ref, network_ref, mac):
        values = {
            "device": str(rec.get("device", "0")),
            "network": network_ref,
            "VM": vm_ref,
            "MAC": mac or "",
            "MTU": _wire(rec.get("MTU") or 1500),
            "other_config": dict(rec.get("other_config") or {}),
            "qos_algorithm_type": rec.get("qos_algorithm_type", ""),
            "qos_algorithm_params": dict(rec.get("qos_algorithm_params") or {}),
        }
        for key in ("locking_mode", "ipv4_allowed", "ipv6_allowed"):
            if key in rec:
                values[key] = rec[key]
        return values

    def _import_disk(self, disk, vdi_ref):
        stream = disk.chain.flattened_vhd()
        where = f"position {disk.userdevice}" if disk.userdevice else "suspend image"
        action = f"Import of disk {disk.name_label!r} ({where})"
        try:
            put_stream(self.client, "/import_raw_vdi", stream.reader(), stream.size, action, vdi=vdi_ref, format="vhd")
        except VhdError as e:  # found while streaming: a block missing or damaged on the remote
            raise RestoreError(f"{action} stopped: the backup is damaged, {e}") from None
        self.outcome.bytes_transferred += stream.size

    # -- both ----------------------------------------------------------------------------------
    def _description(self):
        desc = (self.backup.metadata.get("vm") or {}).get("name_description") or ""
        when = format_filename_date(datetime.now(timezone.utc))
        text = f"Restored on {when} from {self.remote_label}"
        return f"{text} - {desc}" if desc else text

    def _tags(self, existing):
        out = []
        for tag in [*existing, RESTORED_TAG, *self.tags]:
            if tag not in out:
                out.append(tag)
        return out


def start_vm(client, vm_ref, name, backup_id):
    """Start a restored VM (resume it, if it was restored suspended); a failure keeps the VM (the restore
    itself worked) and says so."""
    try:
        run_async(client, power_on_call(client, vm_ref), vm_ref, False, False, timeout=START_TIMEOUT)
    except XapiError as e:
        raise VmStartError(
            f"Backup {backup_id} was restored as VM {name!r}, which is kept, but it could not be started: "
            f"{str(e).rstrip('.')}. Start it once the cause is fixed (running the task again starts it).",
            e.code,
            e.params,
        ) from None


def power_on_call(client, vm_ref):
    """``VM.resume`` for a VM restored with its memory image (it was suspended when backed up), else
    ``VM.start``, which xapi refuses on a suspended VM."""
    return "VM.resume" if client.call("VM.get_power_state", vm_ref) == "Suspended" else "VM.start"


def restore_backup(
    client,
    storage,
    backup,
    *,
    sr,
    name=None,
    disk_srs=None,
    network_map=None,
    new_mac_addresses=False,
    start=False,
    tags=(),
    force=False,
    allow_duplicate=False,
    no_network=False,
    check_mode=False,
    remote_label=None,
    warn=None,
):
    """Restore ``backup`` (a ``BackupInfo``) into the pool; returns a :class:`RestoreOutcome`.

    ``sr`` is the target SR (name, UUID or ref); ``disk_srs``/``network_map`` as in
    :func:`_restore_plan.plan_restore`. ``force`` restores again a backup already restored under the same
    name and accepts an XVA whose checksum does not match; ``allow_duplicate`` only does the former.
    ``no_network`` leaves every VIF out (health checks). ``check_mode`` plans and checks without changing
    anything. Raises :class:`RestoreError` (nothing left behind) when the restore cannot be done.
    """
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise RestoreInputError(f"tags must be non-empty strings, not {tag!r}.")
    vm_name = (backup.metadata.get("vm") or {}).get("name_label", "")
    target = name if name is not None else f"{vm_name} ({format_filename_date(backup.timestamp)})"
    if not str(target).strip():
        raise RestoreInputError("name must not be empty.")
    if not (force or allow_duplicate):
        found = find_restored(client, target, backup.id)
        if found is not None:
            outcome = RestoreOutcome(backup)
            outcome.already_restored = True
            outcome.vm_ref, record = found
            if start and record.get("power_state") in ("Halted", "Suspended"):
                outcome.changed = True
                if not check_mode:
                    try:
                        start_vm(client, outcome.vm_ref, target, backup.id)
                    except VmStartError as e:
                        outcome.changed = False  # it was there already and still is halted
                        outcome.vm = vm_summary(client, outcome.vm_ref)
                        e.outcome = outcome.to_dict()
                        raise
                    record = None
            outcome.vm = vm_summary(client, outcome.vm_ref, record)
            if check_mode and outcome.changed:
                outcome.vm["power_state"] = "Running"
            return outcome
    if warn is not None:
        # Not removed: from here it cannot be told from a restore of the same backup running right now.
        for uuid in leftover_imports(client, target, backup.id):
            warn(
                f"VM {IMPORTING + target!r} ({uuid}) holds an earlier restore of this backup that never finished. "
                f"Unless a restore of it is running now, remove it: xe vm-uninstall uuid={uuid} force=true"
            )
    plan = plan_restore(
        client,
        storage,
        backup,
        sr=sr,
        name=target,
        disk_srs=disk_srs,
        network_map=network_map,
        new_mac_addresses=new_mac_addresses,
        no_network=no_network,
        force=force,
    )
    try:
        if check_mode:
            outcome = RestoreOutcome(backup, plan)
            outcome.changed = True
            outcome.vm = {"uuid": None, "name_label": plan.name, "power_state": "Running" if start else "Halted"}
            return outcome
        label = remote_label or storage.display
        return Restore(client, storage, plan, remote_label=label, tags=tags, start=start, force=force, warn=warn).run()
    finally:
        plan.close()

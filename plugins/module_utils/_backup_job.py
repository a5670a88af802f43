"""A backup job run: select VMs, back them up in parallel, report per VM and in total.

Each worker thread logs in on its own: an XML-RPC session object is not safe to share between
threads. One failed VM never stops the others; the caller fails the task when any VM failed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import _backup_snapshots as snapshots
from ._backup_clean import plan_retention
from ._backup_progress import JobLock, Progress
from ._backup_targets import find_base_vhd
from ._backup_vm import VmBackup
from ._remote_options import DEFAULT_REMOTES_DIR, open_storage, resolve
from ._storage import StorageError
from ._vhd_directory_write import uses_vhd_directory
from ._vm_inventory import VmInventory
from ._vm_selection import NO_BACKUP_DISK_PREFIX, VmSelection
from ._xapi_client import XapiClient
from ._xapi_errors import XapiError
from ._xo_clean_plan import MIN_XVA_SIZE
from ._xo_layout import metadata_path, vdis_dir, vhd_relative_path, vm_backup_dir
from ._xo_listing import encrypted_remote_message, remote_encryption
from ._xo_metadata import build_delta_metadata, build_full_metadata

NULL_REF = "OpaqueRef:NULL"


class BackupJob:
    def __init__(self, spec, params, connection_options, clock=time.time):
        self.spec = spec
        self.params = params
        self.options = connection_options
        self.clock = clock
        self.remotes = list(params["remotes"])
        if not self.remotes:
            raise ValueError("remotes must name at least one remote (a URL such as file:///srv/backups, or a name)")
        self.selection = VmSelection.from_params(params, skip_no_backup=True)
        # Bad URLs and unknown remote names fail before anything is touched on the pool.
        for value in self.remotes:
            resolve(value, params.get("remote_username"), params.get("remote_password"),
                    params.get("remotes_dir") or DEFAULT_REMOTES_DIR)  # fmt: skip

    # -- selection ----------------------------------------------------------------------------------
    def select(self, client):
        inventory = VmInventory.fetch(client)
        result = self.selection.select(inventory.records)
        return inventory, result

    def open_storages(self):
        storages = []
        try:
            for value in self.remotes:
                storage = open_storage(value, self.params)
                storages.append(storage)
                # Xen Orchestra encrypts the files of a remote with an encryption key: our plain files would
                # not belong there, and the clean-up would take its unreadable metadata for invalid.
                algorithm = remote_encryption(storage)
                if algorithm is not None:
                    raise StorageError(encrypted_remote_message(storage, algorithm))
        except BaseException:
            for s in storages:
                with contextlib.suppress(Exception):
                    s.close()
            raise
        return storages

    # -- check mode ---------------------------------------------------------------------------------
    def plan(self, client):
        """What a run would do, touching nothing: VMs, full or incremental and why, bytes, retention."""
        inventory, selection = self.select(client)
        storages = self.open_storages()
        try:
            vms = [self._plan_vm(client, inventory, vm, storages) for vm in selection.vms]
        finally:
            for s in storages:
                with contextlib.suppress(Exception):
                    s.close()
        return {
            "vms": vms,
            "missing": {"names": selection.missing_names, "uuids": selection.missing_uuids},
            "totals": {"vms": len(vms), "estimated_bytes": sum(v["estimated_bytes"] for v in vms)},
        }

    def _plan_vm(self, client, inventory, vm, storages):
        ref = inventory.vm_ref[vm["uuid"]]
        record = client.call("VM.get_record", ref)
        disks = [d for d in vm["disks"] if not d["name_label"].startswith(NO_BACKUP_DISK_PREFIX)]
        vdis = inventory.raw.get("VDI", {})
        full_bytes = sum(int(vdis[inventory.vdi_ref[d["uuid"]]].get("physical_utilisation") or 0) for d in disks)
        image = record.get("suspend_VDI") or snapshots.NULL_REF
        if self.spec.mode == "incremental" and record.get("power_state") == "Suspended" and image != snapshots.NULL_REF:
            with contextlib.suppress(XapiError):  # the memory image goes whole with every incremental backup
                full_bytes += int(client.call("VDI.get_physical_utilisation", image) or 0)
        mode, reason, parents = "full", "full mode", {}
        if self.spec.mode == "incremental":
            base = snapshots.base_snapshot(client, record, self.spec.job_id)
            chain = int(base.record["other_config"].get(snapshots.K_CHAIN) or 0) if base else 0
            if base is None:
                reason = "no exported snapshot of this job to use as a base"
            elif self.spec.full_interval and self.spec.full_interval <= chain + 1:
                reason = f"full_interval {self.spec.full_interval} reached ({chain} deltas since the last full)"
            else:
                mode, reason = "incremental", f"delta on top of snapshot {base.uuid} ({chain} deltas so far)"
                # As the run decides, per disk and remote: a disk whose base VHD (or one of its ancestors)
                # is not on every remote goes full, and the VM is incremental while any disk is not.
                parents, fulls = self._base_vhds(vm, base, storages)
                if disks and len(fulls) == len(disks):
                    mode, reason = "full", "; ".join(fulls)
                elif fulls:
                    reason += "; " + "; ".join(fulls)
        retention = {}
        when = self._backup_time(vm["uuid"], storages)
        for storage in storages:
            try:
                # Retention counts the backup this run would write, and merges fold old deltas into it.
                differencing = parents if mode == "incremental" else {}
                new_backup = self._new_backup(vm, record, disks, storage, differencing, when)
                doomed, after = plan_retention(storage, vm["uuid"], self.spec, new_backup)
                retention[storage.display] = {
                    "remove": doomed,
                    "merge": [a.to_dict() for a in after.of_kind("merge")],
                    "warnings": after.warnings,
                }
            except (StorageError, ValueError) as e:
                retention[storage.display] = {"error": str(e)}
        return {
            "uuid": vm["uuid"],
            "name": vm["name_label"],
            "mode": mode,
            "reason": reason,
            "disks": [d["name_label"] for d in disks],
            "skipped_disks": [d["name_label"] for d in vm["disks"] if d not in disks],
            # An incremental sends at most what is allocated: the exact delta is only known to XAPI.
            "estimated_bytes": full_bytes,
            "retention": retention,
        }

    def _base_vhds(self, vm, base, storages):
        """As the run decides, per disk: ``({disk uuid: {storage: base VHD path}}, reasons)``; a disk whose
        base VHD (or one of its ancestors) is not on every remote goes full, with the reason why."""
        parents, reasons = {}, []
        for disk in sorted(vm["disks"], key=lambda d: d["uuid"]):  # the run's order: by live disk uuid
            name = disk["name_label"]
            if name.startswith(NO_BACKUP_DISK_PREFIX):
                continue
            base_disk = base.disks.get(disk["uuid"])
            if base_disk is None:
                reasons.append(f"disk {name!r} is new since the base")
                continue
            base_uuid, found = base_disk["record"]["uuid"], {}
            for storage in storages:
                vhd = find_base_vhd(storage, vm["uuid"], self.spec.job_id, disk["uuid"], base_uuid)
                if vhd is None:
                    reasons.append(f"disk {name!r}: its base, or a VHD it depends on, is missing on {storage.display}")
                    break
                found[storage] = f"{vdis_dir(vm['uuid'], self.spec.job_id, disk['uuid'])}/{vhd[0]}"
            else:
                parents[disk["uuid"]] = found
        return parents, reasons

    def _backup_time(self, vm_uuid, storages):
        """The run's timestamp for a backup made now: one for all remotes, in a second none of them holds
        a backup of (the run waits for it; the plan just takes it)."""
        when = int(self.clock()) * 1000

        def taken(storage):
            try:
                return storage.exists(metadata_path(vm_uuid, when))
            except StorageError:
                return False  # the plan reports that remote's error where it reads it

        while any(taken(s) for s in storages):
            when += 1000
        return when

    def _new_backup(self, vm, record, disks, storage, parents, when):
        """``(id, metadata, vhds)`` of the backup a run would write at ``when`` on ``storage``, for the plan."""
        spec = self.spec
        if spec.mode == "full":
            metadata = build_full_metadata(
                job_id=spec.job_id, schedule_id=spec.schedule_id, timestamp=when, vm=record, vm_snapshot=None,
                size=MIN_XVA_SIZE,
            )  # fmt: skip
            return metadata_path(vm["uuid"], when), metadata, {}
        directories = uses_vhd_directory(storage)
        refs = {disk["uuid"]: f"OpaqueRef:planned-{i}" for i, disk in enumerate(disks)}
        relative = {refs[u]: vhd_relative_path(spec.job_id, u, when, directories) for u in refs}
        vhds = {f"{vm_backup_dir(vm['uuid'])}/{relative[refs[u]]}": parents.get(u, {}).get(storage) for u in refs}
        metadata = build_delta_metadata(
            job_id=spec.job_id, schedule_id=spec.schedule_id, timestamp=when, vm=record, vm_snapshot=record,
            vdis={refs[u]: {"uuid": refs[u], "$snapshot_of$uuid": u} for u in refs}, vbds={}, vifs={},
            vhds=relative, is_vhd_differencing={refs[u]: u in parents for u in refs}, size=0,
        )  # fmt: skip
        return metadata_path(vm["uuid"], when), metadata, vhds

    # -- run ----------------------------------------------------------------------------------------
    def run(self, client, progress_dir):
        inventory, selection = self.select(client)
        vms = [(inventory.vm_ref[vm["uuid"]], vm) for vm in selection.vms]
        vdis = inventory.raw.get("VDI", {})
        estimate = sum(
            int(vdis[inventory.vdi_ref[d["uuid"]]].get("physical_utilisation") or 0)
            for _, vm in vms
            for d in vm["disks"]
            if not d["name_label"].startswith(NO_BACKUP_DISK_PREFIX)
        )
        with JobLock(progress_dir, self.spec.job_id, self.spec.name):
            progress = Progress(progress_dir, self.spec.job_id, self.spec.name, len(vms), estimate)
            results = self._run_all(vms, progress)
            failed = [r for r in results if r["status"] != "success"]
            progress.finish("failure" if failed else "success")
        totals = {
            "vms": len(results),
            "succeeded": len(results) - len(failed),
            "failed": len(failed),
            "bytes_read": sum(r.get("bytes_read", 0) for r in results),
            "bytes_written": sum(r.get("bytes_written", 0) for r in results),
            "duration": round(sum(r.get("duration", 0) for r in results), 3),
        }
        return {
            "vms": results,
            "totals": totals,
            "missing": {"names": selection.missing_names, "uuids": selection.missing_uuids},
        }

    def _run_all(self, vms, progress):
        results = [None] * len(vms)
        workers = self.spec.concurrency or max(1, len(vms))
        lock = threading.Lock()

        def one(i, ref, vm):
            progress.vm_started(vm["uuid"], vm["name_label"])
            try:
                result = self._backup_one(ref, vm, progress)
            finally:
                progress.vm_done(vm["uuid"])
            with lock:
                results[i] = result

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(one, i, ref, vm) for i, (ref, vm) in enumerate(vms)]
            for f in futures:
                f.result()
        return results

    def _backup_one(self, ref, vm, progress):
        base = {"uuid": vm["uuid"], "name": vm["name_label"], "status": "failure"}
        try:
            storages = self.open_storages()
        except (StorageError, ValueError) as e:
            return {**base, "error": f"cannot open the remotes: {e}"}
        try:
            with XapiClient(self.options) as client:
                return VmBackup(client, self.spec, ref, storages, progress, self.clock).run()
        except XapiError as e:
            return {**base, "error": str(e)}
        finally:
            for s in storages:
                with contextlib.suppress(Exception):
                    s.close()

"""One VM's backup: snapshot, stream from XAPI to every remote, tag the snapshot, apply retention."""

from __future__ import annotations

import contextlib
import time

from . import _backup_snapshots as snapshots
from ._backup_clean import apply_retention
from ._backup_pipeline import WriterThread
from ._backup_targets import Target, TargetError, XvaSink, disk_sink
from ._storage import StorageError, check_held
from ._vhd_errors import VhdError
from ._vhd_stream_read import VhdStreamReader
from ._vm_selection import NO_BACKUP_DISK_PREFIX
from ._xapi_errors import XapiError
from ._xapi_http import ExportStream
from ._xo_checksum import XvaChecksum
from ._xo_layout import metadata_path
from ._xo_metadata import build_delta_metadata, build_full_metadata, vdi_record, vif_record

NULL_REF = "OpaqueRef:NULL"
USE_COMPRESSION = {None: "false", "gzip": "true", "zstd": "zstd"}


class VmBackupError(Exception):
    """The VM's backup failed on every remote; the message says where and why."""


class Deadline:
    def __init__(self, seconds, what, clock=time.monotonic):
        self.end = clock() + seconds if seconds else None
        self.what = what
        self.seconds = seconds
        self.clock = clock

    def check(self):
        if self.end is not None and self.clock() > self.end:
            raise VmBackupError(f"{self.what} exceeded the job's timeout of {self.seconds} seconds and was stopped")


class VmBackup:
    def __init__(self, client, spec, vm_ref, storages, progress=None, clock=time.time):
        self.client = client
        self.spec = spec
        self.vm_ref = vm_ref
        self.vm = client.call("VM.get_record", vm_ref)
        self.uuid = self.vm["uuid"]
        self.name = self.vm["name_label"]
        self.targets = [Target(s, self.uuid) for s in storages]
        self.progress = progress
        self.clock = clock
        self.deadline = Deadline(spec.timeout, f"the backup of VM {self.name!r}")
        self.bytes_read = 0
        self.result = {"uuid": self.uuid, "name": self.name, "status": "failure", "mode": None, "reason": None}

    # -- the run ------------------------------------------------------------------------------------
    def run(self):
        started = time.monotonic()
        try:
            self._run()
        except (XapiError, VmBackupError, TargetError, StorageError, VhdError) as e:
            self.result["error"] = str(e)
        finally:
            for t in self.targets:
                t.release()
            with contextlib.suppress(XapiError):
                snapshots.unblock_migration(self.client, self.vm_ref)
        elapsed = time.monotonic() - started
        written = sum(t.bytes_written for t in self.targets)
        self.result.update(
            bytes_read=self.bytes_read,
            bytes_written=written,
            duration=round(elapsed, 3),
            speed=int(self.bytes_read / elapsed) if elapsed > 0 else 0,
            remotes=[
                {
                    "remote": t.label,
                    "status": "success" if t.ok else "failure",
                    "backup_id": t.backup_id,
                    "error": t.error,
                }
                for t in self.targets
            ],
        )
        failed = [t.error for t in self.targets if not t.ok]
        if failed and "error" not in self.result:
            self.result["error"] = "; ".join(failed)
        if "error" not in self.result:
            self.result["status"] = "success"
        ids = [t.backup_id for t in self.targets if t.backup_id]
        self.result["backup_id"] = ids[0] if ids else None
        return self.result

    def _run(self):
        for t in self.targets:
            t.acquire()
        self._require_targets()
        self._phase("cleaning leftover snapshots")
        self._drop_leftovers()
        base, chain, reason = self._choose_base()
        self._phase("snapshot")
        when = self._backup_time()
        ignore = self._nobak_vdis()
        snap = snapshots.take(
            self.client,
            self.vm_ref,
            self.vm,
            self.spec.job_id,
            self.spec.schedule_id,
            self.spec.name,
            ignore,
            self.spec.task_timeout,
            now=when / 1000,
        )
        self.result["snapshot"] = snap.uuid
        try:
            self._phase("transfer")
            if self.spec.mode == "full":
                self.result.update(mode="full", reason="full mode")
                self._full(snap, when)
                new_chain = 0
            else:
                differencing = self._incremental(snap, base, when, reason)
                new_chain = chain + 1 if any(differencing.values()) else 0
        except BaseException:
            with contextlib.suppress(XapiError):
                snapshots.destroy(self.client, snap.ref)
            raise
        if not any(t.ok for t in self.targets):
            with contextlib.suppress(XapiError):
                snapshots.destroy(self.client, snap.ref)
            return
        snapshots.mark_exported(self.client, snap, new_chain)
        self._phase("snapshot retention")
        self._snapshot_retention(snap)
        self._phase("retention")
        for t in self.targets:
            if t.ok:
                try:
                    t.retention = apply_retention(t.storage, self.uuid, self.spec, keep=t.backup_id, lock=t.lock)
                except (StorageError, VhdError, ValueError) as e:
                    # The new backup is safe; only the clean-up failed, and the next run retries it.
                    t.fail("retention", e)
        self.result["retention"] = {t.label: getattr(t, "retention", None) for t in self.targets}
        if self.spec.health_check is not None:
            self._phase("health check")
            self._health_check()

    def _health_check(self):
        """Restore the new backup from the first remote that took it, boot it, judge it (XO's health check)."""
        target = next((t for t in self.targets if t.ok and t.backup_id), None)
        if target is None:
            return
        # The restore code is a sixth of the source this module would compile afresh on every run
        # (Ansible ships module_utils as source): only a job with a health check pays for it.
        from ._health_check import health_check  # noqa: PLC0415
        from ._restore_errors import RestoreInputError  # noqa: PLC0415
        from ._restore_plan import PoolView  # noqa: PLC0415

        hc = self.spec.health_check
        try:
            sr, _ = PoolView(self.client).sr(hc["sr"], "health_check.sr")
        except RestoreInputError as e:
            raise VmBackupError(f"the backup was written but its health check cannot run: {e}") from None
        report = health_check(self.client, target.storage, target.backup_id, sr, hc.get("timeout") or 600,
                              hc.get("wait_xenstore"), remote_label=target.label)  # fmt: skip
        self.result["health_check"] = report
        if report.get("status") != "success":
            raise VmBackupError(f"the backup was written but its health check failed: {report.get('message')}")

    def _backup_time(self):
        """This backup's timestamp: ms (XO's unit), whole seconds (file names carry seconds), and after
        any backup of the VM already on a remote, so that two quick runs never share a file name."""
        for _ in range(3):
            now = int(self.clock())
            taken = any(t.storage.exists(metadata_path(self.uuid, now * 1000)) for t in self.targets if t.ok)
            if not taken:
                return now * 1000
            time.sleep(max(0.05, now + 1 - time.time()))
        raise VmBackupError(f"a backup of VM {self.name!r} with this timestamp already exists on a remote")

    def _phase(self, phase):
        self.deadline.check()
        if self.progress is not None:
            self.progress.vm_phase(self.uuid, phase)

    def _require_targets(self):
        if not any(t.ok for t in self.targets):
            raise VmBackupError("no remote could take the backup: " + "; ".join(t.error for t in self.targets))

    def _count(self, n):
        self.bytes_read += n
        if self.progress is not None:
            self.progress.add_bytes(self.uuid, n)

    # -- snapshots ------------------------------------------------------------------------------
    def _drop_leftovers(self):
        """Snapshots of failed runs: temp-named ones and this job's that never got exported."""
        doomed = snapshots.leftovers(self.client, self.vm)
        doomed += [
            ref
            for ref, rec in snapshots.job_snapshots(self.client, self.vm, self.spec.job_id)
            if rec["other_config"].get(snapshots.K_EXPORTED) != "true"
        ]
        for ref in doomed:
            with contextlib.suppress(XapiError):
                snapshots.destroy(self.client, ref)
        if doomed:
            self.vm = self.client.call("VM.get_record", self.vm_ref)

    def _choose_base(self):
        if self.spec.mode == "full":
            return None, 0, "full mode"
        base = snapshots.base_snapshot(self.client, self.vm, self.spec.job_id)
        if base is None:
            return None, 0, "no exported snapshot of this job to use as a base"
        chain = int(base.record["other_config"].get(snapshots.K_CHAIN) or 0)
        if self.spec.full_interval and self.spec.full_interval <= chain + 1:
            return None, chain, f"full_interval {self.spec.full_interval} reached ({chain} deltas since the last full)"
        return base, chain, None

    def _nobak_vdis(self):
        out = []
        for vbd in self.vm["VBDs"]:
            rec = self.client.call("VBD.get_record", vbd)
            if rec["type"] != "Disk" or rec["VDI"] == NULL_REF:
                continue
            if self.client.call("VDI.get_name_label", rec["VDI"]).startswith(NO_BACKUP_DISK_PREFIX):
                out.append(rec["VDI"])
        return out

    def _snapshot_retention(self, snap):
        self.vm = self.client.call("VM.get_record", self.vm_ref)
        existing = snapshots.job_snapshots(self.client, self.vm, self.spec.job_id)
        # The newest snapshot is the next incremental's base: it stays whatever the retention says.
        keep = [snap.ref] if self.spec.mode == "incremental" else []
        for ref in snapshots.to_remove(existing, self.spec.snapshot_retention, self.spec.schedule_id, keep):
            with contextlib.suppress(XapiError):
                snapshots.destroy(self.client, ref)

    # -- full ---------------------------------------------------------------------------------------
    def _full(self, snap, when):
        action = f"export of VM {self.name!r}"
        sinks = {}
        query = {"ref": snap.ref, "use_compression": USE_COMPRESSION[self.spec.compression]}
        with ExportStream(self.client, "/export", action, **query) as stream:
            for t in self.targets:
                if t.ok:
                    try:
                        sinks[t] = XvaSink(t, when)
                    except StorageError as e:
                        t.fail("opening the XVA file", e)
            self._require_targets()
            checksum = XvaChecksum(self.spec.checksum)
            from ._backup_pipeline import PIECE_SIZE, PIECES, BufferPool  # noqa: PLC0415 - local to this method

            # A few reused buffers: XAPI's bytes land in them (readinto, no copy) and each piece goes to
            # the hashing and the writing threads at once; it is refilled once both are done with it.
            pool = BufferPool(PIECES, PIECE_SIZE)
            try:
                # Hashing and writing each get a thread: with reading, three streams of work at once.
                with WriterThread(PIECES, "xapi-proxy-hash") as hasher, WriterThread(PIECES) as writer:
                    while True:
                        piece = pool.acquire(users=2)
                        n = stream.readinto(piece.view)
                        if not n:
                            break
                        data = piece.view[:n]
                        self._count(n)
                        hasher.submit(lambda d=data: checksum.update(d), piece.release)
                        writer.submit(
                            lambda d=data: self._fan_out(sinks, lambda s: s.write(d), "writing the XVA"), piece.release
                        )
                        self.deadline.check()
            except BaseException:
                for s in sinks.values():
                    s.abort()
                raise
        for t, sink in sinks.items():
            try:
                size = sink.commit(checksum, compressed=self.spec.compression is not None)
                md = build_full_metadata(
                    job_id=self.spec.job_id,
                    schedule_id=self.spec.schedule_id,
                    timestamp=when,
                    vm=self.vm,
                    vm_snapshot=snap.record,
                    size=size,
                    tags=self.spec.ltr_tags(when),
                )
                t.write_metadata(when, md)
            except (StorageError, TargetError) as e:
                sink.abort()
                t.fail("completing the backup", e)
        if any(t.ok for t in sinks):  # reported only once a .xva.checksum holds it
            self.result["checksum"] = checksum.algorithm

    def _fan_out(self, sinks, op, step):
        for t, sink in list(sinks.items()):
            try:
                check_held(t.lock, step)  # a remote whose lock another process took must not be written on
                op(sink)
            except StorageError as e:
                sink.abort()
                t.fail(step, e)
                del sinks[t]
        if not sinks:
            self._require_targets()

    # -- incremental --------------------------------------------------------------------------------
    def _incremental(self, snap, base, when, reason):
        vdis, vbds, vhds, differencing = {}, {}, {}, {}
        reasons = []
        sinks_by_target = {t: [] for t in self.targets if t.ok}
        for live_uuid, disk in sorted(snap.disks.items()):
            base_disk = base.disks.get(live_uuid) if base is not None else None
            parents = {}
            if base_disk is not None:
                base_uuid = base_disk["record"]["uuid"]
                for t in sinks_by_target:
                    if not t.ok:  # failed on an earlier disk: its remote must not force the others to a full
                        continue
                    found = t.find_base_vhd(self.spec.job_id, live_uuid, base_uuid)
                    if found is None:
                        name = disk["record"]["name_label"]
                        reasons.append(f"disk {name!r}: its base, or a VHD it depends on, is missing on {t.label}")
                        base_disk = None
                        break
                    parents[t] = (found[0], found[1], base_uuid)
            elif base is not None:
                reasons.append(f"disk {disk['record']['name_label']!r} is new since the base")
            sinks = self._transfer_disk(snap, live_uuid, disk, base_disk, parents if base_disk else {}, when)
            for t, sink in sinks.items():
                sinks_by_target[t].append(sink)
            ref = disk["ref"]
            for t, sink in sinks.items():  # per target: a VHD file on one, a VHD directory on another
                vhds.setdefault(t, {})[ref] = sink.relative
            differencing[ref] = base_disk is not None
            vdis[ref] = vdi_record(
                disk["record"],
                snapshot_of_uuid=live_uuid,
                sr_uuid=self._sr_uuid(disk["record"]["SR"]),
                vm_uuid=self.uuid,
                base_vdi_uuid=base_disk["record"]["uuid"] if base_disk else None,
            )
            vbds[disk["vbd_ref"]] = disk["vbd"]
        if snap.suspend is not None:
            # A suspended VM's memory, as XO keeps it: a full VHD of the snapshot's image in a folder named
            # after the image, listed in vdis without a VBD; the restore creates the VM suspended on it.
            image = snap.suspend
            for t, sink in self._transfer_disk(snap, image["record"]["uuid"], image, None, {}, when).items():
                sinks_by_target[t].append(sink)
                vhds.setdefault(t, {})[image["ref"]] = sink.relative
            differencing[image["ref"]] = False
            vdis[image["ref"]] = vdi_record(
                image["record"], snapshot_of_uuid=None, sr_uuid=self._sr_uuid(image["record"]["SR"]), vm_uuid=self.uuid
            )
        full = not any(differencing.values())
        self.result.update(
            mode="full" if full else "incremental",
            reason=reason if full and reason else ("; ".join(reasons) or (None if not full else "no base")),
        )
        vifs = self._vifs(snap)
        for t in self.targets:
            if not t.ok:
                continue
            try:
                md = build_delta_metadata(
                    job_id=self.spec.job_id,
                    schedule_id=self.spec.schedule_id,
                    timestamp=when,
                    vm=self.vm,
                    vm_snapshot=snap.record,
                    vdis=vdis,
                    vbds=vbds,
                    vifs=vifs,
                    vhds=vhds.get(t, {}),
                    is_vhd_differencing=differencing,
                    size=sum(s.size for s in sinks_by_target.get(t, [])),
                    tags=self.spec.ltr_tags(when),
                )
                t.write_metadata(when, md)
            except StorageError as e:
                t.fail("writing the metadata", e)
        return differencing

    def _transfer_disk(self, snap, live_uuid, disk, base_disk, parents, when):
        label = disk["record"]["name_label"]
        action = f"export of disk {label!r} of VM {self.name!r}"
        query = {"vdi": disk["ref"], "format": "vhd"}
        if base_disk is not None:
            query["base"] = base_disk["ref"]
        sinks = {}
        with ExportStream(self.client, "/export_raw_vdi", action, **query) as stream:
            counted = _Counting(stream, self._count)
            reader = VhdStreamReader(counted, f"XAPI stream of {label}")
            for t in self.targets:
                if t.ok:
                    try:
                        sinks[t] = disk_sink(
                            t, self.spec.job_id, live_uuid, when, reader, disk["record"]["uuid"], parents.get(t)
                        )
                    except StorageError as e:
                        t.fail(f"opening the VHD of {label}", e)
            self._require_targets()
            step = f"writing the VHD of {label}"
            try:
                with WriterThread() as writer:
                    for index, data in reader.blocks():
                        if index * reader.block_size >= reader.virtual_size:
                            continue
                        writer.submit(lambda i=index, d=data: self._fan_out(sinks, lambda s: s.block(i, d), step))
                        self.deadline.check()
                # Drain to EOF so the task's verdict is read: a cut stream must not pass as complete.
                while counted.read():
                    pass
            except BaseException:
                for s in sinks.values():
                    s.abort()
                raise
        for t, sink in list(sinks.items()):
            try:
                sink.size = sink.commit()
            except (StorageError, TargetError) as e:
                sink.abort()
                t.fail(f"completing the VHD of {label}", e)
                del sinks[t]
        return sinks

    def _sr_uuid(self, sr_ref):
        with contextlib.suppress(XapiError):
            return self.client.call("SR.get_uuid", sr_ref)
        return None

    def _vifs(self, snap):
        out = {}
        for vif in snap.record["VIFs"]:
            rec = self.client.call("VIF.get_record", vif)
            net = self.client.call("network.get_record", rec["network"])
            vlan = -1
            for pif in net.get("PIFs", []):
                with contextlib.suppress(XapiError, ValueError):
                    vlan = int(self.client.call("PIF.get_VLAN", pif))
                    break
            out[vif] = vif_record(
                rec, network_uuid=net["uuid"], network_name_label=net["name_label"], network_vlan=vlan
            )
        return out


class _Counting:
    """Counts bytes read from XAPI for the result and the progress file."""

    def __init__(self, stream, count):
        self.stream = stream
        self.count = count

    def read(self, size=-1):
        data = self.stream.read(size)
        if data:
            self.count(len(data))
        return data

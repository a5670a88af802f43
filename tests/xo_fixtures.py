"""Backups laid out on a remote exactly as Xen Orchestra lays them out, made from a simulator's VMs.

Restore tests (and anything else that reads remotes) need backups that did not come from our own
``backup`` module, so that "XO's backups restore with this collection" is tested for real. The job
here does what XO's backup runner does (xo-backups.md §1-§3), with the collection's format writers:

* snapshot the VM as ``xo-backup-temp-snapshot-name``, clear ``is_a_template``, set the
  ``xo:backup:*`` keys on the snapshot and its VDIs, rename it ``[XO Backup <job>] <vm>``;
* full mode: ``GET /export?use_compression=…`` stored byte for byte as ``<ts>.xva``, its MD5 as
  ``<ts>.xva.checksum`` (``$1$$<hex>``), then ``<ts>.json``; a halted VM is exported without a snapshot,
  and the snapshot of a running one is destroyed afterwards (snapshot retention 0);
* incremental mode: per disk ``GET /export_raw_vdi?format=vhd[&base=<previous snapshot VDI>]``,
  re-emitted as XO's own VHD (footer uuid = snapshot VDI uuid, parent uuid = base snapshot VDI uuid,
  parent name = the parent file's name, creator ``xo  ``) at ``vdis/<job>/<live VDI>/<ts>.vhd``, or on
  S3 as XO's VHD directory (brotli blocks under ``data/<ts>.vhd/``, named by ``<ts>.alias.vhd``);
  metadata with the raw records (int64 as JSON numbers, as XO's JSON-RPC client gets them) plus
  XO's ``$…`` additions; the newest snapshot is kept as the next run's base, the previous one destroyed;
* ``cache.json.gz`` is updated after each backup, and the remote root holds ``encryption.json`` and
  ``metadata.json`` as XO writes them when a remote is added.

Each backup returns a :class:`FixtureBackup` that records the SHA-256 of every disk at snapshot time
(``sim.sha256``), which is what a restore of that backup must give back.

Remotes: :data:`REMOTE_KINDS` lists the backends round-trip tests are parametrised over (``file``, and
``smb``/``s3`` served on loopback by ``tests/servers.py``); add a kind there and in :func:`make_remote`.
"""

from __future__ import annotations

import contextlib
import json
import uuid as uuid_mod
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_read import VhdStreamReader
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_http import ExportStream
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import parse_xapi_url
from ansible_collections.xapi.proxy.plugins.module_utils._xo_cache import update_cache
from ansible_collections.xapi.proxy.plugins.module_utils._xo_checksum import ChecksumWriter
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import (
    format_backup_datetime,
    format_filename_date,
    metadata_path,
    to_ms,
    vhd_basename,
    vhd_relative_path,
    vm_backup_dir,
    xva_checksum_path,
    xva_path,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    build_delta_metadata,
    build_full_metadata,
    dump_metadata,
    vdi_record,
    vif_record,
)
from xapisim.model import Datamodel
from xapisim.pytest_plugin import HERE as XAPISIM_DIR

NULL = "OpaqueRef:NULL"
REMOTE_KINDS = ("file", "smb", "s3")
MIB = 1 << 20
TEMP_SNAPSHOT_NAME = "xo-backup-temp-snapshot-name"  # XO's name until the snapshot is tagged
T0 = datetime(2024, 6, 18, 2, 0, 3, 123000, tzinfo=timezone.utc)
_DATAMODEL = None


TINY_LAB = XAPISIM_DIR / "labs" / "tiny.yml"


def tiny_lab_with(tmp_path, srs=(), networks=(), name="lab.yml"):
    """The tiny lab plus extra SRs and networks (lab-file syntax), written to ``tmp_path``; returns its path."""
    import yaml  # noqa: PLC0415 - the simulator's own dependency

    lab = yaml.safe_load(TINY_LAB.read_text())
    lab["srs"] = [*lab.get("srs", []), *srs]
    lab["networks"] = [*lab.get("networks", []), *networks]
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump(lab))
    return path


def connect(sim):
    """A logged-in collection XAPI client on ``sim`` (log it out with ``.logout()``)."""
    options = ConnectionOptions(parse_xapi_url(sim.url), sim.username, sim.password, ca_path=sim.ca_path)
    return XapiClient(options, originator="xo-fixtures").__enter__()


def pool_objects(client):
    """Refs of every VM, VDI, VBD and VIF of the pool: compare before/after to prove nothing was left."""
    return {cls: set(client.call(f"{cls}.get_all")) for cls in ("VM", "VDI", "VBD", "VIF")}


# -- remotes ----------------------------------------------------------------------------------
class XoRemote:
    """A remote as XO leaves it once added: ``url`` for modules, ``storage`` for direct reads."""

    def __init__(self, kind, url, root=None):
        self.kind = kind
        self.url = url
        self.root = Path(root) if root is not None else None
        self.storage = open_remote(url)
        # xo-server writes these when the remote is added (fs/src/abstract.js, RemoteAdapter).
        if not self.storage.exists("encryption.json"):
            self.storage.write_json("encryption.json", {"algorithm": "none"})
            self.storage.write_json("metadata.json", {"random": str(uuid_mod.uuid4())})

    def path(self, rel):
        """Local path of a remote file (the folder a test server serves), to damage it on purpose."""
        return self.root / rel

    def close(self):
        self.storage.close()


def make_remote(kind, tmp_path, request=None):
    """A fresh, empty remote of ``kind`` (one of :data:`REMOTE_KINDS`).

    ``smb`` and ``s3`` use the session servers of ``tests/servers.py`` (through ``request``); a test is
    skipped, with the reason, where they cannot run. Every kind keeps a local path to its files, so
    tests can damage them on purpose.
    """
    if kind == "file":
        root = Path(tmp_path) / "remote"
        root.mkdir(parents=True, exist_ok=True)
        return XoRemote(kind, f"file://{root}", root)
    if request is None:
        raise ValueError(f"{kind} remotes need the test's request (for the server fixture)")
    if kind == "smb":
        samba = request.getfixturevalue("samba")
        name, root = samba.new_folder()
        return XoRemote(kind, samba.url("data", name), root)
    if kind == "s3":
        from servers import S3_BUCKET  # noqa: PLC0415 - only the s3 kind needs the server module

        s3 = request.getfixturevalue("rclone_s3")
        prefix = s3.new_prefix()
        return XoRemote(kind, s3.url(prefix=prefix), s3.root / S3_BUCKET / prefix)
    raise ValueError(f"no fixture for {kind} remotes")


def uses_vhd_directories(remote):
    """XO stores incremental backups as VHD directories on S3 remotes, always (``useVhdDirectory``)."""
    return remote.kind == "s3"


# -- records as XO stores them ----------------------------------------------------------------
def _datamodel():
    global _DATAMODEL  # noqa: PLW0603 - loaded once
    if _DATAMODEL is None:
        _DATAMODEL = Datamodel()
    return _DATAMODEL


def xo_record(cls, record):
    """A record as XO's JSON-RPC client holds it: int64 as numbers, floats as numbers, dates as text."""
    fields = _datamodel().classes.get(cls, {})
    out = {}
    for key, value in record.items():
        kind = fields[key].type.kind if key in fields else None
        if hasattr(value, "timetuple") and hasattr(value, "value"):  # xmlrpc.client.DateTime
            out[key] = str(value.value)
        elif kind == "int" and isinstance(value, str) and value.lstrip("-").isdigit():
            out[key] = int(value)
        elif kind == "float" and isinstance(value, str):
            out[key] = float(value)
        else:
            out[key] = value
    return out


@dataclass
class FixtureDisk:
    userdevice: str
    name_label: str
    virtual_size: int
    live_uuid: str
    snapshot_uuid: str
    sha256: str  # content at snapshot time: what a restore of this backup must give back
    vhd: Optional[str] = None  # remote path (incremental backups)


@dataclass
class FixtureBackup:
    id: str
    mode: str
    timestamp: int
    vm_uuid: str
    vm_name: str
    metadata: Dict[str, Any]
    disks: Dict[str, FixtureDisk]  # by userdevice
    macs: Dict[str, str]  # VIF device -> MAC at backup time
    files: list = field(default_factory=list)  # remote paths written

    @property
    def date(self):
        return format_filename_date(self.timestamp)

    @property
    def default_name(self):
        """The name XO gives a restored VM: ``<name> (<timestamp>)``."""
        return f"{self.vm_name} ({self.date})"


# -- the job ----------------------------------------------------------------------------------
class XoJob:
    """One Xen Orchestra backup job (and schedule) writing to ``remote`` from simulator ``sim``.

    Backups are dated ``start``, ``start + step``… unless ``when`` is given, so file names are stable.
    """

    def __init__(self, sim, remote, name="Nightly", job_id=None, schedule_id=None, start=T0, step=timedelta(days=1)):
        self.sim = sim
        self.remote = remote
        self.storage = remote.storage
        self.name = name
        self.job_id = job_id or str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"xo-job:{name}"))
        self.schedule_id = schedule_id or str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"xo-schedule:{name}"))
        self._next = start
        self._step = step
        self._bases = {}  # vm uuid -> {"snapshot": ref, "disks": {live vdi uuid: (snap ref, snap uuid, ts)}}
        self.vhd_directory = uses_vhd_directories(remote)
        self.client = connect(sim)

    def close(self):
        self.client.logout()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers ------------------------------------------------------------------------------
    # Every XAPI call is a round trip, so records are fetched in bulk and other_config set in one call.
    def call(self, method, *args):
        return self.client.call(method, *args)

    def vm_ref(self, vm):
        if vm.startswith("OpaqueRef:"):
            return vm
        refs = self.call("VM.get_by_name_label", vm)
        if len(refs) != 1:
            raise LookupError(f"{len(refs)} VMs are named {vm!r} in the simulator")
        return refs[0]

    def _when(self, when):
        if when is None:
            when, self._next = self._next, self._next + self._step
        return when

    def _disk_vbds(self, vm_ref):
        """``[(vbd ref, vbd record, vdi record)]`` of the VM's disks, by position."""
        vbds = self.call("VBD.get_all_records_where", f'field "VM"="{vm_ref}"')
        out = []
        for ref, rec in vbds.items():
            if rec["type"] == "Disk" and rec["VDI"] != NULL:
                out.append((ref, rec, self.call("VDI.get_record", rec["VDI"])))
        return sorted(out, key=lambda item: int(item[1]["userdevice"]))

    def _snapshot(self, vm_ref, vm_rec, live_disks, when):
        """XO's snapshot step: temp name, not a template, backup keys, then the final name.

        Returns the snapshot and its disks (as :meth:`_disk_vbds`, other_config as now set).
        """
        nobak = [rec["VDI"] for _, rec, vdi in live_disks if "[NOBAK]" in vdi["name_label"]]
        args = (vm_ref, TEMP_SNAPSHOT_NAME, nobak) if nobak else (vm_ref, TEMP_SNAPSHOT_NAME)
        snap = self.call("VM.snapshot", *args)
        self.call("VM.set_is_a_template", snap, False)
        keys = {
            "xo:backup:datetime": format_backup_datetime(when),
            "xo:backup:job": self.job_id,
            "xo:backup:schedule": self.schedule_id,
            "xo:backup:vm": vm_rec["uuid"],
            "xo:backup:includeNonNbdQcow2Fix": "true",
        }
        # A snapshot copies the VM's other_config (and a VDI snapshot its VDI's): no need to read them back.
        self._update_other_config("VM", snap, keys, vm_rec)
        disks = self._disk_vbds(snap)
        for _, rec, vdi in disks:
            vdi["other_config"] = self._update_other_config(
                "VDI", rec["VDI"], {**keys, "xo:backup:contentKey": vdi["uuid"]}, vdi
            )
        self.call("VM.set_name_label", snap, f"[XO Backup {self.name}] {vm_rec['name_label']}")
        return snap, disks

    def _update_other_config(self, cls, ref, keys, record):
        value = {**record["other_config"], **keys}
        self.call(f"{cls}.set_other_config", ref, value)
        return value

    def _destroy_snapshot(self, snap, vdis):
        self.call("VM.destroy", snap)
        for vdi in vdis:
            with contextlib.suppress(Exception):
                self.call("VDI.destroy", vdi)

    def _disks(self, disk_vbds, live_uuids):
        disks = {}
        for _, rec, vdi in disk_vbds:
            disks[rec["userdevice"]] = FixtureDisk(
                userdevice=rec["userdevice"],
                name_label=vdi["name_label"],
                virtual_size=int(vdi["virtual_size"]),
                live_uuid=live_uuids.get(vdi["snapshot_of"], vdi["uuid"]),
                snapshot_uuid=vdi["uuid"],
                sha256=self.sim.sha256(vdi["uuid"]),
            )
        return disks

    @staticmethod
    def _live_uuids(live_disks):
        return {rec["VDI"]: vdi["uuid"] for _, rec, vdi in live_disks}

    def _vifs(self, vm_ref):
        return self.call("VIF.get_all_records_where", f'field "VM"="{vm_ref}"')

    # -- full ---------------------------------------------------------------------------------
    def full(self, vm, compression="zstd", when=None, snapshot=None, checksum="md5"):
        """A full backup (XVA). ``compression``: None, ``gzip`` (XO's "native") or ``zstd``.

        ``snapshot`` defaults to XO's rule: no snapshot for a halted VM. ``checksum`` is XO's MD5; the
        other algorithms stand for backups written by this collection's ``checksum`` option.
        """
        when = self._when(when)
        vm_ref = self.vm_ref(vm)
        vm_rec = self.call("VM.get_record", vm_ref)
        vm_uuid = vm_rec["uuid"]
        live_disks = self._disk_vbds(vm_ref)
        live_uuids = self._live_uuids(live_disks)
        if snapshot is None:
            snapshot = vm_rec["power_state"] != "Halted"
        if snapshot:
            exported, disk_vbds = self._snapshot(vm_ref, vm_rec, live_disks, when)
        else:
            exported, disk_vbds = vm_ref, live_disks
        exported_rec = self.call("VM.get_record", exported)
        disks = self._disks(disk_vbds, live_uuids)
        macs = {rec["device"]: rec["MAC"] for rec in self._vifs(exported).values()}
        use = {None: "false", "gzip": "true", "zstd": "zstd"}[compression]
        xva = xva_path(vm_uuid, when)
        with ExportStream(self.client, "/export", f"XO export of {vm_rec['name_label']}", ref=exported,
                          use_compression=use) as src, self.storage.open_write(xva) as out:  # fmt: skip
            writer = ChecksumWriter(out, checksum)
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                writer.write(chunk)
        self.storage.write_bytes(xva_checksum_path(vm_uuid, when), writer.checksum.text.encode("ascii"))
        md = build_full_metadata(
            job_id=self.job_id,
            schedule_id=self.schedule_id,
            timestamp=when,
            vm=xo_record("VM", vm_rec),
            vm_snapshot=xo_record("VM", exported_rec),
            size=writer.checksum.size,
            tags=[],
        )
        bid = metadata_path(vm_uuid, when)
        self.storage.write_bytes(bid, dump_metadata(md))
        update_cache(self.storage, vm_uuid, add={bid: md})
        if snapshot:
            self._destroy_snapshot(exported, [rec["VDI"] for _, rec, _ in disk_vbds])  # snapshot retention 0
        return FixtureBackup(bid, "full", to_ms(when), vm_uuid, vm_rec["name_label"], md, disks, macs,
                             [xva, xva_checksum_path(vm_uuid, when), bid])  # fmt: skip

    # -- incremental --------------------------------------------------------------------------
    def delta(self, vm, when=None):
        """An incremental backup: a delta against the previous run's snapshot, or a full VHD first."""
        when = self._when(when)
        vm_ref = self.vm_ref(vm)
        vm_rec = self.call("VM.get_record", vm_ref)
        vm_uuid = vm_rec["uuid"]
        live_disks = self._disk_vbds(vm_ref)
        live_uuids = self._live_uuids(live_disks)
        previous = self._bases.get(vm_uuid)
        snap, disk_vbds = self._snapshot(vm_ref, vm_rec, live_disks, when)
        disks = self._disks(disk_vbds, live_uuids)
        srs = {ref: rec["uuid"] for ref, rec in self.call("SR.get_all_records").items()}
        vdis, vbds, vhds, differencing, base_disks = {}, {}, {}, {}, {}
        size = 0
        files = []
        for vbd_ref, vbd, vdi in disk_vbds:
            snap_vdi = vbd["VDI"]
            live_uuid = live_uuids.get(vdi["snapshot_of"], vdi["uuid"])
            base = (previous or {}).get("disks", {}).get(live_uuid)
            rel = vhd_relative_path(self.job_id, live_uuid, when, self.vhd_directory)
            path = f"{vm_backup_dir(vm_uuid)}/{rel}"
            size += self._write_vhd(snap_vdi, vdi["uuid"], path, base)
            files.append(path)
            disks[vbd["userdevice"]].vhd = path
            vdis[snap_vdi] = vdi_record(
                xo_record("VDI", vdi),
                snapshot_of_uuid=live_uuid,
                sr_uuid=srs[vdi["SR"]],
                vm_uuid=vm_uuid,
                base_vdi_uuid=base[1] if base else None,
            )
            vbds[vbd_ref] = xo_record("VBD", vbd)
            vhds[snap_vdi] = rel
            differencing[snap_vdi] = base is not None
            base_disks[live_uuid] = (snap_vdi, vdi["uuid"], when)
        networks = self.call("network.get_all_records")
        pifs = self.call("PIF.get_all_records")
        vifs, macs = {}, {}
        for ref, rec in self._vifs(snap).items():
            net = networks[rec["network"]]
            vlan = int(pifs[net["PIFs"][0]]["VLAN"]) if net["PIFs"] else None
            out = vif_record(xo_record("VIF", rec), network_uuid=net["uuid"], network_name_label=net["name_label"],
                             network_vlan=vlan)  # fmt: skip
            if vlan is None:  # XO's `$PIFs[0]?.VLAN` is undefined: the key is absent from the JSON
                del out["$network$VLAN"]
            vifs[ref] = out
            macs[rec["device"]] = rec["MAC"]
        chain_length = 0 if previous is None else previous["chain_length"] + 1
        snap_rec = self.call("VM.get_record", snap)
        snap_rec["other_config"] = self._update_other_config(
            "VM", snap, {"xo:backup:exported": "true", "xo:backup:deltaChainLength": str(chain_length)}, snap_rec
        )
        md = build_delta_metadata(
            job_id=self.job_id,
            schedule_id=self.schedule_id,
            timestamp=when,
            vm=xo_record("VM", vm_rec),
            vm_snapshot=xo_record("VM", snap_rec),
            vdis=vdis,
            vbds=vbds,
            vifs=vifs,
            vhds=vhds,
            is_vhd_differencing=differencing,
            size=size,
            tags=[],
        )
        bid = metadata_path(vm_uuid, when)
        self.storage.write_bytes(bid, dump_metadata(md))
        update_cache(self.storage, vm_uuid, add={bid: md})
        if previous is not None:
            self._destroy_snapshot(previous["snapshot"], [d[0] for d in previous["disks"].values()])
        self._bases[vm_uuid] = {"snapshot": snap, "disks": base_disks, "chain_length": chain_length}
        return FixtureBackup(bid, "delta", to_ms(when), vm_uuid, vm_rec["name_label"], md, disks, macs,
                             [*files, bid])  # fmt: skip

    def _write_vhd(self, snap_vdi, snap_uuid, path, base):
        """XAPI's VHD stream (delta against ``base`` when given) re-emitted as XO writes it."""
        query = {"vdi": snap_vdi, "format": "vhd"}
        if base is not None:
            query["base"] = base[0]
        with ExportStream(self.client, "/export_raw_vdi", f"XO export of VDI {snap_uuid}", **query) as src:
            reader = VhdStreamReader(src, f"XAPI VHD of {snap_uuid}")
            writer = VhdWriter(
                reader.virtual_size,
                reader.block_order,
                uuid=snap_uuid,
                parent_uuid=base[1] if base else None,
                parent_name=vhd_basename(base[2], self.vhd_directory) if base else "",
            )
            if self.vhd_directory:
                return self._write_vhd_directory(path, writer, reader)
            with self.storage.open_write(path) as out:
                written = writer.write_to(out, reader.blocks())
        return written

    def _write_vhd_directory(self, alias, writer, reader):
        """The same VHD as XO's VhdDirectory: ``data/<ts>.vhd/{footer,header,bat,chunk-filters.json,blocks/…}``,
        each block (full bitmap + data) brotli-compressed at quality 0, the alias ``data/<ts>.vhd`` last.

        Written here from the reference, not with the collection's directory code, so that reading
        these back tests that code against an independent writer."""
        import brotli  # noqa: PLC0415 - only S3 fixtures need it

        folder, name = alias.rsplit("/", 1)
        data_rel = "data/" + name.replace(".alias.vhd", ".vhd")
        directory = f"{folder}/{data_rel}"
        entries = -(-reader.virtual_size // (2 * MIB))
        bat = bytearray(-(-entries // 8))
        written = 0
        for index, block in reader.blocks():
            if index >= entries:
                continue
            blob = brotli.compress(b"\xff" * 512 + bytes(block).ljust(2 * MIB, b"\0"), quality=0)
            self.storage.write_bytes(f"{directory}/blocks/{index // 1000}/{index % 1000}", blob)
            bat[index // 8] |= 0x80 >> (index % 8)
            written += len(blob)
        parts = {
            "chunk-filters.json": b'["brotli"]',
            "bat": bytes(bat),
            "header": writer.header.to_bytes(),
            "footer": writer.footer.to_bytes(),
        }
        for leaf, data in parts.items():
            self.storage.write_bytes(f"{directory}/{leaf}", data)
            written += len(data)
        self.storage.write_bytes(alias, data_rel.encode())
        return written

    # -- guest activity between backups -------------------------------------------------------
    def guest_write(self, vm, userdevice, data, offset):
        """Write into a live disk of ``vm`` as its guest would."""
        for _, rec, vdi in self._disk_vbds(self.vm_ref(vm)):
            if rec["userdevice"] == str(userdevice):
                self.sim.write(vdi["uuid"], data, offset)
                return
        raise LookupError(f"{vm} has no disk {userdevice}")

    def live_hashes(self, vm):
        """SHA-256 of each live disk of ``vm`` by userdevice."""
        return {rec["userdevice"]: self.sim.sha256(vdi["uuid"]) for _, rec, vdi in self._disk_vbds(self.vm_ref(vm))}


def full_backup_on_a_lost_network(job, vm="tiny-01"):
    """A full backup of ``vm`` with a second VIF on "Private LAN", a network the pool no longer has once
    the backup is made: restoring it, XAPI's import creates that network again."""
    vm_ref = job.vm_ref(vm)
    net = job.call("network.create", {"name_label": "Private LAN", "name_description": "", "MTU": "1500",
                                      "other_config": {}, "bridge": "xapi5"})  # fmt: skip
    vif = job.call("VIF.create", {"device": "1", "network": net, "VM": vm_ref, "MAC": "", "MTU": "1500",
                                  "other_config": {}, "qos_algorithm_type": "",
                                  "qos_algorithm_params": {}})  # fmt: skip
    fixture = job.full(vm, compression=None)
    job.call("VIF.destroy", vif)
    job.call("network.destroy", net)
    return fixture


def rewrite_metadata(remote, backup, change):
    """Apply ``change(metadata)`` to a backup's JSON on the remote and drop the stale cache (as if edited)."""
    md = json.loads(remote.storage.read_bytes(backup.id))
    change(md)
    remote.storage.write_bytes(backup.id, dump_metadata(md))
    remote.storage.delete(f"{vm_backup_dir(backup.vm_uuid)}/cache.json.gz")
    return md

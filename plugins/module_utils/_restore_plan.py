"""Plan a restore before touching the pool: what is created where, how many bytes move, whether it fits.

The plan resolves every name the operator gave (SR, per-disk SRs, networks) against the target pool,
opens each incremental disk's VHD chain on the remote (so a missing file is reported before anything
is created), maps VIFs to networks as Xen Orchestra's restore does, and checks free space on each
target SR. Check mode returns it as it is; a real restore executes it (``_restore.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ._restore_errors import ChecksumMismatchError, InsufficientSpaceError, RestoreError, RestoreInputError
from ._storage import NotFoundError, StorageError
from ._vhd_chain import open_vhd_chain
from ._vhd_directory import remote_vhd_opener
from ._vhd_errors import VhdError, VhdMissingParentError
from ._xo_checksum import parse_checksum
from ._xo_layout import CHECKSUM_SUFFIX, format_filename_date, is_uuid
from ._xva_codec import detect_compression
from ._xva_errors import XvaError
from ._xva_ovaxml import objects_of_class
from ._xva_read import XvaReader

NULL_REF = "OpaqueRef:NULL"
# SRs that reserve a disk's whole virtual size when it is created (xapi's LVM drivers).
THICK_SR_TYPES = ("lvm", "lvmoiscsi", "lvmohba", "lvmofcoe")
MIB = 1024 * 1024


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def human(size):
    """``14.0 MiB``: sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024.0
    return f"{size} B"  # pragma: no cover - the loop always returns


# -- the target pool -------------------------------------------------------------------------
class PoolView:
    """The target pool's SRs, networks and PIFs, each read once (one call per class)."""

    def __init__(self, client):
        self.client = client
        self._srs = None
        self._networks = None
        self._pifs = None
        self._pool = None

    @property
    def srs(self):
        if self._srs is None:
            self._srs = self.client.call("SR.get_all_records")
        return self._srs

    @property
    def networks(self):
        if self._networks is None:
            self._networks = self.client.call("network.get_all_records")
        return self._networks

    @property
    def pifs(self):
        if self._pifs is None:
            self._pifs = self.client.call("PIF.get_all_records")
        return self._pifs

    @property
    def pool(self):
        if self._pool is None:
            self._pool = next(iter(self.client.call("pool.get_all_records").values()), {})
        return self._pool

    # -- SRs --------------------------------------------------------------------------------
    def sr(self, value, option="sr"):
        """``(ref, record)`` of the SR named or identified by ``value``; a ref is accepted as is."""
        text = str(value).strip()
        if text in self.srs:
            return text, self.srs[text]
        if is_uuid(text):
            found = [(r, s) for r, s in self.srs.items() if s.get("uuid") == text.lower()]
        else:
            found = [(r, s) for r, s in self.srs.items() if s.get("name_label") == text]
        usable = [(r, s) for r, s in found if s.get("content_type") != "iso"]
        if not found:
            raise RestoreInputError(f"{option}={text!r} matches no SR of the pool. {self._sr_choices()}")
        if not usable:
            raise RestoreInputError(f"{option}={text!r} is an ISO library, which cannot hold VM disks.")
        if len(usable) > 1:
            uuids = ", ".join(sorted(s["uuid"] for _, s in usable))
            raise RestoreInputError(f"{option}={text!r}: several SRs have that name ({uuids}); give its UUID.")
        return usable[0]

    def _sr_choices(self):
        names = sorted(
            f"{s.get('name_label')!r} ({s.get('uuid')})" for s in self.srs.values() if s.get("content_type") != "iso"
        )
        return f"SRs that can hold disks: {', '.join(names) or 'none'}."

    def sr_summary(self, ref):
        rec = self.srs.get(ref, {})
        return {"uuid": rec.get("uuid"), "name_label": rec.get("name_label")}

    def sr_free(self, ref):
        """``(free bytes, thick)``: thick SRs count virtual allocation, thin ones the data written."""
        rec = self.srs[ref]
        size = _int(rec.get("physical_size"), -1)
        thick = rec.get("type") in THICK_SR_TYPES
        used = _int(rec.get("virtual_allocation" if thick else "physical_utilisation"))
        return (None if size <= 0 else max(size - used, 0)), thick

    # -- networks ---------------------------------------------------------------------------
    def network(self, value, option="network_map"):
        text = str(value).strip()
        if text in self.networks:
            return text
        if is_uuid(text):
            found = [r for r, n in self.networks.items() if n.get("uuid") == text.lower()]
        else:
            found = [r for r, n in self.networks.items() if n.get("name_label") == text]
        if not found:
            names = sorted(f"{n.get('name_label')!r}" for n in self.networks.values())
            raise RestoreInputError(
                f"{option} names the network {text!r}, which the pool does not have. Its networks: {', '.join(names)}."
            )
        if len(found) > 1:
            uuids = ", ".join(sorted(self.networks[r]["uuid"] for r in found))
            raise RestoreInputError(f"{option}: several networks are named {text!r} ({uuids}); give its UUID.")
        return found[0]

    def network_summary(self, ref):
        rec = self.networks.get(ref)
        return None if rec is None else {"uuid": rec.get("uuid"), "name_label": rec.get("name_label")}

    def vlan(self, net_ref):
        """VLAN of the network's first PIF (as Xen Orchestra reads it), or None for a network without PIF."""
        pifs = self.networks.get(net_ref, {}).get("PIFs") or []
        pif = self.pifs.get(pifs[0]) if pifs else None
        return None if pif is None else _int(pif.get("VLAN"), -1)

    def default_network(self):
        """The pool's default network: the one of the master's management interface."""
        master = self.pool.get("master")
        managed = [p for p in self.pifs.values() if p.get("management") and p.get("network") in self.networks]
        for pif in sorted(managed, key=lambda p: p.get("host") != master):
            return pif["network"]
        with_pifs = sorted((n.get("name_label", ""), r) for r, n in self.networks.items() if n.get("PIFs"))
        return with_pifs[0][1] if with_pifs else None


def map_vif_network(vif, pool):
    """``(network ref, how)`` for a VIF record of delta metadata, as Xen Orchestra's restore maps it.

    By ``$network$uuid`` when the pool has that network; else by ``$network$name_label`` among the
    networks on the same VLAN (``$network$VLAN``, the VLAN of each network's first PIF; networks
    without PIF are not candidates); else, for a tagged VLAN, the first network on it; else the pool's
    default network (the master's management network). ``how`` says which rule matched.
    """
    uuid = vif.get("$network$uuid")
    if uuid:
        for ref, net in pool.networks.items():
            if net.get("uuid") == uuid:
                return ref, "uuid"
    vlan = _int(vif.get("$network$VLAN", -1), -1)
    same_vlan = sorted((net.get("name_label", ""), ref) for ref, net in pool.networks.items() if pool.vlan(ref) == vlan)
    for name, ref in same_vlan:
        if name == vif.get("$network$name_label"):
            return ref, "name"
    if same_vlan and vlan >= 0:
        return same_vlan[0][1], "vlan"
    default = pool.default_network()
    return default, "default" if default else "none"


# -- remote reads ------------------------------------------------------------------------------
def read_xva_header(storage, path):
    """``(ova.xml header dict or None, compression, problem text or None)`` read from the XVA's head only."""
    try:
        with storage.open_read(path) as stream:
            compression = detect_compression(stream.pread(0, 4))
            try:
                return XvaReader(stream, path, verify_checksums=False).read_header(), compression, None
            except XvaError as e:
                return None, compression, str(e)
    except NotFoundError:
        raise RestoreError(f"The backup's XVA {path} is missing on {storage.display}; it cannot be restored.") from None
    except StorageError as e:
        raise RestoreError(f"Cannot read {path} on {storage.display}: {e}") from None


def check_xva_size(backup, size, force):
    """Refuse an XVA whose size is not the metadata's (unless ``force``: then the warning text, else None)."""
    if backup.size is None or size == backup.size:
        return None
    if not force:
        raise ChecksumMismatchError(
            f"{backup.xva} has {size} bytes but the backup's metadata says {backup.size}: the file is "
            "truncated or was replaced. Set force=true to restore it anyway."
        )
    return f"{backup.xva} has {size} bytes but the metadata says {backup.size}; restored anyway."


def read_xva_checksum(storage, backup, force):
    """``(checksum or None, status, warning or None)`` from the XVA's ``.xva.checksum``.

    ``status`` is ``absent`` (no file), ``unverified`` (invalid file, ``force``) or None (a checksum to check).
    An invalid file is refused unless ``force``.
    """
    path = backup.xva + CHECKSUM_SUFFIX
    try:
        text = storage.read_bytes(path, limit=4096)
    except NotFoundError:
        return None, "absent", None
    except StorageError as e:
        raise RestoreError(f"Cannot read {path} on {storage.display}: {e}") from None
    try:
        return parse_checksum(text), None, None
    except ValueError as e:
        if not force:
            raise ChecksumMismatchError(
                f"{path} is not a valid checksum file ({e}); the backup cannot be verified. Set force=true to "
                "restore it anyway."
            ) from None
        return None, "unverified", f"{path} is not a valid checksum file; the XVA was restored without verification."


def open_chain(storage, path, disk):
    """The VHD chain of one disk, every parent opened; errors name the file that is missing or bad."""
    try:
        return open_vhd_chain(path, opener=remote_vhd_opener(storage))
    except VhdMissingParentError as e:
        raise RestoreError(
            f"Disk {disk} cannot be restored: its VHD chain is broken, the parent of {e.source} is missing on "
            f"{storage.display} ({e.message}). Restore a backup whose chain is complete (backup_info lists them)."
        ) from None
    except (NotFoundError, FileNotFoundError):
        raise RestoreError(f"Disk {disk} cannot be restored: its VHD {path} is missing on {storage.display}.") from None
    except VhdError as e:
        raise RestoreError(f"Disk {disk} cannot be restored: its VHD chain is unreadable ({e}).") from None
    except StorageError as e:
        raise RestoreError(f"Cannot read the VHD chain of disk {disk} on {storage.display}: {e}") from None


# -- the plan ----------------------------------------------------------------------------------
@dataclass
class DiskPlan:
    """One VDI to create (or skip). ``ref`` is its ref in the metadata (delta) or its ova.xml id (full)."""

    ref: str
    record: Dict[str, Any]
    userdevice: Optional[str]
    name_label: str
    virtual_size: int
    sr_ref: Optional[str]  # None: skipped (mapped to nothing)
    bytes: int = 0  # bytes sent to XAPI for this disk (delta); 0 for full backups (one XVA stream)
    data: int = 0  # physical bytes the disk will take on a thin SR
    vhd: Optional[str] = None
    chain: Any = None
    vbds: List[Dict[str, Any]] = field(default_factory=list)
    suspend: bool = False

    @property
    def keys(self):
        """Ways ``disk_srs`` may name this disk: position, backed-up VDI UUID, live VDI UUID."""
        return {k for k in (self.userdevice, self.record.get("uuid"), self.record.get("$snapshot_of$uuid")) if k}


@dataclass
class VifPlan:
    device: str
    record: Dict[str, Any]
    mac: str  # "" asks XAPI for a new one
    network_ref: Optional[str]
    mapped_by: str
    source: Dict[str, Any]


@dataclass
class RestorePlan:
    backup: Any
    name: str
    sr_ref: str
    disks: List[DiskPlan]
    vifs: List[VifPlan]
    bytes_to_transfer: int
    space: List[Dict[str, Any]]
    pool: Any = None
    xva_header: Optional[Dict[str, Any]] = None
    xva_compression: Optional[str] = None
    suspend: Optional[DiskPlan] = None
    notes: List[str] = field(default_factory=list)
    network_map: Dict[str, Any] = field(default_factory=dict)
    new_mac_addresses: bool = False
    no_network: bool = False

    @property
    def mode(self):
        return self.backup.mode

    def close(self):
        for disk in self.disks + ([self.suspend] if self.suspend else []):
            if disk.chain is not None:
                with contextlib.suppress(Exception):
                    disk.chain.close()
                disk.chain = None

    def to_dict(self):
        vm = self.backup.metadata.get("vm") or {}
        pool = self.pool
        return {
            "mode": self.mode,
            "vm": {
                "name_label": self.name,
                "source_name_label": vm.get("name_label"),
                "source_uuid": vm.get("uuid"),
                "memory": _int(vm.get("memory_static_max"), None),
                "vcpus": _int(vm.get("VCPUs_at_startup"), None),
            },
            "sr": pool.sr_summary(self.sr_ref),
            "disks": [
                {
                    "position": d.userdevice,
                    "name_label": d.name_label,
                    "virtual_size": d.virtual_size,
                    "sr": pool.sr_summary(d.sr_ref) if d.sr_ref else None,
                    "skipped": d.sr_ref is None,
                    "bytes": d.bytes,
                }
                for d in self.disks
            ],
            "vifs": [
                {
                    "device": v.device,
                    "mac": v.mac or None,
                    "network": pool.network_summary(v.network_ref) if v.network_ref else None,
                    "mapped_by": v.mapped_by,
                    "source_network": v.source,
                }
                for v in self.vifs
            ],
            "bytes_to_transfer": self.bytes_to_transfer,
            "space": self.space,
            "notes": list(self.notes),
        }


def _network_override(network_map, keys):
    """``(True, target or None)`` when ``network_map`` names one of ``keys`` (a source uuid or name)."""
    for key in keys:
        if key and key in network_map:
            return True, network_map[key]
    return False, None


def _check_map_keys(option, given, known, what):
    unknown = sorted(set(given) - known)
    if unknown:
        choices = ", ".join(sorted(k for k in known if k)) or "none"
        raise RestoreInputError(
            f"{option} names {what} the backup does not have: {', '.join(unknown)}. It has: {choices}."
        )


def plan_restore(
    client,
    storage,
    backup,
    *,
    sr,
    name=None,
    disk_srs=None,
    network_map=None,
    new_mac_addresses=False,
    no_network=False,
    force=False,
    pool=None,
):
    """Resolve targets and build a :class:`RestorePlan`; raise before anything is created when it can't work.

    A full backup whose XVA size differs from its metadata, or whose checksum file is invalid, is refused
    here (check mode included) unless ``force``, as the restore itself would refuse it.

    ``disk_srs`` maps a disk (position such as ``"1"``, or the UUID of the backed-up or of the live VDI) to an
    SR name/UUID, or to ``None``/``""`` to leave the disk out. ``network_map`` maps a backed-up network (UUID
    or name) to a pool network, or to ``None``/``""`` to drop the VIFs on it. ``no_network`` drops every VIF.
    """
    pool = pool or PoolView(client)
    sr_ref, _ = pool.sr(sr)
    disk_srs = dict(disk_srs or {})
    network_map = {str(k): v for k, v in (network_map or {}).items()}
    md = backup.metadata
    vm = md.get("vm") or {}
    name = name if name is not None else f"{vm.get('name_label', '')} ({format_filename_date(backup.timestamp)})"
    if not name.strip():
        raise RestoreInputError("name must not be empty.")
    resolved_srs = {}
    for key, value in disk_srs.items():
        resolved_srs[str(key)] = None if value in (None, "") else pool.sr(value, f"disk_srs[{key}]")[0]
    resolved_nets = {}
    for key, value in network_map.items():
        resolved_nets[key] = None if value in (None, "") else pool.network(value, f"network_map[{key}]")
    plan = RestorePlan(backup, name, sr_ref, [], [], 0, [], pool=pool, network_map=resolved_nets,
                       new_mac_addresses=new_mac_addresses, no_network=no_network)  # fmt: skip
    try:
        if backup.mode == "full":
            if disk_srs:
                raise RestoreInputError(
                    "disk_srs applies to incremental backups only: XAPI imports every disk of a full backup (XVA) "
                    "to the one SR given in sr."
                )
            _plan_full(plan, storage, backup, pool, resolved_nets, force)
        else:
            _plan_delta(plan, storage, backup, pool, resolved_srs, resolved_nets)
        plan.space = check_space(pool, plan)
    except BaseException:
        plan.close()
        raise
    return plan


def _plan_full(plan, storage, backup, pool, nets, force=False):
    header, compression, problem = read_xva_header(storage, backup.xva)
    plan.xva_header, plan.xva_compression = header, compression
    try:
        size = storage.size(backup.xva)
    except StorageError as e:
        raise RestoreError(f"Cannot read {backup.xva} on {storage.display}: {e}") from None
    plan.bytes_to_transfer = size
    # What the restore checks before sending a byte: check mode must refuse what it would refuse.
    check_xva_size(backup, size, force)
    read_xva_checksum(storage, backup, force)
    if header is None:
        plan.notes.append(f"The XVA's ova.xml could not be read ({problem}); disks and VIFs are not listed.")
        # Both are applied to the VIFs ova.xml lists; without it they would be silently ignored.
        if nets:
            raise RestoreInputError(f"network_map cannot be applied: the XVA's ova.xml is unreadable ({problem}).")
        if plan.new_mac_addresses:
            raise RestoreInputError(
                f"new_mac_addresses cannot be applied: the XVA's ova.xml is unreadable ({problem}). Fix that, or "
                "leave new_mac_addresses out to keep the backed-up MAC addresses."
            )
        return
    vbds = objects_of_class(header, "VBD")
    for vdi_id, rec in sorted(objects_of_class(header, "VDI").items(), key=lambda kv: kv[0]):
        users = [v for v in vbds.values() if v.get("VDI") == vdi_id]
        position = min((str(v.get("userdevice")) for v in users), key=lambda s: (len(s), s), default=None)
        plan.disks.append(
            DiskPlan(
                vdi_id, rec, position, rec.get("name_label", ""), _int(rec.get("virtual_size")), plan.sr_ref, vbds=users
            )
        )
    plan.disks.sort(key=lambda d: (d.userdevice is None, _int(d.userdevice, 999), d.ref))
    # ova.xml carries no count of the data bytes; an uncompressed XVA is mostly disk data.
    if compression:
        plan.notes.append(
            f"The XVA is {compression}-compressed: the space its disks take is known only after the import "
            "(the check assumes at least its stored size)."
        )
    networks = objects_of_class(header, "network")
    known = set()
    for _, rec in sorted(objects_of_class(header, "VIF").items(), key=lambda kv: _int(kv[1].get("device"))):
        net = networks.get(rec.get("network"), {})
        source = {"uuid": net.get("uuid"), "name_label": net.get("name_label")}
        known.update(k for k in source.values() if k)
        overridden, target = _network_override(nets, (net.get("uuid"), net.get("name_label")))
        if overridden:
            ref, how = target, "network_map"
        else:
            ref = next((r for r, n in pool.networks.items() if net.get("bridge") and n.get("bridge") == net["bridge"]),
                       None) or next((r for r, n in pool.networks.items()
                                      if n.get("name_label") == net.get("name_label")), None)  # fmt: skip
            how = "import"  # XAPI's /import maps by bridge, then name, and creates a missing network
        if plan.no_network or (overridden and target is None):
            continue
        mac = "" if plan.new_mac_addresses else rec.get("MAC", "")
        plan.vifs.append(VifPlan(str(rec.get("device", "")), rec, mac, ref, how, source))
    _check_map_keys("network_map", nets, known, "networks")


def _plan_delta(plan, storage, backup, pool, srs, nets):
    md = backup.metadata
    vdis, vbds, vhds = md.get("vdis") or {}, md.get("vbds") or {}, backup.vhds
    suspend_ref = (md.get("vmSnapshot") or {}).get("suspend_VDI") or NULL_REF
    disks = []
    for ref, rec in vdis.items():
        if ref not in vhds:
            continue  # nothing stored for it (XO stores a VHD for every VDI it lists)
        users = [v for v in vbds.values() if v.get("VDI") == ref]
        position = min((str(v.get("userdevice")) for v in users), key=lambda s: (len(s), s), default=None)
        disk = DiskPlan(ref, rec, position, rec.get("name_label", ""), _int(rec.get("virtual_size")), plan.sr_ref,
                        vhd=vhds[ref], vbds=users, suspend=ref == suspend_ref)  # fmt: skip
        disks.append(disk)
    known = set()
    for disk in disks:
        known |= disk.keys
    _check_map_keys("disk_srs", srs, known, "disks")
    for disk in disks:
        given = sorted(k for k in disk.keys if k in srs)
        if len({srs[k] for k in given}) > 1:  # which one wins would depend on set order: refuse
            label = f"{disk.name_label!r} (position {disk.userdevice})" if disk.userdevice else repr(disk.name_label)
            raise RestoreInputError(
                f"disk_srs names disk {label} twice, as {' and '.join(repr(k) for k in given)}, with different "
                "SRs; keep only one of those keys."
            )
        if given:
            disk.sr_ref = srs[given[0]]
    try:
        for disk in disks:
            if disk.sr_ref is None:
                continue
            label = f"{disk.name_label!r} (position {disk.userdevice})" if disk.userdevice else repr(disk.name_label)
            disk.chain = open_chain(storage, disk.vhd, label)
            if disk.chain.virtual_size > disk.virtual_size > 0:
                raise RestoreError(
                    f"Disk {label}: its VHD holds {disk.chain.virtual_size} bytes but the backed-up disk has "
                    f"{disk.virtual_size}; the backup is inconsistent."
                )
            disk.virtual_size = disk.virtual_size or disk.chain.virtual_size
            disk.bytes = disk.chain.flattened_vhd().size
            disk.data = len(disk.chain.allocated_blocks()) * disk.chain.block_size
    except BaseException:
        for disk in disks:
            if disk.chain is not None:
                disk.chain.close()
        raise
    plan.suspend = next((d for d in disks if d.suspend), None)
    plan.disks = sorted((d for d in disks if not d.suspend), key=lambda d: (d.userdevice is None,
                        _int(d.userdevice, 999), d.ref))  # fmt: skip
    plan.bytes_to_transfer = sum(d.bytes for d in disks if d.sr_ref)
    known_nets = set()
    for rec in sorted((md.get("vifs") or {}).values(), key=lambda r: _int(r.get("device"))):
        source = {"uuid": rec.get("$network$uuid"), "name_label": rec.get("$network$name_label"),
                  "vlan": rec.get("$network$VLAN")}  # fmt: skip
        known_nets.update(k for k in (source["uuid"], source["name_label"]) if k)
        overridden, target = _network_override(nets, (source["uuid"], source["name_label"]))
        if plan.no_network or (overridden and target is None):
            continue
        ref, how = (target, "network_map") if overridden else map_vif_network(rec, pool)
        if ref is None:
            plan.notes.append(f"VIF {rec.get('device')} is left out: the pool has no network to put it on.")
            continue
        mac = "" if plan.new_mac_addresses else rec.get("MAC", "")
        plan.vifs.append(VifPlan(str(rec.get("device", "")), rec, mac, ref, how, source))
    _check_map_keys("network_map", nets, known_nets, "networks")


def check_space(pool, plan):
    """Per target SR: free space and what the restore needs; raise when a disk cannot fit."""
    needs = {}
    for disk in plan.disks + ([plan.suspend] if plan.suspend else []):
        if disk.sr_ref is None:
            continue
        needs.setdefault(disk.sr_ref, []).append(disk)
    if plan.mode == "full" and not plan.disks:
        needs[plan.sr_ref] = []
    report = []
    for sr_ref, disks in needs.items():
        free, thick = pool.sr_free(sr_ref)
        if thick:
            need = sum(d.virtual_size for d in disks) or plan.bytes_to_transfer
        elif plan.mode == "full":
            need = plan.bytes_to_transfer
        else:
            need = sum(d.data for d in disks)
        summary = pool.sr_summary(sr_ref)
        report.append({"sr": summary, "free": free, "needed": need, "thick": thick})
        if free is not None and need > free:
            what = "the virtual size of" if thick else "the data of"
            raise InsufficientSpaceError(
                f"SR {summary['name_label']!r} has {human(free)} free but the restore needs {human(need)} for "
                f"{what} {len(disks) or 'its'} disk(s); free space on it or restore to another SR (sr, disk_srs). "
                "Nothing was created."
            )
    return report

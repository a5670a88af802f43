"""List the VM backups on a remote, ours and Xen Orchestra's alike (same layout).

Read-only: the cache is used when it covers exactly the metadata files present, otherwise every
metadata file is read; nothing is rewritten (use ``_xo_cache.update_cache`` under the VM lock).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import NotFoundError, Storage, StorageError
from ansible_collections.xapi.proxy.plugins.module_utils._xo_cache import read_cache, scan_metadata
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import (
    BACKUP_DIR,
    CACHE_NAME,
    is_metadata_name,
    to_datetime,
    vm_backup_dir,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    MetadataError,
    validate_metadata,
    vhd_remote_paths,
    xva_remote_path,
)


@dataclass(frozen=True)
class BackupInfo:
    """One VM backup. ``xva`` and ``vhds`` values are remote paths (relative to the remote root)."""

    id: str
    vm_uuid: str
    vm_name: str
    timestamp: int
    date: str
    mode: str
    size: Optional[int]
    job_id: str
    schedule_id: str
    tags: List[str]
    xva: Optional[str]
    vhds: Dict[str, str]
    metadata: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def with_memory(self) -> bool:
        """An incremental backup of a suspended VM: its memory image is stored beside the disks."""
        image = (self.metadata.get("vmSnapshot") or {}).get("suspend_VDI")
        return bool(image) and image in self.vhds

    @property
    def differencing(self) -> Dict[str, bool]:
        """Per VDI ref: is the stored VHD a delta on top of an older one."""
        return dict(self.metadata.get("isVhdDifferencing") or {})

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary for module results (no raw records)."""
        out = {
            "id": self.id,
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "timestamp": self.timestamp,
            "date": self.date,
            "mode": self.mode,
            "size": self.size,
            "job_id": self.job_id,
            "schedule_id": self.schedule_id,
            "tags": list(self.tags),
            "with_memory": self.with_memory,
        }
        if self.mode == "full":
            out["xva"] = self.xva
        else:
            out["vhds"] = dict(self.vhds)
        return out


@dataclass
class Listing:
    backups: Dict[str, List[BackupInfo]]  # vm uuid -> backups, oldest first
    warnings: List[str]

    def all(self) -> List[BackupInfo]:
        return sorted((b for bs in self.backups.values() for b in bs), key=lambda b: (b.timestamp, b.id))


def backup_info(backup_id: str, md: Dict[str, Any]) -> BackupInfo:
    ts = int(md["timestamp"])
    return BackupInfo(
        id=backup_id,
        vm_uuid=backup_id.split("/")[1],
        vm_name=str(md["vm"].get("name_label", "")),
        timestamp=ts,
        date=to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        mode=md["mode"],
        size=int(md["size"]) if md.get("size") is not None else None,
        job_id=md["jobId"],
        schedule_id=md["scheduleId"],
        tags=list(md.get("tags") or []),
        xva=xva_remote_path(backup_id, md),
        vhds=vhd_remote_paths(backup_id, md),
        metadata=md,
    )


def list_vm_uuids(storage: Storage) -> List[str]:
    """VM directories under ``xo-vm-backups`` (lock dirs, the merge queue and dot-files excluded)."""
    names = storage.list(BACKUP_DIR, missing_ok=True)
    return [n for n in names if not n.startswith(".") and ".lock" not in n]


def list_vm_backups(
    storage: Storage, vm_uuid: str, *, use_cache: bool = True, warnings: Optional[List[str]] = None
) -> List[BackupInfo]:
    """Backups of one VM, oldest first. Invalid metadata is skipped and reported in ``warnings``."""
    warnings = [] if warnings is None else warnings
    directory = vm_backup_dir(vm_uuid)
    try:
        names = storage.list(directory, missing_ok=True)
    except StorageError as err:  # e.g. a stray file where a VM directory should be
        warnings.append(str(err))
        return []
    ids = {f"{directory}/{n}" for n in names if is_metadata_name(n)}
    metadata = None
    if use_cache and CACHE_NAME in names:
        cached = read_cache(storage, vm_uuid)
        if cached is not None and set(cached) == ids:
            metadata = cached
    if metadata is None:
        metadata = scan_metadata(storage, vm_uuid, warnings)
    out = []
    for bid, md in metadata.items():
        try:
            if not bid.startswith(directory + "/"):
                raise MetadataError(f"{bid}: listed under {directory} but names another directory.")
            out.append(backup_info(bid, validate_metadata(md, bid)))
        except MetadataError as err:
            warnings.append(str(err))
    return sorted(out, key=lambda b: (b.timestamp, b.id))


def list_backups(storage: Storage, vm_uuid: Optional[str] = None, *, use_cache: bool = True) -> Listing:
    """Every backup of every VM on the remote (or of ``vm_uuid`` only)."""
    warnings: List[str] = []
    vms = [vm_uuid] if vm_uuid is not None else list_vm_uuids(storage)
    backups = {}
    for vm in vms:
        found = list_vm_backups(storage, vm, use_cache=use_cache, warnings=warnings)
        if found or vm_uuid is not None:
            backups[vm] = found
    return Listing(backups=backups, warnings=warnings)


# Xen Orchestra writes it in clear at the root of every remote it encrypts (``encryptionKey``), and
# encrypts every other file there: metadata included, which would otherwise read as "not valid JSON".
ENCRYPTION_FILE = "encryption.json"


def remote_encryption(storage: Storage) -> Optional[str]:
    """The algorithm the remote's files are encrypted with (its ``encryption.json``), or None when they are not."""
    try:
        data = storage.read_bytes(ENCRYPTION_FILE, limit=4096)
    except NotFoundError:
        return None
    try:
        algorithm = json.loads(data).get("algorithm", "none")
    except (ValueError, AttributeError):
        return "unknown"  # not what XO writes: assume the worst rather than misread every file
    return None if algorithm == "none" else str(algorithm)


def encrypted_remote_message(storage: Storage, algorithm: str) -> str:
    return (
        f"The remote {storage.display} is encrypted by Xen Orchestra ({ENCRYPTION_FILE} names the algorithm "
        f"{algorithm!r}): encrypted remotes are not supported, so its backups cannot be read. List and restore "
        "them with Xen Orchestra, or use a remote without an encryption key."
    )

"""Names, dates and paths of Xen Orchestra's backup remote layout (xo-backups.md §1).

All paths are relative to the remote root. A *backup id* is the metadata path,
``xo-vm-backups/<vmUuid>/<ts>.json``; XO's own id is ``<remoteId>/`` + ``/`` + that path.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Optional, Tuple, Union

BACKUP_DIR = "xo-vm-backups"
CACHE_NAME = "cache.json.gz"
CLEAN_VM_QUEUE = f"{BACKUP_DIR}/.queue/clean-vm"
FILENAME_DATE_FORMAT = "%Y%m%dT%H%M%SZ"  # formatFilenameDate, e.g. 20240618T020003Z
BACKUP_DATETIME_FORMAT = "%Y%m%dT%H:%M:%SZ"  # other_config['xo:backup:datetime']
CHECKSUM_SUFFIX = ".checksum"

# Fixed namespace for ids derived from names: the same job name gives the same id on every proxy.
ID_NAMESPACE = uuid.UUID("6f0d7c3e-5b8a-4d2f-9c41-2a7e8b3d9f10")

_TS = r"\d{8}T\d{6}Z"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_BACKUP_ID = re.compile(rf"^(?:(?P<remote>[^/]*)//?)?{BACKUP_DIR}/(?P<vm>[^/]+)/(?P<ts>{_TS})\.json$")

When = Union[datetime, int, float]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- dates ------------------------------------------------------------------------------------
def to_datetime(when: When) -> datetime:
    """UTC datetime from a datetime (naive means UTC) or a timestamp in **milliseconds**."""
    if isinstance(when, datetime):
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"expected a datetime or a timestamp in ms, not {when!r}")
    return _EPOCH + timedelta(milliseconds=when)


def to_ms(when: When) -> int:
    """Timestamp in milliseconds (XO's ``Date.now()`` unit)."""
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return int(when)
    return (to_datetime(when) - _EPOCH) // timedelta(milliseconds=1)  # exact, no float rounding


def format_filename_date(when: When) -> str:
    """``20240618T020003Z`` (UTC, seconds; milliseconds are dropped as XO does)."""
    return to_datetime(when).strftime(FILENAME_DATE_FORMAT)


def parse_filename_date(text: str) -> datetime:
    """Inverse of :func:`format_filename_date`; raises ValueError naming the expected form."""
    return _parse(text, FILENAME_DATE_FORMAT, "20240618T020003Z")


def format_backup_datetime(when: When) -> str:
    """``20240618T02:00:03Z``: the ``xo:backup:datetime`` key XO puts on snapshots."""
    return to_datetime(when).strftime(BACKUP_DATETIME_FORMAT)


def parse_backup_datetime(text: str) -> datetime:
    return _parse(text, BACKUP_DATETIME_FORMAT, "20240618T02:00:03Z")


def _parse(text, fmt, example):
    try:
        return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a date of the form {example}") from None


# -- paths ------------------------------------------------------------------------------------
def vm_backup_dir(vm_uuid: str) -> str:
    """``xo-vm-backups/<vm>``; also the argument of ``Storage.lock`` (giving ``<vm>.lock``)."""
    return f"{BACKUP_DIR}/{_name(vm_uuid, 'VM uuid')}"


def vm_lock_dir(vm_uuid: str) -> str:
    """The lock directory XO's proper-lockfile creates: ``xo-vm-backups/<vm>.lock``."""
    return vm_backup_dir(vm_uuid) + ".lock"


def metadata_path(vm_uuid: str, when: When) -> str:
    return f"{vm_backup_dir(vm_uuid)}/{format_filename_date(when)}.json"


def xva_path(vm_uuid: str, when: When) -> str:
    return f"{vm_backup_dir(vm_uuid)}/{format_filename_date(when)}.xva"


def xva_checksum_path(vm_uuid: str, when: When) -> str:
    return xva_path(vm_uuid, when) + CHECKSUM_SUFFIX


def cache_path(vm_uuid: str) -> str:
    return f"{vm_backup_dir(vm_uuid)}/{CACHE_NAME}"


def vhd_basename(when: When, vhd_directory: bool = False) -> str:
    """``<ts>.vhd``, or ``<ts>.alias.vhd`` on VHD-directory remotes (``useVhdDirectory``)."""
    return f"{format_filename_date(when)}{'.alias' if vhd_directory else ''}.vhd"


def vhd_relative_path(job_id: str, vdi_uuid: str, when: When, vhd_directory: bool = False) -> str:
    """``vdis/<jobId>/<vdiUuid>/<ts>.vhd``: the form stored in metadata ``vhds`` (relative to the VM dir).

    ``vdi_uuid`` is the live VDI's uuid (``$snapshot_of$uuid``), or the snapshot VDI's own uuid for a
    suspend (memory) VDI.
    """
    return f"vdis/{_name(job_id, 'job id')}/{_name(vdi_uuid, 'VDI uuid')}/{vhd_basename(when, vhd_directory)}"


def vhd_path(vm_uuid: str, job_id: str, vdi_uuid: str, when: When, vhd_directory: bool = False) -> str:
    return f"{vm_backup_dir(vm_uuid)}/{vhd_relative_path(job_id, vdi_uuid, when, vhd_directory)}"


def vdis_dir(vm_uuid: str, job_id: Optional[str] = None, vdi_uuid: Optional[str] = None) -> str:
    path = f"{vm_backup_dir(vm_uuid)}/vdis"
    if job_id is not None:
        path += f"/{_name(job_id, 'job id')}"
        if vdi_uuid is not None:
            path += f"/{_name(vdi_uuid, 'VDI uuid')}"
    return path


def alias_data_path(alias_path: str) -> str:
    """``…/<ts>.alias.vhd`` → ``…/data/<ts>.vhd`` (the VHD directory the alias names)."""
    directory, base = posixpath.split(alias_path)
    if not base.endswith(".alias.vhd"):
        raise ValueError(f"{alias_path!r} is not an alias: alias names end in .alias.vhd")
    return posixpath.join(directory, "data", base[: -len(".alias.vhd")] + ".vhd")


def alias_content(alias_path: str) -> str:
    """Text stored in an alias file: the data path relative to the alias, ``data/<ts>.vhd``."""
    return posixpath.relpath(alias_data_path(alias_path), posixpath.dirname(alias_path))


def resolve_alias(alias_path: str, content: str) -> str:
    """Remote path of the VHD directory an alias points to (refusing targets outside the remote)."""
    target = posixpath.normpath(posixpath.join(posixpath.dirname(alias_path), content.strip()))
    if content.strip().startswith("/") or target.startswith("../") or target == "..":
        raise ValueError(f"alias {alias_path} points outside the remote ({content.strip()!r})")
    return target


def merge_state_path(parent_vhd_path: str) -> str:
    """``.<parentBasename>.merge.json`` next to the parent VHD: XO's merge resume state."""
    directory, base = posixpath.split(parent_vhd_path)
    return posixpath.join(directory, f".{base}.merge.json")


def clean_vm_queue_path(when: When, suffix: str) -> str:
    """``xo-vm-backups/.queue/clean-vm/<date>-<suffix>``: a merge-worker task (content: the VM uuid)."""
    return f"{CLEAN_VM_QUEUE}/{format_filename_date(when)}-{_name(suffix, 'suffix')}"


def is_temp_name(name: str) -> bool:
    """True for XO/our temporary names ``.<ms>.<basename>``."""
    return re.match(r"^\.\d+\.", name) is not None


def is_metadata_name(name: str) -> bool:
    """A backup metadata file in a VM directory (dot-files are temporaries or merge states)."""
    return name.endswith(".json") and not name.startswith(".")


# -- backup ids -------------------------------------------------------------------------------
def backup_id(vm_uuid: str, when: When) -> str:
    """The id of the backup taken at ``when``: its metadata path."""
    return metadata_path(vm_uuid, when)


def parse_backup_id(backup: str) -> Tuple[str, str]:
    """``(vm_uuid, ts)`` from our id, XO's ``_filename`` (leading ``/``) or XO's ``<remoteId>//…`` id."""
    m = _BACKUP_ID.match(backup) if isinstance(backup, str) else None
    if not m or m.group("vm") in (".", ".."):
        raise ValueError(f"{backup!r} is not a backup id: expected {BACKUP_DIR}/<vm uuid>/<YYYYMMDDTHHMMSSZ>.json")
    return m.group("vm"), m.group("ts")


def normalize_backup_id(backup: str) -> str:
    """Our id form for any accepted spelling."""
    vm, ts = parse_backup_id(backup)
    return f"{BACKUP_DIR}/{vm}/{ts}.json"


def xo_backup_id(remote_id: str, backup: str) -> str:
    """XO's id: ``${remoteId}/${_filename}`` with ``_filename`` = ``/`` + our id."""
    return f"{remote_id}//{normalize_backup_id(backup)}"


def cache_key(backup: str) -> str:
    """Key of a backup in ``cache.json.gz`` and its ``_filename``/``id`` there: ``/xo-vm-backups/…``."""
    return "/" + normalize_backup_id(backup)


# -- stable ids -------------------------------------------------------------------------------
def job_id_from_name(name: str) -> str:
    """Stable job id (UUID5 of the name in :data:`ID_NAMESPACE`)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a backup job needs a non-empty name to derive its id")
    return str(uuid.uuid5(ID_NAMESPACE, f"job:{name}"))


def schedule_id_from_name(job_id: str, name: str) -> str:
    """Stable schedule id, scoped to the job so two jobs' "daily" schedules differ."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a schedule needs a non-empty name to derive its id")
    return str(uuid.uuid5(ID_NAMESPACE, f"schedule:{job_id}:{name}"))


def is_uuid(text: str) -> bool:
    return isinstance(text, str) and re.fullmatch(_UUID, text) is not None


def _name(value: str, what: str) -> str:
    # one path segment: no separators, no traversal
    if (
        not isinstance(value, str)
        or not value
        or "/" in value
        or "\\" in value
        or value in (".", "..")
        or "\0" in value
    ):
        raise ValueError(f"{value!r} is not a valid {what} for a remote path")
    return value

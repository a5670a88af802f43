"""Which backup to restore: a backup id, or a VM (UUID or name as backed up) and a point in time.

A backup id is the metadata file's path relative to the remote root,
``xo-vm-backups/<vm uuid>/<YYYYMMDDTHHMMSSZ>.json``, as ``backup_info`` returns it; Xen Orchestra's
``_filename`` (leading ``/``) and its ``<remote id>//…`` form are accepted too.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import List, Optional

from ._restore_errors import BackupNotFoundError, RestoreError, RestoreInputError
from ._storage import NotFoundError, StorageError
from ._xo_layout import format_filename_date, is_uuid, normalize_backup_id, parse_filename_date, to_datetime, to_ms
from ._xo_listing import BackupInfo, backup_info, list_backups
from ._xo_metadata import MetadataError, parse_metadata

LATEST = "latest"
_FILENAME_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_DATE_ONLY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_EPOCH_MS = re.compile(r"^\d{10,}$")
# ISO 8601 date and time, parsed here rather than by datetime.fromisoformat, whose grammar grew in Python
# 3.11 (fractions of any length, compact times): the module reads the same texts on 3.9 as on 3.11.
_ISO = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<h>\d{2})(?::(?P<min>\d{2})(?::(?P<sec>\d{2})(?:[.,](?P<frac>\d{1,6}))?)?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}:\d{2})?$"
)
_AT_FORMS = (
    "'latest', a backup date as in file names (20240618T020003Z), an ISO 8601 date and time "
    "(2024-06-18T02:00:03Z; no offset means UTC), a date alone (2024-06-18 or 20240618: the end of that day, "
    "UTC) or a timestamp in milliseconds (1718676003123)"
)


def format_ms(ms):
    """``2024-06-18T02:00:03.123Z``: a point in time in messages, to the millisecond as backups are dated."""
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_at(value) -> Optional[int]:
    """The ``at`` option as a timestamp in milliseconds (inclusive bound), or ``None`` for the latest backup."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text.lower() == LATEST:
        return None
    try:
        if _FILENAME_DATE.match(text):
            return to_ms(parse_filename_date(text)) + 999  # the file name drops the milliseconds
        if _EPOCH_MS.match(text):
            return int(text)
        day = _DATE_ONLY.match(text)
        if day:  # 2024-06-18 and 20240618 alike
            start = datetime(*(int(g) for g in day.groups()), tzinfo=timezone.utc)
            return to_ms(start + timedelta(days=1)) - 1
        iso = _ISO.match(text)
        if not iso:
            raise ValueError(text)
        parts = iso.groupdict()
        when = datetime.fromisoformat(
            f"{parts['date']}T{parts['h']}:{parts['min'] or '00'}:{parts['sec'] or '00'}"
            f".{(parts['frac'] or '').ljust(6, '0')}"
        )
        tz = parts["tz"]
        if tz and tz not in "Zz":
            sign = -1 if tz[0] == "-" else 1
            when = when.replace(tzinfo=timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))))
        else:  # no offset means UTC
            when = when.replace(tzinfo=timezone.utc)
    except ValueError:
        raise RestoreInputError(f"at={text!r} is not a point in time: use {_AT_FORMS}.") from None
    # Backups are dated to the millisecond: a time given to the second (or minute, hour) covers all of it.
    if parts["frac"]:
        extra = 0
    elif parts["sec"]:
        extra = 999
    elif parts["min"]:
        extra = 60_000 - 1
    else:
        extra = 3_600_000 - 1
    return to_ms(when) + extra


def load_backup(storage, backup_id) -> BackupInfo:
    """The backup whose metadata is at ``backup_id`` (any accepted spelling), read fresh from the remote."""
    try:
        bid = normalize_backup_id(backup_id)
    except ValueError as e:
        raise RestoreInputError(
            f"backup={backup_id!r} is not a backup id: expected xo-vm-backups/<vm uuid>/<YYYYMMDDTHHMMSSZ>.json "
            "(as backup_info returns it)."
        ) from e
    try:
        data = storage.read_bytes(bid)
    except NotFoundError:
        raise BackupNotFoundError(_missing_message(storage, bid)) from None
    except StorageError as e:
        raise RestoreError(f"Cannot read backup {bid}: {e}") from None
    try:
        return backup_info(bid, parse_metadata(data, bid))
    except MetadataError as e:
        raise RestoreError(f"Backup {bid} cannot be restored: its metadata is invalid ({e})") from None


def _missing_message(storage, bid):
    vm_uuid = bid.split("/")[1]
    try:
        others = list_backups(storage, vm_uuid).backups.get(vm_uuid, [])
    except (StorageError, MetadataError):
        others = []
    where = f"on {storage.display}"
    if not others:
        return f"No backup {bid} {where}, and no other backup of VM {vm_uuid} either: check the id and the remote."
    dates = ", ".join(format_filename_date(b.timestamp) for b in others[-5:])
    return f"No backup {bid} {where}; VM {vm_uuid} has {len(others)} backup(s), the newest dated {dates}."


def find_backup(storage, vm, at=None, warn=None) -> BackupInfo:
    """The newest backup of ``vm`` (UUID, or name as backed up) not after ``at`` (ms; ``None``: the latest).

    ``warn`` receives one text per metadata file that could not be read and may belong to ``vm``: such a
    backup was not a candidate, so the one chosen may be older than the operator expects.
    """
    vm = (vm or "").strip()
    if not vm:
        raise RestoreInputError("vm must name a VM (its UUID or its name as backed up).")
    try:
        listing = list_backups(storage, vm) if is_uuid(vm) else list_backups(storage)
    except StorageError as e:
        raise RestoreError(f"Cannot list the backups on {storage.display}: {e}") from None
    if is_uuid(vm):
        candidates = listing.backups.get(vm, [])
        label = f"VM {vm}"
    else:
        by_vm = {u: bs for u, bs in listing.backups.items() if any(b.vm_name == vm for b in bs)}
        if len(by_vm) > 1:
            uuids = ", ".join(sorted(by_vm))
            raise RestoreInputError(
                f"Several backed-up VMs are named {vm!r} on {storage.display} (UUIDs {uuids}): give vm as a UUID."
            )
        candidates = next(iter(by_vm.values()), [])
        label = f"VM {vm!r}"
    if not candidates:
        names = sorted({b.vm_name for bs in listing.backups.values() for b in bs})
        known = f" Backed-up VMs there: {', '.join(names[:20])}." if names else " It holds no VM backup."
        raise BackupNotFoundError(f"No backup of {label} on {storage.display}.{known}")
    eligible: List[BackupInfo] = [b for b in candidates if at is None or b.timestamp <= at]
    if not eligible:
        oldest = candidates[0]
        raise BackupNotFoundError(
            f"No backup of {label} dated at or before {format_ms(at)}; the oldest is from {oldest.date} "
            f"({format_filename_date(oldest.timestamp)})."
        )
    chosen = max(eligible, key=lambda b: (b.timestamp, b.id))
    if warn is not None:
        # Unreadable files of other VMs that have readable backups are no concern of this restore.
        others = [u for u in listing.backups if u != chosen.vm_uuid]
        for text in listing.warnings:
            if not any(u in text for u in others):
                warn(
                    f"A backup metadata file on {storage.display} could not be read, so its backup was not "
                    f"considered when {chosen.id} was chosen: {text}"
                )
    return chosen


def select_backup(storage, backup_id=None, vm=None, at=None, warn=None) -> BackupInfo:
    """One of: ``backup_id``, or ``vm`` with ``at`` (the option's text, or ms); ``warn`` as in :func:`find_backup`."""
    if backup_id:
        return load_backup(storage, backup_id)
    when = at if isinstance(at, int) or at is None else parse_at(at)
    return find_backup(storage, vm, when, warn)

"""The ``backup_info`` module's options (documented in ``plugins/modules/backup_info.py``) and its work.

Reads a remote from the host that runs the module (never XAPI): the backups on it, Xen Orchestra's
and this collection's alike, optionally verified file by file (``_backup_verify``), plus the progress
records of backup jobs running or run on this host (``_backup_progress``).
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any, Dict, List

from ._backup_progress import DEFAULT_DIR, read_progress
from ._backup_verify import BackupVerifier
from ._remote_options import argument_spec as remote_argument_spec
from ._remote_options import open_storage, secrets_of, url_passwords
from ._storage import NotFoundError, StorageError
from ._xapi_url import redact_secrets
from ._xo_layout import format_filename_date, is_uuid, job_id_from_name, normalize_backup_id
from ._xo_listing import BackupInfo, backup_info, encrypted_remote_message, list_backups, remote_encryption
from ._xo_metadata import MetadataError, parse_metadata

MUTUALLY_EXCLUSIVE = [["vm", "backup_id"], ["job", "job_id"]]


class BackupInfoError(ValueError):
    """An option names nothing usable; the message says what to change."""


def argument_spec():
    """Every option of the module (a fresh dict)."""
    return {
        "remote": {"type": "str"},
        "vm": {"type": "str"},
        "backup_id": {"type": "str"},
        "verify": {"type": "bool", "default": False},
        "progress_dir": {"type": "path", "default": DEFAULT_DIR},
        "job": {"type": "str"},
        "job_id": {"type": "str"},
        **remote_argument_spec(),
    }


@contextlib.contextmanager
def errors_to_fail_json(module, secrets=()):
    """Bad input and remote errors → ``fail_json`` with their message; anything else with a masked traceback."""
    try:
        yield
    except (ValueError, StorageError) as e:
        module.fail_json(msg=redact_secrets(str(e), secrets))
    except Exception as e:
        module.fail_json(
            msg=redact_secrets(f"Unexpected error: {type(e).__name__}: {e}", secrets),
            exception=redact_secrets(traceback.format_exc(), secrets),
        )


def _text(params, name, what):
    value = params.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise BackupInfoError(f"{name} must not be empty: give {what}, or leave it out.")
    return value


class BackupInfoRequest:
    """Validated options of one run; :meth:`run` returns the module result (``changed`` aside)."""

    def __init__(self, params):
        self.params = params
        self.remote = _text(params, "remote", "a remote URL or the name of a registered remote")
        self.vm = _text(params, "vm", "a VM UUID or the VM's name as backed up")
        self.verify = bool(params.get("verify"))
        self.backup_id = None
        raw_id = _text(params, "backup_id", "a backup id as returned in backups[].id")
        if raw_id is not None:
            try:
                self.backup_id = normalize_backup_id(raw_id)
            except ValueError:
                raise BackupInfoError(
                    f"backup_id={raw_id!r} is not a backup id: expected "
                    "xo-vm-backups/<vm uuid>/<YYYYMMDDTHHMMSSZ>.json (the metadata path relative to the remote's root, "
                    "as backups[].id gives it)."
                ) from None
        job = _text(params, "job", "the backup job's name")
        self.job_id = _text(params, "job_id", "the backup job's id")
        if job is not None:
            self.job_id = job_id_from_name(job)
        if self.remote is None:
            needing = [o for o, v in (("vm", self.vm), ("backup_id", self.backup_id), ("verify", self.verify)) if v]
            if needing:
                raise BackupInfoError(
                    f"remote is required with {' and '.join(needing)}: give the remote's URL or registered name."
                )

    # -- remote -----------------------------------------------------------------------------------
    def open_remote(self, add_secret):
        """Open the remote (a registered NFS remote on its mount); every password it carries goes to ``add_secret``."""
        for secret in url_passwords(self.remote):
            add_secret(secret)
        return open_storage(self.remote, self.params, add_secret, failure=BackupInfoError)

    # -- run ----------------------------------------------------------------------------------------
    def run(self, add_secret=lambda _secret: None) -> Dict[str, Any]:
        progress_dir = self.params.get("progress_dir") or DEFAULT_DIR
        try:
            result: Dict[str, Any] = {"jobs": read_progress(progress_dir, self.job_id)}
        except OSError as e:
            raise BackupInfoError(f"Cannot read the progress files in progress_dir={progress_dir}: {e}") from None
        warnings: List[str] = []
        if self.remote is not None:
            storage = self.open_remote(add_secret)
            try:
                algorithm = remote_encryption(storage)
                if algorithm is not None:
                    raise BackupInfoError(encrypted_remote_message(storage, algorithm))
                backups = self._select(storage, warnings)
                verifier = BackupVerifier(storage)
                result["backups"] = [self._describe(b, verifier) for b in backups]
            finally:
                storage.close()
            result["vms"] = summarize(result["backups"], self.verify)
        result["warnings"] = warnings
        return result

    def _select(self, storage, warnings) -> List[BackupInfo]:
        if self.backup_id is not None:
            return [load_backup(storage, self.backup_id)]
        vm = self.vm
        listing = list_backups(storage, vm) if vm is not None and is_uuid(vm) else list_backups(storage)
        warnings.extend(listing.warnings)
        backups = listing.all()
        if vm is None:
            return backups
        if is_uuid(vm):
            chosen = [b for b in backups if b.vm_uuid == vm]
        else:
            uuids = {b.vm_uuid for b in backups if b.vm_name == vm}
            chosen = [b for b in backups if b.vm_uuid in uuids]
        if not chosen:
            if is_uuid(vm):  # only that VM's directory was read: look at the others to name them
                backups = list_backups(storage).all()
            names = sorted({b.vm_name for b in backups})
            known = f" Backed-up VMs there: {', '.join(names[:20])}." if names else " It holds no VM backup."
            raise BackupInfoError(f"No backup of VM {vm!r} on {storage.display}.{known}")
        return chosen

    def _describe(self, backup: BackupInfo, verifier: BackupVerifier) -> Dict[str, Any]:
        out = backup.to_dict()
        if backup.mode == "delta":
            out["chain"] = verifier.chains(backup)
        if self.verify:
            found = verifier.verify(backup.id)
            out["verified"] = not found
            out["problems"] = found
        return out


def load_backup(storage, backup_id) -> BackupInfo:
    """The backup whose metadata is at ``backup_id`` (normalized), read from its file."""
    try:
        data = storage.read_bytes(backup_id)
    except NotFoundError:
        vm_uuid = backup_id.split("/")[1]
        others = []
        with contextlib.suppress(StorageError, ValueError):
            others = list_backups(storage, vm_uuid).backups.get(vm_uuid, [])
        if not others:
            raise BackupInfoError(
                f"No backup {backup_id} on {storage.display}, and no other backup of VM {vm_uuid} either: check the "
                "id and the remote."
            ) from None
        dates = ", ".join(format_filename_date(b.timestamp) for b in others[-5:])
        raise BackupInfoError(
            f"No backup {backup_id} on {storage.display}; VM {vm_uuid} has {len(others)} backup(s), the newest "
            f"dated {dates}."
        ) from None
    try:
        return backup_info(backup_id, parse_metadata(data, backup_id))
    except MetadataError as e:
        raise BackupInfoError(f"Backup {backup_id} on {storage.display} has unreadable metadata: {e}") from None


def summarize(backups: List[Dict[str, Any]], verified: bool) -> List[Dict[str, Any]]:
    """One entry per VM: name (as last backed up), count, oldest and newest dates, total size."""
    by_vm: Dict[str, List[Dict[str, Any]]] = {}
    for b in sorted(backups, key=lambda b: (b["timestamp"], b["id"])):
        by_vm.setdefault(b["vm_uuid"], []).append(b)
    out = []
    for uuid, items in sorted(by_vm.items(), key=lambda kv: (kv[1][-1]["vm_name"], kv[0])):
        entry: Dict[str, Any] = {
            "uuid": uuid,
            "name": items[-1]["vm_name"],
            "backups": len(items),
            "full": sum(1 for b in items if b["mode"] == "full"),
            "delta": sum(1 for b in items if b["mode"] == "delta"),
            "oldest": items[0]["date"],
            "newest": items[-1]["date"],
            "newest_id": items[-1]["id"],
            "size": sum(b["size"] or 0 for b in items),
        }
        if verified:
            entry["verified"] = all(b["verified"] for b in items)
            entry["problems"] = sum(len(b["problems"]) for b in items)
        out.append(entry)
    return out


def secrets(params) -> List[str]:
    """Values to mask in messages before the remote is resolved: the password option and URL passwords."""
    return secrets_of(params, params.get("remote"))

"""``xo-vm-backups/<vm>/cache.json.gz``: XO's per-VM index of backup metadata.

Content: ``gzip(JSON.stringify({"/xo-vm-backups/<vm>/<ts>.json": {...metadata, "_filename": key, "id": key}}))``.
XO regenerates it when missing or unreadable and trusts it otherwise, so whoever adds or removes a
backup must update it (:func:`update_cache`).
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any, Dict, Iterable, Mapping, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import NotFoundError, Storage, StorageError
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import (
    cache_key,
    cache_path,
    is_metadata_name,
    normalize_backup_id,
    vm_backup_dir,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    MetadataError,
    MetadataShapeError,
    parse_metadata,
)


def cache_entry(backup_id: str, metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """The value XO stores for one backup: its metadata plus ``_filename`` and ``id``."""
    key = cache_key(backup_id)
    entry = {k: v for k, v in metadata.items() if k not in ("_filename", "id")}
    entry["_filename"] = key
    entry["id"] = key
    return entry


def encode_cache(backups: Mapping[str, Mapping[str, Any]]) -> bytes:
    """gzip JSON of ``{backup id: metadata}`` (ids in any accepted spelling)."""
    data = {cache_key(bid): cache_entry(bid, md) for bid, md in backups.items()}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return gzip.compress(text, mtime=0)


def decode_cache(data: bytes, filename: str = "cache.json.gz") -> Dict[str, Dict[str, Any]]:
    """``{backup id: metadata}`` from cache bytes, ``_filename``/``id`` dropped.

    Entries are JSON objects as the metadata files hold them, not validated: one of a shape we do not know
    (another XO version's) stays in the cache for XO, which lists from it; readers validate each entry.
    """
    try:
        raw = json.loads(gzip.decompress(data).decode("utf-8"))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise MetadataError(f"{filename}: not a gzip-compressed JSON cache ({err}).") from None
    if not isinstance(raw, dict):
        raise MetadataError(f"{filename}: the cache must be a JSON object keyed by metadata path.")
    out = {}
    for key, md in raw.items():
        try:
            bid = normalize_backup_id(key)
        except ValueError:
            raise MetadataError(f"{filename}: key {key!r} is not a backup metadata path.") from None
        if not isinstance(md, dict):
            raise MetadataError(f"{filename}: the entry {key!r} is not a JSON object.")
        out[bid] = {k: v for k, v in md.items() if k not in ("_filename", "id")}
    return out


def read_cache(storage: Storage, vm_uuid: str) -> Optional[Dict[str, Dict[str, Any]]]:
    """The cached ``{backup id: metadata}``, or None when the cache is missing or unreadable (as XO)."""
    try:
        return decode_cache(storage.read_bytes(cache_path(vm_uuid)), cache_path(vm_uuid))
    except (NotFoundError, MetadataError):
        return None


def write_cache(storage: Storage, vm_uuid: str, backups: Mapping[str, Mapping[str, Any]]) -> None:
    """Replace the cache atomically."""
    storage.write_bytes(cache_path(vm_uuid), encode_cache(backups))


def scan_metadata(storage: Storage, vm_uuid: str, warnings: Optional[list] = None) -> Dict[str, Dict[str, Any]]:
    """Read every ``*.json`` of the VM directory: ``{backup id: metadata}``, as :func:`decode_cache` gives
    them (objects of a shape we do not know included). Files that are not a JSON object, or cannot be
    read, go to ``warnings``."""
    directory = vm_backup_dir(vm_uuid)
    out = {}
    for name in storage.list(directory, missing_ok=True):
        if not is_metadata_name(name):
            continue
        path = f"{directory}/{name}"
        try:
            out[path] = parse_metadata(storage.read_bytes(path), path)
        except MetadataShapeError as err:
            out[path] = err.metadata
        except (MetadataError, StorageError) as err:
            if warnings is None:
                raise
            warnings.append(str(err))
    return out


def update_cache(
    storage: Storage,
    vm_uuid: str,
    *,
    add: Optional[Mapping[str, Mapping[str, Any]]] = None,
    remove: Iterable[str] = (),
) -> Dict[str, Dict[str, Any]]:
    """Add/replace and remove entries, regenerating from the metadata files when the cache is unusable.

    Call it under the VM lock. Returns the cache now on the remote.
    """
    cache = read_cache(storage, vm_uuid)
    if cache is None:
        cache = scan_metadata(storage, vm_uuid, warnings=[])
    for bid in remove:
        cache.pop(normalize_backup_id(bid), None)
    for bid, md in (add or {}).items():
        cache[normalize_backup_id(bid)] = dict(md)
    write_cache(storage, vm_uuid, cache)
    return cache

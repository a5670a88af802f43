"""Backup metadata JSON exactly as Xen Orchestra writes it (xo-backups.md §1).

Builders return plain dicts whose key order matches XO's writers, so ``json.dumps`` output lines up
with XO's ``JSON.stringify``. :func:`validate_metadata` checks what a remote gives us, including
backups written by XO, before anything trusts its paths.
"""

from __future__ import annotations

import copy
import json
import posixpath
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import format_filename_date, to_ms

METADATA_VERSION = "2.0.0"
MODES = ("full", "delta")


class MetadataError(ValueError):
    """Invalid backup metadata; the message names the file and the key."""


class MetadataShapeError(MetadataError):
    """A JSON object, but not of the shape this collection writes and reads (a key missing, of another
    type, or a path leaving the VM directory). ``metadata`` is the object: a Xen Orchestra version other
    than the ones we know may have written it, so the clean-up keeps it and the files it names."""

    def __init__(self, message, metadata):
        super().__init__(message)
        self.metadata = metadata


# -- records ----------------------------------------------------------------------------------
def strip_record(record: Mapping[str, Any]) -> Dict[str, Any]:
    """Copy of a XAPI record without ``$ref``/``$id`` (XO's record wrappers don't serialise them).

    XML-RPC datetimes become their wire text (``20240618T02:00:03Z``), as XO's JSON records hold them.
    """
    return {k: _json_ready(v) for k, v in record.items() if k not in ("$ref", "$id")}


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "timetuple") and hasattr(value, "value"):  # xmlrpc.client.DateTime
        return str(value.value)
    return copy.deepcopy(value)


def vdi_record(
    record: Mapping[str, Any],
    *,
    snapshot_of_uuid: Optional[str],
    sr_uuid: str,
    vm_uuid: Optional[str] = None,
    base_vdi_uuid: Optional[str] = None,
) -> Dict[str, Any]:
    """A snapshot VDI record as stored in delta metadata ``vdis``.

    Adds ``$snapshot_of$uuid``, ``$SR$uuid`` and ``other_config['xo:base_delta_vdi']`` (the base snapshot
    VDI, deltas only) and ``['xo:backup:vm']``.
    """
    out = strip_record(record)
    other = dict(out.get("other_config") or {})
    if base_vdi_uuid is not None:
        other["xo:base_delta_vdi"] = base_vdi_uuid
    if vm_uuid is not None:
        other["xo:backup:vm"] = vm_uuid
    out["other_config"] = other
    if snapshot_of_uuid is not None:  # None: a suspended VM's memory image, which copies no live disk
        out["$snapshot_of$uuid"] = snapshot_of_uuid
    out["$SR$uuid"] = sr_uuid
    return out


def vif_record(
    record: Mapping[str, Any], *, network_uuid: str, network_name_label: str, network_vlan: int
) -> Dict[str, Any]:
    """A VIF record as stored in delta metadata ``vifs`` (restore maps networks by these keys)."""
    out = strip_record(record)
    out["$network$uuid"] = network_uuid
    out["$network$name_label"] = network_name_label
    out["$network$VLAN"] = network_vlan
    return out


# -- builders ---------------------------------------------------------------------------------
def build_full_metadata(
    *,
    job_id: str,
    schedule_id: str,
    timestamp,
    vm: Mapping[str, Any],
    vm_snapshot: Optional[Mapping[str, Any]],
    size: int,
    tags: Iterable[str] = (),
) -> Dict[str, Any]:
    """Metadata of a full (XVA) backup; ``timestamp`` is ms or a datetime."""
    ts = to_ms(timestamp)
    return {
        "jobId": job_id,
        "mode": "full",
        "scheduleId": schedule_id,
        "timestamp": ts,
        "version": METADATA_VERSION,
        "vm": strip_record(vm),
        "vmSnapshot": None if vm_snapshot is None else strip_record(vm_snapshot),
        "xva": f"./{format_filename_date(ts)}.xva",
        "size": size,
        "tags": list(tags),
    }


def build_delta_metadata(
    *,
    job_id: str,
    schedule_id: str,
    timestamp,
    vm: Mapping[str, Any],
    vm_snapshot: Mapping[str, Any],
    vdis: Mapping[str, Mapping[str, Any]],
    vbds: Mapping[str, Mapping[str, Any]],
    vifs: Mapping[str, Mapping[str, Any]],
    vhds: Mapping[str, str],
    is_vhd_differencing: Mapping[str, bool],
    size: int,
    vtpms: Iterable[str] = (),
    tags: Iterable[str] = (),
    include_non_nbd_qcow2_fix: bool = True,
) -> Dict[str, Any]:
    """Metadata of a delta (VHD) backup. Keys of ``vdis``/``vhds``/``isVhdDifferencing`` are VDI refs.

    ``vhds`` values are relative to the VM directory (``vdis/<job>/<vdi>/<ts>.vhd``); see
    ``_xo_layout.vhd_relative_path``.
    """
    missing = sorted(set(vhds) - set(vdis))
    if missing:
        raise MetadataError(f"vhds names VDI refs absent from vdis: {', '.join(missing)}")
    return {
        "includeNonNbdQcow2Fix": include_non_nbd_qcow2_fix,
        "isVhdDifferencing": {ref: bool(is_vhd_differencing.get(ref, False)) for ref in vhds},
        "jobId": job_id,
        "mode": "delta",
        "scheduleId": schedule_id,
        "timestamp": to_ms(timestamp),
        "vbds": {ref: strip_record(r) for ref, r in vbds.items()},
        "vdis": {ref: strip_record(r) for ref, r in vdis.items()},
        "version": METADATA_VERSION,
        "vifs": {ref: strip_record(r) for ref, r in vifs.items()},
        "vhds": dict(vhds),
        "vm": strip_record(vm),
        "vmSnapshot": strip_record(vm_snapshot),
        "vtpms": list(vtpms),
        "tags": list(tags),
        "size": size,
    }


def dump_metadata(metadata: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as ``JSON.stringify``."""
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mark_merged(metadata: Mapping[str, Any], size: int) -> Dict[str, Any]:
    """Copy with XO's post-merge update: new ``size`` and every ``isVhdDifferencing`` false."""
    out = copy.deepcopy(dict(metadata))
    out["size"] = size
    out["isVhdDifferencing"] = {ref: False for ref in out.get("isVhdDifferencing", {})}
    return out


# -- validation -------------------------------------------------------------------------------
def parse_metadata(data, filename: str) -> Dict[str, Any]:
    """Decode (bytes/str) and validate metadata read from ``filename``."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError) as err:
        raise MetadataError(f"{filename}: not valid JSON ({err}).") from None
    return validate_metadata(value, filename)


def validate_metadata(md: Any, filename: str) -> Dict[str, Any]:
    """Return ``md`` if it is usable backup metadata, else raise :class:`MetadataError`."""

    def fail(problem):
        raise MetadataShapeError(f"{filename}: {problem}.", md)

    def need(key, kind, what):
        if key not in md:
            fail(f"missing key {key!r} ({what})")
        if not isinstance(md[key], kind) or isinstance(md[key], bool) and kind is not bool:
            fail(f"key {key!r} must be {what}, got {json.dumps(md[key])[:80]}")
        return md[key]

    if not isinstance(md, dict):
        raise MetadataError(f"{filename}: backup metadata must be a JSON object.")
    mode = need("mode", str, "'full' or 'delta'")
    if mode not in MODES:
        fail(f"key 'mode' must be 'full' or 'delta', got {mode!r}")
    ts = need("timestamp", (int, float), "a timestamp in milliseconds")
    if ts < 0 or ts != int(ts):
        fail(f"key 'timestamp' must be a whole, non-negative number of milliseconds, got {ts!r}")
    need("jobId", str, "the job id")
    need("scheduleId", str, "the schedule id")
    need("version", str, "the metadata version string")
    vm = need("vm", dict, "the VM record")
    if not isinstance(vm.get("uuid"), str):
        fail("key 'vm' has no 'uuid'")
    if "vmSnapshot" not in md or not isinstance(md["vmSnapshot"], (dict, type(None))):
        fail("missing key 'vmSnapshot' (the exported snapshot record)")
    if "size" in md and (not isinstance(md["size"], (int, float)) or isinstance(md["size"], bool) or md["size"] < 0):
        fail(f"key 'size' must be a non-negative number of bytes, got {md['size']!r}")
    if "tags" in md and (not isinstance(md["tags"], list) or not all(isinstance(t, str) for t in md["tags"])):
        fail("key 'tags' must be a list of strings")
    if mode == "full":
        _check_rel(need("xva", str, "the path of the XVA file"), "xva", fail)
        return md
    vhds = need("vhds", dict, "VDI ref → VHD path")
    vdis = need("vdis", dict, "VDI ref → VDI record")
    need("vbds", dict, "VBD ref → VBD record")
    for key, kind, what in (("vifs", dict, "VIF ref → VIF record"), ("isVhdDifferencing", dict, "VDI ref → bool"),
                            ("vtpms", list, "a list of VTPM contents")):  # fmt: skip
        if key in md and not isinstance(md[key], kind):
            fail(f"key {key!r} must be {what}")
    for ref, path in vhds.items():
        if not isinstance(path, str):
            fail(f"vhds[{ref!r}] must be a path string")
        _check_rel(path, f"vhds[{ref!r}]", fail)
        if ref not in vdis:
            fail(f"vhds names {ref!r}, which is not in 'vdis'")
        if not isinstance(vdis[ref], dict):
            fail(f"vdis[{ref!r}] must be a VDI record")
    return md


def _check_rel(path, key, fail):
    # paths in metadata are relative to the VM directory; refuse anything that could leave it
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in path:
        fail(f"key {key} holds {path!r}, which points outside the VM backup directory")


def named_files(backup_id: str, md: Mapping[str, Any]) -> Tuple[Optional[str], Optional[List[str]]]:
    """The files metadata of an unexpected shape names, as far as it can be read: ``(XVA path or None,
    VHD paths or None)``. None for the VHDs means they cannot be known: a delta (or a mode we do not
    know) without a usable ``vhds``. Only paths inside the VM directory count."""

    def inside(value):
        if not isinstance(value, str):
            return None
        problems = []
        _check_rel(value, "", problems.append)
        return None if problems else resolve_path(backup_id, value)

    mode = md.get("mode")
    xva = inside(md.get("xva"))
    if mode == "full":
        return xva, []
    vhds = md.get("vhds")
    if not isinstance(vhds, dict) or not all(inside(v) for v in vhds.values()):
        return xva, None
    return xva, [inside(v) for v in vhds.values()]


def resolve_path(backup_id: str, relative: str) -> str:
    """Remote path of a file named in metadata (``xva`` or a ``vhds`` value) of backup ``backup_id``."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(backup_id), relative))


def xva_remote_path(backup_id: str, md: Mapping[str, Any]) -> Optional[str]:
    return resolve_path(backup_id, md["xva"]) if md.get("mode") == "full" else None


def vhd_remote_paths(backup_id: str, md: Mapping[str, Any]) -> Dict[str, str]:
    """``{vdiRef: remote path}`` of a delta backup's VHDs (empty for a full backup)."""
    return {ref: resolve_path(backup_id, p) for ref, p in (md.get("vhds") or {}).items()}

"""Find the objects an appliance is built from and on, by name or UUID, with answers a user can act on."""

from __future__ import annotations

import re

from ._appliance_spec import KEY_APPLIANCE
from ._xapi_errors import XapiError

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SHOWN_NAMES = 30
_INTERNAL = "is_host_internal_management_network"


class NotInPoolError(XapiError):
    """Something named in the options does not exist in the pool."""


def _names(records, limit=SHOWN_NAMES):
    names = sorted({r.get("name_label") or "(no name)" for r in records})
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) or "none"


def _by_uuid(client, cls, value):
    if not _UUID.match(value or ""):
        return None
    refs = client.call(f"{cls}.get_all_records_where", f'field "uuid"="{value.lower()}"')
    return next(iter(refs.items()), None)


def _vms_where(client, expr):
    return client.call("VM.get_all_records_where", expr)


def appliance(client, name):
    """``(ours, foreign)``: VMs this module manages under ``name``, and other VMs named ``name``."""
    records = _vms_where(client, 'field "is_a_template"="false" and field "is_a_snapshot"="false"')
    ours, foreign = [], []
    for ref, rec in records.items():
        if rec.get("is_control_domain"):
            continue
        managed = rec.get("other_config", {}).get(KEY_APPLIANCE)
        if managed == name:
            ours.append((ref, rec))
        elif rec.get("name_label") == name and managed is None:
            foreign.append((ref, rec))
    if len(ours) > 1:
        uuids = ", ".join(r["uuid"] for _, r in ours)
        raise XapiError(
            f"{len(ours)} VMs are marked as the appliance {name!r} ({uuids}); destroy the extra ones (or remove "
            f"their other_config key {KEY_APPLIANCE}) so that one remains."
        )
    return (ours[0] if ours else None), foreign


def source(client, value):
    """The template or VM to clone: by UUID, else by name (templates first, then halted VMs)."""
    found = _by_uuid(client, "VM", value)
    if found is None:
        matches = _vms_where(client, f'field "name_label"="{_escape(value)}" and field "is_a_snapshot"="false"')
        candidates = [(r, rec) for r, rec in matches.items() if not rec.get("is_control_domain")]
        candidates.sort(key=lambda item: not item[1].get("is_a_template"))
        found = candidates[0] if candidates else None
        if len(candidates) > 1 and candidates[0][1].get("is_a_template") == candidates[1][1].get("is_a_template"):
            uuids = ", ".join(rec["uuid"] for _, rec in candidates)
            raise NotInPoolError(f"template {value!r} names {len(candidates)} objects ({uuids}): give its UUID.")
    if found is None or found[1].get("is_control_domain") or found[1].get("is_a_snapshot"):
        templates = _vms_where(client, 'field "is_a_template"="true" and field "is_a_snapshot"="false"')
        raise NotInPoolError(
            f"template {value!r} was not found in the pool (neither a template nor a VM by that name or UUID). "
            f"Templates in the pool: {_names(templates.values())}."
        )
    return found


def network(client, value):
    found = _by_uuid(client, "network", value)
    if found is None:
        records = client.call("network.get_all_records")
        matches = [(r, rec) for r, rec in records.items() if rec.get("name_label") == value]
        if len(matches) > 1:
            uuids = ", ".join(rec["uuid"] for _, rec in matches)
            raise NotInPoolError(f"network {value!r} names {len(matches)} networks ({uuids}): give its UUID.")
        if not matches:
            visible = [rec for rec in records.values() if not rec.get("other_config", {}).get(_INTERNAL)]
            shown = _names(visible)
            raise NotInPoolError(f"network {value!r} was not found in the pool. Networks in the pool: {shown}.")
        found = matches[0]
    return found


def sr(client, value):
    found = _by_uuid(client, "SR", value)
    if found is None:
        records = client.call("SR.get_all_records")
        usable = {r: rec for r, rec in records.items() if rec.get("content_type") not in ("iso",)}
        matches = [(r, rec) for r, rec in usable.items() if rec.get("name_label") == value]
        if len(matches) > 1:
            uuids = ", ".join(rec["uuid"] for _, rec in matches)
            raise NotInPoolError(f"SR {value!r} names {len(matches)} storage repositories ({uuids}): give its UUID.")
        if not matches:
            raise NotInPoolError(
                f"SR {value!r} was not found in the pool. Storage repositories for disks: {_names(usable.values())}."
            )
        found = matches[0]
    return found


def _escape(text):
    return text.replace("\\", "\\\\").replace('"', '\\"')

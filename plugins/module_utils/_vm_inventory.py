"""The pool's VMs as flat records an operator selects backups by (``vm_info``'s output, ``backup``'s input).

One ``get_all_records`` call per class, joined here, instead of a call per VM: a pool with
hundreds of VMs costs eight round trips.
"""

from __future__ import annotations

from ._vm_selection import is_no_backup_tag, is_nobak_disk

NULL_REF = "OpaqueRef:NULL"
RECORD_CLASSES = ("pool", "host", "SR", "network", "VM", "VBD", "VDI", "VIF")
XO_CONFIG_PREFIX = "xo:"


def _int(value, default=0):
    # XAPI sends int64 as strings ("2147483648").
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _ref_summary(records, ref):
    record = records.get(ref) if ref and ref != NULL_REF else None
    if record is None:
        return None
    return {"uuid": record.get("uuid"), "name_label": record.get("name_label", "")}


def _device_order(value):
    # userdevice/device are decimal strings; keep odd ones (never seen in practice) after the rest.
    return (0, int(value)) if str(value).isdigit() else (1, str(value))


class VmInventory:
    """VM records built from ``raw`` (``{class: get_all_records()}``), with the refs kept aside.

    ``records`` are JSON-ready dicts without refs; ``vm_ref`` and ``vdi_ref`` map UUIDs back to
    refs for modules that go on to act on the selection.
    """

    def __init__(self, raw):
        self.raw = raw
        self.vm_ref = {}
        self.vdi_ref = {}
        pools = list(raw.get("pool", {}).values())
        self.pool = {"uuid": pools[0].get("uuid"), "name_label": pools[0].get("name_label", "")} if pools else None
        self.records = [self._vm(ref, vm) for ref, vm in raw.get("VM", {}).items()]
        self.records.sort(key=lambda r: (r["name_label"], r["uuid"]))

    @classmethod
    def fetch(cls, client):
        """Read the pool with one ``get_all_records`` per class."""
        return cls({name: client.get_all_records(name) for name in RECORD_CLASSES})

    def _vm(self, ref, vm):
        self.vm_ref[vm["uuid"]] = ref
        other_config = vm.get("other_config") or {}
        return {
            "uuid": vm["uuid"],
            "name_label": vm.get("name_label", ""),
            "name_description": vm.get("name_description", ""),
            "power_state": vm.get("power_state", ""),
            "tags": list(vm.get("tags") or []),
            "is_a_template": bool(vm.get("is_a_template")),
            "is_a_snapshot": bool(vm.get("is_a_snapshot")),
            "is_control_domain": bool(vm.get("is_control_domain")),
            "memory": _int(vm.get("memory_static_max")),
            "vcpus": _int(vm.get("VCPUs_at_startup")),
            "pool": self.pool,
            "host": _ref_summary(self.raw.get("host", {}), vm.get("resident_on")),
            "disks": self._disks(vm),
            "vifs": self._vifs(vm),
            "xo_config": {k: v for k, v in other_config.items() if k.startswith(XO_CONFIG_PREFIX)},
            "excluded_from_backup": any(is_no_backup_tag(t) for t in vm.get("tags") or []),
        }

    def _disks(self, vm):
        vbds, vdis, srs = self.raw.get("VBD", {}), self.raw.get("VDI", {}), self.raw.get("SR", {})
        disks = []
        for vbd_ref in vm.get("VBDs") or []:
            vbd = vbds.get(vbd_ref)
            # CD drives and empty slots are not disks to back up.
            if not vbd or vbd.get("type") != "Disk" or vbd.get("empty") or vbd.get("VDI", NULL_REF) == NULL_REF:
                continue
            vdi = vdis.get(vbd["VDI"])
            if vdi is None:
                continue
            self.vdi_ref[vdi["uuid"]] = vbd["VDI"]
            disk = {
                "userdevice": str(vbd.get("userdevice", "")),
                "device": vbd.get("device", ""),
                "bootable": bool(vbd.get("bootable")),
                "mode": vbd.get("mode", ""),
                "uuid": vdi["uuid"],
                "name_label": vdi.get("name_label", ""),
                "name_description": vdi.get("name_description", ""),
                "virtual_size": _int(vdi.get("virtual_size")),
                "sr": _ref_summary(srs, vdi.get("SR")),
            }
            disk["excluded_from_backup"] = is_nobak_disk(disk)
            disks.append(disk)
        disks.sort(key=lambda d: _device_order(d["userdevice"]))
        return disks

    def _vifs(self, vm):
        vifs, networks = self.raw.get("VIF", {}), self.raw.get("network", {})
        result = []
        for vif_ref in vm.get("VIFs") or []:
            vif = vifs.get(vif_ref)
            if not vif:
                continue
            result.append(
                {
                    "device": str(vif.get("device", "")),
                    "mac": vif.get("MAC", ""),
                    "network": _ref_summary(networks, vif.get("network")),
                }
            )
        result.sort(key=lambda v: _device_order(v["device"]))
        return result

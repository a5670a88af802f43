"""What an appliance VM is now: sizing, system disk, first interface, delivered guest configuration."""

from __future__ import annotations

import json

from ._appliance_spec import KEY_APPLIANCE, KEY_DRIVE, KEY_GUEST, KEY_SITE, XS_KEYS, XS_PREFIX, human

NULL_REF = "OpaqueRef:NULL"


class VmState:
    """A snapshot of one VM's record and devices, read once per step."""

    def __init__(self, client, ref):
        self.client = client
        self.ref = ref
        self.rec = client.call("VM.get_record", ref)
        self.vbds = []
        for vbd in self.rec.get("VBDs", []):
            vbd_rec = client.call("VBD.get_record", vbd)
            vdi = vbd_rec.get("VDI", NULL_REF)
            vdi_rec = client.call("VDI.get_record", vdi) if vdi != NULL_REF and not vbd_rec.get("empty") else None
            self.vbds.append((vbd, vbd_rec, vdi, vdi_rec))
        self.vifs = [(vif, client.call("VIF.get_record", vif)) for vif in self.rec.get("VIFs", [])]

    # -- devices ----------------------------------------------------------------------------------
    @property
    def uuid(self):
        return self.rec["uuid"]

    @property
    def power_state(self):
        return self.rec["power_state"]

    @property
    def running(self):
        return self.power_state == "Running"

    @property
    def drives(self):
        """Config drives attached: ``(vbd, vbd_rec, vdi, vdi_rec)`` whose VDI carries our marker."""
        return [d for d in self.vbds if d[3] is not None and KEY_DRIVE in d[3].get("other_config", {})]

    @property
    def disks(self):
        """Disk VBDs with a VDI, config drives left out."""
        return [d for d in self.vbds if d[1].get("type") == "Disk" and d[3] is not None and d not in self.drives]

    @property
    def system_disk(self):
        """The boot disk: bootable first, then the lowest device number."""
        disks = sorted(self.disks, key=lambda d: (not d[1].get("bootable"), _device_number(d[1])))
        return disks[0] if disks else None

    @property
    def vif0(self):
        return next(((r, rec) for r, rec in self.vifs if rec.get("device") == "0"), None)

    @property
    def network_ref(self):
        vif = self.vif0
        return vif[1]["network"] if vif else None

    @property
    def mac(self):
        vif = self.vif0
        return vif[1].get("MAC") if vif else None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def vcpus(self):
        return int(self.rec.get("VCPUs_at_startup") or 0)

    @property
    def memory(self):
        return int(self.rec.get("memory_static_max") or 0)

    @property
    def disk_size(self):
        disk = self.system_disk
        return int(disk[3]["virtual_size"]) if disk else None

    @property
    def site(self):
        return self.rec.get("other_config", {}).get(KEY_SITE)

    @property
    def managed_name(self):
        return self.rec.get("other_config", {}).get(KEY_APPLIANCE)

    @property
    def guest(self):
        """``(config, hash)`` of the guest configuration last delivered, or ``(None, None)``."""
        text = self.rec.get("other_config", {}).get(KEY_GUEST)
        try:
            stored = json.loads(text) if text else None
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            return None, None
        return stored.get("config"), stored.get("hash")

    @property
    def xenstore(self):
        data = self.rec.get("xenstore_data", {})
        return {k: v for k, v in data.items() if k in {XS_PREFIX + key for key in XS_KEYS}}

    def network_name(self, ref=None):
        ref = ref or self.network_ref
        if not ref:
            return None
        return self.client.name_of("network", ref) or ref

    def guest_ip(self):
        """``(ip of the first interface or None, networks map, whether guest metrics exist)``."""
        metrics = self.rec.get("guest_metrics", NULL_REF)
        if metrics in (NULL_REF, "", None):
            return None, {}, False
        try:
            networks = self.client.call("VM_guest_metrics.get_networks", metrics)
        except Exception:  # the metrics object went away between the two reads (the VM rebooted)
            return None, {}, False
        return networks.get("0/ipv4/0") or networks.get("0/ip"), networks, True

    def describe(self):
        """The settings the module manages, as results and diffs show them."""
        config, _ = self.guest
        ip, _, _ = self.guest_ip()
        return {
            "name": self.rec["name_label"],
            "uuid": self.uuid,
            "power_state": self.power_state.lower(),
            "site": self.site,
            "vcpus": self.vcpus,
            "memory": human(self.memory),
            "disk_size": human(self.disk_size),
            "network": self.network_name(),
            "mac": self.mac,
            "ip": ip,
            "tags": list(self.rec.get("tags", [])),
            "guest": _public_guest(config),
            "config_drive": self.drives[0][3]["uuid"] if self.drives else None,
        }


def _public_guest(config):
    if not config:
        return None
    return {k: v for k, v in config.items() if k != "mac"}


def _device_number(vbd_rec):
    try:
        return int(vbd_rec.get("userdevice") or 99)
    except ValueError:
        return 99

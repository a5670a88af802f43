"""The changes that bring an existing appliance VM to its options, and how each is applied.

Each :class:`Change` says whether the VM must be halted for it (sizing, interface, and the guest
configuration, which the guest reads at boot) or can take it while running (names, tags, marks,
removing a consumed config drive).
"""

from __future__ import annotations

import json

from . import _appliance_drive as drive_vdi
from . import _config_drive as drive
from ._appliance_spec import COLLECTION_VERSION, KEY_APPLIANCE, KEY_GUEST, KEY_SITE, KEY_VERSION, TAG, human
from ._appliance_vm import VmState
from ._xapi_errors import XapiError


class Change:
    def __init__(self, label, needs_halt, apply):
        self.label = label
        self.needs_halt = needs_halt
        self.apply = apply

    def __repr__(self):
        return f"Change({self.label!r}, needs_halt={self.needs_halt})"


def set_map_key(client, cls, ref, field, key, value):
    current = client.call(f"{cls}.get_{field}", ref)
    if current.get(key) == value:
        return
    if key in current:
        client.call(f"{cls}.remove_from_{field}", ref, key)
    client.call(f"{cls}.add_to_{field}", ref, key, value)


def delivery(configure_via):
    """``config drive and xenstore``: how the guest configuration goes, for messages."""
    return " and ".join(v.replace("_", " ") for v in configure_via) or "nothing, configure_via is empty"


def site_tag(site):
    return f"{TAG}:{site}" if site else None


def mark(client, ref, name, site):
    """Mark the VM as this collection's appliance (found again by that mark), with its site and version."""
    set_map_key(client, "VM", ref, "other_config", KEY_APPLIANCE, name)
    set_map_key(client, "VM", ref, "other_config", KEY_VERSION, COLLECTION_VERSION)
    if site:
        set_map_key(client, "VM", ref, "other_config", KEY_SITE, site)
    tags = client.call("VM.get_tags", ref)
    for tag in (TAG, site_tag(site)):
        if tag and tag not in tags:
            client.call("VM.add_tags", ref, tag)
    where = f" of site {site}" if site else ""
    client.call("VM.set_name_description", ref, f"Backup proxy{where}, managed by xapi.proxy.appliance")


class Planner:
    """Compares a :class:`VmState` with an :class:`ApplianceSpec`; ``changes`` lists what differs."""

    def __init__(self, client, spec, state, network_ref=None, sr_ref=None):
        self.client = client
        self.spec = spec
        self.state = state
        self.network_ref = network_ref
        self.sr_ref = sr_ref
        self.changes = []
        self.guest_digest = None
        self.guest_pending = False  # the guest configuration must be delivered (again)
        self._plan()

    def _add(self, label, needs_halt, apply):
        self.changes.append(Change(label, needs_halt, apply))

    # -- planning ---------------------------------------------------------------------------------
    def _plan(self):
        spec, state, rec = self.spec, self.state, self.state.rec
        if rec["name_label"] != spec.name:
            self._add(f"rename {rec['name_label']!r} to {spec.name!r}", False,
                      lambda: self.client.call("VM.set_name_label", state.ref, spec.name))  # fmt: skip
        site = spec.site if spec.site is not None else state.site
        tags = rec.get("tags", [])
        if (
            (spec.site is not None and state.site != spec.site)
            or TAG not in tags
            or (site and site_tag(site) not in tags)
        ):
            self._add(f"mark as the appliance of site {site}" if site else "mark as appliance", False,
                      lambda: self._mark(site))  # fmt: skip
        if spec.vcpus is not None and spec.vcpus != state.vcpus:
            self._add(f"set vcpus {state.vcpus} -> {spec.vcpus}", True, lambda: self._vcpus(spec.vcpus))
        if spec.memory is not None and spec.memory != state.memory:
            self._add(f"set memory {human(state.memory)} -> {human(spec.memory)}", True,
                      lambda: self._memory(spec.memory))  # fmt: skip
        self._plan_disk()
        network_changes = self._plan_network()
        self._plan_guest(network_changes)

    def _plan_disk(self):
        spec, state = self.spec, self.state
        if spec.disk_size is None:
            return
        disk = state.system_disk
        if disk is None:
            raise XapiError(f"VM {state.rec['name_label']!r} has no system disk to grow to {human(spec.disk_size)}.")
        current = int(disk[3]["virtual_size"])
        if spec.disk_size < current:
            raise XapiError(
                f"disk_size={human(spec.disk_size)} is smaller than the system disk's {human(current)}: disks can "
                "only grow. Give at least the current size, or leave disk_size out."
            )
        if spec.disk_size > current:
            vdi, sr = disk[2], disk[3]["SR"]
            self._add(f"grow the system disk {human(current)} -> {human(spec.disk_size)}", True,
                      lambda: self.client.call("VDI.resize", vdi, str(spec.disk_size), sr=sr))  # fmt: skip

    def _plan_network(self):
        state = self.state
        if self.network_ref is None:
            if state.vif0 is None:
                raise XapiError(f"VM {state.rec['name_label']!r} has no network interface: set network to give it one.")
            return False
        if state.network_ref == self.network_ref:
            return False
        old = state.network_name() or "none"
        new = self.client.name_of("network", self.network_ref) or self.network_ref
        self._add(f"connect interface 0 to network {new!r} (was {old!r})", True, self._network)
        return True

    def _plan_guest(self, network_changes):
        spec, state = self.spec, self.state
        _, delivered = state.guest
        mac = None if network_changes else state.mac
        config, digest = spec.guest(mac)
        self.guest_digest = digest
        if network_changes or delivered != digest:
            what = "deliver the guest configuration" if delivered is None else "deliver the new guest configuration"
            self._add(f"{what} ({delivery(spec.configure_via)})", True, self._deliver)
            self.guest_pending = True
            return
        if state.xenstore != spec.xenstore():
            # Same configuration, keys edited by hand since: put them back (read at the next boot).
            self._add("restore the vm-data xenstore keys", False, self._xenstore)
        if state.drives and "config_drive" not in spec.configure_via:
            self._add("remove the config drive (configure_via has no config_drive)", False, self.remove_drives)

    # -- applying ---------------------------------------------------------------------------------
    def _mark(self, site):
        mark(self.client, self.state.ref, self.spec.name, site)

    def _vcpus(self, n):
        ref, c = self.state.ref, self.client
        if n > int(self.state.rec.get("VCPUs_max") or 0):
            c.call("VM.set_VCPUs_max", ref, str(n))
            c.call("VM.set_VCPUs_at_startup", ref, str(n))
        else:
            c.call("VM.set_VCPUs_at_startup", ref, str(n))
            c.call("VM.set_VCPUs_max", ref, str(n))

    def _memory(self, size):
        # Every step keeps static_min <= dynamic_min <= dynamic_max <= static_max, which xapi checks.
        ref, c, rec = self.state.ref, self.client, self.state.rec
        value = str(size)
        if size >= int(rec["memory_static_max"]):
            steps = ["static_max", "dynamic_max", "dynamic_min"]
        else:
            if int(rec["memory_static_min"]) > size:
                c.call("VM.set_memory_static_min", ref, value)
            steps = ["dynamic_min", "dynamic_max", "static_max"]
        for field in steps:
            c.call(f"VM.set_memory_{field}", ref, value)

    def _network(self):
        c, state = self.client, self.state
        old = state.vif0
        if old is not None:
            c.call("VIF.destroy", old[0])
        mtu = c.call("network.get_MTU", self.network_ref)
        c.call(
            "VIF.create",
            {
                "device": "0",
                "network": self.network_ref,
                "VM": state.ref,
                "MAC": "",
                "MTU": str(mtu or 1500),
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )

    def _xenstore(self):
        c, ref = self.client, self.state.ref
        wanted = self.spec.xenstore()
        current = c.call("VM.get_xenstore_data", ref)
        managed = set(self.state.xenstore) | set(wanted)
        for key in sorted(managed):
            if key in current and current[key] != wanted.get(key):
                c.call("VM.remove_from_xenstore_data", ref, key)
            if key in wanted and current.get(key) != wanted[key]:
                c.call("VM.add_to_xenstore_data", ref, key, wanted[key])

    def remove_drives(self):
        return drive_vdi.detach_all(self.client, VmState(self.client, self.state.ref))

    def _deliver(self):
        c, spec = self.client, self.spec
        state = VmState(c, self.state.ref)  # the interface may be new: read its MAC
        config, digest = spec.guest(state.mac)
        self.guest_digest = digest
        self._xenstore()
        drive_vdi.detach_all(c, state)
        if "config_drive" in spec.configure_via:
            contents = drive.files(
                f"iid-{state.uuid}-{digest[:8]}",
                state.mac,
                hostname=spec.hostname,
                user=spec.user,
                ssh_authorized_keys=spec.ssh_authorized_keys,
                ip=f"{spec.ip}/{spec.prefix}" if spec.ip else None,
                gateway=spec.gateway,
                dns=spec.dns,
            )
            drive_vdi.attach(c, state, contents, digest, self.drive_sr(state))
        set_map_key(c, "VM", state.ref, "other_config", KEY_GUEST,
                    json.dumps({"config": config, "hash": digest}, sort_keys=True))  # fmt: skip

    def drive_sr(self, state):
        if self.sr_ref:
            return self.sr_ref
        disk = state.system_disk
        if disk is not None:
            return disk[3]["SR"]
        pool = self.client.call("pool.get_all")[0]
        return self.client.call("pool.get_default_SR", pool)

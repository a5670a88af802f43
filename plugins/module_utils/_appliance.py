"""Deploy and converge a backup proxy VM (the ``appliance`` module): create, configure, power, wait, remove.

One run: find the VM this module manages under the name (its ``other_config`` mark), create it when
missing (marked at once, so an interrupted run is finished by the next one instead of deploying twice),
compare it with the options, halt it only when a change needs that and ``allow_restart`` allows it,
apply, bring it to the asked power state, wait for its address, and remove the config drive once the
guest has booted from it.
"""

from __future__ import annotations

from . import _appliance_drive as drive_vdi
from . import _appliance_lookup as lookup
from . import _appliance_power as power
from . import _appliance_source as source
from ._appliance_changes import Planner, delivery, mark
from ._appliance_spec import human
from ._appliance_vm import VmState
from ._xapi_errors import XapiError


class Appliance:
    def __init__(self, client, spec, check_mode=False):
        self.client = client
        self.spec = spec
        self.check_mode = check_mode
        self.actions = []

    # -- entry --------------------------------------------------------------------------------------
    def run(self):
        ours, foreign = lookup.appliance(self.client, self.spec.name)
        if self.spec.state == "absent":
            return self.absent(ours, foreign)
        network_ref = lookup.network(self.client, self.spec.network)[0] if self.spec.network else None
        sr_ref = lookup.sr(self.client, self.spec.sr)[0] if self.spec.sr else None
        if ours is None:
            if foreign:
                uuids = ", ".join(rec["uuid"] for _, rec in foreign)
                raise XapiError(
                    f"a VM named {self.spec.name!r} already exists ({uuids}) and was not deployed by this module: "
                    "choose another name, or remove or rename that VM."
                )
            if not self.spec.has_source:
                raise XapiError(
                    f"VM {self.spec.name!r} does not exist yet: give template, xva_path or xva_url to deploy it."
                )
            if self.check_mode:
                return self.plan_new(network_ref)
            return self.converge(self.create(sr_ref), True, network_ref, sr_ref)
        return self.converge(ours[0], False, network_ref, sr_ref)

    # -- creation -----------------------------------------------------------------------------------
    def create(self, sr_ref):
        spec, c = self.spec, self.client
        if spec.template:
            src_ref, src_rec = lookup.source(c, spec.template)
            ref, how = source.from_template(c, src_ref, src_rec, spec.name, sr_ref)
        else:
            ref, how = source.from_xva(c, spec.name, sr_ref, path=spec.xva_path, url=spec.xva_url)
        try:
            mark(c, ref, spec.name, spec.site)
        except BaseException:
            source.destroy_quietly(c, ref)
            raise
        self.actions.append(f"create VM {spec.name!r} ({how})")
        return ref

    def plan_new(self, network_ref):
        spec = self.spec
        if spec.template:
            _, src = lookup.source(self.client, spec.template)
            how = f"{'copy' if spec.sr else 'clone'} of {src['name_label']!r}"
        else:
            how = f"import of {spec.xva_path or spec.xva_url}"
        self.actions.append(f"create VM {spec.name!r} ({how})")
        for value, label in ((spec.vcpus, "vcpus"), (human(spec.memory), "memory"), (human(spec.disk_size), "disk")):
            if value is not None:
                self.actions.append(f"set {label} to {value}")
        if network_ref:
            self.actions.append(f"connect interface 0 to network {self.client.name_of('network', network_ref)!r}")
        self.actions.append(f"deliver the guest configuration ({delivery(spec.configure_via)})")
        if spec.state == "started":
            self.actions.append("start and wait for its address")
        after = self.predicted({}, network_ref)
        return self.result({}, after, None)

    # -- convergence --------------------------------------------------------------------------------
    def converge(self, ref, created, network_ref, sr_ref):
        spec, c = self.spec, self.client
        state = VmState(c, ref)
        before = {} if created else state.describe()
        planner = Planner(c, spec, state, network_ref, sr_ref)
        halting = [ch for ch in planner.changes if ch.needs_halt]
        live = [ch for ch in planner.changes if not ch.needs_halt]
        was_up = state.power_state != "Halted"
        restart = bool(halting) and was_up and spec.state != "stopped"
        if restart and not spec.allow_restart:
            raise XapiError(
                f"VM {spec.name!r} is {state.power_state.lower()} and these changes need it halted: "
                f"{'; '.join(ch.label for ch in halting)}. Set allow_restart: true to let the module shut it down, "
                "apply them and start it again, or stop it first (state: stopped)."
            )
        stop = was_up and (spec.state == "stopped" or restart)
        start = spec.state == "started" or (restart and spec.state == "present")
        if stop:
            self.actions.append("shut down" if spec.state == "stopped" else "shut down to apply the changes")
        self.actions += [ch.label for ch in live + halting]
        if start and (stop or not was_up):
            self.actions.append("start")
        if self.check_mode:
            booted = state.running and not stop and state.guest_ip()[0]
            if spec.remove_config_drive and booted and state.drives and not planner.guest_pending:
                self.actions.append("remove the config drive now that the guest has booted")
            return self.result(before, self.predicted(before, network_ref, stop, start), state)
        if stop:
            power.stop(c, ref, state.power_state)
        for change in live + halting:
            change.apply()
        if start and (stop or not was_up):
            power.start(c, ref)
        ip = None
        if spec.state == "started":
            ip, _ = power.wait_for_ip(c, ref, spec.ip, spec.wait_timeout)
        self.remove_consumed_drive(ref, planner)
        return self.result(before, None, VmState(c, ref), ip)

    def remove_consumed_drive(self, ref, planner):
        """Once the guest reported an address with the configuration on the drive, the drive has been read."""
        if not self.spec.remove_config_drive:
            return
        state = VmState(self.client, ref)
        ip, _, _ = state.guest_ip()
        if not (state.running and ip and state.drives):
            return
        if state.guest[1] != planner.guest_digest:
            return
        if self.spec.ip and ip != self.spec.ip:
            return
        removed = drive_vdi.detach_all(self.client, state)
        self.actions.append(f"remove the config drive ({', '.join(removed)}) now that the guest has booted")

    # -- absent ---------------------------------------------------------------------------------------
    def absent(self, ours, foreign):
        spec = self.spec
        target = ours
        if target is None and foreign:
            uuids = ", ".join(rec["uuid"] for _, rec in foreign)
            if not spec.force:
                raise XapiError(
                    f"VM {spec.name!r} ({uuids}) was not deployed by this module, so it is left alone; set force: "
                    "true to destroy it and its disks anyway."
                )
            if len(foreign) > 1:
                raise XapiError(f"{len(foreign)} VMs are named {spec.name!r} ({uuids}); destroy the right one by hand.")
            target = foreign[0]
        if target is None:
            return {"changed": False, "actions": [], "vm": {}, "diff": {"before": {}, "after": {}}}
        ref = target[0]
        before = VmState(self.client, ref).describe()
        self.actions.append(f"destroy VM {before['name']!r} and its disks")
        if not self.check_mode:
            source.destroy(self.client, ref)
        return {"changed": True, "actions": self.actions, "vm": {}, "diff": {"before": before, "after": {}}}

    # -- results --------------------------------------------------------------------------------------
    def predicted(self, before, network_ref, stop=False, start=False):
        spec = self.spec
        after = dict(before)
        power_state = before.get("power_state", "halted")
        if stop:
            power_state = "halted"
        if start or spec.state == "started":
            power_state = "running"
        after.update(
            name=spec.name,
            power_state=power_state,
            site=spec.site if spec.site is not None else before.get("site"),
        )
        for key, value in (("vcpus", spec.vcpus), ("memory", human(spec.memory)), ("disk_size", human(spec.disk_size))):
            if value is not None:
                after[key] = value
        if network_ref:
            after["network"] = self.client.name_of("network", network_ref) or network_ref
        config, _ = spec.guest(None)
        after["guest"] = {k: v for k, v in config.items() if k != "mac"}
        return after

    def result(self, before, after, state, ip=None):
        spec = self.spec
        vm = state.describe() if state is not None and after is None else (after or {})
        ip = ip or vm.get("ip")
        out = {
            "changed": bool(self.actions),
            "actions": self.actions,
            "vm": vm,
            "diff": {"before": before, "after": vm if after is None else after},
        }
        if vm.get("uuid"):
            out["uuid"] = vm["uuid"]
        if ip:
            out["ip"] = ip
            host = {"name": spec.name, "ansible_host": ip, "xapi_proxy_vm_uuid": vm.get("uuid")}
            if spec.site:
                host["xapi_proxy_site"] = spec.site
            if spec.user:
                host["ansible_user"] = spec.user
            out["add_host"] = host
        return out

"""Build a pool from a lab file (YAML): hosts, SRs, networks, users, templates and VMs."""

import random
import re

import yaml

from .api import now
from .model import NULL_REF
from .sessions import hash_password
from .transfer import _vm_defaults

_UNITS = {
    "": 1,
    "B": 1,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


class LabError(Exception):
    pass


def size(value, where):
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]i?B|B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise LabError(f"{where}: {value!r} is not a size (use e.g. 8GiB, 512MiB or a byte count)")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]


def load(path):
    with open(path) as fh:
        lab = yaml.safe_load(fh)
    if not isinstance(lab, dict) or "hosts" not in lab:
        raise LabError(f"{path}: a lab needs at least 'hosts'")
    return lab


def build(sim, lab, master_address=None):
    db, api = sim.db, sim.api
    db.meta["users"] = {}
    for u in lab.get("users", []):
        db.meta["users"][u["name"]] = {**hash_password(u["password"]), "role": u.get("role", "pool-admin")}
    db.meta["dhcp"] = lab.get("dhcp", "192.0.2.100-192.0.2.200")
    pool = api.create("pool", name_label=lab.get("pool", {}).get("name", "pool"), other_config={})
    hosts = {}
    for i, h in enumerate(lab["hosts"]):
        address = h["address"]
        if h.get("master") and master_address:
            address = master_address
        metrics = api.create(
            "host_metrics", memory_total=size(h.get("memory", "64GiB"), "host memory"), live=True, last_updated=now()
        )
        ref = api.create(
            "host",
            name_label=h["name"],
            hostname=h["name"],
            address=address,
            enabled=True,
            API_version_major=2,
            API_version_minor=23,
            API_version_vendor="XenSource",
            software_version={
                "product_version": "8.3.0",
                "product_brand": "XCP-ng",
                "build_number": "release/yangtze",
                "xapi": "25.6",
                "xapi_build": "25.6.0",
                "platform_name": "XCP",
                "hostname": h["name"],
            },
            metrics=metrics,
            cpu_info={"cpu_count": str(h.get("cpus", 8)), "vendor": "GenuineIntel"},
            other_config={},
        )
        hosts[h["name"]] = ref
        dom0 = api.create(
            "VM",
            **{
                **_vm_defaults(db),
                "name_label": f"Control domain on host: {h['name']}",
                "is_control_domain": True,
                "power_state": "Running",
                "domid": 0,
                "memory_static_max": 4 << 30,
                "VCPUs_max": 4,
            },
        )
        api.set_field("VM", dom0, "resident_on", ref)
        db.set("host", ref, control_domain=dom0)
        if h.get("master") or i == 0 and not any(x.get("master") for x in lab["hosts"]):
            db.set("pool", pool, master=ref)
    srs = {}
    for s in lab.get("srs", []):
        ref = api.create(
            "SR",
            name_label=s["name"],
            name_description=s.get("description", ""),
            type=s.get("type", "ext"),
            content_type="user",
            shared=bool(s.get("shared", False)),
            physical_size=size(s.get("size", "100GiB"), f"SR {s['name']} size"),
            other_config={},
            sm_config={},
            allowed_operations=["vdi_create", "vdi_destroy", "vdi_snapshot", "vdi_clone"],
        )
        owners = (
            list(hosts.values()) if s.get("shared") else [hosts.get(s.get("host"), db.field("pool", pool, "master"))]
        )
        for host in owners:
            api.create("PBD", SR=ref, host=host, currently_attached=True, device_config={})
        srs[s["name"]] = ref
        sim.storage.capacity[db.field("SR", ref, "uuid")] = db.field("SR", ref, "physical_size")
        if s.get("default"):
            db.set("pool", pool, default_SR=ref, suspend_image_SR=ref, crash_dump_SR=ref)
    nets = {}
    for n in lab.get("networks", []):
        ref = api.create(
            "network",
            name_label=n["name"],
            name_description=n.get("description", ""),
            bridge=n.get("bridge", f"xenbr{len(nets)}"),
            MTU=int(n.get("mtu", 1500)),
            managed=True,
            other_config={},
            purpose=list(n.get("purpose", [])),
        )
        for i, host in enumerate(hosts.values()):
            api.create(
                "PIF",
                device=n.get("device", f"eth{len(nets)}"),
                host=host,
                network=ref,
                VLAN=int(n.get("vlan", -1)),
                MAC=f"02:00:00:{len(nets):02x}:{i:02x}:01",
                MTU=1500,
                management=not nets,
                physical=n.get("vlan") is None,
                currently_attached=True,
            )
        nets[n["name"]] = ref
    for t in lab.get("templates", []):
        make_vm(sim, t, srs, nets, hosts, template=True)
    for v in lab.get("vms", []):
        make_vm(sim, v, srs, nets, hosts)
    db.flush()


def make_vm(sim, spec, srs, nets, hosts, template=False):
    db, api = sim.db, sim.api
    name = spec["name"]
    memory = size(spec.get("memory", "1GiB"), f"{name} memory")
    vcpus = int(spec.get("vcpus", 1))
    values = {
        **_vm_defaults(db),
        "name_label": name,
        "name_description": spec.get("description", ""),
        "is_a_template": template,
        "memory_static_max": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_static_min": min(memory, 512 << 20),
        "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus,
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cdn"},
        "platform": {"device-model": "qemu-upstream-compat", "viridian": "false"},
        "other_config": {str(k): str(v) for k, v in spec.get("other_config", {}).items()},
        "tags": [str(t) for t in spec.get("tags", [])],
        "domain_type": "hvm",
    }
    if template:
        values["other_config"]["default_template"] = "true"
        values["is_default_template"] = bool(spec.get("default", False))
        disks = "".join(
            f'<disk device="{i}" size="{size(d["size"], name)}" sr="" bootable="{str(i == 0).lower()}" type="system"/>'
            for i, d in enumerate(spec.get("disks", []))
        )
        values["other_config"]["disks"] = f"<provision>{disks}</provision>"
    ref = api.create("VM", **values)
    metrics = api.create("VM_metrics", memory_actual=memory, VCPUs_number=vcpus)
    db.set("VM", ref, metrics=metrics)
    db.get("VM", ref)["other_config"].setdefault("mac_seed", db.field("VM", ref, "uuid"))
    if spec.get("ip"):
        db.priv(ref)["ip"] = spec["ip"]
    if not template:
        rng = random.Random(spec.get("seed", name))
        for i, d in enumerate(spec.get("disks", [])):
            sr = srs.get(d.get("sr")) if d.get("sr") else db.field("pool", next(iter(db.tables["pool"])), "default_SR")
            if sr is None or sr == NULL_REF:
                raise ValueError(f"VM {name}: disk {i} names an unknown SR {d.get('sr')!r}")
            vdi = api.generic_create(
                None,
                "VDI",
                {
                    "name_label": d.get("name", f"{name} disk {i}"),
                    "name_description": d.get("description", ""),
                    "SR": sr,
                    "virtual_size": str(size(d["size"], f"{name} disk {i}")),
                    "type": "system" if i == 0 else "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                    "tags": [],
                },
            )
            api.create(
                "VBD",
                VM=ref,
                VDI=vdi,
                userdevice=str(i),
                device=f"xvd{chr(97 + i)}",
                bootable=i == 0,
                mode="RW",
                type="Disk",
                empty=False,
                other_config={},
            )
            seed_disk(sim, vdi, d, rng, boot=(i == 0 and not spec.get("unbootable")))
        for i, nic in enumerate(spec.get("vifs", [])):
            net = nets.get(nic["network"])
            if net is None:
                raise ValueError(f"VM {name}: VIF {i} names an unknown network {nic['network']!r}")
            api.create(
                "VIF",
                VM=ref,
                network=net,
                device=str(i),
                MAC=nic.get("mac") or _mac(rng),
                MAC_autogenerated=not nic.get("mac"),
                MTU=1500,
                other_config={},
            )
    if spec.get("power_state", "Halted") == "Running" and not template:
        api.handlers["VM.start"](None, ref)
    return ref


def _mac(rng):
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


def seed_disk(sim, vdi, disk, rng, boot):
    """Fill a disk with deterministic content: a boot sector plus random regions ("guest data")."""
    from .ops_vdi import node_of  # noqa: PLC0415

    node = node_of(sim.db, vdi)
    virtual = sim.db.field("VDI", vdi, "virtual_size")
    if boot:
        mbr = bytearray(rng.randbytes(446)) + bytes(64) + b"\x55\xaa"
        sim.storage.write(node, 0, bytes(mbr), track=False)
    for region in disk.get("seed", []):
        offset = size(region.get("offset", 0), "seed offset")
        length = size(region["random"], "seed length") if "random" in region else len(region.get("text", ""))
        if offset + length > virtual:
            raise ValueError(f"seed region at {offset} (+{length}) is beyond the disk's {virtual} bytes")
        if "random" not in region:
            sim.storage.write(node, offset, region.get("text", "").encode(), track=False)
            continue
        for pos in range(0, length, 4 << 20):  # in pieces: a whole region would not fit in memory
            sim.storage.write(node, offset + pos, rng.randbytes(min(4 << 20, length - pos)), track=False)
    from .ops_vdi import sync_sr  # noqa: PLC0415

    sync_sr(sim, sim.db.field("VDI", vdi, "SR"))

"""What a guest's cloud-init would read at boot: a NoCloud config drive among the VM's disks.

A started VM "boots" like a real one: the drive is a disk whose volume is labelled ``cidata`` (ISO 9660,
as ``cloud-localds`` makes it, or FAT, as Xen Orchestra makes it). Its files are read with Debian's
tools, never with the collection's code: ``isoinfo`` (package ``genisoimage``) for ISO 9660, where the
collection writes with pycdlib, and ``mtype`` (package ``mtools``) for FAT. ``network-config`` is parsed
as cloud-init's version 1 or version 2 YAML, and the static IPv4 address of the interface with the VM's
first MAC (or the first interface) is what the guest reports, at this boot and the later ones (the guest
keeps its configuration after the drive is removed). DHCP, or no drive, gives ``None`` (the guest then
takes a lease). A drive labelled ``cidata`` that cannot be read or parsed is logged and gives
``None``, so a test expecting the configured address fails.
"""

import ipaddress
import logging
import os
import shutil
import subprocess
import tempfile

import yaml

from .model import NULL_REF
from .ops_vdi import node_of

log = logging.getLogger("xapisim.config_drive")
LABEL = "cidata"
MAX_DRIVE = 64 << 20  # config drives are small; larger disks are not looked at
ISO_PVD = 16 * 2048  # primary volume descriptor
TOOL_TIMEOUT = 30


class DriveError(Exception):
    """A cidata drive whose content cannot be read as cloud-init would."""


def volume(head):
    """``("iso"|"fat", label)`` from the first 64 KiB of a disk, or ``None``."""
    if len(head) >= ISO_PVD + 72 and head[ISO_PVD + 1 : ISO_PVD + 6] == b"CD001":
        return "iso", head[ISO_PVD + 40 : ISO_PVD + 72].decode("ascii", "replace").strip()
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        if head[54:59] == b"FAT12" or head[54:59] == b"FAT16":
            return "fat", head[43:54].decode("ascii", "replace").strip()
        if head[82:87] == b"FAT32":
            return "fat", head[71:82].decode("ascii", "replace").strip()
    return None


def read_files(kind, image_path):
    """``{name: bytes}`` of the NoCloud files on the image, read with Debian's tools."""
    out = {}
    for name in ("meta-data", "user-data", "network-config"):
        if kind == "iso":
            listing = _run(["isoinfo", "-R", "-f", "-i", image_path])
            if f"/{name}" not in listing.decode(errors="replace").split():
                continue
            out[name] = _run(["isoinfo", "-R", "-i", image_path, "-x", f"/{name}"])
        else:
            listing = _run(["mdir", "-b", "-i", image_path, "::/"], env={"MTOOLS_SKIP_CHECK": "1"})
            names = {os.path.basename(p) for p in listing.decode(errors="replace").split()}
            if name not in names:
                continue
            out[name] = _run(["mtype", "-i", image_path, f"::/{name}"], env={"MTOOLS_SKIP_CHECK": "1"})
    return out


def _run(cmd, env=None):
    if shutil.which(cmd[0]) is None:
        raise DriveError(
            f"{cmd[0]} is not installed (Debian package {'genisoimage' if cmd[0] == 'isoinfo' else 'mtools'})"
        )
    done = subprocess.run(
        cmd, capture_output=True, timeout=TOOL_TIMEOUT, check=False, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise DriveError(f"{' '.join(cmd[:2])} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def static_address(network_config, mac=None):
    """The static IPv4 address cloud-init would configure on the interface with ``mac``, or ``None`` (DHCP)."""
    doc = yaml.safe_load(network_config)
    if isinstance(doc, dict) and isinstance(doc.get("network"), dict):
        doc = doc["network"]
    if isinstance(doc, dict) and doc.get("config") == "disabled":
        return None
    if not isinstance(doc, dict) or doc.get("version") not in (1, 2):
        raise DriveError(f"network-config is not cloud-init version 1 or 2: {str(doc)[:200]}")
    mac = (mac or "").lower()
    if doc["version"] == 2:
        ifaces = list((doc.get("ethernets") or {}).values())
        chosen = next((i for i in ifaces if str((i.get("match") or {}).get("macaddress", "")).lower() == mac), None)
        chosen = chosen or (ifaces[0] if ifaces else None)
        if not chosen or chosen.get("dhcp4"):
            return None
        for address in chosen.get("addresses") or []:
            iface = ipaddress.ip_interface(str(address))
            if iface.version == 4:
                return str(iface.ip)
        return None
    physical = [c for c in doc.get("config") or [] if c.get("type") == "physical"]
    chosen = next((c for c in physical if str(c.get("mac_address", "")).lower() == mac), None)
    chosen = chosen or (physical[0] if physical else None)
    for subnet in (chosen or {}).get("subnets") or []:
        if subnet.get("type") in ("static", "static4") and subnet.get("address"):
            return str(ipaddress.ip_interface(str(subnet["address"]).split("/")[0]).ip)
        if str(subnet.get("type", "")).startswith("dhcp"):
            return None
    return None


def find_drive(server, vm_ref):
    """``(vdi ref, kind)`` of the first disk labelled ``cidata`` attached to the VM, or ``None``."""
    db = server.db
    for vbd in db.field("VM", vm_ref, "VBDs"):
        if not db.exists("VBD", vbd) or db.field("VBD", vbd, "empty"):
            continue
        vdi = db.field("VBD", vbd, "VDI")
        if vdi == NULL_REF or not db.exists("VDI", vdi) or db.field("VDI", vdi, "virtual_size") > MAX_DRIVE:
            continue
        found = volume(server.storage.read(node_of(db, vdi), 0, 64 << 10))
        if found and found[1].lower() == LABEL:
            return vdi, found[0]
    return None


def first_mac(server, vm_ref):
    db = server.db
    for vif in db.field("VM", vm_ref, "VIFs"):
        if db.exists("VIF", vif) and db.field("VIF", vif, "device") == "0":
            return db.field("VIF", vif, "MAC")
    return None


def config_drive_ip(server, vm_ref):
    """The address the guest configures from its config drive at boot, or ``None``."""
    found = find_drive(server, vm_ref)
    if found is None:
        return None
    vdi, kind = found
    db = server.db
    size = db.field("VDI", vdi, "virtual_size")
    with tempfile.NamedTemporaryFile(prefix="xapisim-cidata-", suffix=f".{kind}") as image:
        image.write(server.storage.read(node_of(db, vdi), 0, size))
        image.flush()
        try:
            files = read_files(kind, image.name)
            if "network-config" not in files:
                log.info("VM %s: config drive without network-config: DHCP", db.field("VM", vm_ref, "uuid"))
                return None
            address = static_address(files["network-config"], first_mac(server, vm_ref))
        except (DriveError, yaml.YAMLError, ValueError, TypeError, AttributeError) as e:
            log.error("VM %s: unreadable config drive %s: %s", db.field("VM", vm_ref, "uuid"), kind, e)
            return None
    log.info("VM %s: config drive %s gives %s", db.field("VM", vm_ref, "uuid"), kind, address or "DHCP")
    # cloud-init writes what it applied into the guest's own network configuration, which outlives the
    # drive: later boots without it keep this address (the lab's per-VM address slot).
    with db.lock:
        if address:
            db.priv(vm_ref)["ip"] = address
        else:
            db.priv(vm_ref).pop("ip", None)
        db.touch()
    return address

"""A cloud-init NoCloud config drive: ``meta-data``, ``user-data`` and ``network-config`` on an ISO 9660
volume labelled ``cidata``, written with pycdlib (Rock Ridge and Joliet names, as ``cloud-localds`` and
``genisoimage -volid cidata -joliet -rock`` make them).

The YAML follows cloud-init's documented formats: ``#cloud-config`` user data, and network
configuration version 2 (netplan style) matching the interface by its MAC address, so the guest's
interface naming (``eth0``, ``enX0``…) does not matter.
"""

from __future__ import annotations

import io
import ipaddress
import json
import traceback

try:
    import pycdlib

    HAS_PYCDLIB, PYCDLIB_IMPORT_ERROR = True, None
except ImportError:
    pycdlib = None
    HAS_PYCDLIB, PYCDLIB_IMPORT_ERROR = False, traceback.format_exc()

try:
    import yaml

    HAS_YAML = True
except ImportError:  # Ansible's controller always has PyYAML; JSON is valid YAML as a fallback
    yaml = None
    HAS_YAML = False

LABEL = "cidata"
SECTOR = 2048
ALIGN = 1 << 20  # the VDI is sized in whole MiB
FILES = ("meta-data", "user-data", "network-config")


class ConfigDriveError(ValueError):
    """Configuration that cannot go on a config drive; the message says what to change."""


def dump_yaml(value):
    if HAS_YAML:
        return yaml.safe_dump(value, default_flow_style=False, sort_keys=False)
    return json.dumps(value, indent=2) + "\n"


def network_config(mac, ip=None, gateway=None, dns=None):
    """Version 2 network configuration for the interface with ``mac``: static ``ip`` (CIDR) or DHCP."""
    iface = {"match": {"macaddress": mac.lower()}}
    if ip:
        iface["dhcp4"] = False
        iface["addresses"] = [str(ipaddress.ip_interface(ip))]
        if gateway:
            iface["routes"] = [{"to": "default", "via": str(ipaddress.ip_address(gateway))}]
    else:
        iface["dhcp4"] = True
    if dns:
        iface["nameservers"] = {"addresses": [str(ipaddress.ip_address(d)) for d in dns]}
    return {"version": 2, "ethernets": {"eth0": iface}}


def user_data(hostname=None, user=None, ssh_authorized_keys=()):
    """``#cloud-config`` text: host name, and the SSH keys for ``user`` (created) or the image's default user."""
    config = {}
    if hostname:
        config["hostname"] = hostname
        config["manage_etc_hosts"] = True
    keys = list(ssh_authorized_keys or [])
    if user:
        config["users"] = [
            "default",
            {
                "name": user,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": keys,
            },
        ]
    elif keys:
        config["ssh_authorized_keys"] = keys
    return "#cloud-config\n" + dump_yaml(config)


def meta_data(instance_id, hostname=None):
    data = {"instance-id": instance_id}
    if hostname:
        data["local-hostname"] = hostname
    return dump_yaml(data)


def files(instance_id, mac, hostname=None, user=None, ssh_authorized_keys=(), ip=None, gateway=None, dns=None):
    """The three NoCloud files as ``{name: bytes}``."""
    return {
        "meta-data": meta_data(instance_id, hostname).encode(),
        "user-data": user_data(hostname, user, ssh_authorized_keys).encode(),
        "network-config": dump_yaml(network_config(mac, ip, gateway, dns)).encode(),
    }


def _iso_name(name):
    # ISO 9660 level 3 names: d-characters only; Rock Ridge and Joliet carry the real name.
    return "/" + "".join(c if c.isalnum() else "_" for c in name.upper()) + ".;1"


def build_iso(contents):
    """An ISO 9660 image labelled ``cidata`` holding ``contents`` (``{name: bytes}``), padded to whole MiB."""
    if not HAS_PYCDLIB:
        raise ConfigDriveError("building a config drive needs the Python library pycdlib on the controller")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL, app_ident_str="xapi.proxy")
    try:
        for name, data in contents.items():
            iso.add_fp(io.BytesIO(data), len(data), _iso_name(name), rr_name=name, joliet_path="/" + name)
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    image = out.getvalue()
    return image + bytes(-len(image) % ALIGN)

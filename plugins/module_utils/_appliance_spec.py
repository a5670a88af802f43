"""The ``appliance`` module's options, checked and turned into what the VM should be.

Everything here is pure: no XAPI call, so bad input fails before the pool is touched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

COLLECTION_VERSION = "0.1.0"  # galaxy.yml's version; a unit test keeps them equal
TAG = "xapi-proxy"
# other_config keys on the VM (and on the config drive VDI) that mark what this collection made.
KEY_APPLIANCE = "xapi-proxy:appliance"  # the name the module manages it under
KEY_SITE = "xapi-proxy:site"
KEY_VERSION = "xapi-proxy:version"
KEY_GUEST = "xapi-proxy:guest"  # JSON of the guest configuration last delivered, with its hash
KEY_DRIVE = "xapi-proxy:config-drive"  # on the drive's VDI: the hash of the configuration it holds
# vm-data keys: Xen Orchestra's proxy appliance reads ip, netmask, gateway and dns at boot.
XS_PREFIX = "vm-data/"
XS_KEYS = ("ip", "netmask", "gateway", "dns", "hostname", "user", "ssh-authorized-keys")
XENSTORE_VALUE_LIMIT = 4096
DELIVERY = ("config_drive", "xenstore")
_UNITS = {"B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_UNITS.update({"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "KB": 1 << 10, "MB": 1 << 20,
               "GB": 1 << 30, "TB": 1 << 40})  # fmt: skip
_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class ApplianceInputError(ValueError):
    """An option value that cannot work; the message says what to write instead."""


def argument_spec():
    return {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "choices": ["present", "started", "stopped", "absent"], "default": "present"},
        "site": {"type": "str"},
        "template": {"type": "str"},
        "xva_path": {"type": "path"},
        "xva_url": {"type": "str"},
        "sr": {"type": "str"},
        "vcpus": {"type": "int"},
        "memory": {"type": "str"},
        "disk_size": {"type": "str"},
        "network": {"type": "str"},
        "ip": {"type": "str"},
        "gateway": {"type": "str"},
        "dns": {"type": "list", "elements": "str"},
        "guest_hostname": {"type": "str"},
        "user": {"type": "str"},
        "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
        "configure_via": {"type": "list", "elements": "str", "choices": list(DELIVERY), "default": list(DELIVERY)},
        "remove_config_drive": {"type": "bool", "default": True},
        "allow_restart": {"type": "bool", "default": False},
        "force": {"type": "bool", "default": False},
        "wait_timeout": {"type": "int", "default": 300},
    }


MUTUALLY_EXCLUSIVE = [["template", "xva_path", "xva_url"]]


def parse_size(value, option):
    """``"2GiB"`` → bytes. A unit is required: a bare number is ambiguous between MiB and GiB."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if m and not m.group(2):
        raise ApplianceInputError(f"{option}={value!r} has no unit: write {value}MiB or {value}GiB.")
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or (unit == "B" and "." in m.group(1)):
        raise ApplianceInputError(
            f"{option}={value!r} is not a size: write a number with a unit, such as 2GiB, 1536MiB or 20G."
        )
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ApplianceInputError(f"{option}={value!r} must be larger than zero.")
    return size


def human(size):
    """Bytes as the shortest exact binary unit (``2GiB``, ``1536MiB``)."""
    if size is None:
        return None
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def default_hostname(name):
    text = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return text or None


class ApplianceSpec:
    """What the module was asked for, validated. ``None`` means "leave as it is"."""

    def __init__(self, params):
        p = params
        self.name = p["name"]
        if not self.name or not self.name.strip():
            raise ApplianceInputError("name must not be empty.")
        self.state = p["state"]
        self.site = p.get("site")
        self.template = p.get("template")
        self.xva_path = p.get("xva_path")
        self.xva_url = p.get("xva_url")
        self.sr = p.get("sr")
        self.vcpus = p.get("vcpus")
        if self.vcpus is not None and not 1 <= self.vcpus <= 64:
            raise ApplianceInputError(f"vcpus={self.vcpus} is out of range: give 1 to 64.")
        self.memory = parse_size(p.get("memory"), "memory")
        if self.memory is not None and self.memory < (256 << 20):
            raise ApplianceInputError(f"memory={p['memory']} is too small for a proxy: give at least 256MiB.")
        self.disk_size = parse_size(p.get("disk_size"), "disk_size")
        self.network = p.get("network")
        self.ip, self.netmask, self.prefix = None, None, None
        if p.get("ip"):
            try:
                iface = ipaddress.IPv4Interface(p["ip"])
            except ValueError:
                raise ApplianceInputError(
                    f"ip={p['ip']!r} is not an IPv4 address in CIDR form: write it like 192.0.2.10/24."
                ) from None
            if "/" not in p["ip"]:
                raise ApplianceInputError(f"ip={p['ip']!r} has no prefix length: write it like {p['ip']}/24.")
            self.ip, self.prefix, self.netmask = str(iface.ip), iface.network.prefixlen, str(iface.netmask)
        self.gateway = self._address(p.get("gateway"), "gateway")
        if self.gateway and not self.ip:
            raise ApplianceInputError("gateway needs ip: without ip the guest takes its gateway from DHCP.")
        if self.gateway and ipaddress.IPv4Address(self.gateway) not in ipaddress.IPv4Interface(p["ip"]).network:
            raise ApplianceInputError(f"gateway {self.gateway} is not in the network of ip={p['ip']}.")
        self.dns = [self._address(d, "dns") for d in (p.get("dns") or [])]
        self.hostname = p.get("guest_hostname") or default_hostname(self.name)
        if self.hostname and not all(_HOSTNAME.match(label) for label in self.hostname.lower().split(".")):
            raise ApplianceInputError(
                f"guest_hostname={self.hostname!r} is not a valid host name: use letters, digits and '-' (dots between "
                "labels)."
            )
        self.user = p.get("user")
        if self.user and not _USER.match(self.user):
            raise ApplianceInputError(
                f"user={self.user!r} is not a valid Linux user name: use lower-case letters, digits, '_' and '-'."
            )
        self.ssh_authorized_keys = [k.strip() for k in (p.get("ssh_authorized_keys") or []) if k.strip()]
        for key in self.ssh_authorized_keys:
            if "\n" in key or not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key):
                raise ApplianceInputError(
                    f"ssh_authorized_keys holds {key[:30]!r}…, which is not one public key line such as "
                    "'ssh-ed25519 AAAA… comment'."
                )
        self.configure_via = list(dict.fromkeys(p.get("configure_via") or []))
        self.remove_config_drive = p.get("remove_config_drive", True)
        self.allow_restart = p.get("allow_restart", False)
        self.force = p.get("force", False)
        self.wait_timeout = p.get("wait_timeout")
        if self.wait_timeout is None or self.wait_timeout <= 0:
            raise ApplianceInputError(f"wait_timeout={self.wait_timeout} must be a positive number of seconds.")

    @staticmethod
    def _address(value, option):
        if not value:
            return None
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            raise ApplianceInputError(f"{option}={value!r} is not an IPv4 address.") from None

    @property
    def has_source(self):
        return bool(self.template or self.xva_path or self.xva_url)

    def guest(self, mac):
        """The guest configuration to deliver, for the interface with ``mac``, and its hash."""
        config = {
            "hostname": self.hostname,
            "user": self.user,
            "ssh_authorized_keys": self.ssh_authorized_keys,
            "ip": f"{self.ip}/{self.prefix}" if self.ip else None,
            "gateway": self.gateway,
            "dns": self.dns,
            "mac": mac,
            "configure_via": sorted(self.configure_via),
        }
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        return config, digest

    def xenstore(self):
        """The ``vm-data/`` keys to set; managed keys missing here are removed."""
        if "xenstore" not in self.configure_via:
            return {}
        values = {
            "ip": self.ip,
            "netmask": self.netmask,
            "gateway": self.gateway,
            "dns": ",".join(self.dns) if self.dns else None,
            "hostname": self.hostname,
            "user": self.user,
            "ssh-authorized-keys": "\n".join(self.ssh_authorized_keys) or None,
        }
        out = {XS_PREFIX + k: v for k, v in values.items() if v}
        for key, value in out.items():
            if len(value.encode()) > XENSTORE_VALUE_LIMIT:
                raise ApplianceInputError(
                    f"{key} would hold {len(value.encode())} bytes, more than xenstore's {XENSTORE_VALUE_LIMIT}: give "
                    "fewer SSH keys, or set configure_via to [config_drive]."
                )
        return out

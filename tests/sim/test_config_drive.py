"""A started VM boots from its cloud-init config drive: the guest reports the address its network-config gives.

The drives here are made with Debian's own tools (``genisoimage`` as ``cloud-localds`` does, ``mkfs.vfat``
plus ``mcopy`` as a FAT drive like Xen Orchestra's), so the simulator's reader is checked against images
the collection did not write.
"""

import os
import shutil
import subprocess
import textwrap

import pytest

from xapisim.config_drive import static_address

NULL = "OpaqueRef:NULL"
MiB = 1 << 20
STATIC = "198.51.100.7"


def needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages genisoimage, mtools, dosfstools)")


def iso_image(tmp_path, files, label="cidata"):
    needs("genisoimage", "isoinfo")
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    image = tmp_path / "drive.iso"
    subprocess.run(["genisoimage", "-quiet", "-output", str(image), "-volid", label, "-joliet", "-rock",
                    *[str(src / n) for n in files]], check=True)  # fmt: skip
    return image.read_bytes()


def fat_image(tmp_path, files, label="CIDATA"):
    needs("mkfs.vfat", "mcopy", "mtype")
    image = tmp_path / "drive.fat"
    image.write_bytes(bytes(4 * MiB))
    subprocess.run(["mkfs.vfat", "-n", label, str(image)], check=True, capture_output=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        subprocess.run(["mcopy", "-i", str(image), str(tmp_path / name), f"::/{name}"], check=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    return image.read_bytes()


def attach(sim, x, vm, image):
    """Put ``image`` on a new small disk and attach it to ``vm``, non-bootable, read-only."""
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    size = len(image) + (-len(image) % MiB)
    vdi = x.VDI.create({"name_label": "cidata", "SR": sr, "virtual_size": str(size), "type": "user",
                        "sharable": False, "read_only": False, "other_config": {}})  # fmt: skip
    sim.write(x.VDI.get_uuid(vdi), image)
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "5", "bootable": False, "mode": "RO", "type": "Disk",
                  "unpluggable": True, "empty": False, "other_config": {}, "qos_algorithm_type": "",
                  "qos_algorithm_params": {}})  # fmt: skip
    return vdi


def booted_ip(x, vm):
    x.VM.start(vm, False, False)
    metrics = x.VM.get_guest_metrics(vm)
    assert metrics != NULL, "the guest did not boot"
    return x.VM_guest_metrics.get_networks(metrics)["0/ip"]


def mac_of(x, vm):
    return next(x.VIF.get_MAC(v) for v in x.VM.get_VIFs(vm) if x.VIF.get_device(v) == "0")


V1_STATIC = textwrap.dedent(f"""\
    version: 1
    config:
      - type: physical
        name: eth0
        subnets:
          - type: static
            address: {STATIC}/24
            gateway: 198.51.100.1
    """)


def v2(mac, body):
    """Two interfaces, ours second: the parser must pick it by MAC, not by position."""
    other = "  other:\n    match: {macaddress: '00:16:3e:00:00:99'}\n    addresses: [203.0.113.9/24]\n"
    return f"version: 2\nethernets:\n{other}  primary:\n    match: {{macaddress: '{mac}'}}\n{body}"


@pytest.fixture
def tiny_vm(tiny):
    with tiny.xapi() as x:
        yield tiny, x, x.VM.get_by_name_label("tiny-01")[0]


def test_iso_drive_v1_static_address_is_reported(tiny_vm, tmp_path):
    sim, x, vm = tiny_vm
    attach(sim, x, vm, iso_image(tmp_path, {"meta-data": "instance-id: t1\n", "network-config": V1_STATIC}))
    assert booted_ip(x, vm) == STATIC


def test_fat_drive_v2_picks_the_interface_with_the_vms_mac(tiny_vm, tmp_path):
    sim, x, vm = tiny_vm
    mac = mac_of(x, vm)
    body = f"    addresses: [{STATIC}/24]\n    routes: [{{to: default, via: 198.51.100.1}}]\n"
    attach(sim, x, vm, fat_image(tmp_path, {"meta-data": "instance-id: t2\n", "network-config": v2(mac, body)}))
    assert booted_ip(x, vm) == STATIC


@pytest.mark.parametrize(
    "case",
    ["dhcp", "no-network-config", "broken-yaml", "wrong-label", "unknown-version"],
)
def test_without_a_usable_static_config_the_guest_takes_a_dhcp_lease(tiny_vm, tmp_path, case):
    sim, x, vm = tiny_vm
    files = {"meta-data": "instance-id: t3\n"}
    label = "cidata"
    if case == "dhcp":
        files["network-config"] = v2(mac_of(x, vm), "    dhcp4: true\n")
    elif case == "broken-yaml":
        files["network-config"] = f"version: 2\nethernets: [{STATIC}: {{\n"
    elif case == "wrong-label":
        files["network-config"] = V1_STATIC
        label = "config-2"
    elif case == "unknown-version":
        files["network-config"] = V1_STATIC.replace("version: 1", "version: 3")
    attach(sim, x, vm, iso_image(tmp_path, files, label=label))
    ip = booted_ip(x, vm)
    assert ip != STATIC and ip.startswith("192.0.2."), ip  # the lab's DHCP range


def test_xenstore_address_still_wins_over_the_drive(tiny_vm, tmp_path):
    # Xen Orchestra's proxy appliance reads vm-data/ip; the simulator keeps that order.
    sim, x, vm = tiny_vm
    attach(sim, x, vm, iso_image(tmp_path, {"meta-data": "instance-id: t4\n", "network-config": V1_STATIC}))
    x.VM.add_to_xenstore_data(vm, "vm-data/ip", "198.51.100.99")
    assert booted_ip(x, vm) == "198.51.100.99"


def test_network_config_parser_forms():
    assert static_address(V1_STATIC) == STATIC
    wrapped = "network:\n" + textwrap.indent(V1_STATIC, "  ")
    assert static_address(wrapped) == STATIC
    subnets = "[{type: static, address: 10.1.2.3, netmask: 255.255.255.0}]"
    netmask = f"version: 1\nconfig:\n- type: physical\n  name: eth0\n  subnets: {subnets}\n"
    assert static_address(netmask) == "10.1.2.3"
    assert static_address(v2("02:00:00:00:00:01", f"    addresses: ['{STATIC}/24']\n"), "02:00:00:00:00:01") == STATIC
    # The other interface's address is not taken for ours, and IPv6 is skipped.
    assert static_address(v2("02:00:00:00:00:01", "    addresses: ['2001:db8::5/64']\n"), "02:00:00:00:00:01") is None
    assert static_address("version: 2\nethernets: {eth0: {dhcp4: true}}\n") is None
    assert static_address("network: {config: disabled}\n") is None


def test_the_guest_keeps_its_address_once_the_drive_is_removed(tiny_vm, tmp_path):
    # cloud-init wrote the configuration into the guest's own files: a reboot without the drive keeps it.
    sim, x, vm = tiny_vm
    vdi = attach(sim, x, vm, iso_image(tmp_path, {"meta-data": "instance-id: t5\n", "network-config": V1_STATIC}))
    assert booted_ip(x, vm) == STATIC
    vbd = x.VDI.get_VBDs(vdi)[0]
    x.VBD.unplug(vbd)
    x.VBD.destroy(vbd)
    x.VDI.destroy(vdi)
    x.VM.hard_shutdown(vm)
    assert booted_ip(x, vm) == STATIC

"""The appliance module against the simulator: deploy from a template or an XVA, configure, boot, converge, remove.

The guest "boots" as the simulator's guest does: it reports an address only if its system disk has a
boot sector (so the tests write one, as a real image would have), and takes its static address from
the xenstore ``vm-data/ip`` key or from the cloud-init drive, which the simulator reads with
``isoinfo`` (the collection writes it with pycdlib). The drive is also read back here with ``isoinfo``
and its YAML compared.
"""

import functools
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from module_runner import run_module

from ansible_collections.xapi.proxy.plugins.module_utils._appliance_spec import (
    COLLECTION_VERSION,
    ApplianceInputError,
    ApplianceSpec,
    argument_spec,
    parse_size,
)

TEMPLATE = "Debian Bookworm 12"
NETWORK = "Pool-wide network associated with eth0"
OTHER_NETWORK = "storage-vlan-20"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK6ZxBXAhgn1bMwnxFT3kB8nUx0w9yXvKCxv0Yj6tTQ1 ops@controller"
STATIC = "192.0.2.50"
BOOT_SECTOR = b"\xeb\x63\x90" + bytes(507) + b"\x55\xaa"
NULL = "OpaqueRef:NULL"


@pytest.fixture
def conn(sim):
    return {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path)}


def appliance(conn, **args):
    run = run_module("appliance", {**conn, "_ansible_diff": True, **args})
    assert "Traceback" not in run.output, run.stderr
    return run


def vm_devices(x, vm):
    """``{userdevice: (VBD record, VDI record)}`` of the VM's disks."""
    out = {}
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        if rec["VDI"] != NULL:
            out[rec["userdevice"]] = (rec, x.VDI.get_record(rec["VDI"]))
    return out


def write_boot_sector(sim, x, vm):
    _, vdi = vm_devices(x, vm)["0"]
    sim.write(vdi["uuid"], BOOT_SECTOR)


def read_drive(sim, vdi_uuid, tmp_path):
    """The config drive's files, exported raw from XAPI and read with isoinfo (not with pycdlib)."""
    if shutil.which("isoinfo") is None:
        pytest.skip("isoinfo is not installed (Debian package genisoimage)")
    session = sim.session()
    try:
        r = sim.http("GET", "/export_raw_vdi", params={"session_id": session._session, "vdi": vdi_uuid,
                                                        "format": "raw"})  # fmt: skip
        r.raise_for_status()
    finally:
        session.xenapi.session.logout()
    image = tmp_path / "drive.img"
    image.write_bytes(r.content)
    label = subprocess.run(["isoinfo", "-d", "-i", str(image)], capture_output=True, text=True, check=True).stdout
    files = {}
    for name in ("meta-data", "user-data", "network-config"):
        done = subprocess.run(["isoinfo", "-R", "-i", str(image), "-x", f"/{name}"], capture_output=True, check=True)
        files[name] = done.stdout.decode()
    return label, files


def test_template_static_address_config_drive_idempotence_diff_and_absent(sim, conn, tmp_path):
    args = {"name": "proxy-paris", "site": "paris", "template": TEMPLATE, "vcpus": 2, "memory": "2GiB",
            "disk_size": "10GiB", "network": NETWORK, "ip": f"{STATIC}/24", "gateway": "192.0.2.1",
            "dns": ["192.0.2.53", "192.0.2.54"], "user": "ansible", "ssh_authorized_keys": [KEY],
            "configure_via": ["config_drive"], "wait_timeout": 20}  # fmt: skip
    with sim.xapi() as x:
        vdis_before = set(x.VDI.get_all())
    # Check mode reports the plan and touches nothing.
    plan = appliance(conn, **args, state="started", _ansible_check_mode=True)
    assert plan.rc == 0, plan.result
    assert plan.result["changed"] is True
    assert plan.result["actions"][0] == f"create VM 'proxy-paris' (clone of {TEMPLATE!r})"
    assert "start and wait for its address" in plan.result["actions"]
    assert plan.result["diff"]["before"] == {} and plan.result["diff"]["after"]["vcpus"] == 2
    with sim.xapi() as x:
        assert x.VM.get_by_name_label("proxy-paris") == [] and set(x.VDI.get_all()) == vdis_before

    run = appliance(conn, **args, state="present")
    assert run.rc == 0, run.result
    vm_result = run.result["vm"]
    assert run.result["changed"] is True and run.result["actions"][0].startswith("create VM 'proxy-paris' (cloned")
    assert vm_result["power_state"] == "halted" and vm_result["config_drive"]
    with sim.xapi() as x:
        vm = x.VM.get_by_uuid(run.result["uuid"])
        rec = x.VM.get_record(vm)
        assert not rec["is_a_template"] and rec["name_label"] == "proxy-paris"
        assert rec["other_config"]["xapi-proxy:appliance"] == "proxy-paris"
        assert rec["other_config"]["xapi-proxy:site"] == "paris"
        assert rec["other_config"]["xapi-proxy:version"] == COLLECTION_VERSION
        assert {"xapi-proxy", "xapi-proxy:paris"} <= set(rec["tags"])
        assert (rec["VCPUs_max"], rec["VCPUs_at_startup"]) == ("2", "2")
        assert {rec[f"memory_{k}"] for k in ("static_max", "dynamic_max", "dynamic_min")} == {str(2 << 30)}
        assert [x.network.get_name_label(x.VIF.get_network(v)) for v in rec["VIFs"]] == [NETWORK]
        mac = x.VIF.get_MAC(rec["VIFs"][0])
        devices = vm_devices(x, vm)
        system_vbd, system_vdi = devices["0"]
        assert system_vbd["bootable"] and system_vdi["virtual_size"] == str(10 << 30)
        drive_vbd, drive_vdi = next(d for d in devices.values() if d[1]["uuid"] == vm_result["config_drive"])
        assert drive_vbd["mode"] == "RO" and not drive_vbd["bootable"] and drive_vbd["userdevice"] not in ("0", "3")
        assert not any(k.startswith("vm-data/") for k in rec["xenstore_data"])  # configure_via: [config_drive]
        write_boot_sector(sim, x, vm)
    # The drive as a guest sees it: ISO 9660 labelled cidata, NoCloud files, YAML as documented by cloud-init.
    label, files = read_drive(sim, vm_result["config_drive"], tmp_path)
    assert "Volume id: cidata" in label
    meta = yaml.safe_load(files["meta-data"])
    assert meta["instance-id"].startswith(f"iid-{run.result['uuid']}-") and meta["local-hostname"] == "proxy-paris"
    assert files["user-data"].startswith("#cloud-config\n")
    user_data = yaml.safe_load(files["user-data"])
    assert user_data["hostname"] == "proxy-paris"
    assert user_data["users"][1] == {"name": "ansible", "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                                     "lock_passwd": True, "ssh_authorized_keys": [KEY]}  # fmt: skip
    assert yaml.safe_load(files["network-config"]) == {
        "version": 2,
        "ethernets": {"eth0": {"match": {"macaddress": mac}, "dhcp4": False, "addresses": [f"{STATIC}/24"],
                               "routes": [{"to": "default", "via": "192.0.2.1"}],
                               "nameservers": {"addresses": ["192.0.2.53", "192.0.2.54"]}}},
    }  # fmt: skip
    again = appliance(conn, **args, state="present")
    assert again.rc == 0 and again.result["changed"] is False and again.result["actions"] == []

    # Started: the guest boots from the drive and reports the static address; the drive then goes.
    run = appliance(conn, **args, state="started")
    assert run.rc == 0, run.result
    assert run.result["actions"][0] == "start" and run.result["actions"][1].startswith("remove the config drive")
    assert run.result["ip"] == STATIC and run.result["vm"]["config_drive"] is None
    assert run.result["add_host"] == {"name": "proxy-paris", "ansible_host": STATIC, "ansible_user": "ansible",
                                      "xapi_proxy_vm_uuid": run.result["uuid"], "xapi_proxy_site": "paris"}  # fmt: skip
    with sim.xapi() as x:
        assert drive_vdi["uuid"] not in {x.VDI.get_uuid(v) for v in x.VDI.get_all()}
    again = appliance(conn, **args, state="started")
    assert again.rc == 0 and again.result["changed"] is False and again.result["ip"] == STATIC

    # A changed argument on a running VM: refused without allow_restart, applied with it, shown in the diff.
    refused = appliance(conn, **{**args, "vcpus": 3}, state="started")
    assert refused.rc != 0 and "set vcpus 2 -> 3" in refused.result["msg"] and "allow_restart" in refused.result["msg"]
    check = appliance(conn, **{**args, "vcpus": 3}, state="started", allow_restart=True, _ansible_check_mode=True)
    assert check.result["changed"] is True and check.result["diff"]["after"]["vcpus"] == 3
    run = appliance(conn, **{**args, "vcpus": 3}, state="started", allow_restart=True)
    assert run.rc == 0, run.result
    assert run.result["actions"] == ["shut down to apply the changes", "set vcpus 2 -> 3", "start"]
    assert (run.result["diff"]["before"]["vcpus"], run.result["diff"]["after"]["vcpus"]) == (2, 3)
    assert run.result["vm"]["power_state"] == "running" and run.result["ip"] == STATIC
    with sim.xapi() as x:
        assert x.VM.get_VCPUs_at_startup(vm) == "3"

    gone = appliance(conn, name="proxy-paris", state="absent")
    assert gone.rc == 0 and gone.result["changed"] is True
    with sim.xapi() as x:
        assert x.VM.get_by_name_label("proxy-paris") == [] and set(x.VDI.get_all()) == vdis_before
    assert appliance(conn, name="proxy-paris", state="absent").result["changed"] is False


def export_xva(sim, name, dest):
    """An XVA of one of the lab's VMs (with its disk content), as a real image file would be."""
    session = sim.session()
    try:
        uuid = session.xenapi.VM.get_uuid(session.xenapi.VM.get_by_name_label(name)[0])
        r = sim.http("GET", "/export", params={"session_id": session._session, "uuid": uuid}, stream=True)
        r.raise_for_status()
        with open(dest, "wb") as fh:
            for chunk in r.iter_content(1 << 20):
                fh.write(chunk)
    finally:
        session.xenapi.session.logout()
    return dest


@pytest.fixture
def served(tmp_path):
    """A plain HTTP server on loopback serving ``tmp_path/www`` (for xva_url)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("via", ["xva_path", "xva_url"])
def test_xva_with_dhcp_and_xenstore(sim, conn, tmp_path, served, via):
    root, base = served
    xva = export_xva(sim, "test-01", root / "proxy.xva")
    source = {"xva_path": str(xva)} if via == "xva_path" else {"xva_url": f"{base}/proxy.xva"}
    args = {"name": "proxy-lyon", "site": "lyon", **source, "sr": "NFS backups", "memory": "1GiB",
            "network": OTHER_NETWORK, "ssh_authorized_keys": [KEY], "guest_hostname": "proxy-lyon.example.org",
            "wait_timeout": 20}  # fmt: skip
    run = appliance(conn, **args, state="started")
    assert run.rc == 0, run.result
    assert run.result["actions"][0] == f"create VM 'proxy-lyon' (imported from {source[via]})"
    ip = run.result["ip"]
    assert ip.startswith("192.0.2.") and 100 <= int(ip.rsplit(".", 1)[1]) <= 200  # a lease from the lab's DHCP
    with sim.xapi() as x:
        vm = x.VM.get_by_uuid(run.result["uuid"])
        rec = x.VM.get_record(vm)
        assert not rec["is_a_template"] and rec["name_label"] == "proxy-lyon"
        assert {k: v for k, v in rec["xenstore_data"].items() if k.startswith("vm-data/")} == {
            "vm-data/hostname": "proxy-lyon.example.org",
            "vm-data/ssh-authorized-keys": KEY,
        }
        assert [x.network.get_name_label(x.VIF.get_network(v)) for v in rec["VIFs"]] == [OTHER_NETWORK]
        sr_names = {x.SR.get_name_label(d[1]["SR"]) for d in vm_devices(x, vm).values()}
        assert sr_names == {"NFS backups"}
        assert len(vm_devices(x, vm)) == 1  # the drive was removed once the guest booted
    again = appliance(conn, **args, state="started")
    assert again.rc == 0 and again.result["changed"] is False
    # Moving to a static address: xenstore gets ip/netmask/gateway; the guest takes it after a restart.
    moved = appliance(conn, **args, state="started", ip="192.0.2.60/24", gateway="192.0.2.1", allow_restart=True)
    assert moved.rc == 0, moved.result
    assert moved.result["ip"] == "192.0.2.60"
    assert moved.result["diff"]["after"]["guest"]["ip"] == "192.0.2.60/24"
    with sim.xapi() as x:
        data = x.VM.get_xenstore_data(vm)
        assert (data["vm-data/ip"], data["vm-data/netmask"], data["vm-data/gateway"]) == (
            "192.0.2.60", "255.255.255.0", "192.0.2.1")  # fmt: skip
    # Stopped: halted, and still unchanged on a second run.
    stopped = appliance(conn, **args, ip="192.0.2.60/24", gateway="192.0.2.1", state="stopped")
    assert stopped.rc == 0 and stopped.result["actions"] == ["shut down"]
    assert stopped.result["vm"]["power_state"] == "halted"
    assert appliance(conn, **args, ip="192.0.2.60/24", gateway="192.0.2.1", state="stopped").result["changed"] is False


def test_errors_users_meet_get_plain_answers(sim, conn):
    base = {"name": "proxy-x", "network": NETWORK, "wait_timeout": 3}
    run = appliance(conn, **base, template="Debian Trixie 13")
    assert run.rc != 0
    assert "template 'Debian Trixie 13' was not found" in run.result["msg"] and repr(TEMPLATE) in run.result["msg"]
    run = appliance(conn, **{**base, "network": "dmz"}, template=TEMPLATE)
    assert run.rc != 0 and "network 'dmz' was not found" in run.result["msg"] and NETWORK in run.result["msg"]
    run = appliance(conn, **base, template=TEMPLATE, sr="Fast SSD")
    assert run.rc != 0 and "SR 'Fast SSD' was not found" in run.result["msg"] and "Local storage" in run.result["msg"]
    run = appliance(conn, **base, template=TEMPLATE, memory="2048")
    assert run.rc != 0 and "memory='2048' has no unit" in run.result["msg"]
    run = appliance(conn, **base)
    assert run.rc != 0 and "give template, xva_path or xva_url" in run.result["msg"]
    # SR full while the template's disk is created: plain message, and nothing left behind.
    sim.fault(method="VM.provision", action="fail_task", error=["SR_BACKEND_FAILURE_44", "", "There is insufficient "
                                                                "space", ""])  # fmt: skip
    run = appliance(conn, **base, template=TEMPLATE, sr="Local storage")
    assert run.rc != 0
    assert "SR 'Local storage' is full (There is insufficient space)" in run.result["msg"]
    assert run.result["xapi_error"][0] == "SR_BACKEND_FAILURE_44"
    with sim.xapi() as x:
        assert x.VM.get_by_name_label("proxy-x") == []
    # A guest that never boots (the template's fresh disk has no boot sector): says what it reported.
    run = appliance(conn, **base, template=TEMPLATE, state="started")
    assert run.rc != 0
    assert "did not report an address on its first interface within 3 seconds" in run.result["msg"]
    assert "reported nothing at all (no guest metrics)" in run.result["msg"]
    # A guest that boots but ignores the configuration: says which address it took instead.
    with sim.xapi() as x:
        write_boot_sector(sim, x, x.VM.get_by_name_label("proxy-x")[0])
    run = appliance(conn, **base, state="started", ip=f"{STATIC}/24", configure_via=[], allow_restart=True)
    assert run.rc != 0
    assert f"did not report the address {STATIC}" in run.result["msg"] and "0/ip=192.0.2.1" in run.result["msg"]
    assert "did not apply the configuration" in run.result["msg"]
    # Another VM of that name, not deployed by the module, is left alone.
    run = appliance(conn, name="web-01", template=TEMPLATE, network=NETWORK)
    assert run.rc != 0 and "was not deployed by this module" in run.result["msg"]
    run = appliance(conn, name="test-01", state="absent")
    assert run.rc != 0 and "set force: true" in run.result["msg"]
    run = appliance(conn, name="test-01", state="absent", force=True)
    assert run.rc == 0 and run.result["changed"] is True
    assert sim.password not in str(run.result)


def test_collection_version_recorded_on_vms_is_galaxys():
    galaxy = yaml.safe_load((Path(__file__).resolve().parents[4] / "galaxy.yml").read_text())
    assert galaxy["version"] == COLLECTION_VERSION


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ip": "192.0.2.10"}, "ip='192.0.2.10' has no prefix length"),
        ({"ip": "192.0.2.300/24"}, "not an IPv4 address in CIDR form"),
        ({"ip": "192.0.2.10/24", "gateway": "198.51.100.1"}, "gateway 198.51.100.1 is not in the network"),
        ({"gateway": "192.0.2.1"}, "gateway needs ip"),
        ({"dns": ["dns.example.org"]}, "dns='dns.example.org' is not an IPv4 address"),
        ({"disk_size": "20 parsecs"}, "disk_size='20 parsecs' is not a size"),
        ({"memory": "128MiB"}, "too small for a proxy"),
        ({"vcpus": 0}, "vcpus=0 is out of range"),
        ({"guest_hostname": "proxy_paris"}, "not a valid host name"),
        ({"user": "Root Admin"}, "not a valid Linux user name"),
        ({"ssh_authorized_keys": ["AAAA-not-a-key"]}, "not one public key line"),
        ({"ssh_authorized_keys": [KEY] * 60}, "more than xenstore's 4096"),
    ],
)
def test_bad_options_are_refused_before_the_pool_is_touched(options, message):
    params = {**{k: v.get("default") for k, v in argument_spec().items()}, "name": "p", **options}
    with pytest.raises(ApplianceInputError, match=re.escape(message)):
        ApplianceSpec(params).xenstore()


def test_sizes_and_default_host_name():
    assert [parse_size(v, "x") for v in ("2GiB", "1536MiB", "20G", "1.5GiB")] == [2 << 30, 1536 << 20, 20 << 30,
                                                                                   3 << 29]  # fmt: skip
    params = {**{k: v.get("default") for k, v in argument_spec().items()}, "name": "Proxy Paris #2"}
    assert ApplianceSpec(params).hostname == "proxy-paris-2"

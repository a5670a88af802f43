"""VM and device semantics the collection relies on, with xapi's checks and error parameters."""

import base64

from simhelpers import disk_vdis, failure, wait_task

NULL = "OpaqueRef:NULL"


def vm_by_name(x, name):
    return x.VM.get_by_name_label(name)[0]


def test_async_snapshot_task_and_snapshot_fields(sim, x):
    web = vm_by_name(x, "web-01")
    vdis = disk_vdis(x, web)
    task = x.Async.VM.snapshot(web, "before-upgrade")
    assert task.startswith("OpaqueRef:")
    rec = wait_task(x, task)
    assert rec["status"] == "success" and float(rec["progress"]) == 1.0
    assert rec["result"].startswith("<value>OpaqueRef:") and rec["result"].endswith("</value>")
    snap = rec["result"][len("<value>") : -len("</value>")]
    s = x.VM.get_record(snap)
    assert s["is_a_snapshot"] and s["is_a_template"] and s["snapshot_of"] == web
    assert s["snapshot_info"]["power-state-at-snapshot"] == "Running"
    assert s["power_state"] == "Halted"
    assert snap in x.VM.get_snapshots(web) and x.VM.get_parent(web) == snap
    snap_vdis = disk_vdis(x, snap)
    assert set(snap_vdis) == set(vdis)
    for dev, vdi in snap_vdis.items():
        r = x.VDI.get_record(vdi)
        assert r["is_a_snapshot"] and r["snapshot_of"] == vdis[dev]
        assert sim.sha256(r["uuid"]) == sim.sha256(x.VDI.get_uuid(vdis[dev]))
    # VIFs keep their MACs in a snapshot.
    macs = sorted(x.VIF.get_MAC(v) for v in x.VM.get_VIFs(web))
    assert sorted(x.VIF.get_MAC(v) for v in x.VM.get_VIFs(snap)) == macs


def test_snapshot_ignore_vdis_and_guest_writes_after_it(sim, x):
    web = vm_by_name(x, "web-01")
    vdis = disk_vdis(x, web)
    snap = x.VM.snapshot(web, "no-scratch", [vdis["1"]])
    assert set(disk_vdis(x, snap)) == {"0"}
    root_uuid = x.VDI.get_uuid(vdis["0"])
    snap_root_uuid = x.VDI.get_uuid(disk_vdis(x, snap)["0"])
    before = sim.sha256(snap_root_uuid)
    sim.write(root_uuid, b"guest data" * 1000, offset=5 << 20)
    assert sim.sha256(snap_root_uuid) == before, "a snapshot must not see later guest writes"
    assert sim.sha256(root_uuid) != before


def test_failed_async_task_reports_error_info(sim, x):
    web = vm_by_name(x, "web-01")
    sim.fault(
        method="VM.snapshot", action="fail_task", error=["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
    )
    rec = wait_task(x, x.Async.VM.snapshot(web, "doomed"))
    assert rec["status"] == "failure"
    assert rec["error_info"] == ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
    # The fault was for one call only.
    assert wait_task(x, x.Async.VM.snapshot(web, "fine"))["status"] == "success"


def test_power_state_checks_and_guest_metrics(sim, x):
    web = vm_by_name(x, "web-01")
    assert failure(x.VM.start, web, False, False) == ["VM_BAD_POWER_STATE", web, "halted", "running"]
    gm = x.VM.get_guest_metrics(web)
    assert x.VM_guest_metrics.get_networks(gm)["0/ip"] == "192.0.2.11"
    assert x.VM_guest_metrics.get_PV_drivers_detected(gm) is True
    x.VM.clean_shutdown(web)
    assert x.VM.get_power_state(web) == "Halted" and x.VM.get_guest_metrics(web) == NULL
    assert failure(x.VM.clean_shutdown, web) == ["VM_BAD_POWER_STATE", web, "running", "halted"]
    x.VM.add_to_xenstore_data(web, "vm-data/ip", "198.51.100.7/24")
    x.VM.add_to_blocked_operations(web, "start", "restore in progress")
    assert failure(x.VM.start, web, False, False) == ["OPERATION_BLOCKED", web, "restore in progress"]
    x.VM.remove_from_blocked_operations(web, "start")
    x.VM.start(web, False, False)
    assert x.VM_guest_metrics.get_networks(x.VM.get_guest_metrics(web))["0/ip"] == "198.51.100.7"
    x.VM.hard_shutdown(web)
    assert x.VM.get_power_state(web) == "Halted"


def test_unbootable_disk_never_reports_guest_metrics(sim, x):
    test = vm_by_name(x, "test-01")
    root = disk_vdis(x, test)["0"]
    sim.write(x.VDI.get_uuid(root), bytes(1 << 20), offset=0)  # wipe the boot sector region
    x.VM.start(test, False, False)
    assert x.VM.get_power_state(test) == "Running"
    assert x.VM.get_guest_metrics(test) == NULL


def test_dhcp_lease_for_vm_without_static_address(sim, x):
    db = vm_by_name(x, "db-01")
    ip = x.VM_guest_metrics.get_networks(x.VM.get_guest_metrics(db))["0/ip"]
    assert ip.startswith("192.0.2.")


def test_destroy_rules(sim, x):
    web = vm_by_name(x, "web-01")
    assert failure(x.VM.destroy, web) == ["VM_BAD_POWER_STATE", web, "halted, suspended", "running"]
    snap = x.VM.snapshot(web, "to-delete")
    snap_vdis = list(disk_vdis(x, snap).values())
    x.VM.destroy(snap)
    assert failure(x.VM.get_record, snap) == ["HANDLE_INVALID", "VM", snap]
    # Destroying a VM leaves its VDIs; they go with VDI.destroy.
    for vdi in snap_vdis:
        assert x.VDI.get_VBDs(vdi) == []
        x.VDI.destroy(vdi)
    assert all(failure(x.VDI.get_record, v)[0] == "HANDLE_INVALID" for v in snap_vdis)
    # An attached disk of a running VM is in use.
    root = disk_vdis(x, web)["0"]
    assert failure(x.VDI.destroy, root) == ["VDI_IN_USE", root, "destroy"]


def test_clone_copy_and_provision(sim, x):
    test = vm_by_name(x, "test-01")
    root = disk_vdis(x, test)["0"]
    digest = sim.sha256(x.VDI.get_uuid(root))
    clone = x.VM.clone(test, "test-clone")
    copy = x.VM.copy(test, "test-copy", NULL)
    for vm in (clone, copy):
        rec = x.VM.get_record(vm)
        assert rec["parent"] == NULL and not rec["is_a_snapshot"]
        assert rec["other_config"]["mac_seed"] != x.VM.get_other_config(test)["mac_seed"]
        assert sim.sha256(x.VDI.get_uuid(disk_vdis(x, vm)["0"])) == digest
    # The clone shares blocks with its source, writes to either stay private.
    sim.write(x.VDI.get_uuid(disk_vdis(x, clone)["0"]), b"clone only", offset=0)
    assert sim.sha256(x.VDI.get_uuid(root)) == digest
    running = vm_by_name(x, "db-01")
    assert failure(x.VM.clone, running, "nope") == ["VM_BAD_POWER_STATE", running, "halted", "running"]
    template = vm_by_name(x, "Debian Bookworm 12")
    new = x.VM.clone(template, "from-template")
    x.VM.provision(new)
    disks = disk_vdis(x, new)
    assert list(disks) == ["0"] and x.VDI.get_virtual_size(disks["0"]) == str(8 << 30)
    assert x.VDI.get_name_description(disks["0"]) == "Created by template provisioner"
    assert "disks" not in x.VM.get_other_config(new)
    assert failure(x.VM.provision, test) == ["PROVISION_ONLY_ALLOWED_ON_TEMPLATE"]


def test_vdi_vbd_vif_create_destroy(sim, x):
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    test = vm_by_name(x, "test-01")
    vdi = x.VDI.create(
        {
            "name_label": "extra",
            "SR": sr,
            "virtual_size": str(64 << 20),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        }
    )
    assert x.VDI.get_virtual_size(vdi) == str(64 << 20) and vdi in x.SR.get_VDIs(sr)
    details = failure(x.VDI.create, {"name_label": "no size", "SR": sr})
    assert details[0] == "INTERNAL_ERROR" and "FieldNotFound" in details[1]
    vbd = x.VBD.create(
        {
            "VM": test,
            "VDI": vdi,
            "userdevice": "autodetect",
            "bootable": False,
            "mode": "RW",
            "type": "Disk",
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    assert x.VBD.get_userdevice(vbd) == "1" and vbd in x.VM.get_VBDs(test) and x.VDI.get_VBDs(vdi) == [vbd]
    net = x.network.get_all()[0]
    vif = x.VIF.create(
        {
            "device": "1",
            "network": net,
            "VM": test,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    assert x.VIF.get_MAC_autogenerated(vif) and len(x.VIF.get_MAC(vif)) == 17
    assert failure(
        x.VIF.create,
        {
            "device": "1",
            "network": net,
            "VM": test,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        },
    ) == ["DEVICE_ALREADY_EXISTS", "1"]
    x.VIF.destroy(vif)
    x.VBD.destroy(vbd)
    assert x.VDI.get_VBDs(vdi) == []
    x.VDI.resize(vdi, str(128 << 20))
    assert x.VDI.get_virtual_size(vdi) == str(128 << 20)
    assert failure(x.VDI.resize, vdi, str(1 << 20))[0] == "VDI_TOO_SMALL"
    x.VDI.destroy(vdi)
    assert vdi not in x.SR.get_VDIs(sr)


def test_maps_and_tags(sim, x):
    vm = vm_by_name(x, "test-01")
    x.VM.add_to_other_config(vm, "xo:backup:job", "abc")
    assert failure(x.VM.add_to_other_config, vm, "xo:backup:job", "again") == [
        "MAP_DUPLICATE_KEY",
        "VM",
        "other_config",
        vm,
        "xo:backup:job",
    ]
    x.VM.remove_from_other_config(vm, "xo:backup:job")
    x.VM.remove_from_other_config(vm, "absent")  # removing a missing key is not an error
    x.VM.add_tags(vm, "nightly")
    x.VM.add_tags(vm, "nightly")
    assert x.VM.get_tags(vm).count("nightly") == 1
    x.VM.remove_tags(vm, "nightly")
    assert "nightly" not in x.VM.get_tags(vm)


def test_cbt_changed_blocks_and_data_destroy(sim, x):
    db = vm_by_name(x, "db-01")
    data = disk_vdis(x, db)["1"]
    x.VDI.enable_cbt(data)
    s1 = x.VM.snapshot(db, "cbt-1")
    v1 = disk_vdis(x, s1)["1"]
    assert x.VDI.get_cbt_enabled(v1)
    sim.write(x.VDI.get_uuid(data), b"\x01" * 4096, offset=(64 << 10) * 5 + 100)
    sim.write(x.VDI.get_uuid(data), b"\x02" * (128 << 10), offset=(64 << 10) * 40)
    s2 = x.VM.snapshot(db, "cbt-2")
    v2 = disk_vdis(x, s2)["1"]
    bitmap = base64.b64decode(x.VDI.list_changed_blocks(v1, v2))
    changed = [i for i in range(len(bitmap) * 8) if bitmap[i >> 3] & (0x80 >> (i & 7))]
    assert changed == [5, 40, 41]
    root = disk_vdis(x, db)["0"]
    assert failure(x.VDI.list_changed_blocks, root, root) == ["VDI_NO_CBT_METADATA", root]
    x.VDI.data_destroy(v1)
    assert x.VDI.get_type(v1) == "cbt_metadata"
    # The CBT log survives data_destroy, as the next incremental needs it.
    assert base64.b64decode(x.VDI.list_changed_blocks(v1, v2)) == bitmap


def test_suspend_snapshot_resume_and_create_suspended(sim, x):
    web = vm_by_name(x, "web-01")
    assert failure(lambda: x.VM.resume(web, False, False))[:1] == ["VM_BAD_POWER_STATE"]
    x.VM.suspend(web)
    rec = x.VM.get_record(web)
    image = rec["suspend_VDI"]
    assert rec["power_state"] == "Suspended" and image != NULL
    image_rec = x.VDI.get_record(image)
    assert (
        image_rec["type"] == "suspend"
        and image_rec["VBDs"] == []
        and image_rec["SR"] == x.pool.get_suspend_image_SR(x.pool.get_all()[0])
    )
    assert failure(lambda: x.VM.start(web, False, False))[:1] == ["VM_BAD_POWER_STATE"]

    # The snapshot of a suspended VM is suspended too, with a snapshot of the memory image.
    snap = x.VM.snapshot(web, "suspended")
    snap_rec = x.VM.get_record(snap)
    snap_image = snap_rec["suspend_VDI"]
    assert snap_rec["power_state"] == "Suspended" and snap_image not in (NULL, image)
    copy = x.VDI.get_record(snap_image)
    assert copy["type"] == "suspend" and copy["is_a_snapshot"] and copy["snapshot_of"] == image
    assert sim.sha256(copy["uuid"]) == sim.sha256(image_rec["uuid"])
    # VM.destroy leaves the suspend image, as xapi does: callers destroy it themselves.
    x.VM.destroy(snap)
    assert x.VDI.get_type(snap_image) == "suspend"

    # A VM created Suspended around an image (a restore), then resumed: the image goes.
    base = {k: v for k, v in rec.items() if k not in ("parent", "snapshot_of", "suspend_VDI")}
    created = x.VM.create({**base, "name_label": "restored", "power_state": "Suspended", "suspend_VDI": snap_image})
    assert x.VM.get_power_state(created) == "Suspended" and x.VM.get_suspend_VDI(created) == snap_image
    x.VM.resume(created, False, False)
    assert x.VM.get_power_state(created) == "Running" and x.VM.get_suspend_VDI(created) == NULL
    assert snap_image not in x.VDI.get_all()
    # Without an image, power_state is ignored: the VM is created Halted.
    halted = x.VM.create({**base, "name_label": "plain", "power_state": "Suspended", "suspend_VDI": NULL})
    assert x.VM.get_power_state(halted) == "Halted"

    # A hard shutdown of a suspended VM discards its memory image.
    x.VM.hard_shutdown(web)
    assert x.VM.get_power_state(web) == "Halted" and x.VM.get_suspend_VDI(web) == NULL
    assert image not in x.VDI.get_all()

"""Building VM records from XAPI-shaped records, and selecting among them (pure functions)."""

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._vm_inventory import VmInventory
from ansible_collections.xapi.proxy.plugins.module_utils._vm_selection import (
    NO_BACKUP_TAG,
    SelectionError,
    VmSelection,
    backup_disks,
    is_nobak_disk,
    normalize_power_states,
)

NULL = "OpaqueRef:NULL"
GIB = 1 << 30


def vm(uuid, name, power="Running", tags=(), host="OpaqueRef:h1", vbds=(), vifs=(), memory=GIB, **flags):
    # Field types as xapi sends them: int64 as strings, refs as OpaqueRef text.
    return {
        "uuid": uuid,
        "name_label": name,
        "name_description": f"{name} description",
        "power_state": power,
        "tags": list(tags),
        "is_a_template": flags.get("template", False) or flags.get("snapshot", False),
        "is_a_snapshot": flags.get("snapshot", False),
        "is_control_domain": flags.get("dom0", False),
        "memory_static_max": str(memory),
        "VCPUs_at_startup": "2",
        "resident_on": host if power == "Running" else NULL,
        "VBDs": list(vbds),
        "VIFs": list(vifs),
        "other_config": flags.get("other_config", {"mac_seed": "x"}),
    }


def vbd(vm_ref, vdi, userdevice, kind="Disk", empty=False, device=""):
    return {
        "VM": vm_ref,
        "VDI": vdi,
        "userdevice": userdevice,
        "device": device,
        "type": kind,
        "empty": empty,
        "bootable": userdevice == "0",
        "mode": "RW" if kind == "Disk" else "RO",
    }


def vdi(uuid, name, size, sr="OpaqueRef:sr1"):
    return {"uuid": uuid, "name_label": name, "name_description": "", "virtual_size": str(size), "SR": sr}


@pytest.fixture
def raw():
    return {
        "pool": {"OpaqueRef:p": {"uuid": "pool-uuid", "name_label": "lab-pool"}},
        "host": {"OpaqueRef:h1": {"uuid": "h1-uuid", "name_label": "xcp-a"}},
        "SR": {
            "OpaqueRef:sr1": {"uuid": "sr1-uuid", "name_label": "Local storage"},
            "OpaqueRef:iso": {"uuid": "iso-uuid", "name_label": "ISOs"},
        },
        "network": {"OpaqueRef:n0": {"uuid": "n0-uuid", "name_label": "eth0 net"}},
        "VM": {
            "OpaqueRef:web": vm(
                "web-uuid",
                "web-01",
                tags=["prod", "web"],
                memory=2 * GIB,
                vbds=["OpaqueRef:b-web-10", "OpaqueRef:b-web-cd", "OpaqueRef:b-web-0", "OpaqueRef:b-web-2"],
                vifs=["OpaqueRef:vif-web-1", "OpaqueRef:vif-web-0"],
                other_config={"xo:backup:sr": "sr1-uuid", "xo:resource_set": "rs", "mac_seed": "x"},
            ),
            "OpaqueRef:db": vm("db-uuid", "db-01", tags=["prod", "db"], memory=4 * GIB),
            "OpaqueRef:test": vm("test-uuid", "test-01", power="Halted", tags=["test", NO_BACKUP_TAG]),
            "OpaqueRef:paused": vm("paused-uuid", "batch-01", power="Paused"),
            "OpaqueRef:tpl": vm("tpl-uuid", "Debian 12", power="Halted", template=True),
            "OpaqueRef:snap": vm("snap-uuid", "web-01 nightly", power="Halted", snapshot=True, tags=["prod"]),
            "OpaqueRef:dom0": vm("dom0-uuid", "Control domain on host: xcp-a", dom0=True),
        },
        "VBD": {
            "OpaqueRef:b-web-0": vbd("OpaqueRef:web", "OpaqueRef:d-root", "0", device="xvda"),
            "OpaqueRef:b-web-2": vbd("OpaqueRef:web", "OpaqueRef:d-scratch", "2"),
            "OpaqueRef:b-web-10": vbd("OpaqueRef:web", "OpaqueRef:d-big", "10"),
            "OpaqueRef:b-web-cd": vbd("OpaqueRef:web", "OpaqueRef:d-iso", "3", kind="CD"),
        },
        "VDI": {
            "OpaqueRef:d-root": vdi("root-uuid", "web-01 root", 2 * GIB),
            "OpaqueRef:d-scratch": vdi("scratch-uuid", "[NOBAK] web-01 scratch", GIB // 2),
            "OpaqueRef:d-big": vdi("big-uuid", "web-01 data", 100 * GIB),
            "OpaqueRef:d-iso": vdi("iso-vdi-uuid", "debian.iso", GIB, sr="OpaqueRef:iso"),
        },
        "VIF": {
            "OpaqueRef:vif-web-0": {"device": "0", "MAC": "02:00:00:00:00:01", "network": "OpaqueRef:n0"},
            "OpaqueRef:vif-web-1": {"device": "1", "MAC": "02:00:00:00:00:02", "network": "OpaqueRef:gone"},
        },
    }


@pytest.fixture
def records(raw):
    return VmInventory(raw).records


def select(records, **options):
    return [v["name_label"] for v in VmSelection(**options).select(records).vms]


# -- inventory -------------------------------------------------------------------------------------
def test_record_of_a_vm_with_disks_cd_and_vifs(raw):
    inventory = VmInventory(raw)
    web = next(r for r in inventory.records if r["name_label"] == "web-01")
    assert web["memory"] == 2 * GIB and isinstance(web["memory"], int) and web["vcpus"] == 2
    assert web["pool"] == {"uuid": "pool-uuid", "name_label": "lab-pool"}
    assert web["host"] == {"uuid": "h1-uuid", "name_label": "xcp-a"}
    # Disks in numeric device order ("10" after "2"), the CD drive left out.
    assert [(d["userdevice"], d["name_label"]) for d in web["disks"]] == [
        ("0", "web-01 root"),
        ("2", "[NOBAK] web-01 scratch"),
        ("10", "web-01 data"),
    ]
    root = web["disks"][0]
    assert root["virtual_size"] == 2 * GIB and root["sr"] == {"uuid": "sr1-uuid", "name_label": "Local storage"}
    assert (root["device"], root["bootable"], root["mode"]) == ("xvda", True, "RW")
    assert [d["excluded_from_backup"] for d in web["disks"]] == [False, True, False]
    assert [(v["device"], v["mac"], v["network"]) for v in web["vifs"]] == [
        ("0", "02:00:00:00:00:01", {"uuid": "n0-uuid", "name_label": "eth0 net"}),
        ("1", "02:00:00:00:00:02", None),  # a network we could not see
    ]
    assert web["xo_config"] == {"xo:backup:sr": "sr1-uuid", "xo:resource_set": "rs"}
    assert inventory.vm_ref["web-uuid"] == "OpaqueRef:web"
    assert inventory.vdi_ref["root-uuid"] == "OpaqueRef:d-root"
    assert "iso-vdi-uuid" not in inventory.vdi_ref


def test_halted_vm_has_no_host_and_records_are_sorted(records):
    test = next(r for r in records if r["name_label"] == "test-01")
    assert test["host"] is None and test["disks"] == [] and test["excluded_from_backup"] is True
    assert [r["name_label"] for r in records] == sorted(r["name_label"] for r in records)


def test_empty_drive_and_dangling_vdi_are_skipped(raw):
    raw["VBD"]["OpaqueRef:b-web-0"]["empty"] = True
    raw["VBD"]["OpaqueRef:b-web-2"]["VDI"] = NULL
    del raw["VDI"]["OpaqueRef:d-big"]
    web = next(r for r in VmInventory(raw).records if r["name_label"] == "web-01")
    assert web["disks"] == []


# -- kinds and filters -----------------------------------------------------------------------------
def test_default_leaves_out_templates_snapshots_and_dom0(records):
    assert select(records) == ["batch-01", "db-01", "test-01", "web-01"]


@pytest.mark.parametrize(
    ("flag", "added"),
    [
        ("include_templates", "Debian 12"),
        ("include_snapshots", "web-01 nightly"),
        ("include_control_domain", "Control domain on host: xcp-a"),
    ],
)
def test_include_flags_add_exactly_their_kind(records, flag, added):
    assert set(select(records, **{flag: True})) == {"batch-01", "db-01", "test-01", "web-01", added}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"names": ["db-01", "web-01"]}, ["db-01", "web-01"]),
        ({"uuids": ["TEST-UUID"]}, ["test-01"]),
        ({"names": ["db-01"], "uuids": ["web-uuid"]}, ["db-01", "web-01"]),
        ({"tags": ["web", "test"]}, ["test-01", "web-01"]),
        ({"tags": ["prod"], "exclude_tags": ["db"]}, ["web-01"]),
        ({"exclude_tags": [NO_BACKUP_TAG]}, ["batch-01", "db-01", "web-01"]),
        ({"power_states": ["halted", "PAUSED"]}, ["batch-01", "test-01"]),
        ({"names": ["web-01"], "power_states": ["halted"]}, []),
        ({"skip_no_backup": True}, ["batch-01", "db-01", "web-01"]),
        ({"tags": ["prod"], "include_snapshots": True}, ["db-01", "web-01", "web-01 nightly"]),
    ],
)
def test_filters_combine_with_and(records, options, expected):
    assert select(records, **options) == expected


def test_unknown_names_and_uuids_are_reported(records):
    result = VmSelection(names=["web-01", "ghost"], uuids=["db-uuid", "nope"]).select(records)
    assert [v["name_label"] for v in result.vms] == ["db-01", "web-01"]
    assert result.missing_names == ["ghost"] and result.missing_uuids == ["nope"]


def test_a_template_name_counts_as_missing_unless_templates_are_included(records):
    assert VmSelection(names=["Debian 12"]).select(records).missing_names == ["Debian 12"]
    assert VmSelection(names=["Debian 12"], include_templates=True).select(records).missing_names == []


def test_power_states_are_normalised_and_checked():
    assert normalize_power_states(["running", " Halted ", "SUSPENDED"]) == ["Running", "Halted", "Suspended"]
    with pytest.raises(SelectionError) as info:
        normalize_power_states(["running", "stopped"])
    assert "'stopped' is not a VM power state" in str(info.value)
    assert "halted, paused, running, suspended" in str(info.value)


# -- query -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("[?memory > `1073741824`]", ["db-01", "web-01"]),
        ("[?xo_config.\"xo:backup:sr\" == 'sr1-uuid']", ["web-01"]),
        ("[?disks[?sr.name_label == 'Local storage' && virtual_size > `10737418240`]]", ["web-01"]),
        ("reverse(sort_by(@, &memory))[:2]", ["db-01", "web-01"]),
        ("[?contains(tags, 'nothing')]", []),
        ("[?power_state == 'Running'] | [?host.name_label == 'xcp-a']", ["db-01", "web-01"]),
    ],
)
def test_query_filters_the_records_left_by_the_other_filters(records, query, expected):
    assert select(records, query=query) == expected


def test_query_applies_after_the_other_filters(records):
    assert select(records, tags=["test"], query="[?memory >= `0`]") == ["test-01"]


def test_query_order_is_kept(records):
    assert select(records, query="sort_by(@, &memory)[-1:]") == ["db-01"]
    assert select(records, query="reverse(@)") == ["web-01", "test-01", "db-01", "batch-01"]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("[?memory > 1", "is not a valid JMESPath expression"),
        ("[?name_label == web-01]", "is not a valid JMESPath expression"),
        ("[].name_label", "must return VM records"),
        ("length(@)", "returned int"),
        ("[0]", "returned dict"),
        ("[?starts_with(memory, 'x')]", "failed on the VM records"),
    ],
)
def test_bad_queries_explain_themselves(records, query, fragment):
    with pytest.raises(SelectionError) as info:
        VmSelection(query=query).select(records)
    assert fragment in str(info.value)
    assert query in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_query_is_caught_before_any_records_exist():
    with pytest.raises(SelectionError):
        VmSelection(query="[?")


def test_empty_query_means_no_query(records):
    assert select(records, query="  ") == select(records)


# -- backup helpers --------------------------------------------------------------------------------
def test_nobak_disks_are_left_out_of_backups(records):
    web = next(r for r in records if r["name_label"] == "web-01")
    assert [d["name_label"] for d in backup_disks(web)] == ["web-01 root", "web-01 data"]
    assert is_nobak_disk({"name_label": "[NOBAK] x"}) and not is_nobak_disk({"name_label": "x [NOBAK]"})


def test_nobak_tag_with_or_without_a_reason_skips_the_vm(records):
    db = next(r for r in records if r["name_label"] == "db-01")
    skipped = {
        "xo:no-bak=Health Check": True,  # what a health check tags its VM with
        "xo:no-bak=": True,
        "xo:no-bak": True,
        "xo:no-backup": False,
        "xo:no-bak-please": False,
    }
    for tag, expected in skipped.items():
        db["tags"] = ["prod", tag]
        assert ("db-01" not in select(records, skip_no_backup=True)) is expected, tag
        assert "db-01" in select(records), "only backups skip it"


def test_from_params_matches_the_module_options(records):
    params = {
        "names": None,
        "uuids": None,
        "tags": ["prod"],
        "exclude_tags": None,
        "power_states": ["running"],
        "query": None,
        "include_control_domain": False,
        "include_templates": False,
        "include_snapshots": True,
    }
    chosen = VmSelection.from_params(params, skip_no_backup=True).select(records).vms
    assert [v["name_label"] for v in chosen] == ["db-01", "web-01"]

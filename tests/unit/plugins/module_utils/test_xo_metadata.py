"""Backup metadata as XO writes it, and validation of what remotes hold."""

import copy
import json

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _xo_metadata as M

# The delta example of xo-backups.md §1 (placeholders as they are there).
REFERENCE_EXAMPLE = r"""
{"includeNonNbdQcow2Fix":true,"isVhdDifferencing":{"OpaqueRef:a1":true},"jobId":"4c9a…","mode":"delta",
 "scheduleId":"1f2e…","timestamp":1718676003123,"version":"2.0.0",
 "vhds":{"OpaqueRef:a1":"vdis/4c9a…/9d2f…(live VDI)/20240618T020003Z.vhd"},
 "vdis":{"OpaqueRef:a1":{"uuid":"<snap vdi>","name_label":"disk0","virtual_size":21474836480,"type":"user",
   "other_config":{"xo:backup:datetime":"20240618T02:00:03Z","xo:backup:job":"4c9a…","xo:backup:schedule":"1f2e…",
   "xo:backup:vm":"<vmUuid>","xo:base_delta_vdi":"<base snap vdi>","xo:backup:contentKey":"<snap vdi>"},
   "$snapshot_of$uuid":"9d2f…","$SR$uuid":"<sr>", "…":"…"}},
 "vbds":{"OpaqueRef:b1":{"VDI":"OpaqueRef:a1","userdevice":"0","bootable":true,"mode":"RW","type":"Disk","…":"…"}},
 "vifs":{"OpaqueRef:c1":{"device":"0","MAC":"…","MTU":1500,"$network$uuid":"…","$network$name_label":"…","$network$VLAN":-1}},
 "vm":{"uuid":"<vmUuid>","name_label":"web","…":"…"},"vmSnapshot":{"uuid":"…","suspend_VDI":"OpaqueRef:NULL","…":"…"},
 "vtpms":[],"tags":["daily=2024-06-18"],"size":1234567890}
"""
DELTA_ORDER = ["includeNonNbdQcow2Fix", "isVhdDifferencing", "jobId", "mode", "scheduleId", "timestamp", "vbds", "vdis",
               "version", "vifs", "vhds", "vm", "vmSnapshot", "vtpms", "tags", "size"]  # fmt: skip
FULL_ORDER = ["jobId", "mode", "scheduleId", "timestamp", "version", "vm", "vmSnapshot", "xva", "size", "tags"]


def rebuild_reference():
    ref = json.loads(REFERENCE_EXAMPLE)
    vdi = copy.deepcopy(ref["vdis"]["OpaqueRef:a1"])
    snapshot_of, sr = vdi.pop("$snapshot_of$uuid"), vdi.pop("$SR$uuid")
    base = vdi["other_config"].pop("xo:base_delta_vdi")
    vm_uuid = vdi["other_config"].pop("xo:backup:vm")
    vdi["$ref"] = "OpaqueRef:a1"  # what a XAPI client wrapper may carry; XO never serialises it
    vif = dict(ref["vifs"]["OpaqueRef:c1"])
    net = {k: vif.pop(k) for k in ("$network$uuid", "$network$name_label", "$network$VLAN")}
    built = M.build_delta_metadata(
        job_id=ref["jobId"],
        schedule_id=ref["scheduleId"],
        timestamp=ref["timestamp"],
        vm=ref["vm"],
        vm_snapshot=ref["vmSnapshot"],
        vdis={
            "OpaqueRef:a1": M.vdi_record(
                vdi, snapshot_of_uuid=snapshot_of, sr_uuid=sr, vm_uuid=vm_uuid, base_vdi_uuid=base
            )
        },  # fmt: skip
        vbds=ref["vbds"],
        vifs={
            "OpaqueRef:c1": M.vif_record(
                vif,
                network_uuid=net["$network$uuid"],
                network_name_label=net["$network$name_label"],
                network_vlan=net["$network$VLAN"],
            )
        },  # fmt: skip
        vhds=ref["vhds"],
        is_vhd_differencing={"OpaqueRef:a1": True},
        size=ref["size"],
        tags=ref["tags"],
    )
    return ref, built


def test_delta_metadata_matches_the_reference_example():
    ref, built = rebuild_reference()
    assert built == ref
    assert list(built) == DELTA_ORDER
    assert set(built) == set(ref)
    assert built["version"] == "2.0.0"
    assert "$ref" not in built["vdis"]["OpaqueRef:a1"]
    assert json.loads(M.dump_metadata(built)) == ref
    assert b": " not in M.dump_metadata(built) and "…".encode() in M.dump_metadata(built)  # compact, UTF-8
    assert M.validate_metadata(json.loads(M.dump_metadata(built)), "x.json") == ref


def test_full_metadata_shape():
    vm = {"uuid": "vm-1", "name_label": "web", "$ref": "OpaqueRef:vm", "$id": "x"}
    md = M.build_full_metadata(job_id="j", schedule_id="s", timestamp=1718676003123, vm=vm,
                               vm_snapshot={"uuid": "snap"}, size=1024, tags=["daily=2024-06-18"])  # fmt: skip
    assert list(md) == FULL_ORDER
    assert md["xva"] == "./20240618T020003Z.xva"
    assert md["timestamp"] == 1718676003123 and md["mode"] == "full" and md["version"] == "2.0.0"
    assert md["vm"] == {"uuid": "vm-1", "name_label": "web"}
    assert M.validate_metadata(md, "f.json") is md
    bid = "xo-vm-backups/vm-1/20240618T020003Z.json"
    assert M.xva_remote_path(bid, md) == "xo-vm-backups/vm-1/20240618T020003Z.xva"
    assert M.vhd_remote_paths(bid, md) == {}


def test_delta_paths_resolve_from_the_vm_directory():
    ref, _ = rebuild_reference()
    bid = "xo-vm-backups/vm/20240618T020003Z.json"
    assert M.vhd_remote_paths(bid, ref) == {
        "OpaqueRef:a1": "xo-vm-backups/vm/vdis/4c9a…/9d2f…(live VDI)/20240618T020003Z.vhd"
    }
    assert M.xva_remote_path(bid, ref) is None


def test_builder_refuses_vhds_without_vdi_records():
    with pytest.raises(M.MetadataError, match="absent from vdis: OpaqueRef:zz"):
        M.build_delta_metadata(job_id="j", schedule_id="s", timestamp=0, vm={"uuid": "v"}, vm_snapshot={},
                               vdis={}, vbds={}, vifs={}, vhds={"OpaqueRef:zz": "vdis/a/b/c.vhd"},
                               is_vhd_differencing={}, size=0)  # fmt: skip


def test_mark_merged():
    ref, _ = rebuild_reference()
    merged = M.mark_merged(ref, 42)
    assert merged["size"] == 42 and merged["isVhdDifferencing"] == {"OpaqueRef:a1": False}
    assert ref["isVhdDifferencing"] == {"OpaqueRef:a1": True}  # a copy


def _broken(mutate):
    ref, _ = rebuild_reference()
    mutate(ref)
    return ref


INVALID = [
    (lambda m: m.pop("mode"), "missing key 'mode'"),
    (lambda m: m.update(mode="incremental"), "key 'mode' must be 'full' or 'delta', got 'incremental'"),
    (lambda m: m.pop("timestamp"), "missing key 'timestamp' (a timestamp in milliseconds)"),
    (lambda m: m.update(timestamp="2024"), "key 'timestamp' must be a timestamp in milliseconds, got \"2024\""),
    (lambda m: m.update(timestamp=True), "key 'timestamp' must be a timestamp"),
    (lambda m: m.update(timestamp=-1), "whole, non-negative number of milliseconds"),
    (lambda m: m.pop("jobId"), "missing key 'jobId'"),
    (lambda m: m.pop("scheduleId"), "missing key 'scheduleId'"),
    (lambda m: m.pop("version"), "missing key 'version'"),
    (lambda m: m.pop("vm"), "missing key 'vm' (the VM record)"),
    (lambda m: m["vm"].pop("uuid"), "key 'vm' has no 'uuid'"),
    (lambda m: m.pop("vmSnapshot"), "missing key 'vmSnapshot'"),
    (lambda m: m.update(size="big"), "key 'size' must be a non-negative number of bytes"),
    (lambda m: m.update(tags="daily"), "key 'tags' must be a list of strings"),
    (lambda m: m.pop("vhds"), "missing key 'vhds'"),
    (lambda m: m.pop("vdis"), "missing key 'vdis'"),
    (lambda m: m.pop("vbds"), "missing key 'vbds'"),
    (lambda m: m.update(vifs=[]), "key 'vifs' must be VIF ref → VIF record"),
    (lambda m: m["vhds"].update({"OpaqueRef:zz": "vdis/x.vhd"}), "vhds names 'OpaqueRef:zz', which is not in 'vdis'"),
    (lambda m: m["vhds"].update({"OpaqueRef:a1": "../../../etc/passwd"}), "points outside the VM backup directory"),
    (lambda m: m["vhds"].update({"OpaqueRef:a1": "/etc/passwd"}), "points outside the VM backup directory"),
    (lambda m: m["vhds"].update({"OpaqueRef:a1": 3}), "must be a path string"),
]


@pytest.mark.parametrize(("mutate", "message"), INVALID)
def test_invalid_metadata_names_file_and_key(mutate, message):
    with pytest.raises(M.MetadataError) as info:
        M.validate_metadata(_broken(mutate), "xo-vm-backups/vm/20240618T020003Z.json")
    assert str(info.value).startswith("xo-vm-backups/vm/20240618T020003Z.json: ")
    assert message in str(info.value)


def test_invalid_full_metadata():
    md = M.build_full_metadata(job_id="j", schedule_id="s", timestamp=0, vm={"uuid": "v"}, vm_snapshot=None, size=1)
    md["xva"] = "../other-vm/x.xva"
    with pytest.raises(M.MetadataError, match="key xva holds '../other-vm/x.xva', which points outside"):
        M.validate_metadata(md, "f.json")
    del md["xva"]
    with pytest.raises(M.MetadataError, match="missing key 'xva'"):
        M.validate_metadata(md, "f.json")


def test_parse_metadata():
    ref, _ = rebuild_reference()
    assert M.parse_metadata(REFERENCE_EXAMPLE.encode(), "a.json") == ref
    assert M.parse_metadata(REFERENCE_EXAMPLE, "a.json") == ref
    for data in (b"{not json", b"\xff\xfe", b"[]"):
        with pytest.raises(M.MetadataError, match="^a.json: "):
            M.parse_metadata(data, "a.json")

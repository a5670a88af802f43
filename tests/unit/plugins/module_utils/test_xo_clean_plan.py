"""cleanVm / merge planning: which VHDs merge, which go, which metadata and files are removed."""

import json

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xo_clean_plan import ORDER, plan_clean_vm, resolve_parent
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import build_delta_metadata, build_full_metadata

VM = "11111111-1111-4111-8111-111111111111"
JOB = "4c9a7e1b-2d3f-4a5b-8c6d-7e8f9a0b1c2d"
VDI = "9d2f1e3c-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
VDI2 = "8e3f2d4c-5b6a-4d7e-9f80-1a2b3c4d5e6f"
DIR = f"xo-vm-backups/{VM}"
DISKS = f"{DIR}/vdis/{JOB}"


def ts(day):
    return f"202406{day:02d}T020003Z"


def ms(day):
    return 1717207203000 + (day - 1) * 86_400_000  # 2024-06-<day>T02:00:03Z


def vhd(day, vdi=VDI, alias=False):
    return f"{DISKS}/{vdi}/{ts(day)}{'.alias' if alias else ''}.vhd"


def bid(day):
    return f"{DIR}/{ts(day)}.json"


def delta(day, vdis=(VDI,), alias=False):
    refs = {f"OpaqueRef:{i}": v for i, v in enumerate(vdis)}
    return build_delta_metadata(
        job_id=JOB, schedule_id="s", timestamp=ms(day), vm={"uuid": VM}, vm_snapshot={"uuid": "snap"},
        vdis={r: {"uuid": f"snap-{v}", "$snapshot_of$uuid": v} for r, v in refs.items()}, vbds={}, vifs={},
        vhds={r: vhd(day, v, alias)[len(DIR) + 1 :] for r, v in refs.items()},
        is_vhd_differencing={r: True for r in refs}, size=100,
    )  # fmt: skip


def full(day, size=4096):
    return build_full_metadata(job_id=JOB, schedule_id="f", timestamp=ms(day), vm={"uuid": VM},
                               vm_snapshot={"uuid": "s"}, size=size)  # fmt: skip


def chain(*days, vdi=VDI, alias=False):
    """A linear VHD chain: the first is a full disk, each next one a delta on the previous."""
    out = {}
    for i, day in enumerate(days):
        out[vhd(day, vdi, alias)] = vhd(days[i - 1], vdi, alias) if i else None
    return out


def kinds(plan):
    return [(a.kind, a.path) for a in plan.actions]


def test_resolve_parent():
    assert resolve_parent(vhd(2), f"{ts(1)}.vhd") == vhd(1)
    assert resolve_parent(vhd(2, alias=True), f"{ts(1)}.alias.vhd") == vhd(1, alias=True)
    assert resolve_parent(vhd(2), None) is None and resolve_parent(vhd(2), "") is None


def test_nothing_to_do():
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2, 3)}, vhds=chain(1, 2, 3))
    assert plan.actions == [] and plan.warnings == [] and not plan.changed
    assert plan.kept == [bid(1), bid(2), bid(3)]


def test_oldest_delta_deleted_merges_the_base_into_its_child():
    backups = {bid(d): delta(d) for d in (1, 2, 3, 4)}
    plan = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2, 3, 4), delete=[bid(1)])
    assert kinds(plan) == [("delete_metadata", bid(1)), ("merge", vhd(2))]
    merge = plan.actions[1]
    assert merge.chain == (vhd(1), vhd(2))  # the orphan receives the child's blocks, then takes its name
    assert merge.backups == (bid(2),) and merge.differencing is False
    assert plan.kept == [bid(2), bid(3), bid(4)] and plan.deleted_backups == [bid(1)]
    assert plan.rewrite_cache


def test_two_oldest_deleted_merge_as_one_chain():
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2, 3, 4)}, vhds=chain(1, 2, 3, 4),
                         delete=[bid(2), bid(1)])  # fmt: skip
    assert kinds(plan) == [("delete_metadata", bid(2)), ("delete_metadata", bid(1)), ("merge", vhd(3))]
    assert plan.actions[2].chain == (vhd(1), vhd(2), vhd(3))


def test_middle_backup_deleted_keeps_a_differencing_result():
    # long-term retention kept day 1; days 2 and 3 go; day 4 depends on them
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2, 3, 4)}, vhds=chain(1, 2, 3, 4),
                         delete=[bid(2), bid(3)])  # fmt: skip
    merge = plan.of_kind("merge")
    assert [m.chain for m in merge] == [(vhd(2), vhd(3), vhd(4))]
    assert merge[0].differencing is True and merge[0].backups == (bid(4),)


def test_newest_backup_deleted_removes_its_vhd_without_merge():
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2, 3)}, vhds=chain(1, 2, 3), delete=[bid(3)])
    assert kinds(plan) == [("delete_metadata", bid(3)), ("delete_vhd", vhd(3))]
    assert plan.actions[1].reason == "no backup uses it any more"


def test_every_disk_of_a_multi_disk_backup_is_planned():
    vhds = {**chain(1, 2), **chain(1, 2, vdi=VDI2)}
    plan = plan_clean_vm(VM, backups={bid(d): delta(d, (VDI, VDI2)) for d in (1, 2)}, vhds=vhds, delete=[bid(1)])
    assert sorted(m.chain for m in plan.of_kind("merge")) == sorted([(vhd(1), vhd(2)), (vhd(1, VDI2), vhd(2, VDI2))])


def test_missing_parent_breaks_the_rest_of_the_chain():
    vhds = chain(1, 2, 3, 4)
    del vhds[vhd(2)]  # lost: 3 and 4 cannot be read any more
    backups = {bid(d): delta(d) for d in (1, 3, 4)}
    plan = plan_clean_vm(VM, backups=backups, vhds=vhds)
    assert kinds(plan) == [
        ("delete_metadata", bid(3)),
        ("delete_metadata", bid(4)),
        ("delete_vhd", vhd(3)),
        ("delete_vhd", vhd(4)),
    ]
    assert plan.actions[2].reason == f"broken: parent {vhd(2)} is missing"
    assert plan.actions[3].reason == f"broken: ancestor {vhd(3)} is broken"
    assert plan.actions[0].reason.startswith(f"disk unusable: {vhd(3)} is broken")
    assert plan.kept == [bid(1)]
    assert any("parent" in w and "is missing" in w for w in plan.warnings)


def test_unreadable_vhd_and_loops_are_broken():
    vhds = chain(1, 2, 3)
    vhds["x/a.vhd"], vhds["x/b.vhd"] = "x/b.vhd", "x/a.vhd"
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2, 3)}, vhds=vhds,
                         broken_vhds={vhd(2): "footer checksum mismatch"})  # fmt: skip
    reasons = {a.path: a.reason for a in plan.of_kind("delete_vhd")}
    assert reasons == {
        vhd(2): "broken: footer checksum mismatch",
        vhd(3): f"broken: ancestor {vhd(2)} is broken",
        "x/a.vhd": "broken: its VHD chain loops back on itself",
        "x/b.vhd": "broken: its VHD chain loops back on itself",
    }
    assert [a.path for a in plan.of_kind("delete_metadata")] == [bid(2), bid(3)]


def test_missing_disk_drops_the_backup():
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2)}, vhds=chain(1))
    assert kinds(plan) == [("delete_metadata", bid(2))]
    assert plan.actions[0].reason == f"disk unusable: {vhd(2)} is missing"


def test_leftover_sibling_is_deleted_and_the_real_chain_merged():
    vhds = {**chain(1, 2), f"{DISKS}/{VDI}/20240602T030000Z.vhd": vhd(1)}  # a failed run's orphan child
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2)}, vhds=vhds, delete=[bid(1)])
    assert kinds(plan) == [
        ("delete_metadata", bid(1)),
        ("delete_vhd", f"{DISKS}/{VDI}/20240602T030000Z.vhd"),
        ("merge", vhd(2)),
    ]


def test_several_used_children_block_the_merge():
    vhds = {**chain(1, 2), f"{DISKS}/{VDI}/20240602T030000Z.vhd": vhd(1)}
    other = delta(2)
    other["vhds"] = {"OpaqueRef:0": f"vdis/{JOB}/{VDI}/20240602T030000Z.vhd"}
    backups = {bid(1): delta(1), bid(2): delta(2), f"{DIR}/20240602T030000Z.json": other}
    plan = plan_clean_vm(VM, backups=backups, vhds=vhds, delete=[bid(1)])
    assert kinds(plan) == [("delete_metadata", bid(1))]  # vhd(1) kept: two chains need it
    assert any("several children" in w for w in plan.warnings)


def test_merge_disabled_keeps_needed_vhds_and_remove_disabled_deletes_nothing_else():
    backups = {bid(d): delta(d) for d in (1, 2, 3)}
    plan = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2, 3), delete=[bid(1), bid(3)], merge=False)
    assert kinds(plan) == [("delete_metadata", bid(1)), ("delete_metadata", bid(3)), ("delete_vhd", vhd(3))]
    plan = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2, 3), delete=[bid(1), bid(3)], remove=False)
    assert kinds(plan) == [("delete_metadata", bid(1)), ("delete_metadata", bid(3)), ("merge", vhd(2))]
    broken = chain(1, 2, 3)
    del broken[vhd(1)]
    plan = plan_clean_vm(VM, backups=backups, vhds=broken, remove=False)
    assert plan.actions == [] and plan.warnings  # problems reported, nothing touched


def test_interrupted_merge_is_resumed_and_orphan_states_removed():
    backups = {bid(d): delta(d) for d in (2, 3)}
    states = {
        f"{DISKS}/{VDI}/.{ts(1)}.vhd.merge.json": {
            "child": {"uuid": "c"}, "parent": {"uuid": "p"}, "chain": [f"{ts(1)}.vhd", f"{ts(2)}.vhd"],
            "currentBlock": 12, "mergedDataSize": 1024, "step": "mergeBlocks", "diskSize": 4096,
        },
        f"{DISKS}/{VDI}/.20240501T020003Z.vhd.merge.json": {"chain": []},
    }  # fmt: skip
    plan = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2, 3), merge_states=states)
    assert kinds(plan) == [
        ("delete_merge_state", f"{DISKS}/{VDI}/.20240501T020003Z.vhd.merge.json"),
        ("resume_merge", vhd(2)),
    ]
    resume = plan.of_kind("resume_merge")[0]
    assert resume.chain == (vhd(1), vhd(2)) and resume.state == f"{DISKS}/{VDI}/.{ts(1)}.vhd.merge.json"
    assert not plan.of_kind("delete_vhd")  # the half-merged parent is not deleted


def test_a_merge_killed_after_its_rename_is_finished_unless_its_target_is_broken():
    """The parent (day 1) already took the child's name (day 2): the clean-up and the metadata are what is
    left. But if that VHD has since lost an ancestor it is broken, deleted, and the state must go too."""
    state = {"chain": [f"{ts(1)}.vhd", f"{ts(2)}.vhd"], "step": "cleanup", "mergedDataSize": 1024}
    path = f"{DISKS}/{VDI}/.{ts(1)}.vhd.merge.json"
    backups = {bid(d): delta(d) for d in (2, 3)}
    sound = plan_clean_vm(VM, backups=backups, vhds={vhd(2): None, vhd(3): vhd(2)}, merge_states={path: state})
    assert kinds(sound) == [("resume_merge", vhd(2))]
    (resume,) = sound.of_kind("resume_merge")
    assert (resume.chain, resume.backups, resume.state) == ((vhd(2),), (bid(2),), path)

    orphaned = {vhd(2): vhd(0), vhd(3): vhd(2)}  # vhd(2)'s header names a parent that is gone
    broken = plan_clean_vm(VM, backups=backups, vhds=orphaned, merge_states={path: state})
    assert ("delete_merge_state", path) in kinds(broken) and not broken.of_kind("resume_merge")
    assert ("delete_vhd", vhd(2)) in kinds(broken)

    state_of_a_copy = {**state, "step": "mergeBlocks"}  # not cleaning up: nothing to finish, the state goes
    copying = plan_clean_vm(
        VM, backups=backups, vhds={vhd(2): None, vhd(3): vhd(2)}, merge_states={path: state_of_a_copy}
    )
    assert kinds(copying) == [("delete_merge_state", path)]


def test_full_backups_files_and_checks():
    files = {
        f"{ts(1)}.json": 300, f"{ts(1)}.xva": 4096, f"{ts(1)}.xva.checksum": 36,   # retention deletes it
        f"{ts(2)}.json": 300, f"{ts(2)}.xva.checksum": 36,                         # XVA missing
        f"{ts(3)}.json": 300, f"{ts(3)}.xva": 100, f"{ts(3)}.xva.checksum": 36,    # wrong size: warning only
        f"{ts(4)}.json": 300, f"{ts(4)}.xva": 4096,
        "20240501T020003Z.xva": 9, "cache.json.gz": 50, "notes.txt": 3,            # orphans and the cache
        ".1717207203000.20240605T020003Z.xva": 10, ".hidden": 1,                   # a temporary, a dot-file
    }  # fmt: skip
    backups = {bid(d): full(d) for d in (1, 2, 3, 4)}
    plan = plan_clean_vm(VM, backups=backups, vhds={}, files=files, delete=[bid(1)])
    assert kinds(plan) == [
        ("delete_metadata", bid(1)),
        ("delete_metadata", bid(2)),
        ("delete_file", f"{DIR}/{ts(1)}.xva"),
        ("delete_file", f"{DIR}/{ts(1)}.xva.checksum"),
        ("delete_file", f"{DIR}/{ts(2)}.xva.checksum"),
        ("delete_file", f"{DIR}/20240501T020003Z.xva"),
        ("delete_file", f"{DIR}/notes.txt"),
    ]
    assert plan.actions[1].reason == f"its XVA {ts(2)}.xva is missing"
    assert any(f"XVA {ts(3)}.xva has 100 bytes, metadata says 4096: may be corrupt" in w for w in plan.warnings)
    assert plan.kept == [bid(3), bid(4)]
    with_temp = plan_clean_vm(VM, backups=backups, vhds={}, files=files, delete=[bid(1)], remove_temp=True)
    assert (f"{DIR}/.1717207203000.20240605T020003Z.xva", "temporary file of an interrupted write") in [
        (a.path, a.reason) for a in with_temp.actions
    ]
    assert f"{DIR}/.hidden" not in [a.path for a in with_temp.actions]


def test_retention_of_a_full_backup_without_a_listing_still_removes_its_files():
    plan = plan_clean_vm(VM, backups={bid(1): full(1)}, vhds={}, delete=[bid(1)], remove=False)
    assert kinds(plan) == [
        ("delete_metadata", bid(1)),
        ("delete_file", f"{DIR}/{ts(1)}.xva"),
        ("delete_file", f"{DIR}/{ts(1)}.xva.checksum"),
    ]


def test_unreadable_metadata():
    files = {f"{ts(1)}.json": 10, f"{ts(1)}.xva": 4096}
    plan = plan_clean_vm(VM, backups={}, vhds={}, files=files, invalid_metadata={bid(1): "not valid JSON"})
    assert kinds(plan) == [("delete_metadata", bid(1)), ("delete_file", f"{DIR}/{ts(1)}.xva")]
    kept = plan_clean_vm(VM, backups={}, vhds={}, files=files, invalid_metadata={bid(1): "x"}, remove=False)
    assert kept.actions == [] and kept.warnings == [f"{bid(1)}: unreadable backup metadata (x)"]


def odd(md, *drop):
    """``md`` as another XO version (or a hand edit) may leave it: ``drop``'s keys missing."""
    md = json.loads(json.dumps(md))
    for key in drop:
        md.pop(key)
    return ("a key is missing", md)


def test_metadata_of_an_unknown_shape_is_kept_with_its_files():
    files = {f"{ts(1)}.json": 10, f"{ts(1)}.xva": 4096, f"{ts(1)}.xva.checksum": 40, f"{ts(2)}.json": 10}
    plan = plan_clean_vm(
        VM, backups={bid(2): delta(2)}, vhds=chain(2), files=files, odd_metadata={bid(1): odd(full(1), "scheduleId")}
    )
    assert plan.actions == []
    assert plan.warnings == [
        f"{bid(1)}: backup metadata of a shape this collection does not know (a key is missing); kept"
    ]


def test_a_delta_of_an_unknown_shape_keeps_its_vhds_and_their_ancestors_unmerged():
    backups = {bid(d): delta(d) for d in (1, 3)}
    plan = plan_clean_vm(
        VM, backups=backups, vhds=chain(1, 2, 3), delete=[bid(1)], odd_metadata={bid(2): odd(delta(2), "version")}
    )
    # Without it, day 1's VHD would merge into day 2's; day 2's backup cannot be rewritten, so both stay.
    assert kinds(plan) == [("delete_metadata", bid(1))]
    assert plan.kept == [bid(3)]


def test_a_delta_that_does_not_say_which_vhds_it_uses_pins_them_all():
    backups = {bid(d): delta(d) for d in (1, 2, 3)}
    vhds = {**chain(1, 2, 3), **chain(1, vdi=VDI2)}
    plan = plan_clean_vm(VM, backups=backups, vhds=vhds, delete=[bid(1)], odd_metadata={bid(4): odd(delta(4), "vhds")})
    assert kinds(plan) == [("delete_metadata", bid(1))]  # no merge, and VDI2's unused full is not deleted
    assert "all of this VM's VHDs" in plan.warnings[0], plan.warnings
    unpinned = plan_clean_vm(VM, backups=backups, vhds=vhds, delete=[bid(1)])
    assert kinds(unpinned) == [
        ("delete_metadata", bid(1)),
        ("delete_vhd", vhd(1, VDI2)),
        ("merge", vhd(2)),
        ("delete_dir", f"{DISKS}/{VDI2}"),
    ]


def test_what_metadata_of_an_unknown_shape_names_stays_even_if_we_cannot_open_it():
    """A newer XO may write a VHD our reader refuses, next to metadata we do not know: neither goes, nor
    the VHDs it rests on, nor the folder of a file we do not recognise as a VHD at all."""
    backups = {bid(1): delta(1)}
    md = delta(2, vdis=(VDI, VDI2))  # names vhd(2, VDI2) too, which is not in vhds: not taken for a VHD
    plan = plan_clean_vm(
        VM, backups=backups, vhds=chain(1, 2), broken_vhds={vhd(2): "bad footer"}, vdi_dirs=[f"{DISKS}/{VDI2}"],
        odd_metadata={bid(2): ("x", md)},
    )  # fmt: skip
    assert kinds(plan) == [], plan.actions
    assert f"{vhd(2)}: broken VHD (bad footer)" in plan.warnings
    # Without it, the broken VHD and the folder holding only an unknown file go.
    plain = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2), broken_vhds={vhd(2): "bad footer"},
                          vdi_dirs=[f"{DISKS}/{VDI2}"])  # fmt: skip
    assert kinds(plain) == [("delete_vhd", vhd(2)), ("delete_dir", f"{DISKS}/{VDI2}")]


def test_metadata_that_names_no_vhds_keeps_every_folder_and_broken_vhd():
    plan = plan_clean_vm(
        VM, backups={bid(1): delta(1)}, vhds={**chain(1), vhd(3, VDI2): None}, broken_vhds={vhd(3, VDI2): "bad"},
        vdi_dirs=[f"{DISKS}/{VDI2}", f"{DISKS}/other"], odd_metadata={bid(2): odd(delta(2), "vhds")},
    )  # fmt: skip
    assert kinds(plan) == [], plan.actions


def test_paths_outside_the_vm_directory_pin_nothing_outside_it():
    md = delta(2)
    md["vhds"] = {"OpaqueRef:0": "../../../etc/passwd"}
    backups = {bid(d): delta(d) for d in (1, 3)}
    plan = plan_clean_vm(VM, backups=backups, vhds=chain(1, 2, 3), delete=[bid(1)], odd_metadata={bid(2): ("x", md)})
    assert kinds(plan) == [("delete_metadata", bid(1))]  # an unusable vhds: everything stays
    assert "all of this VM's VHDs" in plan.warnings[0], plan.warnings


def test_vhd_directories_and_disk_directories():
    aliases = {p: f"{DISKS}/{VDI}/data/{ts(d)}.vhd" for d, p in ((1, vhd(1, alias=True)), (2, vhd(2, alias=True)),
                                                                (3, vhd(3, alias=True)))}  # fmt: skip
    data_dirs = [*aliases.values(), f"{DISKS}/{VDI}/data/20240501T020003Z.vhd"]
    other_disk = f"{DISKS}/{VDI2}"
    plan = plan_clean_vm(VM, backups={bid(d): delta(d, alias=True) for d in (1, 2, 3)},
                         vhds=chain(1, 2, 3, alias=True), delete=[bid(3)], aliases=aliases, data_dirs=data_dirs,
                         vdi_dirs=[f"{DISKS}/{VDI}", other_disk])  # fmt: skip
    assert kinds(plan) == [
        ("delete_metadata", bid(3)),
        ("delete_vhd", vhd(3, alias=True)),
        ("delete_dir", f"{DISKS}/{VDI}/data/20240501T020003Z.vhd"),
        ("delete_dir", other_disk),
    ]
    assert plan.actions[1].data == f"{DISKS}/{VDI}/data/{ts(3)}.vhd"
    gone = plan_clean_vm(VM, backups={bid(1): delta(1)}, vhds=chain(1), delete=[bid(1)], vdi_dirs=[f"{DISKS}/{VDI}"])
    assert kinds(gone) == [("delete_metadata", bid(1)), ("delete_vhd", vhd(1)), ("delete_dir", f"{DISKS}/{VDI}")]


def test_cache_rewrite_is_requested_when_it_disagrees():
    backups = {bid(d): delta(d) for d in (1, 2)}
    assert not plan_clean_vm(VM, backups=backups, vhds=chain(1, 2), cached_ids=list(backups)).rewrite_cache
    assert plan_clean_vm(VM, backups=backups, vhds=chain(1, 2), cached_ids=[bid(1)]).rewrite_cache


def test_long_chains_plan_quickly_and_in_order():
    days = list(range(1, 3001))
    vhds, backups = {}, {}
    for d in days:
        vhds[f"{DISKS}/{VDI}/{d:05d}.vhd"] = f"{DISKS}/{VDI}/{d - 1:05d}.vhd" if d > 1 else None
        md = delta(1)
        md["vhds"] = {"OpaqueRef:0": f"vdis/{JOB}/{VDI}/{d:05d}.vhd"}
        backups[f"{DIR}/{d:05d}.json"] = md
    plan = plan_clean_vm(VM, backups=backups, vhds=vhds, delete=[f"{DIR}/{d:05d}.json" for d in days[:2990]])
    merges = plan.of_kind("merge")
    assert len(merges) == 1 and len(merges[0].chain) == 2991 and merges[0].path == f"{DISKS}/{VDI}/02991.vhd"
    assert [a.kind for a in plan.actions] == sorted((a.kind for a in plan.actions), key=ORDER.index)


def test_plan_serialises_for_module_results():
    plan = plan_clean_vm(VM, backups={bid(d): delta(d) for d in (1, 2)}, vhds=chain(1, 2), delete=[bid(1)])
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["actions"][1] == {
        "kind": "merge",
        "path": vhd(2),
        "reason": f"{vhd(1)} is no longer used but {vhd(2)} depends on it",
        "chain": [vhd(1), vhd(2)],
        "backups": [bid(2)],
        "differencing": False,
    }
    assert data["kept"] == [bid(2)] and data["deleted_backups"] == [bid(1)] and data["rewrite_cache"] is True


@pytest.mark.parametrize("delete", [[bid(1)], [bid(1), bid(2)], [bid(3)], [bid(2)], []])
def test_every_kept_backup_still_has_its_whole_chain(delete):
    """Invariant: after the plan, each kept backup's VHD exists and so does every ancestor."""
    backups = {bid(d): delta(d) for d in (1, 2, 3, 4)}
    vhds = chain(1, 2, 3, 4)
    plan = plan_clean_vm(VM, backups=backups, vhds=vhds, delete=delete)
    after = dict(vhds)
    for action in plan.actions:
        if action.kind == "delete_vhd":
            del after[action.path]
        elif action.kind == "merge":
            parent = after[action.chain[0]]
            for path in action.chain:
                del after[path]
            after[action.path] = parent
    for kept in plan.kept:
        node = vhd(int(kept.split("/")[-1][6:8]))
        while node is not None:
            assert node in after
            node = after[node]
    assert len(after) == len(plan.kept)  # nothing unused survives

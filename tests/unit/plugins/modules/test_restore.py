"""xapi.proxy.restore run as Ansible runs it (a subprocess reading an args file), against the simulator.

One tiny lab and one remote serve the whole module: backups laid out by Xen Orchestra
(tests/xo_fixtures.py) of tiny-01: two incremental runs, a full one, then an incremental one taken
after its boot sector was wiped (it restores, but does not boot).
"""

import json
import subprocess

import pytest
from module_runner import COLLECTIONS, module_env
from xo_fixtures import TINY_LAB, XoJob, make_remote

from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import argument_spec as remote_spec
from ansible_collections.xapi.proxy.plugins.module_utils._restore_options import argument_spec
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import argument_spec as connection_spec
from xapisim.pytest_plugin import SimHandle

MIB = 1 << 20
REMOTE_PASSWORD = "rem0te-Secret-pw"  # noqa: S105 - a test value that must never be printed


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("restore-module")
    sim = SimHandle(TINY_LAB, base / "state").start()
    remote = make_remote("file", base)
    with XoJob(sim, remote) as job:
        backups = {"delta1": job.delta("tiny-01"), "delta2": job.delta("tiny-01"), "full": job.full("tiny-01")}
        job.guest_write("tiny-01", 0, bytes(MIB), 0)
        backups["unbootable"] = job.delta("tiny-01")
    yield sim, remote, backups
    remote.close()
    sim.stop()


@pytest.fixture
def args(lab):
    sim, remote, _ = lab
    return {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path), "remote": remote.url,
            "sr": "Local storage"}  # fmt: skip


def vms_named(sim, name):
    with sim.xapi() as x:
        return x.VM.get_by_name_label(name)


def assert_clean_failure(run, *fragments):
    """Failed through fail_json (rc 1, JSON, a message), not with a traceback."""
    assert run.rc == 1, run
    assert run.result is not None and run.result.get("failed") is True, run
    assert "Traceback" not in run.output, run
    assert "exception" not in run.result, run
    for fragment in fragments:
        assert fragment in run.result["msg"], run.result["msg"]


def test_restore_then_again_changes_nothing(run_module, lab, args):
    sim, _, backups = lab
    first = backups["delta1"]
    run = run_module("restore", {**args, "vm": "tiny-01", "at": first.date, "name": "again", "tags": ["t1"]})
    assert run.rc == 0, run
    assert run.result["changed"] is True and run.result["already_restored"] is False
    assert run.result["backup"]["id"] == first.id and run.result["vm"]["name_label"] == "again"
    assert run.result["bytes_transferred"] == run.result["plan"]["bytes_to_transfer"] > 0
    assert "diff" not in run.result
    (ref,) = vms_named(sim, "again")
    with sim.xapi() as x:
        assert x.VM.get_uuid(ref) == run.result["vm"]["uuid"] and "t1" in x.VM.get_tags(ref)
    run = run_module("restore", {**args, "backup": first.id, "name": "again", "tags": ["t1"]})
    assert run.rc == 0, run
    assert (run.result["changed"], run.result["already_restored"]) == (False, True)
    with sim.xapi() as x:
        assert run.result["vm"]["uuid"] == x.VM.get_uuid(ref)
    assert len(vms_named(sim, "again")) == 1


def test_check_mode_and_diff_create_nothing(run_module, lab, args):
    sim, _, backups = lab
    check = {"_ansible_check_mode": True, "_ansible_diff": True}
    run = run_module("restore", {**args, "vm": "tiny-01", "at": "latest", "name": "checked", **check})
    assert run.rc == 0, run
    assert run.result["changed"] is True and run.result["vm"]["uuid"] is None
    assert run.result["backup"]["id"] == backups["unbootable"].id
    assert run.result["diff"]["before"] == {} and run.result["diff"]["after"]["vm"] == "checked"
    assert [d["position"] for d in run.result["diff"]["after"]["disks"]] == ["0", "1"]
    assert vms_named(sim, "checked") == []


def test_full_backup_with_start(run_module, lab, args):
    sim, _, backups = lab
    run = run_module("restore", {**args, "backup": backups["full"].id, "name": "full-started", "start": True})
    assert run.rc == 0, run
    assert run.result["checksum"] == "verified" and run.result["vm"]["power_state"] == "Running"
    with sim.xapi() as x:
        (ref,) = x.VM.get_by_name_label("full-started")
        x.VM.hard_shutdown(ref)


def test_a_start_failure_still_reports_the_restored_vm(run_module, lab, args):
    sim, _, backups = lab
    sim.fault(method="VM.start", action="fail_task", error=["HOST_NOT_ENOUGH_FREE_MEMORY", "1073741824", "0"])
    run = run_module("restore", {**args, "backup": backups["delta1"].id, "name": "start-fails", "start": True})
    assert_clean_failure(run, "which is kept, but it could not be started")
    (ref,) = vms_named(sim, "start-fails")
    with sim.xapi() as x:
        uuid = x.VM.get_uuid(ref)
    assert run.result["changed"] is True and run.result["already_restored"] is False
    assert run.result["vm"] == {"uuid": uuid, "name_label": "start-fails", "power_state": "Halted"}
    assert run.result["xapi_error"][0] == "HOST_NOT_ENOUGH_FREE_MEMORY"


def test_health_check_passes_and_fails(run_module, lab, args):
    sim, _, backups = lab
    with sim.xapi() as x:
        before = len(x.VM.get_all())
    run = run_module("restore", {**args, "backup": backups["delta2"].id, "health_check": {"timeout": 10}})
    assert run.rc == 0, run
    assert run.result["changed"] is False and run.result["health_check"]["status"] == "success"
    run = run_module("restore", {**args, "backup": backups["unbootable"].id, "health_check": {"timeout": 1}})
    assert_clean_failure(run, "never reported PV drivers")
    assert run.result["health_check"]["status"] == "failure" and run.result["health_check"]["cleaned_up"] is True
    with sim.xapi() as x:
        assert len(x.VM.get_all()) == before
    run = run_module(
        "restore", {**args, "backup": backups["delta2"].id, "health_check": {}, "_ansible_check_mode": True}
    )
    assert run.rc == 0 and run.result["health_check"]["status"] == "skipped", run


BAD_INPUT = [
    ({"vm": "tiny-01", "remote": "ftp://host/backups"}, ["ftp"]),
    ({"vm": "tiny-01", "remote": "file:///nonexistent/backups"}, ["Cannot open the remote", "does not exist"]),
    ({"vm": "tiny-01", "remote": "not a remote!"}, ["neither a remote URL"]),
    ({"vm": "tiny-01", "remote": "nas1"}, ["no remote named 'nas1' is registered"]),
    ({"backup": "web-01.json"}, ["is not a backup id"]),
    ({"backup": "xo-vm-backups/11111111-1111-4111-8111-111111111111/20240618T020003Z.json"}, ["No backup"]),
    ({"vm": "ghost"}, ["No backup of VM 'ghost'", "tiny-01"]),
    ({"vm": " "}, ["vm must name a VM"]),
    ({"vm": "tiny-01", "at": "yesterday"}, ["at='yesterday' is not a point in time"]),
    ({"vm": "tiny-01", "at": "2020-01-01"}, ["No backup of VM 'tiny-01' dated at or before 2020-01-01T23:59:59.999Z"]),
    ({"backup": "x", "vm": "tiny-01"}, ["mutually exclusive", "backup", "vm"]),
    ({"backup": "x", "at": "latest"}, ["mutually exclusive", "at"]),
    ({}, ["one of the following is required: backup, vm"]),
    ({"vm": "tiny-01", "sr": "Nope"}, ["sr='Nope' matches no SR of the pool", "'Local storage'"]),
    ({"vm": "tiny-01", "sr": ""}, ["sr must name the SR"]),
    ({"vm": "tiny-01", "disk_srs": {"9": "Local storage"}}, ["disk_srs names disks the backup does not have: 9"]),
    ({"vm": "tiny-01", "disk_srs": {"0": "Nope"}}, ["disk_srs[0]='Nope' matches no SR"]),
    ({"vm": "tiny-01", "disk_srs": {"0": 5}}, ["disk_srs[0] must be a name or UUID"]),
    ({"vm": "tiny-01", "disk_srs": "0=x=y"}, ["disk_srs"]),
    (
        {"vm": "tiny-01", "network_map": {"Pool-wide network associated with eth0": "nope"}},
        ["the network 'nope', which the pool does not have"],
    ),
    (
        {"vm": "tiny-01", "network_map": {"nope": "Pool-wide network associated with eth0"}},
        ["network_map names networks the backup does not have: nope"],
    ),
    ({"vm": "tiny-01", "name": " "}, ["name must not be empty"]),
    ({"vm": "tiny-01", "tags": ["ok", ""]}, ["tags must not contain an empty tag"]),
    ({"vm": "tiny-01", "health_check": {"timeout": 0}}, ["health_check.timeout must be a positive number"]),
    ({"vm": "tiny-01", "health_check": {"sr": "Nope"}}, ["health_check.sr='Nope' matches no SR"]),
    ({"vm": "tiny-01", "health_check": "yes"}, ["dictionary requested"]),  # ansible-core's own wording
    ({"vm": "tiny-01", "health_check": {"timeout": "soon"}}, ["timeout"]),
    ({"vm": "tiny-01", "health_check": {}, "start": True}, ["mutually exclusive", "health_check", "start"]),
    ({"vm": "tiny-01", "force": "maybe"}, ["force", "bool"]),
    ({"vm": "tiny-01", "start": "maybe"}, ["start", "bool"]),
    ({"vm": "tiny-01", "new_mac_addresses": "maybe"}, ["new_mac_addresses", "bool"]),
    ({"vm": "tiny-01", "colour": "blue"}, ["Unsupported parameters", "colour"]),
    ({"vm": "tiny-01", "remote": None}, ["remote"]),
]


@pytest.mark.parametrize(("override", "fragments"), BAD_INPUT, ids=[str(i) for i in range(len(BAD_INPUT))])
def test_bad_input_fails_cleanly(run_module, lab, args, override, fragments):
    sim, _, _ = lab
    with sim.xapi() as x:
        before = set(x.VM.get_all())
    run = run_module("restore", {k: v for k, v in {**args, **override}.items() if v is not None})
    assert_clean_failure(run, *fragments)
    with sim.xapi() as x:
        assert set(x.VM.get_all()) == before


def test_disk_srs_on_a_full_backup(run_module, lab, args):
    _, _, backups = lab
    run = run_module("restore", {**args, "backup": backups["full"].id, "disk_srs": {"1": None}})
    assert_clean_failure(run, "disk_srs applies to incremental backups only")


def test_two_disk_srs_keys_for_one_disk_must_agree(run_module, lab, args):
    _, _, backups = lab
    fixture = backups["delta1"]
    live = fixture.disks["0"].live_uuid
    run = run_module("restore", {**args, "backup": fixture.id, "disk_srs": {"0": None, live: "Local storage"}})
    assert_clean_failure(run, "disk_srs names disk 'tiny-01 root' (position 0) twice", f"'0' and '{live}'")
    check = {**args, "backup": fixture.id, "_ansible_check_mode": True}
    run = run_module("restore", {**check, "disk_srs": {"0": "Local storage", live: "Local storage"}})
    assert run.rc == 0 and run.result["plan"]["disks"][0]["skipped"] is False, run


def test_new_mac_addresses_need_a_readable_ova_xml(run_module, lab, args):
    _, _, backups = lab
    no_zstd = "import sys\nsys.modules['zstandard'] = None\n"  # the lab's full backup is zstd-compressed
    full = {**args, "backup": backups["full"].id, "_ansible_check_mode": True}
    run = run_module("restore", {**full, "new_mac_addresses": True}, prelude=no_zstd)
    assert_clean_failure(run, "new_mac_addresses cannot be applied", "pip install zstandard")
    run = run_module("restore", full, prelude=no_zstd)  # the XVA itself goes to XAPI as stored
    assert run.rc == 0 and run.result["plan"]["vifs"] == [], run


def test_latest_warns_about_unreadable_metadata(run_module, lab, args):
    _, remote, backups = lab
    damaged = f"xo-vm-backups/{backups['delta1'].vm_uuid}/20300101T000000Z.json"
    remote.storage.write_bytes(damaged, b'{"mode": "delta", "timestamp": 18')  # the newest, cut short
    try:
        run = run_module("restore", {**args, "vm": "tiny-01", "_ansible_check_mode": True})
    finally:
        remote.storage.delete(damaged)
    assert run.rc == 0 and run.result["backup"]["id"] == backups["unbootable"].id, run
    assert [w for w in run.warnings if damaged in w and "could not be read" in w], run.warnings


def test_a_killed_restores_leftover_vm_is_reported_not_removed(run_module, lab, args):
    sim, _, backups = lab
    backup = backups["delta1"]
    # What a restore killed mid-transfer leaves (Ansible's async timeout sends SIGKILL): the VM it created.
    with sim.xapi() as x:
        template = x.VM.get_by_name_label("tiny-01")[0]
        left = x.VM.clone(template, "[Importing…] leftover")
        x.VM.add_to_other_config(left, "xapi.proxy:restored_from", backup.id)
        left_uuid = x.VM.get_uuid(left)
        snap = x.VM.snapshot(left, "[Importing…] leftover")  # same name and keys, but no VM to uninstall
    try:
        run = run_module("restore", {**args, "backup": backup.id, "name": "leftover", "_ansible_check_mode": True})
        assert run.rc == 0, run
        (warning,) = [w for w in run.warnings if "never finished" in w]
        assert left_uuid in warning and f"xe vm-uninstall uuid={left_uuid} force=true" in warning
        check_other = {**args, "backup": backups["delta2"].id, "name": "leftover", "_ansible_check_mode": True}
        other = run_module("restore", check_other)
        assert not [w for w in other.warnings if left_uuid in w], other.warnings  # another backup's restore
        assert len(vms_named(sim, "[Importing…] leftover")) == 2  # the VM and its snapshot: never removed
    finally:
        with sim.xapi() as x:
            x.VM.destroy(snap)
            x.VM.destroy(left)


def test_remotes_encrypted_by_xen_orchestra_are_refused_plainly(run_module, args, tmp_path):
    # What a remote with an encryption key holds: encryption.json in clear, every other file encrypted.
    root = tmp_path / "encrypted"
    bid = "xo-vm-backups/11111111-1111-4111-8111-111111111111/20240618T020003Z.json"
    (root / bid).parent.mkdir(parents=True)
    (root / bid).write_bytes(bytes(range(256)) * 4)
    (root / "encryption.json").write_text('{"algorithm":"aes-256-gcm"}')
    url = f"file://{root}"
    runs = [
        run_module("restore", {**args, "remote": url, "backup": bid}),
        run_module("restore", {**args, "remote": url, "vm": "web-01"}),
        run_module("backup_info", {"remote": url, "progress_dir": str(tmp_path / "progress")}),  # lists the same
    ]
    for run in runs:
        assert_clean_failure(run, "is encrypted by Xen Orchestra", "'aes-256-gcm'", "not supported")
    (root / "encryption.json").write_text('{"algorithm":"none"}')  # XO's mark of a remote in clear
    run = run_module("restore", {**args, "remote": url, "backup": bid})
    assert_clean_failure(run, "metadata is invalid")


def test_no_secret_in_output(run_module, lab, args):
    sim, remote, backups = lab
    secret_args = {**args, "remote_username": "backup", "remote_password": REMOTE_PASSWORD}
    runs = [
        run_module("restore", {**secret_args, "backup": backups["delta1"].id, "name": "secret-ok"}),
        run_module("restore", {**secret_args, "backup": backups["delta1"].id, "sr": "Nope"}),
        run_module("restore", {**args, "vm": "tiny-01", "password": "wrong-Password-1"}),
        run_module(
            "restore", {**args, "vm": "tiny-01", "remote": f"smb://backup:{REMOTE_PASSWORD}@EXAMPLE\\\\nas\\share"}
        ),  # fmt: skip
    ]
    assert runs[0].rc == 0 and runs[1].rc == 1 and runs[2].rc == 1 and runs[3].rc == 1, runs
    assert "wrong user name or password" in runs[2].result["msg"]
    assert runs[3].result["msg"].startswith("Cannot open the remote smb://backup:***@")
    for run in runs:
        for secret in (sim.password, REMOTE_PASSWORD, "wrong-Password-1"):
            assert secret not in run.output, (secret, run)


def test_documentation_matches_the_argument_spec():
    out = subprocess.run(["ansible-doc", "--json", "xapi.proxy.restore"], check=True, capture_output=True, text=True,
                         env=module_env({"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS)}))  # fmt: skip
    doc = json.loads(out.stdout)["xapi.proxy.restore"]["doc"]

    def compare(spec, options, where):
        assert sorted(spec) == sorted(options), where
        for name, s in spec.items():
            o = options[name]
            assert o.get("type", "str") == s.get("type", "str"), f"{where}{name}: type"
            assert o.get("default") == s.get("default"), f"{where}{name}: default"
            assert o.get("elements") == s.get("elements"), f"{where}{name}: elements"
            assert bool(o.get("required")) == bool(s.get("required")), f"{where}{name}: required"
            if "options" in s:
                compare(s["options"], o["suboptions"], f"{where}{name}.")

    compare({**connection_spec(), **remote_spec(), **argument_spec()}, doc["options"], "")

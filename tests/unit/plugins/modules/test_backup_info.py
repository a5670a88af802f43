"""xapi.proxy.backup_info run as Ansible runs it (a subprocess reading an args file), on real backups.

One tiny lab and one remote serve most tests: tiny-01 backed up by the backup module (two incremental
runs, then an uncompressed full one of another job) and tiny-run backed up the way Xen Orchestra lays
backups out (tests/xo_fixtures.py: two incremental runs and a zstd full). Tests that damage files work
on a hard-linked copy of that remote, unlinking each file before changing it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest
from module_runner import ROOT, module_env, run_module
from xo_fixtures import TINY_LAB, FixtureBackup, XoJob, make_remote

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import open_vhd
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import job_id_from_name
from xapisim.pytest_plugin import SimHandle

MIB = 1 << 20
REMOTE_PASSWORD = "rem0te-Secret-pw"  # noqa: S105 - a test value that must never be printed


@dataclass
class Lab:
    sim: SimHandle
    root: Path  # the remote's directory
    url: str
    progress_dir: Path
    ours: Dict[str, str]  # name -> backup id
    xo: Dict[str, FixtureBackup]
    tiny01: str  # VM uuids
    tinyrun: str


def backup_args(sim, url, progress_dir, **extra):
    return {
        "hostname": sim.url,
        "password": sim.password,
        "ca_path": str(sim.ca_path),
        "job": "nightly",
        "remotes": [url],
        "progress_dir": str(progress_dir),
        "names": ["tiny-01"],
        **extra,
    }


def root_disk_of(sim):
    """UUID of tiny-01's first disk."""
    with sim.xapi() as x:
        return x.VDI.get_uuid(x.VDI.get_by_name_label("tiny-01 root")[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("backup-info")
    sim = SimHandle(TINY_LAB, base / "state").start()
    remote = make_remote("file", base)
    progress_dir = base / "progress"
    ours = {}
    try:
        root_disk = root_disk_of(sim)
        for name in ("inc0", "inc1"):
            if name == "inc1":
                sim.write(root_disk, os.urandom(300_000), offset=5 * MIB + 4096)
            run = run_module("backup", backup_args(sim, remote.url, progress_dir))
            assert run.rc == 0, run
            ours[name] = run.result["vms"][0]["backup_id"]
        run = run_module(
            "backup", backup_args(sim, remote.url, progress_dir, job="weekly", mode="full", compression="none")
        )
        assert run.rc == 0, run
        ours["full"] = run.result["vms"][0]["backup_id"]
        with XoJob(sim, remote) as job:
            xo = {"delta1": job.delta("tiny-run"), "delta2": job.delta("tiny-run"), "full": job.full("tiny-run")}
        yield Lab(sim, remote.root, remote.url, progress_dir, ours, xo, ours["inc0"].split("/")[1],
                  xo["full"].vm_uuid)  # fmt: skip
    finally:
        remote.close()
        sim.stop()


def info(lab, **options):
    return run_module("backup_info", {"remote": lab.url, "progress_dir": str(lab.progress_dir), **options})


def by_id(result):
    return {b["id"]: b for b in result["backups"]}


def assert_clean_failure(run, *fragments):
    """Failed through fail_json (rc 1, JSON, a message), not with a traceback."""
    assert run.rc == 1, run
    assert run.result is not None and run.result.get("failed") is True, run
    assert "Traceback" not in run.output and "exception" not in run.result, run
    for fragment in fragments:
        assert fragment in run.result["msg"], run.result["msg"]


# -- listing ---------------------------------------------------------------------------------------
def test_lists_our_backups_and_xo_backups(lab):
    run = info(lab)
    assert run.rc == 0, run
    assert run.result["changed"] is False
    backups = by_id(run.result)
    assert set(backups) == {*lab.ours.values(), *(b.id for b in lab.xo.values())}
    assert [b["timestamp"] for b in run.result["backups"]] == sorted(b["timestamp"] for b in backups.values())

    inc0, inc1, full = (backups[lab.ours[k]] for k in ("inc0", "inc1", "full"))
    assert (inc0["mode"], inc1["mode"], full["mode"]) == ("delta", "delta", "full")
    assert inc0["vm_uuid"] == lab.tiny01 and inc0["vm_name"] == "tiny-01"
    assert inc0["job_id"] == job_id_from_name("nightly") and full["job_id"] == job_id_from_name("weekly")
    assert inc1["date"].endswith("Z") and inc1["date"][:4].isdigit() and inc1["size"] > 0
    assert full["xva"] == full["id"][: -len(".json")] + ".xva" and "chain" not in full
    # The chain of each disk: the backup's own VHD first, the full VHD last.
    assert sorted(c["userdevice"] for c in inc1["chain"]) == ["0", "1"]
    for disk in inc1["chain"]:
        assert disk["complete"] is True and len(disk["vhds"]) == 2
        first = next(c for c in inc0["chain"] if c["name_label"] == disk["name_label"])
        assert disk["vhds"][1:] == first["vhds"] and disk["vhds"][0] in inc1["vhds"].values()

    xo1, xo2, xo_full = (backups[lab.xo[k].id] for k in ("delta1", "delta2", "full"))
    assert xo2["date"] == "2024-06-19T02:00:03.123Z" and xo2["job_id"] == lab.xo["delta2"].metadata["jobId"]
    (disk,) = xo2["chain"]
    assert disk["vhds"] == [lab.xo["delta2"].disks["0"].vhd, lab.xo["delta1"].disks["0"].vhd] and disk["complete"]
    assert xo1["chain"][0]["vhds"] == [lab.xo["delta1"].disks["0"].vhd]
    assert xo_full["size"] == (lab.root / xo_full["xva"]).stat().st_size
    assert "verified" not in xo_full and "problems" not in xo_full

    vms = {v["uuid"]: v for v in run.result["vms"]}
    summary = {k: vms[lab.tiny01][k] for k in ("name", "backups", "full", "delta", "newest_id", "oldest")}
    assert summary == {"name": "tiny-01", "backups": 3, "full": 1, "delta": 2, "newest_id": lab.ours["full"],
                       "oldest": inc0["date"]}  # fmt: skip
    assert vms[lab.tinyrun]["backups"] == 3 and vms[lab.tinyrun]["oldest"] == xo1["date"]
    assert vms[lab.tiny01]["size"] == inc0["size"] + inc1["size"] + full["size"]
    # The backup module's finished runs, read from the same progress directory.
    assert sorted((j["job"], j["status"]) for j in run.result["jobs"]) == [
        ("nightly", "success"),
        ("weekly", "success"),
    ]


def test_check_mode_reports_the_same(lab):
    normal, checked = info(lab), info(lab, _ansible_check_mode=True)
    assert checked.rc == 0 and checked.result["changed"] is False
    assert checked.result["backups"] == normal.result["backups"] and checked.result["vms"] == normal.result["vms"]


@pytest.mark.parametrize("how", ["uuid", "name"])
def test_vm_filter(lab, how):
    run = info(lab, vm=lab.tinyrun if how == "uuid" else "tiny-run")
    assert run.rc == 0, run
    assert {b["id"] for b in run.result["backups"]} == {b.id for b in lab.xo.values()}
    assert [v["uuid"] for v in run.result["vms"]] == [lab.tinyrun]


@pytest.mark.parametrize("form", ["ours", "leading slash", "xo remote id"])
def test_one_backup_by_id(lab, form):
    bid = lab.xo["delta2"].id
    given = {"ours": bid, "leading slash": "/" + bid, "xo remote id": f"5f1c2a3b//{bid}"}[form]
    run = info(lab, backup_id=given, verify=True)
    assert run.rc == 0, run
    (backup,) = run.result["backups"]
    assert backup["id"] == bid and backup["verified"] is True and backup["problems"] == []
    assert run.result["vms"][0]["verified"] is True and run.result["vms"][0]["problems"] == 0


def test_only_progress_needs_no_remote(lab):
    run = run_module("backup_info", {"progress_dir": str(lab.progress_dir), "job": "weekly"})
    assert run.rc == 0, run
    assert "backups" not in run.result and "vms" not in run.result
    (job,) = run.result["jobs"]
    assert (job["job"], job["job_id"], job["status"]) == ("weekly", job_id_from_name("weekly"), "success")
    assert (job["vms_total"], job["vms_done"], job["current_vms"], job["eta"]) == (1, 1, [], None)
    run = run_module("backup_info", {"progress_dir": str(lab.progress_dir), "job_id": job_id_from_name("nightly")})
    assert [j["job"] for j in run.result["jobs"]] == ["nightly"]


def test_unreadable_metadata_is_a_warning(lab, tmp_path):
    root = private_copy(lab.root, tmp_path)
    bad = root / lab.ours["inc0"]
    unlink_copy(bad)
    bad.write_text("{not json")
    (root / "xo-vm-backups" / lab.tiny01 / "cache.json.gz").unlink()
    run = run_module("backup_info", {"remote": f"file://{root}", "progress_dir": str(tmp_path / "none")})
    assert run.rc == 0, run
    assert lab.ours["inc0"] not in by_id(run.result) and lab.ours["inc1"] in by_id(run.result)
    assert any(lab.ours["inc0"] in w and "JSON" in w for w in run.warnings), run.warnings
    assert run.result["jobs"] == []


# -- verify ----------------------------------------------------------------------------------------
def test_verify_passes_on_sound_backups(lab):
    run = info(lab, verify=True)
    assert run.rc == 0, run
    assert [(b["id"], b["problems"]) for b in run.result["backups"] if not b["verified"]] == []
    assert len(run.result["backups"]) == 6
    assert all(v["verified"] and v["problems"] == 0 for v in run.result["vms"])


def test_verify_passes_after_retention_merged_a_chain(sim_factory, tmp_path):
    sim = sim_factory(lab=TINY_LAB)
    remote = tmp_path / "remote"
    remote.mkdir()
    root_disk = root_disk_of(sim)
    for run_number in range(3):
        sim.write(root_disk, os.urandom(200_000), offset=run_number * 4 * MIB)
        run = run_module("backup", backup_args(sim, f"file://{remote}", tmp_path / "p", retention=2))
        assert run.rc == 0, run
    run = run_module("backup_info", {"remote": f"file://{remote}", "verify": True, "progress_dir": str(tmp_path)})
    assert run.rc == 0, run
    oldest, newest = run.result["backups"]
    assert [b["problems"] for b in (oldest, newest)] == [[], []]
    # The first full VHD took in the first delta and its name: one VHD per disk is left under the oldest.
    assert [len(c["vhds"]) for c in oldest["chain"]] == [1, 1]
    assert all(c["complete"] and len(c["vhds"]) == 2 for c in newest["chain"])


def private_copy(root, tmp_path):
    """A copy of the remote made of hard links (cheap); unlink_copy() a file before changing it."""
    dst = tmp_path / "remote"
    shutil.copytree(root, dst, copy_function=os.link)
    return dst


def unlink_copy(path):
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def flip(path, offset, mask=0xFF):
    unlink_copy(path)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def first_allocated_bat_entry(path):
    """Offset of the BAT entry of the first block the VHD holds."""
    with open_vhd(str(path)) as vhd:
        return vhd.header.table_offset + 4 * vhd.allocated_blocks()[0]


def chunk_data_offset(xva_path):
    with tarfile.open(xva_path) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/00000000"))
        return member.name, member.offset_data


def ours_vhd(lab, key, userdevice="0"):
    md = json.loads((lab.root / lab.ours[key]).read_text())
    vdi = next(v["VDI"] for v in md["vbds"].values() if v["userdevice"] == userdevice and v["VDI"] in md["vhds"])
    return f"xo-vm-backups/{lab.tiny01}/{md['vhds'][vdi]}"


def corrupt_bat(lab, root):
    vhd = ours_vhd(lab, "inc1")
    flip(root / vhd, first_allocated_bat_entry(root / vhd))
    return {lab.ours["inc1"]: [(vhd, "BAT entry")]}


def truncate_vhd(lab, root):
    vhd = lab.xo["delta1"].disks["0"].vhd
    unlink_copy(root / vhd)
    os.truncate(root / vhd, (root / vhd).stat().st_size // 2 + 100)
    # The full VHD is delta2's parent: both backups are damaged.
    return {lab.xo["delta1"].id: [(vhd, "")], lab.xo["delta2"].id: [(vhd, "")]}


def remove_parent(lab, root):
    parent = ours_vhd(lab, "inc0")
    (root / parent).unlink()
    return {lab.ours["inc0"]: [(parent, "missing")], lab.ours["inc1"]: [(parent, "missing: it is the parent of")]}


def corrupt_xva_chunk(lab, root):
    xva = lab.ours["full"][: -len(".json")] + ".xva"
    name, offset = chunk_data_offset(root / xva)
    flip(root / xva, offset + 1000, mask=0x01)
    return {lab.ours["full"]: [(xva, name), (xva, "stored bytes hash to ")]}  # MD5 or SHA-256, by the CPU


def wrong_checksum(lab, root):
    checksum = lab.xo["full"].id[: -len(".json")] + ".xva.checksum"
    unlink_copy(root / checksum)
    (root / checksum).write_text("$1$$" + "0" * 32)
    return {lab.xo["full"].id: [(checksum, "MD5")]}


def missing_xva(lab, root):
    xva = lab.xo["full"].id[: -len(".json")] + ".xva"
    (root / xva).unlink()
    return {lab.xo["full"].id: [(xva, "missing")]}


def metadata_names_missing_vhd(lab, root):
    path = root / lab.xo["delta2"].id
    md = json.loads(path.read_text())
    ref = next(iter(md["vhds"]))
    md["vhds"][ref] = md["vhds"][ref].replace(".vhd", "0.vhd")
    unlink_copy(path)
    path.write_text(json.dumps(md))
    (root / "xo-vm-backups" / lab.tinyrun / "cache.json.gz").unlink()
    missing = f"xo-vm-backups/{lab.tinyrun}/{md['vhds'][ref]}"
    return {lab.xo["delta2"].id: [(missing, "missing: the metadata names it")]}


@pytest.mark.parametrize(
    "damage",
    [corrupt_bat, truncate_vhd, remove_parent, corrupt_xva_chunk, wrong_checksum, missing_xva,
     metadata_names_missing_vhd],
)  # fmt: skip
def test_verify_names_each_damaged_file(lab, tmp_path, damage):
    root = private_copy(lab.root, tmp_path)
    expected = damage(lab, root)
    run = run_module("backup_info", {"remote": f"file://{root}", "verify": True, "progress_dir": str(tmp_path)})
    assert run.rc == 0, run
    for backup in run.result["backups"]:
        if backup["id"] not in expected:
            assert backup["verified"] is True, backup  # the damage is reported where it is, nowhere else
            continue
        assert backup["verified"] is False
        for file, words in expected[backup["id"]]:
            assert any(p["file"] == file and words in p["problem"] for p in backup["problems"]), backup["problems"]
        assert {p["file"] for p in backup["problems"]} <= {f for f, _ in expected[backup["id"]]}, backup["problems"]
    damaged = {v["uuid"]: v["verified"] for v in run.result["vms"]}
    assert False in damaged.values()


# -- progress of a running job -----------------------------------------------------------------------
def test_progress_of_a_running_then_killed_job(sim_factory, tmp_path):
    sim = sim_factory(lab=TINY_LAB)
    remote = tmp_path / "remote"
    remote.mkdir()
    progress_dir = tmp_path / "progress"
    sim.fault(path="/export_raw_vdi", action="throttle", rate=1 * MIB, count=10)
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": backup_args(sim, f"file://{remote}", progress_dir)}))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "plugins/modules/backup.py"), str(args_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=module_env(),
        cwd=tmp_path,
    )
    query = {"progress_dir": str(progress_dir), "job": "nightly"}
    try:
        deadline = time.monotonic() + 30
        while True:
            run = run_module("backup_info", query)
            assert run.rc == 0, run
            jobs = run.result["jobs"]
            if jobs and jobs[0]["current_vms"] and jobs[0]["current_vms"][0]["bytes_done"] > 0:
                break
            assert time.monotonic() < deadline, f"no progress reported: {jobs}"
            time.sleep(0.3)
        (job,) = jobs
        assert (job["status"], job["job_id"], job["pid"]) == ("running", job_id_from_name("nightly"), proc.pid)
        assert (job["vms_total"], job["vms_done"]) == (1, 0)
        (vm,) = job["current_vms"]
        assert vm["name"] == "tiny-01" and vm["phase"] == "transfer" and vm["uuid"]
        assert 0 < vm["bytes_done"] <= job["bytes_done"] < job["bytes_total"]
        assert job["elapsed"] > 0
        assert run_module("backup_info", {**query, "job": "other"}).result["jobs"] == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run = run_module("backup_info", query)
    (job,) = run.result["jobs"]
    assert job["status"] == "interrupted" and job["eta"] is None


# -- bad input and secrets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"remote": "no-such-remote"}, ["no remote named 'no-such-remote'"]),
        ({"remote": "ftp://example.org/x"}, ["ftp"]),
        ({"remote": "file:///srv/../etc"}, [".."]),
        ({"remote": "file:///nonexistent/remote/dir"}, ["does not exist"]),
        ({"backup_id": "../../etc/passwd"}, ["not a backup id"]),
        ({"backup_id": "xo-vm-backups/../20240618T020003Z.json"}, ["not a backup id"]),
        ({"backup_id": "xo-vm-backups/0b1c7d6a-34a5-4f38-9e3f-2f3f6a1f0c11/20240618T020003Z.json"}, ["No backup"]),
        ({"vm": "no-such-vm"}, ["No backup of VM 'no-such-vm'", "tiny-01", "tiny-run"]),
        ({"vm": "0b1c7d6a-34a5-4f38-9e3f-2f3f6a1f0c11"}, ["No backup of VM", "Backed-up VMs there: tiny-01"]),
        ({"vm": "../../etc"}, ["No backup of VM '../../etc'"]),
        ({"vm": "  "}, ["vm must not be empty"]),
        ({"vm": "tiny-01", "backup_id": "x"}, ["mutually exclusive", "vm", "backup_id"]),
        ({"job": "a", "job_id": "b"}, ["mutually exclusive"]),
        ({"remote": None, "verify": True}, ["remote is required with verify"]),
        ({"remote": None, "vm": "tiny-01"}, ["remote is required with vm"]),
    ],
)
def test_bad_input_fails_cleanly(lab, options, fragments):
    assert_clean_failure(info(lab, **options), *fragments)


def test_no_secret_in_output(lab, tmp_path):
    remotes_dir = tmp_path / "remotes"
    remotes_dir.mkdir()
    (remotes_dir / "site.json").write_text(json.dumps({"url": lab.url, "password": "registered-s3cret"}))
    quiet = {"_ansible_verbosity": 4, "_ansible_debug": True}
    runs = [
        info(lab, remote="site", remotes_dir=str(remotes_dir), remote_password=REMOTE_PASSWORD, verify=True, **quiet),
        info(lab, remote="site", remotes_dir=str(remotes_dir), vm="nobody", remote_password=REMOTE_PASSWORD),
        info(lab, remote=f"smb://backup:{REMOTE_PASSWORD}@127.0.0.1\\share", remote_password="other-s3cret", **quiet),
    ]
    assert runs[0].rc == 0 and len(runs[0].result["backups"]) == 6, runs[0]
    assert_clean_failure(runs[1], "No backup of VM 'nobody'")
    assert runs[2].rc == 1 and "Traceback" not in runs[2].output, runs[2]
    for run in runs:
        for secret in (REMOTE_PASSWORD, "registered-s3cret", "other-s3cret"):
            assert secret not in run.output, run


def test_runs_without_the_xapi_libraries(lab):
    """The module needs neither XenAPI nor requests: it runs where they cannot be imported."""
    prelude = "import sys\nfor name in ('XenAPI', 'requests', 'jmespath'):\n    sys.modules[name] = None\n"
    run = run_module("backup_info", {"remote": lab.url, "backup_id": lab.ours["full"]}, prelude=prelude)
    assert run.rc == 0, run

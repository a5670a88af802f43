"""The remote module on every kind the collection supports: register, test, benchmark, use by name, unregister.

SMB and S3 run against the real servers of ``tests/servers.py`` (Samba, rclone); NFS against the
``fake_nfs`` stand-in, whose ``mount`` records its arguments and bind-mounts a local directory.
"""

import json
import os
import stat
import subprocess

import pytest
from module_runner import run_module

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import parse


def secret_of(url):
    """The password or S3 secret written inside ``url`` (None for file:// URLs)."""
    creds = parse(url).credentials
    return creds.password if creds else None


@pytest.fixture(params=["file", "smb", "s3"])
def url(request, tmp_path):
    if request.param == "file":
        root = tmp_path / "backups"
        root.mkdir()
        return f"file://{root}"
    return request.getfixturevalue("new_smb_url" if request.param == "smb" else "new_s3_url")


def test_register_test_benchmark_use_and_unregister(url, tmp_path):
    remotes = tmp_path / "remotes"
    args = {"name": "site-nas", "url": url, "remotes_dir": str(remotes), "test": True, "benchmark": True,
            "benchmark_size": 4, "_ansible_diff": True}  # fmt: skip
    run = run_module("remote", args)
    assert run.rc == 0, run.result
    result = run.result
    assert result["changed"] is True and result["actions"] == ["register"]
    assert result["test"] == {"success": True, "step": None, "error": None, "duration": result["test"]["duration"]}
    bench = result["benchmark"]
    assert bench["size"] == 4 << 20 and bench["write_rate"] > 0 and bench["read_rate"] > 0
    # Root-owned 0600 file in a 0700 directory; the URL is stored without its credentials.
    path = remotes / "site-nas.json"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() == 0
    assert stat.S_IMODE(remotes.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    secret = secret_of(url)
    if secret:
        assert stored["password"] == secret and secret not in stored["url"] and "@" not in stored["url"]
        assert result["remote"]["password"] == "(stored)" and result["remote"]["credentials_stored"] is True
        assert secret not in run.output  # neither in the result nor in the echoed invocation
    # Nothing is left behind by the probes.
    if url.startswith("file://"):
        assert os.listdir(url[len("file://") :]) == []
    # The same arguments again: nothing to do.
    again = run_module("remote", {**args, "test": False, "benchmark": False})
    assert again.rc == 0 and again.result["changed"] is False and again.result["actions"] == []
    # Other modules take the name wherever they take a URL, with the stored credentials.
    rc, info = run_module("backup_info", {"remote": "site-nas", "remotes_dir": str(remotes)})
    assert rc == 0, info.get("msg")
    assert info["backups"] == []
    gone = run_module("remote", {"name": "site-nas", "state": "absent", "remotes_dir": str(remotes)})
    assert gone.rc == 0 and gone.result["changed"] is True and not path.exists()
    assert (
        run_module("remote", {"name": "site-nas", "state": "absent", "remotes_dir": str(remotes)}).result["changed"]
        is False
    )
    rc, info = run_module("backup_info", {"remote": "site-nas", "remotes_dir": str(remotes)})
    assert rc != 0 and "no remote named 'site-nas' is registered" in info["msg"]


def register_nfs(fake_nfs, tmp_path, **extra):
    export = fake_nfs.new_export()
    (export / "keep.txt").write_text("backup data")
    args = {"name": "nas", "url": f"nfs://127.0.0.1:/{export.name}", "options": "vers=3,nolock",
            "remotes_dir": str(tmp_path / "remotes"), "mounts_dir": str(fake_nfs.mounts_dir), **extra}  # fmt: skip
    run = run_module("remote", args)
    assert run.rc == 0, run.result
    return export, args, run.result


def test_nfs_is_mounted_once_and_stays_mounted_for_backups(fake_nfs, tiny, tmp_path):
    export, args, result = register_nfs(fake_nfs, tmp_path, test=True)
    mount_point = result["remote"]["mount_point"]
    assert result["remote"]["mounted"] is True and fake_nfs.mounted() == [mount_point]
    assert fake_nfs.calls() == [["-o", "vers=3,nolock", "-t", "nfs", f"127.0.0.1:/{export.name}", mount_point]]
    assert result["test"]["success"] is True
    # A backup to the remote by name writes through that mount and leaves it mounted: no second mount.
    conn = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path)}
    rc, backup = run_module("backup", {**conn, "job": "nightly", "mode": "full", "names": ["tiny-01"],
                                       "remotes": ["nas"], "remotes_dir": args["remotes_dir"],
                                       "progress_dir": str(tmp_path / "progress")})  # fmt: skip
    assert rc == 0, backup.get("msg")
    assert (export / backup["vms"][0]["backup_id"]).is_file()
    assert len(fake_nfs.calls()) == 1 and fake_nfs.mounted() == [mount_point]
    again = run_module("remote", args)
    assert again.rc == 0 and again.result["changed"] is False
    # After a reboot (mount gone) the next run mounts it again.
    subprocess.run(["umount", mount_point], check=True)
    again = run_module("remote", args)
    assert again.rc == 0 and again.result["changed"] is True and fake_nfs.mounted() == [mount_point]
    gone = run_module("remote", {"name": "nas", "state": "absent", "remotes_dir": args["remotes_dir"]})
    assert gone.rc == 0, gone.result
    assert gone.result["actions"] == [f"unmount {mount_point}", "unregister"]
    assert fake_nfs.mounted() == [] and not os.path.exists(mount_point)
    assert (export / "keep.txt").read_text() == "backup data" and (export / backup["vms"][0]["backup_id"]).is_file()


@pytest.mark.parametrize("module", ["backup_info", "restore"])
def test_backup_info_and_restore_use_the_registered_nfs_mount(module, fake_nfs, tiny, tmp_path):
    """Like backup, the modules that read a remote open a registered NFS remote on its mount, with its options.

    Opened by URL (or without the registration's mounts_dir and options), the export would be mounted a
    second time, elsewhere and without ``vers=3,nolock``, then unmounted: ``mount`` would run twice.
    """
    export, args, result = register_nfs(fake_nfs, tmp_path)
    mount_point = result["remote"]["mount_point"]
    conn = {"hostname": tiny.url, "password": tiny.password, "ca_path": str(tiny.ca_path)}
    by_name = {"remote": "nas", "remotes_dir": args["remotes_dir"]}
    rc, backup = run_module("backup", {**conn, "job": "nightly", "mode": "full", "names": ["tiny-01"],
                                       "remotes": ["nas"], "remotes_dir": args["remotes_dir"],
                                       "progress_dir": str(tmp_path / "progress")})  # fmt: skip
    assert rc == 0, backup.get("msg")
    backup_id = backup["vms"][0]["backup_id"]
    assert (export / backup_id).is_file()
    if module == "backup_info":
        rc, out = run_module("backup_info", {**by_name, "verify": True})
        assert rc == 0, out.get("msg")
        assert [(b["id"], b["verified"]) for b in out["backups"]] == [(backup_id, True)]
    else:
        rc, out = run_module("restore", {**conn, **by_name, "backup": backup_id, "sr": "Local storage",
                                         "name": "from-nas"})  # fmt: skip
        assert rc == 0, out.get("msg")
        assert out["changed"] is True
        with tiny.xapi() as x:
            assert len(x.VM.get_by_name_label("from-nas")) == 1
    # Read through the one mount the remote module made, which stays mounted for the next run.
    assert fake_nfs.calls() == [["-o", "vers=3,nolock", "-t", "nfs", f"127.0.0.1:/{export.name}", mount_point]]
    assert fake_nfs.mounted() == [mount_point]


def test_credentials_kept_out_of_the_proxy_on_request(new_smb_url, tmp_path):
    remotes = tmp_path / "remotes"
    remote = parse(new_smb_url)
    user, password = remote.credentials.username, remote.credentials.password
    bare = remote.format(include_credentials=False)
    run = run_module("remote", {"name": "nas", "url": bare, "username": user, "password": password,
                                "store_credentials": False, "test": True, "remotes_dir": str(remotes)})  # fmt: skip
    assert run.rc == 0, run.result
    assert run.result["test"]["success"] is True  # the credentials of this run served the test
    stored = json.loads((remotes / "nas.json").read_text())
    assert stored["password"] is None and stored["username"] is None
    assert password not in (remotes / "nas.json").read_text() and password not in run.output
    # Each run passes them itself; without them the server refuses.
    rc, info = run_module("backup_info", {"remote": "nas", "remotes_dir": str(remotes), "remote_username": user,
                                          "remote_password": password})  # fmt: skip
    assert rc == 0, info.get("msg")
    rc, info = run_module("backup_info", {"remote": "nas", "remotes_dir": str(remotes)})
    assert rc != 0


def test_check_mode_and_diff_write_nothing(tmp_path):
    remotes = tmp_path / "remotes"
    run = run_module("remote", {"name": "r", "url": f"file://{tmp_path}", "remotes_dir": str(remotes), "test": True,
                                "_ansible_check_mode": True, "_ansible_diff": True})  # fmt: skip
    assert run.rc == 0 and run.result["changed"] is True and run.result["actions"] == ["register"]
    assert run.result["diff"]["before"] == {} and run.result["diff"]["after"]["url"] == f"file://{tmp_path}"
    assert run.result["test"]["skipped"] is True
    assert not remotes.exists()


def test_changed_password_and_file_mode_are_repaired_without_showing_the_secret(tmp_path):
    remotes = tmp_path / "remotes"
    root = tmp_path / "b"
    root.mkdir()
    args = {"name": "r", "url": f"file://{root}", "username": "u", "password": "first-Secret-1",
            "remotes_dir": str(remotes), "_ansible_diff": True}  # fmt: skip
    assert run_module("remote", args).rc == 0
    path = remotes / "r.json"
    path.chmod(0o644)
    run = run_module("remote", args)
    assert run.result["changed"] is True and "fix registration file mode" in run.result["actions"][0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    run = run_module("remote", {**args, "password": "second-Secret-2"})
    assert run.result["changed"] is True and run.result["actions"] == ["update registration"]
    assert run.result["diff"]["after"]["password"] == "(stored) (changed)"
    assert "first-Secret-1" not in run.output and "second-Secret-2" not in run.output
    assert json.loads(path.read_text())["password"] == "second-Secret-2"


def test_failed_test_and_bad_input_are_clear_failures(tmp_path):
    remotes = str(tmp_path / "remotes")
    kept = str(tmp_path / "kept")
    run = run_module("remote", {"name": "gone", "url": "file:///nonexistent-remote-dir", "remotes_dir": kept,
                                "test": True})  # fmt: skip
    assert run.rc != 0 and "failed its test at the open step" in run.result["msg"], run.result
    assert "does not exist" in run.result["msg"] and run.result["test"]["success"] is False
    assert os.path.exists(os.path.join(kept, "gone.json")), "the registration stays, to be fixed and run again"
    cases = [
        ({"name": "../x", "url": f"file://{tmp_path}"}, "cannot name a registered remote"),
        ({"name": "x", "url": "ftp://host/x"}, "unknown remote scheme 'ftp'"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": f"file://{tmp_path}", "benchmark_size": 0}, "benchmark_size=0"),
        ({"name": "x", "url": "smb://u:Pw-secret-9@WORKGROUP\\\\h"}, "names no share"),
    ]
    for bad, needle in cases:
        run = run_module("remote", {**bad, "remotes_dir": remotes})
        assert run.rc != 0 and needle in run.result["msg"], run.result
        assert "Traceback" not in run.output and "Pw-secret-9" not in run.output
    assert not os.path.exists(remotes)

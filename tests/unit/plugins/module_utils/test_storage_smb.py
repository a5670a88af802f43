"""``smb://`` specifics, against the real Samba server of tests/servers.py (contract: test_storage_contract.py).

Credentials, connection failures, XO's lock held through the share, in-place updates, replacing a file
another client has open, and a server that drops the connection.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from servers import SMB_PASSWORD

from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AuthenticationError,
    LockedError,
    NotFoundError,
    NotSupportedError,
    StorageError,
    UnreachableError,
    open_remote,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_smb import SmbStorage, split_server

WRONG = "Wrong-pw:7x@Q"


def test_open_remote_gives_an_smb_storage_that_hides_the_password(new_smb_url):
    with open_remote(new_smb_url) as store:
        assert isinstance(store, SmbStorage)
        store.write_bytes("a.json", b"{}")
        for text in (repr(store), str(store.url), store.display, repr(store.url.credentials)):
            assert SMB_PASSWORD not in text
        assert store.display.startswith("smb://backup:***@WORKGROUP\\\\127.0.0.1:")


def test_wrong_password_is_an_authentication_error_without_secrets(samba, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        open_remote(samba.url(password=WRONG))
    message = str(info.value)
    assert re.fullmatch(
        r"cannot open smb://backup:\*\*\*@WORKGROUP\\\\127\.0\.0\.1:\d+\\data: the SMB server 127\.0\.0\.1 "
        r"refused the credentials of user backup in domain WORKGROUP \(STATUS_LOGON_FAILURE\); check the user name, "
        r"password and domain in the remote URL\.",
        message,
    ), message
    with open_remote(samba.url()) as store:  # and a successful login logs no secret either
        store.write_bytes("x.json", b"{}")
    for secret in (WRONG, SMB_PASSWORD):
        assert secret not in message and secret not in repr(info.value)
        assert secret not in caplog.text
    assert "smbprotocol" in caplog.text  # the check looked at real library logs


def test_no_user_in_the_url_says_what_to_add(samba):
    with pytest.raises(AuthenticationError) as info:
        open_remote(samba.url(user=None))  # smbprotocol then tries Kerberos, which this proxy has no ticket for
    start = f"cannot open smb://WORKGROUP\\\\127.0.0.1:{samba.port}\\data: the remote URL has no user name and "
    assert str(info.value).startswith(start + "this proxy has no Kerberos ticket for 127.0.0.1 (")
    assert str(info.value).endswith("); write user:password@ before the domain in the remote URL.")


def test_missing_share_and_missing_folder_are_not_found(samba):
    with pytest.raises(NotFoundError, match=r"share nosuch does not exist on SMB server 127\.0\.0\.1; check the share"):
        open_remote(samba.url("nosuch"))
    name, _ = samba.new_folder()
    with pytest.raises(NotFoundError, match=f"remote folder {name}/absent/deeper does not exist in share data"):
        open_remote(samba.url(sub=f"{name}\\absent\\deeper"))
    with open_remote(samba.url(sub=f"{name}\\absent\\deeper"), create_root=True) as store:
        assert store.list("") == []
        store.write_bytes("f", b"1")
    assert (samba.shares / "data" / name / "absent" / "deeper" / "f").read_bytes() == b"1"


def test_unreachable_server(closed_port, silent_port):
    url = f"smb://u:p@WORKGROUP\\\\127.0.0.1:{closed_port}\\share"
    with pytest.raises(UnreachableError, match=f"cannot connect to 127.0.0.1:{closed_port}: .*Connection refused"):
        open_remote(url)
    t0 = time.monotonic()
    with pytest.raises(UnreachableError, match=f"the remote is unreachable \\(127.0.0.1:{silent_port} did not answer"):
        open_remote(f"smb://u:p@WORKGROUP\\\\127.0.0.1:{silent_port}\\share", timeout=1)
    assert time.monotonic() - t0 < 15


def test_xo_lock_held_through_the_share_blocks_us_and_a_stale_one_is_taken_over(samba):
    name, local = samba.new_folder()
    lock_dir = local / "xo-vm-backups" / "vm.lock"
    lock_dir.mkdir(parents=True)  # an XO proxy on a CIFS mount of the same share holds it
    for path in (lock_dir.parent, lock_dir):
        os.chown(path, samba.user.pw_uid, samba.user.pw_gid)
    with open_remote(samba.url(sub=name)) as store:
        with pytest.raises(LockedError, match="already running"):
            store.lock("xo-vm-backups/vm")
        old = time.time() - 30
        os.utime(lock_dir, (old, old))
        with store.lock("xo-vm-backups/vm", stale=1.0) as held:
            assert lock_dir.is_dir() and os.stat(lock_dir).st_mtime > old + 20
            time.sleep(1.2)  # the refresher keeps it fresh through SMB
            assert time.time() - os.stat(lock_dir).st_mtime < 1.0
            assert not held.lost
        assert not lock_dir.exists()


def test_open_update_changes_a_file_in_place(new_smb_url):
    with open_remote(new_smb_url) as store:
        store.write_bytes("v/parent.vhd", b"0123456789")
        with store.open_update("v/parent.vhd") as f:
            assert f.read(3) == b"012"
            f.seek(4)
            f.write(b"AB")
            f.seek(0, os.SEEK_END)
            f.write(b"!" * 3)
        assert store.read_bytes("v/parent.vhd") == b"0123AB6789!!!"
        with pytest.raises(NotFoundError):
            store.open_update("v/missing.vhd")


def test_replacing_a_file_another_client_reads_waits_for_it(new_smb_url):
    with open_remote(new_smb_url) as writer, open_remote(new_smb_url) as reader:
        writer.write_bytes("cache.json", b"old")
        held = reader.open_read("cache.json")
        threading.Timer(0.6, held.close).start()
        t0 = time.monotonic()
        writer.write_bytes("cache.json", b"new")  # refused by the server until the reader closes
        assert time.monotonic() - t0 >= 0.5
        assert reader.read_bytes("cache.json") == b"new"
    with open_remote(new_smb_url, busy_timeout=0.3) as writer, open_remote(new_smb_url) as reader:
        with reader.open_read("cache.json"), pytest.raises(StorageError) as info:
            writer.write_bytes("cache.json", b"newer")
        assert str(info.value).startswith("cannot replace cache.json on ")
        assert "another client has kept it open for 0.3 s" in str(info.value)
        assert writer.read_bytes("cache.json") == b"new" and writer.list("") == ["cache.json"]


def _worker_of(samba, store):
    """The smbd process serving ``store``'s connection (Samba forks one per client)."""
    (connection,) = store._cache.values()
    client_port = connection.transport._sock.getsockname()[1]
    done = subprocess.run(["smbstatus", "-s", str(samba.conf), "-b"], capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if f":{client_port})" in line:
            return int(line.split()[0])
    raise AssertionError(f"no smbd worker for client port {client_port} in:\n{done.stdout}")


def test_a_connection_dropped_by_the_server_is_opened_again(samba, new_smb_url):
    with open_remote(new_smb_url) as store:
        store.write_bytes("a.json", b"1")
        first = _worker_of(samba, store)
        os.kill(first, signal.SIGKILL)  # the server side goes away (crash, restart)
        time.sleep(0.2)
        assert store.read_bytes("a.json") == b"1"
        assert _worker_of(samba, store) != first  # a new connection, to a new worker
        out = store.open_write("b.json")
        out.write(b"2")
        os.kill(_worker_of(samba, store), signal.SIGKILL)  # in the middle of a write: that write fails cleanly
        time.sleep(0.2)
        with pytest.raises(UnreachableError, match="cannot write b.json on .*: the remote is unreachable"):
            out.commit()
        assert not store.exists("b.json")
        store.write_bytes("b.json", b"3")
        assert store.read_bytes("b.json") == b"3"


def test_a_request_cut_by_a_dropped_connection_is_sent_again(samba, new_smb_url):
    with open_remote(new_smb_url) as store:
        store.write_bytes("a.json", b"1")
        worker = _worker_of(samba, store)
        os.kill(worker, signal.SIGSTOP)  # the next request waits for an answer that never comes
        got = []
        reader = threading.Thread(target=lambda: got.append(store.list("")))
        reader.start()
        time.sleep(0.3)
        os.kill(worker, signal.SIGKILL)  # then the connection drops under it
        reader.join(30)
        assert got == [["a.json"]]
        assert store.reconnects == 1


def test_split_server():
    assert split_server("nas") == ("nas", 445)
    assert split_server("nas:4450") == ("nas", 4450)
    assert split_server("[fd00::5]:4450") == ("fd00::5", 4450)
    assert split_server("[fd00::5]") == ("fd00::5", 445)
    assert split_server("nas:4450", 1445) == ("nas", 1445)


@pytest.mark.parametrize(
    ("module", "url", "package"),
    [("smbclient", "smb://u:p@WG\\\\srv\\share", "smbprotocol"), ("boto3", "s3://k:s@h/b", "boto3")],
)
def test_a_missing_library_is_a_clear_error(module, url, package):
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote\n"
        f"open_remote({url!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{NotSupportedError.__module__}.NotSupportedError: cannot open ")
    assert last.endswith(f"need the Python package {package} on the proxy (pip install {package}).")
    assert ":p@" not in last and ":s@" not in last

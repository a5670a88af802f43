"""``_remote_options.remote_target``: the one way backup, backup_info and restore resolve a remote option.

Registrations are written by the ``remote`` module's own code (``_remote_registry``), as on a proxy.
"""

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _remote_registry as registry
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import RemoteOptionError, remote_target


def register(remotes_dir, name, url, **kwargs):
    record, _ = registry.desired_record(url, **kwargs)
    registry.write(registry.record_path(str(remotes_dir), name), record)


def test_a_registered_nfs_remote_opens_on_its_persistent_mount_with_its_options(tmp_path):
    remotes = tmp_path / "remotes"
    register(remotes, "nas", "nfs://nas.example.org:/export/b", options="vers=3,nolock", mounts_dir="/srv/mounts")
    target = remote_target(" nas ", {"remotes_dir": str(remotes)})
    assert target.name == "nas" and target.label == "nas"
    assert target.remote.type == "nfs" and target.remote.host == "nas.example.org"
    assert target.options == {"persistent": True, "mount_options": "vers=3,nolock", "mounts_dir": "/srv/mounts"}
    # The same export given by URL is the task's own mount: default place, no options, unmounted after.
    by_url = remote_target("nfs://nas.example.org:/export/b", {"remotes_dir": str(remotes)})
    assert by_url.name is None and by_url.options == {}
    assert by_url.label == "nfs://nas.example.org:/export/b"


def test_credentials_come_from_the_registration_else_from_the_task(tmp_path):
    remotes = tmp_path / "remotes"
    register(remotes, "kept", "smb://WORKGROUP\\\\nas\\share", username="u", password="Stored-pw-1")
    register(remotes, "bare", "smb://WORKGROUP\\\\nas\\share", username="u", password="x", store_credentials=False)
    params = {"remotes_dir": str(remotes), "remote_username": "t", "remote_password": "Task-pw-2"}
    kept, bare = remote_target("kept", params), remote_target("bare", params)
    assert (kept.remote.credentials.username, kept.remote.credentials.password) == ("u", "Stored-pw-1")
    assert (bare.remote.credentials.username, bare.remote.credentials.password) == ("t", "Task-pw-2")
    assert kept.options == bare.options == {}  # only NFS has mount options
    assert "Stored-pw-1" not in kept.label and "Task-pw-2" not in bare.label


def test_open_hands_the_password_over_and_names_the_remote_in_failures(tmp_path):
    class Refused(ValueError):
        pass

    secrets = []
    target = remote_target(f"file://{tmp_path}/missing", {"remotes_dir": str(tmp_path)})
    with pytest.raises(Refused, match=rf"^Cannot open the remote file://{tmp_path}/missing: .*does not exist"):
        target.open(secrets.append, failure=Refused)
    assert secrets == []
    storage = remote_target(f"file://{tmp_path}", {"remotes_dir": str(tmp_path)}).open(secrets.append)
    storage.close()


def test_unknown_names_fail_plainly(tmp_path):
    with pytest.raises(RemoteOptionError, match="no remote named 'nas' is registered"):
        remote_target("nas", {"remotes_dir": str(tmp_path)})

"""Turn the remote options of a module into opened storages, resolving registered remote names.

A value with ``://`` is a URL in Xen Orchestra's grammar; anything else names a remote registered
on this host by the ``remote`` module (``<remotes_dir>/<name>.json``, root-owned, mode 0600).
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import unquote

from ._remote_url import Credentials, RemoteUrlError, parse
from ._storage import open_remote

DEFAULT_REMOTES_DIR = "/etc/xapi-proxy/remotes"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RemoteOptionError(ValueError):
    """A remote option names nothing usable; the message says what to fix."""


def argument_spec():
    return {
        "remote_username": {"type": "str"},
        "remote_password": {"type": "str", "no_log": True},
        "remotes_dir": {"type": "path", "default": DEFAULT_REMOTES_DIR},
    }


def validate_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise RemoteOptionError(
            f"{name!r} is neither a remote URL (file://, nfs://, smb://, s3://) nor a registered remote name "
            "(letters, digits, '.', '_' and '-')"
        )
    return name


def registered(name, remotes_dir=DEFAULT_REMOTES_DIR):
    """The record of remote ``name`` registered on this host: ``{url, username, password, options}``."""
    validate_name(name)
    path = os.path.join(remotes_dir, name + ".json")
    try:
        with open(path) as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise RemoteOptionError(
            f"no remote named {name!r} is registered on this host (looked for {path}); register it with "
            "xapi.proxy.remote or give its URL"
        ) from None
    except (OSError, ValueError) as e:
        raise RemoteOptionError(f"cannot read the registered remote {name!r} from {path}: {e}") from None
    if not isinstance(record, dict) or "url" not in record:
        raise RemoteOptionError(f"{path} is not a remote registration (no 'url'); register it again")
    return record


def resolve(value, username=None, password=None, remotes_dir=DEFAULT_REMOTES_DIR):
    """``(RemoteUrl with credentials, registered name or None)`` for one remote option value."""
    value = (value or "").strip()
    name = None
    if "://" not in value:
        record = registered(value, remotes_dir)
        name, value = value, record["url"]
        # A remote registered with store_credentials=false keeps no secret: the run's credentials apply.
        username, password = record.get("username") or username, record.get("password") or password
    try:
        remote = parse(value)
    except RemoteUrlError as e:
        raise RemoteOptionError(str(e)) from None
    if username or password:
        remote = remote.with_credentials(Credentials(username or "", password or ""))
    return remote, name


def storage_options(record):
    """``open_remote`` options a registration asks for: an NFS remote stays on its persistent mount.

    The ``remote`` module mounts a registered NFS remote once, with the record's ``options`` (mount
    options, as Xen Orchestra's remote ``options``) under its ``mounts_dir``; opening it with the same
    values finds that mount, and ``persistent`` keeps it mounted when the storage is closed.
    """
    if not isinstance(record, dict) or not str(record.get("url", "")).startswith("nfs://"):
        return {}
    options = {"persistent": True}
    if record.get("options"):
        options["mount_options"] = record["options"]
    if record.get("mounts_dir"):
        options["mounts_dir"] = record["mounts_dir"]
    return options


def open_storage(value, params, **options):
    """Open one remote named by ``value`` with the module's remote credential options."""
    remotes_dir = params.get("remotes_dir") or DEFAULT_REMOTES_DIR
    remote, name = resolve(value, params.get("remote_username"), params.get("remote_password"), remotes_dir)
    if name is not None:
        options = {**storage_options(registered(name, remotes_dir)), **options}
    return open_remote(remote, **options)


def url_passwords(value):
    """Passwords written inside a remote URL option (``smb://user:pw@…``), as typed and decoded."""
    if not value or "://" not in value or "@" not in value:
        return []
    userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
    if ":" not in userinfo:
        return []
    password = userinfo.split(":", 1)[1]
    return [s for s in {password, unquote(password)} if s]


def secrets_of(params, *values):
    """Values to mask in all output: the remote password option and passwords inside ``values`` (URLs).

    Modules add them to ``no_log_values`` so that Ansible masks them in results and in the
    ``invocation`` it echoes, since a URL option itself cannot be ``no_log``.
    """
    out = [s for s in (params.get("remote_password"),) if s]
    for value in values:
        out += url_passwords(value)
    return out

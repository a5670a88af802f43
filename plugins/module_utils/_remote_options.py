"""Turn the remote options of a module into opened storages, resolving registered remote names.

A value with ``://`` is a URL in Xen Orchestra's grammar; anything else names a remote registered
on this host by the ``remote`` module (``<remotes_dir>/<name>.json``, root-owned, mode 0600).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, NamedTuple, Optional
from urllib.parse import unquote

from ._remote_url import Credentials, RemoteUrl, RemoteUrlError, parse
from ._storage import StorageError, open_remote

DEFAULT_REMOTES_DIR = "/etc/xapi-proxy/remotes"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RemoteOptionError(ValueError):
    """A remote option names nothing usable; the message says what to fix."""


def argument_spec():
    return {
        "remote_username": {"type": "str"},
        "remote_password": {"type": "str", "no_log": True},
        "remotes_dir": {"type": "path", "default": DEFAULT_REMOTES_DIR},
        "remote_ca_path": {"type": "path"},
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


def _resolve(value, username, password, remotes_dir):
    """``(RemoteUrl with credentials, registered name or None, registration record or None)``."""
    value = (value or "").strip()
    name = record = None
    if "://" not in value:
        record = registered(value, remotes_dir or DEFAULT_REMOTES_DIR)
        name, value = value, record["url"]
        # A remote registered with store_credentials=false keeps no secret: the run's credentials apply.
        username, password = record.get("username") or username, record.get("password") or password
    try:
        remote = parse(value)
    except RemoteUrlError as e:
        raise RemoteOptionError(str(e)) from None
    if username or password:
        remote = remote.with_credentials(Credentials(username or "", password or ""))
    return remote, name, record


def resolve(value, username=None, password=None, remotes_dir=DEFAULT_REMOTES_DIR):
    """``(RemoteUrl with credentials, registered name or None)`` for one remote option value."""
    remote, name, _record = _resolve(value, username, password, remotes_dir)
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


class RemoteTarget(NamedTuple):
    """One remote option value resolved: what to open, and how its registration asks to open it."""

    remote: RemoteUrl  # with the credentials this run uses (stored, or the remote_* options)
    name: Optional[str]  # the registered name, None for a URL
    options: Dict[str, Any]  # open_remote options of the registration (see storage_options)

    @property
    def label(self):
        """How results name the remote: its registered name, else its URL without secrets."""
        return self.name or self.remote.redacted()

    def open(self, add_secret=None, failure=None, **options):
        """Open the storage; ``options`` add to (and override) the registration's.

        ``add_secret`` receives the password the remote is opened with, to mask it in all output;
        with ``failure`` (an exception class), a storage error is raised as ``failure`` naming the remote.
        """
        creds = self.remote.credentials
        if add_secret is not None and creds is not None and creds.password:
            add_secret(creds.password)
        try:
            return open_remote(self.remote, **{**self.options, **options})
        except StorageError as e:
            if failure is None:
                raise
            raise failure(f"Cannot open the remote {self.remote.redacted()}: {e}") from None


def remote_target(value, params):
    """Resolve one remote option value (URL or registered name) with the module's remote options.

    Every module opens remotes through this (or :func:`open_storage`): a registered NFS remote is then
    opened on the mount the ``remote`` module made, with its mount options, and left mounted.
    """
    remote, name, record = _resolve(
        value, params.get("remote_username"), params.get("remote_password"), params.get("remotes_dir")
    )
    options = storage_options(record) if record is not None else {}
    ca_path = params.get("remote_ca_path")
    if ca_path and remote.type == "s3":
        if not os.path.isfile(ca_path):
            raise RemoteOptionError(
                f"remote_ca_path {ca_path} is not a readable file on this host: give the PEM file of the CA that "
                "signed the S3 server's certificate"
            )
        options["ca_bundle"] = ca_path
    return RemoteTarget(remote, name, options)


def open_storage(value, params, add_secret=None, failure=None, **options):
    """Open one remote named by ``value`` with the module's remote options (see :meth:`RemoteTarget.open`)."""
    return remote_target(value, params).open(add_secret, failure, **options)


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

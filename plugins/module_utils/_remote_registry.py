"""Remotes registered on a proxy: one root-owned 0600 JSON file per name, read by ``_remote_options``.

A record is ``{"url", "username", "password", "options"}`` (what :func:`_remote_options.registered`
reads), plus ``mounts_dir`` for NFS and ``managed_by``. ``url`` never carries credentials: they sit
in ``username``/``password``, or nowhere when registered with ``store_credentials=false`` (each run
then passes ``remote_username``/``remote_password``). ``options`` is Xen Orchestra's remote
``options`` field: the NFS mount options (:func:`_remote_options.storage_options` reads it back).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile

from ._remote_options import RemoteOptionError, validate_name
from ._remote_url import Credentials, parse

FILE_MODE = 0o600
DIR_MODE = 0o700
MANAGED_BY = "xapi.proxy.remote"
SECRET_SHOWN = "(stored)"  # noqa: S105 - what is shown instead of a password


class RegistryError(ValueError):
    """A registration that cannot be read or written; the message says what to do."""


def record_path(remotes_dir, name):
    try:
        validate_name(name)
    except RemoteOptionError:
        raise RegistryError(
            f"{name!r} cannot name a registered remote: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit)."
        ) from None
    return os.path.join(remotes_dir, name + ".json")


def desired_record(url, username=None, password=None, options=None, store_credentials=True, mounts_dir=None):
    """The record to store, and the ``RemoteUrl`` with the credentials to use now (stored or not)."""
    try:
        remote = parse(url)
    except ValueError as e:
        raise RegistryError(str(e)) from None
    creds = remote.credentials
    user = username if username is not None else (creds.username if creds else None)
    secret = password if password is not None else (creds.password if creds else None)
    remote = remote.with_credentials(Credentials(user or "", secret or "") if (user or secret) else None)
    record = {
        "url": remote.format(include_credentials=False),
        "username": (user or None) if store_credentials else None,
        "password": (secret or None) if store_credentials else None,
        "options": options or None,
        "managed_by": MANAGED_BY,
    }
    if remote.type == "nfs":
        record["mounts_dir"] = mounts_dir
    return record, remote


def read(path):
    """The stored record, ``None`` when there is none, ``{"unreadable": why}`` when it is damaged."""
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # A damaged file is replaced by a present run and removed by an absent one.
        return {"unreadable": f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"}
    return record if isinstance(record, dict) else {"unreadable": "not a JSON object"}


def file_state(path):
    """``{"mode": "0600", "owner_uid": 0}`` of the registration file, or ``None``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "owner_uid": st.st_uid}


def write(path, record):
    """Replace the registration atomically: a 0600 file (root's, when run as root) in a 0700 directory."""
    directory = os.path.dirname(path)
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, DIR_MODE)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    except OSError as e:
        raise RegistryError(
            f"cannot write the remote registration in {directory}: {e.strerror or e}; run the task as root "
            "(become: true) or set remotes_dir to a directory this user owns."
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)  # mkstemp makes it 0600 already; say so
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), 0, 0)
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(path):
    """Delete the registration file (never anything else); True when there was one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def describe(record, name=None, path=None):
    """What results and diffs show of a record: everything but the secret, which shows as stored or not."""
    if record is None:
        return {}
    if "unreadable" in record:
        return {"name": name, "path": path, "unreadable": record["unreadable"]}
    try:
        remote = parse(record.get("url", ""))
        url, kind = remote.redacted(), remote.type
    except ValueError:
        url, kind = "(invalid URL)", None
    out = {
        "name": name,
        "path": path,
        "url": url,
        "type": kind,
        "username": record.get("username"),
        "password": SECRET_SHOWN if record.get("password") else None,
        "credentials_stored": bool(record.get("username") or record.get("password")),
        "options": record.get("options"),
    }
    if kind == "nfs":
        out["mounts_dir"] = record.get("mounts_dir")
    return out

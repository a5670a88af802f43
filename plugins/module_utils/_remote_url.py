"""Parse and format backup remote URLs in Xen Orchestra's grammar (``xo-remote-parser``).

Forms accepted (XO stores the same strings, so remotes exported from XO work unchanged)::

    file:///path[?opts]
    nfs://host[:port]:/path[?opts]
    smb://[user[:password]@]domain\\\\host\\share<NUL>sub\\dir[?opts]
    s3://[key:secret@]host[:port]/bucket[/prefix][?opts][#region]     (s3+http:// for plain HTTP)

In the SMB form XO separates the share from its sub-folder with a NUL character (``"\\0"`` in a YAML
double-quoted string); ``\\\\host\\share\\sub`` without the NUL is accepted too. SMB credentials are
raw text; S3 key and secret are percent-encoded. Options are a query string whose values are JSON
(``useVhdDirectory=true``, ``encryptionKey=%22…%22``); an empty value means ``false`` as in XO.

Credentials never stay in the URL text you log: :meth:`RemoteUrl.redacted` masks the password and any
secret-looking option, and :attr:`RemoteUrl.credentials` holds them apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Tuple
from urllib.parse import quote, unquote

SCHEMES = ("file", "nfs", "smb", "s3", "s3+http")
BACKUP_DIR = "xo-vm-backups"
MASK = "***"
# Option names whose values are secrets (XO's encryptionKey, and anything named like a secret).
_SECRET_OPTION = re.compile(r"pass|secret|token|key", re.IGNORECASE)
_QUERY_SAFE = "-_.!~*'()"  # what Node's querystring.escape leaves alone


class RemoteUrlError(ValueError):
    """A remote URL that cannot be used; the message says what is wrong and how to write it."""


@dataclass(frozen=True)
class Credentials:
    """User name and password (SMB) or access key and secret (S3)."""

    username: str
    password: str = field(default="", repr=False)

    def __repr__(self):
        return f"Credentials(username={self.username!r}, password={MASK!r})"


@dataclass(frozen=True)
class RemoteUrl:
    """A parsed remote. ``path`` uses ``/`` separators for every kind.

    file/nfs: ``path`` is absolute (``/srv/backups``). smb: ``share`` plus ``path`` relative to it
    (``''`` for the share root). s3: ``bucket`` plus ``path``, the prefix inside it (``''`` for none).
    """

    type: str
    path: str
    host: Optional[str] = None
    port: Optional[int] = None
    share: Optional[str] = None
    domain: Optional[str] = None
    bucket: Optional[str] = None
    region: Optional[str] = None
    protocol: Optional[str] = None  # s3 only: "https" or "http"
    options: Dict[str, Any] = field(default_factory=dict, hash=False)
    credentials: Optional[Credentials] = None

    # -- formatting -------------------------------------------------------------------------
    def format(self, include_credentials: bool = True) -> str:
        """The URL text as XO writes it (with the credentials unless told otherwise)."""
        return _format(self, include_credentials, redact=False)

    def redacted(self) -> str:
        """The URL with the password/secret and secret-looking options replaced by ``***``.

        For display: an SMB sub-folder follows the share after a backslash rather than XO's NUL.
        """
        return _format(self, True, redact=True)

    def without_credentials(self) -> RemoteUrl:
        return replace(self, credentials=None)

    def with_credentials(self, credentials: Optional[Credentials]) -> RemoteUrl:
        return replace(self, credentials=credentials)

    def to_dict(self) -> Dict[str, Any]:
        """A redacted, JSON-ready description for module results."""
        out = {"type": self.type, "url": self.redacted(), "path": self.path}
        for key in ("host", "port", "share", "domain", "bucket", "region", "protocol"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.credentials is not None:
            out["username"] = self.credentials.username
        out["options"] = _redact_options(self.options)
        return out

    def __str__(self):
        return self.redacted()

    def __repr__(self):
        return f"RemoteUrl({self.redacted()!r})"


# -- parsing ----------------------------------------------------------------------------------
def parse(url: str) -> RemoteUrl:
    """Parse ``url``; raise :class:`RemoteUrlError` with one sentence saying how to fix it."""
    if not isinstance(url, str) or "://" not in url:
        raise RemoteUrlError(
            f"{_show(url)} is not a remote URL: write scheme://…, for example file:///srv/backups, "
            "nfs://server:/export, smb://user:password@WORKGROUP\\\\server\\share or s3://KEY:SECRET@host/bucket."
        )
    scheme, rest = url.split("://", 1)
    if scheme not in SCHEMES:
        hint = " (Azure remotes are not supported by this collection)" if scheme == "azure" else ""
        raise RemoteUrlError(
            f"unknown remote scheme {scheme!r}{hint}: use one of file://, nfs://, smb://, s3:// or s3+http://."
        )
    if scheme == "file":
        parsed = _parse_file(rest)
    elif scheme == "nfs":
        parsed = _parse_nfs(rest)
    elif scheme == "smb":
        parsed = _parse_smb(rest)
    else:
        parsed = _parse_s3(scheme, rest)
    _check_not_backup_dir(parsed)
    return parsed


def _parse_file(rest):
    path, opts = _split_query(rest)
    if not path.startswith("/"):
        raise RemoteUrlError(
            f"file remote path {path!r} is relative: file URLs need an absolute path with three slashes, "
            f"e.g. file:///{path or 'srv/backups'}."
        )
    return RemoteUrl(type="file", path=_clean_abs_path(path, "file"), options=_parse_options(opts))


_NFS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/?@\[\]\s]+):(?:(?P<port>\d+):)?(?P<path>[^:]*)$")


def _parse_nfs(rest):
    text, opts = _split_query(rest)
    m = _NFS.match(text)
    if not m:
        raise RemoteUrlError(
            f"cannot read NFS URL nfs://{text}: write nfs://server:/export/path or nfs://server:2049:/export/path."
        )
    path = m.group("path")
    if not path.startswith("/"):
        raise RemoteUrlError(
            f"NFS export path {path!r} must be absolute: write nfs://{m.group('host')}:/{path or 'export'}."
        )
    return RemoteUrl(
        type="nfs",
        host=m.group("host"),
        port=_port(m.group("port"), f"nfs://{text}"),
        path=_clean_abs_path(path, "NFS export"),
        options=_parse_options(opts),
    )


# user (no ':'), optional password (anything, last '@' wins), domain, then two backslashes.
_SMB = re.compile(
    r"^(?:(?P<user>[^:]*?)(?::(?P<password>.*))?@)?(?P<domain>[^@\\]*)\\\\(?P<unc>[^\0?]*)"
    r"(?:\0(?P<sub>[^?]*))?(?:\?(?P<opts>[^?]*))?$",
    re.DOTALL,
)
_SMB_EXAMPLE = "smb://user:password@WORKGROUP\\\\server\\share"


def _parse_smb(rest):
    m = _SMB.match(rest)
    if not m:
        raise RemoteUrlError(
            f"cannot read SMB URL {_redact_smb_text(rest)}: write {_SMB_EXAMPLE}, adding a NUL character and "
            "the sub-folder (\\0sub\\dir) when the backups are not at the share root."
        )
    if not m.group("domain"):
        raise RemoteUrlError(
            "the SMB URL has no domain before \\\\server: write WORKGROUP when the server has no domain, "
            f"e.g. {_SMB_EXAMPLE}."
        )
    unc = [p for p in re.split(r"[\\/]", m.group("unc")) if p]
    if len(unc) < 2:
        raise RemoteUrlError(f"the SMB URL names no share after the server: write {_SMB_EXAMPLE}.")
    if m.group("sub") is None and len(unc) > 2 and unc[2].startswith("0"):
        raise RemoteUrlError(
            "the SMB URL contains a backslash followed by 0 after the share: XO separates the share from the "
            'sub-folder with a NUL character ("\\0" in a YAML double-quoted string), not the two characters '
            "\\ and 0; write the NUL, or leave it out (\\\\server\\share\\sub)."
        )
    host, share = unc[0], unc[1]
    for part in (host, share):
        if part in (".", ".."):
            raise RemoteUrlError(f"the SMB server or share cannot be {part!r}: write {_SMB_EXAMPLE}.")
    sub = unc[2:] + [p for p in re.split(r"[\\/]", m.group("sub") or "") if p]
    user = m.group("user")
    creds = None
    if user is not None:
        if not user:
            raise RemoteUrlError(f"the SMB URL has '@' but no user name before it: write {_SMB_EXAMPLE}.")
        creds = Credentials(user, m.group("password") or "")
    return RemoteUrl(
        type="smb",
        host=host,
        share=share,
        domain=m.group("domain"),
        path=_clean_rel_parts(sub, "SMB sub-folder"),
        options=_parse_options(m.group("opts") or ""),
        credentials=creds,
    )


def _parse_s3(scheme, rest):
    rest, _, region = rest.partition("#")
    rest, opts = _split_query(rest)
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    creds = None
    if at:
        key, colon, secret = userinfo.partition(":")
        if not key or not colon:
            raise RemoteUrlError(
                "S3 credentials must be written KEY:SECRET@ (percent-encoded): "
                "e.g. s3://AKIAEXAMPLE:wJalr%2FEXAMPLE@s3.example.com/bucket."
            )
        creds = Credentials(unquote(key), unquote(secret))
    m = re.match(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+)(?::(?P<port>\d+))?$", hostport)
    if not m:
        raise RemoteUrlError(
            f"cannot read the S3 endpoint {hostport!r}: write {scheme}://KEY:SECRET@host[:port]/bucket/prefix."
        )
    parts = [p for p in path.split("/") if p]
    if not slash or not parts:
        raise RemoteUrlError(
            f"the S3 URL names no bucket: write {scheme}://KEY:SECRET@{hostport}/bucket or …/bucket/prefix."
        )
    bucket = parts[0]
    if bucket in (".", ".."):
        raise RemoteUrlError(f"{bucket!r} is not a bucket name: write {scheme}://KEY:SECRET@{hostport}/bucket.")
    return RemoteUrl(
        type="s3",
        protocol="https" if scheme == "s3" else "http",
        host=m.group("host"),
        port=_port(m.group("port"), hostport),
        bucket=bucket,
        path=_clean_rel_parts(parts[1:], "S3 prefix"),
        region=region or None,
        options=_parse_options(opts),
        credentials=creds,
    )


def _split_query(text) -> Tuple[str, str]:
    path, _, opts = text.partition("?")
    return path, opts


def _port(text, where):
    if text is None:
        return None
    port = int(text)
    if not 0 < port < 65536:
        raise RemoteUrlError(f"port {text} in {where} is out of range: use a port between 1 and 65535.")
    return port


def _check_parts(parts, what):
    for part in parts:
        if part == "..":
            raise RemoteUrlError(f"the {what} contains '..': write the real path without parent-directory segments.")
        if "\0" in part:
            raise RemoteUrlError(f"the {what} contains a NUL character: remove it.")


def _clean_abs_path(path, what):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    _check_parts(parts, f"{what} path")
    return "/" + "/".join(parts)


def _clean_rel_parts(parts, what):
    parts = [p for p in parts if p not in ("", ".")]
    _check_parts(parts, what)
    return "/".join(parts)


def _check_not_backup_dir(remote):
    last = remote.path.rstrip("/").rsplit("/", 1)[-1]
    if not last:
        last = remote.bucket if remote.type == "s3" else remote.share
    if last == BACKUP_DIR:
        raise RemoteUrlError(
            f"the remote URL ends in {BACKUP_DIR}: point it at the directory that contains {BACKUP_DIR} "
            f"(for example {_format(_parent(remote), True, redact=True)}), not at {BACKUP_DIR} itself."
        )


def _parent(remote):
    if not remote.path.strip("/"):
        return remote
    head = remote.path.rstrip("/").rsplit("/", 1)[0]
    if remote.type in ("file", "nfs") and not head:
        head = "/"
    return replace(remote, path=head)


def _parse_options(text) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    for item in text.split("&"):
        if not item:
            continue
        raw_key, _, raw_value = item.partition("=")
        key, value = unquote(raw_key.replace("+", " ")), unquote(raw_value.replace("+", " "))
        if key in options:
            raise RemoteUrlError(f"option {key!r} is given twice in the remote URL: keep one of them.")
        if value == "":
            options[key] = False  # XO reads an empty value as false (legacy saved URLs)
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            shown = MASK if _SECRET_OPTION.search(key) else repr(value)
            raise RemoteUrlError(
                f"option {key!r} has value {shown}, which is not JSON: write true/false or a number, "
                f"or a string in double quotes encoded as %22text%22."
            ) from None
    return options


# -- formatting -------------------------------------------------------------------------------
def _redact_options(options):
    return {k: (MASK if _SECRET_OPTION.search(k) else v) for k, v in options.items()}


def _format_options(options, redact):
    if redact:
        options = _redact_options(options)
    items = []
    for key, value in options.items():
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        items.append(f"{quote(key, safe=_QUERY_SAFE)}={quote(text, safe=_QUERY_SAFE)}")
    return ("?" + "&".join(items)) if items else ""


def _format(remote: RemoteUrl, include_credentials: bool, redact: bool) -> str:
    creds = remote.credentials if include_credentials else None
    opts = _format_options(remote.options, redact)
    if remote.type == "file":
        return f"file://{remote.path}{opts}"
    if remote.type == "nfs":
        port = f"{remote.port}:" if remote.port is not None else ""
        return f"nfs://{remote.host}:{port}{remote.path}{opts}"
    if remote.type == "smb":
        auth = ""
        if creds is not None:
            auth = f"{creds.username}:{MASK if redact else creds.password}@"
        sub = remote.path.replace("/", "\\")
        # XO's NUL separator; the redacted (display) form uses a backslash instead, which reads well,
        # survives logs and JSON, and parses to the same remote
        sep = "\\" if redact and sub else "" if redact else "\0"
        return f"smb://{auth}{remote.domain}\\\\{remote.host}\\{remote.share}{sep}{sub}{opts}"
    if remote.type == "s3":
        scheme = "s3" if remote.protocol != "http" else "s3+http"
        auth = ""
        if creds is not None:
            secret = MASK if redact else quote(creds.password, safe=_QUERY_SAFE)
            auth = f"{quote(creds.username, safe=_QUERY_SAFE)}:{secret}@"
        port = f":{remote.port}" if remote.port is not None else ""
        prefix = f"/{remote.path}" if remote.path else ""
        region = f"#{remote.region}" if remote.region else ""
        return f"{scheme}://{auth}{remote.host}{port}/{remote.bucket}{prefix}{opts}{region}"
    raise RemoteUrlError(f"unknown remote type {remote.type!r}: use file, nfs, smb or s3.")


def format_url(remote: RemoteUrl, include_credentials: bool = True) -> str:
    """Same as :meth:`RemoteUrl.format`."""
    return remote.format(include_credentials)


def redact_url(url: str) -> str:
    """Best-effort redaction of a URL string, even one that does not parse (for error messages)."""
    try:
        return parse(url).redacted()
    except RemoteUrlError:
        return _show(url)


def _redact_smb_text(rest):
    return "smb://" + re.sub(r"^([^:@]*):.*@", r"\1:" + MASK + "@", rest, flags=re.DOTALL).replace("\0", "\\0")


def _show(url):
    if not isinstance(url, str):
        return repr(url)
    # hide anything between "://" and the last "@" that looks like user:secret
    return repr(re.sub(r"(://[^:/@]*):[^/]*@", r"\1:" + MASK + "@", url, flags=re.DOTALL).replace("\0", "\\0"))

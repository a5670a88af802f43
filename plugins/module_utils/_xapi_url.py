"""XAPI endpoint URLs: parse the ``hostname`` option, follow a pool master, build handler URLs.

A bare host name means HTTPS: XAPI serves its API on 443 and plain HTTP only where an admin
enabled it, so ``http://`` is used only when written out. Handler URLs (``/export`` …) carry the
session id in their query; :class:`HandlerUrl` keeps it out of every text meant for people.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode, urlsplit

MASK = "***"
_SESSION_QUERY = re.compile(r"(session_id=)[^&#\s'\"]+")


class XapiUrlError(ValueError):
    """The ``hostname`` option cannot be turned into a XAPI URL; the message says how to write it."""


class XapiUrl:
    """``scheme://host[:port]`` of one XAPI host; immutable, compared by value."""

    __slots__ = ("host", "port", "scheme")

    def __init__(self, scheme, host, port=None):
        self.scheme = scheme
        self.host = host
        self.port = port

    @property
    def netloc(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @property
    def url(self):
        return f"{self.scheme}://{self.netloc}"

    @property
    def tls(self):
        return self.scheme == "https"

    def with_host(self, host):
        """The same scheme and port on another host (a pool master named by ``HOST_IS_SLAVE``)."""
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise XapiUrlError("the pool master's address is empty")
        return XapiUrl(self.scheme, host, self.port)

    def __eq__(self, other):
        return isinstance(other, XapiUrl) and (self.scheme, self.host, self.port) == (
            other.scheme,
            other.host,
            other.port,
        )

    def __hash__(self):
        return hash((self.scheme, self.host, self.port))

    def __str__(self):
        return self.url

    def __repr__(self):
        return f"XapiUrl({self.url!r})"


def parse_xapi_url(hostname):
    """Turn the ``hostname`` option (``xcp1``, ``xcp1:8443``, ``https://10.0.0.5``…) into an :class:`XapiUrl`."""
    text = (hostname or "").strip()
    if not text:
        raise XapiUrlError("hostname is empty: give the pool master's name or address, e.g. xcp1.example.org")
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise XapiUrlError(f"hostname {_safe(hostname)!r} is not a valid host[:port] or URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise XapiUrlError(
            f"hostname {_safe(hostname)!r} uses the scheme {scheme}://; XAPI speaks https:// (or http:// where "
            "enabled), so write a bare host name or an https:// URL"
        )
    if "@" in parts.netloc:
        # Never echo the text: it may hold a password.
        raise XapiUrlError("hostname must not contain credentials (user@host); use the username and password options")
    if not parts.hostname:
        raise XapiUrlError(f"hostname {_safe(hostname)!r} has no host part")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise XapiUrlError(
            f"hostname {_safe(hostname)!r} has a path or query; XAPI listens at the root, so give only "
            "scheme://host[:port]"
        )
    return XapiUrl(scheme, parts.hostname, port)


def _safe(text):
    return str(text).split("@")[-1]


class HandlerUrl:
    """The URL of a XAPI HTTP handler, e.g. ``/export?ref=…&session_id=…``.

    ``url`` is what goes on the wire; ``str()`` and ``repr()`` mask the session id so the object can
    be logged, put in exception texts or returned to Ansible.
    """

    __slots__ = ("_session_id", "path", "url")

    def __init__(self, url, path, session_id):
        self.url = url
        self.path = path
        self._session_id = session_id

    def redact(self, text):
        """``text`` (an exception message from requests, say) with this URL's session id masked."""
        return redact_secrets(text, [self._session_id])

    def __str__(self):
        return self.redact(self.url)

    def __repr__(self):
        return f"HandlerUrl({str(self)!r})"


def handler_url(base, path, session_id, /, **query):
    """Build the URL of handler ``path`` (``/export``) on ``base`` (an :class:`XapiUrl`), authenticated by session id.

    Query values that are ``None`` are left out; booleans become ``true``/``false`` as xapi expects.
    """
    if not path.startswith("/"):
        path = "/" + path
    items = []
    for key, value in query.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        items.append((key, text))
    items.append(("session_id", session_id))
    url = f"{base.url}{quote(path)}?{urlencode(items)}"
    return HandlerUrl(url, path, session_id)


def redact_secrets(text, secrets=()):
    """Mask ``session_id=…`` query values and any of ``secrets`` (session refs, passwords) in ``text``."""
    text = _SESSION_QUERY.sub(r"\1" + MASK, str(text))
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
            # urlencode turns ':' into '%3A'; mask that spelling too.
            encoded = quote(secret, safe="")
            if encoded != secret:
                text = text.replace(encoded, MASK)
    return text

"""TLS and socket settings shared by XML-RPC calls and the HTTP handlers (``/export`` …).

The XenAPI SDK takes neither a CA bundle nor a timeout, so we hand it an ``xmlrpc.client``
transport that carries both; :func:`http_session` applies the same settings to ``requests``.
"""

from __future__ import annotations

import os
import ssl
import xmlrpc.client  # noqa: S411 - the XAPI wire protocol is XML-RPC; the peer is the pool we log into

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # reported by the module base with missing_required_lib
    requests = None
    HAS_REQUESTS = False


class XapiTlsConfigError(ValueError):
    """``ca_path`` cannot be used; the message names the file and what is wrong with it."""


def _check_ca_path(ca_path):
    if not os.path.exists(ca_path):
        raise XapiTlsConfigError(
            f"ca_path {ca_path} does not exist; give the PEM file of the CA that signed the pool's certificate"
        )


def ssl_context(validate_certs=True, ca_path=None):
    """The client TLS context for ``validate_certs`` and ``ca_path`` (a PEM file or an OpenSSL hashed directory)."""
    if not validate_certs:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not ca_path:
        return ssl.create_default_context()
    _check_ca_path(ca_path)
    try:
        if os.path.isdir(ca_path):
            return ssl.create_default_context(capath=ca_path)
        return ssl.create_default_context(cafile=ca_path)
    except (ssl.SSLError, OSError) as e:
        raise XapiTlsConfigError(f"ca_path {ca_path} holds no usable PEM certificate ({e})") from None


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout):
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self.timeout  # read by connect(); also covers reused keep-alive connections
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        return conn


class _TimeoutSafeTransport(xmlrpc.client.SafeTransport):
    def __init__(self, timeout, context):
        super().__init__(context=context)
        self.timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        return conn


def xmlrpc_transport(tls, timeout, validate_certs=True, ca_path=None):
    """An ``xmlrpc.client`` transport for ``XenAPI.Session(uri, transport=…)`` with a socket timeout in seconds."""
    if tls:
        return _TimeoutSafeTransport(timeout, ssl_context(validate_certs, ca_path))
    return _TimeoutTransport(timeout)


def requests_verify(validate_certs=True, ca_path=None):
    """The ``verify`` value for requests that matches :func:`ssl_context`."""
    if not validate_certs:
        return False
    if ca_path:
        _check_ca_path(ca_path)
        return ca_path
    return True


if HAS_REQUESTS:

    class XapiHttpSession(requests.Session):
        """A ``requests.Session`` whose requests default to the connection's timeout."""

        def __init__(self, timeout):
            super().__init__()
            self.timeout = timeout

        def request(self, method, url, **kwargs):
            kwargs.setdefault("timeout", self.timeout)
            # Passed per request: requests lets REQUESTS_CA_BUNDLE override a session-level verify.
            kwargs.setdefault("verify", self.verify)
            # HandlerUrl objects go on the wire as their real URL.
            return super().request(method, getattr(url, "url", url), **kwargs)


def http_session(timeout, validate_certs=True, ca_path=None):
    """A ``requests.Session`` with the same certificate checks and timeout as the XML-RPC connection."""
    if not HAS_REQUESTS:
        raise RuntimeError("the Python library requests is required for XAPI HTTP transfers")
    session = XapiHttpSession(timeout)
    session.verify = requests_verify(validate_certs, ca_path)
    if session.verify is False:
        # The user switched checks off on purpose; one warning per request would only bury real output.
        import urllib3  # noqa: PLC0415 - a dependency of requests

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return session

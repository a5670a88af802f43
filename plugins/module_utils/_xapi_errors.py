"""Turn XAPI failures and connection problems into one sentence an operator can act on.

Each sentence says what failed, on which object (by name when the caller can resolve it cheaply)
and what to do. The raw ``[CODE, params…]`` stays available on the exception for automation.
Nothing here ever sees the password; session refs are masked by the client before raising.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import ssl
import xmlrpc.client  # noqa: S411 - XAPI's wire protocol; only its exception classes are used here

_REF_PREFIX = "OpaqueRef:"
_NULL_REF = "OpaqueRef:NULL"
_ROLES = re.compile(r"Roles with this permission:\s*([^)]*)\)?")
# Classes whose records carry a name_label worth showing instead of a ref.
NAMED_CLASSES = ("VM", "VDI", "SR", "host", "pool", "network")


class XapiError(Exception):
    """A failure worth one sentence; ``code``/``params`` hold XAPI's ``ErrorDescription`` when there is one."""

    def __init__(self, message, code=None, params=()):
        super().__init__(message)
        self.message = message
        self.code = code
        self.params = [str(p) for p in params]

    def result(self):
        """Extra keys for ``fail_json`` so playbooks can branch on the XAPI error code."""
        return {"xapi_error": [self.code, *self.params]} if self.code else {}

    def __str__(self):
        return self.message


class XapiConnectionError(XapiError):
    """The XAPI endpoint could not be reached, refused TLS, or did not answer in time."""


class XapiTaskError(XapiError):
    """An asynchronous XAPI task failed, was cancelled, or did not finish in time."""


def is_ref(value):
    return isinstance(value, str) and value.startswith(_REF_PREFIX) and value != _NULL_REF


def describe_object(cls, ref, name_of=None):
    """``VM 'web-01'`` when ``name_of(cls, ref)`` finds a name, else ``VM OpaqueRef:…``."""
    name = None
    if name_of is not None and cls in NAMED_CLASSES and is_ref(ref):
        try:
            name = name_of(cls, ref)
        except Exception:  # a name is a nicety; never let it hide the real error
            name = None
    return f"{cls} {name!r}" if name else f"{cls} {ref}"


def describe_call(method, args=(), name_of=None):
    """``VM.start on VM 'web-01'``: the method and, when its first argument is a ref, the object it targets."""
    name = method[len("Async.") :] if method.startswith("Async.") else method
    cls = name.split(".", 1)[0]
    if args and is_ref(args[0]) and cls in NAMED_CLASSES:
        return f"{name} on {describe_object(cls, args[0], name_of)}"
    return name


def _join_or(text):
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) <= 1:
        return text.strip()
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def describe_failure(details, action, username=None, url=None, name_of=None, sr=None):
    """One sentence for XAPI ``ErrorDescription`` ``details`` raised while doing ``action``.

    ``action`` reads like "VM.start on VM 'web-01'" or "Login to https://xcp1 as root"; ``sr`` is
    the ref of the storage repository the call wrote to, when the caller knows it.
    """
    details = [str(d) for d in (details or ["UNKNOWN_ERROR"])]
    code, params = details[0], details[1:]

    def p(i):
        return params[i] if len(params) > i else ""

    def obj(cls, ref):
        return describe_object(cls, ref, name_of)

    if code == "SESSION_AUTHENTICATION_FAILED":
        said = f" (XAPI said: {p(1)})" if p(1) else ""
        return (
            f"{action} failed: wrong user name or password{said}. Check the username and password options "
            "(or XAPI_USERNAME and XAPI_PASSWORD)."
        )
    if code == "RBAC_PERMISSION_DENIED":
        m = _ROLES.search(p(1))
        roles = f", which only the roles {m.group(1).strip()} have" if m and m.group(1).strip() else ""
        who = f"user {username}" if username else "this user"
        return (
            f"{action} was refused: {who} lacks the permission {p(0)}{roles}. Use an account with one of "
            "those roles, or have a pool admin grant one."
        )
    if code == "HANDLE_INVALID":
        return (
            f"{action} failed: the {p(0) or 'object'} {p(1)} does not exist (any more); it was probably deleted "
            "meanwhile. Run the task again so it reads the current pool state."
        )
    if code == "UUID_INVALID":
        return (
            f"{action} failed: no {p(0) or 'object'} has the UUID {p(1)}. Check the UUID "
            "(xapi.proxy.vm_info lists them)."
        )
    if code == "VM_BAD_POWER_STATE":
        return (
            f"{action} failed: {obj('VM', p(0))} is {p(2)} but this needs it {_join_or(p(1))}. Change its power "
            "state first, or retry when it is."
        )
    if code in ("SR_BACKEND_FAILURE_44", "SR_FULL"):
        where = obj("SR", sr) if sr else "the storage repository"
        why = p(1) if code == "SR_BACKEND_FAILURE_44" and p(1) else "not enough free space"
        need = f" ({p(0)} bytes requested, {p(1)} available)" if code == "SR_FULL" else ""
        return (
            f"{action} failed: {where} is full ({why}){need}. Free space on it (old snapshots, unused disks) "
            "or use another SR."
        )
    if code == "HOST_IS_SLAVE":
        return (
            f"{action} failed: {url or 'this host'} is a pool member, not the pool master; the master is {p(0)}. "
            "Set hostname to the master."
        )
    if code == "SESSION_INVALID":
        # The parameter is the session ref: never shown.
        return f"{action} failed: the XAPI session expired or was logged out (SESSION_INVALID). Run the task again."
    if code == "OPERATION_NOT_ALLOWED":
        return f"{action} was not allowed by XAPI: {p(0)}."
    if code == "OTHER_OPERATION_IN_PROGRESS":
        return (
            f"{action} failed: {obj(p(0), p(1))} is busy with another operation ({p(2) or 'unknown'}). "
            "Wait for it to finish and retry."
        )
    if code == "VDI_IN_USE":
        return (
            f"{action} failed: {obj('VDI', p(0))} is in use, so {p(1) or 'this operation'} is not possible now. "
            "Detach it or wait until it is released."
        )
    if code in ("VM_IS_TEMPLATE", "VM_IS_SNAPSHOT"):
        kind = "a template" if code == "VM_IS_TEMPLATE" else "a snapshot"
        return f"{action} failed: {obj('VM', p(0))} is {kind}, which this operation does not accept."
    if code == "TASK_CANCELLED":
        return f"{action} was cancelled before it finished."
    if code == "MESSAGE_METHOD_UNKNOWN":
        return (
            f"{action} failed: XAPI at {url or 'this host'} does not know the call {p(0)}; the pool runs a release "
            "too old for this collection. Update XCP-ng/XenServer."
        )
    if code == "INTERNAL_ERROR":
        return f"{action} failed: XAPI reported an internal error ({p(0)}). Check /var/log/xensource.log on the host."
    shown = f" ({', '.join(params)})" if params else ""
    return f"{action} failed with XAPI error {code}{shown}."


def _ssl_hint(validate_certs, ca_path):
    if ca_path:
        return (
            f"The certificate was not issued by the CA in ca_path ({ca_path}), or does not name this host: give "
            "the CA that signed the pool's certificate in ca_path, and use a host name the certificate lists."
        )
    return (
        "XCP-ng and XenServer hosts ship a self-signed certificate: give that certificate (or the CA that signed "
        "it) as ca_path, or set validate_certs=false on a network you trust."
    )


def describe_connection_error(exc, url, timeout=None, validate_certs=True, ca_path=None):
    """One sentence for a socket, TLS or HTTP error met while talking to ``url``."""
    where = str(url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or str(exc)
        return f"TLS certificate check of {where} failed ({reason}). {_ssl_hint(validate_certs, ca_path)}"
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({getattr(exc, 'reason', None) or exc}). Check that this port "
            "serves HTTPS; write http:// in hostname only if XAPI really listens there without TLS."
        )
    if isinstance(exc, (socket.timeout, TimeoutError)) or (
        isinstance(exc, xmlrpc.client.Fault) and exc.faultCode == 504
    ):
        limit = f" within {timeout:g} seconds" if timeout else " in time"
        return (
            f"{where} did not answer{limit}. Check that the host is up and reachable from the machine running "
            "this module (firewall, routing), or raise timeout if the pool is just slow."
        )
    if isinstance(exc, socket.gaierror):
        return f"Cannot resolve the host name of {where} ({exc.strerror or exc}). Check hostname."
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"Cannot connect to {where}: connection refused. Check hostname and port (XAPI listens on 443) and "
            "that xapi runs on that host."
        )
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return (
            f"{where} closed the connection unexpectedly ({exc}). If that port serves plain HTTP or another "
            "service, fix hostname; otherwise retry."
        )
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return (
            f"{where} answered HTTP {exc.errcode} {exc.errmsg} instead of an XML-RPC response. Check that hostname "
            "points at a XAPI host."
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"Cannot reach {where} ({exc.strerror}). Check the network path from this machine to the pool."
    if isinstance(exc, OSError):
        return f"Cannot talk to {where} ({exc.strerror or exc}). Check hostname and the network."
    if isinstance(exc, (http.client.HTTPException, xmlrpc.client.Error)):
        return f"{where} sent a response that is not XAPI's ({exc}). Check that hostname points at a XAPI host."
    return f"Talking to {where} failed ({type(exc).__name__}: {exc})."


# Errors that mean "no usable connection" rather than "XAPI said no".
CONNECTION_ERRORS = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)

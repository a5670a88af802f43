"""A logged-in XAPI session: login (following the pool master once), calls with readable errors, logout.

Use it as a context manager so the session is logged out whatever happens::

    with XapiClient(options) as xapi:
        vms = xapi.call("VM.get_all_records")
"""

from __future__ import annotations

import contextlib
import xmlrpc.client  # noqa: S411 - XAPI's wire protocol; the peer is the pool we authenticate to
from functools import reduce
from xml.parsers.expat import ExpatError

from ._xapi_errors import (
    CONNECTION_ERRORS,
    XapiConnectionError,
    XapiError,
    describe_call,
    describe_connection_error,
    describe_failure,
)
from ._xapi_transport import http_session, xmlrpc_transport
from ._xapi_url import handler_url, redact_secrets

try:
    import XenAPI

    HAS_XENAPI = True
except ImportError:  # reported by the module base with missing_required_lib
    XenAPI = None
    HAS_XENAPI = False

ORIGINATOR = "xapi.proxy"
API_VERSION = "1.0"
# A logout after a failure must not wait the full timeout a second time.
LOGOUT_TIMEOUT = 10
MIN_MASKED_LENGTH = 4


class XapiClient:
    """One XAPI session for :class:`ConnectionOptions` ``options``.

    ``url`` is the host actually used: the pool master, after a ``HOST_IS_SLAVE`` redirect.
    """

    def __init__(self, options, originator=ORIGINATOR):
        if not HAS_XENAPI:
            raise XapiError("the Python library XenAPI is not installed on the host running this module")
        self.options = options
        self.originator = originator
        self.url = options.url
        self.redirected_from = None
        self._session = None
        self._transport = None

    # -- session lifecycle --------------------------------------------------------------------
    def __enter__(self):
        self.login()
        return self

    def __exit__(self, *exc):
        self.logout()
        return False

    @property
    def session_id(self):
        """The session ref (a secret: it grants the user's rights). ``None`` when logged out."""
        return self._session._session if self._session is not None else None

    def login(self):
        """Log in, following ``HOST_IS_SLAVE`` to the master it names, once."""
        try:
            self._login_at(self.url)
            return
        except XenAPI.Failure as e:
            details = list(e.details)
            if not (details and details[0] == "HOST_IS_SLAVE" and len(details) > 1):
                raise self._login_error(details) from None
            master = self.url.with_host(details[1])
        # Retry outside the except block so a second failure does not chain the first one.
        first = self.url
        self.redirected_from, self.url = first, master
        try:
            self._login_at(master)
        except XenAPI.Failure as e:
            details = list(e.details)
            if details and details[0] == "HOST_IS_SLAVE":
                named = details[1] if len(details) > 1 else "?"
                raise self.failure(
                    f"Login to {first} as {self.options.username} failed: it is a pool member naming {master.host} "
                    f"as the pool master, but {master.host} says the master is {named}. The pool may be electing "
                    "a new master; retry later or set hostname to the current master.",
                    details,
                ) from None
            raise self._login_error(details) from None

    def _login_at(self, url):
        o = self.options
        self._transport = xmlrpc_transport(url.tls, o.timeout, o.validate_certs, o.ca_path)
        session = XenAPI.Session(url.url, transport=self._transport)
        try:
            session.login_with_password(o.username, o.password, API_VERSION, self.originator)
        except XenAPI.Failure:
            raise
        except xmlrpc.client.Fault as e:
            raise self._connection_error(e, url) from None
        except (*CONNECTION_ERRORS, ExpatError) as e:
            raise self._connection_error(e, url) from None
        self._session = session

    def _login_error(self, details):
        action = f"Login to {self.url} as {self.options.username}"
        return self.failure(describe_failure(details, action, url=self.url), details)

    def _connection_error(self, exc, url):
        o = self.options
        text = describe_connection_error(exc, url, o.timeout, o.validate_certs, o.ca_path)
        return XapiConnectionError(self._scrub(text))

    def logout(self):
        """End the session; never raises (a dead connection must not hide the task's real outcome)."""
        session, self._session = self._session, None
        if session is None:
            return
        if self._transport is not None:
            self._transport.timeout = min(self.options.timeout, LOGOUT_TIMEOUT)
        with contextlib.suppress(Exception):
            session.xenapi.session.logout()

    # -- calls ----------------------------------------------------------------------------------
    @property
    def xenapi(self):
        """The SDK's ``session.xenapi`` proxy, for callers that handle ``XenAPI.Failure`` themselves."""
        if self._session is None:
            raise XapiError("not logged in to XAPI")
        return self._session.xenapi

    def call(self, method, *args, sr=None):
        """Call ``method`` (``"VM.get_record"``, ``"Async.VM.start"``) and turn failures into :class:`XapiError`.

        ``sr`` names the storage repository a call writes to, so an "SR full" error can say which.
        """
        func = reduce(getattr, method.split("."), self.xenapi)
        try:
            return func(*args)
        except XenAPI.Failure as e:
            details = list(e.details)
            action = describe_call(method, args, self.name_of)
            text = describe_failure(details, action, self.options.username, self.url, self.name_of, sr=sr)
            raise self.failure(text, details) from None
        except xmlrpc.client.Fault as e:
            if e.faultCode == 504:
                raise self._connection_error(e, self.url) from None
            action = describe_call(method, args)
            raise XapiError(self._scrub(f"{action} failed: {e.faultString}")) from None
        except (*CONNECTION_ERRORS, ExpatError) as e:
            raise self._connection_error(e, self.url) from None

    def name_of(self, cls, ref):
        """``name_label`` of ``ref``, or ``None`` when it cannot be read (deleted, no permission…)."""
        try:
            return reduce(getattr, (cls, "get_name_label"), self.xenapi)(ref) or None
        except Exception:
            return None

    def get_all_records(self, cls):
        return self.call(f"{cls}.get_all_records")

    # -- HTTP handlers --------------------------------------------------------------------------
    def handler_url(self, path, /, **query):
        """URL of a XAPI HTTP handler (``/export``…) on the host in use; ``str()`` of it hides the session."""
        return handler_url(self.url, path, self.session_id, **query)

    def http_session(self):
        """A ``requests.Session`` with this connection's certificate checks and timeout."""
        o = self.options
        return http_session(o.timeout, o.validate_certs, o.ca_path)

    # -- secrets --------------------------------------------------------------------------------
    def _secrets(self):
        # Very short passwords are left alone: masking "a" everywhere would garble every message,
        # and no code path here puts the password into a message in the first place.
        password = self.options.password if len(self.options.password or "") >= MIN_MASKED_LENGTH else None
        return [s for s in (self.session_id, password) if s]

    def scrub(self, text):
        """``text`` with this connection's session id and password masked."""
        return redact_secrets(text, self._secrets())

    _scrub = scrub  # older spelling, kept for callers that use it

    def failure(self, text, details, cls=XapiError):
        """An exception of class ``cls`` for ``text`` and XAPI ``details``, with secrets masked in both."""
        details = [self._scrub(d) for d in details] or ["UNKNOWN_ERROR"]
        return cls(self._scrub(text), details[0], details[1:])

"""The base every XAPI module builds on: merged options, library checks, errors → ``fail_json``.

A module stays thin::

    module = XapiModule(argument_spec={...}, supports_check_mode=True, libraries=("XenAPI", "jmespath"))
    with module.xapi() as xapi:
        result = do_the_work(xapi, module.params)
    module.exit_json(changed=False, **result)
"""

from __future__ import annotations

import contextlib
import gc
import traceback
from urllib.parse import unquote

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ._storage import StorageError
from ._xapi_client import XapiClient
from ._xapi_errors import XapiError
from ._xapi_options import ConnectionOptions
from ._xapi_options import argument_spec as connection_argument_spec
from ._xapi_transport import XapiTlsConfigError
from ._xapi_url import XapiUrlError, redact_secrets

# The try/except import pattern lets ansible-test's import sanity check (and ansible-doc) load
# modules on a host without these libraries; the module then fails with missing_required_lib.
try:
    import XenAPI  # noqa: F401

    HAS_XENAPI, XENAPI_IMPORT_ERROR = True, None
except ImportError:
    HAS_XENAPI, XENAPI_IMPORT_ERROR = False, traceback.format_exc()
try:
    import requests  # noqa: F401

    HAS_REQUESTS, REQUESTS_IMPORT_ERROR = True, None
except ImportError:
    HAS_REQUESTS, REQUESTS_IMPORT_ERROR = False, traceback.format_exc()
try:
    import jmespath  # noqa: F401

    HAS_JMESPATH, JMESPATH_IMPORT_ERROR = True, None
except ImportError:
    HAS_JMESPATH, JMESPATH_IMPORT_ERROR = False, traceback.format_exc()

LIBRARIES = {
    "XenAPI": (lambda: HAS_XENAPI, lambda: XENAPI_IMPORT_ERROR, "https://pypi.org/project/XenAPI/"),
    "requests": (lambda: HAS_REQUESTS, lambda: REQUESTS_IMPORT_ERROR, "https://pypi.org/project/requests/"),
    "jmespath": (lambda: HAS_JMESPATH, lambda: JMESPATH_IMPORT_ERROR, "https://pypi.org/project/jmespath/"),
}
# XenAPI 26.21.1 fixed certificate validation in the SDK's HTTP calls (CVE-2026-42491).
MIN_XENAPI = (26, 21, 1)
# Bad option values, reported as they are: the message already says what to change.
INPUT_ERRORS = (XapiUrlError, XapiTlsConfigError, ValueError)


def xenapi_version_warning(version):
    """A warning text when installed XenAPI ``version`` is older than :data:`MIN_XENAPI`, else ``None``."""
    try:
        parts = tuple(int(p) for p in str(version).split(".")[:3])
    except ValueError:
        return None
    if parts >= MIN_XENAPI:
        return None
    wanted = ".".join(map(str, MIN_XENAPI))
    return (
        f"XenAPI {version} is older than {wanted}, which fixes certificate validation (CVE-2026-42491); "
        f"upgrade it with pip install 'XenAPI>={wanted}' on the host running this module."
    )


def _installed_xenapi_version():
    try:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version("XenAPI")
    except PackageNotFoundError:
        return None


class XapiModule(AnsibleModule):
    """An ``AnsibleModule`` with the XAPI connection options and error handling built in."""

    def __init__(self, argument_spec=None, libraries=("XenAPI",), **kwargs):
        # What the imports created lives as long as the process: frozen, the garbage collector stops
        # walking it on every full pass and again at exit (30 ms of each module run, measured).
        gc.freeze()
        spec = connection_argument_spec()
        spec.update(argument_spec or {})
        super().__init__(argument_spec=spec, **kwargs)
        self._mask_url_credentials(self.params.get("hostname"))
        for name in libraries:
            has, error, url = LIBRARIES[name]
            if not has():
                self.fail_json(msg=missing_required_lib(name, url=url), exception=error())
        installed = _installed_xenapi_version() if "XenAPI" in libraries else None
        warning = xenapi_version_warning(installed) if installed else None
        if warning:
            self.warn(warning)

    def _mask_url_credentials(self, hostname):
        # parse_xapi_url refuses user:password@host, but Ansible echoes the option in "invocation":
        # mask what was typed there as it would mask a no_log option.
        if not hostname or "@" not in hostname:
            return
        userinfo = hostname.split("://", 1)[-1].rsplit("@", 1)[0]
        password = userinfo.split(":", 1)[1] if ":" in userinfo else None
        for secret in (password, unquote(password) if password else None):
            if secret:
                self.no_log_values.add(secret)

    def connection_options(self):
        try:
            return ConnectionOptions.from_params(self.params)
        except INPUT_ERRORS as e:
            self.fail_json(msg=str(e))

    @contextlib.contextmanager
    def errors_to_fail_json(self, secrets=()):
        """Report :class:`XapiError` and bad input with ``fail_json``; anything else with a masked traceback."""
        try:
            yield
        except XapiError as e:
            self.fail_json(msg=str(e), **e.result())
        except StorageError as e:
            # A remote that is full, unreachable or refuses us: the message already says which and why.
            self.fail_json(msg=redact_secrets(str(e), secrets))
        except INPUT_ERRORS as e:
            self.fail_json(msg=redact_secrets(str(e), secrets))
        except Exception as e:
            self.fail_json(
                msg=redact_secrets(f"Unexpected error: {type(e).__name__}: {e}", secrets),
                exception=redact_secrets(traceback.format_exc(), secrets),
            )

    @contextlib.contextmanager
    def xapi(self):
        """A logged-in :class:`XapiClient`; logged out on exit, every error turned into ``fail_json``."""
        options = self.connection_options()
        secrets = [options.password] if len(options.password) >= 4 else []
        with self.errors_to_fail_json(secrets), XapiClient(options) as client:
            # Ansible masks no_log values in everything the module returns; the session is one.
            self.no_log_values.add(client.session_id)
            secrets.append(client.session_id)
            yield client

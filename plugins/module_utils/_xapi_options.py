"""The connection options every XAPI module takes (documented in ``doc_fragments/_xapi.py``).

Keep this spec and the doc fragment in step; ``tests/unit/.../test_xapi_options.py`` compares them.
"""

from __future__ import annotations

from ansible.module_utils.basic import env_fallback

from ._xapi_url import parse_xapi_url

DEFAULT_TIMEOUT = 60


def argument_spec():
    """A fresh copy of the connection options' argument spec, to merge into a module's own."""
    return {
        "hostname": {"type": "str", "required": True, "fallback": (env_fallback, ["XAPI_HOST"])},
        "username": {"type": "str", "default": "root", "fallback": (env_fallback, ["XAPI_USERNAME"])},
        "password": {"type": "str", "required": True, "no_log": True, "fallback": (env_fallback, ["XAPI_PASSWORD"])},
        "validate_certs": {"type": "bool", "default": True, "fallback": (env_fallback, ["XAPI_VALIDATE_CERTS"])},
        "ca_path": {"type": "path", "fallback": (env_fallback, ["XAPI_CA_PATH"])},
        "timeout": {"type": "int", "default": DEFAULT_TIMEOUT, "fallback": (env_fallback, ["XAPI_TIMEOUT"])},
    }


class ConnectionOptions:
    """Validated connection settings; ``repr`` never shows the password."""

    __slots__ = ("ca_path", "password", "timeout", "url", "username", "validate_certs")

    def __init__(self, url, username, password, validate_certs=True, ca_path=None, timeout=DEFAULT_TIMEOUT):
        if timeout is None or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        self.url = url
        self.username = username
        self.password = password
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout

    @classmethod
    def from_params(cls, params):
        """Build from a module's ``params`` (after argument validation)."""
        return cls(
            url=parse_xapi_url(params["hostname"]),
            username=params.get("username") or "root",
            password=params.get("password") or "",
            validate_certs=params.get("validate_certs", True),
            ca_path=params.get("ca_path"),
            timeout=DEFAULT_TIMEOUT if params.get("timeout") is None else params["timeout"],
        )

    def __repr__(self):
        return (
            f"ConnectionOptions(url={self.url.url!r}, username={self.username!r}, password='***', "
            f"validate_certs={self.validate_certs!r}, ca_path={self.ca_path!r}, timeout={self.timeout!r})"
        )

"""Errors of the restore and health-check code: one sentence that says what failed and what to do."""

from __future__ import annotations

from ._xapi_errors import XapiError


class RestoreError(XapiError):
    """A restore cannot start or did not complete; ``code``/``params`` carry XAPI's error when it caused it.

    A subclass of :class:`XapiError`, so modules report it with ``fail_json`` through the module base.
    """


class RestoreInputError(RestoreError):
    """An option names nothing usable (unknown SR, disk, network, backup…); nothing was changed."""


class BackupNotFoundError(RestoreInputError):
    """No backup matches the id, VM or date given."""


class InsufficientSpaceError(RestoreError):
    """A target SR has less free space than the restore needs; nothing was created."""


class ChecksumMismatchError(RestoreError):
    """The stored XVA does not match its ``.xva.checksum``: the backup file is damaged."""


class VmStartError(RestoreError):
    """The VM was restored (and is kept) but did not start; ``outcome`` is the module result of the restore.

    The module fails, but with ``changed`` and the ``vm`` filled in, since the pool did change.
    """

    def __init__(self, message, code=None, params=(), outcome=None):
        super().__init__(message, code, params)
        self.outcome = dict(outcome or {})

    def result(self):
        return {**self.outcome, **super().result()}

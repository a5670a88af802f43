"""Exceptions raised by the XVA format layer (tar of ova.xml plus 1 MiB disk chunks)."""


class XvaError(Exception):
    """Base class of every XVA problem; ``source`` and ``offset`` locate it (either may be None)."""

    def __init__(self, message, source=None, offset=None):
        self.message = message
        self.source = source
        self.offset = offset
        where = []
        if offset is not None:
            where.append(f"at offset {offset}")
        if source:
            where.append(f"of {source!r}")
        super().__init__(f"{message} ({' '.join(where)})" if where else message)


class XvaFormatError(XvaError):
    """The archive, an entry name or ova.xml is not what an XVA holds."""


class XvaTruncatedError(XvaFormatError):
    """The archive (or its compressed stream) ends early."""


class XvaChecksumError(XvaError):
    """A chunk's data does not match its .xxhash/.checksum entry."""


class XvaDependencyError(XvaError):
    """An optional Python package the input needs (zstandard) is not installed."""

"""Exceptions raised by the VHD format layer.

Every error carries the file (or stream) name and, when it applies, the byte offset of the faulty
structure, so a message such as ``bad footer checksum at offset 0 of 'x.vhd'`` is enough to act on.
"""


class VhdError(Exception):
    """Base class of every VHD problem; ``source`` and ``offset`` locate it (either may be None)."""

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


class VhdFormatError(VhdError):
    """A structure is not what the VHD specification allows (cookie, field value, layout)."""


class VhdChecksumError(VhdFormatError):
    """A footer or header checksum does not match its content."""


class VhdTruncatedError(VhdFormatError):
    """The file or stream ended before a structure it announces."""


class VhdUnsupportedError(VhdError):
    """Valid VHD, but a feature this library deliberately does not handle (fixed disks, ...)."""


class VhdChainError(VhdError):
    """A chain of differencing disks cannot be assembled."""


class VhdMissingParentError(VhdChainError):
    """The parent named by a differencing disk does not exist."""


class VhdParentMismatchError(VhdChainError):
    """The parent found is not the one the child was made against (uuid differs)."""


class VhdMergeError(VhdError):
    """A merge cannot start or resume (wrong files, incompatible state)."""

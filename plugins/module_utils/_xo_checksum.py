"""``<ts>.xva.checksum``: the hash of a full backup's stored bytes, as ``$<algorithm id>$$<hex digest>``.

Xen Orchestra writes MD5 (id 1). Its reader (fs/src/checksum.js) takes the algorithm from the file's id
and also knows SHA-256 (5) and SHA-512 (6), so all three are XO's format and we read all three. We
write SHA-256 where the CPU computes it in hardware (x86 SHA-NI, Arm's SHA2 extension): there it runs
1.5 to 2 times as fast as MD5, and this hash is the one step of a full backup's stream that cannot be
split across cores. Elsewhere we write MD5, as XO does. Readers that only know MD5 (other tools, or
builds of this collection older than the ``checksum`` option) need ``checksum: md5``.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

ALGORITHM_IDS = {"md5": "1", "sha256": "5", "sha512": "6"}
LABELS = {"md5": "MD5", "sha256": "SHA-256", "sha512": "SHA-512"}
_BY_ID = {number: name for name, number in ALGORITHM_IDS.items()}
_HEX_LENGTHS = {"md5": 32, "sha256": 64, "sha512": 128}
# What a backup may write. SHA-512 is only read: where SHA-256 has no hardware, MD5 is about as fast.
CHOICES = ("auto", "md5", "sha256")


class Checksum(NamedTuple):
    algorithm: str
    hexdigest: str

    @property
    def text(self) -> str:
        """The ``.checksum`` file's content."""
        return f"${ALGORITHM_IDS[self.algorithm]}$${self.hexdigest}"

    @property
    def label(self) -> str:
        return f"{LABELS[self.algorithm]} {self.hexdigest}"


def _new_hash(algorithm):
    try:
        return hashlib.new(algorithm, usedforsecurity=False)  # an integrity check, allowed on FIPS hosts
    except TypeError:  # pragma: no cover - interpreters without the keyword
        return hashlib.new(algorithm)


class XvaChecksum:
    """Streaming hash of the stored bytes; :attr:`result` is what the ``.checksum`` file holds."""

    def __init__(self, algorithm: str = "md5"):
        self.algorithm = algorithm
        self._h = _new_hash(algorithm)
        self.size = 0

    def update(self, data) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def result(self) -> Checksum:
        return Checksum(self.algorithm, self._h.hexdigest())

    @property
    def text(self) -> str:
        return self.result.text


class ChecksumWriter:
    """Wraps a write stream: everything written is hashed on the way (see :class:`XvaChecksum`)."""

    def __init__(self, out, algorithm: str = "md5"):
        self.out = out
        self.checksum = XvaChecksum(algorithm)

    def write(self, data) -> int:
        self.checksum.update(data)
        return self.out.write(data)

    def flush(self):
        flush = getattr(self.out, "flush", None)
        if flush:
            flush()

    def writable(self):
        return True

    def tell(self):
        return self.checksum.size


def parse_checksum(text) -> Checksum:
    """The algorithm and digest of a ``.checksum`` file's content."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("ascii", "replace")
    value = text.strip(" \t\n\r\f\v")  # what XO's String.trim() removes of ASCII, no more
    number, _, digest = value[1:].partition("$$")
    algorithm = _BY_ID.get(number) if value.startswith("$") else None
    # XO compares the whole text, so only its own spelling (lowercase hex) can ever match.
    if algorithm is None or len(digest) != _HEX_LENGTHS[algorithm] or digest.strip("0123456789abcdef"):
        raise ValueError(
            f"{value[:60]!r} is not an XO checksum: expected $1$$ and 32 lowercase hex digits (MD5), "
            "$5$$ and 64 (SHA-256) or $6$$ and 128 (SHA-512)"
        )
    return Checksum(algorithm, digest)


def checksum_of_stream(reader, algorithm: str = "md5", chunk_size: int = 1024 * 1024) -> Checksum:
    """Checksum of everything ``reader`` yields from its current position."""
    digest = XvaChecksum(algorithm)
    while True:
        chunk = reader.read(chunk_size)
        if not chunk:
            return digest.result
        digest.update(chunk)


def choose_algorithm(choice: str = "auto", cpuinfo: str = "/proc/cpuinfo") -> str:
    """The algorithm a backup writes: ``auto`` picks SHA-256 where the CPU hashes it in hardware."""
    if choice != "auto":
        return choice
    return "sha256" if cpu_hashes_sha256(cpuinfo) else "md5"


def cpu_hashes_sha256(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the kernel lists SHA-256 instructions (x86 ``sha_ni``, Arm ``sha2``) for the first CPU.

    OpenSSL, behind hashlib, uses them whenever they exist. Without them SHA-256 is slower than MD5,
    and without ``/proc`` we cannot tell, so MD5 is the answer in both cases.
    """
    try:
        # Bytes: a model name need not be UTF-8, and a byte we cannot decode must not fail a backup.
        with open(cpuinfo, "rb") as fh:
            for line in fh:
                key, _, value = line.partition(b":")
                if key.strip() in (b"flags", b"Features"):
                    words = value.split()
                    return b"sha_ni" in words or b"sha2" in words
    except OSError:
        pass
    return False

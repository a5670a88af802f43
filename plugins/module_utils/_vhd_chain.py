"""Read a chain of VHDs (child first, down to a dynamic root) as one virtual disk.

A block's content is assembled child first: each member contributes the sectors its bitmap
marks and that no newer member already gave; a dynamic member ends the walk (its unmarked
sectors, and blocks nobody holds, are zeros). Output: virtual blocks, ONE flattened dynamic VHD
(for ``PUT /import_raw_vdi?format=vhd``) or a raw image, both with their exact size known first.

Chain members are VhdFile objects, or anything with the same reading interface (``name``,
``footer``, ``virtual_size``, ``uuid``, ``is_differencing``, ``parent_uuid``, ``parent_name``,
``block_size``, ``allocated_blocks()``, ``has_block(i)``, ``read_block_mask(i)``, ``close()``), which
is how a storage backend can plug in VHD directories.
"""

from __future__ import annotations

import posixpath

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import copy_runs, full_mask, mask_runs
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdChainError,
    VhdMissingParentError,
    VhdParentMismatchError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import VhdFile
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import block_count, uuid_str
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import IterReader, VhdWriter

MAX_CHAIN_LENGTH = 1000
PREFETCH_BUDGET = 4  # blocks a chain reads ahead at most, over all its members


class VhdChain:
    """Child-first list of VHDs read as one disk.

    With ``allow_differencing_root`` the oldest member may itself be differencing (a partial
    chain, as when several children are merged into a parent): sectors nobody holds are then
    "transparent" and ``read_block_mask`` reports them clear.
    """

    def __init__(self, members, allow_differencing_root=False):
        if not members:
            raise VhdChainError("empty VHD chain")
        self.members = list(members)
        for child, parent in zip(self.members, self.members[1:]):
            check_link(child, parent)
        root = self.members[-1]
        if root.is_differencing and not allow_differencing_root:
            raise VhdMissingParentError(
                f"chain ends with a differencing disk whose parent {root.parent_name!r} "
                f"(uuid {uuid_str(root.parent_uuid)}) was not given",
                root.name,
            )
        self.block_size = self.members[0].block_size
        self.virtual_size = self.members[0].virtual_size
        self.block_count = block_count(self.virtual_size, self.block_size)
        self._full = full_mask(self.block_size)
        self._zero = bytes(self.block_size)

    @property
    def footer(self):
        return self.members[0].footer

    @property
    def uuid(self):
        return self.members[0].uuid

    @property
    def is_differencing(self):
        return self.members[-1].is_differencing

    @property
    def parent_uuid(self):
        return self.members[-1].parent_uuid

    @property
    def parent_name(self):
        return self.members[-1].parent_name

    @property
    def name(self):
        return self.members[0].name

    def allocated_blocks(self):
        """Indexes allocated in any member and inside the virtual size, ascending."""
        found = set()
        for member in self.members:
            found.update(member.allocated_blocks())
        return sorted(i for i in found if i < self.block_count)

    def has_block(self, index):
        return index < self.block_count and any(m.has_block(index) for m in self.members)

    def read_block_mask(self, index):
        """(mask of sectors the chain defines, block data); data is zero where the mask is clear.

        For a complete chain the mask is always full: the dynamic root defines every sector
        (those its bitmap leaves clear, and whole blocks it lacks, are zeros).
        """
        need = self._full
        out = None
        for member in self.members:
            got = member.read_block_mask(index) if member.has_block(index) else None
            if got is not None:
                mask, data = got
                take = mask & need
                if take == self._full:
                    return self._full, data  # the common case: one member holds the whole block
                if take:
                    if out is None:
                        out = bytearray(self.block_size)
                    copy_runs(out, data, mask_runs(take, self.block_size))
                    need &= ~take
            if not member.is_differencing:
                need = 0
            if not need:
                break
        return self._full & ~need, (bytes(out) if out is not None else self._zero)

    def read_block(self, index):
        """Virtual content of block ``index`` (``block_size`` bytes)."""
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} outside 0..{self.block_count - 1}")
        return self.read_block_mask(index)[1]

    def iter_virtual_blocks(self, indexes=None):
        """Yield (index, data) for ``indexes`` (default: every allocated block), in that order."""
        indexes = self.allocated_blocks() if indexes is None else list(indexes)
        self._prefetch(indexes)
        for index in indexes:
            yield index, self.read_block(index)

    def _prefetch(self, indexes):
        """Let members that can read ahead (VHD directories) fetch the blocks they will be asked for:
        each block from the newest member holding it (a fully written block ends the walk there)."""
        if not any(hasattr(m, "prefetch") for m in self.members) or indexes != sorted(indexes):
            return
        wanted = {id(m): [] for m in self.members}
        for index in indexes:
            holder = next((m for m in self.members if m.has_block(index)), None)
            if holder is not None:
                wanted[id(holder)].append(index)
        # One budget for the whole chain (4 blocks in flight): the members holding the most blocks read ahead.
        readers = sorted((m for m in self.members if hasattr(m, "prefetch") and wanted[id(m)]),
                         key=lambda m: -len(wanted[id(m)]))[:PREFETCH_BUDGET]  # fmt: skip
        for member in readers:
            member.prefetch(wanted[id(member)], depth=max(1, PREFETCH_BUDGET // len(readers)))

    def flattened_vhd(self, uuid=None, timestamp=None):
        """ONE dynamic VHD of the whole chain: a ChainStream with ``size`` known before any read."""
        indexes = self.allocated_blocks()
        writer = VhdWriter(
            self.virtual_size,
            indexes,
            uuid=self.uuid if uuid is None else uuid,
            block_size=self.block_size,
            timestamp=timestamp,
        )
        return ChainStream(writer.size, lambda: writer.iter_chunks(self.iter_virtual_blocks(indexes)))

    def raw_stream(self):
        """The raw disk image (``virtual_size`` bytes), one block at a time."""
        return ChainStream(self.virtual_size, self._iter_raw)

    def _iter_raw(self):
        allocated = set(self.allocated_blocks())
        self._prefetch(sorted(allocated))
        remaining = self.virtual_size
        for index in range(self.block_count):
            data = self.read_block(index) if index in allocated else self._zero
            if remaining < self.block_size:
                data = data[:remaining]
            remaining -= len(data)
            yield data

    def close(self):
        for member in self.members:
            member.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ChainStream:
    """A byte stream of known ``size``; iterate it, ``write_to(out)`` it or ``reader()`` it (file-like)."""

    def __init__(self, size, make_chunks):
        self.size = size
        self._make_chunks = make_chunks

    def __iter__(self):
        return iter(self._make_chunks())

    def write_to(self, out):
        written = 0
        for chunk in self._make_chunks():
            out.write(chunk)
            written += len(chunk)
        return written

    def reader(self):
        return IterReader(self._make_chunks(), self.size)


def check_link(child, parent):
    """Raise unless ``parent`` is the disk ``child`` was made against."""
    if not child.is_differencing:
        raise VhdChainError(f"{child.name!r} is not a differencing disk but has a parent {parent.name!r}")
    if child.parent_uuid != parent.uuid:
        raise VhdParentMismatchError(
            f"{child.name!r} expects parent uuid {uuid_str(child.parent_uuid)} but {parent.name!r} "
            f"has uuid {uuid_str(parent.uuid)}",
            child.name,
        )
    if child.block_size != parent.block_size:
        raise VhdChainError(
            f"block size {child.block_size} of {child.name!r} differs from {parent.block_size} of {parent.name!r}"
        )


def parent_path(child_path, parent_name):
    """Where a child's parent lives: its header name, relative to the child's directory."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(child_path), parent_name))


def _default_opener(path):
    return open(path, "rb")  # noqa: SIM115 - owned by the VhdFile


def _open_member(opener, path):
    opened = opener(path)
    if hasattr(opened, "read_block_mask"):  # the opener returned a ready VHD object
        return opened
    try:
        return VhdFile(opened, path)
    except BaseException:
        opened.close()
        raise


def open_vhd_chain(path, opener=None):
    """Open ``path`` and its ancestors, following each header's parent name relative to the child.

    ``opener(path)`` returns a binary file-like object (read/seek) or a VhdFile-like object;
    the default opens local files. A missing parent raises VhdMissingParentError naming it.
    """
    opener = opener or _default_opener
    members = []
    try:
        current = path
        seen = set()
        while True:
            seen.add(current)
            try:
                member = _open_member(opener, current)
            except FileNotFoundError:
                if not members:
                    raise
                child = members[-1]
                raise VhdMissingParentError(
                    f"parent {child.parent_name!r} of {child.name!r} not found at {current!r}", child.name
                ) from None
            members.append(member)
            if not member.is_differencing:
                break
            if not member.parent_name:
                raise VhdChainError("differencing disk has an empty parent name", member.name)
            current = parent_path(current, member.parent_name)
            if current in seen or len(members) >= MAX_CHAIN_LENGTH:
                raise VhdChainError(f"parent {current!r} loops back into the chain", member.name)
        return VhdChain(members)
    except BaseException:
        for member in members:
            member.close()
        raise


def open_vhd_chain_files(paths, opener=None, allow_differencing_root=False):
    """Open an explicit child-first list of paths as a chain (linkage is still checked)."""
    opener = opener or _default_opener
    members = []
    try:
        for path in paths:
            try:
                members.append(_open_member(opener, path))
            except FileNotFoundError:
                raise VhdMissingParentError(f"chain member {path!r} not found", path) from None
        return VhdChain(members, allow_differencing_root=allow_differencing_root)
    except BaseException:
        for member in members:
            member.close()
        raise

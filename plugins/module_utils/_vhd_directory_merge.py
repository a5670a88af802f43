"""Merge children into a parent VHD directory by moving block objects (xo-backups.md §2).

Where the newest child holding a block is itself a VHD directory compressed like the parent, its
block object is renamed into the parent: no data is read or rewritten, which is what makes merges
on object stores cheap. Blocks of other members (VHD files, other compression) are assembled
through the chain and written compressed. The parent's BAT, header and footer (taking the child's
uuid, size and timestamp, footer last) are written once every block is in place.

Resuming follows the state file the caller persists (``.<parent>.merge.json``, the same format as
file merges). Blocks go in ascending order and the state's ``currentBlock`` never runs ahead of
them, so on a resumed run a block whose source object is already gone was moved before the
interruption; on a fresh merge a missing block object is an error.
"""

from __future__ import annotations

import copy
import time

from ansible_collections.xapi.proxy.plugins.module_utils._storage import NotFoundError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import mask_to_bitmap
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import VhdChain
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory import VhdDirectory, set_bat_bit
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import VhdMergeError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_merge import (
    _CLEANUP_STEPS,
    DEFAULT_STATE_INTERVAL,
    MergeDriver,
)


def merge_vhd_directory(
    parent,
    child,
    state=None,
    on_state=None,
    state_interval=DEFAULT_STATE_INTERVAL,
    chain=None,
    clock=None,
    on_progress=None,
):
    """Merge ``child`` (a VHD-like member, or a partial VhdChain newest first) into ``parent``.

    ``parent`` is a :class:`VhdDirectory`; the other arguments and the returned state are those of
    ``_vhd_merge.merge_vhd``.
    """
    if state is not None and state.get("step") in _CLEANUP_STEPS:
        return state
    if not isinstance(parent, VhdDirectory):
        raise VhdMergeError("the parent of a block-moving merge must be a VHD directory", getattr(parent, "name", None))
    merger = _DirectoryMerger(parent, child, on_state, state_interval, clock or time.monotonic, on_progress)
    return merger.run(copy.deepcopy(state), list(chain or []))


class _DirectoryMerger(MergeDriver):
    def __init__(self, parent, child, on_state, interval, clock, on_progress):
        super().__init__(parent, child, on_state, interval, clock, on_progress)
        self.members = list(child.members) if isinstance(child, VhdChain) else [child]  # newest first
        self.storage = parent.storage
        self._chain = None

    def _already_merged(self, state):
        # The tables (footer last) were written before the kill: every block is in the parent.
        return self.parent.uuid == self.child.uuid and state["parent"]["uuid"] != state["child"]["uuid"]

    def _prepare(self, blocks, entries, resuming):
        if not resuming:
            self._check_objects(blocks)

    def _finish(self, blocks, entries):
        self._write_tables(blocks, entries)

    def _check_objects(self, blocks):
        """Before moving anything: every object a move will take exists (one listing per 1000 blocks).

        Then, on a resumed run, a source found missing can only mean "moved before the interruption"."""
        present = {}
        for member in self.members:
            if not self._movable(member):
                continue
            names = set()
            for group in self.storage.list(f"{member.directory}/blocks", missing_ok=True):
                names.update(f"{group}/{n}" for n in self.storage.list(f"{member.directory}/blocks/{group}"))
            present[id(member)] = names
        for index in blocks:
            holder = next(m for m in self.members if m.has_block(index))
            if id(holder) in present and f"{index // 1000}/{index % 1000}" not in present[id(holder)]:
                raise VhdMergeError(
                    f"block {index} is listed in the BAT of {holder.name!r} but {holder.block_path(index)} is missing",
                    holder.name,
                )

    def _movable(self, member):
        return isinstance(member, VhdDirectory) and member.codec.name == self.parent.codec.name

    # -- blocks -----------------------------------------------------------------------------------
    def _merge_block(self, index, resuming):
        parent = self.parent
        holder = next(m for m in self.members if m.has_block(index))
        target = parent.block_path(index)
        if self._movable(holder):
            source = holder.block_path(index)
            try:
                self.storage.rename(source, target)
            except NotFoundError:
                # Moved just before an interruption (the state lags behind by design); the parent has it.
                if not (resuming and self.storage.exists(target)):
                    raise VhdMergeError(
                        f"block {index} is listed in the BAT of {holder.name!r} but {source} is missing",
                        holder.name,
                    ) from None
        else:
            mask, data = self._whole_chain().read_block_mask(index)
            payload = mask_to_bitmap(mask, self.block_size) + bytes(data)
            self.storage.write_bytes(target, parent.codec.compress(payload))

    def _whole_chain(self):
        # Sectors the children leave clear come from the parent: what the merged block must hold.
        if self._chain is None:
            self._chain = VhdChain([*self.members, self.parent], allow_differencing_root=True)
        return self._chain

    def _write_tables(self, blocks, entries):
        parent = self.parent
        if entries > parent.entries:
            parent.header = parent.header.replace(max_table_entries=entries)
            parent.entries = entries
        need = -(-parent.entries // 8)
        if len(parent.bat) < need:
            parent.bat.extend(bytes(need - len(parent.bat)))
        for index in blocks:
            set_bat_bit(parent.bat, index)
        footer = self.merged_footer()
        directory = parent.directory
        self.storage.write_bytes(f"{directory}/bat", bytes(parent.bat))
        self.storage.write_bytes(f"{directory}/header", parent.header.to_bytes())
        self.storage.write_bytes(f"{directory}/footer", footer.to_bytes())  # last: this is what says "merged"
        parent.footer = footer

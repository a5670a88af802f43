"""Merge a child VHD into its parent file, in place and resumable (xo-backups.md §2 "Retention and merge").

The child's allocated blocks are copied into the parent (sector bitmaps respected; blocks the
parent lacks are appended after its last structure), then the parent's footer takes the child's
uuid, sizes, geometry and timestamp. The caller then renames the parent to the child's path,
removes the child and deletes the state file.

Crash safety rests on three rules:
* every block write is idempotent: overlaying the child's sectors again gives the same bytes, and
  an appended block goes to an offset derived from the BAT, so a half-written one is overwritten;
* an appended block's data (and a trailing footer) is written before the BAT entry that makes
  it visible;
* the footer copy at offset 0 (what identifies the file, and what VhdFile reads first) is
  written last, and the state handed to ``on_state`` never claims more than what was flushed.
Re-running from the last persisted state (or from no state, if none was persisted) therefore
finishes the merge with the same virtual content, whatever the point of interruption.
"""

from __future__ import annotations

import copy
import os
import posixpath
import time

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import (
    bitmap_to_mask,
    copy_runs,
    full_mask,
    keep_runs,
    mask_runs,
    mask_to_bitmap,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdMergeError,
    VhdParentMismatchError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import VhdFile
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_format import (
    BAT_UNUSED,
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    FOOTER_SIZE,
    SECTOR_SIZE,
    bat_bytes,
    block_count,
    build_bat,
    uuid_str,
)

STEP_MERGE_BLOCKS = "mergeBlocks"
STEP_CLEANUP = "cleanup"
_CLEANUP_STEPS = (STEP_CLEANUP, "cleanupVhds")  # older Xen Orchestra releases wrote "cleanupVhds"
DEFAULT_STATE_INTERVAL = 10.0  # seconds; Xen Orchestra rewrites its state at most this often


def merge_state_path(parent_path):
    """Where Xen Orchestra keeps the resume state of a merge into ``parent_path``: ``.<name>.merge.json``."""
    return posixpath.join(posixpath.dirname(parent_path), "." + posixpath.basename(parent_path) + ".merge.json")


def merge_vhd(
    parent,
    child,
    state=None,
    on_state=None,
    state_interval=DEFAULT_STATE_INTERVAL,
    chain=None,
    clock=None,
    on_progress=None,
):
    """Merge ``child`` into ``parent``; returns the final state (step ``'cleanup'``).

    ``parent``: a VhdFile opened on a writable file (``'r+b'``), or such a file object.
    ``child``: a VhdFile, or a partial VhdChain of several children (newest first).
    ``state``: the last state persisted by ``on_state`` to resume from, or None to start.
    ``on_state(state)`` is called with a copy to persist (as ``.<parent>.merge.json``) before the
    first write, at most every ``state_interval`` seconds while merging, and at the end. If it
    raises, the merge stops there; run it again with the last state that was persisted.
    ``chain`` (e.g. relative paths [parent, child]) is only recorded in the state.
    ``on_progress(done, total)`` (optional) is called after each merged block, for job output.
    A state at step ``'cleanup'`` is returned as is: the file work is done.
    """
    if state is not None and state.get("step") in _CLEANUP_STEPS:
        return state
    if not isinstance(parent, VhdFile):
        parent = VhdFile(parent, getattr(parent, "name", "<parent vhd>"))
    merger = _Merger(parent, child, on_state, state_interval, clock or time.monotonic, on_progress)
    return merger.run(copy.deepcopy(state), list(chain or []))


def merge_vhd_files(
    parent_path, child_path, state=None, on_state=None, state_interval=DEFAULT_STATE_INTERVAL, on_progress=None
):
    """merge_vhd on local files; ``chain`` is recorded as the two base names."""
    with open(parent_path, "r+b") as pfile, open(child_path, "rb") as cfile:
        parent = VhdFile(pfile, parent_path)
        child = VhdFile(cfile, child_path)
        chain = [posixpath.basename(parent_path), posixpath.basename(child_path)]
        return merge_vhd(parent, child, state, on_state, state_interval, chain, on_progress=on_progress)


class MergeDriver:
    """What every merge shares: XO's state (made, checked on resume, saved at most every ``interval``),
    the blocks in ascending order, progress. Subclasses move the data: :class:`_Merger` into a VHD
    file in place, ``_vhd_directory_merge`` into a VHD directory. ``child`` is a member or a partial
    VhdChain (newest first: its uuid and footer are the newest's, its parent link the oldest's)."""

    def __init__(self, parent, child, on_state, interval, clock, on_progress=None):
        self.on_progress = on_progress
        self.parent = parent
        self.child = child
        self.on_state = on_state
        self.interval = interval
        self.clock = clock
        self.last_save = None
        self.block_size = parent.block_size

    # -- driver ---------------------------------------------------------------------------------
    def run(self, state, chain):
        parent, child = self.parent, self.child
        entries = block_count(child.virtual_size, child.block_size)
        blocks = [i for i in child.allocated_blocks() if i < entries]
        resuming = state is not None
        if state is None:
            self._check_fresh()
            state = {
                "child": {"uuid": uuid_str(child.uuid)},
                "parent": {"uuid": uuid_str(parent.uuid)},
                "chain": chain,
                "currentBlock": blocks[0] if blocks else entries,
                "mergedDataSize": 0,
                "step": STEP_MERGE_BLOCKS,
                "diskSize": len(blocks) * self.block_size,
            }
            self._save(state, force=True)  # before any write: a resume always has a state to trust
        else:
            self._check_resume(state)
            if self._already_merged(state):
                return self._done(state, blocks)
        self._prepare(blocks, entries, resuming)
        start = state["currentBlock"]
        done = sum(1 for i in blocks if i < start)
        for position, index in enumerate(blocks):
            if index < start:
                continue
            self._merge_block(index, resuming)
            done += 1
            following = blocks[position + 1] if position + 1 < len(blocks) else index + 1
            state["currentBlock"] = following
            state["mergedDataSize"] = done * self.block_size
            self._save(state)
            if self.on_progress is not None:
                self.on_progress(done, len(blocks))
        self._finish(blocks, entries)
        return self._done(state, blocks)

    def _done(self, state, blocks):
        state["currentBlock"] = max(state["currentBlock"], blocks[-1] + 1 if blocks else 0)
        state["mergedDataSize"] = len(blocks) * self.block_size
        state["step"] = STEP_CLEANUP
        self._save(state, force=True)
        return state

    # -- what subclasses do ---------------------------------------------------------------------
    def _already_merged(self, state):
        """On resume: is the data work complete although the state does not say so yet?"""
        return False

    def _prepare(self, blocks, entries, resuming):
        """Before the first block of this run."""

    def _merge_block(self, index, resuming):
        raise NotImplementedError

    def _finish(self, blocks, entries):
        """After the last block: the parent takes the child's identity (what says "merged" goes last)."""
        raise NotImplementedError

    def _sync(self):
        """Make every write so far durable before a state claiming it is saved."""

    # -- checks ---------------------------------------------------------------------------------
    def _check_fresh(self):
        parent, child = self.parent, self.child
        if parent.footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
            raise VhdMergeError(f"cannot merge into a disk of type {parent.footer.disk_type}", parent.name)
        if not child.is_differencing:
            raise VhdMergeError("the child is not a differencing disk", child.name)
        if child.parent_uuid != parent.uuid:
            raise VhdParentMismatchError(
                f"{child.name!r} expects parent uuid {uuid_str(child.parent_uuid)} but {parent.name!r} "
                f"has uuid {uuid_str(parent.uuid)}",
                child.name,
            )
        self._check_block_size()

    def _check_resume(self, state):
        parent, child = self.parent, self.child
        if state.get("currentBlock") is None:
            state["currentBlock"] = 0  # some Xen Orchestra releases stored NaN, i.e. null: start over
        try:
            child_uuid, parent_uuid = state["child"]["uuid"], state["parent"]["uuid"]
            state["currentBlock"] = int(state["currentBlock"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VhdMergeError(f"merge state is incomplete or malformed: {exc!r}", parent.name) from None
        if state.get("step") != STEP_MERGE_BLOCKS:
            raise VhdMergeError(f"unknown merge step {state.get('step')!r}", parent.name)
        if uuid_str(child.uuid) != child_uuid:
            raise VhdMergeError(
                f"merge state is for child uuid {child_uuid}, but {child.name!r} has {uuid_str(child.uuid)}", child.name
            )
        # The parent still has its own uuid, or already the child's if the final footer was written.
        if uuid_str(parent.uuid) not in (parent_uuid, child_uuid):
            raise VhdMergeError(
                f"merge state is for parent uuid {parent_uuid}, but {parent.name!r} has {uuid_str(parent.uuid)}",
                parent.name,
            )
        self._check_block_size()

    def _check_block_size(self):
        # A VhdChain child has checked that its members share one block size.
        if self.child.block_size != self.block_size:
            raise VhdMergeError(
                f"block size {self.child.block_size} of the child differs from {self.block_size} of the parent",
                self.parent.name,
            )

    # -- state ----------------------------------------------------------------------------------
    def _save(self, state, force=False):
        if self.on_state is None:
            return
        now = self.clock()
        if not force and self.last_save is not None and now - self.last_save < self.interval:
            return
        self._sync()  # the state must never claim blocks that are not stored yet
        self.on_state(copy.deepcopy(state))
        self.last_save = now

    def merged_footer(self):
        """The parent's footer once merged: the child's uuid, sizes, geometry and timestamp."""
        source = self.child.footer
        return self.parent.footer.replace(
            uuid=source.uuid,
            current_size=source.current_size,
            original_size=source.original_size,
            geometry=source.geometry,
            timestamp=source.timestamp,
        )


class _Merger(MergeDriver):
    def __init__(self, parent, child, on_state, interval, clock, on_progress=None):
        super().__init__(parent, child, on_state, interval, clock, on_progress)
        self.file = parent.file
        self.data_end = parent.data_end()

    def _prepare(self, blocks, entries, resuming):
        self._ensure_bat(entries)

    def _finish(self, blocks, entries):
        self._finish_footer()

    def _sync(self):
        flush = getattr(self.file, "flush", None)
        if flush:
            flush()
        try:
            fd = self.file.fileno()
        except (AttributeError, OSError, ValueError):
            return
        os.fsync(fd)

    # -- writes ---------------------------------------------------------------------------------
    def _write_at(self, offset, data):
        self.file.seek(offset)
        view = memoryview(data)
        while view:
            written = self.file.write(view)
            if written is None:  # some raw file objects in non-blocking mode; treat as everything
                break
            view = view[written:]

    def _write_header_sector(self):
        # Only the first header sector changes (table offset, entry count, checksum); one sector
        # is written atomically by the storage stack, so the header is never seen half updated.
        self._write_at(self.parent.footer.data_offset, self.parent.header.to_bytes()[:SECTOR_SIZE])

    def _ensure_bat(self, needed):
        """Give the parent's BAT at least ``needed`` entries (the child may be larger)."""
        parent = self.parent
        header = parent.header
        if needed <= header.max_table_entries:
            return
        table_at = header.table_offset
        starts = [parent.block_offset(i) for i in parent.allocated_blocks()]
        starts += [loc.data_offset for loc in header.locators if loc.used and loc.data_offset]
        starts += [parent.footer.data_offset]
        following = [s for s in starts if s > table_at]
        new_bat = list(parent.bat) + [BAT_UNUSED] * (needed - len(parent.bat))
        raw = build_bat(new_bat)
        if following and table_at + len(raw) <= min(following):
            # Grows into its own padding: fill the new entries, then publish the new count.
            self._write_at(table_at, raw)
            header.max_table_entries = needed
        else:
            # Move the BAT to the end of the data; the old copy becomes unused space.
            new_at = self.data_end
            self._write_at(new_at, raw)
            self._write_at(new_at + len(raw), parent.footer.to_bytes())
            header.table_offset = new_at
            header.max_table_entries = needed
        self._write_header_sector()
        parent.bat = type(parent.bat)(parent.bat.typecode, new_bat)
        self.data_end = max(self.data_end, header.table_offset + bat_bytes(needed))
        self._write_at(self.data_end, parent.footer.to_bytes())

    def _merge_block(self, index, resuming=False):
        parent = self.parent
        got = self.child.read_block_mask(index)
        if got is None:
            return
        child_mask, child_data = got
        if not child_mask:
            return
        full = full_mask(self.block_size)
        if parent.has_block(index):
            if child_mask == full:
                # The child defines every sector: the parent's copy is not read (on a parent larger than
                # the page cache that read is a disk seek per block, most of a small merge's time).
                mask, data = full, child_data
            else:
                bitmap, data = parent.read_block_raw(index)
                data = bytearray(data)
                copy_runs(data, child_data, mask_runs(child_mask, self.block_size))
                mask = bitmap_to_mask(bitmap, self.block_size) | child_mask
            self._write_at(parent.block_offset(index), mask_to_bitmap(mask, self.block_size) + bytes(data))
            return
        if child_mask != full:
            child_data = keep_runs(child_data, mask_runs(child_mask, self.block_size), self.block_size)
        # A dynamic parent defines every sector of its blocks; a differencing one lets the rest through.
        mask = child_mask if parent.is_differencing else full
        offset = self.data_end
        self._write_at(offset, mask_to_bitmap(mask, self.block_size) + bytes(child_data))
        self._write_at(offset + parent.block_span, parent.footer.to_bytes())
        sector = offset // SECTOR_SIZE
        self._write_at(parent.header.table_offset + 4 * index, sector.to_bytes(4, "big"))
        parent.bat[index] = sector
        self.data_end = offset + parent.block_span

    def _finish_footer(self):
        parent = self.parent
        footer = self.merged_footer()
        raw = footer.to_bytes()
        self._write_at(self.data_end, raw)
        truncate = getattr(self.file, "truncate", None)
        if truncate:
            truncate(self.data_end + FOOTER_SIZE)
        self._sync()
        self._write_at(0, raw)  # last: this copy is what says "merged"
        self._sync()
        parent.footer = footer

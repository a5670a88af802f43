"""Retention and clean-up of one VM's directory on a remote: XO's ``cleanVm`` carried out.

The planner (``_xo_clean_plan``) decides; this file reads what it needs from the remote and
performs the actions. A merge writes its resume state next to the parent VHD before touching
data, so a run killed mid-merge is finished by the next one and the chain stays restorable.
"""

from __future__ import annotations

import contextlib
import json
import posixpath

from ._retention import select_old_backups
from ._storage import NotFoundError, Storage, StorageError, check_held
from ._vhd_chain import open_vhd_chain_files
from ._vhd_directory import is_alias, open_alias, read_alias, remote_vhd_opener
from ._vhd_directory_merge import merge_vhd_directory
from ._vhd_errors import VhdError
from ._vhd_file import VhdFile
from ._vhd_merge import _CLEANUP_STEPS, merge_vhd
from ._xo_cache import write_cache
from ._xo_clean_plan import plan_clean_vm, resolve_parent
from ._xo_layout import is_metadata_name, is_temp_name, merge_state_path, vdis_dir, vm_backup_dir
from ._xo_metadata import MetadataError, MetadataShapeError, dump_metadata, mark_merged, parse_metadata


class Survey:
    """What one VM directory holds: metadata, the VHD graph, plain files, interrupted merges."""

    def __init__(self, storage, vm_uuid):
        self.storage = storage
        self.vm_uuid = vm_uuid
        self.backups, self.invalid, self.files = {}, {}, {}
        self.odd = {}  # metadata of a shape we do not know: kept, with what it names (see plan_clean_vm)
        self.vhds, self.broken, self.merge_states, self.vdi_dirs = {}, {}, {}, []
        self.aliases, self.data_dirs = {}, []  # VHD directories: alias path → directory; every data/<ts>.vhd
        # Files a killed run left under a temporary name: never visible as backups, only clutter.
        self.temp_files = []
        directory = vm_backup_dir(vm_uuid)
        for name in storage.list(directory, missing_ok=True):
            path = f"{directory}/{name}"
            if name in ("vdis", "cache.json.gz"):
                continue
            if is_temp_name(name):
                self.temp_files.append(path)
                continue
            if is_metadata_name(name):
                # Only what the file says can make a backup invalid (and metadata that is not a JSON object
                # is deleted); a read that failed (timeout, I/O error) aborts the clean, and the next run
                # retries it. A JSON object of a shape we do not know may be a Xen Orchestra version's: kept.
                try:
                    self.backups[path] = parse_metadata(storage.read_bytes(path), path)
                except MetadataShapeError as e:
                    self.odd[path] = (str(e), e.metadata)
                except MetadataError as e:
                    self.invalid[path] = str(e)
                except NotFoundError:
                    continue  # gone since the listing
            else:
                try:
                    st = storage.stat(path)
                except NotFoundError:  # gone since the listing; any other error stops the clean-up
                    continue
                if not st.is_dir:
                    self.files[name] = st.size
        self._scan_vhds(directory)

    def _scan_vhds(self, directory):
        storage = self.storage
        root = vdis_dir(self.vm_uuid)
        for job in storage.list(root, missing_ok=True):
            for vdi in storage.list(f"{root}/{job}", missing_ok=True):
                folder = f"{root}/{job}/{vdi}"
                self.vdi_dirs.append(folder)
                for name in storage.list(folder, missing_ok=True):
                    path = f"{folder}/{name}"
                    if name.startswith(".") and name.endswith(".merge.json"):
                        try:
                            data = storage.read_bytes(path)
                        except NotFoundError:
                            continue
                        try:
                            self.merge_states[path] = json.loads(data.decode("utf-8"))
                        except ValueError:  # e.g. cut short by a kill: the merge is planned again from the VHDs
                            self.merge_states[path] = {}
                    elif is_temp_name(name):
                        self.temp_files.append(path)
                    elif name == "data":
                        self.data_dirs.extend(f"{path}/{d}" for d in storage.list(path, missing_ok=True))
                    elif name.endswith(".vhd"):
                        self._read_vhd(path)

    def _read_vhd(self, path):
        try:
            if is_alias(path):
                vhd = open_alias(self.storage, path)
                self.aliases[path] = vhd.directory
            else:
                with self.storage.open_read(path) as fh:
                    vhd = VhdFile(fh, path, fh.size)
            self.vhds[path] = resolve_parent(path, vhd.parent_name) if vhd.is_differencing else None
        except (VhdError, NotFoundError) as e:
            self.vhds[path] = None
            self.broken[path] = str(e)
            if is_alias(path):
                with contextlib.suppress(VhdError, StorageError):
                    self.aliases[path] = read_alias(self.storage, path)  # so deleting it takes its data too


def old_backups(survey, spec):
    """Ids retention removes now that a new backup of ``spec`` is complete."""
    entries = [
        {"id": bid, "mode": md.get("mode"), "scheduleId": md.get("scheduleId"), "timestamp": md.get("timestamp")}
        for bid, md in survey.backups.items()
        if md.get("jobId") == spec.job_id
    ]
    old = select_old_backups(
        entries,
        mode=spec.xo_mode,
        schedule_id=spec.schedule_id,
        retention=spec.retention,
        long_term_retention=spec.long_term_retention,
        timezone=spec.timezone,
        max_deleted=spec.max_merged or None,
        before_new_backup=False,
    )
    return [e["id"] for e in old]


def can_merge(storage, survey=None):
    """VHD files are merged in place, VHD directories by moving block objects: a kind without in-place
    updates (S3) merges only VHD directories. A VM folder holding both kinds (a remote that switched
    ``useVhdDirectory``) keeps its chains as they are until the old kind's backups expire."""
    kinds = {is_alias(path) for path in survey.vhds} if survey is not None else set()
    if len(kinds) > 1:
        return False
    if type(storage).open_update is not Storage.open_update:
        return True
    return kinds == {True}


def plan(storage, vm_uuid, delete=(), survey=None):
    survey = Survey(storage, vm_uuid) if survey is None else survey
    inputs = {
        "backups": survey.backups,
        "vhds": survey.vhds,
        "delete": delete,
        "invalid_metadata": survey.invalid,
        "odd_metadata": survey.odd,
        "broken_vhds": survey.broken,
        "files": survey.files,
        "merge_states": survey.merge_states,
        "vdi_dirs": survey.vdi_dirs,
        "aliases": survey.aliases,
        "data_dirs": survey.data_dirs,
    }
    mergeable = can_merge(storage, survey)
    result = plan_clean_vm(vm_uuid, merge=mergeable, **inputs)
    if not mergeable and plan_clean_vm(vm_uuid, **inputs).of_kind("merge"):
        why = (
            "holds both VHD files and VHD directories for this VM (useVhdDirectory was switched)"
            if len({is_alias(p) for p in survey.vhds}) > 1
            else "cannot update files in place and holds VHD files"
        )
        result.warnings.append(
            f"{storage.display} {why}, so old deltas are kept as parents instead of being merged: the chains "
            "stay restorable but use more space"
        )
    return survey, result


def plan_retention(storage, vm_uuid, spec, new_backup):
    """Check mode: what retention removes and merges once the run's backup is written, as ``(ids, plan)``.

    ``new_backup`` is ``(backup_id, metadata, vhds)``, what the run would write: ``vhds`` maps each of its
    VHD paths to its parent's (None for a full disk). None of it exists yet; it joins the survey so that
    retention counts it, as the run's retention does, and merges fold old deltas into it.
    """
    survey = Survey(storage, vm_uuid)
    backup_id, metadata, vhds = new_backup
    survey.backups[backup_id] = metadata
    survey.vhds.update(vhds)
    if metadata.get("mode") == "full":
        survey.files[posixpath.basename(metadata["xva"])] = metadata["size"]
    doomed = [bid for bid in old_backups(survey, spec) if bid != backup_id]
    _, result = plan(storage, vm_uuid, delete=doomed, survey=survey)
    return doomed, result


def apply_retention(storage, vm_uuid, spec, on_progress=None, keep=None, lock=None):
    """Drop what retention says, merge orphans into their children, clean; returns a summary.

    ``keep``: the backup this run just wrote. Retention never removes it; if the clean-up would (its
    files found broken), nothing is deleted and :class:`RetentionRefused` says why. ``lock``: the VM's
    lock, checked before each step (see :func:`clean`).
    """
    survey = Survey(storage, vm_uuid)
    return clean(storage, vm_uuid, delete=old_backups(survey, spec), on_progress=on_progress, keep=keep, lock=lock)


class RetentionRefused(ValueError):
    """The clean-up plan would delete the backup just written: a run must fail, not report it made."""


def clean(storage, vm_uuid, delete=(), on_progress=None, keep=None, lock=None):
    """Carry out the clean-up plan. Call it holding the VM's lock on ``storage``, and pass that ``lock``:
    if another process takes it over meanwhile, the clean-up stops (:class:`LockLostError`) before its
    next deletion or merge step rather than race the new holder over the same files."""
    survey, the_plan = plan(storage, vm_uuid, delete)
    doomed = next((a for a in the_plan.actions if a.kind == "delete_metadata" and a.path == keep), None)
    if doomed is not None:
        raise RetentionRefused(
            f"the clean-up would delete the backup this run just wrote, {keep} ({doomed.reason}); nothing was "
            "deleted. Check the remote's files for this VM (backup_info with verify: true lists what is wrong)."
        )
    done = {"removed": [], "merged": [], "deleted_files": [], "warnings": list(the_plan.warnings)}
    for path in survey.temp_files:
        check_held(lock, f"deleting {path}")  # the new holder's files in progress look just like these
        storage.delete(path, missing_ok=True)
        done["deleted_files"].append(path)
    for action in the_plan.actions:
        kind = action.kind
        check_held(lock, f"{kind.replace('_', ' ')} {action.path}")
        if kind == "delete_metadata":
            storage.delete(action.path)
            done["removed"].append(action.path)
            survey.backups.pop(action.path, None)
        elif kind in ("delete_file", "delete_merge_state"):
            storage.delete(action.path)
            done["deleted_files"].append(action.path)
        elif kind == "delete_vhd":
            storage.delete(action.path)
            if action.data:
                storage.delete_tree(action.data)
            done["deleted_files"].append(action.path)
        elif kind in ("merge", "resume_merge"):
            state_path = action.state or merge_state_path(action.chain[0])
            state = survey.merge_states.get(action.state) if action.state else None
            size = _merge(storage, action, state, on_progress, lock)
            check_held(lock, f"recording the merge into {action.path} in its backups' metadata")
            for bid in action.backups:
                if bid in survey.backups:
                    survey.backups[bid] = mark_merged(survey.backups[bid], _backup_size(storage, bid, survey, size))
                    storage.write_bytes(bid, dump_metadata(survey.backups[bid]))
            # Last: until the metadata says "merged", a killed run's successor finishes from this state.
            storage.delete(state_path, missing_ok=True)
            done["merged"].append({"into": action.path, "chain": list(action.chain)})
        elif kind == "delete_dir":
            storage.delete_tree(action.path)
    if the_plan.rewrite_cache or done["removed"] or done["merged"]:
        check_held(lock, "rewriting the cache")
        kept = {bid: md for bid, md in survey.backups.items() if bid in the_plan.kept}
        # Metadata of a shape we do not know stays listed too: Xen Orchestra lists backups from the cache.
        write_cache(storage, vm_uuid, {**{bid: md for bid, (_, md) in survey.odd.items()}, **kept})
    return done


def _backup_size(storage, backup_id, survey, merged_size):
    # XO rewrites ``size`` after a merge; the sum of the backup's VHD files is what it now occupies.
    from ._xo_metadata import vhd_remote_paths  # noqa: PLC0415 - avoids a cycle at import

    total = 0
    for path in vhd_remote_paths(backup_id, survey.backups[backup_id]).values():
        try:
            if is_alias(path):  # a directory's data size, as XO counts it after a merge
                vhd = open_alias(storage, path)
                total += len(vhd.allocated_blocks()) * vhd.block_size
            else:
                total += storage.stat(path).size
        except (StorageError, VhdError):
            return merged_size
    return total


def _merge(storage, action, state, on_progress, lock=None):
    """Merge ``chain[1:]`` into ``chain[0]``, then give the result the newest child's name."""
    chain = list(action.chain)
    parent_path = chain[0]
    state_path = action.state or merge_state_path(parent_path)

    def save_state(new_state):
        check_held(lock, f"the next step of merging into {parent_path}")
        storage.write_json(state_path, new_state)

    def progress(done, total):
        # After each block: if the lock went meanwhile, stop before the next one, as a kill would; the
        # state saved last (every few seconds) is where the next holder resumes.
        check_held(lock, f"the next block of the merge into {parent_path}")
        if on_progress is not None:
            on_progress(done, total)
            check_held(lock, f"the next block of the merge into {parent_path}")

    directory = posixpath.dirname(parent_path)
    if state and state.get("chain"):
        # Resume: the state names the whole chain, some of which a killed cleanup may have removed.
        chain = [posixpath.normpath(posixpath.join(directory, p)) for p in state["chain"]]
        parent_path = chain[0]
    if is_alias(parent_path):
        state = _merge_directory(storage, chain, state, save_state, progress)
    elif state is None or state.get("step") not in _CLEANUP_STEPS:
        children = chain[1:]
        with storage.open_update(parent_path) as pfile:
            parent = VhdFile(pfile, parent_path)
            opened = []
            open_member = remote_vhd_opener(storage)  # children may be VHD directories (useVhdDirectory)

            def opener(path):
                fh = open_member(path)
                opened.append(fh)
                return fh

            try:
                child = open_vhd_chain_files(list(reversed(children)), opener, allow_differencing_root=True)
                state = merge_vhd(
                    parent,
                    child,
                    state=state,
                    on_state=save_state,
                    chain=[posixpath.basename(p) for p in chain],
                    on_progress=progress,
                )
            finally:
                for fh in opened:
                    fh.close()
    # Cleanup: the parent, which now holds the children's data, takes the newest child's name. The
    # rename replaces the child in one step, so the name the backup uses always exists (a kill here must
    # not leave a backup that looks broken to the next run, which would then delete it).
    target = chain[-1]
    check_held(lock, f"renaming {parent_path} to {target}")
    if storage.exists(parent_path):
        replaced = _alias_target(storage, target)
        storage.rename(parent_path, target)
        if replaced and replaced != _alias_target(storage, target):
            storage.delete_tree(replaced, missing_ok=True)  # the child's own directory, now merged
    # else: an interrupted cleanup already renamed it. Either way the folded-in children go now.
    keep = _alias_target(storage, target)
    for path in chain[1:-1]:
        _delete_vhd(storage, path, keep)
    if is_alias(target):
        return int(state.get("mergedDataSize") or 0)  # XO's size of a merged VHD directory
    return storage.stat(target).size


def _merge_directory(storage, chain, state, save_state, on_progress):
    """Block-moving merge of VHD directories (children may be files); returns the final state."""
    if state is not None and state.get("step") in _CLEANUP_STEPS:
        return state
    opener = remote_vhd_opener(storage)
    parent = open_alias(storage, chain[0])
    child = open_vhd_chain_files(list(reversed(chain[1:])), opener, allow_differencing_root=True)
    try:
        return merge_vhd_directory(
            parent,
            child,
            state=state,
            on_state=save_state,
            chain=[posixpath.basename(p) for p in chain],
            on_progress=on_progress,
        )
    finally:
        child.close()


def _alias_target(storage, path):
    """The VHD directory an alias names, or None (not an alias, or gone)."""
    if not is_alias(path):
        return None
    try:
        return read_alias(storage, path)
    except NotFoundError:
        return None


def _delete_vhd(storage, path, keep=None):
    """Delete a VHD file, or an alias and the VHD directory it names (the alias first: never a dangling
    name). ``keep``: the merged parent's directory, which a half-done rename may have aliased here too."""
    data = None
    if is_alias(path):
        with contextlib.suppress(VhdError, StorageError):
            data = read_alias(storage, path)
    storage.delete(path, missing_ok=True)
    if data and data != keep:
        storage.delete_tree(data, missing_ok=True)

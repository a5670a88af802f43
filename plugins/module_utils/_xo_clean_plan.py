"""Plan XO's ``cleanVm`` for one VM directory (xo-backups.md §2 "Retention and merge", "cleanVm").

Pure logic: the engine reads the remote (metadata, each VHD's parent, file names), calls
:func:`plan_clean_vm`, shows the plan in check mode, or executes the actions in order.

Rules followed:

* Deleting a backup removes its JSON (and, for a full backup, its XVA and checksum); VHDs are never
  deleted directly. Afterwards a VHD no remaining metadata references is *unused*.
* An unused VHD with an active descendant is merged: the chain ``(unused, …, first active)`` is
  collapsed into its first element, which is then renamed to the active VHD's path (``merge``
  action). An unused VHD without an active descendant is deleted.
* A VHD whose parent is missing or that could not be opened is *broken*, and so are its descendants;
  broken VHDs are deleted and any delta backup that uses one loses its JSON. A full backup whose XVA
  is missing loses its JSON and checksum; an XVA of the wrong size only produces a warning.
* Metadata that is not a JSON object is deleted like a backup with missing files. A JSON object of a
  shape this collection does not know (a key missing or of another type: another XO version's, or
  edited by hand) is never deleted: it is kept with the XVA and the VHDs it names, and their ancestors,
  unmerged; if it does not say which VHDs it uses, none of the VM's VHDs is deleted or merged.
* A ``.<parent>.merge.json`` next to an existing parent is an interrupted merge: it is resumed
  (``resume_merge``) and nothing else touches that chain this time. One whose parent is gone had
  already renamed it: if it was cleaning up and its target is sound, the clean-up and the backups'
  metadata are finished (``resume_merge`` again), else the state is removed. A state that names no
  chain is removed and the merge planned again from the VHDs.
* XO allows one child per parent. Choice: if an unused VHD still has several surviving children, it
  is kept and a warning is given, rather than guessing which chain to merge.
* Root files no backup references (other than ``cache.json.gz``), VHD directories no alias points to,
  and ``vdis/<job>/<vdi>`` directories left without VHDs are removed. Temporary files
  (``.<ms>.<name>``) only with ``remove_temp`` (the VM lock must be held, as XO's writer does).
* ``merge=False``/``remove=False`` mirror XO's ``cleanVm({merge, remove})``: no merge actions / no
  deletions (warnings still report the problems).

All paths are remote paths (relative to the remote root); metadata ``vhds`` are resolved from the VM
directory.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_merge import _CLEANUP_STEPS
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import CACHE_NAME, is_temp_name, vm_backup_dir
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    named_files,
    vhd_remote_paths,
    xva_remote_path,
)

ORDER = ("delete_metadata", "delete_file", "delete_merge_state", "delete_vhd", "resume_merge", "merge", "delete_dir")
MIN_XVA_SIZE = 20  # isValidXva: anything smaller cannot be an XVA


@dataclass(frozen=True)
class Action:
    """One step. ``merge``: ``chain[0]`` receives the data of the rest and is renamed to ``path``
    (= ``chain[-1]``); then the metadata in ``backups`` get XO's post-merge update."""

    kind: str
    path: str
    reason: str
    chain: Tuple[str, ...] = ()
    backups: Tuple[str, ...] = ()
    differencing: Optional[bool] = None  # merge: the result still has a parent
    data: Optional[str] = None  # delete_vhd of an alias: the VHD directory it names
    state: Optional[str] = None  # resume_merge: the .merge.json file

    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v not in ((), None)}


@dataclass
class CleanPlan:
    actions: List[Action]
    warnings: List[str]
    kept: List[str]  # backup ids still there afterwards
    rewrite_cache: bool
    deleted_backups: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions) or self.rewrite_cache

    def of_kind(self, kind: str) -> List[Action]:
        return [a for a in self.actions if a.kind == kind]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "actions": [a.to_dict() for a in self.actions],
            "warnings": list(self.warnings),
            "kept": list(self.kept),
            "deleted_backups": list(self.deleted_backups),
            "rewrite_cache": self.rewrite_cache,
        }


def resolve_parent(child_path: str, parent_name: Optional[str]) -> Optional[str]:
    """Remote path of a VHD's parent from its header's ``parentUnicodeName`` (relative to the child)."""
    if not parent_name:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(child_path), parent_name))


def plan_clean_vm(
    vm_uuid: str,
    *,
    backups: Mapping[str, Mapping[str, Any]],
    vhds: Mapping[str, Optional[str]],
    delete: Iterable[str] = (),
    invalid_metadata: Optional[Mapping[str, str]] = None,
    odd_metadata: Optional[Mapping[str, Tuple[str, Mapping[str, Any]]]] = None,
    broken_vhds: Union[Mapping[str, str], Iterable[str]] = (),
    files: Optional[Mapping[str, int]] = None,
    merge_states: Optional[Mapping[str, Mapping[str, Any]]] = None,
    aliases: Optional[Mapping[str, str]] = None,
    data_dirs: Iterable[str] = (),
    vdi_dirs: Iterable[str] = (),
    cached_ids: Optional[Iterable[str]] = None,
    merge: bool = True,
    remove: bool = True,
    remove_temp: bool = False,
) -> CleanPlan:
    """Plan the clean-up of ``xo-vm-backups/<vm_uuid>``.

    backups: every valid metadata (id → dict); vhds: every VHD or alias under ``vdis/`` → its parent's
    path (None for a full disk); delete: ids retention removes now; invalid_metadata: id → why it
    could not be read; odd_metadata: id → (why, the JSON object) for metadata of a shape we do not know,
    kept with every file it may name; broken_vhds: VHDs that could not be opened (→ reason); files: plain files in
    the VM directory (name → size; None to skip those checks); merge_states: ``.merge.json`` path →
    content; aliases: alias path → VHD directory; data_dirs: VHD directories found under ``data/``;
    vdi_dirs: existing ``vdis/<job>/<vdi>`` directories; cached_ids: ids in ``cache.json.gz``.
    """
    vm_dir = vm_backup_dir(vm_uuid)
    warnings: List[str] = []
    deleted: Dict[str, str] = {}
    for bid in delete:
        if bid in backups:
            deleted[bid] = "retention"
    for bid, why in (invalid_metadata or {}).items():
        warnings.append(f"{bid}: unreadable backup metadata ({why})")
        if remove:
            deleted[bid] = f"unreadable metadata: {why}"

    odd = odd_metadata or {}
    odd_vhds, odd_dirs, pin_all = set(), set(), False
    for bid, (why, md) in sorted(odd.items()):
        _, paths = named_files(bid, md)
        if paths is None:  # which VHDs it uses cannot be known: none is deleted or merged meanwhile
            pin_all = True
            odd_vhds.update(vhds)
            warnings.append(
                f"{bid}: backup metadata of a shape this collection does not know ({why}); it is kept, and so are "
                "all of this VM's VHDs, since it does not say which it uses: fix or remove that file to let "
                "retention free space again"
            )
        else:
            odd_vhds.update(paths)
            odd_dirs.update(posixpath.dirname(path) for path in paths)
            warnings.append(f"{bid}: backup metadata of a shape this collection does not know ({why}); kept")
    # What it names stays even if we cannot open it (XO may; a newer format), with everything it rests on.
    odd_vhds = _with_ancestors(odd_vhds, vhds)

    broken = _broken(vhds, broken_vhds)
    for path in sorted(broken):
        warnings.append(f"{path}: broken VHD ({broken[path]})")

    _check_backups(backups, deleted, vhds, broken, files, remove, warnings)
    active = {bid: md for bid, md in backups.items() if bid not in deleted}
    referenced: Dict[str, List[str]] = {}
    for bid, md in active.items():
        for path in vhd_remote_paths(bid, md).values():
            referenced.setdefault(path, []).append(bid)

    actions: List[Action] = []
    for bid, why in deleted.items():
        actions.append(Action("delete_metadata", bid, why))

    pinned = _interrupted_merges(merge_states or {}, vm_dir, vhds, broken, referenced, remove, actions, warnings)
    pinned |= {p for p in odd_vhds if p in vhds and p not in broken}  # kept as they are, with their ancestors
    results = _plan_unused(vhds, broken, referenced, pinned, merge, warnings)
    doomed = set()
    for path, result in results.items():
        if result == "delete" and remove:
            doomed.add(path)
            actions.append(Action("delete_vhd", path, "no backup uses it any more", data=(aliases or {}).get(path)))
    for path in sorted(broken):
        if remove and path not in odd_vhds:
            doomed.add(path)
            actions.append(Action("delete_vhd", path, f"broken: {broken[path]}", data=(aliases or {}).get(path)))
    for path, result in sorted(results.items()):
        if isinstance(result, tuple) and not isinstance(results.get(vhds.get(path)), tuple):
            last = result[-1]
            actions.append(
                Action(
                    "merge",
                    last,
                    f"{path} is no longer used but {last} depends on it",
                    chain=result,
                    backups=tuple(sorted(referenced.get(last, ()))),
                    differencing=vhds.get(path) is not None,
                )
            )

    _files_plan(vm_dir, backups, invalid_metadata or {}, odd, deleted, files, remove, remove_temp, actions)
    if remove and not pin_all:  # metadata that does not say what it uses: no directory is ours to remove
        for data in sorted(set(data_dirs) - set((aliases or {}).values())):
            if posixpath.dirname(posixpath.dirname(data)) not in odd_dirs:
                actions.append(Action("delete_dir", data, "VHD directory that no alias names"))
        alive = {posixpath.dirname(p) for p in vhds if p not in doomed} | odd_dirs
        for directory in sorted((set(vdi_dirs) | {posixpath.dirname(p) for p in vhds}) - alive):
            actions.append(Action("delete_dir", directory, "no VHD left in this disk directory"))

    actions.sort(key=lambda a: ORDER.index(a.kind))  # stable: keeps the order within a kind
    rewrite = bool(deleted) or any(a.kind in ("merge", "resume_merge") for a in actions)
    if cached_ids is not None and set(cached_ids) != set(active):
        rewrite = True
    return CleanPlan(actions, warnings, sorted(active), rewrite, list(deleted))


def _with_ancestors(paths, vhds) -> set:
    """``paths`` and every VHD they rest on, as far as ``vhds`` (path → parent) knows them."""
    out, todo = set(), list(paths)
    while todo:
        path = todo.pop()
        if path in out:
            continue
        out.add(path)
        if vhds.get(path):
            todo.append(vhds[path])
    return out


def _as_map(values) -> Mapping[str, str]:
    if isinstance(values, Mapping):
        return values
    return {v: "could not be opened" for v in values}


def _broken(vhds, given) -> Dict[str, str]:
    """Broken VHDs: given ones, those with a missing parent or in a loop, and all their descendants."""
    status: Dict[str, Optional[str]] = {p: why for p, why in _as_map(given).items() if p in vhds}
    for start in vhds:
        trail: List[str] = []
        on_trail = set()
        node, cause = start, None
        while node not in status:
            if node in on_trail:
                cause = ("loop", node)
                break
            trail.append(node)
            on_trail.add(node)
            parent = vhds[node]
            if parent is None:
                break
            if parent not in vhds:
                cause = ("missing", parent)
                break
            node = parent
        else:
            if status[node] is not None:
                cause = ("ancestor", node)
        for item in trail:
            if cause is None:
                status[item] = None
            elif cause[0] == "loop":
                status[item] = "its VHD chain loops back on itself"
            elif cause[0] == "missing":
                status[item] = (
                    f"parent {cause[1]} is missing" if item == trail[-1] else f"ancestor {trail[-1]} is broken"
                )
            else:
                status[item] = f"ancestor {cause[1]} is broken"
    return {p: why for p, why in status.items() if why is not None}


def _check_backups(backups, deleted, vhds, broken, files, remove, warnings):
    for bid, md in backups.items():
        if bid in deleted:
            continue
        if md.get("mode") == "full":
            if files is None:
                continue
            name = posixpath.basename(xva_remote_path(bid, md))
            if name not in files:
                warnings.append(f"{bid}: its XVA {name} is missing")
                if remove:
                    deleted[bid] = f"its XVA {name} is missing"
            elif files[name] < MIN_XVA_SIZE or (md.get("size") is not None and files[name] != md["size"]):
                warnings.append(
                    f"{bid}: XVA {name} has {files[name]} bytes, metadata says {md.get('size')}: may be corrupt"
                )
            continue
        problems = []
        for path in vhd_remote_paths(bid, md).values():
            if path not in vhds:
                problems.append(f"{path} is missing")
            elif path in broken:
                problems.append(f"{path} is broken ({broken[path]})")
        if problems:
            warnings.append(f"{bid}: {'; '.join(problems)}")
            if remove:
                deleted[bid] = f"disk unusable: {'; '.join(problems)}"


def _interrupted_merges(states, vm_dir, vhds, broken, referenced, remove, actions, warnings) -> set:
    pinned = set()
    for state_path, state in sorted(states.items()):
        directory, name = posixpath.split(state_path)
        parent = posixpath.join(directory, name[1 : -len(".merge.json")])
        chain = []
        for item in (state.get("chain") or []) if isinstance(state, Mapping) else []:
            for joined in (posixpath.join(directory, item), posixpath.join(vm_dir, item), item):
                candidate = posixpath.normpath(joined)
                if candidate in vhds:
                    chain.append(candidate)
                    break
        if parent not in vhds:
            finishing = isinstance(state, Mapping) and state.get("step") in _CLEANUP_STEPS
            if chain and finishing and chain[-1] not in broken:
                # Killed after the parent took the newest child's name: only the folded-in children
                # and the backups' post-merge metadata are left to do.
                pinned.update(chain)
                backups = tuple(sorted(referenced.get(chain[-1], ())))
                why, kind = "interrupted merge, finishing its clean-up", "resume_merge"
                actions.append(Action(kind, chain[-1], why, chain=tuple(chain), backups=backups, state=state_path))
            elif remove:
                actions.append(Action("delete_merge_state", state_path, f"{parent} no longer exists"))
            continue
        if len(chain) < 2:
            # Unreadable, or names no child: which merge it was cannot be known, so it is planned again from
            # the VHDs as they are. A VHD file merge that was copying blocks is simply done again (it rewrites
            # the parent's blocks from the child). One that had already given the parent the child's identity,
            # or a directory merge that had moved blocks, then fails on that and says so, every run, rather
            # than guessing.
            warnings.append(f"{state_path}: interrupted merge whose state names no chain; planned again from the VHDs")
            if remove:
                actions.append(Action("delete_merge_state", state_path, "its state names no chain"))
            continue
        pinned.update(chain)
        pinned.add(parent)
        backups = tuple(sorted(referenced.get(chain[-1], ())))  # their size is rewritten once it is done
        why, kind = "interrupted merge", "resume_merge"
        actions.append(Action(kind, chain[-1], why, chain=tuple(chain), backups=backups, state=state_path))
    return pinned


def _plan_unused(vhds, broken, referenced, pinned, merge, warnings):
    """Result per unused VHD: "delete", "keep", or the merge chain (tuple) starting at it."""
    children: Dict[str, List[str]] = {}
    for path, parent in vhds.items():
        if parent is not None and path not in broken:
            children.setdefault(parent, []).append(path)
    depth: Dict[str, int] = {}
    for start in vhds:
        trail, node = [], start
        while node is not None and node not in depth and node not in broken:
            trail.append(node)
            node = vhds[node]
        base = depth.get(node, -1) if node is not None else -1
        for i, item in enumerate(reversed(trail)):
            depth[item] = base + 1 + i
    unused = [p for p in vhds if p not in referenced and p not in broken and p not in pinned]
    results: Dict[str, Any] = {}
    for path in sorted(unused, key=lambda p: -depth[p]):  # children before parents
        survivors = []
        for kid in sorted(children.get(path, [])):
            if kid in pinned:
                survivors.append("keep")
            elif kid in referenced:
                survivors.append((kid,))
            elif results[kid] != "delete":
                survivors.append(results[kid])
        if not survivors:
            results[path] = "delete"
        elif len(survivors) > 1:
            warnings.append(f"{path}: unused VHD with several children ({', '.join(sorted(children[path]))}); kept")
            results[path] = "keep"
        elif survivors[0] == "keep":
            results[path] = "keep"
        else:
            results[path] = (path,) + survivors[0]
    if not merge:
        results = {p: ("keep" if isinstance(r, tuple) else r) for p, r in results.items()}
    return results


def _files_plan(vm_dir, backups, invalid, odd, deleted, files, remove, remove_temp, actions):
    protected = {CACHE_NAME}
    doomed = []
    for bid in list(backups) + list(invalid) + list(odd):
        ts_name = posixpath.basename(bid)
        xva = None
        if bid in backups and backups[bid].get("mode") == "full":
            xva = posixpath.basename(xva_remote_path(bid, backups[bid]))
        elif bid in invalid:
            xva = ts_name[: -len(".json")] + ".xva"  # unreadable metadata: guard the XVA of the same name
        names = [ts_name] + ([xva, xva + ".checksum"] if xva else [])
        if bid in odd:  # the XVA it names, if it names one in this directory, and the one of its name
            named = named_files(bid, odd[bid][1])[0]
            names += [ts_name[: -len(".json")] + ".xva", ts_name[: -len(".json")] + ".xva.checksum"]
            if named is not None and posixpath.dirname(named) == vm_dir:
                names += [posixpath.basename(named), posixpath.basename(named) + ".checksum"]
        if bid in deleted:
            doomed += [n for n in names[1:] if files is None or n in files]
        else:
            protected.update(names)
    for name in doomed:  # files of backups being deleted go with their JSON, even with remove=False
        actions.append(Action("delete_file", f"{vm_dir}/{name}", "belongs to a deleted backup"))
    if files is None or not remove:
        return
    deleted_names = {posixpath.basename(b) for b in deleted} | set(doomed)
    for name in sorted(files):
        if name in protected or name in deleted_names:
            continue
        if name.startswith("."):
            if remove_temp and is_temp_name(name):
                actions.append(Action("delete_file", f"{vm_dir}/{name}", "temporary file of an interrupted write"))
            continue
        actions.append(Action("delete_file", f"{vm_dir}/{name}", "no backup references it"))

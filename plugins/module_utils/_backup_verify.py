"""Check that a VM backup on a remote is whole, reading each of its files once, as a stream.

What :meth:`BackupVerifier.verify` checks (xo-backups.md §1-§2):

* the metadata, read again from its own file (never from ``cache.json.gz``): valid JSON with the keys
  a restore needs, naming the VM whose directory holds it;
* a full backup: the XVA exists and has the size the metadata records; its compression stream, tar
  structure, ``ova.xml`` and every chunk's ``.xxhash``/``.checksum`` entry are sound
  (``_xva_read.verify_xva``); the hash of its stored bytes equals its ``.xva.checksum``;
* an incremental backup: each VHD the metadata names exists and has the VDI's virtual size, and it and
  every parent down to the full VHD pass ``_vhd_verify.check_vhd`` (footers, header, BAT); each parent
  exists and carries the uuid its child was made against. VHD directories (``<ts>.alias.vhd``) get the
  same footer/header and link checks, plus a block object for every block their BAT lists, each one
  decompressed and of a block's size.

A problem is ``{"file": remote path, "problem": one sentence}``. Files that several backups share (the
older VHDs of a chain) are read once per :class:`BackupVerifier`, which the listing also uses to give
each disk's chain of VHDs (:meth:`BackupVerifier.chains`) from their headers alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from ._storage import NotFoundError, StorageError
from ._vhd_chain import MAX_CHAIN_LENGTH, parent_path
from ._vhd_directory import VhdDirectory
from ._vhd_errors import VhdError, VhdFormatError, VhdUnsupportedError
from ._vhd_format import (
    DISK_TYPE_DIFFERENCING,
    DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    HEADER_SIZE,
    SECTOR_SIZE,
    Footer,
    Header,
    block_count,
    uuid_str,
)
from ._vhd_verify import MAX_LISTED, check_vhd
from ._xo_checksum import XvaChecksum, parse_checksum
from ._xo_layout import CHECKSUM_SUFFIX, resolve_alias
from ._xo_listing import BackupInfo, backup_info
from ._xo_metadata import MetadataError, parse_metadata
from ._xva_read import verify_xva

READ_SIZE = 1 << 20  # bytes per read when a caller asks for "everything"
ALIAS_SUFFIX = ".alias.vhd"
_ALIAS_LIMIT = 4096


def problem(path: str, text: str) -> Dict[str, str]:
    return {"file": path, "problem": text}


def _without_prefix(path: str, text: str) -> str:
    # check_vhd, verify_xva and MetadataError start their messages with the file name; the file is
    # reported on its own.
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _inside_remote(path: str) -> bool:
    return not (path.startswith("/") or path == ".." or path.startswith("../") or "\0" in path)


@dataclass(frozen=True)
class VhdHead:
    """What a chain walk needs from a VHD's footer and header (file or VHD directory)."""

    path: str
    uuid: bytes
    differencing: bool
    parent_uuid: bytes
    parent_name: str
    virtual_size: int
    block_size: int
    max_table_entries: int
    directory: Optional[str] = None  # the VHD directory an alias names


class _Unusable:
    """A VHD that cannot take part in a chain: missing, unreadable or outside the remote."""

    def __init__(self, why: str, missing: bool = False):
        self.why = why
        self.missing = missing


@dataclass
class Chain:
    """One disk's VHDs from the one a backup names down to the full one (as far as they could be read)."""

    members: List[str]
    complete: bool
    problems: List[Dict[str, str]]


class _HashingReader:
    """Pass reads through to ``stream`` while hashing them, so one pass both parses and checksums."""

    def __init__(self, stream, algorithm=None):
        self.stream = stream
        self.checksum = XvaChecksum(algorithm) if algorithm else None

    def readable(self):
        return True

    def read(self, size=-1):
        if size is None or size < 0:
            size = READ_SIZE  # never the whole file at once
        data = self.stream.read(size)
        if data and self.checksum is not None:
            self.checksum.update(data)
        return data

    def drain(self):
        """Hash whatever the parser left unread (data after the tar end)."""
        while self.read(READ_SIZE):
            pass


def _parse_head(path, footer_raw, header_at, read_header, directory=None):
    footer = Footer.parse(footer_raw, path, 0)
    if footer.disk_type == DISK_TYPE_FIXED:
        raise VhdUnsupportedError("fixed VHDs are not supported", path)
    if footer.disk_type not in (DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING):
        raise VhdFormatError(f"unknown disk type {footer.disk_type}", path, 60)
    if header_at is None:
        header_at = footer.data_offset
    header = Header.parse(read_header(header_at), path, header_at)
    return VhdHead(
        path=path,
        uuid=footer.uuid,
        differencing=footer.disk_type == DISK_TYPE_DIFFERENCING,
        parent_uuid=header.parent_uuid,
        parent_name=header.parent_name,
        virtual_size=footer.current_size,
        block_size=header.block_size,
        max_table_entries=header.max_table_entries,
        directory=directory,
    )


def read_vhd_head(stream, path) -> VhdHead:
    """Footer and header of a VHD file from ``stream`` (a storage read stream): usually one ranged read."""
    head = stream.pread(0, FOOTER_SIZE + HEADER_SIZE)
    footer_raw = head[:FOOTER_SIZE]
    try:
        Footer.parse(footer_raw, path, 0)
    except VhdFormatError:
        # The copy at 0 is damaged: the trailing footer (what a reader falls back to) may still be good.
        trailing = stream.pread(max(stream.size - FOOTER_SIZE, 0), FOOTER_SIZE)
        try:
            Footer.parse(trailing, path, 0)
            footer_raw = trailing
        except VhdFormatError:
            pass  # report the first footer's error

    def read_header(at):
        if at + HEADER_SIZE <= len(head):
            return head[at : at + HEADER_SIZE]
        return stream.pread(at, HEADER_SIZE)

    return _parse_head(path, footer_raw, None, read_header)


class BackupVerifier:
    """Verify backups and walk VHD chains on one storage, reading each shared file only once."""

    def __init__(self, storage):
        self.storage = storage
        self._heads: Dict[str, Union[VhdHead, _Unusable]] = {}
        self._chains: Dict[str, Chain] = {}
        self._checked: Dict[str, List[Dict[str, str]]] = {}

    # -- VHD heads and chains ---------------------------------------------------------------
    def head(self, path: str) -> Union[VhdHead, _Unusable]:
        if path not in self._heads:
            self._heads[path] = self._read_head(path)
        return self._heads[path]

    def _read_head(self, path):
        if not _inside_remote(path):
            return _Unusable("points outside the remote")
        try:
            if path.endswith(ALIAS_SUFFIX):
                return self._read_directory_head(path)
            with self.storage.open_read(path) as stream:
                return read_vhd_head(stream, path)
        except NotFoundError:
            return _Unusable("missing", missing=True)
        except VhdError as e:
            return _Unusable(e.message)
        except (StorageError, ValueError) as e:
            return _Unusable(f"cannot be read: {e}")

    def _alias_target(self, path):
        text = self.storage.read_bytes(path, limit=_ALIAS_LIMIT).decode("utf-8", "replace")
        return resolve_alias(path, text)  # ValueError when it points outside the remote

    def _read_directory_head(self, path):
        directory = self._alias_target(path)  # NotFoundError: the alias itself is missing
        try:
            footer_raw = self.storage.read_bytes(f"{directory}/footer", limit=_ALIAS_LIMIT)
            header_raw = self.storage.read_bytes(f"{directory}/header", limit=_ALIAS_LIMIT)
        except NotFoundError as e:
            return _Unusable(f"names the VHD directory {directory}, which is missing or incomplete ({e})")
        head = _parse_head(path, footer_raw, 0, lambda _at: header_raw, directory=directory)
        if head.block_size < SECTOR_SIZE or head.block_size & (head.block_size - 1):
            raise VhdFormatError(f"block size {head.block_size} is not a power of two of at least 512", path)
        return head

    def chain(self, path: str) -> Chain:
        """The chain of the VHD at ``path``, with the problems of its links (not of each file)."""
        if path not in self._chains:
            self._chains[path] = self._walk(path)
        return self._chains[path]

    def _walk(self, path):
        members, problems = [], []
        current, child = path, None
        while True:
            head = self.head(current)
            if isinstance(head, _Unusable) and head.missing:
                if child is not None:
                    problems.append(
                        problem(
                            current,
                            f"missing: it is the parent of {child.path} (which expects uuid "
                            f"{uuid_str(child.parent_uuid)}), so that disk cannot be restored",
                        )
                    )
                return Chain(members, False, problems)
            members.append(current)
            if isinstance(head, _Unusable):
                return Chain(members, False, problems)  # the file's own check says why
            if not head.differencing:
                return Chain(members, True, problems)
            if not head.parent_name:
                return Chain(members, False, problems)  # check_vhd: "differencing disk without a parent name"
            parent = parent_path(current, head.parent_name)
            if not _inside_remote(parent):
                problems.append(problem(current, f"its parent name {head.parent_name!r} points outside the remote"))
                return Chain(members, False, problems)
            if parent in members or len(members) >= MAX_CHAIN_LENGTH:
                problems.append(problem(current, f"its parent {parent} loops back into its own chain"))
                return Chain(members, False, problems)
            parent_head = self.head(parent)
            if isinstance(parent_head, VhdHead):
                if parent_head.uuid != head.parent_uuid:
                    problems.append(
                        problem(
                            current,
                            f"was made against a parent with uuid {uuid_str(head.parent_uuid)}, but its parent "
                            f"{parent} has uuid {uuid_str(parent_head.uuid)}",
                        )
                    )
                    return Chain(members, False, problems)
                if parent_head.block_size != head.block_size:
                    problems.append(
                        problem(
                            current,
                            f"has {head.block_size}-byte blocks but its parent {parent} has "
                            f"{parent_head.block_size}-byte blocks",
                        )
                    )
                    return Chain(members, False, problems)
            child, current = head, parent

    def chains(self, backup: BackupInfo) -> List[Dict[str, Any]]:
        """Per disk of an incremental backup: its VHDs from the backup's own down to the full one."""
        out = []
        md = backup.metadata
        positions = {}
        for vbd in (md.get("vbds") or {}).values():
            if isinstance(vbd, dict) and isinstance(vbd.get("VDI"), str):
                positions.setdefault(vbd["VDI"], vbd.get("userdevice"))
        for ref, path in backup.vhds.items():
            record = (md.get("vdis") or {}).get(ref) or {}
            chain = self.chain(path)
            out.append(
                {
                    "vdi_uuid": record.get("uuid"),
                    "name_label": record.get("name_label"),
                    "userdevice": positions.get(ref),
                    "vhds": list(chain.members),
                    "complete": chain.complete,
                }
            )
        return out

    # -- whole-file checks ------------------------------------------------------------------
    def vhd_problems(self, path: str) -> List[Dict[str, str]]:
        """Problems of one VHD file or directory on its own (no parent), cached."""
        if path not in self._checked:
            self._checked[path] = self._check_vhd(path)
        return self._checked[path]

    def _check_vhd(self, path):
        head = self.head(path)
        if isinstance(head, _Unusable) and head.missing:
            return []  # reported by whoever names it
        try:
            if path.endswith(ALIAS_SUFFIX):
                return self._check_directory(path, head)
            with self.storage.open_read(path) as stream:
                found = check_vhd(stream, path, size=stream.size)
        except (StorageError, ValueError) as e:
            return [problem(path, f"cannot be read: {e}")]
        return [problem(path, _without_prefix(path, text)) for text in found]

    def _check_directory(self, alias, head):
        """A VHD directory: readable alias, footer and header, a BAT covering the disk, every listed block."""
        if isinstance(head, _Unusable):
            return [problem(alias, head.why)]
        directory = head.directory
        out = []
        needed = block_count(head.virtual_size, head.block_size)
        if head.max_table_entries < needed:
            out.append(
                problem(
                    f"{directory}/header",
                    f"BAT has {head.max_table_entries} entries, {needed} are needed for {head.virtual_size} bytes",
                )
            )
        bat_path = f"{directory}/bat"
        try:
            with self.storage.open_read(bat_path) as stream:
                bat = stream.pread(0, -(-head.max_table_entries // 8))
        except NotFoundError:
            return [*out, problem(bat_path, "missing: the VHD directory has no block table")]
        if len(bat) * 8 < head.max_table_entries:
            out.append(problem(bat_path, f"holds {len(bat) * 8} block bits, {head.max_table_entries} are needed"))
        listed = [i for i in range(min(len(bat) * 8, head.max_table_entries)) if bat[i >> 3] & (0x80 >> (i & 7))]
        try:
            reader = VhdDirectory(self.storage, directory, name=alias)
        except (VhdError, StorageError) as e:
            return [*out, problem(alias, f"cannot be read as a VHD directory: {_without_prefix(alias, str(e))}")]
        present = {}
        for group in self.storage.list(f"{directory}/blocks", missing_ok=True):
            for name in self.storage.list(f"{directory}/blocks/{group}", missing_ok=True):
                present[f"{group}/{name}"] = name
        missing = [i for i in listed if f"{i // 1000}/{i % 1000}" not in present]
        absent = set(missing)
        for index in missing[:MAX_LISTED]:
            out.append(problem(f"{directory}/blocks/{index // 1000}/{index % 1000}", "missing: the BAT lists it"))
        if len(missing) > MAX_LISTED:
            out.append(problem(f"{directory}/blocks", f"... and {len(missing) - MAX_LISTED} more missing blocks"))
        # Every present block is read back and decompressed: its size (bitmap + data) is checked.
        wrong = 0
        for index in listed:
            if index in absent:
                continue
            try:
                reader.read_block_raw(index)
            except (VhdError, StorageError) as e:
                wrong += 1
                if wrong <= MAX_LISTED:
                    block = reader.block_path(index)
                    out.append(problem(block, _without_prefix(block, getattr(e, "message", str(e)))))
        if wrong > MAX_LISTED:
            out.append(problem(f"{directory}/blocks", f"... and {wrong - MAX_LISTED} more unreadable blocks"))
        return out

    # -- one backup ---------------------------------------------------------------------------
    def verify(self, backup_id: str) -> List[Dict[str, str]]:
        """Every problem of backup ``backup_id`` (its metadata path); an empty list means it is sound."""
        try:
            data = self.storage.read_bytes(backup_id)
        except NotFoundError:
            return [problem(backup_id, "missing: the backup's metadata file is gone")]
        except StorageError as e:
            return [problem(backup_id, f"cannot be read: {e}")]
        try:
            backup = backup_info(backup_id, parse_metadata(data, backup_id))
        except MetadataError as e:
            return [problem(backup_id, _without_prefix(backup_id, str(e)))]
        out = []
        if backup.metadata["vm"]["uuid"] != backup.vm_uuid:
            out.append(
                problem(
                    backup_id,
                    f"describes VM {backup.metadata['vm']['uuid']} but lies in the directory of VM {backup.vm_uuid}",
                )
            )
        if backup.mode == "full":
            out += self._verify_full(backup)
        else:
            out += self._verify_delta(backup)
        unique = []
        for item in out:
            if item not in unique:
                unique.append(item)
        return unique

    def _verify_delta(self, backup):
        out = []
        vdis = backup.metadata.get("vdis") or {}
        for ref, path in backup.vhds.items():
            record = vdis.get(ref) or {}
            disk = f"disk {record.get('name_label', '')!r} (VDI {record.get('uuid', ref)})"
            head = self.head(path)
            if isinstance(head, _Unusable) and head.missing:
                out.append(problem(path, f"missing: the metadata names it for {disk}"))
                continue
            if isinstance(head, VhdHead) and record.get("virtual_size") is not None:
                try:
                    expected = int(record["virtual_size"])
                except (TypeError, ValueError):
                    expected = None
                if expected is not None and expected != head.virtual_size:
                    out.append(
                        problem(
                            path,
                            f"holds a {head.virtual_size}-byte disk but the metadata records {expected} bytes "
                            f"for {disk}",
                        )
                    )
            chain = self.chain(path)
            out += chain.problems
            for member in chain.members:
                out += self.vhd_problems(member)
        return out

    def _verify_full(self, backup):
        xva = backup.xva
        checksum_path = xva + CHECKSUM_SUFFIX
        out = []
        expected = None
        try:
            expected = parse_checksum(self.storage.read_bytes(checksum_path, limit=_ALIAS_LIMIT))
        except NotFoundError:
            out.append(
                problem(
                    checksum_path,
                    "missing: Xen Orchestra and this collection write it next to every full backup, and without "
                    "it the stored bytes cannot be checked",
                )
            )
        except (StorageError, ValueError) as e:
            out.append(problem(checksum_path, f"unusable: {e}"))
        try:
            stream = self.storage.open_read(xva)
        except NotFoundError:
            return [*out, problem(xva, "missing: the metadata names it as the backup's XVA")]
        except StorageError as e:
            return [*out, problem(xva, f"cannot be read: {e}")]
        content = []
        with stream:
            if backup.size is not None and stream.size != backup.size:
                content.append(
                    problem(
                        xva, f"is {stream.size} bytes but the metadata records {backup.size}: truncated or replaced"
                    )
                )
            reader = _HashingReader(stream, expected.algorithm if expected else None)
            try:
                content += [problem(xva, _without_prefix(xva, t)) for t in verify_xva(reader, xva)]
                reader.drain()
            except StorageError as e:
                return [*out, *content, problem(xva, f"cannot be read to the end: {e}")]
        out += content
        actual = reader.checksum.result if expected is not None else None
        if expected is not None and actual != expected:
            # A sound archive with another hash points at the checksum file; a damaged one at the XVA.
            size, name = reader.checksum.size, checksum_path.rsplit("/", 1)[-1]
            if content:
                out.append(problem(xva, f"its {size} stored bytes hash to {actual.label}, not the "
                                        f"{expected.hexdigest} that {name} records"))  # fmt: skip
            else:
                out.append(problem(checksum_path, f"records {expected.label}, but the XVA, whose content checks "
                                                  f"out, hashes to {actual.hexdigest} over its {size} bytes: this "
                                                  "file was altered or belongs to another XVA"))  # fmt: skip
        return out


def verify_backup(storage, backup_id: str) -> List[Dict[str, str]]:
    """Problems of one backup (see :class:`BackupVerifier`); an empty list means it is sound."""
    return BackupVerifier(storage).verify(backup_id)

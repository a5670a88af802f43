"""Disk content: VHD-like chains of sparse nodes, so snapshots and clones share unchanged blocks.

A node is a sparse file plus an allocation map (one byte per 2 MiB block, as a VHD BAT) and a CBT
map (one byte per 64 KiB, the granularity of ``VDI.list_changed_blocks``). Snapshotting freezes a
VDI's leaf node and gives the VDI a new empty leaf on top, so a 32 GiB disk with 100 MiB written
costs about 100 MiB, and "blocks allocated in nodes not shared by two chains" is exactly xapi's
delta rule for ``/export_raw_vdi?base=``.
"""

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

BLOCK = 2 * 1024 * 1024
CBT_UNIT = 64 * 1024
ZERO_BLOCK = bytes(BLOCK)


class NoSpace(Exception):
    """A write would need more physical space than the SR has."""


class Node:
    def __init__(self, root, nid, meta):
        self.id = nid
        self.parent = meta.get("parent")
        self.sr = meta["sr"]
        self.refs = meta.get("refs", 0)
        self.path = root / f"{nid}.img"
        self.map_path = root / f"{nid}.map"
        self.cbt_path = root / f"{nid}.cbt"
        self.alloc = bytearray(self.map_path.read_bytes()) if self.map_path.exists() else bytearray()
        self.cbt = bytearray(self.cbt_path.read_bytes()) if self.cbt_path.exists() else bytearray()
        self.fd = None

    def meta(self):
        return {"parent": self.parent, "sr": self.sr, "refs": self.refs}

    def open(self):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self.fd

    def allocated(self, block):
        return block < len(self.alloc) and self.alloc[block]

    def mark(self, block):
        if block >= len(self.alloc):
            self.alloc.extend(bytes(block + 1 - len(self.alloc)))
        if not self.alloc[block]:
            self.alloc[block] = 1
            with open(self.map_path, "r+b" if self.map_path.exists() else "wb") as fh:
                fh.seek(block)
                fh.write(b"\x01")

    def mark_cbt(self, offset, length):
        first, last = offset // CBT_UNIT, (offset + length - 1) // CBT_UNIT
        if last >= len(self.cbt):
            self.cbt.extend(bytes(last + 1 - len(self.cbt)))
        for i in range(first, last + 1):
            self.cbt[i] = 1
        self.cbt_path.write_bytes(bytes(self.cbt))

    def blocks(self):
        return [i for i, v in enumerate(self.alloc) if v]


class Storage:
    def __init__(self, state_dir):
        self.root = Path(state_dir) / "nodes"
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.json"
        self.lock = threading.RLock()
        self.nodes = {}
        if self.index_path.exists():
            for nid, meta in json.loads(self.index_path.read_text()).items():
                self.nodes[nid] = Node(self.root, nid, meta)
        self.capacity = {}  # sr uuid -> physical size, for the full-SR check on writes
        self._used = {}
        for n in self.nodes.values():
            self._used[n.sr] = self._used.get(n.sr, 0) + len(n.blocks()) * BLOCK

    def _save(self):
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({n.id: n.meta() for n in self.nodes.values()}))
        os.replace(tmp, self.index_path)

    # -- node lifecycle -------------------------------------------------------------------------
    def new_node(self, sr, parent=None):
        with self.lock:
            nid = uuid.uuid4().hex
            node = Node(self.root, nid, {"parent": parent, "sr": sr, "refs": 1})
            node.path.touch()
            self.nodes[nid] = node
            self._save()
            return nid

    def chain(self, nid):
        out = []
        while nid is not None:
            out.append(self.nodes[nid])
            nid = self.nodes[nid].parent
        return out

    def children(self, nid):
        return [n for n in self.nodes.values() if n.parent == nid]

    def ref(self, nid):
        with self.lock:
            self.nodes[nid].refs += 1
            self._save()

    def release(self, nid):
        """Drop one VDI's reference; delete or coalesce nodes nobody reads any more."""
        with self.lock:
            self.nodes[nid].refs -= 1
            self._collect(nid)
            self._save()

    def _collect(self, nid):
        # Nodes nobody reads go at once; a node still under a child stays, as on an SR whose
        # garbage collector has not coalesced it yet (xapi coalesces in the background, never in
        # the VDI.destroy call itself, so the call stays fast whatever the disk holds).
        while nid is not None and nid in self.nodes:
            node = self.nodes[nid]
            if node.refs > 0 or self.children(nid):
                return
            parent = node.parent
            self._delete(node)
            nid = parent

    def _delete(self, node):
        self._used[node.sr] = self._used.get(node.sr, 0) - len(node.blocks()) * BLOCK
        if node.fd is not None:
            os.close(node.fd)
        for p in (node.path, node.map_path, node.cbt_path):
            p.unlink(missing_ok=True)
        del self.nodes[node.id]

    # -- snapshots ------------------------------------------------------------------------------
    def freeze(self, nid):
        """Freeze a writable leaf: the caller keeps ``nid`` for the snapshot and gets a new leaf."""
        with self.lock:
            node = self.nodes[nid]
            return self.new_node(node.sr, parent=nid)

    def copy(self, nid, size, sr):
        """A full, independent copy (``VDI.copy``): only allocated blocks are written."""
        new = self.new_node(sr)
        for b in self.allocated_blocks(nid):
            self.write(new, b * BLOCK, self.read_block(nid, b), track=False)
        return new

    # -- data -----------------------------------------------------------------------------------
    def allocated_blocks(self, nid):
        seen = set()
        for node in self.chain(nid):
            seen.update(node.blocks())
        return sorted(seen)

    def read_block(self, nid, block):
        for node in self.chain(nid):
            if node.allocated(block):
                data = os.pread(node.open(), BLOCK, block * BLOCK)
                return data if len(data) == BLOCK else data + bytes(BLOCK - len(data))
        return ZERO_BLOCK

    def read(self, nid, offset, length):
        """``length`` bytes at ``offset``, reading only that range from the node that holds each block."""
        chain = self.chain(nid)
        parts = []
        while length > 0:
            b, within = divmod(offset, BLOCK)
            n = min(length, BLOCK - within)
            owner = next((node for node in chain if node.allocated(b)), None)
            data = os.pread(owner.open(), n, offset) if owner is not None else b""
            parts.append(data if len(data) == n else data + bytes(n - len(data)))
            offset += n
            length -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def used(self, sr):
        return self._used.get(sr, 0)

    def _mark(self, node, block):
        if not node.allocated(block):
            node.mark(block)
            self._used[node.sr] = self._used.get(node.sr, 0) + BLOCK

    def write(self, nid, offset, data, track=True):
        """Write as the guest would: whole-block copy-on-write into the leaf, CBT log updated."""
        with self.lock:
            leaf = self.nodes[nid]
            new_blocks = [
                b
                for b in range(offset // BLOCK, (offset + max(len(data), 1) - 1) // BLOCK + 1)
                if not leaf.allocated(b)
            ]
            cap = self.capacity.get(leaf.sr)
            if cap is not None and new_blocks and self.used(leaf.sr) + len(new_blocks) * BLOCK > cap:
                raise NoSpace(leaf.sr)
            fd = leaf.open()
            pos = 0
            while pos < len(data):
                b, within = divmod(offset + pos, BLOCK)
                n = min(len(data) - pos, BLOCK - within)
                if not leaf.allocated(b):
                    if n < BLOCK:
                        os.pwrite(fd, self.read_block(nid, b), b * BLOCK)
                    self._mark(leaf, b)
                os.pwrite(fd, data[pos : pos + n], offset + pos)
                pos += n
            if track and data:
                leaf.mark_cbt(offset, len(data))

    def sha256(self, nid, size):
        h = hashlib.sha256()
        allocated = set(self.allocated_blocks(nid))
        for b in range((size + BLOCK - 1) // BLOCK):
            n = min(BLOCK, size - b * BLOCK)
            h.update(self.read_block(nid, b)[:n] if b in allocated else ZERO_BLOCK[:n])
        return h.hexdigest()

    def delta_blocks(self, nid, base):
        """Blocks allocated in nodes the two chains do not share (xapi's rule for ``base=``)."""
        a = {n.id for n in self.chain(nid)}
        b = {n.id for n in self.chain(base)}
        out = set()
        for n in a ^ b:
            out.update(self.nodes[n].blocks())
        return sorted(out)

    def changed_units(self, from_nid, to_nid, size):
        """CBT bitmap (one bit per 64 KiB, MSB first) of what changed between two chain points."""
        a = {n.id for n in self.chain(to_nid)}
        b = {n.id for n in self.chain(from_nid)}
        units = (size + CBT_UNIT - 1) // CBT_UNIT
        bits = bytearray((units + 7) // 8)
        for nid in a ^ b:
            for i, v in enumerate(self.nodes[nid].cbt[:units]):
                if v:
                    bits[i >> 3] |= 0x80 >> (i & 7)
        return bytes(bits)

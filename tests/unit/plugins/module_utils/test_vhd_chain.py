"""Chains of VHD files: virtual content, flattening to one VHD or raw, broken links."""

import io
import os
import random
import uuid

import pytest
from vhd_support import BS, MiB, needs_qemu, qemu_raw, random_block, random_disk, write_vhd

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import full_mask
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import (
    VhdChain,
    open_vhd_chain,
    open_vhd_chain_files,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdChainError,
    VhdMissingParentError,
    VhdParentMismatchError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import VhdFile, open_vhd
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_read import VhdStreamReader

SIZE = 8 * BS + 3 * MiB  # not a multiple of the block size


def overlay(raw, blocks, masks=None, size=SIZE):
    """Expected content after applying a child's blocks (only masked sectors where a mask is given)."""
    out = bytearray(raw)
    for index, data in blocks.items():
        mask = (masks or {}).get(index, full_mask(BS))
        for sector in range(BS // 512):
            if mask >> (BS // 512 - 1 - sector) & 1:
                start = index * BS + sector * 512
                if start < size:
                    out[start : min(size, start + 512)] = data[sector * 512 : sector * 512 + 512][: size - start]
    return bytes(out)


@pytest.fixture
def chain_files(tmp_path):
    """base (dynamic) <- delta1 <- delta2, XO style, with partial bitmaps in delta2."""
    base_blocks, base_raw = random_disk(SIZE, 1, density=0.6)
    rng = random.Random(2)
    d1_blocks = {i: random_block(rng) for i in (0, 3, 5, 9)}
    d2_blocks = {i: random_block(rng) for i in (0, 1, 5)}
    # delta2 holds sectors 0..99 and 2000..2047 of block 0 and only sector 7 of block 5
    masks = {
        0: sum(1 << (4095 - s) for s in [*range(100), *range(2000, 2048)]),
        5: 1 << (4095 - 7),
    }
    ids = [uuid.uuid4() for _ in range(3)]
    dirpath = tmp_path / "vdis" / "job" / "vdi"
    dirpath.mkdir(parents=True)
    base, d1, d2 = (dirpath / n for n in ("20240101T000000Z.vhd", "20240102T000000Z.vhd", "20240103T000000Z.vhd"))
    write_vhd(base, SIZE, base_blocks, uuid=ids[0])
    write_vhd(d1, SIZE, d1_blocks, uuid=ids[1], parent=(ids[0], base.name))
    write_vhd(d2, SIZE, d2_blocks, uuid=ids[2], parent=(ids[1], d1.name), masks=masks)
    expected = overlay(overlay(base_raw, d1_blocks), d2_blocks, masks)
    return {
        "paths": (base, d1, d2),
        "ids": ids,
        "expected": expected,
        "expected_d1": overlay(base_raw, d1_blocks),
        "allocated": sorted(set(base_blocks) | set(d1_blocks) | set(d2_blocks)),
        "d1_blocks": d1_blocks,
    }


def test_chain_reads_child_over_parents_respecting_bitmaps(chain_files):
    base, d1, d2 = chain_files["paths"]
    with open_vhd_chain(str(d2)) as chain:
        assert [m.name for m in chain.members] == [str(d2), str(d1), str(base)]
        assert chain.virtual_size == SIZE and chain.uuid == chain_files["ids"][2].bytes
        assert chain.allocated_blocks() == chain_files["allocated"]
        raw = chain.raw_stream()
        assert raw.size == SIZE
        assert b"".join(raw) == chain_files["expected"]
        for index, data in chain.iter_virtual_blocks():
            inside = chain_files["expected"][index * BS : (index + 1) * BS]  # bytes past the size are unspecified
            assert len(data) == BS and data[: len(inside)] == inside


def test_flattened_vhd_is_one_dynamic_disk(chain_files, tmp_path):
    _, _, d2 = chain_files["paths"]
    with open_vhd_chain(str(d2)) as chain:
        flat = chain.flattened_vhd()
        out = tmp_path / "flat.vhd"
        with open(out, "wb") as f:
            assert flat.write_to(f) == flat.size
        reader = flat.reader()
        assert len(reader.read()) == flat.size
    assert out.stat().st_size == flat.size
    with open_vhd(str(out)) as vhd:
        assert not vhd.is_differencing and vhd.uuid == chain_files["ids"][2].bytes
        assert vhd.allocated_blocks() == chain_files["allocated"]
    with open_vhd_chain(str(out)) as single:
        assert b"".join(single.raw_stream()) == chain_files["expected"]
    # the flattened stream parses as the import handler would read it
    with open(out, "rb") as f:
        parsed = dict(VhdStreamReader(f).blocks())
    assert sorted(parsed) == chain_files["allocated"]


@needs_qemu
def test_qemu_reads_flattened_chain(chain_files, tmp_path):
    _, _, d2 = chain_files["paths"]
    out = tmp_path / "flat.vhd"
    with open_vhd_chain(str(d2)) as chain, open(out, "wb") as f:
        chain.flattened_vhd().write_to(f)
    assert qemu_raw(out, tmp_path) == chain_files["expected"]


@needs_qemu
def test_qemu_on_a_differencing_disk_reads_only_the_child(chain_files, tmp_path):
    """qemu's vpc driver has no backing-file support (``qemu-img create -b`` refuses vpc) and
    ignores the parent: it reads a differencing VHD as a standalone dynamic one. So qemu can
    check the child's own structure but cannot follow the chain; flattening covers the chain."""
    _, d1, _ = chain_files["paths"]
    child_only = bytearray(SIZE)
    for index, data in chain_files["d1_blocks"].items():
        end = min(SIZE, (index + 1) * BS)
        child_only[index * BS : end] = data[: end - index * BS]
    assert qemu_raw(d1, tmp_path) == bytes(child_only)


def test_explicit_chain_list_and_partial_chain(chain_files):
    base, d1, d2 = chain_files["paths"]
    with open_vhd_chain_files([str(d2), str(d1), str(base)]) as chain:
        assert b"".join(chain.raw_stream()) == chain_files["expected"]
    with pytest.raises(VhdMissingParentError, match="parent"):
        open_vhd_chain_files([str(d2), str(d1)])
    with open_vhd_chain_files([str(d2), str(d1)], allow_differencing_root=True) as partial:
        assert partial.read_block_mask(0)[0] == full_mask(BS)  # delta1 holds all of block 0
        assert partial.read_block_mask(2) == (0, bytes(BS))  # nobody above the base holds block 2
    with open_vhd_chain_files([str(d2)], allow_differencing_root=True) as partial:
        mask, data = partial.read_block_mask(5)
        assert mask == 1 << (4095 - 7)  # delta2 holds only sector 7 of block 5
        assert data[7 * 512 : 8 * 512] == chain_files["expected"][5 * BS + 7 * 512 : 5 * BS + 8 * 512]
        assert data.count(0) >= BS - 512


def test_missing_parent_names_the_file(chain_files):
    base, _, d2 = chain_files["paths"]
    os.rename(base, str(base) + ".moved")
    with pytest.raises(VhdMissingParentError) as info:
        open_vhd_chain(str(d2))
    assert "20240101T000000Z.vhd" in str(info.value) and "20240102T000000Z.vhd" in str(info.value)


def test_parent_uuid_mismatch(chain_files, tmp_path):
    base, d1, _ = chain_files["paths"]
    blocks, _ = random_disk(SIZE, 9)
    write_vhd(base, SIZE, blocks, uuid=uuid.uuid4())  # same name, different disk
    with pytest.raises(VhdParentMismatchError, match="expects parent uuid"):
        open_vhd_chain(str(d1))


def test_chain_via_custom_opener(chain_files):
    """A storage backend supplies file-like objects (here: in-memory copies) by path."""
    store = {str(p): p.read_bytes() for p in chain_files["paths"]}
    opened = []

    def opener(path):
        if path not in store:
            raise FileNotFoundError(path)
        opened.append(path)
        return io.BytesIO(store[path])

    _, _, d2 = chain_files["paths"]
    with open_vhd_chain(str(d2), opener=opener) as chain:
        assert b"".join(chain.raw_stream()) == chain_files["expected"]
    assert len(opened) == 3


def test_chain_rejects_mixed_block_sizes(tmp_path):
    parent = tmp_path / "p.vhd"
    child = tmp_path / "c.vhd"
    ids = uuid.uuid4(), uuid.uuid4()
    write_vhd(parent, 4 * BS, {0: bytes(BS)}, uuid=ids[0])
    write_vhd(child, 4 * BS, {0: bytes(BS // 2)}, uuid=ids[1], parent=(ids[0], "p.vhd"), block_size=BS // 2)
    with pytest.raises(VhdChainError, match="block size"):
        open_vhd_chain(str(child))


def test_chain_object_of_a_single_dynamic_disk(tmp_path):
    blocks, raw = random_disk(3 * BS, 4)
    path = tmp_path / "a.vhd"
    write_vhd(path, 3 * BS, blocks)
    with open(path, "rb") as f:
        chain = VhdChain([VhdFile(f, "a.vhd")])
        assert chain.read_block(1) == raw[BS : 2 * BS]
        with pytest.raises(IndexError):
            chain.read_block(3)

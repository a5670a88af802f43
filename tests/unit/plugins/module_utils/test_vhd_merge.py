"""In-place, resumable merge of a child VHD into its parent, including interruptions at every write."""

import contextlib
import hashlib
import io
import json
import random
import shutil
import uuid

import pytest
from vhd_support import BS, assert_qemu_check_clean, needs_qemu, qemu_raw, random_block, random_disk, write_vhd

from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import open_vhd_chain, open_vhd_chain_files
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import VhdMergeError, VhdParentMismatchError
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import VhdFile, open_vhd
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_merge import (
    merge_state_path,
    merge_vhd,
    merge_vhd_files,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_verify import check_vhd_file

PARENT_SIZE = 6 * BS


class Killed(Exception):
    """Stands for the process dying."""


class DyingFile:
    """Wraps the parent file; dies at the n-th write after writing only its first half, rounded
    down to whole sectors (a torn multi-sector write; a single sector is written or not)."""

    def __init__(self, file, die_at=None):
        self._file = file
        self.die_at = die_at
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes == self.die_at:
            keep = (len(data) // 2) // 512 * 512
            if keep:
                self._file.write(bytes(data[:keep]))
            raise Killed(f"write #{self.writes}")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


def chain_content(child_path):
    with open_vhd_chain(str(child_path)) as chain:
        return chain.virtual_size, b"".join(chain.raw_stream())


def content_of(path):
    with open_vhd_chain(str(path)) as chain:
        return chain.virtual_size, b"".join(chain.raw_stream())


@pytest.fixture
def pair(tmp_path):
    """A dynamic parent and a differencing child (full, partial and new blocks) on disk."""
    rng = random.Random(5)
    parent_blocks, _ = random_disk(PARENT_SIZE, 6, density=0.5)
    child_blocks = {i: random_block(rng) for i in (0, 1, 3, 4)}
    partial = {1: sum(1 << (4095 - s) for s in range(64, 640)), 4: 1 << 4095}  # sectors 64..639; sector 0
    ids = uuid.uuid4(), uuid.uuid4()
    parent, child = tmp_path / "20240101T000000Z.vhd", tmp_path / "20240102T000000Z.vhd"
    write_vhd(parent, PARENT_SIZE, parent_blocks, uuid=ids[0])
    write_vhd(child, PARENT_SIZE, child_blocks, uuid=ids[1], parent=(ids[0], parent.name), masks=partial)
    return parent, child, ids


def run_merge(parent, child, state=None, die_at=None, saved=None, interval=0.0, state_fail_at=None):
    """One merge attempt on local files; ``saved`` collects what on_state persisted (JSON)."""
    calls = [0]

    def on_state(state):
        calls[0] += 1
        if calls[0] == state_fail_at:
            raise Killed(f"state #{calls[0]}")
        saved.append(json.loads(json.dumps(state)))

    with open(parent, "r+b") as pf, open(child, "rb") as cf:
        dying = DyingFile(pf, die_at)
        result = merge_vhd(
            VhdFile(dying, str(parent)),
            VhdFile(cf, str(child)),
            state=state,
            on_state=on_state if saved is not None else None,
            state_interval=interval,
            chain=[parent.name, child.name],
        )
        return result, dying.writes


def test_merge_gives_child_content_and_identity(pair):
    parent, child, ids = pair
    expected = chain_content(child)
    saved = []
    state, _ = run_merge(parent, child, saved=saved)
    assert state["step"] == "cleanup"
    progress = []
    merge_vhd_files(str(parent), str(child), state=dict(saved[0]), on_progress=lambda *p: progress.append(p))
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]  # resumed from the start: same result
    assert state["child"] == {"uuid": str(ids[1])} and state["parent"] == {"uuid": str(ids[0])}
    assert state["chain"] == [parent.name, child.name]
    assert state["mergedDataSize"] == state["diskSize"] == 4 * BS
    assert saved[0]["step"] == "mergeBlocks" and saved[0]["currentBlock"] == 0 and saved[-1] == state
    assert content_of(parent) == expected
    with open_vhd(str(parent)) as merged:
        assert merged.uuid == ids[1].bytes and not merged.is_differencing
    assert check_vhd_file(str(parent)) == []


@needs_qemu
def test_merged_parent_reads_back_with_qemu(pair, tmp_path):
    parent, child, _ = pair
    size, expected = chain_content(child)
    merge_vhd_files(str(parent), str(child))
    assert qemu_raw(parent, tmp_path) == expected
    assert_qemu_check_clean(parent)


def test_merge_into_differencing_parent_keeps_unmarked_sectors_transparent(tmp_path):
    """base <- mid <- top: merging top into mid must not hide base sectors top does not hold."""
    ids = [uuid.uuid4() for _ in range(3)]
    base, mid, top = (tmp_path / n for n in ("a.vhd", "b.vhd", "c.vhd"))
    write_vhd(base, 4 * BS, {0: b"\x01" * BS, 1: b"\x02" * BS}, uuid=ids[0])
    write_vhd(mid, 4 * BS, {0: b"\x03" * BS}, uuid=ids[1], parent=(ids[0], "a.vhd"), masks={0: 1 << 4095})
    write_vhd(
        top,
        4 * BS,
        {0: b"\x04" * BS, 1: b"\x05" * BS},
        uuid=ids[2],
        parent=(ids[1], "b.vhd"),
        masks={0: 1 << 4094, 1: 1 << 4095},
    )
    expected = chain_content(top)
    merge_vhd_files(str(mid), str(top))
    shutil.move(mid, top)  # what the caller does after the merge
    assert chain_content(top) == expected
    assert expected[1][:1536] == b"\x03" * 512 + b"\x04" * 512 + b"\x01" * 512


def test_merge_several_children_at_once(pair, tmp_path):
    parent, child, ids = pair
    grandchild = tmp_path / "20240103T000000Z.vhd"
    write_vhd(
        grandchild, PARENT_SIZE, {2: b"\x0f" * BS, 5: b"\x0e" * BS}, uuid=uuid.uuid4(), parent=(ids[1], child.name)
    )
    expected = chain_content(grandchild)
    with open(parent, "r+b") as pf:
        children = open_vhd_chain_files([str(grandchild), str(child)], allow_differencing_root=True)
        with children:
            merge_vhd(VhdFile(pf, str(parent)), children)
    assert content_of(parent) == expected


@pytest.mark.parametrize("child_size", [20 * BS, 300 * BS])  # BAT grows in its padding / BAT moves
def test_merge_of_a_larger_child_grows_the_bat(pair, tmp_path, child_size):
    parent, _, ids = pair
    child = tmp_path / "big.vhd"
    rng = random.Random(8)
    blocks = {i: random_block(rng) for i in (1, 7, child_size // BS - 1)}
    write_vhd(child, child_size, blocks, uuid=uuid.uuid4(), parent=(ids[0], parent.name))
    with open_vhd_chain(str(child)) as chain:
        expected = {i: chain.read_block(i) for i in range(chain.block_count)}
    merge_vhd_files(str(parent), str(child))
    assert check_vhd_file(str(parent)) == []
    with open_vhd_chain(str(parent)) as merged:
        assert merged.virtual_size == child_size
        assert {i: merged.read_block(i) for i in range(merged.block_count)} == expected


def test_refuses_unrelated_files(pair, tmp_path):
    parent, child, _ = pair
    other = tmp_path / "other.vhd"
    write_vhd(other, PARENT_SIZE, {0: bytes(BS)}, uuid=uuid.uuid4())
    with pytest.raises(VhdParentMismatchError):
        merge_vhd_files(str(other), str(child))
    with pytest.raises(VhdMergeError, match="not a differencing"):
        merge_vhd_files(str(parent), str(other))
    state, _ = run_merge(parent, child, saved=[])
    bogus = dict(state, step="mergeBlocks", child={"uuid": str(uuid.uuid4())})
    with pytest.raises(VhdMergeError, match="child uuid"):
        run_merge(parent, child, state=bogus)


def test_state_is_throttled():
    """With a 10 s interval and a clock advancing 1 s per call, saves happen every ~10 blocks."""
    size = 40 * BS
    blocks = {i: bytes([i]) * BS for i in range(40)}
    ids = uuid.uuid4(), uuid.uuid4()
    pbuf, cbuf = io.BytesIO(), io.BytesIO()
    VhdWriter(size, [0], uuid=ids[0]).write_to(pbuf, [bytes(BS)])
    VhdWriter(size, list(blocks), uuid=ids[1], parent_uuid=ids[0], parent_name="p").write_to(cbuf, blocks.values())
    ticks = iter(range(10_000))
    saved = []
    merge_vhd(pbuf, VhdFile(cbuf, "c"), on_state=saved.append, state_interval=10, clock=lambda: next(ticks))
    assert [s["step"] for s in saved] == ["mergeBlocks"] * (len(saved) - 1) + ["cleanup"]
    assert 4 <= len(saved) <= 7  # start, a few throttled ones, end: not one per block
    assert [s["currentBlock"] for s in saved[:-1]] == sorted(s["currentBlock"] for s in saved[:-1])


def _interrupted_then_resumed(parent, child, die_at=None, state_fail_at=None, second_die_at=None):
    saved = []
    with pytest.raises(Killed):
        run_merge(parent, child, die_at=die_at, saved=saved, state_fail_at=state_fail_at)
    if second_die_at is not None:
        with contextlib.suppress(Killed):
            run_merge(parent, child, state=saved[-1] if saved else None, die_at=second_die_at, saved=saved)
    final, _ = run_merge(parent, child, state=saved[-1] if saved else None, saved=saved)
    return final, saved


def test_kill_at_every_write_then_resume(pair, tmp_path):
    parent, child, ids = pair
    expected = chain_content(child)
    pristine = tmp_path / "pristine.vhd"
    shutil.copy(parent, pristine)
    _, total_writes = run_merge(parent, child, saved=[])
    assert content_of(parent) == expected and total_writes > 10
    for die_at in range(1, total_writes + 1):
        shutil.copy(pristine, parent)
        final, saved = _interrupted_then_resumed(parent, child, die_at=die_at)
        assert final["step"] == "cleanup", die_at
        assert content_of(parent) == expected, f"content differs after a kill at write {die_at}"
        with open_vhd(str(parent)) as merged:
            assert merged.uuid == ids[1].bytes
        assert check_vhd_file(str(parent)) == [], die_at


def digest(path):
    """(virtual size, {block: sha1}) of the non-zero blocks: compares big sparse disks cheaply."""
    with open_vhd_chain(str(path)) as chain:
        zero = bytes(chain.block_size)
        return chain.virtual_size, {
            i: hashlib.sha256(data).hexdigest() for i, data in chain.iter_virtual_blocks() if data != zero
        }


def test_kill_at_every_write_while_the_bat_moves(pair, tmp_path):
    """A child 50x larger than its parent: the BAT is relocated first, then blocks appended."""
    parent, _, ids = pair
    child = tmp_path / "big.vhd"
    rng = random.Random(9)
    write_vhd(
        child,
        300 * BS,
        {i: random_block(rng) for i in (2, 150, 299)},
        uuid=uuid.uuid4(),
        parent=(ids[0], parent.name),
        masks={2: (1 << 4096) - 1 - 1},
    )
    expected = digest(child)
    pristine = tmp_path / "pristine.vhd"
    shutil.copy(parent, pristine)
    _, total_writes = run_merge(parent, child, saved=[])
    assert digest(parent) == expected
    with open_vhd(str(parent)) as merged:
        assert merged.header.table_offset > 1536 and merged.header.max_table_entries == 300  # moved
    for die_at in range(1, total_writes + 1):
        shutil.copy(pristine, parent)
        final, _ = _interrupted_then_resumed(parent, child, die_at=die_at, second_die_at=2)
        assert final["step"] == "cleanup"
        assert digest(parent) == expected, die_at
        assert check_vhd_file(str(parent)) == [], die_at


def test_merge_state_with_null_current_block(pair):
    parent, child, _ = pair
    expected = chain_content(child)
    saved = []
    with pytest.raises(Killed):
        run_merge(parent, child, saved=saved, die_at=3)
    state = dict(saved[-1], currentBlock=None)
    run_merge(parent, child, state=state)
    assert content_of(parent) == expected


def test_kill_from_the_state_callback_and_during_resume(pair, tmp_path):
    parent, child, _ = pair
    expected = chain_content(child)
    pristine = tmp_path / "pristine.vhd"
    shutil.copy(parent, pristine)
    for state_fail_at in range(1, 8):
        for second_die_at in (None, 1, 3, 6):
            shutil.copy(pristine, parent)
            saved = []
            try:
                run_merge(parent, child, saved=saved, state_fail_at=state_fail_at)
                continue  # the merge needed fewer state saves than that
            except Killed:
                pass
            if second_die_at is not None:
                with contextlib.suppress(Killed):
                    run_merge(parent, child, state=saved[-1] if saved else None, die_at=second_die_at, saved=saved)
            run_merge(parent, child, state=saved[-1] if saved else None, saved=saved)
            assert content_of(parent) == expected, (state_fail_at, second_die_at)


def test_resume_after_the_final_footer_and_cleanup_state(pair):
    parent, child, ids = pair
    expected = chain_content(child)
    saved = []
    state, writes = run_merge(parent, child, saved=saved)
    # a crash after the footer but before the "cleanup" state was stored resumes from mergeBlocks
    assert content_of(parent) == expected
    resumed, _ = run_merge(parent, child, state=saved[-2], saved=[])
    assert resumed["step"] == "cleanup" and content_of(parent) == expected
    # a "cleanup" state means the file work is over: nothing is touched
    assert run_merge(parent, child, state=state, die_at=1)[0] is not None


def test_merge_state_path():
    assert merge_state_path("vdis/j/v/20240101T000000Z.vhd") == "vdis/j/v/.20240101T000000Z.vhd.merge.json"

"""VHD directories (Xen Orchestra's one-object-per-block layout): write, read, chain, merge, resume.

Run over a local folder and a real S3 server (rclone). Independent checks: block objects are
decompressed with the brotli/gzip libraries directly, and whole chains are flattened to one VHD
that qemu-img converts back to the expected raw content.
"""

import gzip
import json

import brotli
import pytest
from vhd_support import BS, MiB, needs_qemu, qemu_raw, random_disk, write_vhd

from ansible_collections.xapi.proxy.plugins.module_utils._storage import AlreadyExistsError, open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import full_mask
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import open_vhd_chain, open_vhd_chain_files
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory import (
    BlockCodec,
    VhdDirectory,
    open_alias,
    remote_vhd_opener,
)
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory_merge import merge_vhd_directory
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory_write import VhdDirectoryWriter
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_errors import (
    VhdFormatError,
    VhdMergeError,
    VhdParentMismatchError,
    VhdUnsupportedError,
)

SIZE = 20 * MiB + 4096  # ten full blocks and a partial eleventh
FOLDER = "xo-vm-backups/vm/vdis/job/vdi"
U0, U1, U2 = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(3))


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        root = tmp_path / "remote"
        root.mkdir()
        url = f"file://{root}"
    else:
        url = request.getfixturevalue("new_s3_url")
    with open_remote(url) as s:
        yield s


def alias(ts):
    return f"{FOLDER}/2024061{ts}T020003Z.alias.vhd"


def write_dir(storage, path, blocks, uuid, parent=None, compression="brotli", size=SIZE):
    kwargs = {}
    if parent:
        kwargs = {"parent_uuid": parent[0], "parent_name": parent[1].rsplit("/", 1)[1]}
    writer = VhdDirectoryWriter(storage, path, size, uuid=uuid, compression=compression, **kwargs)
    for index in sorted(blocks):
        writer.block(index, blocks[index])
    return writer.commit()


def overlay(raw, blocks):
    out = bytearray(raw)
    for index, data in blocks.items():
        end = min(len(out), (index + 1) * BS)
        out[index * BS : end] = data[: end - index * BS]
    return bytes(out)


def chain_raw(storage, path):
    with open_vhd_chain(path, opener=remote_vhd_opener(storage)) as chain:
        return b"".join(chain.raw_stream())


def directory_of(path):
    folder, name = path.rsplit("/", 1)
    return f"{folder}/data/{name.replace('.alias.vhd', '.vhd')}"


def objects(storage, directory):
    out = {}
    for group in storage.list(f"{directory}/blocks", missing_ok=True):
        for name in storage.list(f"{directory}/blocks/{group}"):
            out[int(group) * 1000 + int(name)] = storage.read_bytes(f"{directory}/blocks/{group}/{name}")
    return out


# -- layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["brotli", "gzip", "none"])
def test_written_directory_follows_xo_layout(storage, compression):
    blocks, raw = random_disk(SIZE, seed=1, density=0.6)
    stored = write_dir(storage, alias(7), blocks, U0, compression=compression)
    directory = directory_of(alias(7))
    assert storage.read_bytes(alias(7)) == b"data/20240617T020003Z.vhd"
    filters = [] if compression == "none" else [compression]
    if filters:
        assert json.loads(storage.read_bytes(f"{directory}/chunk-filters.json")) == filters
    else:
        assert not storage.exists(f"{directory}/chunk-filters.json")
    found = objects(storage, directory)
    assert sorted(found) == sorted(blocks)
    decompress = {"brotli": brotli.decompress, "gzip": gzip.decompress, "none": bytes}[compression]
    for index, blob in found.items():
        content = decompress(blob)  # the libraries themselves, not our codec
        assert content[:512] == b"\xff" * 512 and content[512:] == blocks[index].ljust(BS, b"\0")
    bat = storage.read_bytes(f"{directory}/bat")
    assert len(bat) == 2 and [i for i in range(11) if bat[i >> 3] & (0x80 >> (i & 7))] == sorted(blocks)
    assert len(storage.read_bytes(f"{directory}/header")) == 1024
    assert len(storage.read_bytes(f"{directory}/footer")) == 512
    assert stored == sum(len(b) for b in found.values()) + len(bat) + 1024 + 512 + len(b"data/20240617T020003Z.vhd") + (
        len(json.dumps(filters)) if filters else 0
    )
    with open_alias(storage, alias(7)) as vhd:
        assert (vhd.virtual_size, vhd.is_differencing, vhd.codec.name) == (SIZE, False, compression)
        assert vhd.allocated_blocks() == sorted(blocks)
        assert vhd.read_block_mask(sorted(blocks)[0])[0] == full_mask(BS)
    assert chain_raw(storage, alias(7)) == raw


@needs_qemu
def test_chain_of_directories_flattens_to_a_vhd_qemu_reads(storage, tmp_path):
    base, raw = random_disk(SIZE, seed=2, density=0.5)
    delta, _ = random_disk(SIZE, seed=3, density=0.3)
    write_dir(storage, alias(1), base, U0)
    write_dir(storage, alias(2), delta, U1, parent=(U0, alias(1)))
    expected = overlay(raw, delta)
    with open_vhd_chain(alias(2), opener=remote_vhd_opener(storage)) as chain:
        assert [m.name for m in chain.members] == [alias(2), alias(1)]
        flat = tmp_path / "flat.vhd"
        with open(flat, "wb") as out:
            chain.flattened_vhd().write_to(out)
    assert qemu_raw(flat, tmp_path) == expected


def test_directory_child_of_a_vhd_file_parent(storage, tmp_path):
    """Chains may mix kinds (a remote switched to useVhdDirectory): a file parent, a directory child."""
    base, raw = random_disk(SIZE, seed=4)
    local = tmp_path / "base.vhd"
    write_vhd(local, SIZE, base, uuid=U0)
    parent_path = f"{FOLDER}/20240611T020003Z.vhd"
    storage.write_bytes(parent_path, local.read_bytes())
    delta, _ = random_disk(SIZE, seed=5, density=0.2)
    write_dir(storage, alias(2), delta, U1, parent=(U0, parent_path))
    assert chain_raw(storage, alias(2)) == overlay(raw, delta)


# -- failures -------------------------------------------------------------------------------------
def test_missing_or_damaged_block_objects_are_named(storage):
    blocks, _ = random_disk(SIZE, seed=6, density=0.8)
    write_dir(storage, alias(3), blocks, U0)
    first, second = sorted(blocks)[:2]
    directory = directory_of(alias(3))
    storage.delete(f"{directory}/blocks/0/{first}")
    storage.write_bytes(f"{directory}/blocks/0/{second}", b"not brotli at all")
    with open_alias(storage, alias(3)) as vhd:
        with pytest.raises(VhdFormatError, match=f"block {first} is listed in the BAT but its object is missing"):
            vhd.read_block_mask(first)
        with pytest.raises(VhdFormatError, match="does not decompress with brotli") as e:
            vhd.read_block_mask(second)
        assert f"blocks/0/{second}" in str(e.value)


def test_incomplete_directory_and_bad_aliases(storage):
    blocks, _ = random_disk(SIZE, seed=7)
    write_dir(storage, alias(4), blocks, U0)
    storage.delete(f"{directory_of(alias(4))}/footer")
    with pytest.raises(VhdFormatError, match="footer is missing: not a complete VHD directory"):
        open_alias(storage, alias(4))
    storage.write_bytes(alias(5), b"../../../../../../etc")
    with pytest.raises(VhdFormatError, match="points outside the remote"):
        open_alias(storage, alias(5))
    with pytest.raises(FileNotFoundError):
        remote_vhd_opener(storage)(alias(6))


def test_unknown_compression_is_refused():
    with pytest.raises(VhdUnsupportedError, match="'lz4' is not supported"):
        BlockCodec(["lz4"], "x")
    with pytest.raises(VhdUnsupportedError, match="not a list of one filter name"):
        BlockCodec("brotli", "x")


def test_writer_never_overwrites_and_abort_leaves_nothing(storage):
    blocks, _ = random_disk(SIZE, seed=8)
    write_dir(storage, alias(1), blocks, U0)
    with pytest.raises(AlreadyExistsError):
        VhdDirectoryWriter(storage, alias(1), SIZE, uuid=U1)
    writer = VhdDirectoryWriter(storage, alias(2), SIZE, uuid=U1)
    for index in sorted(blocks)[:3]:
        writer.block(index, blocks[index])
    writer.abort()
    assert not storage.exists(alias(2))
    assert storage.list(f"{FOLDER}/data") == ["20240611T020003Z.vhd"]
    with pytest.raises(VhdFormatError, match="outside the disk's 11 blocks"):
        VhdDirectoryWriter(storage, alias(3), SIZE, uuid=U1).block(11, bytes(BS))


# -- merge ----------------------------------------------------------------------------------------
def build_chain(storage, density=0.4):
    base, raw = random_disk(SIZE, seed=10, density=0.5)
    d1, _ = random_disk(SIZE, seed=11, density=density)
    d2, _ = random_disk(SIZE, seed=12, density=density)
    write_dir(storage, alias(1), base, U0)
    write_dir(storage, alias(2), d1, U1, parent=(U0, alias(1)))
    write_dir(storage, alias(3), d2, U2, parent=(U1, alias(2)))
    return overlay(overlay(raw, d1), d2), d1, d2


def open_children(storage, paths):
    return open_vhd_chain_files(list(reversed(paths)), remote_vhd_opener(storage), allow_differencing_root=True)


def test_merge_moves_block_objects_into_the_parent(storage):
    expected, d1, d2 = build_chain(storage)
    before = {**objects(storage, directory_of(alias(2))), **objects(storage, directory_of(alias(3)))}
    states = []
    with open_children(storage, [alias(2), alias(3)]) as child:
        state = merge_vhd_directory(
            open_alias(storage, alias(1)), child, on_state=states.append, chain=["a", "b", "c"], state_interval=0
        )
    assert state["step"] == "cleanup" and state["child"]["uuid"] == U2 and state["chain"] == ["a", "b", "c"]
    assert state["mergedDataSize"] == len(set(d1) | set(d2)) * BS == state["diskSize"]
    # moved out; an older child keeps the blocks the newest one overrides (deleted with it at cleanup)
    assert objects(storage, directory_of(alias(3))) == {}
    assert sorted(objects(storage, directory_of(alias(2)))) == sorted(set(d1) & set(d2))
    merged = objects(storage, directory_of(alias(1)))
    assert set(before) == set(d1) | set(d2)
    for index, blob in before.items():  # the newest child's object wins (alias(3)'s, merged in last)
        assert merged[index] == blob, f"block {index}: moved as is, not recompressed"
    parent = open_alias(storage, alias(1))
    assert parent.footer.uuid_str == U2 and not parent.is_differencing
    # the merged parent alone holds the whole disk, as the chain did
    with open_vhd_chain(alias(1), opener=remote_vhd_opener(storage)) as chain:
        assert b"".join(chain.raw_stream()) == expected


def test_merge_of_a_file_child_writes_compressed_blocks(storage, tmp_path):
    base, raw = random_disk(SIZE, seed=13)
    write_dir(storage, alias(1), base, U0)
    delta, _ = random_disk(SIZE, seed=14, density=0.3)
    local = tmp_path / "child.vhd"
    write_vhd(local, SIZE, delta, uuid=U1, parent=(U0, "20240611T020003Z.alias.vhd"))
    child_path = f"{FOLDER}/20240612T020003Z.vhd"
    storage.write_bytes(child_path, local.read_bytes())
    with open_children(storage, [child_path]) as child:
        merge_vhd_directory(open_alias(storage, alias(1)), child)
    for index, blob in objects(storage, directory_of(alias(1))).items():
        assert brotli.decompress(blob)[512:] == overlay(raw, delta)[index * BS : (index + 1) * BS].ljust(BS, b"\0")
    assert chain_raw(storage, alias(1)) == overlay(raw, delta)


def test_merge_refuses_a_child_of_another_parent(storage):
    blocks, _ = random_disk(SIZE, seed=15)
    write_dir(storage, alias(1), blocks, U0)
    write_dir(storage, alias(2), blocks, U1, parent=(U2, alias(1)))
    mismatch = pytest.raises(VhdParentMismatchError, match="expects parent uuid")
    with open_children(storage, [alias(2)]) as child, mismatch:
        merge_vhd_directory(open_alias(storage, alias(1)), child)


class Interrupt(Exception):
    pass


def test_merge_interrupted_at_any_block_resumes_to_the_same_disk(storage):
    """The state lags behind the moves (a kill between a move and the next save): resuming still ends exact."""
    expected, d1, d2 = build_chain(storage, density=0.6)
    blocks = sorted(set(d1) | set(d2))
    assert len(blocks) >= 6
    persisted = None
    for stop in (3, 2, 2):  # a fresh run saves first, then after each block; a resumed one after each block
        saves = []

        def on_state(state, saves=saves, stop=stop):
            saves.append(state)
            if len(saves) == stop:
                raise Interrupt  # this state is lost: the block just moved is not recorded

        with open_children(storage, [alias(2), alias(3)]) as child, pytest.raises(Interrupt):
            merge_vhd_directory(open_alias(storage, alias(1)), child, state=persisted, on_state=on_state,
                                state_interval=0)  # fmt: skip
        persisted = saves[-2]
        assert persisted["currentBlock"] < blocks[-1]
    with open_children(storage, [alias(2), alias(3)]) as child:
        final = merge_vhd_directory(open_alias(storage, alias(1)), child, state=persisted)
    assert final["step"] == "cleanup" and final["mergedDataSize"] == len(blocks) * BS
    with open_vhd_chain(alias(1), opener=remote_vhd_opener(storage)) as chain:
        assert b"".join(chain.raw_stream()) == expected


def test_fresh_merge_with_a_missing_block_object_fails_and_names_it(storage):
    build_chain(storage)
    with open_alias(storage, alias(3)) as d2:
        index = d2.allocated_blocks()[0]
        storage.delete(d2.block_path(index))
    with open_children(storage, [alias(2), alias(3)]) as child, pytest.raises(VhdMergeError) as e:
        merge_vhd_directory(open_alias(storage, alias(1)), child)
    assert f"blocks/0/{index} is missing" in str(e.value)


def test_directory_reports_its_source_as_a_chain_member(storage):
    blocks, _ = random_disk(SIZE, seed=17)
    write_dir(storage, alias(1), blocks, U0)
    member = remote_vhd_opener(storage)(alias(1))
    assert isinstance(member, VhdDirectory) and member.name == alias(1)
    assert member.directory == directory_of(alias(1))


def test_reads_ahead_follow_the_chain_and_skip_what_it_does_not_ask(storage):
    """Each block is fetched ahead from the newest member holding it; the result is the same disk."""
    expected, d1, d2 = build_chain(storage, density=0.6)
    with open_vhd_chain(alias(3), opener=remote_vhd_opener(storage)) as chain:
        newest, middle, base = chain.members
        assert b"".join(chain.raw_stream()) == expected
        streamed = b"".join(chain.flattened_vhd(timestamp=0))
        # a member asked for a block it did not prefetch (or out of order) still reads it directly
        index = next(i for i in middle.allocated_blocks() if newest.has_block(i))
        assert middle.read_block_raw(index)[1] == d1[index].ljust(BS, b"\0")
    with open_vhd_chain(alias(3), opener=remote_vhd_opener(storage)) as chain:
        assert b"".join(chain.flattened_vhd(timestamp=0)) == streamed
        holders = {next(m for m in chain.members if m.has_block(i)).name for i in chain.allocated_blocks()}
        assert len(holders) >= 2 and {m.name for m in chain.members if m._pool is not None} == holders
    assert all(m._pool is None for m in chain.members), "closing the chain stops its readers"


def test_a_new_backup_never_clears_a_directory_an_alias_still_names(storage):
    """After a merge ``T2.alias.vhd`` names ``data/T1.vhd``: a new T1 backup must not clear it."""
    blocks, raw = random_disk(SIZE, seed=20)
    write_dir(storage, alias(1), blocks, U0)
    storage.rename(alias(1), alias(2))
    with pytest.raises(AlreadyExistsError, match="already holds the disk of"):
        VhdDirectoryWriter(storage, alias(1), SIZE, uuid=U1)
    assert chain_raw(storage, alias(2)) == raw
    storage.delete(alias(2))  # now a leftover no alias names: cleared and rewritten
    assert write_dir(storage, alias(1), {0: blocks[min(blocks)]}, U1) > 0
    assert open_alias(storage, alias(1)).allocated_blocks() == [0]


def test_merge_killed_after_its_tables_resumes_to_cleanup(storage, tmp_path):
    """Blocks that cannot be moved (another compression) are rewritten; a kill after the parent took the
    child's identity (footer written) but before the state said so must still resume."""
    base, raw = random_disk(SIZE, seed=21)
    write_dir(storage, alias(1), base, U0)
    delta, _ = random_disk(SIZE, seed=22, density=0.3)
    write_dir(storage, alias(2), delta, U1, parent=(U0, alias(1)), compression="gzip")
    saves = []

    def on_state(state):
        saves.append(state)
        if state["step"] == "cleanup":
            raise Interrupt

    with open_children(storage, [alias(2)]) as child, pytest.raises(Interrupt):
        merge_vhd_directory(open_alias(storage, alias(1)), child, on_state=on_state, state_interval=0)
    assert open_alias(storage, alias(1)).footer.uuid_str == U1, "the tables were written"
    with open_children(storage, [alias(2)]) as child:
        final = merge_vhd_directory(open_alias(storage, alias(1)), child, state=saves[-2])
    assert final["step"] == "cleanup"
    assert chain_raw(storage, alias(1)) == overlay(raw, delta)


def test_smb_directories_are_read_without_concurrent_requests(new_smb_url):
    """One SMB session takes ordered requests: read-ahead is off there (it is on for file and S3)."""
    blocks, raw = random_disk(SIZE, seed=23)
    with open_remote(new_smb_url) as smb:
        write_dir(smb, alias(1), blocks, U0)
        with open_vhd_chain(alias(1), opener=remote_vhd_opener(smb)) as chain:
            assert b"".join(chain.raw_stream()) == raw
            assert chain.members[0]._pool is None

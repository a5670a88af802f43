"""Backup verification (``_backup_verify``) on backups written file by file on a real ``file://`` remote.

Backups are made here with the collection's writers (VhdWriter, write_xva, the metadata builders) in
Xen Orchestra's layout, so each test can damage exactly one file and check that the problem is found
and names that file. The module tests (tests/unit/plugins/modules/test_backup_info.py) do the same on
backups made by the backup module and by the XO fixture against the simulator.
"""

import io
import json
import os
import shutil
import tarfile
import tracemalloc
import uuid
from pathlib import Path

import brotli
import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._backup_verify import BackupVerifier, verify_backup
from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._storage_file import FileStorage
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_bitmap import full_bitmap
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_file import open_vhd
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter
from ansible_collections.xapi.proxy.plugins.module_utils._xo_checksum import ChecksumWriter
from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import (
    metadata_path,
    vhd_basename,
    vhd_relative_path,
    vm_backup_dir,
    xva_checksum_path,
    xva_path,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xo_listing import list_backups
from ansible_collections.xapi.proxy.plugins.module_utils._xo_metadata import (
    build_delta_metadata,
    build_full_metadata,
    dump_metadata,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_ovaxml import make_vm_header
from ansible_collections.xapi.proxy.plugins.module_utils._xva_write import write_xva

MIB = 1 << 20
BLOCK = 2 * MIB
VM = "6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11"
LIVE_VDI = "9d2f1c3e-6b7a-4c5d-8e9f-0a1b2c3d4e5f"
JOB = "4c9a7e21-3d5b-4f6a-9b8c-7d6e5f4a3b2c"
SCHEDULE = "1f2e3d4c-5b6a-4789-8abc-def012345678"
T0 = 1718676003123  # 2024-06-18T02:00:03.123Z
DAY = 86_400_000
DISK_SIZE = 9 * MIB + 4096  # five 2 MiB blocks, the last one partial


class Remote:
    """Hand-made backups of one VM with one disk: a chain of incremental ones, and full ones."""

    def __init__(self, root, vhd_directory=False):
        self.root = root
        self.storage = open_remote(f"file://{root}")
        self.vhd_directory = vhd_directory
        self.chain = []  # (backup id, vhd path, snapshot VDI uuid, timestamp), oldest first

    def path(self, rel):
        return self.root / rel

    def delta(self, blocks, when=None, parent_uuid=None, parent_name=None):
        """An incremental backup holding ``blocks`` ({index: byte}); a delta on the previous one if any."""
        when = T0 + DAY * len(self.chain) if when is None else when
        snap = str(uuid.uuid4())
        rel = vhd_relative_path(JOB, LIVE_VDI, when, self.vhd_directory)
        vhd = f"{vm_backup_dir(VM)}/{rel}"
        base = self.chain[-1] if self.chain else None
        parent = None
        if base is not None:
            parent = (parent_uuid or base[2], parent_name or vhd_basename(base[3], self.vhd_directory))
        content = {i: bytes([b]) * BLOCK for i, b in blocks.items()}
        if self.vhd_directory:
            size = write_vhd_directory(self.storage, vhd, content, snap, parent)
        else:
            writer = VhdWriter(DISK_SIZE, sorted(content), uuid=snap, parent_uuid=parent and parent[0],
                               parent_name=parent[1] if parent else "")  # fmt: skip
            with self.storage.open_write(vhd) as out:
                size = writer.write_to(out, [content[i][: DISK_SIZE - i * BLOCK] for i in sorted(content)])
        md = build_delta_metadata(
            job_id=JOB,
            schedule_id=SCHEDULE,
            timestamp=when,
            vm={"uuid": VM, "name_label": "web"},
            vm_snapshot={"uuid": str(uuid.uuid4()), "name_label": "web"},
            vdis={"OpaqueRef:vdi": {"uuid": snap, "name_label": "web root", "virtual_size": DISK_SIZE}},
            vbds={"OpaqueRef:vbd": {"VDI": "OpaqueRef:vdi", "userdevice": "0"}},
            vifs={},
            vhds={"OpaqueRef:vdi": rel},
            is_vhd_differencing={"OpaqueRef:vdi": base is not None},
            size=size,
        )
        bid = metadata_path(VM, when)
        self.storage.write_bytes(bid, dump_metadata(md))
        self.chain.append((bid, vhd, snap, when))
        return bid, vhd

    def full(self, when=T0 - DAY, compression=None, disk=None, checksum="md5"):
        """A full backup: an XVA of one disk (``disk`` bytes, default a mix of data and zeros), its checksum."""
        disk = disk if disk is not None else os.urandom(3 * MIB) + bytes(2 * MIB) + b"\x07" * (MIB + 10)
        header = make_vm_header("web", [("Ref:1", len(disk), "web root")], vm_uuid=VM)
        xva = xva_path(VM, when)
        with self.storage.open_write(xva) as out:
            writer = ChecksumWriter(out, checksum)
            write_xva(writer, header, [("Ref:1", len(disk), io.BytesIO(disk))], compression=compression)
        checksum = writer.checksum
        self.storage.write_bytes(xva_checksum_path(VM, when), checksum.text.encode())
        md = build_full_metadata(job_id=JOB, schedule_id=SCHEDULE, timestamp=when, vm={"uuid": VM, "name_label": "web"},
                                 vm_snapshot=None, size=checksum.size)  # fmt: skip
        bid = metadata_path(VM, when)
        self.storage.write_bytes(bid, dump_metadata(md))
        return bid, xva

    def edit_metadata(self, bid, change):
        md = json.loads(self.path(bid).read_text())
        change(md)
        self.path(bid).write_text(json.dumps(md))


def write_vhd_directory(storage, alias, content, snap, parent):
    """A VHD directory as Xen Orchestra writes it with useVhdDirectory (blocks left uncompressed)."""
    writer = VhdWriter(DISK_SIZE, sorted(content), uuid=snap, parent_uuid=parent and parent[0],
                       parent_name=parent[1] if parent else "")  # fmt: skip
    directory = alias.replace(".alias.vhd", "").rsplit("/", 1)
    data = f"{directory[0]}/data/{directory[1]}.vhd"
    storage.write_bytes(alias, f"data/{directory[1]}.vhd".encode())
    storage.write_bytes(f"{data}/footer", writer.footer.to_bytes())
    storage.write_bytes(f"{data}/header", writer.header.to_bytes())
    bat = bytearray(-(-writer.entries // 8))
    for index, block in content.items():
        bat[index >> 3] |= 0x80 >> (index & 7)
        storage.write_bytes(f"{data}/blocks/{index // 1000}/{index % 1000}", full_bitmap(BLOCK) + block)
    storage.write_bytes(f"{data}/bat", bytes(bat))
    return sum(len(b) + 512 for b in content.values()) + 2048


@pytest.fixture
def remote(tmp_path):
    (tmp_path / "remote").mkdir()
    return Remote(tmp_path / "remote")


@pytest.fixture
def chain3(remote):
    """Three incremental backups: a full VHD, then two deltas."""
    remote.delta({0: 1, 2: 2, 4: 3})
    remote.delta({2: 4})
    remote.delta({1: 5, 4: 6})
    return remote


def flip(path, offset, mask=0xFF):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def files(problems):
    return [p["file"] for p in problems]


def assert_only(problems, file, *words):
    """Every problem concerns ``file``, and one of them says all of ``words``."""
    assert problems, "no problem found"
    assert set(files(problems)) == {file}, problems
    assert any(all(w in p["problem"] for w in words) for p in problems), problems


# -- sound backups -----------------------------------------------------------------------------------
def test_sound_backups_have_no_problem_and_chains_reach_the_full(chain3):
    full, _ = chain3.full()
    gz, _ = chain3.full(when=T0 - 2 * DAY, compression="gzip")
    verifier = BackupVerifier(chain3.storage)
    for bid in [full, gz, *(c[0] for c in chain3.chain)]:
        assert verifier.verify(bid) == [], bid
    listing = {b.id: b for b in list_backups(chain3.storage).all()}
    vhds = [c[1] for c in chain3.chain]
    newest = listing[chain3.chain[2][0]]
    (disk,) = verifier.chains(newest)
    assert disk == {"vdi_uuid": chain3.chain[2][2], "name_label": "web root", "userdevice": "0",
                    "vhds": vhds[::-1], "complete": True}  # fmt: skip
    assert verifier.chains(listing[chain3.chain[0][0]])[0]["vhds"] == vhds[:1]


def test_files_shared_by_backups_are_read_once(chain3):
    class Counting(FileStorage):
        opened = {}

        def open_read(self, path):
            self.opened[path] = self.opened.get(path, 0) + 1
            return super().open_read(path)

    storage = Counting(chain3.storage.url)
    verifier = BackupVerifier(storage)
    for bid, *_ in chain3.chain:
        assert verifier.verify(bid) == []
    vhds = {c[1] for c in chain3.chain}
    # Each VHD: once for its footer and header, once for the full check, whichever backups share it.
    assert {p: n for p, n in Counting.opened.items() if p in vhds} == dict.fromkeys(vhds, 2)


def test_an_xva_is_streamed_not_loaded(remote):
    bid, xva = remote.full(disk=os.urandom(24 * MIB))
    assert remote.path(xva).stat().st_size > 24 * MIB
    tracemalloc.start()
    try:
        assert verify_backup(remote.storage, bid) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * MIB, f"verifying a 24 MiB XVA held {peak} bytes at once"


# -- damaged incremental backups -----------------------------------------------------------------------
def test_flipped_bat_entry(chain3):
    bid, vhd = chain3.chain[1][:2]
    with open_vhd(str(chain3.path(vhd))) as v:
        entry = v.header.table_offset + 4 * v.allocated_blocks()[0]
    flip(chain3.path(vhd), entry)
    assert_only(verify_backup(chain3.storage, bid), vhd, "BAT entry 2")
    # The newer backup builds on it: damaged too. The older one is not.
    assert_only(verify_backup(chain3.storage, chain3.chain[2][0]), vhd, "BAT entry 2")
    assert verify_backup(chain3.storage, chain3.chain[0][0]) == []


def test_truncated_vhd(chain3):
    bid, vhd = chain3.chain[0][:2]
    os.truncate(chain3.path(vhd), 3 * MIB)
    problems = verify_backup(chain3.storage, chain3.chain[2][0])
    assert_only(problems, vhd, "trailing footer")
    assert any("points past the data area" in p["problem"] for p in problems), problems


def test_missing_parent(chain3):
    parent = chain3.chain[1][1]
    os.unlink(chain3.path(parent))
    problems = verify_backup(chain3.storage, chain3.chain[2][0])
    assert_only(problems, parent, "missing", "parent of", chain3.chain[2][1], chain3.chain[1][2])
    (disk,) = BackupVerifier(chain3.storage).chains(list_backups(chain3.storage).all()[-1])
    assert disk["vhds"] == [chain3.chain[2][1]] and disk["complete"] is False


def test_parent_that_is_another_disk(remote):
    remote.delta({0: 1})
    bid, vhd = remote.delta({1: 2}, parent_uuid=str(uuid.uuid4()))
    assert_only(verify_backup(remote.storage, bid), vhd, "was made against a parent with uuid", "has uuid")


def test_parent_name_leaving_the_remote(remote):
    remote.delta({0: 1})
    bid, vhd = remote.delta({1: 2}, parent_name="../../../../../../etc/passwd")
    assert_only(verify_backup(remote.storage, bid), vhd, "points outside the remote")


def test_vhd_that_is_its_own_parent(remote):
    bid, vhd = remote.delta({1: 2})
    own = remote.chain[0][2]
    writer = VhdWriter(DISK_SIZE, [1], uuid=own, parent_uuid=own, parent_name=vhd.rsplit("/", 1)[1])
    with remote.storage.open_write(vhd) as out:
        writer.write_to(out, [bytes(BLOCK)])
    verifier = BackupVerifier(remote.storage)
    assert_only(verifier.verify(bid), vhd, "loops back")
    assert verifier.chain(vhd).members == [vhd] and verifier.chain(vhd).complete is False


def test_virtual_size_differs_from_the_metadata(chain3):
    bid, vhd = chain3.chain[2][:2]
    chain3.edit_metadata(bid, lambda md: md["vdis"]["OpaqueRef:vdi"].update(virtual_size=DISK_SIZE * 2))
    assert_only(verify_backup(chain3.storage, bid), vhd, f"metadata records {DISK_SIZE * 2} bytes")


def test_metadata_naming_a_missing_vhd(chain3):
    bid = chain3.chain[2][0]
    chain3.edit_metadata(bid, lambda md: md["vhds"].update({"OpaqueRef:vdi": "vdis/x/y/20240101T000000Z.vhd"}))
    missing = f"{vm_backup_dir(VM)}/vdis/x/y/20240101T000000Z.vhd"
    assert_only(verify_backup(chain3.storage, bid), missing, "missing", "web root")


def test_damaged_footer_copy_is_reported_and_the_chain_still_followed(chain3):
    vhd = chain3.chain[2][1]
    flip(chain3.path(vhd), 100)
    verifier = BackupVerifier(chain3.storage)
    assert_only(verifier.verify(chain3.chain[2][0]), vhd, "footer copy")
    assert verifier.chain(vhd).complete is True


# -- damaged full backups -------------------------------------------------------------------------
@pytest.mark.parametrize(("checksum", "name"), [("md5", "MD5"), ("sha256", "SHA-256"), ("sha512", "SHA-512")])
def test_corrupt_xva_chunk(remote, checksum, name):
    bid, xva = remote.full(checksum=checksum)
    assert verify_backup(remote.storage, bid) == []
    with tarfile.open(remote.path(xva)) as tf:
        chunk = tf.getmember("Ref:1/00000000")
    flip(remote.path(xva), chunk.offset_data + 5000, mask=0x10)
    problems = verify_backup(remote.storage, bid)
    assert_only(problems, xva, "chunk 'Ref:1/00000000'", "xxhash")
    assert any(f"hash to {name} " in p["problem"] for p in problems), problems


@pytest.mark.parametrize("checksum", ["md5", "sha256"])
def test_corrupt_compressed_xva(remote, checksum):
    bid, xva = remote.full(compression="gzip", checksum=checksum)
    flip(remote.path(xva), remote.path(xva).stat().st_size // 2)
    assert_only(verify_backup(remote.storage, bid), xva, "MD5" if checksum == "md5" else "SHA-256")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("$1$$" + "0" * 32, ["records MD5 " + "0" * 32]),
        ("$5$$" + "0" * 64, ["records SHA-256 " + "0" * 64]),
        ("not a checksum", ["not an XO checksum"]),
    ],
)
def test_wrong_checksum_file(remote, content, words):
    bid, xva = remote.full()
    remote.path(xva + ".checksum").write_text(content)
    assert_only(verify_backup(remote.storage, bid), xva + ".checksum", *words)


def test_missing_checksum_file(remote):
    bid, xva = remote.full()
    os.unlink(remote.path(xva + ".checksum"))
    assert_only(verify_backup(remote.storage, bid), xva + ".checksum", "missing")


def test_missing_xva(remote):
    bid, xva = remote.full()
    os.unlink(remote.path(xva))
    assert_only(verify_backup(remote.storage, bid), xva, "missing")


def test_xva_of_another_size_than_recorded(remote):
    bid, xva = remote.full()
    remote.edit_metadata(bid, lambda md: md.update(size=md["size"] + 512))
    assert_only(verify_backup(remote.storage, bid), xva, "metadata records")


def test_truncated_xva(remote):
    bid, xva = remote.full()
    os.truncate(remote.path(xva), 2 * MIB)
    problems = verify_backup(remote.storage, bid)
    assert_only(problems, xva, "metadata records")
    assert any("ends" in p["problem"] for p in problems), problems


# -- damaged metadata -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda path: path.write_text("{oops"), "not valid JSON"),
        (lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "mode": "mirror"})), "'mode'"),
        (lambda path: path.unlink(), "missing"),
    ],
)
def test_bad_metadata(chain3, change, words):
    bid = chain3.chain[1][0]
    change(chain3.path(bid))
    assert_only(verify_backup(chain3.storage, bid), bid, words)


def test_metadata_of_another_vm(chain3):
    bid = chain3.chain[1][0]
    chain3.edit_metadata(bid, lambda md: md["vm"].update(uuid=str(uuid.uuid4())))
    assert_only(verify_backup(chain3.storage, bid), bid, "lies in the directory of VM " + VM)


# -- VHD directories (useVhdDirectory) ------------------------------------------------------------------
@pytest.fixture
def dir_chain(tmp_path):
    (tmp_path / "remote").mkdir()
    remote = Remote(tmp_path / "remote", vhd_directory=True)
    remote.delta({0: 1, 2: 2})
    remote.delta({1: 3})
    return remote


def data_dir(alias):
    head, name = alias.rsplit("/", 1)
    return f"{head}/data/{name.replace('.alias.vhd', '.vhd')}"


def test_vhd_directories_verify_and_chain(dir_chain):
    bid, alias = dir_chain.chain[1][:2]
    verifier = BackupVerifier(dir_chain.storage)
    assert verifier.verify(bid) == []
    assert verifier.chain(alias).members == [alias, dir_chain.chain[0][1]]
    assert verifier.chain(alias).complete is True


def test_vhd_directory_missing_block(dir_chain):
    parent = data_dir(dir_chain.chain[0][1])
    os.unlink(dir_chain.path(f"{parent}/blocks/0/2"))
    assert_only(verify_backup(dir_chain.storage, dir_chain.chain[1][0]), f"{parent}/blocks/0/2", "missing")


def test_vhd_directory_short_block_and_missing_parent(dir_chain):
    child = data_dir(dir_chain.chain[1][1])
    with open(dir_chain.path(f"{child}/blocks/0/1"), "r+b") as fh:
        fh.truncate(MIB)
    assert_only(verify_backup(dir_chain.storage, dir_chain.chain[1][0]), f"{child}/blocks/0/1", f"{MIB} bytes")
    os.unlink(dir_chain.path(dir_chain.chain[0][1]))
    problems = verify_backup(dir_chain.storage, dir_chain.chain[1][0])
    assert dir_chain.chain[0][1] in files(problems)
    assert any("parent of" in p["problem"] for p in problems), problems


def test_vhd_directory_bad_footer(dir_chain):
    alias = dir_chain.chain[1][1]
    flip(dir_chain.path(f"{data_dir(alias)}/footer"), 70)
    assert_only(verify_backup(dir_chain.storage, dir_chain.chain[1][0]), alias, "footer checksum")


def test_alias_naming_a_missing_vhd_directory(dir_chain):
    alias = dir_chain.chain[1][1]
    shutil.rmtree(dir_chain.path(data_dir(alias)))
    assert_only(verify_backup(dir_chain.storage, dir_chain.chain[1][0]), alias, "VHD directory", "missing")


def test_vhd_directory_brotli_blocks_are_decompressed_and_checked(dir_chain):
    child = data_dir(dir_chain.chain[1][1])
    blocks = [p for p in Path(dir_chain.path(f"{child}/blocks")).rglob("*") if p.is_file()]
    for path in blocks:  # as Xen Orchestra stores them: each block object brotli-compressed on its own
        path.write_bytes(brotli.compress(path.read_bytes(), quality=0))
    Path(dir_chain.path(f"{child}/chunk-filters.json")).write_text('["brotli"]')
    assert verify_backup(dir_chain.storage, dir_chain.chain[1][0]) == []
    damaged = dir_chain.path(f"{child}/blocks/0/1")
    Path(damaged).write_bytes(Path(damaged).read_bytes()[:100])
    assert_only(verify_backup(dir_chain.storage, dir_chain.chain[1][0]), f"{child}/blocks/0/1", "decompress")

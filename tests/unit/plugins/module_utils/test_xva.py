"""XVA: writer layout, streaming reader (plain/gzip/zstd), extraction, xva-img, verification."""

import gzip
import hashlib
import importlib
import io
import random
import shutil
import subprocess
import sys
import tarfile

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _xva_hash
from ansible_collections.xapi.proxy.plugins.module_utils._xva_codec import Compressor
from ansible_collections.xapi.proxy.plugins.module_utils._xva_errors import (
    XvaChecksumError,
    XvaDependencyError,
    XvaFormatError,
    XvaTruncatedError,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_hash import xxh64_hex, xxh64_python
from ansible_collections.xapi.proxy.plugins.module_utils._xva_ovaxml import (
    build_ova_xml,
    make_vm_header,
    parse_ova_xml,
    vdi_sizes,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_read import (
    XvaReader,
    extract_xva,
    is_valid_xva,
    verify_xva,
    xva_quick_check,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xva_tar import END_OF_ARCHIVE, tar_entry
from ansible_collections.xapi.proxy.plugins.module_utils._xva_write import write_xva

MiB = 1024 * 1024


def sparse_content(size, seed):
    """Random data in a few places, zeros elsewhere (so some chunks are left out)."""
    rng = random.Random(seed)
    data = bytearray(size)
    for _ in range(6):
        start = rng.randrange(size)
        length = min(size - start, rng.randrange(1, 300_000))
        data[start : start + length] = rng.randbytes(length)
    data[-8:] = b"last%04d" % seed  # a marker unique to each disk
    return bytes(data)


@pytest.fixture(scope="module")
def disks():
    # Ref:10 sorts before Ref:2, as XAPI orders VDIs by id string
    return {"Ref:2": sparse_content(9 * MiB + 4321, 1), "Ref:10": sparse_content(4 * MiB, 2)}


def header_for(disks):
    return make_vm_header("test-vm", [(vdi_id, len(data), f"disk {vdi_id}") for vdi_id, data in disks.items()])


def build(disks, header=None, **kwargs):
    out = io.BytesIO()
    items = [(vdi_id, len(data), io.BytesIO(data)) for vdi_id, data in disks.items()]
    written = write_xva(out, header or header_for(disks), items, **kwargs)
    assert written == len(out.getvalue())
    return out.getvalue()


def extract_all(archive, **kwargs):
    outputs = {}

    class Keep(io.BytesIO):
        def close(self):
            outputs[self.vdi_id] = self.getvalue()

    def open_output(vdi_id, record):
        out = Keep()
        out.vdi_id = vdi_id
        return out

    header = extract_xva(io.BytesIO(archive), open_output, **kwargs)
    return header, outputs


# -- writer layout, checked with Python's tarfile as an independent reader ----------------------------


def test_writer_layout_matches_xapi(disks):
    archive = build(disks)
    assert len(archive) % 512 == 0 and archive.endswith(END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[0] == "ova.xml"
        assert names[1:3] == ["Ref:10/00000000", "Ref:10/00000000.xxhash"]
        assert names.index("Ref:10/00000003") < names.index("Ref:2/00000000")
        assert all(m.mode == 0o400 and m.mtime == 0 for m in members)
        ref2 = [n for n in names if n.startswith("Ref:2/") and not n.endswith(".xxhash")]
        present = [int(n.split("/")[1]) for n in ref2]
        expected = [i for i in range(10) if i in (0, 9) or any(disks["Ref:2"][i * MiB : (i + 1) * MiB])]
        assert present == expected  # zero chunks left out, first and last always there
        last = tar.extractfile("Ref:2/00000009").read()
        assert last == disks["Ref:2"][9 * MiB :] and len(last) == 4321
        digest = tar.extractfile("Ref:2/00000009.xxhash").read()
        assert len(digest) == 16 and digest == digest.upper()
        assert digest.decode() == format(xxh64_python(last), "016X")
        header = parse_ova_xml(tar.extractfile("ova.xml").read())
    assert archive[257:262] != b"ustar"  # V7 header like ocaml-tar
    assert vdi_sizes(header) == {"Ref:2": 9 * MiB + 4321, "Ref:10": 4 * MiB}


def test_legacy_sha1_checksums(disks):
    archive = build(disks, checksum="checksum")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        data = tar.extractfile("Ref:10/00000000").read()
        assert tar.extractfile("Ref:10/00000000.checksum").read().decode() == hashlib.sha1(data).hexdigest()  # noqa: S324
    _, outputs = extract_all(archive)
    assert outputs == disks


# -- reader -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_round_trip_through_reader(disks, compression):
    if compression == "zstd":
        pytest.importorskip("zstandard")
    header = header_for(disks)
    archive = build(disks, header, compression=compression, level=1)
    if compression == "gzip":
        assert archive[:2] == b"\x1f\x8b" and gzip.decompress(archive)[:7] == b"ova.xml"
    reader = XvaReader(io.BytesIO(archive))
    assert reader.compression == compression
    assert reader.read_header() == parse_ova_xml(build_ova_xml(header))
    assert header["objects"][0]["snapshot"]["is_a_template"] is False  # booleans survive, ints become strings
    chunks = list(reader.chunks())
    assert {c.checksum_kind for c in chunks} == {"xxhash"}
    order = [(c.vdi_id, c.counter) for c in chunks]
    assert order == sorted(order, key=lambda k: (k[0], k[1])) and order[0] == ("Ref:10", 0)
    _, outputs = extract_all(archive)
    assert outputs == disks
    assert verify_xva(io.BytesIO(archive)) == []
    assert is_valid_xva(io.BytesIO(archive), len(archive))


def test_extract_to_sparse_files(disks, tmp_path):
    archive = build(disks)

    def open_output(vdi_id, record):
        assert record["virtual_size"] == str(len(disks[vdi_id]))
        return open(tmp_path / vdi_id.replace(":", "_"), "wb")  # noqa: SIM115 - extract_xva closes it

    extract_xva(io.BytesIO(archive), open_output)
    path = tmp_path / "Ref_2"
    assert path.read_bytes() == disks["Ref:2"]
    assert path.stat().st_blocks * 512 < len(disks["Ref:2"])  # holes where chunks were left out


def test_reader_accepts_third_party_ova_xml():
    xml = (
        b'<?xml version="1.0"?>\n<value><struct>'
        b"<member><name>version</name><value><struct><member><name>export_vsn</name><value><i4>2</i4></value>"
        b"</member></struct></value></member>"
        b"<member><name>objects</name><value><array><data><value><struct>"
        b"<member><name>class</name><value><string>VDI</string></value></member>"
        b"<member><name>id</name><value>Ref:000</value></member>"
        b"<member><name>snapshot</name><value><struct>"
        b"<member><name>virtual_size</name><value>1048576</value></member>"
        b"<member><name>read_only</name><value><boolean>0</boolean></value></member>"
        b"<member><name>name_label</name><value>a &amp; b</value></member>"
        b"<member><name>empty</name><value/></member>"
        b"</struct></value></member></struct></value></data></array></value></member>"
        b"</struct></value>"
    )
    header = parse_ova_xml(xml)
    record = header["objects"][0]["snapshot"]
    assert header["version"]["export_vsn"] == 2
    assert record == {"virtual_size": "1048576", "read_only": False, "name_label": "a & b", "empty": ""}
    data = b"\x01" * MiB
    archive = (
        tar_entry("ova.xml", xml)
        + tar_entry("Ref:000/00000000", data)
        + tar_entry("Ref:000/00000000.xxhash", xxh64_hex(data).lower().encode() + b"\n")
        + END_OF_ARCHIVE
    )
    _, outputs = extract_all(archive)
    assert outputs == {"Ref:000": data}


def test_keepalive_dummy_chunks_and_gaps():
    size = 4 * MiB
    header = make_vm_header("vm", [("Ref:1", size, "d")])
    last = b"\x07" * MiB
    archive = (
        tar_entry("ova.xml", build_ova_xml(header))
        + tar_entry("Ref:1/00000000", bytes(MiB))
        + tar_entry("Ref:1/00000000.xxhash", xxh64_hex(bytes(MiB)).encode())
        + tar_entry("Ref:1/00000001", b"")  # keep-alive dummy: uses a counter, no data
        + tar_entry("Ref:1/00000001.xxhash", xxh64_hex(b"").encode())
        + tar_entry("Ref:1/00000003", last)
        + tar_entry("Ref:1/00000003.xxhash", xxh64_hex(last).encode())
        + END_OF_ARCHIVE
    )
    assert verify_xva(io.BytesIO(archive)) == []
    _, outputs = extract_all(archive)
    assert outputs["Ref:1"] == bytes(3 * MiB) + last


def test_checksum_mismatch_raises(disks):
    archive = bytearray(build(disks))
    at = archive.index(b"last0001")
    archive[at] ^= 0xFF
    with pytest.raises(XvaChecksumError, match="Ref:2/00000009"):
        extract_all(bytes(archive))
    found = verify_xva(io.BytesIO(bytes(archive)))
    assert len(found) == 1 and "Ref:2/00000009" in found[0] and "xxhash" in found[0]
    assert extract_all(bytes(archive), verify_checksums=False)[1]["Ref:2"][-8:] == bytes([ord("l") ^ 0xFF]) + b"ast0001"


# -- xva-img as an independent consumer ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("xva-img") is None, reason="xva-img not installed")
def test_xva_img_exports_the_same_bytes(disks, tmp_path):
    """xva-img 1.4.2 (Debian 12) only reads legacy ``.checksum`` (SHA-1) entries, so the archive
    for it is written with those; the ``.xxhash`` variant is checked with our reader above."""
    archive = tmp_path / "vm.xva"
    archive.write_bytes(build(disks, checksum="checksum"))
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["tar", "-C", str(extracted), "-xf", str(archive)], check=True)
    for vdi_id, data in disks.items():
        out = tmp_path / f"{vdi_id.replace(':', '_')}.raw"
        subprocess.run(
            ["xva-img", "-p", "disk-export", str(extracted / vdi_id), str(out)], check=True, capture_output=True
        )
        assert out.read_bytes() == data


# -- verification ------------------------------------------------------------------------------------


def small_archive(entries=None, end=END_OF_ARCHIVE, size=2 * MiB + 100):
    header = build_ova_xml(make_vm_header("vm", [("Ref:1", size, "d")]))
    first, last = b"\x01" * MiB, b"\x02" * (size - 2 * MiB)
    if entries is None:
        entries = [("Ref:1/00000000", first), ("Ref:1/00000002", last)]
    out = tar_entry("ova.xml", header)
    for name, data in entries:
        out += tar_entry(name, data)
        if data is not None:
            out += tar_entry(name + ".xxhash", xxh64_hex(data).encode())
    return out + end


def test_verify_healthy_small_archive():
    assert verify_xva(io.BytesIO(small_archive())) == []


@pytest.mark.parametrize(
    ("archive", "expected"),
    # Stable ids (the expected text): pytest-xdist workers must collect the same names.
    ids=lambda v: v if isinstance(v, str) else "archive",
    argvalues=[
        (small_archive([("Ref:1/00000000", b"\x01" * MiB)]), "last chunk 00000002 is missing"),
        (small_archive([("Ref:1/00000002", b"\x02" * 100)]), "first chunk 00000000 is missing"),
        (small_archive([("Ref:1/00000002", b"\x02" * 100), ("Ref:1/00000000", b"\x01" * MiB)]), "comes after"),
        (small_archive([("Ref:1/00000000", b"\x01" * 1000), ("Ref:1/00000002", b"\x02" * 100)]), "1000 bytes"),
        (
            small_archive([("Ref:1/00000000", b"x" * MiB), ("Ref:1/00000002", b"y" * 100), ("Ref:1/00000005", b"z")]),
            "past the VDI",
        ),
        (small_archive([("Ref:9/00000000", b"x" * MiB)]), "does not list as a VDI"),
        (small_archive(end=END_OF_ARCHIVE[:512]), "single zero block"),
        (small_archive(end=END_OF_ARCHIVE + b"junk"), "not all zero"),
        (small_archive(end=b""), "two zero blocks"),
        (small_archive()[:3000], "archive ends inside"),
        (tar_entry("ova.xml", b"<value><struct>") + END_OF_ARCHIVE, "not well-formed"),
        (tar_entry("other.txt", b"hi") + END_OF_ARCHIVE, "expected 'ova.xml'"),
    ],
)
def test_verify_finds_problems(archive, expected):
    found = verify_xva(io.BytesIO(archive), "b.xva")
    assert any(expected in p for p in found), found
    assert all(p.startswith("b.xva") for p in found)


def test_verify_missing_checksum_entry_and_misplaced_one():
    data = b"\x01" * MiB
    base = tar_entry("ova.xml", build_ova_xml(make_vm_header("vm", [("Ref:1", MiB, "d")])))
    no_sum = base + tar_entry("Ref:1/00000000", data) + END_OF_ARCHIVE
    assert any("no .xxhash or .checksum" in p for p in verify_xva(io.BytesIO(no_sum)))
    with pytest.raises(XvaChecksumError):
        extract_all(no_sum)
    stray = base + tar_entry("Ref:1/00000000.xxhash", b"0" * 16) + tar_entry("Ref:1/00000000", data) + END_OF_ARCHIVE
    assert any("does not follow its data entry" in p for p in verify_xva(io.BytesIO(stray)))


def test_verify_corrupt_tar_header_and_compression():
    archive = bytearray(small_archive())
    ova_size = int(archive[124:135], 8)
    second_header = 512 + -(-ova_size // 512) * 512  # the first chunk's header
    assert archive[second_header : second_header + 14] == b"Ref:1/00000000"
    archive[second_header + 10] ^= 0x01
    assert any("tar header checksum" in p for p in verify_xva(io.BytesIO(bytes(archive))))
    gz = gzip.compress(small_archive())
    assert verify_xva(io.BytesIO(gz)) == []
    assert any("ends early" in p or "archive ends" in p for p in verify_xva(io.BytesIO(gz[: len(gz) // 2])))
    with pytest.raises(XvaTruncatedError):
        extract_all(gz[: len(gz) // 2])
    with pytest.raises(XvaFormatError):
        extract_all(gz[:10] + b"\xff" * 200 + gz[210:])


def test_quick_check_like_clean_vm(tmp_path):
    good = small_archive()
    path = tmp_path / "a.xva"
    path.write_bytes(good)
    assert xva_quick_check(str(path), len(good)) == [] and is_valid_xva(path)
    assert "metadata says" in xva_quick_check(str(path), len(good) + 1)[0]
    path.write_bytes(good[:-512])
    assert not is_valid_xva(path)
    path.write_bytes(good[:-100])
    assert any("multiple of 512" in p for p in xva_quick_check(path))
    path.write_bytes(b"\x1f\x8b" + bytes(30))  # compressed: only the magic is looked at
    assert is_valid_xva(path)
    path.write_bytes(b"tiny")
    assert "less than 20" in xva_quick_check(path)[0]


# -- optional dependencies ---------------------------------------------------------------------------


def _optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def test_xxh64_known_values_and_pure_python_fallback(monkeypatch):
    assert format(xxh64_python(b""), "016X") == "EF46DB3751D8E999"  # published XXH64 test vector
    rng = random.Random(4)
    samples = [rng.randbytes(n) for n in (1, 3, 4, 7, 8, 31, 32, 33, 63, 100, 1000, 65536 + 5)]
    xxhash = _optional("xxhash")  # the reference implementation, when installed
    if xxhash is not None:
        for data in samples:
            assert xxh64_python(data) == xxhash.xxh64(data).intdigest()
    expected = [xxh64_hex(d) for d in samples]
    monkeypatch.setitem(sys.modules, "xxhash", None)  # as on a proxy without the package
    monkeypatch.setattr(_xva_hash, "_backend", None)
    assert _xva_hash.xxhash_backend() == "python"
    assert [xxh64_hex(d) for d in samples] == expected


def test_zstd_without_the_package_says_what_to_install(monkeypatch, disks):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)
    archive = b"\x28\xb5\x2f\xfd" + bytes(100)
    with pytest.raises(XvaDependencyError, match="pip install zstandard"):
        XvaReader(io.BytesIO(archive))
    assert any("pip install zstandard" in p for p in verify_xva(io.BytesIO(archive)))
    with pytest.raises(XvaDependencyError):
        Compressor("zstd")

"""``.xva.checksum`` files: written and read in every algorithm Xen Orchestra knows, checked by coreutils."""

import io
import os
import subprocess

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils import _xo_checksum as C

COREUTILS = {"md5": "md5sum", "sha256": "sha256sum", "sha512": "sha512sum"}


@pytest.mark.parametrize(("algorithm", "number"), [("md5", "1"), ("sha256", "5"), ("sha512", "6")])
def test_written_checksums_match_coreutils_and_read_back(tmp_path, algorithm, number):
    data = os.urandom(300_000) + bytes(70_000)
    sink = io.BytesIO()
    writer = C.ChecksumWriter(sink, algorithm)
    for i in range(0, len(data), 4099):
        writer.write(data[i : i + 4099])
    assert sink.getvalue() == data and writer.tell() == writer.checksum.size == len(data)
    (tmp_path / "b.xva").write_bytes(data)
    done = subprocess.run([COREUTILS[algorithm], "b.xva"], cwd=tmp_path, capture_output=True, text=True, check=True)
    hexdigest = done.stdout.split()[0]
    text = writer.checksum.text
    assert text == f"${number}$${hexdigest}"
    assert C.parse_checksum(text + "\n") == C.parse_checksum(text.encode()) == (algorithm, hexdigest)
    assert C.checksum_of_stream(io.BytesIO(data), algorithm, chunk_size=4096).text == text


@pytest.mark.parametrize(
    "bad",
    [
        "d41d8cd98f00b204e9800998ecf8427e",  # no "$<id>$$"
        "$1$d41d8cd98f00b204e9800998ecf8427e",  # one "$" after the id
        "$1$$D41D8CD98F00B204E9800998ECF8427E",  # XO compares the text: only lowercase can match
        "$1$$d41d8cd98f00b204e9800998ecf842",  # too short for MD5
        "$5$$d41d8cd98f00b204e9800998ecf8427e",  # an MD5's length under SHA-256's id
        "$2$$d41d8cd98f00b204e9800998ecf8427e",  # an id XO does not know
        "$1$$d41d8cd98f00b204e9800998ecf8427e trailing",
        "$1$$d41d8cd98f00b204e9800998ecf8427e\x1f",  # XO's trim() keeps it, so XO's comparison fails
        "$6$$" + "0" * 64,  # SHA-256's length under SHA-512's id
        "$5$$" + "A" * 64,
        "$$",
        b"$1$$\xff\xfe" + b"0" * 30,  # not ASCII
        "",
    ],
)
def test_anything_else_is_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match=r"is not an XO checksum: expected \$1\$\$ and 32 lowercase hex"):
        C.parse_checksum(bad)


@pytest.mark.parametrize(
    ("cpuinfo", "hardware"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 sha_ni\n\nprocessor\t: 1\nflags\t\t: fpu\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 sha_nix\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1 sha2 crc32\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd sha1\n", False),
        ("processor\t: 0\n", False),
        # Only the first CPU counts (a later one alone does not make hashlib's choice safe), and other
        # "... flags" lines are not the flags.
        ("processor\t: 0\nflags\t\t: fpu\n\nprocessor\t: 1\nflags\t\t: fpu sha_ni\n", False),
        ("processor\t: 0\nvmx flags\t: sha_ni ept\nflags\t\t: fpu sha_ni\n", True),
        ("processor\t: 0\nvmx flags\t: sha_ni ept\nflags\t\t: fpu\n", False),
    ],
)
def test_auto_writes_sha256_only_where_the_cpu_hashes_it(tmp_path, cpuinfo, hardware):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert C.cpu_hashes_sha256(str(path)) is hardware
    assert C.choose_algorithm("auto", str(path)) == ("sha256" if hardware else "md5")
    assert C.choose_algorithm("md5", str(path)) == "md5" and C.choose_algorithm("sha256", str(path)) == "sha256"


def test_a_model_name_that_is_not_utf8_does_not_fail_the_backup(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_bytes(b"processor\t: 0\nmodel name\t: Virtual \xae CPU\nflags\t\t: fpu sha_ni\n")
    assert C.cpu_hashes_sha256(str(path)) is True


def test_without_cpu_information_auto_writes_md5(tmp_path):
    assert C.cpu_hashes_sha256(str(tmp_path / "absent")) is False
    assert C.choose_algorithm("auto", str(tmp_path / "absent")) == "md5"

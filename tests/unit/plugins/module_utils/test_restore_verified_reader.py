"""The restore's XVA reader: pieces of reused buffers, the hash checked before the last piece, clean stops."""

import hashlib
import os

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._restore import VerifiedReader
from ansible_collections.xapi.proxy.plugins.module_utils._restore_errors import ChecksumMismatchError
from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._xo_checksum import Checksum

PIECE = 64 << 10


@pytest.fixture
def stored(tmp_path):
    data = os.urandom(10 * PIECE + 123)
    (tmp_path / "b.xva").write_bytes(data)
    with open_remote(f"file://{tmp_path}") as store:
        yield store, data


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "sha512"])
def test_pieces_are_the_file_and_the_digest_is_checked(stored, algorithm):
    store, data = stored
    expected = Checksum(algorithm, hashlib.new(algorithm, data).hexdigest())
    with store.open_read("b.xva") as stream:
        reader = VerifiedReader(stream, len(data), expected, piece=PIECE, depth=3)
        try:
            got = b"".join(bytes(p) for p in reader.pieces())
        finally:
            reader.close()
    assert got == data and reader.done == len(data) and not reader.mismatch


def test_a_mismatch_stops_before_the_last_piece_unless_forced(stored):
    store, data = stored
    for force in (False, True):
        with store.open_read("b.xva") as stream:
            reader = VerifiedReader(stream, len(data), Checksum("sha256", "0" * 64), force=force, piece=PIECE, depth=3)
            sent = []
            try:
                if force:
                    sent = [bytes(p) for p in reader.pieces()]
                else:
                    with pytest.raises(ChecksumMismatchError, match=r"does not match its checksum file \(SHA-256 "):
                        for p in reader.pieces():
                            sent.append(bytes(p))
            finally:
                reader.close()
        assert reader.mismatch
        assert len(b"".join(sent)) == (len(data) if force else len(data) - 123), "the last piece is held back"


def test_read_gives_bytes_and_close_stops_a_reader_that_is_ahead(stored):
    store, data = stored
    with store.open_read("b.xva") as stream:
        reader = VerifiedReader(stream, len(data), None, piece=PIECE, depth=2)
        assert reader.read(1000) == data[:1000]
        assert reader.read() == data[1000:PIECE]
        reader.close()  # the helper is waiting for a free buffer: it must stop anyway


def test_a_truncated_file_is_an_error(stored):
    store, data = stored
    with store.open_read("b.xva") as stream:
        reader = VerifiedReader(stream, len(data) + 10, None, piece=PIECE, depth=3)
        try:
            with pytest.raises(Exception, match="ended after"):
                for _ in reader.pieces():
                    pass
        finally:
            reader.close()

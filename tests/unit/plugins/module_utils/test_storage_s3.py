"""``s3://`` specifics, against ``rclone serve s3`` from tests/servers.py (contract: test_storage_contract.py).

Multipart streaming and part sizes, what killed or aborted writers leave, directory semantics without
marker objects, request patterns of reads and batch deletes, credentials, TLS options, error mapping.
"""

import logging
import re
import signal
import time
import tracemalloc
from urllib.parse import quote

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from servers import S3_KEY, S3_SECRET, S3_SMALL_BUCKET, CuttingProxy
from test_storage_contract import Backend, child, wait_line

from ansible_collections.xapi.proxy.plugins.module_utils import _storage_s3
from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import parse
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    NotSupportedError,
    RemoteFullError,
    StorageError,
    UnreachableError,
    open_remote,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_s3 import (
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    S3Storage,
    base_part_size,
    guess_region,
    part_size,
)

MiB = 1024 * 1024
TiB = 1024 * 1024 * MiB


def uploads(store):
    """(key, [part sizes]) of the incomplete multipart uploads under the store's prefix."""
    client = store._client
    for attempt in range(5):
        try:
            found = []
            for upload in client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", []):
                parts = client.list_parts(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                found.append((upload["Key"], [p["Size"] for p in parts.get("Parts", [])]))
            return found
        except ClientError as err:
            # rclone's listing trips over an upload of another test (another prefix) ending meanwhile
            if err.response["Error"]["Code"] != "NoSuchUpload" or attempt == 4:
                raise
            time.sleep(0.05)
    return None


def keys(store):
    """Every object key under the store's prefix (rclone also lists empty directories of its backing
    folder as prefixes, which S3 would not: visible objects are what matters)."""
    found = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/").get("Contents", [])
    return [item["Key"][len(store.prefix) + 1 :] for item in found]


def count_calls(store, operation):
    """The API parameters of every ``operation`` call the store makes from now on."""
    calls = []
    store._client.meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(params)
    )
    return calls


# -- writes -----------------------------------------------------------------------------------
def test_a_stream_goes_up_in_5_mib_parts_and_appears_on_completion(new_s3_url):
    with open_remote(new_s3_url) as store:
        out = store.open_write("big/disk.xva")
        for i in range(12):
            out.write(bytes([i]) * MiB)
        assert uploads(store) == [(f"{store.prefix}/big/disk.xva", [5 * MiB, 5 * MiB])]  # streamed, not buffered
        assert not store.exists("big/disk.xva")
        out.commit()
        assert uploads(store) == []
        assert store.read_bytes("big/disk.xva") == b"".join(bytes([i]) * MiB for i in range(12))


def test_a_small_file_is_one_put(new_s3_url):
    with open_remote(new_s3_url) as store:
        puts, creates = count_calls(store, "PutObject"), count_calls(store, "CreateMultipartUpload")
        store.write_json("meta.json", {"a": 1})
        assert (len(puts), len(creates)) == (1, 0)
        assert store.read_bytes("meta.json") == b'{"a":1}'


def test_abort_aborts_the_upload(new_s3_url):
    with open_remote(new_s3_url) as store:
        with pytest.raises(RuntimeError), store.open_write("x/disk.vhd") as out:
            out.write(b"x" * (6 * MiB))
            assert len(uploads(store)) == 1
            raise RuntimeError("the source broke")
        assert uploads(store) == [] and keys(store) == []


def test_a_killed_writer_leaves_an_invisible_upload_that_can_be_aborted(new_s3_url):
    with open_remote(new_s3_url) as store, child(Backend("s3", new_s3_url), action="write_forever", path="k/f") as proc:
        wait_line(proc, "READY")
        deadline = time.monotonic() + 10
        while not uploads(store) or not uploads(store)[0][1]:  # a part arrived
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert keys(store) == [] and not store.exists("k/f")
        assert store.abort_incomplete_uploads(older_than=3600) == []  # too recent
        assert store.abort_incomplete_uploads(older_than=0) == ["k/f"]
        assert uploads(store) == []


def test_part_sizes_grow_and_spill_to_disk(rclone_s3):
    url = rclone_s3.url(prefix=rclone_s3.new_prefix())
    # rclone accepts parts of any size: a small schedule shows the growth (doubling every max_parts/10)
    with open_remote(url, min_part_size=16 * 1024, max_parts=20) as store:
        out = store.open_write("g/f")
        out.write(b"z" * (384 * 1024 + 10))
        sizes = [k * 1024 for k in (16, 16, 32, 32, 64, 64, 128)]
        assert uploads(store) == [(f"{store.prefix}/g/f", sizes)]
        out.commit()
        assert store.size("g/f") == 384 * 1024 + 10
        out = store.open_write("g/too-big")
        out.write(b"z" * (16 * 1024 * 2046))  # exactly the 20 parts' capacity: fine
        with pytest.raises(StorageError, match="larger than one S3 object can be \\(20 parts\\); give a size_hint"):
            out.write(b"z")
        assert uploads(store) == [] and not store.exists("g/too-big")
    with open_remote(url, min_part_size=8 * MiB, memory_part_limit=MiB) as store:
        chunk = b"s" * (256 * 1024)
        tracemalloc.start()
        try:
            with store.open_write("s/f") as out:
                for _ in range(96):  # three 8 MiB parts
                    out.write(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * MiB, f"a part above memory_part_limit stayed in memory: peak {peak / MiB:.1f} MiB"
        assert store.size("s/f") == 24 * MiB


def test_part_size_schedule():
    assert part_size(1) == MIN_PART == 5 * MiB
    assert part_size(1000) == 5 * MiB and part_size(1001) == 10 * MiB and part_size(10_000) == 2560 * MiB
    unknown = sum(part_size(n) for n in range(1, MAX_PARTS + 1))
    assert unknown > 4.8 * TiB  # a stream of unknown length can be multi-TB
    assert all(MIN_PART <= part_size(n) <= MAX_PART for n in range(1, MAX_PARTS + 1))
    for hint in (1, 40 * 1024 * MiB, TiB, 5 * TiB):
        base = base_part_size(hint)
        assert base >= MIN_PART and base % MiB == 0
        assert sum(part_size(n, base) for n in range(1, MAX_PARTS + 1)) >= hint
    assert base_part_size(TiB) == 105 * MiB  # 1 TiB / 10 000, rounded up to whole MiB
    assert base_part_size(None) == MIN_PART


def test_size_hint_sets_the_first_part(new_s3_url):
    with open_remote(new_s3_url, max_parts=4) as store:
        out = store.open_write("h/f", size_hint=40 * MiB)  # 4 parts of 10 MiB
        out.write(b"h" * (10 * MiB + 1))
        assert uploads(store)[0][1] == [10 * MiB]
        out.abort()


def test_exclusive_write_refuses_an_existing_name(new_s3_url):
    with open_remote(new_s3_url) as store:
        store.write_bytes("e/f", b"1")
        with pytest.raises(AlreadyExistsError, match="cannot write e/f on .*: it already exists"):
            store.open_write("e/f", overwrite=False)
        racing = store.open_write("e/g", overwrite=False)
        racing.write(b"r" * (6 * MiB))  # a multipart upload under way
        store.write_bytes("e/g", b"theirs")
        with pytest.raises(AlreadyExistsError):
            racing.commit()
        assert store.read_bytes("e/g") == b"theirs" and uploads(store) == []


# -- reads ------------------------------------------------------------------------------------
def test_sequential_reads_stream_one_get_and_pread_is_ranged(new_s3_url):
    with open_remote(new_s3_url) as store:
        data = bytes(range(256)) * (48 * 1024)  # 12 MiB
        store.write_bytes("r/f", data)
        gets = count_calls(store, "GetObject")
        with store.open_read("r/f") as f:
            parts = []
            while chunk := f.read(MiB):
                parts.append(chunk)
            assert b"".join(parts) == data
            assert [g["Range"] for g in gets] == ["bytes=0-"]
            assert f.pread(5 * MiB + 3, 10) == data[5 * MiB + 3 : 5 * MiB + 13]
            assert gets[-1]["Range"] == f"bytes={5 * MiB + 3}-{5 * MiB + 12}"
            f.seek(100)
            assert f.read(4) == data[100:104] and gets[-1]["Range"] == "bytes=100-"
            assert f.read(4) == data[104:108] and len(gets) == 3  # still the same response
        assert all(g.get("IfMatch") for g in gets)  # pinned to the version opened


# -- directories, rename, deletion ------------------------------------------------------------
def test_directories_are_key_prefixes_without_markers(new_s3_url):
    with open_remote(new_s3_url) as store:
        store.mkdir("vdis/job/vdi")
        assert store.list("", missing_ok=True) == [] and not store.exists("vdis")  # nothing was written
        store.write_bytes("vdis/job/vdi/a.vhd", b"a")
        assert store.stat("vdis/job").is_dir and store.list("vdis") == ["job"]
        with pytest.raises(AlreadyExistsError, match="a file has that name"):
            store.mkdir("vdis/job/vdi/a.vhd")
        with pytest.raises(AlreadyExistsError, match="it already exists"):
            store.mkdir("vdis/job", exist_ok=False)
        store.delete("vdis/job/vdi/a.vhd")
        assert not store.exists("vdis")  # its last key went, so did the directory
        keys = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
        assert keys == []


def test_directory_rename_copies_every_key_then_deletes_the_sources(new_s3_url):
    with open_remote(new_s3_url) as store:
        for name in ("bat", "footer", "blocks/0/1", "blocks/0/2"):
            store.write_bytes(f"data/old.vhd/{name}", name.encode())
        copies, deletes = count_calls(store, "CopyObject"), count_calls(store, "DeleteObjects")
        store.rename("data/old.vhd", "data/new.vhd")
        # the first CopyObject tries the name as a file (NoSuchKey), then one per key below it
        assert [c["Key"].split("/data/")[1] for c in copies] == ["new.vhd"] + [
            f"new.vhd/{n}" for n in ("bat", "blocks/0/1", "blocks/0/2", "footer")
        ]
        assert len(deletes) == 1
        assert store.list("data") == ["new.vhd"]
        assert store.read_bytes("data/new.vhd/blocks/0/2") == b"blocks/0/2"


def test_a_file_rename_is_one_copy_and_one_delete(new_s3_url):
    # a merge moves VHD-directory blocks by the thousand: no HEAD, no managed-transfer probing
    with open_remote(new_s3_url) as store:
        store.write_bytes("data/a.vhd/blocks/0/7", b"block")
        calls = {op: count_calls(store, op) for op in ("CopyObject", "DeleteObject", "HeadObject", "ListObjectsV2")}
        store.rename("data/a.vhd/blocks/0/7", "data/b.vhd/blocks/0/7")
        assert {op: len(c) for op, c in calls.items()} == {
            "CopyObject": 1, "DeleteObject": 1, "HeadObject": 0, "ListObjectsV2": 0
        }  # fmt: skip
        assert store.read_bytes("data/b.vhd/blocks/0/7") == b"block" and not store.exists("data/a.vhd/blocks/0/7")
        with pytest.raises(NotFoundError, match="cannot rename data/nothing to data/x on .*: it does not exist"):
            store.rename("data/nothing", "data/x")


def test_delete_tree_deletes_in_batches(new_s3_url, monkeypatch):
    monkeypatch.setattr(_storage_s3, "DELETE_BATCH", 2)
    with open_remote(new_s3_url) as store:
        for i in range(5):
            store.write_bytes(f"t/{i}", b"x")
        store.write_bytes("t2", b"keep")  # shares the prefix "t" but is not below t/
        deletes = count_calls(store, "DeleteObjects")
        store.delete_tree("t")
        assert [len(d["Delete"]["Objects"]) for d in deletes] == [2, 2, 1]
        assert store.list("") == ["t2"]


def test_lock_is_a_no_op_and_updates_are_not_supported(new_s3_url):
    with open_remote(new_s3_url) as store:
        assert S3Storage.exclusive_lock is False
        with store.lock("xo-vm-backups/vm") as first, store.lock("xo-vm-backups/vm") as second:
            assert first.path == second.path == "xo-vm-backups/vm.lock" and not first.lost
        assert keys(store) == []  # and it wrote nothing
        store.write_bytes("v.vhd", b"1")
        with pytest.raises(NotSupportedError, match="cannot update v.vhd in place on .*: this remote does not support"):
            store.open_update("v.vhd")


# -- errors, credentials, TLS -----------------------------------------------------------------
def test_wrong_keys_are_authentication_errors_without_the_secret(rclone_s3, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng/secret+="
    for key, secret, code in ((S3_KEY, wrong, "SignatureDoesNotMatch"), ("NOSUCHKEY", wrong, "InvalidAccessKeyId")):
        with pytest.raises(AuthenticationError) as info:
            open_remote(rclone_s3.url(key=key, secret=secret))
        assert str(info.value) == (
            f"cannot open / on {parse(rclone_s3.url(key=key, secret=secret)).redacted()}: the S3 server 127.0.0.1 "
            f"refused the access key {key} ({code}); check the access key and secret in the remote URL."
        )
    with open_remote(rclone_s3.url(prefix="p")) as store:
        store.write_bytes("a", b"1")
        assert S3_SECRET not in repr(store) and S3_SECRET not in store.display
    assert "botocore" in caplog.text  # real library logs were captured
    for secret in (wrong, S3_SECRET, quote(S3_SECRET, safe="")):
        assert secret not in caplog.text


def test_missing_bucket_is_not_found_and_names_it(rclone_s3):
    with pytest.raises(NotFoundError, match="bucket nosuch does not exist on 127.0.0.1; create it or fix the bucket"):
        open_remote(rclone_s3.url(bucket="nosuch"))


def test_unreachable_endpoint(closed_port, silent_port):
    t0 = time.monotonic()
    with pytest.raises(UnreachableError, match="cannot open / on .*: the remote is unreachable"):
        open_remote(f"s3+http://k:s@127.0.0.1:{closed_port}/b", max_attempts=1)
    with pytest.raises(UnreachableError, match="the remote is unreachable"):
        open_remote(f"s3+http://k:s@127.0.0.1:{silent_port}/b", timeout=1, read_timeout=1, max_attempts=1)
    assert time.monotonic() - t0 < 15


def test_full_disk_behind_the_server_fails_cleanly(rclone_s3):
    if not rclone_s3.small_mounted:
        pytest.skip("no 1 MiB bucket: mounting a tmpfs needs root")
    url = rclone_s3.url(bucket=S3_SMALL_BUCKET, prefix=rclone_s3.new_prefix())
    with open_remote(url, max_attempts=1) as store:
        with pytest.raises(StorageError) as info, store.open_write("x/disk.xva") as out:
            out.write(b"f" * (6 * MiB))
        # rclone reports ENOSPC as a bare InternalError (or, when the failure surfaced between two parts, drops
        # the upload): clear about what failed and where, though it cannot say why
        assert type(info.value) is StorageError
        assert re.fullmatch(
            f"cannot write x/disk.xva on {re.escape(store.display)}: the S3 server (answered InternalError: Internal "
            r"Error\.|dropped the upload \(NoSuchUpload: .*\): it failed on the server's side \(full disk\?\).*)",
            str(info.value),
        ), str(info.value)
        assert uploads(store) == [] and keys(store) == []
        store.write_bytes("x/small.json", b"{}")  # the space came back
        assert store.read_bytes("x/small.json") == b"{}"


@pytest.mark.parametrize(("code", "status"), [("QuotaExceeded", 403), ("EntityTooLarge", 400),
                                              ("XMinioStorageFull", 507), ("InsufficientStorage", 507)])  # fmt: skip
def test_quota_answers_are_remote_full(new_s3_url, code, status):
    with open_remote(new_s3_url) as store:
        answer = {"Error": {"Code": code, "Message": "no room"}, "ResponseMetadata": {"HTTPStatusCode": status}}
        mapped = store._fail(ClientError(answer, "UploadPart"), "write", "x.xva")
        assert isinstance(mapped, RemoteFullError)
        assert str(mapped) == (
            f"cannot write x.xva on {store.display}: the remote is full ({code}: no room); free space on it or lower "
            "the retention."
        )


def test_tls_verification_ca_bundle_and_allow_unauthorized(rclone_s3_tls):
    url = rclone_s3_tls.url(prefix="tls")
    with pytest.raises(StorageError, match="TLS verification failed .*CA with the remote_ca_path option"):
        open_remote(url, max_attempts=1)
    with open_remote(url, ca_bundle=str(rclone_s3_tls.ca_path)) as store:
        store.write_bytes("a", b"verified")
    with pytest.warns(Warning), open_remote(rclone_s3_tls.url(prefix="tls", options="?allowUnauthorized=true")) as s:
        assert s.read_bytes("a") == b"verified"


def test_region_and_path_style(rclone_s3):
    with open_remote(rclone_s3.url(prefix="p") + "#eu-west-3") as store:
        assert store._client.meta.region_name == "eu-west-3"
        assert store._client.meta.config.s3["addressing_style"] == "path"
    assert guess_region("s3.eu-west-3.amazonaws.com") == "eu-west-3"
    assert guess_region("s3-us-gov-west-1.amazonaws.com") == "us-gov-west-1"
    assert guess_region("minio.example") == "us-east-1"


def test_small_reads_are_one_get_and_fail_as_the_contract_says(new_s3_url):
    with open_remote(new_s3_url) as store:
        store.write_bytes("dir/leaf", b"x" * 100)
        gets, heads = count_calls(store, "GetObject"), count_calls(store, "HeadObject")
        assert store.read_bytes("dir/leaf") == b"x" * 100
        assert (len(gets), len(heads)) == (1, 0)
        with pytest.raises(StorageError, match="as a small file: it has 100 bytes \\(limit 10\\)"):
            store.read_bytes("dir/leaf", limit=10)
        with pytest.raises(StorageError, match="dir on .* it is a directory"):
            store.read_bytes("dir")
        with pytest.raises(NotFoundError, match="nothing-here .* does not exist"):
            store.read_bytes("nothing-here")


def test_an_answer_that_breaks_off_is_a_storage_error(rclone_s3):
    # The answer's headers and 100 bytes of its body, then the connection drops (a server or network
    # failing mid-answer). botocore does not retry a body it is reading; a small read fails clearly.
    prefix = rclone_s3.new_prefix()
    with CuttingProxy(rclone_s3.port, cut_marker="/gone.json") as proxy:
        url = rclone_s3.url(prefix=prefix).replace(f":{rclone_s3.port}/", f":{proxy.port}/")
        with open_remote(url, max_attempts=1) as store:
            store.write_bytes("d/kept.json", b"k" * 2000)
            store.write_bytes("d/gone.json", b"x" * 2000)
            assert store.read_bytes("d/kept.json") == b"k" * 2000  # relayed whole
            expected = (
                f"cannot read d/gone.json on {re.escape(store.display)}: the S3 server 127.0.0.1 broke off its "
                r"answer \(Connection broken: IncompleteRead\(100 bytes read, 1900 more expected\)\); run again"
            )
            with pytest.raises(StorageError, match=expected) as info:
                store.read_bytes("d/gone.json")
            assert type(info.value) is StorageError and S3_SECRET not in str(info.value)
            # a streamed read opens a ranged GET where it broke (every answer here breaks after 100 bytes)
            cuts = proxy.cuts
            with store.open_read("d/gone.json") as fh:
                assert fh.read() == b"x" * 2000
            assert proxy.cuts - cuts == 19  # the last range, 100 bytes, came whole


def refuse_copies(store, code, message, times=None):
    """Make CopyObject answer ``code`` (every time, or the first ``times``): what other S3 servers answer
    and rclone does not, through botocore's before-call hook (its stubbing point). Returns the count."""
    refused = []

    def refuse(**_):
        if times is not None and len(refused) >= times:
            return None
        refused.append(code)
        error = {"Code": code, "Message": message}
        return AWSResponse("", 400, {}, None), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}

    store._client.meta.events.register("before-call.s3.CopyObject", refuse)
    return refused


def test_a_refused_copy_of_a_large_object_falls_back_to_the_managed_copy(new_s3_url):
    # AWS refuses CopyObject for sources above 5 GiB with InvalidRequest (rclone has no such limit)
    with open_remote(new_s3_url) as store:
        store.write_bytes("big.xva", b"v" * 1000)
        refused = refuse_copies(store, "InvalidRequest", "The specified copy source is larger than 5368709120", 1)
        heads = count_calls(store, "HeadObject")
        store.rename("big.xva", "moved.xva")
        assert refused == ["InvalidRequest"] and len(heads) >= 1  # looked the source up, then copied
        assert store.read_bytes("moved.xva") == b"v" * 1000 and not store.exists("big.xva")


def test_a_missing_source_worded_otherwise_is_still_not_found(new_s3_url):
    # SeaweedFS answers InvalidArgument for a copy source that is missing or a directory: a HEAD settles
    # it, so a resumed merge still sees "already moved" and directory renames still work
    with open_remote(new_s3_url) as store:
        store.write_bytes("data/old.vhd/bat", b"bat")
        refuse_copies(store, "InvalidArgument", "Copy Source must mention the source bucket and key")
        with pytest.raises(NotFoundError, match="cannot rename data/gone to data/x on .*: it does not exist"):
            store.rename("data/gone", "data/x")


def test_a_file_renamed_onto_itself_stays(new_s3_url):
    with open_remote(new_s3_url) as store:
        store.write_bytes("same.json", b"{}")
        store.rename("same.json", "same.json")
        assert store.read_bytes("same.json") == b"{}"
        with pytest.raises(NotFoundError, match="cannot rename none.json to itself .*: it does not exist"):
            store.rename("none.json", "none.json")

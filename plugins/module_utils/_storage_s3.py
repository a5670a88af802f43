"""``s3://`` and ``s3+http://`` remotes through boto3, laid out as XO's S3 handler does.

URL: ``s3://KEY:SECRET@host[:port]/bucket[/prefix][?opts][#region]`` (key and secret percent-encoded).
Requests use path-style addressing (``host/bucket/key``, what S3-compatible servers expect), the URL's
region (else the one in an AWS host name, else ``us-east-1``), TLS verified against the system CAs or
``ca_bundle``; ``?allowUnauthorized=true`` turns verification off, as in XO.

Where an object store differs from a file system, and what this backend does about it:

- **Writes** never use a temporary name: the data goes to the final key, and nothing is visible there
  until :meth:`WriteStream.commit`, which completes a multipart upload (or sends one PutObject when the
  whole stream fits in the first part). ``abort`` aborts the upload. A writer killed mid-stream leaves
  an *incomplete* multipart upload: invisible, but billed by some providers until it is aborted by
  :meth:`S3Storage.abort_incomplete_uploads` or a bucket lifecycle rule.
- **Part sizes**: S3 allows 10 000 parts of 5 MiB to 5 GiB. With ``size_hint`` (the expected length)
  the first parts are ``max(5 MiB, size_hint / 10 000)``. Whatever the hint, the size doubles every
  1 000 parts (5, 10, 20 … 2 560 MiB), so a stream of unknown length can reach 4.9 TiB (S3's object
  limit is 5 TiB) while small streams use 5 MiB. A writer holds one part: in memory up to
  ``memory_part_limit`` (64 MiB), in an anonymous local temporary file (``spool_dir``) above that.
- **Directories** do not exist: a "directory" is the keys below ``<dir>/``. No marker objects are written
  (XO's S3 listing would show a ``<dir>/`` marker as an entry of that directory); ``mkdir`` only checks
  that no file is in the way, and a directory whose last file is deleted no longer exists.
- **rename** is copy + delete (server-side copies; several keys for a VHD directory). It is **not
  atomic**: a reader can see both names, or for a directory part of each, until it returns. XO's S3
  handler does the same.
- **lock** is a no-op, as XO's S3 ``_lock``: ``exclusive_lock`` is False. Concurrent runs on one S3
  remote must be prevented by the caller, e.g. the engine's local lock on the proxy host.
- ``open_update`` raises NotSupportedError: S3 remotes always use VHD directories.
- Reads stream one GET from the position on (``pread``: one ranged GET), pinned to the ETag seen at
  open with ``If-Match``: where the server honours it (AWS does, rclone ignores it), an object replaced
  while it is read is an error, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import time
from typing import Any, Dict, Iterator, List, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._remote_url import RemoteUrl
from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    LOCK_STALE_SECONDS,
    SMALL_FILE_LIMIT,
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    NotSupportedError,
    ReadStream,
    StatResult,
    Storage,
    StorageError,
    StorageLock,
    WriteStream,
    error_from_os,
    normalize_path,
)
from ansible_collections.xapi.proxy.plugins.module_utils._storage_s3_io import (  # noqa: F401 - part of this API
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    NoLock,
    S3ReadStream,
    S3WriteStream,
    base_part_size,
    part_size,
)

try:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ResponseStreamingError, SSLError
    from urllib3.exceptions import ProtocolError  # botocore's HTTP layer: a connection broken mid-answer
except ImportError:  # reported when an S3 remote is opened, not when the collection is imported
    boto3 = None

MiB = 1024 * 1024
DELETE_BATCH = 1000  # DeleteObjects' limit

_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
         "InvalidSecurity", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}  # fmt: skip
_FULL = {"QuotaExceeded", "EntityTooLarge", "XMinioStorageFull", "InsufficientStorage", "StorageFull",
         "XMinioAdminBucketQuotaExceeded"}  # fmt: skip
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_AWS_HOST = re.compile(r"^s3[.-](?:dualstack\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com(?:\.cn)?$")


def guess_region(host: str) -> str:
    """The region in an AWS endpoint name (``s3.eu-west-3.amazonaws.com``), else ``us-east-1``."""
    m = _AWS_HOST.match(host or "")
    return m.group(1) if m else "us-east-1"


class S3Storage(Storage):
    """A remote at ``url.path`` (the key prefix) in bucket ``url.bucket``.

    Options: ``ca_bundle`` (PEM file of the CAs to trust), ``timeout`` (connect, seconds),
    ``read_timeout``, ``max_attempts`` (retries of one request, botocore "standard" mode),
    ``memory_part_limit`` and ``spool_dir`` (see the module doc), ``min_part_size`` and ``max_parts``
    (S3's 5 MiB and 10 000; lower only for servers that allow it).
    """

    exclusive_lock = False  # lock() excludes nothing (XO's S3 lock is a no-op too)

    def __init__(
        self,
        url: RemoteUrl,
        *,
        ca_bundle: Optional[str] = None,
        timeout: float = 30.0,
        read_timeout: float = 300.0,
        max_attempts: int = 5,
        memory_part_limit: int = 64 * MiB,
        spool_dir: Optional[str] = None,
        min_part_size: int = MIN_PART,
        max_parts: int = MAX_PARTS,
    ):
        super().__init__(url)
        if url.type != "s3":
            raise NotSupportedError(f"S3Storage cannot open {url.redacted()}: it only handles s3:// remotes.")
        if boto3 is None:
            raise NotSupportedError(
                f"cannot open {self.display}: S3 remotes need the Python package boto3 on the proxy "
                "(pip install boto3)."
            )
        self.bucket = url.bucket
        self.prefix = url.path.strip("/")
        self.region = url.region or guess_region(url.host or "")
        self.memory_part_limit = memory_part_limit
        self.spool_dir = spool_dir
        self.min_part_size = min_part_size
        self.max_parts = max_parts
        port = f":{url.port}" if url.port else ""
        self.endpoint = f"{url.protocol or 'https'}://{url.host}{port}"
        verify: Any = True
        if url.options.get("allowUnauthorized") is True:
            verify = False
        elif ca_bundle:
            verify = ca_bundle
        settings: Dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "connect_timeout": timeout,
            "read_timeout": read_timeout,
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
        }
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            # newer botocore adds CRC32 checksums (aws-chunked bodies) that many S3-compatible servers refuse
            settings["request_checksum_calculation"] = "when_required"
            settings["response_checksum_validation"] = "when_required"
        creds = url.credentials
        if creds is None:
            settings["signature_version"] = UNSIGNED  # anonymous: never pick up the host's own AWS credentials
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=creds.username if creds else None,
            aws_secret_access_key=creds.password if creds else None,
            verify=verify,
            config=Config(**settings),
        )
        model = self._client.meta.service_model
        self._conditional_complete = (
            "IfNoneMatch" in model.operation_model("CompleteMultipartUpload").input_shape.members
        )
        self._conditional_put = "IfNoneMatch" in model.operation_model("PutObject").input_shape.members
        try:
            # a listing answers with a body, so wrong keys and a missing bucket are told apart (HEAD cannot)
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._dir_prefix(""), MaxKeys=1)
        except Exception as err:  # noqa: BLE001 - every failure is mapped to a worded StorageError
            self.close()
            raise self._fail(err, "open", None) from None

    def __repr__(self):
        return f"S3Storage({self.display!r})"

    # -- keys and errors --------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    def _dir_prefix(self, rel: str) -> str:
        key = self._key(rel)
        return f"{key}/" if key else ""

    def _fail(self, err: BaseException, action: str, rel: Optional[str]) -> StorageError:
        if isinstance(err, StorageError):
            return err
        what = f"cannot {action} {rel or '/'} on {self.display}"
        if isinstance(err, ClientError):
            info = err.response.get("Error", {})
            code = str(info.get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            reason = f"{code}: {info.get('Message') or status}"
            if code in _AUTH:
                who = self.url.credentials.username if self.url.credentials else "(anonymous)"
                return AuthenticationError(
                    f"{what}: the S3 server {self.url.host} refused the access key {who} ({code}); check the "
                    "access key and secret in the remote URL."
                )
            if code == "NoSuchBucket":
                return NotFoundError(
                    f"{what}: bucket {self.bucket} does not exist on {self.url.host}; create it or fix the bucket "
                    "in the remote URL.",
                    rel,
                    errno.ENOENT,
                )
            if code in _FULL or status == 507:
                return error_from_os(OSError(errno.ENOSPC, reason), action, rel, self.display)
            if code in _DENIED:
                return error_from_os(OSError(errno.EACCES, reason), action, rel, self.display)
            if code in _MISSING:
                return error_from_os(OSError(errno.ENOENT, reason), action, rel, self.display)
            if code == "NoSuchUpload":
                return StorageError(
                    f"{what}: the S3 server dropped the upload ({reason}): it failed on the server's side (full "
                    "disk?) or was aborted (lifecycle rule); write it again.",
                    rel,
                )
            return StorageError(f"{what}: the S3 server answered {reason}.", rel)
        if isinstance(err, SSLError):
            return StorageError(
                f"{what}: TLS verification failed ({err}); give the server's CA with the remote_ca_path option, "
                "or add allowUnauthorized=true to the remote URL to skip verification.",
                rel,
            )
        if isinstance(err, ResponseStreamingError):  # botocore's wrapper of the error below, for object bodies
            err = err.kwargs.get("error") or err
        if isinstance(err, (ProtocolError, http.client.IncompleteRead)):
            # The answer broke off after its headers: botocore does not retry a body it is reading.
            # (str(): IncompleteRead's first argument is the partial body itself.)
            detail = err.args[0] if isinstance(err, ProtocolError) and err.args else str(err)
            return StorageError(
                f"{what}: the S3 server {self.url.host} broke off its answer ({detail}); run again, and check the "
                "server's log if it persists.",
                rel,
            )
        if isinstance(err, BotoCoreError):  # connection refused, timeouts, DNS, closed connections
            return error_from_os(OSError(errno.EHOSTUNREACH, str(err)), action, rel, self.display)
        if isinstance(err, OSError):
            return error_from_os(err, action, rel, self.display)
        raise err  # a programming error, not a remote failure

    def _call(self, action: str, rel: Optional[str], method: str, **params):
        try:
            return getattr(self._client, method)(**params)
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, action, rel) from None

    def _head(self, rel: str, action: str) -> Optional[dict]:
        """The object's HEAD, or None when there is none (a directory, or nothing)."""
        return self._head_key(self._key(rel), action, rel)

    def _head_key(self, key: str, action: str, rel: str) -> Optional[dict]:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(err, action, rel) from None
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, action, rel) from None

    def _is_dir(self, rel: str, action: str) -> bool:
        if not rel:
            return True
        page = self._call(action, rel, "list_objects_v2", Bucket=self.bucket, Prefix=self._dir_prefix(rel), MaxKeys=1)
        return bool(page.get("KeyCount") or page.get("Contents") or page.get("CommonPrefixes"))

    def _keys_below(self, rel: str, action: str) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._dir_prefix(rel))
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"]
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, action, rel) from None

    def _delete_keys(self, keys: List[str], action: str, rel: str) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            answer = self._call(action, rel, "delete_objects", Bucket=self.bucket,
                                Delete={"Objects": batch, "Quiet": True})  # fmt: skip
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                fake = ClientError({"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "Delete")
                raise self._fail(fake, action, rel)

    def _copy(self, src_key: str, dst_key: str, action: str, rel: str) -> bool:
        """Copy one object server side; False if there is no object ``src_key``.

        One CopyObject, no HEAD first: a merge moves VHD-directory blocks by the thousand. Servers word
        a refused copy differently (AWS: InvalidRequest above 5 GiB; SeaweedFS: InvalidArgument for a
        missing source), so any other refusal is settled by a HEAD: no object, or boto3's managed copy,
        which copies large objects in parts."""
        source = {"Bucket": self.bucket, "Key": src_key}
        try:
            self._client.copy_object(Bucket=self.bucket, Key=dst_key, CopySource=source)
            return True
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in _MISSING:
                return False
            if code in _AUTH or code in _DENIED or code == "NoSuchBucket":
                raise self._fail(err, action, rel) from None
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, action, rel) from None
        if self._head_key(src_key, action, rel) is None:
            return False
        config = TransferConfig(multipart_threshold=MAX_PART, multipart_chunksize=512 * MiB, use_threads=False)
        try:
            self._client.copy(source, self.bucket, dst_key, Config=config)
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, action, rel) from None
        return True

    # -- contract ---------------------------------------------------------------------------
    def open_write(self, path: str, *, overwrite: bool = True, size_hint: Optional[int] = None) -> WriteStream:
        """Start writing ``path``; ``size_hint`` (expected bytes) sizes the parts, see the module doc."""
        rel = normalize_path(path)
        if not overwrite and self._head(rel, "write") is not None:
            raise AlreadyExistsError(f"cannot write {rel} on {self.display}: it already exists.", rel)
        base = base_part_size(size_hint, self.min_part_size, self.max_parts)
        return S3WriteStream(self, rel, overwrite, base)

    def write_bytes(self, path: str, data: bytes, *, overwrite: bool = True) -> None:
        """Small files (VHD-directory blocks, metadata) in one PutObject, without the stream's part copies."""
        if not overwrite or len(data) > self.min_part_size:
            super().write_bytes(path, data, overwrite=overwrite)
            return
        rel = normalize_path(path)
        self._call("write", rel, "put_object", Bucket=self.bucket, Key=self._key(rel), Body=bytes(data))

    def read_bytes(self, path: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        """One GET (no HEAD first): a VHD directory's blocks are read by the thousand."""
        rel = normalize_path(path)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey", "NotFound"):
                raise self._fail(err, "read", rel) from None
            if self._is_dir(rel, "read"):
                raise StorageError(f"cannot read {rel} on {self.display}: it is a directory.", rel) from None
            raise NotFoundError(f"cannot read {rel} on {self.display}: it does not exist.", rel, errno.ENOENT) from None
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, "read", rel) from None
        with contextlib.closing(answer["Body"]) as body:
            if int(answer["ContentLength"]) > limit:
                raise StorageError(
                    f"cannot read {rel} on {self.display} as a small file: it has {answer['ContentLength']} bytes "
                    f"(limit {limit}).",
                    rel,
                )
            try:
                return body.read()
            except Exception as err:  # noqa: BLE001 - a connection dropped mid-body
                raise self._fail(err, "read", rel) from None

    def open_read(self, path: str) -> ReadStream:
        rel = normalize_path(path)
        head = self._head(rel, "read")
        if head is None:
            if self._is_dir(rel, "read"):
                raise StorageError(f"cannot read {rel} on {self.display}: it is a directory.", rel)
            raise NotFoundError(f"cannot read {rel} on {self.display}: it does not exist.", rel, errno.ENOENT)
        return S3ReadStream(self, rel, int(head["ContentLength"]), head.get("ETag"))

    def rename(self, src: str, dst: str) -> None:
        rsrc, rdst = normalize_path(src), normalize_path(dst)
        action = f"rename {rsrc} to"
        if rsrc == rdst:  # a copy onto itself then a delete would lose it
            if not self.exists(rsrc):
                raise NotFoundError(f"cannot rename {rsrc} to itself on {self.display}: it does not exist.", rsrc)
            return
        if self._copy(self._key(rsrc), self._key(rdst), action, rdst):  # a file: two requests
            self._call(action, rdst, "delete_object", Bucket=self.bucket, Key=self._key(rsrc))
            return
        src_prefix, dst_prefix = self._dir_prefix(rsrc), self._dir_prefix(rdst)
        keys = list(self._keys_below(rsrc, action))
        if not keys:
            raise NotFoundError(f"cannot rename {rsrc} to {rdst} on {self.display}: it does not exist.", rdst)
        for key in keys:  # copy everything first: an interruption leaves both trees, never a half one
            if not self._copy(key, dst_prefix + key[len(src_prefix) :], action, rdst):
                raise NotFoundError(
                    f"cannot rename {rsrc} to {rdst} on {self.display}: {key} vanished meanwhile.", rdst
                )
        self._delete_keys(keys, action, rdst)

    def list(self, path: str = "", *, missing_ok: bool = False) -> List[str]:
        rel = normalize_path(path, allow_root=True)
        prefix = self._dir_prefix(rel)
        names = set()
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        try:
            for page in pages:
                names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", ()))
                names.update(item["Key"][len(prefix) :] for item in page.get("Contents", ()))
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, "list", rel) from None
        names.discard("")  # a directory marker made by another tool
        if names or not rel:
            return sorted(names)
        if self._head(rel, "list") is not None:
            raise StorageError(f"cannot list {rel} on {self.display}: it is a file, not a directory.", rel)
        if missing_ok:
            return []
        raise NotFoundError(f"cannot list {rel} on {self.display}: it does not exist.", rel, errno.ENOENT)

    def stat(self, path: str) -> StatResult:
        rel = normalize_path(path, allow_root=True)
        head = self._head(rel, "stat") if rel else None
        if head is not None:
            return StatResult(size=int(head["ContentLength"]), is_dir=False, mtime=head["LastModified"].timestamp())
        if self._is_dir(rel, "stat"):
            return StatResult(size=0, is_dir=True, mtime=0.0)  # a key prefix has no time of its own
        raise NotFoundError(f"cannot stat {rel} on {self.display}: it does not exist.", rel, errno.ENOENT)

    def delete(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        if self._head(rel, "delete") is None:
            if self._is_dir(rel, "delete"):
                raise StorageError(f"cannot delete {rel} on {self.display}: it is a directory (use delete_tree).", rel)
            if not missing_ok:
                raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel, errno.ENOENT)
            return
        self._call("delete", rel, "delete_object", Bucket=self.bucket, Key=self._key(rel))

    def delete_tree(self, path: str, *, missing_ok: bool = True) -> None:
        rel = normalize_path(path)
        keys = list(self._keys_below(rel, "delete"))
        if self._head(rel, "delete") is not None:
            keys.append(self._key(rel))  # a file is a tree of one
        if not keys and not missing_ok:
            raise NotFoundError(f"cannot delete {rel} on {self.display}: it does not exist.", rel, errno.ENOENT)
        self._delete_keys(keys, "delete", rel)

    def mkdir(self, path: str, *, exist_ok: bool = True) -> None:
        rel = normalize_path(path)
        if self._head(rel, "create directory") is not None:
            raise AlreadyExistsError(f"cannot create {rel} on {self.display}: a file has that name.", rel)
        if not exist_ok and self._is_dir(rel, "create directory"):
            raise AlreadyExistsError(f"cannot create {rel} on {self.display}: it already exists.", rel)
        # nothing to create: a directory exists through the keys below it

    def lock(self, path: str, *, stale: float = LOCK_STALE_SECONDS, what: str = "a backup of this VM") -> StorageLock:
        return NoLock(normalize_path(path) + ".lock")

    def abort_incomplete_uploads(self, older_than: float = 86400.0) -> List[str]:
        """Abort multipart uploads under this remote started more than ``older_than`` seconds ago.

        They are what killed writers leave; returns the remote-relative paths whose uploads were aborted.
        """
        cutoff = time.time() - older_than
        root = self._dir_prefix("")
        done = []
        pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=root)
        try:
            for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"].timestamp() <= cutoff:
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                            UploadId=upload["UploadId"])  # fmt: skip
                        done.append(upload["Key"][len(root) :])
        except Exception as err:  # noqa: BLE001
            raise self._fail(err, "abort the incomplete uploads of", None) from None
        return done

    def close(self) -> None:
        close = getattr(getattr(self, "_client", None), "close", None)
        if close is not None:
            close()

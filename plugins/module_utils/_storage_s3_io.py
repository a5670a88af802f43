"""The S3 backend's part sizing and streams (see ``_storage_s3`` for the semantics)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Any, Dict, List, Optional

from ansible_collections.xapi.proxy.plugins.module_utils._storage import (
    AlreadyExistsError,
    ReadStream,
    StorageError,
    StorageLock,
    WriteStream,
)

try:
    from botocore.exceptions import ClientError
except ImportError:  # _storage_s3 reports it when an S3 remote is opened
    ClientError = ()

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
READ_CHUNK = MiB


def part_size(number: int, base: int = MIN_PART, max_parts: int = MAX_PARTS, minimum: int = MIN_PART) -> int:
    """Size of part ``number`` (1-based): ``base``, or ``minimum`` doubled every tenth of ``max_parts``."""
    return min(MAX_PART, max(base, minimum << ((number - 1) // max(1, max_parts // 10))))


def base_part_size(size_hint: Optional[int], minimum: int = MIN_PART, max_parts: int = MAX_PARTS) -> int:
    """First part size for a stream of about ``size_hint`` bytes: it fits in ``max_parts`` parts."""
    if not size_hint:
        return minimum
    needed = -(-size_hint // max_parts)
    return max(minimum, -(-needed // MiB) * MiB)  # whole MiB: tidy, and S3 needs no more


class NoLock(StorageLock):
    """What ``lock`` gives on S3: held at once, by everyone (see the module doc)."""

    def __init__(self, path: str):
        self.path = path

    @property
    def lost(self) -> bool:
        return False

    def release(self) -> None:
        pass


class BodyReader(io.RawIOBase):
    """A seekable read-only view of a part's bytes, so botocore can sign, send and resend it uncopied."""

    def __init__(self, data: memoryview):
        super().__init__()
        self._data = data
        self._pos = 0

    def __len__(self):
        return len(self._data) - self._pos

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._data)}[whence] + offset
        return self._pos

    def readinto(self, buffer):
        chunk = self._data[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size=-1):
        end = len(self._data) if size is None or size < 0 else min(len(self._data), self._pos + size)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk


class Part:
    """The part being filled: a bytearray up to ``memory_limit`` bytes, an anonymous local file above."""

    def __init__(self, capacity: int, memory_limit: int, spool_dir: Optional[str]):
        self.capacity = capacity
        self.length = 0
        self._mem: Optional[bytearray] = bytearray() if capacity <= memory_limit else None
        self._file = None if self._mem is not None else tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115

    def add(self, view: memoryview) -> memoryview:
        """Take what fits from ``view``; return the rest."""
        take = view[: self.capacity - self.length]
        if self._mem is not None:
            self._mem += take
        else:
            self._file.write(take)
        self.length += len(take)
        return view[len(take) :]

    @contextlib.contextmanager
    def body(self):
        if self._mem is not None:
            with memoryview(self._mem) as view:
                yield BodyReader(view)
        else:
            self._file.flush()
            self._file.seek(0)
            yield self._file

    def close(self):
        self._mem = None
        if self._file is not None:
            self._file.close()


class S3WriteStream(WriteStream):
    def __init__(self, storage, rel: str, overwrite: bool, base: int):
        self.path = rel
        self.bytes_written = 0
        self.upload_id: Optional[str] = None  # set once the first part is sent
        self._s = storage
        self._key = storage._key(rel)
        self._overwrite = overwrite
        self._base = base
        self._parts: List[Dict[str, Any]] = []
        self._part = self._new_part()
        self._state = "open"

    def _new_part(self) -> Part:
        size = part_size(len(self._parts) + 1, self._base, self._s.max_parts, self._s.min_part_size)
        return Part(size, self._s.memory_part_limit, self._s.spool_dir)

    def _check_open(self):
        if self._state != "open":
            raise StorageError(f"cannot write {self.path}: the stream is already {self._state}.", self.path)

    def _too_large(self):
        raise StorageError(
            f"cannot write {self.path} on {self._s.display}: the stream is larger than one S3 object can be "
            f"({self._s.max_parts} parts); give a size_hint.",
            self.path,
        )

    def _send_part(self) -> None:
        s = self._s
        number = len(self._parts) + 1
        if number > s.max_parts:
            self._too_large()
        if self.upload_id is None:
            answer = s._call("write", self.path, "create_multipart_upload", Bucket=s.bucket, Key=self._key)
            self.upload_id = answer["UploadId"]
        with self._part.body() as body:
            answer = s._call("write", self.path, "upload_part", Bucket=s.bucket, Key=self._key, Body=body,
                             ContentLength=self._part.length, PartNumber=number, UploadId=self.upload_id)  # fmt: skip
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._part.close()
        self._part = self._new_part()

    def write(self, data) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            while view:
                if len(self._parts) >= self._s.max_parts:
                    self._too_large()
                view = self._part.add(view)
                if self._part.length == self._part.capacity:
                    self._send_part()
        except BaseException:
            self.abort()
            raise
        self.bytes_written += size
        return size

    def commit(self) -> None:
        self._check_open()
        s = self._s
        condition = {}
        try:
            if not self._overwrite:
                # refuse a name published meanwhile; where the server honours If-None-Match the check is atomic
                if s._head(self.path, "write") is not None:
                    raise AlreadyExistsError(f"cannot write {self.path} on {s.display}: it already exists.", self.path)
                condition = {"IfNoneMatch": "*"}
            if self.upload_id is None:  # it all fits in one part: one PutObject
                if not s._conditional_put:
                    condition = {}
                with self._part.body() as body:
                    s._call("write", self.path, "put_object", Bucket=s.bucket, Key=self._key, Body=body,
                            ContentLength=self._part.length, **condition)  # fmt: skip
            else:
                if self._part.length:
                    self._send_part()
                if not s._conditional_complete:
                    condition = {}
                s._call("write", self.path, "complete_multipart_upload", Bucket=s.bucket, Key=self._key,
                        UploadId=self.upload_id, MultipartUpload={"Parts": self._parts}, **condition)  # fmt: skip
        except StorageError as err:
            self.abort()
            if "PreconditionFailed" in str(err):  # If-None-Match lost the race
                raise AlreadyExistsError(
                    f"cannot write {self.path} on {s.display}: it already exists.", self.path
                ) from None
            raise
        except BaseException:
            self.abort()
            raise
        self._part.close()
        self._state = "committed"

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._part.close()
        if self.upload_id is not None:
            with contextlib.suppress(Exception):  # best effort: abort_incomplete_uploads() mops up
                self._s._client.abort_multipart_upload(Bucket=self._s.bucket, Key=self._key, UploadId=self.upload_id)


class S3ReadStream(ReadStream):
    """Sequential reads stream one GET from the position on; ``pread`` is one ranged GET."""

    def __init__(self, storage, rel: str, size: int, etag: Optional[str]):
        super().__init__()
        self.path = rel
        self.size = size
        self._s = storage
        self._etag = etag
        self._body = None
        self._body_pos = -1

    def _get(self, start: int, end: Optional[int] = None):
        span = f"bytes={start}-{'' if end is None else end}"
        params = {"Bucket": self._s.bucket, "Key": self._s._key(self.path), "Range": span}
        if self._etag:
            params["IfMatch"] = self._etag
        try:
            return self._s._client.get_object(**params)["Body"]
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise StorageError(
                    f"cannot read {self.path} on {self._s.display}: it was replaced while being read; read it again.",
                    self.path,
                ) from None
            raise self._s._fail(err, "read", self.path) from None
        except Exception as err:  # noqa: BLE001
            raise self._s._fail(err, "read", self.path) from None

    def _drop_body(self):
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def readinto(self, buffer) -> int:
        if self._pos >= self.size or not len(buffer):
            return 0
        want = min(len(buffer), self.size - self._pos)
        for attempt in range(2):  # a dropped connection mid-stream: reopen at the position once
            if self._body is None or self._body_pos != self._pos:
                self._drop_body()
                self._body = self._get(self._pos)
                self._body_pos = self._pos
            try:
                data = self._body.read(want)
            except Exception as err:  # noqa: BLE001
                self._drop_body()
                if attempt:
                    raise self._s._fail(err, "read", self.path) from None
                continue
            if data:
                break
            self._drop_body()
            if attempt:
                raise StorageError(f"cannot read {self.path} on {self._s.display}: it ended early.", self.path)
        buffer[: len(data)] = data
        self._pos += len(data)
        self._body_pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        out = bytearray()
        while True:
            chunk = self.read(READ_CHUNK)
            if not chunk:
                return bytes(out)
            out += chunk

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if not length:
            return b""
        body = self._get(offset, offset + length - 1)
        try:
            data = body.read()
        except Exception as err:  # noqa: BLE001
            raise self._s._fail(err, "read", self.path) from None
        finally:
            body.close()
        return data

    def close(self):
        self._drop_body()
        super().close()

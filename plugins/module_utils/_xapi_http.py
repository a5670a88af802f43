"""Streaming transfers through XAPI's HTTP handlers (``/export``, ``/export_raw_vdi``, ``/import``…).

Every transfer runs under a task we create, because xapi ends an export body at EOF with no length:
a stream cut by the host looks exactly like a complete one, and only the task says which it was.
Bodies are read in large pieces straight from the socket and never held whole in memory.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket

from ._xapi_errors import CONNECTION_ERRORS, XapiConnectionError, XapiError, describe_failure
from ._xapi_tasks import wait_for_task

# Large reads: each urllib3/TLS read call has a fixed cost that small reads multiply.
READ_SIZE = 4 << 20
# How long xapi may take to mark a task finished once it has sent the last byte.
TASK_SETTLE_TIMEOUT = 120
_SERVER_ERROR = re.compile(r"Server_error\((\w+), \[ ?(.*?) ?\]\)")
MAX_REDIRECTS = 3

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    requests = None
    HAS_REQUESTS = False


class TransferError(XapiError):
    """An HTTP transfer failed; ``bytes_done`` says how far it got."""

    def __init__(self, message, code=None, params=(), bytes_done=0):
        super().__init__(message, code, params)
        self.bytes_done = bytes_done


def _error_from_page(text):
    m = _SERVER_ERROR.search(text or "")
    if not m:
        return None
    params = [p.strip() for p in m.group(2).split(";")] if m.group(2) else []
    return [m.group(1), *params]


class _Transfer:
    def __init__(self, client, path, action, timeout, query):
        self.client = client
        self.path = path
        self.action = action
        self.timeout = timeout
        self.query = query
        self.task = None
        self.http = client.http_session()
        self.bytes = 0

    def _create_task(self):
        self.task = self.client.call("task.create", f"xapi.proxy {self.path}", self.action)

    def _url(self, base=None):
        url = self.client.handler_url(self.path, task_id=self.task, **self.query)
        if base is not None:  # a redirect to another host of the pool: same path and query
            url.url = base + url.url[len(self.client.url.url) :]
        return url

    def _request(self, method, **kwargs):
        url = self._url()
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.http.request(method, url, allow_redirects=False, **kwargs)
            except CONNECTION_ERRORS as e:
                raise self._failed(
                    f"could not reach {self.client.url}: {url.redact(str(e))}", connection=True
                ) from None
            except requests.RequestException as e:
                raise self._failed(url.redact(str(e)), connection=True) from None
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                # xapi redirects to the host that sees the SR; the session is valid pool-wide.
                location = response.headers["Location"]
                m = re.match(r"^(https?://[^/]+)", location)
                response.close()
                if not m:
                    break
                url = self._url(m.group(1))
                continue
            return response
        raise self._failed("too many redirects")

    def _check_status(self, response):
        if response.status_code < 300:
            return
        body = ""
        with contextlib.suppress(Exception):
            body = response.text[:4000]
        response.close()
        details = self._task_error() or _error_from_page(body)
        if response.status_code == 401:
            raise self._failed("XAPI refused the session (HTTP 401); it may have expired: run the task again")
        if response.status_code == 403 and not details:
            details = ["RBAC_PERMISSION_DENIED", self.path]
        if details:
            raise self._xapi_failure(details)
        raise self._failed(f"XAPI answered HTTP {response.status_code}")

    def _task_error(self, wait=2.0):
        """The task's ``error_info`` once it has failed (xapi marks it shortly after the response)."""
        if self.task is None:
            return None
        try:
            wait_for_task(self.client, self.task, wait, action=self.action, destroy=False)
        except XapiError as e:
            if e.code:
                return [e.code, *e.params]
        return None

    def _xapi_failure(self, details):
        text = describe_failure(
            details, self.action, self.client.options.username, self.client.url, self.client.name_of
        )
        err = self.client.failure(text, details, TransferError)
        err.bytes_done = self.bytes
        return err

    def _failed(self, why, connection=False):
        text = self.client._scrub(f"{self.action} failed after {self.bytes} bytes: {why}")
        cls = XapiConnectionError if connection else TransferError
        err = cls(text)
        err.bytes_done = self.bytes
        return err

    def _finish(self):
        """Wait for the task to confirm the transfer; raise with its error if it failed."""
        try:
            return wait_for_task(self.client, self.task, TASK_SETTLE_TIMEOUT, action=self.action, destroy=False)
        except XapiError as e:
            if e.code:
                raise self._xapi_failure([e.code, *e.params]) from None
            raise self._failed(str(e)) from None

    def _destroy_task(self):
        if self.task is not None:
            with contextlib.suppress(XapiError):
                self.client.call("task.destroy", self.task)
            self.task = None


class ExportStream(_Transfer):
    """A readable, non-seekable stream of ``GET path?query`` under a task.

    ``read()`` returns ``b""`` only after xapi confirmed the task succeeded; a stream that ends early
    (host crash, task failure, cut connection) raises :class:`TransferError` instead, so the bytes
    read so far are never mistaken for a complete export.
    """

    def __init__(self, client, path, action, timeout=None, **query):
        super().__init__(client, path, action, timeout, query)
        self.response = None
        self.raw = None
        self.length = None  # the Content-Length, when xapi sends one (/export sends none)
        self.finished = False
        self._sock = None  # set once reads go straight to the socket (see readinto)

    def open(self):
        self._create_task()
        try:
            self.response = self._request("GET", stream=True)
            self._check_status(self.response)
        except BaseException:
            self._destroy_task()
            raise
        self.raw = self.response.raw
        self.raw.decode_content = False
        length = self.response.headers.get("Content-Length")
        self.length = int(length) if length and length.isdigit() else None
        return self

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    def readable(self):
        return True

    def read(self, size=READ_SIZE):
        if self.finished:
            return b""
        if self._sock is not None:  # past http.client's buffer now: never read through it again
            buffer = bytearray(size if size and size > 0 else READ_SIZE)
            return bytes(memoryview(buffer)[: self.readinto(buffer)])
        try:
            data = self.raw.read(size if size and size > 0 else READ_SIZE)
        except Exception as e:  # urllib3 wraps socket and TLS errors in several classes
            raise self._broken(e) from None
        return data if self._account(data, len(data)) else b""

    def readinto(self, buffer):
        """Fill as much of ``buffer`` (a writable buffer, e.g. a ``memoryview``) as the next read gives.

        The bytes go straight from the TLS layer into ``buffer``: no intermediate ``bytes`` object
        and no copy, which matters at several hundred MB/s. Returns the count, 0 only at the confirmed end.
        """
        if self.finished:
            return 0
        view = memoryview(buffer)
        fp = getattr(self.raw, "_fp", None)  # http.client's response, under urllib3's
        try:
            if self._sock is not None:
                n = _recv_full(self._sock, view)
            elif fp is None or not hasattr(fp, "readinto"):
                data = self.read(len(view))
                view[: len(data)] = data
                return len(data)
            else:
                sock = _body_socket(fp) if len(view) > io.DEFAULT_BUFFER_SIZE else None
                if sock is not None:
                    # One last read through http.client's buffered reader empties it (the buffer we give
                    # is larger than its own); from then on the socket is read directly.
                    n = fp.fp.readinto1(view)
                    self._sock = sock
                    if n:  # a full first piece, as before: the in-body error check reads its start
                        n += _recv_full(sock, view[n:])
                else:
                    n = fp.readinto(view)
        except Exception as e:  # socket and TLS errors, raw from http.client
            raise self._broken(e) from None
        return n if self._account(view, n) else 0

    def _broken(self, e):
        details = self._task_error(wait=5.0)
        if details:
            return self._xapi_failure(details)
        # socket.timeout is TimeoutError from Python 3.10 on, a class of its own named "timeout" before.
        name = "TimeoutError" if isinstance(e, socket.timeout) else type(e).__name__
        return self._failed(f"the connection broke: {name}", connection=True)

    def _account(self, data, n):
        """Count the ``n`` bytes just read into ``data``; at the end, confirm the task. False at the end."""
        if n:
            if self.bytes == 0 and bytes(data[: min(n, 5)]) == b"HTTP/":
                # xapi sometimes reports an error as a second response inside the 200 body.
                details = _error_from_page(bytes(data[: min(n, 4000)]).decode("latin-1")) or self._task_error(5.0)
                raise self._xapi_failure(details or ["INTERNAL_ERROR", "error response inside the stream"])
            self.bytes += n
            return True
        if self.length is not None and self.bytes < self.length:
            raise self._failed(f"the body ended after {self.bytes} of its {self.length} bytes", connection=True)
        self.finished = True
        self._finish()
        return False

    def progress(self):
        """The task's progress as xapi reports it (0.0–1.0), or ``None``."""
        with contextlib.suppress(XapiError, TypeError, ValueError):
            return float(self.client.call("task.get_progress", self.task))
        return None

    def close(self):
        if self.response is not None:
            self.response.close()
            self.response = None
        if self.task is not None and not self.finished:
            # Abandoned early (the writer failed): cancel so xapi stops reading the disk.
            with contextlib.suppress(XapiError):
                self.client.call("task.cancel", self.task)
        self._destroy_task()


def _body_socket(response):
    """The socket under ``response`` (an ``http.client.HTTPResponse``) when its body simply runs to EOF,
    as xapi's exports do; else None.

    Reading such a body through http.client costs three Python calls per TLS record (its buffered
    reader, ``SocketIO.readinto``, then the socket's ``recv_into``): at 16 KiB a record, a full backup
    spent 3 to 7 % of its time there (tests/bench). ``recv_into`` on the socket itself skips two.
    ``SocketIO._sock`` is private but has been there since Python 3.0; on an interpreter without it, or
    a body with a length or chunks, http.client keeps reading.
    """
    if getattr(response, "chunked", True) or getattr(response, "length", 0) is not None:
        return None
    buffered = getattr(response, "fp", None)
    sock = getattr(getattr(buffered, "raw", None), "_sock", None)
    if not hasattr(buffered, "readinto1") or not hasattr(sock, "recv_into"):
        return None
    return sock


def _recv_full(sock, view):
    """Fill ``view`` from ``sock`` until it is full or the peer closed; the count read (0: the end)."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            break
        got += n
    return got


class _SizedBody:
    """A body of known length for ``requests``: iterated in pieces, sent with a Content-Length.

    xapi refuses chunked transfer encoding on ``/import`` and ``/import_raw_vdi``.
    """

    def __init__(self, source, length, counter):
        self.source = source
        self.length = length
        self.counter = counter

    def __len__(self):
        return self.length

    def __iter__(self):
        if hasattr(self.source, "pieces"):  # views of reused buffers, sent without a copy
            chunks = self.source.pieces()
        elif hasattr(self.source, "read"):
            chunks = iter(lambda: self.source.read(READ_SIZE), b"")
        else:
            chunks = iter(self.source)
        for chunk in chunks:
            self.counter(len(chunk))
            yield chunk


def put_stream(client, path, source, length, action, **query):
    """``PUT path?query`` with ``length`` bytes from ``source``: an object with ``pieces()`` (an iterator of
    buffers, each valid until the next is asked for), a file-like or an iterable of bytes.

    Returns the task's parsed result (for ``/import``, the new VM refs; ``/import_raw_vdi``, the VDI).
    """
    transfer = _Transfer(client, path, action, None, query)
    transfer._create_task()

    def count(n):
        transfer.bytes += n

    try:
        try:
            response = transfer._request(
                "PUT", data=_SizedBody(source, length, count), headers={"Content-Length": str(length)}
            )
        except XapiConnectionError:
            # xapi drops the connection when it gives up on an import: the task knows why.
            details = transfer._task_error(wait=10.0)
            if details:
                raise transfer._xapi_failure(details) from None
            raise
        transfer._check_status(response)
        response.close()
        return transfer._finish()
    finally:
        transfer._destroy_task()

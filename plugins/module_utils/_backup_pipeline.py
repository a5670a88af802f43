"""Overlap reading from XAPI with hashing and writing to the remotes.

TLS decryption of the XAPI stream, the checksum's hash and file writes each take a core's worth of
work at several hundred MB/s; done one after the other they halve the throughput. A single writer
thread with a short queue lets them run side by side while memory stays bounded (``depth`` pieces in
flight).

:class:`BufferPool` lets the reader fill the same few buffers again and again (``readinto``) and hand
each to several consumers at once: no ``bytes`` object is made or copied per piece, and memory is
the pool, allocated once. A consumer must not keep a piece once its job returned (every storage
write stream copies or sends what it is given before returning).
"""

from __future__ import annotations

import mmap
import queue
import threading

_STOP = object()
# A streamed export's buffers: 2 MiB pieces (few calls per byte; hashlib and the TLS layer release the
# GIL for each) and four of them (reading, hashing and writing each hold one): 8 MiB in all. The hash
# is fastest on bytes still in its own core's cache: on the 2-core test host SHA-256 ran at 1.9 GB/s when
# the scheduler put both threads on one core, 1.2-1.35 on bytes another core had just written, whatever
# the ring (tests/bench/diag_hash_placement.py). Rings of 6 or 8 pieces, or of 4 MiB ones, made the full
# backup no faster there.
PIECE_SIZE = 2 << 20
PIECES = 4


class WriterThread:
    """Run submitted callables in order on one thread; the first error is re-raised to the submitter."""

    def __init__(self, depth=4, name="xapi-proxy-writer"):
        self._queue = queue.Queue(maxsize=depth)
        self._error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            job, done = item
            try:
                if self._error is None:
                    job()
            except BaseException as e:  # handed to the reading thread, which decides
                self._error = e
            finally:
                if done is not None:  # even for a job skipped after an error: a pool piece goes back
                    done()

    def submit(self, job, done=None):
        """Queue ``job``; ``done`` (e.g. a pool piece's ``release``) runs after it, even if it is skipped."""
        try:
            self._raise()
        except BaseException:
            if done is not None:
                done()
            raise
        self._queue.put((job, done))

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self):
        """Wait for every submitted job; raise the first error any of them hit."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            # The reader failed: let the writer finish what it holds, keep the reader's error.
            self._queue.put(_STOP)
            self._thread.join()
        return False


class BufferPool:
    """``count`` reusable buffers of ``size`` bytes, allocated once (page-aligned anonymous memory, which
    a file remote can write with O_DIRECT).

    :meth:`acquire` blocks until a buffer is free and hands it out as a :class:`Piece` that ``users``
    consumers share; it comes back when each of them called :meth:`Piece.release`.
    """

    def __init__(self, count, size):
        self.count = count
        self.size = size
        self._free = queue.Queue()
        for _ in range(count):
            self._free.put(Piece(self, mmap.mmap(-1, size)))

    def acquire(self, users=1, timeout=None):
        """A free piece for ``users`` consumers; None if none came back within ``timeout`` seconds."""
        try:
            piece = self._free.get(timeout=timeout)
        except queue.Empty:
            return None
        piece._users = users
        return piece


class Piece:
    """One buffer of a :class:`BufferPool`: ``view`` is the whole buffer, a ``memoryview``."""

    __slots__ = ("_lock", "_pool", "_users", "view")

    def __init__(self, pool, buffer):
        self._pool = pool
        self._lock = threading.Lock()
        self._users = 0
        self.view = memoryview(buffer)

    def release(self):
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool._free.put(self)

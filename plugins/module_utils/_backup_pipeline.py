"""Overlap reading from XAPI with hashing and writing to the remotes.

TLS decryption of the XAPI stream and MD5/file writes each take a core's worth of work at several
hundred MB/s; done one after the other they halve the throughput. A single writer thread with a
short queue lets them run side by side while memory stays bounded (``depth`` pieces in flight).
"""

from __future__ import annotations

import queue
import threading

_STOP = object()


class WriterThread:
    """Run submitted callables in order on one thread; the first error is re-raised to the submitter."""

    def __init__(self, depth=4, name="xapi-proxy-writer"):
        self._queue = queue.Queue(maxsize=depth)
        self._error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # handed to the reading thread, which decides
                    self._error = e

    def submit(self, job):
        self._raise()
        self._queue.put(job)

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

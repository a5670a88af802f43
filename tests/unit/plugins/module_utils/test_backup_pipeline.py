"""The backup pipeline's threads and reused buffers: order, errors, and pieces that always come back."""

import threading

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._backup_pipeline import BufferPool, WriterThread


def test_pieces_come_back_once_every_user_released_them():
    pool = BufferPool(2, 16)
    a = pool.acquire(users=2)
    b = pool.acquire(users=1)
    assert a.view is not b.view and len(a.view) == 16
    a.release()
    b.release()
    assert pool.acquire(users=1) is b, "b came back; a is still held by its second user"
    got = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(users=1)))
    t.start()
    t.join(0.2)
    assert t.is_alive() and not got, "acquire waits while every piece is held"
    a.release()
    t.join(5)
    assert got == [a]


def test_jobs_run_in_order_and_their_pieces_are_released():
    pool = BufferPool(3, 4)
    seen = []
    with WriterThread(depth=3) as writer:
        for i in range(50):
            piece = pool.acquire(users=1)
            piece.view[:4] = bytes([i]) * 4
            writer.submit(lambda v=piece.view: seen.append(bytes(v)), piece.release)
    assert seen == [bytes([i]) * 4 for i in range(50)]


def test_a_failed_job_is_raised_and_later_pieces_still_come_back():
    """After an error the writer skips its jobs but releases their pieces: the reader never hangs."""
    pool = BufferPool(2, 4)

    def fail():
        raise RuntimeError("disk on fire")

    writer = WriterThread(depth=2)
    piece = pool.acquire(users=1)
    writer.submit(fail, piece.release)
    with pytest.raises(RuntimeError, match="disk on fire"):
        for _ in range(100):  # the reader keeps going until submit reports the error
            piece = pool.acquire(users=1)
            writer.submit(lambda: None, piece.release)
    writer.close()
    assert pool._free.qsize() == 2, "every piece is free again"


def test_submit_after_an_error_releases_the_piece_it_was_given():
    pool = BufferPool(1, 4)
    writer = WriterThread(depth=1)
    piece = pool.acquire(users=1)
    writer.submit(lambda: 1 / 0, piece.release)
    piece = pool.acquire(users=1)  # back once the failed job ran
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None, piece.release)
    assert pool.acquire(users=1) is piece
    writer.close()

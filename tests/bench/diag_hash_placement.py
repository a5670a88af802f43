"""How fast the checksum's hash runs on bytes another thread just wrote, by where that thread runs.

    python tests/bench/diag_hash_placement.py [--gib N]

A diagnostic for the file:// row of ``run.py``, not a benchmark row. The full backup reads XAPI's
stream into a small ring of buffers (``_backup_pipeline``'s pieces) and hashes each piece in a second
thread. This times that hand-off without XAPI or a disk: one thread copies into the ring, the other
hashes it with the module's default algorithm, first both pinned to the same CPU, then to two CPUs,
then unpinned. It prints the hashing thread's rate per CPU second, beside the rate on a buffer that
one thread writes and then hashes.

On bytes written by another core the hash reads them from that core's cache or from memory, not from
its own: on the 2-core test host (2026-11-27) SHA-256 ran at 1.92 GB/s on the same core and 1.21 on
two (1.38 with 4 MiB pieces), so the backup's hash costs more CPU than ``hashlib`` alone suggests.
"""

import argparse
import hashlib
import mmap
import os
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / ".collections")]

from ansible_collections.xapi.proxy.plugins.module_utils._backup_pipeline import PIECE_SIZE, PIECES  # noqa: E402
from ansible_collections.xapi.proxy.plugins.module_utils._xo_checksum import choose_algorithm  # noqa: E402

ALGORITHM = choose_algorithm("auto")


def hand_off(total, writer_cpus, hasher_cpus, size=PIECE_SIZE, count=PIECES):
    """Hash ``total`` bytes that a second thread copies into ``count`` buffers of ``size``; return the
    hashing thread's bytes per CPU second."""
    ring = [memoryview(mmap.mmap(-1, size)) for _ in range(count)]
    source = memoryview(bytearray(os.urandom(size)))
    free, full = queue.Queue(), queue.Queue()
    for piece in ring:
        free.put(piece)
    pieces = total // size
    rate = []

    def write():
        if writer_cpus:
            os.sched_setaffinity(0, writer_cpus)
        for _ in range(pieces):
            piece = free.get()
            piece[:] = source
            full.put(piece)
        full.put(None)

    def hash_():
        if hasher_cpus:
            os.sched_setaffinity(0, hasher_cpus)
        digest, done, start = hashlib.new(ALGORITHM), 0, time.thread_time()
        while (piece := full.get()) is not None:
            digest.update(piece)
            done += len(piece)
            free.put(piece)
        rate.append(done / (time.thread_time() - start))

    threads = [threading.Thread(target=write), threading.Thread(target=hash_)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rate[0]


def alone(total, size=PIECE_SIZE):
    """Bytes per CPU second of the hash alone, when its thread wrote each buffer itself, just before."""
    buffer, source = memoryview(bytearray(size)), memoryview(bytearray(os.urandom(size)))
    digest, spent = hashlib.new(ALGORITHM), 0.0
    for _ in range(total // size):
        buffer[:] = source
        start = time.thread_time()
        digest.update(buffer)
        spent += time.thread_time() - start
    return total // size * size / spent


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gib", type=float, default=2.0, help="bytes hashed per case, in GiB (default 2)")
    args = p.parse_args()
    total = int(args.gib * (1 << 30))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs at least two CPUs to compare a hand-off within a core and across cores")
    a, b = {cpus[0]}, {cpus[1]}
    print(f"{ALGORITHM}, {PIECES} pieces of {PIECE_SIZE >> 20} MiB, {args.gib:g} GiB per case, GB per CPU second:")
    cases = [
        ("written, then hashed, by one thread", lambda: alone(total)),
        (f"hand-off, both threads on CPU {cpus[0]}", lambda: hand_off(total, a, a)),
        (f"hand-off, CPU {cpus[0]} to CPU {cpus[1]}", lambda: hand_off(total, a, b)),
        (f"hand-off, CPU {cpus[0]} to CPU {cpus[1]}, 4 MiB pieces", lambda: hand_off(total, a, b, size=4 << 20)),
        ("hand-off, unpinned", lambda: hand_off(total, None, None)),
    ]
    for label, run in cases:
        print(f"  {label:45s} {run() / 1e9:5.2f}", flush=True)


if __name__ == "__main__":
    main()

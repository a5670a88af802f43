"""What Xen Orchestra's ``.xva.checksum`` costs a full backup to file://, measured in one run.

    python tests/bench/diag_checksum.py [--rounds N]

A diagnostic for the file:// row of ``run.py``, not a benchmark row: it times, in turns (best of
``--rounds``), curl of the export into a file (fsynced), the backup module as shipped, and the same
module with the checksum's hash taken out (``XvaChecksum.update`` only counts bytes, in that process
only; the ``.xva.checksum`` it writes is then wrong, and the backup is deleted). The difference between
the last two is what the hash costs on this host, where the simulator shares the cores; what is left
is the engine itself (reading XAPI's TLS stream, writing the file).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402 - the benchmark's lab, simulator handle and curl baseline

# Runs the module as Ansible does, but with the checksum's hash reduced to a byte count.
WITHOUT_HASH = """
import runpy, sys
from ansible_collections.xapi.proxy.plugins.module_utils import _xo_checksum

def count_only(self, data):
    self.size += len(data)

_xo_checksum.XvaChecksum.update = count_only
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xapi-proxy-diag-"))
    sim = bench.SimHandle(bench.lab_file(work, 4), work / "state").start(timeout=600)
    walls = {"curl": [], "module": [], "module without the hash": []}
    try:
        snap = bench.snapshot(sim, "big-32g")
        export = {"session_id": sim.session()._session, "ref": snap}
        remote = work / "r"

        def module(prelude):
            shutil.rmtree(remote, ignore_errors=True)
            remote.mkdir()
            cmd = bench.module_cmd(sim, remote, work / "p", mode="full", compression="none", names=["big-32g"])
            if prelude:
                cmd = [cmd[0], "-c", prelude, *cmd[1:]]
            start = time.monotonic()
            out = subprocess.run(cmd, env=bench.module_env(), stdout=subprocess.PIPE, check=False).stdout
            wall = time.monotonic() - start
            os.unlink(cmd[-1])
            if json.loads(out)["vms"][0]["status"] != "success":
                raise RuntimeError(out.decode(errors="replace")[-2000:])
            return wall

        def curl():
            wall = bench.curl(sim, "/export", export, work / "curl.xva")
            (work / "curl.xva").unlink()
            return wall

        kinds = {"curl": curl, "module": lambda: module(None), "module without the hash": lambda: module(WITHOUT_HASH)}
        names = list(kinds)
        for i in range(opts.rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                os.sync()
                walls[name].append(kinds[name]())
        base = min(walls["curl"])
        for name, times in walls.items():
            print(f"{name:26s} best {min(times):5.2f} s   ratio to curl {base / min(times):.2f}   "
                  f"(each: {' '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

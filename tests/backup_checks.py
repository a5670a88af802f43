"""Independent checks of what a backup left on a ``file://`` remote, for tests.

``remote_disk_hashes`` rebuilds every disk a backup represents (an XVA unpacked, a VHD chain
applied) and hashes it, so a test can compare with ``sim.sha256`` of the snapshot that was backed up.
"""

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ansible_collections.xapi.proxy.plugins.module_utils._storage import open_remote
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_chain import open_vhd_chain
from ansible_collections.xapi.proxy.plugins.module_utils._vhd_directory import remote_vhd_opener
from ansible_collections.xapi.proxy.plugins.module_utils._xva_read import extract_xva


def backed_up(args):
    """Run the backup module with ``args``; assert it backed up its one VM and return that VM's result."""
    from module_runner import run_module  # noqa: PLC0415 - module_runner imports nothing of ours back

    rc, result = run_module("backup", args)
    assert rc == 0, result.get("msg") if result else result
    (vm,) = result["vms"]
    assert vm["status"] == "success", vm
    return vm


def metadata(root, backup_id):
    return json.loads((Path(root) / backup_id).read_text())


def backups_of(root, vm_uuid):
    d = Path(root) / "xo-vm-backups" / vm_uuid
    return sorted(f"xo-vm-backups/{vm_uuid}/{p.name}" for p in d.glob("*.json")) if d.is_dir() else []


def _hash_stream(chunks, size):
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    assert n == size, f"stream gave {n} bytes, expected {size}"
    return h.hexdigest()


def _hash_file(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        left = size
        while left:
            data = fh.read(min(4 << 20, left))
            if not data:
                h.update(bytes(left))
                break
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def remote_disk_hashes(root, backup_id):
    """``{snapshot VDI uuid: sha256 of the disk this backup restores to}``."""
    md = metadata(root, backup_id)
    vm_dir = Path(root) / Path(backup_id).parent
    out = {}
    if md["mode"] == "full":
        with tempfile.TemporaryDirectory() as tmp:
            files = {}

            def open_output(vdi_id, record):
                path = Path(tmp) / vdi_id.replace(":", "_")
                files[vdi_id] = (path, record)
                return open(path, "w+b")  # noqa: SIM115 - closed by extract_xva

            with open(vm_dir / md["xva"], "rb") as fh:
                extract_xva(fh, open_output)
            for path, record in files.values():
                out[record["uuid"]] = _hash_file(path, int(record["virtual_size"]))
        return out
    storage = open_remote(f"file://{root}")  # VHD files and VHD directories (aliases) alike
    for ref, rel in md["vhds"].items():
        chain = open_vhd_chain(f"{Path(backup_id).parent}/{rel}", opener=remote_vhd_opener(storage))
        try:
            stream = chain.raw_stream()
            out[md["vdis"][ref]["uuid"]] = _hash_stream(stream, stream.size)
        finally:
            chain.close()
    return out


def qemu_img_raw(vhd_path, out):
    """Convert one dynamic VHD with qemu-img (trusting current_size: our creator is XO's 'xo  ')."""
    opts = f"driver=vpc,force_size_calc=current_size,file.filename={vhd_path}"
    subprocess.run(["qemu-img", "convert", "-O", "raw", "--image-opts", opts, str(out)], check=True)


def xva_img_check(xva_path, workdir):
    """Unpack every disk of an uncompressed XVA with Debian's xva-img; returns {Ref id: raw path}."""
    with tarfile.open(xva_path) as tf:
        tf.extractall(workdir, filter="data")
    out = {}
    for ref_dir in sorted(p for p in os.listdir(workdir) if p.startswith("Ref")):
        raw = Path(workdir) / f"{ref_dir}.raw"
        xva_img_export(workdir, ref_dir, raw)
        out[ref_dir] = raw
    return out


def xva_img_export(xva_dir, ref_dir, out):
    """Unpack one disk with Debian's xva-img (1.4.2 reads only legacy SHA-1 ``.checksum`` files).

    The ``.xxhash`` files are verified here with the xxhash library, then rewritten as ``.checksum`` so
    that xva-img still checks every chunk's placement and content on its own.
    """
    import xxhash  # noqa: PLC0415 - a test dependency only

    d = os.path.join(xva_dir, ref_dir)
    for name in sorted(os.listdir(d)):
        if name.endswith(".xxhash"):
            with open(os.path.join(d, name[:-7]), "rb") as fh:
                data = fh.read()
            with open(os.path.join(d, name)) as fh:
                assert fh.read() == format(xxhash.xxh64(data).intdigest(), "016X"), f"bad xxhash for {name}"
            with open(os.path.join(d, name[:-7] + ".checksum"), "w") as fh:
                fh.write(hashlib.sha1(data).hexdigest())  # noqa: S324 - the format xva-img reads
            os.remove(os.path.join(d, name))
    subprocess.run(["xva-img", "disk-export", d, str(out)], check=True, capture_output=True)

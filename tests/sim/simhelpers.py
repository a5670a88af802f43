"""Helpers shared by the simulator's fidelity tests."""

import time
import xmlrpc.client

import pytest
import XenAPI
from backup_checks import xva_img_export  # noqa: F401 - re-exported for the simulator tests


def raw_call(sim, method, *params):
    """POST one XML-RPC call and return the raw response text (to check the exact encoding)."""
    body = xmlrpc.client.dumps(tuple(params), method, allow_none=True)
    r = sim.http("POST", "/RPC2", data=body, headers={"Content-Type": "text/xml"})
    r.raise_for_status()
    return r.text


def wait_task(x, task, timeout=30):
    deadline = time.monotonic() + timeout
    while x.task.get_status(task) == "pending":
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task} still pending after {timeout}s")
        time.sleep(0.02)
    return x.task.get_record(task)


def disk_vdis(x, vm):
    """The VM's disk VDIs by userdevice."""
    out = {}
    for vbd in x.VM.get_VBDs(vm):
        rec = x.VBD.get_record(vbd)
        if rec["type"] == "Disk" and rec["VDI"] != "OpaqueRef:NULL":
            out[rec["userdevice"]] = rec["VDI"]
    return out


def failure(fn, *args):
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args)
    return info.value.details


def download(sim, path, params, dest=None, session=None, **kwargs):
    """GET a transfer handler with the session in the query, streaming to ``dest`` if given."""
    params = {"session_id": session or sim.session()._session, **params}
    r = sim.http("GET", path, params=params, stream=True, **kwargs)
    if dest is None:
        return r, r.content
    with open(dest, "wb") as fh:
        for chunk in r.iter_content(1 << 20):
            fh.write(chunk)
    return r, None


def sha256_file(path, size=None):
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    left = size
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(4 << 20 if left is None else min(4 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    if left:
        h.update(bytes(left))  # a sparse tail shorter than the disk
    return h.hexdigest()

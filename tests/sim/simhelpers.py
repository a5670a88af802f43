"""Helpers shared by the simulator's fidelity tests."""

import time
import xmlrpc.client

import pytest
import XenAPI


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

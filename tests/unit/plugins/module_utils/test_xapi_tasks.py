"""Task results and the task waiter, against real asynchronous calls on the simulator."""

import time

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import XapiError, XapiTaskError
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_tasks import (
    parse_task_result,
    run_async,
    wait_for_task,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import parse_xapi_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<value>OpaqueRef:1a2b</value>", "OpaqueRef:1a2b"),
        (
            "<value><array><data><value>OpaqueRef:a</value><value>OpaqueRef:b</value></data></array></value>",
            ["OpaqueRef:a", "OpaqueRef:b"],
        ),
        ("<value><array><data></data></array></value>", []),
        ("<value></value>", None),
        ("", None),
        (None, None),
        ("  <value>OpaqueRef:x</value>\n", "OpaqueRef:x"),
        ("OpaqueRef:bare", "OpaqueRef:bare"),
        ("<value><string>text</string></value>", "text"),
    ],
)
def test_parse_task_result(text, expected):
    assert parse_task_result(text) == expected


def test_parse_task_result_rejects_garbage():
    with pytest.raises(XapiTaskError, match="not XML-RPC"):
        parse_task_result("<value><array>")


@pytest.fixture
def xapi(sim):
    opts = ConnectionOptions(parse_xapi_url(sim.url), sim.username, sim.password, ca_path=str(sim.ca_path))
    with XapiClient(opts) as client:
        yield client


def tasks(xapi):
    return set(xapi.call("task.get_all"))


def test_async_snapshot_returns_the_new_ref_and_destroys_its_task(xapi):
    (vm,) = xapi.call("VM.get_by_name_label", "web-01")
    before = tasks(xapi)
    seen = []
    snap = run_async(xapi, "VM.snapshot", vm, "nightly", timeout=60, on_progress=seen.append)
    assert snap.startswith("OpaqueRef:")
    record = xapi.call("VM.get_record", snap)
    assert record["is_a_snapshot"] is True and record["snapshot_of"] == vm and record["name_label"] == "nightly"
    assert tasks(xapi) == before
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in seen)


def test_void_result_is_none(xapi):
    (vm,) = xapi.call("VM.get_by_name_label", "test-01")
    assert run_async(xapi, "VM.start", vm, False, False, timeout=60) is None
    assert xapi.call("VM.get_power_state", vm) == "Running"


def test_failed_task_raises_with_error_info_and_names_the_vm(xapi):
    (vm,) = xapi.call("VM.get_by_name_label", "web-01")
    before = tasks(xapi)
    with pytest.raises(XapiTaskError) as info:
        run_async(xapi, "VM.start", vm, False, False, timeout=60)
    assert info.value.code == "VM_BAD_POWER_STATE"
    assert info.value.params == [vm, "halted", "running"]
    assert str(info.value).startswith("VM.start on VM 'web-01' failed: VM 'web-01' is running")
    assert tasks(xapi) == before


def test_timeout_cancels_and_destroys_the_task(xapi):
    # A task nobody works on stays pending forever: exactly what the timeout is for.
    task = xapi.call("task.create", "stuck export", "")
    start = time.monotonic()
    with pytest.raises(XapiTaskError) as info:
        wait_for_task(xapi, task, timeout=1.5, action="GET /export of VM 'web-01'")
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 8
    assert str(info.value).startswith("GET /export of VM 'web-01' did not finish within 1.5 seconds (0% done)")
    assert "cancelled" in str(info.value)
    with pytest.raises(XapiError) as gone:
        xapi.call("task.get_record", task)
    assert gone.value.code == "HANDLE_INVALID"


def test_keep_the_task_when_asked(xapi):
    (vm,) = xapi.call("VM.get_by_name_label", "db-01")
    task = xapi.call("Async.VM.snapshot", vm, "kept")
    assert wait_for_task(xapi, task, timeout=60, destroy=False).startswith("OpaqueRef:")
    assert xapi.call("task.get_status", task) == "success"

"""The sentences operators read when XAPI says no, with the parameters xapi really sends."""

import errno
import http.client
import socket
import ssl
import xmlrpc.client

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import (
    XapiError,
    describe_call,
    describe_connection_error,
    describe_failure,
    describe_object,
)

VM = "OpaqueRef:8a1f0c3e-2b4d-4e6f-9a8b-7c6d5e4f3a2b"
SR = "OpaqueRef:1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
NAMES = {("VM", VM): "web-01", ("SR", SR): "Local storage"}


def name_of(cls, ref):
    return NAMES.get((cls, ref))


def test_describe_object_uses_the_name_when_it_resolves():
    assert describe_object("VM", VM, name_of) == "VM 'web-01'"
    assert describe_object("VM", "OpaqueRef:unknown", name_of) == "VM OpaqueRef:unknown"
    assert describe_object("VM", VM) == f"VM {VM}"
    assert describe_object("task", "OpaqueRef:t", name_of) == "task OpaqueRef:t"  # tasks are not looked up


def test_a_failing_name_lookup_never_hides_the_error():
    def broken(cls, ref):
        raise OSError("connection lost")

    assert describe_object("VM", VM, broken) == f"VM {VM}"


def test_describe_call_names_the_target_object():
    assert describe_call("VM.start", (VM, False, False), name_of) == "VM.start on VM 'web-01'"
    assert describe_call("Async.VM.snapshot", (VM, "snap"), name_of) == "VM.snapshot on VM 'web-01'"
    assert describe_call("VM.get_all_records", (), name_of) == "VM.get_all_records"
    assert describe_call("VDI.create", ({"SR": SR},), name_of) == "VDI.create"
    assert describe_call("VM.start", ("OpaqueRef:NULL",), name_of) == "VM.start"


def test_authentication_failure():
    text = describe_failure(
        ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"], "Login to https://h as root"
    )
    assert text.startswith("Login to https://h as root failed: wrong user name or password")
    assert "Authentication failure" in text
    assert "XAPI_PASSWORD" in text


def test_rbac_denial_names_permission_user_and_roles():
    details = [
        "RBAC_PERMISSION_DENIED",
        "vm.start",
        "No permission in user session. (Roles with this permission: pool-admin, pool-operator, vm-power-admin)",
    ]
    text = describe_failure(details, "VM.start on VM 'web-01'", username="auditor")
    assert text == (
        "VM.start on VM 'web-01' was refused: user auditor lacks the permission vm.start, which only the roles "
        "pool-admin, pool-operator, vm-power-admin have. Use an account with one of those roles, or have a pool "
        "admin grant one."
    )


def test_rbac_denial_without_role_list_still_reads():
    text = describe_failure(["RBAC_PERMISSION_DENIED", "http/get_export", ""], "GET /export")
    assert "lacks the permission http/get_export." in text and "roles" in text


def test_handle_invalid_says_the_object_is_gone():
    text = describe_failure(["HANDLE_INVALID", "VM", "OpaqueRef:NULL"], "VM.get_record")
    assert text.startswith("VM.get_record failed: the VM OpaqueRef:NULL does not exist (any more)")
    assert "Run the task again" in text


def test_bad_power_state_names_the_vm_and_the_states():
    details = ["VM_BAD_POWER_STATE", VM, "halted, suspended", "running"]
    text = describe_failure(details, "GET /export", name_of=name_of)
    assert text.startswith("GET /export failed: VM 'web-01' is running but this needs it halted or suspended.")


def test_sr_full_names_the_sr_when_known():
    details = ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
    text = describe_failure(details, "VDI.create", name_of=name_of, sr=SR)
    assert text.startswith("VDI.create failed: SR 'Local storage' is full (There is insufficient space).")
    assert "another SR" in text
    generic = describe_failure(["SR_FULL", "100", "10"], "VDI.create")
    assert "the storage repository is full" in generic and "100 bytes requested, 10 available" in generic


def test_host_is_slave_outside_login_points_at_the_master():
    text = describe_failure(["HOST_IS_SLAVE", "192.0.2.1"], "VM.get_all", url="https://192.0.2.2")
    assert "https://192.0.2.2 is a pool member" in text and "the master is 192.0.2.1" in text


def test_session_invalid_never_shows_the_session_ref():
    secret = "OpaqueRef:7777aaaa-bbbb-cccc-dddd-eeeeffff0000"
    text = describe_failure(["SESSION_INVALID", secret], "VM.get_all")
    assert secret not in text and "expired" in text


@pytest.mark.parametrize(
    ("details", "fragment"),
    [
        (["UUID_INVALID", "VM", "1234"], "no VM has the UUID 1234"),
        (["OPERATION_NOT_ALLOWED", "VBD is attached"], "was not allowed by XAPI: VBD is attached."),
        (["OTHER_OPERATION_IN_PROGRESS", "VM", VM, "export", "OpaqueRef:t"], "VM 'web-01' is busy with another"),
        (["VDI_IN_USE", "OpaqueRef:v", "destroy"], "is in use, so destroy is not possible now"),
        (["VM_IS_TEMPLATE", VM], "VM 'web-01' is a template"),
        (["TASK_CANCELLED", "OpaqueRef:t"], "was cancelled before it finished"),
        (["MESSAGE_METHOD_UNKNOWN", "VDI.list_changed_blocks"], "does not know the call VDI.list_changed_blocks"),
        (["INTERNAL_ERROR", "boom"], "internal error (boom)"),
        (["SOMETHING_NEW", "a", "b"], "failed with XAPI error SOMETHING_NEW (a, b)."),
        ([], "failed with XAPI error UNKNOWN_ERROR."),
    ],
)
def test_other_codes(details, fragment):
    assert fragment in describe_failure(details, "Op", name_of=name_of)


def test_xapi_error_exposes_the_code_for_playbooks():
    err = XapiError("text", "VM_BAD_POWER_STATE", [VM, "halted", "running"])
    assert str(err) == "text"
    assert err.result() == {"xapi_error": ["VM_BAD_POWER_STATE", VM, "halted", "running"]}
    assert XapiError("no code").result() == {}


# -- connection errors (real exception objects, as the socket and ssl layers raise them) ----------
def test_certificate_error_from_a_real_handshake(demo_sim):
    ctx = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", demo_sim.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError) as info,
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    text = describe_connection_error(info.value, demo_sim.url)
    assert text.startswith(f"TLS certificate check of {demo_sim.url} failed (self-signed certificate).")
    assert "ca_path" in text and "validate_certs=false" in text
    with_ca = describe_connection_error(info.value, demo_sim.url, ca_path="/etc/ca.pem")
    assert "not issued by the CA in ca_path (/etc/ca.pem)" in with_ca


def test_refused_connection_from_a_real_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    text = describe_connection_error(info.value, f"https://127.0.0.1:{port}")
    assert text.startswith(f"Cannot connect to https://127.0.0.1:{port}: connection refused.")


@pytest.mark.parametrize(
    ("exc", "fragment"),
    [
        (TimeoutError("timed out"), "did not answer within 7 seconds"),
        (socket.timeout("timed out"), "did not answer within 7 seconds"),
        (xmlrpc.client.Fault(504, "The connection timed out"), "did not answer within 7 seconds"),
        (socket.gaierror(-2, "Name or service not known"), "Cannot resolve the host name of https://h"),
        (http.client.RemoteDisconnected("Remote end closed"), "closed the connection unexpectedly"),
        (xmlrpc.client.ProtocolError("h/RPC2", 404, "Not Found", {}), "answered HTTP 404 Not Found"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "Cannot reach https://h (No route to host)"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS handshake with https://h failed"),
    ],
)
def test_connection_error_sentences(exc, fragment):
    assert fragment in describe_connection_error(exc, "https://h", timeout=7)

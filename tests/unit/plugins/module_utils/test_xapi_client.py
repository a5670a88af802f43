"""XapiClient against the simulator (real XenAPI SDK, real TLS) and a misbehaving XML-RPC stub."""

import ssl
import xmlrpc.client
from functools import reduce

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_errors import XapiConnectionError, XapiError
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import parse_xapi_url

SMALL_LAB = """
pool: {name: small-pool}
hosts: [{name: h1, address: 127.0.0.1, master: true}]
srs: [{name: Thick LVM, type: lvm, size: 1GiB, host: h1, default: true}]
users: [{name: root, password: small-lab-pw, role: pool-admin}]
"""


def options(sim, hostname=None, username=None, password=None, **kw):
    return ConnectionOptions(
        parse_xapi_url(hostname or sim.url),
        username or sim.username,
        password or sim.password,
        ca_path=kw.pop("ca_path", str(sim.ca_path)),
        **kw,
    )


def raw_call(sim, method, *params):
    """Call XAPI without the SDK, to observe a session from outside the client."""
    ctx = ssl.create_default_context(cafile=str(sim.ca_path))
    proxy = xmlrpc.client.ServerProxy(sim.url, context=ctx)
    return reduce(getattr, method.split("."), proxy)(*params)


def vm_ref(xapi, name):
    (ref,) = xapi.call("VM.get_by_name_label", name)
    return ref


# -- login and logout ----------------------------------------------------------------------------
def test_session_is_logged_out_on_exit(demo_sim):
    with XapiClient(options(demo_sim)) as xapi:
        session = xapi.session_id
        assert session.startswith("OpaqueRef:")
        assert raw_call(demo_sim, "VM.get_all", session)["Status"] == "Success"
    assert xapi.session_id is None
    assert raw_call(demo_sim, "VM.get_all", session)["ErrorDescription"][0] == "SESSION_INVALID"


def test_session_is_logged_out_when_the_body_fails(demo_sim):
    with pytest.raises(RuntimeError), XapiClient(options(demo_sim)) as xapi:
        session = xapi.session_id
        raise RuntimeError("task failed")
    assert raw_call(demo_sim, "VM.get_all", session)["ErrorDescription"][0] == "SESSION_INVALID"


def test_member_login_follows_the_master_once(demo_sim):
    with XapiClient(options(demo_sim, hostname=demo_sim.member_url)) as xapi:
        assert xapi.url == parse_xapi_url(demo_sim.url)
        assert xapi.redirected_from == parse_xapi_url(demo_sim.member_url)
        assert "demo-pool" in [p["name_label"] for p in xapi.get_all_records("pool").values()]
        assert xapi.handler_url("/export", uuid="x").url.startswith(demo_sim.url + "/export?")


def test_redirect_loop_stops_after_one_hop(xmlrpc_stub):
    # Each address claims the other is the master: a pool mid-election, or a broken one.
    def answer(address, method, params):
        other = "127.0.0.2" if address == "127.0.0.1" else "127.0.0.1"
        return {"Status": "Failure", "ErrorDescription": ["HOST_IS_SLAVE", other]}

    stub = xmlrpc_stub(answer)
    opts = ConnectionOptions(parse_xapi_url(f"http://127.0.0.2:{stub.port}"), "root", "pw-not-shown", timeout=5)
    with pytest.raises(XapiError) as info:
        XapiClient(opts).login()
    assert stub.calls == [("127.0.0.2", "session.login_with_password"), ("127.0.0.1", "session.login_with_password")]
    text = str(info.value)
    assert f"Login to http://127.0.0.2:{stub.port} as root failed: it is a pool member naming 127.0.0.1" in text
    assert "says the master is 127.0.0.2" in text
    assert info.value.code == "HOST_IS_SLAVE"
    assert "pw-not-shown" not in text


def test_redirect_keeps_the_given_scheme_and_port(xmlrpc_stub):
    def answer(address, method, params):
        if address == "127.0.0.2":
            return {"Status": "Failure", "ErrorDescription": ["HOST_IS_SLAVE", "127.0.0.1"]}
        if method == "session.login_with_password":
            return {"Status": "Success", "Value": "OpaqueRef:stub-session"}
        return {"Status": "Success", "Value": ""}

    stub = xmlrpc_stub(answer)
    opts = ConnectionOptions(parse_xapi_url(f"http://127.0.0.2:{stub.port}"), "root", "pw", timeout=5)
    with XapiClient(opts) as xapi:
        assert xapi.url.url == f"http://127.0.0.1:{stub.port}"
    assert stub.calls[-1] == ("127.0.0.1", "session.logout")


# -- failures as sentences -------------------------------------------------------------------------
def test_wrong_password(demo_sim):
    secret = "Not-The-Password-42"
    with pytest.raises(XapiError) as info:
        XapiClient(options(demo_sim, password=secret)).login()
    err = info.value
    assert str(err).startswith(f"Login to {demo_sim.url} as root failed: wrong user name or password")
    assert err.code == "SESSION_AUTHENTICATION_FAILED"
    assert secret not in str(err) and secret not in repr(err.params)


def test_wrong_password_via_member_names_the_master(demo_sim):
    with pytest.raises(XapiError) as info:
        XapiClient(options(demo_sim, hostname=demo_sim.member_url, password="nope-nope")).login()
    assert str(info.value).startswith(f"Login to {demo_sim.url} as root failed: wrong user name or password")


def test_read_only_user_is_refused_a_power_operation_with_roles(demo_sim):
    with XapiClient(options(demo_sim, username=demo_sim.ro_username, password=demo_sim.ro_password)) as xapi:
        ref = vm_ref(xapi, "test-01")
        with pytest.raises(XapiError) as info:
            xapi.call("VM.start", ref, False, False)
    text = str(info.value)
    assert text.startswith("VM.start on VM 'test-01' was refused: user auditor lacks the permission vm.start")
    assert "which only the roles pool-admin" in text
    assert info.value.code == "RBAC_PERMISSION_DENIED"


def test_bad_power_state_names_the_vm(demo_sim):
    with XapiClient(options(demo_sim)) as xapi:
        ref = vm_ref(xapi, "web-01")
        with pytest.raises(XapiError) as info:
            xapi.call("VM.start", ref, False, False)
    assert str(info.value).startswith("VM.start on VM 'web-01' failed: VM 'web-01' is running but this needs it halted")
    assert info.value.params[0] == ref


def test_handle_invalid(demo_sim):
    with XapiClient(options(demo_sim)) as xapi, pytest.raises(XapiError) as info:
        xapi.call("VM.get_record", "OpaqueRef:NULL")
    assert str(info.value).startswith("VM.get_record failed: the VM OpaqueRef:NULL does not exist")
    assert info.value.result() == {"xapi_error": ["HANDLE_INVALID", "VM", "OpaqueRef:NULL"]}


def test_full_thick_sr_is_named(sim_factory, tmp_path):
    lab = tmp_path / "small.yml"
    lab.write_text(SMALL_LAB)
    small = sim_factory(lab=lab, name="small")
    opts = options(small, password="small-lab-pw")
    with XapiClient(opts) as xapi:
        (sr,) = xapi.call("SR.get_by_name_label", "Thick LVM")
        record = {
            "SR": sr,
            "virtual_size": str(4 << 30),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "name_label": "too big",
        }
        with pytest.raises(XapiError) as info:
            xapi.call("VDI.create", record, sr=sr)
    assert str(info.value).startswith("VDI.create failed: SR 'Thick LVM' is full (There is insufficient space).")
    assert info.value.code == "SR_BACKEND_FAILURE_44"


def test_secrets_are_masked_in_errors_built_by_the_client(demo_sim):
    password = "Pa55-for-masking"
    with XapiClient(options(demo_sim)) as xapi:
        xapi.options.password = password  # as if the user had typed this one
        session = xapi.session_id
        err = xapi.failure(f"echo {session} {password}", ["CODE", session, password])
    assert session not in str(err) and password not in str(err)
    assert session not in err.params and password not in err.params


# -- connection problems ---------------------------------------------------------------------------
def test_closed_port_is_a_connection_error(closed_port):
    opts = ConnectionOptions(parse_xapi_url(f"127.0.0.1:{closed_port}"), "root", "pw", timeout=5)
    with pytest.raises(XapiConnectionError) as info:
        XapiClient(opts).login()
    assert "connection refused" in str(info.value)


def test_silent_host_times_out(silent_port, bounded):
    opts = ConnectionOptions(parse_xapi_url(f"http://127.0.0.1:{silent_port}"), "root", "pw", timeout=1)
    with pytest.raises(XapiConnectionError) as info:
        bounded(XapiClient(opts).login, 15)
    assert f"http://127.0.0.1:{silent_port} did not answer within 1 seconds" in str(info.value)


def test_tls_checks_use_ca_path_or_can_be_disabled(demo_sim):
    with pytest.raises(XapiConnectionError) as info:
        XapiClient(options(demo_sim, ca_path=None)).login()
    assert "TLS certificate check" in str(info.value)
    with XapiClient(options(demo_sim, ca_path=None, validate_certs=False)) as xapi:
        assert xapi.call("VM.get_all")


def test_calls_after_the_pool_went_away_are_connection_errors(sim):
    with XapiClient(options(sim, timeout=5)) as xapi:
        sim.stop()
        with pytest.raises(XapiConnectionError) as info:
            xapi.call("VM.get_all")
    assert sim.url in str(info.value)

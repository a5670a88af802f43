"""The XML-RPC envelope and encodings exactly as xapi (ocaml-rpc, strict=false) writes them."""

import re

import pytest
import requests
import XenAPI
from simhelpers import failure, raw_call


def test_envelope_and_scalar_encodings(sim, x):
    text = raw_call(sim, "session.login_with_password", sim.username, sim.password, "1.0", "wire-test")
    assert re.search(r"<member><name>Status</name><value>Success</value></member>", text)
    session = re.search(r"(OpaqueRef:[0-9a-f-]{36})", text).group(1)
    vm = x.VM.get_by_name_label("web-01")[0]
    record = raw_call(sim, "VM.get_record", session, vm)
    # int64 travels as a bare string, bools as <boolean>, datetimes as dateTime.iso8601.
    assert "<member><name>memory_static_max</name><value>2147483648</value></member>" in record
    assert "<member><name>is_a_template</name><value><boolean>0</boolean></value></member>" in record
    assert re.search(
        r"<name>snapshot_time</name><value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601>", record
    )
    assert "<string>" not in record and "<i4>" not in record
    # The SDK therefore sees ints as str.
    assert x.VM.get_memory_static_max(vm) == "2147483648"
    assert isinstance(x.VM.get_VCPUs_max(vm), str)


def test_errors_use_the_failure_envelope_not_faults(sim, x):
    text = raw_call(sim, "VM.get_record", "OpaqueRef:nope", "OpaqueRef:NULL")
    assert "<fault>" not in text
    assert "<name>Status</name><value>Failure</value>" in text
    assert "<value>SESSION_INVALID</value><value>OpaqueRef:nope</value>" in text
    assert failure(x.VM.get_record, "OpaqueRef:NULL") == ["HANDLE_INVALID", "VM", "OpaqueRef:NULL"]
    assert failure(x.VM.get_by_uuid, "not-a-uuid") == ["UUID_INVALID", "VM", "not-a-uuid"]
    assert x.VM.get_by_name_label("no such vm") == []
    assert failure(x.VM.frobnicate, "x") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    vm = x.VM.get_by_name_label("web-01")[0]
    # Counts exclude the session and are strings.
    assert failure(x.VM.start, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert failure(x.VM.get_record, vm, "extra") == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "2"]
    # A VDI ref passed where a VM is expected is a VM handle error.
    vdi = x.VDI.get_all()[0]
    assert failure(x.VM.get_record, vdi)[:2] == ["HANDLE_INVALID", "VM"]


def test_malformed_request_gets_http_500(sim):
    r = sim.http("POST", "/RPC2", data=b"<methodCall><broken", headers={"Content-Type": "text/xml"})
    assert r.status_code == 500 and "text/html" in r.headers["Content-Type"]


def test_login_failures_and_member_redirect(sim):
    with pytest.raises(XenAPI.Failure) as e:
        sim.session(password="wrong")
    assert e.value.details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]
    with pytest.raises(XenAPI.Failure) as e:
        sim.session(username="nobody")
    assert e.value.details[:2] == ["SESSION_AUTHENTICATION_FAILED", "nobody"]
    with pytest.raises(XenAPI.Failure) as e:
        sim.session(url=sim.member_url)
    assert e.value.details == ["HOST_IS_SLAVE", "127.0.0.1"]


def test_logout_invalidates_the_session(sim):
    s = sim.session()
    ref = s._session
    s.xenapi.session.logout()
    text = raw_call(sim, "VM.get_all", ref)
    assert f"<value>SESSION_INVALID</value><value>{ref}</value>" in text


def test_rbac_read_only_user(sim, x):
    vm = x.VM.get_by_name_label("web-01")[0]
    with sim.xapi(sim.ro_username, sim.ro_password) as ro:
        assert ro.VM.get_record(vm)["name_label"] == "web-01"
        details = failure(ro.VM.clean_shutdown, vm)
        assert details[0] == "RBAC_PERMISSION_DENIED"
        assert details[1] == "vm.clean_shutdown"
        assert "No permission in user session" in details[2] and "pool-admin" in details[2]
        assert failure(ro.VM.set_name_label, vm, "x")[:2] == ["RBAC_PERMISSION_DENIED", "vm.set_name_label"]
    assert x.VM.get_name_label(vm) == "web-01"


def test_tls_certificate_is_verifiable_and_required(sim):
    assert requests.get(sim.url + "/_sim/faults", verify=sim.ca_path, timeout=10).status_code == 404
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(sim.url + "/", verify=True, timeout=10)


def test_api_version_and_hidden_query(sim, x):
    s = sim.session()
    assert s.API_version == "2.23"
    hits = x.VM.get_all_records_where('field "name_label"="db-01" and field "is_a_template"="false"')
    assert [r["name_label"] for r in hits.values()] == ["db-01"]
    assert x.VM.get_all_records_where('field "name_label"="nope"') == {}

"""TLS contexts, XML-RPC transports and the requests session, checked over real connections."""

import ssl

import pytest
import requests

from ansible_collections.xapi.proxy.plugins.module_utils._xapi_client import XapiClient
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_options import ConnectionOptions
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_transport import (
    XapiTlsConfigError,
    http_session,
    requests_verify,
    ssl_context,
    xmlrpc_transport,
)
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import handler_url, parse_xapi_url


def test_validation_off_means_no_checks_at_all():
    ctx = ssl_context(validate_certs=False, ca_path="/ignored")
    assert ctx.verify_mode == ssl.CERT_NONE and ctx.check_hostname is False


def test_validation_on_checks_chain_and_host_name(demo_sim):
    for ctx in (ssl_context(), ssl_context(True, str(demo_sim.ca_path))):
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ssl_context(True, str(demo_sim.ca_path)).cert_store_stats()["x509_ca"] == 1


def test_ca_path_may_be_a_hashed_directory(demo_sim, tmp_path):
    ctx = ssl_context(True, str(tmp_path))
    assert ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("content", "fragment"), [(None, "does not exist"), ("not a pem", "no usable PEM")])
def test_bad_ca_path_is_explained(tmp_path, content, fragment):
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(XapiTlsConfigError) as info:
        ssl_context(True, str(path))
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_xmlrpc_transport_kinds():
    assert xmlrpc_transport(True, 12).timeout == 12
    assert xmlrpc_transport(False, 3).timeout == 3
    assert not hasattr(xmlrpc_transport(False, 3), "context")


def test_requests_verify_matches_the_ssl_settings(demo_sim, tmp_path):
    assert requests_verify(False, str(demo_sim.ca_path)) is False
    assert requests_verify(True, None) is True
    assert requests_verify(True, str(demo_sim.ca_path)) == str(demo_sim.ca_path)
    with pytest.raises(XapiTlsConfigError):
        requests_verify(True, str(tmp_path / "missing.pem"))


def test_http_session_validates_like_xmlrpc(demo_sim):
    with http_session(10, True, str(demo_sim.ca_path)) as s:
        assert s.get(demo_sim.url + "/no-such-handler").status_code == 404
    with http_session(10) as s, pytest.raises(requests.exceptions.SSLError):
        s.get(demo_sim.url + "/no-such-handler")
    with http_session(10, validate_certs=False) as s:
        assert s.get(demo_sim.url + "/no-such-handler").status_code == 404


def test_http_session_applies_the_timeout(silent_port, bounded):
    with http_session(1) as s, pytest.raises(requests.exceptions.Timeout):
        bounded(lambda: s.get(f"http://127.0.0.1:{silent_port}/"), 15)


def test_handler_url_authenticates_a_transfer(sim):
    opts = ConnectionOptions(parse_xapi_url(sim.url), sim.username, sim.password, ca_path=str(sim.ca_path))
    with XapiClient(opts) as xapi:
        (vm,) = xapi.call("VM.get_by_name_label", "web-01")
        vdi = xapi.call("VBD.get_VDI", xapi.call("VM.get_VBDs", vm)[0])
        query = {"vdi": xapi.call("VDI.get_uuid", vdi), "format": "vhd"}
        url = xapi.handler_url("/export_raw_vdi", **query)
        assert xapi.session_id not in str(url)
        with xapi.http_session() as s, s.get(url, stream=True) as r:
            assert r.status_code == 200
            assert r.headers["task-id"].startswith("OpaqueRef:")
            assert len(next(r.iter_content(512))) > 0
        # Without the session the handler refuses: the URL's session is what authenticated it.
        anonymous = handler_url(xapi.url, "/export_raw_vdi", "OpaqueRef:NULL", **query)
        with xapi.http_session() as s:
            assert s.get(anonymous).status_code == 401

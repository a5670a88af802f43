"""``xva_url`` from servers that send no Content-Length: the appliance module keeps a copy, then imports it.

XAPI's ``/import`` takes no chunked body, so when the download's length is unknown (a chunked or a
close-delimited response, or a compressed one whose Content-Length is not the XVA's) the module spools
the XVA to a temporary file first. A real HTTP server on loopback answers each way; the simulator checks
the XVA's checksums as xapi does, and the imported disks are compared with the exported VM's.
"""

import gzip
import http.server
import socket
import threading

import pytest
from module_runner import run_module

NETWORK = "Pool-wide network associated with eth0"
SOURCE_VM = "test-01"


class XvaHandler(http.server.BaseHTTPRequestHandler):
    """``GET /<mode>/proxy.xva`` serves the XVA as ``mode`` says; every answer's headers are recorded."""

    xva = b""
    sent = []  # (mode, headers) per response

    def log_message(self, *args):
        pass

    def _headers(self, mode, headers):
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.sent.append((mode, headers))

    def do_GET(self):
        mode = self.path.strip("/").split("/")[0]
        data, piece = self.xva, 64 * 1024
        if mode == "chunked":  # HTTP/1.1, Transfer-Encoding: chunked
            self._headers(mode, {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
            for at in range(0, len(data), piece):
                chunk = data[at : at + piece]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif mode == "close":  # HTTP/1.0 style: the body ends when the connection closes
            self.protocol_version = "HTTP/1.0"
            self.close_connection = True
            self._headers(mode, {"Content-Type": "application/octet-stream"})
            self.wfile.write(data)
        elif mode == "gzip":  # a length, but of the compressed body
            body = gzip.compress(data, compresslevel=1)
            self._headers(mode, {"Content-Encoding": "gzip", "Content-Length": str(len(body))})
            self.wfile.write(body)
        elif mode == "cut":  # chunked, and the connection drops half way, without the last chunk
            self._headers(mode, {"Transfer-Encoding": "chunked"})
            half = data[: len(data) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif mode == "short":  # a Content-Length, and the connection drops half way
            self._headers(mode, {"Content-Length": str(len(data))})
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.send_error(404)


class LengthlessServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def xva_server(sim, tmp_path):
    """An HTTP server on loopback serving an XVA of the lab's ``test-01`` without Content-Length."""
    session = sim.session()
    try:
        ref = session.xenapi.VM.get_by_name_label(SOURCE_VM)[0]
        r = sim.http("GET", "/export", params={"session_id": session._session,
                                               "uuid": session.xenapi.VM.get_uuid(ref)})  # fmt: skip
        r.raise_for_status()
        xva = r.content
    finally:
        session.xenapi.session.logout()
    handler = type("Handler", (XvaHandler,), {"xva": xva, "sent": []})
    handler.protocol_version = "HTTP/1.1"
    server = LengthlessServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def disk_hashes(sim, name):
    """``{userdevice: sha256}`` of the VM's disks (CDs and empty drives left out)."""
    with sim.xapi() as x:
        vm = x.VM.get_by_name_label(name)[0]
        out = {}
        for vbd in x.VM.get_VBDs(vm):
            rec = x.VBD.get_record(vbd)
            if rec["type"] == "Disk" and rec["VDI"] != "OpaqueRef:NULL":
                out[rec["userdevice"]] = sim.sha256(x.VDI.get_uuid(rec["VDI"]))
    return out


def deploy(sim, url, name):
    conn = {"hostname": sim.url, "password": sim.password, "ca_path": str(sim.ca_path)}
    args = {"name": name, "site": "lyon", "xva_url": url, "network": NETWORK, "state": "present",
            "configure_via": ["xenstore"]}  # fmt: skip
    return run_module("appliance", {**conn, **args})


@pytest.mark.parametrize("mode", ["chunked", "close", "gzip"])
def test_xva_url_without_content_length_is_spooled_then_imported(sim, xva_server, mode):
    base, handler = xva_server
    url = f"{base}/{mode}/proxy.xva"
    run = deploy(sim, url, f"proxy-{mode}")
    assert run.rc == 0, run
    assert run.result["changed"] is True
    assert run.result["actions"][0] == f"create VM 'proxy-{mode}' (imported from {url})"
    # The server really sent no usable length: none at all, or the gzip body's.
    [(sent_mode, headers)] = handler.sent
    assert sent_mode == mode
    assert ("Content-Length" in headers) == (mode == "gzip") and headers.get("Content-Encoding") == (
        "gzip" if mode == "gzip" else None
    )
    # xapi's import checked every block against the XVA's checksums; the disks are the exported VM's.
    assert disk_hashes(sim, f"proxy-{mode}") == disk_hashes(sim, SOURCE_VM)


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_xva_url_cut_short_fails_cleanly_and_imports_nothing(sim, xva_server, mode):
    """A download that breaks off fails the task with a plain message, and leaves no VM or disk behind."""
    base, handler = xva_server
    with sim.xapi() as x:
        vdis = set(x.VDI.get_all())
    url = f"{base}/{mode}/proxy.xva"
    run = deploy(sim, url, "proxy-cut")
    assert run.rc == 1 and run.result["failed"] is True, run
    assert "Traceback" not in run.output and "exception" not in run.result, run.result
    expected = {
        # Spooled: the broken download is seen before anything reaches XAPI.
        "cut": f"cannot download the XVA from {url}: the download broke off",
        # Streamed to /import as it arrives (the length was known): xapi sees the XVA end too early.
        "short": f"Import of the XVA {url} failed with XAPI error IMPORT_ERROR_PREMATURE_EOF",
    }[mode]
    assert expected in run.result["msg"], run.result["msg"]
    assert [m for m, _ in handler.sent] == [mode]
    with sim.xapi() as x:
        assert x.VM.get_by_name_label("proxy-cut") == [] and set(x.VDI.get_all()) == vdis

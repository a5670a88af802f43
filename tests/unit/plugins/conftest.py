"""Network fixtures for connection tests: real sockets on loopback, no patched libraries.

``closed_port`` has nothing listening; ``silent_port`` accepts connections and never answers;
``xmlrpc_stub`` serves a fixed XML-RPC answer on 127.0.0.1 and 127.0.0.2 (a misbehaving pool).
"""

import http.server
import socket
import socketserver
import threading
import xmlrpc.client

import pytest


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers (a hung host or a black-holing middlebox)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class XmlRpcStub:
    """Plain-HTTP XML-RPC servers on 127.0.0.1 and 127.0.0.2 sharing one port.

    ``answer(address, method, params)`` returns the XAPI response struct; ``calls`` records
    ``(address, method)`` for every request.
    """

    def __init__(self, answer):
        self.answer = answer
        self.calls = []
        self.servers = []
        self.port = None

    def start(self):
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params, method = xmlrpc.client.loads(body)
                address = self.connection.getsockname()[0]
                stub.calls.append((address, method))
                data = xmlrpc.client.dumps((stub.answer(address, method, params),), methodresponse=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        for _ in range(20):  # find a port free on both addresses
            first = _Server(("127.0.0.1", 0), Handler)
            try:
                second = _Server(("127.0.0.2", first.server_address[1]), Handler)
            except OSError:
                first.server_close()
                continue
            self.servers = [first, second]
            self.port = first.server_address[1]
            break
        else:
            raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")
        for srv in self.servers:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def stop(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()


@pytest.fixture
def xmlrpc_stub():
    stubs = []

    def make(answer):
        stub = XmlRpcStub(answer).start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        stub.stop()


def _bounded(func, limit):
    """Run ``func()`` in a thread; return its result or raise its exception, failing if it outlives ``limit``."""
    outcome = {}

    def target():
        try:
            outcome["value"] = func()
        except BaseException as e:  # handed back to the caller below
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        pytest.fail(f"still running after {limit} s: a timeout is not applied")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def bounded():
    """``bounded(func, limit)``: a hang in code under test fails the test instead of the whole suite."""
    return _bounded

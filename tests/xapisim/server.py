"""The simulator process: one HTTP(S) listener per host address, XML-RPC and the HTTP handlers."""

import base64
import http.server
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import urllib.parse
from http.cookies import SimpleCookie

from . import api as api_mod
from . import ops_vdi, ops_vm, sessions, transfer
from .db import Database
from .errors import ApiError
from .faults import CutStream, Faults
from .model import NULL_REF, Datamodel
from .ops_vdi import node_of, sync_sr
from .storage import NoSpace, Storage

log = logging.getLogger("xapisim")

# RBAC for the HTTP handlers (datamodel.ml's http action table).
HTTP_ROLES = {
    "/export": ("http/get_export", ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin"]),
    "/export_raw_vdi": ("http/get_export_raw_vdi", ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin"]),
    "/import": ("http/put_import", ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin"]),
    "/import_raw_vdi": ("http/put_import_raw_vdi", ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin"]),
}


class Simulator:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.db = Database(Datamodel(), state_dir)
        self.storage = Storage(state_dir)
        self.faults = Faults()
        self.api = api_mod.Api(self)
        self.sessions = sessions.Sessions(self)
        self.tasks = api_mod.Tasks(self)
        self.transfers = transfer.Transfers(self)
        self.guest = ops_vm.Guest(self)
        self.ref_counter = 0
        self.domid = 0
        ops_vdi.install(self)
        ops_vm.install(self)
        self._install_session_ops()

    def _install_session_ops(self):
        api = self.api

        @api.handler("session.logout")
        def logout(ctx):
            self.sessions.logout(ctx.session)
            return ""

        @api.handler("session.local_logout")
        def local_logout(ctx):
            self.sessions.logout(ctx.session)
            return ""

        @api.handler("task.create")
        def task_create(ctx, label, description):
            return self.tasks.create(ctx, label, description)

        @api.handler("task.destroy")
        def task_destroy(ctx, ref):
            self.db.get("task", ref)
            api.destroy("task", ref)
            return ""

        @api.handler("task.cancel")
        def task_cancel(ctx, ref):
            if self.db.field("task", ref, "status") != "pending":
                raise ApiError("OPERATION_NOT_ALLOWED", "task is not pending")
            self.db.set("task", ref, status="cancelling")
            return ""

    def after_load(self):
        self.domid = max([0] + [int(r["domid"]) for _, r in self.db.all("VM")])
        for _, rec in self.db.all("SR"):
            self.storage.capacity[rec["uuid"]] = rec["physical_size"]

    # -- lookups ----------------------------------------------------------------------------------
    def master_ref(self):
        pool = next(iter(self.db.tables["pool"]))
        return self.db.field("pool", pool, "master")

    def default_sr(self):
        pool = next(iter(self.db.tables["pool"]))
        return self.db.field("pool", pool, "default_SR")

    def control_domain(self):
        found = self.db.find("VM", is_control_domain=True, resident_on=self.master_ref())
        return found[0] if found else None

    def host_for_address(self, address):
        for ref, rec in self.db.all("host"):
            if rec["address"] == address:
                return ref
        return self.master_ref()

    # -- guest boot -------------------------------------------------------------------------------
    def config_drive_ip(self, vm_ref):
        """The static address a cloud-init config drive attached to the VM gives it (see config_drive.py)."""
        from . import config_drive  # noqa: PLC0415 - only booting guests need it

        return config_drive.config_drive_ip(self, vm_ref)


class Body:
    """The request body: Content-Length bounded, or until EOF; counts bytes for faults."""

    def __init__(self, rfile, length):
        self.rfile = rfile
        self.length = length
        self.left = length
        self.fault = None
        self._peeked = b""

    def peek(self, n):
        if len(self._peeked) < n:
            self._peeked += self._raw(n - len(self._peeked))
        return self._peeked[:n]

    def _raw(self, n):
        if self.left is not None:
            n = min(n, self.left)
            if n <= 0:
                return b""
        data = self.rfile.read1(n) if hasattr(self.rfile, "read1") else self.rfile.read(n)
        if self.left is not None:
            self.left -= len(data)
        if self.fault is not None and data:
            self.fault.on_bytes(len(data))
        return data

    def read(self, n):
        if self._peeked:
            data, self._peeked = self._peeked[:n], self._peeked[n:]
            return data
        return self._raw(n)

    def read_exact(self, n):
        parts, got = [], 0
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def error_page(error):
    detail = f"Server_error({error.code}, [ {'; '.join(error.params)} ])" if error else ""
    return (
        "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; please wait a while"
        " and try again. If the problem persists, please contact your support representative."
        f"<h1> Additional information </h1>{detail}</body></html>"
    )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = transfer.SERVER_HEADER
    sim: Simulator = None

    def setup(self):
        # Headers and body go out in separate writes: without this, Nagle plus the client's delayed
        # ACK add 40 ms to every XML-RPC call.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, fmt, *args):
        # Query strings carry session ids: log the path only.
        log.debug(
            "%s %s", self.address_string(), fmt % args if "session_id" not in fmt % args else self.path.split("?")[0]
        )

    def _local_host(self):
        return self.sim.host_for_address(self.connection.getsockname()[0])

    def _send(self, status, body, ctype="text/xml", extra=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _split(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return url.path.rstrip("/") or "/", query

    # -- XML-RPC --------------------------------------------------------------------------------
    def do_POST(self):
        path, query = self._split()
        if path.startswith("/_sim/"):
            return self._sim_hook(path, query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            from . import wire  # noqa: PLC0415

            method, params = wire.parse_call(body)
        except Exception:
            return self._send(500, error_page(None), "text/html")
        self._send(200, self.sim.api.dispatch(method, params, self._local_host()))

    # -- transfers --------------------------------------------------------------------------------
    def do_GET(self):
        path, query = self._split()
        if path.startswith("/_sim/"):
            return self._sim_hook(path, query)
        if path in ("/export", "/export_raw_vdi"):
            return self._transfer(path, query)
        self._send(404, "<html><body><h1>HTTP 404 not found</h1></body></html>", "text/html")

    def do_PUT(self):
        path, query = self._split()
        if path.startswith("/_sim/"):
            return self._sim_hook(path, query)
        if path in ("/import", "/import_raw_vdi"):
            return self._transfer(path, query)
        self._send(404, "<html><body><h1>HTTP 404 not found</h1></body></html>", "text/html")

    def _credentials(self, query):
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        if "session_id" in cookie:
            return cookie["session_id"].value, False
        if query.get("session_id"):
            return query["session_id"], False
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, pwd = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return None, False
            try:
                return self.sim.sessions.login([user, pwd], self.sim.master_ref(), "session.login_with_password"), True
            except ApiError:
                return None, False
        return None, False

    def _transfer(self, path, query):
        sim = self.sim
        self.close_connection = True
        session, temporary = self._credentials(query)
        if session is None or not sim.db.exists("session", session):
            # The early credential check leaves the caller's task pending (xapi_http.ml).
            return self._send(
                401,
                "<html><body><h1>HTTP 401 unauthorised</h1></body></html>",
                "text/html",
                [("WWW-Authenticate", 'Basic realm="xapi"'), ("Connection", "close")],
            )
        self.sim_session = session
        task = query.get("task_id")
        if task and not sim.db.exists("task", task):
            task = None
        task = task or sim.tasks.create(session, f"Connection to {path}")
        permission, roles = HTTP_ROLES[path]
        try:
            try:
                sim.sessions.authorize(session, permission, roles)
            except ApiError as e:
                sim.tasks.fail(task, e)
                return self._send(
                    403,
                    "<html><body><h1>HTTP 403 forbidden</h1></body></html>",
                    "text/html",
                    [("task-id", task), ("Connection", "close")],
                )
            if path.startswith("/import") and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                if path == "/import":
                    sim.tasks.fail(task, ApiError("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"))
                    return self._send(
                        403,
                        "<html><body><h1>HTTP 403 forbidden</h1></body></html>",
                        "text/html",
                        [("task-id", task), ("Connection", "close")],
                    )
                sim.tasks.fail(task, ApiError("INTERNAL_ERROR", "Transfer-Encoding is not supported"))
                return self._send(
                    404,
                    "<html><body><h1>HTTP 404 not found</h1></body></html>",
                    "text/html",
                    [("task-id", task), ("Connection", "close")],
                )
            length = self.headers.get("Content-Length")
            body = Body(self.rfile, int(length) if length is not None else None)
            self.sim_fault = fault = sim.faults.take("http", path)
            if fault is not None and fault.action == "fail_task" and path.startswith("/export"):
                raise transfer.HttpError(500, fault.as_error())
            handler = {
                "/export": lambda: sim.transfers.export(self, query, task),
                "/export_raw_vdi": lambda: sim.transfers.export_raw_vdi(self, query, task),
                "/import": lambda: sim.transfers.import_xva(self, query, task, body),
                "/import_raw_vdi": lambda: sim.transfers.import_raw_vdi(self, query, task, body),
            }[path]
            result = handler()
            sim.tasks.complete(task, result)
        except transfer.HttpError as e:
            if e.error is not None:
                sim.tasks.fail(task, e.error)
            page = (
                error_page(e.error)
                if e.status == 500
                else f"<html><body><h1>HTTP {e.status}</h1>{e.text}</body></html>"
            )
            self._send(e.status, page, "text/html", [("task-id", task), ("Connection", "close")])
        except CutStream:
            sim.tasks.fail(task, ApiError("VDI_IO_ERROR", "Connection reset by peer"))
            self._abort()
        except ApiError as e:
            # Errors after the 200 cut the stream; the task carries the reason.
            sim.tasks.fail(task, e)
            self._abort()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError) as e:
            sim.tasks.fail(task, ApiError("VDI_IO_ERROR", f"client connection lost: {type(e).__name__}"))
        finally:
            if temporary and sim.db.exists("session", session):
                sim.sessions.logout(session)
            sim.db.flush()

    def _abort(self):
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- /_sim/ test hooks ----------------------------------------------------------------------
    def _sim_hook(self, path, query):
        sim = self.sim
        m = re.fullmatch(r"/_sim/vdi/([0-9a-f-]+)/(data|sha256)", path)
        try:
            if m:
                vdi = sim.db.by_uuid["VDI"].get(m.group(1))
                if vdi is None:
                    return self._send(404, f"no VDI with uuid {m.group(1)}\n", "text/plain")
                node = node_of(sim.db, vdi)
                if m.group(2) == "sha256" and self.command == "GET":
                    digest = sim.storage.sha256(node, sim.db.field("VDI", vdi, "virtual_size"))
                    return self._send(200, digest + "\n", "text/plain")
                if m.group(2) == "data" and self.command == "PUT":
                    offset = int(query.get("offset", "0"))
                    data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    if offset < 0 or offset + len(data) > sim.db.field("VDI", vdi, "virtual_size"):
                        return self._send(416, "write beyond the end of the VDI\n", "text/plain")
                    try:
                        sim.storage.write(node, offset, data)
                    except NoSpace:
                        return self._send(507, "SR full\n", "text/plain")
                    sync_sr(sim, sim.db.field("VDI", vdi, "SR"))
                    sim.db.flush()
                    return self._send(204, b"", "text/plain")
            if path == "/_sim/faults" and self.command == "POST":
                spec = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fault = sim.faults.arm(spec)
                return self._send(200, json.dumps({"armed": fault.action, "count": fault.count}), "application/json")
            if path == "/_sim/faults" and self.command == "DELETE":
                sim.faults.clear()
                return self._send(204, b"", "text/plain")
        except (ValueError, KeyError) as e:
            return self._send(400, f"bad hook request: {e}\n", "text/plain")
        return self._send(404, "unknown simulator hook\n", "text/plain")


class ThreadedServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def serve(sim, addresses, port, tls_context=None):
    handler = type("BoundHandler", (Handler,), {"sim": sim})
    servers = []
    for address in addresses:
        try:
            srv = ThreadedServer((address, port), handler)
        except OSError as e:
            log.warning("cannot listen on %s:%s: %s", address, port, e)
            continue
        if tls_context is not None:
            srv.socket = tls_context.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
    return servers


__all__ = ["NULL_REF", "Simulator", "serve"]

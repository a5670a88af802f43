"""xapi's HTTP transfer handlers: ``/export``, ``/export_raw_vdi``, ``/import``, ``/import_raw_vdi``."""

import logging
import time

from . import vhd, xva
from .api import Context
from .errors import ApiError, bad_power_state
from .faults import CutStream
from .model import NULL_REF
from .ops_vdi import node_of, sync_sr
from .storage import BLOCK, ZERO_BLOCK, NoSpace

log = logging.getLogger("xapisim.transfer")
SERVER_HEADER = "xapi/25.6"
FLUSH_AT = 4 << 20
BIG_PIECE = 256 << 10


class HttpError(Exception):
    """Refuse a request before any header was sent: HTTP status + xapi's HTML error page."""

    def __init__(self, status, error=None, text=""):
        super().__init__(status)
        self.status = status
        self.error = error
        self.text = text


class Sink:
    """Batches small tar/VHD pieces into large socket writes; applies compression and faults."""

    def __init__(self, out, compressor=None, fault=None, on_progress=None):
        self.out = out
        self.compressor = compressor
        self.fault = fault
        self.buf = bytearray()
        self.sent = 0
        self.on_progress = on_progress

    def write(self, data):
        if self.compressor:
            data = self.compressor.feed(data)
        if len(data) >= BIG_PIECE and not self.compressor:
            # Large pieces go straight out (after what is buffered): copying them costs more than a write.
            self.flush()
            self._send(data)
            return
        self.buf += data
        if len(self.buf) >= FLUSH_AT:
            self.flush()

    def flush(self, final=False):
        if final and self.compressor:
            self.buf += self.compressor.finish()
        if not self.buf:
            return
        data = bytes(self.buf)
        self.buf.clear()
        self._send(data)

    def _send(self, data):
        if self.fault:
            allowed = self.fault.before_fault(len(data))
            if allowed < len(data):
                self.out.write(data[:allowed])
                self.fault.on_bytes(len(data))  # a cut raises; a stall sleeps, then the rest goes out
                data = data[allowed:]
            else:
                self.fault.on_bytes(len(data))
        self.out.write(data)
        self.sent += len(data)
        if self.on_progress:
            self.on_progress()


def resolve(db, cls, value, param):
    if not value:
        raise HttpError(400, text=f"missing {param}")
    if db.exists(cls, value):
        return value
    ref = db.by_uuid[cls].get(value)
    if ref is None:
        raise HttpError(404, ApiError("HANDLE_INVALID", cls, value))
    return ref


def head(h, status, headers):
    lines = [status] + [f"{k}: {v}" for k, v in headers] + ["", ""]
    h.wfile.write("\r\n".join(lines).encode())


class Transfers:
    def __init__(self, server):
        self.server = server
        self.db = server.db

    # -- helpers ----------------------------------------------------------------------------------
    def _progress(self, task, done_fn, total):
        last = [0.0]

        def update():
            now = time.monotonic()
            if now - last[0] >= 0.5 and total:
                last[0] = now
                self.server.tasks.progress(task, min(0.99, done_fn() / total))

        return update

    def _lock_vm(self, vm, task, op):
        with self.db.lock:
            self.db.get("VM", vm)["current_operations"][task] = op
            self.db.touch()

    def _unlock_vm(self, vm, task):
        with self.db.lock:
            if self.db.exists("VM", vm):
                self.db.get("VM", vm)["current_operations"].pop(task, None)
                self.db.touch()

    # -- GET /export ------------------------------------------------------------------------------
    def export(self, h, q, task):
        db = self.db
        vm = resolve(db, "VM", q.get("ref") or q.get("uuid"), "ref")
        rec = db.get("VM", vm)
        if rec["power_state"] not in ("Halted", "Suspended"):
            raise HttpError(500, bad_power_state(vm, "halted, suspended", rec["power_state"]))
        comp = {"true": "gzip", "gzip": "gzip", "zstd": "zstd"}.get(q.get("use_compression", "").lower())
        header, disks = self.ova(vm)
        total = sum(size for _, _, size in disks) or 1
        fault = h.sim_fault
        self._lock_vm(vm, task, "export")
        head(
            h,
            "HTTP/1.0 200 OK",
            [
                ("Connection", "close"),
                ("Cache-Control", "no-cache, no-store"),
                ("task-id", task),
                ("Server", SERVER_HEADER),
                ("content-type", "application/octet-stream"),
                ("Content-Disposition", 'attachment; filename="export.xva"'),
            ],
        )
        done = [0]
        # No compressor at all when uncompressed: Sink then sends each 1 MiB chunk as it is, uncopied.
        compressor = xva.Compressor(comp) if comp else None
        sink = Sink(h.wfile, compressor, fault, self._progress(task, lambda: done[0], total))
        try:
            sink.write(xva.tar_entry("ova.xml", xva.ova_xml(header), mode=0o644, mtime=int(time.time())))
            for ref_id, vdi, size in disks:
                node = node_of(db, vdi)
                allocated = {b for b in self.server.storage.allocated_blocks(node)}

                def read_chunk(i, length, _node=node):
                    return self.server.storage.read(_node, i * xva.CHUNK, length)

                for piece in xva.disk_entries(
                    ref_id, size, lambda i, _a=allocated: (i * xva.CHUNK) // BLOCK in _a, read_chunk
                ):
                    sink.write(piece)
                    if len(piece) > 1024:
                        done[0] += len(piece)
            sink.write(bytes(xva.TAR_BLOCK * 2))
            sink.flush(final=True)
            return ""
        finally:
            self._unlock_vm(vm, task)

    def ova(self, vm):
        """ova.xml's header record and the VDIs to stream, with refs rewritten to ``Ref:N`` ids."""
        db = self.db
        rec = db.get("VM", vm)
        objects = [("VM", vm)]
        if rec["metrics"] != NULL_REF and db.exists("VM_metrics", rec["metrics"]):
            objects.append(("VM_metrics", rec["metrics"]))
        vbds = [v for v in rec["VBDs"] if db.exists("VBD", v)]
        vifs = [v for v in rec["VIFs"] if db.exists("VIF", v)]
        objects += [("VBD", v) for v in vbds] + [("VIF", v) for v in vifs]
        nets = []
        for v in vifs:
            n = db.field("VIF", v, "network")
            if n not in nets and db.exists("network", n):
                nets.append(n)
        objects += [("network", n) for n in nets]
        vdis, srs = [], []
        for v in vbds:
            r = db.get("VBD", v)
            if r["type"] == "Disk" and r["VDI"] != NULL_REF and db.exists("VDI", r["VDI"]):
                vdis.append(r["VDI"])
                if r["VDI"] and db.field("VDI", r["VDI"], "SR") not in srs:
                    srs.append(db.field("VDI", r["VDI"], "SR"))
        objects += [("VDI", v) for v in vdis] + [("SR", s) for s in srs]
        ids = {}
        for _, ref in objects:
            self.server.ref_counter += 1
            ids[ref] = f"Ref:{self.server.ref_counter}"

        def rewrite(v):
            if isinstance(v, str) and v.startswith("OpaqueRef:"):
                return ids.get(v, NULL_REF)
            if isinstance(v, list):
                return [rewrite(x) for x in v]
            if isinstance(v, dict):
                return {k: rewrite(x) for k, x in v.items()}
            return v

        out = []
        for cls, ref in objects:
            snap = {k: rewrite(v) for k, v in db.get(cls, ref).items()}
            if cls == "VM":
                snap.update(
                    power_state="Halted",
                    is_a_snapshot=False,
                    snapshot_of=NULL_REF,
                    snapshots=[],
                    parent=NULL_REF,
                    current_operations={},
                    allowed_operations=[],
                    children=[],
                )
                snap["snapshot_time"] = db.model.new_record("VM")["snapshot_time"]
            out.append({"class": cls, "id": ids[ref], "snapshot": snap})
        host = db.get("host", self.server.master_ref())
        header = {
            "version": {
                "hostname": "localhost",
                "date": time.strftime("%Y-%m-%d"),
                "product_version": host["software_version"].get("product_version", "8.3.0"),
                "product_brand": host["software_version"].get("product_brand", "XCP-ng"),
                "build_number": host["software_version"].get("build_number", "release/yangtze"),
                "xapi_major": 25,
                "xapi_minor": 6,
                "export_vsn": 2,
            },
            "objects": out,
        }
        disks = sorted(((ids[v], v, db.field("VDI", v, "virtual_size")) for v in vdis), key=lambda t: t[0])
        return header, disks

    # -- GET /export_raw_vdi ----------------------------------------------------------------------
    def export_raw_vdi(self, h, q, task):
        db, storage = self.db, self.server.storage
        vdi = resolve(db, "VDI", q.get("vdi"), "vdi")
        fmt = q.get("format", "raw")
        if fmt not in ("raw", "vhd", "tar"):
            raise HttpError(404, ApiError("INTERNAL_ERROR", f"Unknown format {fmt}"))
        rec = db.get("VDI", vdi)
        if rec["type"] == "cbt_metadata":
            raise HttpError(500, ApiError("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata"))
        size = rec["virtual_size"]
        if fmt == "vhd" and size > 2040 * (1 << 30):
            raise HttpError(500, ApiError("VDI_TOO_LARGE", vdi, str(2040 * (1 << 30))))
        node = node_of(db, vdi)
        base = q.get("base")
        base_node = None
        if base:
            base_ref = resolve(db, "VDI", base, "base")
            base_node = node_of(db, base_ref)
            blocks = storage.delta_blocks(node, base_node)
        else:
            blocks = storage.allocated_blocks(node)
        ctype = {"raw": "application/octet-stream", "vhd": "application/vhd", "tar": "application/x-tar"}[fmt]
        fault = h.sim_fault
        head(
            h,
            "HTTP/1.1 200 OK",
            [
                ("Connection", "close"),
                ("task-id", task),
                ("content-type", ctype),
                ("content-disposition", f'attachment; filename="{rec["uuid"]}.{fmt}"'),
                ("Server", SERVER_HEADER),
            ],
        )
        total = len(blocks) * BLOCK if fmt != "raw" else size
        sink = Sink(h.wfile, None, fault, None)
        sink.on_progress = self._progress(task, lambda: sink.sent, total or 1)
        # During the transfer xapi attaches the VDI to dom0: a dom0 VBD appears.
        dom0_vbd = self._attach_dom0(vdi)
        try:
            if fmt == "vhd":
                parent = None
                if base_node is not None:
                    bnode = storage.nodes[base_node]
                    parent = (
                        bytes.fromhex(base_node),
                        bnode.path.stat().st_mtime,
                        f"/var/run/sr-mount/{bnode.sr}/{base_node}.vhd",
                    )
                for piece in vhd.stream(size, blocks, lambda b: storage.read_block(node, b), parent):
                    sink.write(piece)
            elif fmt == "tar":
                allocated = set(blocks)
                for piece in xva.disk_entries(
                    "vdi",
                    size,
                    lambda i: (i * xva.CHUNK) // BLOCK in allocated,
                    lambda i, n: storage.read(node, i * xva.CHUNK, n),
                ):
                    sink.write(piece)
                sink.write(bytes(1024))
            else:
                wanted = set(blocks)
                zero = bytes(BLOCK)
                for b in range((size + BLOCK - 1) // BLOCK):
                    n = min(BLOCK, size - b * BLOCK)
                    sink.write(storage.read_block(node, b)[:n] if b in wanted else zero[:n])
            sink.flush(final=True)
            return ""
        finally:
            self._detach_dom0(dom0_vbd)

    def _attach_dom0(self, vdi):
        dom0 = self.server.control_domain()
        if dom0 is None:
            return None
        used = {
            self.db.field("VBD", v, "userdevice") for v in self.db.field("VM", dom0, "VBDs") if self.db.exists("VBD", v)
        }
        dev = str(next(i for i in range(1, 256) if str(i) not in used))
        return self.server.api.create(
            "VBD",
            VM=dom0,
            VDI=vdi,
            userdevice=dev,
            device=f"xvd{chr(96 + int(dev) % 26 or 1)}",
            mode="RO",
            type="Disk",
            currently_attached=True,
        )

    def _detach_dom0(self, vbd):
        if vbd and self.db.exists("VBD", vbd):
            self.server.api.destroy("VBD", vbd)

    # -- PUT /import_raw_vdi ----------------------------------------------------------------------
    def import_raw_vdi(self, h, q, task, body):
        db = self.db
        fmt = q.get("format", "raw")
        if fmt not in ("raw", "vhd"):
            raise HttpError(404, ApiError("INTERNAL_ERROR", f"Unknown format {fmt}"))
        if q.get("vdi"):
            vdi = resolve(db, "VDI", q.get("vdi"), "vdi")
        elif q.get("sr_id") and fmt == "raw" and body.length is not None:
            sr = resolve(db, "SR", q["sr_id"], "sr_id")
            ctx = Context(self.server, session=h.sim_session)
            vdi = self.server.api.generic_create(
                ctx,
                "VDI",
                {
                    "name_label": "Imported VDI",
                    "SR": sr,
                    "virtual_size": str(body.length),
                    "type": "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                },
            )
        else:
            raise HttpError(400, text="vdi (or sr_id with format=raw and a Content-Length) is required")
        if db.field("VDI", vdi, "type") == "cbt_metadata":
            raise HttpError(500, ApiError("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata"))
        node = node_of(db, vdi)
        size = db.field("VDI", vdi, "virtual_size")
        fault = h.sim_fault
        body.fault = fault
        head(h, "HTTP/1.1 200 OK", [("task-id", task), ("content-type", "text/html"), ("Server", SERVER_HEADER)])
        h.wfile.flush()
        if fault and fault.action == "fail_task":
            raise fault.as_error()
        try:
            if fmt == "raw":
                offset = 0
                while True:
                    data = body.read_exact(BLOCK)
                    if not data:
                        break
                    if offset + len(data) > size:
                        raise ApiError("VDI_IO_ERROR", "the stream is larger than the VDI")
                    self._write(node, offset, data)
                    offset += len(data)
                    self.server.tasks.progress(task, min(0.99, offset / max(size, 1)))
            else:
                reader = vhd.Reader(body.read_exact)
                for offset, data in reader.blocks():
                    if offset + len(data) > size:
                        raise ApiError("VDI_IO_ERROR", "VHD block beyond the VDI's virtual size")
                    self._write(node, offset, data)
                    self.server.tasks.progress(task, min(0.99, reader.pos / max(body.length or size, 1)))
                if reader.size > size:
                    raise ApiError("VDI_IO_ERROR", f"VHD virtual size {reader.size} exceeds the VDI's {size}")
        except vhd.VhdError as e:
            raise ApiError("VDI_IO_ERROR", str(e)) from None
        finally:
            sync_sr(self.server, db.field("VDI", vdi, "SR"))
        return vdi

    def _write(self, node, offset, data):
        # Skip zero blocks that would land on unallocated space: the VDI is pre-zeroed and sparse.
        whole_zero_block = offset % BLOCK == 0 and len(data) == BLOCK and data == ZERO_BLOCK
        if whole_zero_block and not any(n.allocated(offset // BLOCK) for n in self.server.storage.chain(node)):
            return
        try:
            self.server.storage.write(node, offset, data, track=True)
        except NoSpace:
            raise ApiError("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "") from None

    # -- PUT /import -------------------------------------------------------------------------------
    def import_xva(self, h, q, task, body):
        db = self.db
        if q.get("sr_id"):
            sr = resolve(db, "SR", q["sr_id"], "sr_id")
        elif q.get("sr_uuid"):
            sr = resolve(db, "SR", q["sr_uuid"], "sr_uuid")
        else:
            sr = self.server.default_sr()
            if sr == NULL_REF:
                raise HttpError(500, ApiError("DEFAULT_SR_NOT_FOUND", NULL_REF))
        restore = q.get("restore", "").lower() == "true"
        force = q.get("force", "").lower() == "true"
        fault = h.sim_fault
        body.fault = fault
        head(h, "HTTP/1.1 200 OK", [("task-id", task), ("content-type", "text/html"), ("Server", SERVER_HEADER)])
        h.wfile.flush()
        created = []
        try:
            try:
                if fault and fault.action == "fail_task":
                    raise fault.as_error()
                return XvaImport(self.server, sr, restore, force, task, created).run(body)
            except CutStream:
                raise ApiError("IMPORT_ERROR_PREMATURE_EOF") from None
        except BaseException:
            # xapi discards what a failed import created (unless force=true).
            if not force:
                self._cleanup(created)
            raise

    def _cleanup(self, created):
        for cls, ref in reversed(created):
            if not self.db.exists(cls, ref):
                continue
            try:
                if cls == "VDI":
                    self.server.destroy_vdi(None, ref)
                elif cls == "VM":
                    self.db.set("VM", ref, power_state="Halted")
                    self.server.api.handlers["VM.destroy"](None, ref)
                else:
                    self.server.api.destroy(cls, ref)
            except ApiError:
                log.exception("cleanup of %s %s failed", cls, ref)


class XvaImport:
    """Read an XVA stream entry by entry: objects from ova.xml, then each VDI's chunks."""

    def __init__(self, server, sr, restore, force, task, created):
        self.server, self.db, self.api = server, server.db, server.api
        self.sr, self.restore, self.force, self.task, self.created = sr, restore, force, task, created

    def run(self, body):
        first = body.peek(xva.TAR_BLOCK)
        if len(first) < xva.TAR_BLOCK:
            raise ApiError("IMPORT_ERROR", "Invalid XVA file: premature end of stream")
        self.decomp = xva.Decompressor(first)
        self.body = body
        self.pending = bytearray()
        self.eof = False
        entry = self._next_entry()
        if entry is None or entry[0] != "ova.xml":
            raise ApiError("IMPORT_ERROR_UNEXPECTED_FILE", "ova.xml", entry[0] if entry else "")
        try:
            header = xva.parse_ova_xml(self._read_data(entry[1]))
        except Exception as e:
            raise ApiError("IMPORT_ERROR", f"Invalid XVA file: ova.xml: {e}") from None
        version = header.get("version", {})
        if (int(version.get("xapi_major", 0)), int(version.get("xapi_minor", 0))) > (25, 6):
            raise ApiError("IMPORT_INCOMPATIBLE_VERSION")
        vms, vdis = self._create_objects(header["objects"])
        self._receive_disks(vdis)
        self.db.set("task", self.task, other_config={"object_creation": "complete"})
        return vms

    # -- tar stream -----------------------------------------------------------------------------
    def _fill(self, n):
        while len(self.pending) < n and not self.eof:
            raw = self.body.read(1 << 20)
            if not raw:
                self.eof = True
                break
            self.pending += self.decomp.feed(raw)

    def _take(self, n):
        self._fill(n)
        if len(self.pending) < n:
            raise ApiError("IMPORT_ERROR_PREMATURE_EOF")
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data

    def _next_entry(self):
        block = self._take(xva.TAR_BLOCK)
        try:
            return xva.parse_tar_header(block)
        except ValueError:
            raise ApiError("IMPORT_ERROR", "Invalid XVA file: bad tar header") from None

    def _read_data(self, size):
        data = self._take(size)
        self._take((-size) % xva.TAR_BLOCK)
        return data

    # -- objects --------------------------------------------------------------------------------
    def _track(self, cls, ref):
        self.created.append((cls, ref))
        return ref

    def _create_objects(self, objects):
        db, api = self.db, self.api
        by_class = {}
        for obj in objects:
            by_class.setdefault(obj["class"], []).append(obj)
        ids = {}
        for obj in by_class.get("network", []):
            snap = obj["snapshot"]
            found = [r for r, rec in db.all("network") if rec.get("bridge") == snap.get("bridge")] or db.find(
                "network", name_label=snap.get("name_label")
            )
            ids[obj["id"]] = (
                found[0]
                if found
                else self._track(
                    "network",
                    api.create(
                        "network",
                        name_label=snap.get("name_label", ""),
                        name_description=snap.get("name_description", ""),
                        bridge=snap.get("bridge", ""),
                        MTU=int(snap.get("MTU", 1500)),
                        other_config={},
                    ),
                )
            )
        vdis = {}
        ctx = Context(self.server)
        for obj in by_class.get("VDI", []):
            snap = obj["snapshot"]
            vdi = self._track(
                "VDI",
                api.generic_create(
                    ctx,
                    "VDI",
                    {
                        "name_label": snap.get("name_label", ""),
                        "name_description": snap.get("name_description", ""),
                        "SR": self.sr,
                        "virtual_size": str(snap.get("virtual_size", "0")),
                        "type": snap.get("type", "user"),
                        "sharable": bool(snap.get("sharable", False)),
                        "read_only": bool(snap.get("read_only", False)),
                        "other_config": dict(snap.get("other_config", {})),
                        "tags": list(snap.get("tags", [])),
                        "xenstore_data": dict(snap.get("xenstore_data", {})),
                    },
                ),
            )
            ids[obj["id"]] = vdi
            vdis[obj["id"]] = vdi
        vms = []
        fields = db.model.classes["VM"]
        for obj in by_class.get("VM", []):
            snap = obj["snapshot"]
            values = {}
            for k, v in snap.items():
                f = fields.get(k)
                if f is None or f.type.kind in ("ref", "set", "record") and k not in ("tags",):
                    continue
                if k in ("uuid", "power_state", "domid", "current_operations", "allowed_operations"):
                    continue
                try:
                    values[k] = f.type.coerce(v, db.model.enums, k)
                except ApiError:
                    continue
            values["power_state"] = "Halted"
            vm = self._track("VM", api.generic_create(ctx, "VM", {**_vm_defaults(db), **values}))
            ids[obj["id"]] = vm
            vms.append(vm)
        for obj in by_class.get("VBD", []):
            snap = obj["snapshot"]
            vm = ids.get(snap.get("VM"))
            if vm is None:
                continue
            vdi = ids.get(snap.get("VDI"), NULL_REF)
            self._track(
                "VBD",
                api.create(
                    "VBD",
                    VM=vm,
                    VDI=vdi,
                    userdevice=snap.get("userdevice", "0"),
                    bootable=bool(snap.get("bootable")),
                    mode=snap.get("mode", "RW"),
                    type=snap.get("type", "Disk"),
                    empty=vdi == NULL_REF,
                    device=snap.get("device", ""),
                    other_config=dict(snap.get("other_config", {})),
                ),
            )
        for obj in by_class.get("VIF", []):
            snap = obj["snapshot"]
            vm = ids.get(snap.get("VM"))
            net = ids.get(snap.get("network"))
            if vm is None or net is None:
                continue
            keep_mac = self.restore or not snap.get("MAC_autogenerated", False)
            from .ops_vm import random_mac  # noqa: PLC0415

            self._track(
                "VIF",
                api.create(
                    "VIF",
                    VM=vm,
                    network=net,
                    device=snap.get("device", "0"),
                    MTU=int(snap.get("MTU", 1500)),
                    MAC=snap.get("MAC") if keep_mac else random_mac(),
                    MAC_autogenerated=not keep_mac,
                    other_config=dict(snap.get("other_config", {})),
                ),
            )
        return vms, vdis

    # -- disks ------------------------------------------------------------------------------------
    def _receive_disks(self, vdis):
        db, storage = self.db, self.server.storage
        entry = self._next_entry()
        remaining = {k: db.field("VDI", v, "virtual_size") for k, v in vdis.items()}
        offsets = dict.fromkeys(vdis, 0)
        chunk_len = {}
        last_counter = {}
        while entry is not None:
            name, size = entry
            prefix, _, suffix = name.rpartition("/")
            if prefix not in vdis or "." in suffix:
                raise ApiError("IMPORT_ERROR_UNEXPECTED_FILE", f"{prefix}/<chunk>", name)
            counter = int(suffix)
            if counter <= last_counter.get(prefix, -1):
                raise ApiError("IMPORT_ERROR", f"Invalid XVA file: chunk {name} out of order")
            data = self._read_data(size)
            if size:
                chunk_len.setdefault(prefix, size)
            gap = counter - last_counter.get(prefix, -1) - 1
            offsets[prefix] += gap * chunk_len.get(prefix, xva.CHUNK)
            last_counter[prefix] = counter
            check = self._next_entry()
            if check is None or check[0] not in (name + ".xxhash", name + ".checksum"):
                raise ApiError("IMPORT_ERROR", f"Invalid XVA file: no checksum after {name}")
            text = self._read_data(check[1]).decode(errors="replace")
            if (
                not xva.verify_checksum("xxhash" if check[0].endswith("xxhash") else "sha1", data, text)
                and not self.force
            ):
                raise ApiError("IMPORT_ERROR_SOME_CHECKSUMS_FAILED")
            node = node_of(db, vdis[prefix])
            if data and (data != xva.ZERO_CHUNK[: len(data)] or offsets[prefix] == 0):
                try:
                    storage.write(node, offsets[prefix], data, track=False)
                except NoSpace:
                    raise ApiError("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "") from None
            offsets[prefix] += len(data)
            entry = self._next_entry()
        for prefix, vdi in vdis.items():
            if offsets[prefix] < remaining[prefix]:
                # The last chunk is mandatory: without it xapi cannot tell the disk was complete.
                raise ApiError(
                    "IMPORT_ERROR", f"Invalid XVA file: {prefix} ends at {offsets[prefix]} of {remaining[prefix]}"
                )
            sync_sr(self.server, db.field("VDI", vdi, "SR"))


def _vm_defaults(db):
    return {
        "name_label": "",
        "name_description": "",
        "user_version": "1",
        "is_a_template": False,
        "affinity": NULL_REF,
        "memory_static_max": "0",
        "memory_dynamic_max": "0",
        "memory_dynamic_min": "0",
        "memory_static_min": "0",
        "VCPUs_params": {},
        "VCPUs_max": "1",
        "VCPUs_at_startup": "1",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "PV_bootloader": "",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": "",
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "",
        "HVM_boot_params": {},
        "platform": {},
        "PCI_bus": "",
        "other_config": {},
        "recommendations": "",
        "xenstore_data": {},
        "ha_always_run": False,
        "ha_restart_priority": "",
        "tags": [],
        "blocked_operations": {},
        "protection_policy": NULL_REF,
        "is_snapshot_from_vmpp": False,
        "appliance": NULL_REF,
        "start_delay": "0",
        "shutdown_delay": "0",
        "order": "0",
        "suspend_SR": NULL_REF,
        "version": "0",
        "generation_id": "",
        "hardware_platform_version": "0",
        "has_vendor_device": False,
        "snapshot_schedule": NULL_REF,
        "is_vmss_snapshot": False,
        "suspend_VDI": NULL_REF,
        "domain_type": "hvm",
    }

"""VDI, VBD and SR semantics over the node store, with xapi's checks and errors."""

import base64

from .api import now
from .errors import ApiError, sr_full
from .model import NULL_REF
from .storage import BLOCK

THICK_SR_TYPES = {"lvm", "lvmoiscsi", "lvmohba", "lvmofcoe"}


def node_of(db, vdi):
    node = db.private.get(vdi, {}).get("node")
    if node is None:
        raise ApiError("VDI_MISSING", db.field("VDI", vdi, "SR"), vdi)
    return node


def sync_sr(server, sr):
    db = server.db
    if not db.exists("SR", sr):
        return
    rec = db.get("SR", sr)
    virtual = 0
    for v in rec["VDIs"]:
        if not db.exists("VDI", v):
            continue
        size = db.field("VDI", v, "virtual_size")
        virtual += size
        node = db.private.get(v, {}).get("node")
        if node is not None:
            # What a VHD of this VDI occupies: every block allocated along its chain.
            used = len(server.storage.allocated_blocks(node)) * BLOCK
            db.get("VDI", v)["physical_utilisation"] = min(used, size)
    db.set("SR", sr, physical_utilisation=server.storage.used(rec["uuid"]), virtual_allocation=virtual)


def check_space(server, sr, size):
    """Thick (LVM) SRs reserve the whole virtual size; thin ones fail later, on the write."""
    db = server.db
    rec = db.get("SR", sr)
    if rec["type"] in THICK_SR_TYPES and rec["virtual_allocation"] + size > rec["physical_size"]:
        raise sr_full(size, rec["physical_size"] - rec["virtual_allocation"])


def vdi_in_use(db, vdi):
    return any(
        db.field("VBD", vbd, "currently_attached") for vbd in db.field("VDI", vdi, "VBDs") if db.exists("VBD", vbd)
    )


def install(server):
    api, db, storage = server.api, server.db, server.storage

    def new_vdi(template, sr, node, **overrides):
        fields = {
            k: template[k]
            for k in (
                "name_label",
                "name_description",
                "type",
                "sharable",
                "read_only",
                "other_config",
                "xenstore_data",
                "on_boot",
                "allow_caching",
                "tags",
                "virtual_size",
                "cbt_enabled",
                "sm_config",
            )
        }
        fields.update(
            SR=sr,
            managed=True,
            location="",
            storage_lock=False,
            missing=False,
            physical_utilisation=0,
            other_config=dict(template["other_config"]),
            xenstore_data=dict(template["xenstore_data"]),
            tags=list(template["tags"]),
            sm_config={"vdi_type": "vhd"},
        )
        fields.update(overrides)
        ref = api.create("VDI", **fields)
        db.priv(ref)["node"] = node
        db.set("VDI", ref, location=db.field("VDI", ref, "uuid"))
        sync_sr(server, sr)
        return ref

    # -- VDI.create / destroy -------------------------------------------------------------------
    def before_create(ctx, values):
        sr = values["SR"]
        if values["virtual_size"] < 0:
            raise ApiError("VDI_TOO_SMALL", NULL_REF, "0")
        check_space(server, sr, values["virtual_size"])
        values.setdefault("sm_config", {})
        values["sm_config"] = {**values["sm_config"], "vdi_type": "vhd"}
        values["managed"] = True
        return values

    def after_create(ctx, ref):
        sr = db.field("VDI", ref, "SR")
        db.priv(ref)["node"] = storage.new_node(db.field("SR", sr, "uuid"))
        db.set("VDI", ref, location=db.field("VDI", ref, "uuid"))
        sync_sr(server, sr)

    api.hooks["VDI.create"] = before_create
    api.hooks["VDI.created"] = after_create

    def create_vdi(sr, **fields):
        """An empty VDI made as ``VDI.create`` makes one, for xapi's own VDIs (suspend images)."""
        ref = api.create("VDI", **before_create(None, {"SR": sr, **fields}))
        after_create(None, ref)
        return ref

    server.create_vdi = create_vdi

    def destroy_vdi(ctx, vdi):
        if vdi_in_use(db, vdi):
            raise ApiError("VDI_IN_USE", vdi, "destroy")
        for vbd in list(db.field("VDI", vdi, "VBDs")):
            if db.exists("VBD", vbd):
                api.destroy("VBD", vbd)
        for snap in db.field("VDI", vdi, "snapshots"):
            if db.exists("VDI", snap):
                db.set("VDI", snap, snapshot_of=NULL_REF)
        node = db.private.get(vdi, {}).get("node")
        sr = db.field("VDI", vdi, "SR")
        if node is not None:
            storage.release(node)
        api.destroy("VDI", vdi)
        sync_sr(server, sr)

    @api.handler("VDI.destroy")
    def vdi_destroy(ctx, vdi):
        db.get("VDI", vdi)
        destroy_vdi(ctx, vdi)
        return ""

    server.destroy_vdi = destroy_vdi

    # -- snapshots, clones, copies --------------------------------------------------------------
    def assert_has_data(vdi):
        if db.field("VDI", vdi, "type") == "cbt_metadata":
            raise ApiError("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")

    def snapshot_vdi(vdi, extra_other_config=None):
        rec = db.get("VDI", vdi)
        assert_has_data(vdi)
        check_space(server, rec["SR"], rec["virtual_size"])
        old = node_of(db, vdi)
        if rec["is_a_snapshot"]:
            storage.ref(old)
            snap_node = old
        else:
            db.priv(vdi)["node"] = storage.freeze(old)  # the live disk continues on a new leaf
            snap_node = old
        snap = new_vdi(
            rec, rec["SR"], snap_node, is_a_snapshot=True, snapshot_of=vdi, snapshot_time=now(), read_only=False
        )
        if extra_other_config:
            db.get("VDI", snap)["other_config"].update(extra_other_config)
        return snap

    def clone_vdi(vdi, name=None):
        rec = db.get("VDI", vdi)
        assert_has_data(vdi)
        check_space(server, rec["SR"], rec["virtual_size"])
        old = node_of(db, vdi)
        if rec["is_a_snapshot"]:
            child = storage.freeze(old)
        else:
            db.priv(vdi)["node"] = storage.freeze(old)
            child = storage.freeze(old)
            storage.release(old)  # only the two new leaves read it now
        return new_vdi(rec, rec["SR"], child, name_label=name or rec["name_label"], cbt_enabled=False)

    def copy_vdi(vdi, sr):
        rec = db.get("VDI", vdi)
        assert_has_data(vdi)
        sr = rec["SR"] if sr == NULL_REF else sr
        db.get("SR", sr)
        check_space(server, sr, rec["virtual_size"])
        node = storage.copy(node_of(db, vdi), rec["virtual_size"], db.field("SR", sr, "uuid"))
        return new_vdi(rec, sr, node, cbt_enabled=False)

    server.snapshot_vdi, server.clone_vdi, server.copy_vdi = snapshot_vdi, clone_vdi, copy_vdi

    @api.handler("VDI.snapshot")
    def vdi_snapshot(ctx, vdi, driver_params=None):
        return snapshot_vdi(vdi)

    @api.handler("VDI.clone")
    def vdi_clone(ctx, vdi, driver_params=None):
        return clone_vdi(vdi)

    @api.handler("VDI.copy")
    def vdi_copy(ctx, vdi, sr, base_vdi=NULL_REF, into_vdi=NULL_REF):
        if into_vdi != NULL_REF:
            raise ApiError("NOT_IMPLEMENTED", "VDI.copy into_vdi")
        return copy_vdi(vdi, sr)

    @api.handler("VDI.resize")
    def vdi_resize(ctx, vdi, size):
        rec = db.get("VDI", vdi)
        if size < rec["virtual_size"]:
            raise ApiError("VDI_TOO_SMALL", vdi, str(rec["virtual_size"]))
        check_space(server, rec["SR"], size - rec["virtual_size"])
        db.set("VDI", vdi, virtual_size=size)
        sync_sr(server, rec["SR"])
        return ""

    # -- CBT --------------------------------------------------------------------------------------
    @api.handler("VDI.enable_cbt")
    def enable_cbt(ctx, vdi):
        db.set("VDI", vdi, cbt_enabled=True)
        return ""

    @api.handler("VDI.disable_cbt")
    def disable_cbt(ctx, vdi):
        db.set("VDI", vdi, cbt_enabled=False)
        return ""

    @api.handler("VDI.list_changed_blocks")
    def list_changed_blocks(ctx, vdi_from, vdi_to):
        for v in (vdi_from, vdi_to):
            if not db.field("VDI", v, "cbt_enabled"):
                raise ApiError("VDI_NO_CBT_METADATA", v)
        if vdi_in_use(db, vdi_to):
            raise ApiError("VDI_IN_USE", vdi_to, "list_changed_blocks")
        size = db.field("VDI", vdi_to, "virtual_size")
        bits = storage.changed_units(node_of(db, vdi_from), node_of(db, vdi_to), size)
        return base64.b64encode(bits).decode()

    @api.handler("VDI.data_destroy")
    def data_destroy(ctx, vdi):
        rec = db.get("VDI", vdi)
        if not rec["cbt_enabled"]:
            raise ApiError("VDI_NO_CBT_METADATA", vdi)
        if not rec["is_a_snapshot"]:
            raise ApiError("VDI_INCOMPATIBLE_TYPE", vdi, rec["type"])
        if vdi_in_use(db, vdi):
            raise ApiError("VDI_IN_USE", vdi, "data_destroy")
        # Blocks stay in the node store: they are also the CBT log later queries read.
        db.set("VDI", vdi, type="cbt_metadata")
        return ""

    # -- VBD ----------------------------------------------------------------------------------------
    def before_vbd(ctx, values):
        if values.get("VDI", NULL_REF) == NULL_REF and not values.get("empty"):
            raise ApiError("VDI_MISSING", NULL_REF, NULL_REF)
        vm = values["VM"]
        used = {db.field("VBD", v, "userdevice") for v in db.field("VM", vm, "VBDs") if db.exists("VBD", v)}
        if values.get("userdevice") in ("autodetect", ""):
            values["userdevice"] = str(next(i for i in range(64) if str(i) not in used))
        elif values.get("userdevice") in used:
            raise ApiError("DEVICE_ALREADY_EXISTS", values["userdevice"])
        values["currently_attached"] = False
        return values

    def after_vbd(ctx, ref):
        vm = db.field("VBD", ref, "VM")
        if db.field("VM", vm, "power_state") == "Running":
            db.set("VBD", ref, currently_attached=False)

    api.hooks["VBD.create"] = before_vbd
    api.hooks["VBD.created"] = after_vbd

    def before_vbd_destroy(ctx, vbd):
        if db.field("VBD", vbd, "currently_attached"):
            raise ApiError("OPERATION_NOT_ALLOWED", "VBD is currently attached; unplug it first")

    api.pre_destroy["VBD.destroy"] = before_vbd_destroy

    @api.handler("VBD.plug")
    def vbd_plug(ctx, vbd):
        vm = db.field("VBD", vbd, "VM")
        if db.field("VM", vm, "power_state") != "Running":
            raise ApiError("VM_BAD_POWER_STATE", vm, "running", db.field("VM", vm, "power_state").lower())
        db.set("VBD", vbd, currently_attached=True)
        return ""

    @api.handler("VBD.unplug")
    def vbd_unplug(ctx, vbd):
        db.set("VBD", vbd, currently_attached=False)
        return ""

    @api.handler("SR.scan")
    def sr_scan(ctx, sr):
        sync_sr(server, sr)
        return ""


def blocks_of(size):
    return (size + BLOCK - 1) // BLOCK

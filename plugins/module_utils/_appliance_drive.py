"""The config drive's disk: a small VDI with the NoCloud image, attached read-only and not bootable.

Like Xen Orchestra's cloud-init drive, it is uploaded with ``PUT /import_raw_vdi`` and attached on a
device number other than 3 (where a VM's CD drive usually sits); unlike it, the image is ISO 9660.
"""

from __future__ import annotations

import contextlib
import io

from . import _config_drive as drive
from ._appliance_spec import KEY_DRIVE
from ._xapi_errors import XapiError
from ._xapi_http import put_stream

NAME = "xapi.proxy config drive"
UPLOAD_TIMEOUT_NOTE = "config drive upload"
RESERVED_DEVICES = {"3"}  # the CD drive's usual place


def free_device(state):
    used = {vbd_rec.get("userdevice") for _, vbd_rec, _, _ in state.vbds}
    return next(str(i) for i in range(1, 16) if str(i) not in used | RESERVED_DEVICES)


def attach(client, state, contents, digest, sr_ref):
    """Create the VDI on ``sr_ref``, upload the image and attach it; returns the VDI's UUID."""
    image = drive.build_iso(contents)
    vdi = client.call(
        "VDI.create",
        {
            "name_label": NAME,
            "name_description": f"cloud-init NoCloud configuration of VM {state.rec['name_label']}; "
            "removed once the VM has booted",
            "SR": sr_ref,
            "virtual_size": str(len(image)),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {KEY_DRIVE: digest},
            "xenstore_data": {},
            "sm_config": {},
            "tags": [],
        },
        sr=sr_ref,
    )
    try:
        put_stream(
            client,
            "/import_raw_vdi",
            io.BytesIO(image),
            len(image),
            f"Upload of the config drive of VM {state.rec['name_label']!r}",
            vdi=vdi,
            format="raw",
        )
        client.call(
            "VBD.create",
            {
                "VM": state.ref,
                "VDI": vdi,
                "userdevice": free_device(state),
                "bootable": False,
                "mode": "RO",
                "type": "Disk",
                "unpluggable": True,
                "empty": False,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )
    except BaseException:
        with contextlib.suppress(XapiError):
            client.call("VDI.destroy", vdi)
        raise
    return client.call("VDI.get_uuid", vdi)


def detach_all(client, state):
    """Unplug, detach and destroy every config drive of the VM; returns their VDI UUIDs."""
    removed = []
    for vbd, vbd_rec, vdi, vdi_rec in state.drives:
        if vbd_rec.get("currently_attached"):
            client.call("VBD.unplug", vbd)
        client.call("VBD.destroy", vbd)
        if len(vdi_rec.get("VBDs", [])) <= 1:  # never a disk another VM uses
            client.call("VDI.destroy", vdi)
        removed.append(vdi_rec["uuid"])
    return removed

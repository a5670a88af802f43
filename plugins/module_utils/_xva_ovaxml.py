"""``ova.xml``: the XML-RPC value heading an XVA (xapi-protocol.md §4 "ova.xml").

Shape: a struct ``{version: {...}, objects: [{class, id, snapshot: {record}}, ...]}``. XAPI writes
it with ``Xmlrpc.to_string`` (no ``<?xml?>`` declaration, strings and int64 as bare ``<value>``
text); third-party writers add a declaration and ``<string>`` tags, both accepted here.
"""

from __future__ import annotations

import base64
import datetime
import xml.etree.ElementTree as ET  # noqa: S405 - parses the archive's own ova.xml; expat caps entity expansion
from xml.sax.saxutils import escape

from ansible_collections.xapi.proxy.plugins.module_utils._xva_errors import XvaFormatError

OVA_XML = "ova.xml"
DEFAULT_VERSION = {
    "hostname": "localhost",
    "date": "2024-01-01",
    "product_version": "8.3.0",
    "product_brand": "XCP-ng",
    "build_number": "release/yangtze/master/58",
    "xapi_major": "1",
    "xapi_minor": "20",
    "export_vsn": "2",
}
NULL_REF = "OpaqueRef:NULL"


def _decode(value_el):
    children = list(value_el)
    if not children:
        return value_el.text or ""
    node = children[0]
    tag, text = node.tag, node.text or ""
    if tag == "string":
        return text
    if tag in ("int", "i4", "i8"):
        return int(text.strip())
    if tag == "boolean":
        return text.strip() == "1"
    if tag == "double":
        return float(text.strip())
    if tag == "dateTime.iso8601":
        return text.strip()  # kept as XAPI's text (%Y%m%dT%H:%M:%SZ): nothing here needs a datetime
    if tag == "base64":
        return base64.b64decode(text)
    if tag == "nil":
        return None
    if tag == "struct":
        out = {}
        for member in node.findall("member"):
            name, value = member.find("name"), member.find("value")
            if name is None or value is None:
                raise XvaFormatError("ova.xml struct member without name or value")
            out[name.text or ""] = _decode(value)
        return out
    if tag == "array":
        data = node.find("data")
        return [] if data is None else [_decode(v) for v in data.findall("value")]
    raise XvaFormatError(f"ova.xml holds an unknown XML-RPC type <{tag}>")


def parse_ova_xml(data):
    """The header dict of an ova.xml (bytes or str); XvaFormatError if it is not a valid one."""
    try:
        root = ET.fromstring(data)  # noqa: S314 - see the import note
    except ET.ParseError as exc:
        raise XvaFormatError(f"ova.xml is not well-formed XML: {exc}") from None
    if root.tag != "value":
        raise XvaFormatError(f"ova.xml root element is <{root.tag}>, expected <value>")
    header = _decode(root)
    if not isinstance(header, dict) or not isinstance(header.get("objects"), list):
        raise XvaFormatError("ova.xml is not a struct with an 'objects' array")
    if not isinstance(header.get("version"), dict):
        raise XvaFormatError("ova.xml has no 'version' struct")
    for i, obj in enumerate(header["objects"]):
        if not isinstance(obj, dict) or not {"class", "id", "snapshot"} <= obj.keys():
            raise XvaFormatError(f"ova.xml object #{i} lacks class, id or snapshot")
    return header


def _encode(value, out):
    if isinstance(value, bool):
        out.append(f"<value><boolean>{int(value)}</boolean></value>")
    elif isinstance(value, int):
        out.append(f"<value>{value}</value>")  # XAPI sends int64 as bare text
    elif isinstance(value, float):
        out.append(f"<value><double>{value!r}</double></value>")
    elif isinstance(value, str):
        out.append(f"<value>{escape(value)}</value>")
    elif value is None:
        out.append("<value></value>")
    elif isinstance(value, (bytes, bytearray)):
        out.append(f"<value><base64>{base64.b64encode(value).decode()}</base64></value>")
    elif isinstance(value, datetime.datetime):
        out.append(f"<value><dateTime.iso8601>{value.strftime('%Y%m%dT%H:%M:%SZ')}</dateTime.iso8601></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for key, item in value.items():
            out.append(f"<member><name>{escape(str(key))}</name>")
            _encode(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif isinstance(value, (list, tuple)):
        out.append("<value><array><data>")
        for item in value:
            _encode(item, out)
        out.append("</data></array></value>")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in ova.xml")


def build_ova_xml(header):
    """ova.xml bytes for a header dict, in XAPI's style (no declaration, bare strings)."""
    out = []
    _encode(header, out)
    return "".join(out).encode("utf-8")


def objects_of_class(header, cls):
    """{id: record} of the objects of one class (e.g. 'VDI')."""
    return {obj["id"]: obj["snapshot"] for obj in header.get("objects", []) if obj.get("class") == cls}


def vdi_sizes(header):
    """{VDI id: virtual size in bytes} from ova.xml (XAPI writes the size as a string)."""
    sizes = {}
    for vdi_id, record in objects_of_class(header, "VDI").items():
        try:
            sizes[vdi_id] = int(record["virtual_size"])
        except (KeyError, TypeError, ValueError):
            raise XvaFormatError(f"ova.xml VDI {vdi_id} has no usable virtual_size") from None
    return sizes


def make_vm_header(name_label, disks, vm_uuid=None, version=None):
    """A minimal header for a halted VM with ``disks`` = [(vdi_id, virtual_size, name_label), ...].

    Enough for XVA tooling and tests; ids follow Xen Orchestra's ``Ref:NNN`` style.
    """
    import uuid  # noqa: PLC0415 - only this helper needs it

    vm_id = "Ref:000"
    objects = []
    vbd_ids = [f"Ref:{100 + i:03d}" for i in range(len(disks))]
    objects.append(
        {
            "class": "VM",
            "id": vm_id,
            "snapshot": {
                "uuid": vm_uuid or str(uuid.uuid4()),
                "name_label": name_label,
                "name_description": "",
                "power_state": "Halted",
                "is_a_template": False,
                "is_a_snapshot": False,
                "memory_static_max": str(1 << 30),
                "memory_dynamic_max": str(1 << 30),
                "memory_dynamic_min": str(1 << 30),
                "memory_static_min": str(1 << 30),
                "VCPUs_max": "1",
                "VCPUs_at_startup": "1",
                "VBDs": vbd_ids,
                "VIFs": [],
                "other_config": {},
                "snapshot_of": NULL_REF,
            },
        }
    )
    for position, ((vdi_id, _size, _label), vbd_id) in enumerate(zip(disks, vbd_ids)):
        objects.append(
            {
                "class": "VBD",
                "id": vbd_id,
                "snapshot": {
                    "VM": vm_id,
                    "VDI": vdi_id,
                    "userdevice": str(position),
                    "bootable": position == 0,
                    "mode": "RW",
                    "type": "Disk",
                    "uuid": str(uuid.uuid4()),
                },
            }
        )
    for (vdi_id, size, label), vbd_id in zip(disks, vbd_ids):
        objects.append(
            {
                "class": "VDI",
                "id": vdi_id,
                "snapshot": {
                    "uuid": str(uuid.uuid4()),
                    "name_label": label,
                    "name_description": "",
                    "virtual_size": str(size),
                    "type": "user",
                    "read_only": False,
                    "sharable": False,
                    "VBDs": [vbd_id],
                    "SR": NULL_REF,
                    "other_config": {},
                },
            }
        )
    return {"version": dict(version or DEFAULT_VERSION), "objects": objects}

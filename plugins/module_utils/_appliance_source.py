"""Create the appliance VM: a clone or copy of a template or VM, or an XVA streamed to ``PUT /import``."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile

from ._xapi_errors import XapiError
from ._xapi_http import put_stream
from ._xapi_tasks import run_async

CREATE_TIMEOUT = 3600  # a full copy of a large template on a slow SR
SPOOL_PIECE = 4 << 20

try:
    import requests
except ImportError:  # reported by the module base with missing_required_lib
    requests = None


def from_template(client, source_ref, source_rec, name, sr_ref=None):
    """Clone ``source`` (or copy it onto ``sr_ref``), provision its disks, make it a VM; returns its ref."""
    label = source_rec["name_label"]
    if sr_ref:
        ref = run_async(client, "VM.copy", source_ref, name, sr_ref, timeout=CREATE_TIMEOUT, sr=sr_ref)
    else:
        ref = run_async(client, "VM.clone", source_ref, name, timeout=CREATE_TIMEOUT)
    try:
        other = client.call("VM.get_other_config", ref)
        if "disks" in other:
            # A provisionable template: its disks are described, not there yet; put them on sr_ref.
            if sr_ref:
                sr_uuid = client.call("SR.get_uuid", sr_ref)
                client.call("VM.remove_from_other_config", ref, "disks")
                client.call("VM.add_to_other_config", ref, "disks", re.sub(r'sr="[^"]*"', f'sr="{sr_uuid}"',
                                                                            other["disks"]))  # fmt: skip
            run_async(client, "VM.provision", ref, timeout=CREATE_TIMEOUT, sr=sr_ref)
        if client.call("VM.get_is_a_template", ref):
            client.call("VM.set_is_a_template", ref, False)
        if other.get("default_template"):
            client.call("VM.remove_from_other_config", ref, "default_template")
    except BaseException:
        destroy_quietly(client, ref)
        raise
    return ref, f"{'copied' if sr_ref else 'cloned'} from {label!r}"


def from_xva(client, name, sr_ref, path=None, url=None, http=None):
    """Import an XVA from ``path`` on this host or from ``url``; returns the new VM's ref."""
    if path:
        try:
            size = os.path.getsize(path)
            source = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise XapiError(f"cannot read the XVA {path}: {e.strerror or e}.") from None
        origin = path
    else:
        source, size = _download(url, http)
        origin = url
    try:
        query = {"sr_id": sr_ref} if sr_ref else {}
        refs = put_stream(client, "/import", source, size, f"Import of the XVA {origin}", **query)
    finally:
        source.close()
    refs = refs if isinstance(refs, list) else [refs]
    vms = [r for r in refs if r]
    if not vms:
        raise XapiError(f"the XVA {origin} held no VM.")
    ref = vms[0]
    try:
        if client.call("VM.get_is_a_template", ref):
            client.call("VM.set_is_a_template", ref, False)
        client.call("VM.set_name_label", ref, name)
    except BaseException:
        destroy_quietly(client, ref)
        raise
    for extra in vms[1:]:
        destroy_quietly(client, extra)
    return ref, f"imported from {origin}"


def _download(url, http):
    """A readable stream of ``url`` and its length; spooled to a temporary file when the server gives none."""
    if requests is None:
        raise XapiError("xva_url needs the Python library requests on the host running this module.")
    session = http or requests.Session()
    try:
        response = session.get(url, stream=True, timeout=60)
    except requests.RequestException as e:
        raise XapiError(f"cannot download the XVA from {url}: {e}.") from None
    if response.status_code != 200:
        response.close()
        raise XapiError(f"cannot download the XVA from {url}: the server answered HTTP {response.status_code}.")
    length = response.headers.get("Content-Length")
    if length and "Content-Encoding" not in response.headers:
        response.raw.decode_content = False
        return _ResponseStream(response), int(length)
    # XAPI needs the length up front (no chunked import): keep a copy on this host first.
    try:
        return _spool(response, url)
    finally:
        response.close()


def _spool(response, url):
    """The whole (decoded) body of ``response`` in a temporary file, and its size; plain errors when it fails."""
    spool = None
    try:
        spool = tempfile.TemporaryFile(prefix="xapi-proxy-xva-")  # noqa: SIM115 - returned open
        # iter_content decodes a Content-Encoding and raises requests' errors when the body breaks off.
        for piece in response.iter_content(SPOOL_PIECE):
            spool.write(piece)
        size = spool.tell()
        spool.seek(0)
        return spool, size
    except BaseException as e:
        if spool is not None:
            spool.close()
        if isinstance(e, requests.RequestException):  # an OSError too: first
            raise XapiError(f"cannot download the XVA from {url}: the download broke off ({e}).") from None
        if isinstance(e, OSError):
            raise XapiError(
                f"cannot keep a copy of the XVA from {url} in {tempfile.gettempdir()} (the server sent no length, "
                f"which XAPI needs): {e.strerror or e}."
            ) from None
        raise


class _ResponseStream:
    def __init__(self, response):
        self.response = response

    def read(self, size=-1):
        return self.response.raw.read(size)

    def close(self):
        self.response.close()


def destroy_quietly(client, ref):
    """Remove a VM this run created and its disks; errors are swallowed (the original one matters)."""
    with contextlib.suppress(Exception):
        destroy(client, ref)


def destroy(client, ref):
    """Hard-stop if needed, then destroy the VM and the disks only it uses (never shared ones, never ISOs)."""
    state = client.call("VM.get_power_state", ref)
    if state != "Halted":
        run_async(client, "VM.hard_shutdown", ref, timeout=600)
    vdis = []
    for vbd in client.call("VM.get_VBDs", ref):
        rec = client.call("VBD.get_record", vbd)
        if rec.get("type") != "Disk" or rec.get("empty") or rec.get("VDI") in (None, "", "OpaqueRef:NULL"):
            continue
        if len(client.call("VDI.get_VBDs", rec["VDI"])) <= 1:
            vdis.append(rec["VDI"])
    client.call("VM.destroy", ref)
    for vdi in vdis:
        client.call("VDI.destroy", vdi)
    return len(vdis)

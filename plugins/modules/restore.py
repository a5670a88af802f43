#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore
short_description: Restore a VM from a backup written by this collection or by Xen Orchestra, or prove it boots
version_added: 0.1.0
description:
  - Restores one VM backup from a remote into an XCP-ng or XenServer pool, streaming it from the remote
    straight to the pool's XAPI on the host that runs the module (the site's proxy), without a temporary
    copy.
  - Backups written by Xen Orchestra and by M(xapi.proxy.backup) share one layout and restore alike.
    Remotes that Xen Orchestra encrypts (set with an encryption key) are not supported; the module fails
    and says so.
  - A full backup (XVA) is sent as it is stored, compressed or not, to XAPI's import. Its hash (MD5,
    SHA-256 or SHA-512, as the file says) is checked against the C(.xva.checksum) file on the way; a
    damaged file is refused (unless O(force=true)) before XAPI completes the import.
  - An incremental backup is rebuilt as Xen Orchestra does it. The VM is created from the backed-up record
    with starting blocked, then its disks and their drives are created from their records. Each disk's
    chain of VHDs is sent as one flattened VHD, the network interfaces are recreated, then the VM is
    unblocked.
  - The restored VM is named V(<name> (<backup date>\)) unless O(name) says otherwise, tagged
    C(restored from backup) (plus O(tags)), and described with the date and the remote it came from.
    Xen Orchestra's C(xo:backup:*) keys are removed from it.
  - If anything fails, the VM, drives and disks created so far are removed, and the error says why.
  - Restoring the same backup again under the same name finds the VM of the first restore and creates
    none (it only starts it, with O(start=true), when it is halted), unless O(force=true).
  - With O(health_check), the backup is restored without network to O(health_check.sr), started, and
    must report its guest tools within a timeout (and, when asked, its health check script's verdict,
    as in Xen Orchestra). It is destroyed afterwards, and the result is in RV(health_check).
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  remote:
    description:
      - The remote holding the backup. Give either a URL in Xen Orchestra's grammar
        (V(file:///srv/backups), V(smb://backup@EXAMPLE\\\\nas\\share)) or the name of a remote registered
        with M(xapi.proxy.remote).
      - A registered NFS remote is read through the mount M(xapi.proxy.remote) keeps, with its mount options,
        and stays mounted; an V(nfs://) URL is mounted for the task and unmounted after it.
    type: str
    required: true
  backup:
    description:
      - The backup to restore, by its id. M(xapi.proxy.backup_info) returns it, and it is the metadata
        file's path relative to the remote's root, as in
        V(xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20240618T020003Z.json).
      - Xen Orchestra's forms of the id (with a leading V(/), or prefixed with the remote id and V(//)) are
        accepted.
      - Exactly one of O(backup) and O(vm) is required.
    type: str
  vm:
    description:
      - The VM to restore a backup of, by its UUID or by its name as it was when backed up. O(at) picks
        which backup.
      - A name that several backed-up VMs share is refused; give the UUID.
    type: str
  at:
    description:
      - With O(vm), restore the newest backup taken at or before this time.
      - V(latest), a backup date as in file names (V(20240618T020003Z)), or an ISO 8601 date and time
        (V(2024-06-18T02:00:03Z), V(2024-06-18 04:00:03+02:00); no offset means UTC).
      - Backups are dated to the millisecond, so a time given to the second covers that whole second
        (likewise to the minute or hour).
      - A date alone (V(2024-06-18) or V(20240618)) means the end of that day (UTC). A number is a timestamp
        in milliseconds, as M(xapi.proxy.backup_info) returns.
      - If not set, the newest backup is restored.
      - A backup whose metadata cannot be read is not a candidate; the module warns about each one.
    type: str
  sr:
    description:
      - The storage repository (SR) to restore the disks to, by name or UUID.
      - A full backup always goes to this one SR. For an incremental backup, O(disk_srs) can send some
        disks elsewhere.
    type: str
    required: true
  disk_srs:
    description:
      - For incremental backups, where each disk goes when not to O(sr). The keys name a disk by its
        position (V("0") for the first disk), or by the UUID of the backed-up disk or of the VM's disk it
        was taken from.
      - The values are SR names or UUIDs. V(null) or an empty string leaves the disk out of the restore.
      - Full backups are refused with this option, as XAPI imports all disks of an XVA to one SR.
    type: dict
  name:
    description:
      - Name of the restored VM. If not set, it is named like the backed-up VM followed by its backup
        date, V(web-01 (20240618T020003Z\)), as Xen Orchestra names it.
    type: str
  new_mac_addresses:
    description:
      - Give the network interfaces new MAC addresses instead of the backed-up ones. Use this when the
        original VM still runs on the same network.
      - A full backup whose C(ova.xml) cannot be read is refused with this option, as with O(network_map).
        That is the case of a zstd-compressed XVA when the C(zstandard) Python package is not installed on
        the host that runs the module.
    type: bool
    default: false
  network_map:
    description:
      - Where the network interfaces go. The keys name a backed-up network by UUID or name, and the values
        name a network of the pool by UUID or name. V(null) or an empty string leaves out the interfaces
        on that network.
      - For incremental backups, interfaces on networks not listed go to the network with the same UUID.
        If there is none, they go to the network with the same name on the same VLAN, then to another
        network on that VLAN. The last resort is the pool's default network, the one of the pool
        master's management interface. This is what Xen Orchestra does.
      - For full backups, XAPI's import places the interfaces on networks not listed (same bridge, then
        same name, else a new network). A network the import created is removed again when no interface
        ends up on it (mapped elsewhere, left out, or the VM removed by a health check or a failure).
    type: dict
  start:
    description:
      - Start the VM once it is restored. A backup that holds the VM's memory image (an incremental backup of a
        suspended VM) restores as a suspended VM, which is resumed instead.
      - If it cannot start, the restored VM is kept and the module fails with the reason, reporting
        C(changed=true) and the VM in RV(vm). Running the task again finds the VM already restored and
        starts it.
    type: bool
    default: false
  tags:
    description:
      - Tags to add to the restored VM, besides C(restored from backup).
    type: list
    elements: str
    default: []
  force:
    description:
      - Restore even when a VM restored from the same backup already has the name O(name) (a second VM
        is then created).
      - Restore a full backup whose XVA does not match its checksum file or its recorded size (a
        warning is returned).
    type: bool
    default: false
  health_check:
    description:
      - Instead of keeping the restored VM, check that the backup boots, then destroy the VM.
      - The VM is restored without network interfaces and tagged C(xo:no-bak=Health Check), then started.
        It must report its PV drivers (guest metrics) within O(health_check.timeout).
      - If the check fails, the module fails, and RV(health_check) says which step did not happen.
    type: dict
    suboptions:
      sr:
        description:
          - The SR to restore the checked VM to, by name or UUID. If not set, O(sr) is used.
        type: str
      timeout:
        description:
          - Seconds the VM has, from its start, to run and report its guest tools (and its script's
            verdict). This does not include the restore itself.
        type: int
        default: 600
      wait_xenstore:
        description:
          - Also wait for the guest's health check script to write V(success) or V(failure) to the
            xenstore key C(vm-data/xo-backup-health-check). The module sets that key to V(planned) before
            the start, as Xen Orchestra does.
          - If not set, the module waits for the script when the VM carries the tag
            C(xo-backup-health-check-xenstore), which is Xen Orchestra's rule.
        type: bool
extends_documentation_fragment:
  - xapi.proxy._xapi
  - xapi.proxy._remote
  - xapi.proxy._attributes
  - xapi.proxy._attributes.ACTION_GROUP_XAPI
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (RV(plan)) without creating anything. The plan lists the VM, each disk with its SR
        and the bytes it sends, each network interface with its network and MAC, and the free space of
        each target SR.
      - Fails like a real run when an SR lacks space, a name matches nothing, or the backup's files are
        missing.
  diff_mode:
    support: full
    details:
      - The diff shows the VM that is (or would be) created.
notes:
  - Runs on the host that executes the task. In production that is the site's proxy, with the XenAPI
    and requests Python libraries (and zstandard for zstd-compressed backups) installed there.
  - The restore is sent to the pool master the connection options name. Its throughput is that of one
    HTTPS stream to XAPI.
  - Incremental backups stored as VHD directories (C(useVhdDirectory), and every S3 remote) are read block
    object by block object; brotli-compressed ones, as Xen Orchestra writes them, need the Python brotli
    package on the host.
requirements:
  - requests
seealso:
  - module: xapi.proxy.backup
  - module: xapi.proxy.backup_info
"""

EXAMPLES = r"""
- name: Restore the newest backup of web-01 next to the original, with new MAC addresses
  xapi.proxy.restore:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    ca_path: /etc/xapi-proxy/pool-ca.pem
    remote: file:///srv/backups
    vm: web-01
    sr: Local storage
    new_mac_addresses: true
  delegate_to: proxy-paris

- name: Restore the backup of db-01 as it was on the evening of June 17th, data disk on the NFS SR
  xapi.proxy.restore:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    remote: paris-nas
    vm: db-01
    at: "2024-06-17T20:00:00+02:00"
    sr: Local storage
    disk_srs:
      "1": NFS backups
    network_map:
      storage-vlan-20: null
    name: db-01 (restored)
    start: true
    tags: [incident-4711]

- name: Restore one backup by its id, as backup_info returns it
  xapi.proxy.restore:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    remote: paris-nas
    backup: xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20240618T020003Z.json
    sr: 9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b

- name: Prove last night's backup of web-01 boots
  xapi.proxy.restore:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    remote: paris-nas
    vm: web-01
    sr: Local storage
    health_check:
      timeout: 300
  register: check
"""

RETURN = r"""
backup:
  description: The backup restored (or checked).
  returned: success
  type: dict
  contains:
    id:
      description: The backup's id, the metadata path relative to the remote's root.
      type: str
      sample: xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20240618T020003Z.json
    vm_uuid:
      description: UUID of the backed-up VM.
      type: str
    vm_name:
      description: Name of the backed-up VM when it was backed up.
      type: str
      sample: web-01
    timestamp:
      description: When the backup was taken, in milliseconds since the epoch.
      type: int
      sample: 1718676003123
    date:
      description: The same as an ISO 8601 UTC date.
      type: str
      sample: "2024-06-18T02:00:03.123Z"
    mode:
      description: V(full) (XVA) or V(delta) (VHDs), as Xen Orchestra names them.
      type: str
    size:
      description: Size of the backup's files as recorded in its metadata, in bytes.
      type: int
vm:
  description:
    - The restored VM. It is the VM found when the backup was already restored under this name.
    - In check mode, the VM that would be created, with a null C(uuid).
  returned: success, or when the VM was restored but could not be started; except with O(health_check)
  type: dict
  sample: {uuid: 0b1c7d6a-34a5-4f38-9e3f-2f3f6a1f0c11, name_label: web-01 (20240618T020003Z), power_state: Halted}
already_restored:
  description: Whether a VM restored from this backup already had the name, so nothing was done.
  returned: success, except with O(health_check)
  type: bool
bytes_transferred:
  description: Bytes sent to XAPI.
  returned: success, except with O(health_check)
  type: int
  sample: 10502445
checksum:
  description:
    - For full backups, the result of checking the XVA against its C(.xva.checksum) file.
    - V(verified), V(absent) (no checksum file), V(mismatch (forced\)), V(unverified) or V(not applicable).
  returned: success, except with O(health_check)
  type: str
duration:
  description: Seconds the restore took.
  returned: success, except with O(health_check)
  type: float
plan:
  description: What the restore creates (or would create in check mode); absent when the backup was already
    restored.
  returned: when a restore was planned
  type: dict
  contains:
    mode:
      description: V(full) or V(delta).
      type: str
    vm:
      description: The VM's new name, the backed-up VM's name and UUID, its memory (bytes) and vCPUs.
      type: dict
    sr:
      description: The target SR (C(uuid), C(name_label)).
      type: dict
    disks:
      description: One entry per backed-up disk, with C(position), C(name_label), C(virtual_size), target
        C(sr), C(skipped) and the C(bytes) sent for it (incremental backups).
      type: list
      elements: dict
    vifs:
      description: One entry per network interface restored, with C(device), C(mac) (null for a new one), the
        target C(network), C(mapped_by) (V(uuid), V(name), V(vlan), V(default), V(network_map) or V(import))
        and the C(source_network).
      type: list
      elements: dict
    bytes_to_transfer:
      description: Bytes the restore sends to XAPI.
      type: int
    space:
      description: Per target SR, the free space and the space the restore needs, in bytes.
      type: list
      elements: dict
    notes:
      description: Remarks on the plan, such as estimates that cannot be exact.
      type: list
      elements: str
health_check:
  description: The outcome of O(health_check).
  returned: when O(health_check) is set
  type: dict
  contains:
    status:
      description: V(success), V(failure), or V(skipped) in check mode.
      type: str
    message:
      description: One sentence on the outcome, naming the step that failed.
      type: str
    restored_vm_uuid:
      description: UUID the checked VM had (it is destroyed).
      type: str
    waited_for_xenstore:
      description: Whether the check waited for the guest's health check script.
      type: bool
    xenstore:
      description: The script's verdict, V(success) or V(failure), when waited for.
      type: str
    durations:
      description: Seconds taken by each step (C(restore), C(start), C(guest_metrics), C(xenstore), C(total)).
      type: dict
    cleaned_up:
      description: Whether the checked VM and its disks were destroyed.
      type: bool
  sample:
    status: success
    message: "Backup xo-vm-backups/6b2f…/20240618T020003Z.json of 'web-01' is healthy: restored, started and
      its guest reported PV drivers after 21.4 seconds."
    waited_for_xenstore: false
    durations: {restore: 48.2, start: 2.1, guest_metrics: 21.4, total: 71.0}
    cleaned_up: true
"""

from ansible_collections.xapi.proxy.plugins.module_utils._module_base import XapiModule
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import (
    argument_spec as remote_argument_spec,
)
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import secrets_of
from ansible_collections.xapi.proxy.plugins.module_utils._restore_options import (
    MUTUALLY_EXCLUSIVE,
    REQUIRED_ONE_OF,
    RestoreRequest,
    argument_spec,
)


def main():
    module = XapiModule(
        argument_spec={**remote_argument_spec(), **argument_spec()},
        libraries=("XenAPI", "requests"),
        supports_check_mode=True,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=REQUIRED_ONE_OF,
    )
    # Passwords typed inside the remote URL too: Ansible echoes the URL option in ``invocation``.
    secrets = secrets_of(module.params, module.params.get("remote"))
    module.no_log_values.update(secrets)

    def add_secret(value):
        module.no_log_values.add(value)
        secrets.append(value)

    with module.errors_to_fail_json(secrets):
        request = RestoreRequest(module.params)
        storage, remote_label = request.open_remote(add_secret)
    try:
        with module.xapi() as client, module.errors_to_fail_json(secrets):
            result, failure = request.run(client, storage, remote_label, module.check_mode, module.warn)
    finally:
        storage.close()
    diff = result.pop("diff", None)
    if diff is not None and module._diff:
        result["diff"] = diff
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

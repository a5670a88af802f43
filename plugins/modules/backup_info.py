#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List and verify the VM backups on a remote, and report the progress of running backup jobs
version_added: 0.1.0
description:
  - Lists the VM backups stored on a remote, read from the host that runs the module (the site's proxy). Backups
    written by Xen Orchestra and by M(xapi.proxy.backup) share one layout and are listed alike.
  - Each backup is identified by its id, the path of its metadata file relative to the remote's root
    (C(xo-vm-backups/<vm uuid>/<timestamp>.json)), which M(xapi.proxy.restore) takes as
    O(xapi.proxy.restore#module:backup).
  - For an incremental backup, RV(backups[].chain) gives, per disk, the VHD files a restore reads, from the
    backup's own down to the full VHD it builds on.
  - With O(verify=true), every file of each listed backup is read once, as a stream, and checked. The metadata
    is read again from its file. A full backup's XVA must have the recorded size, a sound archive structure
    and correct chunk checksums, and the hash of its stored bytes must match its C(.xva.checksum) file. Each VHD
    of an incremental backup, and each parent down to the full VHD, must exist and have valid footers, header
    and block table, and every parent must be the disk its child was made against. Each problem found is
    reported with the file it concerns, in RV(backups[].problems); the task itself does not fail.
  - Also reports the progress of backup jobs that M(xapi.proxy.backup) runs, or ran, on the same host, in
    RV(jobs), so a long job started with C(async) can be watched. Only that needs no O(remote).
  - Metadata files that cannot be read are skipped and named in a warning.
  - Remotes that Xen Orchestra encrypts (set with an encryption key, which writes C(encryption.json) at their
    root) are not supported; the module fails and says so.
  - Does not connect to XAPI.
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  remote:
    description:
      - The remote to read, as a URL in Xen Orchestra's grammar (V(file:///srv/backups),
        V(nfs://nas.example.org:/export/backups), V(s3://s3.example.org/bucket/prefix)) or the name of a
        remote registered with M(xapi.proxy.remote).
      - A registered NFS remote is read through the mount M(xapi.proxy.remote) keeps, with its mount options,
        and stays mounted; an V(nfs://) URL is mounted for the task and unmounted after it.
      - Required with O(vm), O(backup_id) or O(verify=true). Leave it out to report only RV(jobs).
    type: str
  vm:
    description:
      - List only the backups of this VM, given by its UUID or by its name as it was when backed up. All the
        VMs that were backed up under that name are listed.
      - The task fails when the remote holds no backup of this VM.
    type: str
  backup_id:
    description:
      - List only this backup, given by its id as returned in RV(backups[].id), for example
        V(xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20240618T020003Z.json).
      - Xen Orchestra's forms of the id (with a leading V(/), or prefixed with the remote id and V(//)) are
        accepted.
      - The task fails when the backup does not exist or its metadata cannot be read.
    type: str
  verify:
    description:
      - Read and check every file of each listed backup, and return RV(backups[].verified) and
        RV(backups[].problems).
      - This reads all the data of the listed backups. Narrow it with O(vm) or O(backup_id) on large remotes.
    type: bool
    default: false
  progress_dir:
    description:
      - Directory on the host running the module where M(xapi.proxy.backup) keeps its progress files. Use the
        same value as that module's O(xapi.proxy.backup#module:progress_dir).
    type: path
    default: ~/.ansible/xapi_proxy/jobs
  job:
    description:
      - Report the progress of this backup job only, given by its name as in
        O(xapi.proxy.backup#module:job).
      - Only filters RV(jobs), not RV(backups).
    type: str
  job_id:
    description:
      - Report the progress of the backup job with this id only, as in O(xapi.proxy.backup#module:job_id).
      - Only filters RV(jobs), not RV(backups).
    type: str
extends_documentation_fragment:
  - xapi.proxy._remote
  - xapi.proxy._attributes
  - xapi.proxy._attributes.INFO_MODULE
notes:
  - O(vm) and O(backup_id) are mutually exclusive, and so are O(job) and O(job_id).
  - Backups are listed oldest first.
  - Xen Orchestra calls incremental backups C(delta) backups. RV(backups[].mode) is the mode as stored in the
    metadata, V(full) or V(delta). M(xapi.proxy.backup) writes V(delta) backups when run with
    O(xapi.proxy.backup#module:mode=incremental).
  - Disks stored as VHD directories (Xen Orchestra's C(useVhdDirectory), always used on S3) are listed and
    verified from their footer, header and block table, and every block object is read back and decompressed
    (brotli needs the Python brotli package on the host).
seealso:
  - module: xapi.proxy.backup
  - module: xapi.proxy.restore
"""

EXAMPLES = r"""
- name: List the backups on the site's NAS
  xapi.proxy.backup_info:
    remote: nfs://nas.example.org:/export/backups
  delegate_to: proxy-paris
  register: listing

- name: Show the newest backup of each VM
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.newest }} ({{ item.backups }} backups)"
  loop: "{{ listing.vms }}"

- name: Verify every backup of one VM, files included
  xapi.proxy.backup_info:
    remote: paris-nas
    vm: web-01
    verify: true
  delegate_to: proxy-paris
  register: checked

- name: Fail when a backup is damaged
  ansible.builtin.assert:
    that: checked.backups | rejectattr('verified') | list | length == 0
    fail_msg: "{{ checked.backups | map(attribute='problems') | flatten }}"

- name: Start the nightly backup without waiting for it
  xapi.proxy.backup:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    job: nightly
    remotes: [paris-nas]
  delegate_to: proxy-paris
  async: 43200
  poll: 0

- name: Watch it until it is done
  xapi.proxy.backup_info:
    job: nightly
  delegate_to: proxy-paris
  register: progress
  until: progress.jobs | selectattr('status', 'equalto', 'running') | list | length == 0
  retries: 720
  delay: 60
"""

RETURN = r"""
backups:
  description:
    - The backups found, oldest first.
  returned: when O(remote) is given
  type: list
  elements: dict
  contains:
    id:
      description: The backup's id, the path of its metadata file relative to the remote's root.
      type: str
      sample: xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20240618T020003Z.json
    vm_uuid:
      description: The UUID of the backed-up VM.
      type: str
    vm_name:
      description: The VM's name when it was backed up.
      type: str
    timestamp:
      description: When the backup was taken, in milliseconds since the epoch.
      type: int
      sample: 1718676003123
    date:
      description: When the backup was taken, as an ISO 8601 UTC date.
      type: str
      sample: "2024-06-18T02:00:03.123Z"
    mode:
      description: V(full) (one XVA) or V(delta) (one VHD per disk; an incremental backup).
      type: str
      sample: delta
    size:
      description: Size of the backup's files in bytes, as recorded in its metadata (null when not recorded).
      type: int
    job_id:
      description: The id of the backup job that wrote it.
      type: str
    schedule_id:
      description: The id of the schedule it belongs to.
      type: str
    tags:
      description: Its long-term retention tags, such as V(weekly=2024-25).
      type: list
      elements: str
    xva:
      description: For a full backup, the path of its XVA file relative to the remote's root.
      type: str
      returned: for full backups
    vhds:
      description: For an incremental backup, the path of the VHD of each disk, by the VDI's reference in the
        metadata. A VM that was suspended has one more, its memory image (see RV(backups[].with_memory)).
      type: dict
      returned: for incremental backups
    with_memory:
      description:
        - Whether the backup holds the VM's memory image, as an incremental backup of a suspended VM does. It
          restores as a suspended VM, which O(xapi.proxy.restore#module:start) resumes.
        - A full backup never does (XAPI exports a suspended VM without its memory), so it restores halted.
      type: bool
    chain:
      description: For an incremental backup, one entry per disk with the VHD files a restore reads.
      type: list
      elements: dict
      returned: for incremental backups
      contains:
        vdi_uuid:
          description: UUID of the backed-up (snapshot) VDI.
          type: str
        name_label:
          description: The disk's name.
          type: str
        userdevice:
          description: The disk's position in the VM, V(0) for the first one (null when unknown).
          type: str
        vhds:
          description: Paths of the VHD files, the backup's own first and the full VHD last.
          type: list
          elements: str
        complete:
          description: Whether the chain reaches a full VHD, with every parent present and matching its child.
          type: bool
      sample:
        - vdi_uuid: 0a6c5d2e-9a41-4a0f-b8f4-2f7f6c1d3e55
          name_label: web-01 root
          userdevice: "0"
          vhds:
            - xo-vm-backups/6b2f…/vdis/4c9a…/9d2f…/20240619T020003Z.vhd
            - xo-vm-backups/6b2f…/vdis/4c9a…/9d2f…/20240618T020003Z.vhd
          complete: true
    verified:
      description: Whether every file of the backup was read and no problem was found.
      type: bool
      returned: when O(verify=true)
    problems:
      description: Each problem found, with the file it concerns.
      type: list
      elements: dict
      returned: when O(verify=true)
      contains:
        file:
          description: Path of the file, relative to the remote's root.
          type: str
        problem:
          description: What is wrong with it, in one sentence.
          type: str
      sample:
        - file: xo-vm-backups/6b2f…/20240618T020003Z.xva.checksum
          problem: "records MD5 3b5d…, but the XVA, whose content checks out, hashes to 9e10… over its 10522624 bytes…"
vms:
  description: One entry per VM that has backups among those listed, sorted by name.
  returned: when O(remote) is given
  type: list
  elements: dict
  contains:
    uuid:
      description: The VM's UUID.
      type: str
    name:
      description: The VM's name at its newest backup.
      type: str
    backups:
      description: How many backups were listed.
      type: int
    full:
      description: How many of them are full backups.
      type: int
    delta:
      description: How many of them are incremental backups.
      type: int
    oldest:
      description: Date of the oldest one (ISO 8601, UTC).
      type: str
    newest:
      description: Date of the newest one (ISO 8601, UTC).
      type: str
    newest_id:
      description: Id of the newest one.
      type: str
    size:
      description: Their total size in bytes, as recorded in their metadata.
      type: int
    verified:
      description: Whether all of them were verified without problem.
      type: bool
      returned: when O(verify=true)
    problems:
      description: How many problems were found in them.
      type: int
      returned: when O(verify=true)
jobs:
  description:
    - Progress of the backup jobs M(xapi.proxy.backup) runs, or last ran, on the host running this module
      (one job with O(job) or O(job_id)).
  returned: always
  type: list
  elements: dict
  contains:
    job:
      description: The job's name.
      type: str
    job_id:
      description: The job's id.
      type: str
    status:
      description:
        - V(running), V(success), V(failure), or V(interrupted) when the process running the job ended without
          finishing it (killed, or its host rebooted).
      type: str
    host:
      description: Host name of the machine running the job.
      type: str
    pid:
      description: Process id of the job's run.
      type: int
    started:
      description: When the run started, in seconds since the epoch.
      type: float
    updated:
      description: When the progress was last written, in seconds since the epoch.
      type: float
    elapsed:
      description: Seconds since the run started.
      type: float
    eta:
      description: Estimated seconds left, from the bytes done so far (null when unknown or not running).
      type: float
    vms_total:
      description: VMs the run backs up.
      type: int
    vms_done:
      description: VMs whose backup ended.
      type: int
    bytes_done:
      description: Bytes read from XAPI so far.
      type: int
    bytes_total:
      description: Estimated bytes to read (the disks' physical utilisation).
      type: int
    current_vms:
      description: The VMs being backed up, with C(uuid), C(name), C(phase) and their C(bytes_done).
      type: list
      elements: dict
  sample:
    - job: nightly
      job_id: 3f1d2c6e-0a7b-5c4d-9e8f-1a2b3c4d5e6f
      status: running
      vms_total: 12
      vms_done: 5
      bytes_done: 53687091200
      bytes_total: 128849018880
      eta: 4210.5
      current_vms:
        - {uuid: 6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11, name: web-01, phase: transfer, bytes_done: 1073741824}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xapi.proxy.plugins.module_utils._backup_info import (
    MUTUALLY_EXCLUSIVE,
    BackupInfoRequest,
    argument_spec,
    errors_to_fail_json,
    secrets,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    masked = secrets(module.params)
    for value in masked:
        module.no_log_values.add(value)

    def add_secret(value):
        module.no_log_values.add(value)
        masked.append(value)

    with errors_to_fail_json(module, masked):
        result = BackupInfoRequest(module.params).run(add_secret)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup
short_description: Back up VMs of an XCP-ng or XenServer pool to remotes, in Xen Orchestra's format
version_added: 0.1.0
description:
  - Snapshots the selected VMs, streams each snapshot from the pool's XAPI straight to one or more
    remotes, and applies retention, all on the host that runs the module. Run it on a proxy inside the
    pool's site (C(delegate_to) or C(hosts)) so the backup data never crosses the WAN.
  - Backups are laid out exactly as Xen Orchestra lays them out (C(xo-vm-backups/<vm uuid>/)), so backups
    written by Xen Orchestra and by this module live side by side and restore either way.
  - V(full) mode writes an XVA per VM. V(incremental) mode writes a VHD per disk, differencing against the
    previous backup of the same job when its base snapshot and VHD still exist, else a full VHD.
  - VMs tagged C(xo:no-bak) or C(xo:no-bak=<reason>) are skipped, and disks whose name starts with C([NOBAK]) are
    left out.
  - Retention keeps O(retention) backups per schedule plus O(long_term_retention) buckets; incremental
    chains stay restorable by merging the oldest delta into its child. Nothing is deleted before the new
    backup is complete; an interrupted merge is finished by the next run.
  - One failed VM does not stop the others; the task fails when any VM failed, with every VM's result.
  - While it runs, the module keeps a progress file that M(xapi.proxy.backup_info) reports, so long jobs
    can run with C(async) and be watched.
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  job:
    description:
      - Name of the backup job. Snapshots are named after it, as Xen Orchestra does.
      - The job's id (which ties snapshots and backups to the job) is derived from this name unless O(job_id)
        is given.
    type: str
    required: true
  job_id:
    description:
      - The job's id, to continue the chains of a job created elsewhere (for example the id of a Xen
        Orchestra backup job migrated to this collection).
    type: str
  schedule:
    description:
      - Name of the schedule this run belongs to; retention is counted per schedule, as Xen Orchestra does.
      - A UUID is used as the schedule id as it is (a Xen Orchestra schedule id).
    type: str
    default: default
  mode:
    description:
      - V(full) writes an XVA of each VM; V(incremental) writes VHDs, deltas when a base exists.
    type: str
    choices: [full, incremental]
    default: incremental
  remotes:
    description:
      - Where to write the backups, each a URL in Xen Orchestra's grammar (V(file:///srv/backups),
        V(nfs://nas:/export), V(smb://user@DOMAIN\\\\host\\share), V(s3://host/bucket/prefix)) or the name
        of a remote registered with M(xapi.proxy.remote).
      - The VM's stream is read once and written to every remote.
    type: list
    elements: str
    required: true
  retention:
    description:
      - How many backups of this job and schedule to keep on each remote, the new one included.
    type: int
    default: 7
  long_term_retention:
    description:
      - Extra backups to keep, the newest of each day, ISO week, month or year, as Xen Orchestra's
        long-term retention.
    type: dict
    suboptions:
      daily:
        description: Days to keep one backup of.
        type: int
      weekly:
        description: ISO weeks to keep one backup of.
        type: int
      monthly:
        description: Months to keep one backup of.
        type: int
      yearly:
        description: Years to keep one backup of.
        type: int
      timezone:
        description: IANA time zone the periods are counted in.
        type: str
        default: UTC
  full_interval:
    description:
      - In incremental mode, write a full backup when this many backups have been written since the last
        full one. V(0) never forces a full.
    type: int
    default: 0
  compression:
    description:
      - Compression of full backups (XVA), done by XAPI. Incremental VHDs are never compressed.
    type: str
    choices: [none, gzip, zstd]
    default: zstd
  checksum:
    description:
      - Hash recorded in each full backup's C(.xva.checksum) file, which M(xapi.proxy.restore) and
        M(xapi.proxy.backup_info) check, and Xen Orchestra too (it reads MD5, SHA-256 and SHA-512 alike).
      - V(auto) writes SHA-256 where the CPU computes it in hardware (x86 SHA-NI, Arm SHA2), where it runs
        1.5 to 2 times as fast as MD5, and MD5 elsewhere. Hashing is the one part of a full backup that
        cannot be spread over several cores, so it sets the top speed of each VM's stream.
      - V(md5) writes what Xen Orchestra itself writes. Choose it when other tools read these files and
        know only MD5; builds of this collection older than this option are such readers.
      - Incremental backups have no such file.
    type: str
    choices: [auto, md5, sha256]
    default: auto
  concurrency:
    description:
      - How many VMs to back up at the same time. V(0) backs up all selected VMs at once.
    type: int
    default: 2
  vm_timeout:
    description:
      - Seconds one VM's backup may take before it is stopped and reported as failed. V(0) means no limit.
      - Xen Orchestra calls this C(vmTimeout). O(timeout) is the connection's socket timeout.
    type: int
    default: 0
  snapshot_retention:
    description:
      - How many of this job's snapshots of this O(schedule) to keep on the pool. Snapshots of the job's
        other schedules are left to their own runs (each schedule keeps its own count, as in Xen Orchestra).
        In incremental mode the newest snapshot is always kept, as the next run's base.
    type: int
    default: 0
  max_merged_per_run:
    description:
      - At most this many old backups are removed (and merged) per run and remote; the rest go in later
        runs. V(0) means no limit.
    type: int
    default: 0
  health_check:
    description:
      - After each VM's backup, restore it without network to O(health_check.sr), start it, wait for its
        guest metrics (and the C(vm-data/xo-backup-health-check) xenstore key when asked), then destroy it,
        as Xen Orchestra's health check does. A failed check fails the VM's backup (the backup stays).
    type: dict
    suboptions:
      sr:
        description: SR (name or UUID) to restore the check VM to.
        type: str
        required: true
      timeout:
        description: Seconds the started VM has to report its guest metrics (and xenstore verdict).
        type: int
        default: 600
      wait_xenstore:
        description:
          - Also wait for C(vm-data/xo-backup-health-check) to be C(success) or C(failure).
          - Unset follows Xen Orchestra's rule (the VM's C(xo-backup-health-check-xenstore) tag).
        type: bool
  progress_dir:
    description:
      - Directory on the host running the module for the job's progress file and run lock.
    type: path
    default: ~/.ansible/xapi_proxy/jobs
extends_documentation_fragment:
  - xapi.proxy._xapi
  - xapi.proxy._remote
  - xapi.proxy._vm_selection
  - xapi.proxy._attributes
  - xapi.proxy._attributes.ACTION_GROUP_XAPI
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (VMs, full or incremental and why, estimated bytes, what retention would remove or
        merge) without touching the pool or the remotes.
  diff_mode:
    support: none
notes:
  - Runs on the host that executes the task; in production that is the site's proxy, with the XenAPI,
    requests and jmespath Python libraries installed there.
  - A second run of the same job on the same host while one runs fails at once with a clear message.
  - On S3 remotes, and on others whose URL carries C(useVhdDirectory=true), incremental backups are stored as
    Xen Orchestra's VHD directories (one brotli-compressed object per 2 MiB block), which needs the Python
    brotli package; retention merges them by moving block objects.
  - A suspended VM's incremental backup also keeps its memory image, as Xen Orchestra does (a full VHD beside
    the disks, in a folder named after the image), so that it restores suspended. A full backup does not, since
    XAPI exports a suspended VM without its memory; it restores halted.
requirements:
  - requests
  - jmespath
"""

EXAMPLES = r"""
- name: Nightly incremental backup of the production VMs, written inside the site
  xapi.proxy.backup:
    hostname: xcp-paris.example.org
    username: root
    password: "{{ xapi_password }}"
    ca_path: /etc/xapi-proxy/pool-ca.pem
    job: nightly
    mode: incremental
    tags: [prod]
    remotes:
      - file:///srv/backups
    retention: 7
    long_term_retention:
      weekly: 4
      monthly: 6
      timezone: Europe/Paris
    full_interval: 14
  delegate_to: proxy-paris

- name: Weekly full backup to a registered NAS remote, watched with async
  xapi.proxy.backup:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    job: weekly-full
    mode: full
    compression: zstd
    remotes: [paris-nas]
    query: "[?power_state=='Running']"
  async: 43200
  poll: 60
"""

RETURN = r"""
vms:
  description: One entry per selected VM (in check mode, the plan for it).
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: The VM's UUID.
      type: str
    name:
      description: The VM's name.
      type: str
    status:
      description: V(success) or V(failure) (absent in check mode).
      type: str
    mode:
      description: V(full) or V(incremental), what was (or would be) written.
      type: str
    reason:
      description: Why a full was written in incremental mode (first run, missing base, full interval).
      type: str
    bytes_read:
      description: Bytes read from XAPI.
      type: int
    bytes_written:
      description: Bytes written to all remotes together.
      type: int
    duration:
      description: Seconds the VM's backup took.
      type: float
    speed:
      description: Bytes per second read from XAPI.
      type: int
    checksum:
      description: The hash in the full backup's C(.xva.checksum), V(md5) or V(sha256), as O(checksum) chose
        it on this host. Absent for incremental backups and for a full backup that no remote completed.
      type: str
    backup_id:
      description: The new backup's id on the first remote that took it (the metadata path relative to
        the remote's root, as M(xapi.proxy.backup_info) and M(xapi.proxy.restore) use it).
      type: str
    remotes:
      description: Outcome per remote (the remote is shown without credentials).
      type: list
      elements: dict
    error:
      description: Why the VM's backup failed.
      type: str
    estimated_bytes:
      description: In check mode, the data the backup would read at most.
      type: int
    retention:
      description: Per remote, the backups retention removed (or would remove) and the merges it ran.
      type: dict
    health_check:
      description: With O(health_check), the check's outcome (status, message, restored VM, durations).
      type: dict
  sample:
    - uuid: 6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11
      name: web-01
      status: success
      mode: incremental
      bytes_read: 10522624
      bytes_written: 10524160
      duration: 2.41
      speed: 4366234
      backup_id: xo-vm-backups/6b2f0a8e-5a55-4a8f-a1d9-2c3d1f2e0b11/20261126T020003Z.json
totals:
  description: Totals over the run (in check mode, the VM count and estimated bytes).
  returned: always
  type: dict
  sample: {vms: 2, succeeded: 2, failed: 0, bytes_read: 20971520, bytes_written: 20974592, duration: 5.2}
missing:
  description: Names and UUIDs given in O(names) and O(uuids) that matched no VM.
  returned: always
  type: dict
job_id:
  description: The job's id, as stored in snapshots and backup metadata.
  returned: always
  type: str
schedule_id:
  description: The schedule's id, as stored in snapshots and backup metadata.
  returned: always
  type: str
"""

from ansible_collections.xapi.proxy.plugins.module_utils._backup_job import BackupJob
from ansible_collections.xapi.proxy.plugins.module_utils._backup_progress import DEFAULT_DIR, JobRunningError
from ansible_collections.xapi.proxy.plugins.module_utils._backup_spec import JobSpec
from ansible_collections.xapi.proxy.plugins.module_utils._backup_spec import (
    argument_spec as job_argument_spec,
)
from ansible_collections.xapi.proxy.plugins.module_utils._module_base import XapiModule
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import (
    argument_spec as remote_argument_spec,
)
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import secrets_of
from ansible_collections.xapi.proxy.plugins.module_utils._vm_selection import (
    argument_spec as selection_argument_spec,
)


def main():
    spec = {
        **job_argument_spec(),
        **selection_argument_spec(),
        **remote_argument_spec(),
        "remotes": {"type": "list", "elements": "str", "required": True},
        "progress_dir": {"type": "path", "default": DEFAULT_DIR},
    }
    module = XapiModule(argument_spec=spec, supports_check_mode=True, libraries=("XenAPI", "requests", "jmespath"))
    secrets = secrets_of(module.params, *(module.params["remotes"] or []))
    module.no_log_values.update(secrets)
    with module.errors_to_fail_json(secrets):
        job_spec = JobSpec(module.params)
        job = BackupJob(job_spec, module.params, module.connection_options())
    ids = {"job_id": job_spec.job_id, "schedule_id": job_spec.schedule_id}
    with module.xapi() as client, module.errors_to_fail_json(secrets):
        if module.check_mode:
            module.exit_json(changed=False, **job.plan(client), **ids)
        try:
            result = job.run(client, module.params["progress_dir"])
        except JobRunningError as e:
            module.fail_json(msg=str(e), **ids)
    changed = any(r.get("backup_id") for r in result["vms"])
    failed = [r for r in result["vms"] if r["status"] != "success"]
    if failed:
        names = ", ".join(f"{r['name']} ({r.get('error', 'failed')})" for r in failed)
        module.fail_json(
            msg=f"{len(failed)} of {len(result['vms'])} VM backups failed: {names}", changed=changed, **result, **ids
        )
    module.exit_json(changed=changed, **result, **ids)


if __name__ == "__main__":
    main()

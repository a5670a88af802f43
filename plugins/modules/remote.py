#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: remote
short_description: Register a named backup remote on a proxy, mount it, test it and measure its speed
version_added: 0.1.0
description:
  - Registers a backup remote under a name on the host that runs the module (the site's proxy), so that
    M(xapi.proxy.backup), M(xapi.proxy.backup_info) and M(xapi.proxy.restore) accept that name wherever they
    accept a remote URL.
  - The registration is a JSON file C(<remotes_dir>/<name>.json), owned by root and readable by root only (mode
    C(0600)), holding the URL without its credentials, the credentials (unless O(store_credentials=false)) and
    the mount options.
  - An NFS remote is mounted by the module and stays mounted (under O(mounts_dir)); the backup modules use that
    mount instead of mounting and unmounting the export on every run. When the mount is gone (after a reboot),
    the next run of this module or of a backup module mounts it again. SMB and S3 remotes need no kernel mount.
  - With O(test=true), writes a probe file to the remote, reads it back, compares and deletes it. With
    O(benchmark=true), measures the write and read speed with a larger probe file. Both report in the result;
    a failed test fails the task.
  - O(state=absent) removes the registration and unmounts an NFS remote. Backup data on the remote is never
    deleted.
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  name:
    description:
      - The name the remote is registered under, and that the backup modules accept instead of a URL.
      - Letters, digits, V(.), V(_) and V(-), starting with a letter or digit.
    type: str
    required: true
  url:
    description:
      - The remote's URL in Xen Orchestra's grammar, for example V(file:///srv/backups),
        V(nfs://nas.example.org:/export/backups), V(smb://WORKGROUP\\\\nas\\backups) or
        V(s3://s3.example.org/bucket/prefix).
      - Credentials written inside the URL are taken out of it and handled as O(username) and O(password).
      - Required with O(state=present).
    type: str
  username:
    description:
      - User name for SMB, access key id for S3. Overrides a user name written in O(url).
    type: str
  password:
    description:
      - Password for SMB, secret access key for S3. Overrides a password written in O(url).
      - Never shown in results or diffs.
    type: str
  store_credentials:
    description:
      - Whether to store O(username) and O(password) in the registration.
      - With V(false), no credential is kept on the proxy; give them to each run of the backup modules as
        O(xapi.proxy.backup#module:remote_username) and O(xapi.proxy.backup#module:remote_password). The
        credentials given here are still used for O(test) and O(benchmark).
    type: bool
    default: true
  options:
    description:
      - Mount options for an NFS remote, comma-separated as for C(mount -o), for example V(vers=3,nolock), as in
        Xen Orchestra's remote settings. Ignored by the other kinds.
    type: str
  state:
    description:
      - V(present) registers (or updates) the remote and mounts an NFS remote.
      - V(absent) unmounts an NFS remote and removes the registration. Data on the remote is left alone.
    type: str
    choices: [present, absent]
    default: present
  remotes_dir:
    description:
      - Directory of the registrations. The backup modules read the same directory through their own
        O(xapi.proxy.backup#module:remotes_dir) option.
      - Created with mode C(0700) when missing.
    type: path
    default: /etc/xapi-proxy/remotes
  mounts_dir:
    description:
      - Directory under which NFS remotes are mounted, one sub-directory per export and option set.
    type: path
    default: /run/xapi-proxy/mounts
  test:
    description:
      - Write a small probe file at the remote's root, read it back, compare and delete it, and report
        RV(test). The task fails when a step fails.
    type: bool
    default: false
  benchmark:
    description:
      - Write and read a probe file of O(benchmark_size) MiB and report the speeds in RV(benchmark).
    type: bool
    default: false
  benchmark_size:
    description:
      - Size of the benchmark's probe file, in MiB.
    type: int
    default: 16
extends_documentation_fragment:
  - xapi.proxy._attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be registered, mounted or unmounted; O(test) and O(benchmark) are skipped.
  diff_mode:
    support: full
    details:
      - The registration before and after, without the password (shown only as stored, or changed).
notes:
  - Run it with C(become=true) on the proxy; the registration file is owned by the user running the module.
  - Mounting NFS needs root and the NFS client (Debian package C(nfs-common)). SMB remotes need the Python
    library C(smbprotocol) and S3 remotes C(boto3), on the proxy.
seealso:
  - module: xapi.proxy.backup
  - module: xapi.proxy.backup_info
  - module: xapi.proxy.restore
"""

EXAMPLES = r"""
- name: Register the site's NAS over NFS, test it and measure it
  xapi.proxy.remote:
    name: paris-nas
    url: nfs://nas.paris.example.org:/export/backups
    options: vers=4.1
    test: true
    benchmark: true
  become: true
  register: nas

- name: Register an S3 bucket, keeping its secret out of the proxy
  xapi.proxy.remote:
    name: offsite
    url: s3://s3.example.org/backups/paris
    username: "{{ s3_access_key }}"
    password: "{{ s3_secret_key }}"
    store_credentials: false
    test: true
  become: true

- name: Back up to both, by name
  xapi.proxy.backup:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    job: nightly
    remotes: [paris-nas, offsite]
    remote_username: "{{ s3_access_key }}"
    remote_password: "{{ s3_secret_key }}"
  become: true

- name: Retire the old NAS (its backups stay on it)
  xapi.proxy.remote:
    name: old-nas
    state: absent
  become: true
"""

RETURN = r"""
remote:
  description:
    - The registration as stored (after the task), without the password.
  returned: always
  type: dict
  contains:
    name:
      description: The registered name.
      type: str
    path:
      description: The registration file.
      type: str
    registered:
      description: Whether the remote is registered after the task (in check mode, whether it already was).
      type: bool
    url:
      description: The URL, without credentials and with secret-looking options masked.
      type: str
      returned: with O(state=present)
    type:
      description: The remote's kind, V(file), V(nfs), V(smb) or V(s3).
      type: str
      returned: with O(state=present)
    username:
      description: The stored user name or access key id (null when none is stored).
      type: str
      returned: with O(state=present)
    password:
      description: V((stored)) when a password is stored, else null.
      type: str
      returned: with O(state=present)
    credentials_stored:
      description: Whether any credential is stored in the registration.
      type: bool
      returned: with O(state=present)
    options:
      description: The mount options.
      type: str
      returned: with O(state=present)
    mount_point:
      description: Where an NFS remote is mounted.
      type: str
      returned: for NFS remotes
    mounted:
      description: Whether the NFS remote is mounted there.
      type: bool
      returned: for NFS remotes
  sample:
    name: paris-nas
    path: /etc/xapi-proxy/remotes/paris-nas.json
    registered: true
    url: nfs://nas.paris.example.org:/export/backups
    type: nfs
    username: null
    password: null
    credentials_stored: false
    options: vers=4.1
    mount_point: /run/xapi-proxy/mounts/3f1c0e9a6b2d4c11
    mounted: true
actions:
  description: What the task did (or would do in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [register, "mount nfs://nas.paris.example.org:/export/backups on /run/xapi-proxy/mounts/3f1c0e9a6b2d4c11"]
test:
  description:
    - Outcome of the probe with O(test=true).
  returned: when O(test=true)
  type: dict
  contains:
    success:
      description: Whether the probe was written, read back identical and deleted.
      type: bool
    step:
      description: The step that failed, V(open), V(write), V(read), V(compare) or V(delete) (null on success).
      type: str
    error:
      description: Why it failed (null on success).
      type: str
    duration:
      description: Seconds the probe took.
      type: float
    skipped:
      description: True in check mode, where nothing is written.
      type: bool
  sample: {success: true, step: null, error: null, duration: 0.012}
benchmark:
  description:
    - Speeds measured with O(benchmark=true). The read may be served from the proxy's or the server's cache.
  returned: when O(benchmark=true) and the test (if asked for) succeeded
  type: dict
  contains:
    size:
      description: Bytes written, then read.
      type: int
    write_rate:
      description: Bytes per second written, including the final flush to stable storage.
      type: int
    read_rate:
      description: Bytes per second read.
      type: int
    write_seconds:
      description: Seconds the write took.
      type: float
    read_seconds:
      description: Seconds the read took.
      type: float
  sample: {size: 16777216, write_rate: 104857600, read_rate: 209715200, write_seconds: 0.16, read_seconds: 0.08}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import url_passwords
from ansible_collections.xapi.proxy.plugins.module_utils._remote_register import RemoteRegistration
from ansible_collections.xapi.proxy.plugins.module_utils._xapi_url import redact_secrets


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "url": {"type": "str"},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "store_credentials": {"type": "bool", "default": True},
            "options": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "remotes_dir": {"type": "path", "default": "/etc/xapi-proxy/remotes"},
            "mounts_dir": {"type": "path", "default": "/run/xapi-proxy/mounts"},
            "test": {"type": "bool", "default": False},
            "benchmark": {"type": "bool", "default": False},
            "benchmark_size": {"type": "int", "default": 16},
        },
        required_if=[["state", "present", ["url"]]],
        supports_check_mode=True,
    )
    # A password written inside the URL is masked like the password option, results and invocation alike.
    secrets = [s for s in [module.params["password"], *url_passwords(module.params["url"])] if s]
    module.no_log_values.update(secrets)

    def redact(text):
        return redact_secrets(text, secrets)

    try:
        result = RemoteRegistration(module.params, module.check_mode, redact).run()
    except (OSError, ValueError) as e:  # registry, storage (an OSError) and bad input alike
        module.fail_json(msg=redact(str(e)))
    if not module._diff:
        result.pop("diff", None)
    test = result.get("test") or {}
    if test.get("success") is False:
        module.fail_json(msg=f"The remote {module.params['name']!r} failed its test at the {test['step']} step: "
                         f"{test['error']}", **result)  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()

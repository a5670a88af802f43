#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: List the VMs of an XCP-ng or XenServer pool, filtered the way backups select them
version_added: 0.1.0
description:
  - Lists the VMs of a pool with the fields an operator selects backups by (tags, power state, host,
    disks, networks, Xen Orchestra settings).
  - Templates, snapshots and control domains (dom0) are left out unless asked for.
  - The filters combine with AND; O(names) and O(uuids) together match a VM that either names. O(query) applies
    last, to the records described under RV(vms).
  - Reads the pool with one call per object class, so it stays fast on large pools.
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  include_control_domain:
    description:
      - Also list the control domains (dom0) of the pool's hosts.
    type: bool
    default: false
  include_templates:
    description:
      - Also list templates (VM records with C(is_a_template) set that are not snapshots).
    type: bool
    default: false
  include_snapshots:
    description:
      - Also list VM snapshots.
    type: bool
    default: false
extends_documentation_fragment:
  - xapi.proxy._xapi
  - xapi.proxy._vm_selection
  - xapi.proxy._attributes
  - xapi.proxy._attributes.INFO_MODULE
  - xapi.proxy._attributes.ACTION_GROUP_XAPI
requirements:
  - jmespath (the Python library, on the host that runs the module)
seealso:
  - name: JMESPath tutorial
    description: The query language used by O(query).
    link: https://jmespath.org/tutorial.html
"""

EXAMPLES = r"""
- name: List the production VMs that are running
  xapi.proxy.vm_info:
    hostname: xcp1.example.org
    username: backup-reader
    password: "{{ vault_xapi_password }}"
    ca_path: /etc/pki/xcp/pool-ca.pem
    tags: [prod]
    power_states: [running]
  register: prod_vms

- name: Show the names of the VMs a backup would take, with connection settings shared by a block
  module_defaults:
    group/xapi.proxy.xapi:
      hostname: "{{ lookup('ansible.builtin.env', 'XAPI_HOST') }}"
      password: "{{ lookup('ansible.builtin.env', 'XAPI_PASSWORD') }}"
  block:
    - name: Read the VMs
      xapi.proxy.vm_info:
      register: candidates

    - name: Print those backups do not skip (tagged xo:no-bak, with or without a reason)
      ansible.builtin.debug:
        msg: "{{ candidates.vms | rejectattr('excluded_from_backup') | map(attribute='name_label') | list }}"

- name: VMs with more than 1 GiB of memory that have a disk on the NFS SR
  xapi.proxy.vm_info:
    hostname: xcp1.example.org
    password: "{{ vault_xapi_password }}"
    query: "[?memory > `1073741824` && disks[?sr.name_label == 'NFS backups']]"
  register: big_nfs_vms
"""

RETURN = r"""
vms:
  description:
    - The selected VMs, sorted by name and UUID (or in the order O(query) returned them).
    - Integers are returned as numbers, not as the strings XAPI sends.
  returned: success
  type: list
  elements: dict
  contains:
    uuid:
      description: The VM's UUID.
      type: str
      sample: 0b1c7d6a-34a5-4f38-9e3f-2f3f6a1f0c11
    name_label:
      description: The VM's name.
      type: str
      sample: web-01
    name_description:
      description: The VM's description.
      type: str
      sample: Public web server
    power_state:
      description: The power state as XAPI spells it.
      type: str
      sample: Running
    tags:
      description: The VM's tags.
      type: list
      elements: str
      sample: [prod, web]
    is_a_template:
      description: Whether the record is a template (snapshots are templates too).
      type: bool
    is_a_snapshot:
      description: Whether the record is a snapshot.
      type: bool
    is_control_domain:
      description: Whether the record is a host's control domain (dom0).
      type: bool
    memory:
      description: The VM's static maximum memory, in bytes.
      type: int
      sample: 2147483648
    vcpus:
      description: The number of virtual CPUs at start-up.
      type: int
      sample: 2
    pool:
      description: The pool, as C(uuid) and C(name_label).
      type: dict
      sample: {uuid: 1f6c9b2e-3d4a-4b5c-8d7e-6f5a4b3c2d1e, name_label: demo-pool}
    host:
      description: The host the VM runs on, as C(uuid) and C(name_label); V(null) when it does not run.
      type: dict
      sample: {uuid: 5a2d9f4e-0c3b-4f1a-9e8d-7c6b5a4f3e2d, name_label: xcp-a}
    disks:
      description: The VM's disks in device order. CD drives and empty drives are not listed.
      type: list
      elements: dict
      contains:
        userdevice:
          description: The disk's position (XAPI's C(userdevice)), V(0) for the first disk.
          type: str
          sample: "0"
        device:
          description: The guest device name, when the VM has run.
          type: str
          sample: xvda
        bootable:
          description: Whether the disk is bootable.
          type: bool
        mode:
          description: V(RW) or V(RO).
          type: str
        uuid:
          description: The UUID of the disk (VDI).
          type: str
        name_label:
          description: The disk's name.
          type: str
          sample: web-01 root
        name_description:
          description: The disk's description.
          type: str
        virtual_size:
          description: The disk's size, in bytes.
          type: int
          sample: 2147483648
        sr:
          description: The storage repository holding the disk, as C(uuid) and C(name_label).
          type: dict
          sample: {uuid: 9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b, name_label: Local storage}
        excluded_from_backup:
          description: Whether the disk's name starts with C([NOBAK]), so backups leave it out.
          type: bool
    vifs:
      description: The VM's network interfaces in device order.
      type: list
      elements: dict
      contains:
        device:
          description: The interface's position, V(0) for the first one.
          type: str
        mac:
          description: The MAC address.
          type: str
          sample: 02:16:3e:00:00:11
        network:
          description: The network, as C(uuid) and C(name_label).
          type: dict
    xo_config:
      description: The entries of the VM's C(other_config) whose keys start with C(xo:), as Xen Orchestra
        writes them.
      type: dict
      sample: {"xo:backup:job": 6e4f2f4a-1b5c-4f3e-8d2a-9c7b6a5f4e3d}
    excluded_from_backup:
      description: Whether the VM carries the C(xo:no-bak) tag (alone or as C(xo:no-bak=<reason>)), so backups skip it.
      type: bool
"""

from ansible_collections.xapi.proxy.plugins.module_utils._module_base import XapiModule
from ansible_collections.xapi.proxy.plugins.module_utils._vm_inventory import VmInventory
from ansible_collections.xapi.proxy.plugins.module_utils._vm_selection import VmSelection
from ansible_collections.xapi.proxy.plugins.module_utils._vm_selection import (
    argument_spec as selection_argument_spec,
)


def main():
    module = XapiModule(
        argument_spec={
            **selection_argument_spec(),
            "include_control_domain": {"type": "bool", "default": False},
            "include_templates": {"type": "bool", "default": False},
            "include_snapshots": {"type": "bool", "default": False},
        },
        libraries=("XenAPI", "jmespath"),
        supports_check_mode=True,
    )
    # Validate the selection before logging in: a typo should not cost a round trip.
    with module.errors_to_fail_json():
        selection = VmSelection.from_params(module.params)
    with module.xapi() as xapi:
        inventory = VmInventory.fetch(xapi)
        result = selection.select(inventory.records)
    for name in result.missing_names:
        module.warn(f"No VM is named {name!r} in pool {inventory.pool and inventory.pool['name_label']!r}.")
    for uuid in result.missing_uuids:
        module.warn(f"No VM has the UUID {uuid} in pool {inventory.pool and inventory.pool['name_label']!r}.")
    module.exit_json(changed=False, vms=result.vms)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: xapi.proxy contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: appliance
short_description: Deploy a backup proxy VM into an XCP-ng or XenServer pool and keep it configured
version_added: 0.1.0
description:
  - Deploys a VM to serve as the site's backup proxy, from a template or VM of the pool (O(template)) or from an
    XVA (O(xva_path) on the host running the module, or O(xva_url)), sizes it, connects it to a network and gives
    its guest an address, a host name and SSH keys.
  - Runs where Ansible runs (the controller, or the execution environment) and talks to the site's XAPI.
  - The guest configuration is delivered two ways, so that both kinds of image work. A cloud-init NoCloud config
    drive (a small disk whose ISO 9660 volume is labelled C(cidata), holding C(meta-data), C(user-data) and a
    version 2 C(network-config)) is attached as a read-only, non-bootable disk, and removed by the first run
    that sees the guest booted with it. The same values go to xenstore keys under C(vm-data/) (C(ip),
    C(netmask), C(gateway), C(dns), C(hostname), C(user), C(ssh-authorized-keys)), which is how Xen
    Orchestra's own proxy appliance reads its network configuration. O(configure_via) selects either.
  - The VM is marked in its C(other_config) (C(xapi-proxy:appliance) holding O(name), C(xapi-proxy:site),
    C(xapi-proxy:version)) and tagged C(xapi-proxy) and C(xapi-proxy:<site>). A later run finds it by that mark,
    even if it was renamed, and never deploys a second one.
  - A run with the same options changes nothing. A changed option is applied and shown in the diff. Changes
    that need the VM halted (vCPUs, memory, disk, network, guest configuration) are applied to a running VM
    only with O(allow_restart=true).
author:
  - xapi.proxy contributors (@xapi-proxy)
options:
  name:
    description:
      - Name of the VM. The module manages the VM it deployed under this name.
    type: str
    required: true
  state:
    description:
      - V(present) deploys and configures the VM, leaving its power state alone (a new VM stays halted).
      - V(started) also starts it and waits up to O(wait_timeout) seconds for its guest to report its address.
      - V(stopped) shuts it down (cleanly, or hard when the guest does not respond).
      - V(absent) destroys the VM and its disks. A VM named O(name) that this module did not deploy is refused
        unless O(force=true).
    type: str
    choices: [present, started, stopped, absent]
    default: present
  site:
    description:
      - Name of the site the proxy serves, recorded on the VM and in a tag.
    type: str
  template:
    description:
      - Template (or halted VM) of the pool to deploy from, by name or UUID.
      - Cloned, or copied onto O(sr) when O(sr) is given. A template that describes its disks instead of having
        them (as XCP-ng's built-in templates do) has them created on O(sr), or on the pool's default SR.
      - Mutually exclusive with O(xva_path) and O(xva_url). Only used to create the VM.
    type: str
  xva_path:
    description:
      - An XVA file on the host running the module, imported to create the VM (streamed, never loaded into
        memory).
    type: path
  xva_url:
    description:
      - URL of an XVA to download and import. Streamed straight to XAPI when the server gives its length,
        otherwise kept in a temporary file first.
    type: str
  sr:
    description:
      - Storage repository for the VM's disks and for the config drive, by name or UUID. Default is the template's
        SR when cloning, else the pool's default SR.
    type: str
  vcpus:
    description:
      - Number of virtual CPUs.
    type: int
  memory:
    description:
      - Memory of the VM, with a unit, such as V(2GiB) or V(1536MiB). Static and dynamic limits are all set to it.
    type: str
  disk_size:
    description:
      - Size of the system disk, with a unit, such as V(20GiB). The disk grows to it; it never shrinks. The guest
        grows its file system itself (cloud-init's C(growpart) does so at boot).
    type: str
  network:
    description:
      - Network of the VM's first interface (device 0), by name or UUID. The interface is created, or moved to
        this network (with a new MAC address).
      - Required when the template has no interface.
    type: str
  ip:
    description:
      - Static IPv4 address of the first interface in CIDR form, such as V(192.0.2.10/24). Without it the guest
        uses DHCP.
    type: str
  gateway:
    description:
      - Default gateway, with O(ip).
    type: str
  dns:
    description:
      - DNS servers.
    type: list
    elements: str
  guest_hostname:
    description:
      - Host name of the guest (O(hostname) is the pool's address). Default is O(name), lower-cased, with the
        characters a host name cannot hold replaced by V(-).
    type: str
  user:
    description:
      - User to create in the guest with O(ssh_authorized_keys) and password-less sudo. Without it the keys go to
        the image's default user (V(debian) on Debian's cloud images).
    type: str
  ssh_authorized_keys:
    description:
      - Public SSH keys allowed to log in, one per item.
    type: list
    elements: str
  configure_via:
    description:
      - How the guest configuration is delivered. V(config_drive) is for images with cloud-init, V(xenstore) for
        images that read C(vm-data/) keys (such as Xen Orchestra's proxy appliance).
    type: list
    elements: str
    choices: [config_drive, xenstore]
    default: [config_drive, xenstore]
  remove_config_drive:
    description:
      - Remove the config drive once the guest has booted with it (reported its address). cloud-init keeps what
        it read, so the drive is not needed afterwards.
    type: bool
    default: true
  allow_restart:
    description:
      - Allow the module to shut down a running VM, apply changes that need it halted, and start it again.
      - Without it, such changes fail the task with the list of them.
    type: bool
    default: false
  force:
    description:
      - With O(state=absent), destroy a VM named O(name) even if this module did not deploy it.
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait, with O(state=started), for the guest to report its address (the one in O(ip), or any with
        DHCP) on its first interface.
    type: int
    default: 300
extends_documentation_fragment:
  - xapi.proxy._xapi
  - xapi.proxy._attributes
  - xapi.proxy._attributes.ACTION_GROUP_XAPI
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan in RV(actions) and the predicted settings, without touching the pool.
  diff_mode:
    support: full
notes:
  - Creating the VM, copying, provisioning and importing are given up to one hour each.
  - A changed network or guest configuration reaches the guest at its next boot. cloud-init sees a new instance id
    on the new drive and applies it again, which also makes it create new SSH host keys.
  - The XVA options need the Python library requests, and the config drive the library pycdlib, on the host running
    the module.
requirements:
  - requests
  - pycdlib
seealso:
  - module: xapi.proxy.remote
  - module: xapi.proxy.backup
"""

EXAMPLES = r"""
- name: Deploy the Paris proxy from the pool's Debian template, with a static address
  xapi.proxy.appliance:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    ca_path: /etc/xapi-proxy/paris-ca.pem
    name: proxy-paris
    site: paris
    template: Debian Bookworm 12
    sr: Local storage
    vcpus: 2
    memory: 2GiB
    disk_size: 20GiB
    network: Pool-wide network associated with eth0
    ip: 192.0.2.10/24
    gateway: 192.0.2.1
    dns: [192.0.2.53]
    user: ansible
    ssh_authorized_keys:
      - "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    state: started
  register: proxy

- name: Use it in the rest of the play
  ansible.builtin.add_host: "{{ proxy.add_host }}"

- name: Deploy from an XVA, with DHCP
  xapi.proxy.appliance:
    hostname: xcp-lyon.example.org
    password: "{{ xapi_password }}"
    name: proxy-lyon
    site: lyon
    xva_url: https://images.example.org/proxy-debian12.xva
    network: LAN
    state: started

- name: Give it more memory, restarting it if needed
  xapi.proxy.appliance:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    name: proxy-paris
    memory: 4GiB
    allow_restart: true
    state: started

- name: Remove it
  xapi.proxy.appliance:
    hostname: xcp-paris.example.org
    password: "{{ xapi_password }}"
    name: proxy-paris
    state: absent
"""

RETURN = r"""
actions:
  description: What the task did (in check mode, would do), in order.
  returned: always
  type: list
  elements: str
  sample:
    - "create VM 'proxy-paris' (cloned from 'Debian Bookworm 12')"
    - set vcpus 1 -> 2
    - deliver the guest configuration (config drive and xenstore)
    - start
    - remove the config drive (0c3e…) now that the guest has booted
vm:
  description: The VM's settings after the task (in check mode, as predicted). Empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: Its name.
      type: str
    uuid:
      description: Its UUID.
      type: str
    power_state:
      description: V(running), V(halted), V(paused) or V(suspended).
      type: str
    site:
      description: The site recorded on it.
      type: str
    vcpus:
      description: Virtual CPUs.
      type: int
    memory:
      description: Memory, with its unit.
      type: str
    disk_size:
      description: Size of the system disk, with its unit.
      type: str
    network:
      description: Name of the network of the first interface.
      type: str
    mac:
      description: MAC address of the first interface.
      type: str
    ip:
      description: The address the guest reports on its first interface.
      type: str
    tags:
      description: Its tags.
      type: list
      elements: str
    guest:
      description: The guest configuration delivered (host name, user, SSH keys, address, gateway, DNS, how).
      type: dict
    config_drive:
      description: UUID of the config drive's disk while it is attached.
      type: str
  sample:
    name: proxy-paris
    uuid: 0b5b4e70-3f0b-4a4f-9a53-33bd2e1c7a10
    power_state: running
    site: paris
    vcpus: 2
    memory: 2GiB
    disk_size: 20GiB
    network: Pool-wide network associated with eth0
    mac: "02:5a:1c:33:0e:9b"
    ip: 192.0.2.10
    tags: [xapi-proxy, "xapi-proxy:paris"]
    guest: {hostname: proxy-paris, user: ansible, ip: 192.0.2.10/24, gateway: 192.0.2.1, dns: [192.0.2.53]}
    config_drive: null
uuid:
  description: The VM's UUID.
  returned: when the VM exists
  type: str
ip:
  description: The address its guest reports on its first interface.
  returned: when known (always after O(state=started))
  type: str
add_host:
  description:
    - Arguments for M(ansible.builtin.add_host) that add the proxy to the in-memory inventory, with
      C(ansible_host) set to its address (and C(ansible_user) to O(user) when given).
  returned: when the address is known
  type: dict
  sample: {name: proxy-paris, ansible_host: 192.0.2.10, ansible_user: ansible,
           xapi_proxy_vm_uuid: 0b5b4e70-3f0b-4a4f-9a53-33bd2e1c7a10, xapi_proxy_site: paris}
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.xapi.proxy.plugins.module_utils._appliance import Appliance
from ansible_collections.xapi.proxy.plugins.module_utils._appliance_spec import (
    MUTUALLY_EXCLUSIVE,
    ApplianceSpec,
    argument_spec,
)
from ansible_collections.xapi.proxy.plugins.module_utils._config_drive import HAS_PYCDLIB, PYCDLIB_IMPORT_ERROR
from ansible_collections.xapi.proxy.plugins.module_utils._module_base import XapiModule
from ansible_collections.xapi.proxy.plugins.module_utils._remote_options import url_passwords


def main():
    module = XapiModule(
        argument_spec=argument_spec(),
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
        libraries=("XenAPI", "requests"),
    )
    # A password inside xva_url (https://user:password@host/…) is masked like a no_log option.
    module.no_log_values.update(url_passwords(module.params.get("xva_url")))
    with module.errors_to_fail_json():
        spec = ApplianceSpec(module.params)
    if spec.state != "absent" and "config_drive" in spec.configure_via and not HAS_PYCDLIB:
        module.fail_json(msg=missing_required_lib("pycdlib"), exception=PYCDLIB_IMPORT_ERROR)
    with module.xapi() as client:
        result = Appliance(client, spec, module.check_mode).run()
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

"""VM selection options, shared by ``vm_info`` (the preview) and ``backup`` (the job)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  names:
    description:
      - Keep only VMs whose name (C(name_label)) is one of these, compared exactly.
      - Names that match no VM are reported as a warning.
    type: list
    elements: str
  uuids:
    description:
      - Keep only VMs with one of these UUIDs. Combined with O(names), a VM that matches either is kept.
      - UUIDs that match no VM are reported as a warning.
    type: list
    elements: str
  tags:
    description:
      - Keep only VMs that carry at least one of these tags.
    type: list
    elements: str
  exclude_tags:
    description:
      - Leave out VMs that carry any of these tags.
    type: list
    elements: str
  power_states:
    description:
      - Keep only VMs in one of these power states.
      - Valid values are V(halted), V(paused), V(running) and V(suspended), in any case.
    type: list
    elements: str
  query:
    description:
      - A L(JMESPath,https://jmespath.org/) expression applied last, to the list of VM records that the other
        filters kept (the records M(xapi.proxy.vm_info) returns).
      - It must return VM records, so use a filter, slice or sort such as
        V([?memory > `1073741824`]) or V(sort_by(@, &name_label\)[:3]), not a projection.
    type: str
"""
